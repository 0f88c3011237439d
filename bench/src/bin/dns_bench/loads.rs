//! Starting the DNS loads from the host side: dnsperf (and its statistics), the built-in
//! generator in the load container, and the control's responder in ep1.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vxnet_testkit::netns::{Proc, prefix};

use crate::generator::Mode;
use crate::topology::Bench;

/// Port of the control responder in `ep1`.
pub const ECHO_PORT: u16 = 5300;

/// `dnsperf` with these settings.
#[derive(Clone, Copy, Debug)]
pub struct Dnsperf {
    pub clients: usize,
    pub threads: usize,
    pub outstanding: usize,
    pub secs: f64,
}

impl Dnsperf {
    fn args(&self, server: &str, file: &Path) -> Vec<String> {
        vec![
            "-s".into(),
            server.into(),
            "-d".into(),
            file.display().to_string(),
            "-c".into(),
            self.clients.to_string(),
            "-T".into(),
            self.threads.to_string(),
            "-q".into(),
            self.outstanding.to_string(),
            "-l".into(),
            format!("{}", self.secs),
            "-t".into(),
            "1".into(),
        ]
    }

    pub fn command_line(&self, bench: &Bench, file: &Path) -> String {
        format!(
            "ip netns exec {} dnsperf {}",
            bench.loadgen,
            self.args(&bench.gateway, file).join(" ")
        )
    }

    pub fn spawn(&self, bench: &Bench, file: &Path) -> Result<Proc> {
        Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", &bench.loadgen, "dnsperf"])
                .args(self.args(&bench.gateway, file))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }
}

/// The figures of dnsperf's final statistics.
pub fn parse_dnsperf(out: &Output) -> Result<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_string())
    };
    let first_number = |s: &str| -> f64 {
        s.split_whitespace()
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let Some(qps) = field("Queries per second:") else {
        bail!(
            "no statistics in dnsperf's output:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let latency = field("Average Latency (s):").unwrap_or_default();
    // "0.000967 (min 0.000021, max 0.013579)"
    let num_after = |key: &str| -> f64 {
        latency
            .split(key)
            .nth(1)
            .map(|r| {
                r.trim_start()
                    .trim_end_matches(')')
                    .split([',', ')'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .parse()
                    .unwrap_or(f64::NAN)
            })
            .unwrap_or(f64::NAN)
    };
    let ms = |s: f64| (s * 1e6).round() / 1e3;
    Ok(json!({
        "qps": first_number(&qps),
        "sent": first_number(&field("Queries sent:").unwrap_or_default()),
        "completed": first_number(&field("Queries completed:").unwrap_or_default()),
        "lost": first_number(&field("Queries lost:").unwrap_or_default()),
        "avg_ms": ms(first_number(&latency)),
        "min_ms": ms(num_after("min")),
        "max_ms": ms(num_after("max")),
        "stddev_ms": ms(first_number(&field("Latency StdDev (s):").unwrap_or_default())),
        "response_codes": field("Response codes:").unwrap_or_default(),
        "run_time_s": first_number(&field("Run time (s):").unwrap_or_default()),
    }))
}

/// Runs the built-in generator in the load container to completion.
pub fn own_load(bench: &Bench, mode: Mode, secs: f64) -> Result<Value> {
    let out = own_load_cmd(bench, mode, secs, (&bench.gateway, 53)).output()?;
    parse_own(&out)
}

/// The command that runs the built-in generator in the load container against `target`.
pub fn own_load_cmd(bench: &Bench, mode: Mode, secs: f64, target: (&str, u16)) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &bench.loadgen])
        .arg(&bench.me)
        .args([
            "__dns-load",
            target.0,
            &bench.names_arg(),
            &secs.to_string(),
            "--port",
            &target.1.to_string(),
        ]);
    match mode {
        Mode::Closed(n) => cmd.args(["--outstanding", &n.to_string()]),
        Mode::Paced(r) => cmd.args(["--rate", &r.to_string()]),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The generator's one line of JSON.
pub fn parse_own(out: &Output) -> Result<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "generator output: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Starts the control responder in ep1's namespace; returns once it is listening.
pub fn spawn_echo(bench: &Bench) -> Result<Proc> {
    use std::io::{BufRead as _, BufReader};
    let ns = format!("{}-e1", prefix("bd"));
    let mut proc = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&bench.me)
            .args(["__dns-echo", &ECHO_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let stdout = proc.child().stdout.take().context("echo stdout")?;
    let ready = BufReader::new(stdout).lines().next().transpose()?;
    if ready.as_deref() != Some("ready") {
        bail!("the control responder did not start: {ready:?}");
    }
    Ok(proc)
}
