//! The Internet checksum (RFC 1071): one's-complement sum of 16-bit big-endian words.
//!
//! Partial sums are `u32` values already folded to 16 bits (so up to 65 537 of
//! them can be added in a `u32` without overflow). To checksum a message built
//! from several pieces, sum each piece and [`combine`] them; every piece except
//! the last must have an even length, or the words straddle the boundary.
//!
//! * computing: write 0 into the checksum field, then `fold(sum(..) + pseudo)`;
//! * verifying: `fold(..)` over the data *including* the checksum field is 0.

use core::net::{Ipv4Addr, Ipv6Addr};

/// One's-complement partial sum of `data` as 16-bit big-endian words (a trailing
/// odd byte is padded with a zero low byte), folded to 16 bits, not inverted.
///
/// Adds 8 bytes at a time into a `u64` with end-around carry: because
/// 2^64 - 1 is a multiple of 2^16 - 1, that is the same sum modulo 0xFFFF.
pub fn sum(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(32);
    // Four independent 8-byte adds per iteration keep the carry chain short.
    for c in &mut chunks {
        let mut words = [0u64; 4];
        for (w, bytes) in words.iter_mut().zip(c.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            *w = u64::from_be_bytes(b);
        }
        acc = add_carry(acc, words[0]);
        acc = add_carry(acc, words[1]);
        acc = add_carry(acc, words[2]);
        acc = add_carry(acc, words[3]);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&rest[..8]);
        acc = add_carry(acc, u64::from_be_bytes(b));
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&rest[..4]);
        acc = add_carry(acc, u64::from(u32::from_be_bytes(b)));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc = add_carry(acc, u64::from(u16::from_be_bytes([rest[0], rest[1]])));
        rest = &rest[2..];
    }
    if let [last] = rest {
        acc = add_carry(acc, u64::from(*last) << 8);
    }
    u32::from(fold64(acc))
}

#[inline(always)]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
}

/// Folds a 64-bit end-around-carry accumulator to 16 bits (not inverted).
#[inline]
fn fold64(mut acc: u64) -> u16 {
    acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    // After these steps acc <= 0xFFFF.
    acc as u16
}

/// Adds partial sums with end-around carry, folded to 16 bits, *not* inverted
/// (feed the result to [`fold`] for the final checksum, or keep combining).
pub fn combine(sums: &[u32]) -> u16 {
    let acc = sums.iter().fold(0u64, |acc, &s| acc + u64::from(s));
    fold64(acc)
}

/// Folds a (possibly unfolded) sum to 16 bits and inverts it: the value to put
/// in a checksum field, or 0 when verifying correct data.
pub fn fold(sum: u32) -> u16 {
    !fold64(u64::from(sum))
}

/// Partial sum of the IPv4 pseudo header (RFC 768/793): addresses, zero,
/// protocol, and the upper-layer `length`.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u32) -> u32 {
    let s = src.to_bits();
    let d = dst.to_bits();
    let acc = u64::from(s >> 16)
        + u64::from(s & 0xFFFF)
        + u64::from(d >> 16)
        + u64::from(d & 0xFFFF)
        + u64::from(protocol)
        + u64::from(length >> 16)
        + u64::from(length & 0xFFFF);
    u32::from(fold64(acc))
}

/// Partial sum of the IPv6 pseudo header (RFC 8200 §8.1): addresses, 32-bit
/// upper-layer `length`, three zero bytes and `next_header`.
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, length: u32) -> u32 {
    let acc = u64::from(sum(&src.octets()))
        + u64::from(sum(&dst.octets()))
        + u64::from(next_header)
        + u64::from(length >> 16)
        + u64::from(length & 0xFFFF);
    u32::from(fold64(acc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook RFC 1071 reference: 16 bits at a time.
    fn reference(data: &[u8]) -> u32 {
        let mut acc: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            acc += u32::from(w);
            acc = (acc & 0xFFFF) + (acc >> 16);
        }
        acc
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(fold(sum(&data)), !0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // Wikipedia's IPv4 header checksum example: checksum 0xb861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(sum(&hdr)), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(sum(&hdr)), 0);
    }

    #[test]
    fn odd_and_edge_lengths_match_reference() {
        let data: [u8; 97] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        for len in 0..=data.len() {
            assert_eq!(sum(&data[..len]), reference(&data[..len]), "len {len}");
        }
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0xff; 1000]), 0xffff);
        assert_eq!(fold(0), 0xffff);
    }

    #[test]
    fn combine_equals_concatenation() {
        let data: [u8; 64] = core::array::from_fn(|i| (i as u8) ^ 0xa5);
        let whole = sum(&data);
        let parts = [sum(&data[..10]), sum(&data[10..40]), sum(&data[40..])];
        assert_eq!(u32::from(combine(&parts)), whole);
        assert_eq!(fold(combine(&parts).into()), fold(whole));
    }

    #[test]
    fn pseudo_headers_match_byte_layout() {
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(192, 168, 7, 200);
        let mut ph = [0u8; 12];
        ph[0..4].copy_from_slice(&src.octets());
        ph[4..8].copy_from_slice(&dst.octets());
        ph[9] = 17;
        ph[10..12].copy_from_slice(&1234u16.to_be_bytes());
        assert_eq!(pseudo_header_v4(src, dst, 17, 1234), sum(&ph));

        let src6: Ipv6Addr = "fe80::1:2:3:4".parse().unwrap();
        let dst6: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
        let mut ph6 = [0u8; 40];
        ph6[0..16].copy_from_slice(&src6.octets());
        ph6[16..32].copy_from_slice(&dst6.octets());
        ph6[32..36].copy_from_slice(&70_000u32.to_be_bytes());
        ph6[39] = 58;
        assert_eq!(pseudo_header_v6(&src6, &dst6, 58, 70_000), sum(&ph6));
    }
}
