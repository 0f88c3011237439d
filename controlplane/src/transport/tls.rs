//! Mutual TLS between members: rustls configurations, the member verifier, the own-certificate
//! resolver and the session exporter.
//!
//! Over the ~800-line guideline: about 500 lines of code, the rest is the handshake tests
//! (in-memory pipes), which belong next to the verifier whose refusals they pin down.
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
/// Most certificates a peer may send besides its own: the cross-signed CA during a rotation.
const MAX_INTERMEDIATES: usize = 1;

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
mod tests {
    use std::collections::BTreeMap;
    use std::io;
    use std::time::{Duration, Instant, SystemTime};

    use rustls::AlertDescription;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::transport::pki::{Ca, NODE_CERT_LIFETIME};

    const CLUSTER: u64 = 0x0123_4567_89ab_cdef;

    /// The replicated state as the verifier sees it: members with optional pins, the next id.
    #[derive(Debug)]
    struct FakeState {
        cas: Vec<CertificateDer<'static>>,
        members: BTreeMap<u64, Option<[u8; 32]>>,
        next_node_id: u64,
    }

    impl Trust for FakeState {
        fn trusted_cas(&self) -> Vec<CertificateDer<'static>> {
            self.cas.clone()
        }
        fn is_member(&self, node_id: u64) -> bool {
            self.members.contains_key(&node_id)
        }
        fn member_pin(&self, node_id: u64) -> Option<[u8; 32]> {
            self.members.get(&node_id).copied().flatten()
        }
        fn was_removed(&self, node_id: u64) -> bool {
            node_id < self.next_node_id && !self.members.contains_key(&node_id)
        }
    }

    struct Host {
        node_id: u64,
        key: NodeKey,
        own: Arc<OwnCert>,
    }

    fn host(ca: &Ca, node_id: u64, now: SystemTime) -> Host {
        let key = NodeKey::generate().expect("key");
        let cert = ca
            .sign_node(
                &key.public_key().expect("pk"),
                node_id,
                &format!("h{node_id}"),
                now,
                NODE_CERT_LIFETIME,
            )
            .expect("sign");
        let own = Arc::new(OwnCert::new(vec![cert], &key).expect("own"));
        Host { node_id, key, own }
    }

    /// A cluster: CA, members 1 and 2 pinned, node 3 removed, next id 4.
    fn cluster() -> (Ca, Host, Host, Arc<MemberVerifier>) {
        let now = SystemTime::now();
        let ca = Ca::generate(CLUSTER, 1, now).expect("ca");
        let (h1, h2) = (host(&ca, 1, now), host(&ca, 2, now));
        let state = FakeState {
            cas: vec![ca.cert().clone()],
            members: [
                (1, Some(h1.key.spki_sha256())),
                (2, Some(h2.key.spki_sha256())),
            ]
            .into(),
            next_node_id: 4,
        };
        let verifier = Arc::new(MemberVerifier::new(CLUSTER, Arc::new(state)));
        (ca, h1, h2, verifier)
    }

    type ClientSide = io::Result<(
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
        Vec<u8>,
    )>;
    type ServerSide = io::Result<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>;

    /// One connection over an in-memory pipe: the client dials `dial` and reads the server's
    /// first message (TLS 1.3: a refused client certificate is only seen on that read); the
    /// server accepts and sends "hi".
    async fn connect(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        dial: u64,
    ) -> (ClientSide, ServerSide) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let client_side = async {
            let mut tls = TlsConnector::from(client)
                .connect(server_name(dial), c)
                .await?;
            let mut buf = vec![0u8; 2];
            tls.read_exact(&mut buf).await?;
            Ok((tls, buf))
        };
        let server_side = async {
            let mut tls = TlsAcceptor::from(server).accept(s).await?;
            tls.write_all(b"hi").await?;
            tls.flush().await?;
            Ok(tls)
        };
        tokio::join!(client_side, server_side)
    }

    fn rustls_error(e: &io::Error) -> Option<&Error> {
        e.get_ref()?.downcast_ref::<Error>()
    }

    /// Asserts the server refused with `server_err` and the client received `alert`.
    fn assert_refused(
        (client, server): (ClientSide, ServerSide),
        server_err: CertificateError,
        alert: AlertDescription,
    ) {
        let s = server.expect_err("server must refuse");
        assert_eq!(
            rustls_error(&s),
            Some(&Error::InvalidCertificate(server_err)),
            "{s}"
        );
        let c = client.expect_err("client must fail");
        assert_eq!(rustls_error(&c), Some(&Error::AlertReceived(alert)), "{c}");
    }

    fn configs(
        verifier: &Arc<MemberVerifier>,
        server: &Host,
        client: &Host,
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        (
            server_config(verifier.clone(), server.own.clone()).expect("server config"),
            client_config(verifier.clone(), Some(client.own.clone())).expect("client config"),
        )
    }

    // run.txt #1
    #[tokio::test]
    async fn mutual_handshake_identifies_both_ends_and_exports_equal_material() {
        let (_ca, h1, h2, verifier) = cluster();
        let (sc, cc) = configs(&verifier, &h1, &h2);
        let (client, server) = connect(sc, cc, h1.node_id).await;
        let (client, hi) = client.expect("client");
        let server = server.expect("server");
        assert_eq!(hi, b"hi");
        assert_eq!(client.peer_identity().map(|i| i.node_id), Some(1));
        let seen = server.peer_identity().expect("client identity");
        assert_eq!((seen.node_id, seen.host_name.as_str()), (2, "h2"));
        let (a, b) = (
            client.join_exporter().expect("ekm"),
            server.join_exporter().expect("ekm"),
        );
        assert_eq!(a, b);
        assert_ne!(a, [0u8; EXPORTER_LEN]);
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }

    // run.txt #2
    #[tokio::test]
    async fn client_refuses_a_server_that_is_not_the_node_it_dialed() {
        let (_ca, h1, h2, verifier) = cluster();
        let (sc, cc) = configs(&verifier, &h1, &h2);
        let (client, server) = connect(sc, cc, 7).await;
        let c = client.expect_err("refused");
        assert_eq!(
            rustls_error(&c),
            Some(&Error::InvalidCertificate(
                CertificateError::NotValidForName
            ))
        );
        assert!(server.is_err());
    }

    // run.txt #3
    #[tokio::test]
    async fn removed_node_is_revoked() {
        let (ca, h1, _h2, verifier) = cluster();
        let h3 = host(&ca, 3, SystemTime::now());
        let (sc, cc) = configs(&verifier, &h1, &h3);
        let result = connect(sc, cc, 1).await;
        assert_refused(
            result,
            CertificateError::Revoked,
            AlertDescription::CertificateRevoked,
        );
    }

    // run.txt #4
    #[tokio::test]
    async fn certificate_of_another_ca_is_unknown() {
        let (_ca, h1, _h2, verifier) = cluster();
        // Another cluster (other id, so another CA subject), and a CA with our CA's very subject
        // but another key: webpki finds the latter by name and fails on the signature.
        for other_cluster in [CLUSTER ^ 1, CLUSTER] {
            let other = Ca::generate(other_cluster, 1, SystemTime::now()).expect("other ca");
            let stranger = host(&other, 2, SystemTime::now());
            let (sc, cc) = configs(&verifier, &h1, &stranger);
            let result = connect(sc, cc, 1).await;
            assert_refused(
                result,
                CertificateError::UnknownIssuer,
                AlertDescription::UnknownCA,
            );
        }
    }

    // run.txt #5
    #[tokio::test]
    async fn ca_signed_cert_with_unpinned_key_is_denied() {
        let (ca, h1, _h2, verifier) = cluster();
        // A removed host that kept the CA key mints a certificate for member 2 with its own key.
        let impostor = host(&ca, 2, SystemTime::now());
        let (sc, cc) = configs(&verifier, &h1, &impostor);
        let result = connect(sc, cc, 1).await;
        assert_refused(
            result,
            CertificateError::ApplicationVerificationFailure,
            AlertDescription::AccessDenied,
        );
    }

    // run.txt #6
    #[tokio::test]
    async fn expired_certificate_is_refused_but_verifies_inside_its_validity() {
        let (ca, h1, h2, verifier) = cluster();
        let issued = SystemTime::now() - Duration::from_secs(200 * 24 * 3600);
        let cert = ca
            .sign_node(
                &h2.key.public_key().expect("pk"),
                2,
                "h2",
                issued,
                NODE_CERT_LIFETIME,
            )
            .expect("sign");
        h2.own
            .replace(vec![cert.clone()], &h2.key)
            .expect("replace");
        let (sc, cc) = configs(&verifier, &h1, &h2);
        let result = connect(sc, cc, 1).await;
        assert_refused(
            result,
            CertificateError::Expired,
            AlertDescription::CertificateExpired,
        );
        // The renewal check of the design: the same certificate at a time inside its validity.
        let inside = UnixTime::since_unix_epoch(
            issued.duration_since(SystemTime::UNIX_EPOCH).expect("time"),
        );
        let id = verifier
            .verify_peer(&cert, &[], inside, PeerRole::Client)
            .expect("renewable");
        assert_eq!(id.node_id, 2);
    }

    #[tokio::test]
    async fn not_yet_registered_node_is_denied_not_revoked() {
        let (ca, h1, _h2, verifier) = cluster();
        let future = host(&ca, 9, SystemTime::now());
        let (sc, cc) = configs(&verifier, &h1, &future);
        let result = connect(sc, cc, 1).await;
        assert_refused(
            result,
            CertificateError::ApplicationVerificationFailure,
            AlertDescription::AccessDenied,
        );
    }

    #[tokio::test]
    async fn unpinned_member_is_accepted_on_its_chain() {
        let now = SystemTime::now();
        let ca = Ca::generate(CLUSTER, 1, now).expect("ca");
        let (h1, h2) = (host(&ca, 1, now), host(&ca, 2, now));
        let state = FakeState {
            cas: vec![ca.cert().clone()],
            members: [(1, None), (2, None)].into(),
            next_node_id: 3,
        };
        let verifier = Arc::new(MemberVerifier::new(CLUSTER, Arc::new(state)));
        let (sc, cc) = configs(&verifier, &h1, &h2);
        let (client, server) = connect(sc, cc, 1).await;
        assert!(client.is_ok());
        assert_eq!(
            server.expect("server").peer_identity().map(|i| i.node_id),
            Some(2)
        );
    }

    #[tokio::test]
    async fn client_without_certificate_is_admitted_join_only() {
        let (_ca, h1, _h2, verifier) = cluster();
        let sc = server_config(verifier.clone(), h1.own.clone()).expect("server config");
        let cc = client_config(verifier, None).expect("client config");
        let (client, server) = connect(sc, cc, 1).await;
        let (client, _) = client.expect("client");
        let server = server.expect("server");
        assert!(server.peer_identity().is_none());
        assert_eq!(
            client.join_exporter().expect("ekm"),
            server.join_exporter().expect("ekm")
        );
    }

    /// CA rotation: a replica that still trusts only the old CA accepts a member whose
    /// certificate is signed by the new CA and who presents the cross-signed cert.
    #[tokio::test]
    async fn cross_signed_chain_reaches_the_old_ca() {
        let now = SystemTime::now();
        let old = Ca::generate(CLUSTER, 1, now).expect("old");
        let new = Ca::generate(CLUSTER, 2, now).expect("new");
        let cross = old.cross_sign(&new, now).expect("cross");
        let h1 = host(&old, 1, now);
        let h2 = host(&new, 2, now);
        let state = FakeState {
            cas: vec![old.cert().clone()],
            members: [
                (1, Some(h1.key.spki_sha256())),
                (2, Some(h2.key.spki_sha256())),
            ]
            .into(),
            next_node_id: 3,
        };
        let verifier = Arc::new(MemberVerifier::new(CLUSTER, Arc::new(state)));
        let cert = h2.own.get().cert[0].clone();
        // Without the cross cert: unknown; with it: accepted.
        let (sc, cc) = configs(&verifier, &h1, &h2);
        let result = connect(sc, cc, 1).await;
        assert_refused(
            result,
            CertificateError::UnknownIssuer,
            AlertDescription::UnknownCA,
        );
        h2.own.replace(vec![cert, cross], &h2.key).expect("replace");
        let (sc, cc) = configs(&verifier, &h1, &h2);
        let (client, server) = connect(sc, cc, 1).await;
        assert!(client.is_ok());
        assert_eq!(
            server.expect("server").peer_identity().map(|i| i.node_id),
            Some(2)
        );
    }

    #[test]
    fn server_names_round_trip_and_reject_other_names() {
        for id in [1, 42, u64::MAX] {
            assert_eq!(expected_node(&server_name(id)), Some(id));
        }
        for bad in [
            "n01.vxnet",
            "n.vxnet",
            "x1.vxnet",
            "n1.vxnet.example",
            "n+1.vxnet",
        ] {
            let name = ServerName::try_from(bad.to_owned());
            assert_eq!(name.ok().and_then(|n| expected_node(&n)), None, "{bad}");
        }
    }

    #[test]
    fn own_cert_refuses_a_key_that_is_not_the_certificates() {
        let (_ca, h1, h2, _verifier) = cluster();
        let cert = h1.own.get().cert.clone();
        assert!(matches!(
            OwnCert::new(cert, &h2.key),
            Err(TlsError::Credentials(_))
        ));
        assert!(matches!(
            OwnCert::new(Vec::new(), &h2.key),
            Err(TlsError::EmptyChain)
        ));
    }

    /// Full mutual handshake + one round trip, both ends on one task, in memory. Prints the
    /// median (`--nocapture`); asserts only a loose bound so a slow CI machine does not fail.
    #[tokio::test]
    async fn handshake_timing() {
        let (_ca, h1, h2, verifier) = cluster();
        let (sc, cc) = configs(&verifier, &h1, &h2);
        let mut times = Vec::new();
        for _ in 0..50 {
            let start = Instant::now();
            let (client, server) = connect(sc.clone(), cc.clone(), 1).await;
            assert!(client.is_ok() && server.is_ok());
            times.push(start.elapsed());
        }
        times.sort();
        eprintln!(
            "mutual TLS handshake + 1 message, in memory: p50 {:?}, max {:?}",
            times[25], times[49]
        );
        assert!(times[25] < Duration::from_millis(100));
    }
}
