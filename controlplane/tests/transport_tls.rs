//! Peer transport over mutual TLS 1.3, in process on loopback (`docs/design/peer-tls.md` §4, §7,
//! §9, §18): members exchange Raft messages; a dialed node id must be the certificate's; a Raft
//! message's `from` must be the connection's node; removed nodes are revoked; a certificate with
//! an unpinned key or of another CA is refused; joins with a full token, a bare secret and a
//! wrong secret; a token of another cluster stops before any proof; a relayed join proof is
//! worthless; the previous release's handshake is served only while the legacy window is open;
//! a TLS client falls back to the previous protocol against a server without a certificate.
//! Kept client connections of `Transport::forward` do not outlive a removal or the end of the
//! shared-secret window.
//!
//! One file, past the usual size, because every test stands on the same fixture (a CA, node
//! keys, transports presenting them) and the same wait helpers: it is the TLS transport's
//! behaviour, one job.
//!
//! Every test binds 127.0.0.1:0 and waits for conditions with deadlines; the only fixed waits
//! are the windows of "nothing else arrives" checks, taken after a synchronisation point.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, Receiver, UnboundedReceiver};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vxnet_controlplane::transport::pki::{Ca, NodeKey, NodePublicKey, cert_identity};
use vxnet_controlplane::transport::tls::{self, MemberVerifier, OwnCert, SessionExt, Trust};
use vxnet_controlplane::transport::token::{self, JoinKey, JoinToken, format_token};
use vxnet_controlplane::transport::{
    CertificateDer, Inbound, JoinError, PeerConnection, SecurityView, Transport, TransportConfig,
    TransportError, join_tls,
};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{
    Empty, ErrorKind, ForwardRequest, ForwardResponse, Hello, JoinAccepted, JoinRequest,
    JoinResponse, PeerEnvelope, Proposal, RegisterHost, Response, forward_response, frame,
    join_response, response,
};

/// Cluster id of every test (a full 64-bit value, as `--bootstrap` draws them).
const CLUSTER: u64 = 0x5eed_0123_4567_89ab;
/// The previous release's shared secret (`TransportConfig::token`).
const TOKEN: &str = "s3cret";
/// The bare join secret whose key `K` members hold.
const SECRET: &str = "correct horse battery staple";
/// Upper bound for anything that should happen "soon"; tests normally finish far earlier.
const PATIENCE: Duration = Duration::from_secs(5);
/// Window of the "nothing (else) arrives" checks, always after a synchronisation point.
const QUIET: Duration = Duration::from_millis(200);
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------------------------
// PKI and transports
// ---------------------------------------------------------------------------------------------

/// A cluster's CA, its join key and one key per node id.
struct Pki {
    ca: Ca,
    join_key: JoinKey,
    keys: BTreeMap<u64, NodeKey>,
}

impl Pki {
    fn new(ids: &[u64]) -> Pki {
        Pki {
            ca: Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap(),
            join_key: JoinKey::from_bare_secret(SECRET),
            keys: ids
                .iter()
                .map(|&id| (id, NodeKey::generate().unwrap()))
                .collect(),
        }
    }

    fn key(&self, id: u64) -> &NodeKey {
        &self.keys[&id]
    }

    fn pin(&self, id: u64) -> [u8; 32] {
        self.key(id).spki_sha256()
    }

    /// What an agent presents: `[node cert, CA cert]`.
    fn chain(&self, id: u64) -> Vec<CertificateDer<'static>> {
        chain_of(&self.ca, id, self.key(id))
    }

    /// The view of a state whose members are `members` (pinned) and whose next id is one above
    /// the highest; legacy window closed.
    fn view(&self, members: &[u64]) -> SecurityView {
        SecurityView {
            trusted_cas: vec![self.ca.cert().clone()],
            members: members.iter().map(|&id| (id, Some(self.pin(id)))).collect(),
            next_node_id: members.iter().max().map_or(1, |m| m + 1),
            join_key: Some(self.join_key.clone()),
            legacy_open: false,
        }
    }

    /// A copy of the CA (the agent side of a join signs with it).
    fn ca_copy(&self) -> Ca {
        Ca::from_der(self.ca.cert(), &self.ca.key_pkcs8_der()).unwrap()
    }
}

/// `[node cert for (id, key) signed by ca, ca cert]`.
fn chain_of(ca: &Ca, id: u64, key: &NodeKey) -> Vec<CertificateDer<'static>> {
    let cert = ca
        .sign_node(
            &key.public_key().unwrap(),
            id,
            &format!("host{id}"),
            SystemTime::now(),
            LIFETIME,
        )
        .unwrap();
    vec![cert, ca.cert().clone()]
}

fn config(node_id: u64, view: SecurityView) -> TransportConfig {
    TransportConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        host_name: format!("host{node_id}"),
        node_id,
        cluster_id: CLUSTER,
        token: Some(TOKEN.to_owned()),
        queue_len: 1024,
        security: view,
    }
}

/// A transport without a certificate (a host of the previous release, or not upgraded yet).
async fn start_plain(node_id: u64, view: SecurityView) -> (Transport, Receiver<Inbound>) {
    Transport::start(config(node_id, view)).await.unwrap()
}

/// A member presenting `chain` with `key`.
async fn start_tls(
    node_id: u64,
    view: SecurityView,
    chain: Vec<CertificateDer<'static>>,
    key: &NodeKey,
) -> (Transport, Receiver<Inbound>) {
    let (t, rx) = start_plain(node_id, view).await;
    t.set_own_cert(chain, key).unwrap();
    assert!(t.has_cert());
    (t, rx)
}

/// A member of `pki` with its own key and certificate.
async fn start_member(
    pki: &Pki,
    node_id: u64,
    view: SecurityView,
) -> (Transport, Receiver<Inbound>) {
    start_tls(node_id, view, pki.chain(node_id), pki.key(node_id)).await
}

fn peers(list: &[(u64, &Transport)]) -> BTreeMap<u64, String> {
    list.iter()
        .map(|(id, t)| (*id, t.local_addr().to_string()))
        .collect()
}

fn link(a: &Transport, b: &Transport) {
    a.set_peers(peers(&[(b.node_id(), b)]));
    b.set_peers(peers(&[(a.node_id(), a)]));
}

// ---------------------------------------------------------------------------------------------
// Raft messages and waiting
// ---------------------------------------------------------------------------------------------

fn raft_msg(from: u64, to: u64, index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = from;
    m.to = to;
    m.term = 7;
    m.log_term = 7;
    m.index = index;
    m.commit = index.saturating_sub(1);
    m.entries.push(Entry {
        term: 7,
        index: index + 1,
        data: format!("entry {from}->{to} #{index}").into_bytes().into(),
        ..Entry::default()
    });
    m
}

/// The next Raft message, skipping other events.
async fn expect_raft(rx: &mut Receiver<Inbound>) -> Message {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Inbound::Raft(m))) => return m,
            Ok(Some(_)) => {}
            Ok(None) => panic!("inbound channel closed"),
            Err(_) => panic!("no raft message within {PATIENCE:?}"),
        }
    }
}

/// Sends `make(i)` for i = 0, 1, … through `t` until a Raft message arrives on `rx` (writers
/// drop what was queued while a connection failed, so a single send may be lost).
async fn send_until_delivered(
    t: &Transport,
    rx: &mut Receiver<Inbound>,
    make: impl Fn(u64) -> Message,
) -> Message {
    let deadline = Instant::now() + PATIENCE;
    let mut i = 0;
    loop {
        t.send(make(i));
        i += 1;
        if let Ok(Some(Inbound::Raft(m))) =
            tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "nothing delivered within {PATIENCE:?}"
        );
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `make(i)` every 20 ms until `cond` holds (a writer that keeps failing drops what it
/// holds; this keeps it dialing).
async fn send_until(
    what: &str,
    t: &Transport,
    make: impl Fn(u64) -> Message,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    let mut i = 0;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        t.send(make(i));
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything queued on `rx` right now, without waiting.
/// Node 1 (`member`) and node 2 (`stranger`) refuse each other's certificates both ways: each
/// one's Raft messages to the other are dropped once the other refused the handshake, and
/// neither delivers a message or accepts a TLS connection.
async fn refused_both_ways(
    stranger_is: &str,
    (member, rx_member): (&Transport, &mut Receiver<Inbound>),
    (stranger, rx_stranger): (&Transport, &mut Receiver<Inbound>),
) {
    // Stranger → member: node 1 refuses the client certificate.
    send_until(
        &format!("node 1 refused the certificate of {stranger_is}"),
        stranger,
        |i| raft_msg(2, 1, i),
        || member.stats().handshakes_refused >= 1 && stranger.stats().raft_send_dropped >= 1,
    )
    .await;
    // Member → stranger: node 1 refuses the server certificate.
    send_until(
        &format!("node 1 refused to talk to {stranger_is}"),
        member,
        |i| raft_msg(1, 2, i),
        || stranger.stats().handshakes_refused >= 1 && member.stats().raft_send_dropped >= 1,
    )
    .await;
    assert_nothing_delivered(rx_member).await;
    assert_nothing_delivered(rx_stranger).await;
    let (sm, ss) = (member.stats(), stranger.stats());
    assert_eq!((sm.raft_delivered, sm.tls_accepted), (0, 0), "{sm:?}");
    assert_eq!((ss.raft_delivered, ss.tls_accepted), (0, 0), "{ss:?}");
}

fn queued(rx: &mut Receiver<Inbound>) -> Vec<Inbound> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        out.push(item);
    }
    out
}

/// Panics if a Raft message or a join request is (or, within `QUIET`, gets) queued on `rx`.
async fn assert_nothing_delivered(rx: &mut Receiver<Inbound>) {
    let deadline = Instant::now() + QUIET;
    loop {
        for item in queued(rx) {
            if matches!(item, Inbound::Raft(_) | Inbound::Join { .. }) {
                panic!("unexpected delivery: {item:?}");
            }
        }
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-made TLS ends (a relay, a client that lies in its Hello), from the crate's public pieces
// ---------------------------------------------------------------------------------------------

/// Trusts `cas` and takes any node of them as a member without a pin: the view of a relay that
/// wants to talk to whichever member answers.
#[derive(Debug)]
struct OpenTrust(Vec<CertificateDer<'static>>);

impl Trust for OpenTrust {
    fn trusted_cas(&self) -> Vec<CertificateDer<'static>> {
        self.0.clone()
    }

    fn is_member(&self, _node_id: u64) -> bool {
        true
    }

    fn member_pin(&self, _node_id: u64) -> Option<[u8; 32]> {
        None
    }

    fn was_removed(&self, _node_id: u64) -> bool {
        false
    }
}

/// A TLS client of a member at `addr`, presenting `own` (none: a join-only connection).
async fn tls_dial(
    addr: SocketAddr,
    own: Option<(Vec<CertificateDer<'static>>, &NodeKey)>,
    ca: &Ca,
    name: ServerName<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let verifier = Arc::new(MemberVerifier::new(
        CLUSTER,
        Arc::new(OpenTrust(vec![ca.cert().clone()])),
    ));
    let own = own.map(|(chain, key)| Arc::new(OwnCert::new(chain, key).unwrap()));
    let config = tls::client_config(verifier, own).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(name, tcp).await
}

async fn write_env<W: AsyncWrite + Unpin>(w: &mut W, env: &PeerEnvelope) {
    w.write_all(&frame::to_vec(env).unwrap()).await.unwrap();
    w.flush().await.unwrap();
}

/// The next envelope; `None` when the peer closed (cleanly or not) or nothing came in time.
async fn read_env<R: AsyncRead + Unpin>(r: &mut R) -> Option<PeerEnvelope> {
    let body = tokio::time::timeout(PATIENCE, frame::read(r, frame::MAX_FRAME, |_| true))
        .await
        .expect("no frame and no close within the patience window")
        .ok()
        .flatten()?;
    Some(PeerEnvelope::decode(body.as_slice()).unwrap())
}

fn hello_env(from: u64, to: u64) -> PeerEnvelope {
    PeerEnvelope {
        cluster_id: CLUSTER,
        from,
        to,
        body: Some(Body::Hello(Hello {
            host_name: format!("host{from}"),
            node_id: from,
            ..Hello::default()
        })),
    }
}

fn join_env(request: JoinRequest) -> PeerEnvelope {
    PeerEnvelope {
        body: Some(Body::JoinRequest(request)),
        ..PeerEnvelope::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Playing the agent: joins and forwards
// ---------------------------------------------------------------------------------------------

/// What a joiner sends (the transport adds the proof): its registration with its key pin, and a
/// CSR for that key.
fn join_request(key: &NodeKey, name: &str) -> JoinRequest {
    JoinRequest {
        request_id: format!("join {name}").into_bytes(),
        host: Some(RegisterHost {
            name: name.to_owned(),
            underlay: "10.9.0.9".into(),
            peer_addr: "10.9.0.9:7946".into(),
            key_sha256: key.spki_sha256().to_vec(),
            level: 2,
        }),
        csr: key.csr_der(name).unwrap(),
        proof: Vec::new(),
    }
}

/// Plays a member's agent for joins: every `Inbound::Join` is answered `Accepted` with node ids
/// 10, 11, … and a certificate `ca` signs for the CSR's key (after checking that key is the one
/// the registration pins), and handed on through the returned channel.
fn spawn_join_agent(mut rx: Receiver<Inbound>, ca: Ca) -> UnboundedReceiver<JoinRequest> {
    let (tx, joins) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut next_id = 10;
        while let Some(item) = rx.recv().await {
            let Inbound::Join { request, reply } = item else {
                continue;
            };
            let host = request.host.clone().unwrap_or_default();
            let key = NodePublicKey::from_csr_der(&request.csr).unwrap();
            assert_eq!(key.spki_sha256().as_slice(), host.key_sha256.as_slice());
            let cert = ca
                .sign_node(&key, next_id, &host.name, SystemTime::now(), LIFETIME)
                .unwrap();
            let _ = reply.send(JoinResponse {
                result: Some(join_response::Result::Accepted(JoinAccepted {
                    node_id: next_id,
                    cluster_id: CLUSTER,
                    leader_id: 1,
                    members: Vec::new(),
                    cert_chain: vec![cert.to_vec()],
                    ca_cert: ca.cert().to_vec(),
                    server_proof: Vec::new(),
                })),
            });
            next_id += 1;
            let _ = tx.send(request);
        }
    });
    joins
}

fn accepted(resp: JoinResponse) -> JoinAccepted {
    match resp.result {
        Some(join_response::Result::Accepted(a)) => a,
        other => panic!("join not accepted: {other:?}"),
    }
}

/// Checks a join answer the way an agent would use it: the certificate names the node id it
/// was given, our cluster, and the joiner's key; the CA is the cluster's; a server proof came.
fn check_issued(acc: &JoinAccepted, ca: &Ca, joiner: &NodeKey) {
    assert_eq!(acc.ca_cert, ca.cert().to_vec());
    assert_eq!(acc.server_proof.len(), token::PROOF_LEN, "no server proof");
    let id = cert_identity(&acc.cert_chain[0]).unwrap();
    assert_eq!(
        (id.node_id, id.cluster_id, id.spki_sha256),
        (acc.node_id, CLUSTER, joiner.spki_sha256())
    );
}

fn forward_request(id: &[u8]) -> ForwardRequest {
    ForwardRequest {
        proposal: Some(Proposal {
            request_id: id.to_vec(),
            command: None,
        }),
    }
}

/// Plays the agent of a host that receives Raft messages and forwarded proposals: Raft messages
/// go to the returned channel, forwards are answered `Ok` at index 21.
fn spawn_forward_agent(mut rx: Receiver<Inbound>) -> Receiver<Inbound> {
    let (raft_tx, raft_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            match item {
                Inbound::Raft(m) => {
                    let _ = raft_tx.send(Inbound::Raft(m)).await;
                }
                Inbound::Forward { request, reply } => {
                    let _ = reply.send(ForwardResponse {
                        request_id: request.proposal.unwrap_or_default().request_id,
                        index: 21,
                        outcome: Some(forward_response::Outcome::Ok(Response {
                            kind: Some(response::Kind::Noop(Empty {})),
                        })),
                    });
                }
                _ => {}
            }
        }
    });
    raft_rx
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn members_exchange_raft_messages_over_tls() {
    let pki = Pki::new(&[1, 2]);
    let (a, mut rx_a) = start_member(&pki, 1, pki.view(&[1, 2])).await;
    let (b, mut rx_b) = start_member(&pki, 2, pki.view(&[1, 2])).await;
    link(&a, &b);

    const N: u64 = 300;
    for i in 0..N {
        a.send(raft_msg(1, 2, i));
    }
    for i in 0..N {
        assert_eq!(
            expect_raft(&mut rx_b).await,
            raft_msg(1, 2, i),
            "message {i}"
        );
    }
    for i in 0..50 {
        b.send(raft_msg(2, 1, i));
    }
    for i in 0..50 {
        assert_eq!(
            expect_raft(&mut rx_a).await,
            raft_msg(2, 1, i),
            "message {i}"
        );
    }
    assert!(a.is_reachable(2) && b.is_reachable(1));

    // A writer counts a batch once its write returned, which may be after the peer read it.
    wait_until("both writers counted their writes", || {
        a.stats().raft_sent == N && b.stats().raft_sent == 50
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    // Each side accepted the other's writer over TLS; nobody spoke the previous protocol.
    assert!(
        sa.tls_accepted >= 1 && sb.tls_accepted >= 1,
        "{sa:?} {sb:?}"
    );
    assert_eq!((sa.legacy_accepted, sb.legacy_accepted), (0, 0));
    assert_eq!((sa.handshakes_refused, sb.handshakes_refused), (0, 0));
    assert_eq!(
        (sa.raft_sent, sa.raft_send_dropped, sa.raft_delivered),
        (N, 0, 50)
    );
    assert_eq!(
        (sb.raft_sent, sb.raft_send_dropped, sb.raft_delivered),
        (50, 0, N)
    );
    assert_eq!((sa.misaddressed, sb.misaddressed), (0, 0));
}

#[tokio::test]
async fn dialing_a_node_id_reaches_only_that_node() {
    let pki = Pki::new(&[1, 2, 3]);
    let view = pki.view(&[1, 2, 3]);
    let (a, mut rx_a) = start_member(&pki, 1, view.clone()).await;
    let (c, mut rx_c) = start_member(&pki, 3, view).await;
    // A stale address book: node 2's entry points at node 3's listener.
    a.set_peers(peers(&[(2, &c)]));

    send_until(
        "node 3 refused a handshake and node 1 dropped messages for node 2",
        &a,
        |i| raft_msg(1, 2, i),
        || c.stats().handshakes_refused >= 1 && a.stats().raft_send_dropped >= 1,
    )
    .await;
    // Node 3 judged no client certificate: node 1 aborted on node 3's server certificate.
    assert_nothing_delivered(&mut rx_c).await;
    let sc = c.stats();
    assert_eq!((sc.raft_delivered, sc.tls_accepted), (0, 0), "{sc:?}");
    let sa = a.stats();
    assert_eq!(sa.raft_sent, 0, "{sa:?}");
    assert!(sa.unreachable_reported >= 1, "{sa:?}");
    assert!(!a.is_reachable(2));
    let events = queued(&mut rx_a);
    assert!(
        events.iter().any(|e| matches!(e, Inbound::Unreachable(2))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Inbound::Revoked(_))),
        "a wrong address is not a revocation: {events:?}"
    );

    // With node 3 under its own id the same link works.
    a.set_peers(peers(&[(3, &c)]));
    let m = send_until_delivered(&a, &mut rx_c, |i| raft_msg(1, 3, 1000 + i)).await;
    assert_eq!((m.from, m.to), (1, 3));
    assert!(c.stats().tls_accepted >= 1);
}

#[tokio::test]
async fn raft_message_with_a_foreign_from_is_dropped() {
    let pki = Pki::new(&[1, 2, 3]);
    let view = pki.view(&[1, 2, 3]);
    let (a, _rx_a) = start_member(&pki, 1, view.clone()).await;
    let (b, mut rx_b) = start_member(&pki, 2, view).await;
    link(&a, &b);

    // Node 1 relays a message that claims to be from node 3 (a member too), then one of its own
    // on the same connection: once the second arrives, the first was judged.
    a.send(raft_msg(3, 2, 1));
    a.send(raft_msg(1, 2, 2));
    let m = expect_raft(&mut rx_b).await;
    assert_eq!(
        (m.from, m.index),
        (1, 2),
        "the forged message was delivered"
    );
    let sb = b.stats();
    assert_eq!((sb.misaddressed, sb.raft_delivered), (1, 1), "{sb:?}");
    wait_until("node 1 counted both messages as sent", || {
        a.stats().raft_sent == 2
    })
    .await;
    assert_nothing_delivered(&mut rx_b).await;

    // The same binding one step earlier: a client with node 1's certificate whose `Hello` claims
    // node 3 is closed before anything else, while the true `Hello` is answered.
    let refused = b.stats().handshakes_refused;
    let mut liar = tls_dial(
        b.local_addr(),
        Some((pki.chain(1), pki.key(1))),
        &pki.ca,
        tls::server_name(2),
    )
    .await
    .unwrap();
    write_env(&mut liar, &hello_env(3, 2)).await;
    assert!(
        read_env(&mut liar).await.is_none(),
        "a lying Hello was answered"
    );
    wait_until("node 2 counted the refused Hello", || {
        b.stats().handshakes_refused > refused
    })
    .await;

    let accepted_before = b.stats().tls_accepted;
    let mut honest = tls_dial(
        b.local_addr(),
        Some((pki.chain(1), pki.key(1))),
        &pki.ca,
        tls::server_name(2),
    )
    .await
    .unwrap();
    write_env(&mut honest, &hello_env(1, 2)).await;
    let answer = read_env(&mut honest)
        .await
        .expect("no answer to a true Hello");
    match answer.body {
        Some(Body::Hello(h)) => assert_eq!((h.node_id, answer.from), (2, 2)),
        other => panic!("expected a Hello, got {other:?}"),
    }
    assert_eq!(b.stats().tls_accepted, accepted_before + 1);
}

#[tokio::test]
async fn removed_node_is_revoked_and_its_connections_close() {
    let pki = Pki::new(&[1, 2]);
    let (a, mut rx_a) = start_member(&pki, 1, pki.view(&[1, 2])).await;
    let (b, mut rx_b) = start_member(&pki, 2, pki.view(&[1, 2])).await;
    link(&a, &b);
    a.send(raft_msg(1, 2, 1));
    b.send(raft_msg(2, 1, 1));
    assert_eq!(expect_raft(&mut rx_b).await.from, 1);
    assert_eq!(expect_raft(&mut rx_a).await.from, 2);
    assert!(a.stats().tls_accepted >= 1);
    let delivered_to_a = a.stats().raft_delivered;
    assert_eq!(delivered_to_a, 1);

    // `cluster rm` node 2 applied on node 1: no longer a member, its id below the next one.
    let mut removed = pki.view(&[1]);
    removed.next_node_id = 3;
    a.set_peers(BTreeMap::new());
    a.set_security(removed);
    wait_until("node 1 closed node 2's connection", || {
        a.stats().connections_closed_revoked >= 1
    })
    .await;

    // Node 2 keeps writing: its connection is gone, and its next dial is refused as revoked.
    let deadline = Instant::now() + PATIENCE;
    let mut i = 2;
    let mut seen = Vec::new();
    loop {
        b.send(raft_msg(2, 1, i));
        i += 1;
        match tokio::time::timeout(Duration::from_millis(30), rx_b.recv()).await {
            Ok(Some(Inbound::Revoked(id))) => {
                assert_eq!(id, 1, "Revoked names the member that refused us");
                break;
            }
            Ok(Some(other)) => seen.push(other),
            Ok(None) => panic!("inbound channel closed"),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never learned it was revoked; saw {seen:?}"
        );
    }
    // The old connection's end was noticed as such (before the revocation).
    assert!(
        seen.iter().any(|e| matches!(e, Inbound::Unreachable(1))),
        "{seen:?}"
    );
    let sa = a.stats();
    assert!(sa.handshakes_refused >= 1, "{sa:?}");
    assert_eq!(
        sa.raft_delivered, delivered_to_a,
        "a removed node's message got through"
    );
    assert_nothing_delivered(&mut rx_a).await;
}

#[tokio::test]
async fn ca_signed_cert_with_unpinned_key_is_refused() {
    let pki = Pki::new(&[1, 2]);
    let view = pki.view(&[1, 2]);
    let (a, mut rx_a) = start_member(&pki, 1, view.clone()).await;
    // Someone with the CA key makes a certificate for node 2 with a key of its own.
    let forged_key = NodeKey::generate().unwrap();
    let (imp, mut rx_imp) = start_tls(
        2,
        view.clone(),
        chain_of(&pki.ca, 2, &forged_key),
        &forged_key,
    )
    .await;
    imp.set_peers(peers(&[(1, &a)]));
    a.set_peers(peers(&[(2, &imp)]));

    refused_both_ways("the impostor", (&a, &mut rx_a), (&imp, &mut rx_imp)).await;
    let (sa, si) = (a.stats(), imp.stats());
    assert_eq!((sa.raft_sent, si.raft_sent), (0, 0), "{sa:?} {si:?}");
    // A pin mismatch is no revocation: nobody was told it was removed.
    assert!(
        !queued(&mut rx_imp)
            .iter()
            .any(|e| matches!(e, Inbound::Revoked(_)))
    );

    // Control: once the state pins that key for node 2, the same certificate is accepted.
    let mut repinned = view;
    repinned.members.insert(2, Some(forged_key.spki_sha256()));
    a.set_security(repinned);
    let m = send_until_delivered(&imp, &mut rx_a, |i| raft_msg(2, 1, 1000 + i)).await;
    assert_eq!(m.from, 2);
    assert!(a.stats().tls_accepted >= 1);
}

#[tokio::test]
async fn certificate_of_another_ca_is_refused() {
    let pki = Pki::new(&[1, 2]);
    let view = pki.view(&[1, 2]);
    let (a, mut rx_a) = start_member(&pki, 1, view.clone()).await;
    // Another CA of the same cluster id and generation (so the same subject name), certifying
    // node 2's own, pinned key.
    let other = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    assert_eq!(other.cluster_id(), pki.ca.cluster_id());
    assert_ne!(other.digest(), pki.ca.digest());
    let (imp, mut rx_imp) =
        start_tls(2, view.clone(), chain_of(&other, 2, pki.key(2)), pki.key(2)).await;
    imp.set_peers(peers(&[(1, &a)]));
    a.set_peers(peers(&[(2, &imp)]));

    refused_both_ways("a peer of another CA", (&a, &mut rx_a), (&imp, &mut rx_imp)).await;

    // Control: trusting that CA too (as during a rotation) admits the same certificate.
    let mut both = view;
    both.trusted_cas.push(other.cert().clone());
    a.set_security(both);
    let m = send_until_delivered(&imp, &mut rx_a, |i| raft_msg(2, 1, 1000 + i)).await;
    assert_eq!(m.from, 2);
}

#[tokio::test]
async fn join_with_token_bare_secret_and_wrong_secret() {
    let pki = Pki::new(&[1]);
    let (m, rx_m) = start_member(&pki, 1, pki.view(&[1])).await;
    let mut joins = spawn_join_agent(rx_m, pki.ca_copy());
    let addr = m.local_addr().to_string();

    // Full token: the CA digest and K.
    let full = JoinToken::parse(&format_token(&pki.ca.digest(), &pki.join_key)).unwrap();
    assert!(matches!(full, JoinToken::Full { .. }));
    let key = NodeKey::generate().unwrap();
    let acc = accepted(
        join_tls(&addr, &full, join_request(&key, "full"), PATIENCE)
            .await
            .unwrap(),
    );
    check_issued(&acc, &pki.ca, &key);
    assert_eq!(joins.recv().await.unwrap().host.unwrap().name, "full");

    // Bare secret S whose derived key is K.
    let bare = JoinToken::parse(SECRET).unwrap();
    assert!(bare.ca_digest().is_none());
    assert_eq!(bare.key(), &pki.join_key);
    let key = NodeKey::generate().unwrap();
    let acc = accepted(
        join_tls(&addr, &bare, join_request(&key, "bare"), PATIENCE)
            .await
            .unwrap(),
    );
    check_issued(&acc, &pki.ca, &key);
    assert_eq!(joins.recv().await.unwrap().host.unwrap().name, "bare");
    assert_ne!(acc.node_id, 10, "each join got its own id");
    assert_eq!(m.stats().joins_refused, 0);

    // A wrong secret: final, with the member's explanation; never reaches the agent.
    let wrong = JoinToken::parse("not the secret").unwrap();
    let key = NodeKey::generate().unwrap();
    match join_tls(&addr, &wrong, join_request(&key, "wrong"), PATIENCE).await {
        Err(JoinError::Final(msg)) => assert!(msg.contains("wrong join token"), "{msg}"),
        other => panic!("a wrong secret was not refused finally: {other:?}"),
    }
    assert_eq!(m.stats().joins_refused, 1);

    // The right CA digest with a wrong key: the same refusal.
    let forged = JoinToken::Full {
        ca_digest: pki.ca.digest(),
        key: JoinKey::generate().unwrap(),
    };
    match join_tls(&addr, &forged, join_request(&key, "wrong2"), PATIENCE).await {
        Err(JoinError::Final(msg)) => assert!(msg.contains("wrong join token"), "{msg}"),
        other => panic!("a wrong key was not refused finally: {other:?}"),
    }
    assert_eq!(m.stats().joins_refused, 2);
    tokio::time::sleep(QUIET).await;
    assert!(
        joins.try_recv().is_err(),
        "a join with a wrong secret reached the agent"
    );
}

#[tokio::test]
async fn join_token_of_another_cluster_is_refused_before_any_proof() {
    let pki = Pki::new(&[1]);
    let (m, mut rx_m) = start_member(&pki, 1, pki.view(&[1])).await;
    let addr = m.local_addr().to_string();
    // The right secret, but the digest of another cluster's CA.
    let other = Ca::generate(CLUSTER ^ 1, 1, SystemTime::now()).unwrap();
    let foreign = JoinToken::parse(&format_token(&other.digest(), &pki.join_key)).unwrap();

    let key = NodeKey::generate().unwrap();
    match join_tls(&addr, &foreign, join_request(&key, "stranger"), PATIENCE).await {
        Err(JoinError::Final(msg)) => {
            assert!(msg.contains("fingerprint"), "{msg}");
            assert!(msg.contains("does not present this cluster's CA"), "{msg}");
        }
        other => panic!("a token of another cluster was not refused finally: {other:?}"),
    }
    // The joiner aborted inside the handshake: the member saw a failed handshake, no join
    // request at all (so nothing to refuse), and its agent saw nothing.
    wait_until("the member saw the aborted handshake", || {
        m.stats().handshakes_refused >= 1
    })
    .await;
    assert_eq!(m.stats().joins_refused, 0);
    assert_nothing_delivered(&mut rx_m).await;
}

#[tokio::test]
async fn mitm_relay_is_refused() {
    let pki = Pki::new(&[1]);
    let (m, rx_m) = start_member(&pki, 1, pki.view(&[1])).await;
    let mut joins = spawn_join_agent(rx_m, pki.ca_copy());

    // The impostor: a TLS server with its own CA (same cluster id), where the joiner was told
    // to go, holding only what it sees on the wire.
    let evil_ca = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    let evil_key = NodeKey::generate().unwrap();
    let server = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain_of(&evil_ca, 1, &evil_key), evil_key.private_key_der())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_addr = listener.local_addr().unwrap().to_string();

    // The joiner, with the bare secret (it cannot pin a CA: the server proof must do it).
    let joiner_key = NodeKey::generate().unwrap();
    let request = join_request(&joiner_key, "victim");
    let joiner = tokio::spawn(async move {
        let bare = JoinToken::parse(SECRET).unwrap();
        join_tls(&evil_addr, &bare, request, 4 * PATIENCE).await
    });
    let (tcp, _) = tokio::time::timeout(PATIENCE, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut victim = acceptor.accept(tcp).await.unwrap();
    let ekm_victim = victim.join_exporter().unwrap();
    let captured = match read_env(&mut victim).await {
        Some(PeerEnvelope {
            body: Some(Body::JoinRequest(r)),
            ..
        }) => r,
        other => panic!("the joiner sent no join request: {other:?}"),
    };
    // The proof is genuine, for the session it was made on.
    let k = &pki.join_key;
    assert!(token::verify_client_proof(k, &ekm_victim, &captured.csr, &captured.proof).is_ok());

    // 1. Relay the request unchanged to the real member, on the impostor's own session.
    let mut upstream = tls_dial(m.local_addr(), None, &pki.ca, tls::any_member_name())
        .await
        .unwrap();
    let ekm_up = upstream.join_exporter().unwrap();
    assert_ne!(ekm_up, ekm_victim, "two sessions, two exporter values");
    assert!(token::verify_client_proof(k, &ekm_up, &captured.csr, &captured.proof).is_err());
    write_env(&mut upstream, &join_env(captured.clone())).await;
    match read_env(&mut upstream).await.and_then(|e| e.body) {
        Some(Body::JoinResponse(JoinResponse {
            result: Some(join_response::Result::Error(f)),
        })) => {
            assert_eq!(f.kind, ErrorKind::Unauthenticated as i32);
            assert!(f.message.contains("wrong join token"), "{}", f.message);
        }
        other => panic!("a relayed proof was not refused: {other:?}"),
    }
    assert_eq!(m.stats().joins_refused, 1);
    assert!(
        joins.try_recv().is_err(),
        "the relayed join reached the agent"
    );

    // 2. Control (the relay itself works): the same request with a proof made on the upstream
    //    session is accepted, and the member's proof verifies on that session only.
    let mut upstream = tls_dial(m.local_addr(), None, &pki.ca, tls::any_member_name())
        .await
        .unwrap();
    let ekm_up = upstream.join_exporter().unwrap();
    let mut rebound = captured.clone();
    rebound.proof = token::client_proof(k, &ekm_up, &rebound.csr).to_vec();
    write_env(&mut upstream, &join_env(rebound)).await;
    let acc = match read_env(&mut upstream).await.and_then(|e| e.body) {
        Some(Body::JoinResponse(r)) => accepted(r),
        other => panic!("no join response: {other:?}"),
    };
    let cert = &acc.cert_chain[0];
    assert!(
        token::verify_server_proof(
            k,
            &ekm_up,
            &acc.ca_cert,
            acc.node_id,
            cert,
            &acc.server_proof
        )
        .is_ok()
    );
    assert!(
        token::verify_server_proof(
            k,
            &ekm_victim,
            &acc.ca_cert,
            acc.node_id,
            cert,
            &acc.server_proof
        )
        .is_err()
    );
    assert_eq!(joins.recv().await.unwrap().host.unwrap().name, "victim");
    assert_eq!(m.stats().joins_refused, 1);

    // 3. The impostor's best answer to the joiner: the member's proof, with its own CA (the one
    //    the joiner's handshake ended in) and a certificate of it for the joiner's key.
    let forged = JoinAccepted {
        cert_chain: vec![
            evil_ca
                .sign_node(
                    &NodePublicKey::from_csr_der(&captured.csr).unwrap(),
                    acc.node_id,
                    "victim",
                    SystemTime::now(),
                    LIFETIME,
                )
                .unwrap()
                .to_vec(),
        ],
        ca_cert: evil_ca.cert().to_vec(),
        ..acc.clone()
    };
    let answer = PeerEnvelope {
        body: Some(Body::JoinResponse(JoinResponse {
            result: Some(join_response::Result::Accepted(forged)),
        })),
        ..PeerEnvelope::default()
    };
    write_env(&mut victim, &answer).await;
    match joiner.await.unwrap() {
        Err(JoinError::Final(msg)) => {
            assert!(msg.contains("did not prove the join secret"), "{msg}")
        }
        other => panic!("the joiner accepted an impostor: {other:?}"),
    }
}

#[tokio::test]
async fn legacy_client_is_refused_when_the_window_is_closed_and_served_while_open() {
    let pki = Pki::new(&[1, 2]);
    let view = pki.view(&[1, 2]);
    assert!(!view.legacy_open);
    let (m, mut rx_m) = start_member(&pki, 1, view.clone()).await;
    let addr = m.local_addr().to_string();
    let old = || PeerConnection::connect(&addr, Some(TOKEN), "old-release", 2, CLUSTER, PATIENCE);

    // Window closed: the member waits for a ClientHello, hears nothing, and closes without
    // greeting.
    let t0 = std::time::Instant::now();
    let err = old().await.unwrap_err();
    let waited = t0.elapsed();
    assert!(
        matches!(err, TransportError::Closed | TransportError::Io(_)),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "refused after {waited:?}: before the 300 ms silence that marks a previous release"
    );
    wait_until("the member counted the refusal", || {
        m.stats().handshakes_refused >= 1
    })
    .await;
    assert_eq!(m.stats().legacy_accepted, 0);

    // Window open: the same client is served.
    let mut open = view.clone();
    open.legacy_open = true;
    m.set_security(open);
    let mut conn = old().await.unwrap();
    assert!(conn.is_legacy());
    assert_eq!(
        (conn.remote().node_id, conn.remote().cluster_id),
        (1, CLUSTER)
    );
    assert_eq!(m.stats().legacy_accepted, 1);
    let msg = raft_msg(2, 1, 5);
    conn.send(&PeerEnvelope {
        cluster_id: CLUSTER,
        from: 2,
        to: 1,
        body: Some(Body::RaftMessage(
            vxnet_controlplane::node::encode_raft_message(&msg).unwrap(),
        )),
    })
    .await
    .unwrap();
    assert_eq!(expect_raft(&mut rx_m).await, msg);

    // Closing the window again closes the shared-secret connection.
    m.set_security(view);
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match conn.recv().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the legacy connection outlived the window");
    wait_until("the member counted the closed legacy connection", || {
        m.stats().connections_closed_revoked >= 1
    })
    .await;
}

#[tokio::test]
async fn server_without_certificate_speaks_the_previous_protocol_to_a_tls_client() {
    let pki = Pki::new(&[1, 3, 4]);
    // Node 2 has no certificate (and so no pin); the window is open everywhere.
    let mut view = pki.view(&[1, 3, 4]);
    view.members.insert(2, None);
    view.legacy_open = true;
    let (t, mut rx_t) = start_member(&pki, 1, view.clone()).await;
    let (l, rx_l) = start_plain(2, view.clone()).await;
    assert!(!l.has_cert());
    let l_addr = l.local_addr().to_string();
    let mut raft_l = spawn_forward_agent(rx_l);

    // The member's writer to node 2 (no pin: the previous protocol first).
    link(&t, &l);
    let m = send_until_delivered(&t, &mut raft_l, |i| raft_msg(1, 2, i)).await;
    assert_eq!((m.from, m.to), (1, 2));
    // And back: node 2 dials the member the previous way; it is greeted after 300 ms.
    let m = send_until_delivered(&l, &mut rx_t, |i| raft_msg(2, 1, i)).await;
    assert_eq!((m.from, m.to), (2, 1));
    assert!(t.stats().legacy_accepted >= 1);
    assert!(l.stats().legacy_accepted >= 1);
    assert_eq!(
        l.stats().handshakes_refused,
        0,
        "nobody tried TLS on node 2 yet"
    );

    // A one-shot call starts with TLS (node 2 greets at once and cannot read the ClientHello:
    // one refused handshake there), sniffs the previous release's greeting, and redials.
    let resp = t
        .forward(&l_addr, forward_request(b"fallback"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        (resp.request_id.as_slice(), resp.index),
        (&b"fallback"[..], 21)
    );
    wait_until("node 2 saw the ClientHello it could not read", || {
        l.stats().handshakes_refused >= 1
    })
    .await;

    // A member whose view pins node 2 dials its writer's connection TLS first and falls back the
    // same way.
    let mut pinned = view.clone();
    pinned.members.insert(2, Some([7; 32]));
    let (t3, _rx_t3) = start_member(&pki, 3, pinned).await;
    t3.set_peers(peers(&[(2, &l)]));
    let refused = l.stats().handshakes_refused;
    let m = send_until_delivered(&t3, &mut raft_l, |i| raft_msg(3, 2, i)).await;
    assert_eq!((m.from, m.to), (3, 2));
    wait_until("node 2 saw node 3's ClientHello", || {
        l.stats().handshakes_refused > refused
    })
    .await;
    let legacy_served = l.stats().legacy_accepted;
    assert!(legacy_served >= 3, "{:?}", l.stats());

    // A member whose window is closed refuses to downgrade, for one-shot calls and writers.
    let mut closed = view;
    closed.legacy_open = false;
    let (t4, mut rx_t4) = start_member(&pki, 4, closed).await;
    let err = t4
        .forward(&l_addr, forward_request(b"downgrade"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::LegacyRefused), "{err}");
    t4.set_peers(peers(&[(2, &l)]));
    send_until(
        "node 4's writer gave up on node 2",
        &t4,
        |i| raft_msg(4, 2, i),
        || t4.stats().raft_send_dropped >= 1,
    )
    .await;
    assert!(
        queued(&mut rx_t4)
            .iter()
            .any(|e| matches!(e, Inbound::Unreachable(2)))
    );
    assert_eq!(t4.stats().raft_sent, 0);
    assert_eq!(l.stats().legacy_accepted, legacy_served);
    assert_nothing_delivered(&mut raft_l).await;
}

// Kept client connections (`Transport::forward` and `reachable_via` reuse an idle connection to
// the same address for a few seconds) against the rules of `docs/design/peer-tls.md` §7.2.

#[tokio::test]
async fn closing_the_window_stops_kept_legacy_client_connections() {
    let pki = Pki::new(&[1]);
    let mut view = pki.view(&[1]);
    view.members.insert(2, None);
    view.legacy_open = true;
    let (t, _rx_t) = start_member(&pki, 1, view.clone()).await;
    let (l, rx_l) = start_plain(2, view.clone()).await;
    let _raft_l = spawn_forward_agent(rx_l);
    let l_addr = l.local_addr().to_string();

    // While the window is open, a call to node 2 falls back to the shared secret and the
    // connection is kept for the next call.
    let resp = t
        .forward(&l_addr, forward_request(b"open"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(resp.request_id, b"open");
    let served = l.stats().legacy_accepted;
    let resp = t
        .forward(&l_addr, forward_request(b"kept"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(resp.request_id, b"kept");
    assert_eq!(
        l.stats().legacy_accepted,
        served,
        "the second call reused the connection"
    );

    // The window closes: the kept connection is not used again.
    let mut closed = view;
    closed.legacy_open = false;
    t.set_security(closed);
    let err = t
        .forward(&l_addr, forward_request(b"closed"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::LegacyRefused), "{err}");
}

#[tokio::test]
async fn removed_node_is_not_called_on_a_kept_connection() {
    let pki = Pki::new(&[1, 2]);
    let view = pki.view(&[1, 2]);
    let (a, _rx_a) = start_member(&pki, 1, view.clone()).await;
    let (b, rx_b) = start_member(&pki, 2, view).await;
    let _raft_b = spawn_forward_agent(rx_b);
    let b_addr = b.local_addr().to_string();

    let resp = a
        .forward(&b_addr, forward_request(b"member"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(resp.request_id, b"member");
    let accepted = b.stats().tls_accepted;
    a.forward(&b_addr, forward_request(b"kept"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        b.stats().tls_accepted,
        accepted,
        "the second call reused the connection"
    );

    // A's state removes node 2: no call reaches it any more, kept connection or not.
    a.set_security(with_next(pki.view(&[1]), 3));
    let err = a
        .forward(&b_addr, forward_request(b"removed"), PATIENCE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Tls(_)),
        "a removed node's certificate is refused: {err}"
    );
}

/// `view` with another next node id (ids below it and absent are removed).
fn with_next(view: SecurityView, next: u64) -> SecurityView {
    SecurityView {
        next_node_id: next,
        ..view
    }
}

/// The server's first-byte dispatch on arbitrary openings: 200 connections with random bytes
/// (random, a TLS record header then junk, the previous release's frame length then junk,
/// nothing), all at once. Every one is closed by the member (silence after 300 ms, a partial
/// record by the 5 s handshake timeout), none is served, and members still talk afterwards.
#[tokio::test]
async fn arbitrary_openings_are_closed_and_members_still_talk() {
    let pki = Pki::new(&[1, 2]);
    let (a, _rx_a) = start_member(&pki, 1, pki.view(&[1, 2])).await;
    let (b, mut rx_b) = start_member(&pki, 2, pki.view(&[1, 2])).await;
    let addr = b.local_addr();
    // xorshift64*: deterministic, so a failure names its case.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut cases = Vec::new();
    for i in 0..200u64 {
        let len = (next() % 600) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match i % 4 {
            0 if !bytes.is_empty() => bytes[0] = 0x16,
            1 if bytes.len() >= 2 => bytes[..2].copy_from_slice(&[0, 0]),
            2 => bytes.clear(),
            _ => {}
        }
        cases.push(bytes);
    }
    let n = cases.len() as u64;
    let tasks: Vec<_> = cases
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(&bytes).await;
                let mut sink = vec![0u8; 4096];
                let closed = tokio::time::timeout(Duration::from_secs(8), async {
                    use tokio::io::AsyncReadExt;
                    loop {
                        match s.read(&mut sink).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                (i, bytes.first().copied(), closed.is_ok())
            })
        })
        .collect();
    for task in tasks {
        let (i, first, closed) = task.await.unwrap();
        assert!(closed, "case {i} (first byte {first:?}) was kept open");
    }
    let s = b.stats();
    assert_eq!(s.tls_accepted + s.legacy_accepted, 0, "{s:?}");
    assert_eq!(s.raft_delivered, 0);
    // Refused, or (past 20 refusals a second from one source) closed at accept.
    assert!(
        s.handshakes_refused + s.connections_rate_limited >= n - 1,
        "{s:?}"
    );
    assert!(s.connections_rate_limited > 0, "{s:?}");
    link(&a, &b);
    let m = send_until_delivered(&a, &mut rx_b, |i| raft_msg(1, 2, i)).await;
    assert_eq!((m.from, m.to), (1, 2));
}
