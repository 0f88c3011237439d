//! Published ports (`vxnet network connect --publish [HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]`,
//! Docker's `-p`): a host port of the endpoint's host reaches the container's port (DNAT in the
//! agent's `inet vxnet` table) from outside, from the host itself and from containers of any
//! network on any host; a taken port is refused as a whole; mappings go with the endpoint and
//! survive a restart unchanged; bad input installs nothing.
//!
//! Two hosts and an "outside" namespace on the underlay switch (192.168.200.100, in no overlay).
//! Containers are namespaces running a server that answers on TCP and UDP ports 80 and 81 with
//! `NAME PROTO/PORT PEER`. Networks `front` and `back`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use vxnet_testkit::netns::Proc;

use crate::docker::{Phases, wait_for_or};
use crate::support::*;

pub(crate) const OUTSIDE_IP: &str = "192.168.200.100";
const H1: &str = "192.168.200.1";
const H2: &str = "192.168.200.2";
/// A second address of h1, for mappings bound to one host address.
const H1_ALT: &str = "192.168.200.11";
/// How long a change (connect, disconnect, a deleted sandbox) may take to show.
const SETTLE: Duration = Duration::from_secs(10);

/// Answers TCP and UDP on ports 80 and 81 with `NAME PROTO/PORT PEER-ADDRESS`.
const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def tcp(s, port):
    while True:
        c, a = s.accept()
        try: c.sendall(f"{name} tcp/{port} {a[0]}".encode())
        except OSError: pass
        c.close()
def udp(s, port):
    while True:
        d, a = s.recvfrom(64); s.sendto(f"{name} udp/{port} {a[0]}".encode(), a)
for port in (80, 81):
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(16)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
    threading.Thread(target=tcp, args=(t, port), daemon=True).start()
    threading.Thread(target=udp, args=(u, port), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// Asks PROTO HOST PORT; prints the answer or `error: ...` (UDP: a connected socket, so only an
/// answer from HOST:PORT counts).
const ASK: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        c = socket.create_connection((host, port), timeout=2); print(c.recv(128).decode())
    else:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(2)
        c.connect((host, port)); c.send(b"?"); print(c.recv(128).decode())
except Exception as e:
    print("error:", e)
"#;

/// Starts the server in namespace `ns`, answering as `name`; killed when dropped.
fn serve(cluster: &Cluster, ns: &str, name: &str) -> Proc {
    let script = cluster.dir().join("server.py");
    std::fs::write(&script, SERVER).expect("write server.py");
    let mut server = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(&script)
            .arg(name)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("server");
    let stdout = server.child().stdout.take().expect("stdout");
    let ready = BufReader::new(stdout).lines().next().and_then(Result::ok);
    assert_eq!(ready.as_deref(), Some("listening"), "server in {ns}");
    server
}

/// What `from` is told on `proto` at `host:port` (`error: ...` when nothing answers).
fn ask(cluster: &Cluster, from: &str, proto: &str, host: &str, port: u16) -> String {
    let script = cluster.dir().join("ask.py");
    if !script.exists() {
        std::fs::write(&script, ASK).expect("write ask.py");
    }
    let out = sh_output(&format!(
        "ip netns exec {from} python3 {} {proto} {host} {port}",
        script.display()
    ));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether `reply` is `want` (`NAME PROTO/PORT`) followed by the peer address.
fn is(reply: &str, want: &str) -> bool {
    reply.strip_prefix(want).is_some_and(|r| r.starts_with(' '))
}

/// One probe: from, protocol, host, port, and the answer wanted (`NAME PROTO/PORT`; `""`: no
/// answer, the port is closed).
type Probe<'a> = (&'a str, &'a str, &'a str, u16, &'a str);

/// Asks until `probe` gets what it wants, for at most `timeout` (zero: once); panics with the
/// last reply. The reply and how long it took.
fn settle(cluster: &Cluster, what: &str, timeout: Duration, probe: Probe) -> (String, Duration) {
    let (from, proto, host, port, want) = probe;
    let start = Instant::now();
    loop {
        let reply = ask(cluster, from, proto, host, port);
        let ok = if want.is_empty() {
            reply.starts_with("error:")
        } else {
            is(&reply, want)
        };
        if ok {
            return (reply, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: {from} → {host}:{port}/{proto}: expected {}, got {reply:?} (after {:.1} s)",
            if want.is_empty() { "no answer" } else { want },
            start.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each probe, once.
fn check(cluster: &Cluster, what: &str, probes: &[Probe]) {
    for &probe in probes {
        settle(cluster, what, Duration::ZERO, probe);
    }
}

pub(crate) fn ruleset(ns: &str) -> Value {
    vxnet_ruleset(ns)
}

/// The objects of one ruleset that the other lacks, both ways (for failure messages).
pub(crate) fn ruleset_diff(before: &Value, after: &Value) -> String {
    let items = |v: &Value| -> Vec<String> {
        v["nftables"]
            .as_array()
            .map(|a| a.iter().map(Value::to_string).collect())
            .unwrap_or_default()
    };
    let (b, a) = (items(before), items(after));
    let gone: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
    let new: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
    format!("only before: {gone:#?}\nonly after: {new:#?}")
}

/// Asserts that `ns`'s ruleset is `want`.
fn assert_ruleset(ns: &str, want: &Value, what: &str) {
    let now = ruleset(ns);
    assert!(
        &now == want,
        "{what}: the inet vxnet table of {ns} changed:\n{}",
        ruleset_diff(want, &now)
    );
}

/// `Ports` of an inspect entry, each list sorted; an absent or null `Ports` is `{}`.
pub(crate) fn ports_of(entry: &Value) -> Value {
    match entry.get("Ports") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(m)) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let mut list = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
                    list.sort_by_key(Value::to_string);
                    (k.clone(), Value::Array(list))
                })
                .collect(),
        ),
        Some(other) => other.clone(),
    }
}

/// Docker's `Ports` for `(CONTAINERPORT/PROTO, HOSTIP, HOSTPORT)` triples, lists sorted.
pub(crate) fn ports(list: &[(&str, &str, &str)]) -> Value {
    let mut m = Map::new();
    for (container, ip, port) in list {
        m.entry(container.to_string())
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("list")
            .push(json!({"HostIp": ip, "HostPort": port}));
    }
    ports_of(&json!({ "Ports": m }))
}

/// The `Containers` entries of `network` on `agent`.
fn entries(agent: &Agent, network: &str) -> Vec<Value> {
    let net = agent.inspect(network).unwrap_or_else(|| {
        panic!(
            "vxnet network inspect {network} on {}: {}",
            agent.name,
            output_text(&agent.cli(&["network", "inspect", network]))
        )
    });
    net["Containers"]
        .as_object()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default()
}

/// The entry of the endpoint with address `ip` in `network` on `agent`.
fn entry(agent: &Agent, network: &str, ip: &str) -> Option<Value> {
    let cidr = format!("{ip}/24");
    entries(agent, network)
        .into_iter()
        .find(|e| e["IPv4Address"] == cidr.as_str())
}

/// What a request must not leave behind: endpoints of both networks, `vxv` links and the
/// ruleset of h1.
#[derive(Debug, PartialEq)]
struct Footprint {
    endpoints: Vec<String>,
    links: Vec<String>,
}

fn footprint(cluster: &Cluster) -> Footprint {
    let mut endpoints: Vec<String> = ["front", "back"]
        .iter()
        .flat_map(|n| entries(&cluster.agents[0], n))
        .map(|e| e.to_string())
        .collect();
    endpoints.sort();
    let mut links: Vec<String> = cluster
        .links(cluster.host_ns(0))
        .into_iter()
        .filter(|l| l.starts_with("vxv"))
        .collect();
    links.sort();
    Footprint { endpoints, links }
}

/// Asserts that a refused or invalid request left nothing: no endpoint, no interface in the
/// sandbox, no host link, the same ruleset.
fn assert_nothing_made(cluster: &Cluster, sandbox: &str, before: &(Footprint, Value), what: &str) {
    let links = cluster.links(sandbox);
    assert_eq!(links, ["lo"], "{what}: interfaces in the sandbox {sandbox}");
    let now = footprint(cluster);
    assert_eq!(now, before.0, "{what}: endpoints or host links changed");
    assert_ruleset(cluster.host_ns(0), &before.1, what);
}

/// Connects `sandbox` to `network` on agent `host` with `--publish` `specs`; the CLI's output.
fn connect(
    cluster: &Cluster,
    host: usize,
    network: &str,
    sandbox: &str,
    specs: &[&str],
) -> std::process::Output {
    let mut args = vec!["network", "connect"];
    for spec in specs {
        args.extend(["--publish", spec]);
    }
    args.extend([network, sandbox]);
    cluster.agents[host].cli(&args)
}

/// [`connect`] that must succeed; the sandbox's address.
fn connect_ok(
    cluster: &Cluster,
    host: usize,
    network: &str,
    sandbox: &str,
    specs: &[&str],
) -> String {
    let out = connect(cluster, host, network, sandbox, specs);
    assert!(
        out.status.success(),
        "connect {network} {sandbox} --publish {specs:?} on h{}: {}\n--- agent log tail ---\n{}",
        host + 1,
        output_text(&out),
        cluster.agents[host].log_tail(30)
    );
    cluster.ipv4_of(sandbox, "eth0")
}

#[test]
fn published_ports() {
    let mut phases = Phases::new("pt");
    let Some(mut cluster) = cluster_for("published_ports", "pt", 2) else {
        return;
    };
    let h1 = cluster.host_ns(0).to_string();
    let h2 = cluster.host_ns(1).to_string();
    let out = format!("{}-out", cluster.prefix);
    cluster.add_netns(&out);
    cluster.plug(&out, "pout");
    sh(&format!("ip -n {out} addr add {OUTSIDE_IP}/24 dev ul0"));
    sh(&format!("ip -n {h1} addr add {H1_ALT}/24 dev ul0"));
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.71.0.0/24", "front"]);
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.72.0.0/24", "back"]);
    let mut servers = Vec::new();
    let mut container = |cluster: &mut Cluster, name: &str| {
        let ns = cluster.container();
        servers.push(serve(cluster, &ns, name));
        ns
    };
    let [web, f1, f2, b1, b2, x, y] =
        ["web", "f1", "f2", "b1", "b2", "x", "y"].map(|n| container(&mut cluster, n));
    phases.done("2 hosts, outside, 7 containers with servers");

    // web on h1 with every form of --publish.
    let web_specs = [
        "8080:80",
        "8081:81/udp",
        "9000-9001:80-81",
        "9100-9101:80-81/udp",
        "192.168.200.11:8082:80/tcp",
    ];
    let start = Instant::now();
    let web_ip = connect_ok(&cluster, 0, "front", &web, &web_specs);
    let connected = start.elapsed();
    let first = (&out[..], "tcp", H1, 8080, "web tcp/80");
    let (reply, took) = settle(&cluster, "first answer", SETTLE, first);
    eprintln!(
        "web {web_ip}: connect --publish {web_specs:?}: {:.2} s; the first answer at {H1}:8080 \
         {:.2} s later: {reply:?}",
        connected.as_secs_f64(),
        took.as_secs_f64()
    );
    connect_ok(&cluster, 0, "front", &f1, &[]);
    connect_ok(&cluster, 1, "front", &f2, &[]);
    connect_ok(&cluster, 0, "back", &b1, &[]);
    let b2_ip = connect_ok(&cluster, 1, "back", &b2, &[]);
    cluster.wait_ping("b1 → b2", &b1, &b2_ip);
    phases.done("connect with --publish, first answer");

    // From outside: every mapping, and nothing that is not mapped.
    let outside: &[Probe] = &[
        (&out, "tcp", H1, 8080, "web tcp/80"),
        (&out, "udp", H1, 8081, "web udp/81"),
        (&out, "tcp", H1, 9000, "web tcp/80"),
        (&out, "tcp", H1, 9001, "web tcp/81"),
        (&out, "udp", H1, 9100, "web udp/80"),
        (&out, "udp", H1, 9101, "web udp/81"),
        (&out, "tcp", H1_ALT, 8082, "web tcp/80"),
        (&out, "tcp", H1_ALT, 8080, "web tcp/80"),
    ];
    check(&cluster, "outside", outside);
    eprintln!(
        "outside is seen as: {}",
        ask(&cluster, &out, "tcp", H1, 8080)
    );
    check(
        &cluster,
        "not published (8082 is bound to .11; 8081 is udp, 8080 tcp; h2; port 80)",
        &[
            (&out, "tcp", H1, 8082, ""),
            (&out, "tcp", H1, 8081, ""),
            (&out, "udp", H1, 8080, ""),
            (&out, "tcp", H2, 8080, ""),
            (&out, "tcp", H1, 80, ""),
        ],
    );
    phases.done("outside: tcp, udp, ranges, HOSTIP");

    // From the hosts themselves, to their underlay address; from containers of both networks
    // on both hosts (f1: front on h1, a hairpin).
    let mut inside: Vec<Probe> = vec![(&h1, "tcp", H1_ALT, 8082, "web tcp/80")];
    for c in [&h1, &h2, &f1, &f2, &b1, &b2] {
        inside.push((c, "tcp", H1, 8080, "web tcp/80"));
        inside.push((c, "udp", H1, 8081, "web udp/81"));
    }
    check(&cluster, "hosts and containers", &inside);
    phases.done("the hosts and 4 containers");

    // A taken port is refused as a whole, on any network of the host, and nothing is made.
    let before = (footprint(&cluster), ruleset(&h1));
    for (network, specs) in [
        ("front", &["8080:80"][..]),
        ("back", &["8080:80"][..]),
        ("front", &["8090:80", "8080:80"][..]),
        ("front", &["8079-8080:80-81"][..]),
        ("front", &["192.168.200.1:8080:80"][..]),
        ("front", &["8081:81/udp"][..]),
        ("front", &["192.168.200.11:8082:80"][..]),
        ("front", &["0.0.0.0:8082:80"][..]),
    ] {
        let what = format!("connect {network} x --publish {specs:?}");
        let result = connect(&cluster, 0, network, &x, specs);
        let text = output_text(&result);
        eprintln!("{what}: {}", text.trim());
        assert!(!result.status.success(), "{what} was accepted: {text}");
        assert!(
            text.contains("port is already allocated"),
            "{what}: the error says `port is already allocated`: {text}"
        );
        assert_nothing_made(&cluster, &x, &before, &what);
    }
    check(
        &cluster,
        "after the refusals",
        &[(&out, "tcp", H1, 8090, ""), first],
    );
    phases.done("8 refused requests");

    // The other protocol of a taken port is free; so is the same port on another host.
    // (An explicit 0.0.0.0 is every address, as without HOSTIP.)
    let x_ip = connect_ok(
        &cluster,
        0,
        "front",
        &x,
        &["8080:80/udp", "0.0.0.0:8083:81"],
    );
    let x_udp = (&out[..], "udp", H1, 8080, "x udp/80");
    settle(&cluster, "8080/udp after 8080/tcp", SETTLE, x_udp);
    let x_any = [
        (&out[..], "tcp", H1, 8083, "x tcp/81"),
        (&out, "tcp", H1_ALT, 8083, "x tcp/81"),
    ];
    check(&cluster, "0.0.0.0:8083:81", &x_any);
    let y_ip = connect_ok(&cluster, 1, "back", &y, &["8080:80"]);
    settle(
        &cluster,
        "8080 on h2",
        SETTLE,
        (&out, "tcp", H2, 8080, "y tcp/80"),
    );
    check(
        &cluster,
        "h1's 8080 stays",
        &[first, (&b1, "tcp", H2, 8080, "y tcp/80")],
    );
    phases.done("udp of a taken tcp port, the same port on h2");

    // Inspect shows each endpoint's mappings, on both agents.
    let web_ports = ports(&[
        ("80/tcp", "0.0.0.0", "8080"),
        ("81/udp", "0.0.0.0", "8081"),
        ("80/tcp", "0.0.0.0", "9000"),
        ("81/tcp", "0.0.0.0", "9001"),
        ("80/udp", "0.0.0.0", "9100"),
        ("81/udp", "0.0.0.0", "9101"),
        ("80/tcp", H1_ALT, "8082"),
    ]);
    let expected = [
        ("front", &web_ip, web_ports),
        (
            "front",
            &x_ip,
            ports(&[("80/udp", "0.0.0.0", "8080"), ("81/tcp", "0.0.0.0", "8083")]),
        ),
        ("back", &y_ip, ports(&[("80/tcp", "0.0.0.0", "8080")])),
        ("back", &b2_ip, json!({})),
    ];
    for agent in &cluster.agents {
        let mut last = Vec::new();
        let same = wait_for_or(SETTLE, || {
            last = expected
                .iter()
                .map(|(net, ip, _)| entry(agent, net, ip).map(|e| ports_of(&e)))
                .collect();
            last.iter()
                .zip(&expected)
                .all(|(got, (_, _, want))| got.as_ref() == Some(want))
        });
        assert!(
            same,
            "{}: Ports of web, x, y, b2 in inspect: got {last:#?}\nexpected {:#?}",
            agent.name,
            expected.iter().map(|e| &e.2).collect::<Vec<_>>()
        );
    }
    let shown = entry(&cluster.agents[1], "front", &web_ip).expect("web's entry");
    eprintln!("h2 inspects web: {shown}");
    phases.done("inspect Ports on both agents");

    // Disconnect removes x's mapping: the ruleset is as before x came, the port is free again.
    cluster.agents[0].vxnet(&["network", "disconnect", "front", &x]);
    settle(
        &cluster,
        "x disconnected",
        SETTLE,
        (&out, "udp", H1, 8080, ""),
    );
    check(&cluster, "x disconnected", &[(&out, "tcp", H1, 8083, "")]);
    let listed = entry(&cluster.agents[0], "front", &x_ip);
    assert!(listed.is_none(), "x listed after disconnect: {listed:?}");
    assert_ruleset(&h1, &before.1, "after x's disconnect");
    check(&cluster, "web after x's disconnect", &[first]);
    connect_ok(&cluster, 0, "back", &x, &["8080:80/udp"]);
    settle(&cluster, "8080/udp taken again", SETTLE, x_udp);
    phases.done("disconnect closes, the port is free again");

    // A deleted sandbox: the agent disconnects it, its mapping goes.
    let z = cluster.container();
    let z_server = serve(&cluster, &z, "z");
    let z_ip = connect_ok(&cluster, 0, "front", &z, &["8085:80"]);
    settle(
        &cluster,
        "z's 8085",
        SETTLE,
        (&out, "tcp", H1, 8085, "z tcp/80"),
    );
    drop(z_server);
    sh(&format!("ip netns del {z}"));
    let gone = Instant::now();
    let mut last = String::new();
    let went = wait_for_or(SETTLE, || {
        last = ask(&cluster, &out, "tcp", H1, 8085);
        last.starts_with("error:") && entry(&cluster.agents[0], "front", &z_ip).is_none()
    });
    assert!(
        went,
        "{SETTLE:?} after deleting z's namespace: 8085 answers {last:?}, z listed: {}",
        entry(&cluster.agents[0], "front", &z_ip).is_some()
    );
    eprintln!(
        "z's namespace deleted: endpoint and 8085 gone after {:.1} s",
        gone.elapsed().as_secs_f64()
    );
    let table = sh(&format!("ip netns exec {h1} nft list table inet vxnet"));
    let numbers = table.split(|c: char| !c.is_ascii_digit());
    assert!(
        !numbers.into_iter().any(|w| w == "8085"),
        "8085 still in h1's table after z went:\n{table}"
    );
    let w = container(&mut cluster, "w");
    connect_ok(&cluster, 0, "back", &w, &["8085:80"]);
    let w_tcp = (&out[..], "tcp", H1, 8085, "w tcp/80");
    settle(&cluster, "8085 taken again", SETTLE, w_tcp);
    phases.done("deleted sandbox: mapping gone, port free again");

    // A restart: the same mappings, the same table, everything still answers.
    let mappings = |agent: &Agent| -> Vec<(String, Value)> {
        let mut all: Vec<(String, Value)> = ["front", "back"]
            .iter()
            .flat_map(|n| entries(agent, n))
            .map(|e| (e["IPv4Address"].to_string(), ports_of(&e)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let rules = ruleset(&h1);
    let before_restart = mappings(&cluster.agents[0]);
    cluster.agents[0].restart();
    cluster.wait_api(0);
    let (_, took) = settle(&cluster, "h1 restarted", Duration::from_secs(20), first);
    eprintln!(
        "h1 restarted: web answers after {:.1} s",
        took.as_secs_f64()
    );
    assert_ruleset(&h1, &rules, "after h1's restart");
    let after_restart = mappings(&cluster.agents[0]);
    assert_eq!(after_restart, before_restart, "Ports after h1's restart");
    check(&cluster, "outside after the restart", outside);
    check(&cluster, "after the restart", &[x_udp, w_tcp]);
    check(&cluster, "hosts and containers after the restart", &inside);
    // Again: the old agent's table stays in place until the new one installs its own.
    assert_ruleset(&h1, &rules, "seconds after h1's restart");
    let late = cluster.container();
    let before = (footprint(&cluster), ruleset(&h1));
    let result = connect(&cluster, 0, "front", &late, &["8080:80"]);
    let text = output_text(&result);
    assert!(
        !result.status.success() && text.contains("port is already allocated"),
        "8080 after the restart is still taken: {text}"
    );
    assert_nothing_made(&cluster, &late, &before, "8080 refused after the restart");
    let rule_count = rules["nftables"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|o| o.get("rule").is_some()).count());
    eprintln!("h1 holds {rule_count} rules in inet vxnet");
    phases.done("restart: same table, same mappings, all answer");

    // Bad input: a clear error, nothing installed.
    let bad: &[(&str, &[&str])] = &[
        ("8080", &["8080", "container port"]),
        ("0:80", &["0:80", "host port"]),
        ("8080:0", &["8080:0", "container port"]),
        ("70000:80", &["70000"]),
        ("8000-8010:80-85", &["8000-8010:80-85", "80-85", "range"]),
        ("abc:80", &["abc"]),
        ("8080:80/sctp", &["sctp"]),
        ("1.2.3:8080:80", &["1.2.3"]),
    ];
    for (spec, names) in bad {
        let what = format!("--publish {spec}");
        let result = connect(&cluster, 0, "front", &late, &[spec]);
        let text = output_text(&result);
        eprintln!("{what}: {} ({})", text.trim(), result.status);
        assert!(!result.status.success(), "{what} was accepted: {text}");
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("panicked"),
            "{what}: the CLI panicked: {text}"
        );
        assert!(
            names.iter().any(|n| lower.contains(&n.to_lowercase())),
            "{what}: the error names the problem (one of {names:?}): {text:?}"
        );
        assert_nothing_made(&cluster, &late, &before, &what);
    }
    phases.done("8 bad inputs refused, nothing installed");
}
