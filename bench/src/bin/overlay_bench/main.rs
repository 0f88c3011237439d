//! overlay_bench: no overlay vs kernel VXLAN vs vxnet, side by side, on this machine.
//!
//! One command (as root, from the repository root):
//!
//! ```sh
//! cargo build --release --workspace && sudo target/release/overlay_bench [--quick] [--out bench/results]
//! ```
//!
//! It builds three topologies at once (`topology`), each two "hosts" (network namespaces) on a
//! switch namespace's bridge (veth underlay, MTU 1500, 192.168.200.0/24) with one "container"
//! namespace per host:
//!
//! 1. `no-overlay`: the container's veth ends in its host, which routes the other container's
//!    subnet via the underlay peer (ip_forward on inside the host namespaces only);
//! 2. `kernel-vxlan`: a kernel `vxlan` device (VNI 42, port 4789, nolearning, static FDB) on a
//!    Linux bridge with the container's veth; container MTU 1450;
//! 3. `vxnet`: real `vxnetd` agents (h1 bootstraps, h2 joins), one network, `vxnet network
//!    connect` for each container.
//!
//! Then, interleaved (metric by metric, topology by topology, so that drift on a shared machine
//! hits all three alike), it measures from container 1 to container 2 (`traffic`): iperf3 TCP 1
//! and 4 streams, the delivered rate of 64-byte UDP frames (a sendmmsg blaster and a recvmmsg
//! sink built into this binary, hidden subcommands run in the containers: `probes`), ping RTT
//! p50/p99, TCP_RR latency, and CPU seconds per GB during the 1-stream TCP run (`measure`). It
//! prints a table, writes `<out>/results.json` and draws `<out>/throughput.png` (`report`).
//! Every namespace and process it made is removed on exit, on panic and on
//! SIGINT/SIGTERM/SIGHUP. Nothing is asserted: it reports. Only addresses inside the namespaces
//! it creates are ever used.

#[path = "../common/harness.rs"]
mod harness;
mod measure;
mod probes;
mod report;
#[path = "../common/sock.rs"]
mod sock;
mod topology;
mod traffic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use jiff::Timestamp;
use serde_json::{Value, json};
use vxnet_testkit::cleanup::{CleanupGuard, cleanup, install_signal_handlers, register_dir};

use crate::measure::Machine;
use crate::probes::Probe;
use crate::report::{Errors, Raw, Results};
use crate::topology::{Kind, Paths, Topo};
use crate::traffic::{Figures, PING_INTERVAL_S, UDP_PAYLOAD};

/// overlay_bench: no overlay vs kernel VXLAN vs vxnet, side by side (needs root)
#[derive(Parser, Debug)]
#[command(
    name = "overlay_bench",
    override_usage = "overlay_bench [OPTIONS]",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    probe: Option<Probe>,
    /// 2 s iperf3 runs and a 1 s UDP window (default: 5 s and 3 s)
    #[arg(long)]
    quick: bool,
    /// Where results.json and throughput.png go
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
    /// Repeat the interleaved measurements N times, report medians
    #[arg(long, value_name = "N", default_value_t = 1)]
    runs: usize,
    /// Comma-separated subset of no-overlay,kernel-vxlan,vxnet
    #[arg(long, value_name = "LIST", value_parser = parse_only,
          default_value = "no-overlay,kernel-vxlan,vxnet")]
    only: Kinds,
    /// Comma-separated subset of ping,rr,tcp1,tcp4,udp,egress
    #[arg(long, value_name = "LIST", value_parser = parse_steps,
          default_value = "ping,rr,tcp1,tcp4,udp,egress")]
    steps: Steps,
    /// UDP generator threads
    #[arg(long, value_name = "N", default_value_t = 2)]
    blast_threads: usize,
    /// Agent binary [default: next to this binary]
    #[arg(long, value_name = "PATH")]
    vxnetd: Option<PathBuf>,
    /// CLI binary [default: next to this binary]
    #[arg(long, value_name = "PATH")]
    vxnet: Option<PathBuf>,
    /// Extra vxnetd argument, repeatable (e.g. --agent-arg=--offload --agent-arg=off)
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

/// The topologies to build, in the order of [`Kind::ALL`] whatever the order asked for.
#[derive(Clone, Debug)]
struct Kinds(Vec<Kind>);

fn parse_only(list: &str) -> Result<Kinds, String> {
    pick(&Kind::ALL, Kind::name, list).map(Kinds)
}

/// The members of `all` named in the comma-separated `list`, in the order of `all`; unknown
/// names are ignored, but at least one must be known.
fn pick<T: Copy>(all: &[T], name: fn(T) -> &'static str, list: &str) -> Result<Vec<T>, String> {
    let picked: Vec<T> = all
        .iter()
        .copied()
        .filter(|&x| list.split(',').any(|w| w.trim() == name(x)))
        .collect();
    if picked.is_empty() {
        let names: Vec<&str> = all.iter().map(|&x| name(x)).collect();
        return Err(format!("none of {} in {list:?}", names.join(",")));
    }
    Ok(picked)
}

/// The measurements, in the order one run takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Ping,
    Rr,
    Tcp1,
    Tcp4,
    Udp,
    Egress,
}

impl Step {
    const ALL: [Step; 6] = [
        Step::Ping,
        Step::Rr,
        Step::Tcp1,
        Step::Tcp4,
        Step::Udp,
        Step::Egress,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Ping => "ping",
            Step::Rr => "rr",
            Step::Tcp1 => "tcp1",
            Step::Tcp4 => "tcp4",
            Step::Udp => "udp",
            Step::Egress => "egress",
        }
    }
}

/// The steps to run, in the order of [`Step::ALL`].
#[derive(Clone, Debug)]
struct Steps(Vec<Step>);

fn parse_steps(list: &str) -> Result<Steps, String> {
    pick(&Step::ALL, Step::name, list).map(Steps)
}

/// How long each measurement runs.
#[derive(Clone, Copy, Debug)]
struct Timing {
    tcp_secs: u32,
    udp_warmup: f64,
    udp_window: f64,
    ping_count: u32,
    rr_secs: f64,
}

impl Timing {
    fn new(quick: bool) -> Timing {
        let (tcp_secs, udp_warmup, udp_window, ping_count, rr_secs) = if quick {
            (2, 0.5, 1.0, 200, 1.0)
        } else {
            (5, 1.0, 3.0, 200, 3.0)
        };
        Timing {
            tcp_secs,
            udp_warmup,
            udp_window,
            ping_count,
            rr_secs,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.probe {
        Some(probe) => probe.run(),
        None => run(cli),
    };
    if let Err(e) = result {
        eprintln!("overlay_bench: {e:#}");
        cleanup();
        std::process::exit(1);
    }
}

fn run(mut opts: Cli) -> Result<()> {
    // Zero means once, as it always did.
    opts.runs = opts.runs.max(1);
    opts.blast_threads = opts.blast_threads.max(1);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root (network namespaces): sudo {}",
            std::env::args().next().unwrap_or_default()
        );
    }
    harness::require_tools(
        &["ip", "bridge", "ping", "iperf3"],
        "iproute2 iputils-ping iperf3",
    )?;
    let started = Instant::now();
    let _guard = CleanupGuard;
    install_signal_handlers(|_| {
        eprintln!("\noverlay_bench: interrupted, cleaning up namespaces and agents");
        130
    })?;

    let me = std::env::current_exe()?;
    let bin_dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    let tmp = std::env::temp_dir().join(format!("vxb{}", std::process::id()));
    register_dir(tmp.clone());
    std::fs::create_dir_all(&tmp)?;
    let paths = Paths {
        vxnetd: opts
            .vxnetd
            .clone()
            .unwrap_or_else(|| bin_dir.join("vxnetd")),
        vxnet: opts.vxnet.clone().unwrap_or_else(|| bin_dir.join("vxnet")),
        agent_args: opts.agent_args.clone(),
        me,
        tmp,
    };
    if opts.only.0.contains(&Kind::Vxnet) {
        for p in [&paths.vxnetd, &paths.vxnet] {
            if !p.exists() {
                bail!(
                    "{} not found: run `cargo build --release --workspace` first",
                    p.display()
                );
            }
        }
    }
    let timing = Timing::new(opts.quick);
    let machine = Machine::read();
    eprintln!(
        "overlay_bench: kernel {}, {} cores, loadavg {}, {} run(s), iperf3 {} s",
        machine.kernel,
        machine.cores,
        machine
            .load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        opts.runs,
        timing.tcp_secs
    );

    let mut topos: Vec<Topo> = Vec::new();
    let mut errors: Errors = BTreeMap::new();
    let build_t0 = Instant::now();
    for &kind in &opts.only.0 {
        eprintln!("overlay_bench: building {}", kind.name());
        match topology::build(kind, &paths) {
            Ok(t) => topos.push(t),
            Err(e) => {
                eprintln!("overlay_bench: {} unavailable: {e:#}", kind.name());
                errors
                    .entry(kind.name())
                    .or_default()
                    .push(format!("build: {e:#}"));
            }
        }
    }
    let build_secs = build_t0.elapsed().as_secs_f64();

    let measure_t0 = Instant::now();
    let raw = measure_all(&opts, &timing, &topos, &paths, &mut errors);
    let measure_secs = measure_t0.elapsed().as_secs_f64();
    let summary = report::summarize(&raw);

    let mut link_stats = serde_json::Map::new();
    for t in &topos {
        link_stats.insert(t.kind.name().into(), t.link_stats());
    }
    let vxnet_stats = topos
        .iter()
        .find(|t| t.kind == Kind::Vxnet)
        .map(Topo::vxnet_stats)
        .unwrap_or_default();

    let tbl = report::table(&summary);
    println!("\n{tbl}");
    let spread = report::per_run_ratios(&raw);
    for (metric, ratios) in &spread {
        let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        if metric.starts_with("egress") {
            println!("per run, vxnet, {metric}: {}", list.join(" "));
        } else {
            println!("per run, vxnet/kernel, {metric}: {}", list.join(" "));
        }
    }
    if !errors.is_empty() {
        println!("errors: {}", serde_json::to_string_pretty(&errors)?);
    }

    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let now = Timestamp::now();
    let png = opts.out.join("throughput.png");
    let labels = match report::chart(
        &png,
        &summary,
        &format!(
            "kernel {}, {} cores, {}",
            machine.kernel,
            machine.cores,
            report::rfc3339(now)
        ),
    ) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("overlay_bench: chart: {e:#}");
            None
        }
    };
    let doc = Results {
        now,
        machine: &machine,
        options: options_json(&opts, &timing),
        summary: &summary,
        per_run: &spread,
        raw: &raw,
        errors: &errors,
        vxnet_stats,
        link_stats,
        chart_path: &png,
        chart_labels: labels,
        table: &tbl,
        durations: [build_secs, measure_secs, started.elapsed().as_secs_f64()],
    }
    .json();
    let json_path = opts.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!(
        "wrote {} and {} ({:.0} s: build {build_secs:.0} s, measure {measure_secs:.0} s)",
        json_path.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
    drop(topos);
    Ok(())
}

/// Every step on every topology, step by step, `--runs` times; a failed measurement is logged in
/// `errors`. Returns raw[topology][metric] = one value per run.
fn measure_all(
    opts: &Cli,
    timing: &Timing,
    topos: &[Topo],
    paths: &Paths,
    errors: &mut Errors,
) -> Raw {
    let mut raw: Raw = BTreeMap::new();
    let mut record = |kind: Kind, m: Result<Figures>, prefix: &str| match m {
        Ok(m) => {
            let entry = raw.entry(kind.name()).or_default();
            for (k, v) in m {
                entry.entry(format!("{prefix}{k}")).or_default().push(v);
            }
        }
        Err(e) => {
            eprintln!("overlay_bench: {}: {e:#}", kind.name());
            errors
                .entry(kind.name())
                .or_default()
                .push(format!("{e:#}"));
        }
    };
    for run in 1..=opts.runs {
        for &step in &opts.steps.0 {
            for topo in topos {
                eprintln!(
                    "overlay_bench: run {run}/{}: {} on {}",
                    opts.runs,
                    step.name(),
                    topo.kind.name()
                );
                let t = timing;
                match step {
                    Step::Ping => record(topo.kind, traffic::ping(topo, t.ping_count), ""),
                    Step::Rr => record(topo.kind, traffic::tcp_rr(topo, &paths.me, t.rr_secs), ""),
                    Step::Tcp1 => record(topo.kind, traffic::iperf(topo, 1, t.tcp_secs), "tcp1_"),
                    Step::Tcp4 => record(topo.kind, traffic::iperf(topo, 4, t.tcp_secs), "tcp4_"),
                    Step::Egress if topo.outside.is_none() => {}
                    Step::Egress => record(topo.kind, traffic::egress(topo, t.tcp_secs), ""),
                    Step::Udp => record(
                        topo.kind,
                        traffic::udp_rate(
                            topo,
                            &paths.me,
                            t.udp_warmup,
                            t.udp_window,
                            opts.blast_threads,
                        ),
                        "",
                    ),
                }
            }
        }
    }
    raw
}

/// The `options` object of results.json.
fn options_json(opts: &Cli, t: &Timing) -> Value {
    json!({
        "quick": opts.quick,
        "runs": opts.runs,
        "tcp_secs": t.tcp_secs,
        "udp_warmup_s": t.udp_warmup,
        "udp_window_s": t.udp_window,
        "udp_payload_bytes": UDP_PAYLOAD,
        "udp_frame_bytes_with_fcs": UDP_PAYLOAD + 46,
        "udp_blast_threads": opts.blast_threads,
        "ping_count": t.ping_count,
        "ping_interval_s": PING_INTERVAL_S,
        "rr_secs": t.rr_secs,
        "rr_request_bytes": 1,
        "agent_args": opts.agent_args,
    })
}
