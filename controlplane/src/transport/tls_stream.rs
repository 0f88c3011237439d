//! TLS on the peer channel: dialing a member and accepting one (the TLS handshake, then one
//! `Hello` each way inside TLS that binds the claimed node id to the certificate's), telling a
//! previous-release peer from a TLS one by its first byte, and turning TLS failures into
//! [`TransportError`]s that say what to do.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{Hello, PeerEnvelope};

use super::connection::{BoxRead, BoxWrite, PeerConnection};
use super::handshake::Identity;
use super::pki::CertIdentity;
use super::security::TlsSide;
use super::tls::{SessionExt, any_member_name, server_name};
use super::wire::{read_frame, write_envelope};
use super::{HANDSHAKE_TIMEOUT, MAX_HANDSHAKE_FRAME_LEN, READ_BUF, RemotePeer, TransportError};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a server waits for a client's first byte before greeting it the previous release's
/// way (that release's clients wait for the server's greeting).
pub(super) const LEGACY_WAIT: Duration = Duration::from_millis(300);

/// What a new inbound connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    /// A TLS ClientHello.
    Tls,
    /// Nothing within [`LEGACY_WAIT`]: a client of the previous release, waiting for a greeting.
    Silent,
    /// Anything else.
    Garbage(u8),
    /// The client closed (or the socket failed) before sending anything.
    Closed,
}

/// Looks at the first byte of an accepted connection without consuming it.
pub(super) async fn opening(stream: &TcpStream) -> Opening {
    let mut first = [0u8; 1];
    match tokio::time::timeout(LEGACY_WAIT, stream.peek(&mut first)).await {
        Err(_) => Opening::Silent,
        Ok(Ok(0)) | Ok(Err(_)) => Opening::Closed,
        Ok(Ok(_)) if first[0] == TLS_HANDSHAKE => Opening::Tls,
        Ok(Ok(_)) => Opening::Garbage(first[0]),
    }
}

/// The error a [`Sniff`] stream returns when the server greets the previous release's way.
#[derive(Debug, thiserror::Error)]
#[error("the peer greeted with the previous release's handshake")]
struct LegacyGreeting;

/// A client stream that recognises a previous-release server: those greet every connection at
/// once with a frame, whose length prefix starts with a zero byte, where a TLS server answers
/// with a record (0x16 or an alert, 0x15).
pub(super) struct Sniff<S> {
    inner: S,
    checked: bool,
}

impl<S> Sniff<S> {
    pub(super) fn new(inner: S) -> Sniff<S> {
        Sniff {
            inner,
            checked: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if !this.checked && buf.filled().len() > before {
                    this.checked = true;
                    if buf.filled()[before] == 0 {
                        return Poll::Ready(Err(io::Error::other(LegacyGreeting)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// An I/O error of a TLS connection as the transport's error: a previous-release greeting, a
/// refusal by the peer (revoked: final), our refusal of the peer, or plain I/O.
pub(super) fn tls_error(e: io::Error) -> TransportError {
    if e.get_ref()
        .is_some_and(|i| i.downcast_ref::<LegacyGreeting>().is_some())
    {
        return TransportError::LegacyPeer;
    }
    match rustls_error(&e) {
        Some(rustls::Error::AlertReceived(AlertDescription::CertificateRevoked)) => {
            TransportError::Revoked
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            TransportError::Tls(format!("the peer refused our certificate ({alert:?})"))
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => {
            TransportError::Tls("the peer's certificate is revoked (it was removed)".into())
        }
        Some(other) => TransportError::Tls(other.to_string()),
        None if e.kind() == io::ErrorKind::UnexpectedEof => TransportError::Closed,
        None => TransportError::Io(e),
    }
}

/// Maps errors of the first frames read on a TLS connection (a refusal shows up there in TLS
/// 1.3: the client finishes its handshake before the server has judged its certificate).
fn tls_read_error(e: TransportError) -> TransportError {
    match e {
        TransportError::Io(e) => tls_error(e),
        other => other,
    }
}

fn hello(me: &Identity<'_>, to: u64) -> PeerEnvelope {
    PeerEnvelope {
        cluster_id: me.cluster_id,
        from: me.node_id,
        to,
        body: Some(Body::Hello(Hello {
            host_name: me.host_name.to_owned(),
            node_id: me.node_id,
            ..Hello::default()
        })),
    }
}

/// The `Hello` a peer sent inside TLS, checked against its certificate.
fn check_hello(env: Option<PeerEnvelope>, id: &CertIdentity) -> Result<String, TransportError> {
    let env = env.ok_or(TransportError::Refused)?;
    let Some(Body::Hello(hello)) = env.body else {
        return Err(TransportError::Protocol("expected a Hello".into()));
    };
    if hello.node_id != id.node_id || env.from != id.node_id || env.cluster_id != id.cluster_id {
        return Err(TransportError::Protocol(format!(
            "the peer claims node {} of cluster {:016x}, its certificate names node {} of {:016x}",
            hello.node_id, env.cluster_id, id.node_id, id.cluster_id
        )));
    }
    Ok(hello.host_name)
}

/// Dials a member over TLS: `expect` is the node id the caller wants (`None`: whichever member
/// listens at `addr`, for one-shot calls).
pub(super) async fn dial_member(
    stream: TcpStream,
    side: &TlsSide,
    me: Identity<'_>,
    expect: Option<u64>,
) -> Result<PeerConnection, TransportError> {
    let name = expect.map_or_else(any_member_name, server_name);
    let connector = TlsConnector::from(side.client.clone());
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tls = connector
            .connect(name, Sniff::new(stream))
            .await
            .map_err(tls_error)?;
        let Some(id) = tls.peer_identity() else {
            return Err(TransportError::Protocol(
                "server sent no certificate".into(),
            ));
        };
        let (r, mut w) = tokio::io::split(tls);
        let mut r = BufReader::with_capacity(READ_BUF, r);
        write_envelope(&mut w, &hello(&me, id.node_id))
            .await
            .map_err(tls_read_error)?;
        let env = read_frame(&mut r, MAX_HANDSHAKE_FRAME_LEN)
            .await
            .map_err(tls_read_error)?;
        let host_name = check_hello(env, &id)?;
        Ok((r, w, id, host_name))
    })
    .await
    .map_err(|_| TransportError::Timeout)?;
    let (r, w, id, host_name) = tls?;
    Ok(PeerConnection {
        reader: Box::new(r) as BoxRead,
        writer: Box::new(w) as BoxWrite,
        remote: RemotePeer {
            host_name,
            node_id: id.node_id,
            cluster_id: id.cluster_id,
        },
        legacy: false,
    })
}

/// A TLS connection accepted by a member.
pub(super) enum TlsAccepted {
    /// The client presented a member certificate and a matching `Hello`.
    Member {
        reader: BoxRead,
        writer: BoxWrite,
        peer: RemotePeer,
    },
    /// The client presented no certificate: it may only ask to join, with a proof.
    JoinOnly(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Accepts a TLS connection whose ClientHello is waiting in `stream`; `me` answers a member's
/// `Hello`.
pub(super) async fn accept(
    stream: TcpStream,
    side: &TlsSide,
    me: Identity<'_>,
) -> Result<TlsAccepted, TransportError> {
    let acceptor = TlsAcceptor::from(side.server.clone());
    let tls = acceptor.accept(stream).await.map_err(tls_error)?;
    let Some(id) = tls.peer_identity() else {
        return Ok(TlsAccepted::JoinOnly(Box::new(tls)));
    };
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::with_capacity(READ_BUF, r);
    let env = read_frame(&mut r, MAX_HANDSHAKE_FRAME_LEN)
        .await
        .map_err(tls_read_error)?;
    let host_name = check_hello(env, &id)?;
    write_envelope(&mut w, &hello(&me, id.node_id))
        .await
        .map_err(tls_read_error)?;
    Ok(TlsAccepted::Member {
        reader: Box::new(r),
        writer: Box::new(w),
        peer: RemotePeer {
            host_name,
            node_id: id.node_id,
            cluster_id: id.cluster_id,
        },
    })
}
