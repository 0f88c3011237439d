//! podman (4.3, CNI backend) with the `vxnet` CNI plugin, one podman per host
//! (`support::cni::PodmanHost`), each host's conflist naming its own agent's API socket:
//!
//! ```text
//! vxnet network create --subnet 10.61.0.0/24 vxpod
//! {"cniVersion":"1.0.0","name":"PODNET","plugins":[{"type":"vxnet","network":"vxpod","socket":"…"}]}
//! podman run -d --network PODNET --name p1 local/busybox sleep 600                      # host 1
//! podman run --rm --network PODNET --cap-add NET_RAW local/busybox ping -c 3 <p1>       # host 2
//! podman rm -f p1
//! ```
//!
//! PODNET, podman's name for the network, is `<prefix>-h<i>`: libcni caches results in
//! `/var/lib/cni/results/<PODNET>-<container id>-<ifname>` for the whole machine, so that a
//! cleanup after a failure can find this host's entries by name.
//!
//! Without podman on the machine the test prints why and passes.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docker::Phases;
use crate::support::cni::*;
use crate::support::*;

const NET: &str = "vxpod";
const SUBNET: &str = "10.61.0.0/24";
const GATEWAY: &str = "10.61.0.1";

/// The podmans first (their containers go while the agents still answer DEL), then the hosts.
struct PodmanCluster {
    podmans: Vec<PodmanHost>,
    cluster: Cluster,
}

impl Drop for PodmanCluster {
    fn drop(&mut self) {
        // Namespaces podman made that the agents still list (a container podman lost track
        // of): the podmans delete them after removing their containers.
        for (agent, podman) in self.cluster.agents.iter().zip(self.podmans.iter_mut()) {
            if let Some(net) = agent.inspect(NET)
                && let Some(entries) = net["Containers"].as_object()
            {
                for (sandbox, entry) in entries {
                    if entry["Host"] == agent.name.as_str() {
                        podman.remember_sandbox(sandbox);
                    }
                }
            }
        }
    }
}

/// The endpoints of NET on `agent`: address → entry.
fn endpoints(agent: &Agent) -> Vec<Value> {
    let net = agent
        .inspect(NET)
        .unwrap_or_else(|| panic!("vxnet network inspect {NET} on {}", agent.name));
    net["Containers"]
        .as_object()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn podman_cni_backend() {
    let test = "podman_cni_backend";
    if !require_root(test) {
        return;
    }
    if let Some(why) = podman_unavailable() {
        eprintln!("skipped: {test}: {why}");
        return;
    }
    let mut phases = Phases::new("pd");
    let cluster = Cluster::new("pd", ClusterOptions::default());
    let bin = cluster.dir().join("cni-bin");
    install_plugin(&bin);
    cluster.agents[0].vxnet(&["network", "create", "--subnet", SUBNET, NET]);
    wait_for("h2 to know vxpod", Duration::from_secs(10), || {
        cluster.agents[1].inspect(NET).map(drop)
    });
    // Declared after `cluster`: dropped before it if anything below panics.
    let mut podmans = Vec::new();
    for agent in &cluster.agents {
        podmans.push(PodmanHost::start(
            &agent.netns,
            &cluster.dir().join(format!("{}-podman", agent.name)),
            &bin,
            &format!("{}-{}", cluster.prefix, agent.name),
            NET,
            &agent.api,
        ));
    }
    let mut pc = PodmanCluster { podmans, cluster };
    phases.done("2 hosts, 2 podmans, image imported");

    // p1 on h1.
    let podnet1 = pc.podmans[0].network.clone();
    pc.podmans[0].podman_ok(&[
        "run",
        "-d",
        "--network",
        &podnet1,
        "--name",
        "p1",
        "local/busybox",
        "sleep",
        "600",
    ]);
    let sandbox = pc.podmans[0].sandbox_of("p1");
    let ip1 = pc.podmans[0].container_ip("p1");
    assert!(
        ip1.starts_with("10.61.0.") && ip1 != GATEWAY,
        "p1's address {ip1:?} is in {SUBNET}"
    );
    let addr = pc.podmans[0].podman_ok(&["exec", "p1", "ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(
        addr.contains(&format!("inet {ip1}/24")),
        "p1's eth0: {addr}"
    );
    let route = pc.podmans[0].podman_ok(&["exec", "p1", "ip", "route", "show", "default"]);
    assert!(
        route.contains(&format!("default via {GATEWAY} dev eth0")),
        "p1's default route: {route}"
    );
    let cidr1 = format!("{ip1}/24");
    for agent in &pc.cluster.agents {
        let entry = wait_for(
            &format!("p1 in inspect on {}", agent.name),
            Duration::from_secs(10),
            || {
                endpoints(agent)
                    .into_iter()
                    .find(|e| e["IPv4Address"] == cidr1.as_str())
            },
        );
        assert_eq!(
            entry["Host"], "h1",
            "{}: p1's endpoint: {entry}",
            agent.name
        );
        // podman passes CNI_ARGS K8S_POD_NAME=<container name>.
        assert_eq!(
            entry["Name"], "p1",
            "{}: p1's endpoint: {entry}",
            agent.name
        );
    }
    eprintln!("p1: {ip1}, sandbox {sandbox}");
    phases.done("podman run p1 on h1");

    // From h2, a container that pings p1 across hosts.
    let podnet2 = pc.podmans[1].network.clone();
    let ping = |count: &str| {
        pc.podmans[1].podman(&[
            "run",
            "--rm",
            "--network",
            &podnet2,
            "--cap-add",
            "NET_RAW",
            "local/busybox",
            "ping",
            "-c",
            count,
            "-W",
            "1",
            &ip1,
        ])
    };
    let start = Instant::now();
    let mut attempts = 0;
    wait_for(
        "a ping from h2's container to p1",
        Duration::from_secs(30),
        || {
            attempts += 1;
            ping("1").status.success().then_some(())
        },
    );
    let out = ping("3");
    let text = output_text(&out);
    assert!(
        out.status.success() && ping_counts(&text) == (3, 3),
        "ping -c 3 p1 from a container on h2: {text}"
    );
    eprintln!(
        "h2 → p1: first reply after {attempts} container(s), {:.1} s; ping -c 3: 3/3\n{text}",
        start.elapsed().as_secs_f64()
    );
    // The --rm containers are gone, and so are their endpoints.
    assert_eq!(
        pc.podmans[1].podman_ok(&["ps", "-aq"]),
        "",
        "h2's --rm containers are gone"
    );
    for agent in &pc.cluster.agents {
        wait_for(
            &format!("only p1 left on {}", agent.name),
            Duration::from_secs(10),
            || {
                let ips: BTreeSet<String> = endpoints(agent)
                    .iter()
                    .filter_map(|e| e["IPv4Address"].as_str().map(str::to_string))
                    .collect();
                (ips == BTreeSet::from([cidr1.clone()])).then_some(())
            },
        );
    }
    phases.done("ping p1 from h2 (podman run --rm)");

    // podman rm -f: DEL through the plugin; nothing is left.
    pc.podmans[0].podman_ok(&["rm", "-f", "-t", "0", "p1"]);
    for agent in &pc.cluster.agents {
        wait_for(
            &format!("{NET} empty on {}", agent.name),
            Duration::from_secs(10),
            || endpoints(agent).is_empty().then_some(()),
        );
    }
    assert!(
        !Path::new(&sandbox).exists(),
        "podman rm left p1's namespace {sandbox}"
    );
    wait_for("h1's endpoint veths gone", Duration::from_secs(10), || {
        let links = pc.cluster.links(pc.cluster.host_ns(0));
        (!links.iter().any(|l| l.starts_with("vxv"))).then_some(())
    });
    phases.done("podman rm -f p1");
}
