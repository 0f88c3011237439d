//! Unit and property tests of the WAL, snapshot and meta files: torn tails against damage,
//! failed writes, compaction and snapshots, and the data dir's permissions.
//!
//! One job past 800 lines: the store's tests, sharing one set of fixtures (entries, damaged
//! files, failing writers); split by topic they would repeat those fixtures.

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

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The data dir holds the cluster's keys: a fresh one is created 0700 with 0600 files, and a
/// pre-existing one (made by hand, or by a release that set no modes) is tightened on create
/// and on open, leaving subdirectories and links alone.
#[test]
fn data_dir_ends_owner_only_whether_fresh_or_pre_existing() {
    let root = tempfile::tempdir().unwrap();
    let fresh = root.path().join("lib/vxnet");
    let s = DiskStorage::create(&fresh, meta(), Some(snap(3, 1, b"s")), opts()).unwrap();
    drop(s);
    assert_eq!(mode_of(&fresh), 0o700);
    for f in [WAL, SNAPSHOT, META] {
        assert_eq!(mode_of(&fresh.join(f)), 0o600, "{f}");
    }
    // The parent is not the data dir: it gets the default mode (the same umask applies).
    let reference = root.path().join("reference");
    fs::create_dir(&reference).unwrap();
    assert_eq!(mode_of(&root.path().join("lib")), mode_of(&reference));
    create_data_dir(&fresh).unwrap();
    assert!(
        create_data_dir(&fresh.join(WAL)).is_err(),
        "a file is not a dir"
    );

    // An older release's data dir: umask 022 modes, a stray file, a `tls/` subdir, a link.
    fs::set_permissions(&fresh, Permissions::from_mode(0o755)).unwrap();
    for f in [WAL, SNAPSHOT, META] {
        fs::set_permissions(fresh.join(f), Permissions::from_mode(0o644)).unwrap();
    }
    fs::write(fresh.join("notes"), b"x").unwrap();
    fs::set_permissions(fresh.join("notes"), Permissions::from_mode(0o666)).unwrap();
    fs::write(fresh.join("owner-only"), b"x").unwrap();
    fs::set_permissions(fresh.join("owner-only"), Permissions::from_mode(0o400)).unwrap();
    let tls = fresh.join("tls");
    fs::create_dir(&tls).unwrap();
    fs::set_permissions(&tls, Permissions::from_mode(0o755)).unwrap();
    let outside = root.path().join("outside");
    fs::write(&outside, b"x").unwrap();
    fs::set_permissions(&outside, Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&outside, fresh.join("link")).unwrap();
    DiskStorage::open(&fresh, opts()).unwrap();
    assert_eq!(mode_of(&fresh), 0o700);
    for f in [WAL, SNAPSHOT, META, "notes"] {
        assert_eq!(mode_of(&fresh.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        mode_of(&fresh.join("owner-only")),
        0o400,
        "owner bits are kept"
    );
    assert_eq!(mode_of(&tls), 0o755, "subdirectories are left alone");
    assert_eq!(mode_of(&outside), 0o644, "links are not followed");
    // Nothing left to change: the warning is not repeated on the next open.
    assert!(restrict_permissions(&fresh).unwrap().is_empty());
    fs::set_permissions(fresh.join(WAL), Permissions::from_mode(0o640)).unwrap();
    let changed = restrict_permissions(&fresh).unwrap();
    assert_eq!(
        changed,
        [format!("{} 0640 -> 0600", fresh.join(WAL).display())]
    );

    // A dir made beforehand (by hand, or by the agent) and too open: tightened on create.
    let made = root.path().join("made");
    fs::create_dir(&made).unwrap();
    fs::set_permissions(&made, Permissions::from_mode(0o775)).unwrap();
    DiskStorage::create(&made, meta(), None, opts()).unwrap();
    assert_eq!(mode_of(&made), 0o700);
    for f in [WAL, META] {
        assert_eq!(mode_of(&made.join(f)), 0o600, "{f}");
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
    let mut s = DiskStorage::create(dir.path(), meta(), Some(snap(1, 1, b"boot")), opts()).unwrap();
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
    let mut s = DiskStorage::create(dir.path(), meta(), Some(snap(1, 1, b"boot")), opts()).unwrap();
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
