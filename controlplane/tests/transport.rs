//! Peer transport over loopback: Raft message exchange and ordering, reconnect after a peer
//! restart, authentication (token, cluster id, join-only cluster id 0), the join/forward RPCs,
//! garbage on the socket, and `send` never blocking.
//!
//! Every test binds 127.0.0.1:0 and polls with deadlines instead of sleeping.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raft::eraftpb::{Entry, Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;
use vxnet_controlplane::transport::SecurityView;
use vxnet_controlplane::transport::{
    Inbound, PeerConnection, Transport, TransportConfig, TransportError, forward, join,
};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{
    Empty, ForwardRequest, ForwardResponse, JoinAccepted, JoinRequest, JoinResponse, PeerEnvelope,
    Proposal, RegisterHost, Response, forward_response, join_response, response,
};

const CLUSTER: u64 = 42;
const TOKEN: &str = "s3cret";
/// Upper bound for anything that should happen "soon"; tests normally finish far earlier.
const PATIENCE: Duration = Duration::from_secs(5);

fn config(node_id: u64, cluster_id: u64, token: Option<&str>) -> TransportConfig {
    TransportConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        host_name: format!("host{node_id}"),
        node_id,
        cluster_id,
        token: token.map(str::to_owned),
        queue_len: 1024,
        // These tests cover the previous release's shared-secret protocol (a cluster without a
        // CA); `transport_tls.rs` covers TLS.
        security: SecurityView::legacy(),
    }
}

async fn start(
    node_id: u64,
    cluster_id: u64,
    token: Option<&str>,
) -> (Transport, Receiver<Inbound>) {
    Transport::start(config(node_id, cluster_id, token))
        .await
        .unwrap()
}

fn link(a: &Transport, b: &Transport) {
    a.set_peers(BTreeMap::from([(b.node_id(), b.local_addr().to_string())]));
    b.set_peers(BTreeMap::from([(a.node_id(), a.local_addr().to_string())]));
}

fn raft_msg(from: u64, to: u64, index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = from;
    m.to = to;
    m.term = 3;
    m.log_term = 3;
    m.index = index;
    m.commit = index.saturating_sub(1);
    for k in 0..2 {
        let e = Entry {
            term: 3,
            index: index * 2 + k,
            data: format!("entry {index}/{k}").into_bytes().into(),
            ..Entry::default()
        };
        m.entries.push(e);
    }
    m
}

async fn next_inbound(rx: &mut Receiver<Inbound>, within: Duration) -> Option<Inbound> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
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

async fn expect_unreachable(rx: &mut Receiver<Inbound>, id: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Inbound::Unreachable(got))) if got == id => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("inbound channel closed"),
            Err(_) => panic!("no Unreachable({id}) within {PATIENCE:?}"),
        }
    }
}

async fn assert_no_raft(rx: &mut Receiver<Inbound>, during: Duration) {
    let deadline = Instant::now() + during;
    while let Ok(item) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let Some(Inbound::Raft(m)) = item {
            panic!("unexpected raft message delivered: {m:?}");
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the server closes `conn` (EOF or reset) within the patience window.
async fn closed_by_server(conn: &mut PeerConnection) -> bool {
    loop {
        match tokio::time::timeout(PATIENCE, conn.recv()).await {
            Err(_) => return false,
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None) | Err(_)) => return true,
        }
    }
}

async fn raw_closed_by_server(s: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    // The server's greeting may arrive first; what matters is that the stream then ends.
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut sink))
        .await
        .is_ok()
}

fn raft_envelope(m: &Message, cluster_id: u64) -> PeerEnvelope {
    PeerEnvelope {
        cluster_id,
        from: m.from,
        to: m.to,
        body: Some(Body::RaftMessage(
            vxnet_controlplane::node::encode_raft_message(m).unwrap(),
        )),
    }
}

#[tokio::test]
async fn raft_messages_flow_both_ways_in_order() {
    let mut ca = config(1, CLUSTER, Some(TOKEN));
    ca.queue_len = 16_384;
    let (a, mut rx_a) = Transport::start(ca).await.unwrap();
    let (b, mut rx_b) = start(2, CLUSTER, Some(TOKEN)).await;
    link(&a, &b);

    const N: u64 = 10_000;
    for i in 0..N {
        a.send(raft_msg(1, 2, i));
    }
    for i in 0..N {
        let m = expect_raft(&mut rx_b).await;
        assert_eq!(m, raft_msg(1, 2, i), "message {i} out of order or altered");
    }
    for i in 0..100 {
        b.send(raft_msg(2, 1, i));
    }
    for i in 0..100 {
        assert_eq!(expect_raft(&mut rx_a).await, raft_msg(2, 1, i));
    }
    assert!(a.is_reachable(2) && b.is_reachable(1));
    assert!(!a.is_reachable(7));
    let s = a.stats();
    assert_eq!((s.raft_sent, s.raft_send_dropped), (N, 0), "{s:?}");
    assert_eq!(b.stats().raft_delivered, N);
}

#[tokio::test]
async fn restarted_peer_gets_messages_after_reconnect() {
    let (a, mut rx_a) = start(1, CLUSTER, Some(TOKEN)).await;
    let (b, mut rx_b) = start(2, CLUSTER, Some(TOKEN)).await;
    let b_addr = b.local_addr();
    link(&a, &b);
    a.send(raft_msg(1, 2, 1));
    expect_raft(&mut rx_b).await;

    drop(b);
    drop(rx_b);
    // Keep sending while it is down: the loss must be reported.
    let deadline = Instant::now() + PATIENCE;
    let mut i = 2;
    loop {
        a.send(raft_msg(1, 2, i));
        i += 1;
        if let Some(Inbound::Unreachable(2)) =
            next_inbound(&mut rx_a, Duration::from_millis(20)).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Unreachable(2) after the peer went away"
        );
    }
    wait_until("peer 2 is no longer reachable", || !a.is_reachable(2)).await;

    // Same port again (the old listener closes asynchronously, so retry briefly).
    let deadline = Instant::now() + PATIENCE;
    let (b2, mut rx_b2) = loop {
        let mut cfg = config(2, CLUSTER, Some(TOKEN));
        cfg.listen = b_addr;
        match Transport::start(cfg).await {
            Ok(t) => break t,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {b_addr}: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    b2.set_peers(BTreeMap::from([(1, a.local_addr().to_string())]));
    let deadline = Instant::now() + PATIENCE;
    let got = loop {
        a.send(raft_msg(1, 2, i));
        i += 1;
        if let Some(Inbound::Raft(m)) = next_inbound(&mut rx_b2, Duration::from_millis(50)).await {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "restarted peer never got a message"
        );
    };
    assert_eq!((got.from, got.to), (1, 2));
    // Once reconnected, order holds again: everything after `got` arrives in sequence.
    let mut last = got.index;
    a.send(raft_msg(1, 2, i));
    loop {
        let m = expect_raft(&mut rx_b2).await;
        assert!(m.index > last);
        last = m.index;
        if m.index == i {
            break;
        }
    }
    assert!(a.is_reachable(2));
    assert!(a.stats().unreachable_reported >= 1);
}

#[tokio::test]
async fn bind_conflict_fails_clearly() {
    let (a, _rx) = start(1, CLUSTER, None).await;
    let mut cfg = config(2, CLUSTER, None);
    cfg.listen = a.local_addr();
    let err = Transport::start(cfg).await.unwrap_err();
    assert!(matches!(err, TransportError::Bind { .. }), "{err}");
    assert!(err.to_string().contains(&a.local_addr().to_string()));
}

#[tokio::test]
async fn wrong_token_or_cluster_is_refused() {
    let (b, mut rx_b) = start(2, CLUSTER, Some(TOKEN)).await;
    let b_addr = b.local_addr().to_string();
    let peers = BTreeMap::from([(2, b_addr.clone())]);

    for (token, cluster) in [
        (Some("wrong"), CLUSTER),
        (None, CLUSTER),
        (Some(TOKEN), CLUSTER + 1),
    ] {
        let (a, mut rx_a) = start(1, cluster, token).await;
        a.set_peers(peers.clone());
        a.send(raft_msg(1, 2, 1));
        expect_unreachable(&mut rx_a, 2).await;
        assert!(!a.is_reachable(2));
        let err = PeerConnection::connect(&b_addr, token, "x", 1, cluster, PATIENCE)
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Refused), "{err}");
    }
    assert_no_raft(&mut rx_b, Duration::from_millis(200)).await;
    assert!(b.stats().handshakes_refused >= 6, "{:?}", b.stats());

    // Join with the wrong token is refused too.
    let err = join(
        &b_addr,
        Some("wrong"),
        "x",
        JoinRequest::default(),
        PATIENCE,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Refused), "{err}");
}

#[tokio::test]
async fn cluster_id_zero_is_join_only() {
    let (b, mut rx_b) = start(2, CLUSTER, Some(TOKEN)).await;
    let addr = b.local_addr().to_string();

    // The handshake passes (and reveals the cluster), but raft traffic closes the connection.
    let mut conn = PeerConnection::connect(&addr, Some(TOKEN), "newbie", 0, 0, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        (conn.remote().node_id, conn.remote().cluster_id),
        (2, CLUSTER)
    );
    assert_eq!(conn.remote().host_name, "host2");
    conn.send(&raft_envelope(&raft_msg(9, 2, 1), 0))
        .await
        .unwrap();
    assert!(closed_by_server(&mut conn).await);

    // Forward needs a real cluster id.
    let req = ForwardRequest {
        proposal: Some(Proposal::default()),
    };
    let err = forward(&addr, Some(TOKEN), "newbie", 9, 0, req.clone(), PATIENCE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Closed | TransportError::Io(_)),
        "{err}"
    );
    assert_no_raft(&mut rx_b, Duration::from_millis(100)).await;

    // Join works with cluster id 0.
    let agent = tokio::spawn(async move {
        while let Some(item) = rx_b.recv().await {
            if let Inbound::Join { reply, .. } = item {
                let _ = reply.send(JoinResponse {
                    result: Some(join_response::Result::Accepted(JoinAccepted {
                        node_id: 9,
                        cluster_id: CLUSTER,
                        leader_id: 2,
                        members: Vec::new(),
                        ..Default::default()
                    })),
                });
            }
        }
    });
    let resp = join(
        &addr,
        Some(TOKEN),
        "newbie",
        JoinRequest::default(),
        PATIENCE,
    )
    .await
    .unwrap();
    assert!(matches!(
        resp.result,
        Some(join_response::Result::Accepted(JoinAccepted {
            node_id: 9,
            cluster_id: CLUSTER,
            ..
        }))
    ));
    drop(b);
    agent.await.unwrap();
}

#[tokio::test]
async fn join_and_forward_round_trips() {
    let (b, mut rx_b) = start(2, CLUSTER, Some(TOKEN)).await;
    let addr = b.local_addr().to_string();
    // The test plays the agent.
    let agent = tokio::spawn(async move {
        while let Some(item) = rx_b.recv().await {
            match item {
                Inbound::Join { request, reply } => {
                    let host = request.host.unwrap_or_default();
                    let _ = reply.send(JoinResponse {
                        result: Some(join_response::Result::Accepted(JoinAccepted {
                            node_id: 3,
                            cluster_id: CLUSTER,
                            leader_id: 2,
                            members: vec![vxnet_proto::Host {
                                name: host.name,
                                node_id: 3,
                                underlay: host.underlay,
                                peer_addr: host.peer_addr,
                                registered_index: 11,
                                level: 0,
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                    });
                }
                Inbound::Forward { request, reply } => {
                    let id = request.proposal.unwrap_or_default().request_id;
                    // "ignore me": the agent drops the oneshot; the client times out.
                    if id != b"ignore me" {
                        let _ = reply.send(ForwardResponse {
                            request_id: id,
                            index: 17,
                            outcome: Some(forward_response::Outcome::Ok(Response {
                                kind: Some(response::Kind::Noop(Empty {})),
                            })),
                        });
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });

    let request = JoinRequest {
        request_id: b"join-1".to_vec(),
        host: Some(RegisterHost {
            name: "h3".into(),
            underlay: "10.0.0.3".into(),
            peer_addr: "10.0.0.3:7946".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = join(&addr, Some(TOKEN), "h3", request, PATIENCE)
        .await
        .unwrap();
    let Some(join_response::Result::Accepted(acc)) = resp.result else {
        panic!("join not accepted: {resp:?}");
    };
    assert_eq!(
        (acc.node_id, acc.cluster_id, acc.leader_id),
        (3, CLUSTER, 2)
    );
    assert_eq!(acc.members[0].peer_addr, "10.0.0.3:7946");

    for round in 0..3u8 {
        let req = ForwardRequest {
            proposal: Some(Proposal {
                request_id: vec![round; 16],
                command: None,
            }),
        };
        let resp = forward(&addr, Some(TOKEN), "h1", 1, CLUSTER, req, PATIENCE)
            .await
            .unwrap();
        assert_eq!((resp.request_id, resp.index), (vec![round; 16], 17));
        assert!(matches!(
            resp.outcome,
            Some(forward_response::Outcome::Ok(_))
        ));
    }

    let req = ForwardRequest {
        proposal: Some(Proposal {
            request_id: b"ignore me".to_vec(),
            command: None,
        }),
    };
    let err = forward(
        &addr,
        Some(TOKEN),
        "h1",
        1,
        CLUSTER,
        req,
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Timeout), "{err}");

    // Forward with a foreign cluster id is refused.
    let err = forward(
        &addr,
        Some(TOKEN),
        "h1",
        1,
        7,
        ForwardRequest::default(),
        PATIENCE,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Refused), "{err}");

    // Nobody listening: a clear connect error, within the timeout.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let err = join(
        &dead_addr,
        Some(TOKEN),
        "h3",
        JoinRequest::default(),
        PATIENCE,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");

    drop(b);
    agent.await.unwrap();
}

#[tokio::test]
async fn garbage_closes_the_connection_and_the_listener_keeps_serving() {
    let (a, _rx_a) = start(1, CLUSTER, Some(TOKEN)).await;
    let (b, mut rx_b) = start(2, CLUSTER, Some(TOKEN)).await;
    let addr: SocketAddr = b.local_addr();
    let addr_s = addr.to_string();

    // Before the handshake: random bytes, then a 4 GB length prefix.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&noise).await.unwrap();
    assert!(
        raw_closed_by_server(&mut s).await,
        "random bytes did not close the connection"
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0xff; 4]).await.unwrap();
    assert!(
        raw_closed_by_server(&mut s).await,
        "4 GB prefix before the handshake"
    );

    // After the handshake: a 4 GB length prefix is refused before allocating.
    let mut conn = PeerConnection::connect(&addr_s, Some(TOKEN), "h1", 1, CLUSTER, PATIENCE)
        .await
        .unwrap();
    conn.send_raw(&[0xff; 4]).await.unwrap();
    assert!(
        closed_by_server(&mut conn).await,
        "4 GB prefix after the handshake"
    );

    // A frame that is not a PeerEnvelope closes the connection.
    let mut conn = PeerConnection::connect(&addr_s, Some(TOKEN), "h1", 1, CLUSTER, PATIENCE)
        .await
        .unwrap();
    conn.send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(closed_by_server(&mut conn).await, "undecodable envelope");
    assert!(
        b.stats().connections_closed_bad_input >= 2,
        "{:?}",
        b.stats()
    );

    // A valid frame with a garbage raft payload is dropped; the connection stays usable.
    let mut conn = PeerConnection::connect(&addr_s, Some(TOKEN), "h1", 1, CLUSTER, PATIENCE)
        .await
        .unwrap();
    let garbage = PeerEnvelope {
        cluster_id: CLUSTER,
        from: 1,
        to: 2,
        body: Some(Body::RaftMessage(vec![0xff, 0xff, 0xff, 0xff])),
    };
    conn.send(&garbage).await.unwrap();
    // Misaddressed ones are dropped too: another node id, another cluster id.
    conn.send(&raft_envelope(&raft_msg(1, 5, 1), CLUSTER))
        .await
        .unwrap();
    conn.send(&raft_envelope(&raft_msg(1, 2, 1), CLUSTER + 1))
        .await
        .unwrap();
    conn.send(&raft_envelope(&raft_msg(1, 2, 2), CLUSTER))
        .await
        .unwrap();
    assert_eq!(expect_raft(&mut rx_b).await.index, 2);
    let s = b.stats();
    assert_eq!((s.bad_raft_payloads, s.misaddressed), (1, 2), "{s:?}");
    drop(conn);

    // The listener still serves real peers.
    link(&a, &b);
    a.send(raft_msg(1, 2, 3));
    assert_eq!(expect_raft(&mut rx_b).await.index, 3);
}

#[tokio::test]
async fn send_never_blocks_and_reports_unreachable() {
    let mut cfg = config(1, CLUSTER, Some(TOKEN));
    cfg.queue_len = 2;
    let (a, mut rx_a) = Transport::start(cfg).await.unwrap();

    // Unknown peer.
    let t0 = std::time::Instant::now();
    a.send(raft_msg(1, 99, 1));
    assert!(t0.elapsed() < Duration::from_millis(50));
    expect_unreachable(&mut rx_a, 99).await;

    // A peer that accepts TCP but never speaks: the writer hangs in its handshake, so the
    // queue (2 slots) fills.
    let blackhole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = blackhole.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            held.push(s);
        }
    });
    a.set_peers(BTreeMap::from([(3, hole_addr), (1, "127.0.0.1:1".into())]));
    // Sent from a plain thread outside the runtime, as the agent's Raft loop does.
    let a2 = a.clone();
    let elapsed = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        for i in 0..1000 {
            a2.send(raft_msg(1, 3, i));
        }
        t0.elapsed()
    })
    .join()
    .unwrap();
    assert!(
        elapsed < Duration::from_millis(500),
        "1000 sends took {elapsed:?}"
    );
    expect_unreachable(&mut rx_a, 3).await;
    assert!(a.stats().raft_send_dropped >= 998, "{:?}", a.stats());
    assert!(!a.is_reachable(3));
    holder.abort();
}
