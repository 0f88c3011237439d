//! vxnetd: the vxnet host agent. Parses flags and runs [`vxnet::agent::Agent`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vxnet::agent::{Agent, AgentConfig};

#[derive(Parser, Debug)]
#[command(
    name = "vxnetd",
    version,
    about = "vxnet host agent: userspace VXLAN with a Raft control plane"
)]
struct Flags {
    /// This host's unique name in the cluster.
    #[arg(long)]
    name: String,
    /// Durable state: the Raft log and snapshots.
    #[arg(long, default_value = "/var/lib/vxnet")]
    data_dir: PathBuf,
    /// This host's VTEP (underlay) IPv4 address.
    #[arg(long)]
    underlay: Ipv4Addr,
    /// VXLAN UDP port (IANA 4789; Linux's legacy default and flannel's is 8472).
    #[arg(long, default_value_t = 4789)]
    vxlan_port: u16,
    /// Address for Raft/peer traffic (default: the underlay address, port 7946).
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// The CLI's Unix socket (mode 0600).
    #[arg(long, default_value = vxnet::api::DEFAULT_SOCKET)]
    api: PathBuf,
    /// Start a new cluster with this host as its first member.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join the cluster through any member's peer address (HOST:PORT).
    #[arg(long)]
    join: Option<String>,
    /// Join secret: peers prove knowledge of it (HMAC challenge) on every connection.
    #[arg(long, env = "VXNET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Overlay MTU (default: the underlay interface's MTU − 50).
    #[arg(long)]
    mtu: Option<u32>,
    /// Data plane worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .init();
    let config = AgentConfig {
        name: flags.name,
        data_dir: flags.data_dir,
        underlay: flags.underlay,
        vxlan_port: flags.vxlan_port,
        peer_listen: flags
            .peer_listen
            .unwrap_or(SocketAddr::new(flags.underlay.into(), 7946)),
        api: flags.api,
        bootstrap: flags.bootstrap,
        join: flags.join,
        token: flags.token,
        mtu: flags.mtu,
        workers: flags.workers.max(1),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vxnetd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(Agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("vxnetd: {e}");
            ExitCode::FAILURE
        }
    }
}
