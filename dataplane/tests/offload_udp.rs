//! The UDP side of the offload path against the real kernel (root only, in a fresh namespace):
//! a GSO send whose segments exceed the route's MTU is refused by the kernel (`EMSGSIZE`: GSO
//! segments are never fragmented), and `send_gso` then falls back to one datagram per segment,
//! which IP fragments like a plain send, so nothing is lost and GSO stays on.

#[allow(dead_code)]
mod io_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

use io_common::{anon_ns, deadline, is_root, wait_readable};
use vxnet_dataplane::io::{MsgBatch, RecvMeta, SendPool, bind_vxlan_rx};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const VXLAN: SocketAddr = SocketAddr::new(LO, 4789);

#[test]
fn gso_larger_than_mtu_falls_back_to_fragmented_datagrams() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    ns.run(|| {
        // The child inherits this thread's namespace.
        let status = Command::new("ip")
            .args(["link", "set", "dev", "lo", "mtu", "1500"])
            .status()
            .expect("ip link");
        assert!(status.success());
        let rx = bind_vxlan_rx(VXLAN, false, 8 << 20).expect("bind rx");
        let pool = SendPool::new(LO, 1).expect("pool");
        let tx = pool.socket_for(0);
        // 5 segments of 2000 bytes (+28 > 1500) and a short tail.
        let seg = 2000;
        let mut buf = Vec::new();
        for i in 0u8..5 {
            buf.extend(std::iter::repeat_n(i, seg));
        }
        buf.extend_from_slice(&[0xee; 300]);
        assert_eq!(tx.send_gso(VXLAN, &buf, seg).expect("send_gso"), buf.len());
        assert!(tx.gso_enabled(), "GSO stays on: only this size did not fit");

        rx.set_nonblocking(true).expect("nonblocking");
        let mut batch = MsgBatch::new(8);
        let mut bufs = vec![vec![0u8; 65536]; 8];
        let mut metas = [RecvMeta::default(); 8];
        let mut got = Vec::new();
        let end = deadline(5);
        while got.len() < 6 && wait_readable(&rx, end) {
            let n = rx
                .recv_batch(&mut batch, &mut bufs, &mut metas)
                .expect("recv_batch");
            for (b, m) in bufs.iter().zip(&metas[..n]) {
                for d in b[..m.len].chunks(m.stride.max(1)) {
                    got.push(d.to_vec());
                }
            }
        }
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2000, 2000, 2000, 2000, 2000, 300]);
        for (i, d) in got.iter().take(5).enumerate() {
            assert!(d.iter().all(|&b| b == i as u8), "datagram {i} intact");
        }
    })
    .expect("enter namespace");
}
