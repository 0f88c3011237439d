//! Underlay UDP sockets against the real kernel, on loopback inside a fresh namespace (root
//! only, so port 4789 is free and nothing leaves the namespace).

#[allow(dead_code)]
mod io_common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use io_common::{anon_ns, deadline, is_root, wait_readable};
use vxnet_dataplane::io::{MsgBatch, RecvMeta, SendPool, VxlanSocket, bind_vxlan_rx};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const VXLAN: SocketAddr = SocketAddr::new(LO, 4789);

/// Receives until `want` datagrams (GRO-coalesced buffers split by stride) or 5 s pass; returns
/// every datagram with its sender.
fn drain(rx: &VxlanSocket, want: usize, buf_size: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    rx.set_nonblocking(true).expect("nonblocking");
    let mut batch = MsgBatch::new(64);
    let mut bufs = vec![vec![0u8; buf_size]; 64];
    let mut metas = [RecvMeta::default(); 64];
    let mut out = Vec::new();
    let end = deadline(5);
    while out.len() < want && wait_readable(rx, end) {
        let n = match rx.recv_batch(&mut batch, &mut bufs, &mut metas) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv_batch: {e}"),
        };
        for (buf, meta) in bufs.iter().zip(&metas[..n]) {
            assert!(!meta.truncated, "{meta:?}");
            for seg in buf[..meta.len].chunks(meta.stride.max(1)) {
                out.push((meta.src, seg.to_vec()));
            }
        }
    }
    out
}

#[test]
fn send_pool_has_distinct_source_ports() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    ns.run(|| {
        let pool = SendPool::new(LO, 8).expect("pool");
        let ports = pool.src_ports();
        assert_eq!(ports.len(), 8);
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 8, "{ports:?}");
        assert!(ports.iter().all(|&p| p != 0));
        for hash in [0u64, 1, 7, 8, 12345, u64::MAX] {
            let s = pool.socket_for(hash);
            assert_eq!(s.local_addr().port(), ports[(hash % 8) as usize]);
            assert_eq!(
                pool.socket_for(hash).local_addr(),
                s.local_addr(),
                "stable per flow"
            );
        }
        assert!(
            pool.sockets().iter().all(|s| s.sndbuf_bytes() >= 4 << 20),
            "SO_SNDBUFFORCE"
        );
        assert!(SendPool::new(LO, 0).is_err());
    })
    .expect("enter namespace");
}

#[test]
fn batches_move_1000_datagrams() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    ns.run(|| {
        let rx = bind_vxlan_rx(VXLAN, false, 8 << 20).expect("bind rx");
        assert!(rx.rcvbuf_bytes() >= 8 << 20, "rcvbuf {}", rx.rcvbuf_bytes());
        let pool = SendPool::new(LO, 4).expect("pool");
        let payloads: Vec<Vec<u8>> = (0u32..1000)
            .map(|i| {
                let mut p = i.to_be_bytes().to_vec();
                p.resize(100 + (i as usize % 50), 0xab);
                p
            })
            .collect();
        let tx = pool.socket_for(3);
        let msgs: Vec<(SocketAddr, &[u8])> =
            payloads.iter().map(|p| (VXLAN, p.as_slice())).collect();
        let mut batch = MsgBatch::new(64);
        let mut sent = 0;
        while sent < msgs.len() {
            sent += tx
                .send_batch(&mut batch, &msgs[sent..])
                .expect("send_batch");
        }
        let got = drain(&rx, 1000, 2048);
        assert_eq!(got.len(), 1000);
        assert!(
            got.iter().all(|(src, _)| *src == tx.local_addr()),
            "source = pool socket"
        );
        let mut seen: Vec<u32> = got
            .iter()
            .map(|(_, p)| u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
            .collect();
        for (_, p) in &got {
            let i = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            assert_eq!(p, &payloads[i], "datagram {i} intact");
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    })
    .expect("enter namespace");
}

#[test]
fn burst_of_10k_fits_the_receive_buffer() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    ns.run(|| {
        let rx = bind_vxlan_rx(VXLAN, false, 32 << 20).expect("bind rx");
        let pool = SendPool::new(LO, 1).expect("pool");
        let payload = [0x5au8; 64];
        let msgs = vec![(VXLAN, &payload[..]); 10_000];
        let mut batch = MsgBatch::new(256);
        let mut sent = 0;
        while sent < msgs.len() {
            sent += pool
                .socket_for(0)
                .send_batch(&mut batch, &msgs[sent..])
                .expect("send_batch");
        }
        // Nothing was read while sending: all 10k had to wait in the receive buffer.
        assert_eq!(drain(&rx, 10_000, 2048).len(), 10_000);
    })
    .expect("enter namespace");
}

#[test]
fn reuse_port_allows_one_socket_per_thread() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    ns.run(|| {
        let a = bind_vxlan_rx(VXLAN, true, 0).expect("first");
        let b = bind_vxlan_rx(VXLAN, true, 0).expect("second with SO_REUSEPORT");
        assert_eq!(a.local_addr(), b.local_addr());
        let c = bind_vxlan_rx(SocketAddr::new(LO, 4790), false, 0).expect("plain");
        assert!(
            bind_vxlan_rx(c.local_addr(), false, 0).is_err(),
            "EADDRINUSE without reuse_port"
        );
    })
    .expect("enter namespace");
}

#[test]
fn gso_send_and_gro_receive() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    ns.run(|| {
        let rx = bind_vxlan_rx(VXLAN, false, 8 << 20).expect("bind rx");
        let pool = SendPool::new(LO, 1).expect("pool");
        let tx = pool.socket_for(0);
        println!(
            "UDP_GRO on rx: {}, UDP_SEGMENT on tx: {}",
            rx.gro_enabled(),
            tx.gso_enabled()
        );
        // 100 segments of 1400 bytes + a short tail: two GSO sends (64 per send at most).
        let seg = 1400;
        let mut buf = Vec::new();
        for i in 0u8..100 {
            buf.extend(std::iter::repeat_n(i, seg));
        }
        buf.extend_from_slice(&[0xee; 300]);
        assert_eq!(tx.send_gso(VXLAN, &buf, seg).expect("send_gso"), buf.len());
        // A payload of one segment or less goes out as a plain datagram.
        assert_eq!(tx.send_gso(VXLAN, &[0xdd; 10], seg).expect("small"), 10);

        rx.set_nonblocking(true).expect("nonblocking");
        let mut batch = MsgBatch::new(8);
        let mut bufs = vec![vec![0u8; 65536]; 8];
        let mut metas = [RecvMeta::default(); 8];
        let mut datagrams = Vec::new();
        let mut coalesced = false;
        let end = deadline(5);
        while datagrams.len() < 102 && wait_readable(&rx, end) {
            let n = rx
                .recv_batch(&mut batch, &mut bufs, &mut metas)
                .expect("recv_batch");
            for (b, m) in bufs.iter().zip(&metas[..n]) {
                coalesced |= m.len > m.stride;
                datagrams.extend(b[..m.len].chunks(m.stride).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(datagrams.len(), 102, "100 + tail + small");
        for (i, d) in datagrams[..100].iter().enumerate() {
            assert_eq!(d.len(), seg);
            assert!(
                d.iter().all(|&b| b == i as u8),
                "segment {i} in order and intact"
            );
        }
        assert_eq!(datagrams[100], vec![0xee; 300]);
        assert_eq!(datagrams[101], vec![0xdd; 10]);
        if rx.gro_enabled() && tx.gso_enabled() {
            assert!(coalesced, "GSO sends reach a GRO socket coalesced");
        }

        // Each datagram gathered from two pieces (headers kept apart, payload where it was
        // read), as the offload path sends a segmented super-frame: whole datagrams, in order.
        // 70 datagrams (two GSO sends): a 20-byte head + 1380 bytes of payload, the last 500.
        let (head_len, mss, count) = (20, 1380, 70);
        let heads: Vec<[u8; 20]> = (0..count).map(|i| [i as u8; 20]).collect();
        let payload: Vec<u8> = (0..(count - 1) * mss + 500)
            .map(|i| (i % 251) as u8)
            .collect();
        let part = |i: usize| {
            let from = i * mss;
            [
                &heads[i][..],
                &payload[from..(from + mss).min(payload.len())],
            ]
        };
        let sent = tx
            .send_gso_parts(VXLAN, count, head_len + mss, part)
            .expect("send_gso_parts");
        assert_eq!(sent, count);
        let got = drain(&rx, count, 65536);
        assert_eq!(got.len(), count);
        for (i, (_, d)) in got.iter().enumerate() {
            assert_eq!(d, &part(i).concat(), "datagram {i} whole and in order");
        }
    })
    .expect("enter namespace");
}

#[test]
fn ipv6_underlay() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    ns.run(|| {
        let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 4789);
        let Ok(rx) = bind_vxlan_rx(addr, false, 1 << 20) else {
            println!("skipped: no IPv6 loopback");
            return;
        };
        let pool = SendPool::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 2).expect("pool");
        let tx = pool.socket_for(1);
        let mut batch = MsgBatch::new(4);
        let msgs = [(addr, &b"one"[..]), (addr, &b"two"[..])];
        assert_eq!(tx.send_batch(&mut batch, &msgs).expect("send"), 2);
        let got = drain(&rx, 2, 1500);
        assert_eq!(
            got,
            vec![
                (tx.local_addr(), b"one".to_vec()),
                (tx.local_addr(), b"two".to_vec())
            ]
        );
    })
    .expect("enter namespace");
}
