//! TCP (RFC 9293) segment headers — exact enough to segment TSO super-frames
//! and to coalesce (sequence numbers, flags, options and checksums in place).

use core::net::{Ipv4Addr, Ipv6Addr};

use super::{
    Result, WireError, checksum, clamp_range, ip_protocol, read_u16, read_u32, write_u16, write_u32,
};

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;

mod field {
    use crate::wire::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (high nibble); low bits are reserved (+ the historic NS bit).
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// The eight TCP flag bits of byte 13, as `u8` masks for [`TcpPacket::flags`].
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo.
    pub const ECE: u8 = 0x40;
    /// Congestion Window Reduced.
    pub const CWR: u8 = 0x80;
}

/// Alias so the masks can also be written `TcpFlags::SYN`.
pub use tcp_flags as TcpFlags;

/// A view of a TCP segment. The buffer must be exactly the segment (e.g. an
/// IP packet's `payload()`): the checksum covers the whole buffer and the
/// payload runs to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Length of a header without options.
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates: len ≥ 20, data offset ≥ 5, header_len ≤ len.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < Self::HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if header_len > len {
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

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The eight flag bits (see [`tcp_flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// FIN flag.
    pub fn fin(&self) -> bool {
        self.flags() & tcp_flags::FIN != 0
    }

    /// SYN flag.
    pub fn syn(&self) -> bool {
        self.flags() & tcp_flags::SYN != 0
    }

    /// RST flag.
    pub fn rst(&self) -> bool {
        self.flags() & tcp_flags::RST != 0
    }

    /// PSH flag.
    pub fn psh(&self) -> bool {
        self.flags() & tcp_flags::PSH != 0
    }

    /// ACK flag.
    pub fn ack(&self) -> bool {
        self.flags() & tcp_flags::ACK != 0
    }

    /// URG flag.
    pub fn urg(&self) -> bool {
        self.flags() & tcp_flags::URG != 0
    }

    /// ECE flag.
    pub fn ece(&self) -> bool {
        self.flags() & tcp_flags::ECE != 0
    }

    /// CWR flag.
    pub fn cwr(&self) -> bool {
        self.flags() & tcp_flags::CWR != 0
    }

    /// Window size (unscaled).
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// Options bytes: `20..header_len`.
    pub fn options(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[clamp_range(Self::HEADER_LEN, self.header_len(), data.len())]
    }

    /// Payload: `header_len..` to the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[clamp_range(self.header_len(), data.len(), data.len())]
    }

    fn sum_with(&self, pseudo: u32) -> u16 {
        let data = self.buffer.as_ref();
        checksum::fold(u32::from(checksum::combine(&[pseudo, checksum::sum(data)])))
    }

    fn segment_len(&self) -> u32 {
        // A segment longer than u32::MAX cannot exist; saturate rather than wrap.
        u32::try_from(self.buffer.as_ref().len()).unwrap_or(u32::MAX)
    }

    /// Verifies the checksum over IPv4; the segment is the whole buffer.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let ph = checksum::pseudo_header_v4(src, dst, ip_protocol::TCP, self.segment_len());
        self.sum_with(ph) == 0
    }

    /// Verifies the checksum over IPv6; the segment is the whole buffer.
    pub fn verify_checksum_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        let ph = checksum::pseudo_header_v6(src, dst, ip_protocol::TCP, self.segment_len());
        self.sum_with(ph) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM, v);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM, v);
    }

    /// Sets the header length in bytes (stored as data offset = len / 4);
    /// the reserved low nibble of byte 12 is preserved.
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::DATA_OFF];
        *b = (*b & 0x0F) | (((len / 4) as u8) << 4);
    }

    /// Sets all eight flag bits.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the window size.
    pub fn set_window_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::WIN_SIZE, v);
    }

    /// Sets the checksum field verbatim.
    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, v);
    }

    /// Computes and stores the checksum over IPv4 (whole buffer = segment).
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let ph = checksum::pseudo_header_v4(src, dst, ip_protocol::TCP, self.segment_len());
        let c = self.sum_with(ph);
        self.set_checksum(c);
    }

    /// Computes and stores the checksum over IPv6 (whole buffer = segment).
    pub fn fill_checksum_v6(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let ph = checksum::pseudo_header_v6(src, dst, ip_protocol::TCP, self.segment_len());
        let c = self.sum_with(ph);
        self.set_checksum(c);
    }

    /// Mutable options bytes: `20..header_len` (e.g. for MSS clamping).
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        let data = self.buffer.as_mut();
        let len = data.len();
        &mut data[clamp_range(Self::HEADER_LEN, end, len)]
    }

    /// Mutable payload: `header_len..`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let data = self.buffer.as_mut();
        let len = data.len();
        &mut data[clamp_range(start, len, len)]
    }
}

/// The fixed fields of a TCP header without options (enough to build test
/// segments and pure ACKs; real segmentation edits headers in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number.
    pub ack_number: u32,
    /// Flag bits (see [`tcp_flags`]).
    pub flags: u8,
    /// Window size (unscaled).
    pub window_len: u16,
}

impl TcpRepr {
    /// Reads the fixed fields (validating lengths first). Options, urgent
    /// pointer and checksum are not represented.
    pub fn parse<T: AsRef<[u8]>>(packet: &TcpPacket<T>) -> Result<TcpRepr> {
        packet.check_len()?;
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
        })
    }

    /// Header length: 20.
    pub const fn header_len(&self) -> usize {
        20
    }

    /// Bytes written by [`Self::emit`]: the 20-byte header.
    pub const fn buffer_len(&self) -> usize {
        20
    }

    /// Writes a 20-byte header with checksum and urgent pointer 0; write the
    /// payload, then call `fill_checksum_v4`/`_v6` on the whole segment.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut TcpPacket<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.buffer.as_mut()[field::DATA_OFF] = 5 << 4;
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_at(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A Linux SYN 192.168.77.1:45678 -> 192.168.77.2:8080, seq 0x9a3b2c1d,
    // window 64240, options MSS 1460, SACK-permitted, timestamps, NOP, wscale 7.
    // Checksum 0xb721 precomputed with an independent RFC 1071 implementation.
    const SYN: [u8; 40] = [
        0xb2, 0x6e, 0x1f, 0x90, 0x9a, 0x3b, 0x2c, 0x1d, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0xb7, 0x21, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x01,
        0xe2, 0x40, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];
    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

    #[test]
    fn parse_golden_syn() {
        let p = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 45678);
        assert_eq!(p.dst_port(), 8080);
        assert_eq!(p.seq_number(), 0x9a3b_2c1d);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpFlags::SYN);
        assert!(p.syn() && !p.ack() && !p.fin() && !p.rst() && !p.psh());
        assert!(!p.urg() && !p.ece() && !p.cwr());
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0xb721);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(&p.options()[..4], &[0x02, 0x04, 0x05, 0xb4]);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v4(SRC, Ipv4Addr::new(192, 168, 77, 3)));
    }

    #[test]
    fn emit_and_fill() {
        let repr = TcpRepr::parse(&TcpPacket::new_checked(&SYN[..]).unwrap()).unwrap();
        let mut buf = SYN;
        buf[..20].fill(0);
        let mut p = TcpPacket::new_unchecked(&mut buf[..]);
        repr.emit(&mut p);
        p.set_header_len(40);
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(buf, SYN);
    }

    #[test]
    fn setters_and_payload() {
        let mut buf = [0u8; 25];
        let mut p = TcpPacket::new_unchecked(&mut buf[..]);
        TcpRepr {
            src_port: 1,
            dst_port: 2,
            seq_number: 0xFFFF_FFFF,
            ack_number: 7,
            flags: tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN,
            window_len: 512,
        }
        .emit(&mut p);
        p.payload_mut().copy_from_slice(b"hello");
        p.set_seq_number(0x1234_5678);
        p.set_ack_number(0x8765_4321);
        p.set_window_len(1);
        p.set_urgent_at(3);
        p.set_flags(p.flags() | tcp_flags::CWR | tcp_flags::ECE);
        let (s6, d6) = (Ipv6Addr::LOCALHOST, "2001:db8::2".parse().unwrap());
        p.fill_checksum_v6(&s6, &d6);
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload(), b"hello");
        assert_eq!(p.seq_number(), 0x1234_5678);
        assert_eq!(p.ack_number(), 0x8765_4321);
        assert_eq!((p.window_len(), p.urgent_at()), (1, 3));
        assert!(p.fin() && p.psh() && p.ack() && p.cwr() && p.ece());
        assert!(p.verify_checksum_v6(&s6, &d6));
        assert!(!p.verify_checksum_v4(SRC, DST));
    }

    #[test]
    fn errors() {
        let chk = |b: &[u8]| TcpPacket::new_checked(b).map(|_| ());
        assert_eq!(chk(&SYN[..19]), Err(WireError::Truncated));
        assert_eq!(chk(&SYN[..39]), Err(WireError::Truncated)); // options cut
        let mut b = SYN;
        b[12] = 0x40; // data offset 4
        assert_eq!(chk(&b), Err(WireError::Malformed));
    }

    #[test]
    fn setter_abuse_cannot_panic() {
        let mut buf = SYN;
        buf[12] = 0x50;
        let mut p = TcpPacket::new_checked(&mut buf[..20]).unwrap();
        p.set_header_len(60);
        assert_eq!(p.options().len(), 0);
        assert!(p.payload().is_empty());
        assert!(p.options_mut().is_empty());
        assert!(p.payload_mut().is_empty());
    }
}
