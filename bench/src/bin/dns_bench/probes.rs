//! The programs this binary runs inside the containers (hidden subcommands): the load
//! generator (see `generator`) and the control's minimal responder.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Subcommand;

use crate::generator::{BATCH, Mode, dns_load};
use crate::sock::{recv_batch, set_int_opt};

/// The hidden subcommand run inside the load container.
#[derive(Subcommand, Debug)]
pub enum Probe {
    /// A UDP DNS load generator: A queries for NAMES (comma-separated) to SERVER:53, either
    /// `--outstanding N` at all times (closed loop) or `--rate R` per second (paced). Queries sent
    /// during SECS after a warm-up are timed; prints one line of JSON.
    #[command(name = "__dns-load", hide = true)]
    DnsLoad {
        server: Ipv4Addr,
        names: String,
        secs: f64,
        #[arg(long)]
        outstanding: Option<usize>,
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Port of SERVER
        #[arg(long, default_value_t = 53)]
        port: u16,
    },
    /// The control: a minimal responder on PORT (every datagram of 12 bytes or more comes back
    /// with QR set, NOERROR, no records; recvmmsg/sendmmsg, one thread). Prints `ready`.
    #[command(name = "__dns-echo", hide = true)]
    DnsEcho { port: u16 },
}

impl Probe {
    pub fn run(self) -> Result<()> {
        match self {
            Probe::DnsLoad {
                server,
                names,
                secs,
                outstanding,
                rate,
                warmup,
                timeout_ms,
                port,
            } => {
                let mode = match (outstanding, rate) {
                    (Some(n), None) => Ok(Mode::Closed(n.clamp(1, 60_000))),
                    (None, Some(r)) if r > 0.0 => Ok(Mode::Paced(r)),
                    _ => Err(anyhow!(
                        "__dns-load: give one of --outstanding N or --rate R"
                    )),
                };
                mode.and_then(|mode| {
                    let names: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
                    let report = dns_load(
                        (server, port),
                        &names,
                        mode,
                        Duration::from_secs_f64(warmup),
                        Duration::from_secs_f64(secs),
                        Duration::from_millis(timeout_ms),
                    )?;
                    println!("{report}");
                    Ok(())
                })
            }
            Probe::DnsEcho { port } => dns_echo(port),
        }
    }
}

/// The control responder (see [`Probe::DnsEcho`]); runs until killed.
fn dns_echo(port: u16) -> Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
    let fd = sock.as_raw_fd();
    set_int_opt(fd, libc::SO_RCVBUFFORCE, 1 << 20);
    println!("ready");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    loop {
        // SAFETY: iovec is plain data; all-zero is a valid (empty) value.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for j in 0..BATCH {
            iovs[j] = libc::iovec {
                iov_base: bufs[j].as_mut_ptr().cast(),
                iov_len: bufs[j].len(),
            };
            msgs[j].msg_hdr.msg_iov = &raw mut iovs[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
            msgs[j].msg_hdr.msg_name = (&raw mut addrs[j]).cast();
            msgs[j].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as _;
        }
        // SAFETY: the headers point at live iovecs, buffers and address slots for the call;
        // MSG_WAITFORONE: blocks for the first datagram only.
        let n = unsafe { recv_batch(fd, &mut msgs, libc::MSG_WAITFORONE) };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        let mut out = 0;
        for j in 0..n {
            let len = msgs[j].msg_len as usize;
            if len < 12 {
                continue;
            }
            bufs[j][2] |= 0x80;
            bufs[j][3] = 0x80;
            iovs[j].iov_len = len;
            if out != j {
                msgs.swap(out, j);
            }
            out += 1;
        }
        if out > 0 {
            // SAFETY: the first `out` headers point at live buffers and the sources' addresses.
            unsafe {
                libc::sendmmsg(fd, msgs.as_mut_ptr(), out as libc::c_uint, 0);
            }
        }
    }
}
