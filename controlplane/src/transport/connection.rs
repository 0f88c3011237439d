//! Outbound connections: dialing a peer and authenticating to it ([`PeerConnection`]).

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use vxnet_proto::PeerEnvelope;

use super::handshake::{Identity, client_handshake};
use super::wire::{read_frame, write_envelope};
use super::{
    CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_FRAME_LEN, READ_BUF, RemotePeer, TransportError,
};

/// An authenticated client connection: the building block of [`join`](super::join),
/// [`forward`](fn@super::forward) and the per-peer writers, public for tools and tests that speak
/// the protocol frame by frame.
pub struct PeerConnection {
    pub(super) reader: BufReader<OwnedReadHalf>,
    pub(super) writer: OwnedWriteHalf,
    pub(super) remote: RemotePeer,
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
        tokio::time::timeout(timeout, connect_inner(addr, me, None))
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    /// The server's identity as proven in the handshake.
    pub fn remote(&self) -> &RemotePeer {
        &self.remote
    }

    /// Writes one envelope as a frame.
    pub async fn send(&mut self, env: &PeerEnvelope) -> Result<(), TransportError> {
        write_envelope(&mut self.writer, env).await
    }

    /// Writes raw bytes (no framing), e.g. to test how a server copes with garbage.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next frame; `None` when the server closed the connection cleanly.
    pub async fn recv(&mut self) -> Result<Option<PeerEnvelope>, TransportError> {
        read_frame(&mut self.reader, MAX_FRAME_LEN).await
    }
}

/// Dials `addr` and performs the client handshake as `me`, each step under its own timeout;
/// `expect` is the node id a writer dials (see [`client_handshake`]).
pub(super) async fn connect_inner(
    addr: &str,
    me: Identity<'_>,
    expect: Option<u64>,
) -> Result<PeerConnection, TransportError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout)?
        .map_err(|source| TransportError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // Raft heartbeats are small and latency-sensitive; failure here only costs latency.
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(READ_BUF, r);
    let remote = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        client_handshake(&mut r, &mut w, me, expect),
    )
    .await
    .map_err(|_| TransportError::Timeout)??;
    Ok(PeerConnection {
        reader: r,
        writer: w,
        remote,
    })
}
