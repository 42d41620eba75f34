//! Records: the tenant data of the demo API, and the framework-free operations on them.
//!
//! In memory by default; in PostgreSQL (table `records`, under row-level security, reached
//! only through [`TenantTx`](tenancy_db::TenantTx)) when a database is configured. Ids are
//! 128 random bits in hex: they say nothing about how many records any tenant has, and an id
//! of another tenant's record answers exactly like an id that never existed.
//!
//! ```
//! use tenancy_core::{Claims, TenantContext};
//! use tenancy_server::records::{self, NewRecord, RecordStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RecordStore::memory();
//! let ctx = |tenant: &str| -> Result<TenantContext, Box<dyn std::error::Error>> {
//!     let json = format!(r#"{{"iss":"i","aud":"a","sub":"bob","exp":4102444800,"tenant_id":"{tenant}",
//!         "user_id":"bob","user_role":"user","permissions":["records:read","records:write"]}}"#);
//!     let claims = Claims::from_json(json.as_bytes()).map_err(tenancy_core::Error::Rejected)?;
//!     Ok(TenantContext::from_claims(&claims))
//! };
//! let acme = ctx("acme")?;
//! let rec = records::create(&store, &acme, NewRecord { title: "hello".into(), body: "world".into() }).await?;
//! assert_eq!(records::get(&store, &acme, &rec.id).await?.title, "hello");
//! // Another tenant cannot see it, read it or delete it.
//! let globex = ctx("globex")?;
//! assert!(records::list(&store, &globex, 100, None).await?.records.is_empty());
//! // Its own list pages newest first.
//! records::create(&store, &acme, NewRecord { title: "second".into(), body: String::new() }).await?;
//! let first = records::list(&store, &acme, 1, None).await?;
//! assert_eq!(first.records[0].title, "second");
//! let next = records::list(&store, &acme, 1, first.next_before.as_deref()).await?;
//! assert_eq!((next.records[0].title.as_str(), next.next_before), ("hello", None));
//! assert_eq!(records::get(&store, &globex, &rec.id).await.unwrap_err().status(), 404);
//! assert_eq!(records::delete(&store, &globex, &rec.id).await.unwrap_err().status(), 404);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tenancy_core::{Permission, TenantContext, TenantId};
use tenancy_db::TenantPool;
use time::OffsetDateTime;

use crate::{Error, Result};

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest body, in bytes.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Most records one list returns.
pub const MAX_LIST: usize = 1000;

/// The SQL that creates the `records` table (run as the owner, before protecting it).
pub const RECORDS_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS public.records (
    tenant_id  text        NOT NULL,
    id         text        NOT NULL CHECK (id ~ '^[0-9a-f]{32}$'),
    title      text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id))";

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Opaque id (32 hex characters).
    pub id: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The body of `POST /v1/records`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    /// 1 to 200 characters.
    pub title: String,
    /// Up to 32 KiB.
    pub body: String,
}

/// Where records live.
#[derive(Debug, Clone)]
pub enum RecordStore {
    /// In process, per tenant.
    Memory(Arc<Mutex<HashMap<TenantId, Vec<Record>>>>),
    /// PostgreSQL, through tenant transactions.
    Postgres(TenantPool),
}

impl RecordStore {
    /// An empty in-memory store.
    pub fn memory() -> Self {
        Self::Memory(Arc::default())
    }
}

/// 403 unless the caller's token grants `perm`.
pub(crate) fn require(ctx: &TenantContext, perm: &str) -> Result<()> {
    let p = Permission::parse(perm).map_err(|e| Error::Internal(Box::new(e)))?;
    ctx.require(&p).map_err(Error::from)
}

fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Error::Internal(Box::new(e)))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Row = (String, String, String, OffsetDateTime);

fn from_row((id, title, body, created_at): Row) -> Record {
    Record {
        id,
        title,
        body,
        created_at,
    }
}

/// One page of a tenant's records, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordPage {
    /// The records.
    pub records: Vec<Record>,
    /// The `before` of the next page; `null` on the last.
    pub next_before: Option<String>,
}

/// Where a page starts: after the record created at `at` (microseconds since the epoch) with
/// id `id`, in the order newest first, then by id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    at: OffsetDateTime,
    id: String,
}

impl Cursor {
    fn of(r: &Record) -> String {
        format!("{}-{}", r.created_at.unix_timestamp_nanos() / 1000, r.id)
    }

    fn parse(s: &str) -> Result<Self> {
        let bad = || Error::BadRequest("`before`: not a page cursor of this list".into());
        let (micros, id) = s.split_once('-').ok_or_else(bad)?;
        let micros: i128 = micros.parse().map_err(|_| bad())?;
        let nanos = micros.checked_mul(1000).ok_or_else(bad)?;
        let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad())?;
        if !valid_id(id) {
            return Err(bad());
        }
        Ok(Self {
            at,
            id: id.to_owned(),
        })
    }

    /// Whether `r` comes after the cursor, newest first.
    fn precedes(&self, r: &Record) -> bool {
        r.created_at < self.at || (r.created_at == self.at && r.id > self.id)
    }
}

/// A time as PostgreSQL keeps it (microseconds): the memory store keeps the same, so that a
/// cursor means the same on both.
fn micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

/// The caller's tenant's records, newest first (then by id), `limit` (1 to [`MAX_LIST`]) at
/// a time from `before` (the previous page's `next_before`). Needs `records:read`.
///
/// # Errors
/// 400 for a limit out of range or a malformed cursor; 403 without the permission; 503 when
/// the database cannot answer.
pub async fn list(
    store: &RecordStore,
    ctx: &TenantContext,
    limit: usize,
    before: Option<&str>,
) -> Result<RecordPage> {
    require(ctx, "records:read")?;
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(Error::BadRequest(
            format!("`limit` must be 1 to {MAX_LIST}").into(),
        ));
    }
    let cursor = before.map(Cursor::parse).transpose()?;
    // One more than asked: whether there is a next page.
    let mut records: Vec<Record> = match store {
        RecordStore::Memory(m) => {
            let mut all: Vec<Record> = lock(m)
                .get(&ctx.tenant)
                .map(|v| {
                    v.iter()
                        .filter(|r| cursor.as_ref().is_none_or(|c| c.precedes(r)))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            all.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then_with(|| a.id.cmp(&b.id))
            });
            all.truncate(limit + 1);
            all
        }
        RecordStore::Postgres(pool) => {
            let mut tx = pool.begin(&ctx.tenant).await?;
            let (at, id) = cursor.map_or((None, None), |c| (Some(c.at), Some(c.id)));
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, title, body, created_at FROM public.records
                 WHERE $2::timestamptz IS NULL OR created_at < $2
                    OR (created_at = $2 AND id > $3)
                 ORDER BY created_at DESC, id LIMIT $1",
            )
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .bind(at)
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(tenancy_db::Error::from)?;
            tx.commit().await?;
            rows.into_iter().map(from_row).collect()
        }
    };
    let more = records.len() > limit;
    records.truncate(limit);
    let next_before = more.then(|| records.last().map(Cursor::of)).flatten();
    Ok(RecordPage {
        records,
        next_before,
    })
}

/// Creates a record in the caller's tenant. Needs `records:write`.
///
/// # Errors
/// 400 for an empty or long title, a long body, or a NUL character in either; 403 without
/// the permission; 503 when the database cannot answer.
pub async fn create(store: &RecordStore, ctx: &TenantContext, new: NewRecord) -> Result<Record> {
    require(ctx, "records:write")?;
    let chars = new.title.chars().count();
    if new.title.trim().is_empty() || chars > MAX_TITLE_CHARS {
        return Err(Error::BadRequest(
            format!("`title` must be 1 to {MAX_TITLE_CHARS} characters").into(),
        ));
    }
    if new.body.len() > MAX_BODY_BYTES {
        return Err(Error::BadRequest(
            format!("`body` must be at most {MAX_BODY_BYTES} bytes").into(),
        ));
    }
    // PostgreSQL's text cannot hold U+0000: refused here, the same way on every backend.
    for (name, text) in [("title", &new.title), ("body", &new.body)] {
        if text.contains('\0') {
            return Err(Error::BadRequest(
                format!("`{name}` must not contain the NUL character (U+0000)").into(),
            ));
        }
    }
    let id = new_id()?;
    match store {
        RecordStore::Memory(m) => {
            let mut map = lock(m);
            let list = map.entry(ctx.tenant.clone()).or_default();
            // Strictly later than the tenant's last record: newest first is the order they
            // were created in, even within a microsecond.
            let now = micros(OffsetDateTime::now_utc());
            let created_at = match list.last() {
                Some(last) if now <= last.created_at => {
                    last.created_at + time::Duration::microseconds(1)
                }
                _ => now,
            };
            let rec = Record {
                id,
                title: new.title,
                body: new.body,
                created_at,
            };
            list.push(rec.clone());
            Ok(rec)
        }
        RecordStore::Postgres(pool) => {
            let mut tx = pool.begin(&ctx.tenant).await?;
            // tenant_id defaults to the transaction's tenant; the policy refuses any other.
            let row: Row = sqlx::query_as(
                "INSERT INTO public.records (id, title, body) VALUES ($1, $2, $3)
                 RETURNING id, title, body, created_at",
            )
            .bind(&id)
            .bind(&new.title)
            .bind(&new.body)
            .fetch_one(&mut *tx)
            .await
            .map_err(tenancy_db::Error::from)?;
            tx.commit().await?;
            Ok(from_row(row))
        }
    }
}

/// One record of the caller's tenant. Needs `records:read`.
///
/// # Errors
/// 404 when absent or another tenant's (the two are indistinguishable); 403 without the
/// permission; 503 when the database cannot answer.
pub async fn get(store: &RecordStore, ctx: &TenantContext, id: &str) -> Result<Record> {
    require(ctx, "records:read")?;
    if !valid_id(id) {
        return Err(Error::NotFound);
    }
    match store {
        RecordStore::Memory(m) => lock(m)
            .get(&ctx.tenant)
            .and_then(|v| v.iter().find(|r| r.id == id).cloned())
            .ok_or(Error::NotFound),
        RecordStore::Postgres(pool) => {
            let mut tx = pool.begin(&ctx.tenant).await?;
            let row: Option<Row> = sqlx::query_as(
                "SELECT id, title, body, created_at FROM public.records WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(tenancy_db::Error::from)?;
            tx.commit().await?;
            row.map(from_row).ok_or(Error::NotFound)
        }
    }
}

/// Deletes one record of the caller's tenant. Needs `records:write`.
///
/// # Errors
/// 404 when absent or another tenant's; 403 without the permission; 503 when the database
/// cannot answer.
pub async fn delete(store: &RecordStore, ctx: &TenantContext, id: &str) -> Result<()> {
    require(ctx, "records:write")?;
    if !valid_id(id) {
        return Err(Error::NotFound);
    }
    match store {
        RecordStore::Memory(m) => {
            let mut map = lock(m);
            let v = map.get_mut(&ctx.tenant).ok_or(Error::NotFound)?;
            let before = v.len();
            v.retain(|r| r.id != id);
            if v.len() == before {
                return Err(Error::NotFound);
            }
            Ok(())
        }
        RecordStore::Postgres(pool) => {
            let mut tx = pool.begin(&ctx.tenant).await?;
            let n = sqlx::query("DELETE FROM public.records WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(tenancy_db::Error::from)?
                .rows_affected();
            tx.commit().await?;
            if n == 0 {
                return Err(Error::NotFound);
            }
            Ok(())
        }
    }
}
