//! The embedded DNS end to end: each host's resolver on its networks' gateway addresses,
//! answering from the host's replicated state. Containers are harness namespaces, so their
//! endpoint names are their netns names (`vx<pid><tag>-c<n>`); queries are `dig` run in them.
//!
//! - `names_are_network_scoped`: names, aliases, `NAME.NETWORK`, PTR, AAAA, TCP, rotation of an
//!   alias's addresses, the resolv.conf the agent writes (glibc and ping use it), scoping by the
//!   asking container's networks.
//! - `disconnect_is_seen_everywhere_within_1s`: the time until every host answers NXDOMAIN.
//! - `names_resolve_without_quorum_and_after_restart`: a host alone (two of three agents killed)
//!   still answers, also right after its agent restarts.
//! - `forwarding_to_the_hosts_upstream`: other names go to the host's upstream (its resolv.conf
//!   or `--dns-upstream IP:PORT`) over UDP and TCP; an `--internal` network gets REFUSED.
//!
//! Anything under /etc/netns named after a test's prefix (the sandboxes' resolv.conf the agents
//! write, a host's own resolv.conf) is removed by a guard made before the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vxnet_testkit::netns::Proc;

use crate::support::*;

/// Removes `/etc/netns/<prefix>-*` when dropped (also on panic). Made before the cluster, so it
/// runs once the agents are dead and cannot write again.
struct EtcNetns(String);

impl EtcNetns {
    fn new(tag: &str) -> Self {
        Self(format!("{}-", vxnet_testkit::netns::prefix(tag)))
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/etc/netns") else {
            return;
        };
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&self.0) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// One `dig` answer: the header's status and the answer section's records.
#[derive(Debug)]
struct Reply {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, … or `no reply`.
    status: String,
    /// `(ttl, type, data)` per answer record, in the order received.
    records: Vec<(u32, String, String)>,
    text: String,
}

impl Reply {
    /// The data of the records of type `rtype`, in order.
    fn data(&self, rtype: &str) -> Vec<String> {
        self.records
            .iter()
            .filter(|(_, t, _)| t == rtype)
            .map(|(_, _, d)| d.clone())
            .collect()
    }

    fn addrs(&self) -> Vec<String> {
        self.data("A")
    }
}

/// `dig OPTS @server QUERY` in namespace `ns`.
fn dig_with(ns: &str, server: &str, query: &str, opts: &str) -> Reply {
    let out = sh_output(&format!(
        "ip netns exec {ns} dig {opts} +noall +comments +answer @{server} {query}"
    ));
    let text = output_text(&out);
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no reply")
        .to_string();
    let records = text
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[1].parse().unwrap_or(0), f[3].into(), f[4..].join(" ")))
        })
        .collect();
    Reply {
        status,
        records,
        text,
    }
}

/// [`dig_with`] with a short timeout and one retry.
fn dig(ns: &str, server: &str, query: &str) -> Reply {
    dig_with(ns, server, query, "+time=1 +tries=2")
}

/// Asserts that `query` from `ns` gets NOERROR and exactly the addresses `want` (any order).
fn assert_addrs(ns: &str, server: &str, query: &str, want: &[&str]) {
    let r = dig(ns, server, query);
    let got: BTreeSet<&str> = r.records.iter().map(|(_, _, d)| d.as_str()).collect();
    let want: BTreeSet<&str> = want.iter().copied().collect();
    assert!(
        r.status == "NOERROR" && got == want && r.records.len() == want.len(),
        "{query} from {ns} @{server}: want {want:?}, got:\n{}",
        r.text
    );
}

fn assert_status(ns: &str, server: &str, query: &str, want: &str) {
    let r = dig(ns, server, query);
    assert_eq!(r.status, want, "{query} from {ns} @{server}:\n{}", r.text);
}

/// Waits (15 s) until `name` asked from `ns` answers `ip` (replication to the asker's host).
fn wait_resolves(ns: &str, server: &str, name: &str, ip: &str) {
    wait_for(
        &format!("{name} to resolve to {ip} from {ns}"),
        Duration::from_secs(15),
        || {
            dig_with(ns, server, name, "+time=1 +tries=1")
                .addrs()
                .iter()
                .any(|a| a == ip)
                .then_some(())
        },
    );
}

/// Asserts that the agent wrote `/etc/netns/<ns>/resolv.conf` naming `gateway`; returns its path.
fn assert_resolv_conf(ns: &str, gateway: &str) -> String {
    let path = format!("/etc/netns/{ns}/resolv.conf");
    let conf = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        conf.starts_with("# vxnet")
            && conf
                .lines()
                .any(|l| l.split_whitespace().eq(["nameserver", gateway])),
        "{path}:\n{conf}"
    );
    path
}

/// A new container connected to `net` by host `host`'s agent (`extra`: connect flags); returns
/// its namespace and address.
fn attach(cluster: &mut Cluster, host: usize, net: &str, extra: &[&str]) -> (String, String) {
    let c = cluster.container();
    let mut args = vec!["network", "connect"];
    args.extend_from_slice(extra);
    args.extend([net, c.as_str()]);
    cluster.agents[host].vxnet(&args);
    let ip = cluster.ipv4_of(&c, "eth0");
    (c, ip)
}

/// How much counter `name` grew between two `stats()` snapshots.
fn grew(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let get = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
    assert!(after.contains_key(name), "no counter {name} in {after:?}");
    get(after).saturating_sub(get(before))
}

/// c1 (h1, network alpha, `--alias db`), c2 (h2, alpha), c3 (h3, beta), then c4 (h3, alpha,
/// `--name web4 --alias db`): what c2 and c3 (and h2 itself) see through their gateways, glibc
/// and ping through the resolv.conf h2's agent wrote, and that file going away on disconnect.
#[test]
fn names_are_network_scoped() {
    const TAG: &str = "yn1";
    let _etc = EtcNetns::new(TAG);
    let Some(mut cluster) = cluster_for("names_are_network_scoped", TAG, 3) else {
        return;
    };
    let (gw_a, gw_b) = ("10.51.0.1", "10.52.0.1");
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.51.0.0/24", "alpha"]);
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.52.0.0/24", "beta"]);
    let (c1, ip1) = attach(&mut cluster, 0, "alpha", &["--alias", "db"]);
    let (c2, _) = attach(&mut cluster, 1, "alpha", &[]);
    let (c3, ip3) = attach(&mut cluster, 2, "beta", &[]);
    let h2 = cluster.host_ns(1).to_string();
    let (before2, before3) = (cluster.agents[1].stats(), cluster.agents[2].stats());
    wait_resolves(&c2, gw_a, &c1, &ip1);

    // The name, the alias and NAME.NETWORK / ALIAS.NETWORK, in any case; TTL 5 s.
    let c1_dot_a = format!("{c1}.alpha");
    let c1_upper = c1.to_uppercase();
    for q in [c1.as_str(), "db", &c1_dot_a, "DB.Alpha", &c1_upper] {
        assert_addrs(&c2, gw_a, q, &[ip1.as_str()]);
    }
    let r = dig(&c2, gw_a, &c1);
    assert!(
        r.records.iter().all(|(ttl, _, _)| *ttl == 5),
        "TTL: {}",
        r.text
    );
    // Over TCP too, and from the host itself to the gateway address.
    let r = dig_with(&c2, gw_a, &c1, "+tcp +time=1 +tries=2");
    assert_eq!(r.addrs(), [ip1.as_str()], "over TCP: {}", r.text);
    assert_addrs(&h2, gw_a, &c1, &[ip1.as_str()]);
    // PTR: NAME.NETWORK.; AAAA of a known name: NOERROR, no answer.
    let r = dig(&c2, gw_a, &format!("-x {ip1}"));
    assert_eq!(r.data("PTR"), [format!("{c1}.alpha.")], "PTR: {}", r.text);
    let r = dig(&c2, gw_a, &format!("{c1} AAAA"));
    assert!(
        r.status == "NOERROR" && r.records.is_empty(),
        "AAAA: {}",
        r.text
    );

    // glibc and ping in c2 with no flags: the agent wrote c2's resolv.conf.
    let conf_path = assert_resolv_conf(&c2, gw_a);
    let out = sh_output(&format!("ip netns exec {c2} getent hosts {c1}"));
    let text = output_text(&out);
    assert_eq!(
        text.split_whitespace().next(),
        Some(ip1.as_str()),
        "getent: {text}"
    );
    let out = sh_output(&format!("ip netns exec {c2} ping -c1 -W2 {c1}"));
    assert!(
        out.status.success(),
        "ping {c1} by name: {}",
        output_text(&out)
    );

    // Scoped by the asker's networks: beta's container is unknown on alpha, alpha's on beta.
    assert_status(&c2, gw_a, &c3, "NXDOMAIN");
    assert_status(&c2, gw_a, &format!("{c3}.beta"), "NXDOMAIN");
    assert_status(&c2, gw_a, &format!("-x {ip3}"), "NXDOMAIN");
    wait_resolves(&c3, gw_b, &c3, &ip3);
    for q in [c1.as_str(), "db", &c1_dot_a] {
        assert_status(&c3, gw_b, q, "NXDOMAIN");
    }

    // A second endpoint with alias `db` (and `--name`): both addresses, the order rotating.
    let (c4, ip4) = attach(
        &mut cluster,
        2,
        "alpha",
        &["--name", "web4", "--alias", "db"],
    );
    wait_resolves(&c2, gw_a, "db", &ip4);
    assert_addrs(&c2, gw_a, "db", &[ip1.as_str(), ip4.as_str()]);
    let firsts: BTreeSet<String> = (0..8)
        .filter_map(|_| dig(&c2, gw_a, "db").addrs().first().cloned())
        .collect();
    assert_eq!(firsts.len(), 2, "the first address rotates: {firsts:?}");
    assert_addrs(&c2, gw_a, "web4", &[ip4.as_str()]);
    assert_status(&c2, gw_a, &c4, "NXDOMAIN");
    // h3 now has a resolver on alpha's gateway too; c3 (beta only) still sees nothing of alpha
    // there (an answer of any kind but an address, or none).
    let r = dig_with(&c3, gw_a, &c1, "+time=1 +tries=1");
    assert!(r.addrs().is_empty(), "c3 asked alpha's gateway: {}", r.text);

    let (after2, after3) = (cluster.agents[1].stats(), cluster.agents[2].stats());
    let queries2 = grew(&before2, &after2, "dns.queries");
    let answered2 = grew(&before2, &after2, "dns.answered");
    let nx2 = grew(&before2, &after2, "dns.nxdomain");
    let nx3 = grew(&before3, &after3, "dns.nxdomain");
    eprintln!(
        "dns scoped: h2 counted {queries2} queries, {answered2} answered, {nx2} NXDOMAIN; \
         h3 {nx3} NXDOMAIN"
    );
    assert!(queries2 >= 20 && answered2 >= 10, "h2: {after2:?}");
    assert!(
        nx2 >= 3 && nx3 >= 3,
        "NXDOMAIN counted: h2 {after2:?} h3 {after3:?}"
    );

    // Disconnect: the agent removes the sandbox's resolv.conf.
    cluster.agents[1].vxnet(&["network", "disconnect", "alpha", &c2]);
    wait_for(
        &format!("{conf_path} to go"),
        Duration::from_secs(5),
        || (!std::path::Path::new(&conf_path).exists()).then_some(()),
    );
}

/// Polls `name` from `ns` every 20 ms until NXDOMAIN, for at most 1 s after `t0`: the time it
/// was seen (the end of the dig that saw it), or the last answer.
fn poll_nxdomain(ns: &str, server: &str, name: &str, t0: Instant) -> Result<Duration, String> {
    let limit = Duration::from_secs(1);
    let mut last = String::from("(no query)");
    while t0.elapsed() <= limit {
        let r = dig_with(ns, server, name, "+time=1 +tries=1");
        let at = t0.elapsed();
        if r.status == "NXDOMAIN" {
            return Ok(at);
        }
        last = format!("{} {:?} at {at:?}", r.status, r.addrs());
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(last)
}

/// c1 on h1 and an asker on each host (alpha); c1 disconnected on h1 while the three askers
/// poll its name: each host answers NXDOMAIN within 1 s of the disconnect command's start.
#[test]
fn disconnect_is_seen_everywhere_within_1s() {
    const TAG: &str = "yn2";
    let _etc = EtcNetns::new(TAG);
    let Some(mut cluster) = cluster_for("disconnect_is_seen_everywhere_within_1s", TAG, 3) else {
        return;
    };
    let gw = "10.53.0.1";
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.53.0.0/24", "alpha"]);
    let (c1, ip1) = attach(&mut cluster, 0, "alpha", &[]);
    let askers: Vec<String> = (0..3)
        .map(|h| attach(&mut cluster, h, "alpha", &[]).0)
        .collect();
    for asker in &askers {
        wait_resolves(asker, gw, &c1, &ip1);
    }

    let c1 = c1.as_str();
    let t0 = Instant::now();
    let (seen, command) = std::thread::scope(|s| {
        let polls: Vec<_> = askers
            .iter()
            .map(|asker| s.spawn(move || poll_nxdomain(asker, gw, c1, t0)))
            .collect();
        cluster.agents[0].vxnet(&["network", "disconnect", "alpha", c1]);
        let command = t0.elapsed();
        let seen: Vec<_> = polls
            .into_iter()
            .map(|p| p.join().expect("poller"))
            .collect();
        (seen, command)
    });
    let figures: Vec<String> = seen
        .iter()
        .enumerate()
        .map(|(h, r)| match r {
            Ok(d) => format!("h{} {:.0} ms", h + 1, d.as_secs_f64() * 1e3),
            Err(last) => format!("h{} not within 1 s (last: {last})", h + 1),
        })
        .collect();
    eprintln!(
        "dns disconnect: command took {:.0} ms; NXDOMAIN (from the command's start): {}",
        command.as_secs_f64() * 1e3,
        figures.join(", ")
    );
    for (h, r) in seen.iter().enumerate() {
        assert!(
            matches!(r, Ok(d) if *d <= Duration::from_secs(1)),
            "h{}: {}",
            h + 1,
            figures.join(", ")
        );
    }
}

/// Index (0-based) of the leader `agent` knows of.
fn leader_index(agent: &Agent) -> Option<usize> {
    let name = agent.leader_name()?;
    Some(name.strip_prefix('h')?.parse::<usize>().ok()? - 1)
}

/// One container per host on alpha (alias `on-hN`); the leader and one more agent killed: the
/// survivor, leaderless, answers every name (also those of endpoints on dead hosts), then again
/// after its own restart (still without quorum).
#[test]
fn names_resolve_without_quorum_and_after_restart() {
    const TAG: &str = "yn3";
    let _etc = EtcNetns::new(TAG);
    let Some(mut cluster) = cluster_for("names_resolve_without_quorum_and_after_restart", TAG, 3)
    else {
        return;
    };
    let gw = "10.54.0.1";
    // Three voters first: with learners, the bootstrap host alone would be a quorum.
    for agent in &cluster.agents {
        wait_for(
            &format!("{} to report voter×3", agent.name),
            Duration::from_secs(20),
            || {
                let m = agent.members()?;
                (m.len() == 3 && m.iter().all(|m| m["role"] == "voter")).then_some(())
            },
        );
    }
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.54.0.0/24", "alpha"]);
    let endpoints: Vec<(String, String, String)> = (0..3)
        .map(|h| {
            let alias = format!("on-h{}", h + 1);
            let (c, ip) = attach(&mut cluster, h, "alpha", &["--alias", &alias]);
            (c, ip, alias)
        })
        .collect();
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        leader_index(&cluster.agents[0])
    });
    let survivor = (leader + 1) % 3;
    let asker = endpoints[survivor].0.clone();
    for (c, ip, _) in &endpoints {
        wait_resolves(&asker, gw, c, ip);
    }
    let check = |when: &str| {
        for (c, ip, alias) in &endpoints {
            assert_addrs(&asker, gw, c, &[ip.as_str()]);
            assert_addrs(&asker, gw, &format!("{alias}.alpha"), &[ip.as_str()]);
        }
        assert_status(&asker, gw, "nobody", "NXDOMAIN");
        eprintln!("dns without quorum: h{} answers {when}", survivor + 1);
    };

    for i in (0..3).filter(|&i| i != survivor) {
        cluster.agents[i].kill();
    }
    let agent = &cluster.agents[survivor];
    wait_for(
        &format!("{} to have no leader", agent.name),
        Duration::from_secs(15),
        || {
            let m = agent.members()?;
            m.iter().all(|m| m["leader"] != true).then_some(())
        },
    );
    check(&format!("with h{} (leader) and one more dead", leader + 1));

    cluster.agents[survivor].restart();
    cluster.wait_api(survivor);
    let ready = Instant::now();
    let (c, ip, _) = &endpoints[leader];
    wait_resolves(&asker, gw, c, ip);
    let took = ready.elapsed();
    check(&format!(
        "after its restart (first answer {:.0} ms after its API answered)",
        took.as_secs_f64() * 1e3
    ));
    let m = cluster.agents[survivor].members().expect("members");
    assert!(
        m.iter().all(|m| m["leader"] != true),
        "still no quorum: {m:?}"
    );
}

/// A stub upstream: `*.example.test` A → 192.0.2.77 (other types: NOERROR, no answer), anything
/// else NXDOMAIN; UDP and TCP on every port given. Logs `port proto qname` per query to argv[1].
const STUB_DNS: &str = r#"
import socket, struct, sys, threading
log = open(sys.argv[1], "a", buffering=1)
lock = threading.Lock()
def answer(q, port, proto):
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    name = ".".join(labels).lower()
    with lock:
        log.write(f"{port} {proto} {name}\n")
    flags = 0x8480 | (struct.unpack(">H", q[2:4])[0] & 0x0100)
    an = b""
    if not name.endswith(".example.test"):
        flags |= 3
    elif qtype == 1:
        an = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 77])
    return q[:2] + struct.pack(">HHHHH", flags, 1, 1 if an else 0, 0, 0) + q[12:i + 5] + an
def udp(s, port):
    while True:
        q, a = s.recvfrom(4096)
        try: s.sendto(answer(q, port, "udp"), a)
        except Exception as e: print("bad query:", e, file=sys.stderr)
def conn(c, port):
    f = c.makefile("rb")
    while True:
        h = f.read(2)
        if len(h) < 2: break
        r = answer(f.read(struct.unpack(">H", h)[0]), port, "tcp")
        c.sendall(struct.pack(">H", len(r)) + r)
    c.close()
def tcp(s, port):
    while True:
        c, _ = s.accept()
        threading.Thread(target=conn, args=(c, port), daemon=True).start()
for port in map(int, sys.argv[2:]):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(16)
    threading.Thread(target=udp, args=(u, port), daemon=True).start()
    threading.Thread(target=tcp, args=(t, port), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// An "outside" namespace on the underlay runs [`STUB_DNS`] on ports 53 and 5353. h1's upstream
/// is its resolv.conf (`/etc/netns/<h1>/resolv.conf`, written before it starts), h2's
/// `--dns-upstream 192.168.200.100:5353`. Network web: forwarded names resolve (UDP, TCP,
/// glibc); `--internal` network sealed: REFUSED, nothing forwarded, its own names still answer.
#[test]
fn forwarding_to_the_hosts_upstream() {
    const TAG: &str = "yn4";
    const OUTSIDE_IP: &str = "192.168.200.100";
    let _etc = EtcNetns::new(TAG);
    let options = ClusterOptions {
        hosts: 2,
        start_agents: false,
        ..ClusterOptions::default()
    };
    let Some(mut cluster) = cluster_with("forwarding_to_the_hosts_upstream", TAG, options) else {
        return;
    };
    let outside = format!("{}-out", cluster.prefix);
    cluster.add_netns(&outside);
    cluster.plug(&outside, "pout");
    sh(&format!("ip -n {outside} addr add {OUTSIDE_IP}/24 dev ul0"));
    let script = cluster.dir().join("stub_dns.py");
    let log = cluster.dir().join("stub_dns.log");
    std::fs::write(&script, STUB_DNS).expect("write stub_dns.py");
    let mut stub = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &outside, "python3"])
            .arg(&script)
            .arg(&log)
            .args(["53", "5353"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("stub DNS server");
    {
        use std::io::{BufRead, BufReader};
        let stdout = stub.child().stdout.take().expect("stdout");
        let ready = BufReader::new(stdout).lines().next().and_then(Result::ok);
        assert_eq!(ready.as_deref(), Some("listening"));
    }
    let h1_etc = format!("/etc/netns/{}", cluster.host_ns(0));
    std::fs::create_dir_all(&h1_etc).expect("create /etc/netns/<h1>");
    std::fs::write(
        format!("{h1_etc}/resolv.conf"),
        format!("nameserver {OUTSIDE_IP}\n"),
    )
    .expect("write h1's resolv.conf");
    cluster.agents[1]
        .args
        .extend(["--dns-upstream".into(), format!("{OUTSIDE_IP}:5353")]);
    cluster.start_agents();

    let (gw_web, gw_sealed) = ("10.61.0.1", "10.62.0.1");
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.61.0.0/24", "web"]);
    cluster.agents[0].vxnet(&[
        "network",
        "create",
        "--subnet",
        "10.62.0.0/24",
        "--internal",
        "sealed",
    ]);
    let (w1, _) = attach(&mut cluster, 0, "web", &[]);
    let (w2, _) = attach(&mut cluster, 1, "web", &[]);
    let (s1, _) = attach(&mut cluster, 0, "sealed", &[]);
    let (s2, s2_ip) = attach(&mut cluster, 1, "sealed", &[]);
    let before1 = cluster.agents[0].stats();
    let before2 = cluster.agents[1].stats();
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();

    // h1 (upstream from its resolv.conf, port 53): UDP, TCP, an upstream NXDOMAIN, glibc.
    assert_addrs(&w1, gw_web, "www.example.test", &["192.0.2.77"]);
    let r = dig_with(&w1, gw_web, "tcp.example.test", "+tcp +time=2 +tries=1");
    assert_eq!(r.addrs(), ["192.0.2.77"], "forwarded over TCP: {}", r.text);
    assert_status(&w1, gw_web, "nothing.invalid", "NXDOMAIN");
    assert_resolv_conf(&w1, gw_web);
    let out = sh_output(&format!(
        "ip netns exec {w1} getent hosts glibc.example.test"
    ));
    let text = output_text(&out);
    assert_eq!(
        text.split_whitespace().next(),
        Some("192.0.2.77"),
        "getent: {text}"
    );
    let seen = logged();
    for line in ["53 udp www.example.test", "53 tcp tcp.example.test"] {
        assert!(
            seen.lines().any(|l| l == line),
            "upstream saw {line:?}: {seen}"
        );
    }
    // h2 (`--dns-upstream IP:PORT`).
    assert_addrs(&w2, gw_web, "www2.example.test", &["192.0.2.77"]);
    let seen = logged();
    assert!(
        seen.lines().any(|l| l == "5353 udp www2.example.test"),
        "h2 forwards to port 5353: {seen}"
    );

    // An internal network: REFUSED and nothing sent upstream; its own names still answer.
    assert_status(&s1, gw_sealed, "sealed.example.test", "REFUSED");
    assert_addrs(&s1, gw_sealed, &s2, &[s2_ip.as_str()]);
    assert_addrs(&s1, gw_sealed, &format!("{s2}.sealed"), &[s2_ip.as_str()]);
    assert!(
        !logged().contains("sealed.example.test"),
        "forwarded for an internal network: {}",
        logged()
    );

    let after1 = cluster.agents[0].stats();
    let after2 = cluster.agents[1].stats();
    let (q1, f1) = (
        grew(&before1, &after1, "dns.queries"),
        grew(&before1, &after1, "dns.forwarded"),
    );
    let refused1 = grew(&before1, &after1, "dns.refused");
    let f2 = grew(&before2, &after2, "dns.forwarded");
    eprintln!(
        "dns forwarding: h1 counted {q1} queries, {f1} forwarded, {refused1} refused; \
         h2 {f2} forwarded"
    );
    assert!(f1 >= 3 && q1 >= 6 && refused1 >= 1, "h1: {after1:?}");
    assert!(f2 >= 1, "h2: {after2:?}");
}
