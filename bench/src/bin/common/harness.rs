//! Helpers the namespace benchmarks `overlay_bench` and `dns_bench` share. Each includes this
//! file as a module of its own (`#[path = "../common/harness.rs"] mod harness;`), so everything
//! here must be used by both (a helper only one of them needs would be dead code in the other).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Result, bail};
use vxnet_testkit::agent::vxnet_cli;
use vxnet_testkit::netns::ping;

/// Fails naming those of `tools` that are not on PATH, and the apt `packages` that bring them.
pub fn require_tools(tools: &[&str], packages: &str) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (apt-get install -y {packages})",
            missing.join(" ")
        );
    }
    Ok(())
}

/// `vxnet ARGS` (the CLI at `cli`) against the API socket `api` of the agent named `agent`; its
/// stdout, or an error with all it printed.
pub fn vxnet(cli: &Path, api: &Path, agent: &str, args: &[&str]) -> Result<String> {
    let out = vxnet_cli(cli, api, args)?;
    if !out.status.success() {
        bail!(
            "vxnet {} on {}: {}{}",
            args.join(" "),
            agent,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `count` pings of `dst` from namespace `ns`, `interval_s` apart (1 s deadline each): the
/// round-trip times in µs, sorted; an error with ping's output if none came back.
pub fn ping_rtts_us(ns: &str, dst: &str, count: u32, interval_s: f64) -> Result<Vec<f64>> {
    let out = ping(ns, dst, &format!("-c {count} -i {interval_s} -W 1"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut us: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if us.is_empty() {
        bail!("no replies\n{text}");
    }
    us.sort_by(f64::total_cmp);
    Ok(us)
}
