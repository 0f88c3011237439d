//! The names the resolver answers, indexed from the replicated state, and the answer to one
//! question. Pure: no I/O, no clock; the server (`server.rs`) turns answers into DNS messages.
//!
//! Who asks decides what is visible: a query comes from a container whose address is an
//! endpoint on this host, and it sees every network its sandbox is on here (as in Docker, a
//! container on two networks resolves the names of both). Names of other networks are
//! NXDOMAIN, never forwarded, so nothing about them leaks through an upstream either.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use vxnet_controlplane::state::State;
use vxnet_proto::Endpoint;

use super::resolvconf::netns_name;
use crate::agent::gateway::parse_subnet;

/// The suffix of reverse (PTR) names of IPv4 addresses.
const REVERSE_V4: &str = ".in-addr.arpa";

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// IPv4 addresses (also what `ANY` gets).
    A,
    /// The name of an address (`d.c.b.a.in-addr.arpa`).
    Ptr,
    /// Any other type: a known name has no data of it.
    Other,
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name's addresses (never empty), in rotation order.
    Addresses(Vec<Ipv4Addr>),
    /// Fully qualified names of the address (`name.network.`), never empty.
    Names(Vec<String>),
    /// The name exists, with no record of the asked type.
    NoData,
    /// No such name for this querier.
    NxDomain,
    /// Not a vxnet name: ask the upstream resolvers.
    Forward,
    /// Not a vxnet name, and the querier's networks have no way out.
    NoForwarding,
}

/// One network's names.
#[derive(Debug, Default)]
struct NetNames {
    /// Its name, lowercased (the `NAME.NETWORK` suffix).
    name: String,
    /// `--internal`: no forwarding.
    internal: bool,
    /// Lowercased name or alias (and `NAME.NETWORK`) → addresses, oldest endpoint first.
    addresses: HashMap<String, Vec<Ipv4Addr>>,
    /// Address → `name.network.` of its endpoint.
    reverse: HashMap<Ipv4Addr, String>,
}

/// Every network's names and who on this host may see which.
#[derive(Debug, Default)]
pub struct Names {
    networks: Vec<NetNames>,
    /// Address of an endpoint on this host → the networks of its sandbox (indices).
    local: HashMap<Ipv4Addr, Box<[usize]>>,
    /// Gateway address of a network served here → that network (queries from the host itself).
    gateways: HashMap<Ipv4Addr, Box<[usize]>>,
    /// Every name of every network: these are answered here, never forwarded.
    everywhere: HashSet<String>,
    /// Every network's subnet: reverse names inside them are never forwarded.
    subnets: Vec<(u32, u32)>,
}

/// Whether `name` may be a DNS name: dot-separated labels of 1 to 63 letters, digits, `-` or
/// `_` (Docker's container names allow `_`), not starting with `-`, 253 bytes at most, and a
/// last label that is not all digits (`1234` or `10.0.0.1` are addresses, not names).
pub fn is_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_ok
        && name
            .rsplit('.')
            .next()
            .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

/// The DNS names of an endpoint: its name when it is one (a PID or a path is not), then its
/// aliases; lowercased, without duplicates.
pub fn endpoint_names(endpoint: &Endpoint) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in std::iter::once(&endpoint.name).chain(&endpoint.aliases) {
        let name = name.to_ascii_lowercase();
        if is_dns_name(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

impl Names {
    /// Indexes `state` for host `host`.
    pub fn build(state: &State, host: &str) -> Names {
        let mut out = Names::default();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for network in state.networks() {
            index.insert(network.id.as_str(), out.networks.len());
            out.networks.push(NetNames {
                name: network.name.to_ascii_lowercase(),
                internal: network.internal,
                ..NetNames::default()
            });
            if let Some((addr, len)) = parse_subnet(&network.subnet) {
                out.subnets.push((u32::from(addr) & mask(len), mask(len)));
            }
        }
        let mut endpoints: Vec<&Endpoint> = state.endpoints().collect();
        endpoints.sort_by(|a, b| (a.created_index, &a.id).cmp(&(b.created_index, &b.id)));
        let mut sandboxes: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut local: Vec<(Ipv4Addr, &str)> = Vec::new();
        for endpoint in &endpoints {
            let (Some(&n), Ok(ip)) = (
                index.get(endpoint.network_id.as_str()),
                endpoint.ipv4.parse::<Ipv4Addr>(),
            ) else {
                continue;
            };
            if endpoint.host == host {
                // `c1` and `/run/netns/c1` are one sandbox.
                let sandbox = netns_name(&endpoint.sandbox).unwrap_or(&endpoint.sandbox);
                sandboxes.entry(sandbox).or_default().push(n);
                local.push((ip, sandbox));
            }
            let names = endpoint_names(endpoint);
            let net = &mut out.networks[n];
            if let Some(first) = names.first() {
                net.reverse.insert(ip, format!("{first}.{}.", net.name));
            }
            for name in names {
                let qualified = format!("{name}.{}", net.name);
                for key in [name, qualified] {
                    let addresses = net.addresses.entry(key.clone()).or_default();
                    if !addresses.contains(&ip) {
                        addresses.push(ip);
                    }
                    out.everywhere.insert(key);
                }
            }
        }
        for (ip, sandbox) in local {
            let mut networks = sandboxes.get(sandbox).cloned().unwrap_or_default();
            networks.dedup();
            out.local.insert(ip, networks.into_boxed_slice());
        }
        for network in state.networks() {
            if let (Some(&n), Ok(gateway)) = (
                index.get(network.id.as_str()),
                network.gateway.parse::<Ipv4Addr>(),
            ) && sandboxes.values().any(|nets| nets.contains(&n))
            {
                out.gateways.insert(gateway, Box::new([n]));
            }
        }
        out
    }

    /// The networks a query from `src` sees, or `None`: not a container of this host (nor the
    /// host itself at a gateway address), so it is refused.
    pub fn visible(&self, src: IpAddr) -> Option<&[usize]> {
        let IpAddr::V4(src) = src else {
            return None;
        };
        self.local
            .get(&src)
            .or_else(|| self.gateways.get(&src))
            .map(|n| &n[..])
    }

    /// Answers `name` (lowercase, no trailing dot) asked by a querier that sees `visible`.
    /// `turn` rotates the order of several addresses (a per-query counter).
    pub fn lookup(&self, visible: &[usize], name: &str, ask: Ask, turn: usize) -> Lookup {
        let name = name.strip_suffix('.').unwrap_or(name);
        if ask == Ask::Ptr || name.ends_with(REVERSE_V4) {
            return self.reverse(visible, name, ask);
        }
        let mut addresses: Vec<Ipv4Addr> = Vec::new();
        let mut known = false;
        for &n in visible {
            if let Some(found) = self.networks.get(n).and_then(|net| net.addresses.get(name)) {
                known = true;
                for ip in found {
                    if !addresses.contains(ip) {
                        addresses.push(*ip);
                    }
                }
            }
        }
        if known {
            if ask != Ask::A {
                return Lookup::NoData;
            }
            let len = addresses.len();
            addresses.rotate_left(turn % len);
            return Lookup::Addresses(addresses);
        }
        if self.everywhere.contains(name) || !name.contains('.') {
            return Lookup::NxDomain;
        }
        self.outside(visible)
    }

    fn reverse(&self, visible: &[usize], name: &str, ask: Ask) -> Lookup {
        let Some(ip) = reverse_v4(name) else {
            return self.outside(visible);
        };
        let names: Vec<String> = visible
            .iter()
            .filter_map(|&n| self.networks.get(n)?.reverse.get(&ip).cloned())
            .collect();
        if !names.is_empty() {
            return if ask == Ask::Ptr {
                Lookup::Names(names)
            } else {
                Lookup::NoData
            };
        }
        let ip = u32::from(ip);
        if self.subnets.iter().any(|&(net, m)| ip & m == net) {
            return Lookup::NxDomain;
        }
        self.outside(visible)
    }

    /// A name vxnet does not know: forwarded, unless the querier has no way out.
    fn outside(&self, visible: &[usize]) -> Lookup {
        if visible
            .iter()
            .any(|&n| self.networks.get(n).is_some_and(|net| !net.internal))
        {
            Lookup::Forward
        } else {
            Lookup::NoForwarding
        }
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// `d.c.b.a.in-addr.arpa` → `a.b.c.d`.
fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let labels = name.strip_suffix(REVERSE_V4)?;
    let mut octets = [0u8; 4];
    let mut parts = labels.split('.');
    for octet in octets.iter_mut().rev() {
        *octet = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vxnet_controlplane::state::State;
    use vxnet_proto::{Network, StateSnapshot};

    fn net(id: &str, vni: u32, name: &str, subnet: &str, internal: bool) -> Network {
        Network {
            vni,
            id: id.repeat(64 / id.len()),
            name: name.into(),
            subnet: subnet.into(),
            gateway: subnet.replace(".0/24", ".1"),
            internal,
            ..Network::default()
        }
    }

    fn ep(
        id: u8,
        net: &Network,
        host: &str,
        sandbox: &str,
        ip: &str,
        aliases: &[&str],
    ) -> Endpoint {
        Endpoint {
            id: format!("{id:064x}"),
            network_id: net.id.clone(),
            name: sandbox.into(),
            host: host.into(),
            sandbox: sandbox.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ipv4: ip.into(),
            created_index: u64::from(id),
            ..Endpoint::default()
        }
    }

    /// h1: c1 on A (alias db), c5 on A and B (one sandbox); h2: c2 on A, c4 on A (alias db);
    /// h3: c3 on B; i1 on the internal network I (h1).
    fn state() -> State {
        let a = net("a", 101, "Alpha", "10.1.0.0/24", false);
        let b = net("b", 102, "beta", "10.2.0.0/24", false);
        let i = net("c", 103, "inside", "10.3.0.0/24", true);
        let endpoints = vec![
            ep(1, &a, "h1", "c1", "10.1.0.2", &["db"]),
            ep(2, &a, "h2", "c2", "10.1.0.3", &[]),
            ep(3, &b, "h3", "c3", "10.2.0.2", &[]),
            ep(4, &a, "h2", "c4", "10.1.0.4", &["DB"]),
            ep(5, &a, "h1", "c5", "10.1.0.5", &[]),
            ep(6, &b, "h1", "/run/netns/c5", "10.2.0.5", &[]),
            ep(7, &i, "h1", "i1", "10.3.0.2", &[]),
            ep(8, &a, "h1", "/proc/42/ns/net", "10.1.0.8", &["worker"]),
        ];
        let snapshot = StateSnapshot {
            networks: vec![a, b, i],
            endpoints,
            ..State::new().to_snapshot()
        };
        State::from_snapshot(&snapshot).expect("a valid snapshot")
    }

    fn ask(names: &Names, src: &str, name: &str, ask: Ask) -> Lookup {
        let visible = names
            .visible(src.parse().unwrap())
            .expect("a known querier");
        names.lookup(visible, name, ask, 0)
    }

    #[test]
    fn names_aliases_and_qualified_names_resolve_in_the_queriers_network() {
        let names = Names::build(&state(), "h2");
        let c1 = Lookup::Addresses(vec!["10.1.0.2".parse().unwrap()]);
        assert_eq!(ask(&names, "10.1.0.3", "c1", Ask::A), c1);
        assert_eq!(ask(&names, "10.1.0.3", "c1.alpha.", Ask::A), c1);
        assert_eq!(ask(&names, "10.1.0.3", "c1", Ask::Other), Lookup::NoData);
        let Lookup::Addresses(db) = ask(&names, "10.1.0.3", "db", Ask::A) else {
            panic!("db resolves");
        };
        assert_eq!(db.len(), 2, "both endpoints with the alias: {db:?}");
        let visible = names.visible("10.1.0.3".parse().unwrap()).unwrap();
        assert_ne!(
            names.lookup(visible, "db", Ask::A, 0),
            names.lookup(visible, "db", Ask::A, 1),
            "rotated"
        );
    }

    #[test]
    fn other_networks_names_are_nxdomain_and_never_forwarded() {
        let names = Names::build(&state(), "h2");
        assert_eq!(ask(&names, "10.1.0.3", "c3", Ask::A), Lookup::NxDomain);
        assert_eq!(ask(&names, "10.1.0.3", "c3.beta", Ask::A), Lookup::NxDomain);
        assert_eq!(ask(&names, "10.1.0.3", "nosuch", Ask::A), Lookup::NxDomain);
        assert_eq!(
            ask(&names, "10.1.0.3", "example.com", Ask::A),
            Lookup::Forward
        );
        let h3 = Names::build(&state(), "h3");
        assert_eq!(ask(&h3, "10.2.0.2", "c1", Ask::A), Lookup::NxDomain);
    }

    #[test]
    fn a_sandbox_on_two_networks_sees_both() {
        let names = Names::build(&state(), "h1");
        for src in ["10.1.0.5", "10.2.0.5"] {
            assert!(matches!(
                ask(&names, src, "c3", Ask::A),
                Lookup::Addresses(_)
            ));
            assert!(matches!(
                ask(&names, src, "c2", Ask::A),
                Lookup::Addresses(_)
            ));
        }
        // c1 is on A only.
        assert_eq!(ask(&names, "10.1.0.2", "c3", Ask::A), Lookup::NxDomain);
    }

    #[test]
    fn only_containers_of_this_host_and_the_host_itself_may_ask() {
        let names = Names::build(&state(), "h2");
        assert!(
            names.visible("10.1.0.2".parse().unwrap()).is_none(),
            "c1 is on h1"
        );
        assert!(names.visible("10.9.9.9".parse().unwrap()).is_none());
        assert!(
            names.visible("10.1.0.1".parse().unwrap()).is_some(),
            "A's gateway"
        );
        assert!(
            names.visible("10.2.0.1".parse().unwrap()).is_none(),
            "B is not served on h2"
        );
    }

    #[test]
    fn a_pid_or_path_sandbox_has_only_its_aliases() {
        let names = Names::build(&state(), "h2");
        assert_eq!(
            ask(&names, "10.1.0.3", "worker", Ask::A),
            Lookup::Addresses(vec!["10.1.0.8".parse().unwrap()])
        );
        assert_eq!(
            ask(&names, "10.1.0.3", "8.0.1.10.in-addr.arpa", Ask::Ptr),
            Lookup::Names(vec!["worker.alpha.".into()])
        );
    }

    #[test]
    fn reverse_names() {
        let names = Names::build(&state(), "h2");
        assert_eq!(
            ask(&names, "10.1.0.3", "2.0.1.10.in-addr.arpa.", Ask::Ptr),
            Lookup::Names(vec!["c1.alpha.".into()])
        );
        assert_eq!(
            ask(&names, "10.1.0.3", "2.0.2.10.in-addr.arpa", Ask::Ptr),
            Lookup::NxDomain,
            "B's address, not visible"
        );
        assert_eq!(
            ask(&names, "10.1.0.3", "8.8.8.8.in-addr.arpa", Ask::Ptr),
            Lookup::Forward
        );
    }

    #[test]
    fn internal_networks_forward_nothing() {
        let names = Names::build(&state(), "h1");
        assert_eq!(
            ask(&names, "10.3.0.2", "example.com", Ask::A),
            Lookup::NoForwarding
        );
        assert!(matches!(
            ask(&names, "10.3.0.2", "i1", Ask::A),
            Lookup::Addresses(_)
        ));
    }

    #[test]
    fn dns_names() {
        for good in ["c1", "web-0", "my_app", "a.b", "x1.prod"] {
            assert!(is_dns_name(good), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "1234",
            "10.0.0.1",
            "/proc/1/ns/net",
            "-x",
            "a..b",
            "a b",
            &long,
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
