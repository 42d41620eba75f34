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

use crate::{Error, ParseError, Result, SessionId, TenantId, UserId};

/// Default idle timeout: 30 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default absolute lifetime: 12 hours.
pub const DEFAULT_ABSOLUTE_TTL: Duration = Duration::from_secs(12 * 3600);

/// Shortest accepted idle timeout or absolute lifetime: one second (expiry is kept in whole
/// seconds).
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(1);

/// Longest accepted idle timeout or absolute lifetime: 366 days.
///
/// Why this bound: a session that lives longer than a year is a credential that is never
/// re-checked; refusing it catches a unit mistake (milliseconds passed as seconds). Every
/// store applies it, so a lifetime one backend accepts is not refused by another.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Largest accepted session data, serialized as JSON: 1 MiB.
pub const MAX_SESSION_DATA_BYTES: usize = 1 << 20;

fn check_ttl(what: &'static str, d: Duration) -> Result<()> {
    if d < MIN_SESSION_TTL || d > MAX_SESSION_TTL {
        return Err(ParseError::new(what, "must be between 1 second and 366 days").into());
    }
    Ok(())
}

/// Counts serialized bytes and stops the serializer once past the limit.
struct Budget(usize);

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.checked_sub(buf.len()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::FileTooLarge, "over the size limit")
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Refuses session data whose JSON is larger than [`MAX_SESSION_DATA_BYTES`], without
/// building the JSON.
fn check_data(data: &SessionData) -> Result<()> {
    serde_json::to_writer(Budget(MAX_SESSION_DATA_BYTES), data).map_err(|e| {
        if e.is_io() {
            Error::from(ParseError::new(
                "session data",
                "must be at most 1 MiB as JSON",
            ))
        } else {
            Error::corrupt(e)
        }
    })
}

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

    /// Checks the bounds every [`SessionStore`] applies on create: idle timeout and absolute
    /// lifetime between [`MIN_SESSION_TTL`] and [`MAX_SESSION_TTL`], data at most
    /// [`MAX_SESSION_DATA_BYTES`] as JSON. Answers [`Error::Invalid`] otherwise.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tenancy_core::{ErrorKind, NewSession, TenantId, UserId};
    ///
    /// let new = NewSession::new(TenantId::parse("acme")?, UserId::parse("alice")?);
    /// assert!(new.check_bounds().is_ok());
    /// let zero = new.with_idle_timeout(Duration::ZERO);
    /// assert_eq!(zero.check_bounds().unwrap_err().kind(), ErrorKind::Invalid);
    /// # Ok::<(), tenancy_core::ParseError>(())
    /// ```
    pub fn check_bounds(&self) -> Result<()> {
        check_ttl("idle timeout", self.idle_timeout)?;
        check_ttl("absolute lifetime", self.absolute_ttl)?;
        check_data(&self.data)
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

    /// Checks the bounds every [`SessionStore`] applies on save: idle timeout between
    /// [`MIN_SESSION_TTL`] and [`MAX_SESSION_TTL`], data at most [`MAX_SESSION_DATA_BYTES`]
    /// as JSON. Answers [`Error::Invalid`] otherwise.
    pub fn check_bounds(&self) -> Result<()> {
        check_ttl("idle timeout", Duration::from_secs(self.idle_timeout_secs))?;
        check_data(&self.data)
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
    ///
    /// Errors: [`Error::Invalid`](crate::Error::Invalid) when the session is outside the
    /// bounds of [`NewSession::check_bounds`].
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
    /// [`Error::NotFound`](crate::Error::NotFound) when the session has ended,
    /// [`Error::Invalid`](crate::Error::Invalid) when it is outside the bounds of
    /// [`Session::check_bounds`]. The id, tenant,
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
