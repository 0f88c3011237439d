//! The data plane side by side: iperf3 TCP and ping RTT from dp1 (h1) to dp2 (h2) under each
//! DNS load condition, with the agent's CPU and h1's UDP drops meanwhile.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vxnet_testkit::netns::Proc;
use vxnet_testkit::procfs::{clk_tck, cpu_jiffies};
use vxnet_testkit::stats::percentile;

use crate::Opts;
use crate::counters::udp_rcvbuf_errors;
use crate::generator::Mode;
use crate::harness::ping_rtts_us;
use crate::loads::{Dnsperf, ECHO_PORT, own_load_cmd, parse_dnsperf, parse_own};
use crate::topology::Bench;

/// The figures of one data-plane measurement, by name.
pub type Figures = BTreeMap<&'static str, Value>;
/// Every data-plane measurement: condition key → one [`Figures`] per run.
pub type DpRaw = BTreeMap<&'static str, Vec<Figures>>;

/// A fresh port per iperf3 server, so that a lingering one cannot answer.
static NEXT_PORT: AtomicU64 = AtomicU64::new(5301);

/// iperf3 TCP, one stream, `secs`, from dp1 to dp2: Gbit/s and retransmits.
fn iperf(bench: &Bench, secs: u32) -> Result<(f64, f64)> {
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed).to_string();
    let _server = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &bench.dp[1]])
            .args(["iperf3", "-s", "-1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let mut last_err = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let out = Command::new("ip")
            .args(["netns", "exec", &bench.dp[0]])
            .args(["iperf3", "-J", "-c", &bench.dp2_ip, "-p", &port])
            .args(["-t", &secs.to_string()])
            .stdin(Stdio::null())
            .output()?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            last_err = err.to_string();
            continue; // typically: the server is not listening yet
        }
        let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() else {
            last_err = format!(
                "unparsable iperf3 output: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            continue;
        };
        let retr = v["end"]["sum_sent"]["retransmits"]
            .as_f64()
            .unwrap_or(f64::NAN);
        return Ok((bps / 1e9, retr));
    }
    bail!("iperf3: {last_err}")
}

/// Ping RTTs dp1 → dp2 (10 ms apart): (p50 µs, p99 µs, loss %).
fn ping_rtt(bench: &Bench, count: u32) -> Result<(f64, f64, f64)> {
    // On failure, with the error's chain: "ping: no replies\n<ping's output>".
    let us = ping_rtts_us(&bench.dp[0], &bench.dp2_ip, count, 0.01).context("ping")?;
    let loss = 100.0 * (1.0 - us.len() as f64 / f64::from(count));
    Ok((percentile(&us, 50.0), percentile(&us, 99.0), loss))
}

/// The DNS load during a data-plane measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    NoLoad,
    Paced,
    Saturating,
    /// The paced load answered by the minimal responder in `ep1` instead of the agent.
    Control,
}

impl Condition {
    pub const ALL: [Condition; 4] = [
        Condition::NoLoad,
        Condition::Paced,
        Condition::Saturating,
        Condition::Control,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Condition::NoLoad => "no DNS load",
            Condition::Paced => "paced DNS load",
            Condition::Saturating => "saturating DNS load",
            Condition::Control => "paced load on a minimal responder (control)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Condition::NoLoad => "none",
            Condition::Paced => "paced",
            Condition::Saturating => "saturating",
            Condition::Control => "control",
        }
    }
}

/// One data-plane measurement under `cond`: iperf3, then ping, with the DNS load (if any)
/// running throughout; returns the figures, the load's own report included.
pub fn data_plane(
    bench: &Bench,
    cond: Condition,
    opts: &Opts,
    file: &Path,
    echo_pid: u32,
) -> Result<Figures> {
    // Long enough to cover iperf3 (with its start-up) and the pings, then it ends by itself.
    let load_secs = 0.5 + f64::from(opts.dp_secs) + 1.0 + f64::from(opts.ping_count) * 0.012 + 1.5;
    let mut load = match cond {
        Condition::NoLoad => None,
        Condition::Paced => Some(Proc::spawn(&mut own_load_cmd(
            bench,
            Mode::Paced(opts.rate),
            load_secs,
            (&bench.gateway, 53),
        ))?),
        Condition::Control => Some(Proc::spawn(&mut own_load_cmd(
            bench,
            Mode::Paced(opts.rate),
            load_secs,
            (&bench.names[0].1, ECHO_PORT),
        ))?),
        Condition::Saturating => Some(
            Dnsperf {
                secs: load_secs,
                ..opts.dnsperf
            }
            .spawn(bench, file)?,
        ),
    };
    let drops0 = udp_rcvbuf_errors(&bench.hosts[0]);
    std::thread::sleep(Duration::from_millis(if load.is_some() { 700 } else { 0 }));
    let pid = bench.agent_pid(0);
    let cpu0 = cpu_jiffies(pid);
    let echo0 = cpu_jiffies(echo_pid);
    let t = Instant::now();
    let (gbps, retr) = iperf(bench, opts.dp_secs)?;
    let (p50, p99, loss) = ping_rtt(bench, opts.ping_count)?;
    let secs = t.elapsed().as_secs_f64();
    let agent_cpu_pct = 100.0 * (cpu_jiffies(pid) - cpu0) as f64 / clk_tck() / secs;
    let echo_cpu_pct = 100.0 * (cpu_jiffies(echo_pid) - echo0) as f64 / clk_tck() / secs;
    let load_report = match load.as_mut() {
        None => Value::Null,
        Some(p) => {
            let child = p.child();
            // Read its output to the end (it stops by itself).
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            use std::io::Read as _;
            if let Some(mut s) = child.stdout.take() {
                let _ = s.read_to_end(&mut stdout);
            }
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_end(&mut stderr);
            }
            let status = child.wait()?;
            let out = Output {
                status,
                stdout,
                stderr,
            };
            match cond {
                Condition::Saturating => parse_dnsperf(&out)?,
                _ => parse_own(&out)?,
            }
        }
    };
    Ok(BTreeMap::from([
        (
            "h1_udp_rcvbuf_errors",
            json!(udp_rcvbuf_errors(&bench.hosts[0]) - drops0),
        ),
        ("tcp_gbps", json!(gbps)),
        ("tcp_retransmits", json!(retr)),
        ("ping_p50_us", json!(p50)),
        ("ping_p99_us", json!(p99)),
        ("ping_loss_pct", json!(loss)),
        ("h1_agent_cpu_pct", json!(agent_cpu_pct)),
        ("control_responder_cpu_pct", json!(echo_cpu_pct)),
        ("dns_load", load_report),
    ]))
}
