//! ICMPv6 (RFC 4443) and the neighbour-discovery messages (RFC 4861) the
//! router answers for its overlay neighbours.

use core::net::Ipv6Addr;

use super::{MacAddr, Result, WireError, checksum, ip_protocol, read_u16, write_u16};

/// Type: packet too big.
pub const PACKET_TOO_BIG: u8 = 2;
/// Type: echo request.
pub const ECHO_REQUEST: u8 = 128;
/// Type: echo reply.
pub const ECHO_REPLY: u8 = 129;
/// Type: router solicitation.
pub const ROUTER_SOLICIT: u8 = 133;
/// Type: router advertisement.
pub const ROUTER_ADVERT: u8 = 134;
/// Type: neighbour solicitation.
pub const NEIGHBOR_SOLICIT: u8 = 135;
/// Type: neighbour advertisement.
pub const NEIGHBOR_ADVERT: u8 = 136;
/// Type: redirect.
pub const REDIRECT: u8 = 137;

/// ND option type: source link-layer address.
pub const NDISC_OPT_SOURCE_LLA: u8 = 1;
/// ND option type: target link-layer address.
pub const NDISC_OPT_TARGET_LLA: u8 = 2;

/// Neighbour-advertisement flag bits of byte 4.
pub mod ndisc_flags {
    /// R: the sender is a router.
    pub const ROUTER: u8 = 0x80;
    /// S: sent in response to a solicitation.
    pub const SOLICITED: u8 = 0x40;
    /// O: override an existing cache entry.
    pub const OVERRIDE: u8 = 0x20;
}

/// Length of the ICMPv6 common header (type, code, checksum).
pub const HEADER_LEN: usize = 4;

mod field {
    use crate::wire::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// NA flags (R, S, O).
    pub const NDISC_FLAGS: usize = 4;
    /// NS/NA/redirect target address.
    pub const NDISC_TARGET: Field = 8..24;
}

/// Where ND options start for each ND message type (RFC 4861 §4), or `None`
/// for a message that carries none.
fn ndisc_options_offset(msg_type: u8) -> Option<usize> {
    match msg_type {
        ROUTER_SOLICIT => Some(8),
        ROUTER_ADVERT => Some(16),
        NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT => Some(24),
        REDIRECT => Some(40),
        _ => None,
    }
}

/// A view of an ICMPv6 message. The buffer must be exactly the message (the
/// IPv6 payload): the checksum covers all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Length of the common header (type, code, checksum).
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv6Packet { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates: len ≥ 4. Type-specific fields are read through `Option`s or
    /// fall back to defaults, so they stay in bounds for any length ≥ 4.
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

    fn sum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> u16 {
        let data = self.buffer.as_ref();
        // An ICMPv6 message cannot exceed u32::MAX; saturate rather than wrap.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let ph = checksum::pseudo_header_v6(src, dst, ip_protocol::ICMPV6, len);
        checksum::fold(u32::from(checksum::combine(&[ph, checksum::sum(data)])))
    }

    /// Whether the checksum (pseudo header + whole buffer) is correct.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        self.sum(src, dst) == 0
    }

    /// Bytes after the 4-byte common header.
    pub fn message_body(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }

    /// Target address of an NS, NA or redirect; `None` for other types or
    /// when shorter than 24 bytes.
    pub fn ndisc_target_addr(&self) -> Option<Ipv6Addr> {
        if !matches!(
            self.msg_type(),
            NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT | REDIRECT
        ) {
            return None;
        }
        let bytes: [u8; 16] = self
            .buffer
            .as_ref()
            .get(field::NDISC_TARGET)?
            .try_into()
            .ok()?;
        Some(Ipv6Addr::from(bytes))
    }

    /// NA flag byte (R/S/O in the top bits, see [`ndisc_flags`]); 0 if the
    /// message is shorter than 5 bytes.
    pub fn ndisc_flags(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(field::NDISC_FLAGS)
            .map_or(0, |b| b & 0xE0)
    }

    /// NA router flag.
    pub fn ndisc_router_flag(&self) -> bool {
        self.ndisc_flags() & ndisc_flags::ROUTER != 0
    }

    /// NA solicited flag.
    pub fn ndisc_solicited_flag(&self) -> bool {
        self.ndisc_flags() & ndisc_flags::SOLICITED != 0
    }

    /// NA override flag.
    pub fn ndisc_override_flag(&self) -> bool {
        self.ndisc_flags() & ndisc_flags::OVERRIDE != 0
    }

    /// Iterator over the ND options `(type, body)` of an RS/RA/NS/NA/redirect
    /// (empty for other types). `body` excludes the 2-byte type/length. It stops
    /// at a zero length or an option running past the end; use
    /// [`Self::check_ndisc_options`] to tell that apart from a clean end.
    pub fn ndisc_options(&self) -> NdiscOptions<'_> {
        let data = self.buffer.as_ref();
        let rest = ndisc_options_offset(self.msg_type())
            .and_then(|off| data.get(off..))
            .unwrap_or(&[]);
        NdiscOptions::new(rest)
    }

    /// `Truncated` if an ND message is shorter than its fixed part; `Malformed`
    /// if an option has length 0 or overruns the message (RFC 4861 says to
    /// drop such messages). `Ok` for non-ND types.
    pub fn check_ndisc_options(&self) -> Result<()> {
        let Some(off) = ndisc_options_offset(self.msg_type()) else {
            return Ok(());
        };
        if self.buffer.as_ref().len() < off {
            return Err(WireError::Truncated);
        }
        let mut opts = self.ndisc_options();
        for _ in &mut opts {}
        if opts.malformed {
            return Err(WireError::Malformed);
        }
        Ok(())
    }

    /// Finds the first link-layer-address option of `opt_type` for Ethernet (length 1).
    fn find_lla(&self, opt_type: u8) -> Option<MacAddr> {
        self.ndisc_options()
            .find(|&(t, body)| t == opt_type && body.len() == 6)
            .and_then(|(_, body)| MacAddr::from_bytes(body))
    }

    /// Source link-layer address option (type 1, length 1), if present.
    pub fn source_link_layer_addr(&self) -> Option<MacAddr> {
        self.find_lla(NDISC_OPT_SOURCE_LLA)
    }

    /// Target link-layer address option (type 2, length 1), if present.
    pub fn target_link_layer_addr(&self) -> Option<MacAddr> {
        self.find_lla(NDISC_OPT_TARGET_LLA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
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

    /// Computes and stores the checksum over the pseudo header and whole buffer.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let c = self.sum(src, dst);
        self.set_checksum(c);
    }

    /// Sets the NA flag byte (byte 4, whole byte; reserved bits should be 0).
    /// No-op if the message is shorter than 5 bytes.
    pub fn set_ndisc_flags(&mut self, flags: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::NDISC_FLAGS) {
            *b = flags;
        }
    }

    /// Sets the NS/NA target address. No-op if shorter than 24 bytes.
    pub fn set_ndisc_target_addr(&mut self, addr: Ipv6Addr) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::NDISC_TARGET) {
            b.copy_from_slice(&addr.octets());
        }
    }

    /// Mutable bytes after the 4-byte common header.
    pub fn message_body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[Self::HEADER_LEN..]
    }

    /// Same as [`Self::message_body_mut`] (uniform name across views).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.message_body_mut()
    }
}

/// Iterator over neighbour-discovery options, see [`Icmpv6Packet::ndisc_options`].
#[derive(Debug, Clone)]
pub struct NdiscOptions<'a> {
    rest: &'a [u8],
    malformed: bool,
}

impl<'a> NdiscOptions<'a> {
    /// Iterates the options in `data` (the bytes after the ND fixed part).
    pub fn new(data: &'a [u8]) -> Self {
        NdiscOptions {
            rest: data,
            malformed: false,
        }
    }

    /// Whether iteration stopped on a zero-length or overrunning option.
    pub fn is_malformed(&self) -> bool {
        self.malformed
    }
}

impl<'a> Iterator for NdiscOptions<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let len = self.rest.get(1).map_or(0, |&l| usize::from(l) * 8);
        if len == 0 || len > self.rest.len() {
            // Length 0 would loop forever; an overrun is a lie. Either way stop.
            self.malformed = true;
            self.rest = &[];
            return None;
        }
        let (opt, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some((opt[0], &opt[2..]))
    }
}

/// Writes an Ethernet link-layer-address option at `buf[..8]`.
fn emit_lla_option(buf: &mut [u8], opt_type: u8, mac: MacAddr) {
    buf[0] = opt_type;
    buf[1] = 1;
    buf[2..8].copy_from_slice(&mac.0);
}

/// A neighbour advertisement (type 136) with an optional target-LLA option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NdiscNeighborAdvertRepr {
    /// R/S/O bits (see [`ndisc_flags`]).
    pub flags: u8,
    /// The address being advertised.
    pub target_addr: Ipv6Addr,
    /// Target link-layer address option.
    pub target_link_layer_addr: Option<MacAddr>,
}

impl NdiscNeighborAdvertRepr {
    /// Reads an NA: `Malformed` unless type 136, code 0 and well-formed options;
    /// `Truncated` if shorter than 24 bytes. Checksum not verified.
    pub fn parse<T: AsRef<[u8]>>(packet: &Icmpv6Packet<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.msg_type() != NEIGHBOR_ADVERT || packet.msg_code() != 0 {
            return Err(WireError::Malformed);
        }
        packet.check_ndisc_options()?;
        Ok(NdiscNeighborAdvertRepr {
            flags: packet.ndisc_flags(),
            target_addr: packet.ndisc_target_addr().ok_or(WireError::Truncated)?,
            target_link_layer_addr: packet.target_link_layer_addr(),
        })
    }

    /// Fixed part: 24 bytes.
    pub const fn header_len(&self) -> usize {
        24
    }

    /// Whole message: 24, or 32 with the target-LLA option.
    pub const fn buffer_len(&self) -> usize {
        if self.target_link_layer_addr.is_some() {
            32
        } else {
            24
        }
    }

    /// Writes the whole message and fills the checksum. The packet's buffer
    /// must be exactly [`Self::buffer_len`] bytes (the checksum covers it all).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Icmpv6Packet<T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) {
        let buf = packet.buffer.as_mut();
        buf[field::TYPE] = NEIGHBOR_ADVERT;
        buf[field::CODE] = 0;
        buf[4..8].copy_from_slice(&[self.flags & 0xE0, 0, 0, 0]);
        buf[field::NDISC_TARGET].copy_from_slice(&self.target_addr.octets());
        if let Some(mac) = self.target_link_layer_addr {
            emit_lla_option(&mut buf[24..32], NDISC_OPT_TARGET_LLA, mac);
        }
        packet.fill_checksum(src, dst);
    }
}

/// A neighbour solicitation (type 135) with an optional source-LLA option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NdiscNeighborSolicitRepr {
    /// The address being resolved.
    pub target_addr: Ipv6Addr,
    /// Source link-layer address option (absent in DAD probes).
    pub source_link_layer_addr: Option<MacAddr>,
}

impl NdiscNeighborSolicitRepr {
    /// Reads an NS: `Malformed` unless type 135, code 0 and well-formed options;
    /// `Truncated` if shorter than 24 bytes. Checksum not verified.
    pub fn parse<T: AsRef<[u8]>>(packet: &Icmpv6Packet<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.msg_type() != NEIGHBOR_SOLICIT || packet.msg_code() != 0 {
            return Err(WireError::Malformed);
        }
        packet.check_ndisc_options()?;
        Ok(NdiscNeighborSolicitRepr {
            target_addr: packet.ndisc_target_addr().ok_or(WireError::Truncated)?,
            source_link_layer_addr: packet.source_link_layer_addr(),
        })
    }

    /// Fixed part: 24 bytes.
    pub const fn header_len(&self) -> usize {
        24
    }

    /// Whole message: 24, or 32 with the source-LLA option.
    pub const fn buffer_len(&self) -> usize {
        if self.source_link_layer_addr.is_some() {
            32
        } else {
            24
        }
    }

    /// Writes the whole message and fills the checksum. The packet's buffer
    /// must be exactly [`Self::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Icmpv6Packet<T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) {
        let buf = packet.buffer.as_mut();
        buf[field::TYPE] = NEIGHBOR_SOLICIT;
        buf[field::CODE] = 0;
        buf[4..8].fill(0);
        buf[field::NDISC_TARGET].copy_from_slice(&self.target_addr.octets());
        if let Some(mac) = self.source_link_layer_addr {
            emit_lla_option(&mut buf[24..32], NDISC_OPT_SOURCE_LLA, mac);
        }
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    // NS fe80::1 -> ff02::1:ff00:2 for target fe80::2, source LLA
    // 02:00:00:00:00:01; checksum 0x7a97 precomputed independently (Python).
    const NS: [u8; 32] = [
        0x87, 0x00, 0x7a, 0x97, 0, 0, 0, 0, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x02, 0x01, 0x01, 0x02, 0, 0, 0, 0, 0x01,
    ];
    // NA fe80::2 -> fe80::1, S+O, target fe80::2, target LLA 02:00:00:00:00:02;
    // checksum 0x181a.
    const NA: [u8; 32] = [
        0x88, 0x00, 0x18, 0x1a, 0x60, 0, 0, 0, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x02, 0x02, 0x01, 0x02, 0, 0, 0, 0, 0x02,
    ];

    #[test]
    fn parse_golden_ns() {
        let p = Icmpv6Packet::new_checked(&NS[..]).unwrap();
        assert_eq!(p.msg_type(), NEIGHBOR_SOLICIT);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0x7a97);
        assert!(p.verify_checksum(&a("fe80::1"), &a("ff02::1:ff00:2")));
        assert!(!p.verify_checksum(&a("fe80::1"), &a("ff02::1:ff00:3")));
        assert_eq!(p.ndisc_target_addr(), Some(a("fe80::2")));
        assert_eq!(
            p.source_link_layer_addr(),
            Some(MacAddr([2, 0, 0, 0, 0, 1]))
        );
        assert_eq!(p.target_link_layer_addr(), None);
        let opts: Vec<_> = p.ndisc_options().collect();
        assert_eq!(opts, vec![(1u8, &[2u8, 0, 0, 0, 0, 1][..])]);
        assert_eq!(p.check_ndisc_options(), Ok(()));
        let repr = NdiscNeighborSolicitRepr::parse(&p).unwrap();
        assert_eq!(repr.target_addr, a("fe80::2"));
        let mut buf = [0xEEu8; 32];
        repr.emit(
            &mut Icmpv6Packet::new_unchecked(&mut buf[..]),
            &a("fe80::1"),
            &a("ff02::1:ff00:2"),
        );
        assert_eq!(buf, NS);
    }

    #[test]
    fn emit_golden_na() {
        let repr = NdiscNeighborAdvertRepr {
            flags: ndisc_flags::SOLICITED | ndisc_flags::OVERRIDE,
            target_addr: a("fe80::2"),
            target_link_layer_addr: Some(MacAddr([2, 0, 0, 0, 0, 2])),
        };
        assert_eq!(repr.buffer_len(), 32);
        let mut buf = [0xEEu8; 32];
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut p, &a("fe80::2"), &a("fe80::1"));
        assert_eq!(buf, NA);
        let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        assert!(p.ndisc_solicited_flag() && p.ndisc_override_flag() && !p.ndisc_router_flag());
        assert_eq!(NdiscNeighborAdvertRepr::parse(&p).unwrap(), repr);
        assert_eq!(
            NdiscNeighborSolicitRepr::parse(&p),
            Err(WireError::Malformed)
        );

        let bare = NdiscNeighborAdvertRepr {
            flags: ndisc_flags::ROUTER,
            target_link_layer_addr: None,
            ..repr
        };
        let mut buf = [0u8; 24];
        bare.emit(
            &mut Icmpv6Packet::new_unchecked(&mut buf[..]),
            &a("fe80::2"),
            &a("ff02::1"),
        );
        let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(&a("fe80::2"), &a("ff02::1")));
        assert!(p.ndisc_router_flag());
        assert_eq!(NdiscNeighborAdvertRepr::parse(&p).unwrap(), bare);
    }

    #[test]
    fn bad_options_stop_without_panic() {
        // Zero-length option.
        let mut b = NS;
        b[25] = 0;
        let p = Icmpv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.ndisc_options().count(), 0);
        assert_eq!(p.check_ndisc_options(), Err(WireError::Malformed));
        assert_eq!(p.source_link_layer_addr(), None);
        assert_eq!(
            NdiscNeighborSolicitRepr::parse(&p),
            Err(WireError::Malformed)
        );
        // Overrun: claims 16 bytes, has 8.
        b[25] = 2;
        let p = Icmpv6Packet::new_checked(&b[..]).unwrap();
        let mut it = p.ndisc_options();
        assert_eq!(it.next(), None);
        assert!(it.is_malformed());
        // A lone trailing byte.
        let p = Icmpv6Packet::new_checked(&NS[..25]).unwrap();
        assert_eq!(p.check_ndisc_options(), Err(WireError::Malformed));
        // Options after a valid one are still walked; unknown types skipped.
        let mut two = [0u8; 40];
        two[..32].copy_from_slice(&NS);
        two[24..32].copy_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]); // nonce option
        two[32..40].copy_from_slice(&[1, 1, 2, 0, 0, 0, 0, 7]);
        let p = Icmpv6Packet::new_checked(&two[..]).unwrap();
        assert_eq!(p.ndisc_options().count(), 2);
        assert_eq!(
            p.source_link_layer_addr(),
            Some(MacAddr([2, 0, 0, 0, 0, 7]))
        );
    }

    #[test]
    fn short_messages() {
        assert_eq!(
            Icmpv6Packet::new_checked(&NS[..3]).unwrap_err(),
            WireError::Truncated
        );
        let mut b = NS;
        let mut p = Icmpv6Packet::new_checked(&mut b[..4]).unwrap();
        assert_eq!(p.ndisc_target_addr(), None);
        assert_eq!(p.ndisc_flags(), 0);
        assert_eq!(p.ndisc_options().count(), 0);
        assert_eq!(p.check_ndisc_options(), Err(WireError::Truncated));
        p.set_ndisc_flags(0xff);
        p.set_ndisc_target_addr(Ipv6Addr::LOCALHOST);
        assert!(p.message_body().is_empty());
        let p = Icmpv6Packet::new_checked(&NS[..23]).unwrap();
        assert_eq!(p.ndisc_target_addr(), None);
        assert_eq!(
            NdiscNeighborSolicitRepr::parse(&p),
            Err(WireError::Truncated)
        );
        // Not an ND type: no target, no options.
        let mut echo = NS;
        echo[0] = ECHO_REQUEST;
        let p = Icmpv6Packet::new_checked(&echo[..]).unwrap();
        assert_eq!(p.ndisc_target_addr(), None);
        assert_eq!(p.ndisc_options().count(), 0);
        assert_eq!(p.check_ndisc_options(), Ok(()));
    }
}
