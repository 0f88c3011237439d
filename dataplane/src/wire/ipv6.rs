//! IPv6 (RFC 8200) fixed headers. Extension headers are not walked: the
//! payload starts right after the 40-byte header and `next_header` says what it is.

use core::net::Ipv6Addr;

use super::{Result, WireError, clamp_range, read_array, read_u16, read_u32, write_u16, write_u32};

/// Length of the IPv6 fixed header.
pub const HEADER_LEN: usize = 40;

mod field {
    use crate::wire::Field;
    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates: len ≥ 40, version 6, 40 + payload_len ≤ len (trailing
    /// padding allowed). Jumbograms (payload_len 0 + Jumbo option) are not
    /// supported: they parse with an empty payload.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 6 {
            return Err(WireError::Malformed);
        }
        if Self::HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ver_tc_flow(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }

    /// IP version (6 for a valid packet).
    pub fn version(&self) -> u8 {
        (self.ver_tc_flow() >> 28) as u8
    }

    /// Traffic class (DSCP/ECN).
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// 20-bit flow label.
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000F_FFFF
    }

    /// Payload length (everything after the 40-byte header).
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Next header (see [`super::ip_protocol`]).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(read_array::<16>(self.buffer.as_ref(), field::SRC_ADDR))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(read_array::<16>(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// Payload: `40..40 + payload_len`.
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = Self::HEADER_LEN + usize::from(self.payload_len());
        &data[clamp_range(Self::HEADER_LEN, end, data.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn set_ver_tc_flow(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, v);
    }

    /// Sets the version nibble.
    pub fn set_version(&mut self, version: u8) {
        let v = self.ver_tc_flow();
        self.set_ver_tc_flow((v & 0x0FFF_FFFF) | (u32::from(version & 0x0F) << 28));
    }

    /// Sets the traffic class.
    pub fn set_traffic_class(&mut self, tc: u8) {
        let v = self.ver_tc_flow();
        self.set_ver_tc_flow((v & 0xF00F_FFFF) | (u32::from(tc) << 20));
    }

    /// Sets the flow label (low 20 bits of `label`).
    pub fn set_flow_label(&mut self, label: u32) {
        let v = self.ver_tc_flow();
        self.set_ver_tc_flow((v & 0xFFF0_0000) | (label & 0x000F_FFFF));
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = v;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Mutable payload: `40..40 + payload_len`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = Self::HEADER_LEN + usize::from(self.payload_len());
        let data = self.buffer.as_mut();
        let len = data.len();
        &mut data[clamp_range(Self::HEADER_LEN, end, len)]
    }
}

/// The fields of an IPv6 fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Next header (see [`super::ip_protocol`]).
    pub next_header: u8,
    /// Payload length.
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
}

impl Ipv6Repr {
    /// Reads the header (validating lengths first). Traffic class and flow
    /// label are not represented.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Ipv6Repr> {
        packet.check_len()?;
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
        })
    }

    /// Header length: 40.
    pub const fn header_len(&self) -> usize {
        40
    }

    /// Bytes written by [`Self::emit`]: the 40-byte header.
    pub const fn buffer_len(&self) -> usize {
        40
    }

    /// Header plus payload.
    pub const fn total_len(&self) -> usize {
        40 + self.payload_len
    }

    /// Writes the 40-byte header with traffic class and flow label 0.
    /// `payload_len` must fit in 16 bits (debug-asserted; saturates).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        debug_assert!(self.payload_len <= usize::from(u16::MAX));
        packet.set_ver_tc_flow(6 << 28);
        packet.set_payload_len(u16::try_from(self.payload_len).unwrap_or(u16::MAX));
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::super::ip_protocol;
    use super::*;

    // fe80::1 -> ff02::1, tc 0xb8, flow 0x12345, next header UDP, hop limit 255,
    // payload_len 4, followed by 4 payload bytes and 2 bytes of padding.
    const GOLDEN: [u8; 46] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x04, 0x11, 0xff, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0x01, 0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xde, 0xad, 0xbe,
        0xef, 0x00, 0x00,
    ];

    #[test]
    fn parse_golden() {
        let p = Ipv6Packet::new_checked(&GOLDEN[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), ip_protocol::UDP);
        assert_eq!(p.hop_limit(), 255);
        assert_eq!(p.src_addr(), "fe80::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "ff02::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn emit_and_setters() {
        let repr = Ipv6Repr::parse(&Ipv6Packet::new_checked(&GOLDEN[..]).unwrap()).unwrap();
        assert_eq!(repr.total_len(), 44);
        let mut buf = GOLDEN;
        buf[..40].fill(0x55);
        let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut p);
        p.set_traffic_class(0xb8);
        p.set_flow_label(0x12345);
        assert_eq!(buf, GOLDEN);
        let mut p = Ipv6Packet::new_checked(&mut buf[..]).unwrap();
        p.set_flow_label(0xFFFF_FFFF);
        assert_eq!(p.flow_label(), 0xF_FFFF);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.version(), 6);
        p.set_traffic_class(0);
        p.set_version(6);
        assert_eq!(p.flow_label(), 0xF_FFFF);
        p.set_payload_len(100);
        assert_eq!(p.payload().len(), 6); // clamped to the buffer
        p.payload_mut().fill(0);
    }

    #[test]
    fn errors() {
        let chk = |b: &[u8]| Ipv6Packet::new_checked(b).map(|_| ());
        assert_eq!(chk(&GOLDEN[..39]), Err(WireError::Truncated));
        assert_eq!(chk(&GOLDEN[..43]), Err(WireError::Truncated));
        assert_eq!(chk(&GOLDEN[..44]), Ok(()));
        let mut b = GOLDEN;
        b[0] = 0x4b;
        assert_eq!(chk(&b), Err(WireError::Malformed));
    }
}
