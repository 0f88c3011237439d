//! What the kernel counts: CPU per thread and of the whole machine, UDP receive-buffer drops,
//! the load average.

use std::collections::BTreeMap;
use std::time::Duration;

use vxnet_testkit::netns::sh;
use vxnet_testkit::procfs::{clk_tck, machine_jiffies};

/// CPU jiffies per thread of process `pid`: tid → (name, utime + stime).
pub fn thread_jiffies(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut m = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return m;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let text = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (text.find('('), text.rfind(") ")) else {
            continue;
        };
        let name = text[open + 1..close].to_string();
        let f: Vec<&str> = text[close + 2..].split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        m.insert(tid, (name, get(11) + get(12)));
    }
    m
}

/// Per-thread CPU % of `pid` between two snapshots, busiest first (threads under 1 % left out).
pub fn thread_cpu(
    before: &BTreeMap<u32, (String, u64)>,
    after: &BTreeMap<u32, (String, u64)>,
    wall: f64,
) -> Vec<(String, f64)> {
    let tck = clk_tck();
    let mut v: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, (name, j))| {
            let j0 = before.get(tid).map_or(0, |b| b.1);
            (
                format!("{name} ({tid})"),
                100.0 * (j - j0) as f64 / tck / wall,
            )
        })
        .filter(|(_, pct)| *pct >= 1.0)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// `RcvbufErrors` of UDP in namespace `ns` (/proc/net/snmp): datagrams the kernel dropped
/// because a socket's receive buffer was full (on h1: mostly the resolver's).
pub fn udp_rcvbuf_errors(ns: &str) -> u64 {
    let text = sh(&format!("ip netns exec {ns} cat /proc/net/snmp")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let [names, values] = lines[..] else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Machine-wide busy CPU, in % of one core, over `secs` (what else runs on the machine).
pub fn machine_busy_pct(secs: f64) -> f64 {
    let (_, b0) = machine_jiffies();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (_, b1) = machine_jiffies();
    100.0 * (b1 - b0) as f64 / clk_tck() / secs
}

/// `/proc/loadavg`, trimmed.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
