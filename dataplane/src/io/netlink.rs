//! Link management over rtnetlink: bridges, veths into container namespaces, addresses.
//!
//! Every operation is idempotent where the agent's restart reconciliation needs it
//! ([`Netlink::ensure_bridge`], [`Netlink::attach`], [`Netlink::delete_link`]). A netlink socket
//! talks to the namespace it was created in, so work inside another namespace goes through
//! [`in_netns`]: a dedicated thread enters the namespace and runs its own current-thread tokio
//! runtime and netlink connection.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, BridgePortState, In6AddrGenMode, InfoBridge, InfoBridgePort,
    InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo,
    LinkMessage,
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec};

use super::netns::NetnsHandle;
use super::{IoError, Result, check_ifname};

/// What the kernel says about one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes.
    pub mtu: u32,
    /// Ethernet address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Link kind (`bridge`, `veth`, `tun`, …); `None` for physical devices and loopback.
    pub kind: Option<String>,
    /// Index of the bridge (or other controller) the link is attached to.
    pub controller: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// For a bridge port: whether the bridge forwards through it yet (`None` otherwise). A new
    /// port starts forwarding only once the kernel's link watcher has seen its carrier.
    pub forwarding: Option<bool>,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            ..LinkInfo::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Address(addr) => {
                    info.mac = <[u8; 6]>::try_from(addr.as_slice()).ok()
                }
                LinkAttribute::Controller(c) if *c != 0 => info.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            NlLinkInfo::Kind(kind) => info.kind = Some(kind.to_string()),
                            NlLinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                for p in port {
                                    if let InfoBridgePort::State(state) = p {
                                        info.forwarding =
                                            Some(*state == BridgePortState::Forwarding);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// A link named either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRef<'a> {
    /// By interface name.
    Name(&'a str),
    /// By interface index.
    Index(u32),
}

impl<'a> From<&'a str> for LinkRef<'a> {
    fn from(name: &'a str) -> Self {
        LinkRef::Name(name)
    }
}

impl<'a> From<&'a String> for LinkRef<'a> {
    fn from(name: &'a String) -> Self {
        LinkRef::Name(name)
    }
}

impl From<u32> for LinkRef<'_> {
    fn from(index: u32) -> Self {
        LinkRef::Index(index)
    }
}

/// A container's interface, for [`Netlink::create_veth_into_netns`].
#[derive(Debug, Clone, Copy)]
pub struct VethSpec<'a> {
    /// Name of the host-side end (stays in the agent's namespace, on the bridge).
    pub host_name: &'a str,
    /// Bridge the host-side end is attached to.
    pub bridge_index: u32,
    /// The container's namespace.
    pub netns: &'a NetnsHandle,
    /// Name of the container-side end inside the namespace, usually `eth0`.
    pub peer_name: &'a str,
    /// Ethernet address of the container-side end (unicast).
    pub mac: [u8; 6],
    /// IPv4 address of the container-side end.
    pub ipv4: Ipv4Addr,
    /// Prefix length of the overlay subnet.
    pub prefix_len: u8,
    /// MTU of both ends (the overlay MTU: underlay MTU − 50).
    pub mtu: u32,
    /// `gso_max_size` of the container-side end: caps the TCP super-frames the container sends
    /// (see [`crate::offload::container_gso_max_size`]); `None` keeps the kernel's default.
    pub gso_max_size: Option<u32>,
    /// The network's gateway: the container gets `default via` it unless it already has a
    /// default route (`None`: an `--internal` network, no way out).
    pub gateway: Option<Ipv4Addr>,
}

/// The two ends made by [`Netlink::create_veth_into_netns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VethCreated {
    /// Index of the host-side end in the agent's namespace.
    pub host_index: u32,
    /// Index of the container-side end inside the container's namespace.
    pub peer_index: u32,
}

/// An rtnetlink connection bound to the namespace it was created in. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

pub(crate) fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a connection and spawns its driver task on the current tokio runtime (which must
    /// have I/O and time enabled, e.g. `enable_all()`).
    pub fn new() -> Result<Netlink> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(IoError::Invalid(
                "Netlink::new must run inside a tokio runtime".into(),
            ));
        }
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| IoError::os("open netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The underlying rtnetlink handle, for requests this module does not wrap.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The link called `name`, or `None`.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        check_ifname(name)?;
        let mut stream = self.handle.link().get().match_name(name).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(LinkInfo::from_message)),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(IoError::netlink(format!("get link {name}"), e)),
        }
    }

    /// The link with index `index`, or `None`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(LinkInfo::from_message)),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(IoError::netlink(format!("get link #{index}"), e)),
        }
    }

    /// All links of this namespace.
    pub async fn list_links(&self) -> Result<Vec<LinkInfo>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| IoError::netlink("dump links", e))?;
        Ok(msgs.iter().map(LinkInfo::from_message).collect())
    }

    /// The links whose names start with `prefix` (the agent's own, for restart reconciliation).
    pub async fn list_links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkInfo>> {
        let mut links = self.list_links().await?;
        links.retain(|l| l.name.starts_with(prefix));
        Ok(links)
    }

    pub(crate) async fn resolve(&self, link: LinkRef<'_>) -> Result<u32> {
        match link {
            LinkRef::Index(i) => Ok(i),
            LinkRef::Name(name) => match self.link_by_name(name).await? {
                Some(l) => Ok(l.index),
                None => Err(IoError::NotFound(format!("link {name}"))),
            },
        }
    }

    async fn set(&self, msg: LinkMessage, what: impl FnOnce() -> String) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| IoError::netlink(what(), e))
    }

    /// Stops the kernel from giving the link an IPv6 link-local address (`addrgenmode none`).
    ///
    /// Bridges and bridge ports of the overlay carry no host address: a link-local one would make
    /// the host send router solicitations, MLD reports and DAD probes into the overlay. A kernel
    /// without IPv6 has nothing to stop, so that case is not an error.
    pub async fn disable_ipv6_autoconf(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno_of(&e), Some(libc::EAFNOSUPPORT | libc::EOPNOTSUPP)) => Ok(()),
            Err(e) => Err(IoError::netlink(format!("addrgenmode none on #{index}"), e)),
        }
    }

    /// Brings a link up.
    pub async fn set_up(&self, link: LinkRef<'_>) -> Result<()> {
        let index = self.resolve(link).await?;
        self.set(LinkUnspec::new_with_index(index).up().build(), || {
            format!("set #{index} up")
        })
        .await
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, link: LinkRef<'_>, mtu: u32) -> Result<()> {
        let index = self.resolve(link).await?;
        self.set(LinkUnspec::new_with_index(index).mtu(mtu).build(), || {
            format!("set mtu {mtu} on #{index}")
        })
        .await
    }

    /// Creates the bridge `name` if missing, sets its MTU and brings it up; returns its index.
    /// No address is added (and IPv6 autoconf is off): the bridge is a switch, not a host port.
    /// Fails with [`IoError::Invalid`] if `name` exists but is not a bridge.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        check_ifname(name)?;
        let index = match self.link_by_name(name).await? {
            Some(link) => checked_bridge(link)?,
            None => {
                // No multicast snooping: the bridge would send its own IGMP/MLD reports, which
                // the TAP carries into the overlay; the router floods multicast anyway.
                let msg = LinkBridge::new(name)
                    .down()
                    .mtu(mtu)
                    .append_info_data(InfoBridge::MulticastSnooping(false))
                    .build();
                match self.handle.link().add(msg).execute().await {
                    Ok(()) => {}
                    // Someone else created it meanwhile: check it below like any existing link.
                    Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(IoError::netlink(format!("create bridge {name}"), e)),
                }
                let link = self.link_by_name(name).await?.ok_or_else(|| {
                    IoError::NotFound(format!("bridge {name} vanished after creation"))
                })?;
                let index = checked_bridge(link)?;
                self.disable_ipv6_autoconf(index).await?;
                index
            }
        };
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).up().build(),
            || format!("set bridge {name} mtu {mtu} up"),
        )
        .await?;
        Ok(index)
    }

    /// Attaches a link to a bridge, sets its MTU, turns IPv6 autoconf off and brings it up.
    /// Idempotent. Used for the TAP and for host-side veth ends.
    pub async fn attach(&self, link: LinkRef<'_>, bridge_index: u32, mtu: u32) -> Result<()> {
        let index = self.resolve(link).await?;
        self.disable_ipv6_autoconf(index).await?;
        let msg = LinkUnspec::new_with_index(index)
            .controller(bridge_index)
            .mtu(mtu)
            .up()
            .build();
        self.set(msg, || {
            format!("attach #{index} to bridge #{bridge_index} (mtu {mtu})")
        })
        .await
    }

    /// Waits until the bridge forwards through port `index` (see [`LinkInfo::forwarding`]), for
    /// at most `timeout`. Frames sent into a port before that are dropped by the bridge.
    pub async fn wait_port_forwarding(
        &self,
        index: u32,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let end = std::time::Instant::now() + timeout;
        loop {
            let link = self
                .link_by_index(index)
                .await?
                .ok_or_else(|| IoError::NotFound(format!("link #{index}")))?;
            match link.forwarding {
                Some(true) => return Ok(()),
                None => {
                    return Err(IoError::Invalid(format!(
                        "{} is not a bridge port",
                        link.name
                    )));
                }
                Some(false) if std::time::Instant::now() >= end => {
                    return Err(IoError::Os {
                        context: format!(
                            "bridge port {} not forwarding after {timeout:?}",
                            link.name
                        ),
                        source: std::io::ErrorKind::TimedOut.into(),
                    });
                }
                // Carrier changes reach the bridge through the kernel's link watcher: within
                // milliseconds for veths, up to a second for other devices.
                Some(false) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    }

    /// Deletes the link `name`; succeeds if it does not exist. Deleting one end of a veth pair
    /// deletes both.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        check_ifname(name)?;
        // Delete by name in one request: no window where the index could be reused.
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(IoError::netlink(format!("delete link {name}"), e)),
        }
    }

    /// Deletes the link with index `index`; succeeds if it does not exist.
    pub async fn delete_link_index(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(IoError::netlink(format!("delete link #{index}"), e)),
        }
    }

    /// Adds `ip/prefix_len` to a link; succeeds if it is already there.
    pub async fn add_address(&self, link: LinkRef<'_>, ip: IpAddr, prefix_len: u8) -> Result<()> {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(IoError::Invalid(format!(
                "prefix length {prefix_len} for {ip}"
            )));
        }
        let index = self.resolve(link).await?;
        match self
            .handle
            .address()
            .add(index, ip, prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(IoError::netlink(
                format!("add {ip}/{prefix_len} to #{index}"),
                e,
            )),
        }
    }

    /// The addresses on a link, as `(address, prefix length)`.
    pub async fn addresses(&self, link: LinkRef<'_>) -> Result<Vec<(IpAddr, u8)>> {
        let index = self.resolve(link).await?;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| IoError::netlink(format!("dump addresses of #{index}"), e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                        Some((*ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// The MTU of the interface that owns `ip`, or `None` if no interface here has it. The agent
    /// uses it to find the underlay MTU (the overlay MTU is that minus 50).
    pub async fn mtu_of_address(&self, ip: IpAddr) -> Result<Option<u32>> {
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_address_filter(ip)
            .execute()
            .try_collect()
            .await
            .map_err(|e| IoError::netlink(format!("dump addresses for {ip}"), e))?;
        let Some(index) = addrs
            .iter()
            .find(|m| {
                m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Address(x) | AddressAttribute::Local(x) if *x == ip)
                })
            })
            .map(|m| m.header.index)
        else {
            return Ok(None);
        };
        Ok(self.link_by_index(index).await?.map(|l| l.mtu))
    }

    /// Creates a container's interface: a veth pair whose host end `host_name` goes onto the
    /// bridge (MTU, up) and whose other end is born inside the container's namespace as
    /// `peer_name` with the given MAC and MTU. Then, inside the namespace, it adds the IPv4
    /// address, brings `lo` and the interface up, adds a default route via the gateway if there
    /// is one and the namespace has none, and sends one gratuitous ARP.
    ///
    /// The container end is created directly in the target namespace (`IFLA_NET_NS_FD` on the
    /// peer) rather than created here and moved: the final name can never collide with a host
    /// interface, and a crash cannot leave a half-moved end behind in the host namespace.
    /// Fails with [`IoError::AlreadyExists`] if `host_name` exists (the agent decides whether a
    /// leftover is stale) or `peer_name` exists in the namespace. On a failure after creation the
    /// pair is deleted again.
    pub async fn create_veth_into_netns(&self, spec: &VethSpec<'_>) -> Result<VethCreated> {
        check_ifname(spec.host_name)?;
        check_ifname(spec.peer_name)?;
        if spec.prefix_len > 32 {
            return Err(IoError::Invalid(format!(
                "prefix length {}",
                spec.prefix_len
            )));
        }
        if spec.mac[0] & 1 != 0 || spec.mac == [0; 6] {
            return Err(IoError::Invalid(format!(
                "{} is not a unicast MAC",
                fmt_mac(&spec.mac)
            )));
        }
        if self.link_by_name(spec.host_name).await?.is_some() {
            return Err(IoError::AlreadyExists(format!("link {}", spec.host_name)));
        }
        let mut peer = LinkUnspec::new_with_name(spec.peer_name)
            .address(spec.mac.to_vec())
            .mtu(spec.mtu)
            .setns_by_fd(spec.netns.as_raw_fd());
        if let Some(size) = spec.gso_max_size {
            peer = peer.append_extra_attribute(LinkAttribute::GsoMaxSize(size));
        }
        let peer = peer.build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name)
            .mtu(spec.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {
                return Err(IoError::AlreadyExists(format!(
                    "link {} here or {} in {}",
                    spec.host_name,
                    spec.peer_name,
                    spec.netns.description()
                )));
            }
            Err(e) => {
                return Err(IoError::netlink(
                    format!("create veth {} <-> {}", spec.host_name, spec.peer_name),
                    e,
                ));
            }
        }
        match self.finish_veth(spec).await {
            Ok(created) => Ok(created),
            Err(e) => {
                // Deleting the host end removes the container end too.
                let _ = self.delete_link(spec.host_name).await;
                Err(e)
            }
        }
    }

    async fn finish_veth(&self, spec: &VethSpec<'_>) -> Result<VethCreated> {
        let host = self
            .link_by_name(spec.host_name)
            .await?
            .ok_or_else(|| IoError::NotFound(format!("link {} after creation", spec.host_name)))?;
        // The host end first, so the container end has carrier when it sends its ARP.
        self.attach(LinkRef::Index(host.index), spec.bridge_index, spec.mtu)
            .await?;
        let peer_name = spec.peer_name.to_owned();
        let (mac, ip, prefix_len, gateway) = (spec.mac, spec.ipv4, spec.prefix_len, spec.gateway);
        let peer_index = in_netns(spec.netns, move |nl| async move {
            let peer = nl
                .link_by_name(&peer_name)
                .await?
                .ok_or_else(|| IoError::NotFound(format!("{peer_name} in container namespace")))?;
            nl.add_address(LinkRef::Index(peer.index), IpAddr::V4(ip), prefix_len)
                .await?;
            // The overlay is IPv4-only for now: no link-local address, hence no DAD, router
            // solicitations or MLD flooding the overlay (Docker disables IPv6 likewise).
            nl.disable_ipv6_autoconf(peer.index).await?;
            nl.set_up(LinkRef::Name("lo")).await?;
            nl.set_up(LinkRef::Index(peer.index)).await?;
            if let Some(gateway) = gateway {
                nl.add_default_route_v4_if_none(gateway).await?;
            }
            Ok(peer.index)
        })
        .await?;
        // The bridge drops what enters a port before it forwards: wait, so the ARP gets out.
        self.wait_port_forwarding(host.index, PORT_FORWARDING_TIMEOUT)
            .await?;
        in_netns(spec.netns, move |_| async move {
            send_gratuitous_arp(peer_index, mac, ip)
        })
        .await?;
        Ok(VethCreated {
            host_index: host.index,
            peer_index,
        })
    }
}

/// A runtime's container interface, for [`Netlink::create_veth_for_runtime`]: both ends are
/// made in the agent's namespace and the runtime (dockerd) moves the container's end into the
/// sandbox, names it and gives it its address.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeVethSpec<'a> {
    /// Name of the host-side end (on the bridge).
    pub host_name: &'a str,
    /// Bridge the host-side end is attached to.
    pub bridge_index: u32,
    /// MTU of the host-side end.
    pub host_mtu: u32,
    /// Name of the container-side end, as the runtime will look for it.
    pub peer_name: &'a str,
    /// Ethernet address of the container-side end (unicast).
    pub mac: [u8; 6],
    /// MTU of the container-side end (the overlay MTU).
    pub mtu: u32,
    /// `gso_max_size` of the container-side end (`None`: the kernel's default).
    pub gso_max_size: Option<u32>,
}

impl Netlink {
    /// Makes a veth pair whose container end stays here for a runtime to move. A leftover pair of
    /// the same names (an earlier attempt) is replaced. Nothing is left behind on failure.
    pub async fn create_veth_for_runtime(&self, spec: &RuntimeVethSpec<'_>) -> Result<u32> {
        check_ifname(spec.host_name)?;
        check_ifname(spec.peer_name)?;
        if spec.mac[0] & 1 != 0 || spec.mac == [0; 6] {
            return Err(IoError::Invalid(format!(
                "{} is not a unicast MAC",
                fmt_mac(&spec.mac)
            )));
        }
        for name in [spec.host_name, spec.peer_name] {
            if self.link_by_name(name).await?.is_some() {
                self.delete_link(name).await?;
            }
        }
        let mut peer = LinkUnspec::new_with_name(spec.peer_name)
            .address(spec.mac.to_vec())
            .mtu(spec.mtu);
        if let Some(size) = spec.gso_max_size {
            peer = peer.append_extra_attribute(LinkAttribute::GsoMaxSize(size));
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name)
            .mtu(spec.host_mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            IoError::netlink(
                format!("create veth {} <-> {}", spec.host_name, spec.peer_name),
                e,
            )
        })?;
        let attached = async {
            let host = self.link_by_name(spec.host_name).await?.ok_or_else(|| {
                IoError::NotFound(format!("link {} after creation", spec.host_name))
            })?;
            self.disable_ipv6_autoconf(host.index).await?;
            self.attach(LinkRef::Index(host.index), spec.bridge_index, spec.host_mtu)
                .await?;
            Ok(host.index)
        }
        .await;
        if attached.is_err() {
            // Deleting the host end removes the container end too.
            let _ = self.delete_link(spec.host_name).await;
        }
        attached
    }
}

/// How long [`Netlink::create_veth_into_netns`] waits for the host end to forward.
const PORT_FORWARDING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

fn checked_bridge(link: LinkInfo) -> Result<u32> {
    if link.kind.as_deref() == Some("bridge") {
        Ok(link.index)
    } else {
        Err(IoError::Invalid(format!(
            "{} exists but is a {} link, not a bridge",
            link.name,
            link.kind.as_deref().unwrap_or("physical")
        )))
    }
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Runs `f` with a [`Netlink`] connected inside the namespace `ns`, on a dedicated thread with
/// its own current-thread runtime; the caller's runtime is not blocked. Sockets created inside
/// `f` belong to `ns` too. A panic in `f` is propagated.
pub async fn in_netns<T, F, Fut>(ns: &NetnsHandle, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + 'static,
{
    let ns = ns.try_clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vxnet-netns".into())
        .spawn(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ns.enter_current_thread()?;
                run_with_netlink(f)
            }));
            // The receiver is gone only if the caller stopped waiting; nothing left to report to.
            let _ = tx.send(out);
        })
        .map_err(|e| IoError::os("spawn namespace thread", e))?;
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(IoError::Invalid(
            "namespace thread ended without an answer".into(),
        )),
    }
}

/// Blocking form of [`in_netns`], for callers without a runtime (tests, tools). `f` may borrow.
pub fn in_netns_blocking<T, F, Fut>(ns: &NetnsHandle, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    ns.run(|| run_with_netlink(f))?
}

fn run_with_netlink<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Netlink) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IoError::os("build namespace runtime", e))?;
    rt.block_on(async move { f(Netlink::new()?).await })
}

/// The first free `{prefix}{n}` (n = 0, 1, …) in the namespace: `eth0`, then `eth1`, …
pub async fn next_free_ifname_in_netns(ns: &NetnsHandle, prefix: &str) -> Result<String> {
    check_ifname(&format!("{prefix}0"))?;
    let prefix = prefix.to_owned();
    in_netns(ns, move |nl| async move {
        let links = nl.list_links_with_prefix(&prefix).await?;
        let taken: Vec<u32> = links
            .iter()
            .filter_map(|l| l.name[prefix.len()..].parse::<u32>().ok())
            .collect();
        let n = (0u32..).find(|n| !taken.contains(n)).unwrap_or(0);
        let name = format!("{prefix}{n}");
        check_ifname(&name)?;
        Ok(name)
    })
    .await
}

/// Deletes `ifname` inside the namespace (for a veth, the host end goes too); succeeds if it
/// does not exist.
pub async fn remove_from_netns(ns: &NetnsHandle, ifname: &str) -> Result<()> {
    check_ifname(ifname)?;
    let ifname = ifname.to_owned();
    in_netns(ns, move |nl| async move { nl.delete_link(&ifname).await }).await
}

/// Sends one gratuitous ARP (a broadcast request with sender IP = target IP = `ip`) out of link
/// `ifindex` of the calling thread's namespace, so neighbours update stale entries for `ip`.
pub fn send_gratuitous_arp(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    frame[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&ip.octets());
    // Target MAC stays zero, as in a request.
    frame[38..42].copy_from_slice(&ip.octets());

    // Protocol 0: this socket only sends, it never receives a copy of traffic.
    // SAFETY: socket takes plain integer arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(IoError::last_os("AF_PACKET socket for gratuitous ARP"));
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and sll are valid for the given lengths for the duration of the call.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(IoError::last_os(format!(
            "send gratuitous ARP for {ip} on #{ifindex}"
        )));
    }
    Ok(())
}
