//! The programs this binary runs inside the container namespaces (hidden subcommands): a
//! `sendmmsg` UDP blaster and a `recvmmsg` sink, and a TCP_RR server and client.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use vxnet_testkit::stats::percentile;

use crate::sock::{recv_batch, set_int_opt};

/// Datagrams per sendmmsg/recvmmsg call.
const BATCH: usize = 64;

/// Hidden subcommands; each prints its result on stdout (servers print `ready` first).
#[derive(Subcommand, Debug)]
pub enum Probe {
    /// Sends UDP datagrams to DST for SECS; prints `sent elapsed_s sent_in_window window_s`.
    #[command(name = "__udp-blast", hide = true)]
    UdpBlast {
        dst: SocketAddrV4,
        secs: f64,
        threads: usize,
        payload: usize,
        /// Sends are also counted over [FROM, FROM + LEN) s, to line up with the sink's window.
        from: Option<f64>,
        len: Option<f64>,
    },
    /// Counts datagrams on PORT over WINDOW s starting WARMUP s after the first; prints
    /// `received window_s`.
    #[command(name = "__udp-sink", hide = true)]
    UdpSink {
        port: u16,
        warmup: f64,
        window: f64,
        threads: usize,
    },
    /// Echoes 1-byte requests on one TCP connection.
    #[command(name = "__rr-server", hide = true)]
    RrServer { port: u16 },
    /// Times round trips to an `__rr-server`; prints `count elapsed_s p50_us p99_us min_us`.
    #[command(name = "__rr-client", hide = true)]
    RrClient { dst: SocketAddrV4, secs: f64 },
}

impl Probe {
    pub fn run(self) -> Result<()> {
        match self {
            Probe::UdpBlast {
                dst,
                secs,
                threads,
                payload,
                from,
                len,
            } => udp_blast(
                dst,
                secs,
                threads,
                payload,
                from.unwrap_or(0.0),
                len.unwrap_or(secs),
            ),
            Probe::UdpSink {
                port,
                warmup,
                window,
                threads,
            } => udp_sink(
                port,
                Duration::from_secs_f64(warmup),
                Duration::from_secs_f64(window),
                threads,
            ),
            Probe::RrServer { port } => rr_server(port),
            Probe::RrClient { dst, secs } => rr_client(dst, secs),
        }
    }
}

/// An all-zero mmsghdr per datagram of a batch, to be pointed at buffers.
fn mmsghdrs() -> Vec<libc::mmsghdr> {
    // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
    (0..BATCH)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect()
}

fn udp_blast(
    dst: SocketAddrV4,
    secs: f64,
    threads: usize,
    payload: usize,
    from: f64,
    len: f64,
) -> Result<()> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let (w0, w1) = (
        start + Duration::from_secs_f64(from),
        start + Duration::from_secs_f64(from + len),
    );
    let total = Arc::new(AtomicU64::new(0));
    let in_window = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (total, in_window) = (total.clone(), in_window.clone());
            std::thread::spawn(move || -> Result<()> {
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                sock.connect(dst)?;
                let fd = sock.as_raw_fd();
                set_buf(fd, libc::SO_SNDBUF, 4 << 20);
                let buf = vec![0x5au8; payload];
                let mut iov = libc::iovec {
                    iov_base: buf.as_ptr().cast_mut().cast(),
                    iov_len: buf.len(),
                };
                let mut msgs = mmsghdrs();
                for m in &mut msgs {
                    m.msg_hdr.msg_iov = &raw mut iov;
                    m.msg_hdr.msg_iovlen = 1;
                }
                let (mut sent, mut windowed) = (0u64, 0u64);
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    let counting = now >= w0 && now < w1;
                    for _ in 0..16 {
                        // SAFETY: msgs holds BATCH initialised headers whose iovec points at
                        // `buf`, all alive for the call; the socket is connected.
                        let n = unsafe {
                            libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0)
                        };
                        if n > 0 {
                            sent += n as u64;
                            if counting {
                                windowed += n as u64;
                            }
                        }
                    }
                }
                total.fetch_add(sent, Ordering::Relaxed);
                in_window.fetch_add(windowed, Ordering::Relaxed);
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow!("blaster thread panicked"))??;
    }
    println!(
        "{} {} {} {len}",
        total.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        in_window.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Sets a socket buffer size, and the FORCE variant that may exceed rmem_max/wmem_max (root).
fn set_buf(fd: libc::c_int, opt: libc::c_int, bytes: libc::c_int) {
    for o in [
        opt,
        if opt == libc::SO_SNDBUF {
            libc::SO_SNDBUFFORCE
        } else {
            libc::SO_RCVBUFFORCE
        },
    ] {
        set_int_opt(fd, o, bytes);
    }
}

fn reuseport_socket(port: u16) -> Result<UdpSocket> {
    // SAFETY: socket(2) has no memory preconditions; the fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    set_int_opt(fd, libc::SO_REUSEPORT, 1);
    // SAFETY: sockaddr_in is plain data; zeroed is valid, then filled in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    // SAFETY: bind reads a live, correctly sized sockaddr_in.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("bind :{port}: {}", std::io::Error::last_os_error());
    }
    set_buf(fd, libc::SO_RCVBUF, 8 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(sock)
}

/// Counts packets in a `window` that starts `warmup` after the first packet arrives.
fn udp_sink(port: u16, warmup: Duration, window: Duration, threads: usize) -> Result<()> {
    let sockets = (0..threads.max(1))
        .map(|_| reuseport_socket(port))
        .collect::<Result<Vec<_>>>()?;
    println!("ready");
    let give_up = Instant::now() + Duration::from_secs(30);
    let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let total = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|sock| {
            let (first, total) = (first.clone(), total.clone());
            std::thread::spawn(move || {
                let fd = sock.as_raw_fd();
                let mut bufs = vec![[0u8; 2048]; BATCH];
                let mut iovs: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    })
                    .collect();
                let mut msgs = mmsghdrs();
                for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                }
                let mut count = 0u64;
                loop {
                    // SAFETY: msgs holds BATCH headers whose iovecs point into `bufs`, all
                    // alive and exclusively ours for the call.
                    let n = unsafe { recv_batch(fd, &mut msgs, libc::MSG_WAITFORONE) };
                    let now = Instant::now();
                    if n > 0 {
                        let start = *first.get_or_init(|| now) + warmup;
                        if now >= start && now < start + window {
                            count += n as u64;
                        }
                    }
                    match first.get() {
                        Some(&f) if now >= f + warmup + window => break,
                        None if now >= give_up => break,
                        _ => {}
                    }
                }
                total.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    println!("{} {}", total.load(Ordering::Relaxed), window.as_secs_f64());
    Ok(())
}

/// Echoes 1-byte requests on one TCP connection until the client closes it.
fn rr_server(port: u16) -> Result<()> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    println!("ready");
    let (mut conn, _) = listener.accept()?;
    conn.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte)? {
            0 => return Ok(()),
            _ => conn.write_all(&byte)?,
        }
    }
}

/// Times 1-byte request/response round trips for `secs` after a short warm-up; prints
/// `count elapsed_s p50_us p99_us min_us`.
fn rr_client(dst: SocketAddrV4, secs: f64) -> Result<()> {
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        match std::net::TcpStream::connect(dst) {
            Ok(c) => break c,
            Err(e) if Instant::now() > give_up => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut byte = [0u8; 1];
    let mut round_trip = |conn: &mut std::net::TcpStream| -> Result<Duration> {
        let t0 = Instant::now();
        conn.write_all(&byte)?;
        conn.read_exact(&mut byte)?;
        Ok(t0.elapsed())
    };
    let warm_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm_until {
        round_trip(&mut conn)?;
    }
    let mut us: Vec<f64> = Vec::with_capacity(200_000);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        us.push(round_trip(&mut conn)?.as_secs_f64() * 1e6);
    }
    let elapsed = start.elapsed().as_secs_f64();
    us.sort_by(f64::total_cmp);
    println!(
        "{} {elapsed} {} {} {}",
        us.len(),
        percentile(&us, 50.0),
        percentile(&us, 99.0),
        us.first().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
