//! Outbound connections: dialing a peer and authenticating to it ([`PeerConnection`]), over
//! TLS when this host has a certificate, with the previous release's shared-secret handshake
//! while the cluster still allows it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use vxnet_proto::PeerEnvelope;

use super::handshake::{Identity, client_handshake};
use super::security::TlsSide;
use super::tls_stream::dial_member;
use super::wire::{read_frame, write_envelope};
use super::{
    CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_FRAME_LEN, READ_BUF, RemotePeer, TransportError,
};

/// The read half of a connection, buffered (plain TCP or TLS).
pub(super) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection (plain TCP or TLS).
pub(super) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// How to dial a peer: decided from this host's certificate and the security view.
#[derive(Clone, Default)]
pub(super) struct Route {
    /// Our TLS side, once we have a certificate.
    pub(super) tls: Option<Arc<TlsSide>>,
    /// Whether the shared-secret handshake is still allowed (a previous-release peer).
    pub(super) legacy_ok: bool,
    /// The peer is known to have no certificate yet: skip the TLS attempt.
    pub(super) legacy_first: bool,
}

/// An authenticated client connection: the building block of [`join`](super::join),
/// [`forward`](fn@super::forward) and the per-peer writers, public for tools and tests that speak
/// the protocol frame by frame.
pub struct PeerConnection {
    pub(super) reader: BoxRead,
    pub(super) writer: BoxWrite,
    pub(super) remote: RemotePeer,
    /// Authenticated with the previous release's shared-secret handshake.
    pub(super) legacy: bool,
}

impl fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConnection")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl PeerConnection {
    /// Connects to `addr` and performs the handshake with our identity (`cluster_id` 0 = not
    /// joined: the server then only accepts join requests), all within `timeout`.
    pub async fn connect(
        addr: &str,
        token: Option<&str>,
        host_name: &str,
        node_id: u64,
        cluster_id: u64,
        timeout: Duration,
    ) -> Result<PeerConnection, TransportError> {
        let me = Identity {
            token: token.unwrap_or("").as_bytes(),
            host_name,
            node_id,
            cluster_id,
        };
        tokio::time::timeout(timeout, connect_inner(addr, me, None, &Route::legacy()))
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    /// The server's identity as proven in the handshake.
    pub fn remote(&self) -> &RemotePeer {
        &self.remote
    }

    /// Whether the connection uses the previous release's shared-secret handshake (else TLS).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Writes one envelope as a frame.
    pub async fn send(&mut self, env: &PeerEnvelope) -> Result<(), TransportError> {
        write_envelope(&mut self.writer, env).await
    }

    /// Writes raw bytes (no framing), e.g. to test how a server copes with garbage.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Reads the next frame; `None` when the server closed the connection cleanly.
    pub async fn recv(&mut self) -> Result<Option<PeerEnvelope>, TransportError> {
        read_frame(&mut self.reader, MAX_FRAME_LEN).await
    }
}

impl Route {
    /// The shared-secret handshake only (a host without a certificate, or a test client).
    pub(super) fn legacy() -> Route {
        Route {
            tls: None,
            legacy_ok: true,
            legacy_first: true,
        }
    }
}

pub(super) async fn tcp_connect(addr: &str) -> Result<TcpStream, TransportError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout)?
        .map_err(|source| TransportError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // Raft heartbeats are small and latency-sensitive; failure here only costs latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Dials `addr` and authenticates as `me`: over TLS when `route` has our certificate (falling
/// back to the shared secret if the peer turns out to run the previous release and the cluster
/// still allows it), else with the shared-secret handshake. `expect` is the node id a writer
/// dials (see [`client_handshake`]).
pub(super) async fn connect_inner(
    addr: &str,
    me: Identity<'_>,
    expect: Option<u64>,
    route: &Route,
) -> Result<PeerConnection, TransportError> {
    if let Some(side) = route.tls.as_ref().filter(|_| !route.legacy_first) {
        let stream = tcp_connect(addr).await?;
        match dial_member(stream, side, me, expect).await {
            Err(TransportError::LegacyPeer) if route.legacy_ok => {}
            Err(TransportError::LegacyPeer) => return Err(TransportError::LegacyRefused),
            other => return other,
        }
    }
    let stream = tcp_connect(addr).await?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(READ_BUF, r);
    let remote = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        client_handshake(&mut r, &mut w, me, expect),
    )
    .await
    .map_err(|_| TransportError::Timeout)??;
    Ok(PeerConnection {
        reader: Box::new(r),
        writer: Box::new(w),
        remote,
        legacy: true,
    })
}
