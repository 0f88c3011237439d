//! VXLAN (RFC 7348) headers:
//!
//! ```text
//! |R|R|R|R|I|R|R|R|            Reserved (24)                    |
//! |            VXLAN Network Identifier (24)      | Reserved (8)  |
//! ```

use super::{Result, WireError, read_u32, write_u32};

/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0xFF_FFFF;

/// IANA-assigned UDP destination port for VXLAN.
pub const VXLAN_PORT: u16 = 4789;

/// The I flag: the VNI field is valid.
pub const FLAG_VNI: u8 = 0x08;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

mod field {
    use crate::wire::{Field, Rest};
    pub const FLAGS: usize = 0;
    /// Flags byte and the 24 reserved bits after it.
    pub const FLAGS_WORD: Field = 0..4;
    /// VNI (bytes 4..7) and the reserved byte 7, read as one word.
    pub const VNI_WORD: Field = 4..8;
    pub const PAYLOAD: Rest = 8..;
}

/// A view of a VXLAN header followed by the inner Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Length of the header.
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates only len ≥ 8: flag policy is the router's decision.
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

    /// The flags byte (byte 0).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag (0x08) is set.
    pub fn has_vni_flag(&self) -> bool {
        self.flags() & FLAG_VNI != 0
    }

    /// The 24-bit VNI (bytes 4..7); the reserved byte 7 is ignored.
    pub fn vni(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VNI_WORD) >> 8
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI (low 24 bits of `vni`) and zeroes the reserved byte 7.
    pub fn set_vni(&mut self, vni: u32) {
        write_u32(self.buffer.as_mut(), field::VNI_WORD, (vni & VNI_MAX) << 8);
    }

    /// Mutable inner frame.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A VXLAN header: just the VNI (flags are always `I`, reserved bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanRepr {
    /// VXLAN Network Identifier, ≤ [`VNI_MAX`].
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads the VNI. `Malformed` if the I flag is clear (RFC 7348: the VNI is
    /// then not valid); other flag and reserved bits are ignored, as the RFC
    /// requires of receivers.
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<VxlanRepr> {
        packet.check_len()?;
        if !packet.has_vni_flag() {
            return Err(WireError::Malformed);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Header length: 8.
    pub const fn header_len(&self) -> usize {
        8
    }

    /// Bytes written by [`Self::emit`]: 8.
    pub const fn buffer_len(&self) -> usize {
        8
    }

    /// Writes `08 00 00 00 | vni (24) | 00`. A VNI above [`VNI_MAX`] is a bug
    /// (debug-asserted) and is masked to 24 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        debug_assert!(self.vni <= VNI_MAX, "VNI {} exceeds 24 bits", self.vni);
        // Flags word first so reserved bytes 1..4 are zero too.
        write_u32(
            packet.buffer.as_mut(),
            field::FLAGS_WORD,
            u32::from(FLAG_VNI) << 24,
        );
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // VNI 4242 = 0x001092, followed by 2 inner bytes.
    const GOLDEN: [u8; 10] = [0x08, 0, 0, 0, 0x00, 0x10, 0x92, 0x00, 0xaa, 0xbb];

    #[test]
    fn parse_golden() {
        let p = VxlanPacket::new_checked(&GOLDEN[..]).unwrap();
        assert_eq!(p.flags(), 0x08);
        assert!(p.has_vni_flag());
        assert_eq!(p.vni(), 4242);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        assert_eq!(VxlanRepr::parse(&p).unwrap(), VxlanRepr { vni: 4242 });
    }

    #[test]
    fn emit_golden_zeroes_reserved() {
        let mut buf = [0xFFu8; 10];
        buf[8..].copy_from_slice(&[0xaa, 0xbb]);
        VxlanRepr { vni: 4242 }.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, GOLDEN);
    }

    #[test]
    fn reserved_bits_ignored_on_receive() {
        let b = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        let p = VxlanPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.vni(), VNI_MAX);
        assert_eq!(VxlanRepr::parse(&p).unwrap().vni, VNI_MAX);
        let mut b = GOLDEN;
        b[0] = 0x00;
        let p = VxlanPacket::new_checked(&b[..]).unwrap();
        assert!(!p.has_vni_flag());
        assert_eq!(VxlanRepr::parse(&p), Err(WireError::Malformed));
    }

    #[test]
    fn truncated_and_setters() {
        assert_eq!(
            VxlanPacket::new_checked(&GOLDEN[..7]).unwrap_err(),
            WireError::Truncated
        );
        let mut b = [0u8; 8];
        let mut p = VxlanPacket::new_checked(&mut b[..]).unwrap();
        p.set_vni(0x1FF_FFFF);
        p.set_flags(FLAG_VNI);
        assert_eq!(p.vni(), VNI_MAX);
        assert!(p.payload_mut().is_empty());
        assert_eq!(b, [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
    }
}
