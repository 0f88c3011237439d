//! Operating vxnet: Prometheus metrics and the one-command demo.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

/// Fetches http://127.0.0.1:9476/metrics from inside `ns`.
fn scrape(cluster: &Cluster, ns: &str) -> String {
    let out = cluster.exec(
        ns,
        "python3 -c 'import urllib.request;print(urllib.request.urlopen(\"http://127.0.0.1:9476/metrics\",timeout=5).read().decode())'",
    );
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses OpenMetrics/Prometheus text strictly enough to catch malformed output: every sample
/// belongs to a declared family and has a numeric value. Returns (sample name+labels → value).
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut families = BTreeSet::new();
    let mut samples = Vec::new();
    let mut saw_eof = false;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().expect("TYPE has a name");
            families.insert(name.to_string());
            continue;
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line: {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().expect("name");
        let family = families
            .iter()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        assert!(
            name == family
                || ["_total", "_bucket", "_sum", "_count", "_created"]
                    .iter()
                    .any(|s| name == format!("{family}{s}")),
            "sample {name} does not belong to family {family}"
        );
        samples.push((series.to_string(), value));
    }
    assert!(saw_eof, "OpenMetrics text ends with # EOF");
    samples
}

fn value(samples: &[(String, f64)], prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    if !require_root("metrics_parse_and_move_with_traffic") {
        return;
    }
    let options = ClusterOptions {
        agent_args: vec!["--metrics".into(), "127.0.0.1:9476".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::new("me", options);
    let Pair { c1, ip2, .. } = cluster.pair_on_network("m", "10.31.0.0/24");

    let h1 = cluster.host_ns(0).to_string();
    let before = parse_exposition(&scrape(&cluster, &h1));
    for family in [
        "vxnet_network_tx_packets_total{",
        "vxnet_drops_total{reason=\"unknown_vni\"}",
        "vxnet_io_errors_total{call=\"tap_read\"}",
        "vxnet_raft_term",
        "vxnet_raft_is_leader",
        "vxnet_peer_reachable{peer=\"h2\"}",
        "vxnet_commit_latency_seconds_count",
        "vxnet_fib_entries",
    ] {
        assert!(
            before.iter().any(|(s, _)| s.starts_with(family)),
            "missing {family}"
        );
    }
    assert_eq!(
        value(&before, "vxnet_raft_is_leader"),
        1.0,
        "h1 bootstrapped and leads"
    );
    assert!(
        value(&before, "vxnet_commit_latency_seconds_count") >= 2.0,
        "create + connect observed"
    );

    let out = cluster.ping(&c1, &ip2, 20, "-i 0.01");
    assert!(out.status.success());
    let after = parse_exposition(&scrape(&cluster, &h1));
    let tx = |s: &[(String, f64)]| value(s, "vxnet_network_tx_packets_total{");
    let rx = |s: &[(String, f64)]| value(s, "vxnet_network_rx_packets_total{");
    assert!(
        tx(&after) >= tx(&before) + 20.0,
        "tx counter moved: {} -> {}",
        tx(&before),
        tx(&after)
    );
    assert!(
        rx(&after) >= rx(&before) + 20.0,
        "rx counter moved: {} -> {}",
        rx(&before),
        rx(&after)
    );
}

/// The README's first command works, its matrix is measured, and `down` leaves nothing behind.
#[test]
fn demo_script_up_and_down() {
    if !require_root("demo_script_up_and_down") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo.sh");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_vxnetd"))
        .parent()
        .expect("binary dir")
        .display()
        .to_string();
    let up = sh_output(&format!("VXNET_BIN_DIR={bin_dir} {script} up"));
    let stdout = String::from_utf8_lossy(&up.stdout);
    let down = sh_output(&format!("{script} down"));
    assert!(
        up.status.success(),
        "demo up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let last: Vec<&str> = stdout.lines().rev().take(2).collect();
    assert_eq!(last, ["matrix: ok", "members: 3"], "demo output:\n{stdout}");
    assert!(
        stdout.contains("throughput: "),
        "an iperf3 figure:\n{stdout}"
    );
    assert!(down.status.success());
    let namespaces = sh("ip netns list");
    assert!(
        !namespaces.contains("vxdemo-"),
        "namespaces left: {namespaces}"
    );
    assert!(!std::path::Path::new("/run/vxnet-demo").exists());
    let agents = sh_output("pgrep -f '[v]xnetd --name h. --data-dir /var/lib/vxnet-demo'");
    assert!(!agents.status.success(), "agents left running");
}

/// `vxnet capture` mirrors both directions of a network's frames into a pcap that tshark reads.
#[test]
fn capture_100_pings_read_back_with_tshark() {
    if !require_root("capture_100_pings_read_back_with_tshark") {
        return;
    }
    let mut cluster = Cluster::new("oc", ClusterOptions::default());
    // Warm up (ARP resolved) so the capture sees exactly the 100 requests and 100 replies.
    let Pair { c1, ip1, ip2, .. } = cluster.pair_on_network("cap", "10.32.0.0/24");
    let pcap = cluster.dir().join("cap.pcap");
    let agent = &cluster.agents[0];
    let mut capture = std::process::Command::new(env!("CARGO_BIN_EXE_vxnet"))
        .arg("-H")
        .arg(&agent.api)
        .args(["capture", "cap", "-w"])
        .arg(&pcap)
        .spawn()
        .expect("spawn vxnet capture");
    std::thread::sleep(Duration::from_millis(300));
    let out = cluster.ping(&c1, &ip2, 100, "-i 0.01");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_millis(300));
    // Stopped at an arbitrary moment, the file is still a valid pcap (whole records only).
    sh(&format!("kill -INT {}", capture.id()));
    let _ = capture.wait();
    let fields = sh(&format!(
        "tshark -r {} -Y icmp -T fields -e icmp.type -e ip.src -e ip.dst",
        pcap.display()
    ));
    let lines: Vec<&str> = fields.lines().collect();
    let requests = lines
        .iter()
        .filter(|l| **l == format!("8\t{ip1}\t{ip2}"))
        .count();
    let replies = lines
        .iter()
        .filter(|l| **l == format!("0\t{ip2}\t{ip1}"))
        .count();
    assert_eq!(
        (requests, replies, lines.len()),
        (100, 100, 200),
        "{fields}"
    );
}
