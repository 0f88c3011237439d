//! The three computations of the steering hash agree on arbitrary frames: userspace's
//! [`steer::bucket`], the reuseport group's classic BPF program (run by the small interpreter
//! below, which follows the kernel's `bpf_run_filter` semantics for the opcodes the program
//! uses, out-of-bounds loads returning 0), and the TAP's eBPF program run by the kernel itself
//! (`BPF_PROG_TEST_RUN`, as root).

#[allow(dead_code)]
mod io_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use vxnet_dataplane::io::steering::{BpfProgram, attach_reuseport_program};
use vxnet_dataplane::io::{MsgBatch, RecvMeta, bind_vxlan_rx};
use vxnet_dataplane::steer::{self, SockFilter};

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)] // the wire and offload bodies are the other tests'
mod touch;

/// Runs a classic BPF program over `data` as the kernel would. The opcodes are Linux's
/// (`BPF_LD|BPF_H|BPF_ABS` = 0x28, …), written out rather than taken from the code under test.
fn run_cbpf(program: &[SockFilter], data: &[u8]) -> u32 {
    let load = |at: u64, len: usize| -> Option<u32> {
        let start = usize::try_from(at).ok()?;
        let bytes = data.get(start..start.checked_add(len)?)?;
        Some(bytes.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)))
    };
    let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0;
    loop {
        let SockFilter { code, jt, jf, k } = program[pc];
        pc += 1;
        match code {
            0x28 | 0x30 | 0x20 => {
                let len = match code {
                    0x28 => 2,
                    0x30 => 1,
                    _ => 4,
                };
                match load(u64::from(k), len) {
                    Some(v) => a = v,
                    None => return 0,
                }
            }
            0x48 => match load(u64::from(x) + u64::from(k), 2) {
                Some(v) => a = v,
                None => return 0,
            },
            0xb1 => match load(u64::from(k), 1) {
                Some(v) => x = (v & 0xf) * 4,
                None => return 0,
            },
            0x60 => a = mem[k as usize],
            0x61 => x = mem[k as usize],
            0x02 => mem[k as usize] = a,
            0xac => a ^= x,
            0x24 => a = a.wrapping_mul(k),
            0x74 => a >>= k,
            0x54 => a &= k,
            0x94 => a %= k,
            0x07 => x = a,
            0x87 => a = x,
            0x05 => pc += k as usize,
            0x15 => pc += usize::from(if a == k { jt } else { jf }),
            0x45 => pc += usize::from(if a & k != 0 { jt } else { jf }),
            0x16 => return a,
            0x06 => return k,
            other => panic!("opcode {other:#x} not interpreted"),
        }
    }
}

/// Frames around the interesting cases: IPv4, IPv6 or neither, TCP/UDP/other, first or later
/// fragments, any IPv4 header length, cut anywhere.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => ipv4_frames(), 2 => ipv6_frames()]
}

fn ipv4_frames() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![4 => Just(0x0800u16), 1 => any::<u16>()],
        prop_oneof![2 => Just(6u8), 2 => Just(17u8), 1 => any::<u8>()],
        prop_oneof![3 => Just(0u16), 1 => any::<u16>()],
        prop_oneof![3 => Just(5u8), 1 => 0u8..16],
        proptest::collection::vec(any::<u8>(), 80),
        0usize..100,
    )
        .prop_map(|(ethertype, proto, frag, ihl, mut bytes, cut)| {
            bytes[12..14].copy_from_slice(&ethertype.to_be_bytes());
            bytes[14] = 0x40 | ihl;
            bytes[20..22].copy_from_slice(&frag.to_be_bytes());
            bytes[23] = proto;
            bytes.truncate(cut.min(bytes.len()));
            bytes
        })
}

/// IPv6 frames: TCP, UDP, a fragment header or anything as the next header, cut anywhere.
fn ipv6_frames() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![4 => Just(0x86ddu16), 1 => any::<u16>()],
        prop_oneof![2 => Just(6u8), 2 => Just(17u8), 1 => Just(44u8), 1 => any::<u8>()],
        proptest::collection::vec(any::<u8>(), 80),
        0usize..100,
    )
        .prop_map(|(ethertype, next, mut bytes, cut)| {
            bytes[12..14].copy_from_slice(&ethertype.to_be_bytes());
            bytes[14] = 0x60 | (bytes[14] & 0xf);
            bytes[20] = next;
            bytes.truncate(cut.min(bytes.len()));
            bytes
        })
}

proptest! {
    #[test]
    fn reuseport_program_picks_the_buckets_worker(frame in frames(), workers in 1u32..9) {
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
        payload.extend_from_slice(&frame);
        let chosen = run_cbpf(&steer::reuseport_program(workers), &payload);
        prop_assert_eq!(chosen as usize, steer::worker_of(steer::bucket(&frame), workers as usize));
    }
}

proptest! {
    #[test]
    fn the_fuzz_body_holds(frame in frames()) {
        touch::steer_bucket(&frame);
    }

    #[test]
    fn the_fuzz_body_holds_on_noise(data in proptest::collection::vec(any::<u8>(), 0..120)) {
        touch::steer_bucket(&data);
    }
}

use io_common::is_root;

/// The kernel runs the reuseport group's classic program: 3 sockets on port 4789 in a fresh
/// namespace, 300 VXLAN datagrams with arbitrary inner frames sent to the group, each received
/// by the socket of its frame's worker.
#[test]
fn kernel_steers_vxlan_datagrams_to_the_buckets_socket() {
    if !is_root() {
        eprintln!(
            "skipped: kernel_steers_vxlan_datagrams_to_the_buckets_socket needs root (a namespace)"
        );
        return;
    }
    const SOCKETS: usize = 3;
    io_common::anon_ns()
        .run(|| {
            let group = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4789);
            let sockets: Vec<_> = (0..SOCKETS)
                .map(|_| bind_vxlan_rx(group, true, 0).expect("bind the group"))
                .collect();
            attach_reuseport_program(&sockets[0], &steer::reuseport_program(SOCKETS as u32))
                .expect("attach the classic program");
            let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("sender");
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let mut sent = Vec::new();
            for i in 0..300u16 {
                let frame = frames().new_tree(&mut runner).unwrap().current();
                // The VXLAN header's reserved bytes carry the datagram's number.
                let mut payload =
                    vec![0x08, 0, i.to_be_bytes()[0], i.to_be_bytes()[1], 0, 0, 42, 0];
                payload.extend_from_slice(&frame);
                sender.send_to(&payload, group).expect("send");
                sent.push(steer::worker_of(steer::bucket(&frame), SOCKETS));
            }
            let mut received = vec![None; sent.len()];
            let end = io_common::deadline(5);
            let mut batch = MsgBatch::new(32);
            let mut bufs = vec![vec![0u8; 65_536]; 32];
            let mut metas = [RecvMeta::default(); 32];
            while received.iter().any(Option::is_none) && std::time::Instant::now() < end {
                for (index, socket) in sockets.iter().enumerate() {
                    socket.set_nonblocking(true).unwrap();
                    while let Ok(n) = socket.recv_batch(&mut batch, &mut bufs, &mut metas) {
                        for (buf, meta) in bufs.iter().zip(&metas[..n]) {
                            for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                                let i = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
                                received[i] = Some(index);
                            }
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let mut per_socket = [0usize; SOCKETS];
            for (i, (want, got)) in sent.iter().zip(&received).enumerate() {
                assert_eq!(*got, Some(*want), "datagram {i}");
                per_socket[*want] += 1;
            }
            eprintln!("kernel reuseport steering: datagrams per socket {per_socket:?}");
            assert!(per_socket.iter().all(|&n| n > 0), "{per_socket:?}");
        })
        .expect("a fresh namespace");
}

/// The kernel runs the TAP's program (and its VXLAN-offset twin) on 2,000 arbitrary frames:
/// every result is userspace's worker.
#[test]
fn kernel_runs_the_tap_program_to_the_same_worker() {
    if !is_root() {
        eprintln!("skipped: kernel_runs_the_tap_program_to_the_same_worker needs root (bpf(2))");
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for workers in [1u32, 2, 3, 4, 7] {
        let tap = BpfProgram::load_socket_filter(&steer::tap_program(workers))
            .expect("the verifier accepts the TAP program");
        let vxlan =
            BpfProgram::load_socket_filter(&steer::ebpf_program(steer::VXLAN_HEADER, workers))
                .expect("the verifier accepts the program at a VXLAN offset");
        for _ in 0..400 {
            let frame = frames().new_tree(&mut runner).unwrap().current();
            let want = steer::worker_of(steer::bucket(&frame), workers as usize) as u32;
            // The kernel strips a 14-byte link header before a socket filter's test run (and
            // checks the IP header behind an IP ethertype: a made-up one keeps every frame).
            let mut packet = vec![0u8; 12];
            packet.extend_from_slice(&[0x88, 0xb5]);
            packet.extend_from_slice(&frame);
            let got = tap
                .test_run(&packet)
                .unwrap_or_else(|e| panic!("test run of {} bytes: {e}", packet.len()));
            assert_eq!(got, want, "TAP program, {workers} queues, {frame:02x?}");
            let mut packet = vec![0u8; 12];
            packet.extend_from_slice(&[0x88, 0xb5, 0x08, 0, 0, 0, 0, 0, 42, 0]);
            packet.extend_from_slice(&frame);
            assert_eq!(
                vxlan.test_run(&packet).unwrap(),
                want,
                "VXLAN offset, {workers}, {frame:02x?}"
            );
        }
    }
}
