//! Shared fixtures for the router tests: a host with a forwarding table and frame builders.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use etherparse::PacketBuilder;
use vxnet_dataplane::fdb::{Fib, FibUpdate, MacLocation, Vni};
use vxnet_dataplane::router::{
    EGRESS_HEADROOM, EGRESS_TAILROOM, EgressAction, Router, RouterConfig,
};
use vxnet_dataplane::stats::{DropReason, WorkerStats};
use vxnet_dataplane::wire::{MacAddr, checksum};

pub const VNI: Vni = 0x1000;
pub const MTU: u16 = 1450;
pub const VTEP_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 200, 1));
pub const VTEP_B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 200, 2));
pub const VTEP_C: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 200, 3));
pub const LOCAL_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 1];
pub const LOCAL_MAC2: [u8; 6] = [0x02, 0x42, 10, 0, 0, 3];
pub const REMOTE_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 2];
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const LOCAL_IP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
pub const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const LOCAL_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const REMOTE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// Host A's view: LOCAL_MAC(2) behind the bridge, REMOTE_MAC behind VTEP B, members B and C.
pub struct Host {
    pub fib: Fib,
    pub router: Router,
    pub stats: Arc<WorkerStats>,
}

impl Host {
    pub fn new() -> Self {
        Self::with_members(&[VTEP_B, VTEP_C])
    }

    pub fn with_members(members: &[IpAddr]) -> Self {
        let mut updates = vec![
            FibUpdate::AddNetwork { vni: VNI, mtu: MTU },
            set_mac(LOCAL_MAC, MacLocation::Local),
            set_mac(LOCAL_MAC2, MacLocation::Local),
            set_mac(REMOTE_MAC, MacLocation::Remote(VTEP_B)),
            set_neighbor(LOCAL_IP.into(), LOCAL_MAC),
            set_neighbor(LOCAL_IP2.into(), LOCAL_MAC2),
            set_neighbor(REMOTE_IP.into(), REMOTE_MAC),
            set_neighbor(LOCAL_IP6.into(), LOCAL_MAC),
            set_neighbor(REMOTE_IP6.into(), REMOTE_MAC),
        ];
        updates.extend(
            members
                .iter()
                .map(|&vtep| FibUpdate::AddMember { vni: VNI, vtep }),
        );
        Self::from_updates(&updates)
    }

    /// Host B's view of the same network: REMOTE_MAC is local, LOCAL_MAC(2) behind VTEP A.
    pub fn peer_of(_a: &Host) -> Self {
        Self::from_updates(&[
            FibUpdate::AddNetwork { vni: VNI, mtu: MTU },
            set_mac(REMOTE_MAC, MacLocation::Local),
            set_mac(LOCAL_MAC, MacLocation::Remote(VTEP_A)),
            set_mac(LOCAL_MAC2, MacLocation::Remote(VTEP_A)),
            FibUpdate::AddMember {
                vni: VNI,
                vtep: VTEP_A,
            },
            FibUpdate::AddMember {
                vni: VNI,
                vtep: VTEP_C,
            },
        ])
    }

    fn from_updates(updates: &[FibUpdate]) -> Self {
        let fib = Fib::new();
        fib.apply(updates);
        let stats = Arc::new(WorkerStats::default());
        let router = Router::new(RouterConfig::default(), Arc::clone(&stats));
        Self { fib, router, stats }
    }

    /// Egress at t = 1 s, with the action copied out of the borrowed buffers.
    pub fn egress(&mut self, buf: &mut [u8], len: usize) -> Action {
        let snap = self.fib.load();
        Action::from(
            self.router
                .egress(&snap, VNI, buf, len, Duration::from_secs(1)),
        )
    }
}

/// An [`EgressAction`] with its borrowed parts copied, so tests can hold it freely.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Unicast {
        vtep: IpAddr,
        packet: Vec<u8>,
        flow_hash: u32,
    },
    Flood {
        vteps: Vec<IpAddr>,
        packet: Vec<u8>,
        flow_hash: u32,
    },
    Reply {
        frame: Vec<u8>,
    },
    Local,
    Drop(DropReason),
}

impl From<EgressAction<'_>> for Action {
    fn from(action: EgressAction<'_>) -> Self {
        match action {
            EgressAction::Unicast {
                vtep,
                packet,
                flow_hash,
            } => Action::Unicast {
                vtep,
                packet: packet.to_vec(),
                flow_hash,
            },
            EgressAction::Flood {
                vteps,
                packet,
                flow_hash,
            } => Action::Flood {
                vteps: vteps.to_vec(),
                packet: packet.to_vec(),
                flow_hash,
            },
            EgressAction::Reply { frame } => Action::Reply {
                frame: frame.to_vec(),
            },
            EgressAction::Local => Action::Local,
            EgressAction::Drop(reason) => Action::Drop(reason),
        }
    }
}

fn set_mac(mac: [u8; 6], location: MacLocation) -> FibUpdate {
    FibUpdate::SetMac {
        vni: VNI,
        mac: MacAddr(mac),
        location,
    }
}

fn set_neighbor(ip: IpAddr, mac: [u8; 6]) -> FibUpdate {
    FibUpdate::SetNeighbor {
        vni: VNI,
        ip,
        mac: MacAddr(mac),
    }
}

/// The frame placed after the egress headroom, with tailroom for in-place answers.
pub fn with_headroom(frame: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; EGRESS_HEADROOM + frame.len() + EGRESS_TAILROOM.max(64)];
    buf[EGRESS_HEADROOM..EGRESS_HEADROOM + frame.len()].copy_from_slice(frame);
    buf
}

/// An Ethernet/IPv4/UDP frame built by etherparse (DF set, as Linux sends by default).
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, payload)
        .expect("etherparse builds the frame");
    // etherparse leaves DF clear; Linux sets it on UDP/TCP with PMTU discovery on.
    out[20] |= 0x40;
    fix_ipv4_checksum(&mut out);
    out
}

pub fn clear_df(frame: &mut [u8]) {
    frame[20] &= !0x40;
    fix_ipv4_checksum(frame);
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    frame[24] = 0;
    frame[25] = 0;
    let sum = checksum::fold(checksum::sum(&frame[14..34]));
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// An ARP frame (operation 1 request, 2 reply), by hand.
pub fn arp_frame(
    operation: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&operation.to_be_bytes());
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip.octets());
    f
}

/// A neighbour solicitation for `target` from `src`, to its solicited-node multicast address,
/// with a source link-layer address option; by hand, with its checksum.
pub fn neighbor_solicitation(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let dst = Ipv6Addr::from([
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    ]);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    if !src.is_unspecified() {
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&src_mac);
    }
    let pseudo = checksum::pseudo_header_v6(&src, &dst, 58, icmp.len() as u32);
    let sum = checksum::fold(pseudo + checksum::sum(&icmp));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let d = dst.octets();
    let mut f = vec![0x33, 0x33, d[12], d[13], d[14], d[15]];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&d);
    f.extend_from_slice(&icmp);
    f
}
