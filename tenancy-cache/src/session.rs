//! [`RedisSessionStore`]: sessions in Redis, implementing [`SessionStore`] and
//! [`SessionAdmin`].
//!
//! ```no_run
//! use tenancy_cache::{RedisConfig, RedisSessionStore};
//! use tenancy_core::{ErrorKind, NewSession, SessionAdmin, SessionStore, TenantId, UserId};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = RedisConfig::single("redis://127.0.0.1:6379").connect().await?;
//! let store = RedisSessionStore::new(pool);
//! store.check_eviction_policy().await?;                 // refuses an evicting Redis
//! let (acme, alice) = (TenantId::parse("acme")?, UserId::parse("alice")?);
//!
//! let mut s = store.create(NewSession::new(acme.clone(), alice.clone())).await?;
//! s.data.insert("refresh".into(), "hash-of-token".into());
//! let stale = s.clone();
//! let s = store.save(&s).await?;                        // version 2
//! assert_eq!(store.save(&stale).await.unwrap_err().kind(), ErrorKind::Conflict);
//! let s = store.rotate(&acme, &s.id).await?;            // new id, old id ends at once
//! assert_eq!(store.list_user(&acme, &alice).await?.len(), 1);
//! store.revoke_user(&acme, &alice).await?;
//! assert!(store.load(&acme, &s.id).await?.is_none());
//! # Ok(()) }
//! ```
//!
//! # How sessions are stored
//! Each session is a hash under `<ns>:s:{t:<tenant>}:id:<id>` (see [`keys`](crate::keys))
//! holding its immutable header (id, tenant, user, creation and absolute expiry), its data, its
//! version, its last activity and its idle timeout; a sorted set per user (in the tenant's
//! slot) lists the user's session ids by absolute expiry. Deleting or rotating a session takes
//! its id out; creating one drops the ids whose absolute expiry has passed, so the index holds
//! at most one lifetime's sessions; revocation ends them in bounded batches. Every change
//! (create, touch, save, rotate) is one Lua script, so the version check and the write are
//! one atomic step and a stale copy can never overwrite a newer one; a delete reads the
//! session's user first (to name the index) and then deletes in one script, and a revocation
//! runs one script per batch of at most 256 sessions.
//!
//! The index was a plain set before it became a sorted set; scripts convert an old index when
//! they meet one, but an instance still running the earlier scripts fails on a converted one
//! (`WRONGTYPE`), as it does on a cache generation that is no longer a counter: stop
//! instances of the earlier version before starting this one.
//!
//! Whether a session is live is decided on the store's [`Clock`](tenancy_core::Clock) (the
//! system clock by default, a [`ManualClock`](tenancy_core::ManualClock) in tests); Redis key
//! expiry only reclaims memory, a few seconds after the session has ended on that clock.
//! Touching, saving or rotating a session never moves its last activity back: with instances
//! whose clocks disagree, it is the latest any of them has seen. The index keeps an ended
//! session's id for 5 s more, so a revocation from an instance whose clock runs ahead by less
//! than that still finds sessions other instances serve.
//!
//! # Eviction
//! Revocation ([`SessionAdmin::revoke_user`]) finds a user's sessions only through the user's
//! index. Under any `maxmemory-policy` but `noeviction`, a Redis that runs out of memory may
//! evict the index (it has a TTL, as every key of this store) while the session hashes live
//! on: those sessions then escape revocation. The store therefore needs `noeviction` on every
//! primary (writes then fail with `OOM` when memory runs out, reported as unavailable, rather
//! than sessions silently escaping revocation). Check it at start-up with
//! [`RedisSessionStore::check_eviction_policy`]; where the server refuses `CONFIG GET`
//! (renamed or disabled on managed services, or an ACL without it), the check logs a warning
//! and passes: make sure of the policy another way.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use serde::{Deserialize, Serialize};
use tenancy_core::{
    Health, HealthCheck, NewSession, ParseError, Session, SessionAdmin, SessionData, SessionId,
    SessionStore, SharedClock, TenantId, UserId, system_clock,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::keys::KeySpace;
use crate::lua::{PRELUDE, dec, parse_u64};
use crate::pool::{Lua, RedisPool};

/// The bounds every session store keeps, defined once in tenancy-core: the longest idle
/// timeout or absolute lifetime, and the largest session data (as JSON).
pub use tenancy_core::{MAX_SESSION_DATA_BYTES, MAX_SESSION_TTL};

/// Redis keeps an ended session this long before dropping it (memory only: the session is
/// already refused on the store's clock).
const GC_GRACE_MS: u64 = 5_000;

const SESSION_LUA: &str = r"
local FIELDS = {'m', 'd', 'v', 's', 'a', 'i'}
local function fields(key)
  return redis.call('HMGET', key, unpack(FIELDS))
end
-- The session's deadline, min(seen + idle, absolute), in two limbs; nil when absent.
local function deadline(key)
  local f = redis.call('HMGET', key, 's', 'a', 'i')
  if not f[1] and not f[2] and not f[3] then return nil end
  local sh, sl = split(f[1])
  local ah, al = split(f[2])
  local idle = tonumber(f[3])
  if not sh or not ah or not idle then error(corrupt('session state')) end
  local dh, dl = sh + idle, sl
  if le(ah, al, dh, dl) then dh, dl = ah, al end
  return dh, dl
end
-- Whether the session is live at (nh, nl), and its deadline.
local function is_live(key, nh, nl)
  local dh, dl = deadline(key)
  if not dh then return false end
  return not le(dh, dl, nh, nl), dh, dl
end
local function gc(key, nh, nl)
  local live, dh, dl = is_live(key, nh, nl)
  if live then
    redis.call('PEXPIRE', key, ms_until(nh, nl, dh, dl) + GRACE)
  else
    redis.call('PEXPIRE', key, GRACE)
  end
end
-- The last activity to store: the later of the stored one and now (ARGV[1]), so that an
-- instance whose clock is behind never moves it back.
local function seen_at(key, nh, nl)
  local s = redis.call('HGET', key, 's')
  local sh, sl = split(s)
  if sh and not le(sh, sl, nh, nl) then return s end
  return ARGV[1]
end
-- Milliseconds of (h, l), rounded up.
local function ms_of(h, l)
  return h * 1000 + math.ceil(l / 1000000)
end
-- The index is a sorted set of session ids scored by their absolute deadline (ms, rounded up).
-- An index written as a plain set by an older version becomes one, every id scored by the
-- set's own expiry, which was always kept past every member's absolute deadline.
local function index_ready(idx, nh, nl)
  if redis.call('TYPE', idx)['ok'] ~= 'set' then return end
  local ttl = redis.call('PTTL', idx)
  if ttl < 0 then ttl = MAX_TTL_MS + GRACE end
  local ids = redis.call('SMEMBERS', idx)
  redis.call('DEL', idx)
  local score = ms_of(nh, nl) + ttl
  for i = 1, #ids do redis.call('ZADD', idx, score, ids[i]) end
  if #ids > 0 then redis.call('PEXPIRE', idx, ttl) end
end
-- Drops the ids whose absolute deadline passed more than GRACE ago at (nh, nl): an instance
-- whose clock runs ahead must not drop ids that instances behind it still serve (and that a
-- revocation must still find).
local function prune_index(idx, nh, nl)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', nh * 1000 + math.floor(nl / 1000000) - GRACE)
end
local function extend_index(idx, nh, nl, abs)
  local ah, al = split(abs)
  local want = ms_until(nh, nl, ah, al) + GRACE
  if redis.call('PTTL', idx) < want then redis.call('PEXPIRE', idx, want) end
end
local nh, nl = split(ARGV[1])
if not nh then return redis.error_reply('ERR bad clock argument') end
";

fn script(name: &'static str, body: &str) -> Lua {
    let max_ttl_ms = MAX_SESSION_TTL.as_millis();
    Lua::new(
        name,
        format!(
            "local GRACE = {GC_GRACE_MS}\nlocal MAX_TTL_MS = {max_ttl_ms}\n{PRELUDE}{SESSION_LUA}{body}"
        ),
    )
}

/// Most sessions one revocation script ends: a user with many sessions is revoked in several
/// bounded steps rather than one script holding Redis for all of them.
const REVOKE_BATCH: usize = 256;
/// How many batches one `revoke_user` call runs at most.
const REVOKE_BATCHES: usize = 4096;

/// `revoke_user` stopped after [`REVOKE_BATCHES`] with sessions left: how many it ended.
struct RevokeIncomplete(u64);

// KEYS: session, index. ARGV: now, header, data, seen, absolute, idle, id. Ids whose absolute
// deadline has passed leave the index here, so it holds at most the sessions of one lifetime.
static CREATE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        "session_create",
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ah, al = split(ARGV[5])
if not ah then return redis.error_reply('ERR bad expiry argument') end
redis.call('HSET', KEYS[1], 'm', ARGV[2], 'd', ARGV[3], 'v', '1', 's', ARGV[4], 'a', ARGV[5], 'i', ARGV[6])
gc(KEYS[1], nh, nl)
index_ready(KEYS[2], nh, nl)
prune_index(KEYS[2], nh, nl)
redis.call('ZADD', KEYS[2], ms_of(ah, al), ARGV[7])
extend_index(KEYS[2], nh, nl, ARGV[5])
return 1
",
    )
});

// KEYS: session. ARGV: now.
static TOUCH: LazyLock<Lua> = LazyLock::new(|| {
    script(
        "session_touch",
        r"
if not is_live(KEYS[1], nh, nl) then return false end
redis.call('HSET', KEYS[1], 's', seen_at(KEYS[1], nh, nl))
gc(KEYS[1], nh, nl)
return fields(KEYS[1])
",
    )
});

// KEYS: session. ARGV: now, expected version, data, idle. Returns -1 (ended), -2 (stale) or the
// new fields.
static SAVE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        "session_save",
        r"
if not is_live(KEYS[1], nh, nl) then return -1 end
local v = redis.call('HGET', KEYS[1], 'v')
if v ~= ARGV[2] then return -2 end
local nv = string.format('%.0f', tonumber(v) + 1)
redis.call('HSET', KEYS[1], 'd', ARGV[3], 'i', ARGV[4], 'v', nv, 's', seen_at(KEYS[1], nh, nl))
gc(KEYS[1], nh, nl)
return fields(KEYS[1])
",
    )
});

// KEYS: session, its user's index. ARGV: now, id. Returns 1 when the session was live.
static DELETE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        "session_delete",
        r"
local live = is_live(KEYS[1], nh, nl)
redis.call('DEL', KEYS[1])
index_ready(KEYS[2], nh, nl)
redis.call('ZREM', KEYS[2], ARGV[2])
if live then return 1 end
return 0
",
    )
});

// KEYS: old session, new session, index. ARGV: now, old header, new header, old id, new id.
// Returns -1 (ended), -2 (header changed), -3 (new id taken) or the new fields.
static ROTATE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        "session_rotate",
        r"
if not is_live(KEYS[1], nh, nl) then return -1 end
local f = redis.call('HMGET', KEYS[1], 'm', 'd', 'v', 'a', 'i')
if f[1] ~= ARGV[2] then return -2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -3 end
local ah, al = split(f[4])
if not ah then return corrupt('session state') end
local nv = string.format('%.0f', tonumber(f[3]) + 1)
redis.call('HSET', KEYS[2], 'm', ARGV[3], 'd', f[2], 'v', nv, 's', seen_at(KEYS[1], nh, nl), 'a', f[4], 'i', f[5])
redis.call('DEL', KEYS[1])
index_ready(KEYS[3], nh, nl)
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[3], ms_of(ah, al), ARGV[5])
gc(KEYS[2], nh, nl)
extend_index(KEYS[3], nh, nl, f[4])
return fields(KEYS[2])
",
    )
});

// KEYS: index, then sessions (at most REVOKE_BATCH). ARGV: now, then the sessions' ids.
// Returns how many were live. A session whose state cannot be read is deleted all the same,
// uncounted: one corrupt session must not keep the user's other sessions alive.
static REVOKE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        "session_revoke",
        r"
index_ready(KEYS[1], nh, nl)
local n = 0
for i = 2, #KEYS do
  local readable, live = pcall(is_live, KEYS[i], nh, nl)
  if readable and live then n = n + 1 end
  redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return n
",
    )
});

// KEYS: index. ARGV: now, the last rank to return (-1 for all). Drops the ids whose absolute
// deadline has passed and returns the others, soonest deadline first.
static INDEX: LazyLock<Lua> = LazyLock::new(|| {
    script(
        "session_index",
        r"
index_ready(KEYS[1], nh, nl)
prune_index(KEYS[1], nh, nl)
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]))
",
    )
});

/// The immutable part of a session, stored once at creation (`m`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    id: SessionId,
    tenant: TenantId,
    user: UserId,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

impl Header {
    fn of(s: &Session) -> Self {
        Self {
            id: s.id,
            tenant: s.tenant.clone(),
            user: s.user.clone(),
            created_at: s.created_at,
            expires_at: s.expires_at,
        }
    }

    fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Corrupt(Box::new(e)))
    }
}

/// Sessions in Redis (one node or a Cluster), namespaced by tenant; cheap to clone.
///
/// See the [module documentation](self) for the storage layout and an example.
#[derive(Clone)]
pub struct RedisSessionStore {
    pool: RedisPool,
    keys: KeySpace,
    clock: SharedClock,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("namespace", &self.keys.namespace())
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

fn nanos_of(t: OffsetDateTime) -> Result<u64> {
    u64::try_from(t.unix_timestamp_nanos())
        .map_err(|_| Error::invalid("session time", "must lie between 1970 and 2554"))
}

fn time_of(nanos: u64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .map_err(|e| Error::Corrupt(Box::new(e)))
}

fn check_ttl(what: &'static str, d: Duration) -> Result<()> {
    if d < tenancy_core::MIN_SESSION_TTL || d > MAX_SESSION_TTL {
        return Err(Error::Invalid(ParseError::new(
            what,
            "must be between 1 second and 366 days",
        )));
    }
    Ok(())
}

fn encode_data(data: &SessionData) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(data).map_err(|e| Error::Corrupt(Box::new(e)))?;
    if bytes.len() > MAX_SESSION_DATA_BYTES {
        return Err(Error::invalid(
            "session data",
            "must be at most 1 MiB as JSON",
        ));
    }
    Ok(bytes)
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A session from its six fields (`m d v s a i`), checked against the key it was read from.
fn decode(fields: &[Value], tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
    if fields.len() != 6 {
        return Err(Error::corrupt("session: wrong number of fields"));
    }
    if fields.iter().all(|f| matches!(f, Value::Nil)) {
        return Ok(None);
    }
    let get = |i: usize| bytes(&fields[i]).ok_or_else(|| Error::corrupt("session: field missing"));
    let num = |i: usize| {
        get(i).and_then(|b| parse_u64(b).ok_or_else(|| Error::corrupt("session: bad number")))
    };
    let header: Header =
        serde_json::from_slice(get(0)?).map_err(|e| Error::Corrupt(Box::new(e)))?;
    let data: SessionData =
        serde_json::from_slice(get(1)?).map_err(|e| Error::Corrupt(Box::new(e)))?;
    if header.id != *id || header.tenant != *tenant {
        return Err(Error::corrupt("session: header does not match its key"));
    }
    Ok(Some(Session {
        id: header.id,
        tenant: header.tenant,
        user: header.user,
        created_at: header.created_at,
        last_seen_at: time_of(num(3)?)?,
        expires_at: header.expires_at,
        idle_timeout_secs: num(5)?,
        version: num(2)?,
        data,
    }))
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(Error::corrupt("session: unexpected reply")),
    }
}

fn conflict() -> tenancy_core::Error {
    tenancy_core::Error::Conflict("session was changed by another writer".into())
}

impl RedisSessionStore {
    /// A store on `pool`, in the default namespace, deciding expiry on the system clock.
    pub fn new(pool: RedisPool) -> Self {
        Self {
            pool,
            keys: KeySpace::default(),
            clock: system_clock(),
        }
    }

    /// The same store in another key space (another namespace).
    pub fn with_key_space(mut self, keys: KeySpace) -> Self {
        self.keys = keys;
        self
    }

    /// The same store deciding idle and absolute expiry on `clock`.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// Checks, once at start-up, that Redis never evicts this store's keys: the
    /// `maxmemory-policy` of the server (of every primary of a Cluster) must be `noeviction`,
    /// unless the server has no memory bound (`maxmemory 0`: it never evicts) (see
    /// [Eviction](self#eviction)). A node that refuses `CONFIG GET` (a renamed or disabled
    /// command, an ACL without it) is logged as a warning and passes.
    ///
    /// Errors: [`Error::Misconfigured`] naming the node and its policy when it may evict;
    /// [`Error::Connect`], [`Error::PoolTimeout`] or [`Error::Redis`] when Redis could not be
    /// asked; [`Error::Corrupt`] for a reply that is not a setting.
    pub async fn check_eviction_policy(&self) -> Result<()> {
        self.pool
            .check_no_eviction(
                "the session store needs noeviction: an evicted user index lets that user's \
                 sessions escape revocation",
            )
            .await
    }

    fn now(&self) -> (u64, Vec<u8>, OffsetDateTime) {
        let n = self.clock.now_nanos();
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(n))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        (n, dec(n), t)
    }

    async fn load_raw(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.session(tenant, id))
            .arg(&["m", "d", "v", "s", "a", "i"]);
        let fields: Vec<Value> = self.pool.query(&cmd).await?;
        decode(&fields, tenant, id)
    }

    async fn create_inner(&self, new: NewSession) -> Result<Session> {
        check_ttl("idle timeout", new.idle_timeout)?;
        check_ttl("absolute lifetime", new.absolute_ttl)?;
        let data = encode_data(&new.data)?;
        let (_, now, now_t) = self.now();
        // A fresh 128-bit id never collides in practice; the script refuses one that does.
        for _ in 0..3 {
            let session = new.clone().into_session(now_t);
            let header = Header::of(&session).encode()?;
            let keys = [
                self.keys.session(&session.tenant, &session.id),
                self.keys.session_index(&session.tenant, &session.user),
            ];
            let args = [
                now.clone(),
                header,
                data.clone(),
                now.clone(),
                dec(nanos_of(session.expires_at)?),
                dec(session.idle_timeout_secs),
                session.id.as_str().as_bytes().to_vec(),
            ];
            if self.pool.eval(&CREATE, &keys, &args).await? == Value::Int(1) {
                return Ok(session);
            }
        }
        Err(Error::corrupt("session: three fresh ids were all taken"))
    }

    async fn save_inner(&self, session: &Session) -> Result<std::result::Result<Session, i64>> {
        check_ttl(
            "idle timeout",
            Duration::from_secs(session.idle_timeout_secs),
        )?;
        let data = encode_data(&session.data)?;
        let (_, now, _) = self.now();
        let keys = [self.keys.session(&session.tenant, &session.id)];
        let args = [
            now,
            dec(session.version),
            data,
            dec(session.idle_timeout_secs),
        ];
        match self.pool.eval(&SAVE, &keys, &args).await? {
            Value::Int(code) => Ok(Err(code)),
            v => decode(&array(v)?, &session.tenant, &session.id)?
                .map(Ok)
                .ok_or_else(|| Error::corrupt("session: vanished during save")),
        }
    }

    async fn rotate_inner(
        &self,
        tenant: &TenantId,
        id: &SessionId,
    ) -> Result<std::result::Result<Session, i64>> {
        let (_, now, now_t) = self.now();
        let Some(current) = self.load_raw(tenant, id).await? else {
            return Ok(Err(-1));
        };
        if !current.is_live(now_t) {
            return Ok(Err(-1));
        }
        let old_header = Header::of(&current);
        let mut code = -3;
        for _ in 0..3 {
            let new_id = SessionId::generate();
            let new_header = Header {
                id: new_id,
                ..Header::of(&current)
            };
            let keys = [
                self.keys.session(tenant, id),
                self.keys.session(tenant, &new_id),
                self.keys.session_index(tenant, &current.user),
            ];
            let args = [
                now.clone(),
                old_header.encode()?,
                new_header.encode()?,
                id.as_str().as_bytes().to_vec(),
                new_id.as_str().as_bytes().to_vec(),
            ];
            match self.pool.eval(&ROTATE, &keys, &args).await? {
                Value::Int(-3) => continue,
                Value::Int(c) => {
                    code = c;
                    break;
                }
                v => {
                    return decode(&array(v)?, tenant, &new_id)?
                        .map(Ok)
                        .ok_or_else(|| Error::corrupt("session: vanished during rotation"));
                }
            }
        }
        Ok(Err(code))
    }

    async fn list_inner(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<Session>> {
        let index = self.keys.session_index(tenant, user);
        let ids = self.index_ids(&index, None).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut parsed = Vec::with_capacity(ids.len());
        let mut pipe = redis::pipe();
        for raw in &ids {
            // Not an id this store writes (revoke_user drops it from the index).
            let Ok(id) = SessionId::parse(raw) else {
                continue;
            };
            pipe.cmd("HMGET")
                .arg(self.keys.session(tenant, &id))
                .arg(&["m", "d", "v", "s", "a", "i"]);
            parsed.push(id);
        }
        if parsed.is_empty() {
            return Ok(Vec::new());
        }
        let replies = self.pool.pipeline(&pipe).await?;
        let (_, _, now_t) = self.now();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, reply) in parsed.iter().zip(replies) {
            let decoded = match array(reply).and_then(|fields| decode(&fields, tenant, id)) {
                Ok(decoded) => decoded,
                // One unreadable session must not hide the user's others from the listing
                // (revoke_user ends it with them).
                Err(e) => {
                    tracing::warn!(error = %e, "list_user: skipping an unreadable session");
                    continue;
                }
            };
            match decoded {
                Some(s) if s.user != *user => {
                    return Err(Error::corrupt("session index names another user's session"));
                }
                Some(s) if s.is_live(now_t) => out.push(s),
                Some(_) => {}
                None => gone.push(id.as_str().to_owned()),
            }
        }
        if !gone.is_empty() {
            // Ids of sessions Redis already dropped: tidy the index (best effort).
            let _ = self
                .pool
                .query::<()>(redis::cmd("ZREM").arg(&index).arg(&gone))
                .await;
        }
        out.sort_by_key(|s| (s.created_at, s.id));
        Ok(out)
    }

    /// The ids in `index` (at most `limit`, soonest absolute deadline first), once the ended
    /// ones are dropped.
    async fn index_ids(&self, index: &str, limit: Option<usize>) -> Result<Vec<String>> {
        let (_, now, _) = self.now();
        let stop = limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX) - 1);
        let value = self
            .pool
            .eval(
                &INDEX,
                &[index.to_owned()],
                &[now, stop.to_string().into_bytes()],
            )
            .await?;
        redis::FromRedisValue::from_redis_value(value).map_err(|e| Error::Corrupt(Box::new(e)))
    }

    /// Reads the session's user (to name its index), then deletes the session and its index
    /// entry in one script.
    async fn delete_inner(&self, tenant: &TenantId, id: &SessionId) -> Result<bool> {
        let session = self.keys.session(tenant, id);
        let header: Option<Vec<u8>> = self
            .pool
            .query(redis::cmd("HGET").arg(&session).arg("m"))
            .await?;
        let Some(header) = header else {
            return Ok(false);
        };
        let header = match serde_json::from_slice::<Header>(&header) {
            Ok(h) if h.id == *id && h.tenant == *tenant => h,
            // A header that cannot name the user's index must not keep the session alive:
            // the session goes, its index entry stays until the index prunes it.
            unusable => {
                tracing::warn!(
                    tenant = %tenant,
                    valid_json = unusable.is_ok(),
                    "session header unusable; deleting the session without its index entry"
                );
                let _: i64 = self.pool.query(redis::cmd("DEL").arg(&session)).await?;
                return Ok(false);
            }
        };
        let (_, now, _) = self.now();
        let keys = [session, self.keys.session_index(tenant, &header.user)];
        let args = [now, id.as_str().as_bytes().to_vec()];
        Ok(self.pool.eval(&DELETE, &keys, &args).await? == Value::Int(1))
    }

    /// Ends the user's sessions: `Ok(Err(..))` when sessions were still being created after
    /// the last batch (the revocation is not complete).
    async fn revoke_inner(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<std::result::Result<u64, RevokeIncomplete>> {
        let index = self.keys.session_index(tenant, user);
        let mut total = 0u64;
        // Bounded batches, each one script; every batch removes its ids from the index, so
        // the loop ends. Sessions created meanwhile are caught by a later batch, up to a bound
        // that keeps a user creating sessions as fast as they are revoked from holding the
        // call forever: past it, the call fails rather than report a revocation it did not
        // finish.
        for _ in 0..REVOKE_BATCHES {
            let ids = self.index_ids(&index, Some(REVOKE_BATCH)).await?;
            if ids.is_empty() {
                return Ok(Ok(total));
            }
            let mut keys = vec![index.clone()];
            let (_, now, _) = self.now();
            let mut args = vec![now];
            let mut unreadable = Vec::new();
            for raw in &ids {
                match SessionId::parse(raw) {
                    Ok(id) => {
                        keys.push(self.keys.session(tenant, &id));
                        args.push(raw.as_bytes().to_vec());
                    }
                    // Not an id this store writes, so no session key carries it: dropped from
                    // the index, so that it cannot hold up the revocation of the others.
                    Err(_) => unreadable.push(raw.as_str()),
                }
            }
            if !unreadable.is_empty() {
                tracing::warn!(
                    count = unreadable.len(),
                    "revoke_user: dropping unreadable ids from a session index"
                );
                self.pool
                    .query::<()>(redis::cmd("ZREM").arg(&index).arg(&unreadable))
                    .await?;
            }
            if keys.len() > 1 {
                match self.pool.eval(&REVOKE, &keys, &args).await? {
                    Value::Int(n) => total += u64::try_from(n).unwrap_or(0),
                    _ => return Err(Error::corrupt("session: unexpected reply")),
                }
            }
        }
        if self.index_ids(&index, Some(1)).await?.is_empty() {
            return Ok(Ok(total));
        }
        Ok(Err(RevokeIncomplete(total)))
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, new: NewSession) -> tenancy_core::Result<Session> {
        Ok(self.create_inner(new).await?)
    }

    async fn load(
        &self,
        tenant: &TenantId,
        id: &SessionId,
    ) -> tenancy_core::Result<Option<Session>> {
        let (_, _, now_t) = self.now();
        Ok(self
            .load_raw(tenant, id)
            .await?
            .filter(|s| s.is_live(now_t)))
    }

    async fn touch(
        &self,
        tenant: &TenantId,
        id: &SessionId,
    ) -> tenancy_core::Result<Option<Session>> {
        let (_, now, _) = self.now();
        let keys = [self.keys.session(tenant, id)];
        match self.pool.eval(&TOUCH, &keys, &[now]).await? {
            Value::Nil => Ok(None),
            v => Ok(decode(&array(v)?, tenant, id)?),
        }
    }

    async fn save(&self, session: &Session) -> tenancy_core::Result<Session> {
        match self.save_inner(session).await? {
            Ok(s) => Ok(s),
            Err(-2) => Err(conflict()),
            Err(_) => Err(tenancy_core::Error::NotFound),
        }
    }

    async fn delete(&self, tenant: &TenantId, id: &SessionId) -> tenancy_core::Result<bool> {
        Ok(self.delete_inner(tenant, id).await?)
    }

    async fn rotate(&self, tenant: &TenantId, id: &SessionId) -> tenancy_core::Result<Session> {
        match self.rotate_inner(tenant, id).await? {
            Ok(s) => Ok(s),
            Err(-2) => Err(conflict()),
            Err(-3) => Err(tenancy_core::Error::Conflict(
                "no fresh session id was free".into(),
            )),
            Err(_) => Err(tenancy_core::Error::NotFound),
        }
    }
}

#[async_trait]
impl SessionAdmin for RedisSessionStore {
    async fn list_user(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> tenancy_core::Result<Vec<Session>> {
        Ok(self.list_inner(tenant, user).await?)
    }

    async fn revoke_user(&self, tenant: &TenantId, user: &UserId) -> tenancy_core::Result<u64> {
        self.revoke_inner(tenant, user)
            .await?
            .map_err(|RevokeIncomplete(n)| {
                tenancy_core::Error::Conflict(
                    format!(
                        "revoke_user: {n} sessions ended, but sessions were still being created \
                     after {REVOKE_BATCHES} batches of {REVOKE_BATCH}"
                    )
                    .into(),
                )
            })
    }
}

#[async_trait]
impl HealthCheck for RedisSessionStore {
    fn component(&self) -> &str {
        "sessions"
    }

    async fn check(&self) -> Health {
        self.pool.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert!(check_ttl("x", Duration::from_millis(999)).is_err());
        assert!(check_ttl("x", Duration::from_secs(1)).is_ok());
        assert!(check_ttl("x", MAX_SESSION_TTL).is_ok());
        assert!(check_ttl("x", MAX_SESSION_TTL + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn decoding_refuses_a_header_from_another_key() {
        let t = TenantId::parse("acme").unwrap();
        let s = NewSession::new(t.clone(), UserId::parse("u").unwrap())
            .into_session(OffsetDateTime::UNIX_EPOCH + Duration::from_secs(10));
        let f = |h: &Header| {
            vec![
                Value::BulkString(h.encode().unwrap()),
                Value::BulkString(b"{}".to_vec()),
                Value::BulkString(b"1".to_vec()),
                Value::BulkString(b"10000000000".to_vec()),
                Value::BulkString(b"99".to_vec()),
                Value::BulkString(b"1800".to_vec()),
            ]
        };
        let ok = decode(&f(&Header::of(&s)), &t, &s.id).unwrap().unwrap();
        assert_eq!(ok.id, s.id);
        let other = TenantId::parse("globex").unwrap();
        assert!(decode(&f(&Header::of(&s)), &other, &s.id).is_err());
        assert!(decode(&f(&Header::of(&s)), &t, &SessionId::generate()).is_err());
        assert_eq!(decode(&vec![Value::Nil; 6], &t, &s.id).unwrap(), None);
    }
}
