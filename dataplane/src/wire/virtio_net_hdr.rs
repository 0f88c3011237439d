//! The legacy 10-byte `struct virtio_net_hdr` that a TAP device opened with
//! `IFF_VNET_HDR` prepends to every frame (linux/virtio_net.h):
//!
//! ```text
//! u8 flags; u8 gso_type; le16 hdr_len; le16 gso_size; le16 csum_start; le16 csum_offset;
//! ```
//!
//! The u16 fields are **little-endian** because the I/O layer always sets
//! `TUNSETVNETLE` (and x86 is little-endian anyway). A big-endian host would
//! have to set `TUNSETVNETBE` instead and this view would need to follow.

use super::{Result, WireError};

/// Values of the `flags` field.
pub mod flags {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start` to the end
    /// must be computed and stored at `csum_start + csum_offset`; the field
    /// holds the pseudo-header sum meanwhile.
    pub const NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: checksums were already verified.
    pub const DATA_VALID: u8 = 2;
}

/// Values of the `gso_type` field.
pub mod gso_type {
    /// Not a GSO frame.
    pub const NONE: u8 = 0;
    /// TCP over IPv4 (TSO).
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation offload (UFO, deprecated).
    pub const UDP: u8 = 3;
    /// TCP over IPv6 (TSO).
    pub const TCPV6: u8 = 4;
    /// UDP segmentation offload (USO).
    pub const UDP_L4: u8 = 5;
    /// Flag bit: the TCP stream had ECN CWR set.
    pub const ECN: u8 = 0x80;
}

/// Length of the legacy `virtio_net_hdr`.
pub const LEN: usize = 10;

mod field {
    use crate::wire::{Field, Rest};
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Field = 2..4;
    pub const GSO_SIZE: Field = 4..6;
    pub const CSUM_START: Field = 6..8;
    pub const CSUM_OFFSET: Field = 8..10;
    pub const PAYLOAD: Rest = 10..;
}

#[inline]
fn read_le16(data: &[u8], f: crate::wire::Field) -> u16 {
    u16::from_le_bytes(super::read_array(data, f))
}

#[inline]
fn write_le16(data: &mut [u8], f: crate::wire::Field, v: u16) {
    data[f].copy_from_slice(&v.to_le_bytes());
}

/// A view of a `virtio_net_hdr` followed by the Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioNetHdr<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VirtioNetHdr<T> {
    /// Length of the legacy header.
    pub const LEN: usize = LEN;

    /// Wraps `buffer` without validating it; getters may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        VirtioNetHdr { buffer }
    }

    /// Wraps `buffer` and validates it with [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates: len ≥ 10. Field values are not judged here.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// `flags` (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// `gso_type` (see [`gso_type`]).
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// `hdr_len`: length of the Ethernet + IP + L4 headers (a hint on receive).
    pub fn hdr_len(&self) -> u16 {
        read_le16(self.buffer.as_ref(), field::HDR_LEN)
    }

    /// `gso_size`: payload bytes per segment (the MSS).
    pub fn gso_size(&self) -> u16 {
        read_le16(self.buffer.as_ref(), field::GSO_SIZE)
    }

    /// `csum_start`: offset in the frame where checksumming starts.
    pub fn csum_start(&self) -> u16 {
        read_le16(self.buffer.as_ref(), field::CSUM_START)
    }

    /// `csum_offset`: where, after `csum_start`, to store the checksum.
    pub fn csum_offset(&self) -> u16 {
        read_le16(self.buffer.as_ref(), field::CSUM_OFFSET)
    }

    /// The Ethernet frame after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VirtioNetHdr<T> {
    /// Sets `flags`.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets `gso_type`.
    pub fn set_gso_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = v;
    }

    /// Sets `hdr_len`.
    pub fn set_hdr_len(&mut self, v: u16) {
        write_le16(self.buffer.as_mut(), field::HDR_LEN, v);
    }

    /// Sets `gso_size`.
    pub fn set_gso_size(&mut self, v: u16) {
        write_le16(self.buffer.as_mut(), field::GSO_SIZE, v);
    }

    /// Sets `csum_start`.
    pub fn set_csum_start(&mut self, v: u16) {
        write_le16(self.buffer.as_mut(), field::CSUM_START, v);
    }

    /// Sets `csum_offset`.
    pub fn set_csum_offset(&mut self, v: u16) {
        write_le16(self.buffer.as_mut(), field::CSUM_OFFSET, v);
    }

    /// Mutable Ethernet frame after the header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// All fields of a `virtio_net_hdr`; `Default` is "no offload".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VirtioNetHdrRepr {
    /// See [`flags`].
    pub flags: u8,
    /// See [`gso_type`].
    pub gso_type: u8,
    /// Header bytes (Ethernet + IP + L4).
    pub hdr_len: u16,
    /// MSS for GSO.
    pub gso_size: u16,
    /// Checksum start offset.
    pub csum_start: u16,
    /// Checksum field offset from `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdrRepr {
    /// Length of the legacy header.
    pub const LEN: usize = LEN;

    /// Reads all fields (validating the length only).
    pub fn parse<T: AsRef<[u8]>>(hdr: &VirtioNetHdr<T>) -> Result<VirtioNetHdrRepr> {
        hdr.check_len()?;
        Ok(VirtioNetHdrRepr {
            flags: hdr.flags(),
            gso_type: hdr.gso_type(),
            hdr_len: hdr.hdr_len(),
            gso_size: hdr.gso_size(),
            csum_start: hdr.csum_start(),
            csum_offset: hdr.csum_offset(),
        })
    }

    /// Header length: 10.
    pub const fn header_len(&self) -> usize {
        Self::LEN
    }

    /// Bytes written by [`Self::emit`]: 10.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes all ten bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, hdr: &mut VirtioNetHdr<T>) {
        hdr.set_flags(self.flags);
        hdr.set_gso_type(self.gso_type);
        hdr.set_hdr_len(self.hdr_len);
        hdr.set_gso_size(self.gso_size);
        hdr.set_csum_start(self.csum_start);
        hdr.set_csum_offset(self.csum_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A TSO super-frame header as the kernel hands it over: NEEDS_CSUM,
    // TCPV4|ECN, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
    const GOLDEN: [u8; 11] = [
        0x01, 0x81, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0xee,
    ];

    fn repr() -> VirtioNetHdrRepr {
        VirtioNetHdrRepr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso_type::TCPV4 | gso_type::ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn parse_golden_little_endian() {
        let h = VirtioNetHdr::new_checked(&GOLDEN[..]).unwrap();
        assert_eq!(h.flags(), flags::NEEDS_CSUM);
        assert_eq!(h.gso_type(), 0x81);
        assert_eq!(h.hdr_len(), 66);
        assert_eq!(h.gso_size(), 1448);
        assert_eq!(h.csum_start(), 34);
        assert_eq!(h.csum_offset(), 16);
        assert_eq!(h.payload(), &[0xee]);
        assert_eq!(VirtioNetHdrRepr::parse(&h).unwrap(), repr());
    }

    #[test]
    fn emit_golden() {
        let mut buf = [0x77u8; 11];
        buf[10] = 0xee;
        repr().emit(&mut VirtioNetHdr::new_unchecked(&mut buf[..]));
        assert_eq!(buf, GOLDEN);
        let mut h = VirtioNetHdr::new_checked(&mut buf[..]).unwrap();
        VirtioNetHdrRepr::default().emit(&mut h);
        h.payload_mut()[0] = 1;
        assert_eq!(buf, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            VirtioNetHdr::new_checked(&GOLDEN[..9]).unwrap_err(),
            WireError::Truncated
        );
        assert!(
            VirtioNetHdr::new_checked(&GOLDEN[..10])
                .unwrap()
                .payload()
                .is_empty()
        );
        assert_eq!(flags::DATA_VALID, 2);
        assert_eq!(
            (
                gso_type::NONE,
                gso_type::UDP,
                gso_type::TCPV6,
                gso_type::UDP_L4
            ),
            (0, 3, 4, 5)
        );
    }
}
