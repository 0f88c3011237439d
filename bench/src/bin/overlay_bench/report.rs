//! The results: the table, the per-run ratios, the JSON document and the PNG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use jiff::Timestamp;
use serde_json::{Value, json};
use vxnet_testkit::stats::median;

use crate::measure::{Machine, loadavg};
use crate::topology::Kind;

/// Medians: summary[topology][metric].
pub type Summary = BTreeMap<&'static str, BTreeMap<String, f64>>;
/// Every run's value: raw[topology][metric][run].
pub type Raw = BTreeMap<&'static str, BTreeMap<String, Vec<f64>>>;
/// What failed, per topology.
pub type Errors = BTreeMap<&'static str, Vec<String>>;

/// (key, label, precision) of the table's rows.
const ROWS: &[(&str, &str, usize)] = &[
    ("tcp1_gbps", "TCP 1 stream (Gbit/s)", 2),
    ("tcp4_gbps", "TCP 4 streams (Gbit/s)", 2),
    ("tcp1_retransmits", "TCP 1 stream retransmits", 0),
    ("udp64_delivered_kpps", "UDP 64 B delivered (kpps)", 0),
    ("udp64_offered_kpps", "UDP 64 B offered (kpps)", 0),
    ("ping_p50_us", "ping RTT p50 (us)", 0),
    ("ping_p99_us", "ping RTT p99 (us)", 0),
    ("rr_p50_us", "TCP_RR latency p50 (us)", 0),
    ("rr_p99_us", "TCP_RR latency p99 (us)", 0),
    ("rr_tps", "TCP_RR transactions/s", 0),
    ("cpu_agent_s_per_gb", "CPU agent s/GB (TCP 1)", 3),
    ("cpu_softirq_s_per_gb", "CPU softirq s/GB (TCP 1)", 3),
    ("cpu_machine_busy_s_per_gb", "CPU machine busy s/GB", 3),
    ("egress_container_gbps", "egress: container (Gbit/s)", 2),
    ("egress_host_gbps", "egress: its host (Gbit/s)", 2),
];

/// Medians; the 1-stream CPU figures are the headline CPU rows.
pub fn summarize(raw: &Raw) -> Summary {
    let mut summary: Summary = BTreeMap::new();
    for (kind, metrics) in raw {
        let s = summary.entry(kind).or_default();
        for (k, v) in metrics {
            s.insert(k.clone(), median(v));
        }
        for cpu in [
            "cpu_agent_s_per_gb",
            "cpu_softirq_s_per_gb",
            "cpu_machine_busy_s_per_gb",
            "retransmits",
        ] {
            if let Some(&x) = s.get(&format!("tcp1_{cpu}")) {
                s.insert(cpu.into(), x);
            }
        }
    }
    summary
}

/// vxnet/kernel ratios run by run (runs interleave, so run i of both ran minutes apart at
/// most) for the headline metrics: the spread a median hides on a noisy machine.
pub fn per_run_ratios(raw: &Raw) -> Vec<(String, Vec<f64>)> {
    let Some(vxnet) = raw.get(Kind::Vxnet.name()) else {
        return Vec::new();
    };
    let mut out = raw
        .get(Kind::KernelVxlan.name())
        .map(|kernel| ratios_of(kernel, vxnet))
        .unwrap_or_default();
    // Egress is vxnet's alone: a container through its gateway and NAT ÷ its host, same server.
    if let (Some(container), Some(host)) = (
        vxnet.get("egress_container_gbps"),
        vxnet.get("egress_host_gbps"),
    ) {
        let ratios: Vec<f64> = container
            .iter()
            .zip(host)
            .filter(|(_, h)| **h > 0.0)
            .map(|(c, h)| c / h)
            .collect();
        if !ratios.is_empty() {
            out.push(("egress_container_over_host".into(), ratios));
        }
    }
    out
}

fn ratios_of(
    kernel: &BTreeMap<String, Vec<f64>>,
    vxnet: &BTreeMap<String, Vec<f64>>,
) -> Vec<(String, Vec<f64>)> {
    ["tcp1_cpu_machine_busy_s_per_gb", "tcp1_gbps", "tcp4_gbps"]
        .iter()
        .filter_map(|metric| {
            let (k, v) = (kernel.get(*metric)?, vxnet.get(*metric)?);
            let ratios: Vec<f64> = k
                .iter()
                .zip(v)
                .filter(|(k, _)| **k > 0.0)
                .map(|(k, v)| v / k)
                .collect();
            (!ratios.is_empty()).then(|| (metric.to_string(), ratios))
        })
        .collect()
}

fn fmt_num(x: Option<f64>, prec: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "n/a".into(),
    }
}

/// The table printed on stdout (and kept in the JSON).
pub fn table(summary: &Summary) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:>12} {:>13} {:>12} {:>14}",
        "metric", "no-overlay", "kernel-vxlan", "vxnet", "vxnet/kernel"
    );
    let _ = writeln!(s, "{}", "-".repeat(28 + 13 + 14 + 13 + 15));
    for &(key, label, prec) in ROWS {
        let get = |k: Kind| summary.get(k.name()).and_then(|m| m.get(key)).copied();
        let (n, k, v) = (
            get(Kind::NoOverlay),
            get(Kind::KernelVxlan),
            get(Kind::Vxnet),
        );
        let ratio = match (v, k) {
            _ if key.ends_with("retransmits") => "-".into(),
            (Some(v), Some(k)) if k != 0.0 && v.is_finite() && k.is_finite() => {
                format!("{:.2}x", v / k)
            }
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "{label:<28} {:>12} {:>13} {:>12} {ratio:>14}",
            fmt_num(n, prec),
            fmt_num(k, prec),
            fmt_num(v, prec)
        );
    }
    s
}

/// `2026-11-23T21:34:05Z`: UTC, whole seconds.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Everything `results.json` holds besides the machine's facts.
pub struct Results<'a> {
    pub now: Timestamp,
    pub machine: &'a Machine,
    /// The options and the durations and sizes they imply.
    pub options: Value,
    pub summary: &'a Summary,
    pub per_run: &'a [(String, Vec<f64>)],
    pub raw: &'a Raw,
    pub errors: &'a Errors,
    pub vxnet_stats: serde_json::Map<String, Value>,
    pub link_stats: serde_json::Map<String, Value>,
    pub chart_path: &'a Path,
    /// Whether the chart has text, `None` if drawing it failed.
    pub chart_labels: Option<bool>,
    pub table: &'a str,
    /// Seconds spent building, measuring and in all.
    pub durations: [f64; 3],
}

impl Results<'_> {
    /// The `results.json` document.
    pub fn json(&self) -> Value {
        let m = self.machine;
        json!({
            "timestamp": rfc3339(self.now),
            "unix_time": self.now.as_second().max(0),
            "kernel": m.kernel,
            "cores": m.cores,
            "cpu_model": m.cpu_model,
            "loadavg_before": m.load_before,
            "loadavg_after": loadavg(),
            "options": self.options,
            "topology": {
                "underlay": "2 host netns on a switch-netns bridge, veth MTU 1500, 192.168.200.0/24",
                "no-overlay": "container veth routed by its host via the underlay peer (ip_forward)",
                "kernel-vxlan": "vxlan id 42 dstport 4789 nolearning + static FDB on a bridge; MTU 1450",
                "vxnet": "vxnetd agents (h1 --bootstrap, h2 --join), vxnet network connect; MTU 1450",
            },
            "notes": "medians over runs; cpu_* from the 1-stream TCP run: agent = utime+stime of both \
                      vxnetd processes, softirq and machine_busy = /proc/stat deltas over all CPUs \
                      (machine-wide, so other load on the machine is included). Agent and softirq overlap: \
                      with tick-based CPU accounting (no CONFIG_IRQ_TIME_ACCOUNTING) softirq work run \
                      inside the agent's syscalls (its sends ripple through veth/bridge/TCP inline) \
                      is charged to both, so do not add them; machine_busy is the non-overlapping total",
            "summary": self.summary,
            "per_run_vxnet_over_kernel": self.per_run.iter().cloned().collect::<BTreeMap<_, _>>(),
            "raw": self.raw,
            "errors": self.errors,
            "vxnet_stats": self.vxnet_stats,
            "link_stats": self.link_stats,
            "bridge_nf_call_iptables": m.bridge_nf,
            "chart": {
                "path": self.chart_path.display().to_string(),
                "ok": self.chart_labels.is_some(),
                "labels": self.chart_labels,
            },
            "table": self.table,
            "durations_s": {
                "build": self.durations[0],
                "measure": self.durations[1],
                "total": self.durations[2],
            },
        })
    }
}

fn find_font() -> Option<Vec<u8>> {
    if std::env::var_os("OVERLAY_BENCH_NO_FONT").is_some() {
        return None;
    }
    let preferred = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];
    for p in preferred {
        if let Ok(b) = std::fs::read(p) {
            return Some(b);
        }
    }
    fn walk(dir: &Path, depth: usize) -> Option<Vec<u8>> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() && depth < 4 {
                if let Some(b) = walk(&p, depth + 1) {
                    return Some(b);
                }
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf"))
                && let Ok(b) = std::fs::read(&p)
            {
                return Some(b);
            }
        }
        None
    }
    walk(Path::new("/usr/share/fonts"), 0)
}

/// Draws the bar charts (TCP, UDP, ping) into `path`; whether they have text (a font was found).
pub fn chart(path: &Path, summary: &Summary, subtitle: &str) -> Result<bool> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let font = find_font().and_then(|bytes| {
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).ok()
    });
    let text = font.is_some();
    let colors = [
        RGBColor(140, 140, 140),
        RGBColor(52, 101, 164),
        RGBColor(230, 126, 34),
    ];
    // (title, unit, [(metric key, group label)], scale)
    type Panel<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64);
    let panels: [Panel; 3] = [
        (
            "TCP throughput (iperf3)",
            "Gbit/s",
            &[("tcp1_gbps", "1 stream"), ("tcp4_gbps", "4 streams")],
            1.0,
        ),
        (
            "UDP 64-byte frames",
            "kpps (thousand packets/s)",
            &[
                ("udp64_delivered_kpps", "delivered"),
                ("udp64_offered_kpps", "offered"),
            ],
            1.0,
        ),
        (
            "Ping RTT (lower is better)",
            "microseconds",
            &[("ping_p50_us", "p50"), ("ping_p99_us", "p99")],
            1.0,
        ),
    ];
    let root = BitMapBackend::new(path, (1500, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = if text {
        root.titled(
            &format!("vxnet vs kernel VXLAN vs no overlay  ({subtitle})"),
            ("sans-serif", 24),
        )?
    } else {
        root.margin(30, 0, 0, 0)
    };
    let areas = body.split_evenly((1, 3));
    for (pi, (area, (title, unit, groups, scale))) in areas.iter().zip(panels.iter()).enumerate() {
        let value = |k: Kind, key: &str| {
            summary
                .get(k.name())
                .and_then(|m| m.get(key))
                .copied()
                .filter(|x| x.is_finite())
                .map(|x| x * scale)
        };
        let ymax = groups
            .iter()
            .flat_map(|(key, _)| Kind::ALL.iter().filter_map(move |&k| value(k, key)))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.2;
        let mut builder = ChartBuilder::on(area);
        builder.margin(15);
        if text {
            builder
                .caption(*title, ("sans-serif", 18))
                .x_label_area_size(35)
                .y_label_area_size(60);
        } else {
            builder.x_label_area_size(10).y_label_area_size(10);
        }
        let mut chart = builder.build_cartesian_2d(0.0..groups.len() as f64, 0.0..ymax)?;
        let fmt_y = |v: &f64| {
            if ymax >= 20.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().x_labels(0);
        if text {
            mesh.y_desc(*unit)
                .label_style(("sans-serif", 14))
                .y_label_formatter(&fmt_y);
        } else {
            mesh.y_labels(0);
        }
        mesh.draw()?;
        let width = 0.8 / Kind::ALL.len() as f64;
        for (ti, &kind) in Kind::ALL.iter().enumerate() {
            let color = colors[ti];
            let bars: Vec<_> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, (key, _))| {
                    let v = value(kind, key)?;
                    let x0 = gi as f64 + 0.1 + ti as f64 * width;
                    Some((x0, v))
                })
                .collect();
            let series = chart.draw_series(bars.iter().map(|&(x0, v)| {
                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled())
            }))?;
            if text && pi == 0 {
                series.label(kind.name()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            }
            if text {
                let prec = if *scale < 1.0 || ymax < 20.0 { 2 } else { 0 };
                chart.draw_series(bars.iter().map(|&(x0, v)| {
                    Text::new(
                        format!("{v:.prec$}"),
                        (x0 + width * 0.46, v),
                        ("sans-serif", 13)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                }))?;
            }
        }
        if text {
            for (gi, (_, label)) in groups.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
                root.draw(&Text::new(
                    label.to_string(),
                    (px, py + 8),
                    ("sans-serif", 15)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Top)),
                ))?;
            }
            if pi == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .draw()?;
            }
        }
    }
    root.present()?;
    Ok(text)
}
