//! The CNI plugin `vxnet-cni`, invoked as a runtime does (`support::cni::invoke`): installed as
//! `vxnet` in a CNI bin directory, run in a host's namespace with the `CNI_*` environment and
//! the network configuration on stdin, each host's plugin talking to its own agent's API:
//!
//! ```text
//! vxnet network create --subnet 10.60.0.0/24 cninet
//! CNI_COMMAND=ADD CNI_CONTAINERID=… CNI_NETNS=/run/netns/C CNI_IFNAME=eth0 CNI_PATH=… vxnet \
//!   <<< '{"cniVersion":"1.0.0","name":"cninet","type":"vxnet","network":"cninet","socket":"…"}'
//! ```
//!
//! ADD, CHECK, DEL (idempotent), VERSION, STATUS, GC, error results, a chain with the
//! reference `portmap` plugin (`cni_portmap`), an `--internal` network and a second interface
//! in one namespace; every route a result lists must be in the namespace. Container namespaces
//! are the harness's. ADD's latency is `cni_latency`'s.
//!
//! Past 800 lines as one contract: each step runs on the attachments the steps before made.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cni_portmap::portmap_chain;
use crate::docker::Phases;
use crate::support::cni::*;
use crate::support::*;

pub(crate) const NET: &str = "cninet";
pub(crate) const SUBNET: &str = "10.60.0.0/24";
pub(crate) const GATEWAY: &str = "10.60.0.1";
/// A configuration's `name` (the runtime's name for the network).
pub(crate) const CONF_NAME: &str = "cninet";
/// Port-mapping test: the container's server port and the host port.
pub(crate) const CONTAINER_PORT: u16 = 80;
pub(crate) const HOST_PORT: u16 = 8080;
pub(crate) const BANNER: &str = "hello from a vxnet-cni container";
/// ADDs timed for the latency figure.
pub(crate) const LATENCY_ADDS: usize = 50;

/// Answers every TCP connection on the port given with [`BANNER`].
pub(crate) const SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[2].encode() + b"\n"); c.close()
"#;

/// Connects to HOST PORT and prints what it is told, or `error: …`.
pub(crate) const FETCH: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(c.recv(256).decode().strip())
except Exception as e:
    print("error:", e)
"#;

/// The plugin as each host's runtime would run it.
pub(crate) struct Cni {
    /// The installed plugin (`<bin>/vxnet`).
    pub(crate) plugin: PathBuf,
    /// The CNI bin directory.
    pub(crate) bin: PathBuf,
    /// Per host: its namespace and its agent's API socket.
    pub(crate) hosts: Vec<(String, PathBuf)>,
}

impl Cni {
    pub(crate) fn conf(&self, host: usize, version: &str) -> Value {
        netconf(version, CONF_NAME, NET, &self.hosts[host].1)
    }

    pub(crate) fn conf_on(&self, host: usize, version: &str, network: &str) -> Value {
        netconf(version, network, network, &self.hosts[host].1)
    }

    pub(crate) fn call(
        &self,
        what: &str,
        host: usize,
        command: &str,
        att: &Attachment,
        conf: &Value,
    ) -> CniOutput {
        invoke(
            &format!("{what} ({command} on h{})", host + 1),
            &self.hosts[host].0,
            &self.plugin,
            &att.env(command),
            &conf.to_string(),
        )
    }

    pub(crate) fn raw(
        &self,
        what: &str,
        host: usize,
        env: &[(&str, String)],
        stdin: &str,
    ) -> CniOutput {
        invoke(what, &self.hosts[host].0, &self.plugin, env, stdin)
    }

    /// ADD with cniVersion 1.0.0 that must succeed; the result.
    pub(crate) fn add(&self, what: &str, host: usize, att: &Attachment) -> Value {
        self.call(what, host, "ADD", att, &self.conf(host, "1.0.0"))
            .ok_json()
    }

    /// DEL (with `prev` as prevResult, as podman sends it) that must succeed with no output.
    pub(crate) fn del(&self, what: &str, host: usize, att: &Attachment, prev: Option<&Value>) {
        let conf = self.conf(host, "1.0.0");
        let conf = prev.map_or(conf.clone(), |p| with_prev_result(&conf, p));
        self.call(what, host, "DEL", att, &conf).ok_empty();
    }

    pub(crate) fn check(
        &self,
        what: &str,
        host: usize,
        att: &Attachment,
        prev: &Value,
    ) -> CniOutput {
        let version = prev["cniVersion"].as_str().unwrap_or("1.0.0");
        let conf = with_prev_result(&self.conf(host, version), prev);
        self.call(what, host, "CHECK", att, &conf)
    }
}

/// `ip -j` of `args` in namespace `ns` (an empty list when the command fails: no such link).
pub(crate) fn ip_json(ns: &str, args: &str) -> Vec<Value> {
    let out = sh_output(&format!("ip -n {ns} -j {args}"));
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The MAC of `ifname` in `ns`, if it exists.
pub(crate) fn link_mac(ns: &str, ifname: &str) -> Option<String> {
    ip_json(ns, &format!("link show dev {ifname}"))
        .first()
        .and_then(|l| l["address"].as_str().map(str::to_string))
}

/// The IPv4 addresses (`a.b.c.d/len`) on `ifname` in `ns`.
fn addrs_v4(ns: &str, ifname: &str) -> Vec<String> {
    ip_json(ns, &format!("-4 addr show dev {ifname}"))
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect()
}

/// The default routes of `ns`: (gateway, device).
pub(crate) fn default_routes(ns: &str) -> Vec<(String, String)> {
    ip_json(ns, "-4 route show default")
        .iter()
        .map(|r| {
            (
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

pub(crate) fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| {
            p.len() == 2
                && p.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
        && s != "00:00:00:00:00:00"
}

/// A vxnet network as the checks see it.
pub(crate) struct Subnet {
    /// The first three octets, with the dot (all networks here are /24).
    prefix: &'static str,
    gateway: &'static str,
    /// `--internal`: a result may leave the gateway out (no way out through it).
    internal: bool,
}

pub(crate) const MAIN: Subnet = Subnet {
    prefix: "10.60.0.",
    gateway: GATEWAY,
    internal: false,
};
/// An `--internal` network.
pub(crate) const INTERNAL_NET: &str = "cnii";
pub(crate) const INTERNAL: Subnet = Subnet {
    prefix: "10.63.0.",
    gateway: "10.63.0.1",
    internal: true,
};
/// A second network, for a second interface in one namespace.
pub(crate) const SECOND_NET: &str = "cnib";
pub(crate) const SECOND: Subnet = Subnet {
    prefix: "10.62.0.",
    gateway: "10.62.0.1",
    internal: false,
};

/// [`check_result_on`] for the first (only) attachment of a namespace to [`NET`]: it brings
/// the namespace's one default route, via the gateway.
pub(crate) fn check_add_result(res: &Value, version: &str, att: &Attachment, ns: &str) -> String {
    let address = check_result_on(res, version, att, ns, &MAIN);
    let ctx = format!("ADD result for {ns}: {res:#}");
    let routes = res["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("no routes: {ctx}"));
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "0.0.0.0/0" && r["gw"] == GATEWAY),
        "a default route via {GATEWAY}: {ctx}"
    );
    assert_eq!(
        default_routes(ns),
        vec![(GATEWAY.to_string(), att.ifname.clone())],
        "default route in {ns}"
    );
    address
}

/// Checks an ADD result on network `net` against the contract and against what is in
/// namespace `ns`: one interface in the sandbox, named CNI_IFNAME, with the result's MAC; one
/// address in the subnet, on that interface; every route the result lists is in the namespace.
/// Returns the container's address (`a.b.c.d/24`).
pub(crate) fn check_result_on(
    res: &Value,
    version: &str,
    att: &Attachment,
    ns: &str,
    net: &Subnet,
) -> String {
    let ctx = format!("ADD result for {ns}: {res:#}");
    assert_eq!(res["cniVersion"], version, "{ctx}");
    let ifaces = res["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("no interfaces: {ctx}"));
    let in_sandbox: Vec<&Value> = ifaces
        .iter()
        .filter(|i| i.get("sandbox").is_some_and(|s| s != ""))
        .collect();
    assert_eq!(in_sandbox.len(), 1, "one interface in the sandbox: {ctx}");
    let ips = res["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips: {ctx}"));
    assert_eq!(ips.len(), 1, "one address: {ctx}");
    let ip = &ips[0];
    let index = ip["interface"]
        .as_u64()
        .unwrap_or_else(|| panic!("ips[0].interface: {ctx}"));
    let iface = ifaces
        .get(index as usize)
        .unwrap_or_else(|| panic!("ips[0].interface out of range: {ctx}"));
    assert_eq!(iface["name"], att.ifname.as_str(), "{ctx}");
    assert_eq!(iface["sandbox"], att.netns.as_str(), "{ctx}");
    let mac = iface["mac"]
        .as_str()
        .unwrap_or_else(|| panic!("interface mac: {ctx}"));
    assert!(is_mac(mac), "mac {mac:?}: {ctx}");
    assert_eq!(
        link_mac(ns, &att.ifname).as_deref(),
        Some(mac),
        "the MAC of {} in {ns}: {ctx}",
        att.ifname
    );
    let address = ip["address"]
        .as_str()
        .unwrap_or_else(|| panic!("ips[0].address: {ctx}"))
        .to_string();
    let host = address
        .strip_suffix("/24")
        .unwrap_or_else(|| panic!("address {address} is not a /24: {ctx}"));
    let last = host
        .strip_prefix(net.prefix)
        .and_then(|o| o.parse::<u8>().ok())
        .unwrap_or_else(|| panic!("address {address} in {}0/24: {ctx}", net.prefix));
    assert!(
        host != net.gateway && last != 0 && last != 255,
        "address {address} is a host address of {}0/24: {ctx}",
        net.prefix
    );
    assert_eq!(
        addrs_v4(ns, &att.ifname),
        vec![address.clone()],
        "addresses of {} in {ns}: {ctx}",
        att.ifname
    );
    if !(net.internal && ip.get("gateway").is_none()) {
        assert_eq!(ip["gateway"], net.gateway, "{ctx}");
    }
    if version == "0.4.0" {
        assert_eq!(
            ip["version"], "4",
            "0.4.0 results carry ips[].version: {ctx}"
        );
    }
    let routes = res["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("no routes: {ctx}"));
    let defaults = default_routes(ns);
    for route in routes {
        if route["dst"] == "0.0.0.0/0" {
            let gw = route["gw"].as_str().unwrap_or("").to_string();
            assert!(
                defaults.contains(&(gw.clone(), att.ifname.clone())),
                "the result lists a default route via {gw}, {ns} has {defaults:?}: {ctx}"
            );
        }
    }
    assert!(res["dns"].is_object(), "dns: {ctx}");
    address
}

/// The entry of `network inspect NET` on `agent` with address `cidr`.
pub(crate) fn endpoint_by_ip(agent: &Agent, cidr: &str) -> Option<Value> {
    let net = agent.inspect(NET).unwrap_or_else(|| {
        panic!(
            "vxnet network inspect {NET} on {}: {}",
            agent.name,
            output_text(&agent.cli(&["network", "inspect", NET]))
        )
    });
    net["Containers"]
        .as_object()
        .and_then(|m| m.values().find(|e| e["IPv4Address"] == cidr).cloned())
}

/// Every endpoint of NET on `agent`, by address.
pub(crate) fn endpoint_ips(agent: &Agent) -> BTreeSet<String> {
    let net = agent.inspect(NET).expect("inspect");
    net["Containers"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|e| e["IPv4Address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (10 s) until every agent lists endpoint `cidr`; returns the entries.
pub(crate) fn wait_listed(cluster: &Cluster, cidr: &str) -> Vec<Value> {
    cluster
        .agents
        .iter()
        .map(|a| {
            wait_for(
                &format!("{cidr} in inspect on {}", a.name),
                Duration::from_secs(10),
                || endpoint_by_ip(a, cidr),
            )
        })
        .collect()
}

/// Waits (10 s) until no agent lists endpoint `cidr`.
pub(crate) fn wait_unlisted(cluster: &Cluster, cidr: &str) {
    for a in &cluster.agents {
        wait_for(
            &format!("{cidr} gone from inspect on {}", a.name),
            Duration::from_secs(10),
            || endpoint_by_ip(a, cidr).is_none().then_some(()),
        );
    }
}

/// Waits (10 s) until `ifname` is gone from `ns`.
pub(crate) fn wait_no_link(ns: &str, ifname: &str) {
    wait_for(
        &format!("{ifname} gone from {ns}"),
        Duration::from_secs(10),
        || link_mac(ns, ifname).is_none().then_some(()),
    );
}

/// What a connection from `ns` to `host:port` is told (`error: …` when it fails).
pub(crate) fn fetch(cluster: &Cluster, ns: &str, host: &str, port: u16) -> String {
    let script = cluster.dir().join("fetch.py");
    std::fs::write(&script, FETCH).expect("write fetch.py");
    let out = sh_output(&format!(
        "ip netns exec {ns} python3 {} {host} {port}",
        script.display()
    ));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
pub(crate) fn cni_plugin_contract() {
    let Some((mut phases, mut cluster, cni)) = setup("cni_plugin_contract", "cn") else {
        return;
    };
    let bin = cni.bin.clone();

    // VERSION: only CNI_COMMAND (and podman's dummies would do too).
    let out = cni.raw(
        "VERSION",
        0,
        &[("CNI_COMMAND", "VERSION".into())],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    let v = out.ok_json();
    let supported: BTreeSet<&str> = v["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("VERSION: supportedVersions: {v}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for version in SUPPORTED_VERSIONS {
        assert!(supported.contains(version), "VERSION lists {version}: {v}");
    }
    assert!(
        v["cniVersion"]
            .as_str()
            .is_some_and(|c| supported.contains(c)),
        "VERSION's cniVersion: {v}"
    );
    eprintln!("VERSION: {}", out.stdout.trim());

    // ADD on each host, through its own agent; K8S_POD_NAME names the endpoint.
    let c1 = cluster.container();
    let c2 = cluster.container();
    let mut a1 = Attachment::new(&c1, &bin);
    a1.args = "K8S_POD_NAME=web;K8S_POD_NAMESPACE=default;IgnoreUnknown=1".into();
    let a2 = Attachment::new(&c2, &bin);
    let r1 = cni.add("c1", 0, &a1);
    let ip1 = check_add_result(&r1, "1.0.0", &a1, &c1);
    let mut r2 = cni.add("c2", 1, &a2);
    let mut ip2 = check_add_result(&r2, "1.0.0", &a2, &c2);
    assert_ne!(ip1, ip2, "two containers, two addresses");
    eprintln!("ADD c1 on h1: {}", r1);
    eprintln!("ADD c2 on h2: {}", r2);
    for (i, entry) in wait_listed(&cluster, &ip1).iter().enumerate() {
        assert_eq!(entry["Host"], "h1", "h{}: c1's endpoint: {entry}", i + 1);
        assert_eq!(
            entry["Name"],
            "web",
            "h{}: K8S_POD_NAME names c1's endpoint: {entry}",
            i + 1
        );
        assert_eq!(
            entry["MacAddress"],
            r1["interfaces"][r1["ips"][0]["interface"].as_u64().unwrap_or(0) as usize]["mac"],
            "h{}: {entry}",
            i + 1
        );
    }
    for (i, entry) in wait_listed(&cluster, &ip2).iter().enumerate() {
        assert_eq!(entry["Host"], "h2", "h{}: c2's endpoint: {entry}", i + 1);
    }
    eprintln!(
        "inspect: c1 (K8S_POD_NAME=web): {}; c2 (no CNI_ARGS): {}",
        endpoint_by_ip(&cluster.agents[1], &ip1).unwrap_or_default(),
        endpoint_by_ip(&cluster.agents[0], &ip2).unwrap_or_default()
    );
    let (bare1, bare2) = (
        ip1.split('/').next().unwrap_or(""),
        ip2.split('/').next().unwrap_or(""),
    );
    cluster.wait_ping("c1 → c2 across hosts", &c1, bare2);
    cluster.assert_ping(&c1, bare2, 3, "");
    cluster.assert_ping(&c2, bare1, 3, "");
    phases.done("ADD on h1 and h2, cross-host ping");

    // CHECK: fine as added; an error once the address is gone.
    cni.check("c1", 0, &a1, &r1).ok_empty();
    cni.check("c2", 1, &a2, &r2).ok_empty();
    sh(&format!("ip -n {c2} addr flush dev eth0"));
    let out = cni.check("c2 without its address", 1, &a2, &r2);
    eprintln!("CHECK after addr flush: {}", out.summary());
    out.error();
    // The runtime's way out: DEL, then ADD again.
    cni.del("c2 (flushed)", 1, &a2, Some(&r2));
    wait_unlisted(&cluster, &ip2);
    r2 = cni.add("c2 again", 1, &a2);
    ip2 = check_add_result(&r2, "1.0.0", &a2, &c2);
    cni.check("c2 re-added", 1, &a2, &r2).ok_empty();
    let bare2 = ip2.split('/').next().unwrap_or("").to_string();
    cluster.wait_ping("c1 → c2 re-added", &c1, &bare2);
    cluster.assert_ping(&c2, bare1, 3, "");
    phases.done("CHECK, CHECK after flush, DEL and ADD again");

    // cniVersion 0.4.0: the same, in the older result format.
    let c3 = cluster.container();
    let a3 = Attachment::new(&c3, &bin);
    let conf04 = cni.conf(0, "0.4.0");
    let r3 = cni.call("c3 0.4.0", 0, "ADD", &a3, &conf04).ok_json();
    let ip3 = check_add_result(&r3, "0.4.0", &a3, &c3);
    cni.check("c3 0.4.0", 0, &a3, &r3).ok_empty();
    cni.call("c3 0.4.0", 0, "DEL", &a3, &with_prev_result(&conf04, &r3))
        .ok_empty();
    wait_unlisted(&cluster, &ip3);
    wait_no_link(&c3, "eth0");
    phases.done("cniVersion 0.4.0");

    // Errors: JSON on stdout, a non-zero exit, the code the contract gives.
    let ce = cluster.container();
    let ae = Attachment::new(&ce, &bin);
    let before = endpoint_ips(&cluster.agents[0]);
    let mut unknown = cni.conf(0, "1.0.0");
    unknown["network"] = json!("nosuchnet");
    let out = cni.call("unknown network", 0, "ADD", &ae, &unknown);
    eprintln!("ADD on an unknown network: {}", out.summary());
    let code = out.error_code();
    assert!(
        code >= 100,
        "an unknown vxnet network is a plugin-specific error (code >= 100); {}",
        out.summary()
    );
    let out = cni.raw(
        "malformed",
        0,
        &ae.env("ADD"),
        r#"{"cniVersion":"1.0.0","name":"cninet","type":"#,
    );
    eprintln!("ADD with malformed JSON: {}", out.summary());
    assert_eq!(
        out.error_code(),
        6,
        "undecodable JSON is code 6; {}",
        out.summary()
    );
    let mut missing = cni.conf(0, "1.0.0");
    missing.as_object_mut().expect("object").remove("network");
    let out = cni.call("no network field", 0, "ADD", &ae, &missing);
    eprintln!("ADD without \"network\": {}", out.summary());
    assert_eq!(
        out.error_code(),
        7,
        "a configuration without \"network\" is code 7; {}",
        out.summary()
    );
    let mut future = cni.conf(0, "1.0.0");
    future["cniVersion"] = json!("9.9.9");
    let out = cni.call("cniVersion 9.9.9", 0, "ADD", &ae, &future);
    eprintln!("ADD with cniVersion 9.9.9: {}", out.summary());
    assert_eq!(
        out.error_code(),
        1,
        "an unsupported cniVersion is code 1; {}",
        out.summary()
    );
    let mut gone = ae.clone();
    gone.netns = format!("/run/netns/{}-nonexistent", cluster.prefix);
    let out = cni.call("missing netns", 0, "ADD", &gone, &cni.conf(0, "1.0.0"));
    eprintln!("ADD on a namespace that does not exist: {}", out.summary());
    out.error();
    let mut dead = cni.conf(0, "1.0.0");
    dead["socket"] = json!(cluster.dir().join("no-agent.sock").display().to_string());
    let out = cni.call("no agent", 0, "ADD", &ae, &dead);
    eprintln!("ADD with no agent on the socket: {}", out.summary());
    out.error();
    assert_eq!(
        cluster.links(&ce),
        vec!["lo".to_string()],
        "failed ADDs left links in {ce}"
    );
    assert_eq!(
        endpoint_ips(&cluster.agents[0]),
        before,
        "failed ADDs left endpoints"
    );
    phases.done("error results");

    // STATUS (1.1.0): the agent answers and the network exists.
    let status_env = |path: &Path| {
        vec![
            ("CNI_COMMAND", "STATUS".to_string()),
            ("CNI_PATH", path.display().to_string()),
        ]
    };
    for host in 0..2 {
        cni.raw(
            "STATUS",
            host,
            &status_env(&bin),
            &cni.conf(host, "1.1.0").to_string(),
        )
        .ok_empty();
    }
    let mut status_unknown = cni.conf(0, "1.1.0");
    status_unknown["network"] = json!("nosuchnet");
    let out = cni.raw(
        "STATUS unknown network",
        0,
        &status_env(&bin),
        &status_unknown.to_string(),
    );
    eprintln!("STATUS of an unknown network: {}", out.summary());
    out.error();
    let mut status_dead = cni.conf(0, "1.1.0");
    status_dead["socket"] = dead["socket"].clone();
    let out = cni.raw(
        "STATUS no agent",
        0,
        &status_env(&bin),
        &status_dead.to_string(),
    );
    eprintln!("STATUS with no agent: {}", out.summary());
    let code = out.error_code();
    assert!(
        code == 50 || code == 51,
        "no agent: the plugin is not available (50/51); {}",
        out.summary()
    );
    phases.done("STATUS");

    // DEL: twice, then after the namespace is gone, then on an unknown network.
    cni.del("c1 first", 0, &a1, Some(&r1));
    wait_unlisted(&cluster, &ip1);
    wait_no_link(&c1, "eth0");
    cni.del("c1 second", 0, &a1, None);
    cni.del("c1 third, with prevResult", 0, &a1, Some(&r1));
    let c5 = cluster.container();
    let a5 = Attachment::new(&c5, &bin);
    let r5 = cni.add("c5", 0, &a5);
    let ip5 = check_add_result(&r5, "1.0.0", &a5, &c5);
    wait_listed(&cluster, &ip5);
    sh(&format!("ip netns del {c5}"));
    cni.del("c5 with its namespace gone", 0, &a5, Some(&r5));
    wait_unlisted(&cluster, &ip5);
    let mut del_unknown = cni.conf(0, "1.0.0");
    del_unknown["network"] = json!("nosuchnet");
    cni.call(
        "DEL on an unknown network",
        0,
        "DEL",
        &Attachment::new(&ce, &bin),
        &del_unknown,
    )
    .ok_empty();
    phases.done("DEL: twice, netns gone, unknown network");

    // GC (1.1.0) on h1: of h1's plugin-made endpoints on cninet, those not listed go; an
    // endpoint made with the CLI and h2's stay.
    let g1 = cluster.container();
    let g2 = cluster.container();
    let m1 = cluster.container();
    let ag1 = Attachment::new(&g1, &bin);
    let ag2 = Attachment::new(&g2, &bin);
    let rg1 = cni.add("g1", 0, &ag1);
    let ipg1 = check_add_result(&rg1, "1.0.0", &ag1, &g1);
    let rg2 = cni.add("g2", 0, &ag2);
    let ipg2 = check_add_result(&rg2, "1.0.0", &ag2, &g2);
    cluster.agents[0].vxnet(&["network", "connect", NET, &m1]);
    let ipm1 = format!("{}/24", cluster.ipv4_of(&m1, "eth0"));
    wait_listed(&cluster, &ipm1);
    let mut gc = cni.conf(0, "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": ag1.container_id, "ifname": "eth0"}]);
    let gc_env = vec![
        ("CNI_COMMAND", "GC".to_string()),
        ("CNI_PATH", bin.display().to_string()),
    ];
    cni.raw("GC on h1", 0, &gc_env, &gc.to_string()).ok_empty();
    wait_unlisted(&cluster, &ipg2);
    wait_no_link(&g2, "eth0");
    for agent in &cluster.agents {
        let ips = endpoint_ips(agent);
        for (what, ip) in [
            ("g1 (listed)", &ipg1),
            ("m1 (CLI)", &ipm1),
            ("c2 (on h2)", &ip2),
        ] {
            assert!(
                ips.contains(ip),
                "{}: GC removed {what} {ip}: {ips:?}",
                agent.name
            );
        }
    }
    cluster.assert_ping(&g1, &bare2, 1, "");
    cni.del("g2 after GC", 0, &ag2, Some(&rg2));
    cni.del("g1", 0, &ag1, Some(&rg1));
    cluster.agents[0].vxnet(&["network", "disconnect", NET, &m1]);
    wait_unlisted(&cluster, &ipg1);
    wait_unlisted(&cluster, &ipm1);
    phases.done("GC");

    // A chain: vxnet, then the reference portmap plugin with vxnet's result.
    let portmap = Path::new(REFERENCE_PLUGINS).join("portmap");
    if portmap.exists() {
        portmap_chain(&mut cluster, &cni, &portmap);
        phases.done("vxnet + portmap chain");
    } else {
        eprintln!(
            "skipped: the portmap chain: {} is not installed (apt-get install containernetworking-plugins)",
            portmap.display()
        );
    }

    // An --internal network: no way out, so no default route, in the namespace or the result.
    cluster.agents[0].vxnet(&[
        "network",
        "create",
        "--subnet",
        "10.63.0.0/24",
        "--internal",
        INTERNAL_NET,
    ]);
    let ci = cluster.container();
    let ai = Attachment::new(&ci, &bin);
    let conf_i = cni.conf_on(1, "1.0.0", INTERNAL_NET);
    let ri = cni.call("ci internal", 1, "ADD", &ai, &conf_i).ok_json();
    eprintln!("ADD on --internal {INTERNAL_NET}: {ri}");
    assert_eq!(
        default_routes(&ci),
        vec![],
        "{ci} on an --internal network has no default route"
    );
    let ipi = check_result_on(&ri, "1.0.0", &ai, &ci, &INTERNAL);
    cni.call(
        "ci internal",
        1,
        "DEL",
        &ai,
        &with_prev_result(&conf_i, &ri),
    )
    .ok_empty();
    wait_no_link(&ci, "eth0");
    let left = cluster.agents[1]
        .inspect(INTERNAL_NET)
        .and_then(|n| n["Containers"].as_object().map(|m| m.len()));
    assert_eq!(left, Some(0), "{INTERNAL_NET} empty after DEL of {ipi}");
    phases.done("--internal network");

    // Two attachments in one namespace: eth0 on cninet, net1 on a second network. The first
    // keeps the namespace's default route; DEL of net1 leaves eth0 alone.
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.62.0.0/24", SECOND_NET]);
    let c4 = cluster.container();
    let a4 = Attachment::new(&c4, &bin);
    let r4 = cni.add("c4 eth0", 0, &a4);
    let ip4 = check_add_result(&r4, "1.0.0", &a4, &c4);
    let mut a4b = a4.clone();
    a4b.ifname = "net1".into();
    let conf_b = cni.conf_on(0, "1.0.0", SECOND_NET);
    let r4b = cni.call("c4 net1", 0, "ADD", &a4b, &conf_b).ok_json();
    eprintln!("ADD net1 on {SECOND_NET}: {r4b}");
    let ip4b = check_result_on(&r4b, "1.0.0", &a4b, &c4, &SECOND);
    assert_eq!(
        default_routes(&c4),
        vec![(GATEWAY.to_string(), "eth0".to_string())],
        "{c4} keeps eth0's default route"
    );
    assert_eq!(addrs_v4(&c4, "eth0"), vec![ip4.clone()], "eth0 of {c4}");
    cni.check("c4 eth0", 0, &a4, &r4).ok_empty();
    let check_b = with_prev_result(&conf_b, &r4b);
    cni.call("c4 net1", 0, "CHECK", &a4b, &check_b).ok_empty();
    cni.call("c4 net1", 0, "DEL", &a4b, &check_b).ok_empty();
    wait_no_link(&c4, "net1");
    assert_eq!(
        addrs_v4(&c4, "eth0"),
        vec![ip4.clone()],
        "eth0 of {c4} after DEL of net1"
    );
    let left = cluster.agents[0]
        .inspect(SECOND_NET)
        .and_then(|n| n["Containers"].as_object().map(|m| m.len()));
    assert_eq!(left, Some(0), "{SECOND_NET} empty after DEL of {ip4b}");
    cluster.assert_ping(&c4, &bare2, 2, "");
    cni.del("c4 eth0", 0, &a4, Some(&r4));
    wait_unlisted(&cluster, &ip4);
    phases.done("two interfaces in one namespace (eth0, net1)");

    // The last one: nothing of the plugin's is left on either host.
    cni.del("c2", 1, &a2, Some(&r2));
    for agent in &cluster.agents {
        wait_for(
            &format!("{NET} empty on {}", agent.name),
            Duration::from_secs(10),
            || endpoint_ips(agent).is_empty().then_some(()),
        );
    }
    wait_no_link(&c2, "eth0");
    for i in 0..2 {
        wait_for(
            &format!("no endpoint veths on h{}", i + 1),
            Duration::from_secs(10),
            || {
                let links = cluster.links(cluster.host_ns(i));
                (!links.iter().any(|l| l.starts_with("vxv"))).then_some(())
            },
        );
    }
    phases.done("all deleted");
}

/// Two hosts with network cninet and the plugin installed, as each host's runtime runs it.
pub(crate) fn setup(test: &str, tag: &'static str) -> Option<(Phases, Cluster, Cni)> {
    let mut phases = Phases::new(tag);
    let cluster = cluster_for(test, tag, 2)?;
    let bin = cluster.dir().join("cni-bin");
    let cni = Cni {
        plugin: install_plugin(&bin),
        bin: bin.clone(),
        hosts: cluster
            .agents
            .iter()
            .map(|a| (a.netns.clone(), a.api.clone()))
            .collect(),
    };
    cluster.agents[0].vxnet(&["network", "create", "--subnet", SUBNET, NET]);
    let gw =
        cluster.agents[0].inspect(NET).expect("inspect")["IPAM"]["Config"][0]["Gateway"].clone();
    assert_eq!(
        gw.as_str().map(|g| g.split('/').next().unwrap_or(g)),
        Some(GATEWAY),
        "gateway of {NET}"
    );
    wait_for("h2 to know cninet", Duration::from_secs(10), || {
        cluster.agents[1].inspect(NET).map(drop)
    });
    phases.done("2 hosts, network cninet, plugin installed");
    Some((phases, cluster, cni))
}
