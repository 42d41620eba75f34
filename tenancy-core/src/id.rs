//! Identifiers with checked parsing: [`TenantId`], [`UserId`], [`SessionId`], [`RequestId`].
//!
//! None of them has an unchecked constructor: the only way in is a parse that refuses hostile
//! input, so every value that reaches a Redis key, an SQL setting or a log line is known safe.
//!
//! ```
//! use tenancy_core::{SessionId, TenantId, UserId};
//!
//! let tenant = TenantId::parse("acme")?;
//! assert_eq!(tenant.as_str(), "acme");
//! assert!(TenantId::parse("acme{x}").is_err());
//! assert!(TenantId::parse("x' OR '1'='1").is_err());
//!
//! let user = UserId::parse("alice@example.com")?;
//! let sid = SessionId::generate();
//! assert_eq!(SessionId::parse(sid.as_str())?, sid);
//! # let _ = user;
//! # Ok::<(), tenancy_core::ParseError>(())
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::ParseError;

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $what:literal, $check:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses and validates; this is the only constructor.
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                $check(s).map_err(|reason| ParseError::new($what, reason))?;
                Ok(Self(Arc::from(s)))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                Self::parse(&s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ParseError;
            fn try_from(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Longest accepted tenant id, in bytes.
pub const TENANT_ID_MAX_LEN: usize = 64;
/// Longest accepted user id, in bytes.
pub const USER_ID_MAX_LEN: usize = 256;
/// Longest accepted request id, in bytes.
pub const REQUEST_ID_MAX_LEN: usize = 128;

fn check_tenant(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > TENANT_ID_MAX_LEN {
        return Err("must be 1 to 64 characters");
    }
    let bytes = s.as_bytes();
    if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) {
        return Err("must start with a lowercase letter or a digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
    {
        return Err("may contain only a-z, 0-9, '-' and '_'");
    }
    Ok(())
}

fn check_user(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > USER_ID_MAX_LEN {
        return Err("must be 1 to 256 bytes");
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters");
    }
    if s.chars().any(|c| is_invisible(c) || is_blank_looking(c)) {
        return Err(
            "must not contain invisible, blank-looking, direction or line-separating characters",
        );
    }
    if s.trim() != s {
        return Err("must not start or end with white space");
    }
    Ok(())
}

/// Format characters (Unicode category Cf) and the line and paragraph separators: they
/// print as nothing, reorder the text around them (U+202E), or break a log line, so an id
/// holding one can pass for another in logs and audit records.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// Unicode's `Default_Ignorable_Code_Point` property (DerivedCoreProperties.txt, Unicode
/// 16.0), as sorted, disjoint inclusive ranges, without the variation selectors. Renderers
/// draw these as nothing (combining grapheme joiner, the Hangul fillers U+115F, U+1160,
/// U+3164 and U+FFA0, the Khmer inherent vowels, the tag block), so `admin\u{3164}` prints
/// like `admin`.
///
/// Why the variation selectors (U+180B–180D, U+180F, U+FE00–FE0F, U+E0100–E01EF) stay
/// allowed: they choose a glyph of the character before them, and real names need them
/// (emoji presentation, ideographic variants of Japanese personal names, Mongolian script).
const DEFAULT_IGNORABLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFF8}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E00FF}'),
    ('\u{E01F0}', '\u{E0FFF}'),
];

/// Code points that print as nothing or as blank space without being white space to
/// [`str::trim`]: the `Default_Ignorable_Code_Point` set, plus U+2800 BRAILLE PATTERN BLANK,
/// which fonts draw as an empty cell.
fn is_blank_looking(c: char) -> bool {
    c == '\u{2800}'
        || DEFAULT_IGNORABLE
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

fn check_request(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > REQUEST_ID_MAX_LEN {
        return Err("must be 1 to 128 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err("may contain only A-Z, a-z, 0-9, '-', '_', '.' and ':'");
    }
    Ok(())
}

string_id!(
    /// A tenant: 1–64 characters of `[a-z0-9_-]`, the first a letter or digit.
    ///
    /// Slugs (`acme`) and lowercase UUIDs both fit. The alphabet excludes every character that
    /// means something in a Redis key (`{`, `}`, `:`, `*`), an SQL literal (`'`, `;`) or a
    /// path (`/`, `.`), so a `TenantId` can be placed in any of them as is.
    ///
    /// ```
    /// use tenancy_core::TenantId;
    /// for bad in ["", "Acme", "a b", "a{b}", "a'b", "a\0b", "-acme", &"a".repeat(65)] {
    ///     assert!(TenantId::parse(bad).is_err(), "{bad:?}");
    /// }
    /// assert!(TenantId::parse("5f0c6f9e-1d2b-4c61-9d1e-0a3b4c5d6e7f").is_ok());
    /// ```
    TenantId,
    "tenant id",
    check_tenant
);

string_id!(
    /// A user within a tenant: 1–256 bytes of printable text without leading or trailing space.
    ///
    /// User ids come from identity providers (emails, UUIDs, opaque subjects), so the alphabet is
    /// wide; backends must encode them before placing them in keys, never splice them raw.
    ///
    /// ```
    /// use tenancy_core::UserId;
    /// assert!(UserId::parse("alice").is_ok());
    /// assert!(UserId::parse("auth0|5f7c8ec7c33c6c004bbafe82").is_ok());
    /// assert!(UserId::parse("bad\nline").is_err());
    /// assert!(UserId::parse("José Müller").is_ok());
    /// // Invisible or reordering characters would let one id pass for another in a log.
    /// assert!(UserId::parse("alice\u{2028}admin").is_err());
    /// assert!(UserId::parse("admin\u{202E}nimda").is_err());
    /// assert!(UserId::parse("ali\u{200B}ce").is_err());
    /// // So would blank-looking ones: `admin` followed by a Hangul filler prints as `admin`.
    /// assert!(UserId::parse("admin\u{3164}").is_err());
    /// assert!(UserId::parse("").is_err());
    /// ```
    UserId,
    "user id",
    check_user
);

string_id!(
    /// A request id: 1–128 characters of `[A-Za-z0-9._:-]`.
    ///
    /// Echoed back to clients and written to logs, hence the narrow alphabet.
    ///
    /// ```
    /// use tenancy_core::RequestId;
    /// assert!(RequestId::parse("0f8a2c3e-req").is_ok());
    /// assert!(RequestId::parse("evil\r\nSet-Cookie: x").is_err());
    /// let fresh = RequestId::generate();
    /// assert_eq!(fresh.as_str().len(), 22);
    /// ```
    RequestId,
    "request id",
    check_request
);

impl RequestId {
    /// A fresh random request id (128 bits, URL-safe base64).
    pub fn generate() -> Self {
        Self::from_random(random_bytes::<16>())
    }

    /// The request id [`RequestId::generate`] makes of 16 random bytes, for a caller that
    /// draws them from a generator of its own (a thread's CSPRNG, say): 22 characters of
    /// URL-safe base64, always a valid id, so nothing is checked.
    ///
    /// ```
    /// use tenancy_core::RequestId;
    /// let id = RequestId::from_random([0xfb; 16]);
    /// assert_eq!(id.as_str(), "-_v7-_v7-_v7-_v7-_v7-w");
    /// assert_eq!(RequestId::parse(id.as_str()), Ok(id));
    /// ```
    pub fn from_random(raw: [u8; 16]) -> Self {
        let mut text = [0u8; 22];
        // 16 bytes always encode to exactly 22 characters of the URL-safe alphabet.
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .unwrap_or_default();
        Self(Arc::from(
            std::str::from_utf8(&text[..n]).unwrap_or_default(),
        ))
    }
}

/// Fills an array from the operating system's CSPRNG.
///
/// # Panics
/// When the operating system has no entropy source, which no supported platform lacks; a
/// session id must never fall back to a weaker generator.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the operating system's random number generator failed");
    buf
}

/// A session id: 128 bits from the operating system's CSPRNG, as 22 characters of URL-safe
/// base64 without padding.
///
/// ```
/// use tenancy_core::SessionId;
/// let a = SessionId::generate();
/// let b = SessionId::generate();
/// assert_ne!(a, b);
/// assert!(SessionId::parse("too-short").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16], [u8; 22]);

impl SessionId {
    /// A fresh random session id.
    pub fn generate() -> Self {
        Self::from_bytes(random_bytes::<16>())
    }

    fn from_bytes(raw: [u8; 16]) -> Self {
        let mut text = [0u8; 22];
        // 16 bytes always encode to exactly 22 characters without padding.
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .unwrap_or_default();
        debug_assert_eq!(n, 22);
        Self(raw, text)
    }

    /// Parses the 22-character text form.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "session id";
        if s.len() != 22 {
            return Err(ParseError::new(WHAT, "must be 22 characters"));
        }
        let mut raw = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut raw) {
            Ok(16) => {}
            _ => return Err(ParseError::new(WHAT, "must be URL-safe base64 of 16 bytes")),
        }
        let id = Self::from_bytes(raw);
        // Reject non-canonical encodings (trailing bits set) so that one id has one text.
        if id.as_str() != s {
            return Err(ParseError::new(WHAT, "is not in canonical form"));
        }
        Ok(id)
    }

    /// The 22-character text form.
    pub fn as_str(&self) -> &str {
        // Only base64url characters are ever stored.
        std::str::from_utf8(&self.1).unwrap_or_default()
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Session ids are bearer secrets in some deployments: show only a prefix.
        write!(f, "SessionId({}…)", &self.as_str()[..6])
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::parse(s)
    }
}

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_refuse_hostile_input() {
        let long = "a".repeat(65);
        for bad in [
            "",
            "{acme}",
            "ac{me",
            "ac}me",
            "o'brien",
            "a b",
            " acme",
            "acme\0",
            "ACME",
            "Acme",
            "_acme",
            "-acme",
            "acme;drop",
            "a:b",
            "a*",
            "a/b",
            "a.b",
            "é",
            &long,
        ] {
            let err = TenantId::parse(bad).expect_err(bad);
            assert_eq!(err.what(), "tenant id");
        }
        assert!(TenantId::parse(&"a".repeat(64)).is_ok());
        assert!(TenantId::parse("0abc_def-9").is_ok());
    }

    #[test]
    fn user_ids_refuse_blank_looking_code_points() {
        let blank = [
            '\u{034F}',  // combining grapheme joiner
            '\u{115F}',  // Hangul choseong filler
            '\u{1160}',  // Hangul jungseong filler
            '\u{3164}',  // Hangul filler
            '\u{FFA0}',  // halfwidth Hangul filler
            '\u{17B4}',  // Khmer vowel inherent aq
            '\u{17B5}',  // Khmer vowel inherent aa
            '\u{180E}',  // Mongolian vowel separator
            '\u{2800}',  // braille pattern blank
            '\u{2065}',  // reserved, default ignorable
            '\u{FFF0}',  // reserved, default ignorable
            '\u{E0000}', // reserved, default ignorable
            '\u{E00FF}', // before the variation selectors
            '\u{E01F0}', // after them
            '\u{E0FFF}', // last of the block
        ];
        for c in blank {
            for id in [format!("admin{c}"), format!("ad{c}min")] {
                let err = UserId::parse(&id).expect_err(&format!("U+{:04X}", u32::from(c)));
                assert_eq!(err.what(), "user id");
            }
        }
        // Neighbours of the ranges are ordinary text and stay accepted.
        for ok in [
            "\u{3163}", "\u{3165}", "\u{2801}", "\u{1161}", "\u{FFA1}", "\u{17B6}",
        ] {
            assert!(UserId::parse(&format!("a{ok}")).is_ok(), "{ok:?}");
        }
        // Variation selectors choose a glyph of the character before them: names need them.
        for name in [
            "\u{2764}\u{FE0F}",  // heart, emoji presentation
            "\u{845B}\u{E0100}", // an ideographic variant
            "\u{1820}\u{180B}",  // Mongolian with a free variation selector
            "\u{1820}\u{180F}",
        ] {
            assert!(UserId::parse(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn default_ignorable_table_is_sorted_and_disjoint() {
        for w in DEFAULT_IGNORABLE.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{w:?}");
        }
    }

    #[test]
    fn parse_errors_do_not_echo_input() {
        let err = TenantId::parse("x' OR '1'='1").unwrap_err();
        assert!(!err.to_string().contains("OR"));
    }

    #[test]
    fn serde_goes_through_the_checked_parse() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
        assert!(serde_json::from_str::<UserId>("\"\\u0000\"").is_err());
        let sid = SessionId::generate();
        let json = serde_json::to_string(&sid).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), sid);
    }

    #[test]
    fn request_ids_from_random_bytes_are_valid_without_a_check() {
        let mut raw = [0u8; 16];
        for seed in 0..=255u8 {
            for (i, b) in raw.iter_mut().enumerate() {
                *b = seed
                    .wrapping_mul(31)
                    .wrapping_add(i as u8)
                    .rotate_left(u32::from(seed % 8));
            }
            let id = RequestId::from_random(raw);
            assert_eq!(id.as_str().len(), 22);
            assert_eq!(RequestId::parse(id.as_str()).unwrap(), id);
            assert_eq!(id.as_str(), URL_SAFE_NO_PAD.encode(raw));
        }
    }

    #[test]
    fn session_ids_are_canonical_and_random() {
        let a = SessionId::generate();
        assert_eq!(a.as_str().len(), 22);
        assert_eq!(SessionId::parse(a.as_str()).unwrap(), a);
        assert_ne!(a, SessionId::generate());
        // The last character of a 16-byte encoding carries 4 unused bits.
        let mut s = a.as_str().to_owned();
        let last = s.pop().unwrap();
        let alt = if last == 'A' { 'B' } else { 'A' };
        s.push(alt);
        if let Ok(other) = SessionId::parse(&s) {
            assert_eq!(other.as_str(), s);
        }
        assert!(SessionId::parse("!!!!!!!!!!!!!!!!!!!!!!").is_err());
        assert!(!format!("{a:?}").contains(a.as_str()));
    }

    #[test]
    fn request_ids_refuse_header_injection() {
        assert!(RequestId::parse("abc\r\nx").is_err());
        assert!(RequestId::parse(&"a".repeat(129)).is_err());
        assert!(RequestId::parse("req-1.2:3_x").is_ok());
    }
}
