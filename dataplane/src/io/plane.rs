//! The running data plane: its workers, their sockets and the networks' TAPs, and the kernel's
//! steering made to match the workers (see [`crate::steer`]).
//!
//! Setup happens here, from one thread, in worker order: worker `i` binds the `i`-th socket of
//! the `SO_REUSEPORT` group and opens queue `i` of every TAP, which is what the steering
//! programs' results index. Each worker then runs alone (`workers.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::busy_poll::DEFAULT_BUSY_POLL;
use super::epoll::Epoll;
use super::faults::FaultLog;
use super::steering::{BpfProgram, attach_reuseport_program};
use super::workers::{TAP_TOKEN, UDP_TOKEN, Worker};
use super::{IoError, Result, SendPool, Tap, TapOptions, VxlanSocket};
use crate::capture::CaptureHub;
use crate::fdb::{Fib, Vni};
use crate::stats::StatsRegistry;
use crate::steer;

/// How to run the data plane.
#[derive(Clone, Debug)]
pub struct DataPlaneConfig {
    /// This host's VTEP (underlay) address.
    pub underlay: IpAddr,
    /// The VXLAN UDP port (4789; Linux's legacy default is 8472).
    pub vxlan_port: u16,
    /// Worker threads (each with its own TAP queue, receive socket and send sockets).
    pub workers: usize,
    /// Send sockets on distinct source ports per worker, picked by the flow's steering bucket.
    pub send_sockets: usize,
    /// Receive buffer per receive socket (forced past `rmem_max` as root).
    pub rcvbuf_bytes: usize,
    /// Use TAP offloads (vnet header, TSO super-frames) and UDP GSO/GRO; `false` is the plain
    /// one-frame-per-syscall path (`vxnetd --offload off`).
    pub offload: bool,
    /// How long a worker keeps polling (yielding the CPU between polls) after its last packet
    /// before it sleeps; zero: sleep at once. See [`BusyPoll`](super::BusyPoll).
    pub busy_poll: Duration,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        Self {
            underlay: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            vxlan_port: 4789,
            workers: default_workers(),
            send_sockets: 8,
            // 10k MTU-sized datagrams in flight without a drop (each costs ~2 KiB of truesize).
            rcvbuf_bytes: 32 << 20,
            offload: true,
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }
}

/// One worker per core this process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How the kernel's choice of worker is made to follow the flow hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteeringStatus {
    /// The receive sockets' reuseport group picks the worker by the inner flow.
    pub reuseport_program: bool,
    /// TAPs whose queue is picked by the steering program.
    pub taps_steered: usize,
    /// TAPs left on the kernel's automatic steering (the program could not be loaded or
    /// attached): a flow's egress follows its ingress after the first packet back. Zero with
    /// one worker, where there is nothing to steer.
    pub taps_automatic: usize,
}

/// The queues of one network's TAP, one per worker.
#[derive(Debug)]
pub(super) struct NetworkTaps {
    pub(super) queues: Vec<Tap>,
    steered: bool,
}

pub(super) type TapTable = HashMap<Vni, Arc<NetworkTaps>>;

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
    /// The TAPs' queue selector; none with one worker, or if the kernel refused it (logged).
    tap_program: Option<BpfProgram>,
    reuseport_program: bool,
    /// TAPs the program failed to attach to (the first failure is logged).
    attach_failures: AtomicUsize,
}

impl DataPlane {
    /// Binds the underlay sockets, attaches the steering programs and starts the workers.
    pub fn start(
        config: DataPlaneConfig,
        fib: Arc<Fib>,
        stats: Arc<StatsRegistry>,
    ) -> Result<DataPlane> {
        let workers = config.workers.max(1);
        let per_worker = config.send_sockets.max(1);
        let bind = SocketAddr::new(config.underlay, config.vxlan_port);
        // Bind order is the group's index order: all before any worker runs.
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let rx = super::bind_vxlan_rx(bind, true, config.rcvbuf_bytes)?;
            rx.set_nonblocking(true)?;
            receivers.push(rx);
        }
        let reuseport_program = workers > 1 && steer_receivers(&receivers, workers);
        let tap_program = (workers > 1)
            .then(|| BpfProgram::load_socket_filter(&steer::tap_program(workers as u32)))
            .and_then(|loaded| {
                loaded
                    .inspect_err(|e| {
                        tracing::warn!(
                            "TAP flow steering unavailable ({e}): TAPs use the kernel's \
                             automatic steering, which follows each flow's ingress"
                        )
                    })
                    .ok()
            });
        let taps: Arc<ArcSwap<TapTable>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let capture = Arc::new(CaptureHub::new());
        let mut epolls = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        let mut src_ports = Vec::new();
        let started = (|| -> Result<()> {
            for (index, rx) in receivers.into_iter().enumerate() {
                let pool = SendPool::new(config.underlay, per_worker)?;
                src_ports.extend(pool.src_ports());
                let epoll = Arc::new(Epoll::new()?);
                epoll.add(rx.as_raw_fd(), UDP_TOKEN)?;
                let worker = Worker {
                    index,
                    epoll: Arc::clone(&epoll),
                    rx,
                    pool,
                    fib: Arc::clone(&fib),
                    taps: Arc::clone(&taps),
                    stop: Arc::clone(&stop),
                    stats: stats.register_worker(),
                    port: config.vxlan_port,
                    capture: Arc::clone(&capture),
                    offload: config.offload,
                    busy_poll: config.busy_poll,
                    workers,
                    faults: RefCell::new(FaultLog::new(index)),
                };
                let thread = std::thread::Builder::new()
                    .name(format!("vxnet-dp{index}"))
                    .spawn(move || worker.run())
                    .map_err(|e| IoError::os("spawn data plane worker", e))?;
                epolls.push(epoll);
                threads.push(thread);
            }
            Ok(())
        })();
        if let Err(e) = started {
            // No half-started data plane: the workers already running stop and close their
            // sockets.
            stop.store(true, Ordering::Relaxed);
            for thread in threads {
                let _ = thread.join();
            }
            return Err(e);
        }
        Ok(DataPlane {
            config: DataPlaneConfig { workers, ..config },
            taps,
            epolls,
            stop,
            threads,
            control: Mutex::new(()),
            src_ports,
            capture,
            tap_program,
            reuseport_program,
            attach_failures: AtomicUsize::new(0),
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

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.config.workers
    }

    /// How flows are steered to the workers.
    pub fn steering(&self) -> SteeringStatus {
        let taps = self.taps.load();
        let steered = taps.values().filter(|t| t.steered).count();
        let automatic = if self.config.workers > 1 {
            taps.len() - steered
        } else {
            0
        };
        SteeringStatus {
            reuseport_program: self.reuseport_program,
            taps_steered: steered,
            taps_automatic: automatic,
        }
    }

    /// Opens the TAP `tap_name` for network `vni` (one queue per worker, the steering program
    /// attached) and starts moving its frames. Idempotent. The caller attaches the TAP to the
    /// network's bridge afterwards.
    pub fn add_network(&self, vni: Vni, tap_name: &str) -> Result<()> {
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if self.taps.load().contains_key(&vni) {
            return Ok(());
        }
        let options = TapOptions {
            vnet_hdr: self.config.offload,
            multi_queue: true,
            offload: self.config.offload,
        };
        // Queue i is the i-th opened: the index the steering program returns. A device left
        // by a network just removed (a worker may still hold its queues for one burst) would
        // put ours after its own and scramble the order when they close: wait for it to go.
        let first = create_tap(tap_name, options)?;
        let mut queues = Vec::with_capacity(self.config.workers);
        for _ in 1..self.config.workers {
            queues.push(first.open_queue()?);
        }
        queues.insert(0, first);
        for queue in &queues {
            queue.set_nonblocking(true)?;
        }
        let steered = match &self.tap_program {
            Some(program) => match program.attach_to_tap(&queues[0]) {
                Ok(()) => true,
                Err(e) => {
                    if self.attach_failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            "TUNSETSTEERINGEBPF on {tap_name}: {e}; its flows follow the \
                             kernel's automatic steering"
                        );
                    }
                    false
                }
            },
            None => false,
        };
        // Every worker watches its queue before the network is published, or none does: a
        // queue nobody reads would black-hole the flows steered to it.
        for (added, (epoll, queue)) in self.epolls.iter().zip(&queues).enumerate() {
            if let Err(e) = epoll.add(queue.as_raw_fd(), TAP_TOKEN | u64::from(vni)) {
                for (epoll, queue) in self.epolls.iter().zip(&queues).take(added) {
                    epoll.delete(queue.as_raw_fd());
                }
                return Err(e);
            }
        }
        let mut next = TapTable::clone(&self.taps.load());
        next.insert(vni, Arc::new(NetworkTaps { queues, steered }));
        self.taps.store(Arc::new(next));
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

/// Creates the TAP `name`, waiting up to 2 s for a device of that name that is still going
/// away.
fn create_tap(name: &str, options: TapOptions) -> Result<Tap> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match Tap::create(name, options) {
            Err(e) if e.errno() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Attaches the inner-flow program to the receive sockets' group; false (logged) if the
/// kernel refuses it, and the kernel's outer 4-tuple hash picks the socket.
fn steer_receivers(receivers: &[VxlanSocket], workers: usize) -> bool {
    match attach_reuseport_program(&receivers[0], &steer::reuseport_program(workers as u32)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "SO_ATTACH_REUSEPORT_CBPF: {e}: datagrams reach the workers by outer 4-tuple"
            );
            false
        }
    }
}
