//! Join, forward and reach requests: the one-shot client RPCs, and the server's replies to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{ForwardRequest, ForwardResponse, JoinRequest, JoinResponse, PeerEnvelope};

use super::TransportError;
use super::connection::{PeerConnection, Route, connect_inner};
use super::handshake::{Accepted, Identity};
use super::shared::{Core, lock};

/// One-shot join RPC with the previous release's shared-secret handshake (cluster id 0, one
/// request, one response, close), with a timeout: to join a cluster of that release (see
/// [`join_tls`](super::join_tls) for the TLS join).
pub async fn join(
    addr: &str,
    token: Option<&str>,
    host_name: &str,
    request: JoinRequest,
    timeout: Duration,
) -> Result<JoinResponse, TransportError> {
    let me = Identity {
        token: token.unwrap_or("").as_bytes(),
        host_name,
        node_id: 0,
        cluster_id: 0,
    };
    rpc(
        addr,
        me,
        &Route::legacy(),
        Body::JoinRequest(request),
        timeout,
        |b| match b {
            Body::JoinResponse(r) => Some(r),
            _ => None,
        },
    )
    .await
}

/// One-shot forward RPC with the shared-secret handshake (one request, one response, close),
/// with a timeout; members use [`Transport::forward`](super::Transport::forward).
pub async fn forward(
    addr: &str,
    token: Option<&str>,
    host_name: &str,
    node_id: u64,
    cluster_id: u64,
    request: ForwardRequest,
    timeout: Duration,
) -> Result<ForwardResponse, TransportError> {
    let me = Identity {
        token: token.unwrap_or("").as_bytes(),
        host_name,
        node_id,
        cluster_id,
    };
    rpc(
        addr,
        me,
        &Route::legacy(),
        Body::ForwardRequest(request),
        timeout,
        |b| match b {
            Body::ForwardResponse(r) => Some(r),
            _ => None,
        },
    )
    .await
}

/// Connects as `me`, sends `body`, and returns the first answer `pick` accepts, all within
/// `timeout`.
pub(super) async fn rpc<T>(
    addr: &str,
    me: Identity<'_>,
    route: &Route,
    body: Body,
    timeout: Duration,
    pick: impl Fn(Body) -> Option<T>,
) -> Result<T, TransportError> {
    let call = async {
        let mut conn = connect_inner(addr, me, None, route).await?;
        exchange(&mut conn, me, body, &pick).await
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| TransportError::Timeout)?
}

/// How long a connection kept for the next call to the same address may stay unused.
pub(super) const POOL_IDLE: Duration = Duration::from_secs(5);
/// Most idle connections kept per address.
const POOL_PER_ADDR: usize = 4;

/// Idle authenticated client connections by address, so that a forwarded write does not pay a
/// TCP and TLS handshake each time.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<HashMap<String, Vec<(Instant, PeerConnection)>>>,
    /// Bumped by [`Pool::clear`]: a connection made or taken before is not kept.
    generation: AtomicU64,
}

impl Pool {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn take(&self, addr: &str) -> Option<PeerConnection> {
        let mut idle = lock(&self.idle);
        let conns = idle.get_mut(addr)?;
        while let Some((since, conn)) = conns.pop() {
            if since.elapsed() < POOL_IDLE {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, addr: &str, conn: PeerConnection, generation: u64) {
        let mut idle = lock(&self.idle);
        if generation != self.generation() {
            return;
        }
        let conns = idle.entry(addr.to_owned()).or_default();
        if conns.len() < POOL_PER_ADDR {
            conns.push((Instant::now(), conn));
        }
    }

    /// Drops every kept connection: the security view changed (a node was removed, the
    /// shared-secret window closed) or our certificate did, and a kept connection must not
    /// outlive what allowed it.
    pub(super) fn clear(&self) {
        let mut idle = lock(&self.idle);
        self.generation.fetch_add(1, Ordering::AcqRel);
        idle.clear();
    }

    /// Drops connections unused for [`POOL_IDLE`].
    pub(super) fn expire(&self) {
        let mut idle = lock(&self.idle);
        for conns in idle.values_mut() {
            conns.retain(|(since, _)| since.elapsed() < POOL_IDLE);
        }
        idle.retain(|_, conns| !conns.is_empty());
    }
}

/// One call on a kept connection to `addr` if there is one (once: a connection the server has
/// closed meanwhile fails at once, and the call is made again on a new one), else on a new
/// connection, which is kept afterwards. Requests carry ids, so a repeated one is harmless.
pub(super) async fn pooled_rpc<T>(
    core: &Arc<Core>,
    addr: &str,
    body: Body,
    timeout: Duration,
    pick: impl Fn(Body) -> Option<T>,
) -> Result<T, TransportError> {
    let call = async {
        let me = core.identity();
        let generation = core.pool.generation();
        if let Some(mut conn) = core.pool.take(addr)
            && let Ok(t) = exchange(&mut conn, me, body.clone(), &pick).await
        {
            core.pool.put(addr, conn, generation);
            return Ok(t);
        }
        let generation = core.pool.generation();
        let mut conn = connect_inner(addr, me, None, &core.route(None)).await?;
        let t = exchange(&mut conn, me, body, &pick).await?;
        core.pool.put(addr, conn, generation);
        Ok(t)
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| TransportError::Timeout)?
}

/// Sends `body` and returns the first answer `pick` accepts.
async fn exchange<T>(
    conn: &mut PeerConnection,
    me: Identity<'_>,
    body: Body,
    pick: &impl Fn(Body) -> Option<T>,
) -> Result<T, TransportError> {
    let env = PeerEnvelope {
        cluster_id: me.cluster_id,
        from: me.node_id,
        to: conn.remote.node_id,
        body: Some(body),
    };
    conn.send(&env).await?;
    loop {
        match conn.recv().await? {
            None => return Err(TransportError::Closed),
            // Anything else on the connection is not ours to answer: skip it.
            Some(env) => {
                if let Some(t) = env.body.and_then(pick) {
                    return Ok(t);
                }
            }
        }
    }
}

/// Waits for the agent's answer and queues it on the connection; gives up silently when the
/// agent drops the oneshot, the connection ends or the transport shuts down.
pub(super) fn spawn_reply<T: Send + 'static>(
    core: &Arc<Core>,
    rx: oneshot::Receiver<T>,
    wrap: fn(T) -> Body,
    reply_tx: mpsc::Sender<PeerEnvelope>,
    acc: &Accepted,
) {
    let mut shutdown = core.shutdown.clone();
    let (cluster_id, to) = (acc.peer.cluster_id, acc.peer.node_id);
    let core = core.clone();
    core.runtime.clone().spawn(async move {
        let answer = tokio::select! {
            r = rx => r.ok(),
            _ = reply_tx.closed() => None,
            _ = shutdown.changed() => None,
        };
        if let Some(answer) = answer {
            let env = PeerEnvelope {
                cluster_id,
                from: core.node_id(),
                to,
                body: Some(wrap(answer)),
            };
            let _ = reply_tx.send(env).await;
        }
    });
}
