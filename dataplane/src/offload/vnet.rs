//! `virtio_net_hdr` helpers for a TAP opened with `IFF_VNET_HDR`: encoding the header,
//! completing a partial checksum the kernel left to the reader, and sizing a container's
//! `gso_max_size` so that one super-frame becomes one UDP GSO send.

use super::OffloadError;
use crate::wire::virtio_net_hdr::flags as vnet_flags;
use crate::wire::{VirtioNetHdr, VirtioNetHdrRepr, checksum, ethernet, ipv6, tcp, vxlan};

/// The 10 bytes of a `virtio_net_hdr`, ready to write in front of a frame.
pub fn encode_vnet(repr: &VirtioNetHdrRepr) -> [u8; VirtioNetHdrRepr::LEN] {
    let mut bytes = [0u8; VirtioNetHdrRepr::LEN];
    repr.emit(&mut VirtioNetHdr::new_unchecked(&mut bytes[..]));
    bytes
}

/// The `gso_max_size` to give a container's interface on an overlay of MTU `mtu`, so that each
/// TCP super-frame the container sends becomes exactly one UDP GSO send on the underlay.
///
/// Every inner segment becomes one datagram of `mtu + 22` bytes (VXLAN 8 + Ethernet 14), and one
/// GSO send carries at most 65,507 bytes and 64 segments: `n = min(64, 65_507 / (mtu + 22))`.
/// TCP sizes a super-frame as `gso_max_size − MAX_TCP_HEADER − 1` (the kernel's slack, 320 bytes
/// or less) rounded down to whole MSS. So `n × (mtu − 72) + 320`, with `mtu − 72` the smallest
/// full-sized MSS (IPv6 with timestamps), never yields more than `n` segments. Without the cap a
/// 64 KiB super-frame at MTU 1450 is 45 segments, and the 45th costs a second send (and a second
/// trip through both hosts' stacks) for 1.4 KB.
pub fn container_gso_max_size(mtu: u32) -> u32 {
    // VXLAN + Ethernet in front of each inner IP packet (the casts are exact: small constants).
    const OUTER: u32 = (vxlan::HEADER_LEN + ethernet::HEADER_LEN) as u32;
    // IPv6 + TCP + the 12 bytes of the timestamps option: the smallest full-sized MSS's overhead.
    const IP_TCP_TS: u32 = (ipv6::HEADER_LEN + tcp::HEADER_LEN + 12) as u32;
    let datagram = mtu.saturating_add(OUTER).max(1);
    let segments = (65_507 / datagram).clamp(1, 64);
    let size = segments * mtu.saturating_sub(IP_TCP_TS) + 320;
    size.clamp(mtu.min(65_536), 65_536)
}

/// Completes the partial checksum of a frame read with `NEEDS_CSUM` and no GSO, as the kernel's
/// `skb_checksum_help` would: the one's-complement sum from `csum_start` to the end of the frame
/// (the checksum field holds the pseudo-header sum meanwhile) is stored at
/// `csum_start + csum_offset`; a result of 0 is stored as 0xFFFF (the same value in one's
/// complement, and the only valid one for UDP). Without `NEEDS_CSUM` the frame is left alone.
pub fn complete_checksum(vnet: &VirtioNetHdrRepr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if vnet.flags & vnet_flags::NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(vnet.csum_start);
    let at = start + usize::from(vnet.csum_offset);
    if at + 2 > frame.len() {
        return Err(OffloadError::BadChecksumOffsets);
    }
    let sum = checksum::fold(checksum::sum(&frame[start..]));
    let sum = if sum == 0 { 0xFFFF } else { sum };
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;
    use crate::offload::tests::{super_v4, vnet_v4};
    use crate::wire::TcpPacket;
    use crate::wire::tcp_flags;
    use crate::wire::virtio_net_hdr::gso_type;

    #[test]
    fn complete_checksum_folds_from_csum_start() {
        let sf = super_v4(b"hello, world", tcp_flags::ACK, 1);
        let mut f = sf.clone();
        let vnet = VirtioNetHdrRepr {
            gso_type: gso_type::NONE,
            ..vnet_v4(0)
        };
        complete_checksum(&vnet, &mut f).unwrap();
        let tcp = TcpPacket::new_checked(&f[34..]).unwrap();
        assert!(tcp.verify_checksum_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)));
        let bad = VirtioNetHdrRepr {
            csum_start: f.len() as u16 - 1,
            ..vnet
        };
        assert_eq!(
            complete_checksum(&bad, &mut f),
            Err(OffloadError::BadChecksumOffsets)
        );
        let mut g = sf.clone();
        complete_checksum(&VirtioNetHdrRepr::default(), &mut g).unwrap();
        assert_eq!(g, sf, "no NEEDS_CSUM: untouched");
    }

    #[test]
    fn container_gso_max_size_keeps_a_super_frame_in_one_gso_send() {
        for mtu in [576u32, 1280, 1400, 1450, 1500, 8950, 9000] {
            let size = container_gso_max_size(mtu);
            // Largest TCP payload per super-frame the kernel would pick (slack 193..=321).
            for slack in [193u32, 321] {
                let goal = size.saturating_sub(slack);
                for (ip_tcp, opts) in [(40u32, 0u32), (40, 12), (60, 0), (60, 12)] {
                    let mss = mtu - ip_tcp - opts;
                    let segments = goal / mss;
                    let bytes = segments * (mtu + 22);
                    assert!(
                        segments <= 64 && bytes <= 65_507,
                        "mtu {mtu}, mss {mss}: {segments} segments, {bytes} bytes"
                    );
                }
            }
            assert!(size >= mtu && size <= 65_536, "mtu {mtu}: {size}");
        }
        // At the usual overlay MTU, still 43-44 segments: the cap costs almost nothing.
        assert!(container_gso_max_size(1450) / 1398 >= 43);
    }
}
