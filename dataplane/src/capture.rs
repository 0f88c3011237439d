//! Live capture: the workers mirror the inner frames they move for a network into the sinks of
//! running captures (`vxnet capture`).
//!
//! Capturing costs nothing when no capture runs: the workers test one relaxed atomic per batch.
//! While a capture runs, each mirrored frame is copied into a bounded queue; when the reader
//! falls behind, frames are dropped (and counted) instead of slowing the packet path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::fdb::Vni;

/// Frames a capture may queue before it drops.
pub const CAPTURE_QUEUE: usize = 4096;

/// Which way a mirrored frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read from the network's TAP (leaving this host's containers).
    Egress,
    /// Written to the network's TAP (arriving from the underlay).
    Ingress,
}

/// One mirrored frame.
#[derive(Clone, Debug)]
pub struct CapturedFrame {
    /// When it was mirrored, since the Unix epoch.
    pub timestamp: Duration,
    /// Which way it went.
    pub direction: Direction,
    /// The inner Ethernet frame.
    pub frame: Vec<u8>,
}

#[derive(Debug)]
struct Sink {
    id: u64,
    queue: SyncSender<CapturedFrame>,
    dropped: Arc<AtomicU64>,
}

/// The registry of running captures, shared by the workers and the agent.
#[derive(Debug, Default)]
pub struct CaptureHub {
    active: AtomicUsize,
    sinks: ArcSwap<HashMap<Vni, Vec<Arc<Sink>>>>,
    next_id: AtomicU64,
    // Serialises start/stop; never taken on the packet path.
    control: Mutex<()>,
}

/// A running capture; dropping it stops the capture.
#[derive(Debug)]
pub struct Capture {
    hub: Arc<CaptureHub>,
    vni: Vni,
    id: u64,
    frames: Receiver<CapturedFrame>,
    dropped: Arc<AtomicU64>,
}

impl Capture {
    /// Waits up to `timeout` for the next frame.
    pub fn next(&self, timeout: Duration) -> Option<CapturedFrame> {
        self.frames.recv_timeout(timeout).ok()
    }

    /// Frames lost because the reader fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.hub.stop(self.vni, self.id);
    }
}

impl CaptureHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether any capture runs (one relaxed load: the workers' fast check).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) != 0
    }

    /// Starts capturing network `vni`.
    pub fn start(self: &Arc<Self>, vni: Vni) -> Capture {
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let (queue, frames) = std::sync::mpsc::sync_channel(CAPTURE_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut sinks = HashMap::clone(&self.sinks.load());
        sinks.entry(vni).or_default().push(Arc::new(Sink {
            id,
            queue,
            dropped: Arc::clone(&dropped),
        }));
        self.sinks.store(Arc::new(sinks));
        self.active.fetch_add(1, Ordering::Relaxed);
        Capture {
            hub: Arc::clone(self),
            vni,
            id,
            frames,
            dropped,
        }
    }

    fn stop(&self, vni: Vni, id: u64) {
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let mut sinks = HashMap::clone(&self.sinks.load());
        if let Some(list) = sinks.get_mut(&vni) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                sinks.remove(&vni);
            }
        }
        self.sinks.store(Arc::new(sinks));
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Mirrors `frame` to the captures of network `vni` (call only when [`Self::is_active`]).
    pub fn mirror(&self, vni: Vni, direction: Direction, frame: &[u8]) {
        self.mirror_parts(vni, direction, &[frame]);
    }

    /// [`CaptureHub::mirror`] for a frame held in pieces (a segment's headers and payload):
    /// the copy handed to each sink is the pieces back to back.
    pub fn mirror_parts(&self, vni: Vni, direction: Direction, parts: &[&[u8]]) {
        let sinks = self.sinks.load();
        let Some(list) = sinks.get(&vni) else { return };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        for sink in list {
            let copy = CapturedFrame {
                timestamp,
                direction,
                frame: parts.concat(),
            };
            if let Err(TrySendError::Full(_)) = sink.queue.try_send(copy) {
                sink.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The pcap file header (microsecond timestamps, Ethernet link type, 64 KiB snap length).
pub fn pcap_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&65_535u32.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    h
}

/// Appends one pcap record for `frame` to `out`.
pub fn pcap_record(out: &mut Vec<u8>, frame: &CapturedFrame) {
    let len = u32::try_from(frame.frame.len()).unwrap_or(u32::MAX);
    let secs = u32::try_from(frame.timestamp.as_secs()).unwrap_or(u32::MAX);
    out.extend_from_slice(&secs.to_le_bytes());
    out.extend_from_slice(&frame.timestamp.subsec_micros().to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame.frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_receive_only_their_network_and_stop_on_drop() {
        let hub = Arc::new(CaptureHub::new());
        assert!(!hub.is_active());
        let capture = hub.start(7);
        assert!(hub.is_active());
        hub.mirror(7, Direction::Egress, b"frame-a");
        hub.mirror(8, Direction::Ingress, b"other network");
        let got = capture.next(Duration::from_millis(100)).expect("a frame");
        assert_eq!(got.frame, b"frame-a");
        assert_eq!(got.direction, Direction::Egress);
        assert!(capture.next(Duration::from_millis(10)).is_none());
        drop(capture);
        assert!(!hub.is_active());
    }

    #[test]
    fn a_slow_reader_loses_frames_not_the_packet_path() {
        let hub = Arc::new(CaptureHub::new());
        let capture = hub.start(1);
        for _ in 0..CAPTURE_QUEUE + 10 {
            hub.mirror(1, Direction::Ingress, &[0u8; 60]);
        }
        assert_eq!(capture.dropped(), 10);
    }

    #[test]
    fn pcap_bytes_are_well_formed() {
        let mut out = pcap_header().to_vec();
        let frame = CapturedFrame {
            timestamp: Duration::new(1_700_000_000, 123_456_000),
            direction: Direction::Egress,
            frame: vec![0xff; 42],
        };
        pcap_record(&mut out, &frame);
        assert_eq!(&out[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(out.len(), 24 + 16 + 42);
        assert_eq!(u32::from_le_bytes(out[28..32].try_into().unwrap()), 123_456);
        assert_eq!(u32::from_le_bytes(out[32..36].try_into().unwrap()), 42);
    }
}
