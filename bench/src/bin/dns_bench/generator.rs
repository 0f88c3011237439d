//! The load generator, run inside the load container (hidden `__dns-load`): one UDP socket,
//! `sendmmsg`/`recvmmsg`, either N queries outstanding at all times (closed loop) or a fixed
//! rate (paced), every query timed by its id from its send to the kernel's receive timestamp.
//! Prints one line of JSON.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use vxnet_testkit::stats::percentile;

use crate::sock::{recv_batch, set_int_opt};

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Keep this many queries outstanding.
    Closed(usize),
    /// Send this many queries per second, whatever comes back.
    Paced(f64),
}

/// Datagrams per sendmmsg/recvmmsg call.
pub const BATCH: usize = 64;
/// At most this many queries in flight (ids are 16 bits).
const MAX_OUTSTANDING: usize = 60_000;

/// The wire form of an A query for `name` (id 0, RD set).
fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// CLOCK_REALTIME in ns: the clock of the kernel's receive timestamps (SO_TIMESTAMPNS).
fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Width of a timeline bucket (by send time).
const BUCKET_NS: u64 = 100_000_000;
/// Room for one SCM_TIMESTAMPNS control message.
const CMSG_ROOM: usize = 64;

/// The generator's state: who is outstanding since when, and what came back.
struct Load {
    fd: libc::c_int,
    t0: Instant,
    /// CLOCK_REALTIME at `t0`.
    rt0: u64,
    queries: Vec<Vec<u8>>,
    next_query: usize,
    next_id: u16,
    /// Send time (CLOCK_REALTIME ns) per id; 0 = free.
    slots: Vec<u64>,
    /// Whether the query of this id was sent inside the measuring window.
    in_window: Vec<bool>,
    /// (id, slot value) in send order, for timeouts; stale entries are skipped.
    order: VecDeque<(u16, u64)>,
    outstanding: usize,
    sent_total: u64,
    sent_window: u64,
    received_window: u64,
    lost_window: u64,
    unexpected: u64,
    empty_answers: u64,
    rcodes: [u64; 16],
    latencies_ns: Vec<u32>,
    /// Per 100 ms of send time (from t0): (replies, max latency ns, replies over 2 ms).
    timeline: BTreeMap<u64, (u64, u64, u64)>,
    /// Replies whose kernel receive timestamp was missing (timed on reading instead).
    no_timestamp: u64,
    send_bufs: Vec<[u8; 512]>,
    recv_bufs: Vec<[u8; 2048]>,
    cmsg_bufs: Vec<[u64; CMSG_ROOM / 8]>,
}

impl Load {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Sends up to `n` queries (one sendmmsg); returns how many went.
    fn send(&mut self, n: usize, window: (u64, u64)) -> usize {
        let n = n.min(BATCH);
        if n == 0 {
            return 0;
        }
        let mut ids = [0u16; BATCH];
        // SAFETY: iovec is plain data; all-zero is a valid (empty) value.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for j in 0..n {
            let mut id = self.next_id;
            while self.slots[usize::from(id)] != 0 {
                id = id.wrapping_add(1);
            }
            self.next_id = id.wrapping_add(1);
            ids[j] = id;
            let q = &self.queries[self.next_query % self.queries.len()];
            self.next_query += 1;
            let buf = &mut self.send_bufs[j];
            buf[..q.len()].copy_from_slice(q);
            buf[..2].copy_from_slice(&id.to_be_bytes());
            iovs[j] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: q.len(),
            };
            msgs[j].msg_hdr.msg_iov = &raw mut iovs[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        let now = self.now_ns();
        let stamp = realtime_ns();
        // SAFETY: `msgs[..n]` point at `iovs[..n]`, which point into `send_bufs`; all live for
        // the call. The socket is connected, so no addresses are needed.
        let sent = unsafe { libc::sendmmsg(self.fd, msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        let sent = usize::try_from(sent).unwrap_or(0);
        let counted = now >= window.0 && now < window.1;
        for &id in &ids[..sent] {
            self.slots[usize::from(id)] = stamp;
            self.in_window[usize::from(id)] = counted;
            self.order.push_back((id, stamp));
        }
        self.outstanding += sent;
        self.sent_total += sent as u64;
        if counted {
            self.sent_window += sent as u64;
        }
        sent
    }

    /// Reads what has arrived (non-blocking); returns how many replies were read.
    fn receive(&mut self) -> usize {
        let mut total = 0;
        loop {
            // SAFETY: iovec is plain data; all-zero is a valid (empty) value.
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for j in 0..BATCH {
                iovs[j] = libc::iovec {
                    iov_base: self.recv_bufs[j].as_mut_ptr().cast(),
                    iov_len: self.recv_bufs[j].len(),
                };
                msgs[j].msg_hdr.msg_iov = &raw mut iovs[j];
                msgs[j].msg_hdr.msg_iovlen = 1;
                msgs[j].msg_hdr.msg_control = self.cmsg_bufs[j].as_mut_ptr().cast();
                msgs[j].msg_hdr.msg_controllen = CMSG_ROOM as _;
            }
            // SAFETY: the headers point at `iovs`, which point into `recv_bufs`, and at
            // `cmsg_bufs` (CMSG_ROOM bytes each, 8-aligned); all live for the call. MSG_DONTWAIT:
            // returns at once.
            let n = unsafe { recv_batch(self.fd, &mut msgs, libc::MSG_DONTWAIT) };
            let Ok(n) = usize::try_from(n) else {
                return total;
            };
            let read_at = realtime_ns();
            for (msg, buf) in msgs.iter().zip(&self.recv_bufs).take(n) {
                let arrived = match kernel_timestamp(&msg.msg_hdr) {
                    Some(t) => t,
                    None => {
                        self.no_timestamp += 1;
                        read_at
                    }
                };
                let d = &buf[..(msg.msg_len as usize).min(buf.len())];
                if d.len() < 12 {
                    self.unexpected += 1;
                    continue;
                }
                let id = usize::from(u16::from_be_bytes([d[0], d[1]]));
                let sent = self.slots[id];
                if sent == 0 {
                    self.unexpected += 1;
                    continue;
                }
                self.slots[id] = 0;
                self.outstanding -= 1;
                if self.in_window[id] {
                    self.received_window += 1;
                    self.rcodes[usize::from(d[3] & 0x0f)] += 1;
                    if u16::from_be_bytes([d[6], d[7]]) == 0 {
                        self.empty_answers += 1;
                    }
                    let lat = arrived.saturating_sub(sent);
                    self.latencies_ns
                        .push(u32::try_from(lat).unwrap_or(u32::MAX));
                    let b = self
                        .timeline
                        .entry(sent.saturating_sub(self.rt0) / BUCKET_NS)
                        .or_default();
                    b.0 += 1;
                    b.1 = b.1.max(lat);
                    b.2 += u64::from(lat > 2_000_000);
                }
            }
            total += n;
            if n < BATCH {
                return total;
            }
        }
    }

    /// Frees the ids of queries older than `timeout` (lost).
    fn expire(&mut self, timeout_ns: u64) {
        let now = realtime_ns();
        while let Some(&(id, stamp)) = self.order.front() {
            let i = usize::from(id);
            if self.slots[i] != stamp {
                self.order.pop_front();
                continue;
            }
            if now.saturating_sub(stamp) < timeout_ns {
                break;
            }
            self.slots[i] = 0;
            self.outstanding -= 1;
            if self.in_window[i] {
                self.lost_window += 1;
            }
            self.order.pop_front();
        }
    }

    /// Waits until the socket is readable or `ns` nanoseconds have passed.
    fn wait(&self, ns: u64) {
        let ts = libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, a live timespec, no signal mask.
        unsafe {
            libc::ppoll(&raw mut pfd, 1, &raw const ts, std::ptr::null());
        }
    }
}

/// The kernel's receive time of a datagram (SCM_TIMESTAMPNS), if the control data has it.
fn kernel_timestamp(hdr: &libc::msghdr) -> Option<u64> {
    // SAFETY: `hdr` was filled by recvmmsg: msg_control/msg_controllen describe live control
    // data; CMSG_FIRSTHDR/NXTHDR stay within it and CMSG_DATA points inside each message.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

pub fn dns_load(
    server: (Ipv4Addr, u16),
    names: &[&str],
    mode: Mode,
    warmup: Duration,
    secs: Duration,
    timeout: Duration,
) -> Result<Value> {
    if names.is_empty() {
        bail!("no names to query");
    }
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(server)?;
    let fd = sock.as_raw_fd();
    for (opt, force) in [
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
    ] {
        // A failure only leaves the default.
        set_int_opt(fd, opt, 4 << 20);
        set_int_opt(fd, force, 4 << 20);
    }
    // Replies are timed by the kernel's receive timestamp, so that this process being off the
    // CPU when a reply arrives does not count as the resolver's latency.
    if set_int_opt(fd, libc::SO_TIMESTAMPNS, 1) != 0 {
        bail!("SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer; it only affects this thread's
    // timer precision (1 µs instead of 50 µs, for the paced sends).
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let mut load = Load {
        fd,
        t0: Instant::now(),
        rt0: realtime_ns(),
        queries: names.iter().map(|n| a_query(n)).collect(),
        next_query: 0,
        next_id: 1,
        slots: vec![0; 65_536],
        in_window: vec![false; 65_536],
        order: VecDeque::new(),
        outstanding: 0,
        sent_total: 0,
        sent_window: 0,
        received_window: 0,
        lost_window: 0,
        unexpected: 0,
        empty_answers: 0,
        rcodes: [0; 16],
        latencies_ns: Vec::new(),
        timeline: BTreeMap::new(),
        no_timestamp: 0,
        cmsg_bufs: vec![[0; CMSG_ROOM / 8]; BATCH],
        send_bufs: vec![[0; 512]; BATCH],
        recv_bufs: vec![[0; 2048]; BATCH],
    };
    let w0 = warmup.as_nanos() as u64;
    let w1 = w0 + secs.as_nanos() as u64;
    let timeout_ns = timeout.as_nanos() as u64;
    let mut limited_by_outstanding = 0u64;
    loop {
        let now = load.now_ns();
        load.expire(timeout_ns);
        if now >= w1 && (load.outstanding == 0 || now >= w1 + timeout_ns) {
            break;
        }
        let mut next_send_in = 1_000_000u64;
        if now < w1 {
            match mode {
                Mode::Closed(n) => {
                    while load.outstanding < n {
                        let want = n - load.outstanding;
                        if load.send(want, (w0, w1)) == 0 {
                            break;
                        }
                    }
                }
                Mode::Paced(rate) => {
                    let due = (now as f64 * rate / 1e9) as u64;
                    while load.sent_total < due {
                        let room = MAX_OUTSTANDING.saturating_sub(load.outstanding);
                        let want = ((due - load.sent_total) as usize).min(room);
                        if want == 0 {
                            limited_by_outstanding += 1;
                            break;
                        }
                        if load.send(want, (w0, w1)) == 0 {
                            break;
                        }
                    }
                    let next_due = ((load.sent_total + 1) as f64 * 1e9 / rate) as u64;
                    next_send_in = next_due.saturating_sub(load.now_ns());
                }
            }
        }
        if load.receive() == 0 && next_send_in > 0 {
            load.wait(next_send_in.min(1_000_000));
        }
    }
    // What is still outstanding now was lost.
    for i in 0..load.slots.len() {
        if load.slots[i] != 0 && load.in_window[i] {
            load.lost_window += 1;
        }
    }
    let mut us: Vec<f64> = load
        .latencies_ns
        .iter()
        .map(|&ns| f64::from(ns) / 1e3)
        .collect();
    us.sort_by(f64::total_cmp);
    let secs_f = secs.as_secs_f64();
    const NAMES: [&str; 16] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
        "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
    ];
    let rcodes: serde_json::Map<String, Value> = load
        .rcodes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (NAMES[i].to_string(), json!(n)))
        .collect();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(json!({
        "mode": match mode { Mode::Closed(_) => "closed", Mode::Paced(_) => "paced" },
        "outstanding": match mode { Mode::Closed(n) => json!(n), Mode::Paced(_) => Value::Null },
        "target_qps": match mode { Mode::Paced(r) => json!(r), Mode::Closed(_) => Value::Null },
        "secs": secs_f,
        "sent": load.sent_window,
        "received": load.received_window,
        "lost": load.lost_window,
        "qps": round(load.received_window as f64 / secs_f),
        "offered_qps": round(load.sent_window as f64 / secs_f),
        "p50_us": round(percentile(&us, 50.0)),
        "p90_us": round(percentile(&us, 90.0)),
        "p99_us": round(percentile(&us, 99.0)),
        "p999_us": round(percentile(&us, 99.9)),
        "max_us": round(us.last().copied().unwrap_or(f64::NAN)),
        "mean_us": round(us.iter().sum::<f64>() / us.len().max(1) as f64),
        "rcodes": rcodes,
        "empty_answers": load.empty_answers,
        "unexpected_replies": load.unexpected,
        "send_capped_by_outstanding": limited_by_outstanding,
        "replies_without_kernel_timestamp": load.no_timestamp,
        "latency_clock": "send: CLOCK_REALTIME before sendmmsg; reply: kernel receive timestamp (SO_TIMESTAMPNS)",
        "timeline_100ms": load.timeline.iter().map(|(b, (n, max, over))| {
            json!({"t_ms": b * 100, "replies": n, "max_us": round(*max as f64 / 1e3), "over_2ms": over})
        }).collect::<Vec<_>>(),
    }))
}
