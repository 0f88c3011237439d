//! Checked, typed views over packet bytes, modelled on smoltcp's `wire` module.
//!
//! Every format has two layers:
//!
//! * a *packet view* (`XPacket<T: AsRef<[u8]>>`) that wraps a buffer and reads or
//!   writes fields in place. `new_checked` validates all lengths once; after it
//!   succeeds no getter can panic, whatever the bytes are. Getters that depend on
//!   length fields clamp to the buffer, so even a setter that breaks the invariant
//!   (e.g. a bogus `set_total_len`) cannot make a later getter panic.
//!   `new_unchecked` skips validation; its getters panic on short buffers.
//! * a *representation* (`XRepr`) — a plain struct of the header's meaningful
//!   fields with `parse` (from a view) and `emit` (into a view). `buffer_len()`
//!   is the number of bytes `emit` writes; `emit` panics if the view's buffer is
//!   shorter than that, like slice indexing does.
//!
//! No I/O, no clock, no allocation, no `unsafe`: this module is the parser of
//! untrusted bytes and is fuzzed (see `dataplane/fuzz`).

#![forbid(unsafe_code)]

use core::ops::{Range, RangeFrom};

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod virtio_net_hdr;
pub mod vxlan;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, EthernetRepr, MacAddr, MacAddrParseError};
pub use icmpv4::{Icmpv4Packet, Icmpv4Repr};
pub use icmpv6::{
    Icmpv6Packet, NdiscNeighborAdvertRepr, NdiscNeighborSolicitRepr, NdiscOptions, ndisc_flags,
};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Packet, Ipv6Repr};
pub use tcp::{TcpFlags, TcpPacket, TcpRepr, tcp_flags};
pub use udp::{UdpPacket, UdpRepr};
pub use virtio_net_hdr::{VirtioNetHdr, VirtioNetHdrRepr};
pub use vxlan::{VNI_MAX, VXLAN_PORT, VxlanPacket, VxlanRepr};

/// Why a buffer could not be viewed as a packet of some format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header or than a length field claims.
    #[error("truncated")]
    Truncated,
    /// A field has a value this format does not allow (bad version, IHL, ...).
    #[error("malformed")]
    Malformed,
}

/// Result type of every fallible operation in [`crate::wire`].
pub type Result<T> = core::result::Result<T, WireError>;

/// IP protocol numbers (IPv4 `protocol`, IPv6 `next_header`) the data plane handles.
pub mod ip_protocol {
    /// Internet Control Message Protocol (v4).
    pub const ICMP: u8 = 1;
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
    /// User Datagram Protocol.
    pub const UDP: u8 = 17;
    /// Internet Control Message Protocol for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// A fixed header field: a byte range.
type Field = Range<usize>;
/// "From here to the end of the buffer".
type Rest = RangeFrom<usize>;

// Byte-order helpers. The ranges passed in always come from `field` consts of
// the right width, so the `copy_from_slice` length match is static.

#[inline]
fn read_u16(data: &[u8], field: Field) -> u16 {
    u16::from_be_bytes(read_array(data, field))
}

#[inline]
fn read_u32(data: &[u8], field: Field) -> u32 {
    u32::from_be_bytes(read_array(data, field))
}

#[inline]
fn read_array<const N: usize>(data: &[u8], field: Field) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&data[field]);
    out
}

#[inline]
fn write_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

#[inline]
fn write_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

/// `start..end` clamped into `0..len`, so payload getters never panic even if a
/// setter has put a length field out of step with the buffer.
#[inline]
fn clamp_range(start: usize, end: usize, len: usize) -> Range<usize> {
    let end = end.min(len);
    start.min(end)..end
}
