//! Lua shared by the scripts of this crate.
//!
//! Redis runs Lua 5.1, whose numbers are doubles: exact for integers up to 2^53 only, while
//! nanosecond timestamps reach 2^60 and `u64` arithmetic reaches 2^64. Times and durations are
//! therefore handled as two limbs, `hi * 10^9 + lo` with `0 <= lo < 10^9`: every limb and every
//! intermediate sum stays far below 2^53, so the scripts compute exactly what the `u64`
//! arithmetic of `tenancy-core` computes. Values travel as decimal strings.

/// Two-limb helpers, prepended to every script that needs them.
pub(crate) const PRELUDE: &str = r"
local E9 = 1000000000
local MAXH, MAXL = 18446744073, 709551615
local function corrupt(what)
  return redis.error_reply('TENANCY_CORRUPT ' .. what)
end
-- A decimal string (at most 20 digits) as two limbs; nil when it is not one.
local function split(s)
  if type(s) ~= 'string' or #s == 0 or #s > 20 or not string.match(s, '^%d+$') then
    return nil
  end
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end
local function le(ah, al, bh, bl)
  return ah < bh or (ah == bh and al <= bl)
end
local function add(ah, al, bh, bl)
  local h, l = ah + bh, al + bl
  if l >= E9 then return h + 1, l - E9 end
  return h, l
end
local function fmt(h, l)
  if h == 0 then return string.format('%.0f', l) end
  return string.format('%.0f%09.0f', h, l)
end
-- Redis's clock, in two limbs.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]), tonumber(t[2]) * 1000
end
-- Milliseconds from (ah, al) to (bh, bl), rounded up; at least 1.
local function ms_until(ah, al, bh, bl)
  local ms = (bh - ah) * 1000 + math.ceil((bl - al) / 1000000)
  if ms < 1 then return 1 end
  return ms
end
";

/// Splits a `u64` into the decimal string the scripts read.
pub(crate) fn dec(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Reads a decimal `u64` written by a script.
pub(crate) fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}
