//! The three topologies measured side by side, each two hosts on an underlay with one
//! container per host: no overlay (routed), kernel VXLAN, vxnet agents.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use vxnet_testkit::agent::{AgentCmd, agent_args, wait_api, wait_members};
use vxnet_testkit::netns::{
    Proc, add_netns, build_underlay, ipv4_of, log_tail, ping, plug, prefix, sh, wait_for,
};

use crate::harness;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    NoOverlay,
    KernelVxlan,
    Vxnet,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::NoOverlay, Kind::KernelVxlan, Kind::Vxnet];

    pub fn name(self) -> &'static str {
        match self {
            Kind::NoOverlay => "no-overlay",
            Kind::KernelVxlan => "kernel-vxlan",
            Kind::Vxnet => "vxnet",
        }
    }

    /// The tag in its namespace names.
    fn tag(self) -> &'static str {
        match self {
            Kind::NoOverlay => "bn",
            Kind::KernelVxlan => "bk",
            Kind::Vxnet => "bv",
        }
    }
}

pub struct Agent {
    pub name: String,
    api: PathBuf,
    proc: Proc,
}

/// The address of the "outside" server of the egress measurement (vxnet only): a namespace on
/// the underlay switch, in no overlay.
pub const OUTSIDE_IP: &str = "192.168.200.100";

pub struct Topo {
    pub kind: Kind,
    /// The outside namespace, where the topology has a way out of its overlay.
    pub outside: Option<String>,
    pub hosts: Vec<String>,
    pub containers: [String; 2],
    /// Container 2's address (the target of every measurement).
    pub dst: String,
    pub agents: Vec<Agent>,
    vxnet_cli: PathBuf,
}

/// Binaries and places a build needs.
pub struct Paths {
    pub vxnetd: PathBuf,
    pub vxnet: PathBuf,
    pub agent_args: Vec<String>,
    /// This binary, whose hidden subcommands run inside the containers.
    pub me: PathBuf,
    pub tmp: PathBuf,
}

impl Topo {
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().map(|a| a.proc.pid()).collect()
    }

    /// `vxnet ARGS` against agent `agent`'s API; its stdout.
    pub fn vxnet(&self, agent: usize, args: &[&str]) -> Result<String> {
        let a = &self.agents[agent];
        harness::vxnet(&self.vxnet_cli, &a.api, &a.name, args)
    }

    /// Per-interface counters (drops!) of every host and container namespace, for the record.
    pub fn link_stats(&self) -> Value {
        let mut per_ns = serde_json::Map::new();
        for ns in self.hosts.iter().chain(&self.containers) {
            let text = sh(&format!("ip -n {ns} -s -j link show")).unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let brief: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    json!({
                        "ifname": l["ifname"], "mtu": l["mtu"],
                        "rx": l["stats64"]["rx"], "tx": l["stats64"]["tx"],
                    })
                })
                .collect();
            per_ns.insert(ns.clone(), Value::Array(brief));
        }
        Value::Object(per_ns)
    }

    /// `vxnet stats` of each agent (or the error), for the record.
    pub fn vxnet_stats(&self) -> serde_json::Map<String, Value> {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let s = self
                    .vxnet(i, &["stats"])
                    .unwrap_or_else(|e| format!("{e:#}"));
                (a.name.clone(), Value::String(s))
            })
            .collect()
    }
}

/// Builds topology `kind` and waits until container 1 reaches container 2.
pub fn build(kind: Kind, paths: &Paths) -> Result<Topo> {
    let prefix = prefix(kind.tag());
    let hosts = build_underlay(&prefix, 2, 1500)?;
    let containers = [format!("{prefix}-c1"), format!("{prefix}-c2")];
    for c in &containers {
        add_netns(c)?;
    }
    let mut topo = Topo {
        kind,
        outside: None,
        hosts: hosts.clone(),
        containers: containers.clone(),
        dst: String::new(),
        agents: Vec::new(),
        vxnet_cli: paths.vxnet.clone(),
    };
    match kind {
        Kind::NoOverlay => {
            for i in 1..=2 {
                let (h, c) = (&hosts[i - 1], &containers[i - 1]);
                let peer = 3 - i;
                sh(&format!(
                    "ip -n {c} link add eth0 type veth peer name vc0 netns {h} \
                     && ip -n {c} addr add 10.99.{i}.2/24 dev eth0 && ip -n {c} link set eth0 up \
                     && ip -n {h} addr add 10.99.{i}.1/24 dev vc0 && ip -n {h} link set vc0 up \
                     && ip -n {c} route add 10.99.0.0/16 via 10.99.{i}.1 \
                     && ip -n {h} route add 10.99.{peer}.0/24 via 192.168.200.{peer} \
                     && ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1"
                ))?;
            }
            topo.dst = "10.99.2.2".into();
        }
        Kind::KernelVxlan => {
            let mac = |i: usize| format!("02:00:0a:63:00:{i:02x}");
            for i in 1..=2 {
                let (h, c) = (&hosts[i - 1], &containers[i - 1]);
                let peer = 3 - i;
                sh(&format!(
                    "ip -n {h} link add vx0 type vxlan id 42 dstport 4789 local 192.168.200.{i} \
                       dev ul0 nolearning \
                     && ip -n {h} link add br0 type bridge \
                     && ip -n {h} link set vx0 master br0 \
                     && ip -n {c} link add eth0 type veth peer name vc0 netns {h} \
                     && ip -n {h} link set vc0 mtu 1450 master br0 \
                     && ip -n {h} link set vx0 up && ip -n {h} link set vc0 up \
                     && ip -n {h} link set br0 up \
                     && ip -n {c} link set eth0 address {m} mtu 1450 \
                     && ip -n {c} addr add 10.99.0.{a}/24 dev eth0 && ip -n {c} link set eth0 up \
                     && bridge -n {h} fdb append 00:00:00:00:00:00 dev vx0 dst 192.168.200.{peer} \
                     && bridge -n {h} fdb append {pm} dev vx0 dst 192.168.200.{peer}",
                    m = mac(i),
                    a = i + 1,
                    pm = mac(peer),
                ))?;
            }
            topo.dst = "10.99.0.3".into();
        }
        Kind::Vxnet => build_vxnet(&mut topo, paths)?,
    }
    // Reachability (the first vxnet packet may wait for the remote host's apply).
    let c1 = &containers[0];
    let dst = topo.dst.clone();
    wait_for(
        &format!("{} reachability", kind.name()),
        Duration::from_secs(30),
        || {
            ping(c1, &dst, "-q -c 1 -W 1")
                .ok()
                .filter(|o| o.status.success())
        },
    )?;
    Ok(topo)
}

/// Starts the two agents, waits for the cluster, creates the network and connects both
/// containers to it.
fn build_vxnet(topo: &mut Topo, paths: &Paths) -> Result<()> {
    for (i, host) in topo.hosts.iter().enumerate() {
        let name = format!("h{}", i + 1);
        let api = paths.tmp.join(format!("{name}.sock"));
        let log = paths.tmp.join(format!("{name}.log"));
        let data_dir = paths.tmp.join(format!("vxnet-{name}"));
        let mut args = agent_args(i + 1, &name, &data_dir, &api);
        args.extend(paths.agent_args.iter().cloned());
        let proc = AgentCmd {
            vxnetd: &paths.vxnetd,
            netns: host,
            args: &args,
            log: &log,
            default_log_level: "info",
            die_with_parent: false,
        }
        .spawn()?;
        wait_api(&paths.vxnet, &api, &name)
            .map_err(|e| anyhow!("{e}\n--- log ---\n{}", log_tail(&log, 30)))?;
        topo.agents.push(Agent { name, api, proc });
    }
    for agent in &topo.agents {
        wait_members(&paths.vxnet, &agent.api, &agent.name, 2)?;
    }
    topo.vxnet(
        0,
        &["network", "create", "--subnet", "10.99.0.0/24", "vxbench"],
    )?;
    for (i, c) in topo.containers.iter().enumerate() {
        // The network is created through h1; h2 may need a moment to apply it.
        wait_for(
            &format!("network connect on h{}", i + 1),
            Duration::from_secs(20),
            || topo.vxnet(i, &["network", "connect", "vxbench", c]).ok(),
        )?;
    }
    topo.dst = ipv4_of(&topo.containers[1], "eth0")?;
    // The outside of the egress measurement: on the switch, in no overlay.
    let prefix = prefix(topo.kind.tag());
    let outside = format!("{prefix}-out");
    add_netns(&outside)?;
    plug(&prefix, &outside, "pout", 1500)?;
    sh(&format!("ip -n {outside} addr add {OUTSIDE_IP}/24 dev ul0"))?;
    topo.outside = Some(outside);
    Ok(())
}
