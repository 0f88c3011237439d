//! Flow steering: a flow's TAP reads, underlay receives and TAP writes happen on one worker on
//! each host, in both directions, and the worker is the one the flow hash names; several flows
//! spread over all workers. Proved with the per-worker counters of `vxnet stats` (and their
//! `/metrics` twins), with client ports chosen through the same hash so that no run depends on
//! luck. IPv4 and IPv6 flows alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vxnet_dataplane::steer;

use crate::support::*;

const WORKERS: usize = 2;
const KINDS: [&str; 4] = [
    "tap_frames_read",
    "udp_datagrams_received",
    "tap_frames_written",
    "udp_datagrams_sent",
];

/// Per worker, the four traffic counters of [`KINDS`].
fn per_worker(agent: &Agent) -> Vec<[u64; 4]> {
    let stats = agent.stats();
    (0..WORKERS)
        .map(|w| KINDS.map(|k| stats.get(&format!("worker.{w}.{k}")).copied().unwrap_or(0)))
        .collect()
}

fn delta(after: &[[u64; 4]], before: &[[u64; 4]]) -> Vec<[u64; 4]> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| std::array::from_fn(|k| a[k] - b[k]))
        .collect()
}

/// A client port from `from` on whose TCP flow from `src` to `dst:dport` lands on `worker`.
fn port_on(src: IpAddr, dst: IpAddr, dport: u16, worker: usize, from: u16) -> u16 {
    let bucket = |p| match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => steer::ipv4_flow_bucket(s, d, 6, p, dport),
        (IpAddr::V6(s), IpAddr::V6(d)) => steer::ipv6_flow_bucket(s, d, 6, p, dport),
        _ => panic!("{src} and {dst} are of one family"),
    };
    (from..)
        .find(|&p| steer::worker_of(bucket(p), WORKERS) == worker)
        .expect("a port on every worker")
}

/// iperf3 servers in `ns` on `ports`, killed on drop.
struct Servers(Vec<Child>);

impl Servers {
    fn start(ns: &str, ports: &[u16]) -> Servers {
        Servers(
            ports
                .iter()
                .map(|p| {
                    Command::new("ip")
                        .args(["netns", "exec", ns, "iperf3", "-s", "-p", &p.to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("spawn iperf3 server")
                })
                .collect(),
        )
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs one iperf3 client per (client port, server port) at once, `args` added; retries a
/// client that raced its server's listen. Returns the received Gbit/s of each.
fn iperf3_clients(ns: &str, server: IpAddr, flows: &[(u16, u16)], args: &str) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let children: Vec<_> = flows
            .iter()
            .map(|(cport, sport)| {
                Command::new("ip")
                    .args(["netns", "exec", ns, "sh", "-c"])
                    .arg(format!(
                        "iperf3 -c {server} -p {sport} --cport {cport} -J --connect-timeout 1000 {args}"
                    ))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn iperf3 client")
            })
            .collect();
        let results: Vec<_> = children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().expect("iperf3 client");
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                v["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .map(|bps| bps / 1e9)
                    .ok_or_else(|| output_text(&out))
            })
            .collect();
        if results.iter().all(Result::is_ok) {
            return results.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "iperf3 never completed: {results:?}"
        );
        eprintln!("dp_steering: an iperf3 client failed, again: {results:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// For a flow steered to `worker`: every counter moved on that worker but for at most 5% and
/// `noise` packets elsewhere (ARP, and iperf3's control connection, whose port is random).
fn assert_on_worker(host: &str, d: &[[u64; 4]], worker: usize, noise: u64) {
    for (k, kind) in KINDS.iter().enumerate() {
        let total: u64 = d.iter().map(|w| w[k]).sum();
        let elsewhere = total - d[worker][k];
        assert!(
            elsewhere <= total / 20 + noise,
            "{host}: {kind} should run on worker {worker}: {:?}",
            d.iter().map(|w| w[k]).collect::<Vec<_>>()
        );
    }
}

/// Sends `bytes` c1 → c2 twice per worker, from a client port chosen to land on that worker, and
/// checks both hosts' counters: all of the flow's work, both directions, on that worker.
fn one_flow_per_worker(
    cluster: &mut Cluster,
    network: &str,
    subnet: &str,
    bytes: &str,
) -> (String, String, Ipv4Addr, Ipv4Addr) {
    let Pair { c1, c2, ip1, ip2 } = cluster.pair_on_network(network, subnet);
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (ip1.parse().unwrap(), ip2.parse().unwrap());
    for agent in &cluster.agents {
        let s = agent.stats();
        assert_eq!(s.get("steering.workers"), Some(&(WORKERS as u64)), "{s:?}");
        assert_eq!(s.get("steering.reuseport_program"), Some(&1), "{s:?}");
        assert_eq!(s.get("steering.taps_steered"), Some(&1), "{s:?}");
        assert_eq!(s.get("steering.taps_automatic"), Some(&0), "{s:?}");
    }
    flows_on_their_workers(
        cluster,
        network,
        (&c1, src.into()),
        (&c2, dst.into()),
        bytes,
    );
    (c1, c2, src, dst)
}

/// Two flows per worker from `client` to `server` (a namespace and its address), one after the
/// other, with client ports chosen to land on that worker: on both hosts, all of each flow's
/// work, both directions, is on its worker. A placement that ignored the hash would have to
/// guess right four times on each host.
fn flows_on_their_workers(
    cluster: &Cluster,
    network: &str,
    (c1, src): (&str, IpAddr),
    (c2, dst): (&str, IpAddr),
    bytes: &str,
) {
    let _servers = Servers::start(c2, &[5201]);
    for (n, worker) in (0..2 * WORKERS).map(|n| (n as u16, n % WORKERS)) {
        let cport = port_on(src, dst, 5201, worker, 40000 + 100 * n);
        let before: Vec<_> = cluster.agents.iter().map(per_worker).collect();
        let gbps = iperf3_clients(c1, dst, &[(cport, 5201)], &format!("-n {bytes}"));
        let after: Vec<_> = cluster.agents.iter().map(per_worker).collect();
        let (h1, h2) = (delta(&after[0], &before[0]), delta(&after[1], &before[1]));
        eprintln!(
            "dp_steering: {network}: flow [{src}]:{cport} → [{dst}]:5201 (worker {worker}), \
             {gbps:.2?} Gbit/s; per worker [tap read, udp rx, tap written, udp sent]: \
             h1 {h1:?}, h2 {h2:?}"
        );
        // Data one way, acknowledgements the other: each host reads, receives, writes and
        // sends for this flow.
        for (host, d) in [("h1", &h1), ("h2", &h2)] {
            for k in 0..KINDS.len() {
                assert!(d[worker][k] > 100, "{host}: {} moved: {d:?}", KINDS[k]);
            }
            assert_on_worker(host, d, worker, 40);
        }
    }
    assert_none_elsewhere(cluster);
}

/// [`flows_on_their_workers`] over IPv6: addresses of this test's own (`<prefix>::1`, `::2`) on
/// the containers' interfaces (the overlay floods the neighbor solicitation and carries the
/// rest); the hash reads the IPv6 tuple.
fn ipv6_flows_on_their_workers(
    cluster: &Cluster,
    network: &str,
    (c1, c2): (&str, &str),
    prefix: &str,
    bytes: &str,
) {
    let src: Ipv6Addr = format!("{prefix}::1").parse().unwrap();
    let dst: Ipv6Addr = format!("{prefix}::2").parse().unwrap();
    for (c, a) in [(c1, src), (c2, dst)] {
        let out = cluster.exec(c, &format!("ip -6 addr add {a}/64 dev eth0 nodad"));
        assert!(out.status.success(), "{}", output_text(&out));
    }
    cluster.wait_ping("the first IPv6 ping", c1, &dst.to_string());
    let network = format!("{network} (IPv6)");
    flows_on_their_workers(cluster, &network, (c1, src.into()), (c2, dst.into()), bytes);
}

/// No datagram reached another worker than its flow's (a GRO train mixing flows would).
fn assert_none_elsewhere(cluster: &Cluster) {
    for agent in &cluster.agents {
        let s = agent.stats();
        for w in 0..WORKERS {
            assert_eq!(
                s.get(&format!("worker.{w}.udp_datagrams_other_worker")),
                Some(&0),
                "{}: {s:?}",
                agent.name
            );
        }
    }
}

/// Two hosts whose agents run [`WORKERS`] workers, `extra` flags added.
fn two_hosts(tag: &str, extra: &[&str]) -> Cluster {
    let mut agent_args = vec!["--workers".to_string(), WORKERS.to_string()];
    agent_args.extend(extra.iter().map(|a| a.to_string()));
    Cluster::new(
        tag,
        ClusterOptions {
            agent_args,
            ..ClusterOptions::default()
        },
    )
}

/// Offload on (the default), two workers: each flow stays on its hash's worker on both hosts;
/// then four flows at once, two per worker, keep every worker of both hosts busy; then IPv6
/// flows stay on their workers too.
#[test]
fn flows_stay_on_their_worker_and_spread() {
    if !require_root("flows_stay_on_their_worker_and_spread") {
        return;
    }
    let mut cluster = two_hosts("st", &["--metrics", "127.0.0.1:9476"]);
    let (c1, c2, src, dst) = one_flow_per_worker(&mut cluster, "steer", "10.61.0.0/24", "32M");

    // Four flows, to four servers, with client ports that put two on each worker.
    let flows: Vec<(u16, u16)> = (0..4u16)
        .map(|i| {
            let server = 5211 + i;
            let worker = usize::from(i) % WORKERS;
            (
                port_on(src.into(), dst.into(), server, worker, 41000 + 50 * i),
                server,
            )
        })
        .collect();
    let servers: Vec<u16> = flows.iter().map(|f| f.1).collect();
    let _servers = Servers::start(&c2, &servers);
    let before: Vec<_> = cluster.agents.iter().map(per_worker).collect();
    let gbps = iperf3_clients(&c1, dst.into(), &flows, "-t 3");
    let after: Vec<_> = cluster.agents.iter().map(per_worker).collect();
    let (h1, h2) = (delta(&after[0], &before[0]), delta(&after[1], &before[1]));
    eprintln!(
        "dp_steering: 4 flows {flows:?}: {gbps:.2?} Gbit/s (sum {:.2}); per worker: h1 {h1:?}, h2 {h2:?}",
        gbps.iter().sum::<f64>()
    );
    for (host, d) in [("h1", &h1), ("h2", &h2)] {
        for k in 0..KINDS.len() {
            let total: u64 = d.iter().map(|w| w[k]).sum();
            for (w, counts) in d.iter().enumerate() {
                assert!(
                    counts[k] * 10 >= total,
                    "{host}: worker {w} takes its share of {}: {d:?}",
                    KINDS[k]
                );
            }
        }
    }

    // The same counters in /metrics.
    let out = cluster.exec(
        cluster.host_ns(0),
        "python3 -c 'import urllib.request;print(urllib.request.urlopen(\"http://127.0.0.1:9476/metrics\",timeout=5).read().decode())'",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let scraped = |w: usize| -> u64 {
        let needle =
            format!("vxnet_worker_packets_total{{worker=\"{w}\",kind=\"tap_frames_read\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{needle} in /metrics:\n{text}"))
    };
    for (w, counts) in after[0].iter().enumerate() {
        assert!(scraped(w) >= counts[0], "metrics as fresh as stats");
    }
    assert_none_elsewhere(&cluster);
    assert!(
        text.contains("vxnet_steering_taps{mode=\"steered\"} 1"),
        "{text}"
    );

    ipv6_flows_on_their_workers(&cluster, "steer", (&c1, &c2), "fd61", "32M");
}

/// `--offload off`: the plain path (a frame per system call) is steered the same way, IPv4 and
/// IPv6.
#[test]
fn plain_path_flows_stay_on_their_worker() {
    if !require_root("plain_path_flows_stay_on_their_worker") {
        return;
    }
    let mut cluster = two_hosts("sp", &["--offload", "off"]);
    let (c1, c2, _, _) = one_flow_per_worker(&mut cluster, "plain", "10.62.0.0/24", "8M");
    ipv6_flows_on_their_workers(&cluster, "plain", (&c1, &c2), "fd62", "8M");
}
