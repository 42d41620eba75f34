use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tenancy_core::{EventId, ParseError, TenantId};
use time::OffsetDateTime;

use super::{Appended, AuditStore, Chains, ScanCursor, ScanPage, TenantChain, WALK_PAGE};
use crate::chain::{Anchor, ChainHead, Digest, StoredRecord};
use crate::codec::EncodedEvent;
use crate::{Error, Result};

/// The advisory-lock class of per-tenant append locks (first key of the two-key form); the
/// purge function in [`SCHEMA_SQL`] uses the same number.
const LOCK_CLASS: i32 = 0x7461_7564; // "taud"

/// How an append transaction begins: at READ COMMITTED, whatever the database's default.
const BEGIN_APPEND: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// The schema, table, triggers and purge function, created by [`PgAuditStore::migrate`].
pub const SCHEMA_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS tenancy_audit;

CREATE TABLE IF NOT EXISTS tenancy_audit.events (
    tenant_id   text        NOT NULL CHECK (tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    seq         bigint      NOT NULL CHECK (seq >= 1),
    event_id    bytea       NOT NULL CHECK (octet_length(event_id) = 16),
    occurred_at timestamptz NOT NULL,
    payload     bytea       NOT NULL,
    prev_hash   bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash        bytea       NOT NULL CHECK (octet_length(hash) = 32),
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, event_id)
);

CREATE TABLE IF NOT EXISTS tenancy_audit.anchors (
    tenant_id text   PRIMARY KEY,
    seq       bigint NOT NULL CHECK (seq >= 1),
    hash      bytea  NOT NULL CHECK (octet_length(hash) = 32)
);

CREATE OR REPLACE FUNCTION tenancy_audit.reject_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- The purge function's switch, honoured for the table's owner only (who could drop
    -- these triggers anyway): any role may set a custom setting, and a role granted UPDATE
    -- or DELETE must not lift the guard with one SET.
    IF TG_OP IN ('DELETE', 'UPDATE', 'INSERT')
       AND coalesce(current_setting('tenancy_audit.purging', true), '') = 'on'
       AND current_user = (SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                           WHERE c.oid = TG_RELID) THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION 'tenancy_audit.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

DROP TRIGGER IF EXISTS events_no_update_delete ON tenancy_audit.events;
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON tenancy_audit.events
    FOR EACH ROW EXECUTE FUNCTION tenancy_audit.reject_change();
DROP TRIGGER IF EXISTS events_no_truncate ON tenancy_audit.events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON tenancy_audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy_audit.reject_change();
DROP TRIGGER IF EXISTS anchors_guard ON tenancy_audit.anchors;
CREATE TRIGGER anchors_guard BEFORE INSERT OR UPDATE OR DELETE ON tenancy_audit.anchors
    FOR EACH ROW EXECUTE FUNCTION tenancy_audit.reject_change();
DROP TRIGGER IF EXISTS anchors_no_truncate ON tenancy_audit.anchors;
CREATE TRIGGER anchors_no_truncate BEFORE TRUNCATE ON tenancy_audit.anchors
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy_audit.reject_change();

CREATE OR REPLACE FUNCTION tenancy_audit.purge(p_tenant text, p_seq bigint, p_hash bytea)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1952544100, hashtext(p_tenant));
    IF NOT EXISTS (SELECT 1 FROM tenancy_audit.events
                   WHERE tenant_id = p_tenant AND seq = p_seq AND hash = p_hash) THEN
        RAISE EXCEPTION 'purge anchor does not match the stored chain'
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM set_config('tenancy_audit.purging', 'on', true);
    DELETE FROM tenancy_audit.events WHERE tenant_id = p_tenant AND seq <= p_seq;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO tenancy_audit.anchors (tenant_id, seq, hash) VALUES (p_tenant, p_seq, p_hash)
        ON CONFLICT (tenant_id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash;
    PERFORM set_config('tenancy_audit.purging', 'off', true);
    RETURN n;
END
$fn$;
REVOKE ALL ON FUNCTION tenancy_audit.purge(text, bigint, bytea) FROM PUBLIC;
"#;

/// Stores chains in PostgreSQL, in the append-only table `tenancy_audit.events`.
///
/// - Append-only: the runtime role gets `INSERT` and `SELECT` only
///   ([`PgAuditStore::grant_runtime`]), so `UPDATE`, `DELETE` and `TRUNCATE` fail with
///   "permission denied"; triggers refuse them for every other role too, the owner included,
///   unless the session sets `tenancy_audit.purging = 'on'`, which the owner-only function
///   `tenancy_audit.purge` does: purges go through it. The owner can always drop triggers: against the owner, what protects the
///   trail is the hash chain with signed checkpoints ([`crate::checkpoint`]), not the
///   database.
/// - Serialised per tenant across tasks and processes: each append transaction takes a
///   transaction-scoped advisory lock per tenant (in sorted order), reads the head, inserts,
///   and commits, at READ COMMITTED whatever the database's `default_transaction_isolation`
///   (so the head read after the lock is the latest committed one); the primary key `(tenant_id, seq)` makes a fork impossible even without the
///   lock, and `UNIQUE (tenant_id, event_id)` backs idempotency.
/// - Batched: a batch is one transaction of three statements between `BEGIN` and `COMMIT`
///   whatever its size or number of tenants: the locks, the heads, and one
///   `INSERT ... SELECT FROM unnest(...)` of every row. An event id stored before (a replay
///   after an outage) fails that insert on the unique index; the batch is then redone with a
///   fourth statement that looks the batch's ids up, so they are reported as duplicates.
/// - Plans that do not depend on statistics: every statement reaches rows through an index
///   by construction, so a cached plan made while the table was empty stays fast when it is
///   large (and with autovacuum off).
///
/// ```no_run
/// use tenancy_audit::store::{AuditStore, PgAuditStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_audit::Error> {
/// // As the owner, once per deployment:
/// let owner = PgAuditStore::builder("postgres://owner@127.0.0.1/app").connect()?;
/// owner.migrate().await?;
/// owner.grant_runtime("app_runtime").await?;
/// // In the service, as the runtime role:
/// let store = PgAuditStore::builder("postgres://app_runtime@127.0.0.1/app").connect()?;
/// let tenants = store.tenants().await?;
/// # let _ = tenants; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgAuditStore {
    pool: PgPool,
}

/// Builds a [`PgAuditStore`].
#[derive(Debug, Clone)]
pub struct PgAuditStoreBuilder {
    url: String,
    max_connections: u32,
    acquire_timeout: Duration,
}

impl PgAuditStoreBuilder {
    /// Pool size (default 5).
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// How long to wait for a connection before failing (default 5 s); the dispatcher spools
    /// after that.
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Creates the pool without connecting yet (so a service can start while the database
    /// is down; the dispatcher spools until it is back). Call it inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Database`] for a malformed URL.
    pub fn connect(self) -> Result<PgAuditStore> {
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy(&self.url)
            .map_err(|e| db("parse database url", e))?;
        Ok(PgAuditStore { pool })
    }
}

fn db(context: &'static str, e: sqlx::Error) -> Error {
    Error::Database {
        context,
        source: Box::new(e),
    }
}

fn digest(bytes: &[u8]) -> Result<Digest> {
    Digest::from_slice(bytes).ok_or_else(|| Error::malformed_plain("hash column is not 32 bytes"))
}

fn event_id(bytes: &[u8]) -> Result<EventId> {
    let bytes = <[u8; 16]>::try_from(bytes)
        .map_err(|_| Error::malformed_plain("event_id column is not 16 bytes"))?;
    Ok(EventId::from_bytes(bytes))
}

fn tenant(s: &str) -> Result<TenantId> {
    TenantId::parse(s).map_err(|e| Error::malformed("tenant_id column", e))
}

fn record(row: &PgRow) -> Result<StoredRecord> {
    let get = |e| db("decode audit row", e);
    let seq: i64 = row.try_get("seq").map_err(get)?;
    Ok(StoredRecord {
        tenant: tenant(row.try_get("tenant_id").map_err(get)?)?,
        seq: u64::try_from(seq).map_err(|e| Error::malformed("seq column", e))?,
        event_id: event_id(row.try_get("event_id").map_err(get)?)?,
        occurred_at: row.try_get("occurred_at").map_err(get)?,
        payload: row.try_get::<Vec<u8>, _>("payload").map_err(get)?.into(),
        prev_hash: digest(row.try_get("prev_hash").map_err(get)?)?,
        hash: digest(row.try_get("hash").map_err(get)?)?,
    })
}

enum FillError {
    Db(sqlx::Error),
    Malformed(Error),
}

/// Decodes a row of `seq, event_id, occurred_at, payload, prev_hash, hash` into `r` (its
/// tenant is kept).
fn fill(r: &mut StoredRecord, row: &PgRow) -> Result<(), FillError> {
    let seq: i64 = row.try_get(0).map_err(FillError::Db)?;
    r.seq =
        u64::try_from(seq).map_err(|e| FillError::Malformed(Error::malformed("seq column", e)))?;
    r.event_id = event_id(row.try_get(1).map_err(FillError::Db)?).map_err(FillError::Malformed)?;
    r.occurred_at = row.try_get(2).map_err(FillError::Db)?;
    let payload: &[u8] = row.try_get(3).map_err(FillError::Db)?;
    r.payload = payload.into();
    r.prev_hash = digest(row.try_get(4).map_err(FillError::Db)?).map_err(FillError::Malformed)?;
    r.hash = digest(row.try_get(5).map_err(FillError::Db)?).map_err(FillError::Malformed)?;
    Ok(())
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The batch's rows as one array per column, for `unnest`.
#[derive(Default)]
struct Columns<'a>(
    Vec<&'a str>,
    Vec<i64>,
    Vec<&'a [u8]>,
    Vec<OffsetDateTime>,
    Vec<&'a [u8]>,
    Vec<&'a [u8]>,
    Vec<&'a [u8]>,
);

const COLUMNS: &str = "tenant_id, seq, event_id, occurred_at, payload, prev_hash, hash";

impl PgAuditStore {
    /// A builder for the database at `url`.
    pub fn builder(url: impl Into<String>) -> PgAuditStoreBuilder {
        PgAuditStoreBuilder {
            url: url.into(),
            max_connections: 5,
            acquire_timeout: Duration::from_secs(5),
        }
    }

    /// A store on an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the schema (idempotent; concurrent callers are serialised). Run as the owner.
    ///
    /// # Errors
    /// [`Error::Database`].
    pub async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db("begin", e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(LOCK_CLASS)
            .execute(&mut *tx)
            .await
            .map_err(|e| db("lock migration", e))?;
        sqlx::raw_sql(SCHEMA_SQL)
            .execute(&mut *tx)
            .await
            .map_err(|e| db("create audit schema", e))?;
        tx.commit().await.map_err(|e| db("commit migration", e))
    }

    /// Grants `role` what the runtime needs and nothing more: `USAGE` on the schema, `INSERT`
    /// and `SELECT` on the events, `SELECT` on the anchors. Run as the owner.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a role name outside `[a-z_][a-z0-9_]{0,62}`; [`Error::Database`].
    pub async fn grant_runtime(&self, role: &str) -> Result<()> {
        let ok = !role.is_empty()
            && role.len() <= 63
            && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::Invalid(ParseError::new(
                "role",
                "must match [a-z_][a-z0-9_]{0,62}",
            )));
        }
        let sql = format!(
            "GRANT USAGE ON SCHEMA tenancy_audit TO \"{role}\";
             GRANT SELECT, INSERT ON tenancy_audit.events TO \"{role}\";
             GRANT SELECT ON tenancy_audit.anchors TO \"{role}\";"
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map_err(|e| db("grant runtime role", e))?;
        Ok(())
    }

    /// One attempt at a batch. With `check_stored`, first looks up which of the batch's event
    /// ids are stored already; without, an insert that meets one fails on the unique index
    /// and the caller retries with it.
    async fn append_once(
        &self,
        events: &[EncodedEvent],
        check_stored: bool,
    ) -> Result<Vec<Appended>, sqlx::Error> {
        let mut tenants: Vec<&str> = events.iter().map(|e| e.tenant.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        // READ COMMITTED whatever the database's default: each statement then reads the data
        // committed when it starts, so the heads, read after the locks are held, include the
        // previous writer's rows. Under REPEATABLE READ or SERIALIZABLE the snapshot would be
        // the one taken when the lock statement began, before it waited.
        let mut tx = self.pool.begin_with(BEGIN_APPEND).await?;
        // The locks come first, in a statement of their own: a statement reads the snapshot
        // taken when it starts, so heads read in the same statement could predate a writer
        // that held a lock and committed meanwhile.
        sqlx::query(
            "SELECT count(pg_advisory_xact_lock($1, hashtext(t)))
             FROM (SELECT t FROM unnest($2::text[]) AS u(t) ORDER BY t) AS s",
        )
        .bind(LOCK_CLASS)
        .bind(&tenants)
        .execute(&mut *tx)
        .await?;
        let heads = sqlx::query(
            "SELECT t.tenant_id, h.seq, h.hash, a.seq AS a_seq, a.hash AS a_hash
             FROM unnest($1::text[]) AS t(tenant_id)
             LEFT JOIN LATERAL (SELECT seq, hash FROM tenancy_audit.events e
                                WHERE e.tenant_id = t.tenant_id
                                ORDER BY seq DESC LIMIT 1) h ON true
             LEFT JOIN tenancy_audit.anchors a ON a.tenant_id = t.tenant_id",
        )
        .bind(&tenants)
        .fetch_all(&mut *tx)
        .await?;

        let decode = |e: Error| sqlx::Error::Decode(Box::new(e));
        let mut chains = Chains::default();
        for row in &heads {
            let t = tenant(row.try_get(0)?).map_err(decode)?;
            let mut c = TenantChain::default();
            if let Some(seq) = row.try_get::<Option<i64>, _>(1)? {
                c.head = Some(ChainHead {
                    seq: u64::try_from(seq).unwrap_or(0),
                    hash: digest(row.try_get(2)?).map_err(decode)?,
                });
            }
            if let Some(seq) = row.try_get::<Option<i64>, _>(3)? {
                c.anchor = Some(Anchor {
                    seq: u64::try_from(seq).unwrap_or(0),
                    hash: digest(row.try_get(4)?).map_err(decode)?,
                });
            }
            chains.tenants.insert(t, c);
        }
        // The payloads stored under this batch's known ids, by tenant and seq.
        let mut stored_payloads: HashMap<(TenantId, u64), Vec<u8>> = HashMap::new();
        if check_stored {
            let owners: Vec<&str> = events.iter().map(|e| e.tenant.as_str()).collect();
            let ids: Vec<&[u8]> = events.iter().map(|e| &e.event_id.as_bytes()[..]).collect();
            let stored = sqlx::query(
                // A correlated subquery: always one probe of the unique index per event,
                // whatever the statistics said when the statement was first planned (a join
                // planned while the table was empty stays a sequential scan in the cached
                // plan). `OFFSET 0` keeps the probe from being evaluated twice; only the
                // events found come back, with their stored payload (a second probe, on this
                // path of replays only), to tell a replay from an id reused for another event.
                "SELECT i, seq, payload FROM (
                     SELECT x.i, (SELECT e.seq FROM tenancy_audit.events e
                                  WHERE e.tenant_id = x.tenant_id
                                    AND e.event_id = x.event_id) AS seq,
                                 (SELECT e.payload FROM tenancy_audit.events e
                                  WHERE e.tenant_id = x.tenant_id
                                    AND e.event_id = x.event_id) AS payload
                     FROM unnest($1::text[], $2::bytea[])
                          WITH ORDINALITY AS x(tenant_id, event_id, i)
                     OFFSET 0) AS p
                 WHERE seq IS NOT NULL",
            )
            .bind(&owners)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            for row in &stored {
                let i: i64 = row.try_get(0)?;
                let seq: i64 = row.try_get(1)?;
                let payload: Vec<u8> = row.try_get(2)?;
                let e = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| events.get(i))
                    .ok_or_else(|| {
                        decode(Error::malformed_plain("stored event index out of range"))
                    })?;
                let seq = u64::try_from(seq).unwrap_or(0);
                chains
                    .tenants
                    .entry(e.tenant.clone())
                    .or_default()
                    .ids
                    .insert(e.event_id, seq);
                stored_payloads.insert((e.tenant.clone(), seq), payload);
            }
        }
        let (records, out) = chains.prepare(events, |tenant, seq, payload| {
            stored_payloads
                .get(&(tenant.clone(), seq))
                .is_none_or(|stored| stored.as_slice() == payload)
        });
        if !records.is_empty() {
            let mut cols = Columns::default();
            for r in &records {
                cols.0.push(r.tenant.as_str());
                cols.1.push(seq_i64(r.seq));
                cols.2.push(&r.event_id.as_bytes()[..]);
                cols.3.push(r.occurred_at);
                cols.4.push(&r.payload);
                cols.5.push(&r.prev_hash.as_bytes()[..]);
                cols.6.push(&r.hash.as_bytes()[..]);
            }
            sqlx::query(
                "INSERT INTO tenancy_audit.events
                     (tenant_id, seq, event_id, occurred_at, payload, prev_hash, hash)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::timestamptz[],
                                      $5::bytea[], $6::bytea[], $7::bytea[])",
            )
            .bind(&cols.0)
            .bind(&cols.1)
            .bind(&cols.2)
            .bind(&cols.3)
            .bind(&cols.4)
            .bind(&cols.5)
            .bind(&cols.6)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(out)
    }
}

#[async_trait]
impl AuditStore for PgAuditStore {
    async fn append(&self, events: &[EncodedEvent]) -> Result<Vec<Appended>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        let mut check_stored = false;
        loop {
            match self.append_once(events, check_stored).await {
                Ok(out) => return Ok(out),
                // An event id of the batch was stored before (a replay), or a concurrent
                // writer that ignored the lock won the same seq (the primary key kept the
                // chain from forking): try again, reading the heads anew and looking the
                // batch's ids up first.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < 3 => {
                    attempt += 1;
                    check_stored = true;
                }
                Err(sqlx::Error::Decode(e)) => {
                    return Err(Error::Malformed {
                        what: "stored chain head",
                        source: Some(e),
                    });
                }
                Err(e) => return Err(db("append audit events", e)),
            }
        }
    }

    async fn scan(&self, tenant: &TenantId, cursor: ScanCursor, limit: usize) -> Result<ScanPage> {
        let limit = limit.max(1);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tenancy_audit.events
             WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )))
        .bind(tenant.as_str())
        .bind(seq_i64(cursor.0))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db("scan audit events", e))?;
        let records = rows.iter().map(record).collect::<Result<Vec<_>>>()?;
        let next = if records.len() == limit {
            records.last().map(|r| ScanCursor(r.seq))
        } else {
            None
        };
        Ok(ScanPage { records, next })
    }

    async fn walk(
        &self,
        tenant: &TenantId,
        visit: &mut (dyn for<'r> FnMut(&'r StoredRecord) + Send),
    ) -> Result<u64> {
        // Pages in `seq` order (an index scan whatever the statistics), each page streamed: a
        // row is checked while the server is still sending the next ones, so reading and
        // hashing overlap. Only the columns a record needs; the tenant is the one asked for.
        let mut r = StoredRecord {
            tenant: tenant.clone(),
            seq: 0,
            event_id: EventId::generate(),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            payload: std::sync::Arc::from([]),
            prev_hash: Digest([0; 32]),
            hash: Digest([0; 32]),
        };
        let limit = i64::try_from(WALK_PAGE).unwrap_or(i64::MAX);
        let mut after = 0;
        let mut total = 0;
        loop {
            let mut rows = sqlx::query(
                "SELECT seq, event_id, occurred_at, payload, prev_hash, hash
                 FROM tenancy_audit.events
                 WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(tenant.as_str())
            .bind(after)
            .bind(limit)
            .fetch(&self.pool);
            let mut n = 0;
            while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
                let row = row.map_err(|e| db("scan audit events", e))?;
                fill(&mut r, &row).map_err(|e| match e {
                    FillError::Db(e) => db("decode audit row", e),
                    FillError::Malformed(e) => e,
                })?;
                after = seq_i64(r.seq);
                visit(&r);
                n += 1;
            }
            total += n;
            if n < WALK_PAGE as u64 {
                return Ok(total);
            }
        }
    }

    async fn newest(
        &self,
        tenant: &TenantId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tenancy_audit.events
             WHERE tenant_id = $1 AND seq < coalesce($2::int8, 9223372036854775807)
             ORDER BY seq DESC LIMIT $3"
        )))
        .bind(tenant.as_str())
        .bind(before.map(seq_i64))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db("read newest audit events", e))?;
        rows.iter().map(record).collect()
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<ChainHead>> {
        let row = sqlx::query(
            "SELECT seq, hash FROM tenancy_audit.events WHERE tenant_id = $1
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("read audit head", e))?;
        row.map(|r| {
            let seq: i64 = r.try_get("seq").map_err(|e| db("decode head", e))?;
            let hash: Vec<u8> = r.try_get("hash").map_err(|e| db("decode head", e))?;
            Ok(ChainHead {
                seq: u64::try_from(seq).unwrap_or(0),
                hash: digest(&hash)?,
            })
        })
        .transpose()
    }

    async fn anchor(&self, tenant: &TenantId) -> Result<Option<Anchor>> {
        let row = sqlx::query("SELECT seq, hash FROM tenancy_audit.anchors WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db("read audit anchor", e))?;
        row.map(|r| {
            let seq: i64 = r.try_get("seq").map_err(|e| db("decode anchor", e))?;
            let hash: Vec<u8> = r.try_get("hash").map_err(|e| db("decode anchor", e))?;
            Ok(Anchor {
                seq: u64::try_from(seq).unwrap_or(0),
                hash: digest(&hash)?,
            })
        })
        .transpose()
    }

    async fn purge(&self, tenant: &TenantId, anchor: Anchor) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT tenancy_audit.purge($1, $2, $3)")
            .bind(tenant.as_str())
            .bind(seq_i64(anchor.seq))
            .bind(anchor.hash.as_bytes().to_vec())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("23514") => {
                    Error::Conflict("purge anchor does not match the stored chain")
                }
                _ => db("purge audit events", e),
            })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT tenant_id FROM tenancy_audit.events
             UNION SELECT tenant_id FROM tenancy_audit.anchors ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db("list audit tenants", e))?;
        rows.iter().map(|t| tenant(t)).collect()
    }
}
