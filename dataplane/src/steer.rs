//! Which worker owns a flow: one symmetric hash of the inner IPv4 5-tuple, computed in three
//! places that must agree bit for bit.
//!
//! - the kernel, before a frame enters a TAP queue: [`tap_program`], an eBPF socket-filter
//!   program attached with `TUNSETSTEERINGEBPF` (the TAP calls it to pick the queue);
//! - the kernel, when a VXLAN datagram reaches the `SO_REUSEPORT` group: [`reuseport_program`],
//!   a classic BPF program (`SO_ATTACH_REUSEPORT_CBPF`) that reads the inner frame behind the
//!   VXLAN header and picks the socket;
//! - userspace: [`bucket`], which the senders use to keep datagrams of different buckets out of
//!   one GSO send (the receiver steers a whole GSO train by its first datagram).
//!
//! Worker `i` owns queue `i` of every TAP and socket `i` of the group, so a flow's egress
//! reads, ingress receives and TAP writes all happen on worker `bucket % workers`, in both
//! directions (the hash is symmetric). The bucket is 14 bits: two frames of one bucket share a
//! worker whatever the number of workers on either host.
//!
//! The hash reads raw bytes, exactly as the BPF programs do (no validation beyond the bounds):
//! a frame the programs cannot read to the end — truncated, not IPv4 — is bucket 0, which is
//! what the programs return for it. Only the definition lives here; loading and attaching is
//! [`crate::io::steering`].

/// The multiplier of the mix (2^32 / φ): spreads the XOR of the tuple over all 32 bits.
pub const GOLDEN: u32 = 0x9E37_79B1;
/// Buckets are the low 14 bits of the mixed hash.
pub const BUCKET_MASK: u32 = 0x3fff;
/// Bytes in front of the inner Ethernet header of a VXLAN payload.
pub const VXLAN_HEADER: u32 = 8;

const ETHERTYPE_IPV4: u32 = 0x0800;
const ETH_HEADER: u32 = 14;
const TCP: u32 = 6;
const UDP: u32 = 17;
/// The fragment-offset bits of the IPv4 flags/fragment field.
const FRAG_OFFSET: u32 = 0x1fff;

/// The steering bucket of an Ethernet frame (`0..=0x3fff`).
pub fn bucket(frame: &[u8]) -> u16 {
    tuple_hash(frame).map_or(0, |h| (mix(h) & BUCKET_MASK) as u16)
}

/// The bucket [`bucket`] gives the frames of an unfragmented IPv4 TCP (6) or UDP (17) flow
/// from `src:sport` to `dst:dport` (either direction): lets tools and tests pick ports that
/// land on given workers.
pub fn ipv4_flow_bucket(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    protocol: u8,
    sport: u16,
    dport: u16,
) -> u16 {
    let h = u32::from(src) ^ u32::from(dst) ^ u32::from(protocol) ^ u32::from(sport ^ dport);
    (mix(h) & BUCKET_MASK) as u16
}

/// The worker of `bucket` among `workers` (at least one).
pub fn worker_of(bucket: u16, workers: usize) -> usize {
    usize::from(bucket) % workers.max(1)
}

fn mix(h: u32) -> u32 {
    let h = h.wrapping_mul(GOLDEN);
    h ^ (h >> 16)
}

/// `saddr ^ daddr ^ proto`, and `^ (sport ^ dport)` for the first fragment (or only piece) of
/// TCP and UDP; `None` for frames the programs return 0 for.
fn tuple_hash(frame: &[u8]) -> Option<u32> {
    let at = |offset: u32, len: usize| -> Option<u32> {
        let start = offset as usize;
        let bytes = frame.get(start..start.checked_add(len)?)?;
        Some(bytes.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)))
    };
    if at(12, 2)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = ETH_HEADER;
    let proto = at(ip + 9, 1)?;
    let mut h = at(ip + 12, 4)? ^ at(ip + 16, 4)? ^ proto;
    if (proto == TCP || proto == UDP) && at(ip + 6, 2)? & FRAG_OFFSET == 0 {
        let ihl = (at(ip, 1)? & 0xf) * 4;
        h ^= at(ip + ihl, 2)? ^ at(ip + ihl + 2, 2)?;
    }
    Some(h)
}

// `struct bpf_insn` packs the registers as bitfields, whose order follows the byte order:
// `BpfInsn::regs` below is the little-endian layout.
#[cfg(target_endian = "big")]
compile_error!("the eBPF steering program is encoded for little-endian machines only");

/// One eBPF instruction, as `struct bpf_insn` lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u8,
    /// Destination register in the low nibble, source register in the high one.
    pub regs: u8,
    /// Jump offset (instructions after the next one) or memory offset.
    pub off: i16,
    /// Immediate operand.
    pub imm: i32,
}

mod ebpf {
    use super::BpfInsn;

    pub const LD_ABS_B: u8 = 0x30;
    pub const LD_ABS_H: u8 = 0x28;
    pub const LD_ABS_W: u8 = 0x20;
    pub const LD_IND_H: u8 = 0x48;
    pub const MOV64_X: u8 = 0xbf;
    pub const MOV64_K: u8 = 0xb7;
    pub const MOV32_X: u8 = 0xbc;
    pub const XOR32_X: u8 = 0xac;
    pub const AND32_K: u8 = 0x54;
    pub const LSH32_K: u8 = 0x64;
    pub const RSH32_K: u8 = 0x74;
    pub const MUL32_K: u8 = 0x24;
    pub const MOD32_K: u8 = 0x94;
    pub const JEQ_K: u8 = 0x15;
    pub const JNE_K: u8 = 0x55;
    pub const JSET_K: u8 = 0x45;
    pub const EXIT: u8 = 0x95;

    pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
        BpfInsn {
            code,
            regs: (dst & 0xf) | (src << 4),
            off,
            imm,
        }
    }
}

/// The TAP's queue selector: `bucket % queues` of the frame (Ethernet at offset 0), an eBPF
/// `BPF_PROG_TYPE_SOCKET_FILTER` program for `TUNSETSTEERINGEBPF`.
///
/// The TAP truncates the result to 16 bits and takes it modulo its queue count itself; the
/// program does the modulo so both are no-ops. `LD_ABS`/`LD_IND` need the context in r6 and
/// clobber r1–r5, so the state lives in r7 (hash), r8 (protocol, then ports) and r9 (IP
/// header length); a load past the end of the frame ends the program with 0.
pub fn tap_program(queues: u32) -> Vec<BpfInsn> {
    ebpf_program(0, queues)
}

/// [`tap_program`] for a frame starting at byte `eth` of the program's data.
pub fn ebpf_program(eth: u32, modulo: u32) -> Vec<BpfInsn> {
    use ebpf::*;
    let e = eth as i32;
    let ip = e + ETH_HEADER as i32;
    let golden = GOLDEN as i32;
    // Instruction indices the jumps go to.
    const PORTS: i16 = 12;
    const MIX: i16 = 23;
    const RET0: i16 = 31;
    let program = vec![
        insn(MOV64_X, 6, 1, 0, 0),                          // 0: r6 = ctx
        insn(LD_ABS_H, 0, 0, 0, e + 12),                    // 1: ethertype
        insn(JNE_K, 0, 0, RET0 - 3, ETHERTYPE_IPV4 as i32), // 2
        insn(LD_ABS_B, 0, 0, 0, ip + 9),                    // 3: protocol
        insn(MOV32_X, 8, 0, 0, 0),                          // 4
        insn(LD_ABS_W, 0, 0, 0, ip + 12),                   // 5: source address
        insn(MOV32_X, 7, 0, 0, 0),                          // 6
        insn(LD_ABS_W, 0, 0, 0, ip + 16),                   // 7: destination address
        insn(XOR32_X, 7, 0, 0, 0),                          // 8
        insn(XOR32_X, 7, 8, 0, 0),                          // 9
        insn(JEQ_K, 8, 0, PORTS - 11, TCP as i32),          // 10
        insn(JNE_K, 8, 0, MIX - 12, UDP as i32),            // 11
        insn(LD_ABS_H, 0, 0, 0, ip + 6),                    // 12: flags, fragment offset
        insn(JSET_K, 0, 0, MIX - 14, FRAG_OFFSET as i32),   // 13
        insn(LD_ABS_B, 0, 0, 0, ip),                        // 14: version, header length
        insn(AND32_K, 0, 0, 0, 0xf),                        // 15
        insn(LSH32_K, 0, 0, 0, 2),                          // 16
        insn(MOV64_X, 9, 0, 0, 0),                          // 17: r9 = header length
        insn(LD_IND_H, 0, 9, 0, ip),                        // 18: source port
        insn(MOV32_X, 8, 0, 0, 0),                          // 19
        insn(LD_IND_H, 0, 9, 0, ip + 2),                    // 20: destination port
        insn(XOR32_X, 8, 0, 0, 0),                          // 21
        insn(XOR32_X, 7, 8, 0, 0),                          // 22
        insn(MOV32_X, 0, 7, 0, 0),                          // 23: mix
        insn(MUL32_K, 0, 0, 0, golden),                     // 24
        insn(MOV32_X, 1, 0, 0, 0),                          // 25
        insn(RSH32_K, 1, 0, 0, 16),                         // 26
        insn(XOR32_X, 0, 1, 0, 0),                          // 27
        insn(AND32_K, 0, 0, 0, BUCKET_MASK as i32),         // 28
        insn(MOD32_K, 0, 0, 0, modulo.max(1) as i32),       // 29
        insn(EXIT, 0, 0, 0, 0),                             // 30
        insn(MOV64_K, 0, 0, 0, 0),                          // 31: return 0
        insn(EXIT, 0, 0, 0, 0),                             // 32
    ];
    debug_assert_eq!(program.len(), RET0 as usize + 2);
    program
}

/// One classic BPF instruction, as `struct sock_filter` lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    /// Opcode.
    pub code: u16,
    /// Instructions to skip if the jump's condition holds.
    pub jt: u8,
    /// Instructions to skip if it does not.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// Classic BPF opcodes used by [`reuseport_program`] (public for the test interpreter).
pub mod cbpf {
    /// `A = u16 at k` (network order).
    pub const LD_H_ABS: u16 = 0x28;
    /// `A = u8 at k`.
    pub const LD_B_ABS: u16 = 0x30;
    /// `A = u32 at k` (network order).
    pub const LD_W_ABS: u16 = 0x20;
    /// `A = u16 at X + k`.
    pub const LD_H_IND: u16 = 0x48;
    /// `X = 4 * (u8 at k & 0xf)`.
    pub const LDX_B_MSH: u16 = 0xb1;
    /// `A = M[k]`.
    pub const LD_MEM: u16 = 0x60;
    /// `X = M[k]`.
    pub const LDX_MEM: u16 = 0x61;
    /// `M[k] = A`.
    pub const ST: u16 = 0x02;
    /// `A ^= X`.
    pub const XOR_X: u16 = 0xac;
    /// `A *= k`.
    pub const MUL_K: u16 = 0x24;
    /// `A >>= k`.
    pub const RSH_K: u16 = 0x74;
    /// `A &= k`.
    pub const AND_K: u16 = 0x54;
    /// `A %= k`.
    pub const MOD_K: u16 = 0x94;
    /// Jump if `A == k`.
    pub const JEQ_K: u16 = 0x15;
    /// Jump if `A & k != 0`.
    pub const JSET_K: u16 = 0x45;
    /// `X = A`.
    pub const TAX: u16 = 0x07;
    /// `A = X`.
    pub const TXA: u16 = 0x87;
    /// Return `A`.
    pub const RET_A: u16 = 0x16;
    /// Return `k`.
    pub const RET_K: u16 = 0x06;
}

/// The reuseport group's socket selector: `bucket % sockets` of the inner frame of a VXLAN
/// datagram, a classic BPF program for `SO_ATTACH_REUSEPORT_CBPF` (no `bpf(2)`, no privilege).
///
/// Reuseport programs see the UDP payload at offset 0, so the inner Ethernet header is at
/// [`VXLAN_HEADER`]. It steers on the inner frame, not the outer ports, so it works whoever
/// sent the datagram (the kernel's VXLAN picks its own source ports). A load past the end
/// returns 0 (socket 0); a result past the group's size would fall back to the kernel's
/// 4-tuple hash, which `% sockets` prevents.
pub fn reuseport_program(sockets: u32) -> Vec<SockFilter> {
    use cbpf::*;
    let c = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let e = VXLAN_HEADER;
    let ip = e + ETH_HEADER;
    vec![
        c(LD_H_ABS, 0, 0, e + 12),       // 0: ethertype
        c(JEQ_K, 0, 32, ETHERTYPE_IPV4), // 1: not IPv4 -> 34
        c(LD_B_ABS, 0, 0, ip + 9),       // 2: protocol
        c(ST, 0, 0, 0),                  // 3: M0 = protocol
        c(LD_W_ABS, 0, 0, ip + 12),      // 4: source address
        c(ST, 0, 0, 1),                  // 5
        c(LD_W_ABS, 0, 0, ip + 16),      // 6: destination address
        c(LDX_MEM, 0, 0, 1),             // 7
        c(XOR_X, 0, 0, 0),               // 8
        c(LDX_MEM, 0, 0, 0),             // 9
        c(XOR_X, 0, 0, 0),               // 10
        c(ST, 0, 0, 1),                  // 11: M1 = saddr ^ daddr ^ protocol
        c(TXA, 0, 0, 0),                 // 12: A = protocol
        c(JEQ_K, 1, 0, TCP),             // 13: TCP -> 15
        c(JEQ_K, 0, 11, UDP),            // 14: neither -> 26
        c(LD_H_ABS, 0, 0, ip + 6),       // 15: flags, fragment offset
        c(JSET_K, 9, 0, FRAG_OFFSET),    // 16: a later fragment -> 26
        c(LDX_B_MSH, 0, 0, ip),          // 17: X = header length
        c(LD_H_IND, 0, 0, ip),           // 18: source port
        c(ST, 0, 0, 2),                  // 19
        c(LD_H_IND, 0, 0, ip + 2),       // 20: destination port
        c(LDX_MEM, 0, 0, 2),             // 21
        c(XOR_X, 0, 0, 0),               // 22
        c(LDX_MEM, 0, 0, 1),             // 23
        c(XOR_X, 0, 0, 0),               // 24
        c(ST, 0, 0, 1),                  // 25
        c(LD_MEM, 0, 0, 1),              // 26: mix
        c(MUL_K, 0, 0, GOLDEN),          // 27
        c(TAX, 0, 0, 0),                 // 28
        c(RSH_K, 0, 0, 16),              // 29
        c(XOR_X, 0, 0, 0),               // 30
        c(AND_K, 0, 0, BUCKET_MASK),     // 31
        c(MOD_K, 0, 0, sockets.max(1)),  // 32
        c(RET_A, 0, 0, 0),               // 33
        c(RET_K, 0, 0, 0),               // 34: socket 0
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(proto: u8, frag: u16, ihl: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + usize::from(ihl) * 4 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x40 | ihl;
        f[20..22].copy_from_slice(&frag.to_be_bytes());
        f[23] = proto;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        let l4 = 14 + usize::from(ihl) * 4;
        f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn swap(mut f: Vec<u8>, ihl: u8) -> Vec<u8> {
        let (a, b) = f[26..34].split_at_mut(4);
        a.swap_with_slice(b);
        let l4 = 14 + usize::from(ihl) * 4;
        let (s, d) = f[l4..l4 + 4].split_at_mut(2);
        s.swap_with_slice(d);
        f
    }

    #[test]
    fn both_directions_share_a_bucket() {
        for ihl in [5, 6, 15] {
            let f = frame(6, 0, ihl, 41000, 5201);
            assert_eq!(bucket(&f), bucket(&swap(f.clone(), ihl)));
        }
    }

    #[test]
    fn the_hash_is_the_documented_one() {
        let f = frame(6, 0, 5, 41000, 5201);
        let h = 0x0a00_0001u32 ^ 0x0a00_0002 ^ 6 ^ (41000 ^ 5201);
        assert_eq!(u32::from(bucket(&f)), mix(h) & BUCKET_MASK);
        // A later fragment or another protocol: addresses and protocol only.
        let g = frame(6, 0x0010, 5, 41000, 5201);
        assert_eq!(
            u32::from(bucket(&g)),
            mix(0x0a00_0001 ^ 0x0a00_0002 ^ 6) & BUCKET_MASK
        );
        let icmp = frame(1, 0, 5, 41000, 5201);
        assert_eq!(
            u32::from(bucket(&icmp)),
            mix(0x0a00_0001 ^ 0x0a00_0002 ^ 1) & BUCKET_MASK
        );
    }

    #[test]
    fn the_tuple_helper_agrees_with_frames() {
        let f = frame(6, 0, 5, 41000, 5201);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(bucket(&f), ipv4_flow_bucket(a, b, 6, 41000, 5201));
        assert_eq!(bucket(&f), ipv4_flow_bucket(b, a, 6, 5201, 41000));
    }

    #[test]
    fn unreadable_frames_are_bucket_zero() {
        let f = frame(6, 0, 5, 41000, 5201);
        assert_eq!(bucket(&f[..37]), 0, "ports cut off");
        assert_eq!(bucket(&f[..13]), 0);
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(bucket(&arp), 0);
    }

    #[test]
    fn programs_have_their_jump_targets_in_range() {
        let e = tap_program(2);
        for (pc, insn) in e.iter().enumerate() {
            if insn.code & 0x07 == 0x05 && insn.code != ebpf::EXIT {
                let target = pc as i64 + 1 + i64::from(insn.off);
                assert!((0..e.len() as i64).contains(&target), "insn {pc}");
            }
        }
        let c = reuseport_program(2);
        for (pc, insn) in c.iter().enumerate() {
            if insn.code & 0x07 == 0x05 {
                assert!(
                    pc + 1 + usize::from(insn.jt.max(insn.jf)) < c.len(),
                    "insn {pc}"
                );
            }
        }
    }
}
