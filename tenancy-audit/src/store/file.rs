use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tenancy_core::{EventId, TenantId};
use time::OffsetDateTime;

use super::{
    Appended, AuditStore, Chains, ScanCursor, ScanPage, check_purge, chunk_at, page, walk_in_place,
};
use crate::chain::{Anchor, ChainHead, Digest, StoredRecord};
use crate::codec::EncodedEvent;
use crate::{Error, Result};

/// When the JSONL store forces its appends to disk (`fdatasync`).
///
/// The policy governs ordinary appends only. [`AuditStore::sync`] syncs whatever earlier
/// appends left unsynced under every policy, and the
/// [`AuditDispatcher`](crate::AuditDispatcher) calls it before it answers a `flush`, a
/// `record_sync` or a shutdown: what those acknowledge is on disk whatever the policy. The
/// policy decides what a crash of the machine (a power cut, a kernel panic) may take of the
/// events that were only `record`ed; a crash of the process alone loses nothing that was
/// appended, since the operating system holds the written bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FsyncPolicy {
    /// `fdatasync` after every appended batch, before the append returns: nothing appended
    /// is lost to a crash of the machine.
    ///
    /// Why this default: an acknowledged audit event must survive a power cut; the dispatcher
    /// batches, so the cost is one sync per batch, not per event.
    #[default]
    Always,
    /// `fdatasync` after an appended batch only when the last sync is at least this long
    /// ago. There is no timer: batches appended after the last sync stay unsynced until an
    /// append finds the interval passed, or until [`AuditStore::sync`] (a flush). A crash of
    /// the machine may lose every batch appended since the last sync, however long ago it
    /// was.
    Interval(Duration),
    /// No `fdatasync` after appends: the operating system writes them back when it chooses,
    /// and only [`AuditStore::sync`] (a flush) forces them to disk. A crash of the machine
    /// may lose everything appended since the last flush.
    Never,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    tenant: TenantId,
    seq: u64,
    event_id: EventId,
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
    prev_hash: Digest,
    hash: Digest,
    payload: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorLine {
    anchor: TenantAnchor,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantAnchor {
    tenant: TenantId,
    seq: u64,
    hash: Digest,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    len: u32,
    seq: u64,
}

/// A line of the audit file that could not be read (1-based line number).
#[derive(Debug, thiserror::Error)]
#[error("line {0} of the audit file cannot be read")]
struct UnreadableLine(u64);

#[derive(Debug)]
struct State {
    path: PathBuf,
    fsync: FsyncPolicy,
    read_only: bool,
    chains: Chains,
    index: HashMap<TenantId, Vec<Entry>>,
    /// Each tenant's records purged since the store was opened ([`chunk_at`]).
    purged: HashMap<TenantId, u64>,
    len: u64,
    ino: u64,
    unreadable: Vec<u64>,
    last_sync: Instant,
    /// Whether appends left bytes that are not synced yet (the fsync policy skipped them).
    unsynced: bool,
    dirty_tail: bool,
    /// The open file whose exclusive lock marks this store as the file's one writer; what
    /// [`State::sync_appended`] syncs.
    writer: Option<File>,
}

/// Stores every tenant's chain as JSON lines in one file: one record per line, appended.
///
/// Each line holds `tenant`, `seq`, `event_id`, `occurred_at`, `prev_hash`, `hash` and the
/// exact stored bytes as the string `payload`. Chain heads, seen event ids and line offsets are
/// kept in memory (read once at open). One store writes a file at a time: opened for writing,
/// it holds an exclusive lock on the file (a second writer, in this process or another, is
/// refused with [`Error::Conflict`](crate::Error::Conflict), also when it opened the file a
/// purge was replacing at that moment; read-only stores take no lock), and it refuses to
/// append when the file was truncated, replaced or grown by someone else, and reading refuses
/// a file with unreadable lines (an unreadable line cannot be attributed to a tenant). An
/// incomplete last line, left by a crash in the middle of a write that was therefore never
/// acknowledged, is cut off at open. A file the store creates is readable and writable by its
/// owner only (mode 0600, whatever the umask); a mode the operator set afterwards is kept,
/// through purges too (their rewrite takes the mode of the file it replaces).
///
/// ```
/// use tenancy_audit::store::{AuditStore, FileAuditStore, FsyncPolicy};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_audit::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = FileAuditStore::builder(dir.path().join("audit.jsonl"))
///     .with_fsync(FsyncPolicy::Always)
///     .open()
///     .await?;
/// assert!(store.tenants().await?.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileAuditStore {
    state: Arc<Mutex<State>>,
}

/// Builds a [`FileAuditStore`].
#[derive(Debug, Clone)]
pub struct FileAuditStoreBuilder {
    path: PathBuf,
    fsync: FsyncPolicy,
    read_only: bool,
}

impl FileAuditStoreBuilder {
    /// The fsync policy (default [`FsyncPolicy::Always`]).
    pub fn with_fsync(mut self, fsync: FsyncPolicy) -> Self {
        self.fsync = fsync;
        self
    }

    /// Opens without writing anything (for verification next to a running writer): no file is
    /// created, an incomplete last line is left alone, and appends are refused.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Opens (creating the file unless read-only) and reads it.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened or read.
    pub async fn open(self) -> Result<FileAuditStore> {
        let state = blocking(move || {
            // A writer holds an exclusive lock on the file for as long as it is open: two
            // writers (two processes during a rolling deploy, or two stores in one) would
            // fork the chains. Readers take no lock.
            let writer_lock = if self.read_only {
                None
            } else {
                let path = &self.path;
                Some(open_writer(path, || {
                    crate::open_or_create(path, OpenOptions::new().append(true))
                })?)
            };
            let mut st = State {
                path: self.path,
                fsync: self.fsync,
                read_only: self.read_only,
                chains: Chains::default(),
                index: HashMap::new(),
                purged: HashMap::new(),
                len: 0,
                ino: 0,
                unreadable: Vec::new(),
                last_sync: Instant::now(),
                unsynced: false,
                dirty_tail: false,
                writer: writer_lock,
            };
            st.load()?;
            Ok(st)
        })
        .await?;
        Ok(FileAuditStore {
            state: Arc::new(Mutex::new(state)),
        })
    }
}

/// How many times [`open_writer`] opens a file that is replaced while it takes its lock.
const WRITER_OPEN_ATTEMPTS: usize = 8;

/// Opens the audit file with `open` and takes the writer's lock, on the file `path` names
/// once the lock is held.
///
/// A purge replaces the file by rename, the new file locked by the purging writer. A store
/// that opened the old file just before the rename, and locked it once that writer had let it
/// go, would hold the lock of a file no longer in the directory, and then read and append to
/// the new one beside the writer that holds it: two writers forking the chains. Such a lock
/// is let go and the file opened again; the new file's lock is then refused as any other
/// writer's is ([`Error::Conflict`]).
fn open_writer(path: &Path, mut open: impl FnMut() -> std::io::Result<File>) -> Result<File> {
    for _ in 0..WRITER_OPEN_ATTEMPTS {
        let file = open().map_err(|e| Error::io("create audit file", e))?;
        crate::lock_exclusive(
            &file,
            "lock audit file",
            "another writer holds the audit file (open it read-only to verify)",
        )?;
        let held = file
            .metadata()
            .map_err(|e| Error::io("stat audit file", e))?;
        match std::fs::metadata(path) {
            Ok(named) if (named.dev(), named.ino()) == (held.dev(), held.ino()) => {
                return Ok(file);
            }
            // Replaced (or removed) between the open and the lock: open what is there now.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat audit file", e)),
        }
    }
    Err(Error::Conflict(
        "the audit file kept being replaced while it was being opened",
    ))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("audit file task", std::io::Error::other(e)))?
}

impl FileAuditStore {
    /// A builder for the file at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> FileAuditStoreBuilder {
        FileAuditStoreBuilder {
            path: path.into(),
            fsync: FsyncPolicy::default(),
            read_only: false,
        }
    }

    /// Opens (or creates) the file at `path` with the default fsync policy.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened or read.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::builder(path).open().await
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        lock(&self.state).path.clone()
    }

    async fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let state = Arc::clone(&self.state);
        blocking(move || f(&mut lock(&state))).await
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // State changes only after a successful write; a panicking holder leaves it consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse_record(line: &[u8]) -> Option<StoredRecord> {
    let l: Line = serde_json::from_slice(line).ok()?;
    Some(StoredRecord {
        tenant: l.tenant,
        seq: l.seq,
        event_id: l.event_id,
        occurred_at: l.occurred_at,
        payload: l.payload.into_bytes().into(),
        prev_hash: l.prev_hash,
        hash: l.hash,
    })
}

fn record_line(r: &StoredRecord) -> Result<Vec<u8>> {
    let payload = std::str::from_utf8(&r.payload)
        .map_err(|e| Error::malformed("payload is not UTF-8", e))?
        .to_owned();
    let mut out = serde_json::to_vec(&Line {
        tenant: r.tenant.clone(),
        seq: r.seq,
        event_id: r.event_id,
        occurred_at: r.occurred_at,
        prev_hash: r.prev_hash,
        hash: r.hash,
        payload,
    })
    .map_err(Error::Encode)?;
    out.push(b'\n');
    Ok(out)
}

impl State {
    fn load(&mut self) -> Result<()> {
        self.chains = Chains::default();
        self.index.clear();
        self.unreadable.clear();
        let file = File::open(&self.path).map_err(|e| Error::io("open audit file", e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat audit file", e))?;
        self.ino = meta.ino();
        let mut reader = BufReader::new(file);
        let mut offset = 0u64;
        let mut line_no = 0u64;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io("read audit file", e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if buf.last() != Some(&b'\n') {
                // A torn write at the very end: never acknowledged, so it is cut off.
                if !self.read_only {
                    tracing::warn!(
                        path = %self.path.display(),
                        bytes = n,
                        "cutting off an incomplete last line of the audit file"
                    );
                    OpenOptions::new()
                        .write(true)
                        .open(&self.path)
                        .and_then(|f| f.set_len(offset))
                        .map_err(|e| Error::io("cut incomplete line", e))?;
                }
                break;
            }
            let body = &buf[..n - 1];
            if let Some(r) = parse_record(body) {
                self.index.entry(r.tenant.clone()).or_default().push(Entry {
                    offset,
                    len: u32::try_from(n).unwrap_or(u32::MAX),
                    seq: r.seq,
                });
                self.chains.observe(&r);
            } else if let Ok(a) = serde_json::from_slice::<AnchorLine>(body) {
                let anchor = Anchor {
                    seq: a.anchor.seq,
                    hash: a.anchor.hash,
                };
                self.chains.set_anchor(&a.anchor.tenant, anchor);
            } else {
                self.unreadable.push(line_no);
            }
            offset += n as u64;
        }
        self.len = offset;
        Ok(())
    }

    fn check_readable(&self) -> Result<()> {
        match self.unreadable.first() {
            Some(n) => Err(Error::malformed(
                "unreadable line in audit file",
                UnreadableLine(*n),
            )),
            None => Ok(()),
        }
    }

    /// Opens the file for appending, checking that it is still the file we indexed.
    fn open_for_append(&mut self) -> Result<File> {
        if self.read_only {
            return Err(Error::InvalidConfig("the audit file store is read-only"));
        }
        self.check_readable()?;
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io("open audit file for append", e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat audit file", e))?;
        if meta.ino() != self.ino {
            return Err(Error::Conflict("the audit file was replaced"));
        }
        if meta.len() != self.len {
            if self.dirty_tail && meta.len() > self.len {
                // Our own failed write left a partial tail; remove it.
                file.set_len(self.len)
                    .map_err(|e| Error::io("cut failed write", e))?;
                self.dirty_tail = false;
            } else {
                return Err(Error::Conflict(
                    "the audit file was truncated or written by another process",
                ));
            }
        }
        Ok(file)
    }

    fn append(&mut self, events: &[EncodedEvent]) -> Result<Vec<Appended>> {
        let (records, out) = self.chains.prepare(events, |tenant, seq, payload| {
            self.stored_payload_is(tenant, seq, payload)
        });
        if records.is_empty() {
            return Ok(out);
        }
        let mut file = self.open_for_append()?;
        let mut buf = Vec::with_capacity(records.len() * 512);
        let mut entries = Vec::with_capacity(records.len());
        for r in &records {
            let line = record_line(r)?;
            entries.push(Entry {
                offset: self.len + buf.len() as u64,
                len: u32::try_from(line.len()).unwrap_or(u32::MAX),
                seq: r.seq,
            });
            buf.extend_from_slice(&line);
        }
        let written = file.write_all(&buf).and_then(|()| self.sync_batch(&file));
        if let Err(e) = written {
            if file.set_len(self.len).is_err() {
                self.dirty_tail = true;
            }
            return Err(Error::io("append to audit file", e));
        }
        self.len += buf.len() as u64;
        for (r, entry) in records.iter().zip(entries) {
            self.index.entry(r.tenant.clone()).or_default().push(entry);
        }
        self.chains.commit(&records);
        Ok(out)
    }

    /// Syncs a batch just written to `file` when the fsync policy says so.
    fn sync_batch(&mut self, file: &File) -> std::io::Result<()> {
        let due = match self.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if due {
            file.sync_data()?;
            self.last_sync = Instant::now();
            self.unsynced = false;
        } else {
            self.unsynced = true;
        }
        Ok(())
    }

    /// Syncs whatever appends left unsynced, whatever the fsync policy ([`AuditStore::sync`]).
    fn sync_appended(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        // Only a writer appends, and a writer holds its file open.
        if let Some(file) = &self.writer {
            file.sync_data()
                .map_err(|e| Error::io("sync audit file", e))?;
        }
        self.last_sync = Instant::now();
        self.unsynced = false;
        Ok(())
    }

    /// Whether the record stored at `tenant`'s `seq` holds `payload`: read back from the file
    /// (only for an event id seen before, so off the usual path). `true` when it cannot be
    /// told (purged, or unreadable: logged).
    fn stored_payload_is(&self, tenant: &TenantId, seq: u64, payload: &[u8]) -> bool {
        let entries = self.index.get(tenant).map_or(&[][..], Vec::as_slice);
        let Ok(i) = entries.binary_search_by_key(&seq, |e| e.seq) else {
            return true;
        };
        match self.read(&entries[i..=i]) {
            Ok(stored) => stored.first().is_none_or(|r| *r.payload == *payload),
            Err(e) => {
                tracing::warn!(tenant = %tenant, seq, error = %e,
                    "cannot read a stored event back to compare a repeated event id");
                true
            }
        }
    }

    fn read(&self, entries: &[Entry]) -> Result<Vec<StoredRecord>> {
        self.check_readable()?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let file = File::open(&self.path).map_err(|e| Error::io("open audit file", e))?;
        let mut out = Vec::with_capacity(entries.len());
        let mut buf = Vec::new();
        for e in entries {
            buf.resize(e.len as usize, 0);
            file.read_exact_at(&mut buf, e.offset)
                .map_err(|err| Error::io("read audit file", err))?;
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            out.push(
                parse_record(body)
                    .ok_or_else(|| Error::malformed_plain("audit file changed under the store"))?,
            );
        }
        Ok(out)
    }

    fn purge(&mut self, tenant: &TenantId, anchor: Anchor) -> Result<u64> {
        if self.read_only {
            return Err(Error::InvalidConfig("the audit file store is read-only"));
        }
        let entries = self.index.get(tenant).cloned().unwrap_or_default();
        let records = self.read(&entries)?;
        check_purge(records.iter().map(StoredRecord::head), anchor)?;
        // Rewrite the file without the purged lines, the new anchor first.
        let tmp = tmp_path(&self.path);
        let src = File::open(&self.path).map_err(|e| Error::io("open audit file", e))?;
        // The rewrite takes the mode of the file it replaces (an operator's 0640 for a log
        // shipper's group stays 0640), never the umask's default.
        let mode = src
            .metadata()
            .map_err(|e| Error::io("stat audit file", e))?
            .permissions();
        let mut out =
            crate::create_truncated(&tmp).map_err(|e| Error::io("create purge file", e))?;
        out.set_permissions(mode)
            .map_err(|e| Error::io("set the purge file's mode", e))?;
        // The new file replaces the old one by rename: its lock goes with it.
        out.lock().map_err(|e| Error::io("lock purge file", e))?;
        let mut head = serde_json::to_vec(&AnchorLine {
            anchor: TenantAnchor {
                tenant: tenant.clone(),
                seq: anchor.seq,
                hash: anchor.hash,
            },
        })
        .map_err(Error::Encode)?;
        head.push(b'\n');
        out.write_all(&head)
            .map_err(|e| Error::io("write purge file", e))?;
        let mut removed = 0u64;
        let mut reader = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io("read audit file", e))?;
            if n == 0 {
                break;
            }
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let drop = match parse_record(body) {
                Some(r) => &r.tenant == tenant && r.seq <= anchor.seq,
                None => serde_json::from_slice::<AnchorLine>(body)
                    .is_ok_and(|a| &a.anchor.tenant == tenant),
            };
            if drop {
                removed += u64::from(parse_record(body).is_some());
                continue;
            }
            out.write_all(&buf)
                .map_err(|e| Error::io("write purge file", e))?;
        }
        out.sync_all()
            .map_err(|e| Error::io("sync purge file", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io("replace audit file", e))?;
        self.writer = Some(out);
        crate::sync_dir_of(&self.path).map_err(|e| Error::io("sync audit directory", e))?;
        self.load()?;
        *self.purged.entry(tenant.clone()).or_default() += removed;
        Ok(removed)
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".purge-tmp");
    path.with_file_name(name)
}

#[async_trait]
impl AuditStore for FileAuditStore {
    async fn append(&self, events: &[EncodedEvent]) -> Result<Vec<Appended>> {
        let events = events.to_vec();
        self.with_state(move |st| st.append(&events)).await
    }

    async fn scan(&self, tenant: &TenantId, cursor: ScanCursor, limit: usize) -> Result<ScanPage> {
        let tenant = tenant.clone();
        self.with_state(move |st| {
            let all = st.index.get(&tenant).map_or(&[][..], Vec::as_slice);
            let (range, next) = page(all, |e| e.seq, cursor, limit);
            Ok(ScanPage {
                records: st.read(&all[range])?,
                next,
            })
        })
        .await
    }

    async fn walk(
        &self,
        tenant: &TenantId,
        visit: &mut (dyn for<'r> FnMut(&'r StoredRecord) + Send),
    ) -> Result<u64> {
        let chunk = |at| {
            let tenant = tenant.clone();
            self.with_state(move |st| {
                let all = st.index.get(&tenant).map_or(&[][..], Vec::as_slice);
                let purged = st.purged.get(&tenant).copied().unwrap_or(0);
                let (range, next) = chunk_at(all.len(), purged, at);
                Ok((st.read(&all[range])?, next))
            })
        };
        walk_in_place(chunk, visit).await
    }

    async fn newest(
        &self,
        tenant: &TenantId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>> {
        let tenant = tenant.clone();
        self.with_state(move |st| {
            let entries: Vec<Entry> = st
                .index
                .get(&tenant)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .rev()
                .filter(|e| before.is_none_or(|b| e.seq < b))
                .take(limit)
                .copied()
                .collect();
            st.read(&entries)
        })
        .await
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<ChainHead>> {
        Ok(lock(&self.state)
            .chains
            .tenants
            .get(tenant)
            .and_then(|c| c.head))
    }

    async fn anchor(&self, tenant: &TenantId) -> Result<Option<Anchor>> {
        Ok(lock(&self.state)
            .chains
            .tenants
            .get(tenant)
            .and_then(|c| c.anchor))
    }

    async fn purge(&self, tenant: &TenantId, anchor: Anchor) -> Result<u64> {
        let tenant = tenant.clone();
        self.with_state(move |st| st.purge(&tenant, anchor)).await
    }

    /// Syncs what the [`FsyncPolicy`] left unsynced (nothing to do under `Always`).
    async fn sync(&self) -> Result<()> {
        self.with_state(State::sync_appended).await
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        let mut t: Vec<TenantId> = lock(&self.state).index.keys().cloned().collect();
        t.sort();
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuditDispatcher;
    use crate::codec::Codec;
    use std::os::unix::fs::PermissionsExt;
    use tenancy_core::{AuditEvent, AuditSink, Outcome};

    /// A purge renames its new file, locked, over the file another opener has just opened:
    /// the opener's lock on the old file is not kept as a writer's lock, the file the path
    /// names now is opened and its lock refused; once that writer is gone, the opener's lock
    /// is the named file's.
    #[test]
    fn a_lock_on_a_file_replaced_before_it_was_taken_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"").unwrap();
        let open = || crate::open_or_create(&path, OpenOptions::new().append(true));
        let mut purger = None;
        let mut opened = 0;
        let refused = open_writer(&path, || {
            opened += 1;
            let file = open();
            if opened == 1 {
                let tmp = tmp_path(&path);
                let new = crate::create_truncated(&tmp).unwrap();
                new.lock().unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                purger = Some(new);
            }
            file
        });
        assert!(
            matches!(refused, Err(Error::Conflict(_))),
            "kept a lock on a replaced file: {refused:?}"
        );
        assert_eq!(opened, 2);
        drop(purger);
        let file = open_writer(&path, open).unwrap();
        let (held, named) = (file.metadata().unwrap(), std::fs::metadata(&path).unwrap());
        assert_eq!((held.dev(), held.ino()), (named.dev(), named.ino()));
    }

    /// Whether appends left bytes unsynced, and when the file was last synced.
    fn sync_state(store: &FileAuditStore) -> (bool, Instant) {
        let st = lock(&store.state);
        (st.unsynced, st.last_sync)
    }

    /// Under a policy that skips syncs (`Interval`, `Never`), an ordinary append is left
    /// unsynced; a flush, a `record_sync` and a shutdown each sync it before they answer.
    /// Under `Always`, every append is synced before it returns.
    #[tokio::test]
    async fn a_flush_syncs_what_the_fsync_policy_left_unsynced() {
        let tenant = TenantId::parse("acme").unwrap();
        let event = || AuditEvent::new(tenant.clone(), "x.y", Outcome::Success);
        let encoded = || Codec::default().encode_owned(event()).unwrap();
        for policy in [
            FsyncPolicy::Interval(Duration::from_secs(3600)),
            FsyncPolicy::Never,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = FileAuditStore::builder(dir.path().join("audit.jsonl"))
                .with_fsync(policy)
                .open()
                .await
                .unwrap();
            let (_, opened) = sync_state(&store);
            store.append(&[encoded()]).await.unwrap();
            assert_eq!(sync_state(&store), (true, opened), "{policy:?}: not synced");

            let sink = AuditDispatcher::builder(Arc::new(store.clone()))
                .start()
                .await
                .unwrap();
            sink.record(event()).await.unwrap();
            sink.flush().await.unwrap();
            let (unsynced, flushed) = sync_state(&store);
            assert!(!unsynced && flushed > opened, "{policy:?}: a flush syncs");

            store.append(&[encoded()]).await.unwrap();
            assert!(sync_state(&store).0);
            sink.record_sync(event()).await.unwrap();
            assert!(!sync_state(&store).0, "{policy:?}: a record_sync syncs");

            store.append(&[encoded()]).await.unwrap();
            assert!(sync_state(&store).0);
            sink.shutdown().await.unwrap();
            assert!(!sync_state(&store).0, "{policy:?}: a shutdown syncs");
            assert_eq!(store.head(&tenant).await.unwrap().map(|h| h.seq), Some(5));
        }

        let dir = tempfile::tempdir().unwrap();
        let store = FileAuditStore::open(dir.path().join("audit.jsonl"))
            .await
            .unwrap();
        let (_, opened) = sync_state(&store);
        store.append(&[encoded()]).await.unwrap();
        let (unsynced, synced) = sync_state(&store);
        assert!(!unsynced && synced > opened, "Always syncs every append");
    }

    /// The mode of `path`'s permission bits.
    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A file the store creates is its owner's only, whatever the umask; a mode set afterwards
    /// is kept through a purge, whose rewrite replaces the file.
    #[tokio::test]
    async fn the_file_is_created_owner_only_and_a_purge_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let store = FileAuditStore::open(&path).await.unwrap();
        assert_eq!(mode(&path), 0o600);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        let encoded = || {
            Codec::default().encode_owned(AuditEvent::new(tenant.clone(), "x.y", Outcome::Success))
        };
        for _ in 0..3 {
            store.append(&[encoded().unwrap()]).await.unwrap();
        }
        let second = store.newest(&tenant, Some(3), 1).await.unwrap()[0].head();
        assert_eq!(second.seq, 2);
        let anchor = Anchor {
            seq: second.seq,
            hash: second.hash,
        };
        assert_eq!(store.purge(&tenant, anchor).await.unwrap(), 2);
        assert_eq!(mode(&path), 0o640, "the purge's rewrite took another mode");
        assert!(!tmp_path(&path).exists());
        store.append(&[encoded().unwrap()]).await.unwrap();
        assert_eq!(store.head(&tenant).await.unwrap().map(|h| h.seq), Some(4));
    }
}
