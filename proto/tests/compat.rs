//! Wire compatibility: every message type, with every field set (nested messages, each oneof
//! variant, maps, repeated fields, enums, explicit-presence fields), encodes to the bytes in
//! `tests/golden/messages.hex`, and those bytes decode back to the same value.
//!
//! The golden bytes were written by the hand-derived prost structs that preceded the `.proto`
//! files (`VXNET_PROTO_BLESS=1 cargo test -p vxnet-proto --test compat` rewrites them; only do
//! that for a deliberate, compatible addition, and review the diff: changed lines are a wire
//! break).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;

use vxnet_proto::*;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/messages.hex")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Decodes golden bytes and compares the result with the case's value.
type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// Encoded cases, in a fixed order; each also checks decode and `encoded_len`.
#[derive(Default)]
struct Cases {
    rows: Vec<(String, Vec<u8>)>,
    /// Golden bytes → decode → compare, per case (run once the golden file is loaded).
    checks: Vec<Check>,
}

impl Cases {
    fn add<M>(&mut self, name: &str, value: M)
    where
        M: Message + Default + PartialEq + Debug + 'static,
    {
        let bytes = value.encode_to_vec();
        assert_eq!(bytes.len(), value.encoded_len(), "{name}: encoded_len");
        assert!(!name.contains(char::is_whitespace));
        assert!(
            self.rows.iter().all(|(n, _)| n != name),
            "duplicate case {name}"
        );
        self.rows.push((name.to_string(), bytes));
        let name = name.to_string();
        self.checks.push(Box::new(move |golden| {
            let decoded = M::decode(golden)
                .map_err(|e| format!("{name}: golden bytes do not decode: {e}"))?;
            if decoded != value {
                return Err(format!(
                    "{name}: golden bytes decode to\n{decoded:#?}\nexpected\n{value:#?}"
                ));
            }
            Ok(())
        }));
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn network() -> Network {
    Network {
        id: "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
        name: "frontend".into(),
        driver: "overlay".into(),
        subnet: "10.20.0.0/24".into(),
        gateway: "10.20.0.1".into(),
        ip_range: "10.20.0.128/25".into(),
        aux_addresses: map(&[("router", "10.20.0.2"), ("dns", "10.20.0.3")]),
        vni: 0x00ff_ffff,
        internal: true,
        labels: map(&[("team", "net"), ("env", "prod"), ("ünïcode", "✓")]),
        options: map(&[("mtu", "1450")]),
        created_unix_ms: 1_764_460_800_123,
        created_index: u64::MAX,
        ipam_cursor: u32::MAX,
        // Fields added later stay at their defaults here, so the original rows keep their
        // bytes; the `*.v2` cases below set them.
        docker_networks: Vec::new(),
        created_by_docker: false,
    }
}

fn docker_network() -> DockerNetwork {
    DockerNetwork {
        host: "host-a".into(),
        network_id: "7f1ea55d1bafd6f17b5a3d592756a2062814290f3f84608f95b346a72caf03f5".into(),
    }
}

fn reservation() -> Reservation {
    Reservation {
        network_id: network().id,
        ipv4: "10.20.0.9".into(),
        host: "host-a".into(),
        created_index: 77,
    }
}

fn endpoint() -> Endpoint {
    Endpoint {
        id: "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100".into(),
        network_id: network().id,
        name: "web-1".into(),
        host: "host-a".into(),
        vtep: "192.0.2.10".into(),
        sandbox: "c0ffee".into(),
        aliases: strings(&["web", "www", ""]),
        ipv4: "10.20.0.5".into(),
        prefix_len: 24,
        mac: "02:42:0a:14:00:05".into(),
        vni: 4096,
        created_index: 300,
        runtime: String::new(),
        interface: String::new(),
        ports: Vec::new(),
    }
}

fn port_mapping() -> PortMapping {
    PortMapping {
        protocol: "udp".into(),
        host_ip: "192.0.2.10".into(),
        host_port: 65535,
        container_port: 53,
    }
}

fn set_ports() -> SetEndpointPorts {
    SetEndpointPorts {
        endpoint_id: endpoint().id,
        host: "host-a".into(),
        ports: vec![port_mapping(), PortMapping::default()],
    }
}

fn host() -> Host {
    Host {
        name: "host-a".into(),
        node_id: 3,
        underlay: "192.0.2.10".into(),
        peer_addr: "192.0.2.10:7946".into(),
        registered_index: 12,
        level: 0,
        key_sha256: Vec::new(),
        cert_ca_generation: 0,
        cert_not_after_unix_ms: 0,
    }
}

fn static_vtep() -> StaticVtep {
    StaticVtep {
        network_id: network().id,
        vtep: "198.51.100.7".into(),
        mac: "02:00:00:00:00:07".into(),
        ipv4: "10.20.0.200".into(),
        vni: 4097,
        origin: "endpoint:host-b".into(),
    }
}

fn failure() -> ApplyFailure {
    ApplyFailure {
        kind: ErrorKind::Conflict as i32,
        message: "network with name frontend already exists".into(),
    }
}

fn create_network() -> CreateNetwork {
    CreateNetwork {
        name: "frontend".into(),
        driver: "overlay".into(),
        subnet: Some("10.20.0.0/24".into()),
        gateway: Some("10.20.0.1".into()),
        ip_range: Some("10.20.0.128/25".into()),
        aux_addresses: map(&[("router", "10.20.0.2")]),
        vni: Some(4096),
        internal: true,
        labels: map(&[("a", "1"), ("b", "")]),
        options: map(&[("", "empty-key")]),
        id: network().id,
        created_unix_ms: 1_764_460_800_123,
    }
}

fn connect() -> ConnectEndpoint {
    ConnectEndpoint {
        network: "frontend".into(),
        host: "host-a".into(),
        sandbox: "c0ffee".into(),
        name: "web-1".into(),
        aliases: strings(&["web", "www"]),
        requested_ipv4: Some("10.20.0.5".into()),
        endpoint_id: endpoint().id,
        runtime: String::new(),
        interface: String::new(),
        publish: Vec::new(),
    }
}

fn disconnect() -> DisconnectEndpoint {
    DisconnectEndpoint {
        network: "frontend".into(),
        sandbox: "c0ffee".into(),
        host: "host-a".into(),
        force: true,
        endpoint_id: String::new(),
        release_address: false,
    }
}

fn register() -> RegisterHost {
    RegisterHost {
        name: "host-b".into(),
        underlay: "192.0.2.11".into(),
        peer_addr: "192.0.2.11:7946".into(),
        key_sha256: Vec::new(),
        level: 0,
    }
}

fn add_vtep() -> AddStaticVtep {
    AddStaticVtep {
        network: "frontend".into(),
        vtep: "198.51.100.7".into(),
        mac: Some("02:00:00:00:00:07".into()),
        ipv4: Some("10.20.0.200".into()),
    }
}

fn remove_vtep() -> RemoveStaticVtep {
    RemoveStaticVtep {
        network: "frontend".into(),
        vtep: "198.51.100.7".into(),
        mac: Some("02:00:00:00:00:07".into()),
        ipv4: Some("10.20.0.200".into()),
    }
}

fn responses() -> Vec<(&'static str, response::Kind)> {
    use response::Kind as K;
    vec![
        ("network_created", K::NetworkCreated(network())),
        ("network_removed", K::NetworkRemoved(network())),
        ("endpoint_connected", K::EndpointConnected(endpoint())),
        ("endpoint_disconnected", K::EndpointDisconnected(endpoint())),
        ("host_registered", K::HostRegistered(host())),
        ("host_removed", K::HostRemoved(host())),
        ("static_vtep_added", K::StaticVtepAdded(static_vtep())),
        ("static_vtep_removed", K::StaticVtepRemoved(static_vtep())),
        ("noop", K::Noop(Empty {})),
        (
            "docker_network_attached",
            K::DockerNetworkAttached(network_v2()),
        ),
        (
            "docker_network_detached",
            K::DockerNetworkDetached(network_v2()),
        ),
        ("address_reserved", K::AddressReserved(reservation())),
        ("address_released", K::AddressReleased(reservation())),
        (
            "endpoint_ports_set",
            K::EndpointPortsSet(Endpoint {
                ports: vec![port_mapping()],
                ..endpoint()
            }),
        ),
    ]
}

fn network_v2() -> Network {
    Network {
        docker_networks: vec![docker_network(), DockerNetwork::default()],
        created_by_docker: true,
        ..network()
    }
}

fn attach_docker() -> AttachDockerNetwork {
    AttachDockerNetwork {
        host: "host-a".into(),
        docker_network_id: docker_network().network_id,
        network: Some(create_network()),
    }
}

fn detach_docker() -> DetachDockerNetwork {
    DetachDockerNetwork {
        host: "host-a".into(),
        docker_network_id: docker_network().network_id,
    }
}

fn reserve() -> ReserveAddress {
    ReserveAddress {
        network: "frontend".into(),
        host: "host-a".into(),
        ipv4: Some("10.20.0.9".into()),
    }
}

fn release() -> ReleaseAddress {
    ReleaseAddress {
        network: "frontend".into(),
        host: "host-a".into(),
        ipv4: "10.20.0.9".into(),
    }
}

fn commands() -> Vec<(&'static str, command::Kind)> {
    use command::Kind as K;
    vec![
        ("create_network", K::CreateNetwork(create_network())),
        (
            "remove_network",
            K::RemoveNetwork(RemoveNetwork {
                name_or_id: "a1b2".into(),
            }),
        ),
        ("connect_endpoint", K::ConnectEndpoint(connect())),
        ("disconnect_endpoint", K::DisconnectEndpoint(disconnect())),
        ("register_host", K::RegisterHost(register())),
        (
            "remove_host",
            K::RemoveHost(RemoveHost {
                name: "host-b".into(),
            }),
        ),
        ("add_static_vtep", K::AddStaticVtep(add_vtep())),
        ("remove_static_vtep", K::RemoveStaticVtep(remove_vtep())),
        ("noop", K::Noop(Empty {})),
        (
            "attach_docker_network",
            K::AttachDockerNetwork(attach_docker()),
        ),
        (
            "detach_docker_network",
            K::DetachDockerNetwork(detach_docker()),
        ),
        ("reserve_address", K::ReserveAddress(reserve())),
        ("release_address", K::ReleaseAddress(release())),
        (
            "report_level",
            K::ReportLevel(ReportLevel {
                host: "host-a".into(),
                level: 1,
            }),
        ),
        ("set_endpoint_ports", K::SetEndpointPorts(set_ports())),
    ]
}

fn not_leader() -> NotLeader {
    NotLeader {
        leader_id: 2,
        leader_addr: "192.0.2.12:7946".into(),
    }
}

fn proposal() -> Proposal {
    Proposal {
        request_id: (0u8..16).collect(),
        command: Some(Command {
            kind: Some(command::Kind::CreateNetwork(create_network())),
        }),
    }
}

fn ca_cert(generation: u32) -> CaCert {
    CaCert {
        generation,
        cert: vec![0x30, 0x82, 0x01, generation as u8],
    }
}

fn cluster_tls() -> ClusterTls {
    ClusterTls {
        trusted: vec![ca_cert(1), ca_cert(2)],
        signer_generation: 2,
        signer_key: vec![0x30, 0x81, 0x87, 0x02],
        join_key: (0u8..16).collect(),
        join_key_unix_ms: 1_764_460_800_456,
        cross_cert: vec![0x30, 0x82, 0x02, 0x00],
    }
}

/// The level-2 (peer TLS) commands, after `set_endpoint_ports`.
fn tls_commands() -> Vec<(&'static str, command::Kind)> {
    use command::Kind as K;
    vec![
        (
            "init_tls",
            K::InitTls(InitTls {
                ca: Some(ca_cert(1)),
                ca_key: vec![0x30, 0x81, 0x87],
                join_key: (0u8..16).collect(),
                unix_ms: 1_764_460_800_456,
            }),
        ),
        (
            "set_host_key",
            K::SetHostKey(SetHostKey {
                host: "host-a".into(),
                node_id: 3,
                key_sha256: (100u8..132).collect(),
            }),
        ),
        (
            "set_join_key",
            K::SetJoinKey(SetJoinKey {
                join_key: (16u8..32).collect(),
                unix_ms: 1_764_460_900_000,
            }),
        ),
        (
            "rotate_ca",
            K::RotateCa(RotateCa {
                ca: Some(ca_cert(2)),
                ca_key: vec![0x30, 0x81, 0x88],
                cross_cert: vec![0x30, 0x82, 0x02, 0x00],
            }),
        ),
        (
            "finish_ca_rotation",
            K::FinishCaRotation(FinishCaRotation {
                generation: 2,
                force: true,
            }),
        ),
        (
            "report_tls",
            K::ReportTls(ReportTls {
                host: "host-a".into(),
                ca_generation: 2,
                not_after_unix_ms: 1_772_236_800_000,
            }),
        ),
    ]
}

fn all_cases() -> Cases {
    let mut c = Cases::default();

    // Replicated records.
    c.add("Network", network());
    c.add("Network.default", Network::default());
    c.add("Endpoint", endpoint());
    c.add("Host", host());
    c.add("StaticVtep", static_vtep());
    c.add("ApplyFailure", failure());
    for (i, kind) in [
        ErrorKind::Unspecified,
        ErrorKind::Invalid,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Exhausted,
        ErrorKind::InUse,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(kind as i32, i as i32);
        c.add(
            &format!("ApplyFailure.kind{i}"),
            ApplyFailure {
                kind: kind as i32,
                message: String::new(),
            },
        );
    }
    // Unknown enum values stay as they are (open enums).
    c.add(
        "ApplyFailure.kind_unknown",
        ApplyFailure {
            kind: 42,
            message: "x".into(),
        },
    );
    c.add(
        "ApplyFailure.kind_negative",
        ApplyFailure {
            kind: -1,
            message: String::new(),
        },
    );
    c.add("Empty", Empty {});
    c.add("Response.none", Response { kind: None });
    for (name, kind) in responses() {
        c.add(&format!("Response.{name}"), Response { kind: Some(kind) });
    }
    c.add(
        "DedupEntry.ok",
        DedupEntry {
            request_id: vec![0xde, 0xad, 0xbe, 0xef],
            outcome: Some(dedup_entry::Outcome::Ok(Response {
                kind: Some(response::Kind::HostRegistered(host())),
            })),
        },
    );
    c.add(
        "DedupEntry.err",
        DedupEntry {
            request_id: vec![0x00, 0xff],
            outcome: Some(dedup_entry::Outcome::Err(failure())),
        },
    );
    c.add(
        "StateSnapshot",
        StateSnapshot {
            version: 1,
            applied_index: 1234,
            next_node_id: 5,
            networks: vec![network(), Network::default()],
            endpoints: vec![endpoint(), endpoint()],
            hosts: vec![host(), Host::default()],
            static_vteps: vec![static_vtep()],
            dedup: vec![
                DedupEntry {
                    request_id: vec![1],
                    outcome: Some(dedup_entry::Outcome::Ok(Response {
                        kind: Some(response::Kind::Noop(Empty {})),
                    })),
                },
                DedupEntry {
                    request_id: vec![2],
                    outcome: Some(dedup_entry::Outcome::Err(failure())),
                },
                DedupEntry::default(),
            ],
            reservations: Vec::new(),
            tls: None,
        },
    );
    c.add(
        "StateSnapshot.v2",
        StateSnapshot {
            version: 1,
            networks: vec![network_v2()],
            endpoints: vec![
                Endpoint {
                    runtime: "docker".into(),
                    ..endpoint()
                },
                Endpoint {
                    runtime: "cni".into(),
                    interface: "net1".into(),
                    ..endpoint()
                },
            ],
            hosts: vec![Host { level: 1, ..host() }],
            reservations: vec![reservation(), Reservation::default()],
            ..Default::default()
        },
    );
    c.add("Reservation", reservation());
    c.add("PortMapping", port_mapping());
    c.add("SetEndpointPorts", set_ports());
    c.add(
        "ConnectEndpoint.publish",
        ConnectEndpoint {
            publish: vec![port_mapping()],
            ..connect()
        },
    );
    c.add("DockerNetwork", docker_network());
    c.add(
        "ConnectEndpoint.v2",
        ConnectEndpoint {
            runtime: "cni".into(),
            interface: "net1".into(),
            ..connect()
        },
    );
    c.add(
        "DisconnectEndpoint.v2",
        DisconnectEndpoint {
            endpoint_id: endpoint().id,
            release_address: true,
            ..disconnect()
        },
    );

    // Commands.
    c.add("Proposal", proposal());
    c.add(
        "Proposal.empty_command",
        Proposal {
            request_id: Vec::new(),
            command: Some(Command { kind: None }),
        },
    );
    for (name, kind) in commands() {
        c.add(&format!("Command.{name}"), Command { kind: Some(kind) });
    }
    c.add("CreateNetwork", create_network());
    // Explicit presence: `Some` of a zero value is still on the wire.
    c.add(
        "CreateNetwork.present_zeros",
        CreateNetwork {
            subnet: Some(String::new()),
            gateway: Some(String::new()),
            ip_range: Some(String::new()),
            vni: Some(0),
            ..Default::default()
        },
    );
    c.add("CreateNetwork.default", CreateNetwork::default());
    c.add(
        "RemoveNetwork",
        RemoveNetwork {
            name_or_id: "frontend".into(),
        },
    );
    c.add("ConnectEndpoint", connect());
    c.add(
        "ConnectEndpoint.present_zero",
        ConnectEndpoint {
            requested_ipv4: Some(String::new()),
            ..Default::default()
        },
    );
    c.add("DisconnectEndpoint", disconnect());
    c.add("RegisterHost", register());
    c.add(
        "RemoveHost",
        RemoveHost {
            name: "host-b".into(),
        },
    );
    c.add("AddStaticVtep", add_vtep());
    c.add(
        "AddStaticVtep.present_zeros",
        AddStaticVtep {
            mac: Some(String::new()),
            ipv4: Some(String::new()),
            ..Default::default()
        },
    );
    c.add("RemoveStaticVtep", remove_vtep());
    c.add(
        "RemoveStaticVtep.none",
        RemoveStaticVtep {
            network: "frontend".into(),
            vtep: "198.51.100.7".into(),
            mac: None,
            ipv4: None,
        },
    );

    // Peer protocol.
    let hello = Hello {
        host_name: "host-a".into(),
        node_id: 1,
        nonce: vec![7; 32],
        auth: (0u8..=255).collect(),
    };
    let join = JoinRequest {
        request_id: vec![9, 8, 7],
        host: Some(register()),
        ..Default::default()
    };
    let accepted = JoinAccepted {
        node_id: 4,
        cluster_id: 0xfeed_face_cafe_beef,
        leader_id: 1,
        members: vec![host(), Host::default()],
        ..Default::default()
    };
    let (join_base, accepted_base) = (join.clone(), accepted.clone());
    let forward = ForwardRequest {
        proposal: Some(proposal()),
    };
    let forward_responses = [
        (
            "ok",
            forward_response::Outcome::Ok(Response {
                kind: Some(response::Kind::NetworkCreated(network())),
            }),
        ),
        ("err", forward_response::Outcome::Err(failure())),
        (
            "not_leader",
            forward_response::Outcome::NotLeader(not_leader()),
        ),
    ];
    let join_responses = [
        (
            "accepted",
            join_response::Result::Accepted(accepted.clone()),
        ),
        ("error", join_response::Result::Error(failure())),
        ("not_leader", join_response::Result::NotLeader(not_leader())),
    ];
    c.add("Hello", hello.clone());
    c.add("JoinRequest", join.clone());
    c.add("NotLeader", not_leader());
    for (name, result) in join_responses.iter().cloned() {
        c.add(
            &format!("JoinResponse.{name}"),
            JoinResponse {
                result: Some(result),
            },
        );
    }
    c.add("JoinAccepted", accepted.clone());
    c.add("ForwardRequest", forward.clone());
    for (name, outcome) in forward_responses.iter().cloned() {
        c.add(
            &format!("ForwardResponse.{name}"),
            ForwardResponse {
                request_id: vec![0xab; 16],
                index: 77,
                outcome: Some(outcome),
            },
        );
    }
    let bodies = vec![
        (
            "raft_message",
            peer_envelope::Body::RaftMessage(vec![0x08, 0x03, 0x10, 0x01]),
        ),
        (
            "raft_message_empty",
            peer_envelope::Body::RaftMessage(Vec::new()),
        ),
        ("hello", peer_envelope::Body::Hello(hello)),
        ("join_request", peer_envelope::Body::JoinRequest(join)),
        (
            "join_response",
            peer_envelope::Body::JoinResponse(JoinResponse {
                result: Some(join_responses[0].1.clone()),
            }),
        ),
        (
            "forward_request",
            peer_envelope::Body::ForwardRequest(forward),
        ),
        (
            "forward_response",
            peer_envelope::Body::ForwardResponse(ForwardResponse {
                request_id: vec![1],
                index: 2,
                outcome: Some(forward_responses[1].1.clone()),
            }),
        ),
        (
            "reach_request",
            peer_envelope::Body::ReachRequest(ReachRequest {}),
        ),
        (
            "reach_response",
            peer_envelope::Body::ReachResponse(ReachResponse {
                reachable: vec![1, 2, u64::MAX],
            }),
        ),
    ];
    for (name, body) in bodies {
        c.add(
            &format!("PeerEnvelope.{name}"),
            PeerEnvelope {
                cluster_id: u64::MAX,
                from: 1,
                to: 2,
                body: Some(body),
            },
        );
    }
    c.add("PeerEnvelope.default", PeerEnvelope::default());

    // Local API.
    let names = NamesRequest {
        names: strings(&["frontend", "a1b2", ""]),
    };
    let link = EndpointLink {
        endpoint_id: endpoint().id,
        interface_name: "vxcffeeddccbbaa".into(),
    };
    let capture = CaptureRequest {
        network: "frontend".into(),
        count: 100,
    };
    let requests = {
        use api_request::Kind as K;
        vec![
            ("network_create", K::NetworkCreate(create_network())),
            (
                "network_list",
                K::NetworkList(NetworkListRequest {
                    filters: strings(&["name=front", "label=env=prod"]),
                }),
            ),
            ("network_inspect", K::NetworkInspect(names.clone())),
            ("network_remove", K::NetworkRemove(names.clone())),
            ("network_prune", K::NetworkPrune(Empty {})),
            ("network_connect", K::NetworkConnect(connect())),
            ("network_disconnect", K::NetworkDisconnect(disconnect())),
            ("cluster_members", K::ClusterMembers(Empty {})),
            ("cluster_leave", K::ClusterLeave(Empty {})),
            (
                "cluster_remove",
                K::ClusterRemove(RemoveHost {
                    name: "host-c".into(),
                }),
            ),
            ("fdb_add", K::FdbAdd(add_vtep())),
            ("fdb_remove", K::FdbRemove(remove_vtep())),
            ("fdb_show", K::FdbShow(names.clone())),
            ("stats", K::Stats(Empty {})),
            ("capture", K::Capture(capture.clone())),
            (
                "docker_network_attach",
                K::DockerNetworkAttach(attach_docker()),
            ),
            (
                "docker_network_detach",
                K::DockerNetworkDetach(detach_docker()),
            ),
            ("address_reserve", K::AddressReserve(reserve())),
            ("address_release", K::AddressRelease(release())),
            ("endpoint_link", K::EndpointLink(link.clone())),
            ("endpoint_unlink", K::EndpointUnlink(link.clone())),
            ("endpoint_ports", K::EndpointPorts(set_ports())),
        ]
    };
    for (name, kind) in requests {
        c.add(
            &format!("ApiRequest.{name}"),
            ApiRequest { kind: Some(kind) },
        );
    }
    c.add("ApiRequest.none", ApiRequest::default());
    c.add("CaptureRequest", capture);
    c.add(
        "NetworkListRequest",
        NetworkListRequest {
            filters: strings(&["driver=overlay"]),
        },
    );
    c.add("NamesRequest", names.clone());
    let network_list = NetworkList {
        networks: vec![network()],
        endpoints: vec![endpoint(), Endpoint::default()],
        reservations: Vec::new(),
    };
    c.add(
        "NetworkList.v2",
        NetworkList {
            reservations: vec![reservation()],
            ..network_list.clone()
        },
    );
    let member = Member {
        host: Some(host()),
        role: "leader".into(),
        matched: 1234,
        reachable: true,
    };
    let member_list = MemberList {
        members: vec![
            member.clone(),
            Member {
                host: Some(Host::default()),
                role: "learner".into(),
                matched: 0,
                reachable: false,
            },
        ],
        leader_id: 1,
        term: 9,
        commit_index: 1234,
        applied_index: 1230,
        self_name: String::new(),
    };
    c.add(
        "MemberList.v2",
        MemberList {
            self_name: "host-a".into(),
            ..member_list.clone()
        },
    );
    let fdb_list = FdbList {
        entries: vec![static_vtep(), StaticVtep::default()],
    };
    let stats = Stats {
        counters: [
            ("rx_packets".to_string(), 0u64),
            ("tx_packets".to_string(), u64::MAX),
            ("arp_replies".to_string(), 300),
        ]
        .into_iter()
        .collect(),
    };
    let api_responses = {
        use api_response::Kind as K;
        vec![
            ("error", K::Error(failure())),
            (
                "applied",
                K::Applied(Response {
                    kind: Some(response::Kind::EndpointConnected(endpoint())),
                }),
            ),
            ("networks", K::Networks(network_list.clone())),
            ("members", K::Members(member_list.clone())),
            ("fdb", K::Fdb(fdb_list.clone())),
            ("stats", K::Stats(stats.clone())),
            ("pruned", K::Pruned(names)),
            ("ok", K::Ok(Empty {})),
        ]
    };
    for (name, kind) in api_responses {
        c.add(
            &format!("ApiResponse.{name}"),
            ApiResponse { kind: Some(kind) },
        );
    }
    c.add("NetworkList", network_list);
    c.add("Member", member);
    c.add("MemberList", member_list);
    c.add("FdbList", fdb_list);
    c.add("Stats", stats);

    // Level 2: peer TLS (cluster CA, join key, key pins).
    c.add(
        "Host.tls",
        Host {
            level: 2,
            key_sha256: (100u8..132).collect(),
            cert_ca_generation: 1,
            cert_not_after_unix_ms: 1_772_236_800_000,
            ..host()
        },
    );
    c.add(
        "RegisterHost.tls",
        RegisterHost {
            key_sha256: (100u8..132).collect(),
            level: 2,
            ..register()
        },
    );
    c.add("CaCert", ca_cert(1));
    c.add("ClusterTls", cluster_tls());
    c.add(
        "StateSnapshot.tls",
        StateSnapshot {
            version: 1,
            next_node_id: 2,
            hosts: vec![Host {
                level: 2,
                key_sha256: (100u8..132).collect(),
                ..host()
            }],
            tls: Some(cluster_tls()),
            ..Default::default()
        },
    );
    for (name, kind) in tls_commands() {
        c.add(&format!("Command.{name}"), Command { kind: Some(kind) });
    }
    c.add(
        "JoinRequest.tls",
        JoinRequest {
            csr: (0u8..200).collect(),
            proof: vec![0x5a; 32],
            ..join_base
        },
    );
    c.add(
        "JoinAccepted.tls",
        JoinAccepted {
            cert_chain: vec![(0u8..150).collect(), vec![1, 2, 3]],
            ca_cert: (50u8..250).collect(),
            server_proof: vec![0xa5; 32],
            ..accepted_base
        },
    );
    c.add(
        "ErrorKind.unauthenticated",
        ApplyFailure {
            kind: ErrorKind::Unauthenticated as i32,
            message: "wrong join token".into(),
        },
    );
    {
        use api_request::Kind as K;
        c.add(
            "ApiRequest.cluster_join_token",
            ApiRequest {
                kind: Some(K::ClusterJoinToken(JoinTokenRequest { rotate: true })),
            },
        );
        c.add(
            "ApiRequest.cluster_ca_rotate",
            ApiRequest {
                kind: Some(K::ClusterCaRotate(CaRotateRequest {
                    finish: true,
                    force: true,
                })),
            },
        );
    }
    c.add(
        "ApiResponse.join_token",
        ApiResponse {
            kind: Some(api_response::Kind::JoinToken(JoinToken {
                token: "VXN1-abc-def".into(),
                peer_addr: "192.0.2.1:7946".into(),
            })),
        },
    );
    c
}

#[test]
fn encodings_match_golden_bytes() {
    let cases = all_cases();
    let path = golden_path();
    if std::env::var_os("VXNET_PROTO_BLESS").is_some() {
        let mut out = String::from(
            "# vxnet-proto golden encodings: <case> <hex>. Written by tests/compat.rs with\n\
             # VXNET_PROTO_BLESS=1; a changed line is a wire-format break.\n",
        );
        for (name, bytes) in &cases.rows {
            out.push_str(&format!("{name} {}\n", hex(bytes)));
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, out).unwrap();
        return;
    }

    let text = std::fs::read_to_string(&path).expect("golden file");
    let mut golden: Vec<(String, Vec<u8>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, h) = line.split_once(' ').unwrap_or((line, ""));
        golden.push((name.to_string(), unhex(h.trim())));
    }
    let names: Vec<&str> = cases.rows.iter().map(|(n, _)| n.as_str()).collect();
    let golden_names: Vec<&str> = golden.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names, golden_names,
        "cases and golden file list different cases"
    );

    let mut errors = Vec::new();
    for (((name, bytes), (_, want)), check) in cases.rows.iter().zip(&golden).zip(&cases.checks) {
        if bytes != want {
            errors.push(format!(
                "{name}: encodes to\n  {}\nbut the golden bytes are\n  {}",
                hex(bytes),
                hex(want)
            ));
        }
        if let Err(e) = check(want) {
            errors.push(e);
        }
    }
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// Every encoding that a field-by-field reader would accept: golden bytes with their fields in
/// reverse order still decode to the same value (the decoder does not depend on field order),
/// checked here for one message with maps, repeated fields and a oneof.
#[test]
fn field_order_does_not_matter_on_decode() {
    let net = network();
    let bytes = net.encode_to_vec();
    // Split into top-level fields (tag + payload) using prost's own varint and key decoding.
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let start = rest;
        let mut buf = rest;
        let (_tag, wire_type) = prost::encoding::decode_key(&mut buf).unwrap();
        prost::encoding::skip_field(wire_type, _tag, &mut buf, Default::default()).unwrap();
        let used = start.len() - buf.len();
        fields.push(&start[..used]);
        rest = &start[used..];
    }
    let reversed: Vec<u8> = fields
        .iter()
        .rev()
        .flat_map(|f| f.iter().copied())
        .collect();
    assert_eq!(Network::decode(reversed.as_slice()).unwrap(), net);
}
