//! A damaged WAL is told from a torn tail, with real agents: damage in the middle of h3's log
//! (a length field, flipped bytes, a zero-filled region) makes h3 refuse to start within a few
//! seconds, naming the file by its full path and the offset, and changing nothing on disk; a
//! cut-off final record is a torn tail and h3 starts. Then the documented recovery: remove the
//! host from the cluster, move its data dir away, re-join.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// Offsets of the WAL's records (`[len u32 LE][crc u32][kind u8][len bytes]`).
fn record_offsets(wal: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut pos = 0;
    while pos + 9 <= wal.len() {
        offsets.push(pos);
        let len = u32::from_le_bytes([wal[pos], wal[pos + 1], wal[pos + 2], wal[pos + 3]]);
        pos += 9 + len as usize;
    }
    offsets
}

/// How many entries the record at `at` carries (payload: `[hs_len u32][hs][n u32]...`).
fn entries_in(wal: &[u8], at: usize) -> u32 {
    let u32_at = |i: usize| u32::from_le_bytes([wal[i], wal[i + 1], wal[i + 2], wal[i + 3]]);
    let hs_len = u32_at(at + 9) as usize;
    u32_at(at + 13 + hs_len)
}

/// Starts h3 on the damaged WAL and expects a refusal naming `wal` and `offset`; checks the
/// data dir is unchanged and returns how long the refusal took.
fn expect_refusal(cluster: &mut Cluster, wal: &Path, offset: usize, what: &str) -> Duration {
    let before = std::fs::read(wal).expect("read wal");
    let started = Instant::now();
    cluster.agents[2].restart();
    let status = wait_for(
        &format!("h3 to refuse a WAL with {what}"),
        Duration::from_secs(10),
        || cluster.agents[2].exit_status(),
    );
    let took = started.elapsed();
    let log = std::fs::read_to_string(&cluster.agents[2].log).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(78),
        "{what}: h3 must not start; log: {log}"
    );
    let needle = format!("{} is corrupt at byte {offset}", wal.display());
    assert!(
        log.contains(&needle),
        "{what}: expected {needle:?} in: {log}"
    );
    assert!(
        log.contains("Recovery:"),
        "{what}: recovery spelled out: {log}"
    );
    assert_eq!(
        std::fs::read(wal).expect("read wal"),
        before,
        "{what}: WAL unchanged"
    );
    eprintln!("{what}: refused after {took:?}");
    took
}

#[test]
fn damaged_wal_is_refused_torn_tail_is_recovered_and_rejoin_works() {
    let Some(mut cluster) = cluster_for(
        "damaged_wal_is_refused_torn_tail_is_recovered_and_rejoin_works",
        "fw",
        3,
    ) else {
        return;
    };
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.45.0.0/24", "wal"]);
    let c1 = cluster.container();
    let c3 = cluster.container();
    cluster.agents[0].vxnet(&["network", "connect", "wal", &c1]);
    cluster.agents[2].vxnet(&["network", "connect", "wal", &c3]);
    // Enough writes that h3's WAL holds many records.
    for i in 0..12 {
        cluster.agents[0].vxnet(&["network", "create", &format!("w{i}")]);
    }
    let ip3 = cluster.ipv4_of(&c3, "eth0");
    cluster.wait_ping("c1 → c3", &c1, &ip3);
    wait_for("h3 to apply everything", Duration::from_secs(20), || {
        cluster.agents[2]
            .vxnet(&["network", "ls"])
            .contains("w11")
            .then_some(())
    });
    cluster.agents[2].kill();
    let wal = cluster.agents[2].data_dir.join("wal");
    let original = std::fs::read(&wal).expect("read wal");
    let offsets = record_offsets(&original);
    assert!(offsets.len() >= 8, "h3's WAL has {} records", offsets.len());
    let victim = offsets[offsets.len() / 2];

    let mut damaged = original.clone();
    damaged[victim..victim + 4].copy_from_slice(&0x00ff_ff00u32.to_le_bytes());
    std::fs::write(&wal, &damaged).expect("write wal");
    let t1 = expect_refusal(&mut cluster, &wal, victim, "a damaged length field");

    let mut damaged = original.clone();
    for b in &mut damaged[victim + 12..victim + 20] {
        *b ^= 0x5a;
    }
    std::fs::write(&wal, &damaged).expect("write wal");
    let t2 = expect_refusal(&mut cluster, &wal, victim, "flipped bytes mid-log");

    let mut damaged = original.clone();
    let end = offsets[offsets.len() / 2 + 2];
    damaged[victim..end].fill(0);
    std::fs::write(&wal, &damaged).expect("write wal");
    let t3 = expect_refusal(&mut cluster, &wal, victim, "a zero-filled region");

    // A crash mid-append leaves a partial record after the last whole one (or a zero-filled
    // tail): a torn write, never acknowledged. h3 cuts it and starts with everything.
    for (what, tail) in [
        ("a partial record", {
            let mut t = 300u32.to_le_bytes().to_vec();
            t.extend_from_slice(&[0xab; 40]);
            t
        }),
        ("a zero-filled tail", vec![0u8; 4096]),
    ] {
        let mut torn = original.clone();
        torn.extend_from_slice(&tail);
        std::fs::write(&wal, &torn).expect("write wal");
        cluster.agents[2].restart();
        cluster.wait_api(2);
        let ls = cluster.agents[2].vxnet(&["network", "ls"]);
        assert!(ls.contains("w11") && ls.contains("wal"), "{what}: {ls}");
        let log = std::fs::read_to_string(&cluster.agents[2].log).unwrap_or_default();
        assert!(log.contains("torn"), "{what}: torn tail logged: {log}");
        cluster.assert_ping(&c1, &ip3, 2, "");
        cluster.agents[2].kill();
        let kept = std::fs::read(&wal).expect("read wal");
        assert!(
            kept.len() >= original.len() && kept[..original.len()] == original[..],
            "{what}: every whole record kept"
        );
    }

    // A damaged final record may have been acknowledged (damage after the fsync): it is cut
    // like a torn write (it cannot be told from one), and the node says it lost acknowledged
    // entries but neither panics nor stops: it catches up from the leader.
    // Keep the log up to its last record that carries entries and damage that one: the node
    // then lacks an entry the leader knows it acknowledged.
    let now = std::fs::read(&wal).expect("read wal");
    let last = record_offsets(&now)
        .into_iter()
        .rev()
        .find(|&at| entries_in(&now, at) > 0)
        .expect("a record with entries");
    let len = u32::from_le_bytes([now[last], now[last + 1], now[last + 2], now[last + 3]]);
    let mut cut = now[..last + 9 + len as usize].to_vec();
    cut[last + 9] ^= 0xff;
    std::fs::write(&wal, &cut).expect("write wal");
    cluster.agents[2].restart();
    cluster.wait_api(2);
    cluster.agents[0].vxnet(&["network", "create", "after-damage"]);
    wait_for(
        "h3 to catch up after losing its last record",
        Duration::from_secs(20),
        || {
            let ls = cluster.agents[2].vxnet(&["network", "ls"]);
            (ls.contains("after-damage") && ls.contains("w11")).then_some(())
        },
    );
    assert!(cluster.agents[2].is_running(), "no panic");
    let log = std::fs::read_to_string(&cluster.agents[2].log).unwrap_or_default();
    assert!(
        log.contains("lost log entries it had acknowledged"),
        "the loss is reported: {log}"
    );
    cluster.assert_ping(&c1, &ip3, 2, "");

    // The documented recovery of a damaged data dir: remove the host, move the dir, re-join.
    cluster.agents[2].kill();
    std::fs::write(&wal, &damaged).expect("write wal");
    cluster.agents[0].vxnet(&["cluster", "rm", "h3"]);
    let moved = cluster.dir.join("h3.damaged");
    std::fs::rename(&cluster.agents[2].data_dir, &moved).expect("move data dir");
    cluster.agents[2].restart();
    cluster.wait_api(2);
    cluster.wait_members(3);
    let c3b = cluster.container();
    cluster.agents[2].vxnet(&["network", "connect", "wal", &c3b]);
    let ip3b = cluster.ipv4_of(&c3b, "eth0");
    cluster.wait_ping("c1 → c3b after re-join", &c1, &ip3b);
    cluster.assert_ping(&c1, &ip3b, 2, "");
    eprintln!(
        "WAL damage: refused after {t1:?} / {t2:?} / {t3:?}; torn tail recovered; re-join ok"
    );
}
