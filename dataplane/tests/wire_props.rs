//! Property tests for `vxnet_dataplane::wire`:
//!
//! * arbitrary (and "nearly valid") bytes → `new_checked` never panics, and on
//!   success every getter, the Repr round trip and setter abuse are fine — the
//!   bodies are the fuzz targets' (`dataplane/fuzz/src/lib.rs`);
//! * emit → parse round trip for every Repr from random field values;
//! * checksums: fill then verify holds, and flipping any byte breaks it;
//! * the fast `checksum::sum` agrees with a 16-bit reference at any alignment.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::prelude::*;
use vxnet_dataplane::wire::checksum;
use vxnet_dataplane::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Icmpv4Packet,
    Icmpv4Repr, Icmpv6Packet, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, MacAddr,
    NdiscNeighborAdvertRepr, NdiscNeighborSolicitRepr, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
    VNI_MAX, VirtioNetHdr, VirtioNetHdrRepr, VxlanPacket, VxlanRepr, ip_protocol,
};

#[allow(dead_code)] // the offload bodies are offload_props.rs's
#[path = "../fuzz/src/lib.rs"]
mod touch;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

fn mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// Random bytes patched so that the length/version checks often pass,
/// reaching the success paths that pure noise almost never hits.
fn nearly(kind: &'static str) -> impl Strategy<Value = Vec<u8>> {
    (bytes(160), any::<u16>(), any::<u8>()).prop_map(move |(mut d, r, r8)| {
        let len = d.len();
        let fit = |max: usize| {
            if max == 0 {
                0
            } else {
                usize::from(r) % (max + 1)
            }
        };
        match kind {
            "ipv4" if len >= 20 => {
                d[0] = 0x40 | (5 + r8 % 11);
                let total = fit(len) as u16;
                d[2..4].copy_from_slice(&total.max(20).to_be_bytes());
            }
            "ipv6" if len >= 40 => {
                d[0] = 0x60 | (d[0] & 0x0F);
                d[4..6].copy_from_slice(&(fit(len - 40) as u16).to_be_bytes());
            }
            "udp" if len >= 8 => {
                d[4..6].copy_from_slice(&(fit(len).max(8) as u16).to_be_bytes());
            }
            "tcp" if len >= 20 => d[12] = ((5 + r8 % 11) << 4) | (d[12] & 0x0F),
            "arp" if len >= 28 => d[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]),
            "ethernet" if len >= 14 && r8 & 1 == 0 => d[12..14].copy_from_slice(&[0x81, 0]),
            "vxlan" if len >= 8 && r8 & 1 == 0 => d[0] = 0x08,
            "icmpv6" if len >= 4 => {
                // Mostly ND messages, with LLA options laid out in 8-byte units.
                d[0] = [135, 136, 133, 134, 137, 128][usize::from(r8) % 6];
                d[1] = 0;
                let mut at = 24;
                while at + 8 <= len && r8 & 0x80 == 0 {
                    d[at] = 1 + (d[at] & 1);
                    d[at + 1] = 1;
                    at += 8;
                }
            }
            _ => {}
        }
        d
    })
}

proptest! {
    #![proptest_config(config())]

    // ---- arbitrary bytes never panic ---------------------------------------

    #[test]
    fn noise_ethernet(d in bytes(64)) { touch::ethernet(&d) }
    #[test]
    fn noise_arp(d in bytes(64)) { touch::arp(&d) }
    #[test]
    fn noise_ipv4(d in bytes(96)) { touch::ipv4(&d) }
    #[test]
    fn noise_ipv6(d in bytes(96)) { touch::ipv6(&d) }
    #[test]
    fn noise_udp(d in bytes(64)) { touch::udp(&d) }
    #[test]
    fn noise_tcp(d in bytes(96)) { touch::tcp(&d) }
    #[test]
    fn noise_icmpv4(d in bytes(64)) { touch::icmpv4(&d) }
    #[test]
    fn noise_icmpv6(d in bytes(96)) { touch::icmpv6(&d) }
    #[test]
    fn noise_vxlan(d in bytes(32)) { touch::vxlan(&d) }
    #[test]
    fn noise_virtio_net_hdr(d in bytes(32)) { touch::virtio_net_hdr(&d) }

    #[test]
    fn nearly_valid_ethernet(d in nearly("ethernet")) { touch::ethernet(&d) }
    #[test]
    fn nearly_valid_arp(d in nearly("arp")) { touch::arp(&d) }
    #[test]
    fn nearly_valid_ipv4(d in nearly("ipv4")) { touch::ipv4(&d) }
    #[test]
    fn nearly_valid_ipv6(d in nearly("ipv6")) { touch::ipv6(&d) }
    #[test]
    fn nearly_valid_udp(d in nearly("udp")) { touch::udp(&d) }
    #[test]
    fn nearly_valid_tcp(d in nearly("tcp")) { touch::tcp(&d) }
    #[test]
    fn nearly_valid_icmpv6(d in nearly("icmpv6")) { touch::icmpv6(&d) }
    #[test]
    fn nearly_valid_vxlan(d in nearly("vxlan")) { touch::vxlan(&d) }

    // ---- emit → parse round trips -----------------------------------------

    #[test]
    fn roundtrip_ethernet(src in mac(), dst in mac(), et in any::<u16>().prop_filter("tagged", |e| *e != 0x8100)) {
        let repr = EthernetRepr { src_addr: src, dst_addr: dst, ethertype: EtherType(et) };
        let mut buf = [0u8; 14];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(EthernetRepr::parse(&f).unwrap(), repr);
        prop_assert_eq!(f.vlan_id(), None);
    }

    #[test]
    fn roundtrip_arp(op in any::<u16>(), sha in mac(), spa in v4(), tha in mac(), tpa in v4()) {
        let repr = ArpRepr {
            operation: ArpOperation::from(op),
            sender_hardware_addr: sha,
            sender_protocol_addr: spa,
            target_hardware_addr: tha,
            target_protocol_addr: tpa,
        };
        let mut buf = [0u8; 28];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap(), repr);
    }

    #[test]
    fn roundtrip_ipv4(src in v4(), dst in v4(), nh in any::<u8>(), len in 0usize..1500,
                      ttl in any::<u8>(), df in any::<bool>(), ident in any::<u16>()) {
        let repr = Ipv4Repr { src_addr: src, dst_addr: dst, next_header: nh, payload_len: len,
                              ttl, dont_frag: df, ident };
        let mut buf = vec![0u8; repr.total_len()];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum());
        prop_assert_eq!(p.payload().len(), len);
        prop_assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr);
    }

    #[test]
    fn roundtrip_ipv6(src in v6(), dst in v6(), nh in any::<u8>(), len in 0usize..1500, hl in any::<u8>()) {
        let repr = Ipv6Repr { src_addr: src, dst_addr: dst, next_header: nh, payload_len: len, hop_limit: hl };
        let mut buf = vec![0u8; repr.total_len()];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!((p.traffic_class(), p.flow_label()), (0, 0));
        prop_assert_eq!(Ipv6Repr::parse(&p).unwrap(), repr);
    }

    #[test]
    fn roundtrip_udp(sp in any::<u16>(), dp in any::<u16>(), payload in bytes(64)) {
        let repr = UdpRepr { src_port: sp, dst_port: dp };
        let mut buf = vec![0u8; 8 + payload.len()];
        buf[8..].copy_from_slice(&payload);
        repr.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), payload.len());
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(p.payload(), &payload[..]);
        prop_assert_eq!(UdpRepr::parse(&p).unwrap(), repr);
    }

    #[test]
    fn roundtrip_tcp(sp in any::<u16>(), dp in any::<u16>(), seq in any::<u32>(), ack in any::<u32>(),
                     flags in any::<u8>(), win in any::<u16>()) {
        let repr = TcpRepr { src_port: sp, dst_port: dp, seq_number: seq, ack_number: ack,
                             flags, window_len: win };
        let mut buf = [0u8; 20];
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]));
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(p.header_len(), 20);
        prop_assert_eq!(TcpRepr::parse(&p).unwrap(), repr);
    }

    #[test]
    fn roundtrip_icmpv4(kind in 0u8..4, a in any::<u16>(), b in any::<u16>(), t in any::<u8>(), c in any::<u8>(), rest in any::<u32>()) {
        let repr = match kind {
            0 => Icmpv4Repr::EchoRequest { ident: a, seq_no: b },
            1 => Icmpv4Repr::EchoReply { ident: a, seq_no: b },
            2 => Icmpv4Repr::FragNeeded { next_hop_mtu: a },
            // Keep `Other` disjoint from the specific variants.
            _ => Icmpv4Repr::Other { msg_type: t | 0x20, msg_code: c, rest_of_header: rest },
        };
        let mut buf = [0u8; 8];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        prop_assert_eq!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&buf[..]).unwrap()).unwrap(), repr);
    }

    #[test]
    fn roundtrip_ndisc(flags in any::<u8>(), target in v6(), lla in proptest::option::of(mac()),
                       src in v6(), dst in v6()) {
        let na = NdiscNeighborAdvertRepr { flags: flags & 0xE0, target_addr: target, target_link_layer_addr: lla };
        let mut buf = vec![0u8; na.buffer_len()];
        na.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), &src, &dst);
        let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum(&src, &dst));
        prop_assert_eq!(NdiscNeighborAdvertRepr::parse(&p).unwrap(), na);

        let ns = NdiscNeighborSolicitRepr { target_addr: target, source_link_layer_addr: lla };
        let mut buf = vec![0u8; ns.buffer_len()];
        ns.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), &src, &dst);
        let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum(&src, &dst));
        prop_assert_eq!(NdiscNeighborSolicitRepr::parse(&p).unwrap(), ns);
    }

    #[test]
    fn roundtrip_vxlan(vni in 0..=VNI_MAX, inner in bytes(32)) {
        let repr = VxlanRepr { vni };
        let mut buf = vec![0xFFu8; 8 + inner.len()];
        buf[8..].copy_from_slice(&inner);
        repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        let p = VxlanPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(&buf[..4], &[0x08, 0, 0, 0]);
        prop_assert_eq!(buf[7], 0);
        prop_assert_eq!(p.payload(), &inner[..]);
        prop_assert_eq!(VxlanRepr::parse(&p).unwrap(), repr);
    }

    #[test]
    fn roundtrip_virtio(f in any::<u8>(), g in any::<u8>(), a in any::<u16>(), b in any::<u16>(), c in any::<u16>(), d in any::<u16>()) {
        let repr = VirtioNetHdrRepr { flags: f, gso_type: g, hdr_len: a, gso_size: b, csum_start: c, csum_offset: d };
        let mut buf = [0u8; 10];
        repr.emit(&mut VirtioNetHdr::new_unchecked(&mut buf[..]));
        prop_assert_eq!(&buf[2..4], &a.to_le_bytes());
        prop_assert_eq!(VirtioNetHdrRepr::parse(&VirtioNetHdr::new_checked(&buf[..]).unwrap()).unwrap(), repr);
    }

    // ---- checksums -----------------------------------------------------------

    #[test]
    fn sum_matches_reference(data in bytes(300), skip in 0usize..8) {
        let d = &data[skip.min(data.len())..];
        prop_assert_eq!(checksum::sum(d), reference_sum(d));
    }

    #[test]
    fn ipv4_header_checksum_detects_flips(src in v4(), dst in v4(), ident in any::<u16>(), ttl in any::<u8>(),
                                          at in 1usize..20, mask in 1u8..=255) {
        let repr = Ipv4Repr { src_addr: src, dst_addr: dst, next_header: ip_protocol::UDP,
                              payload_len: 0, ttl, dont_frag: true, ident };
        let mut buf = [0u8; 20];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        prop_assert!(Ipv4Packet::new_unchecked(&buf[..]).verify_checksum());
        // Byte 0 is skipped: changing IHL changes what the checksum covers.
        buf[at] ^= mask;
        prop_assert!(!Ipv4Packet::new_unchecked(&buf[..]).verify_checksum());
    }

    #[test]
    fn udp_checksum_detects_flips(src in v4(), dst in v4(), src6 in v6(), dst6 in v6(),
                                  payload in bytes(64), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut buf = vec![0u8; 8 + payload.len()];
        buf[8..].copy_from_slice(&payload);
        UdpRepr { src_port: 4789, dst_port: 4789 }.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), payload.len());
        // Bytes 4..6 are the length, which decides what is summed; skip them.
        let at = [0, 1, 2, 3, 6, 7].into_iter().chain(8..buf.len()).nth(at.index(buf.len() - 2)).unwrap();

        let mut b4 = buf.clone();
        let mut p = UdpPacket::new_unchecked(&mut b4[..]);
        p.fill_checksum_v4(src, dst);
        prop_assert!(p.verify_checksum_v4(src, dst));
        b4[at] ^= mask;
        let p = UdpPacket::new_checked(&b4[..]).unwrap();
        // Over IPv4 a flip that lands the checksum field on 0 means "no checksum".
        if p.checksum() != 0 {
            prop_assert!(!p.verify_checksum_v4(src, dst));
        }

        let mut b6 = buf.clone();
        let mut p = UdpPacket::new_unchecked(&mut b6[..]);
        p.fill_checksum_v6(&src6, &dst6);
        prop_assert!(p.verify_checksum_v6(&src6, &dst6));
        b6[at] ^= mask;
        prop_assert!(!UdpPacket::new_checked(&b6[..]).unwrap().verify_checksum_v6(&src6, &dst6));
    }

    #[test]
    fn tcp_checksum_detects_flips(src in v4(), dst in v4(), src6 in v6(), dst6 in v6(), seq in any::<u32>(),
                                  payload in bytes(100), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut buf = vec![0u8; 20 + payload.len()];
        buf[20..].copy_from_slice(&payload);
        TcpRepr { src_port: 1, dst_port: 2, seq_number: seq, ack_number: 0, flags: 0x18, window_len: 100 }
            .emit(&mut TcpPacket::new_unchecked(&mut buf[..]));
        let at = at.index(buf.len());

        let mut b4 = buf.clone();
        TcpPacket::new_unchecked(&mut b4[..]).fill_checksum_v4(src, dst);
        prop_assert!(TcpPacket::new_unchecked(&b4[..]).verify_checksum_v4(src, dst));
        b4[at] ^= mask;
        prop_assert!(!TcpPacket::new_unchecked(&b4[..]).verify_checksum_v4(src, dst));

        let mut b6 = buf;
        TcpPacket::new_unchecked(&mut b6[..]).fill_checksum_v6(&src6, &dst6);
        prop_assert!(TcpPacket::new_unchecked(&b6[..]).verify_checksum_v6(&src6, &dst6));
        b6[at] ^= mask;
        prop_assert!(!TcpPacket::new_unchecked(&b6[..]).verify_checksum_v6(&src6, &dst6));
    }

    #[test]
    fn icmp_checksums_detect_flips(src6 in v6(), dst6 in v6(), body in vec(any::<u8>(), 4..80),
                                   at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut b6 = body.clone();
        let mut p = Icmpv6Packet::new_checked(&mut b6[..]).unwrap();
        p.fill_checksum(&src6, &dst6);
        prop_assert!(p.verify_checksum(&src6, &dst6));
        let i = at.index(b6.len());
        b6[i] ^= mask;
        prop_assert!(!Icmpv6Packet::new_unchecked(&b6[..]).verify_checksum(&src6, &dst6));

        let mut b4 = body;
        b4.resize(b4.len().max(8), 0);
        let mut p = Icmpv4Packet::new_checked(&mut b4[..]).unwrap();
        p.fill_checksum();
        prop_assert!(p.verify_checksum());
        let i = at.index(b4.len());
        b4[i] ^= mask;
        prop_assert!(!Icmpv4Packet::new_unchecked(&b4[..]).verify_checksum());
    }
}

/// RFC 1071, 16 bits at a time, folded after every add.
fn reference_sum(data: &[u8]) -> u32 {
    let mut acc: u32 = 0;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        acc += u32::from(w);
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc
}

#[test]
fn nearly_valid_strategies_reach_success_paths() {
    // Guard against the "nearly valid" generators silently producing only
    // rejects (which would make the tests above vacuous).
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut ok = [0usize; 4];
    for _ in 0..400 {
        let d = nearly("ipv4").new_tree(&mut runner).unwrap().current();
        ok[0] += usize::from(Ipv4Packet::new_checked(&d[..]).is_ok());
        let d = nearly("udp").new_tree(&mut runner).unwrap().current();
        ok[1] += usize::from(UdpPacket::new_checked(&d[..]).is_ok());
        let d = nearly("icmpv6").new_tree(&mut runner).unwrap().current();
        let p = Icmpv6Packet::new_checked(&d[..]);
        ok[2] += usize::from(p.is_ok_and(|p| {
            p.source_link_layer_addr().is_some() || p.target_link_layer_addr().is_some()
        }));
        let d = nearly("ipv6").new_tree(&mut runner).unwrap().current();
        ok[3] += usize::from(Ipv6Packet::new_checked(&d[..]).is_ok());
    }
    assert!(ok.iter().all(|&n| n > 40), "success counts {ok:?}");
}
