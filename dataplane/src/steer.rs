//! Which worker owns a flow: one symmetric hash of the inner IPv4 or IPv6 5-tuple, computed in
//! three places that must agree bit for bit.
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
//! a frame the programs cannot read to the end — truncated, neither IPv4 nor IPv6 — is bucket 0,
//! which is what the programs return for it. IPv6 ports are read right behind the fixed header:
//! a packet with extension headers (a fragment, say) hashes on its addresses and next header.
//! Only the definition lives here; loading and attaching is [`crate::io::steering`].

/// The multiplier of the mix (2^32 / φ): spreads the XOR of the tuple over all 32 bits.
pub const GOLDEN: u32 = 0x9E37_79B1;
/// Buckets are the low 14 bits of the mixed hash.
pub const BUCKET_MASK: u32 = 0x3fff;
/// Bytes in front of the inner Ethernet header of a VXLAN payload.
pub const VXLAN_HEADER: u32 = 8;

const ETHERTYPE_IPV4: u32 = 0x0800;
const ETHERTYPE_IPV6: u32 = 0x86dd;
/// The IPv6 header's next-header field, addresses (eight 32-bit words) and first byte behind it.
const IPV6_NEXT_HEADER: u32 = 6;
const IPV6_ADDRESSES: u32 = 8;
const IPV6_HEADER: u32 = 40;
const ETH_HEADER: u32 = 14;
const TCP: u32 = 6;
const UDP: u32 = 17;
/// The fragment-offset bits of the IPv4 flags/fragment field.
const FRAG_OFFSET: u32 = 0x1fff;

/// The steering bucket of an Ethernet frame (`0..=0x3fff`).
pub fn bucket(frame: &[u8]) -> u16 {
    tuple_hash(frame).map_or(0, bucket_of)
}

/// The bucket [`bucket`] gives the frames of an unfragmented IPv4 TCP (6) or UDP (17) flow
/// from `src:sport` to `dst:dport` (either direction): lets tools and tests pick ports that
/// land on given workers. The ports count whatever `protocol` is: give TCP or UDP.
pub fn ipv4_flow_bucket(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    protocol: u8,
    sport: u16,
    dport: u16,
) -> u16 {
    let h = u32::from(src) ^ u32::from(dst) ^ u32::from(protocol) ^ u32::from(sport ^ dport);
    bucket_of(h)
}

/// The bucket [`bucket`] gives the frames of an IPv6 flow without extension headers (either
/// direction); the ports count only when `next_header` is TCP (6) or UDP (17), as in the
/// frames.
pub fn ipv6_flow_bucket(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next_header: u8,
    sport: u16,
    dport: u16,
) -> u16 {
    // The XOR of the address's four 32-bit words.
    let words = |a: std::net::Ipv6Addr| {
        let x = u128::from(a);
        (x ^ x >> 32 ^ x >> 64 ^ x >> 96) as u32
    };
    let mut h = words(src) ^ words(dst) ^ u32::from(next_header);
    if u32::from(next_header) == TCP || u32::from(next_header) == UDP {
        h ^= u32::from(sport ^ dport);
    }
    bucket_of(h)
}

/// The worker of `bucket` among `workers` (at least one).
pub fn worker_of(bucket: u16, workers: usize) -> usize {
    usize::from(bucket) % workers.max(1)
}

/// The bucket of a tuple hash: mixed, then its low 14 bits.
fn bucket_of(h: u32) -> u16 {
    (mix(h) & BUCKET_MASK) as u16
}

fn mix(h: u32) -> u32 {
    let h = h.wrapping_mul(GOLDEN);
    h ^ (h >> 16)
}

/// IPv4: `saddr ^ daddr ^ proto`, and `^ (sport ^ dport)` for the first fragment (or only
/// piece) of TCP and UDP. IPv6: the XOR of the addresses' eight 32-bit words `^ next_header`,
/// and `^ (sport ^ dport)` when the next header is TCP or UDP. `None` for frames the programs
/// return 0 for.
fn tuple_hash(frame: &[u8]) -> Option<u32> {
    let at = |offset: u32, len: usize| -> Option<u32> {
        let start = offset as usize;
        let bytes = frame.get(start..start.checked_add(len)?)?;
        Some(bytes.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)))
    };
    let ip = ETH_HEADER;
    match at(12, 2)? {
        ETHERTYPE_IPV4 => {
            let proto = at(ip + 9, 1)?;
            let mut h = at(ip + 12, 4)? ^ at(ip + 16, 4)? ^ proto;
            if (proto == TCP || proto == UDP) && at(ip + 6, 2)? & FRAG_OFFSET == 0 {
                let ihl = (at(ip, 1)? & 0xf) * 4;
                h ^= at(ip + ihl, 2)? ^ at(ip + ihl + 2, 2)?;
            }
            Some(h)
        }
        ETHERTYPE_IPV6 => {
            let next = at(ip + IPV6_NEXT_HEADER, 1)?;
            let mut h = next;
            for word in 0..8 {
                h ^= at(ip + IPV6_ADDRESSES + 4 * word, 4)?;
            }
            if next == TCP || next == UDP {
                h ^= at(ip + IPV6_HEADER, 2)? ^ at(ip + IPV6_HEADER + 2, 2)?;
            }
            Some(h)
        }
        _ => None,
    }
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
    pub const JA: u8 = 0x05;
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
/// clobber r1–r5, so the state lives in r7 (hash), r8 (IPv4 protocol, then ports; IPv6 next
/// header) and r9 (IPv4 header length; IPv6 ports); a load past the end of the frame ends the
/// program with 0.
pub fn tap_program(queues: u32) -> Vec<BpfInsn> {
    ebpf_program(0, queues)
}

/// Where the steering programs' jumps go, resolved once the program is laid out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    /// The IPv6 branch.
    Ipv6,
    /// IPv4 TCP or UDP: the fragment check and the ports.
    Ports,
    /// IPv6 TCP or UDP: the ports.
    Ipv6Ports,
    /// IPv6: the hash is in X (classic program only).
    Ipv6Done,
    /// The hash is complete: mix, mask, modulo.
    Mix,
    /// Return 0.
    Ret0,
}

/// Instruction indices of each [`Label`], and the jumps to patch once they are all known.
struct Layout<T> {
    insns: Vec<T>,
    labels: Vec<(Label, usize)>,
    /// A jump's instruction index, its label, and whether it goes there when its condition
    /// holds (classic BPF's `jt`) or when it does not (`jf`).
    jumps: Vec<(usize, Label, bool)>,
}

impl<T> Layout<T> {
    fn new() -> Self {
        Layout {
            insns: Vec::with_capacity(80),
            labels: Vec::new(),
            jumps: Vec::new(),
        }
    }

    fn here(&mut self, label: Label) {
        assert!(
            self.labels.iter().all(|(l, _)| *l != label),
            "{label:?} placed once"
        );
        self.labels.push((label, self.insns.len()));
    }

    fn push(&mut self, insn: T) {
        self.insns.push(insn);
    }

    /// Pushes a jump to `label`, taken when its condition holds (or always).
    fn jump(&mut self, insn: T, label: Label) {
        self.jumps.push((self.insns.len(), label, true));
        self.insns.push(insn);
    }

    /// Pushes a classic conditional jump to `label`, taken when its condition does not hold.
    fn jump_unless(&mut self, insn: T, label: Label) {
        self.jumps.push((self.insns.len(), label, false));
        self.insns.push(insn);
    }

    /// Patches every jump: `patch` gets the instruction, the distance (target minus the next
    /// instruction's index: only forward jumps are laid out) and the branch.
    fn finish(mut self, patch: impl Fn(&mut T, usize, bool)) -> Vec<T> {
        for &(at, label, taken) in &self.jumps {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| *l == label)
                .map(|&(_, i)| i)
                .expect("every jump's label is laid out");
            assert!(target > at, "steering programs only jump forward");
            patch(&mut self.insns[at], target - at - 1, taken);
        }
        self.insns
    }
}

/// [`tap_program`] for a frame starting at byte `eth` of the program's data.
pub fn ebpf_program(eth: u32, modulo: u32) -> Vec<BpfInsn> {
    use ebpf::*;
    let e = eth as i32;
    let ip = e + ETH_HEADER as i32;
    let mut p = Layout::new();
    p.push(insn(MOV64_X, 6, 1, 0, 0)); // r6 = ctx
    p.push(insn(LD_ABS_H, 0, 0, 0, e + 12)); // ethertype
    p.jump(insn(JEQ_K, 0, 0, 0, ETHERTYPE_IPV6 as i32), Label::Ipv6);
    p.jump(insn(JNE_K, 0, 0, 0, ETHERTYPE_IPV4 as i32), Label::Ret0);
    // IPv4: r7 = saddr ^ daddr ^ protocol.
    p.push(insn(LD_ABS_B, 0, 0, 0, ip + 9));
    p.push(insn(MOV32_X, 8, 0, 0, 0));
    p.push(insn(LD_ABS_W, 0, 0, 0, ip + 12));
    p.push(insn(MOV32_X, 7, 0, 0, 0));
    p.push(insn(LD_ABS_W, 0, 0, 0, ip + 16));
    p.push(insn(XOR32_X, 7, 0, 0, 0));
    p.push(insn(XOR32_X, 7, 8, 0, 0));
    p.jump(insn(JEQ_K, 8, 0, 0, TCP as i32), Label::Ports);
    p.jump(insn(JNE_K, 8, 0, 0, UDP as i32), Label::Mix);
    p.here(Label::Ports);
    p.push(insn(LD_ABS_H, 0, 0, 0, ip + 6)); // flags, fragment offset
    p.jump(insn(JSET_K, 0, 0, 0, FRAG_OFFSET as i32), Label::Mix);
    p.push(insn(LD_ABS_B, 0, 0, 0, ip)); // version, header length
    p.push(insn(AND32_K, 0, 0, 0, 0xf));
    p.push(insn(LSH32_K, 0, 0, 0, 2));
    p.push(insn(MOV64_X, 9, 0, 0, 0)); // r9 = header length
    p.push(insn(LD_IND_H, 0, 9, 0, ip)); // source port
    p.push(insn(MOV32_X, 8, 0, 0, 0));
    p.push(insn(LD_IND_H, 0, 9, 0, ip + 2)); // destination port
    p.push(insn(XOR32_X, 8, 0, 0, 0));
    p.push(insn(XOR32_X, 7, 8, 0, 0));
    p.jump(insn(JA, 0, 0, 0, 0), Label::Mix);
    // IPv6: r7 = next header ^ the eight address words.
    p.here(Label::Ipv6);
    p.push(insn(LD_ABS_B, 0, 0, 0, ip + IPV6_NEXT_HEADER as i32));
    p.push(insn(MOV32_X, 8, 0, 0, 0));
    p.push(insn(MOV32_X, 7, 0, 0, 0));
    for word in 0..8 {
        p.push(insn(
            LD_ABS_W,
            0,
            0,
            0,
            ip + (IPV6_ADDRESSES + 4 * word) as i32,
        ));
        p.push(insn(XOR32_X, 7, 0, 0, 0));
    }
    p.jump(insn(JEQ_K, 8, 0, 0, TCP as i32), Label::Ipv6Ports);
    p.jump(insn(JNE_K, 8, 0, 0, UDP as i32), Label::Mix);
    p.here(Label::Ipv6Ports);
    p.push(insn(LD_ABS_H, 0, 0, 0, ip + IPV6_HEADER as i32)); // source port
    p.push(insn(MOV32_X, 9, 0, 0, 0));
    p.push(insn(LD_ABS_H, 0, 0, 0, ip + IPV6_HEADER as i32 + 2)); // destination port
    p.push(insn(XOR32_X, 9, 0, 0, 0));
    p.push(insn(XOR32_X, 7, 9, 0, 0));
    p.here(Label::Mix);
    p.push(insn(MOV32_X, 0, 7, 0, 0));
    p.push(insn(MUL32_K, 0, 0, 0, GOLDEN as i32));
    p.push(insn(MOV32_X, 1, 0, 0, 0));
    p.push(insn(RSH32_K, 1, 0, 0, 16));
    p.push(insn(XOR32_X, 0, 1, 0, 0));
    p.push(insn(AND32_K, 0, 0, 0, BUCKET_MASK as i32));
    p.push(insn(MOD32_K, 0, 0, 0, modulo.max(1) as i32));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p.here(Label::Ret0);
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p.finish(|insn, distance, taken| {
        assert!(taken, "an eBPF jump is taken when its condition holds");
        insn.off = distance as i16;
    })
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
    /// Jump `k` instructions ahead.
    pub const JA: u16 = 0x05;
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
    let c = |code, k| SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let e = VXLAN_HEADER;
    let ip = e + ETH_HEADER;
    let mut p = Layout::new();
    p.push(c(LD_H_ABS, e + 12)); // ethertype
    p.jump(c(JEQ_K, ETHERTYPE_IPV6), Label::Ipv6);
    p.jump_unless(c(JEQ_K, ETHERTYPE_IPV4), Label::Ret0);
    // IPv4: M1 = saddr ^ daddr ^ protocol, M0 = protocol.
    p.push(c(LD_B_ABS, ip + 9));
    p.push(c(ST, 0));
    p.push(c(LD_W_ABS, ip + 12));
    p.push(c(ST, 1));
    p.push(c(LD_W_ABS, ip + 16));
    p.push(c(LDX_MEM, 1));
    p.push(c(XOR_X, 0));
    p.push(c(LDX_MEM, 0));
    p.push(c(XOR_X, 0));
    p.push(c(ST, 1));
    p.push(c(TXA, 0)); // A = protocol
    p.jump(c(JEQ_K, TCP), Label::Ports);
    p.jump_unless(c(JEQ_K, UDP), Label::Mix);
    p.here(Label::Ports);
    p.push(c(LD_H_ABS, ip + 6)); // flags, fragment offset
    p.jump(c(JSET_K, FRAG_OFFSET), Label::Mix); // a later fragment
    p.push(c(LDX_B_MSH, ip)); // X = header length
    p.push(c(LD_H_IND, ip)); // source port
    p.push(c(ST, 2));
    p.push(c(LD_H_IND, ip + 2)); // destination port
    p.push(c(LDX_MEM, 2));
    p.push(c(XOR_X, 0));
    p.push(c(LDX_MEM, 1));
    p.push(c(XOR_X, 0));
    p.push(c(ST, 1));
    p.jump(c(JA, 0), Label::Mix);
    // IPv6: X = next header ^ the eight address words (absolute loads leave X alone).
    p.here(Label::Ipv6);
    p.push(c(LD_B_ABS, ip + IPV6_NEXT_HEADER));
    p.push(c(TAX, 0));
    for word in 0..8 {
        p.push(c(LD_W_ABS, ip + IPV6_ADDRESSES + 4 * word));
        p.push(c(XOR_X, 0));
        p.push(c(TAX, 0));
    }
    p.push(c(LD_B_ABS, ip + IPV6_NEXT_HEADER));
    p.jump(c(JEQ_K, TCP), Label::Ipv6Ports);
    p.jump_unless(c(JEQ_K, UDP), Label::Ipv6Done);
    p.here(Label::Ipv6Ports);
    p.push(c(LD_H_ABS, ip + IPV6_HEADER)); // source port
    p.push(c(XOR_X, 0));
    p.push(c(TAX, 0));
    p.push(c(LD_H_ABS, ip + IPV6_HEADER + 2)); // destination port
    p.push(c(XOR_X, 0));
    p.push(c(TAX, 0));
    p.here(Label::Ipv6Done);
    p.push(c(TXA, 0));
    p.push(c(ST, 1));
    p.here(Label::Mix);
    p.push(c(LD_MEM, 1));
    p.push(c(MUL_K, GOLDEN));
    p.push(c(TAX, 0));
    p.push(c(RSH_K, 16));
    p.push(c(XOR_X, 0));
    p.push(c(AND_K, BUCKET_MASK));
    p.push(c(MOD_K, sockets.max(1)));
    p.push(c(RET_A, 0));
    p.here(Label::Ret0);
    p.push(c(RET_K, 0)); // socket 0
    p.finish(|insn, distance, taken| {
        let distance = u8::try_from(distance).expect("a short program");
        match (insn.code, taken) {
            (JA, _) => insn.k = u32::from(distance),
            (_, true) => insn.jt = distance,
            (_, false) => insn.jf = distance,
        }
    })
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

    /// An IPv6 frame from `fd00:1::1` to `fd00:2::2` with `next` as its next header and the
    /// ports right behind the fixed header.
    fn frame6(next: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[20] = next;
        f[22..38].copy_from_slice(&"fd00:1::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f[38..54].copy_from_slice(&"fd00:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f[54..56].copy_from_slice(&sport.to_be_bytes());
        f[56..58].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn ipv6_flows_hash_on_addresses_and_ports() {
        let f = frame6(6, 41000, 5201);
        let mut back = f.clone();
        let (a, b) = back[22..54].split_at_mut(16);
        a.swap_with_slice(b);
        let (s, d) = back[54..58].split_at_mut(2);
        s.swap_with_slice(d);
        assert_eq!(bucket(&f), bucket(&back), "both directions");
        let (a, b) = ("fd00:1::1".parse().unwrap(), "fd00:2::2".parse().unwrap());
        assert_eq!(bucket(&f), ipv6_flow_bucket(a, b, 6, 41000, 5201));
        assert_eq!(bucket(&f), ipv6_flow_bucket(b, a, 6, 5201, 41000));
        // The addresses' 32-bit words: only the first and last of each are not zero.
        let addresses = [0xfd00_0001u32, 1, 0xfd00_0002, 2]
            .iter()
            .fold(0, |h, w| h ^ w);
        let h = addresses ^ 6 ^ (41000 ^ 5201);
        assert_eq!(u32::from(bucket(&f)), mix(h) & BUCKET_MASK);
        // Another port: another flow (almost always another bucket).
        assert_ne!(bucket(&f), bucket(&frame6(6, 41001, 5201)));
        // Extension headers (here a fragment header) or ICMPv6: addresses and next header.
        for next in [44, 58] {
            assert_eq!(
                u32::from(bucket(&frame6(next, 41000, 5201))),
                mix(addresses ^ u32::from(next)) & BUCKET_MASK
            );
            assert_eq!(bucket(&frame6(next, 1, 2)), bucket(&frame6(next, 3, 4)));
        }
        assert_eq!(bucket(&f[..57]), 0, "ports cut off");
        assert_eq!(bucket(&frame6(58, 0, 0)[..53]), 0, "address cut off");
    }

    #[test]
    fn programs_have_their_documented_lengths() {
        // README, the design note and `io::steering` give these counts.
        assert_eq!(tap_program(2).len(), 61);
        assert_eq!(reuseport_program(2).len(), 74);
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
            let furthest = match insn.code {
                cbpf::JA => {
                    // Its only jump goes to the mix, whose first instruction loads M1 (one
                    // further would compute the same, unseen by the agreement tests).
                    let target = pc + 1 + insn.k as usize;
                    assert_eq!(c[target].code, cbpf::LD_MEM, "insn {pc} jumps to the mix");
                    insn.k as usize
                }
                code if code & 0x07 == 0x05 => usize::from(insn.jt.max(insn.jf)),
                _ => continue,
            };
            assert!(pc + 1 + furthest < c.len(), "insn {pc}");
        }
    }
}
