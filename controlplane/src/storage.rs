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
//! Recovery reads the snapshot and replays the WAL. Nothing may go back in time: a lost record
//! can undo a vote or a term, which breaks Raft's safety. So the rule is that **only a damaged
//! final record is a torn tail**. When the record at offset P fails any check (short header,
//! length past the end of file, checksum mismatch, zero-filled bytes), every later offset is
//! searched for a structurally whole record (header and length fit, known kind, checksum
//! matches). If one exists, the bad record was followed by more writes, so it is damage, not a
//! crash mid-write: [`StorageError::Corrupt`] names the file and P, and the node refuses to
//! start rather than guess what it lost. If none exists, the bad bytes are the tail of the one
//! write a crash interrupted (never acknowledged) and they are truncated away. A record whose
//! checksum matches was written whole, so if it does not decode or does not continue the log,
//! that is damage wherever it sits.
//!
//! Writing keeps that rule true: a write or fsync that fails (ENOSPC, EIO) is cut back to the
//! last whole record at once, and if even that fails, before anything else is appended; a WAL
//! rewrite that fails is redone before the next append. Damaged `snapshot` and `meta` files,
//! and a missing `snapshot` or `meta` that the WAL shows existed, are [`StorageError::Corrupt`]
//! too. [`WriteFault`] lets tests make writes fail without root.
//!
//! Invariants kept for the node above:
//! - entries are written with (never after) the HardState that commits them;
//! - memory (entries, HardState, snapshot) changes only once what it reflects is durable;
//! - the `ConfState` is persisted inside the snapshot, so it always matches the snapshot index,
//!   which is also the durable applied index: on restart the node sets `Config::applied` to the
//!   snapshot index and replays committed entries (conf changes included) on top of it;
//! - a snapshot's index never exceeds the durable commit index ([`DiskStorage::compact`]
//!   refuses otherwise), so a restart never sees applied > committed.

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

const WAL: &str = "wal";
const SNAPSHOT: &str = "snapshot";
const META: &str = "meta";
const SNAP_MAGIC: &[u8; 8] = b"VXSNAP1\0";
const HEADER: usize = 9;
const KIND_BATCH: u8 = 1;
/// Smallest batch payload: the HardState length and the entry count.
const MIN_PAYLOAD: usize = 8;
/// Storage errors. After an error from a write the node's memory may be ahead of its disk: the
/// caller drops the node and reopens it from the data dir; errors from open describe what was
/// wrong with the files.
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
    /// A file's content is damaged (not a torn tail), or a file the others need is missing.
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
    #[error("{0} contains no vxnet node (no {WAL} file)")]
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
    /// Test hook: while set, writes to the data dir fail (see [`WriteFault`]). `None` in
    /// production.
    pub fault: Option<WriteFault>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            fsync: true,
            fault: None,
        }
    }
}

/// Where an injected [`WriteFault`] strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultPoint {
    /// Half of the bytes reach the file, then the write fails (a disk filling up mid-record).
    #[default]
    Write,
    /// The bytes are written whole, then the file's fsync fails (they may or may not be
    /// durable).
    Sync,
    /// A file replaced whole (snapshot, meta, rewritten WAL) is written and renamed into
    /// place, then the directory's fsync fails.
    DirSync,
}

#[derive(Debug, Default, Clone, Copy)]
struct FaultState {
    kind: Option<ErrorKind>,
    at: FaultPoint,
    repairs_fail: bool,
}

/// Test hook that makes the storage's writes fail as a full or failing disk would, without
/// root. Put a clone in [`StorageOptions::fault`]; clones share one switch, so a test keeps one
/// and flips it while the storage (or the node owning it) runs. It covers every write to the
/// data dir (WAL appends and rewrites, snapshot, meta) and strikes whether or not
/// [`StorageOptions::fsync`] is on. Reads are never affected.
///
/// ```
/// use std::io::ErrorKind;
/// use vxnet_controlplane::storage::{StorageOptions, WriteFault};
///
/// let fault = WriteFault::new();
/// let opts = StorageOptions { fault: Some(fault.clone()), ..StorageOptions::default() };
/// fault.set(Some(ErrorKind::StorageFull)); // writes now fail half-way, like ENOSPC
/// fault.set(None); // and work again
/// # drop(opts);
/// ```
#[derive(Debug, Clone, Default)]
pub struct WriteFault(Arc<Mutex<FaultState>>);

impl WriteFault {
    /// A fault switch, off.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on every write fails with `kind` after writing half of its bytes
    /// ([`FaultPoint::Write`]); `None` turns the fault off. `ErrorKind::StorageFull` fails
    /// with the OS's own ENOSPC error ("No space left on device") on Linux.
    pub fn set(&self, kind: Option<ErrorKind>) {
        self.set_at(kind, FaultPoint::Write);
    }

    /// Like [`WriteFault::set`], failing at `at` instead.
    pub fn set_at(&self, kind: Option<ErrorKind>, at: FaultPoint) {
        let mut s = self.lock();
        s.kind = kind;
        s.at = at;
    }

    /// While the fault is set, also fail the truncation that cuts a failed WAL append back to
    /// its last whole record (a disk failing everything, as with EIO). The storage then
    /// retries the cut before its next append. Off by default: shrinking a file needs no space.
    pub fn fail_repairs(&self, on: bool) {
        self.lock().repairs_fail = on;
    }

    /// The error kind writes fail with now, if any.
    pub fn get(&self) -> Option<ErrorKind> {
        self.lock().kind
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The injected error for an operation at `at`, if the fault is set there.
fn injected(fault: Option<&WriteFault>, at: FaultPoint) -> Option<io::Error> {
    let s = *fault?.lock();
    let kind = s.kind.filter(|_| s.at == at)?;
    Some(injected_error(kind))
}

/// The injected error for a repair (cutting a failed write back), if repairs fail now.
fn injected_repair(fault: Option<&WriteFault>) -> Option<io::Error> {
    let s = *fault?.lock();
    let kind = s.kind.filter(|_| s.repairs_fail)?;
    Some(injected_error(kind))
}

fn injected_error(kind: ErrorKind) -> io::Error {
    // A full disk fails exactly as the kernel reports it, so logs read as in production.
    #[cfg(target_os = "linux")]
    if kind == ErrorKind::StorageFull {
        const ENOSPC: i32 = 28;
        return io::Error::from_raw_os_error(ENOSPC);
    }
    io::Error::new(kind, format!("{} (injected fault)", io::Error::from(kind)))
}

fn write_data(fault: Option<&WriteFault>, f: &mut File, data: &[u8]) -> io::Result<()> {
    if let Some(e) = injected(fault, FaultPoint::Write) {
        // A real ENOSPC often lands mid-buffer: leave a partial record behind to clean up.
        f.write_all(&data[..data.len() / 2])?;
        return Err(e);
    }
    f.write_all(data)
}

fn sync_file(fault: Option<&WriteFault>, f: &File, fsync: bool) -> io::Result<()> {
    if let Some(e) = injected(fault, FaultPoint::Sync) {
        return Err(e);
    }
    if fsync { f.sync_data() } else { Ok(()) }
}

fn sync_dir(fault: Option<&WriteFault>, dir: &Path, fsync: bool) -> io::Result<()> {
    if let Some(e) = injected(fault, FaultPoint::DirSync) {
        return Err(e);
    }
    if fsync {
        File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

/// Cuts `f` back to `len` bytes, durably.
fn truncate_file(fault: Option<&WriteFault>, f: &File, len: u64, fsync: bool) -> io::Result<()> {
    if let Some(e) = injected_repair(fault) {
        return Err(e);
    }
    f.set_len(len)?;
    if fsync { f.sync_all() } else { Ok(()) }
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
    /// Opened for appending, so writes after a truncation land at the new end.
    wal: File,
    /// End of the last whole record: the WAL's length whenever no repair is pending.
    wal_len: u64,
    /// A failed append left bytes after `wal_len` and cutting them off failed too: cut them
    /// before appending anything, or a restart would see a bad record followed by good ones.
    wal_needs_truncate: bool,
    /// A WAL rewrite failed, so the file on disk may not match memory: redo it before the next
    /// append (appending to the old file could leave a gap in its log).
    wal_needs_rewrite: bool,
    /// The directory fsync after a WAL rewrite failed: the new file's name may not be durable,
    /// and records appended to it would vanish with it in a crash.
    dir_needs_sync: bool,
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
            .field("wal_needs_truncate", &self.wal_needs_truncate)
            .field("wal_needs_rewrite", &self.wal_needs_rewrite)
            .field("dir_needs_sync", &self.dir_needs_sync)
            .finish()
    }
}

fn snap_index(s: &Snapshot) -> u64 {
    s.get_metadata().index
}

impl DiskStorage {
    /// Whether `dir` holds a node: its WAL exists (it is written last by
    /// [`DiskStorage::create`]). A WAL without `meta` counts, so that [`DiskStorage::open`]
    /// reports the damage instead of a new node overwriting the log.
    pub fn exists(dir: &Path) -> bool {
        dir.join(WAL).exists()
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
        let fault = opts.fault.as_ref();
        let snapshot = initial.unwrap_or_default();
        let mut hs = HardState::default();
        if snap_index(&snapshot) > 0 {
            write_snapshot_file(dir, &snapshot, opts.fsync, fault)?;
            hs.term = snapshot.get_metadata().term;
            hs.commit = snap_index(&snapshot);
        }
        let text = format!("node_id={}\ncluster_id={}\n", meta.node_id, meta.cluster_id);
        write_atomic(dir, META, text.as_bytes(), opts.fsync, fault)?;
        // The WAL goes last: its presence marks the directory as initialized.
        let rec = encode_batch(&[], &hs)?;
        let (wal, dir_synced) = replace_file(dir, WAL, &rec, opts.fsync, fault)?;
        dir_synced?;
        Ok(DiskStorage {
            dir: dir.to_path_buf(),
            wal,
            wal_len: rec.len() as u64,
            wal_needs_truncate: false,
            wal_needs_rewrite: false,
            dir_needs_sync: false,
            opts,
            meta,
            hs,
            snapshot,
            entries: Vec::new(),
            snapshot_wanted: Cell::new(false),
        })
    }

    /// Opens an existing node's storage, recovering from a crash mid-write. Damage (anything
    /// but a torn final WAL record) is [`StorageError::Corrupt`], and the files are left as
    /// they are.
    pub fn open(dir: &Path, opts: StorageOptions) -> Result<DiskStorage> {
        if !Self::exists(dir) {
            return Err(StorageError::NotInitialized(dir.to_path_buf()));
        }
        let meta_path = dir.join(META);
        if !meta_path.exists() {
            return Err(StorageError::Corrupt {
                path: meta_path,
                offset: 0,
                reason: format!("missing, but {WAL} exists (it is written after {META})"),
            });
        }
        let meta = read_meta(&meta_path)?;
        let snap_path = dir.join(SNAPSHOT);
        let snap_missing = !snap_path.exists();
        let snapshot = if snap_missing {
            Snapshot::default()
        } else {
            read_snapshot_file(&snap_path)?
        };
        let wal_path = dir.join(WAL);
        let data = fs::read(&wal_path).map_err(io("read", &wal_path))?;
        let replay = replay_wal(&wal_path, &data)?;

        let (si, st) = (snap_index(&snapshot), snapshot.get_metadata().term);
        // Without a snapshot file the WAL must describe the whole log from index 1.
        let missing_snapshot = |why: String| StorageError::Corrupt {
            path: snap_path.clone(),
            offset: 0,
            reason: format!("missing, but the WAL needs it: {why}"),
        };
        // Reconcile the WAL's log with the snapshot (they can disagree after a crash between
        // writing a received snapshot and rewriting the WAL).
        let mut log = replay.log;
        let keep = match log.first().map(|e| e.index) {
            None => false,
            Some(first) if first > si + 1 && snap_missing => {
                return Err(missing_snapshot(format!("its log starts at index {first}")));
            }
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
        if hs.commit > last && snap_missing {
            return Err(missing_snapshot(format!(
                "its commit index {} is beyond its last log index {last}",
                hs.commit
            )));
        }
        if hs.commit > last {
            return Err(StorageError::Corrupt {
                path: wal_path,
                offset: replay.valid_len,
                reason: format!("commit index {} beyond last log index {last}", hs.commit),
            });
        }
        let wal = open_append(&wal_path)?;
        if let Some(why) = &replay.torn {
            tracing::warn!(
                path = %wal_path.display(),
                kept = replay.valid_len,
                dropped = data.len() as u64 - replay.valid_len,
                "truncating a torn WAL tail (a write cut short by a crash): {why}"
            );
            truncate_file(opts.fault.as_ref(), &wal, replay.valid_len, opts.fsync)
                .map_err(io("truncate", &wal_path))?;
        }
        Ok(DiskStorage {
            dir: dir.to_path_buf(),
            opts,
            meta,
            hs,
            snapshot,
            entries,
            wal,
            wal_len: replay.valid_len,
            wal_needs_truncate: false,
            wal_needs_rewrite: false,
            dir_needs_sync: false,
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
    /// record and one fsync. Messages that depend on them may be sent once this returns. On
    /// error nothing changed in memory, and the partial record is cut off the WAL (now, or
    /// before the next append, which fails if that cut still cannot be made).
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
        write_snapshot_file(&self.dir, &snap, self.opts.fsync, self.opts.fault.as_ref())?;
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
        write_snapshot_file(&self.dir, &snap, self.opts.fsync, self.opts.fault.as_ref())?;
        self.entries.retain(|e| e.index > si);
        self.snapshot = snap;
        self.rewrite_wal()
    }

    /// Appends one record and fsyncs it. On failure the WAL is cut back to its last whole
    /// record (now, or before the next append if the cut fails too) and `wal_len` is unchanged.
    fn append_record(&mut self, rec: &[u8]) -> Result<()> {
        self.repair_wal()?;
        let path = self.dir.join(WAL);
        let fault = self.opts.fault.as_ref();
        let written = write_data(fault, &mut self.wal, rec)
            .map_err(io("write", &path))
            .and_then(|()| {
                sync_file(fault, &self.wal, self.opts.fsync).map_err(io("fsync", &path))
            });
        if let Err(e) = written {
            // Some or all of the record may be in the file (and after a failed fsync, maybe
            // durable): it was never acknowledged, so drop it before anything follows it.
            if let Err(cut) = truncate_file(fault, &self.wal, self.wal_len, self.opts.fsync) {
                tracing::error!(
                    path = %path.display(),
                    len = self.wal_len,
                    "cannot cut the WAL back after a failed write ({cut}); retrying before the \
                     next append"
                );
                self.wal_needs_truncate = true;
            }
            return Err(e);
        }
        self.wal_len += rec.len() as u64;
        Ok(())
    }

    /// Finishes what a failed write left undone, before anything else is appended. If that
    /// fails too, nothing is written.
    fn repair_wal(&mut self) -> Result<()> {
        if self.wal_needs_rewrite {
            // The new file replaces any partial tail as well.
            return self.rewrite_wal();
        }
        let fault = self.opts.fault.as_ref();
        if self.wal_needs_truncate {
            let path = self.dir.join(WAL);
            truncate_file(fault, &self.wal, self.wal_len, self.opts.fsync)
                .map_err(io("truncate", &path))?;
            self.wal_needs_truncate = false;
        }
        if self.dir_needs_sync {
            sync_dir(fault, &self.dir, self.opts.fsync).map_err(io("fsync", &self.dir))?;
            self.dir_needs_sync = false;
        }
        Ok(())
    }

    /// Replaces the WAL with one record holding the in-memory log and HardState. A pending
    /// truncation needs no repair first: the old file, tail and all, is replaced whole.
    fn rewrite_wal(&mut self) -> Result<()> {
        // Set until the new file is in place: the old one may not match memory any more.
        self.wal_needs_rewrite = true;
        let rec = encode_batch(&self.entries, &self.hs)?;
        let (wal, dir_synced) = replace_file(
            &self.dir,
            WAL,
            &rec,
            self.opts.fsync,
            self.opts.fault.as_ref(),
        )?;
        // Renamed: from here the new file is the WAL whatever the directory fsync says, and the
        // old handle points at an unlinked file.
        self.wal = wal;
        self.wal_len = rec.len() as u64;
        self.wal_needs_rewrite = false;
        self.wal_needs_truncate = false;
        self.dir_needs_sync = dir_synced.is_err();
        dir_synced
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
    /// End of the last whole record.
    valid_len: u64,
    /// Why the bytes after `valid_len` are a torn tail, if there are any.
    torn: Option<String>,
}

/// Checks the framing and checksum of the record at `pos`; returns its body (kind byte, then
/// payload), or what is wrong with it.
fn frame_at(data: &[u8], pos: usize) -> std::result::Result<&[u8], String> {
    let rest = &data[pos..];
    if rest.len() < HEADER {
        return Err(format!(
            "{} bytes left, short of a record header",
            rest.len()
        ));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if rest.len() - HEADER < len {
        return Err(format!(
            "record length {len} runs past the end of the file ({} bytes left)",
            rest.len() - HEADER
        ));
    }
    let body = &rest[8..HEADER + len];
    if crc32fast::hash(body) != crc {
        return Err(if rest[..HEADER].iter().all(|&b| b == 0) {
            "zero-filled bytes instead of a record".into()
        } else {
            "checksum mismatch".into()
        });
    }
    Ok(body)
}

/// Offset of the first structurally whole record (header and length fit in the file, known
/// kind, checksum matches) starting after `pos`: proof that the record at `pos` was not the
/// last one written.
fn intact_record_after(data: &[u8], pos: usize) -> Option<usize> {
    let end = (data.len() + 1).saturating_sub(HEADER);
    (pos + 1..end).find(|&q| {
        let h = &data[q..q + HEADER];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        // Cheap tests first, so the checksum runs at few offsets and the scan stays linear in
        // practice (the WAL is small: compaction rewrites it).
        h[8] == KIND_BATCH
            && len >= MIN_PAYLOAD
            && len <= data.len() - q - HEADER
            && frame_at(data, q).is_ok()
    })
}

fn replay_wal(path: &Path, data: &[u8]) -> Result<Replay> {
    let mut r = Replay {
        hs: HardState::default(),
        log: Vec::new(),
        valid_len: 0,
        torn: None,
    };
    let mut pos = 0usize;
    while pos < data.len() {
        let corrupt = |reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: pos as u64,
            reason,
        };
        let body = match frame_at(data, pos) {
            Ok(body) => body,
            Err(why) => {
                if let Some(next) = intact_record_after(data, pos) {
                    return Err(corrupt(format!(
                        "{why}; an intact record follows at byte {next}, so this is damage, \
                         not a torn write"
                    )));
                }
                r.torn = Some(why);
                break;
            }
        };
        // The checksum matches, so this record was written whole: whatever is wrong with it
        // now is damage (or a newer format), never a torn write, even at the end.
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
        pos += body.len() + HEADER - 1;
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

/// Replaces `dir/name` with `data`: a temporary file, written and fsynced, renamed over it,
/// then the directory fsynced. A failure up to the rename leaves the old file untouched (and
/// removes the temporary one). After the rename the new file, open for appending, is returned
/// with the outcome of the directory fsync, which the caller must handle: the replacement is
/// visible but its name may not be durable yet.
fn replace_file(
    dir: &Path,
    name: &str,
    data: &[u8],
    fsync: bool,
    fault: Option<&WriteFault>,
) -> Result<(File, Result<()>)> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    // Left over from a crash; append mode cannot truncate it, so start from scratch.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io("remove", &tmp)(e)),
        _ => {}
    }
    let written = (|| {
        let mut f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        write_data(fault, &mut f, data).map_err(io("write", &tmp))?;
        sync_file(fault, &f, fsync).map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, &dst).map_err(io("rename", &dst))?;
        Ok(f)
    })();
    match written {
        Ok(f) => Ok((f, sync_dir(fault, dir, fsync).map_err(io("fsync", dir)))),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// [`replace_file`] for a file that is not kept open.
fn write_atomic(
    dir: &Path,
    name: &str,
    data: &[u8],
    fsync: bool,
    fault: Option<&WriteFault>,
) -> Result<()> {
    replace_file(dir, name, data, fsync, fault)?.1
}

fn write_snapshot_file(
    dir: &Path,
    snap: &Snapshot,
    fsync: bool,
    fault: Option<&WriteFault>,
) -> Result<()> {
    let body = snap.write_to_bytes().map_err(pb_err)?;
    let mut data = Vec::with_capacity(body.len() + 16);
    data.extend_from_slice(SNAP_MAGIC);
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    data.extend_from_slice(&body);
    write_atomic(dir, SNAPSHOT, &data, fsync, fault)
}

fn read_snapshot_file(path: &Path) -> Result<Snapshot> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io("read", path))?;
    let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    if data.len() < 16 {
        return Err(corrupt(
            0,
            format!("{} bytes, short of the header", data.len()),
        ));
    }
    if &data[..8] != SNAP_MAGIC {
        return Err(corrupt(0, "bad magic".into()));
    }
    let len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let crc = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
    let body = &data[16..];
    if body.len() != len {
        return Err(corrupt(
            8,
            format!("header says {len} bytes, the file holds {}", body.len()),
        ));
    }
    if crc32fast::hash(body) != crc {
        return Err(corrupt(16, "checksum mismatch".into()));
    }
    Snapshot::parse_from_bytes(body).map_err(|e| corrupt(16, e.to_string()))
}

fn read_meta(path: &Path) -> Result<StorageMeta> {
    let text = fs::read_to_string(path).map_err(|e| match e.kind() {
        ErrorKind::InvalidData => StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "not UTF-8 text".into(),
        },
        _ => io("read", path)(e),
    })?;
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
        StorageOptions {
            fsync: false,
            ..StorageOptions::default()
        }
    }
    fn faulty() -> (StorageOptions, WriteFault) {
        let fault = WriteFault::new();
        let o = StorageOptions {
            fault: Some(fault.clone()),
            ..opts()
        };
        (o, fault)
    }
    /// The durable state a reopened storage shows: HardState and the whole log after the
    /// snapshot.
    fn state_of(s: &DiskStorage) -> (HardState, Vec<Entry>) {
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        let ents = s
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap();
        (s.hard_state().clone(), ents)
    }
    /// A WAL of the create record plus `n` one-entry records; returns the records' start
    /// offsets (and the file length as the last element).
    fn wal_of_records(dir: &Path, n: u64) -> Vec<u64> {
        let mut s = DiskStorage::create(dir, meta(), None, opts()).unwrap();
        let mut bounds = vec![0, s.wal_len()];
        for i in 1..=n {
            s.persist(&[ent(i, 1)], Some(&hs(1, i - 1))).unwrap();
            bounds.push(s.wal_len());
        }
        bounds
    }
    fn assert_corrupt_at(e: &StorageError, path: &Path, at: u64) {
        match e {
            StorageError::Corrupt {
                path: p, offset, ..
            } => {
                assert_eq!((p.as_path(), *offset), (path, at), "{e}");
            }
            other => panic!("expected Corrupt, got {other}"),
        }
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("corrupt at byte {at}")), "{msg}");
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
        let bounds = wal_of_records(dir.path(), 10);
        let last_start = bounds[bounds.len() - 2];
        let wal = dir.path().join(WAL);
        let full = fs::read(&wal).unwrap();
        for pos in 0..full.len() {
            for flip in [0x01u8, 0xff] {
                let mut bad = full.clone();
                bad[pos] ^= flip;
                fs::write(&wal, &bad).unwrap();
                match DiskStorage::open(dir.path(), opts()) {
                    // Only damage inside the final record may be cut off as a torn tail.
                    Ok(s) => {
                        check_consistent(&s);
                        assert!(
                            pos as u64 >= last_start,
                            "byte {pos} damaged, yet it opened"
                        );
                        assert_eq!((s.last_index().unwrap(), s.hard_state().commit), (9, 8));
                    }
                    Err(e) => {
                        let rec = bounds.iter().rposition(|&b| b <= pos as u64).unwrap();
                        assert_corrupt_at(&e, &wal, bounds[rec]);
                    }
                }
            }
        }
        // A flipped payload byte in the first record is reported with its offset.
        let mut bad = full.clone();
        bad[HEADER + 2] ^= 0x55;
        fs::write(&wal, &bad).unwrap();
        let e = DiskStorage::open(dir.path(), opts()).unwrap_err();
        assert!(e.to_string().contains("corrupt at byte 0"), "{e}");
        // Reported damage is left on disk as it was, for inspection.
        assert_eq!(fs::read(&wal).unwrap(), bad);
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

    #[test]
    fn damaged_length_field_is_corrupt_unless_in_the_final_record() {
        let dir = tempfile::tempdir().unwrap();
        // The create record and 30 batches; "record 3" is the third batch.
        let bounds = wal_of_records(dir.path(), 30);
        let wal = dir.path().join(WAL);
        let full = fs::read(&wal).unwrap();
        let rec3 = bounds[3] as usize;
        for len in [
            u32::MAX,
            0x00ff_ffff,
            (full.len() - rec3 - HEADER) as u32,
            3,
        ] {
            let mut bad = full.clone();
            bad[rec3..rec3 + 4].copy_from_slice(&len.to_le_bytes());
            fs::write(&wal, &bad).unwrap();
            let e = DiskStorage::open(dir.path(), opts()).unwrap_err();
            assert_corrupt_at(&e, &wal, rec3 as u64);
            assert!(e.to_string().contains("not a torn write"), "{e}");
            assert_eq!(fs::read(&wal).unwrap(), bad, "damage is left as it is");
        }
        // The same damage to the final record is a torn tail: the 29 batches before it stay.
        let last = bounds[bounds.len() - 2] as usize;
        for len in [u32::MAX, 0x00ff_ffff, 3] {
            let mut bad = full.clone();
            bad[last..last + 4].copy_from_slice(&len.to_le_bytes());
            fs::write(&wal, &bad).unwrap();
            let s = DiskStorage::open(dir.path(), opts()).unwrap();
            check_consistent(&s);
            assert_eq!((s.last_index().unwrap(), s.hard_state().commit), (29, 28));
            assert_eq!(fs::metadata(&wal).unwrap().len(), last as u64);
        }
    }

    #[test]
    fn zero_filled_region_mid_log_is_corrupt_and_at_the_end_torn() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = wal_of_records(dir.path(), 10);
        let wal = dir.path().join(WAL);
        let full = fs::read(&wal).unwrap();
        // A whole record zeroed, and a region straddling two records.
        let (r4, r5) = (bounds[4] as usize, bounds[5] as usize);
        for (from, to, at) in [(r4, r5, r4), (r4 + 5, r5 + 3, r4), (r4, r4 + HEADER, r4)] {
            let mut bad = full.clone();
            bad[from..to].fill(0);
            fs::write(&wal, &bad).unwrap();
            let e = DiskStorage::open(dir.path(), opts()).unwrap_err();
            assert_corrupt_at(&e, &wal, at as u64);
        }
        // The final record zeroed (a crash after the size was updated, before the data).
        let last = bounds[bounds.len() - 2] as usize;
        let mut bad = full.clone();
        bad[last..].fill(0);
        fs::write(&wal, &bad).unwrap();
        let s = DiskStorage::open(dir.path(), opts()).unwrap();
        assert_eq!((s.last_index().unwrap(), s.hard_state().commit), (9, 8));
        // Zeros appended after the final record.
        let mut bad = full.clone();
        bad.extend_from_slice(&[0; 4096]);
        fs::write(&wal, &bad).unwrap();
        let s = DiskStorage::open(dir.path(), opts()).unwrap();
        assert_eq!((s.last_index().unwrap(), s.hard_state().commit), (10, 9));
        assert_eq!(fs::read(&wal).unwrap(), full);
    }

    #[test]
    fn failed_write_is_cut_back_and_reopens_with_the_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        let (o, fault) = faulty();
        let mut s = DiskStorage::create(dir.path(), meta(), None, o.clone()).unwrap();
        s.persist(&[ent(1, 1), ent(2, 1)], Some(&hs(1, 1))).unwrap();
        let good = state_of(&s);
        let wal = dir.path().join(WAL);
        let good_len = s.wal_len();
        let good_bytes = fs::read(&wal).unwrap();
        for at in [FaultPoint::Write, FaultPoint::Sync] {
            fault.set_at(Some(ErrorKind::StorageFull), at);
            let e = s.persist(&[ent(3, 2)], Some(&hs(2, 2))).unwrap_err();
            let kind = match &e {
                StorageError::Io { source, .. } => source.kind(),
                other => panic!("expected an I/O error, got {other}"),
            };
            assert_eq!(kind, ErrorKind::StorageFull, "{e}");
            #[cfg(target_os = "linux")]
            assert!(e.to_string().contains("No space left on device"), "{e}");
            // Memory and disk are both back at the last whole record.
            assert_eq!(state_of(&s), good);
            assert_eq!(s.wal_len(), good_len);
            assert_eq!(fs::read(&wal).unwrap(), good_bytes, "{at:?}");
            let reopened = DiskStorage::open(dir.path(), opts()).unwrap();
            assert_eq!(state_of(&reopened), good);
        }
        // Cleared: the next append lands right after the good prefix and survives a reopen.
        fault.set(None);
        s.persist(&[ent(3, 2)], Some(&hs(2, 3))).unwrap();
        let after = state_of(&s);
        drop(s);
        let s = DiskStorage::open(dir.path(), o).unwrap();
        assert_eq!(state_of(&s), after);
        assert_eq!(after.1.len(), 3);
        check_consistent(&s);
    }

    #[test]
    fn failed_cut_back_is_repaired_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let (o, fault) = faulty();
        let mut s = DiskStorage::create(dir.path(), meta(), None, o.clone()).unwrap();
        s.persist(&[ent(1, 1)], Some(&hs(1, 1))).unwrap();
        let good = state_of(&s);
        let wal = dir.path().join(WAL);
        let good_len = s.wal_len();
        fault.set(Some(ErrorKind::Other));
        fault.fail_repairs(true);
        assert!(s.persist(&[ent(2, 1)], Some(&hs(1, 2))).is_err());
        assert!(s.wal_needs_truncate);
        // Half a record is left on disk: a crash now is a torn tail, not corruption.
        let torn_len = fs::metadata(&wal).unwrap().len();
        assert!(torn_len > good_len);
        let copy = tempfile::tempdir().unwrap();
        for f in [META, WAL] {
            fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
        }
        assert_eq!(
            state_of(&DiskStorage::open(copy.path(), opts()).unwrap()),
            good
        );
        // While the repair keeps failing, nothing is appended after the partial record.
        assert!(s.persist(&[ent(2, 1)], Some(&hs(1, 2))).is_err());
        assert!(s.set_commit(5).is_err());
        assert_eq!(fs::metadata(&wal).unwrap().len(), torn_len);
        assert_eq!(state_of(&s), good);
        // Healthy again: the repair runs first, then the append.
        fault.fail_repairs(false);
        fault.set(None);
        s.persist(&[ent(2, 1), ent(3, 1)], Some(&hs(1, 2))).unwrap();
        assert!(!s.wal_needs_truncate);
        let after = state_of(&s);
        drop(s);
        let s = DiskStorage::open(dir.path(), o).unwrap();
        assert_eq!(state_of(&s), after);
        assert_eq!(after.1.len(), 3);
    }

    #[test]
    fn failed_snapshot_write_leaves_the_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let (o, fault) = faulty();
        let mut s =
            DiskStorage::create(dir.path(), meta(), Some(snap(1, 1, b"boot")), o.clone()).unwrap();
        let ents: Vec<Entry> = (2..=10).map(|i| ent(i, 1)).collect();
        s.persist(&ents, Some(&hs(1, 8))).unwrap();
        let before = state_of(&s);
        let files = |d: &Path| [META, SNAPSHOT, WAL].map(|f| fs::read(d.join(f)).unwrap());
        let on_disk = files(dir.path());
        for at in [FaultPoint::Write, FaultPoint::Sync] {
            fault.set_at(Some(ErrorKind::StorageFull), at);
            assert!(s.compact(snap(5, 1, b"s5")).is_err());
            assert!(s.apply_snapshot(snap(20, 3, b"leader")).is_err());
            assert_eq!((s.snapshot_index(), state_of(&s)), (1, before.clone()));
            assert_eq!(files(dir.path()), on_disk, "{at:?}");
            assert!(!dir.path().join("snapshot.tmp").exists());
        }
        fault.set(None);
        s.compact(snap(5, 1, b"s5")).unwrap();
        s.persist(&[ent(11, 1)], Some(&hs(1, 11))).unwrap();
        drop(s);
        let s = DiskStorage::open(dir.path(), o).unwrap();
        assert_eq!((s.snapshot_index(), s.last_index().unwrap()), (5, 11));
        check_consistent(&s);
    }

    #[test]
    fn failed_wal_rewrite_is_redone_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let (o, fault) = faulty();
        let mut s = DiskStorage::create(dir.path(), meta(), None, o.clone()).unwrap();
        let ents: Vec<Entry> = (1..=8).map(|i| ent(i, 1)).collect();
        s.persist(&ents, Some(&hs(1, 6))).unwrap();
        let wal = dir.path().join(WAL);
        let old_wal = fs::read(&wal).unwrap();
        // The rewrite fails before its rename: the old WAL is intact and no temporary is left.
        fault.set(Some(ErrorKind::StorageFull));
        assert!(s.rewrite_wal().is_err());
        assert!(s.wal_needs_rewrite);
        assert_eq!(fs::read(&wal).unwrap(), old_wal);
        assert!(!dir.path().join("wal.tmp").exists());
        // Still failing: the next append is refused, nothing written.
        assert!(s.persist(&[ent(9, 1)], Some(&hs(1, 7))).is_err());
        assert_eq!(fs::read(&wal).unwrap(), old_wal);
        // After the rename the directory fsync fails: the new file is the WAL from then on,
        // and the directory is synced before the next append.
        fault.set_at(Some(ErrorKind::Other), FaultPoint::DirSync);
        assert!(s.rewrite_wal().is_err());
        assert!(!s.wal_needs_rewrite && s.dir_needs_sync);
        let rewritten_len = fs::metadata(&wal).unwrap().len();
        assert_eq!(rewritten_len, s.wal_len());
        assert!(s.persist(&[ent(9, 1)], Some(&hs(1, 7))).is_err());
        assert_eq!(fs::metadata(&wal).unwrap().len(), rewritten_len);
        fault.set(None);
        s.persist(&[ent(9, 1)], Some(&hs(1, 7))).unwrap();
        assert!(!s.dir_needs_sync);
        let after = state_of(&s);
        drop(s);
        let s = DiskStorage::open(dir.path(), o).unwrap();
        assert_eq!(state_of(&s), after);
        assert_eq!(after.1.len(), 9);
    }

    #[test]
    fn damaged_snapshot_and_meta_files_are_corrupt_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            DiskStorage::create(dir.path(), meta(), Some(snap(1, 1, b"boot")), opts()).unwrap();
        let ents: Vec<Entry> = (2..=10).map(|i| ent(i, 1)).collect();
        s.persist(&ents, Some(&hs(1, 8))).unwrap();
        s.compact(snap(5, 1, b"state at five")).unwrap();
        drop(s);
        let (snap_path, meta_path) = (dir.path().join(SNAPSHOT), dir.path().join(META));
        let good_snap = fs::read(&snap_path).unwrap();
        let good_meta = fs::read(&meta_path).unwrap();
        let open_err = || DiskStorage::open(dir.path(), opts()).unwrap_err();
        let corrupt_path = |e: &StorageError| match e {
            StorageError::Corrupt { path, .. } => path.clone(),
            other => panic!("expected Corrupt, got {other}"),
        };

        let mut damaged: Vec<Vec<u8>> = vec![
            good_snap[..good_snap.len() - 1].to_vec(),
            good_snap[..10].to_vec(),
            Vec::new(),
        ];
        let mut flipped = good_snap.clone();
        *flipped.last_mut().unwrap() ^= 0x10;
        damaged.push(flipped);
        let mut magic = good_snap.clone();
        magic[0] = b'X';
        damaged.push(magic);
        let mut longer = good_snap.clone();
        longer.push(0);
        damaged.push(longer);
        for bad in damaged {
            fs::write(&snap_path, &bad).unwrap();
            let e = open_err();
            assert_eq!(corrupt_path(&e), snap_path, "{e}");
            assert!(e.to_string().contains(&snap_path.display().to_string()));
        }
        // Missing, while the WAL starts after index 1: an error naming the snapshot.
        fs::remove_file(&snap_path).unwrap();
        let e = open_err();
        assert_eq!(corrupt_path(&e), snap_path, "{e}");
        assert!(e.to_string().contains("log starts at index 6"), "{e}");
        fs::write(&snap_path, &good_snap).unwrap();

        for bad in [
            "node_id=1\n".to_string(),
            "cluster_id=7\n".into(),
            "node_id=x\ncluster_id=7\n".into(),
            String::new(),
        ] {
            fs::write(&meta_path, bad).unwrap();
            let e = open_err();
            assert_eq!(corrupt_path(&e), meta_path, "{e}");
        }
        fs::write(&meta_path, [0xff, 0xfe, 0x00]).unwrap();
        assert_eq!(corrupt_path(&open_err()), meta_path);
        // Missing meta next to a WAL: damage, and no new node may be created over the log.
        fs::remove_file(&meta_path).unwrap();
        assert!(DiskStorage::exists(dir.path()));
        assert_eq!(corrupt_path(&open_err()), meta_path);
        assert!(matches!(
            DiskStorage::create(dir.path(), meta(), None, opts()),
            Err(StorageError::AlreadyInitialized(_))
        ));
        fs::write(&meta_path, &good_meta).unwrap();
        let s = DiskStorage::open(dir.path(), opts()).unwrap();
        assert_eq!((s.snapshot_index(), s.last_index().unwrap()), (5, 10));
    }

    #[test]
    fn missing_snapshot_under_a_compacted_wal_is_an_error() {
        // Compacted up to the last entry: the WAL holds no entries, only the HardState.
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::create(dir.path(), meta(), None, opts()).unwrap();
        let ents: Vec<Entry> = (1..=4).map(|i| ent(i, 1)).collect();
        s.persist(&ents, Some(&hs(1, 4))).unwrap();
        s.compact(snap(4, 1, b"s4")).unwrap();
        drop(s);
        let snap_path = dir.path().join(SNAPSHOT);
        fs::remove_file(&snap_path).unwrap();
        match DiskStorage::open(dir.path(), opts()).unwrap_err() {
            StorageError::Corrupt { path, reason, .. } => {
                assert_eq!(path, snap_path);
                assert!(reason.contains("commit index 4"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other}"),
        }
        // A node that joined and has no snapshot yet has no snapshot file: that is fine.
        let dir = tempfile::tempdir().unwrap();
        DiskStorage::create(dir.path(), meta(), None, opts()).unwrap();
        assert_eq!(
            DiskStorage::open(dir.path(), opts())
                .unwrap()
                .snapshot_index(),
            0
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// One persist call: `back` entries rewritten (never committed ones), `n` entries in
        /// all, `size` bytes of data each, maybe a new term.
        #[derive(Debug, Clone)]
        struct Batch {
            back: u64,
            n: u64,
            size: usize,
            new_term: bool,
        }

        /// One damage to a WAL; offsets are seeds, reduced to the file at hand.
        #[derive(Debug, Clone)]
        enum Damage {
            /// XOR `mask` into a short byte range of one record (header included).
            Flip(usize, usize, usize, u8),
            /// Zero a byte range of one record.
            Zero(usize, usize, usize),
            /// Overwrite one record's length field.
            Length(usize, u32),
            /// Cut the file: a lost tail looks like a shorter log.
            Truncate(usize),
            /// Zero from an offset to the end: a lost tail too.
            ZeroFrom(usize),
            /// Zeros after the last record (size updated, data never written).
            ZeroTail(usize),
        }

        fn batch() -> impl Strategy<Value = Batch> {
            (0u64..3, 0u64..4, 0usize..120, proptest::bool::weighted(0.2)).prop_map(
                |(back, n, size, new_term)| Batch {
                    back,
                    n,
                    size,
                    new_term,
                },
            )
        }

        fn damage() -> impl Strategy<Value = Damage> {
            let u = any::<usize>;
            // Lengths both huge (past the end) and small (inside the file).
            let len = prop_oneof![any::<u32>(), 0u32..2000];
            prop_oneof![
                3 => (u(), u(), u(), 1u8..=255).prop_map(|(r, a, l, m)| Damage::Flip(r, a, l, m)),
                2 => (u(), u(), u()).prop_map(|(r, a, l)| Damage::Zero(r, a, l)),
                2 => (u(), len).prop_map(|(r, v)| Damage::Length(r, v)),
                1 => u().prop_map(Damage::Truncate),
                1 => u().prop_map(Damage::ZeroFrom),
                1 => (1usize..5000).prop_map(Damage::ZeroTail),
            ]
        }

        /// Writes the batches; returns every record's start offset plus the file length, and
        /// the acknowledged state after each record (`states[0]`: after the create record).
        fn write_log(dir: &Path, batches: &[Batch]) -> (Vec<u64>, Vec<(HardState, Vec<Entry>)>) {
            let mut s = DiskStorage::create(dir, meta(), None, opts()).unwrap();
            let mut bounds = vec![0, s.wal_len()];
            let mut states = vec![state_of(&s)];
            for b in batches {
                let (last, commit) = (s.last_index().unwrap(), s.hard_state().commit);
                let mut h = s.hard_state().clone();
                h.term += u64::from(b.new_term || h.term == 0);
                let first = last + 1 - b.back.min(last - commit);
                let ents: Vec<Entry> = (first..first + b.n)
                    .map(|i| Entry {
                        index: i,
                        term: h.term,
                        data: (0..b.size)
                            .map(|k| (i as usize * 31 + k * 7) as u8)
                            .collect(),
                        ..Default::default()
                    })
                    .collect();
                let new_last = ents.last().map_or(last, |e| e.index);
                h.commit = (commit + 1).min(new_last).max(commit);
                if ents.is_empty() && h == *s.hard_state() {
                    h.term += 1;
                }
                s.persist(&ents, Some(&h)).unwrap();
                bounds.push(s.wal_len());
                states.push(state_of(&s));
            }
            (bounds, states)
        }

        /// Applies `damage` to a WAL written from `batches` and checks what `open` makes of it.
        fn check_one_damage(
            batches: &[Batch],
            damage: Damage,
        ) -> std::result::Result<(), TestCaseError> {
            let dir = tempfile::tempdir().unwrap();
            let wal = dir.path().join(WAL);
            let (bounds, states) = write_log(dir.path(), batches);
            let full = fs::read(&wal).unwrap();
            let records = bounds.len() - 1;
            let start = |r: usize| bounds[r] as usize;
            // A byte range inside record `r`, from seeds.
            let range = |r: usize, a: usize, l: usize| {
                let from = start(r) + a % (start(r + 1) - start(r));
                from..from + 1 + l % (start(r + 1) - from).min(16)
            };
            let mut bad = full.clone();
            // The file lost its tail (cut off, or zeroed to the end).
            let mut lost_tail = false;
            match damage {
                Damage::Flip(r, a, l, mask) => {
                    bad[range(r % records, a, l)]
                        .iter_mut()
                        .for_each(|b| *b ^= mask);
                }
                Damage::Zero(r, a, l) => bad[range(r % records, a, l)].fill(0),
                Damage::Length(r, v) => {
                    let at = start(r % records);
                    bad[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                Damage::Truncate(at) => {
                    bad.truncate(at % full.len());
                    lost_tail = true;
                }
                Damage::ZeroFrom(at) => {
                    bad[at % full.len()..].fill(0);
                    lost_tail = true;
                }
                Damage::ZeroTail(n) => bad.resize(full.len() + n, 0),
            }
            fs::write(&wal, &bad).unwrap();
            let opened = DiskStorage::open(dir.path(), opts());
            let changed = bad.iter().zip(&full).position(|(a, b)| a != b);
            // The number of records that must survive as whole, or None if only Corrupt will do.
            let expect_whole = match (lost_tail, changed) {
                // Lost from the first byte that differs (zeroed bytes may have been zeros).
                (true, d) => {
                    let lost_from = d.unwrap_or(bad.len());
                    Some(
                        bounds
                            .iter()
                            .rposition(|&b| b as usize <= lost_from)
                            .unwrap(),
                    )
                }
                (false, None) => Some(records),
                (false, Some(d)) if d >= start(records - 1) => Some(records - 1),
                (false, Some(_)) => None,
            };
            match (opened, expect_whole) {
                (Ok(mut s), Some(whole)) => {
                    check_consistent(&s);
                    // No whole record at all reads as the create record's empty state.
                    prop_assert_eq!(&state_of(&s), &states[whole.max(1) - 1]);
                    prop_assert_eq!(fs::metadata(&wal).unwrap().len(), bounds[whole]);
                    // The recovered WAL takes appends, and they survive a reopen.
                    let mut h = s.hard_state().clone();
                    h.term += 1;
                    let e = Entry {
                        index: s.last_index().unwrap() + 1,
                        term: h.term,
                        ..Default::default()
                    };
                    s.persist(&[e], Some(&h)).unwrap();
                    let after = state_of(&s);
                    drop(s);
                    let s = DiskStorage::open(dir.path(), opts()).unwrap();
                    prop_assert_eq!(state_of(&s), after);
                }
                (Err(e), None) => {
                    let d = changed.unwrap();
                    let r = bounds.iter().rposition(|&b| b as usize <= d).unwrap();
                    assert_corrupt_at(&e, &wal, bounds[r]);
                    prop_assert_eq!(fs::read(&wal).unwrap(), bad, "damage is left as it is");
                }
                (Ok(s), None) => {
                    return Err(TestCaseError::fail(format!(
                        "damage at byte {changed:?} (records start at {bounds:?}) was accepted: \
                         {:?}",
                        s.hard_state()
                    )));
                }
                (Err(e), Some(whole)) => {
                    return Err(TestCaseError::fail(format!(
                        "expected {whole} whole records to open, got {e}"
                    )));
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 300,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            /// Any one damage is reported as corruption at the damaged record, or cut off as a
            /// torn tail only when it lies in the final record (or the file lost its tail,
            /// which no reader can tell from a shorter log). Never a panic, never an
            /// acknowledged record dropped silently from the middle.
            #[test]
            fn one_damage_is_reported_or_confined_to_the_final_record(
                batches in proptest::collection::vec(batch(), 1..25),
                damage in damage(),
            ) {
                check_one_damage(&batches, damage)?;
            }
        }
    }
}
