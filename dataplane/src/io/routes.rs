//! IPv4 routes and link addresses for the gateway: the routes the agent owns (marked with its
//! own protocol number, so it finds and replaces exactly those, never another's), a container's
//! default route, and a bridge's fixed MAC.

use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::netlink::{LinkRef, Netlink, errno_of};
use super::{IoError, Result};

/// The route protocol number marking vxnet's routes (`ip route show proto 86`).
pub const ROUTE_PROTOCOL: u8 = 86;

/// One IPv4 route of the main table, as far as vxnet cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route4 {
    /// Destination network.
    pub dst: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
}

fn route4_of(msg: &RouteMessage) -> Option<Route4> {
    if msg.header.address_family != AddressFamily::Inet
        || msg.header.table != RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            _ => {}
        }
    }
    Some(Route4 {
        dst,
        prefix_len: msg.header.destination_prefix_length,
        gateway,
    })
}

impl Netlink {
    /// The IPv4 routes of the main table, only those with protocol `protocol` if given.
    pub async fn routes_v4(&self, protocol: Option<u8>) -> Result<Vec<Route4>> {
        let msgs: Vec<RouteMessage> = self
            .handle()
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| IoError::netlink("dump IPv4 routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| protocol.is_none_or(|p| u8::from(m.header.protocol) == p))
            .filter_map(route4_of)
            .collect())
    }

    /// Adds or replaces `dst/prefix_len via gateway`, marked as vxnet's ([`ROUTE_PROTOCOL`]).
    pub async fn replace_route_v4(&self, route: Route4) -> Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst, route.prefix_len)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if let Some(gw) = route.gateway {
            builder = builder.gateway(gw);
        }
        self.handle()
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(|e| IoError::netlink(format!("route {}/{}", route.dst, route.prefix_len), e))
    }

    /// Deletes one of vxnet's routes; succeeds if it is already gone.
    pub async fn delete_route_v4(&self, route: Route4) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst, route.prefix_len)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        match self.handle().route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(IoError::netlink(
                format!("delete route {}/{}", route.dst, route.prefix_len),
                e,
            )),
        }
    }

    /// Adds `default via gateway` unless the namespace already has an IPv4 default route (the
    /// first network that offers a way out keeps it, as in Docker). Returns whether it added one.
    pub async fn add_default_route_v4_if_none(&self, gateway: Ipv4Addr) -> Result<bool> {
        let routes = self.routes_v4(None).await?;
        if routes.iter().any(|r| r.prefix_len == 0) {
            return Ok(false);
        }
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        match self.handle().route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(IoError::netlink(format!("default via {gateway}"), e)),
        }
    }

    /// Sets a link's Ethernet address.
    pub async fn set_mac(&self, link: LinkRef<'_>, mac: [u8; 6]) -> Result<()> {
        let index = self.resolve(link).await?;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.handle()
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| IoError::netlink(format!("set address of #{index}"), e))
    }
}
