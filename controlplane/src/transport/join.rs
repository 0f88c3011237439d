//! Joining over TLS, both ends: the joiner's verifier of the member it reaches (the CA pinned by
//! a join token, or any self-consistent chain for a bare secret), the joiner's request with its
//! proof of the join secret, and a member's answer on a connection that presented no
//! certificate. Proofs are bound to the TLS session's exporter, so neither side's proof can be
//! relayed to another session.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tracing::warn;
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{
    ApplyFailure, ErrorKind, JoinRequest, JoinResponse, PeerEnvelope, join_response,
};

use super::connection::tcp_connect;
use super::pki::sha256;
use super::shared::{Core, bump};
use super::tls::{SessionExt, any_member_name, provider};
use super::tls_stream::{Sniff, tls_error};
use super::token::{
    JoinKey, JoinToken, client_proof, server_proof, verify_client_proof, verify_server_proof,
};
use super::wire::{read_frame, write_envelope};
use super::{Inbound, MAX_FRAME_LEN, READ_BUF, TransportError};

/// Largest request a stranger may send on a join-only connection (a registration and a CSR
/// take well under 2 KiB).
pub(super) const JOIN_FRAME_LEN: usize = 16 * 1024;
/// How long a member waits before answering a wrong proof: online guessing gets slow.
const WRONG_PROOF_DELAY: Duration = Duration::from_secs(1);

/// Why a join did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Retrying cannot help (wrong secret, another cluster, an impostor): the message says why
    /// and what to do.
    #[error("{0}")]
    Final(String),
    /// The member runs the previous release (shared-secret handshake only).
    #[error("the member runs a previous vxnet release (shared-secret handshake only)")]
    Legacy,
    /// Worth retrying (unreachable, reset, timed out).
    #[error(transparent)]
    Retry(#[from] TransportError),
}

/// The joiner's verifier of the member's certificate chain. With a join token, the chain must
/// hold the CA whose digest the token carries, and the member's certificate must chain to that
/// CA alone. With a bare secret, the chain must hold some CA the member's certificate chains to;
/// that CA is only trusted once the member has proven the secret on this session.
pub(super) struct JoinVerifier {
    pinned: Option<[u8; 32]>,
    /// The CA the handshake ended in, for the caller to compare with the one the answer names.
    ca: Mutex<Option<Vec<u8>>>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for JoinVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinVerifier")
            .field("pinned", &self.pinned.is_some())
            .finish_non_exhaustive()
    }
}

impl JoinVerifier {
    pub(super) fn new(pinned: Option<[u8; 32]>) -> JoinVerifier {
        JoinVerifier {
            pinned,
            ca: Mutex::new(None),
            algs: provider().signature_verification_algorithms,
        }
    }

    fn handshake_ca(&self) -> Option<Vec<u8>> {
        self.ca
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ServerCertVerifier for JoinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let candidates = intermediates.iter().filter(|c| {
            self.pinned
                .is_none_or(|digest| sha256(c.as_ref()) == digest)
        });
        for ca in candidates {
            let Ok(anchor) = webpki::anchor_from_trusted_cert(ca) else {
                continue;
            };
            let anchors = [anchor];
            let verified = ee.verify_for_usage(
                self.algs.all,
                &anchors,
                &[],
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            );
            if verified.is_ok() {
                *self.ca.lock().unwrap_or_else(PoisonError::into_inner) = Some(ca.to_vec());
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn joiner_config(verifier: Arc<JoinVerifier>) -> Result<Arc<ClientConfig>, JoinError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| JoinError::Final(format!("TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Asks the member at `addr` to register this host, over TLS: `request` carries the host (with
/// its key pin and level) and a CSR for that key; the proof is added here. A
/// [`JoinError::Legacy`] member can be joined with [`join`](super::join) and the bare secret.
pub async fn join_tls(
    addr: &str,
    token: &JoinToken,
    mut request: JoinRequest,
    timeout: Duration,
) -> Result<JoinResponse, JoinError> {
    let call = async {
        let stream = tcp_connect(addr).await?;
        let verifier = Arc::new(JoinVerifier::new(token.ca_digest().copied()));
        let connector = TlsConnector::from(joiner_config(verifier.clone())?);
        let tls = match connector
            .connect(any_member_name(), Sniff::new(stream))
            .await
            .map_err(tls_error)
        {
            Ok(tls) => tls,
            Err(TransportError::LegacyPeer) => return Err(JoinError::Legacy),
            Err(TransportError::Tls(why)) => {
                return Err(JoinError::Final(match token.ca_digest() {
                    Some(_) => format!(
                        "{addr} does not present this cluster's CA (the fingerprint in the join \
                         token): wrong address, a token of another cluster, or an impostor ({why})"
                    ),
                    None => format!("the TLS handshake with {addr} failed: {why}"),
                }));
            }
            Err(e) => return Err(JoinError::Retry(e)),
        };
        let ekm = tls
            .join_exporter()
            .map_err(|e| JoinError::Final(e.to_string()))?;
        request.proof = client_proof(token.key(), &ekm, &request.csr).to_vec();
        let (r, mut w) = tokio::io::split(tls);
        let mut r = BufReader::with_capacity(READ_BUF, r);
        let env = PeerEnvelope {
            body: Some(Body::JoinRequest(request)),
            ..PeerEnvelope::default()
        };
        write_envelope(&mut w, &env).await?;
        let answer = loop {
            match read_frame(&mut r, MAX_FRAME_LEN).await {
                Ok(Some(PeerEnvelope {
                    body: Some(Body::JoinResponse(answer)),
                    ..
                })) => break answer,
                Ok(Some(_)) => continue,
                Ok(None) => return Err(JoinError::Retry(TransportError::Closed)),
                Err(TransportError::Io(e)) => return Err(JoinError::Retry(tls_error(e))),
                Err(e) => return Err(JoinError::Retry(e)),
            }
        };
        check_answer(&answer, token.key(), &ekm, verifier.handshake_ca())?;
        Ok(answer)
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| JoinError::Retry(TransportError::Timeout))?
}

/// The joiner's checks of an answer: a refused proof is final; an acceptance must come with a
/// certificate, the CA the handshake ended in, and the member's proof of the secret.
fn check_answer(
    answer: &JoinResponse,
    key: &JoinKey,
    ekm: &[u8],
    handshake_ca: Option<Vec<u8>>,
) -> Result<(), JoinError> {
    match &answer.result {
        Some(join_response::Result::Error(f)) if f.kind == ErrorKind::Unauthenticated as i32 => {
            Err(JoinError::Final(f.message.clone()))
        }
        Some(join_response::Result::Accepted(accepted)) => {
            let Some(cert) = accepted.cert_chain.first() else {
                return Err(JoinError::Final(
                    "the member accepted the join without issuing a certificate".into(),
                ));
            };
            if handshake_ca.as_deref() != Some(accepted.ca_cert.as_slice()) {
                return Err(JoinError::Final(
                    "the member named another CA than the one it presented: refusing".into(),
                ));
            }
            verify_server_proof(
                key,
                ekm,
                &accepted.ca_cert,
                accepted.node_id,
                cert,
                &accepted.server_proof,
            )
            .map_err(|_| {
                JoinError::Final(
                    "the member did not prove the join secret: not this cluster, or a man in \
                     the middle"
                        .into(),
                )
            })
        }
        _ => Ok(()),
    }
}

fn refusal(message: &str) -> JoinResponse {
    JoinResponse {
        result: Some(join_response::Result::Error(ApplyFailure {
            kind: ErrorKind::Unauthenticated as i32,
            message: message.to_string(),
        })),
    }
}

/// A join request whose proof verified, with what the answer needs.
pub(super) struct VerifiedJoin {
    request: JoinRequest,
    key: JoinKey,
    ekm: [u8; super::tls::EXPORTER_LEN],
    writer: tokio::io::WriteHalf<tokio_rustls::server::TlsStream<TcpStream>>,
}

/// A member's side of a connection that presented no certificate, until the proof: one join
/// request whose proof of the join secret must verify. A wrong proof is answered (after a
/// delay) and gives `None`.
pub(super) async fn read_join(
    core: &Core,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    remote: std::net::SocketAddr,
) -> Result<Option<VerifiedJoin>, TransportError> {
    let ekm = tls
        .join_exporter()
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::with_capacity(READ_BUF, r);
    let env = read_frame(&mut r, JOIN_FRAME_LEN)
        .await?
        .ok_or(TransportError::Closed)?;
    let Some(Body::JoinRequest(request)) = env.body else {
        return Err(TransportError::Protocol(
            "a connection without a certificate may only ask to join".into(),
        ));
    };
    let view = core.security.view();
    let Some(key) = view.join_key.clone() else {
        return Err(TransportError::Protocol(
            "this cluster has no join key".into(),
        ));
    };
    if !request.csr.is_empty()
        && verify_client_proof(&key, &ekm, &request.csr, &request.proof).is_ok()
    {
        return Ok(Some(VerifiedJoin {
            request,
            key,
            ekm,
            writer: w,
        }));
    }
    bump(&core.counters.joins_refused, 1);
    if core.may_log(remote.ip()) {
        warn!(%remote, "refusing a join: wrong join secret");
    }
    tokio::time::sleep(WRONG_PROOF_DELAY).await;
    let answer = refusal(
        "wrong join token: the secret does not match this cluster's (print the current token \
         with `vxnet cluster join-token` on a member)",
    );
    let env = PeerEnvelope {
        body: Some(Body::JoinResponse(answer)),
        ..PeerEnvelope::default()
    };
    write_envelope(&mut w, &env).await?;
    let _ = w.shutdown().await;
    Ok(None)
}

/// Hands a verified join to the agent and writes its answer, with the member's proof.
pub(super) async fn answer_join(core: &Core, join: VerifiedJoin) -> Result<(), TransportError> {
    let VerifiedJoin {
        request,
        key,
        ekm,
        mut writer,
    } = join;
    let (tx, rx) = oneshot::channel();
    if !core
        .push_request(Inbound::Join { request, reply: tx })
        .await
    {
        return Err(TransportError::Timeout);
    }
    let mut answer = rx.await.map_err(|_| TransportError::Closed)?;
    if let Some(join_response::Result::Accepted(accepted)) = answer.result.as_mut()
        && let Some(cert) = accepted.cert_chain.first()
    {
        accepted.server_proof =
            server_proof(&key, &ekm, &accepted.ca_cert, accepted.node_id, cert).to_vec();
    }
    let env = PeerEnvelope {
        cluster_id: core.cluster_id(),
        from: core.node_id(),
        body: Some(Body::JoinResponse(answer)),
        ..PeerEnvelope::default()
    };
    write_envelope(&mut writer, &env).await?;
    let _ = writer.shutdown().await;
    Ok(())
}
