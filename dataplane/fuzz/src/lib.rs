//! Shared bodies of the `wire_*` fuzz targets: validate untrusted bytes with
//! `new_checked`, call every getter, round-trip the Repr, then abuse the
//! setters and call every getter again. Any panic is a bug.
//!
//! `dataplane/tests/wire_props.rs` includes this file as a module
//! (`#[path = "../fuzz/src/lib.rs"]`) and drives the same functions with
//! proptest, so the fuzz bodies are compiled and run on stable too.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use vxnet_dataplane::offload::{
    CoalescedFrame, Coalescer, Origin, SegmentBatch, complete_checksum, segment_tcp,
};
use vxnet_dataplane::wire::virtio_net_hdr::gso_type;
use vxnet_dataplane::wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    Icmpv6Packet, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, MacAddr, NdiscNeighborAdvertRepr,
    NdiscNeighborSolicitRepr, TcpPacket, TcpRepr, UdpPacket, UdpRepr, VirtioNetHdr,
    VirtioNetHdrRepr, VxlanPacket, VxlanRepr,
};

const SRC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const DST6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A byte of `data` (or 0), to derive setter arguments from the input.
fn byte(data: &[u8], i: usize) -> u8 {
    data.get(i).copied().unwrap_or(0)
}

fn word(data: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([byte(data, i), byte(data, i + 1)])
}

/// Ethernet: getters, repr round trip, setter abuse.
pub fn ethernet(data: &[u8]) {
    let Ok(f) = EthernetFrame::new_checked(data) else {
        return;
    };
    let getters = |f: &EthernetFrame<&mut [u8]>| {
        black_box((f.dst_addr(), f.src_addr(), f.vlan_id(), f.ethertype()));
        black_box((f.header_len(), f.payload()));
    };
    black_box((f.dst_addr(), f.src_addr(), f.vlan_id(), f.ethertype()));
    assert_eq!(f.header_len() + f.payload().len(), data.len());
    assert_eq!(f.vlan_id().is_some(), f.header_len() == 18);
    let repr = EthernetRepr::parse(&f).expect("checked frame must parse");
    if repr.ethertype != EtherType::VLAN {
        // Untagged re-emit; a VLAN ethertype would need a tag to round-trip.
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let again = EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(again, repr);
    }
    let mut v = data.to_vec();
    let mut f = EthernetFrame::new_checked(&mut v[..]).unwrap();
    f.set_ethertype(EtherType::VLAN);
    getters(&f);
    f.set_dst_addr(MacAddr::BROADCAST);
    f.set_src_addr(MacAddr::ZERO);
    f.set_ethertype(EtherType(word(data, 0)));
    getters(&f);
    black_box(f.payload_mut());
}

/// ARP: getters and an exact 28-byte repr round trip.
pub fn arp(data: &[u8]) {
    let Ok(p) = ArpPacket::new_checked(data) else {
        return;
    };
    black_box((
        p.hardware_type(),
        p.protocol_type(),
        p.hardware_len(),
        p.protocol_len(),
        p.operation(),
        p.sender_hardware_addr(),
        p.sender_protocol_addr(),
        p.target_hardware_addr(),
        p.target_protocol_addr(),
        p.payload(),
    ));
    let repr = ArpRepr::parse(&p).expect("checked packet must parse");
    let mut buf = [0u8; ArpRepr::LEN];
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
    assert_eq!(&buf[..], &data[..ArpRepr::LEN]);
}

fn ipv4_getters<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) {
    black_box((
        p.version(),
        p.header_len(),
        p.dscp_ecn(),
        p.total_len(),
        p.ident(),
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.is_fragment(),
        p.ttl(),
        p.next_header(),
        p.checksum(),
        p.src_addr(),
        p.dst_addr(),
        p.verify_checksum(),
        p.options(),
        p.payload(),
    ));
}

/// IPv4: getters, repr round trip, fill/verify, setter abuse.
pub fn ipv4(data: &[u8]) {
    let Ok(p) = Ipv4Packet::new_checked(data) else {
        return;
    };
    ipv4_getters(&p);
    assert_eq!(
        p.header_len() + p.payload().len(),
        usize::from(p.total_len())
    );
    let repr = Ipv4Repr::parse(&p).expect("checked packet must parse");
    let mut buf = vec![0u8; repr.total_len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
    let q = Ipv4Packet::new_checked(&buf[..]).unwrap();
    assert!(q.verify_checksum());
    assert_eq!(Ipv4Repr::parse(&q).unwrap(), repr);

    let mut v = data.to_vec();
    let mut p = Ipv4Packet::new_checked(&mut v[..]).unwrap();
    p.fill_checksum();
    assert!(p.verify_checksum());
    p.set_total_len(word(data, 0));
    p.set_header_len(usize::from(byte(data, 2)));
    p.set_flags_and_frag_offset(true, true, word(data, 3));
    p.set_frag_offset(word(data, 5));
    p.set_dont_frag(false);
    p.set_more_frags(false);
    p.set_version(byte(data, 7));
    ipv4_getters(&p);
    black_box(p.payload_mut());
    p.fill_checksum();
}

/// IPv6: getters, repr round trip, setter abuse.
pub fn ipv6(data: &[u8]) {
    let Ok(p) = Ipv6Packet::new_checked(data) else {
        return;
    };
    let getters = |p: &Ipv6Packet<&mut [u8]>| {
        black_box((
            p.version(),
            p.traffic_class(),
            p.flow_label(),
            p.payload_len(),
            p.next_header(),
            p.hop_limit(),
            p.src_addr(),
            p.dst_addr(),
            p.payload(),
        ));
    };
    assert_eq!(p.payload().len(), usize::from(p.payload_len()));
    let repr = Ipv6Repr::parse(&p).expect("checked packet must parse");
    let mut buf = vec![0u8; repr.total_len()];
    repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
    assert_eq!(
        Ipv6Repr::parse(&Ipv6Packet::new_checked(&buf[..]).unwrap()).unwrap(),
        repr
    );
    let mut v = data.to_vec();
    let mut p = Ipv6Packet::new_checked(&mut v[..]).unwrap();
    getters(&p);
    p.set_payload_len(word(data, 0));
    p.set_flow_label(u32::from(word(data, 2)) << 8);
    p.set_traffic_class(byte(data, 4));
    p.set_version(byte(data, 5));
    p.set_hop_limit(0);
    p.set_next_header(59);
    p.set_src_addr(SRC6);
    p.set_dst_addr(DST6);
    getters(&p);
    black_box(p.payload_mut());
}

/// UDP: getters, checksums over both IP versions, repr round trip, setter abuse.
pub fn udp(data: &[u8]) {
    let Ok(p) = UdpPacket::new_checked(data) else {
        return;
    };
    let getters = |p: &UdpPacket<&mut [u8]>| {
        black_box((
            p.src_port(),
            p.dst_port(),
            p.len(),
            p.checksum(),
            p.payload(),
            p.verify_checksum_v4(SRC4, DST4),
            p.verify_checksum_v6(&SRC6, &DST6),
        ));
    };
    assert_eq!(p.payload().len() + 8, usize::from(p.len()));
    let repr = UdpRepr::parse(&p).expect("checked packet must parse");
    let mut buf = vec![0u8; repr.buffer_len() + p.payload().len()];
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut buf[..]),
        p.payload().len(),
    );
    assert_eq!(
        UdpRepr::parse(&UdpPacket::new_checked(&buf[..]).unwrap()).unwrap(),
        repr
    );
    let mut v = data.to_vec();
    let mut p = UdpPacket::new_checked(&mut v[..]).unwrap();
    getters(&p);
    p.fill_checksum_v4(SRC4, DST4);
    assert!(p.verify_checksum_v4(SRC4, DST4));
    p.fill_checksum_v6(&SRC6, &DST6);
    assert!(p.verify_checksum_v6(&SRC6, &DST6));
    p.set_len(word(data, 0));
    p.set_src_port(1);
    p.set_dst_port(2);
    getters(&p);
    black_box(p.payload_mut());
    p.fill_checksum_v4(SRC4, DST4);
}

/// TCP: getters, checksums, repr round trip, setter abuse.
pub fn tcp(data: &[u8]) {
    let Ok(p) = TcpPacket::new_checked(data) else {
        return;
    };
    let getters = |p: &TcpPacket<&mut [u8]>| {
        black_box((
            p.src_port(),
            p.dst_port(),
            p.seq_number(),
            p.ack_number(),
            p.header_len(),
            p.flags(),
            (
                p.fin(),
                p.syn(),
                p.rst(),
                p.psh(),
                p.ack(),
                p.urg(),
                p.ece(),
                p.cwr(),
            ),
            p.window_len(),
            p.checksum(),
            p.urgent_at(),
            p.options(),
            p.payload(),
            p.verify_checksum_v4(SRC4, DST4),
            p.verify_checksum_v6(&SRC6, &DST6),
        ));
    };
    assert_eq!(p.header_len() + p.payload().len(), data.len());
    let repr = TcpRepr::parse(&p).expect("checked packet must parse");
    let mut buf = [0u8; 20];
    repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]));
    assert_eq!(
        TcpRepr::parse(&TcpPacket::new_checked(&buf[..]).unwrap()).unwrap(),
        repr
    );
    let mut v = data.to_vec();
    let mut p = TcpPacket::new_checked(&mut v[..]).unwrap();
    getters(&p);
    p.fill_checksum_v4(SRC4, DST4);
    assert!(p.verify_checksum_v4(SRC4, DST4));
    p.fill_checksum_v6(&SRC6, &DST6);
    assert!(p.verify_checksum_v6(&SRC6, &DST6));
    p.set_header_len(usize::from(byte(data, 0)));
    p.set_flags(byte(data, 1));
    p.set_seq_number(u32::from(word(data, 2)));
    p.set_ack_number(7);
    p.set_window_len(word(data, 4));
    p.set_urgent_at(1);
    getters(&p);
    black_box(p.options_mut());
    black_box(p.payload_mut());
}

/// ICMPv4: getters, checksum, repr round trip of the 8-byte header.
pub fn icmpv4(data: &[u8]) {
    let Ok(p) = Icmpv4Packet::new_checked(data) else {
        return;
    };
    black_box((
        p.msg_type(),
        p.msg_code(),
        p.checksum(),
        p.verify_checksum(),
        p.echo_ident(),
        p.echo_seq_no(),
        p.next_hop_mtu(),
        p.rest_of_header(),
        p.payload(),
    ));
    let repr = Icmpv4Repr::parse(&p).expect("checked packet must parse");
    let mut buf = [0u8; 8];
    repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..2], data[..2]);
    assert_eq!(buf[4..8], data[4..8]);
    let mut v = data.to_vec();
    let mut p = Icmpv4Packet::new_checked(&mut v[..]).unwrap();
    p.fill_checksum();
    assert!(p.verify_checksum());
    p.set_next_hop_mtu(1);
    p.set_echo_seq_no(2);
    p.set_echo_ident(3);
    black_box(p.payload_mut());
}

/// ICMPv6: getters, ND options walk, NS/NA repr round trips, setter abuse.
pub fn icmpv6(data: &[u8]) {
    let Ok(p) = Icmpv6Packet::new_checked(data) else {
        return;
    };
    let getters = |p: &Icmpv6Packet<&mut [u8]>| {
        black_box((
            p.msg_type(),
            p.msg_code(),
            p.checksum(),
            p.verify_checksum(&SRC6, &DST6),
            p.message_body(),
            p.ndisc_target_addr(),
            p.ndisc_flags(),
            p.ndisc_router_flag(),
            p.ndisc_solicited_flag(),
            p.ndisc_override_flag(),
            p.source_link_layer_addr(),
            p.target_link_layer_addr(),
            p.check_ndisc_options().is_ok(),
        ));
        let mut total = 0usize;
        for (t, body) in p.ndisc_options() {
            black_box(t);
            total += body.len() + 2;
        }
        assert!(total <= p.message_body().len());
    };
    if let Ok(na) = NdiscNeighborAdvertRepr::parse(&p) {
        let mut buf = vec![0u8; na.buffer_len()];
        na.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), &SRC6, &DST6);
        let q = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        assert!(q.verify_checksum(&SRC6, &DST6));
        assert_eq!(NdiscNeighborAdvertRepr::parse(&q).unwrap(), na);
    }
    if let Ok(ns) = NdiscNeighborSolicitRepr::parse(&p) {
        let mut buf = vec![0u8; ns.buffer_len()];
        ns.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), &SRC6, &DST6);
        let q = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        assert!(q.verify_checksum(&SRC6, &DST6));
        assert_eq!(NdiscNeighborSolicitRepr::parse(&q).unwrap(), ns);
    }
    let mut v = data.to_vec();
    let mut p = Icmpv6Packet::new_checked(&mut v[..]).unwrap();
    getters(&p);
    p.fill_checksum(&SRC6, &DST6);
    assert!(p.verify_checksum(&SRC6, &DST6));
    p.set_ndisc_flags(byte(data, 0));
    p.set_ndisc_target_addr(SRC6);
    p.set_msg_type(byte(data, 1));
    p.set_msg_code(0);
    getters(&p);
    black_box(p.payload_mut());
}

/// VXLAN: getters and repr round trip.
pub fn vxlan(data: &[u8]) {
    let Ok(p) = VxlanPacket::new_checked(data) else {
        return;
    };
    black_box((p.flags(), p.has_vni_flag(), p.vni(), p.payload()));
    assert!(p.vni() <= vxnet_dataplane::wire::VNI_MAX);
    match VxlanRepr::parse(&p) {
        Ok(repr) => {
            let mut buf = [0u8; 8];
            repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
            assert_eq!(buf[0], 0x08);
            assert_eq!(buf[4..7], data[4..7]);
        }
        Err(_) => assert!(!p.has_vni_flag()),
    }
    let mut v = data.to_vec();
    let mut p = VxlanPacket::new_checked(&mut v[..]).unwrap();
    p.set_vni(u32::from(word(data, 0)) << 8);
    p.set_flags(byte(data, 2));
    black_box(p.payload_mut());
}

/// virtio_net_hdr: getters and an exact 10-byte repr round trip.
pub fn virtio_net_hdr(data: &[u8]) {
    let Ok(h) = VirtioNetHdr::new_checked(data) else {
        return;
    };
    black_box((
        h.flags(),
        h.gso_type(),
        h.hdr_len(),
        h.gso_size(),
        h.csum_start(),
        h.csum_offset(),
        h.payload(),
    ));
    let repr = VirtioNetHdrRepr::parse(&h).expect("checked header must parse");
    let mut buf = [0u8; VirtioNetHdrRepr::LEN];
    repr.emit(&mut VirtioNetHdr::new_unchecked(&mut buf[..]));
    assert_eq!(&buf[..], &data[..VirtioNetHdrRepr::LEN]);
}

/// Whether `frame` is Ethernet + IPv4/IPv6 + TCP with valid IPv4 header and TCP checksums, and
/// no bytes after the IP packet.
fn tcp_frame_valid(frame: &[u8]) -> bool {
    tcp_or_udp_frame_valid(frame, false)
}

/// [`tcp_frame_valid`], or with `udp` a UDP super-frame's headers: IPv4 header checksum, IP and
/// UDP lengths covering the whole frame (its checksum field holds a partial sum).
fn tcp_or_udp_frame_valid(frame: &[u8], udp: bool) -> bool {
    if udp {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return false;
        };
        let (ip_ok, l4) = match eth.ethertype() {
            EtherType::IPV4 => match Ipv4Packet::new_checked(eth.payload()) {
                Ok(ip) => (
                    ip.verify_checksum() && usize::from(ip.total_len()) == eth.payload().len(),
                    &eth.payload()[ip.header_len()..],
                ),
                Err(_) => return false,
            },
            EtherType::IPV6 => match Ipv6Packet::new_checked(eth.payload()) {
                Ok(ip) => (
                    40 + usize::from(ip.payload_len()) == eth.payload().len(),
                    &eth.payload()[40..],
                ),
                Err(_) => return false,
            },
            _ => return false,
        };
        return ip_ok && UdpPacket::new_checked(l4).is_ok_and(|u| usize::from(u.len()) == l4.len());
    }
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    match eth.ethertype() {
        EtherType::IPV4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return false;
            };
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return false;
            };
            ip.verify_checksum()
                && usize::from(ip.total_len()) == eth.payload().len()
                && tcp.verify_checksum_v4(ip.src_addr(), ip.dst_addr())
        }
        EtherType::IPV6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return false;
            };
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return false;
            };
            40 + usize::from(ip.payload_len()) == eth.payload().len()
                && tcp.verify_checksum_v6(&ip.src_addr(), &ip.dst_addr())
        }
        _ => false,
    }
}

/// Segmentation of a super-frame read from a TAP (`data` = 10-byte `virtio_net_hdr` + frame):
/// never panics; on success every datagram of the GSO send is `stride` bytes but the last (at
/// most that), every segment is a TCP/IP frame with valid checksums, and the byte count adds up.
/// Checksum completion on the same input never panics either.
pub fn offload_segment(data: &[u8]) {
    let Ok(h) = VirtioNetHdr::new_checked(data) else {
        return;
    };
    let Ok(vnet) = VirtioNetHdrRepr::parse(&h) else {
        return;
    };
    let frame = &data[VirtioNetHdrRepr::LEN..];
    let mut copy = frame.to_vec();
    let _ = complete_checksum(&vnet, &mut copy);
    let mut batch = SegmentBatch::default();
    if segment_tcp(&vnet, frame, &mut batch).is_err() {
        assert!(batch.is_empty());
        return;
    }
    assert!(!batch.is_empty());
    let mut inner = 0;
    for i in 0..batch.len() {
        let datagram: usize = batch.segment(frame, i).iter().map(|p| p.len()).sum();
        if i + 1 < batch.len() {
            assert_eq!(datagram, batch.stride(), "segment {i}");
        } else {
            assert!(datagram <= batch.stride());
        }
        let f = batch.frame_parts(frame, i).concat();
        assert!(tcp_frame_valid(&f), "segment {i} is a valid TCP frame");
        inner += f.len();
    }
    assert_eq!(inner, batch.frames_len());
    assert_eq!(batch.segment(frame, batch.len()), [&[][..], &[][..]]);
}

/// Coalescing of received frames (`data` = frames, each behind a 2-byte big-endian length):
/// never panics; every frame is handed back exactly once (alone or merged); a merged
/// super-frame has valid headers and splits back into as many valid segments.
pub fn offload_coalesce(data: &[u8]) {
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        frames.push(&tail[..n]);
        rest = &tail[n..];
    }
    let mut c = Coalescer::new(2);
    let (mut emitted, mut segments) = (0u64, 0usize);
    let mut batch = SegmentBatch::default();
    let mut emit = |f: CoalescedFrame<'_>| {
        emitted += 1;
        segments += f.segments;
        let whole = f.to_vec(&frames);
        assert_eq!(whole.len(), f.len());
        if f.segments > 1 && f.vnet.gso_type == gso_type::UDP_L4 {
            // UDP: one header, then `segments` payloads of gso_size bytes (the last may be less).
            assert!(
                tcp_or_udp_frame_valid(&whole, true),
                "UDP super-frame headers"
            );
            let payload = whole.len() - usize::from(f.vnet.hdr_len);
            let per = usize::from(f.vnet.gso_size);
            assert_eq!(payload.div_ceil(per), f.segments);
        } else if f.segments > 1 {
            segment_tcp(&f.vnet, &whole, &mut batch).expect("a super-frame segments");
            assert_eq!(batch.len(), f.segments, "splits back into its segments");
            for i in 0..batch.len() {
                assert!(tcp_frame_valid(&batch.frame_parts(&whole, i).concat()));
            }
        }
    };
    for (i, f) in frames.iter().enumerate() {
        let at = Origin {
            buf: i as u32,
            offset: 0,
        };
        c.push(1, f, at, &mut emit);
    }
    c.flush(&mut emit);
    assert_eq!(c.pending(), 0);
    assert_eq!(segments, frames.len());
    assert_eq!(emitted, c.stats().frames_out);
}

/// The steering bucket of arbitrary bytes: never panics, stays in 14 bits, and a frame whose
/// addresses and ports are swapped (the flow's other direction) lands in the same bucket.
pub fn steer_bucket(data: &[u8]) {
    use vxnet_dataplane::steer;
    let bucket = steer::bucket(data);
    assert!(u32::from(bucket) <= steer::BUCKET_MASK);
    assert!(steer::worker_of(bucket, 1 + usize::from(byte(data, 0) % 8)) < 8);
    let ipv6 = data.get(12..14) == Some(&[0x86, 0xdd][..]);
    let ihl = usize::from(byte(data, 14) & 0xf) * 4;
    // Where the addresses are (source then destination, each `len` bytes) and the ports.
    let (addresses, len, l4) = if ipv6 {
        (22, 16, 54)
    } else {
        (26, 4, 14 + ihl)
    };
    // Ports behind the addresses (with a shorter IPv4 header they would overlap the fields the
    // hash reads, and swapping them would make another flow).
    if data.len() >= l4 + 4 && l4 >= addresses + 2 * len {
        let mut other = data.to_vec();
        let (src, dst) = other[addresses..addresses + 2 * len].split_at_mut(len);
        src.swap_with_slice(dst);
        let (sport, dport) = other[l4..l4 + 4].split_at_mut(2);
        sport.swap_with_slice(dport);
        assert_eq!(steer::bucket(&other), bucket, "both directions of a flow");
    }
}
