//! Cross-checks `vxnet_dataplane::wire` against an independent implementation,
//! etherparse 0.21, in both directions:
//!
//! * etherparse's `PacketBuilder` builds a frame → our views read the same
//!   fields and accept the checksums etherparse computed (and compute the same);
//! * our Reprs emit a frame (incl. a full VXLAN encapsulation) → etherparse
//!   slices it and reads the same fields and valid checksums.
//!
//! etherparse has no VXLAN type, so VXLAN is checked by hand and the inner frame
//! handed to etherparse.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation as EpArpOp, ArpPacket as EpArpPacket, EtherType as EpEtherType,
    Icmpv6Type, IpDscp, IpEcn, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options,
    LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice, UdpHeader,
    VlanId,
};
use proptest::prelude::*;
use vxnet_dataplane::wire::{
    ArpOperation, ArpPacket, EtherType, EthernetFrame, EthernetRepr, Icmpv4Packet, Icmpv6Packet,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, MacAddr, NdiscNeighborAdvertRepr, TcpPacket,
    TcpRepr, UdpPacket, UdpRepr, VxlanPacket, VxlanRepr, icmpv6, ip_protocol, ndisc_flags,
    tcp_flags,
};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn sliced(frame: &[u8]) -> SlicedPacket<'_> {
    SlicedPacket::from_ethernet(frame).expect("etherparse must accept the frame")
}

/// Our full read of an Ethernet/IPv4/UDP frame, checked against etherparse.
fn check_ipv4_udp(frame: &[u8]) {
    let ep = sliced(frame);
    let Some(LinkSlice::Ethernet2(eth)) = &ep.link else {
        panic!("no ethernet")
    };
    let Some(NetSlice::Ipv4(ip)) = &ep.net else {
        panic!("no ipv4")
    };
    let Some(TransportSlice::Udp(udp)) = &ep.transport else {
        panic!("no udp")
    };
    let iph = ip.header();

    let f = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(f.dst_addr().0, eth.destination());
    assert_eq!(f.src_addr().0, eth.source());
    assert_eq!(f.ethertype().0, eth.ether_type().0);

    let p = Ipv4Packet::new_checked(f.payload()).unwrap();
    assert_eq!(p.header_len(), usize::from(iph.ihl()) * 4);
    assert_eq!(p.dscp_ecn(), (iph.dcp().value() << 2) | iph.ecn().value());
    assert_eq!(p.total_len(), iph.total_len());
    assert_eq!(p.ident(), iph.identification());
    assert_eq!(p.dont_frag(), iph.dont_fragment());
    assert_eq!(p.more_frags(), iph.more_fragments());
    assert_eq!(p.frag_offset(), iph.fragments_offset().value() * 8);
    assert_eq!(p.ttl(), iph.ttl());
    assert_eq!(p.next_header(), iph.protocol().0);
    assert_eq!(p.checksum(), iph.header_checksum());
    assert_eq!(p.src_addr(), iph.source_addr());
    assert_eq!(p.dst_addr(), iph.destination_addr());
    assert_eq!(p.options(), iph.options());
    assert!(p.verify_checksum());
    assert_eq!(iph.to_header().calc_header_checksum(), p.checksum());

    let u = UdpPacket::new_checked(p.payload()).unwrap();
    assert_eq!(u.src_port(), udp.source_port());
    assert_eq!(u.dst_port(), udp.destination_port());
    assert_eq!(u.len(), udp.length());
    assert_eq!(u.checksum(), udp.checksum());
    assert_eq!(u.payload(), udp.payload());
    let expect = udp
        .to_header()
        .calc_checksum_ipv4_raw(iph.source(), iph.destination(), udp.payload())
        .unwrap();
    assert_eq!(
        u.verify_checksum_v4(p.src_addr(), p.dst_addr()),
        u.checksum() == expect || u.checksum() == 0
    );

    // Recomputing with our code gives etherparse's value.
    let mut own = p.payload().to_vec();
    let mut q = UdpPacket::new_checked(&mut own[..]).unwrap();
    q.fill_checksum_v4(p.src_addr(), p.dst_addr());
    assert_eq!(q.checksum(), expect);
}

#[test]
fn etherparse_ipv4_udp() {
    let payload = b"overlay payload of odd length";
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 1, 2, 3], [192, 168, 200, 7], 17)
        .udp(40001, 4789);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).unwrap();
    check_ipv4_udp(&frame);

    // Trailing Ethernet padding is not part of the IP packet.
    frame.extend_from_slice(&[0; 9]);
    check_ipv4_udp(&frame);
}

#[test]
fn etherparse_ipv4_with_options_and_fragment_fields() {
    let mut ip = Ipv4Header::new(0, 33, IpNumber::UDP, [1, 2, 3, 4], [5, 6, 7, 8]).unwrap();
    ip.dscp = IpDscp::try_new(46).unwrap();
    ip.ecn = IpEcn::try_new(1).unwrap();
    ip.identification = 0xbeef;
    ip.dont_fragment = true;
    ip.options = Ipv4Options::try_from(&[0x94, 0x04, 0x00, 0x00][..]).unwrap(); // router alert
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
        .udp(53, 53);
    let mut frame = Vec::new();
    builder.write(&mut frame, &[1, 2, 3]).unwrap();
    check_ipv4_udp(&frame);
    let p = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert_eq!(p.header_len(), 24);
    assert_eq!(p.dscp_ecn(), (46 << 2) | 1);
}

#[test]
fn etherparse_vlan_ipv6_tcp() {
    let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(VlanId::try_new(777).unwrap())
        .ipv6(src, dst, 61)
        .tcp(443, 51000, 0xdead_beef, 1024)
        .ack(0x0102_0304)
        .psh()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1400),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(7),
            TcpOptionElement::Timestamp(1, 2),
        ])
        .unwrap();
    let payload = b"GET / HTTP/1.1\r\n";
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();

    let ep = sliced(&frame);
    let Some(NetSlice::Ipv6(ip)) = &ep.net else {
        panic!()
    };
    let Some(TransportSlice::Tcp(tcp)) = &ep.transport else {
        panic!()
    };

    let f = EthernetFrame::new_checked(&frame[..]).unwrap();
    assert_eq!(f.vlan_id(), Some(777));
    assert_eq!(ep.vlan_ids().first().map(|v| v.value()), Some(777));
    assert_eq!(f.ethertype(), EtherType::IPV6);
    assert_eq!(f.header_len(), 18);

    let p = Ipv6Packet::new_checked(f.payload()).unwrap();
    let h = ip.header();
    assert_eq!(p.traffic_class(), h.traffic_class());
    assert_eq!(p.flow_label(), h.flow_label().value());
    assert_eq!(p.payload_len(), h.payload_length());
    assert_eq!(p.next_header(), h.next_header().0);
    assert_eq!(p.hop_limit(), h.hop_limit());
    assert_eq!(p.src_addr(), h.source_addr());
    assert_eq!(p.dst_addr(), h.destination_addr());

    let t = TcpPacket::new_checked(p.payload()).unwrap();
    assert_eq!(t.src_port(), tcp.source_port());
    assert_eq!(t.dst_port(), tcp.destination_port());
    assert_eq!(t.seq_number(), tcp.sequence_number());
    assert_eq!(t.ack_number(), tcp.acknowledgment_number());
    assert_eq!(t.header_len(), usize::from(tcp.data_offset()) * 4);
    assert_eq!(
        (
            t.fin(),
            t.syn(),
            t.rst(),
            t.psh(),
            t.ack(),
            t.urg(),
            t.ece(),
            t.cwr()
        ),
        (
            tcp.fin(),
            tcp.syn(),
            tcp.rst(),
            tcp.psh(),
            tcp.ack(),
            tcp.urg(),
            tcp.ece(),
            tcp.cwr()
        )
    );
    assert_eq!(t.flags(), tcp_flags::ACK | tcp_flags::PSH);
    assert_eq!(t.window_len(), tcp.window_size());
    assert_eq!(t.urgent_at(), tcp.urgent_pointer());
    assert_eq!(t.options(), tcp.options());
    assert_eq!(t.payload(), payload);
    assert_eq!(t.checksum(), tcp.checksum());
    assert_eq!(t.checksum(), tcp.calc_checksum_ipv6(src, dst).unwrap());
    assert!(t.verify_checksum_v6(&p.src_addr(), &p.dst_addr()));
}

#[test]
fn etherparse_ipv4_tcp_and_icmpv4() {
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([192, 168, 77, 1], [192, 168, 77, 2], 64)
        .tcp(40000, 8080, 1, 502)
        .syn()
        .fin()
        .rst()
        .urg(9)
        .ece()
        .cwr();
    let mut frame = Vec::new();
    builder.write(&mut frame, b"x").unwrap();
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        t.flags(),
        tcp_flags::SYN
            | tcp_flags::FIN
            | tcp_flags::RST
            | tcp_flags::URG
            | tcp_flags::ECE
            | tcp_flags::CWR
    );
    assert_eq!(t.urgent_at(), 9);
    assert!(t.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));

    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([192, 168, 77, 1], [192, 168, 77, 2], 64)
        .icmpv4_echo_request(0x1234, 77);
    let mut frame = Vec::new();
    builder.write(&mut frame, &[0xAB; 56]).unwrap();
    let ep = sliced(&frame);
    let Some(TransportSlice::Icmpv4(icmp)) = &ep.transport else {
        panic!()
    };
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert_eq!(ip.next_header(), ip_protocol::ICMP);
    let i = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(i.msg_type(), icmp.type_u8());
    assert_eq!(i.msg_code(), icmp.code_u8());
    assert_eq!(i.checksum(), icmp.checksum());
    assert_eq!((i.echo_ident(), i.echo_seq_no()), (0x1234, 77));
    assert_eq!(i.payload(), icmp.payload());
    assert!(i.verify_checksum());
}

#[test]
fn etherparse_arp() {
    let arp = EpArpPacket::new(
        ArpHardwareId::ETHERNET,
        EpEtherType::IPV4,
        EpArpOp::REPLY,
        &MAC_A,
        &[192, 168, 77, 2],
        &MAC_B,
        &[192, 168, 77, 1],
    )
    .unwrap();
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B).arp(arp);
    let mut frame = Vec::new();
    builder.write(&mut frame).unwrap();
    let ep = sliced(&frame);
    let Some(NetSlice::Arp(a)) = &ep.net else {
        panic!("no arp")
    };

    let f = EthernetFrame::new_checked(&frame[..]).unwrap();
    assert_eq!(f.ethertype(), EtherType::ARP);
    let p = ArpPacket::new_checked(f.payload()).unwrap();
    assert_eq!(p.operation(), ArpOperation::Reply);
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

#[test]
fn etherparse_icmpv6_ndisc() {
    let src: [u8; 16] = "fe80::a".parse::<Ipv6Addr>().unwrap().octets();
    let dst: [u8; 16] = "ff02::1:ff00:b".parse::<Ipv6Addr>().unwrap().octets();
    let target: Ipv6Addr = "fe80::b".parse().unwrap();
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&MAC_A);
    let builder = PacketBuilder::ethernet2(MAC_A, [0x33, 0x33, 0xff, 0, 0, 0x0b])
        .ipv6(src, dst, 255)
        .icmpv6(Icmpv6Type::NeighborSolicitation);
    let mut frame = Vec::new();
    builder.write(&mut frame, &body).unwrap();
    let ep = sliced(&frame);
    let Some(TransportSlice::Icmpv6(icmp)) = &ep.transport else {
        panic!()
    };
    assert!(icmp.is_checksum_valid(src, dst));

    let f = EthernetFrame::new_checked(&frame[..]).unwrap();
    assert!(f.dst_addr().is_multicast());
    let ip = Ipv6Packet::new_checked(f.payload()).unwrap();
    let p = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(p.msg_type(), icmpv6::NEIGHBOR_SOLICIT);
    assert_eq!(p.checksum(), icmp.checksum());
    assert!(p.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
    assert_eq!(p.ndisc_target_addr(), Some(target));
    assert_eq!(p.source_link_layer_addr(), Some(MacAddr(MAC_A)));

    // The other direction: our NA, checked by etherparse.
    let na = NdiscNeighborAdvertRepr {
        flags: ndisc_flags::SOLICITED | ndisc_flags::OVERRIDE,
        target_addr: target,
        target_link_layer_addr: Some(MacAddr(MAC_B)),
    };
    let (na_src, na_dst) = (target, ip.src_addr());
    let mut frame = vec![0u8; 14 + 40 + na.buffer_len()];
    EthernetRepr {
        src_addr: MacAddr(MAC_B),
        dst_addr: MacAddr(MAC_A),
        ethertype: EtherType::IPV6,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    Ipv6Repr {
        src_addr: na_src,
        dst_addr: na_dst,
        next_header: ip_protocol::ICMPV6,
        payload_len: na.buffer_len(),
        hop_limit: 255,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut frame[14..]));
    na.emit(
        &mut Icmpv6Packet::new_unchecked(&mut frame[54..]),
        &na_src,
        &na_dst,
    );
    let ep = sliced(&frame);
    let Some(TransportSlice::Icmpv6(icmp)) = &ep.transport else {
        panic!()
    };
    assert!(icmp.is_checksum_valid(na_src.octets(), na_dst.octets()));
    let Icmpv6Type::NeighborAdvertisement(h) = icmp.icmp_type() else {
        panic!("{:?}", icmp.icmp_type())
    };
    assert!(h.solicited && h.r#override && !h.router);
    assert_eq!(&icmp.payload()[..16], &target.octets());
}

/// Builds Ethernet/IPv4/UDP/VXLAN/<inner> with our Reprs.
fn our_vxlan_frame(
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    sport: u16,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + 8 + inner.len();
    let mut frame = vec![0u8; 14 + 20 + udp_len];
    EthernetRepr {
        src_addr: MacAddr(MAC_A),
        dst_addr: MacAddr(MAC_B),
        ethertype: EtherType::IPV4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    Ipv4Repr {
        src_addr: outer_src,
        dst_addr: outer_dst,
        next_header: ip_protocol::UDP,
        payload_len: udp_len,
        ttl: 64,
        dont_frag: true,
        ident: 0,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..34]));
    let mut udp = UdpPacket::new_unchecked(&mut frame[34..]);
    UdpRepr {
        src_port: sport,
        dst_port: 4789,
    }
    .emit(&mut udp, 8 + inner.len());
    let mut vx = VxlanPacket::new_unchecked(udp.payload_mut());
    VxlanRepr { vni }.emit(&mut vx);
    vx.payload_mut().copy_from_slice(inner);
    udp.fill_checksum_v4(outer_src, outer_dst);
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// etherparse builds with random header values; we read the same.
    #[test]
    fn etherparse_built_ipv4_udp(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), ttl in any::<u8>(),
                                 sport in any::<u16>(), dport in any::<u16>(),
                                 payload in proptest::collection::vec(any::<u8>(), 0..200), pad in 0usize..20) {
        let builder = PacketBuilder::ethernet2(MAC_B, MAC_A).ipv4(src, dst, ttl).udp(sport, dport);
        let mut frame = Vec::new();
        builder.write(&mut frame, &payload).unwrap();
        frame.resize(frame.len() + pad, 0);
        check_ipv4_udp(&frame);
    }

    #[test]
    fn etherparse_built_ipv6_tcp(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), hl in any::<u8>(),
                                 sport in any::<u16>(), dport in any::<u16>(), seq in any::<u32>(),
                                 ack in any::<u32>(), win in any::<u16>(),
                                 payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let builder = PacketBuilder::ethernet2(MAC_B, MAC_A).ipv6(src, dst, hl).tcp(sport, dport, seq, win).ack(ack);
        let mut frame = Vec::new();
        builder.write(&mut frame, &payload).unwrap();
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        prop_assert_eq!(ip.hop_limit(), hl);
        prop_assert_eq!(ip.next_header(), ip_protocol::TCP);
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        prop_assert_eq!((t.src_port(), t.dst_port(), t.seq_number(), t.ack_number(), t.window_len()),
                        (sport, dport, seq, ack, win));
        prop_assert!(t.ack() && !t.syn());
        prop_assert_eq!(t.payload(), &payload[..]);
        prop_assert!(t.verify_checksum_v6(&Ipv6Addr::from(src), &Ipv6Addr::from(dst)));
        // Our fill reproduces etherparse's checksum.
        let mut own = ip.payload().to_vec();
        let mut q = TcpPacket::new_checked(&mut own[..]).unwrap();
        q.fill_checksum_v6(&Ipv6Addr::from(src), &Ipv6Addr::from(dst));
        prop_assert_eq!(q.checksum(), t.checksum());
    }

    /// We build a VXLAN frame with random values; etherparse reads the same,
    /// including the inner TCP segment.
    #[test]
    fn our_vxlan_read_by_etherparse(osrc in any::<[u8; 4]>(), odst in any::<[u8; 4]>(), sport in 1024u16..,
                                    vni in 0u32..=0xFF_FFFF, isrc in any::<[u8; 4]>(), idst in any::<[u8; 4]>(),
                                    seq in any::<u32>(), flags in any::<u8>(),
                                    payload in proptest::collection::vec(any::<u8>(), 0..100)) {
        // Inner Ethernet/IPv4/TCP, also with our Reprs.
        let mut inner = vec![0u8; 14 + 20 + 20 + payload.len()];
        EthernetRepr { src_addr: MacAddr(MAC_B), dst_addr: MacAddr(MAC_A), ethertype: EtherType::IPV4 }
            .emit(&mut EthernetFrame::new_unchecked(&mut inner[..]));
        let (isrc, idst) = (Ipv4Addr::from(isrc), Ipv4Addr::from(idst));
        Ipv4Repr { src_addr: isrc, dst_addr: idst, next_header: ip_protocol::TCP, payload_len: 20 + payload.len(),
                   ttl: 63, dont_frag: false, ident: 42 }
            .emit(&mut Ipv4Packet::new_unchecked(&mut inner[14..]));
        let mut t = TcpPacket::new_unchecked(&mut inner[34..]);
        TcpRepr { src_port: 40000, dst_port: 80, seq_number: seq, ack_number: 0, flags, window_len: 9 }.emit(&mut t);
        t.payload_mut().copy_from_slice(&payload);
        t.fill_checksum_v4(isrc, idst);

        let (osrc, odst) = (Ipv4Addr::from(osrc), Ipv4Addr::from(odst));
        let frame = our_vxlan_frame(osrc, odst, sport, vni, &inner);
        let ep = sliced(&frame);
        let Some(NetSlice::Ipv4(ip)) = &ep.net else { panic!() };
        let Some(TransportSlice::Udp(udp)) = &ep.transport else { panic!() };
        prop_assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
        prop_assert!(ip.header().dont_fragment());
        prop_assert_eq!(ip.header().source_addr(), osrc);
        prop_assert_eq!((udp.source_port(), udp.destination_port()), (sport, 4789));
        let expect = UdpHeader::with_ipv4_checksum(sport, 4789, &ip.header().to_header(), udp.payload()).unwrap().checksum;
        prop_assert_eq!(udp.checksum(), expect);
        // VXLAN by hand: I flag, VNI, reserved zero.
        let vx = udp.payload();
        prop_assert_eq!(&vx[..4], &[0x08, 0, 0, 0]);
        prop_assert_eq!(u32::from_be_bytes([0, vx[4], vx[5], vx[6]]), vni);
        prop_assert_eq!(vx[7], 0);
        let iep = sliced(&vx[8..]);
        let Some(NetSlice::Ipv4(iip)) = &iep.net else { panic!() };
        let Some(TransportSlice::Tcp(tcp)) = &iep.transport else { panic!() };
        prop_assert_eq!(iip.header().identification(), 42);
        prop_assert_eq!((iip.header().source_addr(), iip.header().destination_addr()), (isrc, idst));
        prop_assert_eq!(tcp.sequence_number(), seq);
        prop_assert_eq!(tcp.slice()[13], flags);
        prop_assert_eq!(tcp.payload(), &payload[..]);
        prop_assert_eq!(tcp.calc_checksum_ipv4(isrc.octets(), idst.octets()).unwrap(), tcp.checksum());
    }
}
