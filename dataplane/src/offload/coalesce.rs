//! GRO on ingress: the [`Coalescer`] merges the TCP segments (and UDP datagrams) of one flow
//! decapsulated from one receive batch back into super-frames for one TAP write each.

mod slot;

use self::slot::{Candidate, FlowKey, Slot};
use crate::fdb::Vni;
use crate::wire::VirtioNetHdrRepr;
use crate::wire::virtio_net_hdr::flags as vnet_flags;

/// Largest IP packet (IPv4 total length, or IPv6 header + payload length) the [`Coalescer`]
/// builds: the 16-bit length fields' limit, and the kernel's default GRO limit.
pub const MAX_COALESCED_IP_LEN: usize = 65_535;

/// Most segments merged into one super-frame after its first (a slot's [`Span`]s).
pub const MAX_TAIL_SEGMENTS: usize = 63;

/// Where a frame given to [`Coalescer::push`] lies in the caller's receive buffers: buffer
/// `buf`, from byte `offset`. The coalescer copies a super-frame's first segment but keeps the
/// payloads merged after it as [`Span`]s into those buffers, so the caller must keep the buffers
/// unchanged until it has called [`Coalescer::flush`] (the end of each receive batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// Index of the receive buffer.
    pub buf: u32,
    /// Offset of the frame's first byte in it.
    pub offset: u32,
}

/// A run of payload bytes in the caller's receive buffers (see [`Origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Index of the receive buffer.
    pub buf: u32,
    /// First byte.
    pub start: u32,
    /// Length.
    pub len: u32,
}

impl Span {
    /// The bytes of this span in `bufs` (empty if it does not fit, which a caller that kept its
    /// buffers as [`Origin`] asks never sees).
    pub fn resolve<'b, B: AsRef<[u8]>>(&self, bufs: &'b [B]) -> &'b [u8] {
        let (start, len) = (self.start as usize, self.len as usize);
        bufs.get(self.buf as usize)
            .and_then(|b| b.as_ref().get(start..start + len))
            .unwrap_or_default()
    }
}

/// One frame the [`Coalescer`] hands back for writing to a TAP: `vnet`, then `head`, then the
/// bytes of each span of `tail` in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalescedFrame<'a> {
    /// The tag given to [`Coalescer::push`] (the network's VNI).
    pub tag: Vni,
    /// The `virtio_net_hdr` to write with the frame.
    pub vnet: VirtioNetHdrRepr,
    /// The headers and the first segment's payload (the whole frame when `tail` is empty).
    pub head: &'a [u8],
    /// The payloads of the segments merged after the first, in the caller's receive buffers.
    pub tail: &'a [Span],
    /// How many received frames it stands for.
    pub segments: usize,
}

impl CoalescedFrame<'_> {
    /// The frame's length.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.iter().map(|s| s.len as usize).sum::<usize>()
    }

    /// Never empty in practice; for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame, copied (tests and captures; the data path writes the pieces).
    pub fn to_vec<B: AsRef<[u8]>>(&self, bufs: &[B]) -> Vec<u8> {
        let mut v = self.head.to_vec();
        for span in self.tail {
            v.extend_from_slice(span.resolve(bufs));
        }
        v
    }
}

/// What the [`Coalescer`] did so far (for tests, benchmarks and statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalescerStats {
    /// Frames pushed.
    pub frames_in: u64,
    /// Frames handed back (super-frames count once).
    pub frames_out: u64,
    /// Super-frames built from two or more segments.
    pub super_frames: u64,
    /// TCP segments and UDP datagrams whose checksum vxnet found wrong (passed on alone,
    /// unmerged, for the kernel to drop).
    pub bad_checksum: u64,
}

/// Merges consecutive in-order TCP segments of a flow into super-frames (software GRO for the
/// TAP), within one receive batch: [`Coalescer::push`] each decapsulated frame, then
/// [`Coalescer::flush`] at the end of the batch, so no frame waits for the next one.
///
/// UDP datagrams of one flow (same headers but for IP length, ident and checksum and UDP length
/// and checksum) are merged the same way while they have the first one's payload size (a
/// shorter one ends the super-frame), into a `gso_type` UDP_L4 super-frame with `NEEDS_CSUM`:
/// the kernel splits it back into the same datagrams (in the receiving socket, or on the way
/// out of a forwarding container), so a stream of small datagrams costs one TAP write per batch
/// instead of one per datagram. Each datagram's checksum is verified first (IPv4 datagrams sent
/// without one have none to verify).
///
/// A segment is merged when its flow (tag, addresses, ports) has a super-frame in progress whose
/// Ethernet, IP and TCP headers equal its own except lengths, IPv4 ident and checksum, sequence
/// number, window and PSH; the IPv4 header has no options and is not a fragment; its sequence
/// number continues the super-frame; its flags are ACK (PSH allowed: it ends the super-frame);
/// every merged payload equals the first one's size (`gso_size`) except the last, which may be
/// shorter and ends the super-frame; the result stays within 64 KiB; and vxnet verified its TCP
/// checksum. A segment that fails verification, and any frame that cannot be merged, is handed
/// back alone with flags 0 (the kernel checks it) — in order: the flow's super-frame in
/// progress goes first. A super-frame of one segment is handed back as that segment, unchanged,
/// with `DATA_VALID` (its checksum was verified).
///
/// Frames are handed to the `emit` callback; slots (one buffer for the first segment each) are
/// allocated once in [`Coalescer::new`]. The payloads merged after a super-frame's first segment
/// are not copied: the frame handed back lists where they are in the caller's receive buffers
/// (see [`Origin`]), and the caller writes them from there (one gathered write).
#[derive(Debug)]
pub struct Coalescer {
    slots: Vec<Slot>,
    /// The slot that took the last segment: where the next one most likely goes.
    last: Option<usize>,
    next_evict: usize,
    stats: CoalescerStats,
    merge_udp: bool,
}

impl Coalescer {
    /// Flows merged at the same time by default.
    pub const DEFAULT_SLOTS: usize = 8;

    /// A coalescer that builds up to `slots` super-frames at once (at least 1; ~64 KiB each).
    pub fn new(slots: usize) -> Coalescer {
        Coalescer {
            slots: (0..slots.max(1)).map(|_| Slot::new()).collect(),
            last: None,
            next_evict: 0,
            stats: CoalescerStats::default(),
            merge_udp: true,
        }
    }

    /// Whether UDP datagrams are merged (into `gso_type` UDP_L4 super-frames); on by default.
    /// Off for a TAP whose kernel refuses UDP_L4 writes: UDP then passes one datagram per frame.
    pub fn set_merge_udp(&mut self, merge: bool) {
        self.merge_udp = merge;
    }

    /// Counters since creation.
    pub fn stats(&self) -> CoalescerStats {
        self.stats
    }

    /// Super-frames in progress.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.active).count()
    }

    /// Takes one inner frame of network `tag`, received at `at`; hands frames that are complete
    /// to `emit`. The buffer behind `at` must stay unchanged until the next [`Coalescer::flush`].
    pub fn push<F: FnMut(CoalescedFrame<'_>)>(
        &mut self,
        tag: Vni,
        frame: &[u8],
        at: Origin,
        emit: &mut F,
    ) {
        self.stats.frames_in += 1;
        let Some(seg) = Candidate::parse(frame).filter(|c| self.merge_udp || !c.layout.udp) else {
            self.emit_alone(tag, frame, 0, emit);
            return;
        };
        // The common case, a flow's next segment, usually for the slot that took the last one:
        // that slot's header comparison covers addresses and ports, so a match is the flow's.
        if seg.mergeable
            && let Some(i) = self.last
            && self.slots[i].active
            && self.slots[i].key.tag == tag
            && self.slots[i].can_append(frame, &seg)
        {
            self.append(i, tag, frame, at, &seg, emit);
            return;
        }
        let key = FlowKey::of(tag, frame, &seg.layout);
        let slot = self.slots.iter().position(|s| s.active && s.key == key);
        if let Some(i) = slot
            && seg.mergeable
            && self.slots[i].can_append(frame, &seg)
        {
            self.append(i, tag, frame, at, &seg, emit);
            return;
        }
        if !seg.mergeable || !seg.checksum_ok(frame) {
            if seg.mergeable {
                self.stats.bad_checksum += 1;
            }
            if let Some(i) = slot {
                self.flush_slot(i, emit);
            }
            self.emit_alone(tag, frame, 0, emit);
            return;
        }
        if let Some(i) = slot {
            self.flush_slot(i, emit);
        }
        if seg.psh {
            // Nothing may follow a PSH segment: no point in holding it.
            self.emit_alone(tag, frame, vnet_flags::DATA_VALID, emit);
            return;
        }
        let i = match slot.or_else(|| self.slots.iter().position(|s| !s.active)) {
            Some(i) => i,
            None => {
                let i = self.next_evict;
                self.next_evict = (i + 1) % self.slots.len();
                self.flush_slot(i, emit);
                i
            }
        };
        self.slots[i].start(key, frame, &seg);
        self.last = Some(i);
    }

    /// Appends `seg` (accepted by slot `i`'s [`Slot::can_append`]) if its checksum verifies;
    /// otherwise ends the super-frame and hands the segment on alone, unverified.
    fn append<F: FnMut(CoalescedFrame<'_>)>(
        &mut self,
        i: usize,
        tag: Vni,
        frame: &[u8],
        at: Origin,
        seg: &Candidate,
        emit: &mut F,
    ) {
        if self.slots[i].append_verified(frame, at, seg) {
            self.last = Some(i);
            if self.slots[i].closed {
                self.flush_slot(i, emit);
            }
        } else {
            self.stats.bad_checksum += 1;
            self.flush_slot(i, emit);
            self.emit_alone(tag, frame, 0, emit);
        }
    }

    /// Hands every super-frame in progress to `emit`. Call at the end of each receive batch.
    pub fn flush<F: FnMut(CoalescedFrame<'_>)>(&mut self, emit: &mut F) {
        for i in 0..self.slots.len() {
            if self.slots[i].active {
                self.flush_slot(i, emit);
            }
        }
    }

    fn emit_alone<F: FnMut(CoalescedFrame<'_>)>(
        &mut self,
        tag: Vni,
        frame: &[u8],
        flags: u8,
        emit: &mut F,
    ) {
        self.stats.frames_out += 1;
        emit(CoalescedFrame {
            tag,
            vnet: VirtioNetHdrRepr {
                flags,
                ..VirtioNetHdrRepr::default()
            },
            head: frame,
            tail: &[],
            segments: 1,
        });
    }

    fn flush_slot<F: FnMut(CoalescedFrame<'_>)>(&mut self, i: usize, emit: &mut F) {
        let slot = &mut self.slots[i];
        slot.active = false;
        self.stats.frames_out += 1;
        let vnet = if slot.segments == 1 {
            VirtioNetHdrRepr {
                flags: vnet_flags::DATA_VALID,
                ..VirtioNetHdrRepr::default()
            }
        } else {
            self.stats.super_frames += 1;
            slot.finish()
        };
        emit(CoalescedFrame {
            tag: slot.key.tag,
            vnet,
            head: &slot.buf[..slot.head_len],
            tail: &slot.tail[..slot.tail_count],
            segments: slot.segments,
        });
    }
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new(Self::DEFAULT_SLOTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::tests::{coalesce_all, frames_of, super_v4, vnet_v4};
    use crate::offload::{SegmentBatch, segment_tcp};
    use crate::router::EGRESS_HEADROOM;
    use crate::wire::tcp_flags;

    #[test]
    fn segments_then_coalesces_back() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 + 3) as u8).collect();
        let sf = super_v4(&payload, tcp_flags::ACK | tcp_flags::PSH, 1000);
        let mut batch = SegmentBatch::default();
        segment_tcp(&vnet_v4(1448), &sf, &mut batch).unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.stride(), 8 + 66 + 1448);
        let out = coalesce_all(&frames_of(&batch, &sf));
        assert_eq!(out.len(), 1, "one super-frame");
        let (vnet, frame, n) = &out[0];
        assert_eq!(*n, 3);
        assert_eq!(*vnet, vnet_v4(1448));
        // The same bytes: the ident the super-frame keeps (the first segment's) is the original's.
        assert_eq!(frame, &sf);
    }

    /// As the data plane uses it: segments received back to back in one GRO buffer, each behind
    /// an 8-byte header; merged payloads are read from that buffer at their offsets.
    #[test]
    fn coalesces_from_offsets_in_a_shared_receive_buffer() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 13 + 1) as u8).collect();
        let sf = super_v4(&payload, tcp_flags::ACK, 77);
        let mut batch = SegmentBatch::default();
        segment_tcp(&vnet_v4(1000), &sf, &mut batch).unwrap();
        let mut gro = Vec::new();
        for i in 0..batch.len() {
            let [head, body] = batch.segment(&sf, i);
            gro.extend_from_slice(head);
            gro.extend_from_slice(body);
        }
        let bufs = [vec![0xEE; 100], gro];
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        let mut emit = |f: CoalescedFrame<'_>| {
            assert_eq!(f.len(), f.to_vec(&bufs).len());
            out.push((f.to_vec(&bufs), f.segments, f.tail.len()));
        };
        for (i, datagram) in bufs[1].chunks(batch.stride()).enumerate() {
            let at = Origin {
                buf: 1,
                offset: (i * batch.stride() + EGRESS_HEADROOM) as u32,
            };
            c.push(1, &datagram[EGRESS_HEADROOM..], at, &mut emit);
        }
        c.flush(&mut emit);
        assert_eq!(
            out,
            vec![(sf, 10, 9)],
            "one super-frame, 9 payloads by reference"
        );
    }
}
