//! The agent's API under abuse: clients that claim full-size frames and stall, flood past the
//! connection cap, send oversized lengths, overrun the request-byte budget, or trickle their
//! request byte by byte. The agent's memory stays bounded, abusers get an error answer, and the
//! CLI keeps answering throughout. Abuse goes through the API's Unix socket only.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;
use prost::Message;
use vxnet::api::{MAX_FRAME, read_frame_bytes};
use vxnet_proto::{ApiResponse, api_response::Kind as Resp};

const MIB: u64 = 1 << 20;

/// The agent's limits, as its messages state them.
const MAX_CONNECTIONS: usize = 64;
const MAX_REQUEST_MIB: u64 = 64;

const TOO_MANY: &str = "too many concurrent API connections (limit 64); try again";
const OVER_BUDGET: &str = "too many API request bytes in flight (limit 64 MiB); try again";
const TIMED_OUT: &str = "timed out reading the request";

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    rss_kib(pid).expect("VmRSS in status") * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Connects and sends a frame header claiming `claimed` bytes, followed by `body`. Writes may
/// fail: an agent over its limits may answer and close before the client has written anything.
fn claim(socket: &Path, claimed: u32, body: &[u8]) -> UnixStream {
    let mut stream = UnixStream::connect(socket).expect("connect to the API");
    let _ = stream
        .write_all(&claimed.to_be_bytes())
        .and_then(|()| stream.write_all(body));
    stream
}

/// The error message of the answer on `stream`, if one arrives within `wait`.
fn answer(stream: &mut UnixStream, wait: Duration) -> Option<String> {
    stream
        .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .expect("set read timeout");
    let body = read_frame_bytes(stream).ok()?;
    match ApiResponse::decode(body.as_slice()).expect("decode the answer") {
        ApiResponse {
            kind: Some(Resp::Error(e)),
        } => Some(e.message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// Splits `streams` into those with an answer waiting (returning its message) and the rest.
fn answered(streams: Vec<UnixStream>) -> (Vec<String>, Vec<UnixStream>) {
    let mut messages = Vec::new();
    let mut held = Vec::new();
    for mut stream in streams {
        match answer(&mut stream, Duration::from_millis(1)) {
            Some(message) => messages.push(message),
            None => held.push(stream),
        }
    }
    (messages, held)
}

/// The CLI answers `network ls` and `cluster members` correctly; returns how long both took.
fn cli_works(agent: &Agent) -> Duration {
    let started = Instant::now();
    let networks = agent.vxnet(&["network", "ls"]);
    assert!(networks.contains("alnet"), "network ls: {networks}");
    let members = agent.vxnet(&["cluster", "members"]);
    assert!(members.contains("h1"), "cluster members: {members}");
    started.elapsed()
}

/// Opens `n` connections that each claim a full frame, send 3 bytes, and stall.
fn stallers(socket: &Path, n: usize) -> Vec<UnixStream> {
    (0..n)
        .map(|_| claim(socket, MAX_FRAME as u32, b"\x0a\x00\x0a"))
        .collect()
}

/// Sends a 100-byte claim one byte every 500 ms until the agent answers; returns the answer and
/// when it came.
fn trickle(socket: PathBuf) -> (Option<String>, Duration) {
    let started = Instant::now();
    let mut stream = claim(&socket, 100, b"");
    for _ in 0..100 {
        if let Some(message) = answer(&mut stream, Duration::from_millis(500)) {
            return (Some(message), started.elapsed());
        }
        if stream.write_all(b"\x00").is_err() {
            break;
        }
    }
    (
        answer(&mut stream, Duration::from_secs(1)),
        started.elapsed(),
    )
}

/// Claims a full frame and sends `bytes` of it in 64 KiB writes, stopping at the first failed
/// write (the agent refused and closed).
fn send_bulk(socket: PathBuf, bytes: usize) -> UnixStream {
    let mut stream = claim(&socket, MAX_FRAME as u32, b"");
    let chunk = vec![0u8; 64 << 10];
    let mut sent = 0;
    while sent < bytes {
        if stream.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    stream
}

/// The agent's warnings about limit `what`: (seconds into the day, refusals reported, line).
fn warnings(log: &Path, what: &str) -> Vec<(f64, u64, String)> {
    let text = std::fs::read_to_string(log).expect("read the agent log");
    text.lines()
        .filter(|l| l.contains("WARN") && l.contains(what))
        .map(|l| {
            // "2026-11-30T15:04:03.253253Z  WARN ...: refused 138 connection(s) ..."
            let at = l
                .split(['T', 'Z'])
                .nth(1)
                .map(|hms| hms.split(':').filter_map(|f| f.parse::<f64>().ok()))
                .map(|f| f.fold(0.0, |acc, v| acc * 60.0 + v))
                .unwrap_or_else(|| panic!("no time in {l}"));
            let count = l
                .split(": refused ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count in {l}"));
            (at, count, l.to_string())
        })
        .collect()
}

#[test]
fn api_limits_hold_under_abuse() {
    let Some(cluster) = cluster_with(
        "api_limits_hold_under_abuse",
        "al",
        ClusterOptions {
            hosts: 1,
            ..Default::default()
        },
    ) else {
        return;
    };
    let agent = &cluster.agents[0];
    let pid = agent.pid().expect("agent pid");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("read comm");
    assert_eq!(comm.trim(), "vxnetd", "pid {pid} is the agent");
    let socket = agent.api.clone();
    agent.vxnet(&["network", "create", "--subnet", "10.77.0.0/24", "alnet"]);
    cli_works(agent);
    let before = rss(pid);

    // 1. 200 clients claim a full frame (16 MiB) each, send 3 bytes and stall: naively 3.2 GB.
    let started = Instant::now();
    let stalled = stallers(&socket, 200);
    // Let the agent finish turning away the burst (an oversized length arriving amid it could be
    // turned away for the cap rather than for its size).
    std::thread::sleep(Duration::from_millis(300));
    // Oversized lengths are refused at once, even while every slot is taken.
    for claimed in [MAX_FRAME as u32 + 1, u32::MAX] {
        for _ in 0..10 {
            let mut stream = claim(&socket, claimed, b"");
            let message = answer(&mut stream, Duration::from_secs(5)).expect("an answer");
            assert_eq!(
                message,
                format!("request of {claimed} bytes is too large (limit {MAX_FRAME} bytes)")
            );
        }
    }
    let trickler = {
        let socket = socket.clone();
        std::thread::spawn(move || trickle(socket))
    };
    std::thread::sleep(Duration::from_millis(500));
    let (refusals, held) = answered(stalled);
    let during = rss(pid);
    let cli_during = cli_works(agent);
    eprintln!(
        "stallers: {} refused, {} held; RSS before {:.1} MiB, during {:.1} MiB (+{:.1} MiB; \
         naive 200 × 16 MiB = 3200 MiB); CLI answered in {cli_during:?} during the abuse",
        refusals.len(),
        held.len(),
        mib(before),
        mib(during),
        mib(during.saturating_sub(before)),
    );
    for message in &refusals {
        assert_eq!(message, TOO_MANY);
    }
    // Over the cap, each new connection turns away the oldest staller.
    assert!(
        refusals.len() >= 200 - MAX_CONNECTIONS,
        "{} stallers refused",
        refusals.len()
    );
    assert!(!held.is_empty() && held.len() <= MAX_CONNECTIONS);
    assert!(
        during.saturating_sub(before) < 64 * MIB,
        "RSS grew from {before} to {during} bytes"
    );

    // A client trickling its request is cut off 10 s after it connected, and so are the
    // stallers: the timeout covers the whole request.
    let (message, after) = trickler.join().expect("trickler");
    eprintln!("trickler: answered {message:?} after {after:?}");
    assert_eq!(message.as_deref(), Some(TIMED_OUT));
    assert!(
        after >= Duration::from_secs(9) && after <= Duration::from_secs(13),
        "{after:?}"
    );
    let (mut timed_out, mut made_room) = (0, 0);
    for mut stream in held {
        let wait = Duration::from_secs(13).saturating_sub(started.elapsed());
        match answer(&mut stream, wait).as_deref() {
            Some(TIMED_OUT) => timed_out += 1,
            // Turned away to make room for the CLI.
            Some(TOO_MANY) => made_room += 1,
            other => panic!("held staller answered {other:?}"),
        }
    }
    eprintln!(
        "stallers: {timed_out} held ones timed out by {:?}, {made_room} made room for the CLI",
        started.elapsed()
    );
    assert!(timed_out > 0 && made_room <= 2);
    let after_stallers = rss(pid);
    cli_works(agent);

    // 2. Once the stallers have timed out, the cap is whole again: a second burst over it turns
    // away exactly the excess.
    let burst = stallers(&socket, MAX_CONNECTIONS + 6);
    std::thread::sleep(Duration::from_millis(500));
    let (burst_refusals, burst_held) = answered(burst);
    eprintln!(
        "second burst: {} refused, {} held",
        burst_refusals.len(),
        burst_held.len()
    );
    assert_eq!(burst_refusals.len(), 6, "{burst_refusals:?}");
    cli_works(agent);
    drop(burst_held);
    // Let the agent see those connections close: until then their slots are busy, not free.
    std::thread::sleep(Duration::from_millis(300));

    // 3. Eight clients send 12 MiB of a 16 MiB claim each (96 MiB): the request-byte budget
    // (64 MiB) holds a few and refuses the rest, and small requests still pass.
    let before_bulk = rss(pid);
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || send_bulk(socket, 12 << 20))
        })
        .collect();
    let bulk: Vec<UnixStream> = senders
        .into_iter()
        .map(|s| s.join().expect("bulk sender"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (bulk_refusals, bulk_held) = answered(bulk);
    let during_bulk = rss(pid);
    let cli_bulk = cli_works(agent);
    eprintln!(
        "bulk senders: {} refused, {} held; RSS before {:.1} MiB, during {:.1} MiB \
         (+{:.1} MiB; naive 8 × 16 MiB = 128 MiB); CLI answered in {cli_bulk:?}",
        bulk_refusals.len(),
        bulk_held.len(),
        mib(before_bulk),
        mib(during_bulk),
        mib(during_bulk.saturating_sub(before_bulk)),
    );
    for message in &bulk_refusals {
        assert_eq!(message, OVER_BUDGET, "{bulk_refusals:?}");
    }
    // 12 MiB received means a 16 MiB buffer: at most four fit in 64 MiB.
    assert!(bulk_held.len() <= 4, "{} held", bulk_held.len());
    assert_eq!(bulk_refusals.len() + bulk_held.len(), 8);
    assert!(
        during_bulk.saturating_sub(before_bulk) < (MAX_REQUEST_MIB + 16) * MIB,
        "RSS grew from {before_bulk} to {during_bulk} bytes"
    );
    drop(bulk_held);

    // 4. With the abusers gone, everything is normal.
    std::thread::sleep(Duration::from_millis(500));
    cli_works(agent);
    // A request larger than the free first 4 KiB passes: the budget was given back.
    let mut stream = claim(&socket, 8 << 20, &vec![0xffu8; 8 << 20]);
    let message = answer(&mut stream, Duration::from_secs(5)).expect("an answer");
    assert!(message.starts_with("malformed request"), "{message}");
    let after = rss(pid);
    eprintln!(
        "RSS after the stallers {:.1} MiB, after everything {:.1} MiB",
        mib(after_stallers),
        mib(after)
    );

    // The agent warned about each limit, at most once per 5 s, with a count.
    let connection_warnings = warnings(&agent.log, "too many concurrent API connections");
    let budget_warnings = warnings(&agent.log, "API requests being read hold too many bytes");
    for (_, _, line) in connection_warnings.iter().chain(&budget_warnings) {
        eprintln!("agent log: {line}");
    }
    let refused_total = (refusals.len() + burst_refusals.len()) as u64;
    let reported: u64 = connection_warnings.iter().map(|(_, n, _)| n).sum();
    eprintln!(
        "connection refusals: {refused_total} seen by the clients, {reported} reported in {} \
         warning(s)",
        connection_warnings.len()
    );
    assert!(connection_warnings.len() >= 2 && reported <= refused_total);
    // Counts add up: the first warning reports one, the next the many held back meanwhile.
    assert!(reported > connection_warnings.len() as u64);
    for pair in connection_warnings.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= 4.9, "warnings too close: {pair:?}");
    }
    assert!(!budget_warnings.is_empty());
}
