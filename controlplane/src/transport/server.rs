//! Inbound side: the accept loop, admission and eviction of connections, and reading what
//! authenticated peers send.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tracing::{debug, info, warn};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{PeerEnvelope, ReachResponse};

use super::connection::{BoxRead, BoxWrite};
use super::forward::spawn_reply;
use super::handshake::{Accepted, Access, server_handshake};
use super::join::{VerifiedJoin, answer_join, read_join};
use super::shared::{Core, Reach, bump, lock};
use super::tls_stream::{self, Opening, TlsAccepted, opening};
use super::wire::{read_frame, write_envelope};
use super::{
    BACKOFF_MIN, EVICT_WAIT, HANDSHAKE_TIMEOUT, Inbound, MAX_FRAME_LEN, READ_BUF, TransportError,
};

/// Counts an open inbound connection for [`Transport::is_reachable`](super::Transport::is_reachable)
/// while it lives.
struct InboundConnGuard(Arc<Reach>);

impl InboundConnGuard {
    fn new(reach: Arc<Reach>) -> InboundConnGuard {
        reach.inbound_conns.fetch_add(1, Ordering::Relaxed);
        InboundConnGuard(reach)
    }
}

impl Drop for InboundConnGuard {
    fn drop(&mut self) {
        self.0.inbound_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until the transport shuts down, each in its own task once admitted.
pub(super) async fn accept_loop(core: Arc<Core>, listener: TcpListener) {
    let mut shutdown = core.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) if core.refusals.is_limited(remote.ip(), core.now_ms()) => {
                // Closed before anything is spent on it; the source cools down within 2 s.
                drop(stream);
                bump(&core.counters.connections_rate_limited, 1);
                if core.may_log(remote.ip()) {
                    warn!(
                        %remote,
                        "closing connections from this source at once: more than {} refused \
                         handshakes a second",
                        super::shared::Refusals::PER_SECOND
                    );
                }
            }
            Ok((stream, remote)) => match admit(&core).await {
                Some(slot) => {
                    tokio::spawn(serve_connection(core.clone(), stream, remote, slot));
                }
                None => {
                    if core.may_log(remote.ip()) {
                        warn!(%remote, "too many inbound peer connections: refusing");
                    }
                }
            },
            Err(e) => {
                // E.g. EMFILE: pause instead of spinning on the error.
                warn!("accepting a peer connection failed: {e}");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(BACKOFF_MIN) => {}
                }
            }
        }
    }
}

/// A slot for a new inbound connection: a free one, or else the one of the oldest connection
/// still in its handshake, which is dropped (only authenticated connections keep theirs).
async fn admit(core: &Core) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = core.conn_slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    let oldest = lock(&core.handshaking).pop_front();
    // Dropping its sender ends that connection's handshake, which frees its slot.
    drop(oldest?);
    bump(&core.counters.handshakes_refused, 1);
    tokio::time::timeout(EVICT_WAIT, core.conn_slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Keeps a connection in [`Core::handshaking`](super::shared::Core::handshaking) until its handshake ends, one way or another.
struct Handshaking<'a> {
    core: &'a Core,
    seq: u64,
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        lock(&self.core.handshaking).retain(|(seq, _)| *seq != self.seq);
    }
}

async fn serve_connection(
    core: Arc<Core>,
    stream: TcpStream,
    remote: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let mut shutdown = core.shutdown.clone();
    tokio::select! {
        _ = shutdown.changed() => {}
        _ = serve_connection_inner(&core, stream, remote) => {}
    }
}

/// A connection past its authentication.
enum Opened {
    /// A member (TLS) or a peer of the previous release (shared secret): reads go to
    /// [`read_loop`].
    Peer {
        reader: BoxRead,
        writer: BoxWrite,
        accepted: Accepted,
    },
    /// A joiner that proved the join secret over TLS.
    Join(Box<VerifiedJoin>),
    /// Answered and finished (a refused join).
    Done,
}

/// Everything a connection does before it is authenticated: tell TLS from the previous
/// release's protocol, run that handshake, and for a TLS client without a certificate read and
/// check its join request.
async fn open(
    core: &Arc<Core>,
    stream: TcpStream,
    remote: SocketAddr,
) -> Result<Opened, TransportError> {
    let tls = core.security.tls();
    if let Some(side) = tls.as_deref() {
        match opening(&stream).await {
            Opening::Tls => {
                return match tls_stream::accept(stream, side, core.identity()).await? {
                    TlsAccepted::Member {
                        reader,
                        writer,
                        peer,
                    } => {
                        bump(&core.counters.tls_accepted, 1);
                        let bound = Some(peer.node_id);
                        Ok(Opened::Peer {
                            reader,
                            writer,
                            accepted: Accepted {
                                peer,
                                access: Access::Member,
                                bound,
                            },
                        })
                    }
                    TlsAccepted::JoinOnly(tls) => Ok(match read_join(core, *tls, remote).await? {
                        Some(join) => Opened::Join(Box::new(join)),
                        None => Opened::Done,
                    }),
                };
            }
            Opening::Silent if core.security.view().legacy_open => {}
            Opening::Silent => return Err(TransportError::LegacyRefused),
            Opening::Garbage(b) => {
                return Err(TransportError::Protocol(format!(
                    "first byte {b:#04x} is no TLS handshake"
                )));
            }
            Opening::Closed => return Err(TransportError::Closed),
        }
    }
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(READ_BUF, r);
    let accepted = server_handshake(core, &mut r, &mut w).await?;
    bump(&core.counters.legacy_accepted, 1);
    Ok(Opened::Peer {
        reader: Box::new(r),
        writer: Box::new(w),
        accepted,
    })
}

async fn serve_connection_inner(core: &Arc<Core>, stream: TcpStream, remote: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (evict_tx, evict_rx) = oneshot::channel::<()>();
    let seq = core.next_conn.fetch_add(1, Ordering::Relaxed);
    lock(&core.handshaking).push_back((seq, evict_tx));
    let handshaking = Handshaking { core, seq };
    let opened = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, open(core, stream, remote)) => r,
        _ = evict_rx => {
            core.refusals.record(remote.ip(), core.now_ms());
            if core.may_log(remote.ip()) {
                warn!(%remote, "dropping a peer connection still in its handshake: all slots taken");
            }
            return;
        }
    };
    drop(handshaking);
    let (mut r, mut w, accepted) = match opened {
        Ok(Ok(Opened::Peer {
            reader,
            writer,
            accepted,
        })) => (reader, writer, accepted),
        Ok(Ok(Opened::Join(join))) => {
            if let Err(e) = answer_join(core, *join).await {
                debug!(%remote, "join not answered: {e}");
            }
            return;
        }
        // A refused join proof counts as a refusal: online guessing gets slow.
        Ok(Ok(Opened::Done)) => {
            core.refusals.record(remote.ip(), core.now_ms());
            return;
        }
        Ok(Err(e)) => {
            bump(&core.counters.handshakes_refused, 1);
            core.refusals.record(remote.ip(), core.now_ms());
            if core.may_log(remote.ip()) {
                warn!(%remote, "refusing peer connection: {e}");
            }
            return;
        }
        Err(_) => {
            bump(&core.counters.handshakes_refused, 1);
            core.refusals.record(remote.ip(), core.now_ms());
            if core.may_log(remote.ip()) {
                warn!(%remote, "refusing peer connection: handshake timed out");
            }
            return;
        }
    };
    debug!(%remote, peer = ?accepted.peer, access = ?accepted.access, legacy = accepted.bound.is_none(), "peer connection accepted");
    let reach = (accepted.peer.node_id != 0).then(|| core.reach(accepted.peer.node_id));
    let _guard = reach.clone().map(InboundConnGuard::new);
    // Replies are produced by the agent at its own pace; a small channel feeds this
    // connection's write half while the reader keeps reading.
    let (reply_tx, mut reply_rx) = mpsc::channel::<PeerEnvelope>(16);
    let writer = async move {
        while let Some(env) = reply_rx.recv().await {
            if write_envelope(&mut w, &env).await.is_err() {
                return;
            }
        }
    };
    let reader = read_loop(core, &mut r, &accepted, reach.as_deref(), reply_tx, remote);
    let revoked = still_allowed(core, &accepted);
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
        () = revoked => {
            bump(&core.counters.connections_closed_revoked, 1);
            info!(%remote, node = accepted.peer.node_id, "closing peer connection: no longer allowed");
        }
    }
}

/// Resolves when the security view no longer allows this connection: its node was removed, or
/// it uses the shared secret and the cluster stopped accepting that.
async fn still_allowed(core: &Core, accepted: &Accepted) {
    let mut changed = core.security.changed.subscribe();
    loop {
        let view = core.security.view();
        let removed = accepted.access == Access::Member && !view.may_connect(accepted.peer.node_id);
        let legacy_closed = accepted.bound.is_none() && !view.legacy_open;
        if removed || legacy_closed {
            return;
        }
        if changed.changed().await.is_err() {
            // The transport is going away; the shutdown watch ends the connection.
            std::future::pending::<()>().await;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    core: &Arc<Core>,
    r: &mut R,
    acc: &Accepted,
    reach: Option<&Reach>,
    reply_tx: mpsc::Sender<PeerEnvelope>,
    remote: SocketAddr,
) {
    let bad_input = |why: &dyn fmt::Display| {
        bump(&core.counters.connections_closed_bad_input, 1);
        if core.may_log(remote.ip()) {
            warn!(%remote, node = acc.peer.node_id, "closing peer connection: {why}");
        }
    };
    loop {
        let env = match read_frame(r, MAX_FRAME_LEN).await {
            Ok(Some(env)) => env,
            Ok(None) => return,
            Err(TransportError::Io(e)) => {
                debug!(%remote, "peer connection failed: {e}");
                return;
            }
            Err(e) => return bad_input(&e),
        };
        if let Some(reach) = reach {
            reach.last_recv_ms.store(core.now_ms(), Ordering::Relaxed);
        }
        if env.cluster_id != acc.peer.cluster_id {
            bump(&core.counters.misaddressed, 1);
            continue;
        }
        match env.body {
            Some(Body::RaftMessage(bytes)) => {
                if acc.access == Access::JoinOnly {
                    return bad_input(&"raft message on a join-only connection");
                }
                core.deliver_raft(&bytes, remote, acc.bound).await;
            }
            Some(Body::JoinRequest(request)) => {
                let (tx, rx) = oneshot::channel();
                if core
                    .push_request(Inbound::Join { request, reply: tx })
                    .await
                {
                    spawn_reply(core, rx, Body::JoinResponse, reply_tx.clone(), acc);
                }
            }
            Some(Body::ForwardRequest(request)) => {
                if acc.access == Access::JoinOnly {
                    return bad_input(&"forward request on a join-only connection");
                }
                let (tx, rx) = oneshot::channel();
                if core
                    .push_request(Inbound::Forward { request, reply: tx })
                    .await
                {
                    spawn_reply(core, rx, Body::ForwardResponse, reply_tx.clone(), acc);
                }
            }
            Some(Body::ReachRequest(_)) => {
                if acc.access == Access::JoinOnly {
                    return bad_input(&"reach request on a join-only connection");
                }
                // Answered here, from the transport's own bookkeeping: no agent round trip.
                let env = PeerEnvelope {
                    cluster_id: acc.peer.cluster_id,
                    from: core.node_id(),
                    to: acc.peer.node_id,
                    body: Some(Body::ReachResponse(ReachResponse {
                        reachable: core.reachable_ids(),
                    })),
                };
                if reply_tx.send(env).await.is_err() {
                    return;
                }
            }
            // Hellos and responses have no meaning here; newer peers may send more.
            _ => {}
        }
    }
}
