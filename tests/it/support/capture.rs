//! Capturing and reading underlay traffic in the netns tests: tcpdump into a pcap, a tiny pcap
//! reader, VXLAN decapsulation with our own wire views, and `vxnet stats` counters.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use vxnet_dataplane::wire::{
    EtherType, EthernetFrame, Ipv4Packet, UdpPacket, VxlanPacket, ip_protocol,
};

use super::Agent;

/// A running `tcpdump -w` inside a namespace; stopped (SIGINT) by [`Capture::stop`] or on drop.
pub struct Capture {
    child: Option<Child>,
    stderr: Option<BufReader<ChildStderr>>,
    path: PathBuf,
}

impl Capture {
    /// Starts capturing on `iface` in `ns` into `path`; returns once tcpdump is listening.
    pub fn start(ns: &str, iface: &str, filter: &str, path: &Path) -> Capture {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-Z", "root",
            ])
            // Immediate mode: no packet waits in a ring block that SIGINT would discard;
            // a 32 MiB ring so that bursts are not dropped.
            .args(["--immediate-mode", "-B", "32768", "-s", "0", "-w"])
            .arg(path)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let mut stderr = BufReader::new(child.stderr.take().expect("tcpdump stderr"));
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !line.contains("listening on") {
            line.clear();
            let n = stderr.read_line(&mut line).expect("read tcpdump stderr");
            assert!(
                n > 0 && Instant::now() < deadline,
                "tcpdump did not start: {line}"
            );
        }
        Capture {
            child: Some(child),
            stderr: Some(stderr),
            path: path.to_path_buf(),
        }
    }

    /// Stops tcpdump and returns the captured frames and its "dropped by kernel" count.
    pub fn stop(mut self) -> (Vec<Vec<u8>>, u64) {
        // Let the last packets reach the capture buffer.
        std::thread::sleep(Duration::from_millis(300));
        let mut child = self.child.take().expect("running capture");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let status = child.wait().expect("wait tcpdump");
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        assert!(
            status.success() || status.code() == Some(130) || status.code().is_none(),
            "tcpdump failed: {status} {text}"
        );
        let dropped = text
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (read_pcap(&self.path), dropped)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads a classic pcap file (either byte order, µs or ns timestamps) of Ethernet frames.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).expect("read pcap");
    assert!(data.len() >= 24, "pcap too short: {} bytes", data.len());
    let magic = [data[0], data[1], data[2], data[3]];
    let big_endian = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
        other => panic!("not a pcap file: magic {other:02x?}"),
    };
    let u32_at = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "link type must be Ethernet");
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32_at(at + 8) as usize;
        let orig = u32_at(at + 12) as usize;
        let start = at + 16;
        assert!(start + incl <= data.len(), "truncated pcap record");
        assert_eq!(incl, orig, "frame captured in full");
        frames.push(data[start..start + incl].to_vec());
        at = start + incl;
    }
    frames
}

/// One counter of `vxnet stats`.
pub fn counter(agent: &Agent, name: &str) -> u64 {
    agent
        .stats()
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// One VXLAN datagram seen on the underlay, parsed with the wire views.
pub struct Encap {
    /// The VNI.
    pub vni: u32,
    /// The inner Ethernet frame.
    pub inner: EthernetFrame<Vec<u8>>,
}

/// Outer Ethernet/IPv4/UDP to port 4789/VXLAN with the I flag, or `None`.
pub fn decap(frame: &[u8]) -> Option<Encap> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EtherType::IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != ip_protocol::UDP {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.dst_port() != 4789 {
        return None;
    }
    let vxlan = VxlanPacket::new_checked(udp.payload()).ok()?;
    assert!(vxlan.has_vni_flag(), "VXLAN I flag");
    Some(Encap {
        vni: vxlan.vni(),
        inner: EthernetFrame::new_checked(vxlan.payload().to_vec()).ok()?,
    })
}

/// "0800:12 86dd:3": inner ethertypes (hex) and their counts.
pub fn ethertypes<N: std::fmt::Display>(map: &std::collections::BTreeMap<u16, N>) -> String {
    map.iter()
        .map(|(t, n)| format!("{t:04x}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
