//! The state machine's tests: every command's apply, refusals that change nothing, snapshots.

use super::*;
use vxnet_proto::{Command, ConnectEndpoint, RemoveHost, RemoveNetwork};

fn hex(n: u64) -> String {
    format!("{n:064x}")
}
fn prop(rid: u8, kind: command::Kind) -> Proposal {
    Proposal {
        request_id: vec![rid],
        command: Some(Command { kind: Some(kind) }),
    }
}
fn net(name: &str, id: u64) -> CreateNetwork {
    CreateNetwork {
        name: name.into(),
        id: hex(id),
        ..Default::default()
    }
}
fn conn(net: &str, host: &str, sb: &str, id: u64) -> ConnectEndpoint {
    ConnectEndpoint {
        network: net.into(),
        host: host.into(),
        sandbox: sb.into(),
        name: sb.into(),
        endpoint_id: hex(id),
        ..Default::default()
    }
}
fn host(name: &str, ip: &str) -> RegisterHost {
    RegisterHost {
        name: name.into(),
        underlay: ip.into(),
        peer_addr: format!("{ip}:7946"),
        ..Default::default()
    }
}

struct T {
    s: State,
    i: u64,
    rid: u8,
}
impl T {
    fn new() -> T {
        let mut t = T {
            s: State::new(),
            i: 0,
            rid: 0,
        };
        t.ok(command::Kind::RegisterHost(host("h1", "192.168.0.1")));
        t
    }
    fn run(&mut self, k: command::Kind) -> (ApplyResult, Vec<Update>) {
        self.i += 1;
        self.rid = self.rid.wrapping_add(1);
        self.s.apply(self.i, &prop(self.rid, k))
    }
    fn ok(&mut self, k: command::Kind) -> response::Kind {
        let (r, _) = self.run(k);
        r.unwrap().kind.unwrap()
    }
    fn err(&mut self, k: command::Kind) -> ApplyError {
        let before = self.s.clone();
        let (r, up) = self.run(k);
        assert!(up.is_empty());
        // Only the applied index and the dedup window may move on a refusal.
        let mut after = self.s.clone();
        after.applied_index = before.applied_index;
        after.dedup = before.dedup.clone();
        after.dedup_order = before.dedup_order.clone();
        assert_eq!(after, before);
        r.unwrap_err()
    }
    fn connect(&mut self, net: &str, sb: &str, id: u64) -> Endpoint {
        match self.ok(command::Kind::ConnectEndpoint(conn(net, "h1", sb, id))) {
            response::Kind::EndpointConnected(e) => e,
            other => panic!("{other:?}"),
        }
    }
    fn disconnect(&mut self, net: &str, sb: &str) {
        self.ok(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
            network: net.into(),
            sandbox: sb.into(),
            host: "h1".into(),
            force: false,
            ..Default::default()
        }));
    }
}

fn attach(host: &str, docker: u64, name: &str, subnet: &str) -> command::Kind {
    command::Kind::AttachDockerNetwork(AttachDockerNetwork {
        host: host.into(),
        docker_network_id: hex(docker),
        network: Some(CreateNetwork {
            name: name.into(),
            subnet: Some(subnet.into()),
            id: hex(docker),
            ..Default::default()
        }),
    })
}
fn reserve(host: &str, ip: Option<&str>) -> command::Kind {
    command::Kind::ReserveAddress(ReserveAddress {
        network: "prod".into(),
        host: host.into(),
        ipv4: ip.map(String::from),
    })
}
fn reserved(t: &mut T, host: &str, ip: Option<&str>) -> String {
    match t.ok(reserve(host, ip)) {
        response::Kind::AddressReserved(r) => r.ipv4,
        other => panic!("{other:?}"),
    }
}

#[test]
fn docker_networks_share_one_network_and_go_with_the_last() {
    let mut t = T::new();
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    let first = t.ok(attach("h1", 100, "prod", "10.30.0.0/24"));
    let response::Kind::DockerNetworkAttached(n) = first else {
        panic!("{first:?}")
    };
    assert!(n.created_by_docker);
    assert_eq!(n.id, hex(100));
    // The second daemon asks for the same subnet: same network.
    t.ok(attach("h2", 200, "prod", "10.30.0.0/24"));
    // A retry is harmless; another subnet for the name is a clear error.
    t.ok(attach("h2", 200, "prod", "10.30.0.0/24"));
    let e = t.err(attach("h2", 201, "prod", "10.31.0.0/24"));
    assert!(e.message.contains("10.30.0.0/24"), "{e}");
    let prod = t.s.resolve_network("prod").unwrap().clone();
    assert_eq!(prod.docker_networks.len(), 2);
    // The CLI cannot remove it while Docker uses it.
    let e = t.err(command::Kind::RemoveNetwork(RemoveNetwork {
        name_or_id: "prod".into(),
    }));
    assert!(e.message.contains("docker network rm"), "{e}");
    let detach = |h: &str, d: u64| {
        command::Kind::DetachDockerNetwork(DetachDockerNetwork {
            host: h.into(),
            docker_network_id: hex(d),
        })
    };
    assert!(matches!(
        t.ok(detach("h1", 100)),
        response::Kind::DockerNetworkDetached(_)
    ));
    assert!(matches!(
        t.ok(detach("h2", 200)),
        response::Kind::NetworkRemoved(_)
    ));
    assert!(t.s.resolve_network("prod").is_err());
    // Unknown ones change nothing.
    assert!(matches!(t.ok(detach("h2", 200)), response::Kind::Noop(_)));
}

#[test]
fn a_cli_network_stays_when_docker_stops_using_it() {
    let mut t = T::new();
    let mut create = net("cli1", 1);
    create.subnet = Some("10.32.0.0/24".into());
    t.ok(command::Kind::CreateNetwork(create));
    t.ok(attach("h1", 100, "cli1", "10.32.0.0/24"));
    t.ok(command::Kind::DetachDockerNetwork(DetachDockerNetwork {
        host: "h1".into(),
        docker_network_id: hex(100),
    }));
    let n = t.s.resolve_network("cli1").unwrap();
    assert!(n.docker_networks.is_empty() && !n.created_by_docker);
}

#[test]
fn reservations_keep_addresses_apart_across_hosts() {
    let mut t = T::new();
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    t.ok(attach("h1", 100, "prod", "10.30.0.0/29"));
    let a = reserved(&mut t, "h1", None);
    let b = reserved(&mut t, "h2", None);
    assert_ne!(a, b);
    // Another host cannot take h1's address, by reservation or by endpoint.
    let e = t.err(reserve("h2", Some(&a)));
    assert!(e.message.contains("already in use"), "{e}");
    let mut c = conn("prod", "h2", "x", 7);
    c.requested_ipv4 = Some(a.clone());
    c.runtime = RUNTIME_DOCKER.into();
    t.err(command::Kind::ConnectEndpoint(c));
    // A CLI endpoint of the same host cannot take it either; h1's runtime endpoint can.
    let mut c = conn("prod", "h1", "y", 8);
    c.requested_ipv4 = Some(a.clone());
    t.err(command::Kind::ConnectEndpoint(c.clone()));
    c.runtime = RUNTIME_DOCKER.into();
    let response::Kind::EndpointConnected(ep) = t.ok(command::Kind::ConnectEndpoint(c)) else {
        panic!()
    };
    assert_eq!(ep.ipv4, a);
    // A release while an endpoint uses the address is a late one: nothing happens.
    assert!(matches!(
        t.ok(command::Kind::ReleaseAddress(ReleaseAddress {
            network: "prod".into(),
            host: "h1".into(),
            ipv4: a.clone(),
        })),
        response::Kind::Noop(_)
    ));
    // Removing the endpoint keeps the reservation until it is released.
    t.ok(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
        network: "prod".into(),
        host: "h1".into(),
        endpoint_id: ep.id.clone(),
        ..Default::default()
    }));
    assert_eq!(t.s.reservations().count(), 2);
    let release = |h: &str, ip: &str| {
        command::Kind::ReleaseAddress(ReleaseAddress {
            network: "prod".into(),
            host: h.into(),
            ipv4: ip.into(),
        })
    };
    // Only the holder releases it.
    assert!(matches!(t.ok(release("h2", &a)), response::Kind::Noop(_)));
    assert!(matches!(
        t.ok(release("h1", &a)),
        response::Kind::AddressReleased(_)
    ));
    // The pool is small (/29: 5 usable after the gateway): it runs out with a clear error.
    for _ in 0..4 {
        reserved(&mut t, "h1", None);
    }
    let e = t.err(reserve("h1", None));
    assert_eq!(e.kind, ErrorKind::Exhausted);
    // Removing a host frees its reservations; snapshots carry them.
    let restored = State::from_snapshot_bytes(&t.s.to_snapshot_bytes()).unwrap();
    assert_eq!(restored, t.s);
    t.ok(command::Kind::RemoveHost(RemoveHost { name: "h2".into() }));
    assert!(t.s.reservations().all(|r| r.host == "h1"));
}

#[test]
fn a_vanished_runtime_endpoint_takes_its_reservation_along() {
    let mut t = T::new();
    t.ok(attach("h1", 100, "prod", "10.30.0.0/24"));
    let a = reserved(&mut t, "h1", None);
    let mut c = conn("prod", "h1", "docker:1", 9);
    c.requested_ipv4 = Some(a);
    c.runtime = RUNTIME_DOCKER.into();
    t.ok(command::Kind::ConnectEndpoint(c));
    t.ok(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
        network: "prod".into(),
        host: "h1".into(),
        endpoint_id: hex(9),
        force: true,
        release_address: true,
        ..Default::default()
    }));
    assert_eq!(t.s.reservations().count(), 0);
}

#[test]
fn interface_names_are_checked_and_kept() {
    let mut t = T::new();
    t.ok(command::Kind::CreateNetwork(net("pods", 1)));
    for bad in ["", "a/b", "has space", "sixteen-chars-xx", "x:y"] {
        let mut c = conn("pods", "h1", "s", 2);
        c.interface = bad.into();
        if bad.is_empty() {
            continue;
        }
        t.err(command::Kind::ConnectEndpoint(c));
    }
    let mut c = conn("pods", "h1", "s", 2);
    c.interface = "net1".into();
    c.runtime = RUNTIME_CNI.into();
    let response::Kind::EndpointConnected(e) = t.ok(command::Kind::ConnectEndpoint(c)) else {
        panic!()
    };
    assert_eq!(
        (e.interface.as_str(), e.runtime.as_str()),
        ("net1", RUNTIME_CNI)
    );
}

fn mapping(proto: &str, ip: &str, host: u32, container: u32) -> PortMapping {
    PortMapping {
        protocol: proto.into(),
        host_ip: ip.into(),
        host_port: host,
        container_port: container,
    }
}

#[test]
fn a_host_port_is_allocated_once_per_host_and_protocol() {
    let mut t = T::new();
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    t.ok(command::Kind::CreateNetwork(net("web", 1)));
    let mut a = conn("web", "h1", "a", 2);
    a.publish = vec![mapping("tcp", "", 8080, 80)];
    t.ok(command::Kind::ConnectEndpoint(a));
    let mut b = conn("web", "h1", "b", 3);
    b.publish = vec![mapping("tcp", "10.0.0.1", 8080, 80)];
    let e = t.err(command::Kind::ConnectEndpoint(b.clone()));
    assert_eq!(
        e.message,
        "Bind for 10.0.0.1:8080 failed: port is already allocated"
    );
    // The other protocol, and another host, are free.
    b.publish = vec![mapping("udp", "", 8080, 80)];
    t.ok(command::Kind::ConnectEndpoint(b));
    let mut c = conn("web", "h2", "c", 4);
    c.publish = vec![mapping("tcp", "", 8080, 80)];
    t.ok(command::Kind::ConnectEndpoint(c));
    // Twice in one request, or bad values: refused, nothing changes.
    let mut d = conn("web", "h1", "d", 5);
    d.publish = vec![mapping("tcp", "", 9000, 80), mapping("tcp", "", 9000, 81)];
    assert!(
        t.err(command::Kind::ConnectEndpoint(d.clone()))
            .message
            .contains("9000")
    );
    for bad in [
        mapping("sctp", "", 9001, 80),
        mapping("tcp", "", 0, 80),
        mapping("tcp", "", 9001, 70000),
        mapping("tcp", "1.2.3", 9001, 80),
    ] {
        d.publish = vec![bad];
        assert_eq!(
            t.err(command::Kind::ConnectEndpoint(d.clone())).kind,
            ErrorKind::Invalid
        );
    }
    // Docker's ProgramExternalConnectivity: set, then revoke.
    let set = |ports: Vec<PortMapping>| {
        command::Kind::SetEndpointPorts(SetEndpointPorts {
            endpoint_id: hex(2),
            host: "h1".into(),
            ports,
        })
    };
    t.ok(set(vec![
        mapping("tcp", "", 8080, 80),
        mapping("tcp", "", 8443, 443),
    ]));
    let taken = t.err(command::Kind::SetEndpointPorts(SetEndpointPorts {
        endpoint_id: hex(3),
        host: "h1".into(),
        ports: vec![mapping("tcp", "", 8443, 443)],
    }));
    assert!(taken.message.contains("port is already allocated"));
    t.ok(set(Vec::new()));
    assert!(
        t.s.endpoints()
            .all(|e| e.id != hex(2) || e.ports.is_empty())
    );
}

#[test]
fn levels_are_recorded_and_the_lowest_counts() {
    let mut t = T::new();
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    assert_eq!(t.s.cluster_level(), 0);
    for h in ["h1", "h2"] {
        t.ok(command::Kind::ReportLevel(ReportLevel {
            host: h.into(),
            level: APPLY_LEVEL,
        }));
    }
    assert_eq!(t.s.cluster_level(), APPLY_LEVEL);
}

#[test]
fn defaults_allocate_vni_subnet_gateway() {
    let mut t = T::new();
    let response::Kind::NetworkCreated(a) = t.ok(command::Kind::CreateNetwork(net("a", 1))) else {
        panic!()
    };
    assert_eq!((a.vni, a.subnet.as_str()), (4096, "10.20.0.0/24"));
    assert_eq!(a.gateway, "10.20.0.1");
    let response::Kind::NetworkCreated(b) = t.ok(command::Kind::CreateNetwork(net("b", 2))) else {
        panic!()
    };
    assert_eq!((b.vni, b.subnet.as_str()), (4097, "10.20.1.0/24"));
    // Removing a frees its VNI and /24 for the next one.
    t.ok(command::Kind::RemoveNetwork(RemoveNetwork {
        name_or_id: "a".into(),
    }));
    let response::Kind::NetworkCreated(c) = t.ok(command::Kind::CreateNetwork(net("c", 3))) else {
        panic!()
    };
    assert_eq!((c.vni, c.subnet.as_str()), (4096, "10.20.0.0/24"));
}

#[test]
fn overlap_and_bad_requests_are_refused() {
    let mut t = T::new();
    let mut c = net("a", 1);
    c.subnet = Some("10.1.0.0/16".into());
    c.vni = Some(42);
    t.ok(command::Kind::CreateNetwork(c));
    let mut d = net("b", 2);
    d.subnet = Some("10.1.5.0/24".into());
    let e = t.err(command::Kind::CreateNetwork(d.clone()));
    assert!(e.message.contains("Pool overlaps"), "{e}");
    d.subnet = Some("10.2.0.0/24".into());
    d.vni = Some(42);
    assert_eq!(
        t.err(command::Kind::CreateNetwork(d.clone())).kind,
        ErrorKind::Conflict
    );
    d.vni = Some(0x100_0000);
    assert_eq!(
        t.err(command::Kind::CreateNetwork(d.clone())).kind,
        ErrorKind::Invalid
    );
    d.vni = None;
    d.gateway = Some("10.3.0.1".into());
    assert!(
        t.err(command::Kind::CreateNetwork(d.clone()))
            .message
            .contains("gateway")
    );
    d.gateway = None;
    d.ip_range = Some("10.2.1.0/28".into());
    assert!(
        t.err(command::Kind::CreateNetwork(d.clone()))
            .message
            .contains("ip-range")
    );
    d.ip_range = None;
    d.aux_addresses.insert("x".into(), "10.9.9.9".into());
    assert!(
        t.err(command::Kind::CreateNetwork(d.clone()))
            .message
            .contains("auxiliary")
    );
    let e = t.err(command::Kind::CreateNetwork(net("a", 3)));
    assert_eq!(e.message, "network with name a already exists");
}

#[test]
fn next_fit_reuses_freed_addresses_last() {
    let mut t = T::new();
    let mut c = net("n", 1);
    c.subnet = Some("10.5.0.0/29".into()); // hosts .1-.6, gateway .1
    c.aux_addresses.insert("r".into(), "10.5.0.3".into());
    t.ok(command::Kind::CreateNetwork(c));
    let a = t.connect("n", "a", 1);
    let b = t.connect("n", "b", 2);
    assert_eq!((a.ipv4.as_str(), b.ipv4.as_str()), ("10.5.0.2", "10.5.0.4"));
    assert_eq!(a.mac, "02:42:0a:05:00:02");
    t.disconnect("n", "a");
    // .2 is free again but the cursor moves on first.
    assert_eq!(t.connect("n", "c", 3).ipv4, "10.5.0.5");
    assert_eq!(t.connect("n", "d", 4).ipv4, "10.5.0.6");
    assert_eq!(t.connect("n", "e", 5).ipv4, "10.5.0.2");
    let e = t.err(command::Kind::ConnectEndpoint(conn("n", "h1", "f", 6)));
    assert_eq!(e.kind, ErrorKind::Exhausted);
    assert!(e.message.starts_with("no available IPv4 addresses"));
}

#[test]
fn requested_addresses_are_checked() {
    let mut t = T::new();
    let mut c = net("n", 1);
    c.subnet = Some("10.5.0.0/24".into());
    c.ip_range = Some("10.5.0.128/25".into());
    t.ok(command::Kind::CreateNetwork(c));
    let mut r = conn("n", "h1", "a", 1);
    for (ip, frag) in [
        ("10.5.0.7", "outside"),
        ("10.5.0.255", "outside"),
        ("10.6.0.200", "outside"),
        ("bogus", "invalid"),
    ] {
        r.requested_ipv4 = Some(ip.into());
        let e = t.err(command::Kind::ConnectEndpoint(r.clone()));
        assert!(e.message.contains(frag), "{ip}: {e}");
    }
    r.requested_ipv4 = Some("10.5.0.200".into());
    assert_eq!(
        t.ok(command::Kind::ConnectEndpoint(r.clone())),
        response::Kind::EndpointConnected(t.s.endpoints().next().unwrap().clone())
    );
    let mut r2 = conn("n", "h1", "b", 2);
    r2.requested_ipv4 = Some("10.5.0.200".into());
    let e = t.err(command::Kind::ConnectEndpoint(r2));
    assert!(e.message.contains("already in use"), "{e}");
    // Automatic allocation starts at the pool, not the subnet.
    assert_eq!(t.connect("n", "c", 3).ipv4, "10.5.0.128");
}

#[test]
fn docker_style_conflicts() {
    let mut t = T::new();
    t.ok(command::Kind::CreateNetwork(net("n", 1)));
    t.connect("n", "a", 1);
    let e = t.err(command::Kind::ConnectEndpoint(conn("n", "h1", "a", 2)));
    assert_eq!(
        e.message,
        "endpoint with name a already exists in network n"
    );
    let e = t.err(command::Kind::RemoveNetwork(RemoveNetwork {
        name_or_id: "n".into(),
    }));
    assert!(
        e.message
            .starts_with("error while removing network: network n")
    );
    assert!(e.message.ends_with("has active endpoints"));
    let e = t.err(command::Kind::ConnectEndpoint(conn("n", "ghost", "z", 3)));
    assert_eq!(e.kind, ErrorKind::NotFound);
    let e = t.err(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
        network: "n".into(),
        sandbox: "a".into(),
        host: "h2".into(),
        force: false,
        ..Default::default()
    }));
    assert_eq!(e.kind, ErrorKind::Conflict);
}

#[test]
fn lookup_by_name_id_and_prefix() {
    let mut t = T::new();
    t.ok(command::Kind::CreateNetwork(CreateNetwork {
        id: format!("ab{}", "0".repeat(62)),
        ..net("x", 0)
    }));
    t.ok(command::Kind::CreateNetwork(CreateNetwork {
        id: format!("ac{}", "0".repeat(62)),
        ..net("ab", 0)
    }));
    // Exact name wins over an id prefix.
    assert_eq!(t.s.resolve_network("ab").unwrap().name, "ab");
    assert_eq!(t.s.resolve_network("ac").unwrap().name, "ab");
    assert_eq!(t.s.resolve_network("ab0").unwrap().name, "x");
    let e = t.s.resolve_network("a").unwrap_err();
    assert!(e.message.contains("ambiguous (2 matches"), "{e}");
    assert_eq!(
        t.s.resolve_network("zz").unwrap_err().message,
        "network zz not found"
    );
}

#[test]
fn dedup_returns_same_response_without_changes() {
    let mut s = State::new();
    let p = prop(9, command::Kind::RegisterHost(host("h", "10.0.0.1")));
    let (r1, u1) = s.apply(1, &p);
    let (r2, u2) = s.apply(2, &p);
    assert_eq!(r1, r2);
    assert_eq!(u1.len(), 1);
    assert!(u2.is_empty());
    assert_eq!(s.next_node_id(), 2);
    // Failures are remembered too.
    let bad = prop(
        10,
        command::Kind::RemoveHost(RemoveHost { name: "x".into() }),
    );
    let (e1, _) = s.apply(3, &bad);
    let _ = s.apply(
        4,
        &prop(11, command::Kind::RegisterHost(host("x", "10.0.0.2"))),
    );
    let (e2, _) = s.apply(5, &bad);
    assert!(e1.is_err());
    assert_eq!(e1, e2);
}

#[test]
fn dedup_window_is_bounded() {
    let mut s = State::new();
    for i in 0..(DEDUP_WINDOW as u64 + 10) {
        let p = Proposal {
            request_id: i.to_be_bytes().to_vec(),
            command: Some(Command {
                kind: Some(command::Kind::Noop(Empty {})),
            }),
        };
        let _ = s.apply(i + 1, &p);
    }
    assert_eq!(s.dedup.len(), DEDUP_WINDOW);
    assert!(s.dedup_lookup(&0u64.to_be_bytes()).is_none());
    assert!(s.dedup_lookup(&10u64.to_be_bytes()).is_some());
}

#[test]
fn remove_host_frees_endpoints_and_ids_are_not_reused() {
    let mut t = T::new();
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    t.ok(command::Kind::CreateNetwork(net("n", 1)));
    t.connect("n", "a", 1);
    t.ok(command::Kind::ConnectEndpoint(conn("n", "h2", "b", 2)));
    let (r, up) = t.run(command::Kind::RemoveHost(RemoveHost { name: "h1".into() }));
    r.unwrap();
    assert!(matches!(&up[0], Update::EndpointRemoved(e) if e.sandbox == "a"));
    assert!(matches!(&up[1], Update::HostRemoved(h) if h.node_id == 1));
    let response::Kind::HostRegistered(h) =
        t.ok(command::Kind::RegisterHost(host("h1", "192.168.0.1")))
    else {
        panic!()
    };
    assert_eq!(h.node_id, 3);
    assert_eq!(t.s.endpoints().count(), 1);
}

#[test]
fn static_vteps_reserve_their_address() {
    let mut t = T::new();
    let mut c = net("n", 1);
    c.subnet = Some("10.5.0.0/24".into());
    t.ok(command::Kind::CreateNetwork(c));
    t.ok(command::Kind::AddStaticVtep(AddStaticVtep {
        network: "n".into(),
        vtep: "172.16.0.9".into(),
        mac: Some("2:42:A:5:0:2".into()),
        ipv4: Some("10.5.0.2".into()),
    }));
    assert_eq!(t.connect("n", "a", 1).ipv4, "10.5.0.3");
    let snap = t.s.to_snapshot();
    assert_eq!(snap.static_vteps[0].mac, "02:42:0a:05:00:02");
    t.ok(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
        network: "n".into(),
        sandbox: "a".into(),
        host: String::new(),
        force: false,
        ..Default::default()
    }));
    let (r, up) = t.run(command::Kind::RemoveNetwork(RemoveNetwork {
        name_or_id: "n".into(),
    }));
    r.unwrap();
    assert!(matches!(up[0], Update::StaticVtepRemoved(_)));
    assert!(matches!(up[1], Update::NetworkRemoved(_)));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn arb_cmd() -> impl Strategy<Value = command::Kind> {
        prop_oneof![
            (0u64..6, proptest::option::of(0u8..4)).prop_map(|(i, sub)| {
                command::Kind::CreateNetwork(CreateNetwork {
                    name: format!("n{i}"),
                    id: hex(i),
                    subnet: sub.map(|s| format!("10.{s}.0.0/28")),
                    ..Default::default()
                })
            }),
            (0u64..6).prop_map(|i| command::Kind::RemoveNetwork(RemoveNetwork {
                name_or_id: format!("n{i}")
            })),
            (0u64..6, 0u64..3, 0u64..20).prop_map(|(n, h, s)| {
                command::Kind::ConnectEndpoint(conn(
                    &format!("n{n}"),
                    &format!("h{h}"),
                    &format!("s{s}"),
                    100 + s,
                ))
            }),
            (0u64..6, 0u64..20).prop_map(|(n, s)| {
                command::Kind::DisconnectEndpoint(DisconnectEndpoint {
                    network: format!("n{n}"),
                    sandbox: format!("s{s}"),
                    host: String::new(),
                    force: true,
                    ..Default::default()
                })
            }),
            (0u64..3).prop_map(|h| command::Kind::RegisterHost(host(
                &format!("h{h}"),
                &format!("192.168.1.{h}")
            ))),
            (0u64..3).prop_map(|h| command::Kind::RemoveHost(RemoveHost {
                name: format!("h{h}")
            })),
            (0u64..6, 0u8..3).prop_map(|(n, v)| command::Kind::AddStaticVtep(AddStaticVtep {
                network: format!("n{n}"),
                vtep: format!("172.16.0.{v}"),
                mac: None,
                ipv4: None,
            })),
            // Peer TLS (level 2): one arm for the six commands.
            (0u8..6, 0u64..3, 1u32..4, any::<bool>()).prop_map(|(which, h, generation, force)| {
                let ca = Some(vxnet_proto::CaCert {
                    generation,
                    cert: vec![0x30, generation as u8],
                });
                let host = format!("h{h}");
                match which {
                    0 => command::Kind::InitTls(vxnet_proto::InitTls {
                        ca,
                        ca_key: vec![7; 40],
                        join_key: vec![generation as u8; 16],
                        unix_ms: 1,
                    }),
                    1 => command::Kind::SetHostKey(vxnet_proto::SetHostKey {
                        host,
                        node_id: h + 1,
                        key_sha256: vec![generation as u8; 32],
                    }),
                    2 => command::Kind::SetJoinKey(vxnet_proto::SetJoinKey {
                        join_key: vec![generation as u8; 16],
                        unix_ms: 2,
                    }),
                    3 => command::Kind::RotateCa(vxnet_proto::RotateCa {
                        ca,
                        ca_key: vec![8; 40],
                        cross_cert: vec![0x30, 0xCC],
                    }),
                    4 => command::Kind::FinishCaRotation(vxnet_proto::FinishCaRotation {
                        generation,
                        force,
                    }),
                    _ => command::Kind::ReportTls(vxnet_proto::ReportTls {
                        host,
                        ca_generation: generation,
                        not_after_unix_ms: 9,
                    }),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn snapshot_round_trips(cmds in proptest::collection::vec((arb_cmd(), 0u8..40), 0..80)) {
            let mut s = State::new();
            for (i, (k, rid)) in cmds.into_iter().enumerate() {
                let _ = s.apply(i as u64 + 1, &prop(rid, k));
                let snap = s.to_snapshot();
                let back = State::from_snapshot(&snap).unwrap();
                prop_assert_eq!(&back, &s);
                prop_assert_eq!(back.to_snapshot_bytes(), s.to_snapshot_bytes());
            }
            // Invariant: no address twice per network, no VNI twice.
            let mut vnis = BTreeSet::new();
            for n in s.networks() {
                prop_assert!(vnis.insert(n.vni));
                let eps = s.endpoints_of(&n.id).unwrap();
                let ips: BTreeSet<_> = eps.iter().map(|e| e.ipv4.clone()).collect();
                prop_assert_eq!(ips.len(), eps.len());
            }
        }
    }
}

mod tls;

#[test]
fn a_reader_copy_is_the_state_without_the_dedup_window() {
    let mut s = State::new();
    let _ = s.apply(
        1,
        &prop(1, command::Kind::RegisterHost(host("h1", "10.0.0.1"))),
    );
    let _ = s.apply(2, &prop(2, command::Kind::CreateNetwork(net("a", 1))));
    let copy = s.reader_copy();
    assert!(s.dedup_lookup(&[2]).is_some());
    assert!(copy.dedup_lookup(&[2]).is_none());
    assert_eq!(
        copy,
        State {
            dedup: BTreeMap::new(),
            dedup_order: VecDeque::new(),
            ..s.clone()
        }
    );
}
