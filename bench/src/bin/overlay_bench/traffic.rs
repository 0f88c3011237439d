//! The measurements, container 1 → container 2: ping, iperf3 TCP, the built-in UDP blaster and
//! TCP_RR probes (see `probes`), each returning named figures.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use vxnet_testkit::netns::Proc;
use vxnet_testkit::stats::percentile;

use crate::harness::ping_rtts_us;
use crate::measure::CpuSnap;
use crate::topology::Topo;

/// 64-byte Ethernet frame = 14 Ethernet + 20 IPv4 + 8 UDP + 18 payload + 4 FCS.
pub const UDP_PAYLOAD: usize = 18;
const UDP_PORT: u16 = 9000;
/// TCP port of the request/response latency test.
const RR_PORT: u16 = 9100;
/// Interval between pings, in seconds.
pub const PING_INTERVAL_S: f64 = 0.005;

/// Named figures of one measurement.
pub type Figures = BTreeMap<&'static str, f64>;

pub fn ping(topo: &Topo, count: u32) -> Result<Figures> {
    // On failure, with the error's chain: "ping <kind>: no replies\n<ping's output>".
    let us = ping_rtts_us(&topo.containers[0], &topo.dst, count, PING_INTERVAL_S)
        .with_context(|| format!("ping {}", topo.kind.name()))?;
    let n = us.len() as f64;
    Ok(BTreeMap::from([
        ("ping_p50_us", percentile(&us, 50.0)),
        ("ping_p99_us", percentile(&us, 99.0)),
        ("ping_avg_us", us.iter().sum::<f64>() / n),
        ("ping_min_us", us[0]),
        ("ping_max_us", us[us.len() - 1]),
        ("ping_loss_pct", 100.0 * (1.0 - n / f64::from(count))),
    ]))
}

/// A fresh port per iperf3 server, so that a lingering one cannot answer.
static NEXT_PORT: AtomicU64 = AtomicU64::new(5201);

/// iperf3 with `streams` TCP streams for `secs`, and the CPU it cost.
pub fn iperf(topo: &Topo, streams: u32, secs: u32) -> Result<Figures> {
    iperf_between(
        topo,
        &topo.containers[0],
        &topo.containers[1],
        &topo.dst,
        streams,
        secs,
    )
}

/// One TCP stream for `secs` from container 1, through its gateway and NAT, to a server
/// outside every overlay, then from container 1's host to the same server: `egress_container_*`
/// and `egress_host_*` figures. Topologies without an outside have none.
pub fn egress(topo: &Topo, secs: u32) -> Result<Figures> {
    let Some(outside) = &topo.outside else {
        return Ok(Figures::new());
    };
    let mut figures = Figures::new();
    let sources = [
        (
            &topo.containers[0],
            "egress_container_gbps",
            "egress_container_cpu_machine_busy_s_per_gb",
        ),
        (
            &topo.hosts[0],
            "egress_host_gbps",
            "egress_host_cpu_machine_busy_s_per_gb",
        ),
    ];
    for (from, gbps, cpu) in sources {
        let m = iperf_between(topo, from, outside, crate::topology::OUTSIDE_IP, 1, secs)?;
        for (key, name) in [("gbps", gbps), ("cpu_machine_busy_s_per_gb", cpu)] {
            if let Some(&v) = m.get(key) {
                figures.insert(name, v);
            }
        }
    }
    Ok(figures)
}

/// iperf3 from namespace `client` to a server in `server` at `dst`.
fn iperf_between(
    topo: &Topo,
    client: &str,
    server: &str,
    dst: &str,
    streams: u32,
    secs: u32,
) -> Result<Figures> {
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed).to_string();
    let _server = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", server])
            .args(["iperf3", "-s", "-1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let pids = topo.agent_pids();
    let mut last_err = String::new();
    for _attempt in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let before = CpuSnap::take(&pids);
        let t0 = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", client])
            .args(["iperf3", "-J", "-c", dst, "-p", &port])
            .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
            .stdin(Stdio::null())
            .output()?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = CpuSnap::take(&pids).since(&before);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            last_err = err.to_string();
            continue; // typically: the server is not listening yet
        }
        let recv = &v["end"]["sum_received"];
        let (Some(bps), Some(bytes)) = (recv["bits_per_second"].as_f64(), recv["bytes"].as_f64())
        else {
            last_err = format!(
                "unparsable iperf3 output: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        };
        let gb = bytes / 1e9;
        let retr = v["end"]["sum_sent"]["retransmits"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let mut m = BTreeMap::from([
            ("gbps", bps / 1e9),
            ("bytes", bytes),
            ("retransmits", retr),
            ("wall_s", wall),
            ("cpu_agent_s", cpu.agent),
            ("cpu_softirq_s", cpu.softirq),
            ("cpu_machine_busy_s", cpu.busy),
            ("cpu_agent_s_per_gb", cpu.agent / gb),
            ("cpu_softirq_s_per_gb", cpu.softirq / gb),
            ("cpu_machine_busy_s_per_gb", cpu.busy / gb),
        ]);
        if let Some(c) = v["end"]["cpu_utilization_percent"].as_object() {
            for (k, name) in [
                ("host_total", "iperf3_sender_cpu_pct"),
                ("remote_total", "iperf3_receiver_cpu_pct"),
            ] {
                if let Some(x) = c.get(k).and_then(Value::as_f64) {
                    m.insert(name, x);
                }
            }
        }
        return Ok(m);
    }
    bail!("iperf3 {} -P {streams}: {last_err}", topo.kind.name())
}

/// A hidden subcommand of this binary (`me`) serving in namespace `ns`, started once it printed
/// `ready`; its later stdout lines come from the returned reader.
fn spawn_ready(
    ns: &str,
    me: &Path,
    args: &[&str],
) -> Result<(Proc, std::io::Lines<BufReader<std::process::ChildStdout>>)> {
    let mut server = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(me)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let mut lines = BufReader::new(server.child().stdout.take().context("stdout")?).lines();
    let ready = lines.next().transpose()?.unwrap_or_default();
    if ready.trim() != "ready" {
        bail!(
            "{} did not start: {ready}",
            args.first().unwrap_or(&"server")
        );
    }
    Ok((server, lines))
}

/// Runs a hidden subcommand of this binary (`me`) in namespace `ns` to completion.
fn run_in(ns: &str, me: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(me)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// The first `N` whitespace-separated numbers of a subcommand's output line (NaN where missing).
fn numbers<const N: usize>(text: &str) -> [f64; N] {
    let mut v = text
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN));
    std::array::from_fn(|_| v.next().unwrap_or(f64::NAN))
}

/// 64-byte UDP frames: what the sink received over `window` seconds (starting `warmup` after
/// its first packet) and what the blaster sent over the same window.
pub fn udp_rate(
    topo: &Topo,
    me: &Path,
    warmup: f64,
    window: f64,
    threads: usize,
) -> Result<Figures> {
    let (mut sink, mut lines) = spawn_ready(
        &topo.containers[1],
        me,
        &[
            "__udp-sink",
            &UDP_PORT.to_string(),
            &warmup.to_string(),
            &window.to_string(),
            "1",
        ],
    )?;
    // The blaster starts a little after the sink's clock (first packet): count its sends over
    // the same offsets, which lines the two windows up to within a few milliseconds.
    let blast_secs = warmup + window + 0.5;
    let out = run_in(
        &topo.containers[0],
        me,
        &[
            "__udp-blast",
            &format!("{}:{UDP_PORT}", topo.dst),
            &blast_secs.to_string(),
            &threads.to_string(),
            &UDP_PAYLOAD.to_string(),
            &warmup.to_string(),
            &window.to_string(),
        ],
    )?;
    let [sent, sent_secs, sent_in_window, sent_window] =
        numbers(&String::from_utf8_lossy(&out.stdout));
    let got = lines.next().transpose()?.unwrap_or_default();
    let _ = sink.child().wait();
    let [received, secs] = numbers(&got);
    Ok(BTreeMap::from([
        ("udp64_delivered_kpps", received / secs / 1e3),
        ("udp64_offered_kpps", sent_in_window / sent_window / 1e3),
        ("udp64_offered_avg_kpps", sent / sent_secs / 1e3),
        ("udp64_sent_pkts", sent),
        ("udp64_received_pkts", received),
        ("udp64_window_s", secs),
    ]))
}

/// Request/response latency (netperf's TCP_RR): one TCP connection, a 1-byte request answered by
/// a 1-byte response, back to back for `secs`; every round trip is timed. Unlike ping with a
/// pause between probes, this keeps the path busy, so it measures the path rather than how fast
/// idle CPUs wake up.
pub fn tcp_rr(topo: &Topo, me: &Path, secs: f64) -> Result<Figures> {
    let (mut server, _lines) = spawn_ready(
        &topo.containers[1],
        me,
        &["__rr-server", &RR_PORT.to_string()],
    )?;
    let out = run_in(
        &topo.containers[0],
        me,
        &[
            "__rr-client",
            &format!("{}:{RR_PORT}", topo.dst),
            &secs.to_string(),
        ],
    )?;
    let _ = server.child().wait();
    if !out.status.success() {
        bail!(
            "rr client {}: {}",
            topo.kind.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let [count, elapsed, p50, p99, min] = numbers(&String::from_utf8_lossy(&out.stdout));
    Ok(BTreeMap::from([
        ("rr_p50_us", p50),
        ("rr_p99_us", p99),
        ("rr_min_us", min),
        ("rr_tps", count / elapsed),
    ]))
}
