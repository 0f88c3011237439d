//! Bad input for the control plane: garbage on the API socket, malformed and hostile
//! peer traffic on port 7946 from a stranger on the underlay, and conflicting requests through
//! the CLI. The agents must answer an error or close, keep serving, and lose nothing.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use prost::Message as _;
use serde_json::Value;
use vxnet_controlplane::transport::pki::NodeKey;
use vxnet_controlplane::transport::token::JoinToken;
use vxnet_controlplane::transport::{self};
use vxnet_dataplane::io::{NamedNetns, NetnsHandle};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{
    ApiResponse, JoinRequest, PeerEnvelope, RegisterHost, api_response::Kind as Resp,
};
use vxnet_testkit::agent::TEST_TOKEN;

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// What the agent did with raw bytes written to its API socket.
#[derive(Debug)]
enum ApiAnswer {
    /// It closed the connection without a frame.
    Closed,
    /// It answered with an error.
    Error(String),
    /// It answered with something else (a valid response).
    Other(#[allow(dead_code)] Box<ApiResponse>),
}

/// Writes `bytes` to the API socket (then half-closes if `eof`) and reads the answer.
fn raw_api(socket: &Path, bytes: &[u8], eof: bool) -> ApiAnswer {
    let mut s = UnixStream::connect(socket).expect("connect API socket");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    // The agent may close while we still write (e.g. after a bad length prefix).
    let _ = s.write_all(bytes);
    if eof {
        let _ = s.shutdown(Shutdown::Write);
    }
    read_api_answer(&mut s)
}

fn read_api_answer(s: &mut UnixStream) -> ApiAnswer {
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        // The agent answered and closed with our extra bytes unread: the answer may be in buf.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the API answer: {e}"),
    }
    if buf.is_empty() {
        return ApiAnswer::Closed;
    }
    assert!(buf.len() >= 4, "truncated answer {buf:?}");
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    assert_eq!(buf.len(), 4 + len, "one frame, nothing after it");
    let response = ApiResponse::decode(&buf[4..]).expect("the agent answers a valid frame");
    match response.kind {
        Some(Resp::Error(f)) => ApiAnswer::Error(f.message),
        _ => ApiAnswer::Other(Box::new(response)),
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Garbage on the API socket: random bytes, a huge length prefix, a valid length with garbage
/// prost, truncated frames, an empty request, a slow client, hundreds of idle connections
/// announcing maximal frames. Each gets an error (or a close); the agent keeps serving.
#[test]
fn api_socket_survives_garbage() {
    let Some(mut cluster) = cluster_for("api_socket_survives_garbage", "ca", 1) else {
        return;
    };
    let h1 = &cluster.agents[0];
    h1.vxnet(&["network", "create", "--subnet", "10.51.0.0/24", "keep"]);
    let before = h1.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]);
    let api = h1.api.clone();

    // A slow client first: it must not hold up anybody else.
    let mut slow = UnixStream::connect(&api).expect("connect");
    slow.write_all(&[0, 0]).expect("write");
    let slow_since = Instant::now();

    // Random bytes (then EOF): whatever the first four say, the answer is an error.
    for seed in 1..=20u64 {
        let bytes = noise(seed, 1 + (seed as usize * 37) % 300);
        match raw_api(&api, &bytes, true) {
            ApiAnswer::Error(_) | ApiAnswer::Closed => {}
            other => panic!("random bytes (seed {seed}) got {other:?}"),
        }
    }
    // A huge length prefix is refused before anything is read or allocated.
    match raw_api(&api, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3], false) {
        ApiAnswer::Error(m) => assert!(m.contains("too large"), "{m}"),
        other => panic!("huge prefix got {other:?}"),
    }
    // A valid length with garbage prost.
    match raw_api(&api, &frame(&[0xff; 12]), false) {
        ApiAnswer::Error(m) => assert!(m.contains("malformed"), "{m}"),
        other => panic!("garbage prost got {other:?}"),
    }
    // A length larger than what follows, then EOF.
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend_from_slice(&[8; 10]);
    match raw_api(&api, &short, true) {
        ApiAnswer::Error(m) => assert!(m.contains("reading the request"), "{m}"),
        other => panic!("truncated frame got {other:?}"),
    }
    // An empty message, and one with only an unknown field: valid prost, no request in it.
    for body in [Vec::new(), vec![0xf8, 0x06, 0x01]] {
        match raw_api(&api, &frame(&body), false) {
            ApiAnswer::Error(m) => assert!(m.contains("empty request"), "{m}"),
            other => panic!("empty request got {other:?}"),
        }
    }
    // A connection closed at once, and one closed halfway through the prefix.
    drop(UnixStream::connect(&api).expect("connect"));
    let _ = raw_api(&api, &[0, 0], true);

    // 200 idle connections announcing the largest allowed frame: memory stays bounded.
    let pid = h1.pid().expect("agent pid");
    let rss_before = rss_kib(pid).unwrap_or(0);
    let max = vxnet::api::MAX_FRAME as u32;
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| {
            let mut s = UnixStream::connect(&api).expect("connect");
            s.write_all(&max.to_be_bytes()).expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let during = h1.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]);
    let ls_while_busy = t.elapsed();
    assert_eq!(during, before);
    let rss_during = rss_kib(pid).unwrap_or(0);
    drop(idle);
    assert!(
        rss_during < rss_before + 256 * 1024,
        "200 idle max-size requests grew the agent from {rss_before} KiB to {rss_during} KiB"
    );

    // The slow client is told off: after the agent's read timeout, or sooner, when the idle
    // connections filled every slot and the oldest reader (it) was turned away to make room.
    // Everybody else was served.
    match read_api_answer(&mut slow) {
        ApiAnswer::Error(m) => assert!(
            m.contains("timed out") || m.contains("too many concurrent API connections"),
            "{m}"
        ),
        other => panic!("slow client got {other:?}"),
    }
    let slow_answered = slow_since.elapsed();

    // Still serving, reads and writes, nothing lost.
    assert!(cluster.agents[0].is_running(), "the agent is alive");
    let h1 = &cluster.agents[0];
    assert_eq!(
        h1.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]),
        before
    );
    h1.vxnet(&["network", "create", "after"]);
    let names = h1.vxnet(&["network", "ls", "--format", "{{.Name}}"]);
    assert_eq!(names, "after\nkeep\n");
    eprintln!(
        "cp_badinput: api garbage refused; ls with 200 idle max-frame connections {ls_while_busy:?}, \
         RSS {rss_before} → {rss_during} KiB; slow client answered after {slow_answered:?}"
    );
}

/// A namespace on the underlay switch that belongs to no agent: the stranger. Removed on drop.
struct Stranger {
    ns: NamedNetns,
}

impl Stranger {
    fn new(cluster: &Cluster, ip: &str) -> Stranger {
        let name = format!("{}-x", cluster.prefix);
        let _ = sh_output(&format!("ip netns del {name} 2>/dev/null"));
        let ns = NamedNetns::create(&name).expect("create the stranger's namespace");
        cluster.plug(&name, "px");
        sh(&format!(
            "ip -n {name} addr add {ip}/24 dev ul0 && ip -n {name} link set lo up"
        ));
        Stranger { ns }
    }

    /// Runs `f` on a thread inside the stranger's namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        NetnsHandle::open(self.ns.name())
            .expect("open the stranger's namespace")
            .run(f)
            .expect("enter the stranger's namespace")
    }
}

/// Connects to `addr`, writes `bytes`, and returns how long the server took to close the
/// connection (`None`: still open after `wait`).
fn tcp_garbage(addr: &str, bytes: &[u8], wait: Duration) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).expect("connect to the peer port");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let t = Instant::now();
    let _ = s.write_all(bytes);
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(t.elapsed()),
        }
    }
}

/// Whether the server has closed `s` (reads what it sent, e.g. a greeting, up to EOF).
fn is_closed(s: &TcpStream) -> bool {
    let mut s: &TcpStream = s;
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

fn raft_term(agent: &Agent) -> u64 {
    let stats: Value =
        serde_json::from_str(&agent.vxnet(&["stats", "--format", "json"])).expect("stats json");
    stats["raft.term"].as_u64().expect("raft.term")
}

/// Malformed and hostile peer traffic from a stranger on the underlay (the cluster speaks mutual
/// TLS): random bytes, broken and huge TLS records, the previous release's handshake (no longer
/// allowed), silence, a stalled handshake, a connection flood; and, with the join secret, join
/// requests without a host, with a taken name or with a wrong proof. The agents keep serving and
/// the cluster neither loses its leader nor changes.
#[test]
fn peer_port_survives_garbage() {
    if !require_root("peer_port_survives_garbage") {
        return;
    }
    let cluster = Cluster::new("cp", ClusterOptions::default());
    let (h1, h2) = (&cluster.agents[0], &cluster.agents[1]);
    h1.vxnet(&["network", "create", "--subnet", "10.52.0.0/24", "keep"]);
    wait_for("h2 to see keep", Duration::from_secs(5), || {
        h2.cli(&["network", "inspect", "keep"])
            .status
            .success()
            .then_some(())
    });
    let before = h1.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]);
    let members_before = h1.vxnet(&["cluster", "members", "--format", "json"]);
    let term_before = raft_term(h1);
    let stranger = Stranger::new(&cluster, "192.168.200.99");
    let target = "192.168.200.1:7946";

    // Raw garbage, broken TLS, the previous release's handshake and silence: closed at once
    // (silence after 300 ms, when a previous release's client would be greeted).
    let closes = stranger.run(|| {
        let mut random = noise(1, 4096);
        random[0] = 0x42;
        let mut broken_record = vec![0x16, 0x03, 0x01, 0x00, 0x40];
        broken_record.extend(noise(3, 64));
        let mut huge_record = vec![0x16, 0x03, 0x03, 0xff, 0xff];
        huge_record.extend(noise(9, 1000));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("random 4 KiB", random),
            ("a TLS record of garbage", broken_record),
            ("a huge TLS record", huge_record),
            ("the previous release's Hello, unasked", {
                let hello = PeerEnvelope {
                    body: Some(Body::Hello(vxnet_proto::Hello {
                        host_name: "x".into(),
                        node_id: 1,
                        nonce: vec![7; 16],
                        auth: vec![0; 32],
                    })),
                    ..PeerEnvelope::default()
                };
                frame(&hello.encode_to_vec())
            }),
            ("silence", Vec::new()),
        ];
        cases
            .into_iter()
            .map(|(what, bytes)| {
                let closed = tcp_garbage(target, &bytes, Duration::from_secs(8));
                (what, closed)
            })
            .collect::<Vec<_>>()
    });
    for (what, closed) in &closes {
        let t = closed.unwrap_or_else(|| panic!("{what}: the agent kept the connection open"));
        assert!(
            t < Duration::from_secs(1),
            "{what}: closed only after {t:?}"
        );
    }

    // A flood of 300 silent connections (the agent has 256 slots) must not lock the peers out:
    // a write on h2, forwarded to h1 over a new connection, goes through meanwhile.
    let (flood_write, closed) = {
        let flood: Vec<TcpStream> = stranger.run(|| {
            (0..300)
                .filter_map(|_| TcpStream::connect(target).ok())
                .collect()
        });
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let out = h2.cli(&["network", "create", "during-flood"]);
        let flood_write = t.elapsed();
        assert!(
            out.status.success(),
            "a forwarded write during the flood: {}",
            stderr(&out)
        );
        // How many of the stranger's connections the agent has closed.
        let closed = flood.iter().filter(|s| is_closed(s)).count();
        (flood_write, closed)
    };
    assert!(
        flood_write < Duration::from_secs(2),
        "a forwarded write took {flood_write:?} while strangers held the peer port's slots"
    );
    assert!(
        closed >= 44,
        "only {closed} of 300 silent connections were dropped"
    );

    // A source with more than 20 refused handshakes a second has its connections closed at
    // accept for up to 2 s: the flood did that; the stranger cools down before going on.
    assert!(
        h1.counter("transport.connections_rate_limited")
            .unwrap_or(0)
            > 0,
        "the flood's source was rate limited"
    );
    std::thread::sleep(Duration::from_millis(2100));

    // With the join secret: join requests that must be refused, and the previous release's
    // handshake. Meanwhile, a stalled handshake (part of a ClientHello, then silence) is dropped
    // by the handshake timeout (5 s).
    let (stalled, (join_answers, wrong_secret, legacy)) = std::thread::scope(|s| {
        let stalled = s.spawn(|| {
            stranger.run(|| {
                let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00];
                partial.extend_from_slice(&[1; 10]);
                tcp_garbage(target, &partial, Duration::from_secs(9))
            })
        });
        let checks = join_checks(&stranger, target);
        (stalled.join().expect("stalled"), checks)
    });
    let stalled = stalled.expect("a stalled handshake must be dropped");
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(7)).contains(&stalled),
        "stalled handshake dropped after {stalled:?}"
    );
    let (no_host, taken) = join_answers;
    let error_of = |r: &vxnet_proto::JoinResponse| match &r.result {
        Some(vxnet_proto::join_response::Result::Error(f)) => f.message.clone(),
        other => panic!("join must be refused: {other:?}"),
    };
    assert!(error_of(&no_host).contains("without host"), "{no_host:?}");
    assert!(error_of(&taken).contains("h2"), "{taken:?}");
    assert!(
        wrong_secret.contains("wrong join token"),
        "a wrong secret is refused, finally: {wrong_secret}"
    );
    assert!(
        legacy.is_err(),
        "the previous release's handshake is refused once every host runs TLS: {legacy:?}"
    );
    assert!(
        h1.counter("transport.joins_refused").unwrap_or(0) >= 1,
        "the refused proof is counted"
    );

    // Both agents alive and serving; same leader and term; nothing changed but during-flood.
    let h1 = &cluster.agents[0];
    let h2 = &cluster.agents[1];
    assert_eq!(raft_term(h1), term_before, "no election was caused");
    assert_eq!(
        h1.vxnet(&["cluster", "members", "--format", "json"]),
        members_before
    );
    let names = h1.vxnet(&["network", "ls", "--format", "{{.Name}}"]);
    assert_eq!(names, "during-flood\nkeep\n");
    h2.vxnet(&["network", "rm", "during-flood"]);
    assert_eq!(
        h1.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]),
        before
    );
    eprintln!(
        "cp_badinput: peer garbage closed in {:?}; stalled handshake dropped after {stalled:?}; \
         forwarded write during a 300-connection flood took {flood_write:?} ({closed} of 300 dropped)",
        closes.iter().map(|(_, t)| t.unwrap_or_default()).max()
    );
}

/// Conflicting names, subnets, VNIs and addresses through the CLI, on the leader and on a
/// follower (forwarded): docker-like errors on stderr, a non-zero exit, and the state unchanged.
#[test]
fn cli_conflicts_are_refused_and_change_nothing() {
    if !require_root("cli_conflicts_are_refused_and_change_nothing") {
        return;
    }
    let mut cluster = Cluster::new("cb", ClusterOptions::default());
    let c1 = cluster.container();
    let c2 = cluster.container();
    let (h1, h2) = (&cluster.agents[0], &cluster.agents[1]);
    h1.vxnet(&[
        "network",
        "create",
        "--subnet",
        "10.50.0.0/24",
        "--vni",
        "5000",
        "alpha",
    ]);
    h1.vxnet(&["network", "create", "beta"]);
    wait_for("h2 to see beta", Duration::from_secs(5), || {
        h2.cli(&["network", "inspect", "beta"])
            .status
            .success()
            .then_some(())
    });
    h2.vxnet(&["network", "connect", "--ip", "10.50.0.10", "alpha", &c1]);
    let snapshot = |a: &Agent| {
        (
            a.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]),
            a.vxnet(&["network", "inspect", "alpha", "beta"]),
        )
    };
    let before = snapshot(h1);
    wait_for("h2 to agree", Duration::from_secs(5), || {
        (snapshot(h2) == before).then_some(())
    });

    let cases: &[(&[&str], &str)] = &[
        (
            &["network", "create", "alpha"],
            "network with name alpha already exists",
        ),
        (
            &["network", "create", "--subnet", "10.50.0.128/25", "gamma"],
            "Pool overlaps with other one on this address space",
        ),
        (
            &["network", "create", "--vni", "5000", "gamma"],
            "VNI 5000 is already used by network alpha",
        ),
        (
            &["network", "create", "--vni", "16777216", "gamma"],
            "out of range",
        ),
        (
            &["network", "create", "--subnet", "10.60.0.0/33", "gamma"],
            "invalid subnet",
        ),
        (
            &["network", "create", "--subnet", "10.61.0.0/31", "gamma"],
            "too small",
        ),
        (
            &["network", "create", "-d", "bridge", "gamma"],
            "plugin \"bridge\" not found",
        ),
        (&["network", "create", ""], "network name must not be empty"),
        (
            &["network", "connect", "--ip", "10.50.0.10", "alpha", &c2],
            "address 10.50.0.10 already in use",
        ),
        (
            &["network", "connect", "--ip", "10.99.0.1", "alpha", &c2],
            "outside the address pool",
        ),
        (
            &["network", "connect", "--ip", "10.50.0.1", "alpha", &c2],
            "reserved",
        ),
        (
            &["network", "connect", "--ip", "10.50.0.300", "alpha", &c2],
            "invalid requested address",
        ),
        (
            &["network", "connect", "alpha", &c1],
            "already exists in network alpha",
        ),
        (
            &["network", "connect", "nosuch", &c2],
            "network nosuch not found",
        ),
        (
            &["network", "connect", "alpha", "no-such-netns"],
            "sandbox no-such-netns",
        ),
        (
            &["network", "disconnect", "beta", &c1],
            "is not connected to network beta",
        ),
        (&["network", "rm", "alpha"], "has active endpoints"),
        (&["network", "rm", "nosuch"], "network nosuch not found"),
        (
            &["network", "inspect", "nosuch"],
            "network nosuch not found",
        ),
        (
            &["fdb", "add", "alpha", "--vtep", "not-an-ip"],
            "invalid VTEP address",
        ),
        (
            &[
                "fdb",
                "add",
                "alpha",
                "--vtep",
                "192.168.200.50",
                "--mac",
                "02:00:00:00:00:01",
                "--ip",
                "10.50.0.10",
            ],
            "address 10.50.0.10 already in use",
        ),
        (&["cluster", "rm", "h9"], "h9"),
    ];
    for agent in [h1, h2] {
        for (args, want) in cases {
            let out = agent.cli(args);
            let err = stderr(&out);
            assert!(
                !out.status.success(),
                "vxnet {} on {} must fail; stdout: {}",
                args.join(" "),
                agent.name,
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(
                err.starts_with("Error response from daemon: ") && err.contains(want),
                "vxnet {} on {}: stderr {err:?} should be a daemon error containing {want:?}",
                args.join(" "),
                agent.name
            );
        }
    }
    // Nothing changed, on either host.
    assert_eq!(snapshot(h1), before, "h1's state is unchanged");
    assert_eq!(snapshot(h2), before, "h2's state is unchanged");
    // The refused connects left no link behind, and the good endpoint still has its address.
    assert!(
        !cluster.links(&c2).iter().any(|l| l.starts_with("eth")),
        "{:?}",
        cluster.links(&c2)
    );
    assert_eq!(cluster.ipv4_of(&c1, "eth0"), "10.50.0.10");
    // And the refused requests cost nothing: the same requests, made valid, go through.
    h2.vxnet(&["network", "connect", "alpha", &c2]);
    h2.vxnet(&["network", "create", "--vni", "5001", "gamma"]);
    eprintln!(
        "cp_badinput: {} conflicting CLI calls refused on each host",
        cases.len()
    );
}

type JoinChecks = (
    (vxnet_proto::JoinResponse, vxnet_proto::JoinResponse),
    String,
    Result<vxnet_proto::JoinResponse, vxnet_controlplane::transport::TransportError>,
);

/// From the stranger's namespace, with the join secret: join requests that must be refused (no
/// host, a taken name), a wrong secret, and a join with the previous release's handshake.
fn join_checks(stranger: &Stranger, target: &str) -> JoinChecks {
    stranger.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let t = Duration::from_secs(5);
            let key = NodeKey::generate().expect("key");
            let secret = JoinToken::parse(TEST_TOKEN).expect("token");
            let request = |host: Option<RegisterHost>| JoinRequest {
                request_id: noise(host.is_some() as u64 + 11, 16),
                host,
                csr: key.csr_der("stranger").expect("csr"),
                ..Default::default()
            };
            let join = |token: JoinToken, host: Option<RegisterHost>| {
                let request = request(host);
                async move { transport::join_tls(target, &token, request, t).await }
            };
            let no_host = join(secret.clone(), None).await.expect("join answer");
            let taken = join(
                secret.clone(),
                Some(RegisterHost {
                    name: "h2".into(),
                    underlay: "192.168.200.99".into(),
                    peer_addr: "192.168.200.99:7946".into(),
                    key_sha256: key.spki_sha256().to_vec(),
                    level: 2,
                }),
            )
            .await
            .expect("join answer");
            let wrong = JoinToken::parse("not the secret").expect("token");
            let wrong_secret = match join(wrong, None).await {
                Err(transport::JoinError::Final(why)) => why,
                other => panic!("a wrong secret must be refused, finally: {other:?}"),
            };
            let legacy =
                transport::join(target, Some(TEST_TOKEN), "stranger", request(None), t).await;
            ((no_host, taken), wrong_secret, legacy)
        })
    })
}
