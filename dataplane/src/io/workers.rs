//! The data plane's threads: TAP → router → UDP and UDP → router → TAP.
//!
//! Each worker owns one epoll instance, one socket of the `SO_REUSEPORT` receive group, its own
//! send sockets, and one queue of every network's multiqueue TAP. The kernel's steering
//! programs ([`crate::steer`], attached by [`super::plane`]) send both directions of a flow to
//! the same worker: its TAP reads, its datagrams from the underlay and its TAP writes. So a
//! flow stays on one worker and is never reordered, and workers share nothing on the packet
//! path but the forwarding table, which they read lock-free: one snapshot load per batch.
//! Datagrams of different steering buckets never share a GSO send (the receiver steers a whole
//! GSO train by its first datagram), and a flow's send socket is chosen by its bucket among the
//! worker's 8, so that a receiver's GRO, which merges datagrams of one outer 4-tuple into one
//! train, never mixes two of its workers' flows when its worker count divides 8. Datagrams that
//! arrive on another worker than their flow's anyway are counted
//! (`udp_datagrams_other_worker`).
//!
//! With [`DataPlaneConfig::offload`](super::DataPlaneConfig::offload) (the default) the TAPs
//! carry a `virtio_net_hdr` and TCP super-frames of up to ~64 KiB:
//!
//! - egress: one `read` brings a super-frame; [`offload::segment_tcp`] writes each MSS-sized
//!   segment's headers, and copies the first segment whole (headers and payload) into a buffer
//!   of its own, where the router decides for it in place (every segment has the same MACs,
//!   addresses and ports, and none is larger, so the decision holds for all). The whole batch
//!   leaves in one UDP GSO send per destination (`UDP_SEGMENT` = stride), each datagram gathered
//!   from its headers and its payload where the `read` put it: the other segments' payloads are
//!   read once in userspace (for the checksum) and not copied there. Frames without GSO get their partial
//!   checksum completed ([`offload::complete_checksum`]) and take the ordinary path. A
//!   super-frame that is dropped counts one drop per segment.
//! - ingress: the receive socket's `UDP_GRO` batches are split by stride and routed datagram by
//!   datagram as before; delivered frames go through an [`offload::Coalescer`] that merges each
//!   TCP flow's in-order, checksum-verified segments back into super-frames, flushed at the end of
//!   every receive batch (no frame waits for the next batch), one gathered `writev` per
//!   super-frame: headers, then the merged payloads straight from the receive buffers.
//!
//! Without it every frame costs one `read` or `write` and one `sendto`, and the TAP has no
//! vnet header (the kernel segments and checksums before the TAP).
//!
//! A failed call is never mistaken for "nothing to read": `WouldBlock` ends a burst, `EINTR` is
//! retried inside the call, and any other error is counted under its [`IoFault`]
//! (`vxnet stats`: `io_error.*`; `/metrics`: `vxnet_io_errors_total`) and logged at most once a
//! minute per kind; the packets it lost count as drops (`truncated_datagram`, `tap_write_error`,
//! `udp_send_error`, or `udp_send_busy` for a full send socket). What each worker moved is
//! counted under [`Traffic`] (`vxnet stats`: `worker.<i>.*`).

use std::cell::RefCell;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::capture::{CaptureHub, Direction};
use crate::fdb::{Fib, FibSnapshot, NetworkTable, Vni};
use crate::io::busy_poll::BusyPoll;
use crate::io::epoll::Epoll;
use crate::io::faults::{FaultLog, is_send_busy, is_would_block};
use crate::io::plane::TapTable;
use crate::io::{MsgBatch, RecvMeta, SendPool, Tap, VNET_HDR_LEN, VxlanSocket};
use crate::offload::{self, CoalescedFrame, Coalescer, Origin, SegmentBatch};
use crate::router::{
    EGRESS_HEADROOM, EGRESS_TAILROOM, EgressAction, IngressAction, IngressMemo, Router,
    RouterConfig,
};
use crate::stats::{DropReason, IoFault, Traffic, WorkerStats};
use crate::steer;
use crate::txbatch::{GsoBatcher, GsoRun};
use crate::wire::virtio_net_hdr::gso_type;
use crate::wire::{VirtioNetHdr, VirtioNetHdrRepr};

/// Largest frame read from a TAP or datagram read from the underlay (64 KiB: a GRO batch).
const MAX_PACKET: usize = 65_536;
/// Read buffer for a TAP with offloads: a TSO super-frame is up to 64 KiB of IP packet plus
/// the Ethernet header (a read that fills the buffer is taken as truncated and dropped).
const TAP_READ_MAX: usize = 65_536 + 1024;
/// Datagrams per `recvmmsg`.
const RX_BATCH: usize = 32;
/// Frames read from one TAP queue before looking at other fds (fairness between networks).
const TAP_BURST: usize = 64;
/// The epoll token of the worker's UDP socket; TAP tokens are `TAP_TOKEN | vni`.
pub(super) const UDP_TOKEN: u64 = 1 << 40;
pub(super) const TAP_TOKEN: u64 = 1 << 32;
/// Destinations (VTEP × send socket × bucket) with datagrams waiting for one GSO send at a time
/// (a key more flushes them all: 16 keeps the many small flows of a busy host batched).
const TX_RUNS: usize = 16;
/// How often an idle worker checks whether it should stop.
const IDLE_WAKE: Duration = Duration::from_millis(200);

/// One data plane thread and everything it owns.
pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) epoll: Arc<Epoll>,
    pub(super) rx: VxlanSocket,
    pub(super) pool: SendPool,
    pub(super) fib: Arc<Fib>,
    pub(super) taps: Arc<ArcSwap<TapTable>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) port: u16,
    pub(super) capture: Arc<CaptureHub>,
    /// TAPs with vnet header and TSO; segmentation and coalescing on.
    pub(super) offload: bool,
    pub(super) busy_poll: Duration,
    /// How many workers the data plane runs (this one is `index`).
    pub(super) workers: usize,
    /// Failed calls: counted, and logged at most once a minute per kind. Only this worker's
    /// thread touches it.
    pub(super) faults: RefCell<FaultLog>,
}

/// The worker's reusable buffers: allocated once, never per packet.
struct Buffers {
    rx: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    batch: MsgBatch,
    tx: Vec<u8>,
    /// Routed datagrams waiting to leave, grouped into GSO runs; flushed when a TAP queue is
    /// drained (or its burst is over), so nothing waits for later traffic.
    pending: GsoBatcher<TxKey>,
    /// Only with offloads.
    offload: Option<OffloadBuffers>,
}

/// The offload path's buffers.
struct OffloadBuffers {
    vnet: [u8; VNET_HDR_LEN],
    segments: SegmentBatch,
    coalescer: Coalescer,
}

/// What every frame of one burst from a TAP queue shares: the router, the forwarding-table
/// snapshot taken for the burst, the queue (answers such as ICMP "too big" go back into it), the
/// network, the time, and the datagrams waiting to leave.
struct Burst<'a> {
    router: &'a mut Router,
    fib: &'a FibSnapshot,
    tap: &'a Tap,
    vni: Vni,
    now: Duration,
    pending: &'a mut GsoBatcher<TxKey>,
}

/// A datagram's destination VTEP, the index of its send socket in the worker's pool, and its
/// steering bucket.
type TxKey = (IpAddr, usize, u16);

/// Where the segments of a super-frame go, once the router decided for the first one.
enum SegmentTarget {
    Unicast(IpAddr),
    Flood,
}

impl Worker {
    /// The worker's loop, until the data plane stops.
    pub(super) fn run(self) {
        let mut router = Router::new(RouterConfig::default(), Arc::clone(&self.stats));
        let mut bufs = Buffers {
            rx: vec![vec![0u8; MAX_PACKET]; RX_BATCH],
            metas: vec![RecvMeta::default(); RX_BATCH],
            batch: MsgBatch::new(RX_BATCH),
            tx: vec![0u8; EGRESS_HEADROOM + MAX_PACKET.max(TAP_READ_MAX) + EGRESS_TAILROOM],
            pending: GsoBatcher::new(TX_RUNS),
            offload: self.offload.then(|| OffloadBuffers {
                vnet: [0; VNET_HDR_LEN],
                segments: SegmentBatch::default(),
                coalescer: Coalescer::default(),
            }),
        };
        // SAFETY: epoll_event is plain old data; all-zero is a valid value.
        let mut events = vec![unsafe { std::mem::zeroed::<libc::epoll_event>() }; 64];
        let epoch = Instant::now();
        let mut busy = BusyPoll::new(self.busy_poll);
        while !self.stop.load(Ordering::Relaxed) {
            let polling = busy.keep_polling(epoch.elapsed());
            let timeout = if polling { Duration::ZERO } else { IDLE_WAKE };
            let ready = match self.epoll.wait(&mut events, timeout) {
                Ok(0) if polling => {
                    std::thread::yield_now();
                    continue;
                }
                Ok(n) => n,
                Err(e) => {
                    self.fault(IoFault::EpollWait, &e);
                    // Not a busy loop if the failure persists; the stop flag is still seen.
                    std::thread::sleep(IDLE_WAKE);
                    continue;
                }
            };
            let mut packets = 0;
            for event in &events[..ready] {
                let token = event.u64;
                if token == UDP_TOKEN {
                    packets += self.ingress(&mut router, &mut bufs);
                } else if token & TAP_TOKEN != 0 {
                    let vni = (token & 0xFFFF_FFFF) as Vni;
                    packets += self.egress(&mut router, &mut bufs, vni, epoch.elapsed());
                }
            }
            if ready > 0 {
                busy.worked(epoch.elapsed(), packets);
            }
        }
    }

    /// Counts and (rate-limited) logs a failed call.
    fn fault(&self, fault: IoFault, err: &std::io::Error) {
        self.faults
            .borrow_mut()
            .report(&self.stats, fault, err, Instant::now());
    }

    /// Sorts a failed TAP read or underlay receive: `WouldBlock` is the queue drained; anything
    /// else is a fault. Either way the caller stops reading that fd for now.
    fn read_failed(&self, fault: IoFault, err: &std::io::Error) {
        if !is_would_block(err) {
            self.fault(fault, err);
        }
    }

    /// Counts `count` packets a failed send lost: a full socket is `udp_send_busy`, anything
    /// else `udp_send_error` and a fault.
    fn send_failed(&self, err: &std::io::Error, count: u64) {
        if is_send_busy(err) {
            self.stats.count_drops(DropReason::UdpSendBusy, count);
        } else {
            self.stats.count_drops(DropReason::UdpSendError, count);
            self.fault(IoFault::UdpSend, err);
        }
    }

    /// Writes `iov` to a TAP queue; counts `frames` as dropped if it fails. Returns the error.
    fn tap_write(&self, tap: &Tap, iov: &[IoSlice<'_>], frames: u64) -> Option<std::io::Error> {
        let err = match tap.writev(iov) {
            Ok(_) => {
                self.stats.count_traffic(Traffic::TapWritten, frames);
                return None;
            }
            Err(err) => err,
        };
        self.stats.count_drops(DropReason::TapWriteError, frames);
        if !is_would_block(&err) {
            self.fault(IoFault::TapWrite, &err);
        }
        Some(err)
    }

    /// Drains the receive socket: decapsulates and writes inner frames to the TAPs. Returns the
    /// number of datagrams received.
    fn ingress(&self, router: &mut Router, bufs: &mut Buffers) -> u32 {
        let datagrams = self.receive(router, bufs);
        self.stats
            .count_traffic(Traffic::UdpReceived, u64::from(datagrams));
        datagrams
    }

    /// [`Worker::ingress`] without the counting.
    fn receive(&self, router: &mut Router, bufs: &mut Buffers) -> u32 {
        let mut datagrams = 0;
        // Bounded, so a flood on the underlay cannot starve the TAPs.
        for _ in 0..8 {
            let received = match self
                .rx
                .recv_batch(&mut bufs.batch, &mut bufs.rx, &mut bufs.metas)
            {
                Ok(n) => n,
                Err(e) => {
                    self.read_failed(IoFault::UdpRecv, &e);
                    return datagrams;
                }
            };
            let fib = self.fib.load();
            let taps = self.taps.load();
            let mut coalescer = bufs.offload.as_mut().map(|o| &mut o.coalescer);
            let rx = &bufs.rx;
            // Merged payloads are written from `rx` itself, which stays untouched until the
            // coalescer's flush below.
            let udp_refused = std::cell::Cell::new(false);
            let mut emit = |frame: CoalescedFrame<'_>| {
                if self.write_coalesced(&taps, rx, frame) && frame.vnet.gso_type == gso_type::UDP_L4
                {
                    udp_refused.set(true);
                }
            };
            for (index, (buf, meta)) in rx.iter().zip(&bufs.metas[..received]).enumerate() {
                if meta.truncated {
                    self.stats.count_drop(DropReason::TruncatedDatagram);
                    continue;
                }
                let stride = meta.stride.max(1);
                let data = &buf[..meta.len];
                // With UDP GRO one buffer holds several datagrams of `stride` bytes each. An
                // empty datagram yields no chunk: route it anyway, so it is counted as a drop.
                let empty = data.is_empty().then_some(&data[..0]);
                // One sender, one snapshot: datagrams with the headers of the previous one skip
                // the table lookups.
                let mut memo = IngressMemo::default();
                let mut elsewhere = 0u64;
                datagrams += meta.len.div_ceil(stride).max(1) as u32;
                for datagram in empty.into_iter().chain(data.chunks(stride)) {
                    let IngressAction::Deliver { vni, frame } =
                        router.ingress_with(&fib, meta.src.ip(), datagram, &mut memo)
                    else {
                        continue;
                    };
                    if self.workers > 1
                        && steer::worker_of(steer::bucket(frame), self.workers) != self.index
                    {
                        elsewhere += 1;
                    }
                    if self.capture.is_active() {
                        self.capture.mirror(vni, Direction::Ingress, frame);
                    }
                    match coalescer.as_deref_mut() {
                        Some(coalescer) => {
                            // The frame is a slice of `buf`: its offset in it.
                            let offset = frame.as_ptr() as usize - buf.as_ptr() as usize;
                            let at = Origin {
                                buf: index as u32,
                                offset: offset as u32,
                            };
                            coalescer.push(vni, frame, at, &mut emit);
                        }
                        None => match taps.get(&vni).and_then(|t| t.queues.get(self.index)) {
                            Some(tap) => {
                                self.tap_write(tap, &[IoSlice::new(frame)], 1);
                            }
                            // The network is being torn down on this host.
                            None => self.stats.count_drop(DropReason::UnknownNetwork),
                        },
                    }
                }
                self.stats.count_traffic(Traffic::UdpOtherWorker, elsewhere);
            }
            // Never hold a frame across receive batches.
            if let Some(coalescer) = coalescer {
                coalescer.flush(&mut emit);
                if udp_refused.get() {
                    // A kernel without UDP_L4 from TAP writers: datagrams go one by one.
                    coalescer.set_merge_udp(false);
                }
            }
            if received < RX_BATCH {
                return datagrams;
            }
        }
        datagrams
    }

    /// Reads a burst of frames from network `vni`'s TAP queue and sends them on. Returns the
    /// number of frames read, a super-frame counting as its segments.
    fn egress(&self, router: &mut Router, bufs: &mut Buffers, vni: Vni, now: Duration) -> u32 {
        let taps = self.taps.load();
        let Some(tap) = taps.get(&vni).and_then(|t| t.queues.get(self.index)) else {
            return 0;
        };
        let fib = self.fib.load();
        let Buffers {
            tx,
            pending,
            offload,
            ..
        } = bufs;
        let mut burst = Burst {
            router,
            fib: &fib,
            tap,
            vni,
            now,
            pending,
        };
        let frames = match offload {
            Some(off) => self.egress_offload(&mut burst, tx, off),
            None => self.egress_plain(&mut burst, tx),
        };
        self.flush_pending(burst.pending);
        self.stats
            .count_traffic(Traffic::TapRead, u64::from(frames));
        frames
    }

    /// [`Worker::egress`] for a TAP without vnet header: one frame per `read`.
    fn egress_plain(&self, burst: &mut Burst<'_>, tx: &mut [u8]) -> u32 {
        let mut frames = 0;
        for _ in 0..TAP_BURST {
            let len = match burst
                .tap
                .read(&mut tx[EGRESS_HEADROOM..EGRESS_HEADROOM + MAX_PACKET])
            {
                Ok(len) => len,
                Err(e) => {
                    self.read_failed(IoFault::TapRead, &e);
                    break;
                }
            };
            frames += 1;
            self.route_frame(burst, tx, len);
        }
        frames
    }

    /// Writes a frame from the coalescer to its network's TAP in one gathered write: the vnet
    /// header, the coalescer's head, and the merged payloads where they were received (`rx`).
    /// Returns true if the TAP refused it as invalid (`EINVAL`: e.g. a `gso_type` this kernel
    /// does not take from a TAP writer). Failures are counted.
    fn write_coalesced(&self, taps: &TapTable, rx: &[Vec<u8>], out: CoalescedFrame<'_>) -> bool {
        let segments = out.segments as u64;
        let Some(tap) = taps.get(&out.tag).and_then(|t| t.queues.get(self.index)) else {
            self.stats.count_drops(DropReason::UnknownNetwork, segments);
            return false;
        };
        let vnet = offload::encode_vnet(&out.vnet);
        let mut iov = [IoSlice::new(&[]); 2 + offload::MAX_TAIL_SEGMENTS];
        iov[0] = IoSlice::new(&vnet);
        iov[1] = IoSlice::new(out.head);
        for (slot, span) in iov[2..].iter_mut().zip(out.tail) {
            *slot = IoSlice::new(span.resolve(rx));
        }
        let pieces = 2 + out.tail.len().min(offload::MAX_TAIL_SEGMENTS);
        self.tap_write(tap, &iov[..pieces], segments)
            .is_some_and(|e| e.raw_os_error() == Some(libc::EINVAL))
    }

    /// Writes a locally built answer to a TAP that has a vnet header (all zero: no offload).
    fn write_reply(&self, tap: &Tap, vni: Vni, frame: &[u8]) {
        if self.capture.is_active() {
            self.capture.mirror(vni, Direction::Ingress, frame);
        }
        // A TAP with a vnet header expects one in front of every frame (zero: no offload).
        if tap.options().vnet_hdr {
            let vnet = [0; VNET_HDR_LEN];
            self.tap_write(tap, &[IoSlice::new(&vnet), IoSlice::new(frame)], 1);
        } else {
            self.tap_write(tap, &[IoSlice::new(frame)], 1);
        }
    }

    /// [`Worker::egress`] for a TAP with vnet header and TSO: super-frames are segmented and
    /// sent with UDP GSO, partial checksums completed.
    fn egress_offload(
        &self,
        burst: &mut Burst<'_>,
        tx: &mut [u8],
        off: &mut OffloadBuffers,
    ) -> u32 {
        let mut frames = 0;
        for _ in 0..TAP_BURST {
            let frame_buf = &mut tx[EGRESS_HEADROOM..EGRESS_HEADROOM + TAP_READ_MAX];
            let len = match burst.tap.read_vnet(&mut off.vnet, frame_buf) {
                Ok(len) => len,
                Err(e) => {
                    self.read_failed(IoFault::TapRead, &e);
                    break;
                }
            };
            if len >= TAP_READ_MAX {
                // Cannot happen with a 64 KiB GSO limit; never send a truncated frame.
                self.stats.count_drop(DropReason::TooBig);
                continue;
            }
            let vnet = VirtioNetHdrRepr::parse(&VirtioNetHdr::new_unchecked(&off.vnet[..]))
                .unwrap_or_default();
            frames += 1;
            if vnet.gso_type == gso_type::NONE {
                let frame = &mut tx[EGRESS_HEADROOM..EGRESS_HEADROOM + len];
                if offload::complete_checksum(&vnet, frame).is_err() {
                    self.stats.count_drop(DropReason::BadGso);
                    continue;
                }
                self.route_frame(burst, tx, len);
            } else {
                let frame = &tx[EGRESS_HEADROOM..EGRESS_HEADROOM + len];
                match offload::segment_tcp(&vnet, frame, &mut off.segments) {
                    Ok(()) => {
                        frames += off.segments.len().saturating_sub(1) as u32;
                        // Frames read before this super-frame leave before it (a flow's SYN or
                        // small segments must not be overtaken).
                        self.flush_pending(burst.pending);
                        self.route_segments(burst, &mut off.segments, frame);
                    }
                    Err(_) => self.stats.count_drop(DropReason::BadGso),
                }
            }
        }
        frames
    }

    /// Routes one ordinary (not segmented) frame at `buf[EGRESS_HEADROOM..][..len]`.
    fn route_frame(&self, burst: &mut Burst<'_>, buf: &mut [u8], len: usize) {
        let vni = burst.vni;
        let frame = &buf[EGRESS_HEADROOM..EGRESS_HEADROOM + len];
        if self.capture.is_active() {
            self.capture.mirror(vni, Direction::Egress, frame);
        }
        let bucket = steer::bucket(frame);
        match burst.router.egress(burst.fib, vni, buf, len, burst.now) {
            EgressAction::Unicast { vtep, packet, .. } => {
                self.queue(burst.pending, packet, self.tx_key(vtep, bucket))
            }
            EgressAction::Flood { vteps, packet, .. } => {
                for &vtep in vteps {
                    self.queue(burst.pending, packet, self.tx_key(vtep, bucket));
                }
            }
            EgressAction::Reply { frame } => self.write_reply(burst.tap, vni, frame),
            EgressAction::Local | EgressAction::Drop(_) => {}
        }
    }

    /// Routes the segments of super-frame `frame`: the router decides for the first, the
    /// decision holds for all of them (same headers but for lengths, sequence numbers and
    /// checksums; none larger than the first). Drops count once per segment; so do the network's
    /// tx counters.
    fn route_segments(&self, burst: &mut Burst<'_>, segments: &mut SegmentBatch, frame: &[u8]) {
        if segments.is_empty() {
            return;
        }
        let vni = burst.vni;
        let rest = segments.len() as u64 - 1;
        if self.capture.is_active() {
            for i in 0..segments.len() {
                let parts = segments.frame_parts(frame, i);
                self.capture.mirror_parts(vni, Direction::Egress, &parts);
            }
        }
        let bucket = steer::bucket(frame);
        let first_len = segments.first_len();
        let decision =
            burst
                .router
                .egress(burst.fib, vni, segments.first_mut(), first_len, burst.now);
        let target = match decision {
            EgressAction::Unicast { vtep, .. } => SegmentTarget::Unicast(vtep),
            EgressAction::Flood { .. } => SegmentTarget::Flood,
            EgressAction::Reply { frame } => {
                // A TCP segment is only ever answered with ICMP "fragmentation needed" (the
                // router counted the first segment as too big): the others go with it.
                self.write_reply(burst.tap, vni, frame);
                self.stats.count_drops(DropReason::TooBig, rest);
                return;
            }
            EgressAction::Local => return,
            EgressAction::Drop(reason) => {
                self.stats.count_drops(reason, rest);
                return;
            }
        };
        segments.replicate_headroom();
        let table = burst.fib.network(vni);
        if let Some(table) = table {
            // The router counted the first segment.
            let bytes = (segments.frames_len() - first_len) as u64;
            table.counters().add_tx_many(rest, bytes);
        }
        match target {
            SegmentTarget::Unicast(vtep) => self.send_segments(segments, frame, vtep, bucket),
            SegmentTarget::Flood => {
                for &vtep in table.map(NetworkTable::flood_list).unwrap_or_default() {
                    self.send_segments(segments, frame, vtep, bucket);
                }
            }
        }
    }

    /// Sends every segment of super-frame `frame` to `vtep` with UDP GSO (one system call per
    /// 64 segments / 64 KiB, payloads gathered from `frame`); counts the segments the kernel did
    /// not take.
    fn send_segments(&self, segments: &SegmentBatch, frame: &[u8], vtep: IpAddr, bucket: u16) {
        let socket = self.pool.index_for(u64::from(bucket));
        let total = segments.len();
        let Some(socket) = self.pool.sockets().get(socket) else {
            self.stats
                .count_drops(DropReason::UdpSendError, total as u64);
            return;
        };
        let sent = socket.send_gso_parts(
            SocketAddr::new(vtep, self.port),
            total,
            segments.stride(),
            |i| segments.segment(frame, i),
        );
        match sent {
            // A send that stopped part way keeps its error to itself: the rest counts as failed.
            Ok(sent) => {
                let sent = sent.min(total);
                self.stats.count_traffic(Traffic::UdpSent, sent as u64);
                self.stats
                    .count_drops(DropReason::UdpSendError, (total - sent) as u64);
            }
            Err(e) => self.send_failed(&e, total as u64),
        }
    }

    /// Queues one routed datagram; it leaves with the next flush of `pending`.
    fn queue(&self, pending: &mut GsoBatcher<TxKey>, packet: &[u8], key: TxKey) {
        pending.push(key, packet, &mut |run| self.send_run(run));
    }

    /// Where a flow's datagrams for `vtep` leave: the VTEP, the flow's send socket (chosen by
    /// bucket: see [`SendPool`]'s use in the module docs) and its steering bucket.
    fn tx_key(&self, vtep: IpAddr, bucket: u16) -> TxKey {
        (vtep, self.pool.index_for(u64::from(bucket)), bucket)
    }

    /// Sends every queued datagram.
    fn flush_pending(&self, pending: &mut GsoBatcher<TxKey>) {
        pending.flush(&mut |run| self.send_run(run));
    }

    /// Sends one run of datagrams (one UDP GSO send when there are several); counts the
    /// datagrams the kernel did not take.
    fn send_run(&self, run: GsoRun<'_, TxKey>) {
        let (vtep, socket, _) = *run.key;
        let total = run.count as u64;
        let Some(socket) = self.pool.sockets().get(socket) else {
            self.stats.count_drops(DropReason::UdpSendError, total);
            return;
        };
        let dst = SocketAddr::new(vtep, self.port);
        let sent = if run.count == 1 {
            socket.send_to(run.bytes, dst)
        } else {
            socket.send_gso(dst, run.bytes, run.stride)
        };
        match sent {
            Ok(n) if n >= run.bytes.len() => self.stats.count_traffic(Traffic::UdpSent, total),
            // send_gso stops at a whole number of segments.
            Ok(n) => {
                let sent = (n / run.stride.max(1)) as u64;
                self.stats.count_traffic(Traffic::UdpSent, sent);
                self.stats
                    .count_drops(DropReason::UdpSendError, total - sent);
            }
            Err(e) => self.send_failed(&e, total),
        }
    }
}
