//! ICMP for IPv4 (RFC 792): echo and the "fragmentation needed" message
//! (RFC 1191) the router sends when an inner packet does not fit the overlay.

use super::{Result, WireError, checksum, read_u16, write_u16};

/// Type: echo reply.
pub const ECHO_REPLY: u8 = 0;
/// Type: destination unreachable.
pub const DST_UNREACHABLE: u8 = 3;
/// Type: echo request.
pub const ECHO_REQUEST: u8 = 8;
/// Type: time exceeded.
pub const TIME_EXCEEDED: u8 = 11;
/// Code (with [`DST_UNREACHABLE`]): fragmentation needed and DF set.
pub const FRAG_NEEDED: u8 = 4;

/// Length of the ICMPv4 header (type, code, checksum, rest of header).
pub const HEADER_LEN: usize = 8;

mod field {
    use crate::wire::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// Bytes 4..8: "rest of header", meaning depends on the type.
    pub const REST_OF_HEADER: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const NEXT_HOP_MTU: Field = 6..8;
    pub const PAYLOAD: Rest = 8..;
}

/// A view of an ICMPv4 message. The buffer must be exactly the message (the
/// IPv4 payload): the checksum covers all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Length of the header (type, code, checksum, rest of header).
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates: len ≥ 8.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (bytes 4..6).
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number (bytes 6..8).
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQNO)
    }

    /// Next-hop MTU of a "fragmentation needed" message (bytes 6..8).
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// Bytes 4..8 as one big-endian word.
    pub fn rest_of_header(&self) -> u32 {
        super::read_u32(self.buffer.as_ref(), field::REST_OF_HEADER)
    }

    /// Whether the checksum over the whole buffer is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0
    }

    /// Payload after the 8-byte header (echo data, or the offending IP header).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    /// Sets the message code.
    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    /// Sets the checksum field verbatim.
    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT, v);
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQNO, v);
    }

    /// Sets the next-hop MTU (and zeroes the unused bytes 4..6).
    pub fn set_next_hop_mtu(&mut self, v: u16) {
        let data = self.buffer.as_mut();
        write_u16(data, field::ECHO_IDENT, 0);
        write_u16(data, field::NEXT_HOP_MTU, v);
    }

    /// Sets bytes 4..8.
    pub fn set_rest_of_header(&mut self, v: u32) {
        super::write_u32(self.buffer.as_mut(), field::REST_OF_HEADER, v);
    }

    /// Computes and stores the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::fold(checksum::sum(self.buffer.as_ref()));
        self.set_checksum(c);
    }

    /// Mutable payload after the 8-byte header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The header of the ICMPv4 messages the router reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Repr {
    /// Type 8, code 0.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Type 0, code 0.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Type 3, code 4: the payload is the offending IP header + 8 bytes.
    FragNeeded {
        /// MTU of the next hop.
        next_hop_mtu: u16,
    },
    /// Anything else, verbatim.
    Other {
        /// Message type.
        msg_type: u8,
        /// Message code.
        msg_code: u8,
        /// Bytes 4..8.
        rest_of_header: u32,
    },
}

impl Icmpv4Repr {
    /// Reads the header (validating the length; the checksum is not verified).
    pub fn parse<T: AsRef<[u8]>>(packet: &Icmpv4Packet<T>) -> Result<Icmpv4Repr> {
        packet.check_len()?;
        Ok(match (packet.msg_type(), packet.msg_code()) {
            (ECHO_REQUEST, 0) => Icmpv4Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
            },
            (ECHO_REPLY, 0) => Icmpv4Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
            },
            // Bytes 4..6 are "unused" in RFC 1191; a non-zero value falls back to
            // Other so that parse/emit round-trips exactly.
            (DST_UNREACHABLE, FRAG_NEEDED) if packet.echo_ident() == 0 => Icmpv4Repr::FragNeeded {
                next_hop_mtu: packet.next_hop_mtu(),
            },
            (msg_type, msg_code) => Icmpv4Repr::Other {
                msg_type,
                msg_code,
                rest_of_header: packet.rest_of_header(),
            },
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

    /// Writes the 8-byte header with checksum 0. Write the payload, then call
    /// [`Icmpv4Packet::fill_checksum`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        let (t, c, rest) = match *self {
            Icmpv4Repr::EchoRequest { ident, seq_no } => (
                ECHO_REQUEST,
                0,
                (u32::from(ident) << 16) | u32::from(seq_no),
            ),
            Icmpv4Repr::EchoReply { ident, seq_no } => {
                (ECHO_REPLY, 0, (u32::from(ident) << 16) | u32::from(seq_no))
            }
            Icmpv4Repr::FragNeeded { next_hop_mtu } => {
                (DST_UNREACHABLE, FRAG_NEEDED, u32::from(next_hop_mtu))
            }
            Icmpv4Repr::Other {
                msg_type,
                msg_code,
                rest_of_header,
            } => (msg_type, msg_code, rest_of_header),
        };
        packet.set_msg_type(t);
        packet.set_msg_code(c);
        packet.set_checksum(0);
        packet.set_rest_of_header(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `ping` echo request: id 0x1f2e, seq 3, 8 data bytes; checksum 0x4739
    // precomputed with an independent RFC 1071 implementation.
    const ECHO: [u8; 16] = [
        0x08, 0x00, 0x47, 0x39, 0x1f, 0x2e, 0x00, 0x03, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67,
        0x68,
    ];

    #[test]
    fn parse_golden_echo() {
        let p = Icmpv4Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(p.msg_type(), ECHO_REQUEST);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0x4739);
        assert!(p.verify_checksum());
        assert_eq!(p.echo_ident(), 0x1f2e);
        assert_eq!(p.echo_seq_no(), 3);
        assert_eq!(p.payload(), b"abcdefgh");
        assert_eq!(
            Icmpv4Repr::parse(&p).unwrap(),
            Icmpv4Repr::EchoRequest {
                ident: 0x1f2e,
                seq_no: 3
            }
        );
    }

    #[test]
    fn emit_golden_echo() {
        let mut buf = [0xFFu8; 16];
        buf[8..].copy_from_slice(b"abcdefgh");
        let mut p = Icmpv4Packet::new_unchecked(&mut buf[..]);
        Icmpv4Repr::EchoRequest {
            ident: 0x1f2e,
            seq_no: 3,
        }
        .emit(&mut p);
        p.fill_checksum();
        assert_eq!(buf, ECHO);
    }

    #[test]
    fn frag_needed() {
        let mut buf = [0u8; 36];
        let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
        Icmpv4Repr::FragNeeded { next_hop_mtu: 1450 }.emit(&mut p);
        p.payload_mut()[0] = 0x45;
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!((p.msg_type(), p.msg_code()), (DST_UNREACHABLE, FRAG_NEEDED));
        assert_eq!(p.next_hop_mtu(), 1450);
        assert_eq!(&buf[4..8], &[0, 0, 0x05, 0xaa]);
        let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_echo_ident(1);
        p.set_msg_type(TIME_EXCEEDED);
        p.set_msg_code(0);
        assert!(matches!(
            Icmpv4Repr::parse(&p).unwrap(),
            Icmpv4Repr::Other { msg_type: 11, .. }
        ));
        p.set_next_hop_mtu(9000);
        assert_eq!(p.rest_of_header(), 9000);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Icmpv4Packet::new_checked(&ECHO[..7]).unwrap_err(),
            WireError::Truncated
        );
        let p = Icmpv4Packet::new_checked(&ECHO[..8]).unwrap();
        assert!(p.payload().is_empty());
        let mut e = ECHO;
        e[9] ^= 1;
        assert!(!Icmpv4Packet::new_checked(&e[..]).unwrap().verify_checksum());
    }
}
