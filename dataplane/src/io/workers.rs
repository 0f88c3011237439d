//! The data plane's threads: TAP → router → UDP and UDP → router → TAP.
//!
//! Each worker owns one epoll instance, one `SO_REUSEPORT` receive socket (the kernel spreads
//! flows across them by 4-tuple, and the senders' source ports carry the flow entropy) and one
//! queue of every network's multiqueue TAP (the kernel spreads flows across queues). So a flow
//! stays on one worker and is never reordered, and workers share nothing on the packet path but
//! the forwarding table, which they read lock-free: one snapshot load per batch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::capture::{CaptureHub, Direction};
use crate::fdb::{Fib, FibSnapshot, Vni};
use crate::io::{IoError, MsgBatch, RecvMeta, Result, SendPool, Tap, TapOptions, VxlanSocket};
use crate::router::{
    EGRESS_HEADROOM, EGRESS_TAILROOM, EgressAction, IngressAction, Router, RouterConfig,
};
use crate::stats::{DropReason, StatsRegistry, WorkerStats};

/// Largest frame read from a TAP or datagram read from the underlay (64 KiB: a GRO batch).
const MAX_PACKET: usize = 65_536;
/// Datagrams per `recvmmsg`.
const RX_BATCH: usize = 32;
/// Frames read from one TAP queue before looking at other fds (fairness between networks).
const TAP_BURST: usize = 64;
/// The epoll token of the worker's UDP socket; TAP tokens are `TAP_TOKEN | vni`.
const UDP_TOKEN: u64 = 1 << 40;
const TAP_TOKEN: u64 = 1 << 32;
/// How often an idle worker checks whether it should stop.
const IDLE_WAKE: Duration = Duration::from_millis(200);

/// How to run the data plane.
#[derive(Clone, Debug)]
pub struct DataPlaneConfig {
    /// This host's VTEP (underlay) address.
    pub underlay: IpAddr,
    /// The VXLAN UDP port (4789; Linux's legacy default is 8472).
    pub vxlan_port: u16,
    /// Worker threads (each with its own TAP queue and receive socket).
    pub workers: usize,
    /// Send sockets on distinct source ports, picked by flow hash.
    pub send_sockets: usize,
    /// Receive buffer per receive socket (forced past `rmem_max` as root).
    pub rcvbuf_bytes: usize,
    /// Use TAP offloads (vnet header, TSO super-frames) and UDP GSO/GRO; `false` is the plain
    /// one-frame-per-syscall path (`vxnetd --offload off`).
    pub offload: bool,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        Self {
            underlay: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            vxlan_port: 4789,
            workers: 2,
            send_sockets: 8,
            // 10k MTU-sized datagrams in flight without a drop (each costs ~2 KiB of truesize).
            rcvbuf_bytes: 32 << 20,
            offload: true,
        }
    }
}

/// The queues of one network's TAP, one per worker.
#[derive(Debug)]
struct NetworkTaps {
    queues: Vec<Tap>,
}

type TapTable = HashMap<Vni, Arc<NetworkTaps>>;

/// An epoll instance.
#[derive(Debug)]
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> Result<Self> {
        // SAFETY: epoll_create1 takes a flag and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(IoError::last_os("epoll_create1"));
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: RawFd, token: u64) -> Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both fds are open; `event` lives on our stack for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(IoError::last_os(format!("epoll_ctl add fd {fd}")));
        }
        Ok(())
    }

    fn delete(&self, fd: RawFd) {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer; a stale fd only yields an error,
        // which is fine: closing an fd removes it from the interest list anyway.
        unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a valid, writable array of `max` entries.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        usize::try_from(n).unwrap_or(0) // EINTR or another error: treat as a timeout
    }
}

/// The running data plane.
#[derive(Debug)]
pub struct DataPlane {
    config: DataPlaneConfig,
    taps: Arc<ArcSwap<TapTable>>,
    epolls: Vec<Arc<Epoll>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    // Serialises add/remove of networks; never taken on the packet path.
    control: Mutex<()>,
    src_ports: Vec<u16>,
    capture: Arc<CaptureHub>,
}

impl DataPlane {
    /// Binds the underlay sockets and starts the workers.
    pub fn start(
        config: DataPlaneConfig,
        fib: Arc<Fib>,
        stats: Arc<StatsRegistry>,
    ) -> Result<DataPlane> {
        let workers = config.workers.max(1);
        let pool = Arc::new(SendPool::new(config.underlay, config.send_sockets.max(1))?);
        let taps: Arc<ArcSwap<TapTable>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let capture = Arc::new(CaptureHub::new());
        let mut epolls = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        let bind = SocketAddr::new(config.underlay, config.vxlan_port);
        for index in 0..workers {
            let rx = crate::io::bind_vxlan_rx(bind, true, config.rcvbuf_bytes)?;
            rx.set_nonblocking(true)?;
            let epoll = Arc::new(Epoll::new()?);
            epoll.add(rx.as_raw_fd(), UDP_TOKEN)?;
            let worker = Worker {
                index,
                epoll: Arc::clone(&epoll),
                rx,
                pool: Arc::clone(&pool),
                fib: Arc::clone(&fib),
                taps: Arc::clone(&taps),
                stop: Arc::clone(&stop),
                stats: stats.register_worker(),
                port: config.vxlan_port,
                capture: Arc::clone(&capture),
            };
            let thread = std::thread::Builder::new()
                .name(format!("vxnet-dp{index}"))
                .spawn(move || worker.run())
                .map_err(|e| IoError::os("spawn data plane worker", e))?;
            epolls.push(epoll);
            threads.push(thread);
        }
        Ok(DataPlane {
            config: DataPlaneConfig { workers, ..config },
            taps,
            epolls,
            stop,
            threads,
            control: Mutex::new(()),
            src_ports: pool.src_ports(),
            capture,
        })
    }

    /// Live captures of the frames the workers move (`vxnet capture`).
    pub fn capture_hub(&self) -> &Arc<CaptureHub> {
        &self.capture
    }

    /// The UDP source ports of the send sockets.
    pub fn src_ports(&self) -> &[u16] {
        &self.src_ports
    }

    /// Opens the TAP `tap_name` for network `vni` (one queue per worker) and starts moving its
    /// frames. Idempotent. The caller attaches the TAP to the network's bridge afterwards.
    pub fn add_network(&self, vni: Vni, tap_name: &str) -> Result<()> {
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if self.taps.load().contains_key(&vni) {
            return Ok(());
        }
        let options = TapOptions {
            vnet_hdr: false,
            multi_queue: true,
            offload: false,
        };
        let first = Tap::open(tap_name, options)?;
        let mut queues = Vec::with_capacity(self.config.workers);
        for _ in 1..self.config.workers {
            queues.push(first.open_queue()?);
        }
        queues.insert(0, first);
        for queue in &queues {
            queue.set_nonblocking(true)?;
        }
        let entry = Arc::new(NetworkTaps { queues });
        let mut next = TapTable::clone(&self.taps.load());
        next.insert(vni, Arc::clone(&entry));
        self.taps.store(Arc::new(next));
        for (epoll, queue) in self.epolls.iter().zip(&entry.queues) {
            epoll.add(queue.as_raw_fd(), TAP_TOKEN | u64::from(vni))?;
        }
        Ok(())
    }

    /// Stops moving network `vni`'s frames and closes its TAP (the kernel deletes the device).
    pub fn remove_network(&self, vni: Vni) {
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = TapTable::clone(&self.taps.load());
        if let Some(entry) = next.remove(&vni) {
            for (epoll, queue) in self.epolls.iter().zip(&entry.queues) {
                epoll.delete(queue.as_raw_fd());
            }
            self.taps.store(Arc::new(next));
        }
    }

    /// The networks whose TAPs are open.
    pub fn networks(&self) -> Vec<Vni> {
        self.taps.load().keys().copied().collect()
    }

    /// Stops the workers and closes every TAP.
    pub fn shutdown(mut self) {
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.taps.store(Arc::default());
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

struct Worker {
    index: usize,
    epoll: Arc<Epoll>,
    rx: VxlanSocket,
    pool: Arc<SendPool>,
    fib: Arc<Fib>,
    taps: Arc<ArcSwap<TapTable>>,
    stop: Arc<AtomicBool>,
    stats: Arc<WorkerStats>,
    port: u16,
    capture: Arc<CaptureHub>,
}

/// The worker's reusable buffers: allocated once, never per packet.
struct Buffers {
    rx: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    batch: MsgBatch,
    tx: Vec<u8>,
}

impl Worker {
    fn run(self) {
        let mut router = Router::new(RouterConfig::default(), Arc::clone(&self.stats));
        let mut bufs = Buffers {
            rx: vec![vec![0u8; MAX_PACKET]; RX_BATCH],
            metas: vec![RecvMeta::default(); RX_BATCH],
            batch: MsgBatch::new(RX_BATCH),
            tx: vec![0u8; EGRESS_HEADROOM + MAX_PACKET + EGRESS_TAILROOM],
        };
        // SAFETY: epoll_event is plain old data; all-zero is a valid value.
        let mut events = vec![unsafe { std::mem::zeroed::<libc::epoll_event>() }; 64];
        let epoch = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let ready = self.epoll.wait(&mut events, IDLE_WAKE);
            for event in &events[..ready] {
                let token = event.u64;
                if token == UDP_TOKEN {
                    self.ingress(&mut router, &mut bufs);
                } else if token & TAP_TOKEN != 0 {
                    let vni = (token & 0xFFFF_FFFF) as Vni;
                    self.egress(&mut router, &mut bufs, vni, epoch.elapsed());
                }
            }
        }
    }

    /// Drains the receive socket: decapsulates and writes inner frames to the TAPs.
    fn ingress(&self, router: &mut Router, bufs: &mut Buffers) {
        // Bounded, so a flood on the underlay cannot starve the TAPs.
        for _ in 0..8 {
            let received = match self
                .rx
                .recv_batch(&mut bufs.batch, &mut bufs.rx, &mut bufs.metas)
            {
                Ok(n) => n,
                Err(_) => return, // WouldBlock (drained) or a transient error (ICMP) alike
            };
            let fib = self.fib.load();
            let taps = self.taps.load();
            for (buf, meta) in bufs.rx.iter().zip(&bufs.metas[..received]) {
                if meta.truncated {
                    self.stats.count_drop(DropReason::MalformedInner);
                    continue;
                }
                let stride = meta.stride.max(1);
                // With UDP GRO one buffer holds several datagrams of `stride` bytes each.
                for datagram in buf[..meta.len].chunks(stride) {
                    self.deliver(router, &fib, &taps, meta.src.ip(), datagram);
                }
            }
            if received < RX_BATCH {
                return;
            }
        }
    }

    fn deliver(
        &self,
        router: &mut Router,
        fib: &FibSnapshot,
        taps: &TapTable,
        src: IpAddr,
        datagram: &[u8],
    ) {
        if let IngressAction::Deliver { vni, frame } = router.ingress(fib, src, datagram) {
            if self.capture.is_active() {
                self.capture.mirror(vni, Direction::Ingress, frame);
            }
            let queue = taps.get(&vni).and_then(|t| t.queues.get(self.index));
            match queue {
                Some(tap) => {
                    if tap.write(frame).is_err() {
                        self.stats.count_drop(DropReason::TapWriteError);
                    }
                }
                // The network is being torn down on this host.
                None => self.stats.count_drop(DropReason::UnknownNetwork),
            }
        }
    }

    /// Reads a burst of frames from network `vni`'s TAP queue and sends them on.
    fn egress(&self, router: &mut Router, bufs: &mut Buffers, vni: Vni, now: Duration) {
        let taps = self.taps.load();
        let Some(tap) = taps.get(&vni).and_then(|t| t.queues.get(self.index)) else {
            return;
        };
        let fib = self.fib.load();
        for _ in 0..TAP_BURST {
            let len = match tap.read(&mut bufs.tx[EGRESS_HEADROOM..EGRESS_HEADROOM + MAX_PACKET]) {
                Ok(len) => len,
                Err(_) => return, // WouldBlock: drained
            };
            if self.capture.is_active() {
                let frame = &bufs.tx[EGRESS_HEADROOM..EGRESS_HEADROOM + len];
                self.capture.mirror(vni, Direction::Egress, frame);
            }
            match router.egress(&fib, vni, &mut bufs.tx, len, now) {
                EgressAction::Unicast {
                    vtep,
                    packet,
                    flow_hash,
                } => {
                    self.send(packet, vtep, flow_hash);
                }
                EgressAction::Flood {
                    vteps,
                    packet,
                    flow_hash,
                } => {
                    for &vtep in vteps {
                        self.send(packet, vtep, flow_hash);
                    }
                }
                EgressAction::Reply { frame } => {
                    if self.capture.is_active() {
                        self.capture.mirror(vni, Direction::Ingress, frame);
                    }
                    if tap.write(frame).is_err() {
                        self.stats.count_drop(DropReason::TapWriteError);
                    }
                }
                EgressAction::Local | EgressAction::Drop(_) => {}
            }
        }
    }

    fn send(&self, packet: &[u8], vtep: IpAddr, flow_hash: u32) {
        let socket = self.pool.socket_for(u64::from(flow_hash));
        if socket
            .send_to(packet, SocketAddr::new(vtep, self.port))
            .is_err()
        {
            self.stats.count_drop(DropReason::UdpSendError);
        }
    }
}
