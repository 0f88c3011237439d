//! Durable Raft storage in a data directory: a write-ahead log plus one snapshot file.
//!
//! Why our own WAL rather than raft-engine: the control plane writes a few KB/s at most (network
//! and endpoint changes, heartbeats are not logged), one append-only file with CRC'd records is
//! enough, and raft-engine would cost minutes of compile time on a 2-core builder.
//!
//! Layout of the data directory:
//! - `meta`: this node's Raft id and the cluster id (written once, at creation);
//! - `snapshot`: the latest Raft snapshot (state machine data + index/term + `ConfState`),
//!   written to a temporary file, fsynced, renamed, directory fsynced;
//! - `wal`: records `[len u32][crc32 u32][kind u8][payload]` (little endian, CRC over kind and
//!   payload). Each [`DiskStorage::persist`] call is ONE record holding the new entries and the
//!   HardState, followed by ONE fsync, so a crash leaves either the whole batch or none of it.
//!
//! Recovery reads the snapshot, replays the WAL and stops at the first torn record (a crash
//! mid-write: header or payload beyond the end of file, a zero-filled tail, or a bad CRC on the
//! last record), truncating it away. A bad record followed by more data is real corruption and
//! is reported as [`StorageError::Corrupt`] rather than silently dropping acknowledged state.
//!
//! Invariants kept for the node above:
//! - entries are written with (never after) the HardState that commits them;
//! - the `ConfState` is persisted inside the snapshot, so it always matches the snapshot index,
//!   which is also the durable applied index: on restart the node sets `Config::applied` to the
//!   snapshot index and replays committed entries (conf changes included) on top of it;
//! - a snapshot's index never exceeds the durable commit index ([`DiskStorage::compact`]
//!   refuses otherwise), so a restart never sees applied > committed.

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

const WAL: &str = "wal";
const SNAPSHOT: &str = "snapshot";
const META: &str = "meta";
const SNAP_MAGIC: &[u8; 8] = b"VXSNAP1\0";
const HEADER: usize = 9;
const KIND_BATCH: u8 = 1;

/// Storage errors. Any error from a write is fatal for the node (its memory and disk may
/// disagree); errors from open describe what was wrong with the files.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Filesystem error.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file's content is damaged (not a torn tail).
    #[error("{path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
    /// The directory already holds a node.
    #[error("{0} already contains a vxnet node")]
    AlreadyInitialized(PathBuf),
    /// The directory holds no node.
    #[error("{0} contains no vxnet node (missing {META} or {WAL})")]
    NotInitialized(PathBuf),
    /// Caller bug: a request that would break an invariant.
    #[error("invalid storage operation: {0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, StorageError>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Tuning of [`DiskStorage`].
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// fsync after each write. Only tests that simulate crashes at the process level (the page
    /// cache survives) turn it off, to keep thousands of simulated runs fast.
    pub fsync: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self { fsync: true }
    }
}

/// Identity stored in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageMeta {
    /// This node's Raft id.
    pub node_id: u64,
    /// Cluster id.
    pub cluster_id: u64,
}

/// `raft::Storage` backed by a WAL and a snapshot file; all reads are served from memory.
pub struct DiskStorage {
    dir: PathBuf,
    opts: StorageOptions,
    meta: StorageMeta,
    hs: HardState,
    snapshot: Snapshot,
    /// `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    wal: File,
    wal_len: u64,
    /// Raft asked for a snapshot we do not have (too old, or taken before the recipient joined
    /// the configuration, which raft would refuse): the node should take a fresh one.
    snapshot_wanted: Cell<bool>,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .field("hard_state", &self.hs)
            .field("snapshot_index", &self.snapshot_index())
            .field("last_index", &self.last())
            .field("wal_len", &self.wal_len)
            .finish()
    }
}

fn snap_index(s: &Snapshot) -> u64 {
    s.get_metadata().index
}

impl DiskStorage {
    /// Whether `dir` holds a node.
    pub fn exists(dir: &Path) -> bool {
        dir.join(META).exists() && dir.join(WAL).exists()
    }

    /// Creates a node's storage in `dir` (created if missing). `initial` is the bootstrap
    /// snapshot of a new cluster; a joining node passes `None` and receives a snapshot from the
    /// leader.
    pub fn create(
        dir: &Path,
        meta: StorageMeta,
        initial: Option<Snapshot>,
        opts: StorageOptions,
    ) -> Result<DiskStorage> {
        if Self::exists(dir) {
            return Err(StorageError::AlreadyInitialized(dir.to_path_buf()));
        }
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let snapshot = initial.unwrap_or_default();
        let mut hs = HardState::default();
        if snap_index(&snapshot) > 0 {
            write_snapshot_file(dir, &snapshot, opts.fsync)?;
            hs.term = snapshot.get_metadata().term;
            hs.commit = snap_index(&snapshot);
        }
        let text = format!("node_id={}\ncluster_id={}\n", meta.node_id, meta.cluster_id);
        write_atomic(dir, META, text.as_bytes(), opts.fsync)?;
        // The WAL goes last: its presence marks the directory as initialized.
        let rec = encode_batch(&[], &hs)?;
        write_atomic(dir, WAL, &rec, opts.fsync)?;
        Ok(DiskStorage {
            dir: dir.to_path_buf(),
            wal: open_append(&dir.join(WAL))?,
            wal_len: rec.len() as u64,
            opts,
            meta,
            hs,
            snapshot,
            entries: Vec::new(),
            snapshot_wanted: Cell::new(false),
        })
    }

    /// Opens an existing node's storage, recovering from a crash mid-write.
    pub fn open(dir: &Path, opts: StorageOptions) -> Result<DiskStorage> {
        if !Self::exists(dir) {
            return Err(StorageError::NotInitialized(dir.to_path_buf()));
        }
        let meta = read_meta(&dir.join(META))?;
        let snap_path = dir.join(SNAPSHOT);
        let snapshot = if snap_path.exists() {
            read_snapshot_file(&snap_path)?
        } else {
            Snapshot::default()
        };
        let wal_path = dir.join(WAL);
        let data = fs::read(&wal_path).map_err(io("read", &wal_path))?;
        let replay = replay_wal(&wal_path, &data)?;

        let (si, st) = (snap_index(&snapshot), snapshot.get_metadata().term);
        // Reconcile the WAL's log with the snapshot (they can disagree after a crash between
        // writing a received snapshot and rewriting the WAL).
        let mut log = replay.log;
        let keep = match log.first().map(|e| e.index) {
            None => false,
            Some(first) if first > si + 1 => {
                return Err(StorageError::Corrupt {
                    path: wal_path,
                    offset: 0,
                    reason: format!("log starts at {first}, after snapshot index {si} + 1"),
                });
            }
            Some(first) if first == si + 1 => true,
            Some(first) => log.get((si - first) as usize).is_some_and(|e| e.term == st),
        };
        let entries: Vec<Entry> = if keep {
            log.retain(|e| e.index > si);
            log
        } else {
            Vec::new()
        };
        let mut hs = replay.hs;
        hs.commit = hs.commit.max(si);
        hs.term = hs.term.max(st);
        let last = entries.last().map_or(si, |e| e.index);
        if hs.commit > last {
            return Err(StorageError::Corrupt {
                path: wal_path,
                offset: replay.valid_len,
                reason: format!("commit index {} beyond last log index {last}", hs.commit),
            });
        }
        if replay.valid_len < data.len() as u64 {
            tracing::warn!(
                path = %wal_path.display(),
                kept = replay.valid_len,
                dropped = data.len() as u64 - replay.valid_len,
                "truncating torn WAL tail"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&wal_path)
                .map_err(io("open", &wal_path))?;
            f.set_len(replay.valid_len)
                .map_err(io("truncate", &wal_path))?;
            if opts.fsync {
                f.sync_all().map_err(io("fsync", &wal_path))?;
            }
        }
        let wal = open_append(&wal_path)?;
        Ok(DiskStorage {
            dir: dir.to_path_buf(),
            opts,
            meta,
            hs,
            snapshot,
            entries,
            wal,
            wal_len: replay.valid_len,
            snapshot_wanted: Cell::new(false),
        })
    }

    /// Node and cluster identity.
    pub fn meta(&self) -> StorageMeta {
        self.meta
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Current (durable) HardState.
    pub fn hard_state(&self) -> &HardState {
        &self.hs
    }

    /// Latest snapshot (with state machine data).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Index of the latest snapshot (the durable applied index).
    pub fn snapshot_index(&self) -> u64 {
        snap_index(&self.snapshot)
    }

    /// Whether raft asked for a fresher snapshot since the last call (clears the flag).
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Current WAL size in bytes.
    pub fn wal_len(&self) -> u64 {
        self.wal_len
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// Appends `entries` (truncating any conflicting suffix) and sets the HardState, as one WAL
    /// record and one fsync. Messages that depend on them may be sent once this returns.
    pub fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        if entries.is_empty() && hs.is_none_or(|h| *h == self.hs) {
            return Ok(());
        }
        if let Some(first) = entries.first() {
            if first.index <= self.snapshot_index() {
                return Err(StorageError::Invalid(format!(
                    "append at {} overwrites snapshot index {}",
                    first.index,
                    self.snapshot_index()
                )));
            }
            if first.index > self.last() + 1 {
                return Err(StorageError::Invalid(format!(
                    "append at {} leaves a gap after {}",
                    first.index,
                    self.last()
                )));
            }
        }
        let hs = hs.unwrap_or(&self.hs).clone();
        let rec = encode_batch(entries, &hs)?;
        self.append_record(&rec)?;
        if let Some(first) = entries.first() {
            let keep = (first.index - self.snapshot_index() - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        self.hs = hs;
        Ok(())
    }

    /// Raises the durable commit index (from a `LightReady`), before its entries are applied.
    pub fn set_commit(&mut self, commit: u64) -> Result<()> {
        if commit <= self.hs.commit {
            return Ok(());
        }
        let mut hs = self.hs.clone();
        hs.commit = commit;
        self.persist(&[], Some(&hs))
    }

    /// Installs a snapshot received from the leader: snapshot file first, then a fresh WAL
    /// holding the entries after it (if they match) and the HardState.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let (si, st) = (snap_index(&snap), snap.get_metadata().term);
        if si <= self.snapshot_index() {
            return Ok(());
        }
        write_snapshot_file(&self.dir, &snap, self.opts.fsync)?;
        let matches = si <= self.last() && self.term(si).is_ok_and(|t| t == st);
        if matches {
            self.entries.retain(|e| e.index > si);
        } else {
            self.entries.clear();
        }
        self.hs.commit = self.hs.commit.max(si);
        self.hs.term = self.hs.term.max(st);
        self.snapshot = snap;
        self.rewrite_wal()
    }

    /// Saves a snapshot of our own state machine at `snap`'s index and drops the log up to it:
    /// snapshot file first, then the WAL rewritten with only the later entries and the
    /// HardState. The index must be durably committed and present in the log.
    pub fn compact(&mut self, snap: Snapshot) -> Result<()> {
        let si = snap_index(&snap);
        if si <= self.snapshot_index() {
            return Ok(());
        }
        if si > self.hs.commit {
            return Err(StorageError::Invalid(format!(
                "snapshot index {si} beyond durable commit {}",
                self.hs.commit
            )));
        }
        let term = self
            .term(si)
            .map_err(|e| StorageError::Invalid(format!("snapshot index {si}: {e}")))?;
        if term != snap.get_metadata().term {
            return Err(StorageError::Invalid(format!(
                "snapshot term {} != log term {term} at {si}",
                snap.get_metadata().term
            )));
        }
        write_snapshot_file(&self.dir, &snap, self.opts.fsync)?;
        self.entries.retain(|e| e.index > si);
        self.snapshot = snap;
        self.rewrite_wal()
    }

    fn append_record(&mut self, rec: &[u8]) -> Result<()> {
        let path = self.dir.join(WAL);
        if let Err(e) = self.wal.write_all(rec) {
            // Best effort: cut a partial record so later appends stay readable.
            let _ = self.wal.set_len(self.wal_len);
            return Err(io("write", &path)(e));
        }
        if self.opts.fsync {
            self.wal.sync_data().map_err(io("fsync", &path))?;
        }
        self.wal_len += rec.len() as u64;
        Ok(())
    }

    fn rewrite_wal(&mut self) -> Result<()> {
        let rec = encode_batch(&self.entries, &self.hs)?;
        write_atomic(&self.dir, WAL, &rec, self.opts.fsync)?;
        self.wal = open_append(&self.dir.join(WAL))?;
        self.wal_len = rec.len() as u64;
        Ok(())
    }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let cs: ConfState = self.snapshot.get_metadata().get_conf_state().clone();
        Ok(RaftState::new(self.hs.clone(), cs))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.snapshot_index() + 1;
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut ents = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let si = self.snapshot_index();
        if idx == si {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < si {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(idx - si - 1) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let cs = self.snapshot.get_metadata().get_conf_state();
        let has_to = [&cs.voters, &cs.learners, &cs.voters_outgoing]
            .iter()
            .any(|ids| ids.contains(&to));
        if self.snapshot_index() < request_index || self.snapshot_index() == 0 || !has_to {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

// ----- encoding -------------------------------------------------------------------------------

fn pb_err(e: protobuf::ProtobufError) -> StorageError {
    StorageError::Invalid(format!("protobuf encode: {e}"))
}

/// Payload: `[hs_len u32][hs][n u32]([len u32][entry])*`.
fn encode_batch(entries: &[Entry], hs: &HardState) -> Result<Vec<u8>> {
    let mut payload = Vec::new();
    let hsb = hs.write_to_bytes().map_err(pb_err)?;
    payload.extend_from_slice(&(hsb.len() as u32).to_le_bytes());
    payload.extend_from_slice(&hsb);
    payload.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        let b = e.write_to_bytes().map_err(pb_err)?;
        payload.extend_from_slice(&(b.len() as u32).to_le_bytes());
        payload.extend_from_slice(&b);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[KIND_BATCH]);
    crc.update(&payload);
    let mut rec = Vec::with_capacity(HEADER + payload.len());
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc.finalize().to_le_bytes());
    rec.push(KIND_BATCH);
    rec.extend_from_slice(&payload);
    Ok(rec)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn decode_batch(payload: &[u8]) -> Option<(HardState, Vec<Entry>)> {
    let mut c = Cursor(payload);
    let n = c.u32()? as usize;
    let hs = HardState::parse_from_bytes(c.take(n)?).ok()?;
    let count = c.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let n = c.u32()? as usize;
        entries.push(Entry::parse_from_bytes(c.take(n)?).ok()?);
    }
    c.0.is_empty().then_some((hs, entries))
}

struct Replay {
    hs: HardState,
    log: Vec<Entry>,
    valid_len: u64,
}

fn replay_wal(path: &Path, data: &[u8]) -> Result<Replay> {
    let mut r = Replay {
        hs: HardState::default(),
        log: Vec::new(),
        valid_len: 0,
    };
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let torn = |why: &str| {
            tracing::warn!(path = %path.display(), offset = pos, "WAL ends in a torn record: {why}");
        };
        if rest.iter().all(|&b| b == 0) {
            torn("zero-filled tail");
            break;
        }
        if rest.len() < HEADER {
            torn("short header");
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if rest.len() - HEADER < len {
            torn("record extends past end of file");
            break;
        }
        let body = &rest[8..HEADER + len];
        let is_last = HEADER + len == rest.len();
        let corrupt = |reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: pos as u64,
            reason,
        };
        if crc32fast::hash(body) != crc {
            if is_last {
                torn("checksum mismatch on the last record");
                break;
            }
            return Err(corrupt("checksum mismatch".into()));
        }
        if body[0] != KIND_BATCH {
            return Err(corrupt(format!("unknown record kind {}", body[0])));
        }
        let Some((hs, entries)) = decode_batch(&body[1..]) else {
            return Err(corrupt("undecodable batch".into()));
        };
        if let Some(first) = entries.first() {
            let contiguous = entries.windows(2).all(|w| w[1].index == w[0].index + 1);
            let start = r.log.first().map(|e| e.index);
            let last = r.log.last().map(|e| e.index);
            match (start, last) {
                (Some(s), Some(l)) if first.index >= s && first.index <= l + 1 && contiguous => {
                    r.log.truncate((first.index - s) as usize);
                }
                (Some(s), _) if first.index < s && contiguous => r.log.clear(),
                (None, _) if contiguous => {}
                _ => return Err(corrupt(format!("entry {} breaks the log", first.index))),
            }
            r.log.extend(entries);
        }
        r.hs = hs;
        pos += HEADER + len;
        r.valid_len = pos as u64;
    }
    Ok(r)
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io("open", path))
}

fn write_atomic(dir: &Path, name: &str, data: &[u8], fsync: bool) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(data).map_err(io("write", &tmp))?;
        if fsync {
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
    }
    fs::rename(&tmp, &dst).map_err(io("rename", &dst))?;
    if fsync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))?;
    }
    Ok(())
}

fn write_snapshot_file(dir: &Path, snap: &Snapshot, fsync: bool) -> Result<()> {
    let body = snap.write_to_bytes().map_err(pb_err)?;
    let mut data = Vec::with_capacity(body.len() + 16);
    data.extend_from_slice(SNAP_MAGIC);
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    data.extend_from_slice(&body);
    write_atomic(dir, SNAPSHOT, &data, fsync)
}

fn read_snapshot_file(path: &Path) -> Result<Snapshot> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io("read", path))?;
    let corrupt = |reason: &str| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: reason.to_string(),
    };
    if data.len() < 16 || &data[..8] != SNAP_MAGIC {
        return Err(corrupt("bad header"));
    }
    let len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let crc = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
    let body = &data[16..];
    if body.len() != len || crc32fast::hash(body) != crc {
        return Err(corrupt("length or checksum mismatch"));
    }
    Snapshot::parse_from_bytes(body).map_err(|e| corrupt(&e.to_string()))
}

fn read_meta(path: &Path) -> Result<StorageMeta> {
    let text = fs::read_to_string(path).map_err(io("read", path))?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| StorageError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!("missing or bad {k}"),
            })
    };
    Ok(StorageMeta {
        node_id: field("node_id")?,
        cluster_id: field("cluster_id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("payload-{index}").into_bytes().into(),
            ..Default::default()
        }
    }
    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            vote: 1,
            ..Default::default()
        }
    }
    fn meta() -> StorageMeta {
        StorageMeta {
            node_id: 1,
            cluster_id: 7,
        }
    }
    fn snap(index: u64, term: u64, data: &[u8]) -> Snapshot {
        let mut s = Snapshot {
            data: data.to_vec().into(),
            ..Default::default()
        };
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s
    }
    fn opts() -> StorageOptions {
        StorageOptions { fsync: false }
    }

    fn check_consistent(s: &DiskStorage) {
        let last = s.last_index().unwrap();
        let first = s.first_index().unwrap();
        assert!(s.hard_state().commit <= last);
        assert!(s.hard_state().commit >= s.snapshot_index());
        for i in first..=last {
            assert_eq!(
                s.entries(i, i + 1, None, GetEntriesContext::empty(false))
                    .unwrap()[0]
                    .index,
                i
            );
        }
    }

    #[test]
    fn torn_tail_at_every_offset_recovers_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::create(dir.path(), meta(), None, opts()).unwrap();
        s.persist(&[ent(1, 1), ent(2, 1)], Some(&hs(1, 1))).unwrap();
        s.persist(&[ent(3, 1)], Some(&hs(1, 2))).unwrap();
        let before = s.wal_len();
        // The last batch overwrites 3 and appends 4, 5 and commits 4.
        s.persist(&[ent(3, 2), ent(4, 2), ent(5, 2)], Some(&hs(2, 4)))
            .unwrap();
        let after = s.wal_len();
        drop(s);
        let wal = dir.path().join(WAL);
        let full = fs::read(&wal).unwrap();
        for cut in before..=after {
            fs::write(&wal, &full[..cut as usize]).unwrap();
            let s = DiskStorage::open(dir.path(), opts()).unwrap();
            check_consistent(&s);
            if cut == after {
                assert_eq!((s.last_index().unwrap(), s.hard_state().commit), (5, 4));
                assert_eq!(s.term(3).unwrap(), 2);
            } else {
                assert_eq!((s.last_index().unwrap(), s.hard_state().commit), (3, 2));
                assert_eq!(s.term(3).unwrap(), 1);
                // The torn tail was cut off, so new appends land after the good prefix.
                assert_eq!(fs::metadata(&wal).unwrap().len(), before);
            }
        }
        // A zero-filled tail (file size updated, data never written) is a torn write too.
        let mut z = full.clone();
        z.extend_from_slice(&[0; 100]);
        fs::write(&wal, &z).unwrap();
        let mut s = DiskStorage::open(dir.path(), opts()).unwrap();
        assert_eq!(s.last_index().unwrap(), 5);
        s.persist(&[ent(6, 2)], Some(&hs(2, 6))).unwrap();
        drop(s);
        let s = DiskStorage::open(dir.path(), opts()).unwrap();
        assert_eq!((s.last_index().unwrap(), s.hard_state().commit), (6, 6));
    }

    #[test]
    fn snapshot_compaction_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            DiskStorage::create(dir.path(), meta(), Some(snap(1, 1, b"boot")), opts()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 1));
        let ents: Vec<Entry> = (2..=20).map(|i| ent(i, 2)).collect();
        s.persist(&ents, Some(&hs(2, 15))).unwrap();
        // Beyond the durable commit: refused.
        assert!(s.compact(snap(16, 2, b"x")).is_err());
        s.compact(snap(10, 2, b"state@10")).unwrap();
        s.persist(&[ent(21, 3)], Some(&hs(3, 21))).unwrap();
        drop(s);
        let s = DiskStorage::open(dir.path(), opts()).unwrap();
        assert_eq!(s.meta(), meta());
        assert_eq!(s.first_index().unwrap(), 11);
        assert_eq!(s.last_index().unwrap(), 21);
        assert_eq!(s.term(10).unwrap(), 2);
        assert!(s.term(9).is_err());
        assert_eq!(s.hard_state(), &hs(3, 21));
        assert_eq!(&s.latest_snapshot().data[..], b"state@10");
        let rs = s.initial_state().unwrap();
        assert_eq!(rs.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(
            &s.entries(11, 22, None, GetEntriesContext::empty(false))
                .unwrap()[10]
                .data[..],
            b"payload-21"
        );
        check_consistent(&s);
    }

    #[test]
    fn received_snapshot_replaces_a_conflicting_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::create(dir.path(), meta(), None, opts()).unwrap();
        s.persist(&[ent(1, 1), ent(2, 1)], Some(&hs(1, 1))).unwrap();
        s.apply_snapshot(snap(5, 3, b"leader")).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (6, 5));
        assert_eq!(s.hard_state().commit, 5);
        drop(s);
        let s = DiskStorage::open(dir.path(), opts()).unwrap();
        assert_eq!((s.snapshot_index(), s.hard_state().commit), (5, 5));
        check_consistent(&s);
    }

    #[test]
    fn crash_between_snapshot_file_and_wal_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::create(dir.path(), meta(), None, opts()).unwrap();
        let ents: Vec<Entry> = (1..=8).map(|i| ent(i, 1)).collect();
        s.persist(&ents, Some(&hs(1, 6))).unwrap();
        let old_wal = fs::read(dir.path().join(WAL)).unwrap();
        s.compact(snap(5, 1, b"s5")).unwrap();
        drop(s);
        // The new snapshot made it, the WAL rewrite did not.
        fs::write(dir.path().join(WAL), old_wal).unwrap();
        let s = DiskStorage::open(dir.path(), opts()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (6, 8));
        assert_eq!(s.hard_state().commit, 6);
        check_consistent(&s);
    }

    #[test]
    fn corruption_in_the_middle_is_an_error_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::create(dir.path(), meta(), None, opts()).unwrap();
        for i in 1..=10 {
            s.persist(&[ent(i, 1)], Some(&hs(1, i - 1))).unwrap();
        }
        drop(s);
        let wal = dir.path().join(WAL);
        let full = fs::read(&wal).unwrap();
        for pos in 0..full.len() {
            for flip in [0x01u8, 0xff] {
                let mut bad = full.clone();
                bad[pos] ^= flip;
                fs::write(&wal, &bad).unwrap();
                match DiskStorage::open(dir.path(), opts()) {
                    Ok(s) => check_consistent(&s),
                    Err(e) => assert!(
                        matches!(e, StorageError::Corrupt { .. }),
                        "unexpected error {e}"
                    ),
                }
            }
        }
        // A flipped payload byte in the first record is reported with its offset.
        let mut bad = full.clone();
        bad[HEADER + 2] ^= 0x55;
        fs::write(&wal, &bad).unwrap();
        let e = DiskStorage::open(dir.path(), opts()).unwrap_err();
        assert!(e.to_string().contains("corrupt at byte 0"), "{e}");
        // A damaged snapshot file is an error too.
        fs::write(&wal, &full).unwrap();
        fs::write(dir.path().join(SNAPSHOT), b"VXSNAP1\0garbagegarbage").unwrap();
        assert!(DiskStorage::open(dir.path(), opts()).is_err());
    }

    #[test]
    fn create_refuses_an_existing_node_and_open_an_empty_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            DiskStorage::open(dir.path(), opts()),
            Err(StorageError::NotInitialized(_))
        ));
        DiskStorage::create(dir.path(), meta(), None, opts()).unwrap();
        assert!(matches!(
            DiskStorage::create(dir.path(), meta(), None, opts()),
            Err(StorageError::AlreadyInitialized(_))
        ));
    }
}
