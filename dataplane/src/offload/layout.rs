//! Where the headers of an Ethernet + IPv4/IPv6 + TCP/UDP frame are: the one parser both the
//! segmenter and the coalescer use (header lengths always come from the frame itself).

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{
    self, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, ip_protocol,
};

/// Where the headers of an Ethernet + IP + TCP (or UDP) frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct L4Layout {
    /// Offset of the IP header (14, or 18 with an 802.1Q tag).
    pub(super) l3: usize,
    /// Offset of the TCP/UDP header.
    pub(super) l4: usize,
    /// Offset of the TCP/UDP payload (= all headers' length).
    pub(super) payload: usize,
    /// End of the IP packet (Ethernet padding after it is ignored).
    pub(super) end: usize,
    /// IPv6 (else IPv4).
    pub(super) v6: bool,
    /// UDP (else TCP).
    pub(super) udp: bool,
}

impl L4Layout {
    pub(super) fn protocol(&self) -> u8 {
        if self.udp {
            ip_protocol::UDP
        } else {
            ip_protocol::TCP
        }
    }
}

/// Parses Ethernet (optionally 802.1Q) + IPv4 (unfragmented) or IPv6 (TCP as next header) + TCP.
pub(super) fn parse_tcp(frame: &[u8]) -> Option<L4Layout> {
    parse_l4(frame).filter(|l| !l.udp)
}

/// [`parse_tcp`], or the same with UDP (whose length field must match the IP packet's).
pub(super) fn parse_l4(frame: &[u8]) -> Option<L4Layout> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let l3 = eth.header_len();
    let ip = frame.get(l3..)?;
    let (l4, end, v6, protocol) = match eth.ethertype() {
        EtherType::IPV4 => {
            let ip = Ipv4Packet::new_checked(ip).ok()?;
            if ip.is_fragment() {
                return None;
            }
            (
                l3 + ip.header_len(),
                l3 + usize::from(ip.total_len()),
                false,
                ip.next_header(),
            )
        }
        EtherType::IPV6 => {
            let ip = Ipv6Packet::new_checked(ip).ok()?;
            let l4 = l3 + wire::ipv6::HEADER_LEN;
            (
                l4,
                l4 + usize::from(ip.payload_len()),
                true,
                ip.next_header(),
            )
        }
        _ => return None,
    };
    let udp = match protocol {
        ip_protocol::UDP => true,
        ip_protocol::TCP => false,
        _ => return None,
    };
    let segment = frame.get(l4..end)?;
    let header_len = if udp {
        let datagram = UdpPacket::new_checked(segment).ok()?;
        if usize::from(datagram.len()) != segment.len() {
            return None;
        }
        wire::udp::HEADER_LEN
    } else {
        TcpPacket::new_checked(segment).ok()?.header_len()
    };
    Some(L4Layout {
        l3,
        l4,
        payload: l4 + header_len,
        end,
        v6,
        udp,
    })
}

pub(super) fn ipv4_addrs(frame: &[u8], layout: &L4Layout) -> (Ipv4Addr, Ipv4Addr) {
    let ip = Ipv4Packet::new_unchecked(&frame[layout.l3..]);
    (ip.src_addr(), ip.dst_addr())
}

pub(super) fn ipv6_addrs(frame: &[u8], layout: &L4Layout) -> (Ipv6Addr, Ipv6Addr) {
    let ip = Ipv6Packet::new_unchecked(&frame[layout.l3..]);
    (ip.src_addr(), ip.dst_addr())
}
