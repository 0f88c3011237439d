//! The report: the table printed at the end, and the JSON document with every figure.

use std::fmt::Write as _;

use jiff::Timestamp;
use serde_json::{Value, json};
use vxnet_testkit::stats::median;

use crate::dataplane::{Condition, DpRaw};
use crate::measure::Measured;
use crate::topology::Bench;
use crate::{Cli, Opts};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The median over the runs under `cond` of data-plane figure `key`.
fn dp_median(dp_raw: &DpRaw, cond: Condition, key: &str) -> f64 {
    let v: Vec<f64> = dp_raw
        .get(cond.key())
        .into_iter()
        .flatten()
        .map(|m| f(&m[key]))
        .collect();
    median(&v)
}

/// The median over the runs under `cond` of the DNS load's own figure `key`.
fn dns_median(dp_raw: &DpRaw, cond: Condition, key: &str) -> f64 {
    let v: Vec<f64> = dp_raw
        .get(cond.key())
        .into_iter()
        .flatten()
        .map(|m| f(&m["dns_load"][key]))
        .collect();
    median(&v)
}

/// Per run, data-plane figure `key` under `cond` ÷ the same with no load (3 decimals).
fn dp_ratios(dp_raw: &DpRaw, key: &str, cond: Condition) -> Vec<f64> {
    let base = dp_raw.get(Condition::NoLoad.key());
    let loaded = dp_raw.get(cond.key());
    match (base, loaded) {
        (Some(b), Some(l)) => b
            .iter()
            .zip(l)
            .map(|(b, l)| ((f(&l[key]) / f(&b[key])) * 1000.0).round() / 1000.0)
            .collect(),
        _ => Vec::new(),
    }
}

/// The table (without the leading blank line it is printed with).
pub fn table(bench: &Bench, opts: &Opts, m: &Measured) -> String {
    let Measured {
        saturation,
        agent_pct,
        machine_pct,
        per_thread,
        sweep,
        paced,
        dp_raw,
        rss_start,
        rss_end,
        ..
    } = m;
    let dp = opts.dnsperf;
    let med = |cond: Condition, key: &str| dp_median(dp_raw, cond, key);
    let dns_during = |cond: Condition, key: &str| dns_median(dp_raw, cond, key);
    let per_run = |key: &str, cond: Condition| dp_ratios(dp_raw, key, cond);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dns_bench: {} names, {} cores, A queries from a container on h1 to {}:53",
        bench.names.len(),
        std::thread::available_parallelism().map_or(0, usize::from),
        bench.gateway
    );
    let _ = writeln!(
        out,
        "{:<44} {:>9} {:>8} {:>8} {:>8} {:>7}",
        "DNS load", "qps", "p50 ms", "p99 ms", "avg ms", "lost"
    );
    let _ = writeln!(
        out,
        "{:<44} {:>9.0} {:>8} {:>8} {:>8.3} {:>7}",
        format!(
            "dnsperf -c {} -T {} -q {}, {} s",
            dp.clients, dp.threads, dp.outstanding, dp.secs
        ),
        f(&saturation["qps"]),
        "-",
        "-",
        f(&saturation["avg_ms"]),
        saturation["lost"]
    );
    let row = |out: &mut String, label: String, v: &Value| {
        let _ = writeln!(
            out,
            "{:<44} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>7}",
            label,
            f(&v["qps"]),
            f(&v["p50_us"]) / 1e3,
            f(&v["p99_us"]) / 1e3,
            f(&v["mean_us"]) / 1e3,
            v["lost"]
        );
    };
    for (n, v) in opts.sweep.iter().zip(sweep) {
        row(
            &mut out,
            format!("own generator, {n} outstanding, {} s", opts.sweep_secs),
            v,
        );
    }
    row(
        &mut out,
        format!("own generator, paced {} qps, {} s", opts.rate, opts.secs),
        paced,
    );
    let _ = writeln!(
        out,
        "h1 vxnetd during dnsperf: {agent_pct:.0}% CPU (machine busy {machine_pct:.0}% of {} cores); threads: {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        per_thread
            .iter()
            .take(6)
            .map(|(n, p)| format!("{n} {p:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if opts.dp_runs > 0 {
        let _ = writeln!(
            out,
            "\ndata plane dp1 (h1) → dp2 (h2), median of {} interleaved run(s)",
            opts.dp_runs
        );
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
            "", "no load", "paced", "saturat.", "control", "paced ÷", "satur. ÷", "contr. ÷"
        );
        for (label, key) in [
            ("TCP 1 stream Gbit/s", "tcp_gbps"),
            ("ping p50 µs", "ping_p50_us"),
            ("ping p99 µs", "ping_p99_us"),
            ("h1 agent CPU %", "h1_agent_cpu_pct"),
            ("control responder CPU %", "control_responder_cpu_pct"),
        ] {
            let (a, b, c, d) = (
                med(Condition::NoLoad, key),
                med(Condition::Paced, key),
                med(Condition::Saturating, key),
                med(Condition::Control, key),
            );
            let _ = writeln!(
                out,
                "{label:<24} {a:>9.2} {b:>9.2} {c:>9.2} {d:>9.2} {:>8.3} {:>8.3} {:>8.3}",
                b / a,
                c / a,
                d / a
            );
        }
        let _ = writeln!(
            out,
            "DNS during the data-plane runs (medians): paced {:.0} qps, p50 {:.3} ms, p99 {:.3} ms, \
         {:.0} lost; saturating {:.0} qps, avg {:.3} ms; control {:.0} qps, p99 {:.3} ms; h1 UDP \
         RcvbufErrors per run: none {:.0}, paced {:.0}, saturating {:.0}",
            dns_during(Condition::Paced, "qps"),
            dns_during(Condition::Paced, "p50_us") / 1e3,
            dns_during(Condition::Paced, "p99_us") / 1e3,
            dns_during(Condition::Paced, "lost"),
            dns_during(Condition::Saturating, "qps"),
            dns_during(Condition::Saturating, "avg_ms"),
            dns_during(Condition::Control, "qps"),
            dns_during(Condition::Control, "p99_us") / 1e3,
            med(Condition::NoLoad, "h1_udp_rcvbuf_errors"),
            med(Condition::Paced, "h1_udp_rcvbuf_errors"),
            med(Condition::Saturating, "h1_udp_rcvbuf_errors"),
        );
        let _ = writeln!(
            out,
            "per run TCP ratio: paced {:?}, saturating {:?}, control {:?}",
            per_run("tcp_gbps", Condition::Paced),
            per_run("tcp_gbps", Condition::Saturating),
            per_run("tcp_gbps", Condition::Control)
        );
    }
    let _ = writeln!(
        out,
        "h1 vxnetd VmRSS: {} KiB at start, {} KiB at end",
        rss_start.unwrap_or(0),
        rss_end.unwrap_or(0)
    );
    out
}

/// The JSON document; `table` is what [`table`] made.
pub fn json(bench: &Bench, opts: &Opts, cli: &Cli, m: &Measured, table: String) -> Value {
    let dp = opts.dnsperf;
    let med = |cond: Condition, key: &str| dp_median(&m.dp_raw, cond, key);
    let per_run = |key: &str, cond: Condition| dp_ratios(&m.dp_raw, key, cond);
    let dp_json: serde_json::Map<String, Value> = m
        .dp_raw
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let summary_dp: serde_json::Map<String, Value> = Condition::ALL
        .iter()
        .map(|&c| {
            (
                c.key().to_string(),
                json!({
                    "tcp_gbps": med(c, "tcp_gbps"),
                    "ping_p50_us": med(c, "ping_p50_us"),
                    "ping_p99_us": med(c, "ping_p99_us"),
                    "h1_agent_cpu_pct": med(c, "h1_agent_cpu_pct"),
                }),
            )
        })
        .collect();
    json!({
        "benchmark": "dns_bench",
        "timestamp": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "names": bench.names.len(),
        "gateway": bench.gateway,
        "hosts": bench.hosts,
        "options": {
            "quick": cli.quick,
            "dnsperf": {"clients": dp.clients, "threads": dp.threads, "outstanding": dp.outstanding, "secs": dp.secs},
            "dnsperf_command": m.dnsperf_cmd,
            "paced_rate": opts.rate,
            "sweep_outstanding": opts.sweep,
            "sweep_secs": opts.sweep_secs,
            "paced_secs": opts.secs,
            "dp_runs": opts.dp_runs,
            "dp_iperf3_secs": opts.dp_secs,
            "dp_ping_count": opts.ping_count,
            "dp_ping_interval_s": 0.01,
            "agent_args": cli.agent_args,
        },
        "saturation_dnsperf": m.saturation,
        "saturation_h1_agent_cpu_pct": m.agent_pct,
        "saturation_machine_busy_pct": m.machine_pct,
        "saturation_h1_agent_threads_cpu_pct": m.per_thread.iter().map(|(n, p)| json!([n, p])).collect::<Vec<_>>(),
        "closed_loop": m.sweep,
        "paced": m.paced,
        "paced_h1_agent_threads_cpu_pct": m.paced_threads.iter().map(|(n, p)| json!([n, p])).collect::<Vec<_>>(),
        "data_plane": {
            "summary_median": summary_dp,
            "ratio_paced_over_none": {
                "tcp_gbps": med(Condition::Paced, "tcp_gbps") / med(Condition::NoLoad, "tcp_gbps"),
                "ping_p50_us": med(Condition::Paced, "ping_p50_us") / med(Condition::NoLoad, "ping_p50_us"),
                "ping_p99_us": med(Condition::Paced, "ping_p99_us") / med(Condition::NoLoad, "ping_p99_us"),
            },
            "ratio_saturating_over_none": {
                "tcp_gbps": med(Condition::Saturating, "tcp_gbps") / med(Condition::NoLoad, "tcp_gbps"),
                "ping_p50_us": med(Condition::Saturating, "ping_p50_us") / med(Condition::NoLoad, "ping_p50_us"),
                "ping_p99_us": med(Condition::Saturating, "ping_p99_us") / med(Condition::NoLoad, "ping_p99_us"),
            },
            "per_run_tcp_ratio_paced": per_run("tcp_gbps", Condition::Paced),
            "per_run_tcp_ratio_saturating": per_run("tcp_gbps", Condition::Saturating),
            "per_run_tcp_ratio_control": per_run("tcp_gbps", Condition::Control),
            "ratio_control_over_none": {
                "tcp_gbps": med(Condition::Control, "tcp_gbps") / med(Condition::NoLoad, "tcp_gbps"),
                "ping_p50_us": med(Condition::Control, "ping_p50_us") / med(Condition::NoLoad, "ping_p50_us"),
                "ping_p99_us": med(Condition::Control, "ping_p99_us") / med(Condition::NoLoad, "ping_p99_us"),
            },
            "control": "the paced load sent to a minimal responder (this binary's __dns-echo: recvmmsg/sendmmsg, QR set, no records) in container ep1 on h1 instead of the agent: what the same query rate costs the machine without vxnet's resolver",
            "raw": dp_json,
        },
        "h1_agent_rss_kib": {"start": m.rss_start, "end": m.rss_end},
        "h1_dns_counters": {"before": m.counters_before, "after": m.counters_after},
        "table": table,
    })
}
