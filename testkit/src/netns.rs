//! Network namespaces and the processes run in them: shell commands, one naming scheme, a
//! switch-and-hosts underlay, pings, waiting for things to come up.
//!
//! Topology: a switch namespace `<prefix>-sw` holding bridge `br0`; every host namespace
//! `<prefix>-h<i>` is joined to it by a veth pair (`ul0` on the host side, `p<i>` on the
//! switch) with underlay address 192.168.200.`i`/24. Veths are created inside the namespaces,
//! never in the root one, so no interface name can collide between parallel users. Addresses
//! exist only inside namespaces the harness created, and no route leads out of them.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cleanup::{
    register_netns, register_pid, remove_netns, unregister_netns, unregister_pid,
};

/// The name prefix of everything one user (a test, a topology) makes: `vx<pid%10000><tag>`.
/// Tags must be unique within a process (the tests of one binary run in parallel).
pub fn prefix(tag: &str) -> String {
    format!("vx{}{tag}", std::process::id() % 10_000)
}

/// Runs `sh -c cmd` and returns its output, whatever its exit status.
pub fn sh_output(cmd: &str) -> Result<Output> {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn sh -c {cmd}"))
}

/// Runs `sh -c cmd` and returns its stdout; an error (with its output) if it fails.
pub fn sh(cmd: &str) -> Result<String> {
    let out = sh_output(cmd)?;
    if !out.status.success() {
        bail!(
            "command failed: {cmd}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates namespace `name` (replacing a stale one of that name) with `lo` up, registered for
/// cleanup.
pub fn add_netns(name: &str) -> Result<()> {
    register_netns(name);
    remove_netns(name);
    sh(&format!(
        "ip netns add {name} && ip -n {name} link set lo up"
    ))?;
    Ok(())
}

/// Deletes namespace `name` now (killing what still runs in it) and takes it off the cleanup
/// registry.
pub fn del_netns(name: &str) {
    remove_netns(name);
    unregister_netns(name);
}

/// The switch namespace of `prefix`.
pub fn switch_ns(prefix: &str) -> String {
    format!("{prefix}-sw")
}

/// Plugs namespace `ns` into the switch of `prefix`: a veth `ul0` (MTU `mtu`, up, no address)
/// whose peer `port` is a port of the switch's bridge.
pub fn plug(prefix: &str, ns: &str, port: &str, mtu: u32) -> Result<()> {
    let sw = switch_ns(prefix);
    sh(&format!(
        "ip -n {ns} link add ul0 mtu {mtu} type veth peer name {port} netns {sw} \
         && ip -n {sw} link set {port} mtu {mtu} master br0 up \
         && ip -n {ns} link set ul0 up"
    ))?;
    Ok(())
}

/// The switch namespace `<prefix>-sw` with a bridge, and `hosts` host namespaces
/// `<prefix>-h<i>` on it, each with `ul0` = 192.168.200.`i`/24 (veth, MTU `mtu`). Returns the
/// host namespaces; all are registered for cleanup.
pub fn build_underlay(prefix: &str, hosts: usize, mtu: u32) -> Result<Vec<String>> {
    let sw = switch_ns(prefix);
    add_netns(&sw)?;
    sh(&format!(
        "ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up"
    ))?;
    (1..=hosts)
        .map(|i| {
            let host = format!("{prefix}-h{i}");
            add_netns(&host)?;
            plug(prefix, &host, &format!("p{i}"), mtu)?;
            sh(&format!("ip -n {host} addr add 192.168.200.{i}/24 dev ul0"))?;
            Ok(host)
        })
        .collect()
}

/// Calls `f` every 100 ms until it returns something, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ping -n ARGS IP` inside namespace `ns`; its output, whatever the result.
pub fn ping(ns: &str, ip: &str, args: &str) -> Result<Output> {
    sh_output(&format!("ip netns exec {ns} ping -n {args} {ip}"))
}

/// `(transmitted, received)` from ping's summary line; `None` without one.
pub fn ping_counts(output: &str) -> Option<(u32, u32)> {
    let line = output.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .map(|part| part.split_whitespace().next().unwrap_or(""))
        .map(|n| n.parse::<u32>().unwrap_or(u32::MAX));
    Some((
        numbers.next().unwrap_or(u32::MAX),
        numbers.next().unwrap_or(u32::MAX),
    ))
}

/// The IPv4 address of `ifname` in namespace `ns`.
pub fn ipv4_of(ns: &str, ifname: &str) -> Result<String> {
    let out = sh(&format!("ip -n {ns} -4 -o addr show dev {ifname}"))?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .with_context(|| format!("no IPv4 on {ifname} in {ns}: {out}"))
}

/// The last `lines` lines of a (log) file; empty if it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process, registered for cleanup, that is killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Proc(Option<Child>);

impl Proc {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        register_pid(child.id());
        Ok(Proc(Some(child)))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The child, e.g. to take its stdout or wait for it.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("live child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
            unregister_pid(child.id());
        }
    }
}
