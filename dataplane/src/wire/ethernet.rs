//! Ethernet II frames, optionally with one IEEE 802.1Q VLAN tag.

use core::fmt;
use core::str::FromStr;

use super::{Result, WireError, clamp_range, read_array, read_u16, write_u16};

/// A 48-bit IEEE MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// `00:00:00:00:00:00`.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The address in `bytes`, if it is exactly six bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    /// The six octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether this is the all-ones broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the group bit (bit 0 of the first octet) is set; true for broadcast too.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether this is an individual (non-group) address.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Whether all octets are zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// Error returned by `MacAddr::from_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address: expected six ':'-separated two-digit hex octets, e.g. 02:00:5e:00:53:01"
)]
pub struct MacAddrParseError;

impl FromStr for MacAddr {
    type Err = MacAddrParseError;

    /// Parses exactly `xx:xx:xx:xx:xx:xx` (hex digits of either case).
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in &mut out {
            let p = parts.next().ok_or(MacAddrParseError)?;
            // from_str_radix alone would accept "+f" or "f"; insist on two hex digits.
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(MacAddrParseError);
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| MacAddrParseError)?;
        }
        if parts.next().is_some() {
            return Err(MacAddrParseError);
        }
        Ok(MacAddr(out))
    }
}

/// An EtherType value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct EtherType(pub u16);

impl EtherType {
    /// Internet Protocol version 4.
    pub const IPV4: EtherType = EtherType(0x0800);
    /// Address Resolution Protocol.
    pub const ARP: EtherType = EtherType(0x0806);
    /// Internet Protocol version 6.
    pub const IPV6: EtherType = EtherType(0x86DD);
    /// IEEE 802.1Q VLAN tag (TPID).
    pub const VLAN: EtherType = EtherType(0x8100);
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        EtherType(v)
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> Self {
        v.0
    }
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = 14;
/// Length of an Ethernet header with one 802.1Q tag.
pub const VLAN_HEADER_LEN: usize = 18;

mod field {
    use crate::wire::Field;
    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    /// 802.1Q tag control information (PCP, DEI, VID), when tagged.
    pub const VLAN_TCI: Field = 14..16;
    /// The EtherType after the 802.1Q tag.
    pub const INNER_ETHERTYPE: Field = 16..18;
}

/// A view of an Ethernet II frame (no FCS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Length of an untagged header.
    pub const HEADER_LEN: usize = HEADER_LEN;
    /// Length of a header with one 802.1Q tag.
    pub const VLAN_HEADER_LEN: usize = VLAN_HEADER_LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Checks the buffer holds a full header (18 bytes if the outer EtherType is 802.1Q).
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if read_u16(data, field::ETHERTYPE) == EtherType::VLAN.0
            && data.len() < Self::VLAN_HEADER_LEN
        {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC address.
    pub fn dst_addr(&self) -> MacAddr {
        MacAddr(read_array(self.buffer.as_ref(), field::DESTINATION))
    }

    /// Source MAC address.
    pub fn src_addr(&self) -> MacAddr {
        MacAddr(read_array(self.buffer.as_ref(), field::SOURCE))
    }

    /// Whether the frame carries an 802.1Q tag. A frame whose TPID says "tagged"
    /// but which is too short for the tag counts as untagged, so that getters
    /// stay in bounds even after `set_ethertype(EtherType::VLAN)`.
    fn is_tagged(&self) -> bool {
        let data = self.buffer.as_ref();
        read_u16(data, field::ETHERTYPE) == EtherType::VLAN.0 && data.len() >= Self::VLAN_HEADER_LEN
    }

    /// The 12-bit VLAN ID of the 802.1Q tag, if tagged.
    pub fn vlan_id(&self) -> Option<u16> {
        self.is_tagged()
            .then(|| read_u16(self.buffer.as_ref(), field::VLAN_TCI) & 0x0FFF)
    }

    /// The payload's EtherType: the one after the 802.1Q tag when tagged.
    pub fn ethertype(&self) -> EtherType {
        let data = self.buffer.as_ref();
        if self.is_tagged() {
            EtherType(read_u16(data, field::INNER_ETHERTYPE))
        } else {
            EtherType(read_u16(data, field::ETHERTYPE))
        }
    }

    /// Header length: 14, or 18 with a VLAN tag.
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            Self::VLAN_HEADER_LEN
        } else {
            Self::HEADER_LEN
        }
    }

    /// Everything after the header (may include Ethernet padding).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[clamp_range(self.header_len(), data.len(), data.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType at bytes 12..14 — the outer one; on a tagged frame
    /// this overwrites the 802.1Q TPID.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype.0);
    }

    /// Mutable payload, after the (possibly tagged) header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let data = self.buffer.as_mut();
        let len = data.len();
        &mut data[clamp_range(start, len, len)]
    }
}

/// The fields of an untagged Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Source MAC address.
    pub src_addr: MacAddr,
    /// Destination MAC address.
    pub dst_addr: MacAddr,
    /// Payload EtherType.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header; for a tagged frame the VLAN tag is dropped and
    /// `ethertype` is the inner one.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Header length emitted (always untagged): 14.
    pub const fn header_len(&self) -> usize {
        14
    }

    /// Bytes written by [`Self::emit`]: 14.
    pub const fn buffer_len(&self) -> usize {
        14
    }

    /// Writes an untagged header into the first 14 bytes of `frame`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Broadcast ARP request frame header as captured from Linux, plus 2 bytes payload.
    const UNTAGGED: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0xac, 0x11, 0x00, 0x02, 0x08, 0x06, 0x00,
        0x01,
    ];

    const TAGGED: [u8; 20] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x81, 0x00, 0xa0,
        0x64, 0x86, 0xdd, 0x60, 0x00,
    ];

    #[test]
    fn parse_untagged() {
        let f = EthernetFrame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(f.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(f.src_addr(), MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]));
        assert_eq!(f.ethertype(), EtherType::ARP);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.payload(), &[0x00, 0x01]);
    }

    #[test]
    fn parse_tagged() {
        let f = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        // TCI 0xa064: PCP 5, DEI 0, VID 0x064 = 100.
        assert_eq!(f.vlan_id(), Some(100));
        assert_eq!(f.ethertype(), EtherType::IPV6);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.payload(), &[0x60, 0x00]);
        let r = EthernetRepr::parse(&f).unwrap();
        assert_eq!(r.ethertype, EtherType::IPV6);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            EthernetFrame::new_checked(&UNTAGGED[..13]).unwrap_err(),
            WireError::Truncated
        );
        assert!(EthernetFrame::new_checked(&UNTAGGED[..14]).is_ok());
        // Tagged TPID but no room for the tag.
        assert_eq!(
            EthernetFrame::new_checked(&TAGGED[..17]).unwrap_err(),
            WireError::Truncated
        );
        assert!(EthernetFrame::new_checked(&TAGGED[..18]).is_ok());
    }

    #[test]
    fn emit_matches_golden() {
        let repr = EthernetRepr {
            dst_addr: MacAddr::BROADCAST,
            src_addr: MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]),
            ethertype: EtherType::ARP,
        };
        let mut buf = [0u8; 16];
        buf[14..].copy_from_slice(&[0x00, 0x01]);
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        repr.emit(&mut f);
        assert_eq!(buf, UNTAGGED);
        assert_eq!(
            EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()).unwrap(),
            repr
        );
    }

    #[test]
    fn setter_cannot_break_getters() {
        let mut buf = [0u8; 14];
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        f.set_ethertype(EtherType::VLAN);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(f.ethertype(), EtherType::VLAN);
        assert!(f.payload().is_empty());
        assert!(f.payload_mut().is_empty());
    }

    #[test]
    fn mac_addr() {
        let m: MacAddr = "02:42:AC:11:00:0f".parse().unwrap();
        assert_eq!(m, MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x0f]));
        assert_eq!(m.to_string(), "02:42:ac:11:00:0f");
        assert_eq!(format!("{m:?}"), "MacAddr(02:42:ac:11:00:0f)");
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0f:00",
            "2:42:ac:11:00:0f",
            "02:42:ac:11:00:0g",
            "+2:42:ac:11:00:0f",
            "02-42-ac-11-00-0f",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(MacAddrParseError), "{bad}");
        }
        assert!(
            MacAddrParseError
                .to_string()
                .contains("invalid MAC address")
        );
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(m.is_unicast() && !m.is_multicast() && !m.is_broadcast());
        assert!(MacAddr::ZERO.is_zero() && MacAddr::default().is_zero());
        assert_eq!(
            MacAddr::from_bytes(&[1, 2, 3, 4, 5, 6]),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(MacAddr::from_bytes(&[1, 2, 3, 4, 5]), None);
    }
}
