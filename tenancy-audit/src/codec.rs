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

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tenancy_core::{AuditEvent, EventId, TenantId};
use time::OffsetDateTime;

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
    /// The exact bytes to store.
    pub payload: Vec<u8>,
}

impl EncodedEvent {
    /// Reads the indexed fields back from stored bytes (used by the spool and by importers).
    ///
    /// # Errors
    /// [`Error::Malformed`] when the bytes are not a version-1 payload.
    pub fn from_payload(payload: Vec<u8>) -> Result<Self> {
        let event = decode(&payload)?;
        Ok(Self {
            tenant: event.tenant,
            event_id: event.event_id,
            occurred_at: event.occurred_at,
            payload,
        })
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    event: &'a AuditEvent,
    v: u32,
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
        let value = serde_json::to_value(EnvelopeOut {
            event: &event,
            v: FORMAT_VERSION,
        })
        .map_err(Error::Encode)?;
        let mut payload = Vec::with_capacity(256);
        write_canonical(&value, &mut payload);
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

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            // `serde_json::Map` is a `BTreeMap` unless its `preserve_order` feature is on:
            // its keys then come in byte order already and need no sorting.
            let sorted = map
                .keys()
                .zip(map.keys().skip(1))
                .all(|(a, b)| a.as_bytes() < b.as_bytes());
            if sorted {
                out.push(b'{');
                for (i, (k, x)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(k, out);
                    out.push(b':');
                    write_canonical(x, out);
                }
                out.push(b'}');
                return;
            }
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                if let Some(x) = map.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
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

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a `str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
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
        write_canonical(&v, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"A":0,"a":[true,false,-7,18446744073709551615,1.5,"q\"\u0001\n"],"m":{"a":{},"b":{"c":2,"d":1}},"z":null,"é":"accent"}"#
        );
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
