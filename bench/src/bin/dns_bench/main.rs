//! dns_bench: throughput and latency of vxnet's embedded DNS resolver, and what its load does to
//! the agent's data plane.
//!
//! ```sh
//! cargo build --release --workspace && sudo target/release/dns_bench [--quick] [--out bench/results]
//! ```
//!
//! Root is needed (namespaces). Two hosts on a switch namespace (the netns tests' topology; h1
//! bootstraps, h2 joins), one network (`dnsbench`, 10.77.0.0/24) with `--names` (50) named
//! endpoints `ep1..epN` on h1, a load container `loadgen` on h1 and two data-plane containers,
//! `dp1` on h1 and `dp2` on h2. All DNS load goes from `loadgen` to the network's gateway:53 on
//! h1, A queries for the N names:
//!
//! 1. saturation: Debian's `dnsperf` (`-c` clients, `-T` threads, `-q` outstanding, `-l` s),
//!    with the per-thread CPU of h1's `vxnetd` over the run;
//! 2. closed loop: this binary's own generator (`__dns-load`, hidden: one UDP socket,
//!    `sendmmsg`/`recvmmsg`, N queries outstanding, every query timed by its id from its send to
//!    the kernel's receive timestamp) at a few levels of outstanding queries: qps, p50/p99;
//! 3. paced: the same generator sending at a fixed rate (`--rate`, the issue's 30k qps) for p50 /
//!    p99 at that rate (latency from the moment each query was sent);
//! 4. data plane: iperf3 TCP (1 stream) and ping RTT from `dp1` to `dp2` (through h1's agent)
//!    with no DNS load, with the paced load, with the saturating dnsperf load and with the paced
//!    load answered by a minimal responder in `ep1` instead of the agent (the control: what the
//!    query rate itself costs this machine), interleaved run by run (the order rotates), medians
//!    and the loaded ÷ unloaded ratios.
//!
//! Prints a table and writes `<out>/dns_bench.json` (or `--json PATH`). Nothing is asserted.
//! Everything it made (agents, namespaces, `/etc/netns/<its namespaces>`, temp files) is removed
//! on exit, on error, on panic and on SIGINT/SIGTERM/SIGHUP; the agents also die with it.
//!
//! The parts: `topology` (hosts, agents, network, containers), `probes` and `generator` (what
//! runs inside the containers), `loads` (starting the loads from outside), `measure` (the four
//! phases), `dataplane` (one data-plane measurement), `counters` (CPU, drops, load average) and
//! `report` (the table and the JSON).

mod counters;
mod dataplane;
mod generator;
#[path = "../common/harness.rs"]
mod harness;
mod loads;
mod measure;
mod probes;
mod report;
#[path = "../common/sock.rs"]
mod sock;
mod topology;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use vxnet_testkit::cleanup::{CleanupGuard, install_signal_handlers, register_dir};
use vxnet_testkit::netns::log_tail;

use crate::counters::{loadavg, machine_busy_pct};
use crate::loads::Dnsperf;
use crate::probes::Probe;

/// dns_bench: vxnet's DNS resolver under load, and its data plane meanwhile (needs root)
#[derive(Parser, Debug)]
#[command(
    name = "dns_bench",
    override_usage = "dns_bench [OPTIONS]",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    probe: Option<Probe>,
    /// Shorter phases (4 s DNS runs, 2 s sweep steps, 2 s iperf3, 1 data-plane run)
    #[arg(long)]
    quick: bool,
    /// Named endpoints (ep1..epN) on h1, the names queried
    #[arg(long, value_name = "N", default_value_t = 50)]
    names: usize,
    /// Seconds of the dnsperf saturation run and of the paced run
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    secs: f64,
    /// dnsperf -c: client sockets
    #[arg(long, value_name = "C", default_value_t = 4)]
    clients: usize,
    /// dnsperf -T: threads
    #[arg(long, value_name = "T", default_value_t = 1)]
    threads: usize,
    /// dnsperf -q: queries outstanding
    #[arg(long, value_name = "Q", default_value_t = 100)]
    outstanding: usize,
    /// Rate of the paced run, queries/s
    #[arg(long, value_name = "QPS", default_value_t = 30_000.0)]
    rate: f64,
    /// Outstanding queries of the closed-loop sweep, comma-separated
    #[arg(long, value_name = "LIST", default_value = "1,8,32,128")]
    sweep: String,
    /// Seconds per sweep step
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    sweep_secs: f64,
    /// Interleaved data-plane runs (each: no load, paced, saturating); 0 skips them
    #[arg(long, value_name = "N", default_value_t = 3)]
    dp_runs: usize,
    /// iperf3 seconds per data-plane measurement
    #[arg(long, value_name = "S", default_value_t = 5)]
    dp_secs: u32,
    /// Pings per data-plane measurement (10 ms apart)
    #[arg(long, value_name = "N", default_value_t = 200)]
    ping_count: u32,
    /// Where dns_bench.json goes
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
    /// Write the JSON to this file instead of <DIR>/dns_bench.json
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Agent binary [default: next to this binary]
    #[arg(long, value_name = "PATH", env = "VXNETD")]
    vxnetd: Option<PathBuf>,
    /// CLI binary [default: next to this binary]
    #[arg(long, value_name = "PATH")]
    vxnet: Option<PathBuf>,
    /// Extra vxnetd argument, repeatable
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.probe {
        Some(probe) => probe.run(),
        None => run(cli),
    };
    if let Err(e) = result {
        eprintln!("dns_bench: {e:#}");
        vxnet_testkit::cleanup::cleanup();
        std::process::exit(1);
    }
}

/// The phases' settings (from the flags, shortened by `--quick`).
struct Opts {
    dnsperf: Dnsperf,
    rate: f64,
    sweep: Vec<usize>,
    sweep_secs: f64,
    secs: f64,
    dp_runs: usize,
    dp_secs: u32,
    ping_count: u32,
}

fn run(cli: Cli) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces)");
    }
    harness::require_tools(
        &["ip", "ping", "iperf3", "dnsperf", "dig"],
        "iproute2 iputils-ping iperf3 dnsperf bind9-dnsutils",
    )?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let vxnetd = cli.vxnetd.clone().unwrap_or_else(|| bin_dir.join("vxnetd"));
    let vxnet = cli.vxnet.clone().unwrap_or_else(|| bin_dir.join("vxnet"));
    for p in [&vxnetd, &vxnet] {
        if !p.is_file() {
            bail!(
                "{} not found: run `cargo build --release --workspace` first (or pass --vxnetd/--vxnet)",
                p.display()
            );
        }
    }
    let sweep: Vec<usize> = cli
        .sweep
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let opts = if cli.quick {
        Opts {
            dnsperf: Dnsperf {
                clients: cli.clients,
                threads: cli.threads,
                outstanding: cli.outstanding,
                secs: 4.0,
            },
            rate: cli.rate,
            sweep,
            sweep_secs: 2.0,
            secs: 4.0,
            dp_runs: cli.dp_runs.min(1),
            dp_secs: 2,
            ping_count: 100,
        }
    } else {
        Opts {
            dnsperf: Dnsperf {
                clients: cli.clients,
                threads: cli.threads,
                outstanding: cli.outstanding,
                secs: cli.secs,
            },
            rate: cli.rate,
            sweep,
            sweep_secs: cli.sweep_secs,
            secs: cli.secs,
            dp_runs: cli.dp_runs,
            dp_secs: cli.dp_secs.max(1),
            ping_count: cli.ping_count.max(10),
        }
    };
    let json_path = cli
        .json
        .clone()
        .unwrap_or_else(|| cli.out.join("dns_bench.json"));
    let had_etc_netns = Path::new("/etc/netns").exists();
    let guard = CleanupGuard;
    install_signal_handlers(|sig| {
        eprintln!("\ndns_bench: signal {sig}: cleaning up namespaces and agents");
        128 + sig
    })?;
    let tmp = std::env::temp_dir().join(format!("vxnet-dns-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    register_dir(tmp.clone());

    let started = Instant::now();
    let load_before = loadavg();
    let busy_before = machine_busy_pct(1.0);
    eprintln!(
        "dns_bench: before start: loadavg {load_before}, machine busy {busy_before:.0}% of one core"
    );
    let result = topology::build(&cli, &vxnetd, &vxnet, &tmp).and_then(|bench| {
        eprintln!(
            "dns_bench: built in {:.1} s; gateway {}, {} names",
            started.elapsed().as_secs_f64(),
            bench.gateway,
            bench.names.len()
        );
        measure::measure(&bench, &opts, &cli)
    });
    if result.is_err() {
        for i in 1..=2 {
            eprintln!(
                "--- h{i} log tail ---\n{}",
                log_tail(&tmp.join(format!("h{i}.log")), 30)
            );
        }
    }
    drop(guard);
    if !had_etc_netns {
        // Only if empty: others may use it.
        let _ = std::fs::remove_dir("/etc/netns");
    }
    let mut report = result?;
    report["loadavg_before"] = json!(load_before);
    report["machine_busy_pct_of_one_core_before"] = json!(busy_before);
    report["loadavg_after"] = json!(loadavg());
    report["total_s"] = json!(started.elapsed().as_secs_f64());
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!("dns_bench: wrote {}", json_path.display());
    Ok(())
}
