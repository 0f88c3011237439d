//! Tests of `tls.rs`.
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
    let inside =
        UnixTime::since_unix_epoch(issued.duration_since(SystemTime::UNIX_EPOCH).expect("time"));
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
