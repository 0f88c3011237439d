//! `vxnetd` agents in host namespaces and the `vxnet` CLI against them. Binaries are passed in.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::{Proc, wait_for};

/// The peer port every agent listens on and host 1 is joined at.
pub const PEER_PORT: u16 = 7946;

/// The standard command line of agent `name` on host `index` (1-based; underlay
/// 192.168.200.`index`): host 1 bootstraps the cluster, the others join it.
pub fn agent_args(index: usize, name: &str, data_dir: &Path, api: &Path) -> Vec<String> {
    let underlay = format!("192.168.200.{index}");
    let mut args = vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--underlay".into(),
        underlay.clone(),
        "--peer-listen".into(),
        format!("{underlay}:{PEER_PORT}"),
        "--api".into(),
        api.display().to_string(),
    ];
    if index == 1 {
        args.push("--bootstrap".into());
    } else {
        args.extend(["--join".into(), format!("192.168.200.1:{PEER_PORT}")]);
    }
    // A bare secret, which this release and the previous one both take (the upgrade test runs
    // both): it keys the join proofs, and the previous release's handshake.
    args.extend(["--token".into(), TEST_TOKEN.into()]);
    args
}

/// The join secret every test cluster is started with.
pub const TEST_TOKEN: &str = "vxnet-test-secret";

/// How to start one agent process.
#[derive(Debug)]
pub struct AgentCmd<'a> {
    /// The `vxnetd` binary.
    pub vxnetd: &'a Path,
    /// Host namespace to run in.
    pub netns: &'a str,
    /// Its arguments (see [`agent_args`]).
    pub args: &'a [String],
    /// Its log file (stdout and stderr), truncated.
    pub log: &'a Path,
    /// `RUST_LOG` when the environment sets none.
    pub default_log_level: &'a str,
    /// Kill the agent when the thread that spawned it dies (PR_SET_PDEATHSIG), for an agent
    /// that outlives every handle to it. Not for agents spawned by short-lived threads (tests).
    pub die_with_parent: bool,
}

impl AgentCmd<'_> {
    /// Starts the agent in its host namespace (`ip netns exec NETNS vxnetd ARGS`).
    pub fn spawn(&self) -> Result<Proc> {
        self.spawn_in(None)
    }

    /// Starts the agent in the mount and network namespaces of process `pid`
    /// (`nsenter -t PID -m -n vxnetd ARGS`; nsenter execs, so the process is the agent), e.g. a
    /// [`crate::docker::DockerHost`]'s holder, whose mount namespace has dockerd's plugin
    /// directory. `pid` must be in namespace `netns`.
    pub fn spawn_entering(&self, pid: u32) -> Result<Proc> {
        if !crate::docker::pid_in_netns(pid, self.netns)? {
            anyhow::bail!("pid {pid} is not in network namespace {}", self.netns);
        }
        self.spawn_in(Some(pid))
    }

    fn spawn_in(&self, enter: Option<u32>) -> Result<Proc> {
        let logf = std::fs::File::create(self.log)
            .with_context(|| format!("create {}", self.log.display()))?;
        let mut cmd = match enter {
            None => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", self.netns]);
                cmd
            }
            Some(pid) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg("-t").arg(pid.to_string()).args(["-m", "-n"]);
                cmd
            }
        };
        cmd.arg(self.vxnetd)
            .args(self.args)
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

/// Runs the `vxnet` CLI (`cli`) against the agent listening on `api`.
pub fn vxnet_cli(cli: &Path, api: &Path, args: &[&str]) -> Result<Output> {
    Command::new(cli)
        .arg("-H")
        .arg(api)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {}", cli.display()))
}

/// Waits (30 s) until agent `name` answers `cluster members` on `api`.
pub fn wait_api(cli: &Path, api: &Path, name: &str) -> Result<()> {
    wait_for(&format!("{name} API"), Duration::from_secs(30), || {
        vxnet_cli(cli, api, &["cluster", "members"])
            .ok()
            .filter(|o| o.status.success())
            .map(drop)
    })
}

/// Waits (60 s) until agent `name` lists `n` members.
pub fn wait_members(cli: &Path, api: &Path, name: &str, n: usize) -> Result<()> {
    wait_for(
        &format!("{name} to see {n} members"),
        Duration::from_secs(60),
        || {
            let out = vxnet_cli(cli, api, &["cluster", "members", "--format", "json"]).ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            (out.status.success() && text.matches("\"name\"").count() == n).then_some(())
        },
    )
}
