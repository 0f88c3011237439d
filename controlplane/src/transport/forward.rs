//! Join, forward and reach requests: the one-shot client RPCs, and the server's replies to them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{ForwardRequest, ForwardResponse, JoinRequest, JoinResponse, PeerEnvelope};

use super::TransportError;
use super::connection::{Route, connect_inner};
use super::handshake::{Accepted, Identity};
use super::shared::Core;

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
                    if let Some(t) = env.body.and_then(&pick) {
                        return Ok(t);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| TransportError::Timeout)?
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
