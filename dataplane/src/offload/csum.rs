//! The Internet checksum (RFC 1071) over the bulk of a segment: a lane-parallel sum (AVX2 when
//! the CPU has it), the same sum fused with a copy, and the TCP/UDP checksum built from them.

use crate::wire::checksum;

/// The same value as [`checksum::sum`] (folded to 16 bits, not inverted), computed faster for
/// the bulk of a TCP segment: 32-bit little-endian words are added into eight independent 64-bit
/// lanes (no carry chain, so the compiler vectorises the loop), and the folded result is
/// byte-swapped at the end (RFC 1071 §2(B): the sum is byte-order independent up to a swap).
///
/// On x86-64 CPUs with AVX2 (checked once per call, a cached flag) the same loop is compiled
/// for 256-bit registers, which halves its cost on a 64 KiB super-frame.
pub fn checksum_sum(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (detected just above), the only feature the function enables.
        return unsafe { checksum_sum_avx2(data) };
    }
    checksum_sum_lanes(data)
}

/// [`checksum_sum_lanes`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn checksum_sum_avx2(data: &[u8]) -> u32 {
    checksum_sum_lanes(data)
}

#[inline(always)]
fn checksum_sum_lanes(data: &[u8]) -> u32 {
    let mut lanes = [0u64; 8];
    let mut chunks = data.chunks_exact(32);
    for chunk in &mut chunks {
        add_lanes(&mut lanes, chunk);
    }
    finish_lanes(&lanes, chunks.remainder())
}

/// Copies `src` into `dst` (same length) and returns [`checksum_sum`]`(src)`, in one pass over
/// the bytes: segmenting reads each payload byte once instead of twice.
pub fn checksum_copy(src: &[u8], dst: &mut [u8]) -> u32 {
    assert_eq!(src.len(), dst.len(), "checksum_copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (detected just above), the only feature the function enables.
        return unsafe { checksum_copy_avx2(src, dst) };
    }
    checksum_copy_lanes(src, dst)
}

/// [`checksum_copy_lanes`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn checksum_copy_avx2(src: &[u8], dst: &mut [u8]) -> u32 {
    checksum_copy_lanes(src, dst)
}

#[inline(always)]
fn checksum_copy_lanes(src: &[u8], dst: &mut [u8]) -> u32 {
    let mut lanes = [0u64; 8];
    let mut chunks = src.chunks_exact(32);
    let mut out = dst.chunks_exact_mut(32);
    for (chunk, to) in (&mut chunks).zip(&mut out) {
        to.copy_from_slice(chunk);
        add_lanes(&mut lanes, chunk);
    }
    out.into_remainder().copy_from_slice(chunks.remainder());
    finish_lanes(&lanes, chunks.remainder())
}

/// Adds the eight little-endian 32-bit words of a 32-byte chunk to the lanes.
#[inline(always)]
fn add_lanes(lanes: &mut [u64; 8], chunk: &[u8]) {
    for (lane, word) in lanes.iter_mut().zip(chunk.chunks_exact(4)) {
        *lane += u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
    }
}

/// Adds the lanes and the tail (< 32 bytes), folds, and swaps back to network order.
#[inline(always)]
fn finish_lanes(lanes: &[u64; 8], tail: &[u8]) -> u32 {
    // Each lane took at most len/32 words < 2^32: no lane, nor their sum, can overflow.
    let mut acc: u64 = lanes.iter().sum();
    let mut words = tail.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_le_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        // Big-endian: the odd byte is the high byte of a zero-padded word; swapped, the low.
        acc += u64::from(*last);
    }
    acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    u32::from((acc as u16).swap_bytes())
}

/// The folded (not inverted) sum of a TCP segment from its pseudo-header sum, its header bytes
/// and the sum of its payload (from [`checksum_copy`]). The TCP header is a whole number of
/// 16-bit words, so the payload's sum simply adds on.
pub(super) fn tcp_sum_with_payload(pseudo: u32, tcp_header: &[u8], payload_sum: u32) -> u16 {
    checksum::combine(&[pseudo, checksum_sum(tcp_header), payload_sum])
}

/// Whether the TCP checksum of `segment` (TCP header + payload) verifies.
pub(super) fn tcp_checksum_ok(segment: &[u8], pseudo: u32) -> bool {
    checksum::fold(u32::from(checksum::combine(&[
        pseudo,
        checksum_sum(segment),
    ]))) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The fast sum equals the reference one for every length and content.
        #[test]
        fn fast_checksum_matches_reference(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            start in 0usize..40,
        ) {
            let data = &bytes[start.min(bytes.len())..];
            prop_assert_eq!(checksum_sum(data), checksum::sum(data));
        }
    }

    #[test]
    fn checksum_copy_copies_and_sums_like_checksum_sum() {
        let data: Vec<u8> = (0..3_000u32)
            .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
            .collect();
        for len in [0, 1, 2, 31, 32, 33, 64, 1397, 1398, 3_000] {
            let mut dst = vec![0xAAu8; len];
            let sum = checksum_copy(&data[..len], &mut dst);
            assert_eq!(dst, &data[..len], "len {len}");
            assert_eq!(sum, checksum_sum(&data[..len]), "len {len}");
            let mut dst = vec![0u8; len];
            assert_eq!(
                checksum_copy_lanes(&data[..len], &mut dst),
                sum,
                "portable, len {len}"
            );
        }
    }

    #[test]
    fn checksum_sum_is_the_same_with_and_without_avx2() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 2, 31, 32, 33, 63, 64, 65, 1397, 1398, 65_535, 70_000] {
            let portable = checksum_sum_lanes(&data[..len]);
            assert_eq!(checksum_sum(&data[..len]), portable, "len {len}");
            assert_eq!(checksum::sum(&data[..len]), portable, "len {len}");
        }
    }
}
