//! The CLI's API: a Unix socket (mode 0600), one length-prefixed request and one response per
//! connection. Reads come from this host's applied state (they keep working in a minority
//! partition); writes go through Raft ([`Agent::submit`]).
//!
//! Misbehaving clients cannot exhaust the agent: connections, request bytes in flight and capture
//! streams are capped, request buffers grow only with the bytes that arrive, and a request must
//! arrive whole within 10 s. Refusals are answered with an error and logged at most once per 5 s
//! per limit, with a count. The caps and the eviction of stalled readers live in the `admission`
//! module; the read-only answers (network lists, members, FDB, stats) in `queries`; this one
//! reads requests, dispatches them, carries out the writes and refuses connections.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use vxnet_dataplane::io::NetnsHandle;
use vxnet_proto::{
    ApiRequest, ApiResponse, ApplyFailure, ErrorKind, NamesRequest, RemoveHost, RemoveNetwork,
    Response, api_request::Kind as Req, api_response::Kind as Resp, command, response,
};

use super::admission::{
    ByteBudget, Handover, Limits, MAX_CAPTURES, MAX_CONNECTIONS, MAX_REQUEST_BYTES, Reservation,
    flush_warnings,
};
use super::{Agent, SubmitError, queries, random_id, runtimes, unix_ms};
use crate::api::MAX_FRAME;
use vxnet_controlplane::state::RUNTIME_DOCKER;
use vxnet_proto::frame::{self, FrameError, INITIAL_BUFFER};

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

/// Time to read a whole request (length and body), however slowly its bytes trickle in.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time to write a response: a client that does not read cannot hold its slot for longer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time to write a refusal, and to drain what the refused client sends meanwhile.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Time a refused client may stay quiet before it is closed.
const REFUSAL_IDLE: Duration = Duration::from_millis(100);

/// Time a connection over the cap waits for the slot of the connection it turned away.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// Bytes a refused connection may send before it is closed (its request is read and dropped so
/// that the client sees the refusal instead of a broken pipe).
const REFUSAL_DRAIN: usize = 64 << 10;

/// Accepts connections until the runtime stops.
pub async fn serve(agent: Arc<Agent>, listener: UnixListener) {
    let limits = Arc::new(Limits::new());
    tokio::spawn(flush_warnings(Arc::clone(&limits)));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => admit(&agent, &limits, stream),
            Err(e) => {
                tracing::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves `stream` in a slot of its own, or makes room by turning away the connection that has
/// been reading its request the longest, or refuses it.
fn admit(agent: &Arc<Agent>, limits: &Arc<Limits>, stream: UnixStream) {
    let agent = Arc::clone(agent);
    let limits = Arc::clone(limits);
    if let Ok(slot) = Arc::clone(&limits.connections).try_acquire_owned() {
        tokio::spawn(async move {
            if let Err(e) = handle_connection(&agent, &limits, stream, slot).await {
                tracing::debug!("API connection: {e}");
            }
        });
        return;
    }
    let Ok(waiting) = Arc::clone(&limits.turned_away).try_acquire_owned() else {
        limits.over_connections.refused();
        refuse_now(stream);
        return;
    };
    let (handover, handed) = oneshot::channel();
    limits.evict_oldest_reader(handover);
    tokio::spawn(async move {
        // An error is no reader to turn away (the handover was dropped) or one that vanished.
        if let Ok(Ok(slot)) = tokio::time::timeout(SLOT_WAIT, handed).await {
            drop(waiting);
            if let Err(e) = handle_connection(&agent, &limits, stream, slot).await {
                tracing::debug!("API connection: {e}");
            }
            return;
        }
        limits.over_connections.refused();
        refuse(stream, too_many_connections()).await;
        drop(waiting);
    });
}

fn too_many_connections() -> ApiResponse {
    error(
        ErrorKind::Unspecified,
        format!("too many concurrent API connections (limit {MAX_CONNECTIONS}); try again"),
    )
}

/// Answers a connection over every cap without a task: one non-blocking write of the answer
/// (small enough for an empty socket buffer), then close.
fn refuse_now(stream: UnixStream) {
    // A fresh tokio stream may not know yet that it is writable: write through the std socket.
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    if let Ok(frame) = frame::to_vec(&too_many_connections()) {
        let _ = std::io::Write::write(&mut stream, &frame);
    }
}

/// Answers a connection that gets no slot, then reads and drops what the client sends for a
/// moment, so that a client still writing its request reads the answer, not a broken pipe.
async fn refuse(mut stream: UnixStream, response: ApiResponse) {
    let written = tokio::time::timeout(REFUSAL_TIMEOUT, write_response(&mut stream, &response));
    if !matches!(written.await, Ok(Ok(()))) {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut scratch = [0u8; 1024];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN {
            // A client that goes quiet has sent its request (or is stalling): stop there.
            match tokio::time::timeout(REFUSAL_IDLE, stream.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, drain).await;
}

/// Why a request could not be read.
enum ReadError {
    /// The client sent something unusable, or too slowly.
    Invalid(String),
    /// The request bytes in flight are at [`MAX_REQUEST_BYTES`].
    OverBudget,
    /// The connection was turned away to make room for a new one, which gets its slot.
    Evicted(Handover),
}

async fn handle_connection(
    agent: &Agent,
    limits: &Limits,
    mut stream: UnixStream,
    slot: OwnedSemaphorePermit,
) -> std::io::Result<()> {
    let read = {
        let (_reader, evict) = limits.reader();
        tokio::select! {
            read = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream, &limits.budget)) => {
                read.unwrap_or_else(|_| {
                    Err(ReadError::Invalid("timed out reading the request".into()))
                })
            }
            Ok(handover) = evict => Err(ReadError::Evicted(handover)),
        }
    };
    let (request, reservation) = match read {
        Ok(read) => read,
        Err(ReadError::Invalid(message)) => {
            return respond(
                &mut stream,
                &error(ErrorKind::Invalid, message),
                RESPONSE_TIMEOUT,
            )
            .await;
        }
        Err(ReadError::OverBudget) => {
            limits.over_budget.refused();
            let message = format!(
                "too many API request bytes in flight (limit {} MiB); try again",
                MAX_REQUEST_BYTES >> 20
            );
            let response = error(ErrorKind::Unspecified, message);
            return respond(&mut stream, &response, REFUSAL_TIMEOUT).await;
        }
        Err(ReadError::Evicted(handover)) => {
            limits.over_connections.refused();
            let result = respond(&mut stream, &too_many_connections(), REFUSAL_TIMEOUT).await;
            // Answered: the slot goes to the newcomer (or back to the pool if it gave up).
            let _ = handover.send(slot);
            return result;
        }
    };
    if let ApiRequest {
        kind: Some(Req::Capture(capture)),
    } = request
    {
        // A stream owes nothing to the request budget, and runs in a capture slot rather than
        // a connection slot, so long captures never crowd out short commands.
        drop(reservation);
        let Ok(capture_slot) = Arc::clone(&limits.captures).try_acquire_owned() else {
            limits.over_captures.refused();
            let message = format!("too many concurrent captures (limit {MAX_CAPTURES}); try again");
            return respond(
                &mut stream,
                &error(ErrorKind::Unspecified, message),
                REFUSAL_TIMEOUT,
            )
            .await;
        };
        drop(slot);
        let result = stream_capture(agent, stream, capture).await;
        drop(capture_slot);
        return result;
    }
    // The decoded request stays charged to the budget until it is answered.
    let response = handle(agent, request).await;
    drop(reservation);
    let result = respond(&mut stream, &response, RESPONSE_TIMEOUT).await;
    drop(slot);
    result
}

/// Writes `response` within `timeout` and closes the connection's sending side.
async fn respond(
    stream: &mut UnixStream,
    response: &ApiResponse,
    timeout: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, write_response(stream, response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "writing the response"))??;
    stream.shutdown().await
}

/// Reads one request frame. The buffer grows with the bytes that arrive, and each growth past
/// the first [`INITIAL_BUFFER`] bytes (which the connection cap bounds) is charged to `budget`
/// before it is allocated, so a client claiming a large frame costs only what it sends.
async fn read_request(
    stream: &mut UnixStream,
    budget: &Arc<ByteBudget>,
) -> Result<(ApiRequest, Reservation), ReadError> {
    let mut reservation = Reservation::new(budget);
    let mut admit = |capacity: usize| {
        let charge = capacity.saturating_sub(INITIAL_BUFFER);
        reservation.grow(charge.saturating_sub(reservation.bytes))
    };
    let body = match frame::read(stream, MAX_FRAME, &mut admit).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return Err(ReadError::Invalid(
                "reading the request: the client closed the connection".into(),
            ));
        }
        Err(FrameError::TooLarge { len, max }) => {
            return Err(ReadError::Invalid(format!(
                "request of {len} bytes is too large (limit {max} bytes)"
            )));
        }
        Err(FrameError::OverBudget { .. }) => return Err(ReadError::OverBudget),
        Err(FrameError::Truncated { got, len }) => {
            return Err(ReadError::Invalid(format!(
                "reading the request: the client closed the connection after {got} of {len} bytes"
            )));
        }
        Err(e) => return Err(ReadError::Invalid(format!("reading the request: {e}"))),
    };
    let request = ApiRequest::decode(body.as_slice())
        .map_err(|e| ReadError::Invalid(format!("malformed request: {e}")))?;
    Ok((request, reservation))
}

pub(super) fn error(kind: ErrorKind, message: String) -> ApiResponse {
    ApiResponse {
        kind: Some(Resp::Error(ApplyFailure {
            kind: kind as i32,
            message,
        })),
    }
}

pub(super) fn from_submit(result: Result<Response, SubmitError>) -> ApiResponse {
    match result {
        Ok(response) => ApiResponse {
            kind: Some(Resp::Applied(response)),
        },
        Err(SubmitError::Refused(e)) => ApiResponse {
            kind: Some(Resp::Error(e.to_proto())),
        },
        Err(e) => error(ErrorKind::Unspecified, e.to_string()),
    }
}

/// Answers one API request (the socket's, or a plugin's in this process).
pub async fn handle(agent: &Agent, request: ApiRequest) -> ApiResponse {
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
        Req::NetworkList(_) => queries::networks(agent, &[]),
        Req::NetworkInspect(NamesRequest { names }) => queries::networks(agent, &names),
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
        Req::NetworkConnect(connect) if connect.runtime == RUNTIME_DOCKER => {
            runtimes::connect(agent, connect).await
        }
        Req::NetworkConnect(mut connect) => {
            if let Some(refused) = runtimes::check_plain_connect(agent, &connect) {
                return refused;
            }
            if let Err(e) = NetnsHandle::open(&connect.sandbox) {
                return error(
                    ErrorKind::NotFound,
                    format!("sandbox {}: {e}", connect.sandbox),
                );
            }
            connect.host = agent.config.name.clone();
            if connect.endpoint_id.is_empty() {
                connect.endpoint_id = random_id();
            }
            if let Some(refused) = check_dns_names(&connect) {
                return refused;
            }
            if connect.name.is_empty() {
                // A named netns's name is the endpoint's (DNS) name; a PID or another path
                // names the endpoint but is no DNS name (only its aliases resolve).
                connect.name = super::dns::resolvconf::netns_name(&connect.sandbox)
                    .unwrap_or(&connect.sandbox)
                    .to_string();
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
            let network = agent
                .driver
                .view()
                .state
                .networks()
                .find(|n| n.id == endpoint.network_id)
                .cloned();
            let made = {
                let _guard = agent.links_lock.lock().await;
                match network {
                    Some(network) => match agent.reconciler.ensure_network(&network).await {
                        Ok(()) => {
                            agent
                                .reconciler
                                .ensure_endpoint(&endpoint, Some(&network))
                                .await
                        }
                        Err(e) => Err(e.into()),
                    },
                    None => Err(vxnet_dataplane::io::IoError::NotFound(format!(
                        "network {}",
                        endpoint.network_id
                    ))
                    .into()),
                }
            };
            if let Err(e) = made {
                // Undo the commit: no endpoint may exist without its interface.
                let undo = command::Kind::DisconnectEndpoint(vxnet_proto::DisconnectEndpoint {
                    network: endpoint.network_id.clone(),
                    sandbox: endpoint.sandbox.clone(),
                    host: endpoint.host.clone(),
                    force: true,
                    ..Default::default()
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
        Req::ClusterMembers(_) => queries::members(agent).await,
        Req::ClusterLeave(_) => {
            let name = agent.config.name.clone();
            let result = agent
                .submit(command::Kind::RemoveHost(RemoveHost { name }))
                .await;
            if result.is_ok() {
                let _guard = agent.links_lock.lock().await;
                let _ = agent.reconciler.remove_all().await;
                let _ = agent.dns.remove_all().await;
                tracing::info!("left the cluster");
            }
            from_submit(result)
        }
        Req::ClusterRemove(remove) => {
            from_submit(agent.submit(command::Kind::RemoveHost(remove)).await)
        }
        Req::ClusterJoinToken(request) => super::tls_api::join_token(agent, request).await,
        Req::ClusterCaRotate(request) => super::tls_api::ca_rotate(agent, request).await,
        Req::FdbAdd(add) => from_submit(agent.submit(command::Kind::AddStaticVtep(add)).await),
        Req::FdbRemove(rm) => from_submit(agent.submit(command::Kind::RemoveStaticVtep(rm)).await),
        Req::FdbShow(NamesRequest { names }) => {
            queries::fdb_show(agent, names.first().map(String::as_str))
        }
        Req::Stats(_) => queries::stats(agent),
        Req::Capture(_) => error(ErrorKind::Invalid, "capture is a streaming request".into()),
        Req::DockerNetworkAttach(attach) => runtimes::attach(agent, attach).await,
        Req::DockerNetworkDetach(detach) => runtimes::detach(agent, detach).await,
        Req::AddressReserve(reserve) => runtimes::reserve(agent, reserve).await,
        Req::AddressRelease(release) => runtimes::release(agent, release).await,
        Req::EndpointLink(link) => runtimes::link(agent, link).await,
        Req::EndpointUnlink(link) => runtimes::unlink(agent, link).await,
        Req::EndpointPorts(ports) => runtimes::set_ports(agent, ports).await,
    }
}

/// Refuses a connect from the CLI whose `--name` or an `--alias` cannot be a DNS name (a
/// runtime's names, such as a CNI container id, are kept even when they are not: they only do
/// not resolve).
fn check_dns_names(connect: &vxnet_proto::ConnectEndpoint) -> Option<ApiResponse> {
    if !connect.runtime.is_empty() {
        return None;
    }
    let given = (!connect.name.is_empty()).then_some(("name", &connect.name));
    let aliases = connect.aliases.iter().map(|a| ("alias", a));
    for (what, name) in given.into_iter().chain(aliases) {
        if !super::dns::is_dns_name(name) {
            return Some(error(
                ErrorKind::Invalid,
                format!(
                    "invalid {what} {name:?}: a DNS name is dot-separated labels of 1 to 63 \
                     letters, digits, '-' or '_', not all digits"
                ),
            ));
        }
    }
    None
}

/// Writes one response frame.
pub(super) async fn write_response(
    stream: &mut UnixStream,
    response: &ApiResponse,
) -> std::io::Result<()> {
    let frame = frame::to_vec(response).map_err(std::io::Error::other)?;
    stream.write_all(&frame).await
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::agent::admission::budget;

    fn frame(len: u32, body: &[u8]) -> Vec<u8> {
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    }

    /// Sends `bytes` (then closes) and reads one request from the other end.
    async fn read_from(
        bytes: Vec<u8>,
        budget: &Arc<ByteBudget>,
    ) -> Result<(ApiRequest, Reservation), ReadError> {
        let (mut client, mut server) = UnixStream::pair().expect("socket pair");
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&bytes).await;
        });
        let read = read_request(&mut server, budget).await;
        drop(server);
        let _ = writer.await;
        read
    }

    fn message(read: Result<(ApiRequest, Reservation), ReadError>) -> String {
        match read {
            Err(ReadError::Invalid(message)) => message,
            Err(ReadError::OverBudget) => "over budget".into(),
            Err(ReadError::Evicted(_)) => "evicted".into(),
            Ok((request, _)) => format!("read {request:?}"),
        }
    }

    #[tokio::test]
    async fn small_requests_need_no_budget_and_large_claims_cost_what_arrives() {
        let none = budget(0);
        let stats = ApiRequest {
            kind: Some(Req::Stats(vxnet_proto::Empty {})),
        }
        .encode_to_vec();
        let (request, reservation) = match read_from(frame(stats.len() as u32, &stats), &none).await
        {
            Ok(read) => read,
            Err(_) => panic!("a small request reads without budget"),
        };
        assert!(matches!(request.kind, Some(Req::Stats(_))));
        assert_eq!(reservation.bytes, 0);

        let claim = message(read_from(frame(MAX_FRAME as u32, b"abc"), &none).await);
        assert_eq!(
            claim,
            format!(
                "reading the request: the client closed the connection after 3 of {MAX_FRAME} bytes"
            )
        );
        let too_large = message(read_from(frame(MAX_FRAME as u32 + 1, b""), &none).await);
        assert_eq!(
            too_large,
            format!(
                "request of {} bytes is too large (limit {MAX_FRAME} bytes)",
                MAX_FRAME + 1
            )
        );
    }

    #[tokio::test]
    async fn a_request_over_the_budget_is_refused_and_gives_its_bytes_back() {
        let small = budget(1 << 20);
        let big = vec![0u8; 2 << 20];
        let read = read_from(frame(big.len() as u32, &big), &small).await;
        assert_eq!(message(read), "over budget");
        assert_eq!(small.used.load(Ordering::Acquire), 0);

        // Within the budget, the buffer is charged past its free first part, then given back.
        let ok = budget(4 << 20);
        let read = read_from(frame(big.len() as u32, &big), &ok).await;
        match read {
            Err(ReadError::Invalid(m)) if m.starts_with("malformed request") => {}
            other => panic!("expected a malformed request, got {}", message(other)),
        }
        assert_eq!(ok.used.load(Ordering::Acquire), 0);
    }
}
