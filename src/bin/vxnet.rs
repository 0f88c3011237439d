//! vxnet: the command-line client of `vxnetd`, shaped like `docker network`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use vxnet::api;
use vxnet::cli::format::{matches_filters, network_json, network_ls_json, short_id, table};
use vxnet::cli::template::Template;
use vxnet_proto::{
    AddStaticVtep, ApiRequest, ApiResponse, ConnectEndpoint, CreateNetwork, DisconnectEndpoint,
    Empty, NamesRequest, NetworkListRequest, RemoveHost, RemoveStaticVtep,
    api_request::Kind as Req, api_response::Kind as Resp, response::Kind as Applied,
};

/// How long the CLI waits for the agent (a write needs a Raft commit; a minority side refuses
/// after its own timeout, which is shorter).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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
        /// Network-scoped alias (stored; name resolution comes with the DNS work).
        #[arg(long)]
        alias: Vec<String>,
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

fn key_values(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ if what == "label" && !kv.is_empty() && !kv.contains('=') => {
                Ok((kv.clone(), String::new()))
            }
            _ => Err(anyhow!("invalid {what} {kv:?}: expected key=value")),
        })
        .collect()
}

struct Client {
    socket: PathBuf,
}

impl Client {
    fn call(&self, kind: Req) -> Result<Resp> {
        let response: ApiResponse =
            api::call(&self.socket, &ApiRequest { kind: Some(kind) }, CALL_TIMEOUT)?;
        match response.kind {
            Some(Resp::Error(failure)) => bail!("Error response from daemon: {}", failure.message),
            Some(kind) => Ok(kind),
            None => bail!("the daemon sent an empty response"),
        }
    }

    fn networks(&self, names: Vec<String>) -> Result<vxnet_proto::NetworkList> {
        let kind = if names.is_empty() {
            Req::NetworkList(NetworkListRequest {
                filters: Vec::new(),
            })
        } else {
            Req::NetworkInspect(NamesRequest { names })
        };
        match self.call(kind)? {
            Resp::Networks(list) => Ok(list),
            other => bail!("unexpected response from daemon: {other:?}"),
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let client = Client { socket: cli.host };
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Network(cmd) => network(&client, cmd, &mut out),
        Command::Cluster(cmd) => cluster(&client, cmd, &mut out),
        Command::Fdb(cmd) => fdb(&client, cmd, &mut out),
        Command::Stats { format } => stats(&client, &format, &mut out),
        Command::Capture {
            write,
            count,
            network,
        } => capture(&client, network, count, write),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "vxnet",
                &mut out,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn network(client: &Client, cmd: NetworkCmd, out: &mut impl Write) -> Result<ExitCode> {
    match cmd {
        NetworkCmd::Create(args) => {
            let mut options = key_values(&args.opt, "option")?;
            if args.ipv6 {
                options.insert("com.docker.network.enable_ipv6".into(), "true".into());
            }
            let request = CreateNetwork {
                name: args.name,
                driver: args.driver,
                subnet: args.subnet,
                gateway: args.gateway,
                ip_range: args.ip_range,
                aux_addresses: key_values(&args.aux_address, "aux-address")?,
                vni: args.vni,
                internal: args.internal,
                labels: key_values(&args.label, "label")?,
                options,
                ..CreateNetwork::default()
            };
            match client.call(Req::NetworkCreate(request))? {
                Resp::Applied(vxnet_proto::Response {
                    kind: Some(Applied::NetworkCreated(n)),
                }) => {
                    writeln!(out, "{}", n.id)?;
                }
                other => bail!("unexpected response from daemon: {other:?}"),
            }
        }
        NetworkCmd::Ls {
            quiet,
            no_trunc,
            format,
            filter,
        } => {
            let list = client.networks(Vec::new())?;
            let mut networks = Vec::new();
            for net in &list.networks {
                if matches_filters(net, &filter)
                    .map_err(|e| anyhow!("Error response from daemon: {e}"))?
                {
                    networks.push(net);
                }
            }
            networks.sort_by(|a, b| a.name.cmp(&b.name));
            let id = |id: &str| {
                if no_trunc {
                    id.to_string()
                } else {
                    short_id(id).to_string()
                }
            };
            if quiet {
                for net in networks {
                    writeln!(out, "{}", id(&net.id))?;
                }
            } else if format == "json" {
                for net in networks {
                    writeln!(out, "{}", network_ls_json(net, no_trunc))?;
                }
            } else if format == "table" {
                let rows: Vec<Vec<String>> = networks
                    .iter()
                    .map(|n| vec![id(&n.id), n.name.clone(), n.driver.clone(), "global".into()])
                    .collect();
                write!(
                    out,
                    "{}",
                    table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
                )?;
            } else {
                let template = Template::parse(&format)?;
                for net in networks {
                    writeln!(out, "{}", template.render(&network_ls_json(net, no_trunc)))?;
                }
            }
        }
        NetworkCmd::Inspect { format, networks } => {
            let template = format.as_deref().map(Template::parse).transpose()?;
            let mut found = Vec::new();
            let mut failed = false;
            // Each name separately, so one unknown name does not hide the others (docker).
            for name in networks {
                match client.networks(vec![name.clone()]) {
                    Ok(list) => {
                        let hosts = members_hosts(client).unwrap_or_default();
                        for net in &list.networks {
                            let eps: Vec<_> = list
                                .endpoints
                                .iter()
                                .filter(|e| e.network_id == net.id)
                                .collect();
                            found.push(network_json(net, &eps, &hosts));
                        }
                    }
                    Err(err) => {
                        eprintln!("{err:#}");
                        failed = true;
                    }
                }
            }
            match template {
                Some(t) => {
                    for net in &found {
                        writeln!(out, "{}", t.render(net))?;
                    }
                }
                None => writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?,
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetworkCmd::Rm { networks } => {
            let mut failed = false;
            for name in networks {
                match client.call(Req::NetworkRemove(NamesRequest {
                    names: vec![name.clone()],
                })) {
                    Ok(_) => writeln!(out, "{name}")?,
                    Err(err) => {
                        eprintln!("{err:#}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetworkCmd::Prune { force } => {
            if !force
                && !confirm(
                    "WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue? [y/N] ",
                )?
            {
                return Ok(ExitCode::SUCCESS);
            }
            match client.call(Req::NetworkPrune(Empty {}))? {
                Resp::Pruned(names) if !names.names.is_empty() => {
                    writeln!(out, "Deleted Networks:")?;
                    for name in names.names {
                        writeln!(out, "{name}")?;
                    }
                }
                Resp::Pruned(_) => {}
                other => bail!("unexpected response from daemon: {other:?}"),
            }
        }
        NetworkCmd::Connect {
            ip,
            alias,
            network,
            sandbox,
        } => {
            let request = ConnectEndpoint {
                network,
                sandbox,
                aliases: alias,
                requested_ipv4: ip,
                ..ConnectEndpoint::default()
            };
            client.call(Req::NetworkConnect(request))?;
        }
        NetworkCmd::Disconnect {
            force,
            network,
            sandbox,
        } => {
            let request = DisconnectEndpoint {
                network,
                sandbox,
                force,
                ..DisconnectEndpoint::default()
            };
            client.call(Req::NetworkDisconnect(request))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn confirm(prompt: &str) -> Result<bool> {
    eprint!("{prompt}");
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn members_hosts(client: &Client) -> Result<Vec<vxnet_proto::Host>> {
    match client.call(Req::ClusterMembers(Empty {}))? {
        Resp::Members(list) => Ok(list.members.into_iter().filter_map(|m| m.host).collect()),
        other => bail!("unexpected response from daemon: {other:?}"),
    }
}

fn cluster(client: &Client, cmd: ClusterCmd, out: &mut impl Write) -> Result<ExitCode> {
    match cmd {
        ClusterCmd::Members { format } => {
            let Resp::Members(list) = client.call(Req::ClusterMembers(Empty {}))? else {
                bail!("unexpected response from daemon");
            };
            let mut rows = Vec::new();
            let mut json_rows = Vec::new();
            for member in &list.members {
                let Some(host) = &member.host else { continue };
                let leader = host.node_id == list.leader_id;
                rows.push(vec![
                    host.name.clone(),
                    host.underlay.clone(),
                    host.peer_addr.clone(),
                    member.role.clone(),
                    if leader { "*".into() } else { String::new() },
                    member.reachable.to_string(),
                ]);
                json_rows.push(serde_json::json!({
                    "name": host.name,
                    "node_id": host.node_id,
                    "underlay": host.underlay,
                    "peer": host.peer_addr,
                    "role": member.role,
                    "leader": leader,
                    "reachable": member.reachable,
                }));
            }
            if format == "json" {
                writeln!(out, "{}", serde_json::to_string_pretty(&json_rows)?)?;
            } else {
                write!(
                    out,
                    "{}",
                    table(
                        &["NAME", "UNDERLAY", "PEER", "ROLE", "LEADER", "REACHABLE"],
                        &rows
                    )
                )?;
            }
        }
        ClusterCmd::Leave => {
            client.call(Req::ClusterLeave(Empty {}))?;
        }
        ClusterCmd::Rm { name } => {
            client.call(Req::ClusterRemove(RemoveHost { name }))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn fdb(client: &Client, cmd: FdbCmd, out: &mut impl Write) -> Result<ExitCode> {
    match cmd {
        FdbCmd::Add {
            network,
            vtep,
            mac,
            ip,
        } => {
            client.call(Req::FdbAdd(AddStaticVtep {
                network,
                vtep,
                mac,
                ipv4: ip,
            }))?;
        }
        FdbCmd::Rm { network, vtep, mac } => {
            client.call(Req::FdbRemove(RemoveStaticVtep {
                network,
                vtep,
                mac,
                ipv4: None,
            }))?;
        }
        FdbCmd::Show { network } => {
            let names = network.into_iter().collect();
            let Resp::Fdb(list) = client.call(Req::FdbShow(NamesRequest { names }))? else {
                bail!("unexpected response from daemon");
            };
            for e in list.entries {
                let mac = if e.mac.is_empty() {
                    "00:00:00:00:00:00"
                } else {
                    &e.mac
                };
                let ip = if e.ipv4.is_empty() {
                    String::new()
                } else {
                    format!(" ip {}", e.ipv4)
                };
                let dst = if e.vtep.is_empty() {
                    "self".to_string()
                } else {
                    format!("dst {}", e.vtep)
                };
                writeln!(out, "{mac} {dst} vni {}{ip} origin {}", e.vni, e.origin)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn capture(
    client: &Client,
    network: String,
    count: u64,
    write: Option<String>,
) -> Result<ExitCode> {
    use std::io::Read;
    let request = ApiRequest {
        kind: Some(Req::Capture(vxnet_proto::CaptureRequest { network, count })),
    };
    let (response, mut stream) = api::call_streaming(&client.socket, &request, CALL_TIMEOUT)?;
    if let Some(Resp::Error(failure)) = response.kind {
        bail!("Error response from daemon: {}", failure.message);
    }
    match write.as_deref() {
        Some("-") => {
            std::io::copy(&mut stream, &mut std::io::stdout().lock())?;
        }
        Some(path) => {
            let mut file =
                std::fs::File::create(path).with_context(|| format!("creating {path}"))?;
            let mut header = [0u8; 24];
            stream.read_exact(&mut header)?;
            file.write_all(&header)?;
            // Whole records, one write each: a capture stopped at any moment is a valid pcap.
            let mut frames = 0u64;
            let mut record = Vec::new();
            while read_record(&mut stream, &mut record)? {
                file.write_all(&record)?;
                frames += 1;
            }
            eprintln!("{path}: {frames} frames");
        }
        None => {
            let mut header = [0u8; 24];
            stream.read_exact(&mut header)?;
            let mut out = std::io::stdout().lock();
            let mut record = Vec::new();
            while read_record(&mut stream, &mut record)? {
                let secs = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
                let micros = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
                let summary = vxnet::cli::format::frame_summary(&record[16..]);
                writeln!(out, "{secs}.{micros:06} {summary}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one pcap record (16-byte header + frame) into `record`; false at the end of the stream.
fn read_record(stream: &mut impl std::io::Read, record: &mut Vec<u8>) -> Result<bool> {
    record.resize(16, 0);
    if stream.read_exact(&mut record[..16]).is_err() {
        return Ok(false);
    }
    let len = u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
    if len > 262_144 {
        bail!("malformed capture stream (record of {len} bytes)");
    }
    record.resize(16 + len, 0);
    stream.read_exact(&mut record[16..])?;
    Ok(true)
}

fn stats(client: &Client, format: &str, out: &mut impl Write) -> Result<ExitCode> {
    let Resp::Stats(stats) = client.call(Req::Stats(Empty {}))? else {
        bail!("unexpected response from daemon");
    };
    if format == "json" {
        writeln!(out, "{}", serde_json::to_string_pretty(&stats.counters)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = stats
        .counters
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    write!(out, "{}", table(&["COUNTER", "VALUE"], &rows))?;
    Ok(ExitCode::SUCCESS)
}
