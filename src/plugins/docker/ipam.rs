//! The IPAM driver's calls. A pool is a subnet (its id `vxnet:<cidr>`); the gateway is the
//! network's; every other address is a reservation in the replicated state, so that two daemons
//! never hand out one address. Pools and gateways asked for before `CreateNetwork` exist only in
//! Docker's request until the network is created (the first daemon) or are the existing network's
//! (the next daemons, which must name the same subnet).

use std::net::Ipv4Addr;

use vxnet_controlplane::state::{Cidr, DEFAULT_POOL, DEFAULT_SUBNET_PREFIX};
use vxnet_proto::{Network, NetworkList, ReleaseAddress, ReserveAddress, api_request::Kind as Req};

use super::network::strip_prefix;
use super::protocol::{self, AddressResponse, PoolResponse};
use super::{Answer, Api, PendingPool, Plugin, PluginError, empty, json};

/// The address space of local-scope networks.
pub const LOCAL_SPACE: &str = "vxnet-local";
/// The address space of global-scope networks (unused: Docker needs swarm for those).
pub const GLOBAL_SPACE: &str = "vxnet-global";
const POOL_PREFIX: &str = "vxnet:";
const GATEWAY_TYPE: &str = "com.docker.network.gateway";

/// Whether an address space is this driver's (Docker names its default IPAM's `LocalDefault`).
pub fn is_ours(space: &str) -> bool {
    space == LOCAL_SPACE || space == GLOBAL_SPACE
}

/// The pool id of a subnet.
pub fn pool_id(subnet: &Cidr) -> String {
    format!("{POOL_PREFIX}{}", cidr_text(subnet))
}

fn cidr_text(c: &Cidr) -> String {
    format!("{}/{}", Ipv4Addr::from(c.addr), c.prefix)
}

/// The subnet of a pool id.
pub fn pool_subnet(id: &str) -> Result<Cidr, PluginError> {
    id.strip_prefix(POOL_PREFIX)
        .and_then(Cidr::parse)
        .ok_or_else(|| PluginError::failed(format!("unknown address pool {id:?}")))
}

fn network_with_subnet<'a>(list: &'a NetworkList, subnet: &Cidr) -> Option<&'a Network> {
    list.networks
        .iter()
        .find(|n| Cidr::parse(&n.subnet) == Some(*subnet))
}

fn parse_address(text: &str) -> Result<Ipv4Addr, PluginError> {
    strip_prefix(text)
        .parse()
        .map_err(|_| PluginError::bad_request(format!("{text:?} is not an IPv4 address")))
}

impl<A: Api> Plugin<A> {
    pub(super) async fn request_pool(&self, req: protocol::RequestPool) -> Answer {
        if req.v6 {
            return Err(PluginError::failed(
                "vxnet networks are IPv4-only for now: create the network without --ipv6",
            ));
        }
        if !is_ours(&req.address_space) {
            return Err(PluginError::failed(format!(
                "address space {:?} is not vxnet's",
                req.address_space
            )));
        }
        let list = self.state().await?;
        let subnet = if req.pool.is_empty() {
            self.free_subnet(&list)?
        } else {
            let subnet = Cidr::parse(&req.pool)
                .ok_or_else(|| PluginError::failed(format!("invalid subnet {:?}", req.pool)))?;
            if subnet.prefix > 30 {
                return Err(PluginError::failed(format!(
                    "subnet {} is too small (at most /30)",
                    cidr_text(&subnet)
                )));
            }
            // The subnet of an existing network is that network's pool (the next daemons'
            // case); one that overlaps another network is refused now, with the reason.
            if network_with_subnet(&list, &subnet).is_none()
                && let Some(other) = list
                    .networks
                    .iter()
                    .find(|n| Cidr::parse(&n.subnet).is_some_and(|c| c.overlaps(&subnet)))
            {
                return Err(PluginError::failed(format!(
                    "Pool overlaps with other one on this address space: {} overlaps {} of vxnet network {}",
                    cidr_text(&subnet),
                    other.subnet,
                    other.name
                )));
            }
            subnet
        };
        let sub_pool = if req.sub_pool.is_empty() {
            None
        } else {
            let range = Cidr::parse(&req.sub_pool).ok_or_else(|| {
                PluginError::failed(format!("invalid --ip-range {:?}", req.sub_pool))
            })?;
            if range.prefix < subnet.prefix || !subnet.contains(range.addr) {
                return Err(PluginError::failed(format!(
                    "--ip-range {} is not inside subnet {}",
                    cidr_text(&range),
                    cidr_text(&subnet)
                )));
            }
            Some(cidr_text(&range))
        };
        self.pending()
            .insert(cidr_text(&subnet), PendingPool { sub_pool });
        json(&PoolResponse {
            pool_id: pool_id(&subnet),
            pool: cidr_text(&subnet),
            data: Default::default(),
        })
    }

    /// The first /24 of vxnet's default pool that no network uses and no pending pool holds.
    fn free_subnet(&self, list: &NetworkList) -> Result<Cidr, PluginError> {
        let pool = Cidr::new(u32::from(DEFAULT_POOL.0), DEFAULT_POOL.1);
        let step = 1u32 << (32 - DEFAULT_SUBNET_PREFIX);
        let count = 1u32 << (DEFAULT_SUBNET_PREFIX - DEFAULT_POOL.1);
        let pending = self.pending();
        (0..count)
            .map(|i| Cidr::new(pool.addr + i * step, DEFAULT_SUBNET_PREFIX))
            .find(|c| {
                !pending.contains_key(&cidr_text(c))
                    && !list
                        .networks
                        .iter()
                        .any(|n| Cidr::parse(&n.subnet).is_some_and(|s| s.overlaps(c)))
            })
            .ok_or_else(|| {
                PluginError::failed(
                    "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network",
                )
            })
    }

    pub(super) fn release_pool(&self, req: protocol::PoolRef) -> Answer {
        let subnet = pool_subnet(&req.pool_id)?;
        self.pending().remove(&cidr_text(&subnet));
        empty()
    }

    pub(super) async fn request_address(&self, req: protocol::AddressRequest) -> Answer {
        let subnet = pool_subnet(&req.pool_id)?;
        let gateway = req
            .options
            .as_ref()
            .and_then(|o| o.get("RequestAddressType"))
            .is_some_and(|t| t == GATEWAY_TYPE);
        let wanted = if req.address.is_empty() {
            None
        } else {
            let ip = parse_address(&req.address)?;
            if !subnet.contains(u32::from(ip)) {
                return Err(PluginError::failed(format!(
                    "address {ip} is not in subnet {}",
                    cidr_text(&subnet)
                )));
            }
            Some(ip)
        };
        let answer = |ip: Ipv4Addr| {
            json(&AddressResponse {
                address: format!("{ip}/{}", subnet.prefix),
                data: Default::default(),
            })
        };
        let list = self.state().await?;
        let network = network_with_subnet(&list, &subnet);
        if gateway {
            return match (network, wanted) {
                (Some(n), wanted) => {
                    let ip = parse_address(&n.gateway)?;
                    if wanted.is_some_and(|w| w != ip) {
                        return Err(PluginError::failed(format!(
                            "vxnet network {} has gateway {ip}: give --gateway {ip} or none",
                            n.name
                        )));
                    }
                    answer(ip)
                }
                (None, Some(ip)) => answer(ip),
                (None, None) => answer(Ipv4Addr::from(subnet.addr + 1)),
            };
        }
        let Some(network) = network else {
            // Before the network exists Docker only asks for --aux-address entries, which
            // become the network's reserved addresses when it is created.
            return match wanted {
                Some(ip) => answer(ip),
                None => Err(PluginError::failed(format!(
                    "no vxnet network has subnet {} yet: create the Docker network first",
                    cidr_text(&subnet)
                ))),
            };
        };
        if let Some(ip) = wanted
            && network
                .aux_addresses
                .values()
                .any(|a| strip_prefix(a) == ip.to_string())
        {
            // An --aux-address of a daemon attaching to an existing network: the network
            // already holds it.
            return answer(ip);
        }
        let response = self
            .call(Req::AddressReserve(ReserveAddress {
                network: network.id.clone(),
                host: String::new(),
                ipv4: wanted.map(|ip| ip.to_string()),
            }))
            .await?;
        let Some(vxnet_proto::response::Kind::AddressReserved(reservation)) =
            crate::agent::runtimes::applied(&response)
        else {
            return Err(PluginError::failed("unexpected answer to a reservation"));
        };
        answer(parse_address(&reservation.ipv4)?)
    }

    pub(super) async fn release_address(&self, req: protocol::AddressRequest) -> Answer {
        let subnet = pool_subnet(&req.pool_id)?;
        let ip = parse_address(&req.address)?;
        let list = self.state().await?;
        let Some(network) = network_with_subnet(&list, &subnet) else {
            return empty();
        };
        let fixed = strip_prefix(&network.gateway) == ip.to_string()
            || network
                .aux_addresses
                .values()
                .any(|a| strip_prefix(a) == ip.to_string());
        if fixed {
            // The gateway and aux addresses belong to the network, not to a reservation.
            return empty();
        }
        self.call(Req::AddressRelease(ReleaseAddress {
            network: network.id.clone(),
            host: String::new(),
            ipv4: ip.to_string(),
        }))
        .await?;
        empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids_round_trip_and_refuse_strangers() {
        let c = Cidr::parse("10.30.0.0/24").unwrap();
        assert_eq!(pool_id(&c), "vxnet:10.30.0.0/24");
        assert_eq!(pool_subnet("vxnet:10.30.0.0/24").unwrap(), c);
        assert!(pool_subnet("LocalDefault/10.30.0.0/24").is_err());
        assert!(pool_subnet("vxnet:nonsense").is_err());
        assert!(is_ours(LOCAL_SPACE) && !is_ours("LocalDefault"));
    }
}
