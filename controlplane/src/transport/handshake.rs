//! The HMAC handshake that opens every connection, both sides (see the module docs of
//! [`crate::transport`] for the exchange).

use std::fmt;
use std::io;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{Hello, PeerEnvelope};

use super::shared::Core;
use super::wire::{read_frame, write_envelope};
use super::{MAX_HANDSHAKE_FRAME_LEN, RemotePeer, TransportError};

const NONCE_LEN: usize = 16;
const CLIENT_LABEL: &[u8] = b"vxnet1";
// A different label for the server's proof, so that a client's MAC can never be replayed as a
// server's (or the reverse).
const SERVER_LABEL: &[u8] = b"vxnet1-server";

type HmacSha256 = Hmac<Sha256>;

/// Who we are in a handshake: the key that proves cluster membership and the ids our `Hello`
/// carries. Taken by value for each connection: the ids change once, when we join.
#[derive(Clone, Copy)]
pub(crate) struct Identity<'a> {
    /// The shared cluster token, the HMAC key (empty when none is configured).
    pub(crate) token: &'a [u8],
    /// Our host name.
    pub(crate) host_name: &'a str,
    /// Our Raft node id (0 until joined).
    pub(crate) node_id: u64,
    /// Our cluster id (0 until joined: the server then only accepts join requests).
    pub(crate) cluster_id: u64,
}

impl fmt::Debug for Identity<'_> {
    // By hand so that the token never ends up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("token", &"<redacted>")
            .field("host_name", &self.host_name)
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .finish()
    }
}

/// A fresh handshake nonce from the OS random source.
pub(super) fn random_nonce() -> Result<Vec<u8>, TransportError> {
    let mut n = vec![0u8; NONCE_LEN];
    getrandom::getrandom(&mut n).map_err(|e| TransportError::Random(e.to_string()))?;
    Ok(n)
}

/// The MAC of one side's proof: `HMAC-SHA256(token, label || nonce || cluster_id BE || node_id BE)`.
fn handshake_mac(
    token: &[u8],
    label: &[u8],
    nonce: &[u8],
    cluster_id: u64,
    node_id: u64,
) -> Result<HmacSha256, TransportError> {
    // HMAC takes keys of any length; the error arm is unreachable in practice.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(token)
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    mac.update(label);
    mac.update(nonce);
    mac.update(&cluster_id.to_be_bytes());
    mac.update(&node_id.to_be_bytes());
    Ok(mac)
}

/// Whether an inbound connection may carry everything or only join requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// Same cluster id as ours: Raft messages, join and forward requests.
    Member,
    /// Cluster id 0 (not joined yet): join requests only.
    JoinOnly,
}

/// A client that passed the server handshake.
pub(super) struct Accepted {
    /// The client as it introduced itself (cluster id = the one its MAC covers).
    pub(super) peer: RemotePeer,
    /// What it may send.
    pub(super) access: Access,
    /// The node id its certificate proved (TLS); `None` for the shared-secret handshake.
    pub(super) bound: Option<u64>,
}

/// Server side: greets with a nonce, checks the client's MAC and cluster id, then proves the
/// token in turn. Our identity is read only once the client's `Hello` is in, so a join that
/// completes meanwhile is already taken into account.
pub(super) async fn server_handshake<R, W>(
    core: &Core,
    r: &mut R,
    w: &mut W,
) -> Result<Accepted, TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let nonce = random_nonce()?;
    // The greeting carries nothing but the nonce: strangers learn no ids or names.
    let greet = PeerEnvelope {
        body: Some(Body::Hello(Hello {
            nonce: nonce.clone(),
            ..Hello::default()
        })),
        ..PeerEnvelope::default()
    };
    write_envelope(w, &greet).await?;
    let env = read_frame(r, MAX_HANDSHAKE_FRAME_LEN)
        .await?
        .ok_or(TransportError::Closed)?;
    let Some(Body::Hello(hello)) = env.body else {
        return Err(TransportError::Protocol(
            "first frame is not a Hello".into(),
        ));
    };
    if hello.nonce.len() != NONCE_LEN {
        return Err(TransportError::Protocol("bad nonce length".into()));
    }
    let me = core.identity();
    handshake_mac(
        me.token,
        CLIENT_LABEL,
        &nonce,
        env.cluster_id,
        hello.node_id,
    )?
    .verify_slice(&hello.auth)
    .map_err(|_| TransportError::AuthFailed)?;
    let (my_node, my_cluster) = (me.node_id, me.cluster_id);
    let access = if env.cluster_id != 0 && env.cluster_id == my_cluster {
        Access::Member
    } else if env.cluster_id == 0 {
        // A host that has not joined cannot know the cluster id yet.
        Access::JoinOnly
    } else {
        return Err(TransportError::ClusterMismatch {
            ours: my_cluster,
            theirs: env.cluster_id,
        });
    };
    let auth = handshake_mac(me.token, SERVER_LABEL, &hello.nonce, my_cluster, my_node)?
        .finalize()
        .into_bytes()
        .to_vec();
    let confirm = PeerEnvelope {
        cluster_id: my_cluster,
        from: my_node,
        to: hello.node_id,
        body: Some(Body::Hello(Hello {
            host_name: me.host_name.to_owned(),
            node_id: my_node,
            nonce: Vec::new(),
            auth,
        })),
    };
    write_envelope(w, &confirm).await?;
    Ok(Accepted {
        peer: RemotePeer {
            host_name: hello.host_name,
            node_id: hello.node_id,
            cluster_id: env.cluster_id,
        },
        access,
        bound: None,
    })
}

/// Client side, as `me`; `expect` = the node id a writer dials (then the server's cluster id
/// and node id must match ours / it exactly).
pub(super) async fn client_handshake<R, W>(
    r: &mut R,
    w: &mut W,
    me: Identity<'_>,
    expect: Option<u64>,
) -> Result<RemotePeer, TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Identity {
        token,
        host_name,
        node_id,
        cluster_id,
    } = me;
    let env = read_frame(r, MAX_HANDSHAKE_FRAME_LEN)
        .await?
        .ok_or(TransportError::Closed)?;
    let Some(Body::Hello(greet)) = env.body else {
        return Err(TransportError::Protocol(
            "server did not greet with a Hello".into(),
        ));
    };
    if greet.nonce.len() != NONCE_LEN {
        return Err(TransportError::Protocol("bad server nonce length".into()));
    }
    let nonce = random_nonce()?;
    let auth = handshake_mac(token, CLIENT_LABEL, &greet.nonce, cluster_id, node_id)?
        .finalize()
        .into_bytes()
        .to_vec();
    let hello = PeerEnvelope {
        cluster_id,
        from: node_id,
        to: expect.unwrap_or(0),
        body: Some(Body::Hello(Hello {
            host_name: host_name.to_owned(),
            node_id,
            nonce: nonce.clone(),
            auth,
        })),
    };
    write_envelope(w, &hello).await?;
    let env = match read_frame(r, MAX_HANDSHAKE_FRAME_LEN).await {
        Ok(Some(env)) => env,
        // The server closes without a word when it refuses us.
        Ok(None) | Err(TransportError::Closed) => return Err(TransportError::Refused),
        Err(TransportError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            return Err(TransportError::Refused);
        }
        Err(e) => return Err(e),
    };
    let Some(Body::Hello(confirm)) = env.body else {
        return Err(TransportError::Protocol(
            "server did not confirm with a Hello".into(),
        ));
    };
    handshake_mac(token, SERVER_LABEL, &nonce, env.cluster_id, confirm.node_id)?
        .verify_slice(&confirm.auth)
        .map_err(|_| TransportError::AuthFailed)?;
    if (cluster_id != 0 || expect.is_some()) && env.cluster_id != cluster_id {
        return Err(TransportError::ClusterMismatch {
            ours: cluster_id,
            theirs: env.cluster_id,
        });
    }
    if let Some(id) = expect
        && confirm.node_id != id
    {
        return Err(TransportError::Protocol(format!(
            "expected node {id}, found node {}",
            confirm.node_id
        )));
    }
    Ok(RemotePeer {
        host_name: confirm.host_name,
        node_id: confirm.node_id,
        cluster_id: env.cluster_id,
    })
}
