//! The topology: two hosts on a switch namespace (h1 bootstraps, h2 joins), network `dnsbench`
//! with the named endpoints `ep1..epN`, the load container and the two data-plane containers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde_json::Value;
use vxnet_testkit::agent::{AgentCmd, agent_args, wait_api, wait_members};
use vxnet_testkit::cleanup::register_dir;
use vxnet_testkit::netns::{
    Proc, add_netns, build_underlay, ipv4_of, log_tail, ping, prefix, sh, wait_for,
};

use crate::Cli;
use crate::harness;

const NETWORK: &str = "dnsbench";
const SUBNET: &str = "10.77.0.0/24";

struct AgentProc {
    name: String,
    api: PathBuf,
    proc: Proc,
}

pub struct Bench {
    vxnet: PathBuf,
    /// This binary, whose hidden subcommands run inside the containers.
    pub me: PathBuf,
    pub tmp: PathBuf,
    agents: Vec<AgentProc>,
    pub hosts: Vec<String>,
    pub gateway: String,
    /// The names queried and their addresses.
    pub names: Vec<(String, String)>,
    /// The load container (on h1).
    pub loadgen: String,
    /// The data-plane containers (h1, h2) and dp2's address.
    pub dp: [String; 2],
    pub dp2_ip: String,
}

impl Bench {
    /// `vxnet ARGS` against agent `agent`'s API; its stdout.
    fn vxnet(&self, agent: usize, args: &[&str]) -> Result<String> {
        let a = &self.agents[agent];
        harness::vxnet(&self.vxnet, &a.api, &a.name, args)
    }

    pub fn agent_pid(&self, i: usize) -> u32 {
        self.agents[i].proc.pid()
    }

    /// `vxnet stats --format json` of agent `i`, the `dns.*` counters only.
    pub fn dns_counters(&self, i: usize) -> Value {
        let text = self
            .vxnet(i, &["stats", "--format", "json"])
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let m: serde_json::Map<String, Value> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("dns."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(m)
    }

    pub fn names_arg(&self) -> String {
        self.names
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Creates a container namespace whose resolv.conf directory (written by the agent) goes too.
fn container(name: &str) -> Result<()> {
    register_dir(PathBuf::from(format!("/etc/netns/{name}")));
    add_netns(name)
}

/// Builds the topology and waits until every name resolves and dp1 reaches dp2.
pub fn build(cli: &Cli, vxnetd: &Path, vxnet: &Path, tmp: &Path) -> Result<Bench> {
    let prefix = prefix("bd");
    let hosts = build_underlay(&prefix, 2, 1500)?;
    let mut agents = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let name = format!("h{}", i + 1);
        let api = tmp.join(format!("{name}.sock"));
        let log = tmp.join(format!("{name}.log"));
        let mut args = agent_args(i + 1, &name, &tmp.join(format!("data-{name}")), &api);
        args.extend(cli.agent_args.iter().cloned());
        // Spawned from the main thread, which lives until exit: they die with us.
        let proc = AgentCmd {
            vxnetd,
            netns: host,
            args: &args,
            log: &log,
            default_log_level: "warn",
            die_with_parent: true,
        }
        .spawn()?;
        wait_api(vxnet, &api, &name)
            .map_err(|e| anyhow!("{e}\n--- log ---\n{}", log_tail(&log, 30)))?;
        agents.push(AgentProc { name, api, proc });
    }
    for a in &agents {
        wait_members(vxnet, &a.api, &a.name, 2)?;
    }
    let mut bench = Bench {
        vxnet: vxnet.to_path_buf(),
        me: std::env::current_exe()?,
        tmp: tmp.to_path_buf(),
        agents,
        hosts,
        gateway: String::new(),
        names: Vec::new(),
        loadgen: format!("{prefix}-q"),
        dp: [format!("{prefix}-d1"), format!("{prefix}-d2")],
        dp2_ip: String::new(),
    };
    bench.vxnet(0, &["network", "create", "--subnet", SUBNET, NETWORK])?;
    let inspect: Value = serde_json::from_str(&bench.vxnet(0, &["network", "inspect", NETWORK])?)?;
    bench.gateway = inspect[0]["IPAM"]["Config"][0]["Gateway"]
        .as_str()
        .context("no gateway in network inspect")?
        .to_string();
    let connect = |bench: &Bench, host: usize, ns: &str, name: &str| -> Result<String> {
        container(ns)?;
        wait_for(
            &format!("network connect {ns} on h{}", host + 1),
            Duration::from_secs(20),
            || {
                bench
                    .vxnet(host, &["network", "connect", "--name", name, NETWORK, ns])
                    .ok()
            },
        )?;
        ipv4_of(ns, "eth0")
    };
    let t = Instant::now();
    for i in 1..=cli.names {
        let name = format!("ep{i}");
        let ip = connect(&bench, 0, &format!("{prefix}-e{i}"), &name)?;
        bench.names.push((name, ip));
    }
    eprintln!(
        "dns_bench: {} endpoints connected in {:.1} s",
        cli.names,
        t.elapsed().as_secs_f64()
    );
    connect(&bench, 0, &bench.loadgen, "loadgen")?;
    connect(&bench, 0, &bench.dp[0], "dp1")?;
    bench.dp2_ip = connect(&bench, 1, &bench.dp[1], "dp2")?;
    // Every name resolves from the load container, to its address.
    for (name, ip) in &bench.names {
        wait_for(
            &format!("{name} to resolve"),
            Duration::from_secs(10),
            || {
                let out = sh(&format!(
                    "ip netns exec {} dig +short +time=1 +tries=1 @{} {name} A",
                    bench.loadgen, bench.gateway
                ))
                .ok()?;
                (out.trim() == ip).then_some(())
            },
        )?;
    }
    let (dp1, dp2_ip) = (&bench.dp[0], &bench.dp2_ip);
    wait_for("dp1 → dp2", Duration::from_secs(30), || {
        ping(dp1, dp2_ip, "-q -c 1 -W 1")
            .ok()
            .filter(|o| o.status.success())
    })?;
    Ok(bench)
}
