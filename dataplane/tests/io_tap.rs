//! TAP devices against the real kernel (root only): open variants, and frames crossing a
//! bridge between the TAP and a container's veth in both directions.

#[allow(dead_code)]
mod io_common;

use std::net::Ipv4Addr;
use std::time::Instant;

use io_common::{anon_ns, deadline, inet_checksum, is_root, nl, wait_readable};
use vxnet_dataplane::io::{IoError, NetnsHandle, Tap, TapOptions, VNET_HDR_LEN, VethSpec};

const CT_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x4d, 0x00, 0x02];
const CT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// A remote endpoint the test impersonates through the TAP (as the agent would for a peer).
const FAKE_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x4d, 0x00, 0x99];
const FAKE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);

#[test]
fn tap_open_variants() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    let plain = ns
        .run(|| Tap::open("vxtap%d", TapOptions::default()))
        .expect("thread")
        .expect("open plain TAP");
    assert!(plain.name().starts_with("vxtap"), "{}", plain.name());
    assert!(plain.ifindex() > 0);
    assert_eq!(plain.offloads(), Default::default());
    let name = plain.name().to_owned();
    let link = nl(&ns, |nl| async move { nl.link_by_name(&name).await }).expect("get link");
    assert_eq!(
        link.map(|l| (l.index, l.kind)),
        Some((plain.ifindex(), Some("tun".to_owned())))
    );
    assert!(
        matches!(plain.open_queue(), Err(IoError::Invalid(_))),
        "not multiqueue"
    );

    let all = TapOptions {
        vnet_hdr: true,
        multi_queue: true,
        offload: true,
    };
    let tap = ns
        .run(|| Tap::open("vxtapmq", all))
        .expect("thread")
        .expect("open offload TAP");
    let off = tap.offloads();
    println!("TAP offloads accepted by this kernel: {off:?}");
    assert!(off.csum && off.tso4 && off.tso6, "{off:?}");
    let q2 = ns
        .run(|| tap.open_queue())
        .expect("thread")
        .expect("second queue");
    assert_eq!((q2.ifindex(), q2.name()), (tap.ifindex(), tap.name()));
    assert!(matches!(
        Tap::open(
            "vxtapbad",
            TapOptions {
                offload: true,
                ..Default::default()
            }
        ),
        Err(IoError::Invalid(_))
    ));

    // Not persistent: closing every queue removes the device.
    drop((plain, tap, q2));
    let left = nl(
        &ns,
        |nl| async move { nl.list_links_with_prefix("vxtap").await },
    )
    .expect("list");
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn frames_cross_the_bridge_plain() {
    if is_root() {
        frames_cross_the_bridge(TapOptions::default());
    }
}

#[test]
fn frames_cross_the_bridge_vnet_offload() {
    if is_root() {
        frames_cross_the_bridge(TapOptions {
            vnet_hdr: true,
            multi_queue: false,
            offload: true,
        });
    }
}

fn frames_cross_the_bridge(opts: TapOptions) {
    let host = anon_ns();
    let ct = NetnsHandle::create_anonymous().expect("container netns");
    let tap = host
        .run(|| Tap::open("vxtap0", opts))
        .expect("thread")
        .expect("open TAP");
    tap.set_nonblocking(true).expect("nonblocking");
    let tap_index = tap.ifindex();
    let ct_ref = &ct;
    nl(&host, |nl| async move {
        let br = nl.ensure_bridge("vxbr0", 1450).await?;
        nl.attach(tap_index.into(), br, 1450).await?;
        // The TAP's carrier reaches the bridge via the link watcher, up to a second later; the
        // container's ARP would be dropped at a port that does not forward yet.
        nl.wait_port_forwarding(tap_index, std::time::Duration::from_secs(3))
            .await?;
        let spec = VethSpec {
            host_name: "vxv-ct",
            bridge_index: br,
            netns: ct_ref,
            peer_name: "eth0",
            mac: CT_MAC,
            ipv4: CT_IP,
            prefix_len: 24,
            mtu: 1450,
            gso_max_size: Some(60_000),
            gateway: None,
        };
        nl.create_veth_into_netns(&spec).await?;
        Ok(())
    })
    .expect("bridge, TAP port, container");

    // Container -> TAP: the gratuitous ARP the container sent on creation is flooded to the TAP.
    let garp = read_until(&tap, opts, deadline(3), |f| {
        is_arp(f, 1)
            && f[6..12] == CT_MAC
            && f[28..32] == CT_IP.octets()
            && f[38..42] == CT_IP.octets()
    });
    assert!(
        garp.is_some(),
        "gratuitous ARP from the container reaches the TAP"
    );

    // TAP -> container and back: an ARP request gets a reply addressed to us.
    write_frame(&tap, opts, &arp_request(FAKE_MAC, FAKE_IP, CT_IP));
    let reply = read_until(&tap, opts, deadline(3), |f| {
        is_arp(f, 2) && f[0..6] == FAKE_MAC
    });
    let reply = reply.expect("ARP reply from the container");
    assert_eq!(reply[6..12], CT_MAC);
    assert_eq!(reply[28..32], CT_IP.octets());

    // And an ICMP echo gets its echo reply.
    write_frame(&tap, opts, &icmp_echo(FAKE_MAC, CT_MAC, FAKE_IP, CT_IP, 7));
    let pong = read_until(&tap, opts, deadline(3), |f| {
        f.len() >= 42
            && f[0..6] == FAKE_MAC
            && f[12..14] == [0x08, 0x00]
            && f[23] == 1
            && f[34] == 0
    });
    assert!(pong.is_some(), "ICMP echo reply from the container");
}

fn write_frame(tap: &Tap, opts: TapOptions, frame: &[u8]) {
    let n = if opts.vnet_hdr {
        // All-zero header: no checksum offload, no GSO.
        tap.write_vnet(&[0; VNET_HDR_LEN], frame)
            .expect("write TAP")
    } else {
        tap.write(frame).expect("write TAP")
    };
    assert_eq!(n, frame.len());
}

/// Reads frames from the TAP until one matches (IPv6 autoconf chatter from the container is
/// skipped) or the deadline passes.
fn read_until(
    tap: &Tap,
    opts: TapOptions,
    end: Instant,
    want: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
    while wait_readable(tap, end) {
        let frame = if opts.vnet_hdr {
            let mut hdr = [0u8; VNET_HDR_LEN];
            match tap.read_vnet(&mut hdr, &mut buf) {
                Ok(n) => &buf[..n],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("read TAP: {e}"),
            }
        } else {
            match tap.read(&mut buf) {
                Ok(n) => &buf[..n],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("read TAP: {e}"),
            }
        };
        if want(frame) {
            return Some(frame.to_vec());
        }
    }
    None
}

fn is_arp(f: &[u8], op: u8) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, op]
}

fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn icmp_echo(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    seq: u16,
) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"vxnet-io-tap");
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}
