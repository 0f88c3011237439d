//! vxnet: the command-line client of `vxnetd`, shaped like `docker network`.
//!
//! Only the command line lives here; each command family is in `vxnet::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use vxnet::api;
use vxnet::cli::client::{Console, SocketClient};
use vxnet::cli::{capture, cluster, fdb, network, stats};
use vxnet_proto::{
    AddStaticVtep, ConnectEndpoint, CreateNetwork, DisconnectEndpoint, RemoveStaticVtep,
};

#[derive(Parser, Debug)]
#[command(
    name = "vxnet",
    version,
    about = "Manage vxnet overlay networks (like `docker network`)"
)]
struct Cli {
    /// The agent's API socket.
    #[arg(short = 'H', long = "host", env = "VXNET_HOST", default_value = api::DEFAULT_SOCKET, global = true)]
    host: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage the cluster of agents.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Manage static forwarding entries (external VTEPs such as kernel VXLAN devices).
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// Capture the frames the agent moves for a network (both directions) as pcap.
    Capture {
        /// Write the pcap to FILE (`-` for stdout, e.g. `| tshark -r -`); without it, print one
        /// line per frame.
        #[arg(short = 'w', long = "write")]
        write: Option<String>,
        /// Stop after COUNT frames.
        #[arg(short = 'c', long = "count", default_value_t = 0)]
        count: u64,
        /// Network (name, id or id prefix).
        network: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Show per-network traffic counters and drops by reason.
    Stats {
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only display network IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate the output.
        #[arg(long)]
        no_trunc: bool,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Filter output (name=, id=, driver=, label=).
        #[arg(short, long = "filter")]
        filter: Vec<String>,
    },
    /// Display detailed information on one or more networks.
    Inspect {
        /// Format the output using a Go template ({{.Name}}, {{json .IPAM}}, {{range}}...).
        #[arg(short, long)]
        format: Option<String>,
        /// Networks (name, id or id prefix).
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm {
        /// Networks (name, id or id prefix).
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove all networks without endpoints.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Connect a container (network namespace) to a network.
    Connect {
        /// IPv4 address (otherwise the next free one).
        #[arg(long)]
        ip: Option<String>,
        /// The container's DNS name on the network [default: the netns's name; a PID has none].
        #[arg(long)]
        name: Option<String>,
        /// Network-scoped alias: another DNS name of the container (repeatable; several
        /// containers may share one).
        #[arg(long)]
        alias: Vec<String>,
        /// Publish a port on this host: [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp], ranges
        /// as `8000-8010:80-90` (repeatable).
        #[arg(short, long, value_name = "MAPPING")]
        publish: Vec<String>,
        /// Network (name, id or id prefix).
        network: String,
        /// Sandbox: a name under /run/netns, a path to a netns file, or a PID.
        sandbox: String,
    },
    /// Disconnect a container from a network.
    Disconnect {
        /// Force: also remove an endpoint whose sandbox or host is gone.
        #[arg(short, long)]
        force: bool,
        /// Network (name, id or id prefix).
        network: String,
        /// Sandbox, as given to connect.
        sandbox: String,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Driver to manage the network.
    #[arg(short, long, default_value = "overlay")]
    driver: String,
    /// Subnet in CIDR format (default: a free /24 of 10.20.0.0/16).
    #[arg(long)]
    subnet: Option<String>,
    /// IPv4 gateway for the subnet (default: its first address; reserved, not yet answered).
    #[arg(long)]
    gateway: Option<String>,
    /// Allocate container IPs from a sub-range.
    #[arg(long)]
    ip_range: Option<String>,
    /// Auxiliary IPv4 addresses never given to containers (name=IP).
    #[arg(long = "aux-address")]
    aux_address: Vec<String>,
    /// VXLAN network identifier (default: the lowest free from 4096).
    #[arg(long)]
    vni: Option<u32>,
    /// Restrict external access (stored; enforced once the gateway work lands).
    #[arg(long)]
    internal: bool,
    /// Set metadata on a network (k=v).
    #[arg(long)]
    label: Vec<String>,
    /// Set driver specific options (k=v).
    #[arg(short, long = "opt")]
    opt: Vec<String>,
    /// Enable IPv6 (stored; IPv6 allocation comes later).
    #[arg(long)]
    ipv6: bool,
    /// Enable manual container attachment (always on in vxnet).
    #[arg(long)]
    attachable: bool,
    /// Network name.
    name: String,
}

impl CreateArgs {
    /// The flags as a create request; a malformed `k=v` flag is an error (`--opt` checked
    /// first, then `--aux-address`, then `--label`).
    fn request(self) -> Result<CreateNetwork> {
        let options = network::create_options(&self.opt, self.ipv6)?;
        let aux_addresses = network::key_values(&self.aux_address, "aux-address")?;
        let labels = network::key_values(&self.label, "label")?;
        Ok(CreateNetwork {
            name: self.name,
            driver: self.driver,
            subnet: self.subnet,
            gateway: self.gateway,
            ip_range: self.ip_range,
            aux_addresses,
            vni: self.vni,
            internal: self.internal,
            labels,
            options,
            ..CreateNetwork::default()
        })
    }
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// List the agents of the cluster.
    Members {
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Remove this host from the cluster.
    Leave,
    /// Remove a (dead) host and free its endpoints and addresses.
    Rm {
        /// Host name.
        name: String,
    },
    /// Print the token that lets a host join the cluster, and the command that uses it.
    JoinToken {
        /// Only print the token.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the join secret first: tokens printed before no longer let hosts join
        /// (members are unaffected).
        #[arg(long)]
        rotate: bool,
    },
    /// Manage the cluster's certificate authority (what peer certificates chain to).
    #[command(subcommand)]
    Ca(CaCmd),
}

#[derive(Subcommand, Debug)]
enum CaCmd {
    /// Start a CA rotation: a new CA, and every host re-signs its certificate with it; then,
    /// with --finish, stop trusting the previous CA.
    Rotate {
        /// Finish the rotation under way: the previous CA is no longer trusted (refused while a
        /// host still presents a certificate of it).
        #[arg(long)]
        finish: bool,
        /// With --finish: finish even while some hosts still present a certificate of the
        /// previous CA (they must then join again).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum FdbCmd {
    /// Add an external VTEP to a network (replicated to every host).
    Add {
        /// Network (name, id or id prefix).
        network: String,
        /// The VTEP's underlay address.
        #[arg(long)]
        vtep: String,
        /// An inner MAC reachable behind it.
        #[arg(long)]
        mac: Option<String>,
        /// The inner IPv4 address of that MAC (answered by ARP suppression).
        #[arg(long)]
        ip: Option<String>,
    },
    /// Remove an external VTEP entry.
    Rm {
        /// Network (name, id or id prefix).
        network: String,
        /// The VTEP's underlay address.
        #[arg(long)]
        vtep: String,
        /// The inner MAC (without it: the VTEP's flood entry).
        #[arg(long)]
        mac: Option<String>,
    },
    /// Show forwarding entries, like `bridge fdb show`.
    Show {
        /// Only this network.
        network: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let api = SocketClient::new(cli.host);
    let (mut out, mut err, mut input) = (
        std::io::stdout().lock(),
        std::io::stderr().lock(),
        std::io::stdin().lock(),
    );
    let console = &mut Console {
        out: &mut out,
        err: &mut err,
        input: &mut input,
    };
    match cli.command {
        Command::Network(cmd) => match cmd {
            NetworkCmd::Create(args) => network::create(&api, args.request()?, console),
            NetworkCmd::Ls {
                quiet,
                no_trunc,
                format,
                filter,
            } => {
                let options = network::LsOptions {
                    quiet,
                    no_trunc,
                    format,
                    filters: filter,
                };
                network::ls(&api, &options, console)
            }
            NetworkCmd::Inspect { format, networks } => {
                network::inspect(&api, format.as_deref(), &networks, console)
            }
            NetworkCmd::Rm { networks } => network::rm(&api, &networks, console),
            NetworkCmd::Prune { force } => network::prune(&api, force, console),
            NetworkCmd::Connect {
                ip,
                name,
                alias,
                publish,
                network,
                sandbox,
            } => {
                let mut mappings = Vec::new();
                for spec in &publish {
                    match vxnet::cli::ports::parse_publish(spec) {
                        Ok(m) => mappings.extend(m),
                        Err(e) => return Err(anyhow::anyhow!("invalid --publish {spec}: {e}")),
                    }
                }
                network::connect(
                    &api,
                    ConnectEndpoint {
                        network,
                        sandbox,
                        name: name.unwrap_or_default(),
                        aliases: alias,
                        requested_ipv4: ip,
                        publish: mappings,
                        ..ConnectEndpoint::default()
                    },
                )
            }
            NetworkCmd::Disconnect {
                force,
                network,
                sandbox,
            } => network::disconnect(
                &api,
                DisconnectEndpoint {
                    network,
                    sandbox,
                    force,
                    ..DisconnectEndpoint::default()
                },
            ),
        },
        Command::Cluster(cmd) => match cmd {
            ClusterCmd::Members { format } => cluster::members(&api, &format, console),
            ClusterCmd::Leave => cluster::leave(&api),
            ClusterCmd::Rm { name } => cluster::rm(&api, name),
            ClusterCmd::JoinToken { quiet, rotate } => {
                cluster::join_token(&api, quiet, rotate, console)
            }
            ClusterCmd::Ca(CaCmd::Rotate { finish, force }) => {
                cluster::ca_rotate(&api, finish, force, console)
            }
        },
        Command::Fdb(cmd) => match cmd {
            FdbCmd::Add {
                network,
                vtep,
                mac,
                ip,
            } => fdb::add(
                &api,
                AddStaticVtep {
                    network,
                    vtep,
                    mac,
                    ipv4: ip,
                },
            ),
            FdbCmd::Rm { network, vtep, mac } => fdb::rm(
                &api,
                RemoveStaticVtep {
                    network,
                    vtep,
                    mac,
                    ipv4: None,
                },
            ),
            FdbCmd::Show { network } => fdb::show(&api, network, console),
        },
        Command::Stats { format } => stats::show(&api, &format, console),
        Command::Capture {
            write,
            count,
            network,
        } => capture::run(&api, network, count, write.as_deref(), console),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "vxnet",
                console.out,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
