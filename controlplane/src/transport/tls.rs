//! Mutual TLS between members: rustls configurations, the member verifier, the own-certificate
//! resolver and the session exporter.
//!
//! TLS 1.3 only, with ring passed explicitly (`builder_with_provider`: a dependency enabling
//! another provider cannot change ours), no session resumption (every connection meets the
//! verifier and the current membership), no SNI (the node id a client dials stays local).
//!
//! The [`MemberVerifier`] is both the server's client verifier and the client's server
//! verifier. In order it checks: the chain against the CAs the [`Trust`] names (webpki, EKU
//! serverAuth/clientAuth), the node identity in the URI SAN (cluster id ours), membership and
//! revocation, the key pin, and on the client side the node id it dialed. Failures map to TLS
//! alerts the peer can act on: `certificate_revoked` (removed: final), `unknown_ca`,
//! `certificate_expired`, `access_denied` (pin mismatch, not a member yet, foreign cluster),
//! and `NotValidForName` locally when a client reached another node than it dialed.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};

use super::pki::{CertIdentity, NodeKey, PkiError, cert_identity};

/// Label of the TLS exporter both ends of a join bind their proofs to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-vxnet-join-v1";
/// Length of the exported keying material.
pub const EXPORTER_LEN: usize = 32;
/// Most certificates a peer may send besides its own: its CA (so that a joiner can pin it) and
/// the cross-signed CA during a rotation.
const MAX_INTERMEDIATES: usize = 2;

/// Errors building configurations or reading a session.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (e.g. protocol versions).
    #[error("TLS configuration: {0}")]
    Config(#[source] Error),
    /// The node key or certificate chain cannot be used (unparsable, or they do not match).
    #[error("unusable node certificate or key: {0}")]
    Credentials(#[source] Error),
    /// The own certificate chain is empty.
    #[error("the node certificate chain is empty")]
    EmptyChain,
    /// The keying material could not be exported (handshake not complete).
    #[error("cannot export keying material: {0}")]
    Exporter(#[source] Error),
    /// A certificate could not be read.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The replicated state's view that a verifier consults at every handshake. Implementations
/// read the agent's applied state (an atomically swapped snapshot: never block here, this runs
/// inside the handshake).
pub trait Trust: Send + Sync + fmt::Debug {
    /// The CA certificates trusted now (one; two during a CA rotation).
    fn trusted_cas(&self) -> Vec<CertificateDer<'static>>;
    /// Whether `node_id` is a current member.
    fn is_member(&self, node_id: u64) -> bool;
    /// The SHA-256 pin of a member's SubjectPublicKeyInfo; `None` if the member has no pin
    /// (yet): it is then accepted on its chain alone (upgrade window or a lagging replica).
    fn member_pin(&self, node_id: u64) -> Option<[u8; 32]>;
    /// Whether `node_id` was a member and was removed (ids are never reused: below the next id
    /// and absent). Final: answered with `certificate_revoked`.
    fn was_removed(&self, node_id: u64) -> bool;
}

/// Which end of a connection a certificate authenticates (its required EKU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer is the client of the connection (EKU clientAuth).
    Client,
    /// The peer is the server of the connection (EKU serverAuth).
    Server,
}

/// The ring provider, the one crypto provider vxnet uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The local-only server name a member dials for `node_id` (`n<id>.vxnet`): the client
/// verifier reads the expected node id back from it. Never sent (SNI is off).
pub fn server_name(node_id: u64) -> ServerName<'static> {
    match ServerName::try_from(format!("n{node_id}.vxnet")) {
        Ok(name) => name,
        // `n<digits>.vxnet` is always a valid DNS name; this arm only keeps the function total.
        Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
    }
}

/// The local-only server name of a call to whichever member listens at an address (a forwarded
/// write, a reachability query): any current member is accepted there.
pub fn any_member_name() -> ServerName<'static> {
    // A constant, valid DNS name: the fallback only keeps the function total.
    ServerName::try_from("member.vxnet").unwrap_or(ServerName::IpAddress(
        std::net::Ipv4Addr::UNSPECIFIED.into(),
    ))
}

fn is_any_member(name: &ServerName<'_>) -> bool {
    matches!(name, ServerName::DnsName(d) if d.as_ref() == "member.vxnet")
}

/// The node id in a name made by [`server_name`].
pub fn expected_node(name: &ServerName<'_>) -> Option<u64> {
    let ServerName::DnsName(d) = name else {
        return None;
    };
    let digits = d.as_ref().strip_prefix('n')?.strip_suffix(".vxnet")?;
    // Canonical decimal only, as in the URI SAN.
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn invalid(e: CertificateError) -> Error {
    Error::InvalidCertificate(e)
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    invalid(CertificateError::Other(OtherError(Arc::new(e))))
}

/// webpki's error wrapped for `CertificateError::Other` (it is not `std::error::Error`).
#[derive(Debug)]
struct WebpkiError(webpki::Error);

impl fmt::Display for WebpkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate chain: {:?}", self.0)
    }
}

impl std::error::Error for WebpkiError {}

/// webpki errors as the rustls errors whose alerts say what a peer should do.
fn chain_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    match e {
        W::CertExpired { .. } => invalid(CertificateError::Expired),
        W::CertNotValidYet { .. } => invalid(CertificateError::NotValidYet),
        W::UnknownIssuer => invalid(CertificateError::UnknownIssuer),
        // The issuer is found by name, so a CA with our CA's subject but another key (another
        // cluster with the same id and generation, or a forgery) fails on the signature. For
        // the peer that is "not signed by a CA trusted here": say `unknown_ca`, not the
        // `decrypt_error` that BadSignature would send. The handshake's own signature is checked
        // elsewhere (`verify_tls13_signature`), so nothing else lands here.
        W::InvalidSignatureForPublicKey => invalid(CertificateError::UnknownIssuer),
        W::RequiredEkuNotFoundContext(_) => invalid(CertificateError::InvalidPurpose),
        W::BadDer | W::BadDerTime => invalid(CertificateError::BadEncoding),
        other_err => other(WebpkiError(other_err)),
    }
}

/// Why a verified certificate is still refused, for logs.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("certificate of cluster {0:016x}, not ours")]
    ForeignCluster(u64),
    #[error("node {0} is not a member here (yet)")]
    NotMember(u64),
    #[error("node {0}'s certificate key is not its pinned key")]
    PinMismatch(u64),
    #[error("the peer sent {0} chain certificates; at most {MAX_INTERMEDIATES} allowed")]
    LongChain(usize),
}

/// Access denied (`access_denied` alert), with the reason kept for logs.
fn denied(r: Refusal) -> Error {
    // ApplicationVerificationFailure is the variant rustls maps to `access_denied`; the reason
    // rides in a log line of the side that refused, not on the wire.
    tracing::debug!("peer certificate refused: {r}");
    invalid(CertificateError::ApplicationVerificationFailure)
}

/// The member verifier: see the module docs for what it checks.
pub struct MemberVerifier {
    cluster_id: u64,
    trust: Arc<dyn Trust>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for MemberVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberVerifier")
            .field("cluster_id", &format_args!("{:016x}", self.cluster_id))
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl MemberVerifier {
    /// A verifier for members of `cluster_id`, consulting `trust` at every handshake.
    pub fn new(cluster_id: u64, trust: Arc<dyn Trust>) -> MemberVerifier {
        MemberVerifier {
            cluster_id,
            trust,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// Everything checked of a member's certificate, at `now` (the handshake passes the clock;
    /// a renewal check may pass a time inside the certificate's validity).
    pub fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> Result<CertIdentity, Error> {
        // Only the cross-signed CA may ride along; a longer chain only costs path building.
        if intermediates.len() > MAX_INTERMEDIATES {
            return Err(denied(Refusal::LongChain(intermediates.len())));
        }
        let cas = self.trust.trusted_cas();
        let anchors = cas
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map_err(chain_error))
            .collect::<Result<Vec<_>, _>>()?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(chain_error)?;
        let usage = match role {
            PeerRole::Client => webpki::KeyUsage::client_auth(),
            PeerRole::Server => webpki::KeyUsage::server_auth(),
        };
        // The intermediate is the peer's, so a replica that has not applied a CA rotation yet
        // still reaches the old CA through the cross-signed cert. It must itself chain to a
        // trusted CA, so it grants nothing a CA-signed node certificate would not: pins and
        // membership below still decide.
        ee.verify_for_usage(
            self.algs.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(chain_error)?;

        let id = cert_identity(end_entity).map_err(other)?;
        if id.cluster_id != self.cluster_id {
            return Err(denied(Refusal::ForeignCluster(id.cluster_id)));
        }
        if !self.trust.is_member(id.node_id) {
            if self.trust.was_removed(id.node_id) {
                return Err(invalid(CertificateError::Revoked));
            }
            // A replica lagging the registration: the peer retries.
            return Err(denied(Refusal::NotMember(id.node_id)));
        }
        match self.trust.member_pin(id.node_id) {
            Some(pin) if pin != id.spki_sha256 => Err(denied(Refusal::PinMismatch(id.node_id))),
            _ => Ok(id),
        }
    }
}

impl ClientCertVerifier for MemberVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    // A client without a certificate is admitted join-only: the server must check
    // the peer's identity itself after the handshake (`SessionExt::peer_identity`).
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: a member has one certificate, and naming our CA to strangers helps no one.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify_peer(end_entity, intermediates, now, PeerRole::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Unreachable with TLS 1.3 only; answered correctly anyway.
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

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = self.verify_peer(end_entity, intermediates, now, PeerRole::Server)?;
        // A member dials a node id: reaching any other member (an address reused, a stale
        // peer list) must fail, not silently talk to the wrong node.
        match expected_node(server_name) {
            Some(want) if want == id.node_id => Ok(ServerCertVerified::assertion()),
            None if is_any_member(server_name) => Ok(ServerCertVerified::assertion()),
            _ => Err(invalid(CertificateError::NotValidForName)),
        }
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

/// This host's certificate chain and key, presented on both ends of every connection.
/// Renewal calls [`OwnCert::replace`]; connections already open are not touched, new
/// handshakes present the new chain without rebuilding any configuration.
pub struct OwnCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for OwnCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnCert")
            .field("chain_len", &self.get().cert.len())
            .finish()
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &NodeKey,
) -> Result<Arc<CertifiedKey>, TlsError> {
    if chain.is_empty() {
        return Err(TlsError::EmptyChain);
    }
    // `from_der` also checks that the key is the certificate's.
    let ck = CertifiedKey::from_der(chain, key.private_key_der(), &provider())
        .map_err(TlsError::Credentials)?;
    Ok(Arc::new(ck))
}

impl OwnCert {
    /// `chain` = the node certificate first (then the cross-signed CA during a rotation).
    pub fn new(chain: Vec<CertificateDer<'static>>, key: &NodeKey) -> Result<OwnCert, TlsError> {
        Ok(OwnCert {
            current: RwLock::new(certified_key(chain, key)?),
        })
    }

    /// Swaps in a renewed chain (and key).
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &NodeKey,
    ) -> Result<(), TlsError> {
        let ck = certified_key(chain, key)?;
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value is whole.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = ck;
        Ok(())
    }

    /// The chain and key presented now.
    pub fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server configuration of a member: TLS 1.3, the member verifier for clients (a client
/// without a certificate is join-only), no resumption.
pub fn server_config(
    verifier: Arc<MemberVerifier>,
    own: Arc<OwnCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(own);
    // No resumption: a resumed session would skip the verifier, so a removed node could come
    // back on a ticket.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client configuration of a member dialing members (`own` = its certificate), or of a
/// host without one yet (`None`). Dial with [`server_name`] of the node id expected.
pub fn client_config(
    verifier: Arc<MemberVerifier>,
    own: Option<Arc<OwnCert>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match own {
        Some(own) => builder.with_client_cert_resolver(own),
        None => builder.with_no_client_auth(),
    };
    // The server name is a local label for the verifier, not something to tell the network.
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// What a finished TLS session tells the code above it.
pub trait SessionExt {
    /// The 32 bytes of keying material exported with [`EXPORTER_LABEL`] (no context): equal on
    /// both ends of one session, different for every other session.
    fn join_exporter(&self) -> Result<[u8; EXPORTER_LEN], TlsError>;

    /// The identity in the peer's certificate, if it sent one (the verifier accepted it).
    /// `None` on a server whose client sent none: that connection is join-only.
    fn peer_identity(&self) -> Option<CertIdentity>;
}

fn exporter<D>(conn: &rustls::ConnectionCommon<D>) -> Result<[u8; EXPORTER_LEN], TlsError> {
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
        .map_err(TlsError::Exporter)
}

fn identity(state: &rustls::CommonState) -> Option<CertIdentity> {
    // Parsing cannot fail on a certificate the verifier parsed; `ok()` keeps it total anyway.
    cert_identity(state.peer_certificates()?.first()?).ok()
}

impl<IO> SessionExt for tokio_rustls::client::TlsStream<IO> {
    fn join_exporter(&self) -> Result<[u8; EXPORTER_LEN], TlsError> {
        exporter(self.get_ref().1)
    }

    fn peer_identity(&self) -> Option<CertIdentity> {
        identity(self.get_ref().1)
    }
}

impl<IO> SessionExt for tokio_rustls::server::TlsStream<IO> {
    fn join_exporter(&self) -> Result<[u8; EXPORTER_LEN], TlsError> {
        exporter(self.get_ref().1)
    }

    fn peer_identity(&self) -> Option<CertIdentity> {
        identity(self.get_ref().1)
    }
}

#[cfg(test)]
mod tests;
