//! Packet, drop and I/O error counters.
//!
//! Every packet the data plane does not forward is counted under a named [`DropReason`]; every
//! system call on the packet path that fails with a real error (not `WouldBlock`, not
//! `Interrupted`) is counted under an [`IoFault`]. Counters are per worker (each worker owns one
//! [`WorkerStats`], so increments never contend between cores) and summed only when somebody
//! reads them ([`StatsRegistry::snapshot`], [`StatsRegistry::io_errors`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A counted kind: a `#[repr(usize)]` enum whose variants index an array of counters, with
/// every variant in order (`ALL`), their number (`COUNT`) and stable snake_case names.
macro_rules! counter_kinds {
    ($(#[$meta:meta])* $enum:ident { $($variant:ident => $name:literal, $doc:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(usize)]
        pub enum $enum {
            $(#[doc = $doc] $variant,)*
        }

        impl $enum {
            /// Every kind, in counter order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];
            /// How many kinds there are.
            pub const COUNT: usize = Self::ALL.len();

            /// The stable, snake_case name shown by `vxnet stats` and in metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)*
                }
            }
        }
    };
}

counter_kinds! {
    /// Why a packet was dropped. Each reason has its own counter.
    DropReason {
        // Egress: frames read from a network's TAP device.
        ShortFrame => "short_frame", "A frame from the TAP is shorter than an Ethernet header.";
        UnknownNetwork => "unknown_network", "A frame arrived on the TAP of a network this host no longer serves.";
        LoopGuard => "loop_guard", "The source MAC lives on the other side (a frame came back, or a MAC is spoofed).";
        NoRoute => "no_route", "Unicast to an unknown MAC and no remote member VTEP to flood to.";
        TooBig => "too_big", "The frame is larger than the network's MTU allows on the underlay.";
        BadGso => "bad_gso", "A TAP frame's virtio_net_hdr asks for an offload vxnet does not do (UDP GSO, unknown gso_type) or does not match the frame (gso_size 0, checksum offsets, headers).";
        // Ingress: datagrams from the underlay UDP socket.
        ShortDatagram => "short_datagram", "A UDP payload shorter than a VXLAN header.";
        BadVxlanFlags => "bad_vxlan_flags", "The VXLAN I flag is not set (RFC 7348: the frame must be dropped).";
        UnknownVni => "unknown_vni", "A VNI this host is not a member of.";
        NonMemberVtep => "non_member_vtep", "The outer source is not a member VTEP of the VNI (anti-spoofing).";
        MalformedInner => "malformed_inner", "The inner frame is truncated or its L3 header is malformed.";
        TruncatedDatagram => "truncated_datagram", "A datagram (or GRO batch) larger than the receive buffer: the kernel cut it, so none of it is delivered.";
        SourceMismatch => "source_mismatch", "The inner source MAC is registered behind a different VTEP.";
        NotLocal => "not_local", "Unicast to a MAC that is not on this host.";
        // I/O: the kernel refused a packet the router had accepted.
        TapWriteError => "tap_write_error", "Writing a frame to a TAP device failed.";
        UdpSendError => "udp_send_error", "Sending a datagram to a remote VTEP failed.";
        UdpSendBusy => "udp_send_busy", "The send socket had no room (WouldBlock, ENOBUFS): the datagram was not sent.";
    }
}

counter_kinds! {
    /// A system call of the packet path that failed with a real error: not `WouldBlock`
    /// (nothing to do, or no room now) and not `Interrupted` (retried). Each failed call counts
    /// once, whatever it carried; the packets it lost are counted as drops too. Shown as
    /// `io_error.<name>` by `vxnet stats`.
    IoFault {
        TapRead => "tap_read", "`read` from a TAP queue.";
        TapWrite => "tap_write", "`write`/`writev` to a TAP queue.";
        UdpRecv => "udp_recv", "`recvmmsg` on an underlay receive socket.";
        UdpSend => "udp_send", "`sendto`/`sendmsg` on an underlay send socket.";
        EpollWait => "epoll_wait", "`epoll_wait` of a worker.";
    }
}

counter_kinds! {
    /// What one worker moved: proof of where flows run (`vxnet stats`: `worker.<i>.<name>`;
    /// `/metrics`: `vxnet_worker_packets_total`). A super-frame counts as its segments.
    Traffic {
        TapRead => "tap_frames_read", "Frames read from this worker's TAP queues.";
        UdpReceived => "udp_datagrams_received", "Datagrams received on this worker's underlay socket.";
        TapWritten => "tap_frames_written", "Frames written to this worker's TAP queues.";
        UdpSent => "udp_datagrams_sent", "Datagrams this worker sent to remote VTEPs.";
        UdpOtherWorker => "udp_datagrams_other_worker", "Datagrams received here whose flow belongs to another worker (a GRO train that mixed flows): delivered, but that flow may be reordered.";
    }
}

/// Counters of one worker. Plain relaxed atomics: the owner is the only writer, so the cache
/// line stays on its core; readers may see a slightly old value, which is fine for statistics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    drops: [AtomicU64; DropReason::COUNT],
    faults: [AtomicU64; IoFault::COUNT],
    traffic: [AtomicU64; Traffic::COUNT],
}

impl WorkerStats {
    /// Counts one dropped packet.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` dropped packets at once (e.g. the segments of one TCP super-frame).
    #[inline]
    pub fn count_drops(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The current count for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// The sum of all drop counters.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Counts one failed system call.
    #[inline]
    pub fn count_fault(&self, fault: IoFault) {
        self.faults[fault as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The current count for one kind of failed call.
    pub fn faults(&self, fault: IoFault) -> u64 {
        self.faults[fault as usize].load(Ordering::Relaxed)
    }

    /// Counts `n` packets moved (once per batch, not per packet).
    #[inline]
    pub fn count_traffic(&self, kind: Traffic, n: u64) {
        if n > 0 {
            self.traffic[kind as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The current count for one kind of traffic.
    pub fn traffic(&self, kind: Traffic) -> u64 {
        self.traffic[kind as usize].load(Ordering::Relaxed)
    }
}

/// Per-network traffic counters, shared by the workers that move that network's packets.
#[derive(Debug, Default)]
pub struct NetworkCounters {
    /// Frames received from the underlay and delivered to the network's TAP.
    pub rx_packets: AtomicU64,
    /// Bytes of the inner frames counted in `rx_packets`.
    pub rx_bytes: AtomicU64,
    /// Frames read from the TAP and sent to at least one remote VTEP.
    pub tx_packets: AtomicU64,
    /// Bytes of the inner frames counted in `tx_packets`.
    pub tx_bytes: AtomicU64,
    /// Requests answered locally by ARP/ND suppression.
    pub suppressed: AtomicU64,
}

impl NetworkCounters {
    /// Counts `packets` frames of `bytes` in total delivered.
    #[inline]
    pub(crate) fn add_rx_many(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn add_tx(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `packets` frames of `bytes` in total sent (the segments of a super-frame).
    #[inline]
    pub(crate) fn add_tx_many(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A plain copy of the counters.
    pub fn read(&self) -> NetworkCountersSnapshot {
        NetworkCountersSnapshot {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            suppressed: self.suppressed.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of [`NetworkCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkCountersSnapshot {
    /// See [`NetworkCounters::rx_packets`].
    pub rx_packets: u64,
    /// See [`NetworkCounters::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`NetworkCounters::tx_packets`].
    pub tx_packets: u64,
    /// See [`NetworkCounters::tx_bytes`].
    pub tx_bytes: u64,
    /// See [`NetworkCounters::suppressed`].
    pub suppressed: u64,
}

/// All workers' counters, summed on read.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    // Locked only when a worker starts and when somebody reads: never on the packet path.
    workers: Mutex<Vec<Arc<WorkerStats>>>,
}

impl StatsRegistry {
    /// Creates an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new worker and returns its counters.
    pub fn register_worker(&self) -> Arc<WorkerStats> {
        let stats = Arc::new(WorkerStats::default());
        self.workers_guard().push(Arc::clone(&stats));
        stats
    }

    /// Sums every worker's drop counters into one map keyed by reason name (all reasons present).
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let workers = self.workers_guard();
        DropReason::ALL
            .iter()
            .map(|&reason| (reason.name(), workers.iter().map(|w| w.drops(reason)).sum()))
            .collect()
    }

    /// Sums every worker's failed-call counters into one map keyed by [`IoFault::name`] (all
    /// present).
    pub fn io_errors(&self) -> BTreeMap<&'static str, u64> {
        let workers = self.workers_guard();
        IoFault::ALL
            .iter()
            .map(|&fault| (fault.name(), workers.iter().map(|w| w.faults(fault)).sum()))
            .collect()
    }

    /// Each worker's traffic counters, in worker order, keyed by [`Traffic::name`].
    pub fn per_worker(&self) -> Vec<BTreeMap<&'static str, u64>> {
        self.workers_guard()
            .iter()
            .map(|w| {
                Traffic::ALL
                    .iter()
                    .map(|&k| (k.name(), w.traffic(k)))
                    .collect()
            })
            .collect()
    }

    fn workers_guard(&self) -> std::sync::MutexGuard<'_, Vec<Arc<WorkerStats>>> {
        // A poisoned lock only means a reader panicked; the counters themselves are still valid.
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn registry_sums_workers() {
        let registry = StatsRegistry::new();
        let a = registry.register_worker();
        let b = registry.register_worker();
        a.count_drop(DropReason::UnknownVni);
        b.count_drop(DropReason::UnknownVni);
        b.count_drop(DropReason::ShortFrame);
        let snap = registry.snapshot();
        assert_eq!(snap["unknown_vni"], 2);
        assert_eq!(snap["short_frame"], 1);
        assert_eq!(snap["no_route"], 0);
        assert_eq!(snap.len(), DropReason::COUNT);
    }

    #[test]
    fn io_faults_are_named_in_order_and_summed() {
        for (i, fault) in IoFault::ALL.iter().enumerate() {
            assert_eq!(*fault as usize, i);
        }
        let registry = StatsRegistry::new();
        let a = registry.register_worker();
        let b = registry.register_worker();
        a.count_fault(IoFault::TapRead);
        b.count_fault(IoFault::TapRead);
        b.count_fault(IoFault::EpollWait);
        let errors = registry.io_errors();
        assert_eq!(errors["tap_read"], 2);
        assert_eq!(errors["epoll_wait"], 1);
        assert_eq!(errors["udp_recv"], 0);
        assert_eq!(errors.len(), IoFault::COUNT);
        assert_eq!(a.total_drops(), 0, "faults are not drops");
    }
}
