//! Network namespaces and the processes run in them: shell commands, a switch-and-hosts
//! underlay, `vxnetd` agents, waiting for things to come up.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cleanup::{register_netns, register_pid, unregister_pid};

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
            "command failed: {cmd}\n{}{}",
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
    let _ = sh_output(&format!("ip netns del {name} 2>/dev/null"));
    sh(&format!(
        "ip netns add {name} && ip -n {name} link set lo up"
    ))?;
    Ok(())
}

/// A switch namespace `<prefix>-sw` with a bridge, and `hosts` host namespaces `<prefix>-h<i>`
/// on it, each with `ul0` = 192.168.200.`i`/24 (veth, MTU 1500). Returns the host namespaces.
pub fn build_underlay(prefix: &str, hosts: usize) -> Result<Vec<String>> {
    let sw = format!("{prefix}-sw");
    add_netns(&sw)?;
    sh(&format!(
        "ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up"
    ))?;
    (1..=hosts)
        .map(|i| {
            let host = format!("{prefix}-h{i}");
            add_netns(&host)?;
            sh(&format!(
                "ip -n {host} link add ul0 mtu 1500 type veth peer name p{i} netns {sw} \
                 && ip -n {sw} link set p{i} mtu 1500 master br0 up \
                 && ip -n {host} addr add 192.168.200.{i}/24 dev ul0 \
                 && ip -n {host} link set ul0 up"
            ))?;
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

/// How to start one `vxnetd` in host namespace `netns` (underlay 192.168.200.`index`): host 1
/// bootstraps the cluster, the others join it.
#[derive(Debug)]
pub struct AgentSpec<'a> {
    /// The agent binary.
    pub vxnetd: &'a Path,
    /// Host namespace to run in.
    pub netns: &'a str,
    /// 1-based host number: its underlay address and whether it bootstraps.
    pub index: usize,
    /// Agent (host) name.
    pub name: &'a str,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its API socket.
    pub api: &'a Path,
    /// Its log file (stdout and stderr).
    pub log: &'a Path,
    /// `RUST_LOG` when the environment sets none.
    pub default_log_level: &'a str,
    /// Extra arguments, after the standard ones.
    pub extra_args: &'a [String],
    /// Kill the agent when the thread that spawned it dies (PR_SET_PDEATHSIG), for an agent
    /// that outlives every handle to it.
    pub die_with_parent: bool,
}

impl AgentSpec<'_> {
    /// Starts the agent.
    pub fn spawn(&self) -> Result<Proc> {
        let underlay = format!("192.168.200.{}", self.index);
        let logf = std::fs::File::create(self.log)
            .with_context(|| format!("create {}", self.log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns])
            .arg(self.vxnetd)
            .args(["--name", self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--underlay", &underlay, "--api"])
            .arg(self.api);
        if self.index == 1 {
            cmd.arg("--bootstrap");
        } else {
            cmd.args(["--join", "192.168.200.1:7946"]);
        }
        cmd.args(self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| self.default_log_level.into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        if self.die_with_parent {
            // SAFETY: prctl is async-signal-safe, the only call between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        Proc::spawn(&mut cmd)
    }
}
