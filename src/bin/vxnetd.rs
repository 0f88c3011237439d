//! vxnetd: the vxnet host agent. Parses flags (over an optional config file) and runs
//! [`vxnet::agent::Agent`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vxnet::agent::Agent;
use vxnet::config::Settings;

#[derive(Parser, Debug)]
#[command(
    name = "vxnetd",
    version,
    about = "vxnet host agent: userspace VXLAN with a Raft control plane"
)]
struct Flags {
    /// A TOML file with any of the settings below (same names); flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This host's unique name in the cluster.
    #[arg(long)]
    name: Option<String>,
    /// Durable state: the Raft log and snapshots [default: /var/lib/vxnet].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This host's VTEP (underlay) IPv4 address.
    #[arg(long)]
    underlay: Option<Ipv4Addr>,
    /// VXLAN UDP port: IANA 4789; Linux's legacy default (flannel's) is 8472 [default: 4789].
    #[arg(long)]
    vxlan_port: Option<u16>,
    /// Address for Raft/peer traffic [default: the underlay address, port 7946].
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// The CLI's Unix socket, mode 0600 [default: /run/vxnet/vxnet.sock].
    #[arg(long)]
    api: Option<PathBuf>,
    /// Start a new cluster with this host as its first member (ignored once the data dir has state).
    #[arg(long)]
    bootstrap: bool,
    /// Join the cluster through any member's peer address, HOST:PORT (ignored once the data dir has state).
    #[arg(long)]
    join: Option<String>,
    /// Join token (`vxnet cluster join-token` on a member prints it) or a shared secret. With
    /// --join it is required; with --bootstrap it is optional (a secret is generated).
    #[arg(long, env = "VXNET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Lifetime of the node certificates this host signs, in seconds [default: 90 days]
    /// (tests: renewal happens at 2/3 of it).
    #[arg(long, hide = true, value_name = "SECONDS")]
    cert_lifetime: Option<u64>,
    /// Overlay MTU [default: the underlay interface's MTU − 50].
    #[arg(long)]
    mtu: Option<u32>,
    /// Data plane worker threads [default: 2].
    #[arg(long)]
    workers: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// TAP/UDP offloads (TSO, GSO, GRO) [default: on]; off is the plain one-frame-per-syscall path.
    #[arg(long, value_enum)]
    offload: Option<vxnet::config::Offload>,
    /// Microseconds a data plane worker keeps polling after its last packet before it sleeps,
    /// at most 80% of its time, and only while traffic is sparse (bulk streams never poll)
    /// [default: 100]; 0 sleeps at once (least CPU, more latency).
    #[arg(long, value_name = "MICROSECONDS")]
    busy_poll: Option<u64>,
    /// Serve Docker's remote network and IPAM driver protocol on this Unix socket; the driver's
    /// name is the file's stem (`/run/docker/plugins/vxnet.sock`: `docker network create -d vxnet
    /// --ipam-driver vxnet ...`).
    #[arg(long, value_name = "PATH")]
    docker_plugin: Option<PathBuf>,
    /// Where the embedded resolver forwards names outside vxnet: IP or IP:PORT (repeatable)
    /// [default: the nameservers of /etc/resolv.conf, re-read when it changes].
    #[arg(long, value_name = "ADDR")]
    dns_upstream: Vec<String>,
    /// Test builds: panic at SITE (`raft`, `reconcile`) after --fault-after-ms.
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true, value_name = "SITE")]
    fault_panic: Option<String>,
    /// Test builds: when the injected fault fires.
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true, default_value_t = 0)]
    fault_after_ms: u64,
}

/// The log filter without RUST_LOG.
const DEFAULT_LOG: &str = "info,hickory_server=error,hickory_proto=error,hickory_net=error";

fn main() -> ExitCode {
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // hickory's server logs every DNS query at info and every undeliverable answer
                // at warn: the resolver's counters (`vxnet stats`) say it without a write per
                // query (RUST_LOG=hickory_server=info brings them back).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_ansi(false)
        .init();
    vxnet::fault::exit_on_panic();
    #[cfg(feature = "fault-injection")]
    if let Some(site) = &flags.fault_panic {
        vxnet::fault::arm_panic(site, std::time::Duration::from_millis(flags.fault_after_ms));
    }
    let file = match &flags.config {
        Some(path) => match Settings::from_file(path) {
            Ok(settings) => settings,
            Err(e) => return fail(&e),
        },
        None => Settings::default(),
    };
    let from_flags = Settings {
        name: flags.name,
        data_dir: flags.data_dir,
        underlay: flags.underlay,
        vxlan_port: flags.vxlan_port,
        peer_listen: flags.peer_listen,
        api: flags.api,
        bootstrap: flags.bootstrap.then_some(true),
        join: flags.join,
        token: flags.token,
        mtu: flags.mtu,
        workers: flags.workers,
        metrics: flags.metrics,
        offload: flags.offload,
        busy_poll: flags.busy_poll,
        docker_plugin: flags.docker_plugin,
        dns_upstream: (!flags.dns_upstream.is_empty()).then_some(flags.dns_upstream),
    };
    let mut config = match from_flags.over(file).into_agent_config() {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    if let Some(secs) = flags.cert_lifetime {
        config.cert_lifetime = std::time::Duration::from_secs(secs.max(1));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(Agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once logging is up, one timestamped line says it all.
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("vxnetd: {e}");
    ExitCode::FAILURE
}
