//! Ways out: the anycast gateway, NAT egress, `--internal`, isolation, the host reaching its
//! networks, and rules that survive a restart unchanged.
//!
//! Two hosts and an "outside" namespace on the underlay switch (192.168.200.100, in no overlay)
//! running a TCP and a UDP server that answer with the source address they see. Networks `web`
//! and `db` (each with a container on both hosts) and `--internal` network `sealed` (one
//! container on h1).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::Value;
use vxnet_testkit::netns::Proc;

use crate::support::capture::*;
use crate::support::*;
use vxnet_dataplane::wire::{ArpOperation, ArpPacket, EtherType};

const OUTSIDE_IP: &str = "192.168.200.100";

/// Answers every TCP connection and UDP datagram on port 7000 with the peer's address.
const ECHO_SOURCE: &str = r#"
import socket, threading
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7000)); s.listen(16)
    while True:
        c, a = s.accept(); c.sendall(a[0].encode()); c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7000))
    while True:
        d, a = s.recvfrom(64); s.sendto(a[0].encode(), a)
threading.Thread(target=tcp, daemon=True).start()
print("listening", flush=True)
udp()
"#;

/// Asks the echo server over TCP or UDP; prints the address it saw, or `error: ...`.
const ASK_SOURCE: &str = r#"
import socket, sys
proto, host = sys.argv[1], sys.argv[2]
try:
    if proto == "tcp":
        c = socket.create_connection((host, 7000), timeout=2); print(c.recv(64).decode())
    else:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(2)
        c.sendto(b"?", (host, 7000)); print(c.recv(64).decode())
except Exception as e:
    print("error:", e)
"#;

fn ask(cluster: &Cluster, from: &str, proto: &str) -> String {
    let script = cluster.dir().join("ask.py");
    std::fs::write(&script, ASK_SOURCE).expect("write ask.py");
    let out = sh_output(&format!(
        "ip netns exec {from} python3 {} {proto} {OUTSIDE_IP}",
        script.display()
    ));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pings(cluster: &Cluster, from: &str, ip: &str) -> bool {
    cluster.ping(from, ip, 1, "-W 1").status.success()
}

fn ruleset(ns: &str) -> Value {
    vxnet_ruleset(ns)
}

#[test]
fn gateway_nat_internal_and_isolation() {
    let Some(mut cluster) = cluster_for("gateway_nat_internal_and_isolation", "gw", 2) else {
        return;
    };
    // The outside: on the switch, in no overlay.
    let outside = format!("{}-out", cluster.prefix);
    cluster.add_netns(&outside);
    cluster.plug(&outside, "pout");
    sh(&format!("ip -n {outside} addr add {OUTSIDE_IP}/24 dev ul0"));
    let server = cluster.dir().join("echo.py");
    std::fs::write(&server, ECHO_SOURCE).expect("write echo.py");
    let mut echo = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &outside, "python3"])
            .arg(&server)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("echo server");
    {
        use std::io::{BufRead, BufReader};
        let stdout = echo.child().stdout.take().expect("stdout");
        let ready = BufReader::new(stdout).lines().next().and_then(Result::ok);
        assert_eq!(ready.as_deref(), Some("listening"));
    }

    let h1 = cluster.host_ns(0).to_string();
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.41.0.0/24", "web"]);
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.42.0.0/24", "db"]);
    cluster.agents[0].vxnet(&[
        "network",
        "create",
        "--subnet",
        "10.43.0.0/24",
        "--internal",
        "sealed",
    ]);
    let mut attach = |host: usize, net: &str| {
        let c = cluster.container();
        cluster.agents[host].vxnet(&["network", "connect", net, &c]);
        let ip = cluster.ipv4_of(&c, "eth0");
        (c, ip)
    };
    let (a1, a1_ip) = attach(0, "web");
    let (a2, a2_ip) = attach(1, "web");
    let (b1, b1_ip) = attach(0, "db");
    let (b2, b2_ip) = attach(1, "db");
    let (s1, _) = attach(0, "sealed");
    cluster.wait_ping("a1 → a2", &a1, &a2_ip);

    // Default routes: via the gateway, none on an internal network.
    let route = sh(&format!("ip -n {a1} route show default"));
    assert!(route.contains("via 10.41.0.1 dev eth0"), "a1: {route}");
    let route = sh(&format!("ip -n {s1} route show default"));
    assert!(route.trim().is_empty(), "s1 has no way out: {route}");

    // Egress, masqueraded to each container's own host.
    for (c, host_ip) in [
        (&a1, "192.168.200.1"),
        (&a2, "192.168.200.2"),
        (&b2, "192.168.200.2"),
    ] {
        for proto in ["tcp", "udp"] {
            assert_eq!(
                ask(&cluster, c, proto),
                host_ip,
                "{c} → outside over {proto}"
            );
        }
    }
    // Nothing leaves an internal network: it has no route out, and one added by hand in the
    // container (its gateway address answers on the bridge) is not forwarded either.
    let seen = ask(&cluster, &s1, "tcp");
    assert!(seen.starts_with("error:"), "sealed reached outside: {seen}");
    sh(&format!("ip -n {s1} route add default via 10.43.0.1"));
    let leak_path = cluster.dir().join("h1-leak.pcap");
    let leak = Capture::start(
        cluster.host_ns(0),
        "ul0",
        &format!("ip and host {OUTSIDE_IP}"),
        &leak_path,
    );
    let seen = ask(&cluster, &s1, "tcp");
    assert!(seen.starts_with("error:"), "sealed reached outside: {seen}");
    let seen = ask(&cluster, &s1, "udp");
    assert!(seen.starts_with("error:"), "sealed reached outside: {seen}");
    let (leaked, _) = leak.stop();
    let leaked: Vec<String> = leaked
        .iter()
        .map(|f| f.iter().take(42).map(|b| format!("{b:02x}")).collect())
        .collect();
    assert!(
        leaked.is_empty(),
        "frames left the internal network: {leaked:?}"
    );

    // A sandbox on two networks keeps the first one's default route.
    let m = cluster.container();
    cluster.agents[0].vxnet(&["network", "connect", "web", &m]);
    cluster.agents[0].vxnet(&["network", "connect", "db", &m]);
    let routes = sh(&format!("ip -n {m} route show default"));
    assert_eq!(routes.lines().count(), 1, "{m}: {routes}");
    assert!(routes.contains("via 10.41.0.1 dev eth0"), "{m}: {routes}");

    // The gateway answers on every host; its ARP never crosses the underlay.
    let capture_path = cluster.dir().join("h1-ul0.pcap");
    let capture = Capture::start(cluster.host_ns(0), "ul0", "udp port 4789", &capture_path);
    for c in [&a1, &a2] {
        sh(&format!("ip -n {c} neigh flush dev eth0"));
        assert!(pings(&cluster, c, "10.41.0.1"), "{c} pings its gateway");
        let neigh = sh(&format!("ip -n {c} neigh show 10.41.0.1"));
        assert!(
            neigh.contains("02:56:58:"),
            "{c}: anycast gateway MAC: {neigh}"
        );
    }
    // A host reaches containers, its own and the other host's.
    assert!(pings(&cluster, &h1, &a1_ip), "h1 → a1 (local)");
    assert!(pings(&cluster, &h1, &a2_ip), "h1 → a2 (on h2)");
    let (frames, _) = capture.stop();
    let gateway: Ipv4Addr = "10.41.0.1".parse().expect("ip");
    let gateway_arp = frames
        .iter()
        .filter_map(|f| decap(f))
        .filter(|e| e.inner.ethertype() == EtherType::ARP)
        .filter_map(|e| {
            let arp = ArpPacket::new_checked(e.inner.payload().to_vec()).ok()?;
            (arp.operation() == ArpOperation::Request && arp.target_protocol_addr() == gateway)
                .then_some(())
        })
        .count();
    assert_eq!(gateway_arp, 0, "ARP for the gateway crossed the underlay");

    // Isolation: web and db never reach each other, on one host or across.
    for (from, to) in [(&a1, &b1_ip), (&a1, &b2_ip), (&b1, &a2_ip), (&b2, &a1_ip)] {
        assert!(!pings(&cluster, from, to), "{from} reached {to}");
    }
    // Containers do not reach their host's services (here its peer port): only pings to the
    // gateway.
    let peer_port = sh_output(&format!("ip netns exec {a1} nc -z -w 1 192.168.200.1 7946"));
    assert!(!peer_port.status.success(), "a1 reached h1's peer port");

    // A restart leaves the ruleset and the routes as they were, and traffic resumes.
    let rules = ruleset(&h1);
    let routes = sh(&format!("ip -n {h1} route show proto 86"));
    assert!(
        routes.contains(&format!("{a2_ip} via 192.168.200.2")),
        "{routes}"
    );
    cluster.agents[0].restart();
    cluster.wait_api(0);
    wait_for("h1 reconciled", std::time::Duration::from_secs(20), || {
        (ask(&cluster, &a1, "tcp") == "192.168.200.1").then_some(())
    });
    assert_eq!(ruleset(&h1), rules, "ruleset changed across a restart");
    assert_eq!(sh(&format!("ip -n {h1} route show proto 86")), routes);
    let rule_count = rules["nftables"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|o| o.get("rule").is_some()).count());
    eprintln!(
        "gateway: h1 holds {rule_count} rules in inet vxnet and {} routes (proto 86): {}",
        routes.lines().count(),
        routes.trim().replace('\n', "; ")
    );
}

/// Docker sets iptables' FORWARD policy to DROP (iptables-nft: table `ip filter`), and every
/// table must accept a forwarded packet: egress stops until the two `DOCKER-USER` rules of the
/// README are added, then works again.
#[test]
fn dockers_forward_drop_needs_the_documented_docker_user_rules() {
    let Some(mut cluster) = cluster_for(
        "dockers_forward_drop_needs_the_documented_docker_user_rules",
        "gd",
        1,
    ) else {
        return;
    };
    let outside = format!("{}-out", cluster.prefix);
    cluster.add_netns(&outside);
    cluster.plug(&outside, "pout");
    sh(&format!("ip -n {outside} addr add {OUTSIDE_IP}/24 dev ul0"));
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.44.0.0/24", "app"]);
    let c = cluster.container();
    cluster.agents[0].vxnet(&["network", "connect", "app", &c]);
    let h1 = cluster.host_ns(0).to_string();
    assert!(
        pings(&cluster, &c, OUTSIDE_IP),
        "egress before Docker's rules"
    );

    // What dockerd (iptables-nft) leaves in the filter table: policy drop, DOCKER-USER first.
    sh(&format!(
        "ip netns exec {h1} nft -f - <<'EOF'
table ip filter {{
  chain DOCKER-USER {{ }}
  chain FORWARD {{ type filter hook forward priority filter; policy drop; jump DOCKER-USER; }}
}}
EOF"
    ));
    assert!(
        !pings(&cluster, &c, OUTSIDE_IP),
        "Docker's policy drops forwarded packets"
    );
    // The README's rules (`iptables -I DOCKER-USER -i vxb-+ -j ACCEPT`, and `-o vxb-+`), as
    // iptables-nft writes them.
    sh(&format!(
        "ip netns exec {h1} nft add rule ip filter DOCKER-USER iifname 'vxb-*' accept \
         && ip netns exec {h1} nft add rule ip filter DOCKER-USER oifname 'vxb-*' accept"
    ));
    assert!(
        pings(&cluster, &c, OUTSIDE_IP),
        "egress with the DOCKER-USER rules"
    );
    // vxnet's own table still filters: the container does not reach its host's peer port.
    let peer_port = sh_output(&format!("ip netns exec {c} nc -z -w 1 192.168.200.1 7946"));
    assert!(
        !peer_port.status.success(),
        "the container reached h1's peer port"
    );
}
