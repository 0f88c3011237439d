//! IPv4 (RFC 791) headers.

use core::net::Ipv4Addr;

use super::{Result, WireError, checksum, clamp_range, read_array, read_u16, write_u16};

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

mod field {
    use crate::wire::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1FFF;

/// A view of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Length of a header without options.
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates: len ≥ 20, version 4, IHL ≥ 5, header_len ≤ len,
    /// header_len ≤ total_len ≤ len. Bytes after `total_len` (Ethernet padding)
    /// are allowed and excluded from [`Self::payload`]. The checksum is not checked.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::Malformed);
        }
        let header_len = self.header_len();
        if header_len < Self::HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if header_len > len {
            return Err(WireError::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(WireError::Malformed);
        }
        if total_len > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4 for a valid packet).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0F) * 4
    }

    /// The DSCP/ECN byte (formerly TOS).
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total length (header + payload) from the header.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// Whether this is a fragment (MF set or non-zero offset).
    pub fn is_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload (see [`super::ip_protocol`]).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::SRC_ADDR))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// Whether the header checksum (over `header_len` bytes) is correct.
    pub fn verify_checksum(&self) -> bool {
        let data = self.buffer.as_ref();
        checksum::fold(checksum::sum(
            &data[clamp_range(0, self.header_len(), data.len())],
        )) == 0
    }

    /// Options bytes (`20..header_len`).
    pub fn options(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[clamp_range(Self::HEADER_LEN, self.header_len(), data.len())]
    }

    /// Payload: `header_len..total_len` (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.total_len());
        &data[clamp_range(self.header_len(), end, data.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version nibble.
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0F) | (version << 4);
    }

    /// Sets the header length in bytes (stored as IHL = len / 4).
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xF0) | ((len / 4) as u8 & 0x0F);
    }

    /// Sets the DSCP/ECN byte.
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, v);
    }

    /// Sets DF, MF and the fragment offset (in bytes; must be a multiple of 8,
    /// the low 3 bits are dropped). The reserved flag is cleared.
    pub fn set_flags_and_frag_offset(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & FRAG_OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        write_u16(self.buffer.as_mut(), field::FLG_OFF, v);
    }

    /// Sets only the Don't Fragment flag.
    pub fn set_dont_frag(&mut self, on: bool) {
        self.set_flag_bit(FLAG_DF, on);
    }

    /// Sets only the More Fragments flag.
    pub fn set_more_frags(&mut self, on: bool) {
        self.set_flag_bit(FLAG_MF, on);
    }

    /// Sets only the fragment offset (in bytes, multiple of 8).
    pub fn set_frag_offset(&mut self, offset: u16) {
        let data = self.buffer.as_mut();
        let v = read_u16(data, field::FLG_OFF);
        let v = (v & !FRAG_OFFSET_MASK) | ((offset >> 3) & FRAG_OFFSET_MASK);
        write_u16(data, field::FLG_OFF, v);
    }

    fn set_flag_bit(&mut self, bit: u16, on: bool) {
        let data = self.buffer.as_mut();
        let v = read_u16(data, field::FLG_OFF);
        write_u16(data, field::FLG_OFF, if on { v | bit } else { v & !bit });
    }

    /// Sets the TTL.
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    /// Sets the protocol.
    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = v;
    }

    /// Sets the checksum field verbatim.
    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Computes and stores the header checksum (over `header_len` bytes).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let data = self.buffer.as_ref();
        let c = checksum::fold(checksum::sum(&data[clamp_range(0, header_len, data.len())]));
        self.set_checksum(c);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Mutable payload: `header_len..total_len`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = {
            let data = self.buffer.as_ref();
            clamp_range(self.header_len(), usize::from(self.total_len()), data.len())
        };
        &mut self.buffer.as_mut()[range]
    }
}

/// The fields of an IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol (see [`super::ip_protocol`]).
    pub next_header: u8,
    /// Payload length (total length − header length).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Don't Fragment flag.
    pub dont_frag: bool,
    /// Identification.
    pub ident: u16,
}

impl Ipv4Repr {
    /// Reads the header (validating lengths first). Options, DSCP/ECN and the
    /// fragment fields are not represented; the checksum is not verified —
    /// call [`Ipv4Packet::verify_checksum`] when it matters.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr> {
        packet.check_len()?;
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            dont_frag: packet.dont_frag(),
            ident: packet.ident(),
        })
    }

    /// Emitted header length: 20 (no options).
    pub const fn header_len(&self) -> usize {
        20
    }

    /// Bytes written by [`Self::emit`]: the 20-byte header.
    pub const fn buffer_len(&self) -> usize {
        20
    }

    /// Header plus payload: the value written to `total_len`.
    pub const fn total_len(&self) -> usize {
        20 + self.payload_len
    }

    /// Writes a 20-byte header (IHL 5, DSCP/ECN 0, MF 0, offset 0) and fills
    /// the checksum. `payload_len` must be ≤ 65 515 (debug-asserted; saturates).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        debug_assert!(self.total_len() <= usize::from(u16::MAX));
        packet.set_version(4);
        packet.set_header_len(20);
        packet.set_dscp_ecn(0);
        packet.set_total_len(u16::try_from(self.total_len()).unwrap_or(u16::MAX));
        packet.set_ident(self.ident);
        packet.set_flags_and_frag_offset(self.dont_frag, false, 0);
        packet.set_ttl(self.ttl);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::super::ip_protocol;
    use super::*;

    // 10.0.0.1 -> 10.0.0.2 UDP 1234 -> 5678, 4-byte payload "vxn!", DF, id 0x1c46,
    // ttl 64; header checksum 0x0a85 and UDP checksum 0xec39 precomputed with an
    // independent (Python, RFC 1071) implementation.
    pub(crate) const IPV4_UDP: [u8; 32] = [
        0x45, 0x00, 0x00, 0x20, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x0a, 0x85, 0x0a, 0x00, 0x00,
        0x01, 0x0a, 0x00, 0x00, 0x02, 0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0c, 0xec, 0x39, 0x76, 0x78,
        0x6e, 0x21,
    ];

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2),
            next_header: ip_protocol::UDP,
            payload_len: 12,
            ttl: 64,
            dont_frag: true,
            ident: 0x1c46,
        }
    }

    #[test]
    fn parse_golden() {
        let p = Ipv4Packet::new_checked(&IPV4_UDP[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(p.total_len(), 32);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.next_header(), ip_protocol::UDP);
        assert_eq!(p.checksum(), 0x0a85);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.payload(), &IPV4_UDP[20..]);
        assert!(p.options().is_empty());
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr());
    }

    #[test]
    fn emit_golden() {
        let mut buf = IPV4_UDP;
        buf[..20].fill(0xEE);
        repr().emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, IPV4_UDP);
    }

    #[test]
    fn padding_is_excluded() {
        let mut buf = [0u8; 60];
        buf[..32].copy_from_slice(&IPV4_UDP);
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload().len(), 12);
    }

    #[test]
    fn errors() {
        let chk = |b: &[u8]| Ipv4Packet::new_checked(b).map(|_| ());
        assert_eq!(chk(&IPV4_UDP[..19]), Err(WireError::Truncated));
        // total_len 32 > 31 bytes present.
        assert_eq!(chk(&IPV4_UDP[..31]), Err(WireError::Truncated));
        let mut b = IPV4_UDP;
        b[0] = 0x65; // version 6
        assert_eq!(chk(&b), Err(WireError::Malformed));
        b[0] = 0x44; // IHL 4
        assert_eq!(chk(&b), Err(WireError::Malformed));
        b[0] = 0x49; // IHL 9 = 36 bytes > 32
        assert_eq!(chk(&b), Err(WireError::Truncated));
        let mut b = IPV4_UDP;
        b[2..4].copy_from_slice(&19u16.to_be_bytes()); // total_len < header_len
        assert_eq!(chk(&b), Err(WireError::Malformed));
    }

    #[test]
    fn fragment_fields_and_checksum() {
        let mut buf = IPV4_UDP;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_flags_and_frag_offset(false, true, 1480);
        assert!(!p.dont_frag() && p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        assert!(!p.verify_checksum());
        p.set_dont_frag(true);
        p.set_more_frags(false);
        p.set_frag_offset(8);
        assert!(p.dont_frag() && !p.more_frags());
        assert_eq!(p.frag_offset(), 8);
        p.set_ttl(1);
        p.set_dscp_ecn(0xb8);
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.dscp_ecn(), 0xb8);
    }

    #[test]
    fn options_and_setter_abuse() {
        // IHL 6 with a 4-byte NOP/EOL option.
        let mut buf = [0u8; 28];
        buf[0] = 0x46;
        buf[2..4].copy_from_slice(&28u16.to_be_bytes());
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]);
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload().len(), 4);
        // A bogus length set after validation must not make getters panic.
        p.set_total_len(9000);
        p.set_header_len(60);
        assert!(p.payload().is_empty());
        assert!(p.payload_mut().is_empty());
        assert_eq!(p.options().len(), 8);
        let _ = p.verify_checksum();
        p.fill_checksum();
    }
}
