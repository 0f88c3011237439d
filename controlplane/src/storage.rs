//! One job in one file (past 800 lines): the node's durable store. Writing (append, cut-back,
//! repair) and reading (replay, damage told from a torn tail) share one record format and its
//! invariants; the tests live in `storage/tests.rs`.
//!
//! Durable Raft storage in a data directory: a write-ahead log plus one snapshot file.
//!
//! Why our own WAL rather than raft-engine: the control plane writes a few KB/s at most (network
//! and endpoint changes, heartbeats are not logged), one append-only file with CRC'd records is
//! enough, and raft-engine would cost minutes of compile time on a 2-core builder.
//!
//! Layout of the data directory (mode 0700, its files 0600: the replicated state holds the
//! cluster's CA key and join key, so reading the data dir is as good as holding the join token;
//! [`DiskStorage::create`] and [`DiskStorage::open`] remove group and other permissions from a
//! directory or file that has them, and log what they changed):
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
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

const WAL: &str = "wal";
const SNAPSHOT: &str = "snapshot";
const META: &str = "meta";
const SNAP_MAGIC: &[u8; 8] = b"VXSNAP1\0";
/// Mode of the data dir: owner only (it holds the cluster's keys).
const DIR_MODE: u32 = 0o700;
/// Mode of every file the storage creates.
const FILE_MODE: u32 = 0o600;
/// Permission bits of group and other, removed from the data dir and its files on open.
const GROUP_OTHER: u32 = 0o077;
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
        create_data_dir(dir).map_err(io("create", dir))?;
        // The dir may have existed (made by hand, or by an older vxnetd) with looser modes.
        restrict_permissions(dir)?;
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
    /// but a torn final WAL record) is [`StorageError::Corrupt`], and the files' contents are
    /// left as they are. Group and other permissions are removed from the directory and its
    /// files first (a data dir written by a release that did not set modes).
    pub fn open(dir: &Path, opts: StorageOptions) -> Result<DiskStorage> {
        if !Self::exists(dir) {
            return Err(StorageError::NotInitialized(dir.to_path_buf()));
        }
        restrict_permissions(dir)?;
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
            .mode(FILE_MODE)
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

/// Creates the data dir `dir` with mode 0700 if it is missing (the agent calls it before it
/// binds anything, storage again on creation). Missing parents get the default mode: they are
/// not ours to lock (`/var/lib`, a test's temporary dir). An existing dir is left as it is;
/// [`DiskStorage::create`] and [`DiskStorage::open`] remove its loose permission bits.
pub fn create_data_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

/// Removes group and other permission bits from `dir` and the regular files directly in it,
/// and logs one warning naming every change (`path 0644 -> 0600`); returns those changes.
/// Subdirectories (`tls/`, whose `ca.crt` is meant to be world-readable) and symbolic links
/// (a chmod would follow them out of the dir) are left to their owners.
fn restrict_permissions(dir: &Path) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    restrict_mode(dir, &mut changed)?;
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let path = entry.path();
        // `DirEntry::file_type` does not follow symbolic links.
        if entry.file_type().map_err(io("stat", &path))?.is_file() {
            restrict_mode(&path, &mut changed)?;
        }
    }
    if !changed.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            changed = %changed.join(", "),
            "removed group and other permissions from the data dir: it holds the cluster's keys"
        );
    }
    Ok(changed)
}

fn restrict_mode(path: &Path, changed: &mut Vec<String>) -> Result<()> {
    let mode = fs::metadata(path)
        .map_err(io("stat", path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & GROUP_OTHER != 0 {
        let new = mode & !GROUP_OTHER;
        fs::set_permissions(path, Permissions::from_mode(new)).map_err(io("chmod", path))?;
        changed.push(format!("{} {mode:04o} -> {new:04o}", path.display()));
    }
    Ok(())
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
mod tests;
