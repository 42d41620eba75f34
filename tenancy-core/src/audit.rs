//! Audit events and the [`AuditSink`] that accepts them.
//!
//! An [`AuditEvent`] records who (tenant, user, role, session) did what (action, resource),
//! when, from where (request id, route template, client address), with which outcome and why.
//! The tamper-evident store behind a sink belongs to `tenancy-audit`.
//!
//! ```
//! use tenancy_core::{AuditEvent, Outcome, TenantId, UserId};
//!
//! let event = AuditEvent::new(TenantId::parse("acme")?, "records.read", Outcome::Success)
//!     .with_user(UserId::parse("alice")?)
//!     .with_resource("record", "42")
//!     .with_route("/v1/records/{id}");
//! assert_eq!(event.action, "records.read");
//! # Ok::<(), tenancy_core::ParseError>(())
//! ```

use std::fmt;
use std::net::IpAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::id::random_bytes;
use crate::{RequestId, Result, Role, SessionId, TenantId, UserId};

/// Whether the audited action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Success,
    /// Refused by authentication, authorization or a limit.
    Denied,
    /// Attempted and failed (bad credentials, invalid input, not found).
    Failure,
    /// Failed because of the server or a backend.
    Error,
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// The user, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    /// The user's role, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The session, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
}

/// What was acted on: a resource type and an opaque id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    /// The resource type (`record`, `tenant`, `session`, ...).
    pub kind: String,
    /// The resource's id, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Where the action came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The route template (`/v1/records/{id}`), never the raw path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The client address, as resolved through trusted proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<IpAddr>,
}

/// A unique event id: 128 random bits as 32 lowercase hex digits. Used for idempotent
/// writes: storing the same event id twice stores it once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId([u8; 16]);

impl EventId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(random_bytes::<16>())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id with these raw bytes (as stored by a backend that keeps ids in binary).
    ///
    /// ```
    /// use tenancy_core::EventId;
    ///
    /// let id = EventId::generate();
    /// assert_eq!(EventId::from_bytes(*id.as_bytes()), id);
    /// assert_eq!(EventId::from_bytes([0xab; 16]).to_string(), "ab".repeat(16));
    /// ```
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> std::result::Result<Self, crate::ParseError> {
        let err = || crate::ParseError::new("event id", "must be 32 lowercase hex digits");
        if s.len() != 32 {
            return Err(err());
        }
        let mut out = [0u8; 16];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = (hex(chunk[0]).ok_or_else(err)? << 4) | hex(chunk[1]).ok_or_else(err)?;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 32];
        for (pair, b) in buf.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Unique id (idempotency key).
    pub event_id: EventId,
    /// When the action happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The tenant whose trail records the event.
    pub tenant: TenantId,
    /// Who acted.
    #[serde(default)]
    pub actor: Actor,
    /// What was done, as `area.verb` (`records.read`, `auth.login`, `admin.tenant.suspend`).
    pub action: String,
    /// What it was done to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceRef>,
    /// Where it came from.
    #[serde(default)]
    pub origin: Origin,
    /// The outcome.
    pub outcome: Outcome,
    /// Why (a denial reason, a failure class); never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Further details; redaction applies to these before anything is stored.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl AuditEvent {
    /// An event for `tenant` with a fresh id, stamped now.
    pub fn new(tenant: TenantId, action: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            event_id: EventId::generate(),
            occurred_at: OffsetDateTime::now_utc(),
            tenant,
            actor: Actor::default(),
            action: action.into(),
            resource: None,
            origin: Origin::default(),
            outcome,
            reason: None,
            details: serde_json::Map::new(),
        }
    }

    /// With the acting user.
    pub fn with_user(mut self, user: UserId) -> Self {
        self.actor.user = Some(user);
        self
    }

    /// With the acting user's role.
    pub fn with_role(mut self, role: Role) -> Self {
        self.actor.role = Some(role);
        self
    }

    /// With the acting session.
    pub fn with_session(mut self, session: SessionId) -> Self {
        self.actor.session = Some(session);
        self
    }

    /// With the resource acted on.
    pub fn with_resource(mut self, kind: impl Into<String>, id: impl Into<String>) -> Self {
        self.resource = Some(ResourceRef {
            kind: kind.into(),
            id: Some(id.into()),
        });
        self
    }

    /// With the request id.
    pub fn with_request_id(mut self, id: RequestId) -> Self {
        self.origin.request_id = Some(id);
        self
    }

    /// With the route template.
    pub fn with_route(mut self, route: impl Into<String>) -> Self {
        self.origin.route = Some(route.into());
        self
    }

    /// With the client address.
    pub fn with_client_addr(mut self, addr: IpAddr) -> Self {
        self.origin.client_addr = Some(addr);
        self
    }

    /// With a reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// With a detail.
    pub fn with_detail(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// With another timestamp.
    pub fn at(mut self, when: OffsetDateTime) -> Self {
        self.occurred_at = when;
        self
    }
}

/// What [`AuditSink::try_record`] did with an event.
#[derive(Debug)]
pub enum TryRecord {
    /// The sink took the event at once, or refused it: what `record` would have returned.
    Done(Result<()>),
    /// Taking the event would mean waiting: here it is back, for [`AuditSink::record`]
    /// (boxed: this is the rare case, and it keeps the common one small).
    Wait(Box<AuditEvent>),
}

/// Accepts audit events.
///
/// [`AuditSink::record`] is called on the request path: implementations enqueue and return
/// quickly, applying back-pressure rather than dropping an event. [`AuditSink::record_sync`]
/// returns only once the event is durably stored, for routes that must not answer before.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug + 'static {
    /// Accepts an event; it will be stored even if this returns before it is, as long as the
    /// process lives: a sink that queues in memory loses what it has queued when the process
    /// is killed. An event that must survive a crash goes through
    /// [`AuditSink::record_sync`] (or is followed by [`AuditSink::flush`]).
    async fn record(&self, event: AuditEvent) -> Result<()>;

    /// [`AuditSink::record`] without waiting, for a caller that would rather not build a future
    /// when the sink can take the event at once: [`TryRecord::Done`] with what `record` would
    /// have returned, or [`TryRecord::Wait`] with the event when taking it would mean waiting
    /// (a full queue, a sink that writes before it answers); the caller then calls `record`.
    /// The default always hands the event back.
    ///
    /// ```
    /// use tenancy_core::memory::MemoryAuditSink;
    /// use tenancy_core::{AuditEvent, AuditSink, Outcome, TenantId, TryRecord};
    ///
    /// let sink = MemoryAuditSink::new();
    /// let event = AuditEvent::new(TenantId::parse("acme")?, "records.read", Outcome::Success);
    /// assert!(matches!(sink.try_record(event), TryRecord::Done(Ok(()))));
    /// assert_eq!(sink.events().len(), 1);
    /// # Ok::<(), tenancy_core::ParseError>(())
    /// ```
    fn try_record(&self, event: AuditEvent) -> TryRecord {
        TryRecord::Wait(Box::new(event))
    }

    /// Accepts an event and waits until it is stored.
    async fn record_sync(&self, event: AuditEvent) -> Result<()> {
        self.record(event).await?;
        self.flush().await
    }

    /// Waits until every accepted event is stored.
    ///
    /// Errors: [`Error::Unavailable`](crate::Error::Unavailable) when the store is down and a
    /// sink that never drops an event is holding accepted events aside (a spool) until it
    /// returns: nothing is lost, but the events are not stored yet. Callers that need them in
    /// the store retry later; callers that only need them safe may treat this as done.
    /// [`Error::Timeout`](crate::Error::Timeout) when the sink waited its time and the events
    /// are not safe yet (held in memory, neither stored nor set aside): not done.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip() {
        let id = EventId::generate();
        assert_eq!(EventId::parse(&id.to_string()).unwrap(), id);
        assert!(EventId::parse("XYZ").is_err());
        assert!(EventId::parse(&"G".repeat(32)).is_err());
    }

    #[test]
    fn events_round_trip_and_refuse_unknown_fields() {
        let e = AuditEvent::new(
            TenantId::parse("acme").unwrap(),
            "auth.login",
            Outcome::Denied,
        )
        .with_user(UserId::parse("mallory").unwrap())
        .with_reason("bad_credentials")
        .with_detail("attempt", 3);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            serde_json::from_value::<AuditEvent>(json.clone()).unwrap(),
            e
        );
        let mut extra = json;
        extra["surprise"] = 1.into();
        assert!(serde_json::from_value::<AuditEvent>(extra).is_err());
    }
}
