//! The local spool: encoded events written to disk while the store is down, replayed in
//! order when it returns. Its files (the spool, its cursor, the rejected events) are created
//! readable and writable by their owner only (mode 0600).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::codec::EncodedEvent;
use crate::{Error, Result};

/// How many bytes one replay read takes at most.
const READ_CHUNK: u64 = 1 << 20;
/// How many bytes one step of the backward search for the spool's last newline reads.
const SCAN_CHUNK: u64 = 64 << 10;

#[derive(Debug)]
pub(crate) struct Spool {
    path: PathBuf,
    cursor_path: PathBuf,
    rejected_path: PathBuf,
    file: File,
    len: u64,
    cursor: u64,
    /// A failed append may have left bytes past `len` that could not be cut off: the file
    /// must be cut back to `len` before anything else is appended.
    dirty: bool,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

impl Spool {
    /// Opens (or creates) the spool at `path` and takes it for this process: the spool is
    /// locked for as long as it is open.
    ///
    /// # Errors
    /// [`Error::Conflict`] while another open spool holds the file (another dispatcher's, in
    /// this process or another); [`Error::Io`] when it cannot be opened or read.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = crate::open_or_create(path, OpenOptions::new().read(true).append(true))
            .map_err(|e| Error::io("open audit spool", e))?;
        // One owner per spool: two would each track their own end and cursor, and the one
        // whose replay empties the spool would erase the other's unreplayed events.
        crate::lock_exclusive(
            &file,
            "lock audit spool",
            "another dispatcher holds the audit spool",
        )?;
        let mut len = file
            .metadata()
            .map_err(|e| Error::io("stat audit spool", e))?
            .len();
        // A line without its newline was being written when the process died: it was never
        // acknowledged as spooled, and its event is still in no store.
        let whole = end_of_last_line(&file, len, SCAN_CHUNK)
            .map_err(|e| Error::io("read audit spool", e))?;
        if whole < len {
            file.set_len(whole)
                .map_err(|e| Error::io("cut incomplete spool line", e))?;
            len = whole;
        }
        let cursor_path = sibling(path, ".cursor");
        let cursor = if len == 0 {
            // A cursor beside an empty spool is stale (left by a crash while the spool was
            // being emptied): kept, it would skip events spooled from now on.
            remove_cursor(&cursor_path)?;
            0
        } else {
            match std::fs::read_to_string(&cursor_path) {
                Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(Error::io("read audit spool cursor", e)),
            }
        };
        let mut spool = Self {
            path: path.to_path_buf(),
            rejected_path: sibling(path, ".rejected"),
            cursor_path,
            file,
            len,
            cursor: cursor.min(len),
            dirty: false,
        };
        if spool.cursor == spool.len && spool.len > 0 {
            spool.reset()?;
        }
        Ok(spool)
    }

    /// Whether events wait for replay.
    pub(crate) fn pending(&self) -> bool {
        self.cursor < self.len
    }

    /// The end of the spool: every event written so far lies before it.
    pub(crate) fn end(&self) -> u64 {
        self.len
    }

    /// How far replay has got.
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Puts `file` in the place of the spool's file and returns the one it replaces: lets a
    /// test point the spool's writes at a device that refuses them (`/dev/full`).
    #[cfg(test)]
    pub(crate) fn replace_file(&mut self, file: File) -> File {
        std::mem::replace(&mut self.file, file)
    }

    /// Appends events durably (written and synced before returning).
    pub(crate) fn append(&mut self, events: &[EncodedEvent]) -> Result<()> {
        if self.dirty {
            // Appended after the leftover bytes, the first new line would not decode and
            // the last would end past `len`, where replay never finds its newline.
            self.file
                .set_len(self.len)
                .map_err(|e| Error::io("cut a failed audit spool write", e))?;
            self.dirty = false;
        }
        let mut buf = Vec::with_capacity(events.len() * 512);
        for e in events {
            buf.extend_from_slice(&e.payload);
            buf.push(b'\n');
        }
        let res = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = res {
            // Leave no partial line behind; if that fails too, the next append tries again.
            self.dirty = self.file.set_len(self.len).is_err();
            return Err(Error::io("write audit spool", e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Reads up to `max` events from the cursor; returns them and the offset after them.
    /// Lines that cannot be decoded are copied to the `.rejected` file beside the spool and
    /// skipped.
    pub(crate) fn read(&mut self, max: usize) -> Result<(Vec<EncodedEvent>, u64)> {
        self.read_chunked(max, READ_CHUNK)
            .map(|(events, end, _)| (events, end))
    }

    /// [`Spool::read`] reading `chunk` bytes at a time; also returns how many bytes it read.
    /// A first line longer than a chunk is read whole, and only it: the rest of the spool
    /// (which grows without bound during a long outage) is not loaded with it.
    fn read_chunked(&mut self, max: usize, chunk: u64) -> Result<(Vec<EncodedEvent>, u64, usize)> {
        let left = self.len - self.cursor;
        let mut buf = vec![0u8; usize::try_from(left.min(chunk)).unwrap_or(usize::MAX)];
        self.file
            .read_exact_at(&mut buf, self.cursor)
            .map_err(|e| Error::io("read audit spool", e))?;
        let mut read = buf.len();
        if !buf.contains(&b'\n') && left > chunk {
            // One line longer than a chunk: find where it ends, then read it whole.
            let mut line = chunk;
            let mut probe = vec![0u8; buf.len()];
            while line < left {
                let n = usize::try_from((left - line).min(chunk)).unwrap_or(usize::MAX);
                let probe = &mut probe[..n];
                self.file
                    .read_exact_at(probe, self.cursor + line)
                    .map_err(|e| Error::io("read audit spool", e))?;
                read += n;
                match probe.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line += i as u64 + 1;
                        break;
                    }
                    None => line += n as u64,
                }
            }
            buf.resize(usize::try_from(line).unwrap_or(usize::MAX), 0);
            self.file
                .read_exact_at(&mut buf, self.cursor)
                .map_err(|e| Error::io("read audit spool", e))?;
            read += buf.len();
        }
        let mut out = Vec::new();
        let mut end = self.cursor;
        for line in buf.split_inclusive(|b| *b == b'\n') {
            if out.len() >= max || line.last() != Some(&b'\n') {
                break;
            }
            end += line.len() as u64;
            match EncodedEvent::from_payload(&line[..line.len() - 1]) {
                Ok(e) => out.push(e),
                Err(err) => {
                    tracing::error!(
                        spool = %self.path.display(),
                        offset = end - line.len() as u64,
                        error = %err,
                        "undecodable spool line moved to the rejected file"
                    );
                    crate::open_or_create(&self.rejected_path, OpenOptions::new().append(true))
                        .and_then(|mut f| f.write_all(line).and_then(|()| f.sync_data()))
                        .map_err(|e| Error::io("write rejected spool line", e))?;
                }
            }
        }
        Ok((out, end, read))
    }

    /// Marks everything before `to` as stored.
    pub(crate) fn advance(&mut self, to: u64) -> Result<()> {
        self.cursor = to.min(self.len);
        if self.cursor == self.len {
            return self.reset();
        }
        crate::create_truncated(&self.cursor_path)
            .and_then(|mut f| f.write_all(self.cursor.to_string().as_bytes()))
            .map_err(|e| Error::io("write audit spool cursor", e))
    }

    /// Empties the spool. The cursor goes first, and its removal is synced before the events
    /// go: a crash in between leaves the old events without a cursor, replayed again from the
    /// start (event ids make that idempotent), never a cursor beside an emptied spool.
    fn reset(&mut self) -> Result<()> {
        remove_cursor(&self.cursor_path)?;
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("truncate audit spool", e))?;
        self.len = 0;
        self.cursor = 0;
        Ok(())
    }
}

/// The offset just past the last newline in the first `len` bytes of `file` (0 when there is
/// none), searched backwards `chunk` bytes at a time: a torn last line costs reading itself,
/// not the whole spool (which grows without bound during a long outage).
fn end_of_last_line(file: &File, len: u64, chunk: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; usize::try_from(len.min(chunk)).unwrap_or(usize::MAX)];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(chunk);
        // At most `chunk` and at most `len`: within `buf`.
        let part = &mut buf[..usize::try_from(end - start).unwrap_or(usize::MAX)];
        file.read_exact_at(part, start)?;
        if let Some(i) = part.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Removes the cursor file, durably: a removal lost in a power cut would bring the old
/// cursor back beside events spooled after it, and replay would skip them.
fn remove_cursor(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => crate::sync_dir_of(path).map_err(|e| Error::io("sync audit spool directory", e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove audit spool cursor", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use tenancy_core::{AuditEvent, Outcome, TenantId};

    fn events(n: usize) -> Vec<EncodedEvent> {
        let tenant = TenantId::parse("acme").unwrap();
        (0..n)
            .map(|_| {
                Codec::default()
                    .encode_owned(AuditEvent::new(tenant.clone(), "x.y", Outcome::Success))
                    .unwrap()
            })
            .collect()
    }

    /// The spool and its cursor are their owner's only, whatever the umask.
    #[test]
    fn the_spool_and_its_cursor_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.spool");
        let mut spool = Spool::open(&path).unwrap();
        spool.append(&events(3)).unwrap();
        let (_, end) = spool.read(10).unwrap();
        spool.advance(end / 2).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&sibling(&path, ".cursor")), 0o600);
    }

    /// A cursor left beside an emptied spool (a crash between the two steps of emptying it,
    /// as the steps once ran) skips nothing spooled later.
    #[test]
    fn a_stale_cursor_beside_an_empty_spool_skips_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.spool");
        let mut spool = Spool::open(&path).unwrap();
        spool.append(&events(3)).unwrap();
        let (read, end) = spool.read(10).unwrap();
        assert_eq!(read.len(), 3);
        spool.advance(end / 2).unwrap();
        // The state the old order could leave: the spool emptied, its cursor still there.
        spool.file.set_len(0).unwrap();
        drop(spool);
        assert!(sibling(&path, ".cursor").exists());

        let mut spool = Spool::open(&path).unwrap();
        assert!(
            !sibling(&path, ".cursor").exists(),
            "the stale cursor is gone"
        );
        let later = events(2);
        spool.append(&later).unwrap();
        drop(spool);
        let mut spool = Spool::open(&path).unwrap();
        let (read, _) = spool.read(10).unwrap();
        let ids: Vec<_> = read.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, later.iter().map(|e| e.event_id).collect::<Vec<_>>());
    }

    /// Emptying removes the cursor before the events: whatever step a crash interrupts, no
    /// cursor outlives the events it counted.
    #[test]
    fn emptying_leaves_no_cursor_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.spool");
        let mut spool = Spool::open(&path).unwrap();
        spool.append(&events(2)).unwrap();
        let (_, end) = spool.read(1).unwrap();
        spool.advance(end).unwrap();
        assert!(sibling(&path, ".cursor").exists());
        let (_, end) = spool.read(10).unwrap();
        spool.advance(end).unwrap();
        assert!(!spool.pending());
        assert!(!sibling(&path, ".cursor").exists());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    /// A first line longer than a chunk is read whole, and nothing much past it: not the
    /// rest of the spool.
    #[test]
    fn a_long_first_line_is_read_without_the_rest_of_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.spool");
        let mut spool = Spool::open(&path).unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        let long = Codec::default()
            .encode_owned(
                AuditEvent::new(tenant, "x.y", Outcome::Success)
                    .with_detail("blob", "z".repeat(1000)),
            )
            .unwrap();
        spool.append(std::slice::from_ref(&long)).unwrap();
        let rest = events(2_000);
        spool.append(&rest).unwrap();
        let line = long.payload.len() as u64 + 1;
        let chunk = 64;
        assert!(spool.len > 100 * line);

        let (read, end, bytes) = spool.read_chunked(10, chunk).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].event_id, long.event_id);
        assert_eq!(end, line);
        // The probes up to the line's end, then the line itself.
        assert!(
            bytes as u64 <= 2 * line + chunk,
            "read {bytes} bytes for a {line}-byte line"
        );

        spool.advance(end).unwrap();
        let (read, _, _) = spool.read_chunked(10, chunk).unwrap();
        assert_eq!(read.first().map(|e| e.event_id), Some(rest[0].event_id));
    }

    /// A spool is taken by one opener at a time: a second open of the same path (another
    /// dispatcher, here or in another process) is refused while the first is open, and
    /// allowed once it is dropped.
    #[test]
    fn a_spool_is_held_by_one_opener_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.spool");
        let mut first = Spool::open(&path).unwrap();
        first.append(&events(2)).unwrap();
        let second = Spool::open(&path);
        assert!(
            matches!(second, Err(Error::Conflict(_))),
            "a second opener got {second:?}"
        );
        // The refused opener changed nothing: the first still has its events.
        let (read, _) = first.read(10).unwrap();
        assert_eq!(read.len(), 2);
        drop(first);
        let mut again = Spool::open(&path).unwrap();
        assert!(again.pending());
        assert_eq!(again.read(10).unwrap().0.len(), 2);
    }

    /// At open, a torn last line (longer than one backward-search chunk) is cut off and the
    /// whole lines before it are kept; a spool without any newline is emptied.
    #[test]
    fn a_torn_last_line_is_cut_at_open_and_the_lines_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.spool");
        let mut spool = Spool::open(&path).unwrap();
        let sent = events(3);
        spool.append(&sent).unwrap();
        let whole = spool.end();
        drop(spool);
        let torn = vec![b'z'; usize::try_from(3 * SCAN_CHUNK + 7).unwrap()];
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&torn))
            .unwrap();

        let mut spool = Spool::open(&path).unwrap();
        assert_eq!(spool.end(), whole);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        let (read, end) = spool.read(10).unwrap();
        let ids: Vec<_> = read.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, sent.iter().map(|e| e.event_id).collect::<Vec<_>>());
        assert_eq!(end, whole);
        drop(spool);

        // Nothing but a torn line, longer than a chunk: nothing survives, and the spool works.
        std::fs::write(&path, &torn).unwrap();
        let mut spool = Spool::open(&path).unwrap();
        assert!(!spool.pending());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let later = events(1);
        spool.append(&later).unwrap();
        assert_eq!(spool.read(10).unwrap().0[0].event_id, later[0].event_id);
    }

    /// The backward search finds the last newline wherever it falls relative to the chunks
    /// (at a chunk's first or last byte, several chunks back, nowhere), reading `len` bytes at
    /// most.
    #[test]
    fn the_last_newline_is_found_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bytes");
        let cases: [&[u8]; 6] = [
            b"",
            b"no newline at all",
            b"\n",
            b"ab\ncd\nefghijklmnop",
            b"ab\ncd\n",
            b"\nabcdefghijklmnopqrstuvwxyz",
        ];
        for bytes in cases {
            std::fs::write(&path, bytes).unwrap();
            let file = File::open(&path).unwrap();
            let want = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) as u64;
            for chunk in 1..=bytes.len() as u64 + 2 {
                let got = end_of_last_line(&file, bytes.len() as u64, chunk).unwrap();
                assert_eq!(
                    got,
                    want,
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }

    /// After a write that failed and could not be cut off (the disk refused both), the
    /// next append cuts the leftover bytes first: what follows decodes, in order.
    #[test]
    fn an_append_after_a_failed_write_cuts_its_leftovers_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.spool");
        let mut spool = Spool::open(&path).unwrap();
        let first = events(2);
        spool.append(&first).unwrap();
        // A full disk: the write fails, and so does cutting the file back.
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let real = spool.replace_file(full);
        assert!(spool.append(&events(1)).is_err());
        // What such a write may leave on a real disk: part of a line.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"partial"))
            .unwrap();
        spool.replace_file(real);

        let later = events(3);
        spool.append(&later).unwrap();
        let (read, end) = spool.read(10).unwrap();
        let ids: Vec<_> = read.iter().map(|e| e.event_id).collect();
        let want: Vec<_> = first.iter().chain(&later).map(|e| e.event_id).collect();
        assert_eq!(ids, want, "every event read back, nothing rejected");
        assert_eq!(end, std::fs::metadata(&path).unwrap().len());
        assert!(!spool.rejected_path.exists());
    }
}
