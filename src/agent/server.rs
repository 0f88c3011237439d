//! The CLI's API: a Unix socket (mode 0600), one length-prefixed request and one response per
//! connection. Reads come from this host's applied state (they keep working in a minority
//! partition); writes go through Raft ([`Agent::submit`]).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use vxnet_controlplane::node::MemberRole;
use vxnet_dataplane::fdb::MacLocation;
use vxnet_dataplane::io::NetnsHandle;
use vxnet_proto::{
    ApiRequest, ApiResponse, ApplyFailure, ErrorKind, FdbList, Member, MemberList, NamesRequest,
    NetworkList, RemoveHost, RemoveNetwork, Response, StaticVtep, Stats, api_request::Kind as Req,
    api_response::Kind as Resp, command, response,
};

use super::{Agent, SubmitError, random_id, unix_ms};
use crate::api::MAX_FRAME;

/// Binds the API socket, replacing a stale socket file left by a previous run.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent serves {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections until the runtime stops.
pub async fn serve(agent: Arc<Agent>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = Arc::clone(&agent);
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(&agent, stream).await {
                        tracing::debug!("API connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle_connection(agent: &Agent, mut stream: UnixStream) -> std::io::Result<()> {
    let request = tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream)).await;
    let response = match request {
        Ok(Ok(ApiRequest {
            kind: Some(Req::Capture(capture)),
        })) => {
            return stream_capture(agent, stream, capture).await;
        }
        Ok(Ok(request)) => handle(agent, request).await,
        Ok(Err(message)) => error(ErrorKind::Invalid, message),
        Err(_) => error(ErrorKind::Invalid, "timed out reading the request".into()),
    };
    let body = response.encode_to_vec();
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

async fn read_request(stream: &mut UnixStream) -> Result<ApiRequest, String> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!("request of {len} bytes is too large"));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    ApiRequest::decode(body.as_slice()).map_err(|e| format!("malformed request: {e}"))
}

fn error(kind: ErrorKind, message: String) -> ApiResponse {
    ApiResponse {
        kind: Some(Resp::Error(ApplyFailure {
            kind: kind as i32,
            message,
        })),
    }
}

fn from_submit(result: Result<Response, SubmitError>) -> ApiResponse {
    match result {
        Ok(response) => ApiResponse {
            kind: Some(Resp::Applied(response)),
        },
        Err(SubmitError::Refused(e)) => ApiResponse {
            kind: Some(Resp::Error(e.to_proto())),
        },
        Err(e @ SubmitError::NoQuorum(_)) => error(ErrorKind::Unspecified, e.to_string()),
    }
}

async fn handle(agent: &Agent, request: ApiRequest) -> ApiResponse {
    let Some(kind) = request.kind else {
        return error(ErrorKind::Invalid, "empty request".into());
    };
    match kind {
        Req::NetworkCreate(mut create) => {
            if create.driver.is_empty() {
                create.driver = "overlay".into();
            }
            if create.driver != "overlay" {
                return error(
                    ErrorKind::NotFound,
                    format!(
                        "plugin \"{}\" not found (vxnet has the overlay driver)",
                        create.driver
                    ),
                );
            }
            create.id = random_id();
            create.created_unix_ms = unix_ms();
            from_submit(agent.submit(command::Kind::CreateNetwork(create)).await)
        }
        Req::NetworkList(_) => networks(agent, &[]),
        Req::NetworkInspect(NamesRequest { names }) => networks(agent, &names),
        Req::NetworkRemove(NamesRequest { names }) => {
            let mut last = error(ErrorKind::Invalid, "no network given".into());
            for name in names {
                last = from_submit(
                    agent
                        .submit(command::Kind::RemoveNetwork(RemoveNetwork {
                            name_or_id: name,
                        }))
                        .await,
                );
                if matches!(last.kind, Some(Resp::Error(_))) {
                    return last;
                }
            }
            last
        }
        Req::NetworkPrune(_) => {
            let state = Arc::clone(&agent.driver.view().state);
            let unused: Vec<String> = state
                .networks()
                .filter(|n| state.endpoints().all(|e| e.network_id != n.id))
                .map(|n| n.name.clone())
                .collect();
            let mut removed = Vec::new();
            for name in unused {
                let command = command::Kind::RemoveNetwork(RemoveNetwork {
                    name_or_id: name.clone(),
                });
                // A network that gained an endpoint meanwhile is refused, and kept.
                if agent.submit(command).await.is_ok() {
                    removed.push(name);
                }
            }
            ApiResponse {
                kind: Some(Resp::Pruned(NamesRequest { names: removed })),
            }
        }
        Req::NetworkConnect(mut connect) => {
            if let Err(e) = NetnsHandle::open(&connect.sandbox) {
                return error(
                    ErrorKind::NotFound,
                    format!("sandbox {}: {e}", connect.sandbox),
                );
            }
            connect.host = agent.config.name.clone();
            connect.endpoint_id = random_id();
            if connect.name.is_empty() {
                connect.name = connect.sandbox.clone();
            }
            let result = agent
                .submit(command::Kind::ConnectEndpoint(connect.clone()))
                .await;
            let endpoint = match &result {
                Ok(Response {
                    kind: Some(response::Kind::EndpointConnected(ep)),
                }) => ep.clone(),
                _ => return from_submit(result),
            };
            let made = {
                let _guard = agent.links_lock.lock().await;
                match agent.reconciler.ensure_network(endpoint.vni).await {
                    Ok(()) => agent.reconciler.ensure_endpoint(&endpoint).await,
                    Err(e) => Err(e.into()),
                }
            };
            if let Err(e) = made {
                // Undo the commit: no endpoint may exist without its interface.
                let undo = command::Kind::DisconnectEndpoint(vxnet_proto::DisconnectEndpoint {
                    network: endpoint.network_id.clone(),
                    sandbox: endpoint.sandbox.clone(),
                    host: endpoint.host.clone(),
                    force: true,
                });
                let _ = agent.submit(undo).await;
                return error(
                    ErrorKind::Unspecified,
                    format!("attaching {}: {e}", endpoint.sandbox),
                );
            }
            agent.reconcile_once().await;
            from_submit(result)
        }
        Req::NetworkDisconnect(mut disconnect) => {
            if disconnect.host.is_empty() {
                disconnect.host = agent.config.name.clone();
            }
            let result = agent
                .submit(command::Kind::DisconnectEndpoint(disconnect))
                .await;
            agent.reconcile_once().await;
            from_submit(result)
        }
        Req::ClusterMembers(_) => members(agent),
        Req::ClusterLeave(_) => {
            let name = agent.config.name.clone();
            let result = agent
                .submit(command::Kind::RemoveHost(RemoveHost { name }))
                .await;
            if result.is_ok() {
                let _guard = agent.links_lock.lock().await;
                let _ = agent.reconciler.remove_all().await;
                tracing::info!("left the cluster");
            }
            from_submit(result)
        }
        Req::ClusterRemove(remove) => {
            from_submit(agent.submit(command::Kind::RemoveHost(remove)).await)
        }
        Req::FdbAdd(add) => from_submit(agent.submit(command::Kind::AddStaticVtep(add)).await),
        Req::FdbRemove(rm) => from_submit(agent.submit(command::Kind::RemoveStaticVtep(rm)).await),
        Req::FdbShow(NamesRequest { names }) => fdb_show(agent, names.first().map(String::as_str)),
        Req::Stats(_) => stats(agent),
        Req::Capture(_) => error(ErrorKind::Invalid, "capture is a streaming request".into()),
    }
}

async fn write_response(stream: &mut UnixStream, response: &ApiResponse) -> std::io::Result<()> {
    let body = response.encode_to_vec();
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(&body).await
}

/// Answers `Ok`, then streams the network's mirrored frames as a pcap file until `count` frames
/// were sent or the client went away.
async fn stream_capture(
    agent: &Agent,
    mut stream: UnixStream,
    request: vxnet_proto::CaptureRequest,
) -> std::io::Result<()> {
    let state = Arc::clone(&agent.driver.view().state);
    let vni = match state.resolve_network(&request.network) {
        Ok(network) => network.vni,
        Err(_) => {
            let response = error(
                ErrorKind::NotFound,
                format!("network {} not found", request.network),
            );
            return write_response(&mut stream, &response).await;
        }
    };
    let capture = agent.reconciler.dataplane.capture_hub().start(vni);
    write_response(
        &mut stream,
        &ApiResponse {
            kind: Some(Resp::Ok(vxnet_proto::Empty {})),
        },
    )
    .await?;
    let mut stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        stream.write_all(&vxnet_dataplane::capture::pcap_header())?;
        let mut sent = 0u64;
        let mut chunk = Vec::with_capacity(64 * 1024);
        while request.count == 0 || sent < request.count {
            let Some(frame) = capture.next(Duration::from_millis(200)) else {
                // Idle: notice a client that went away (EOF) without waiting for traffic.
                stream.set_nonblocking(true)?;
                let gone = matches!(stream.read(&mut [0u8; 1]), Ok(0));
                stream.set_nonblocking(false)?;
                if gone {
                    break;
                }
                continue;
            };
            chunk.clear();
            vxnet_dataplane::capture::pcap_record(&mut chunk, &frame);
            sent += 1;
            stream.write_all(&chunk)?;
        }
        if capture.dropped() > 0 {
            tracing::info!(
                dropped = capture.dropped(),
                "capture fell behind and dropped frames"
            );
        }
        stream.flush()
    })
    .await
    .map_err(std::io::Error::other)?
}

fn networks(agent: &Agent, names: &[String]) -> ApiResponse {
    let state = Arc::clone(&agent.driver.view().state);
    let mut list = NetworkList::default();
    if names.is_empty() {
        list.networks = state.networks().cloned().collect();
    } else {
        for name in names {
            match state.resolve_network(name) {
                Ok(network) => list.networks.push(network.clone()),
                Err(_) => return error(ErrorKind::NotFound, format!("network {name} not found")),
            }
        }
    }
    list.endpoints = state
        .endpoints()
        .filter(|e| list.networks.iter().any(|n| n.id == e.network_id))
        .cloned()
        .collect();
    ApiResponse {
        kind: Some(Resp::Networks(list)),
    }
}

fn members(agent: &Agent) -> ApiResponse {
    let view = agent.driver.view();
    let roles: BTreeMap<u64, _> = view.members.iter().map(|m| (m.node_id, *m)).collect();
    let members = view
        .state
        .hosts()
        .map(|host| {
            let status = roles.get(&host.node_id);
            let role = match status.map(|s| s.role) {
                Some(MemberRole::Voter) => "voter",
                Some(MemberRole::Learner) => "learner",
                None => "joining",
            };
            let reachable =
                host.node_id == view.node_id || agent.transport.is_reachable(host.node_id);
            Member {
                host: Some(host.clone()),
                role: role.into(),
                matched: status.and_then(|s| s.matched).unwrap_or(0),
                reachable,
            }
        })
        .collect();
    ApiResponse {
        kind: Some(Resp::Members(MemberList {
            members,
            leader_id: view.leader_id.unwrap_or(0),
            term: view.term,
            commit_index: view.commit_index,
            applied_index: view.applied_index,
        })),
    }
}

/// This host's forwarding table as the data plane holds it, like `bridge fdb show`.
fn fdb_show(agent: &Agent, network: Option<&str>) -> ApiResponse {
    let view = agent.driver.view();
    let state = &view.state;
    let only_vni = match network.map(|n| state.resolve_network(n)) {
        Some(Ok(net)) => Some(net.vni),
        Some(Err(_)) => {
            return error(
                ErrorKind::NotFound,
                format!("network {} not found", network.unwrap_or("")),
            );
        }
        None => None,
    };
    let fib = agent.fib.load();
    let mut entries = Vec::new();
    let mut tables: Vec<_> = fib
        .networks()
        .filter(|t| only_vni.is_none_or(|v| v == t.vni()))
        .collect();
    tables.sort_by_key(|t| t.vni());
    for table in tables {
        let network_id = state
            .networks()
            .find(|n| n.vni == table.vni())
            .map(|n| n.id.clone())
            .unwrap_or_default();
        let ip_of: BTreeMap<_, _> = table.neighbors().map(|(ip, mac)| (mac, ip)).collect();
        let mut macs: Vec<_> = table.macs().collect();
        macs.sort_by_key(|(mac, _)| *mac);
        for (mac, location) in macs {
            let (vtep, origin) = match location {
                MacLocation::Local => (String::new(), "local".to_string()),
                MacLocation::Remote(vtep) => {
                    let mac_text = mac.to_string();
                    let origin = state
                        .endpoints()
                        .find(|e| e.vni == table.vni() && e.mac == mac_text)
                        .map(|e| format!("endpoint:{}", e.host))
                        .unwrap_or_else(|| "static".into());
                    (vtep.to_string(), origin)
                }
            };
            entries.push(StaticVtep {
                network_id: network_id.clone(),
                vtep,
                mac: mac.to_string(),
                ipv4: ip_of.get(&mac).map(|ip| ip.to_string()).unwrap_or_default(),
                vni: table.vni(),
                origin,
            });
        }
        for vtep in table.flood_list() {
            entries.push(StaticVtep {
                network_id: network_id.clone(),
                vtep: vtep.to_string(),
                vni: table.vni(),
                origin: "flood".into(),
                ..StaticVtep::default()
            });
        }
    }
    ApiResponse {
        kind: Some(Resp::Fdb(FdbList { entries })),
    }
}

/// The name of the network with VNI `vni`, or the VNI itself while the state has none (a network
/// being removed): how `stats` and the metrics label per-network counters.
pub(crate) fn network_name(state: &vxnet_controlplane::State, vni: u32) -> String {
    state
        .networks()
        .find(|n| n.vni == vni)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| vni.to_string())
}

fn stats(agent: &Agent) -> ApiResponse {
    let mut counters = BTreeMap::new();
    for (reason, count) in agent.stats.snapshot() {
        counters.insert(format!("drop.{reason}"), count);
    }
    let view = agent.driver.view();
    let fib = agent.fib.load();
    for table in fib.networks() {
        let name = network_name(&view.state, table.vni());
        let c = table.counters().read();
        counters.insert(format!("net.{name}.rx_packets"), c.rx_packets);
        counters.insert(format!("net.{name}.rx_bytes"), c.rx_bytes);
        counters.insert(format!("net.{name}.tx_packets"), c.tx_packets);
        counters.insert(format!("net.{name}.tx_bytes"), c.tx_bytes);
        counters.insert(format!("net.{name}.arp_nd_suppressed"), c.suppressed);
        counters.insert(
            format!("net.{name}.tap_queue_drops"),
            super::links::tap_queue_drops(table.vni()),
        );
    }
    counters.insert("fib.mac_entries".into(), fib.mac_count() as u64);
    counters.insert("raft.term".into(), view.term);
    counters.insert("raft.commit_index".into(), view.commit_index);
    counters.insert("raft.applied_index".into(), view.applied_index);
    counters.insert("raft.leader_id".into(), view.leader_id.unwrap_or(0));
    ApiResponse {
        kind: Some(Resp::Stats(Stats { counters })),
    }
}
