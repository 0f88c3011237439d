//! The sans-IO router: bytes and `now` go in, actions come out.
//!
//! The I/O layer drives one [`Router`] per worker. It owns the buffers; the router rewrites them
//! in place (VXLAN header into the headroom, ARP/ND answers and ICMP errors over the request) and
//! returns actions that borrow them, so nothing is allocated per packet.
//!
//! - [`Router::egress`]: a frame read from a network's TAP → send to one VTEP, flood to the
//!   network's member VTEPs, answer locally, nothing (the bridge delivered it), or drop.
//! - [`Router::ingress`]: a UDP datagram from the underlay → deliver the inner frame to the
//!   network's TAP, or drop.
//!
//! Every drop is counted under its [`DropReason`] in the worker's [`WorkerStats`].

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::fdb::{FibSnapshot, MacLocation, NetworkTable, Vni, gateway_mac};
use crate::stats::{DropReason, WorkerStats};
use crate::wire::{
    self, ArpOperation, ArpPacket, EtherType, EthernetFrame, Icmpv4Packet, Icmpv6Packet,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, MacAddr, NdiscNeighborAdvertRepr, VxlanPacket,
    VxlanRepr, icmpv4, icmpv6, ip_protocol, ndisc_flags,
};

/// Bytes the caller reserves in front of an egress frame: the VXLAN header goes there.
pub const EGRESS_HEADROOM: usize = 8;

/// Extra bytes after the frame that let the router build an ICMP error or a neighbour advert in
/// place. With less room the router drops (and counts) instead of answering.
pub const EGRESS_TAILROOM: usize = 64;

const ETHERNET_HEADER_LEN: usize = wire::ethernet::HEADER_LEN;
const IPV4_HEADER_LEN: usize = wire::ipv4::HEADER_LEN;
const IPV6_HEADER_LEN: usize = wire::ipv6::HEADER_LEN;
const ICMPV4_HEADER_LEN: usize = wire::icmpv4::HEADER_LEN;
const ARP_LEN: usize = wire::arp::LEN;
/// RFC 1812 §4.3.2.3: an ICMP error carries as much of the original as fits in 576 bytes.
const ICMP_ERROR_MAX_IP_LEN: usize = 576;

/// Settings of a router.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// ICMP "fragmentation needed" messages the router may send per second (burst: the same).
    pub icmp_per_second: u32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        // Linux's default icmp_ratelimit allows about one per millisecond per destination; a
        // global budget of 100/s is plenty for PMTU discovery and bounds the cost of abuse.
        Self {
            icmp_per_second: 100,
        }
    }
}

/// What to do with a frame read from a TAP device.
#[derive(Debug, PartialEq, Eq)]
pub enum EgressAction<'a> {
    /// Send `packet` (VXLAN header + frame) to one remote VTEP.
    Unicast {
        /// The remote VTEP's underlay address.
        vtep: IpAddr,
        /// The VXLAN payload of the UDP datagram.
        packet: &'a [u8],
        /// Hash of the inner flow: picks the UDP source port (RFC 7348 §5).
        flow_hash: u32,
    },
    /// Send `packet` to every VTEP in `vteps` (head-end replication of BUM traffic).
    Flood {
        /// The member VTEPs of the network.
        vteps: &'a [IpAddr],
        /// The VXLAN payload of the UDP datagrams.
        packet: &'a [u8],
        /// Hash of the inner flow.
        flow_hash: u32,
    },
    /// Write `frame` back into the same TAP: an answer built locally (ARP reply, neighbour
    /// advertisement, ICMP fragmentation-needed).
    Reply {
        /// The Ethernet frame to write.
        frame: &'a [u8],
    },
    /// The destination is on this host; the bridge already delivered the frame.
    Local,
    /// The frame was dropped and counted.
    Drop(DropReason),
}

/// What to do with a VXLAN datagram received from the underlay.
#[derive(Debug, PartialEq, Eq)]
pub enum IngressAction<'a> {
    /// Write `frame` to the TAP device of network `vni`.
    Deliver {
        /// The network.
        vni: Vni,
        /// The inner Ethernet frame.
        frame: &'a [u8],
    },
    /// The datagram was dropped and counted.
    Drop(DropReason),
}

/// A token bucket, driven by the `now` the caller passes in.
#[derive(Debug)]
struct TokenBucket {
    per_second: u32,
    tokens: u32,
    last_refill: Option<Duration>,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        Self {
            per_second,
            tokens: per_second,
            last_refill: None,
        }
    }

    fn take(&mut self, now: Duration) -> bool {
        let last = *self.last_refill.get_or_insert(now);
        let elapsed = now.saturating_sub(last);
        let earned = elapsed
            .as_millis()
            .saturating_mul(u128::from(self.per_second))
            / 1000;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.per_second);
            self.last_refill = Some(now);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// One worker's router.
#[derive(Debug)]
pub struct Router {
    stats: Arc<WorkerStats>,
    icmp_budget: TokenBucket,
}

/// The egress decision, made while the buffer is borrowed mutably.
enum Egress {
    Unicast(IpAddr),
    Flood,
    /// An ARP reply or neighbour advertisement of this length, built in place.
    Answer(usize),
    /// An ICMP error of this length, built in place (the frame itself was dropped and counted).
    IcmpError(usize),
    Local,
    Drop(DropReason),
}

impl Router {
    /// A router counting into `stats`.
    pub fn new(config: RouterConfig, stats: Arc<WorkerStats>) -> Self {
        Self {
            stats,
            icmp_budget: TokenBucket::new(config.icmp_per_second),
        }
    }

    /// This router's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Routes one frame read from the TAP of network `vni`.
    ///
    /// The frame is `buf[EGRESS_HEADROOM..EGRESS_HEADROOM + frame_len]`; the headroom in front of
    /// it receives the VXLAN header. Room after the frame ([`EGRESS_TAILROOM`]) lets the router
    /// answer in place. `now` is any monotonic time (it paces ICMP errors).
    pub fn egress<'a>(
        &mut self,
        fib: &'a FibSnapshot,
        vni: Vni,
        buf: &'a mut [u8],
        frame_len: usize,
        now: Duration,
    ) -> EgressAction<'a> {
        let frame_end = EGRESS_HEADROOM.saturating_add(frame_len);
        let table = fib.network(vni);
        let decision = match (table, buf.get_mut(EGRESS_HEADROOM..frame_end)) {
            (_, None) => Egress::Drop(DropReason::ShortFrame),
            (None, Some(_)) => Egress::Drop(DropReason::UnknownNetwork),
            (Some(table), Some(_)) => self.decide_egress(table, buf, frame_len, now),
        };
        let buf: &'a [u8] = buf;
        let action = match decision {
            Egress::Drop(reason) => {
                self.stats.count_drop(reason);
                return EgressAction::Drop(reason);
            }
            Egress::Local => return EgressAction::Local,
            Egress::Answer(len) | Egress::IcmpError(len) => {
                return EgressAction::Reply {
                    frame: &buf[EGRESS_HEADROOM..EGRESS_HEADROOM + len],
                };
            }
            Egress::Unicast(vtep) => EgressAction::Unicast {
                vtep,
                packet: &buf[..frame_end],
                flow_hash: flow_hash(&buf[EGRESS_HEADROOM..frame_end]),
            },
            Egress::Flood => EgressAction::Flood {
                vteps: table.map(NetworkTable::flood_list).unwrap_or_default(),
                packet: &buf[..frame_end],
                flow_hash: flow_hash(&buf[EGRESS_HEADROOM..frame_end]),
            },
        };
        if let Some(table) = table {
            table.counters().add_tx(frame_len);
        }
        action
    }

    fn decide_egress(
        &mut self,
        table: &NetworkTable,
        buf: &mut [u8],
        frame_len: usize,
        now: Duration,
    ) -> Egress {
        let frame_end = EGRESS_HEADROOM + frame_len;
        let Ok(frame) = EthernetFrame::new_checked(&buf[EGRESS_HEADROOM..frame_end]) else {
            return Egress::Drop(DropReason::ShortFrame);
        };
        let (src, dst) = (frame.src_addr(), frame.dst_addr());
        // The host's own frames (its anycast gateway on the bridge) never leave the host: every
        // host answers for the gateway itself, and reaches other hosts' containers through them.
        if src == gateway_mac(table.vni()) {
            return Egress::Local;
        }
        if let Some(MacLocation::Remote(_)) = table.lookup_mac(&src) {
            return Egress::Drop(DropReason::LoopGuard);
        }
        if let Some(verdict) = self.check_mtu(table, buf, frame_len, now) {
            return verdict;
        }
        let decision = if dst.is_multicast() {
            match suppress(table, buf, frame_len) {
                Some(decision) => decision,
                None => flood_or(table, Egress::Local),
            }
        } else {
            match table.lookup_mac(&dst) {
                Some(MacLocation::Local) => Egress::Local,
                Some(MacLocation::Remote(vtep)) => Egress::Unicast(vtep),
                None => flood_or(table, Egress::Drop(DropReason::NoRoute)),
            }
        };
        match decision {
            Egress::Unicast(_) | Egress::Flood => {
                VxlanRepr { vni: table.vni() }
                    .emit(&mut VxlanPacket::new_unchecked(&mut buf[..EGRESS_HEADROOM]));
            }
            Egress::Answer(_) => {
                table
                    .counters()
                    .suppressed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Egress::IcmpError(_) | Egress::Local | Egress::Drop(_) => {}
        }
        decision
    }

    /// Drops frames larger than the network's MTU; an IPv4 sender with DF set gets ICMP
    /// "fragmentation needed" with the right MTU, so path MTU discovery works (no black hole).
    fn check_mtu(
        &mut self,
        table: &NetworkTable,
        buf: &mut [u8],
        frame_len: usize,
        now: Duration,
    ) -> Option<Egress> {
        let mtu = usize::from(table.mtu());
        if mtu == 0 {
            return None;
        }
        let frame =
            EthernetFrame::new_unchecked(&buf[EGRESS_HEADROOM..EGRESS_HEADROOM + frame_len]);
        let l3_len = match frame.ethertype() {
            EtherType::IPV4 => Ipv4Packet::new_checked(frame.payload())
                .ok()?
                .total_len()
                .into(),
            EtherType::IPV6 => {
                IPV6_HEADER_LEN
                    + usize::from(Ipv6Packet::new_checked(frame.payload()).ok()?.payload_len())
            }
            _ => frame.payload().len(),
        };
        if l3_len <= mtu {
            return None;
        }
        let dont_fragment = frame.ethertype() == EtherType::IPV4
            && frame.vlan_id().is_none()
            && Ipv4Packet::new_checked(frame.payload()).is_ok_and(|ip| ip.dont_frag());
        if dont_fragment
            && self.icmp_budget.take(now)
            && let Some(len) = build_frag_needed(buf, frame_len, table.mtu())
        {
            // The frame is dropped all the same; the ICMP error replaces it.
            self.stats.count_drop(DropReason::TooBig);
            return Some(Egress::IcmpError(len));
        }
        Some(Egress::Drop(DropReason::TooBig))
    }

    /// Routes one VXLAN datagram (the UDP payload) received from underlay address `src`.
    pub fn ingress<'a>(
        &mut self,
        fib: &'a FibSnapshot,
        src: IpAddr,
        datagram: &'a [u8],
    ) -> IngressAction<'a> {
        self.ingress_with(fib, src, datagram, &mut IngressMemo::default())
    }

    /// [`Router::ingress`] for the datagrams of one batch from one sender (a UDP GRO buffer),
    /// with one `memo` per batch: a datagram whose VXLAN and Ethernet headers (its first 22
    /// bytes) equal those of the last one delivered takes that decision without the table
    /// lookups (network, VTEP membership, both MACs), which depend on nothing else. Its inner
    /// IP header is still checked, and it is counted, like any other.
    pub fn ingress_with<'a>(
        &mut self,
        fib: &'a FibSnapshot,
        src: IpAddr,
        datagram: &'a [u8],
        memo: &mut IngressMemo<'a>,
    ) -> IngressAction<'a> {
        let repeat = match (memo.table, datagram.first_chunk::<INGRESS_MEMO_LEN>()) {
            (Some(table), Some(header)) if *header == memo.header => Some(table),
            _ => None,
        };
        let decision = match repeat {
            Some(table) => {
                let inner = &datagram[VxlanPacket::<&[u8]>::HEADER_LEN..];
                inner_well_formed(inner).map(|()| (table, inner))
            }
            None => decide_ingress(fib, src, datagram).inspect(|(table, _)| {
                memo.count_rx();
                memo.table = Some(*table);
                memo.header.copy_from_slice(&datagram[..INGRESS_MEMO_LEN]);
            }),
        };
        match decision {
            Ok((table, frame)) => {
                // `table` is the memo's: its counters are added up there (see `IngressMemo`).
                memo.rx_packets += 1;
                memo.rx_bytes += frame.len() as u64;
                IngressAction::Deliver {
                    vni: table.vni(),
                    frame,
                }
            }
            Err(reason) => {
                self.stats.count_drop(reason);
                IngressAction::Drop(reason)
            }
        }
    }
}

fn flood_or(table: &NetworkTable, otherwise: Egress) -> Egress {
    if table.flood_list().is_empty() {
        otherwise
    } else {
        Egress::Flood
    }
}

/// Bytes of a datagram that [`IngressMemo`] compares: the VXLAN header (8) and the inner
/// Ethernet destination, source and EtherType (14).
const INGRESS_MEMO_LEN: usize = wire::vxlan::HEADER_LEN + ETHERNET_HEADER_LEN;

/// The last ingress decision of a batch, for [`Router::ingress_with`]. Make a new one for every
/// batch: it is only valid for one sender and one forwarding-table snapshot.
///
/// It also sums the frames it let through, and adds them to the network's shared counters once,
/// when the decision changes or the memo is dropped: two atomic additions per batch instead of
/// per datagram.
#[derive(Debug, Default)]
pub struct IngressMemo<'a> {
    header: [u8; INGRESS_MEMO_LEN],
    table: Option<&'a NetworkTable>,
    rx_packets: u64,
    rx_bytes: u64,
}

impl IngressMemo<'_> {
    /// Adds the frames delivered so far to the current network's counters.
    fn count_rx(&mut self) {
        if let Some(table) = self.table
            && self.rx_packets > 0
        {
            table.counters().add_rx_many(self.rx_packets, self.rx_bytes);
        }
        (self.rx_packets, self.rx_bytes) = (0, 0);
    }
}

impl Drop for IngressMemo<'_> {
    fn drop(&mut self) {
        self.count_rx();
    }
}

/// The inner frame is an Ethernet frame whose IPv4, IPv6 or ARP header (if any) is whole.
fn inner_well_formed(inner: &[u8]) -> Result<(), DropReason> {
    let frame = EthernetFrame::new_checked(inner).map_err(|_| DropReason::MalformedInner)?;
    let well_formed = match frame.ethertype() {
        EtherType::IPV4 => Ipv4Packet::new_checked(frame.payload()).is_ok(),
        EtherType::IPV6 => Ipv6Packet::new_checked(frame.payload()).is_ok(),
        EtherType::ARP => ArpPacket::new_checked(frame.payload()).is_ok(),
        _ => true,
    };
    if well_formed {
        Ok(())
    } else {
        Err(DropReason::MalformedInner)
    }
}

fn decide_ingress<'a>(
    fib: &'a FibSnapshot,
    src: IpAddr,
    datagram: &'a [u8],
) -> Result<(&'a NetworkTable, &'a [u8]), DropReason> {
    let vxlan = VxlanPacket::new_checked(datagram).map_err(|_| DropReason::ShortDatagram)?;
    if !vxlan.has_vni_flag() {
        return Err(DropReason::BadVxlanFlags);
    }
    let table = fib.network(vxlan.vni()).ok_or(DropReason::UnknownVni)?;
    if !table.is_member(&src) {
        return Err(DropReason::NonMemberVtep);
    }
    let inner = &datagram[VxlanPacket::<&[u8]>::HEADER_LEN..];
    inner_well_formed(inner)?;
    let frame = EthernetFrame::new_unchecked(inner);
    match table.lookup_mac(&frame.src_addr()) {
        // Our own endpoint's MAC coming back from the underlay: a loop or a spoof.
        Some(MacLocation::Local) => return Err(DropReason::LoopGuard),
        Some(MacLocation::Remote(owner)) if owner != src => return Err(DropReason::SourceMismatch),
        _ => {}
    }
    let dst = frame.dst_addr();
    if !dst.is_multicast() && table.lookup_mac(&dst) != Some(MacLocation::Local) {
        return Err(DropReason::NotLocal);
    }
    Ok((table, inner))
}

/// ARP/ND suppression. Returns `None` when the frame is ordinary BUM traffic to flood.
fn suppress(table: &NetworkTable, buf: &mut [u8], frame_len: usize) -> Option<Egress> {
    let frame = EthernetFrame::new_unchecked(&buf[EGRESS_HEADROOM..EGRESS_HEADROOM + frame_len]);
    if frame.vlan_id().is_some() {
        return None;
    }
    match frame.ethertype() {
        EtherType::ARP => answer_arp(table, buf, frame_len),
        EtherType::IPV6 => answer_neighbor_solicitation(table, buf, frame_len),
        _ => None,
    }
}

fn answer_arp(table: &NetworkTable, buf: &mut [u8], frame_len: usize) -> Option<Egress> {
    let frame = &mut buf[EGRESS_HEADROOM..EGRESS_HEADROOM + frame_len];
    let arp = ArpPacket::new_checked(&frame[ETHERNET_HEADER_LEN..]).ok()?;
    let (sender_ip, target_ip) = (arp.sender_protocol_addr(), arp.target_protocol_addr());
    // Probes (sender 0.0.0.0, RFC 5227) and gratuitous ARP announce or test ownership; they must
    // reach the real owners, so they are flooded like any broadcast.
    if arp.operation() != ArpOperation::Request
        || sender_ip.is_unspecified()
        || sender_ip == target_ip
    {
        return None;
    }
    let target_mac = table.lookup_neighbor(&IpAddr::V4(target_ip))?;
    match table.lookup_mac(&target_mac)? {
        // The owner is on this bridge and answers for itself; the request need not leave.
        MacLocation::Local => Some(Egress::Local),
        MacLocation::Remote(_) => {
            let sender_mac = arp.sender_hardware_addr();
            let mut arp = ArpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]);
            arp.set_operation(ArpOperation::Reply);
            arp.set_sender_hardware_addr(target_mac);
            arp.set_sender_protocol_addr(target_ip);
            arp.set_target_hardware_addr(sender_mac);
            arp.set_target_protocol_addr(sender_ip);
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            eth.set_dst_addr(sender_mac);
            eth.set_src_addr(target_mac);
            Some(Egress::Answer(ETHERNET_HEADER_LEN + ARP_LEN))
        }
    }
}

fn answer_neighbor_solicitation(
    table: &NetworkTable,
    buf: &mut [u8],
    frame_len: usize,
) -> Option<Egress> {
    let frame = &buf[EGRESS_HEADROOM..EGRESS_HEADROOM + frame_len];
    let ip = Ipv6Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]).ok()?;
    // RFC 4861 §7.1.1: a valid NS has hop limit 255 and no extension headers before ICMPv6 here.
    if ip.next_header() != ip_protocol::ICMPV6 || ip.hop_limit() != 255 {
        return None;
    }
    let (solicitor, solicitor_mac) = (
        ip.src_addr(),
        EthernetFrame::new_unchecked(frame).src_addr(),
    );
    // Duplicate address detection (source ::) must reach the real owner.
    if solicitor.is_unspecified() {
        return None;
    }
    let icmp = Icmpv6Packet::new_checked(ip.payload()).ok()?;
    if icmp.msg_type() != icmpv6::NEIGHBOR_SOLICIT
        || icmp.msg_code() != 0
        || !icmp.verify_checksum(&solicitor, &ip.dst_addr())
        || icmp.check_ndisc_options().is_err()
    {
        return None;
    }
    let target = icmp.ndisc_target_addr()?;
    let target_mac = table.lookup_neighbor(&IpAddr::V6(target))?;
    match table.lookup_mac(&target_mac)? {
        MacLocation::Local => Some(Egress::Local),
        MacLocation::Remote(_) => {
            build_neighbor_advert(buf, target, target_mac, solicitor, solicitor_mac)
        }
    }
}

fn build_neighbor_advert(
    buf: &mut [u8],
    target: Ipv6Addr,
    target_mac: MacAddr,
    solicitor: Ipv6Addr,
    solicitor_mac: MacAddr,
) -> Option<Egress> {
    let advert = NdiscNeighborAdvertRepr {
        flags: ndisc_flags::SOLICITED | ndisc_flags::OVERRIDE,
        target_addr: target,
        target_link_layer_addr: Some(target_mac),
    };
    let icmp_len = advert.buffer_len();
    let len = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + icmp_len;
    let frame = buf.get_mut(EGRESS_HEADROOM..EGRESS_HEADROOM + len)?;
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_dst_addr(solicitor_mac);
    eth.set_src_addr(target_mac);
    eth.set_ethertype(EtherType::IPV6);
    let ip = Ipv6Repr {
        src_addr: target,
        dst_addr: solicitor,
        next_header: ip_protocol::ICMPV6,
        payload_len: icmp_len,
        hop_limit: 255,
    };
    ip.emit(&mut Ipv6Packet::new_unchecked(
        &mut frame[ETHERNET_HEADER_LEN..],
    ));
    let mut icmp = Icmpv6Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + IPV6_HEADER_LEN..]);
    advert.emit(&mut icmp, &target, &solicitor);
    Some(Egress::Answer(len))
}

/// Builds ICMP "fragmentation needed" (type 3 code 4) in place over the too-big IPv4 frame at
/// `buf[EGRESS_HEADROOM..]`. It appears to come from the original destination (any router on the
/// path may send it; Linux matches it against the socket by the quoted headers). Returns the
/// reply's frame length, or `None` if the buffer has no room.
fn build_frag_needed(buf: &mut [u8], frame_len: usize, mtu: u16) -> Option<usize> {
    let frame =
        EthernetFrame::new_checked(buf.get(EGRESS_HEADROOM..EGRESS_HEADROOM + frame_len)?).ok()?;
    let (orig_src_mac, orig_dst_mac) = (frame.src_addr(), frame.dst_addr());
    let orig = Ipv4Packet::new_checked(frame.payload()).ok()?;
    let (orig_src, orig_dst) = (orig.src_addr(), orig.dst_addr());
    // Never answer an ICMP error with another one, nor a fragment other than the first.
    if orig.frag_offset() != 0 || is_icmp_error(&orig) || orig_src.is_unspecified() {
        return None;
    }
    let quoted = usize::from(orig.total_len())
        .min(ICMP_ERROR_MAX_IP_LEN - IPV4_HEADER_LEN - ICMPV4_HEADER_LEN);
    let quote_at = EGRESS_HEADROOM + ETHERNET_HEADER_LEN;
    let reply_ip_len = IPV4_HEADER_LEN + ICMPV4_HEADER_LEN + quoted;
    let reply_len = ETHERNET_HEADER_LEN + reply_ip_len;
    let dest = quote_at + IPV4_HEADER_LEN + ICMPV4_HEADER_LEN;
    if buf.len() < dest + quoted {
        return None;
    }
    buf.copy_within(quote_at..quote_at + quoted, dest);
    let frame = &mut buf[EGRESS_HEADROOM..EGRESS_HEADROOM + reply_len];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_dst_addr(orig_src_mac);
    eth.set_src_addr(orig_dst_mac);
    eth.set_ethertype(EtherType::IPV4);
    let ip_repr = Ipv4Repr {
        src_addr: orig_dst,
        dst_addr: orig_src,
        next_header: ip_protocol::ICMP,
        payload_len: ICMPV4_HEADER_LEN + quoted,
        ttl: 64,
        dont_frag: false,
        ident: 0,
    };
    ip_repr.emit(&mut Ipv4Packet::new_unchecked(
        &mut frame[ETHERNET_HEADER_LEN..],
    ));
    let mut icmp = Icmpv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..]);
    icmp.set_msg_type(icmpv4::DST_UNREACHABLE);
    icmp.set_msg_code(icmpv4::FRAG_NEEDED);
    // Bytes 4..6 are unused (zero), 6..8 carry the next-hop MTU (RFC 1191).
    icmp.set_rest_of_header(u32::from(mtu));
    icmp.fill_checksum();
    Some(reply_len)
}

fn is_icmp_error(ip: &Ipv4Packet<&[u8]>) -> bool {
    if ip.next_header() != ip_protocol::ICMP {
        return false;
    }
    match Icmpv4Packet::new_checked(ip.payload()) {
        Ok(icmp) => !matches!(icmp.msg_type(), icmpv4::ECHO_REQUEST | icmpv4::ECHO_REPLY),
        // A truncated ICMP packet: treat as an error message, to be safe.
        Err(_) => true,
    }
}

/// A hash of the inner flow (RFC 7348 §5): the IP 5-tuple, or the L2 header for non-IP frames.
/// One flow always gets one hash, so it keeps one UDP source port and is never reordered.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return 0;
    };
    let l2 = || {
        let mut h = Mixer::default();
        h.add_bytes(&eth.src_addr().0);
        h.add_bytes(&eth.dst_addr().0);
        h.add(u64::from(eth.ethertype().0));
        h.finish()
    };
    match eth.ethertype() {
        EtherType::IPV4 => match Ipv4Packet::new_checked(eth.payload()) {
            Ok(ip) => {
                let mut h = Mixer::default();
                h.add(
                    u64::from(u32::from(ip.src_addr())) << 32 | u64::from(u32::from(ip.dst_addr())),
                );
                h.add(u64::from(ip.next_header()));
                // Only a datagram's first fragment carries the ports, and a later one cannot be
                // tied to its flow without reassembly: every fragment, the first included, gets
                // the address-only hash, so all of a datagram's fragments share one port.
                if !ip.more_frags() && ip.frag_offset() == 0 {
                    h.add(ports(ip.next_header(), ip.payload()));
                }
                h.finish()
            }
            Err(_) => l2(),
        },
        EtherType::IPV6 => match Ipv6Packet::new_checked(eth.payload()) {
            Ok(ip) => {
                let mut h = Mixer::default();
                h.add_bytes(&ip.src_addr().octets());
                h.add_bytes(&ip.dst_addr().octets());
                h.add(u64::from(ip.next_header()));
                h.add(ports(ip.next_header(), ip.payload()));
                h.finish()
            }
            Err(_) => l2(),
        },
        _ => l2(),
    }
}

fn ports(protocol: u8, l4: &[u8]) -> u64 {
    match (protocol, l4.get(..4)) {
        (ip_protocol::TCP | ip_protocol::UDP, Some(p)) => {
            u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
        }
        _ => 0,
    }
}

/// A small, fast, fixed-key mixer (no per-process seed: every host and every restart hashes a
/// flow the same way, which keeps source ports stable).
#[derive(Default)]
struct Mixer(u64);

impl Mixer {
    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn add_bytes(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u32 {
        // murmur3's fmix64: every input bit affects every output bit.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        x as u32
    }
}
