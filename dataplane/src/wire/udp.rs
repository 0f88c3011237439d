//! UDP (RFC 768) datagrams.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::{Result, WireError, checksum, clamp_range, ip_protocol, read_u16, write_u16};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

mod field {
    use crate::wire::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// A view of a UDP datagram. The datagram is `..len()`; bytes after it
/// (IP-level padding) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Length of the header.
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates: buffer ≥ 8 bytes and 8 ≤ length field ≤ buffer length.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let field_len = usize::from(self.len());
        if field_len < Self::HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if field_len > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length field: header + payload.
    #[allow(clippy::len_without_is_empty)] // a header field, not a container length
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Checksum field (0 = none, IPv4 only).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The datagram bytes covered by the length field (clamped to the buffer).
    fn datagram(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[clamp_range(0, usize::from(self.len()), data.len())]
    }

    /// Payload: `8..len`.
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[clamp_range(Self::HEADER_LEN, usize::from(self.len()), data.len())]
    }

    fn sum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let d = self.datagram();
        let ph = checksum::pseudo_header_v4(src, dst, ip_protocol::UDP, d.len() as u32);
        checksum::fold(u32::from(checksum::combine(&[ph, checksum::sum(d)])))
    }

    fn sum_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> u16 {
        let d = self.datagram();
        let ph = checksum::pseudo_header_v6(src, dst, ip_protocol::UDP, d.len() as u32);
        checksum::fold(u32::from(checksum::combine(&[ph, checksum::sum(d)])))
    }

    /// Verifies the checksum over IPv4. A zero checksum means "not computed"
    /// and verifies.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || self.sum_v4(src, dst) == 0
    }

    /// Verifies the checksum over IPv6, where it is mandatory: zero fails.
    pub fn verify_checksum_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        self.checksum() != 0 && self.sum_v6(src, dst) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    /// Sets the checksum field verbatim.
    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Computes and stores the checksum over IPv4 (a computed 0 goes out as
    /// 0xFFFF, since 0 means "none").
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = self.sum_v4(src, dst);
        self.set_checksum(if c == 0 { 0xFFFF } else { c });
    }

    /// Computes and stores the checksum over IPv6 (a computed 0 goes out as 0xFFFF).
    pub fn fill_checksum_v6(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let c = self.sum_v6(src, dst);
        self.set_checksum(if c == 0 { 0xFFFF } else { c });
    }

    /// Mutable payload: `8..len`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        let data = self.buffer.as_mut();
        let len = data.len();
        &mut data[clamp_range(Self::HEADER_LEN, end, len)]
    }
}

/// The fields of a UDP header (length and checksum are derived).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl UdpRepr {
    /// Reads the ports (validating lengths first; the checksum is not verified).
    pub fn parse<T: AsRef<[u8]>>(packet: &UdpPacket<T>) -> Result<UdpRepr> {
        packet.check_len()?;
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        })
    }

    /// Header length: 8.
    pub const fn header_len(&self) -> usize {
        8
    }

    /// Bytes written by [`Self::emit`]: the 8-byte header.
    pub const fn buffer_len(&self) -> usize {
        8
    }

    /// Writes the header with length `8 + payload_len` and checksum 0. Write
    /// the payload, then call `fill_checksum_v4`/`_v6` (or leave 0 over IPv4,
    /// as VXLAN senders commonly do).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        payload_len: usize,
    ) {
        debug_assert!(payload_len + 8 <= usize::from(u16::MAX));
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(u16::try_from(payload_len + 8).unwrap_or(u16::MAX));
        packet.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // UDP part of ipv4::tests::IPV4_UDP: 10.0.0.1:1234 -> 10.0.0.2:5678, "vxn!",
    // checksum 0xec39 (precomputed independently).
    const UDP: [u8; 12] = [
        0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0c, 0xec, 0x39, 0x76, 0x78, 0x6e, 0x21,
    ];
    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn parse_golden() {
        let p = UdpPacket::new_checked(&UDP[..]).unwrap();
        assert_eq!(p.src_port(), 1234);
        assert_eq!(p.dst_port(), 5678);
        assert_eq!(p.len(), 12);
        assert_eq!(p.checksum(), 0xec39);
        assert_eq!(p.payload(), b"vxn!");
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v4(DST, Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(
            UdpRepr::parse(&p).unwrap(),
            UdpRepr {
                src_port: 1234,
                dst_port: 5678
            }
        );
    }

    #[test]
    fn emit_golden() {
        let mut buf = [0u8; 12];
        buf[8..].copy_from_slice(b"vxn!");
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        UdpRepr {
            src_port: 1234,
            dst_port: 5678,
        }
        .emit(&mut p, 4);
        assert_eq!(p.checksum(), 0);
        assert!(
            p.verify_checksum_v4(SRC, DST),
            "zero = no checksum over IPv4"
        );
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(buf, UDP);
    }

    #[test]
    fn zero_checksum_rules() {
        let mut buf = UDP;
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_checksum(0);
        let (s6, d6) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v6(&s6, &d6));
        p.fill_checksum_v6(&s6, &d6);
        assert!(p.verify_checksum_v6(&s6, &d6));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose the payload so that the checksum comes out as 0: the header and
        // pseudo header sum to S; a payload word of !S (one's complement) makes
        // the total 0xFFFF, whose inversion is 0.
        let mut buf = [0u8; 10];
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        UdpRepr {
            src_port: 1,
            dst_port: 2,
        }
        .emit(&mut p, 2);
        let partial = checksum::combine(&[
            checksum::pseudo_header_v4(SRC, DST, ip_protocol::UDP, 10),
            checksum::sum(&p.buffer[..8]),
        ]);
        p.payload_mut().copy_from_slice(&(!partial).to_be_bytes());
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(p.checksum(), 0xFFFF);
        assert!(p.verify_checksum_v4(SRC, DST));
        p.fill_checksum_v6(&Ipv6Addr::LOCALHOST, &Ipv6Addr::LOCALHOST);
        assert!(p.verify_checksum_v6(&Ipv6Addr::LOCALHOST, &Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn errors_and_padding() {
        let chk = |b: &[u8]| UdpPacket::new_checked(b).map(|_| ());
        assert_eq!(chk(&UDP[..7]), Err(WireError::Truncated));
        assert_eq!(chk(&UDP[..11]), Err(WireError::Truncated));
        let mut b = UDP;
        b[5] = 7;
        assert_eq!(chk(&b), Err(WireError::Malformed));
        // Padding after the datagram is excluded from payload and checksum.
        let mut padded = [0xAAu8; 16];
        padded[..12].copy_from_slice(&UDP);
        let p = UdpPacket::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), b"vxn!");
        assert!(p.verify_checksum_v4(SRC, DST));
    }
}
