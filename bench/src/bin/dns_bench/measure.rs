//! The four phases in order (saturation, closed-loop sweep, paced, data plane), then the report.

use std::io::Read as _;
use std::process::Output;
use std::time::Instant;

use anyhow::Result;
use serde_json::{Value, json};
use vxnet_testkit::netns::Proc;
use vxnet_testkit::procfs::{clk_tck, cpu_jiffies, machine_jiffies, rss_kib};

use crate::counters::{thread_cpu, thread_jiffies, udp_rcvbuf_errors};
use crate::dataplane::{Condition, DpRaw, data_plane};
use crate::generator::Mode;
use crate::loads::{own_load, parse_dnsperf, spawn_echo};
use crate::report;
use crate::topology::Bench;
use crate::{Cli, Opts};

/// What the phases measured, for the table and the JSON.
pub struct Measured {
    pub dnsperf_cmd: String,
    pub saturation: Value,
    /// h1's agent and the whole machine during dnsperf, % of one core.
    pub agent_pct: f64,
    pub machine_pct: f64,
    /// h1's agent's threads during dnsperf and during the paced run: (name, % of one core).
    pub per_thread: Vec<(String, f64)>,
    pub paced_threads: Vec<(String, f64)>,
    /// One generator report per step of `--sweep`.
    pub sweep: Vec<Value>,
    pub paced: Value,
    pub dp_raw: DpRaw,
    pub rss_start: Option<u64>,
    pub rss_end: Option<u64>,
    pub counters_before: Value,
    pub counters_after: Value,
}

/// Runs the phases on `bench`, prints the table; returns the JSON report.
pub fn measure(bench: &Bench, opts: &Opts, cli: &Cli) -> Result<Value> {
    let file = bench.tmp.join("queries.txt");
    let lines: String = bench
        .names
        .iter()
        .map(|(n, _)| format!("{n} A\n"))
        .collect();
    std::fs::write(&file, lines)?;
    let pid = bench.agent_pid(0);
    let rss_start = rss_kib(pid);
    let counters_before = bench.dns_counters(0);

    eprintln!("dns_bench: warm-up (2 s, 16 outstanding)");
    own_load(bench, Mode::Closed(16), 2.0)?;

    // 1. Saturation with dnsperf, and where h1's agent spends its CPU meanwhile.
    let dp = opts.dnsperf;
    let dnsperf_cmd = dp.command_line(bench, &file);
    eprintln!("dns_bench: saturation: {dnsperf_cmd}");
    let threads0 = thread_jiffies(pid);
    let drops0 = udp_rcvbuf_errors(&bench.hosts[0]);
    let agent0 = cpu_jiffies(pid);
    let (_, busy0) = machine_jiffies();
    let t = Instant::now();
    let mut proc = dp.spawn(bench, &file)?;
    let child = proc.child();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut stdout)?;
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut stderr)?;
    }
    let status = child.wait()?;
    let wall = t.elapsed().as_secs_f64();
    let threads1 = thread_jiffies(pid);
    let agent1 = cpu_jiffies(pid);
    let (_, busy1) = machine_jiffies();
    drop(proc);
    let mut saturation = parse_dnsperf(&Output {
        status,
        stdout,
        stderr,
    })?;
    saturation["h1_udp_rcvbuf_errors"] = json!(udp_rcvbuf_errors(&bench.hosts[0]) - drops0);
    let tck = clk_tck();
    let per_thread = thread_cpu(&threads0, &threads1, wall);
    let agent_pct = 100.0 * (agent1 - agent0) as f64 / tck / wall;
    let machine_pct = 100.0 * (busy1 - busy0) as f64 / tck / wall;

    // 2. Closed-loop sweep with the built-in generator.
    let mut sweep = Vec::new();
    for &n in &opts.sweep {
        eprintln!(
            "dns_bench: closed loop, {n} outstanding, {} s",
            opts.sweep_secs
        );
        sweep.push(own_load(bench, Mode::Closed(n), opts.sweep_secs)?);
    }

    // 3. Paced at the target rate.
    eprintln!("dns_bench: paced, {} qps, {} s", opts.rate, opts.secs);
    let threads0 = thread_jiffies(pid);
    let drops0 = udp_rcvbuf_errors(&bench.hosts[0]);
    let t = Instant::now();
    let mut paced = own_load(bench, Mode::Paced(opts.rate), opts.secs)?;
    paced["h1_udp_rcvbuf_errors"] = json!(udp_rcvbuf_errors(&bench.hosts[0]) - drops0);
    let paced_threads = thread_cpu(&threads0, &thread_jiffies(pid), t.elapsed().as_secs_f64());

    // 4. The data plane with and without DNS load, interleaved.
    let mut dp_raw = DpRaw::new();
    // The control's responder, in ep1 (killed when dropped).
    let echo = if opts.dp_runs > 0 {
        Some(spawn_echo(bench)?)
    } else {
        None
    };
    for run in 0..opts.dp_runs {
        for k in 0..Condition::ALL.len() {
            let cond = Condition::ALL[(k + run) % Condition::ALL.len()];
            eprintln!(
                "dns_bench: data plane run {}/{}: {}",
                run + 1,
                opts.dp_runs,
                cond.name()
            );
            let echo_pid = echo.as_ref().map_or(0, Proc::pid);
            let m = data_plane(bench, cond, opts, &file, echo_pid)?;
            dp_raw.entry(cond.key()).or_default().push(m);
        }
    }
    let rss_end = rss_kib(pid);
    let counters_after = bench.dns_counters(0);

    let m = Measured {
        dnsperf_cmd,
        saturation,
        agent_pct,
        machine_pct,
        per_thread,
        paced_threads,
        sweep,
        paced,
        dp_raw,
        rss_start,
        rss_end,
        counters_before,
        counters_after,
    };
    let table = report::table(bench, opts, &m);
    println!("\n{table}");
    Ok(report::json(bench, opts, cli, &m, table))
}
