//! The stable, versioned byte form of an event: what is stored, hashed and spooled.
//!
//! Version 1 is canonical JSON of `{"event": <AuditEvent>, "v": 1}`: object keys sorted by
//! their UTF-8 bytes at every level, no insignificant white space, strings escaped the way
//! `serde_json` escapes them, `occurred_at` in RFC 3339 truncated to the microsecond (what
//! PostgreSQL keeps). The bytes never contain a raw newline, so one payload fits one line of a
//! JSONL file. A decoder refuses unknown versions and unknown fields rather than guess.
//!
//! Encoding applies the [`RedactionPolicy`] first: the original values never reach the
//! bytes.
//!
//! ```
//! use tenancy_audit::codec::Codec;
//! use tenancy_core::{AuditEvent, Outcome, TenantId};
//!
//! let codec = Codec::default();
//! let event = AuditEvent::new(TenantId::parse("acme")?, "records.read", Outcome::Success)
//!     .with_detail("b", 2)
//!     .with_detail("a", 1);
//! let encoded = codec.encode(&event)?;
//! assert!(encoded.payload.starts_with(br#"{"event":{"action":"records.read","actor":{},"details":{"a":1,"b":2}"#));
//! let back = codec.decode(&encoded.payload)?;
//! assert_eq!(back.event_id, event.event_id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::RefCell;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use tenancy_core::{AuditEvent, EventId, TenantId};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::redact::RedactionPolicy;
use crate::{Error, Result};

/// The current format version.
pub const FORMAT_VERSION: u32 = 1;

/// An event ready for a store: redacted and encoded, with the fields a store indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    /// The tenant whose chain the event joins.
    pub tenant: TenantId,
    /// The event id (idempotency key within the tenant).
    pub event_id: EventId,
    /// When it happened, to the microsecond.
    pub occurred_at: OffsetDateTime,
    /// The exact bytes to store; shared, so that the record a store chains from them holds
    /// these bytes rather than a copy until it has written them.
    pub payload: Arc<[u8]>,
}

impl EncodedEvent {
    /// Reads the indexed fields back from stored bytes (used by the spool and by importers).
    ///
    /// # Errors
    /// [`Error::Malformed`] when the bytes are not a version-1 payload.
    pub fn from_payload(payload: impl Into<Arc<[u8]>>) -> Result<Self> {
        let payload = payload.into();
        let event = decode(&payload)?;
        Ok(Self {
            tenant: event.tenant,
            event_id: event.event_id,
            occurred_at: event.occurred_at,
            payload,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn {
    event: AuditEvent,
    v: u32,
}

/// Encodes and decodes events under a redaction policy.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    policy: RedactionPolicy,
}

impl Codec {
    /// A codec applying `policy`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the policy cannot be applied (hashing without a key).
    pub fn new(policy: RedactionPolicy) -> Result<Self> {
        policy.validate()?;
        Ok(Self { policy })
    }

    /// The policy applied on encode.
    pub fn policy(&self) -> &RedactionPolicy {
        &self.policy
    }

    /// Redacts and encodes an event.
    ///
    /// # Errors
    /// [`Error::Encode`] if serialisation fails.
    pub fn encode(&self, event: &AuditEvent) -> Result<EncodedEvent> {
        self.encode_owned(event.clone())
    }

    /// [`Codec::encode`] for an event the caller no longer needs: no copy is made.
    ///
    /// # Errors
    /// [`Error::Encode`] if serialisation fails.
    pub fn encode_owned(&self, mut event: AuditEvent) -> Result<EncodedEvent> {
        self.policy.apply(&mut event);
        event.occurred_at = truncate_micros(event.occurred_at);
        let payload = encode_in_scratch(&event)?;
        Ok(EncodedEvent {
            tenant: event.tenant,
            event_id: event.event_id,
            occurred_at: event.occurred_at,
            payload,
        })
    }

    /// Decodes stored bytes (already redacted: decoding restores nothing).
    ///
    /// # Errors
    /// [`Error::Malformed`] for anything but a version-1 payload.
    pub fn decode(&self, payload: &[u8]) -> Result<AuditEvent> {
        decode(payload)
    }
}

/// The scratch buffer a thread keeps between events; one grown past [`SCRATCH_KEPT`] by a
/// large event is let go after it, so that a rare large event pins no memory on every thread.
const SCRATCH_START: usize = 512;
const SCRATCH_KEPT: usize = 16 * 1024;

/// Writes the envelope into the thread's scratch buffer (kept between events, so it grows
/// once) and copies the bytes, exactly as long as they are, into one shared allocation.
fn encode_in_scratch(event: &AuditEvent) -> Result<Arc<[u8]>> {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH_START));
    }
    let write = |buf: &mut Vec<u8>| -> Result<Arc<[u8]>> {
        buf.clear();
        let written = write_envelope(event, buf).map_err(Error::Encode);
        let bytes = written.map(|()| Arc::from(buf.as_slice()));
        if buf.capacity() > SCRATCH_KEPT {
            *buf = Vec::with_capacity(SCRATCH_START);
        }
        bytes
    };
    SCRATCH
        .try_with(|s| match s.try_borrow_mut() {
            Ok(mut buf) => write(&mut buf),
            Err(_) => write(&mut Vec::new()),
        })
        .unwrap_or_else(|_| write(&mut Vec::new()))
}

/// Decodes stored bytes; see [`Codec::decode`].
///
/// # Errors
/// [`Error::Malformed`] for anything but a version-1 payload.
pub fn decode(payload: &[u8]) -> Result<AuditEvent> {
    let env: EnvelopeIn =
        serde_json::from_slice(payload).map_err(|e| Error::malformed("event payload", e))?;
    if env.v != FORMAT_VERSION {
        return Err(Error::malformed_plain("unsupported payload format version"));
    }
    Ok(env.event)
}

/// The fields verification compares, read without decoding the whole event.
#[derive(Deserialize)]
pub(crate) struct Header<'a> {
    #[serde(borrow)]
    pub(crate) event: HeaderEvent<'a>,
    pub(crate) v: u32,
}

#[derive(Deserialize)]
pub(crate) struct HeaderEvent<'a> {
    #[serde(borrow)]
    pub(crate) tenant: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) occurred_at: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) action: std::borrow::Cow<'a, str>,
}

/// Reads the [`Header`] of stored bytes; `None` when they are not a version-1 payload.
pub(crate) fn header(payload: &[u8]) -> Option<Header<'_>> {
    serde_json::from_slice::<Header<'_>>(payload)
        .ok()
        .filter(|h| h.v == FORMAT_VERSION)
}

/// Drops sub-microsecond precision.
pub(crate) fn truncate_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}

/// `"name":`, the way [`Object::key`] takes a key: the quotes and the colon written once, at
/// compile time.
macro_rules! key {
    ($name:literal) => {
        concat!("\"", $name, "\":").as_bytes()
    };
}

/// Writes `{"event":<event>,"v":1}` in canonical form, field by field.
///
/// The event's own fields have a fixed shape, so their keys are written in byte order here
/// without building a [`Value`] tree; only `details`, whose shape is the caller's, goes
/// through [`write_canonical`]. The test `direct_encoding_equals_the_canonical_form_of_the_serde_tree`
/// holds these bytes equal to the canonical form of the event's serde serialisation.
fn write_envelope(event: &AuditEvent, out: &mut Vec<u8>) -> serde_json::Result<()> {
    // Destructured without `..`: a new field is a compile error here until it is written.
    let AuditEvent {
        event_id,
        occurred_at,
        tenant,
        actor,
        action,
        resource,
        origin,
        outcome,
        reason,
        details,
    } = event;
    let mut env = Object::open(out);
    env.key(key!("event"));
    let mut ev = Object::open(env.out);
    ev.string(key!("action"), action);
    ev.key(key!("actor"));
    let mut a = Object::open(ev.out);
    a.optional(
        key!("role"),
        actor.role.as_ref().map(tenancy_core::Role::as_str),
    );
    a.optional(key!("session"), actor.session.as_ref().map(|s| s.as_str()));
    a.optional(key!("user"), actor.user.as_ref().map(|u| u.as_str()));
    a.close();
    if !details.is_empty() {
        ev.key(key!("details"));
        // The envelope is level 0, the event 1, its details 2 (as `write_canonical` counts
        // the same tree).
        write_object(details, ev.out, 2);
    }
    ev.key(key!("event_id"));
    write_event_id(event_id, ev.out);
    ev.key(key!("occurred_at"));
    write_timestamp(*occurred_at, ev.out)?;
    ev.key(key!("origin"));
    let mut o = Object::open(ev.out);
    if let Some(addr) = origin.client_addr {
        o.key(key!("client_addr"));
        write_addr(addr, o.out);
    }
    o.optional(
        key!("request_id"),
        origin.request_id.as_ref().map(|r| r.as_str()),
    );
    o.optional(key!("route"), origin.route.as_deref());
    o.close();
    ev.string(key!("outcome"), outcome_name(*outcome));
    ev.optional(key!("reason"), reason.as_deref());
    if let Some(resource) = resource {
        ev.key(key!("resource"));
        let mut r = Object::open(ev.out);
        r.optional(key!("id"), resource.id.as_deref());
        r.string(key!("kind"), &resource.kind);
        r.close();
    }
    ev.string(key!("tenant"), tenant.as_str());
    ev.close();
    env.key(key!("v"));
    serde_json::to_writer(&mut *env.out, &FORMAT_VERSION)?;
    env.close();
    Ok(())
}

/// The name `serde` gives an outcome (`rename_all = "snake_case"`).
fn outcome_name(outcome: tenancy_core::Outcome) -> &'static str {
    use tenancy_core::Outcome;
    match outcome {
        Outcome::Success => "success",
        Outcome::Denied => "denied",
        Outcome::Failure => "failure",
        Outcome::Error => "error",
    }
}

/// The id as 32 lowercase hex digits between quotes, as its `Display` writes it.
fn write_event_id(id: &EventId, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'"'; 34];
    for (pair, b) in text[1..33].chunks_exact_mut(2).zip(id.as_bytes()) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
    out.extend_from_slice(&text);
}

/// An address in its `Display` form between quotes (the text needs no escaping). IPv4
/// addresses, the usual case, are written octet by octet rather than through `fmt`.
fn write_addr(addr: std::net::IpAddr, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.push(b'"');
    match addr {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        // Writing into a Vec cannot fail.
        std::net::IpAddr::V6(v6) => drop(write!(out, "{v6}")),
    }
    out.push(b'"');
}

/// `occurred_at` in RFC 3339 between quotes, as `time`'s `Rfc3339` writes it: UTC as `Z`, the
/// fraction of a second only when there is one, without trailing zeros. Written digit by
/// digit for UTC times of years 0 to 9999 (every event the clock makes); any other offset or
/// year goes through `time`, which refuses what RFC 3339 cannot express.
fn write_timestamp(t: OffsetDateTime, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let year = t.year();
    if !t.offset().is_utc() || !(0..=9999).contains(&year) {
        out.push(b'"');
        t.format_into(&mut *out, &Rfc3339)
            .map_err(<serde_json::Error as serde::ser::Error>::custom)?;
        out.push(b'"');
        return Ok(());
    }
    let mut text = *b"\"0000-00-00T00:00:00.000000000Z\"";
    let mut put = |at: usize, digits: usize, mut value: u32| {
        for i in (at..at + digits).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(1, 4, year.unsigned_abs());
    put(6, 2, u32::from(u8::from(t.month())));
    put(9, 2, u32::from(t.day()));
    put(12, 2, u32::from(t.hour()));
    put(15, 2, u32::from(t.minute()));
    put(18, 2, u32::from(t.second()));
    let nanos = t.nanosecond();
    if nanos == 0 {
        out.extend_from_slice(&text[..20]);
    } else {
        put(21, 9, nanos);
        let mut end = 30;
        while text[end - 1] == b'0' {
            end -= 1;
        }
        out.extend_from_slice(&text[..end]);
    }
    out.extend_from_slice(b"Z\"");
    Ok(())
}

/// A JSON object being written; the caller passes keys in byte order.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// Writes a key made by [`key!`] (`"name":`; keys are plain ASCII names that need no
    /// escaping), after a comma unless it is the first.
    fn key(&mut self, key: &[u8]) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.extend_from_slice(key);
    }

    fn string(&mut self, key: &[u8], value: &str) {
        self.key(key);
        write_string(value, self.out);
    }

    fn optional(&mut self, key: &[u8], value: Option<&str>) {
        if let Some(v) = value {
            self.string(key, v);
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// The deepest level of objects and arrays a payload holds (the envelope is level 0); a
/// deeper one is stored as the string [`TOO_DEEP`]. Why: what is stored must decode again
/// (`serde_json` refuses documents nested deeper than 128 levels), and writing a
/// caller's arbitrarily deep tree must not exhaust the stack.
pub const MAX_DEPTH: usize = 64;

/// What replaces an object or array nested deeper than [`MAX_DEPTH`].
pub const TOO_DEEP: &str = "[nested too deep]";

fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>, depth: usize) {
    if depth > MAX_DEPTH {
        write_string(TOO_DEEP, out);
        return;
    }
    // `serde_json::Map` is a `BTreeMap` unless its `preserve_order` feature is on: its keys
    // then come in byte order already and need no sorting.
    let sorted = map
        .keys()
        .zip(map.keys().skip(1))
        .all(|(a, b)| a.as_bytes() < b.as_bytes());
    if sorted {
        write_entries(map.iter(), out, depth);
    } else {
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        write_entries(entries.into_iter(), out, depth);
    }
}

/// Writes an object's entries, given in byte order of their keys.
fn write_entries<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
    depth: usize,
) {
    out.push(b'{');
    for (i, (k, x)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        write_canonical(x, out, depth + 1);
    }
    out.push(b'}');
}

fn write_canonical(v: &Value, out: &mut Vec<u8>, depth: usize) {
    match v {
        Value::Object(map) => write_object(map, out, depth),
        Value::Array(_) if depth > MAX_DEPTH => write_string(TOO_DEEP, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out, depth + 1);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        // Numbers, booleans and null: serde_json's own compact form, written in place.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// Whether a JSON string needs escaping: a control character, a quote or a backslash in it.
/// Eight bytes at a time (each test is exact for whether any byte of the word matches), then
/// the rest byte by byte.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    /// Whether some byte of `x` is zero.
    fn zero_byte(x: u64) -> bool {
        x.wrapping_sub(ONES) & !x & HIGH != 0
    }
    let mut words = s.chunks_exact(8);
    let mut found = false;
    for w in &mut words {
        let mut b = [0; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b);
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
        found |= control
            | zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')));
    }
    found
        || words
            .remainder()
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A JSON string as `serde_json` writes it. Most text needs no escaping ([`needs_escape`]):
/// it is copied between quotes as it is.
fn write_string(s: &str, out: &mut Vec<u8>) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serialising a `str` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use tenancy_core::Outcome;

    #[test]
    fn encoding_is_canonical_versioned_and_single_line() {
        let t = TenantId::parse("acme").unwrap();
        let e = AuditEvent::new(t, "a.b", Outcome::Success)
            .with_reason("line\nbreak")
            .with_detail("z", serde_json::json!({"y": [1, {"b": 2, "a": 1}]}));
        let codec = Codec::default();
        let one = codec.encode(&e).unwrap();
        let two = codec.encode(&e).unwrap();
        assert_eq!(one, two);
        assert!(!one.payload.contains(&b'\n'));
        let text = std::str::from_utf8(&one.payload).unwrap();
        assert!(text.contains(r#"{"a":1,"b":2}"#), "{text}");
        assert!(text.ends_with(r#","v":1}"#), "{text}");
        let back = codec.decode(&one.payload).unwrap();
        assert_eq!(back.occurred_at, one.occurred_at);
        assert_eq!(back.occurred_at.nanosecond() % 1000, 0);

        let v2 = text.replace(r#""v":1}"#, r#""v":2}"#);
        assert!(matches!(
            decode(v2.as_bytes()),
            Err(Error::Malformed { .. })
        ));
        assert!(decode(b"not json").is_err());
    }

    #[test]
    fn canonical_form_of_every_kind_of_value_is_pinned() {
        // Stored payloads are hashed: this exact text must never change.
        let v = serde_json::json!({
            "z": null,
            "é": "accent",
            "a": [true, false, -7, 18446744073709551615u64, 1.5, "q\"\u{1}\n"],
            "m": {"b": {"d": 1, "c": 2}, "a": {}},
            "A": 0,
        });
        let mut out = Vec::new();
        write_canonical(&v, &mut out, 0);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"A":0,"a":[true,false,-7,18446744073709551615,1.5,"q\"\u0001\n"],"m":{"a":{},"b":{"c":2,"d":1}},"z":null,"é":"accent"}"#
        );
    }

    /// The canonical form of the event's serde serialisation: what `write_envelope` must equal.
    fn reference(event: &AuditEvent) -> Vec<u8> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            event: &'a AuditEvent,
            v: u32,
        }
        let value = serde_json::to_value(Envelope {
            event,
            v: FORMAT_VERSION,
        })
        .unwrap();
        let mut out = Vec::new();
        write_canonical(&value, &mut out, 0);
        out
    }

    #[test]
    fn details_nested_too_deep_are_cut_so_that_the_payload_decodes() {
        let mut deep = serde_json::json!("leaf");
        for _ in 0..500 {
            deep = serde_json::json!([{ "x": deep }]);
        }
        let e = AuditEvent::new(TenantId::parse("acme").unwrap(), "x.y", Outcome::Success)
            .with_detail("deep", deep)
            .with_detail("shallow", serde_json::json!({"a": [1, 2]}));
        let encoded = Codec::default().encode(&e).unwrap();
        let back = decode(&encoded.payload).expect("a stored payload decodes");
        assert_eq!(back.details["shallow"], serde_json::json!({"a": [1, 2]}));
        let text = std::str::from_utf8(&encoded.payload).unwrap();
        assert!(text.contains(TOO_DEEP), "{}", &text[..200.min(text.len())]);
        // The cut is where MAX_DEPTH says: the envelope, the event, the details, then the
        // value's own levels.
        let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
        for c in text.bytes() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (true, false, b'"') | (false, _, b'"') => in_string = !in_string,
                (false, _, b'[' | b'{') => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                (false, _, b']' | b'}') => depth -= 1,
                _ => {}
            }
        }
        // Levels 0 to MAX_DEPTH hold objects or arrays: MAX_DEPTH + 1 of them at most.
        assert_eq!(deepest, MAX_DEPTH + 1);
    }

    fn full_event() -> AuditEvent {
        let mut e = AuditEvent::new(
            TenantId::parse("acme").unwrap(),
            "records.update",
            Outcome::Denied,
        )
        .with_user(tenancy_core::UserId::parse("alice@example.com").unwrap())
        .with_role(tenancy_core::Role::TenantAdmin)
        .with_resource("record", "42")
        .with_route("/v1/records/{id}")
        .with_reason("missing \"records:write\"\n")
        .with_detail("z", serde_json::json!({"b": [1, null, 2.5], "a": "é"}))
        .with_detail("A", true);
        e.event_id = EventId::from_bytes([0xab; 16]);
        e.occurred_at =
            OffsetDateTime::from_unix_timestamp_nanos(1_795_336_201_123_456_000).unwrap();
        e.origin.request_id = Some(tenancy_core::RequestId::parse("req-1").unwrap());
        e.origin.client_addr = Some("2001:db8::7".parse().unwrap());
        e.actor.session = Some(tenancy_core::SessionId::generate());
        e
    }

    #[test]
    fn an_event_with_every_field_encodes_to_pinned_bytes() {
        // Stored payloads are hashed: this exact text must never change. (The default policy
        // drops the session.)
        let encoded = Codec::default().encode(&full_event()).unwrap();
        assert_eq!(
            std::str::from_utf8(&encoded.payload).unwrap(),
            concat!(
                r#"{"event":{"action":"records.update","actor":{"role":"tenant_admin","user":"alice@example.com"},"#,
                r#""details":{"A":true,"z":{"a":"é","b":[1,null,2.5]}},"#,
                r#""event_id":"abababababababababababababababab","occurred_at":"2026-11-22T08:30:01.123456Z","#,
                r#""origin":{"client_addr":"2001:db8::7","request_id":"req-1","route":"/v1/records/{id}"},"#,
                r#""outcome":"denied","reason":"missing \"records:write\"\n","#,
                r#""resource":{"id":"42","kind":"record"},"tenant":"acme"},"v":1}"#
            )
        );
    }

    proptest::proptest! {
        #[test]
        fn direct_encoding_equals_the_canonical_form_of_the_serde_tree(
            user in proptest::option::of("[a-zA-Z0-9@._-]{1,20}"),
            role in proptest::option::of(0..3u8),
            session in proptest::bool::ANY,
            resource in proptest::option::of(("[a-z]{1,8}", proptest::option::of("\\PC{0,12}"))),
            route in proptest::option::of("/[a-z{}/]{0,16}"),
            request_id in proptest::option::of("[a-zA-Z0-9-]{1,16}"),
            addr in proptest::option::of(proptest::prelude::any::<std::net::IpAddr>()),
            reason in proptest::option::of("\\PC{0,16}|[\\x00-\\x1f\"\\\\]{1,4}"),
            outcome in 0..4u8,
            nanos in 0..1_000_000_000u32,
            details in proptest::collection::btree_map("\\PC{1,6}", proptest::prelude::any::<i64>(), 0..4),
            action in "[a-z]{1,6}\\.[a-z]{1,6}",
        ) {
            let outcome = [Outcome::Success, Outcome::Denied, Outcome::Failure, Outcome::Error][usize::from(outcome)];
            let mut e = AuditEvent::new(TenantId::parse("t-1").unwrap(), action, outcome);
            e.occurred_at = truncate_micros(e.occurred_at.replace_nanosecond(nanos).unwrap());
            e.actor.user = user.map(|u| tenancy_core::UserId::parse(&u).unwrap());
            e.actor.role = role.map(|r| [tenancy_core::Role::User, tenancy_core::Role::TenantAdmin, tenancy_core::Role::SuperAdmin][usize::from(r)].clone());
            e.actor.session = session.then(tenancy_core::SessionId::generate);
            e.resource = resource.map(|(kind, id)| tenancy_core::ResourceRef { kind, id });
            e.origin.route = route;
            e.origin.request_id = request_id.map(|r| tenancy_core::RequestId::parse(&r).unwrap());
            e.origin.client_addr = addr;
            e.reason = reason;
            for (k, v) in details {
                e.details.insert(k, v.into());
            }
            let mut direct = Vec::new();
            write_envelope(&e, &mut direct).unwrap();
            proptest::prop_assert_eq!(
                String::from_utf8(direct.clone()).unwrap(),
                String::from_utf8(reference(&e)).unwrap()
            );
            proptest::prop_assert_eq!(decode(&direct).unwrap(), e);
        }
    }

    fn time_text(t: OffsetDateTime) -> Option<String> {
        let mut out = Vec::new();
        write_timestamp(t, &mut out).ok()?;
        Some(String::from_utf8(out).unwrap())
    }

    proptest::proptest! {
        #[test]
        fn timestamps_are_written_as_time_writes_rfc3339(
            // From 0000-01-01 to 9999-12-31, every nanosecond pattern.
            secs in -62_167_219_200i64..253_402_300_800,
            nanos in proptest::prop_oneof![0..1_000_000_000u32, proptest::strategy::Strategy::prop_map(0..1_000_000u32, |n| n * 1_000), proptest::strategy::Just(0)],
            offset_mins in proptest::prop_oneof![proptest::strategy::Just(0i32), -1439..1440i32],
        ) {
            let offset = time::UtcOffset::from_whole_seconds(offset_mins * 60).unwrap();
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap()
                .replace_nanosecond(nanos).unwrap()
                .to_offset(offset);
            let expected = t.format(&Rfc3339).ok().map(|s| format!("\"{s}\""));
            proptest::prop_assert_eq!(time_text(t), expected);
        }
    }

    #[test]
    fn timestamps_at_the_edges_of_rfc3339() {
        let at = |s: i64, n: u32| {
            OffsetDateTime::from_unix_timestamp(s)
                .unwrap()
                .replace_nanosecond(n)
                .unwrap()
        };
        assert_eq!(
            time_text(at(-62_167_219_200, 0)).as_deref(),
            Some("\"0000-01-01T00:00:00Z\"")
        );
        assert_eq!(
            time_text(at(253_402_300_799, 999_999_999)).as_deref(),
            Some("\"9999-12-31T23:59:59.999999999Z\"")
        );
        assert_eq!(
            time_text(at(951_782_400, 120_000_000)).as_deref(),
            Some("\"2000-02-29T00:00:00.12Z\"")
        );
        // A year RFC 3339 cannot write (here -1) is refused, as `time` refuses it.
        assert_eq!(time_text(at(-62_167_219_201, 0)), None);
    }

    #[test]
    fn addresses_are_written_as_they_display() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:1.2.3.4",
        ] {
            let addr: std::net::IpAddr = text.parse().unwrap();
            let mut out = Vec::new();
            write_addr(addr, &mut out);
            assert_eq!(out, format!("\"{addr}\"").into_bytes(), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_exactly_when_serde_escapes_them(
            s in "\\PC{0,40}|[ -~]{0,40}|[\\x00-\\x7f]{0,24}",
        ) {
            let serde = serde_json::to_string(&s).unwrap();
            proptest::prop_assert_eq!(needs_escape(s.as_bytes()), serde.len() != s.len() + 2);
            let mut out = Vec::new();
            write_string(&s, &mut out);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde);
        }
    }

    #[test]
    fn event_ids_print_as_lowercase_hex() {
        let id = EventId::from_bytes([
            0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff, 0, 0, 0, 0, 0, 0, 0x10, 0x9a,
        ]);
        assert_eq!(id.to_string(), "00017f80abcdefff000000000000109a");
        assert_eq!(EventId::parse(&id.to_string()).unwrap(), id);
    }
}
