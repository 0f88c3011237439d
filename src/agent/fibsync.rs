//! From the replicated state to the forwarding table: what this host's FIB must hold, and the
//! smallest batch of updates that makes it so.
//!
//! The FIB is never edited incrementally from individual events: after every applied batch the
//! agent recomputes the desired table from the whole state and applies the difference in one
//! atomic batch. So an endpoint that leaves takes its MAC and ARP entries with it on every host at
//! once (no stale entry can survive, Docker overlay's moby #35401), and one MAC can never sit
//! behind two VTEPs (moby #35807): the table is a map, computed from one consistent state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use vxnet_controlplane::state::State;
use vxnet_dataplane::fdb::{FibSnapshot, FibUpdate, MacLocation, Vni, gateway_mac};
use vxnet_dataplane::wire::MacAddr;

/// The entries one network must have on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredNetwork {
    /// Largest inner IP packet (the links' MTU).
    pub mtu: u16,
    /// MAC → location.
    pub macs: BTreeMap<MacAddr, MacLocation>,
    /// IP → MAC, for ARP/ND answers.
    pub neighbors: BTreeMap<IpAddr, MacAddr>,
    /// Remote member VTEPs.
    pub members: BTreeSet<IpAddr>,
}

/// What this host's FIB must hold: every network with at least one local endpoint.
pub fn desired(state: &State, host: &str, mtu: u16) -> BTreeMap<Vni, DesiredNetwork> {
    let mut out: BTreeMap<Vni, DesiredNetwork> = BTreeMap::new();
    let local_vnis: BTreeSet<Vni> = state
        .endpoints()
        .filter(|e| e.host == host)
        .map(|e| e.vni)
        .collect();
    for vni in &local_vnis {
        out.insert(
            *vni,
            DesiredNetwork {
                mtu,
                ..DesiredNetwork::default()
            },
        );
    }
    // The anycast gateway lives on this host's bridge: ARP for it is answered here (by the
    // host's kernel) and never flooded, and a frame claiming its MAC from another host is a loop.
    for network in state.networks() {
        let Some(net) = out.get_mut(&network.vni) else {
            continue;
        };
        if let Ok(ip) = network.gateway.parse::<IpAddr>() {
            let mac = gateway_mac(network.vni);
            net.macs.insert(mac, MacLocation::Local);
            net.neighbors.insert(ip, mac);
        }
    }
    // Static VTEPs first: an endpoint of the cluster wins over a static entry for the same MAC.
    for vtep in state.static_vteps() {
        let Some(net) = out.get_mut(&vtep.vni) else {
            continue;
        };
        let Ok(addr) = vtep.vtep.parse::<IpAddr>() else {
            continue;
        };
        net.members.insert(addr);
        if let Ok(mac) = vtep.mac.parse::<MacAddr>() {
            net.macs.insert(mac, MacLocation::Remote(addr));
            if let Ok(ip) = vtep.ipv4.parse::<IpAddr>() {
                net.neighbors.insert(ip, mac);
            }
        }
    }
    for endpoint in state.endpoints() {
        let Some(net) = out.get_mut(&endpoint.vni) else {
            continue;
        };
        let Ok(mac) = endpoint.mac.parse::<MacAddr>() else {
            continue;
        };
        let location = if endpoint.host == host {
            MacLocation::Local
        } else {
            let Ok(vtep) = endpoint.vtep.parse::<IpAddr>() else {
                continue;
            };
            net.members.insert(vtep);
            MacLocation::Remote(vtep)
        };
        net.macs.insert(mac, location);
        if let Ok(ip) = endpoint.ipv4.parse::<IpAddr>() {
            net.neighbors.insert(ip, mac);
        }
    }
    out
}

/// The updates that turn `current` into `desired`.
pub fn diff(current: &FibSnapshot, desired: &BTreeMap<Vni, DesiredNetwork>) -> Vec<FibUpdate> {
    let mut updates = Vec::new();
    for table in current.networks() {
        if !desired.contains_key(&table.vni()) {
            updates.push(FibUpdate::RemoveNetwork { vni: table.vni() });
        }
    }
    for (&vni, want) in desired {
        let have = current.network(vni);
        if have.map(|t| t.mtu()) != Some(want.mtu) {
            updates.push(FibUpdate::AddNetwork { vni, mtu: want.mtu });
        }
        let have_macs: BTreeMap<MacAddr, MacLocation> =
            have.map(|t| t.macs().collect()).unwrap_or_default();
        let have_neighbors: BTreeMap<IpAddr, MacAddr> =
            have.map(|t| t.neighbors().collect()).unwrap_or_default();
        let have_members: BTreeSet<IpAddr> = have
            .map(|t| t.flood_list().iter().copied().collect())
            .unwrap_or_default();
        for mac in have_macs.keys().filter(|m| !want.macs.contains_key(m)) {
            updates.push(FibUpdate::RemoveMac { vni, mac: *mac });
        }
        for (mac, location) in &want.macs {
            if have_macs.get(mac) != Some(location) {
                updates.push(FibUpdate::SetMac {
                    vni,
                    mac: *mac,
                    location: *location,
                });
            }
        }
        for ip in have_neighbors
            .keys()
            .filter(|ip| !want.neighbors.contains_key(ip))
        {
            updates.push(FibUpdate::RemoveNeighbor { vni, ip: *ip });
        }
        for (ip, mac) in &want.neighbors {
            if have_neighbors.get(ip) != Some(mac) {
                updates.push(FibUpdate::SetNeighbor {
                    vni,
                    ip: *ip,
                    mac: *mac,
                });
            }
        }
        for vtep in have_members.difference(&want.members) {
            updates.push(FibUpdate::RemoveMember { vni, vtep: *vtep });
        }
        for vtep in want.members.difference(&have_members) {
            updates.push(FibUpdate::AddMember { vni, vtep: *vtep });
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;
    use vxnet_dataplane::fdb::Fib;
    use vxnet_proto::{
        AddStaticVtep, Command, ConnectEndpoint, CreateNetwork, DisconnectEndpoint, Proposal,
        RegisterHost, command,
    };

    struct Cluster {
        state: State,
        index: u64,
    }

    impl Cluster {
        fn new() -> Self {
            let mut c = Cluster {
                state: State::new(),
                index: 0,
            };
            for (name, ip) in [
                ("h1", "192.168.200.1"),
                ("h2", "192.168.200.2"),
                ("h3", "192.168.200.3"),
            ] {
                c.apply(command::Kind::RegisterHost(RegisterHost {
                    name: name.into(),
                    underlay: ip.into(),
                    peer_addr: format!("{ip}:7946"),
                    ..Default::default()
                }));
            }
            c.apply(command::Kind::CreateNetwork(CreateNetwork {
                name: "blue".into(),
                driver: "overlay".into(),
                subnet: Some("10.30.0.0/24".into()),
                id: "b".repeat(64),
                ..CreateNetwork::default()
            }));
            c
        }

        fn apply(&mut self, kind: command::Kind) {
            self.index += 1;
            let proposal = Proposal {
                request_id: self.index.to_be_bytes().to_vec(),
                command: Some(Command { kind: Some(kind) }),
            };
            let (result, _) = self.state.apply(self.index, &proposal);
            result.expect("applies");
        }

        fn connect(&mut self, host: &str, sandbox: &str, ip: Option<&str>) {
            self.apply(command::Kind::ConnectEndpoint(ConnectEndpoint {
                network: "blue".into(),
                host: host.into(),
                sandbox: sandbox.into(),
                name: sandbox.into(),
                requested_ipv4: ip.map(str::to_string),
                endpoint_id: format!("{sandbox:0>64}"),
                ..ConnectEndpoint::default()
            }));
        }

        fn disconnect(&mut self, host: &str, sandbox: &str) {
            self.apply(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
                network: "blue".into(),
                sandbox: sandbox.into(),
                host: host.into(),
                force: false,
                ..Default::default()
            }));
        }
    }

    fn sync(fib: &Fib, state: &State, host: &str) {
        let updates = diff(&fib.load(), &desired(state, host, 1450));
        fib.apply(&updates);
        // Idempotent: a second round changes nothing.
        assert!(diff(&fib.load(), &desired(state, host, 1450)).is_empty());
    }

    fn vtep(i: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 200, i))
    }

    #[test]
    fn a_host_serves_only_networks_with_local_endpoints() {
        let mut c = Cluster::new();
        c.connect("h2", "c2", None);
        assert!(desired(&c.state, "h1", 1450).is_empty());
        c.connect("h1", "c1", None);
        let want = desired(&c.state, "h1", 1450);
        let net = want.values().next().expect("blue is served on h1");
        assert_eq!(net.members, [vtep(2)].into());
        // The local endpoint and the anycast gateway live here; the other endpoint on h2.
        let gateway = vxnet_dataplane::fdb::gateway_mac(4096);
        assert_eq!(
            net.macs
                .values()
                .filter(|l| **l == MacLocation::Local)
                .count(),
            2
        );
        assert_eq!(net.macs.get(&gateway), Some(&MacLocation::Local));
        assert!(
            net.macs
                .values()
                .any(|l| *l == MacLocation::Remote(vtep(2)))
        );
        assert_eq!(net.neighbors.len(), 3);
        let gateway_ip: IpAddr = c
            .state
            .networks()
            .next()
            .expect("blue")
            .gateway
            .parse()
            .unwrap();
        assert_eq!(net.neighbors.get(&gateway_ip), Some(&gateway));
    }

    #[test]
    fn a_departed_endpoint_leaves_no_entry_and_its_ip_moves_with_its_mac() {
        let mut c = Cluster::new();
        let fib = Fib::new();
        c.connect("h1", "c1", Some("10.30.0.10"));
        c.connect("h2", "c2", Some("10.30.0.20"));
        sync(&fib, &c.state, "h1");
        let ip: IpAddr = "10.30.0.20".parse().unwrap();
        let mac = fib
            .load()
            .network(4096)
            .unwrap()
            .lookup_neighbor(&ip)
            .unwrap();
        assert_eq!(
            fib.load().network(4096).unwrap().lookup_mac(&mac),
            Some(MacLocation::Remote(vtep(2)))
        );

        // c2 leaves h2: its MAC, its IP and h2's membership go in the same batch.
        c.disconnect("h2", "c2");
        sync(&fib, &c.state, "h1");
        let snap = fib.load();
        let table = snap.network(4096).unwrap();
        assert_eq!(table.lookup_neighbor(&ip), None);
        assert_eq!(table.lookup_mac(&mac), None);
        assert!(
            table.flood_list().is_empty(),
            "h2 has no endpoint left in blue"
        );

        // The same IP is reused on h3: same MAC (derived from the IP), now behind h3 at once.
        c.connect("h3", "c3", Some("10.30.0.20"));
        sync(&fib, &c.state, "h1");
        let snap = fib.load();
        let table = snap.network(4096).unwrap();
        assert_eq!(table.lookup_neighbor(&ip), Some(mac));
        assert_eq!(table.lookup_mac(&mac), Some(MacLocation::Remote(vtep(3))));
        assert_eq!(table.flood_list(), &[vtep(3)]);

        // The last local endpoint leaves: the network is no longer served here.
        c.disconnect("h1", "c1");
        sync(&fib, &c.state, "h1");
        assert!(fib.load().network(4096).is_none());
    }

    #[test]
    fn static_vteps_join_flood_list_and_tables() {
        let mut c = Cluster::new();
        c.connect("h1", "c1", None);
        c.apply(command::Kind::AddStaticVtep(AddStaticVtep {
            network: "blue".into(),
            vtep: "192.168.200.9".into(),
            mac: Some("02:aa:bb:cc:dd:ee".into()),
            ipv4: Some("10.30.0.99".into()),
        }));
        let want = desired(&c.state, "h1", 1450);
        let net = want.values().next().unwrap();
        assert!(net.members.contains(&vtep(9)));
        let mac: MacAddr = "02:aa:bb:cc:dd:ee".parse().unwrap();
        assert_eq!(net.macs.get(&mac), Some(&MacLocation::Remote(vtep(9))));
        assert_eq!(
            net.neighbors.get(&"10.30.0.99".parse().unwrap()),
            Some(&mac)
        );
    }
}
