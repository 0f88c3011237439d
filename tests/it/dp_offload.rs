//! The offload engine end to end. With `--offload on` (the default) the TAP hands the
//! agent TCP super-frames (TSO), the agent segments them into one UDP GSO send, the receiving
//! agent gets GRO batches and coalesces them back into super-frames for its TAP. These tests
//! check that bytes arrive intact (sha256 on both ends), that the super-frames really flow
//! (average frame size on the TAPs), that PMTU discovery still works when a container's TSO
//! segments exceed the network MTU, and that `--offload off` keeps the plain path working.
//!
//! `offload_throughput_on_vs_off` (ignored; run it with `--release -- --ignored --nocapture`)
//! measures iperf3 single-stream throughput with the engine on and off.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// (packets, bytes) the kernel handed to the agent through TAP `dev` (its "tx") and the agent
/// wrote into the kernel (its "rx").
#[derive(Debug, Clone, Copy, Default)]
struct TapCounters {
    to_agent: (u64, u64),
    from_agent: (u64, u64),
}

fn tap_counters(ns: &str, dev: &str) -> TapCounters {
    let s = link_stats64(ns, dev);
    let get = |dir: &str, what: &str| s[dir][what].as_u64().unwrap_or(0);
    TapCounters {
        to_agent: (get("tx", "packets"), get("tx", "bytes")),
        from_agent: (get("rx", "packets"), get("rx", "bytes")),
    }
}

fn avg(after: (u64, u64), before: (u64, u64)) -> u64 {
    let packets = after.0 - before.0;
    (after.1 - before.1) / packets.max(1)
}

/// One network "blue" (10.60.0.0/24) with one container on each of the two hosts; waits for
/// ping. Returns (c1, c2, ip1, ip2, tap name).
fn two_containers(cluster: &mut Cluster) -> (String, String, String, String, String) {
    let Pair { c1, c2, ip1, ip2 } = cluster.pair_on_network("blue", "10.60.0.0/24");
    let vni = cluster.agents[0].vni_of("blue");
    (c1, c2, ip1, ip2, format!("vxt-{vni}"))
}

fn assert_transfer(cluster: &Cluster, from: &str, to: &str, to_ip: &str, bytes: usize) -> f64 {
    let started = Instant::now();
    let (sent, received) = cluster.tcp_transfer(from, to, to_ip, bytes);
    let secs = started.elapsed().as_secs_f64();
    assert!(sent.starts_with(&bytes.to_string()), "sender: {sent}");
    assert_eq!(sent, received, "bytes and sha256 match on both ends");
    secs
}

fn have_iperf3() -> bool {
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// iperf3 single stream from `from` to `to_ip` (server in `to`) for `secs`; Gbit/s received.
///
/// The server stays up across attempts (no `-1`): a client that raced the server's listen, or a
/// run iperf3 aborted (3.12 can exit 0 with an `"error"` and no `end` totals), is retried, and the
/// last output is shown if none succeeds.
fn iperf3(cluster: &Cluster, from: &str, to: &str, to_ip: &str, secs: u32) -> f64 {
    let mut server = Command::new("ip")
        .args(["netns", "exec", to, "iperf3", "-s", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    let gbps = loop {
        let out = cluster.exec(
            from,
            &format!("iperf3 -c {to_ip} -p 5201 -t {secs} -J --connect-timeout 1000"),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            break Some(bps / 1e9);
        }
        last = format!(
            "exit {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("dp_offload: iperf3 attempt failed, {last}");
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = server.kill();
    let _ = server.wait();
    gbps.unwrap_or_else(|| panic!("iperf3 {from} → {to_ip} never completed; last: {last}"))
}

/// Offload on (the default): a 256 MiB TCP stream each way, sha256 equal on both ends; the TAPs
/// carry super-frames both ways (TSO to the sender's agent, coalesced GSO writes from the
/// receiver's); nothing dropped as bad_gso; iperf3 runs if installed.
#[test]
fn offload_on_streams_super_frames() {
    if !require_root("offload_on_streams_super_frames") {
        return;
    }
    let mut cluster = Cluster::new("of", ClusterOptions::default());
    let (c1, c2, ip1, ip2, tap) = two_containers(&mut cluster);
    let (h1, h2) = (
        cluster.host_ns(0).to_string(),
        cluster.host_ns(1).to_string(),
    );
    cluster.assert_ping(&c1, &ip2, 3, "");
    cluster.assert_ping(&c2, &ip1, 3, "");
    cluster.assert_ping(&c1, &ip2, 3, "-M do -s 1422");

    let (tx0, rx0) = (tap_counters(&h1, &tap), tap_counters(&h2, &tap));
    let secs = assert_transfer(&cluster, &c1, &c2, &ip2, 256 << 20);
    let (tx1, rx1) = (tap_counters(&h1, &tap), tap_counters(&h2, &tap));
    let sender_avg = avg(tx1.to_agent, tx0.to_agent);
    let receiver_avg = avg(rx1.from_agent, rx0.from_agent);
    eprintln!(
        "dp_offload: 256 MiB c1 → c2 in {secs:.2} s ({:.2} Gbit/s incl. setup); average frame \
         TAP → agent on h1: {sender_avg} B, agent → TAP on h2: {receiver_avg} B",
        (256u64 << 23) as f64 / secs / 1e9
    );
    assert!(
        sender_avg > 3000,
        "h1's TAP hands the agent TSO super-frames: {sender_avg} B per read"
    );
    assert!(
        receiver_avg > 3000,
        "h2's agent writes coalesced super-frames: {receiver_avg} B per write"
    );

    // The other way too.
    assert_transfer(&cluster, &c2, &c1, &ip1, 64 << 20);

    if have_iperf3() {
        let gbps = iperf3(&cluster, &c1, &c2, &ip2, 3);
        eprintln!("dp_offload: iperf3 1 stream c1 → c2, offload on: {gbps:.2} Gbit/s");
        assert!(gbps > 0.1, "iperf3 moved data: {gbps} Gbit/s");
    } else {
        eprintln!("dp_offload: iperf3 not installed, skipped");
    }
    for agent in &cluster.agents {
        let s = agent.stats();
        assert_eq!(s.get("drop.bad_gso"), Some(&0), "{}: {s:?}", agent.name);
        assert_eq!(
            s.get("drop.udp_send_error"),
            Some(&0),
            "{}: {s:?}",
            agent.name
        );
        assert_eq!(
            s.get("drop.tap_write_error"),
            Some(&0),
            "{}: {s:?}",
            agent.name
        );
        // Every failed data-plane call is shown, and a healthy transfer has none.
        let io_errors: Vec<_> = s
            .iter()
            .filter(|(k, _)| k.starts_with("io_error."))
            .collect();
        assert_eq!(io_errors.len(), 5, "{}: {s:?}", agent.name);
        assert!(
            io_errors.iter().all(|(_, v)| **v == 0),
            "{}: {io_errors:?}",
            agent.name
        );
    }
    // Ping still works after the streams.
    cluster.assert_ping(&c2, &ip1, 3, "");
}

/// TCP over IPv6 (hand-made ULAs, neighbour discovery flooded): TSO6 super-frames are segmented
/// and coalesced like IPv4 ones, and 64 MiB arrive intact.
#[test]
fn offload_ipv6_stream() {
    if !require_root("offload_ipv6_stream") {
        return;
    }
    let mut cluster = Cluster::new("o6", ClusterOptions::default());
    let (c1, c2, _ip1, _ip2, tap) = two_containers(&mut cluster);
    let (h1, h2) = (
        cluster.host_ns(0).to_string(),
        cluster.host_ns(1).to_string(),
    );
    // The agent turns IPv6 autoconfiguration off on the containers' links: add ULAs by hand.
    for (c, a) in [(&c1, "fd00:60::1"), (&c2, "fd00:60::2")] {
        sh(&format!("ip -n {c} addr add {a}/64 dev eth0 nodad"));
    }
    let ll = "fd00:60::2".to_string();
    wait_for("ping6 c1 → c2", Duration::from_secs(20), || {
        cluster
            .exec(&c1, "ping -6 -n -q -c 1 -W 1 fd00:60::2")
            .status
            .success()
            .then_some(())
    });
    let (tx0, rx0) = (tap_counters(&h1, &tap), tap_counters(&h2, &tap));
    assert_transfer(&cluster, &c1, &c2, &ll, 64 << 20);
    let (tx1, rx1) = (tap_counters(&h1, &tap), tap_counters(&h2, &tap));
    let sender_avg = avg(tx1.to_agent, tx0.to_agent);
    let receiver_avg = avg(rx1.from_agent, rx0.from_agent);
    eprintln!(
        "dp_offload: IPv6 64 MiB to {ll}; TAP → agent on h1: {sender_avg} B per read, agent → \
         TAP on h2: {receiver_avg} B per write"
    );
    assert!(sender_avg > 3000, "TSO6 super-frames: {sender_avg} B");
    assert!(receiver_avg > 3000, "coalesced TCPv6: {receiver_avg} B");
    for agent in &cluster.agents {
        assert_eq!(agent.stats().get("drop.bad_gso"), Some(&0));
    }
}

/// Containers whose MTU was raised past the network's (1500 > 1450) send TSO super-frames whose
/// segments are too big: the router answers ICMP "fragmentation needed" for them, the sender
/// learns the path MTU and the stream completes intact.
#[test]
fn offload_too_big_segments_get_frag_needed() {
    if !require_root("offload_too_big_segments_get_frag_needed") {
        return;
    }
    let mut cluster = Cluster::new("ob", ClusterOptions::default());
    let (c1, c2, _ip1, ip2, _tap) = two_containers(&mut cluster);
    for c in [&c1, &c2] {
        sh(&format!("ip -n {c} link set dev eth0 mtu 1500"));
    }
    let before = cluster.agents[0].stats();
    assert_transfer(&cluster, &c1, &c2, &ip2, 16 << 20);
    let after = cluster.agents[0].stats();
    let too_big = after["drop.too_big"] - before["drop.too_big"];
    assert!(
        too_big > 0,
        "segments of 1500 > 1450 were dropped: {after:?}"
    );
    let route = sh(&format!("ip -n {c1} route get {ip2}"));
    assert!(route.contains("mtu 1450"), "cached PMTU: {route}");
    assert_eq!(after["drop.bad_gso"], 0);
    eprintln!("dp_offload: too_big {too_big}; route: {}", route.trim());
}

/// Receives `count` UDP datagrams on port 6000 (or stops after 3 s of silence) and prints
/// `received in_order intact`: each datagram is an 8-byte sequence number and `size - 8` bytes
/// of a pattern derived from it.
const UDP_SEQ_SINK: &str = r#"
import socket, struct, sys
count, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root): hold the whole stream
s.bind(("0.0.0.0", 6000))
# The pattern depends on seq mod 256 only: precomputed, so the check keeps up with the sender.
patterns = [bytes((k + i) & 0xFF for i in range(size - 8)) for k in range(256)]
print("ready", flush=True)
s.settimeout(3.0)
received, in_order, intact, last = 0, True, True, -1
while received < count:
    try:
        d = s.recv(65535)
    except socket.timeout:
        break
    seq = struct.unpack("!Q", d[:8])[0]
    intact = intact and len(d) == size and d[8:] == patterns[seq & 0xFF]
    in_order = in_order and seq > last
    last = seq
    received += 1
print(received, int(in_order), int(intact), flush=True)
"#;

/// Sends `count` datagrams of `size` bytes to `dst`:6000 in bursts of 64, 1 ms apart.
const UDP_SEQ_SOURCE: &str = r#"
import socket, struct, sys, time
dst, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# Built before sending, so each burst leaves back to back.
patterns = [bytes((k + i) & 0xFF for i in range(size - 8)) for k in range(256)]
data = [struct.pack("!Q", seq) + patterns[seq & 0xFF] for seq in range(count)]
for seq, d in enumerate(data):
    s.sendto(d, (dst, 6000))
    if seq % 64 == 63:
        time.sleep(0.001)
"#;

/// Small frames read from the TAP in one burst leave in UDP GSO runs (one `sendmsg`, one skb on
/// the underlay, for many datagrams): a paced stream of 200-byte UDP datagrams arrives complete,
/// intact and in order, while the sender's underlay link carries fewer packets than datagrams.
#[test]
fn small_datagrams_leave_in_gso_runs() {
    if !require_root("small_datagrams_leave_in_gso_runs") {
        return;
    }
    udp_stream_in_gso_runs("og", Vec::new(), true);
}

/// The same with `--offload off`: the plain path batches its sends too.
#[test]
fn small_datagrams_leave_in_gso_runs_offload_off() {
    if !require_root("small_datagrams_leave_in_gso_runs_offload_off") {
        return;
    }
    udp_stream_in_gso_runs("oo", vec!["--offload".into(), "off".into()], false);
}

/// 4096 datagrams of 200 bytes c1 → c2: all arrive, in order and intact; h1 sends them in GSO
/// runs; with `coalesced`, h2 writes them to its TAP as UDP super-frames (`gso_type` UDP_L4,
/// split back into datagrams by the kernel).
fn udp_stream_in_gso_runs(prefix: &str, agent_args: Vec<String>, coalesced: bool) {
    let mut cluster = Cluster::new(
        prefix,
        ClusterOptions {
            agent_args,
            ..ClusterOptions::default()
        },
    );
    let (c1, c2, _ip1, ip2, tap) = two_containers(&mut cluster);
    let (h1, h2) = (
        cluster.host_ns(0).to_string(),
        cluster.host_ns(1).to_string(),
    );
    let (count, size) = (4096usize, 200usize);
    let sink = cluster.dir.join("udp_seq_sink.py");
    let source = cluster.dir.join("udp_seq_source.py");
    std::fs::write(&sink, UDP_SEQ_SINK).expect("write sink");
    std::fs::write(&source, UDP_SEQ_SOURCE).expect("write source");
    let mut receiver = Command::new("ip")
        .args(["netns", "exec", &c2, "python3"])
        .arg(&sink)
        .args([count.to_string(), size.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sink");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        receiver.stdout.take().expect("sink stdout"),
    ));
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("ready"),
        "sink did not start"
    );
    // ip's "tx" of a link (the TAP helper calls it `to_agent`): what h1 put on the underlay.
    let underlay_tx = || tap_counters(&h1, "ul0").to_agent.0;
    let underlay_before = underlay_tx();
    let tap_writes = || tap_counters(&h2, &tap).from_agent.0;
    let tap_before = tap_writes();
    let sent = cluster.exec(
        &c1,
        &format!("python3 {} {ip2} {count} {size}", source.display()),
    );
    assert!(sent.status.success(), "source: {sent:?}");
    let result = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = receiver.wait();
    let underlay_packets = underlay_tx() - underlay_before;
    let tap_packets = tap_writes() - tap_before;
    let fields: Vec<usize> = result
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    eprintln!(
        "dp_offload: {count} x {size} B datagrams c1 -> c2: sink says {result:?}; \
         h1's underlay sent {underlay_packets} packets (skbs), h2's agent wrote {tap_packets} \
         frames to its TAP"
    );
    assert_eq!(fields.len(), 3, "sink output {result:?}");
    assert_eq!(fields[0], count, "every datagram arrives");
    assert_eq!(fields[1], 1, "in order");
    assert_eq!(fields[2], 1, "intact");
    assert!(
        (underlay_packets as usize) < count * 9 / 10,
        "GSO runs: {underlay_packets} underlay packets for {count} datagrams"
    );
    if coalesced {
        assert!(
            (tap_packets as usize) < count * 9 / 10,
            "UDP super-frames: {tap_packets} TAP writes for {count} datagrams"
        );
    }
}

/// `--offload off`: the plain path (no vnet header, MTU-sized frames on the TAP) still pings and
/// streams.
#[test]
fn offload_off_plain_path() {
    let Some(mut cluster) = cluster_with(
        "offload_off_plain_path",
        "on",
        ClusterOptions {
            agent_args: vec!["--offload".into(), "off".into()],
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let (c1, c2, ip1, ip2, tap) = two_containers(&mut cluster);
    let h1 = cluster.host_ns(0).to_string();
    cluster.assert_ping(&c1, &ip2, 3, "");
    cluster.assert_ping(&c2, &ip1, 3, "");
    cluster.assert_ping(&c1, &ip2, 3, "-M do -s 1422");
    let tx0 = tap_counters(&h1, &tap);
    assert_transfer(&cluster, &c1, &c2, &ip2, 16 << 20);
    let tx1 = tap_counters(&h1, &tap);
    let sender_avg = avg(tx1.to_agent, tx0.to_agent);
    assert!(
        sender_avg <= 1514,
        "without offload the TAP hands over MTU-sized frames: {sender_avg} B"
    );
    for agent in &cluster.agents {
        let s = agent.stats();
        assert_eq!(s.get("drop.bad_gso"), Some(&0), "{}: {s:?}", agent.name);
    }
}

/// Measurement, not a check: iperf3 single stream (and a 512 MiB `tcp_transfer`) through two
/// hosts with offload on, then off. Run with
/// `cargo test --release --test dp_offload -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run explicitly in release mode"]
fn offload_throughput_on_vs_off() {
    if !require_root("offload_throughput_on_vs_off") || !have_iperf3() {
        return;
    }
    let secs: u32 = std::env::var("VXNET_IPERF_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rounds: usize = std::env::var("VXNET_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut results: Vec<(String, Vec<f64>, f64)> = Vec::new();
    for (tag, mode) in [("tn", "on"), ("tf", "off")] {
        let mut cluster = Cluster::new(
            tag,
            ClusterOptions {
                agent_args: vec!["--offload".into(), mode.into()],
                ..ClusterOptions::default()
            },
        );
        let (c1, c2, _ip1, ip2, _tap) = two_containers(&mut cluster);
        let runs: Vec<f64> = (0..rounds)
            .map(|_| iperf3(&cluster, &c1, &c2, &ip2, secs))
            .collect();
        let t = assert_transfer(&cluster, &c1, &c2, &ip2, 512 << 20);
        let gbps = (8u64 << 29) as f64 / t / 1e9;
        eprintln!(
            "offload {mode}: iperf3 {runs:.2?} Gbit/s; 512 MiB sha256 transfer {gbps:.2} \
             Gbit/s (Python-bound)"
        );
        results.push((mode.to_string(), runs, gbps));
    }
    for (mode, runs, t) in &results {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "SUMMARY offload {mode}: iperf3 median {:.2} Gbit/s (runs {runs:.2?}), \
             512 MiB sha256 transfer {t:.2} Gbit/s",
            sorted[sorted.len() / 2]
        );
    }
}
