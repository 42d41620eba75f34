//! Sessions: the [`SessionStore`] trait and its optional [`SessionAdmin`] abilities.
//!
//! A session belongs to one tenant and one user, expires when idle for longer than its idle
//! timeout or when its absolute lifetime ends, and carries a version for optimistic
//! concurrency: [`SessionStore::save`] succeeds only when the stored version is the one the
//! caller loaded, so two concurrent updates cannot silently overwrite each other.
//!
//! ```
//! use tenancy_core::{memory::MemorySessionStore, ErrorKind, NewSession, SessionStore, TenantId, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_core::Error> {
//! let store = MemorySessionStore::new();
//! let tenant = TenantId::parse("acme")?;
//! let mut s = store.create(NewSession::new(tenant.clone(), UserId::parse("alice")?)).await?;
//! s.data.insert("theme".into(), "dark".into());
//! let stale = s.clone();
//! let saved = store.save(&s).await?;
//! assert_eq!(saved.version, s.version + 1);
//! assert_eq!(store.save(&stale).await.unwrap_err().kind(), ErrorKind::Conflict);
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Result, SessionId, TenantId, UserId};

/// Default idle timeout: 30 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default absolute lifetime: 12 hours.
pub const DEFAULT_ABSOLUTE_TTL: Duration = Duration::from_secs(12 * 3600);

/// Free-form session data.
pub type SessionData = serde_json::Map<String, serde_json::Value>;

/// What [`SessionStore::create`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// Ends the session after this long without a touch or save.
    pub idle_timeout: Duration,
    /// Ends the session this long after creation, whatever the activity.
    pub absolute_ttl: Duration,
    /// Initial data.
    pub data: SessionData,
}

impl NewSession {
    /// A session for `user` of `tenant` with the default timeouts.
    ///
    /// Why these defaults: 30 minutes idle and 12 hours absolute follow common guidance
    /// for web sessions (OWASP session management); shorter is safer, longer is friendlier.
    pub fn new(tenant: TenantId, user: UserId) -> Self {
        Self {
            tenant,
            user,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            absolute_ttl: DEFAULT_ABSOLUTE_TTL,
            data: SessionData::new(),
        }
    }

    /// With another idle timeout.
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// With another absolute lifetime.
    pub fn with_absolute_ttl(mut self, d: Duration) -> Self {
        self.absolute_ttl = d;
        self
    }

    /// With initial data.
    pub fn with_data(mut self, data: SessionData) -> Self {
        self.data = data;
        self
    }

    /// The session this describes, created at `now` with a fresh id and version 1.
    pub fn into_session(self, now: OffsetDateTime) -> Session {
        Session {
            id: SessionId::generate(),
            tenant: self.tenant,
            user: self.user,
            created_at: now,
            last_seen_at: now,
            // Past the representable dates: the last one (the lifetime is unbounded then).
            expires_at: time::Duration::try_from(self.absolute_ttl)
                .ok()
                .and_then(|ttl| now.checked_add(ttl))
                .unwrap_or_else(|| time::PrimitiveDateTime::MAX.assume_utc()),
            // Whole seconds, rounded up: a timeout under a second must not end the session
            // before it is handed out.
            idle_timeout_secs: self
                .idle_timeout
                .as_secs()
                .saturating_add(u64::from(self.idle_timeout.subsec_nanos() > 0)),
            version: 1,
            data: self.data,
        }
    }
}

/// A stored session.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// The session id.
    pub id: SessionId,
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// The user it belongs to.
    pub user: UserId,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The last touch or save.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    /// The absolute end of life.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Idle timeout, in seconds.
    pub idle_timeout_secs: u64,
    /// Incremented by every successful save; a save must present the current version.
    pub version: u64,
    /// Application data.
    pub data: SessionData,
}

impl Session {
    /// When the session ends if nothing touches it: the earlier of idle and absolute expiry.
    ///
    /// An idle timeout past the representable dates (stored data tampered with) leaves the
    /// absolute expiry in charge instead of panicking.
    ///
    /// ```
    /// use tenancy_core::{SessionId, TenantId, UserId};
    /// # use tenancy_core::Session;
    /// # let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    /// # let mut s = Session {
    /// #     id: SessionId::generate(), tenant: TenantId::parse("acme")?, user: UserId::parse("alice")?,
    /// #     created_at: now, last_seen_at: now, expires_at: now + time::Duration::hours(12),
    /// #     idle_timeout_secs: 1800, version: 1, data: Default::default(),
    /// # };
    /// assert_eq!(s.deadline(), now + time::Duration::minutes(30));
    /// s.idle_timeout_secs = u64::MAX;
    /// assert_eq!(s.deadline(), s.expires_at);
    /// # Ok::<(), tenancy_core::ParseError>(())
    /// ```
    pub fn deadline(&self) -> OffsetDateTime {
        let idle = i64::try_from(self.idle_timeout_secs)
            .ok()
            .and_then(|secs| self.last_seen_at.checked_add(time::Duration::seconds(secs)));
        idle.map_or(self.expires_at, |idle| idle.min(self.expires_at))
    }

    /// Whether the session is live at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        now < self.deadline()
    }

    /// Time left until [`Session::deadline`], zero when already ended.
    pub fn ttl(&self, now: OffsetDateTime) -> Duration {
        Duration::try_from(self.deadline() - now).unwrap_or(Duration::ZERO)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The data may hold secrets (refresh-token hashes): list keys only.
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("created_at", &self.created_at)
            .field("last_seen_at", &self.last_seen_at)
            .field("expires_at", &self.expires_at)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("version", &self.version)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Stores sessions, namespaced by tenant.
///
/// Every method takes the tenant: a session id presented with the wrong tenant is not found.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// Creates a session with a fresh id and version 1.
    async fn create(&self, new: NewSession) -> Result<Session>;

    /// The live session, or `None` when absent, ended or another tenant's. Does not count
    /// as activity.
    async fn load(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>>;

    /// Records activity (moves `last_seen_at` to now, extending idle expiry) without
    /// changing the version; `None` when the session is not live.
    async fn touch(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>>;

    /// Stores `session` if the stored version equals `session.version`, and returns it with
    /// the version incremented and `last_seen_at` moved to now.
    ///
    /// Errors: [`Error::Conflict`](crate::Error::Conflict) when the stored version differs,
    /// [`Error::NotFound`](crate::Error::NotFound) when the session has ended. The id, tenant,
    /// user, creation time and absolute expiry of a stored session cannot be changed by a save.
    async fn save(&self, session: &Session) -> Result<Session>;

    /// Ends the session; `true` when it was live.
    async fn delete(&self, tenant: &TenantId, id: &SessionId) -> Result<bool>;

    /// Moves the session to a fresh id (after a privilege change, against fixation); the old
    /// id stops working at once. The version increments.
    async fn rotate(&self, tenant: &TenantId, id: &SessionId) -> Result<Session>;
}

/// Optional abilities: list and revoke a user's sessions.
#[async_trait]
pub trait SessionAdmin: Send + Sync + fmt::Debug + 'static {
    /// The live sessions of `user` in `tenant`, oldest first.
    async fn list_user(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<Session>>;

    /// Ends every session of `user` in `tenant`; returns how many were live.
    async fn revoke_user(&self, tenant: &TenantId, user: &UserId) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new() -> NewSession {
        NewSession::new(
            TenantId::parse("acme").unwrap(),
            UserId::parse("bob").unwrap(),
        )
    }

    #[test]
    fn lifetimes_beyond_the_calendar_and_below_a_second_are_kept_sane() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let s = new()
            .with_absolute_ttl(Duration::from_secs(u64::MAX))
            .into_session(now);
        assert!(s.expires_at > now + time::Duration::days(365 * 1000));
        assert!(s.is_live(now));
        let s = new()
            .with_idle_timeout(Duration::from_millis(500))
            .into_session(now);
        assert_eq!(s.idle_timeout_secs, 1);
        assert!(s.is_live(now), "ended before it was handed out");
    }
}
