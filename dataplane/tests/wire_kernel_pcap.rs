//! Parses VXLAN traffic produced by the Linux kernel's own vxlan driver.
//!
//! Fixture `tests/fixtures/kernel_vxlan.pcap` was made (as root, Linux 6.18,
//! iproute2 6.1, tcpdump 4.99.3) with:
//!
//!     dataplane/tests/fixtures/make_kernel_vxlan_pcap.sh
//!
//! which, inside two throw-away netns joined by a veth (10.99.0.1 ↔ 10.99.0.2),
//! runs `vxlan id 4242 dstport 4789` devices (192.168.77.1 ↔ .2; side .1 with
//! `udpcsum`, side .2 without), pings twice and makes one TCP connection
//! 192.168.77.1:40000 → 192.168.77.2:8080 ("hello vxnet" / "HELLO VXNET"),
//! capturing the underlay with `tcpdump -w -c 40 udp port 4789`.
//!
//! Every frame is parsed with our views, checked against what the script set
//! up, and cross-checked field by field with etherparse.

use std::net::Ipv4Addr;

use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use vxnet_dataplane::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Icmpv4Packet,
    Ipv4Packet, Ipv4Repr, MacAddr, TcpPacket, UdpPacket, UdpRepr, VxlanPacket, VxlanRepr, icmpv4,
    ip_protocol, tcp_flags,
};

const PCAP: &[u8] = include_bytes!("fixtures/kernel_vxlan.pcap");

const UNDERLAY_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const UNDERLAY_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const UNDERLAY_MAC_A: MacAddr = MacAddr([0x02, 0x99, 0, 0, 0, 0x01]);
const UNDERLAY_MAC_B: MacAddr = MacAddr([0x02, 0x99, 0, 0, 0, 0x02]);
const INNER_A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const INNER_B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const INNER_MAC_A: MacAddr = MacAddr([0x02, 0x77, 0, 0, 0, 0x01]);
const INNER_MAC_B: MacAddr = MacAddr([0x02, 0x77, 0, 0, 0, 0x02]);
const VNI: u32 = 4242;

/// Minimal classic-pcap reader: 24-byte global header, then 16-byte record
/// headers (ts_sec, ts_frac, incl_len, orig_len) each followed by the frame.
fn pcap_frames(data: &[u8]) -> Vec<&[u8]> {
    assert!(data.len() >= 24, "short pcap");
    let magic = [data[0], data[1], data[2], data[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a classic pcap file: magic {magic:02x?}"),
    };
    let u32_at = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "link type must be LINKTYPE_ETHERNET");
    let mut frames = Vec::new();
    let mut at = 24;
    while at < data.len() {
        assert!(at + 16 <= data.len(), "truncated record header");
        let incl = u32_at(at + 8) as usize;
        let orig = u32_at(at + 12) as usize;
        assert_eq!(incl, orig, "capture was snapped");
        at += 16;
        frames.push(&data[at..at + incl]);
        at += incl;
    }
    frames
}

#[derive(Default, Debug)]
struct Seen {
    arp_request: bool,
    arp_reply: bool,
    echo_requests: Vec<u16>,
    echo_replies: Vec<u16>,
    echo_ident: Option<u16>,
    syn_seq: Option<u32>,
    synack: Option<(u32, u32)>,
    client_data: Option<u32>,
    server_data: bool,
    fin_a: bool,
    fin_b: bool,
    udp_csum_nonzero: usize,
    udp_csum_zero: usize,
}

#[test]
fn kernel_vxlan_capture() {
    let frames = pcap_frames(PCAP);
    assert!(frames.len() >= 14, "only {} frames", frames.len());
    let mut seen = Seen::default();
    for (i, frame) in frames.iter().enumerate() {
        check_frame(frame, &mut seen).unwrap_or_else(|e| panic!("frame {i}: {e}"));
    }
    assert!(seen.arp_request && seen.arp_reply, "{seen:?}");
    assert_eq!(seen.echo_requests, [1, 2]);
    assert_eq!(seen.echo_replies, [1, 2]);
    assert!(seen.syn_seq.is_some() && seen.synack.is_some(), "{seen:?}");
    assert!(seen.client_data.is_some() && seen.server_data, "{seen:?}");
    assert!(seen.fin_a && seen.fin_b, "{seen:?}");
    // Side A was configured with udpcsum, side B without.
    assert!(
        seen.udp_csum_nonzero > 0 && seen.udp_csum_zero > 0,
        "{seen:?}"
    );
}

fn check_frame(frame: &[u8], seen: &mut Seen) -> Result<(), String> {
    // ---- outer Ethernet / IPv4 / UDP -----------------------------------------
    let eth = EthernetFrame::new_checked(frame).map_err(|e| format!("eth: {e}"))?;
    assert_eq!(eth.ethertype(), EtherType::IPV4);
    assert_eq!(eth.vlan_id(), None);
    let from_a = eth.src_addr() == UNDERLAY_MAC_A;
    let (src, dst, dst_mac) = if from_a {
        (UNDERLAY_A, UNDERLAY_B, UNDERLAY_MAC_B)
    } else {
        assert_eq!(eth.src_addr(), UNDERLAY_MAC_B);
        (UNDERLAY_B, UNDERLAY_A, UNDERLAY_MAC_A)
    };
    assert_eq!(eth.dst_addr(), dst_mac);

    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|e| format!("outer ip: {e}"))?;
    assert!(ip.verify_checksum(), "outer IPv4 checksum");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (src, dst));
    assert_eq!(ip.next_header(), ip_protocol::UDP);
    assert_eq!(ip.header_len(), 20);
    assert!(!ip.is_fragment());
    assert_eq!(usize::from(ip.total_len()), eth.payload().len());

    let udp = UdpPacket::new_checked(ip.payload()).map_err(|e| format!("udp: {e}"))?;
    assert_eq!(udp.dst_port(), 4789);
    assert!(
        udp.src_port() >= 1024,
        "kernel picks a hashed ephemeral source port"
    );
    assert_eq!(usize::from(udp.len()), ip.payload().len());
    assert!(udp.verify_checksum_v4(src, dst), "outer UDP checksum");
    if from_a {
        assert_ne!(udp.checksum(), 0, "udpcsum side must checksum");
        seen.udp_csum_nonzero += 1;
    } else {
        assert_eq!(udp.checksum(), 0, "noudpcsum side sends 0");
        seen.udp_csum_zero += 1;
    }

    // ---- VXLAN ------------------------------------------------------------------
    let vx = VxlanPacket::new_checked(udp.payload()).map_err(|e| format!("vxlan: {e}"))?;
    assert_eq!(vx.flags(), 0x08);
    assert!(vx.has_vni_flag());
    assert_eq!(vx.vni(), VNI);
    assert_eq!(VxlanRepr::parse(&vx), Ok(VxlanRepr { vni: VNI }));

    // ---- our emit reproduces the kernel's outer headers byte for byte ----------
    let outer_len = 14 + 20 + 8 + 8;
    let mut re = frame[..outer_len].to_vec();
    re.fill(0);
    EthernetRepr::parse(&eth)
        .unwrap()
        .emit(&mut EthernetFrame::new_unchecked(&mut re[..]));
    let ip_repr = Ipv4Repr::parse(&ip).unwrap();
    ip_repr.emit(&mut Ipv4Packet::new_unchecked(&mut re[14..34]));
    let mut own_udp = ip.payload().to_vec();
    let mut u = UdpPacket::new_unchecked(&mut own_udp[..]);
    UdpRepr::parse(&udp)
        .unwrap()
        .emit(&mut u, udp.payload().len());
    if from_a {
        u.fill_checksum_v4(src, dst);
    }
    re[34..42].copy_from_slice(&own_udp[..8]);
    VxlanRepr { vni: VNI }.emit(&mut VxlanPacket::new_unchecked(&mut re[42..50]));
    assert_eq!(re, frame[..outer_len], "re-emitted outer headers differ");

    // ---- inner frame --------------------------------------------------------------
    let inner = EthernetFrame::new_checked(vx.payload()).map_err(|e| format!("inner eth: {e}"))?;
    crosscheck_etherparse(frame, vx.payload());
    let inner_from_a = inner.src_addr() == INNER_MAC_A;
    assert!(inner_from_a || inner.src_addr() == INNER_MAC_B);
    // The kernel vxlan device picks the underlay from the FDB; no learning tricks here.
    assert_eq!(inner_from_a, from_a, "inner and outer direction agree");
    let (isrc, idst) = if inner_from_a {
        (INNER_A, INNER_B)
    } else {
        (INNER_B, INNER_A)
    };

    match inner.ethertype() {
        EtherType::ARP => {
            let arp = ArpPacket::new_checked(inner.payload()).map_err(|e| format!("arp: {e}"))?;
            let repr = ArpRepr::parse(&arp).unwrap();
            assert_eq!(repr.sender_protocol_addr, isrc);
            assert_eq!(repr.target_protocol_addr, idst);
            assert_eq!(repr.sender_hardware_addr, inner.src_addr());
            match repr.operation {
                ArpOperation::Request => {
                    assert!(inner.dst_addr().is_broadcast());
                    assert!(repr.target_hardware_addr.is_zero());
                    seen.arp_request = true;
                }
                ArpOperation::Reply => {
                    assert_eq!(repr.target_hardware_addr, inner.dst_addr());
                    seen.arp_reply = true;
                }
                other => return Err(format!("unexpected ARP op {other:?}")),
            }
        }
        EtherType::IPV4 => {
            let ip =
                Ipv4Packet::new_checked(inner.payload()).map_err(|e| format!("inner ip: {e}"))?;
            assert!(ip.verify_checksum(), "inner IPv4 checksum");
            assert_eq!((ip.src_addr(), ip.dst_addr()), (isrc, idst));
            assert_eq!(ip.ttl(), 64);
            match ip.next_header() {
                ip_protocol::ICMP => check_icmp(&ip, inner_from_a, seen),
                ip_protocol::TCP => check_tcp(&ip, inner_from_a, seen),
                p => return Err(format!("unexpected inner protocol {p}")),
            }
        }
        other => return Err(format!("unexpected inner ethertype {other:?}")),
    }
    Ok(())
}

fn check_icmp(ip: &Ipv4Packet<&[u8]>, from_a: bool, seen: &mut Seen) {
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(), "inner ICMP checksum");
    assert_eq!(icmp.msg_code(), 0);
    assert_eq!(icmp.payload().len(), 56, "default ping payload");
    let ident = *seen.echo_ident.get_or_insert(icmp.echo_ident());
    assert_eq!(icmp.echo_ident(), ident);
    if from_a {
        assert_eq!(icmp.msg_type(), icmpv4::ECHO_REQUEST);
        seen.echo_requests.push(icmp.echo_seq_no());
    } else {
        assert_eq!(icmp.msg_type(), icmpv4::ECHO_REPLY);
        seen.echo_replies.push(icmp.echo_seq_no());
    }
}

fn check_tcp(ip: &Ipv4Packet<&[u8]>, from_a: bool, seen: &mut Seen) {
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(
        tcp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()),
        "inner TCP checksum"
    );
    let (sport, dport) = if from_a { (40000, 8080) } else { (8080, 40000) };
    assert_eq!((tcp.src_port(), tcp.dst_port()), (sport, dport));
    let f = tcp.flags();
    if tcp.syn() {
        assert!(tcp.header_len() > 20, "SYN carries options");
        // MSS option first (Linux order): kind 2, len 4.
        assert_eq!(&tcp.options()[..2], &[2, 4]);
        if from_a {
            assert_eq!(f, tcp_flags::SYN);
            seen.syn_seq = Some(tcp.seq_number());
        } else {
            assert_eq!(f, tcp_flags::SYN | tcp_flags::ACK);
            let syn = seen.syn_seq.expect("SYN before SYN-ACK");
            assert_eq!(tcp.ack_number(), syn.wrapping_add(1));
            seen.synack = Some((tcp.seq_number(), tcp.ack_number()));
        }
    } else if !tcp.payload().is_empty() {
        assert!(tcp.psh() && tcp.ack());
        if from_a {
            assert_eq!(tcp.payload(), b"hello vxnet");
            let syn = seen.syn_seq.expect("SYN before data");
            assert_eq!(tcp.seq_number(), syn.wrapping_add(1));
            seen.client_data = Some(tcp.seq_number());
        } else {
            assert_eq!(tcp.payload(), b"HELLO VXNET");
            let client = seen.client_data.expect("request before response");
            assert_eq!(tcp.ack_number(), client.wrapping_add(11));
            let (srv_isn, _) = seen.synack.expect("SYN-ACK before data");
            assert_eq!(tcp.seq_number(), srv_isn.wrapping_add(1));
            seen.server_data = true;
        }
    }
    if tcp.fin() {
        if from_a {
            seen.fin_a = true;
        } else {
            seen.fin_b = true;
        }
    }
    assert!(!tcp.rst(), "clean close");
}

/// The same frame through etherparse: outer headers, then the inner frame.
fn crosscheck_etherparse(frame: &[u8], inner: &[u8]) {
    let ep = SlicedPacket::from_ethernet(frame).expect("etherparse outer");
    let Some(LinkSlice::Ethernet2(e)) = &ep.link else {
        panic!("etherparse: no ethernet")
    };
    let Some(NetSlice::Ipv4(ip)) = &ep.net else {
        panic!("etherparse: no ipv4")
    };
    let Some(TransportSlice::Udp(udp)) = &ep.transport else {
        panic!("etherparse: no udp")
    };
    let our = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(our.src_addr().0, e.source());
    assert_eq!(our.dst_addr().0, e.destination());
    let our_ip = Ipv4Packet::new_checked(our.payload()).unwrap();
    let h = ip.header();
    assert_eq!(our_ip.ident(), h.identification());
    assert_eq!(our_ip.ttl(), h.ttl());
    assert_eq!(our_ip.dont_frag(), h.dont_fragment());
    assert_eq!(our_ip.checksum(), h.to_header().calc_header_checksum());
    let our_udp = UdpPacket::new_checked(our_ip.payload()).unwrap();
    assert_eq!(our_udp.src_port(), udp.source_port());
    assert_eq!(our_udp.dst_port(), udp.destination_port());
    assert_eq!(our_udp.len(), udp.length());
    if udp.checksum() != 0 {
        let expect = udp
            .to_header()
            .calc_checksum_ipv4_raw(h.source(), h.destination(), udp.payload())
            .unwrap();
        assert_eq!(our_udp.checksum(), expect);
    }
    // etherparse has no VXLAN: our VXLAN payload must be its UDP payload minus 8.
    assert_eq!(&udp.payload()[8..], inner);

    let ep = SlicedPacket::from_ethernet(inner).expect("etherparse inner");
    let our = EthernetFrame::new_checked(inner).unwrap();
    let Some(LinkSlice::Ethernet2(e)) = &ep.link else {
        panic!("etherparse: no inner ethernet")
    };
    assert_eq!(our.src_addr().0, e.source());
    assert_eq!(our.dst_addr().0, e.destination());
    assert_eq!(our.ethertype().0, e.ether_type().0);
    match &ep.net {
        Some(NetSlice::Arp(a)) => {
            let p = ArpPacket::new_checked(our.payload()).unwrap();
            assert_eq!(u16::from(p.operation()), a.operation().0);
            assert_eq!(&p.sender_hardware_addr().0[..], a.sender_hw_addr());
            assert_eq!(
                &p.sender_protocol_addr().octets()[..],
                a.sender_protocol_addr()
            );
            assert_eq!(&p.target_hardware_addr().0[..], a.target_hw_addr());
            assert_eq!(
                &p.target_protocol_addr().octets()[..],
                a.target_protocol_addr()
            );
        }
        Some(NetSlice::Ipv4(ip)) => {
            let p = Ipv4Packet::new_checked(our.payload()).unwrap();
            let h = ip.header();
            assert_eq!(p.src_addr(), h.source_addr());
            assert_eq!(p.dst_addr(), h.destination_addr());
            assert_eq!(p.total_len(), h.total_len());
            assert_eq!(p.ident(), h.identification());
            assert_eq!(p.dont_frag(), h.dont_fragment());
            assert_eq!(p.checksum(), h.to_header().calc_header_checksum());
            match &ep.transport {
                Some(TransportSlice::Icmpv4(i)) => {
                    let q = Icmpv4Packet::new_checked(p.payload()).unwrap();
                    assert_eq!((q.msg_type(), q.msg_code()), (i.type_u8(), i.code_u8()));
                    assert_eq!(
                        q.checksum(),
                        i.header().icmp_type.calc_checksum(i.payload())
                    );
                    assert_eq!(q.payload(), i.payload());
                }
                Some(TransportSlice::Tcp(t)) => {
                    let q = TcpPacket::new_checked(p.payload()).unwrap();
                    assert_eq!(q.seq_number(), t.sequence_number());
                    assert_eq!(q.ack_number(), t.acknowledgment_number());
                    assert_eq!(q.header_len(), usize::from(t.data_offset()) * 4);
                    assert_eq!(q.window_len(), t.window_size());
                    assert_eq!(q.options(), t.options());
                    assert_eq!(q.payload(), t.payload());
                    assert_eq!(
                        q.checksum(),
                        t.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
                    );
                }
                other => panic!("etherparse: unexpected inner transport {other:?}"),
            }
        }
        other => panic!("etherparse: unexpected inner net {other:?}"),
    }
}

#[test]
fn fixture_is_small() {
    // Keeps the committed fixture reviewable.
    assert!(PCAP.len() < 30 * 1024);
}
