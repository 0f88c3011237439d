//! Forwarding-table lookups at 1k/10k/100k entries while a writer thread applies updates.
//!
//! Each iteration loads one snapshot and looks up a batch of 64 MACs, as a worker does per
//! batch of frames; throughput is reported per lookup. A second group loads per lookup.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vxnet_dataplane::fdb::{Fib, FibUpdate, MacLocation};
use vxnet_dataplane::wire::MacAddr;

const VNI: u32 = 4096;
const BATCH: usize = 64;

fn mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x02, 0x42, b[0], b[1], b[2], b[3]])
}

fn vtep(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, (i >> 8) as u8, i as u8))
}

fn filled(entries: u32) -> Arc<Fib> {
    let fib = Arc::new(Fib::new());
    let mut updates = vec![FibUpdate::AddNetwork {
        vni: VNI,
        mtu: 1450,
    }];
    updates.extend((0..entries).map(|i| FibUpdate::SetMac {
        vni: VNI,
        mac: mac(i),
        location: MacLocation::Remote(vtep(i % 64)),
    }));
    fib.apply(&updates);
    fib
}

/// A writer that keeps publishing small batches until dropped, like Raft applies do.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(fib: Arc<Fib>, entries: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut batches = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let i = (batches as u32).wrapping_mul(7919) % entries;
                fib.apply(&[FibUpdate::SetMac {
                    vni: VNI,
                    mac: mac(i),
                    location: MacLocation::Remote(vtep(batches as u32 % 64)),
                }]);
                batches += 1;
                // Raft applies come in bursts; leave the core to the reader most of the time.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            batches
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let batches = t.join().unwrap_or(0);
            eprintln!("writer published {batches} batches during the run");
        }
    }
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("fib_lookup_batch64_with_writer");
    group.throughput(Throughput::Elements(BATCH as u64));
    for entries in [1_000u32, 10_000, 100_000] {
        let fib = filled(entries);
        let _writer = Writer::start(Arc::clone(&fib), entries);
        let keys: Vec<MacAddr> = (0..BATCH as u32)
            .map(|i| mac(i.wrapping_mul(2_654_435_761) % entries))
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(entries), &keys, |b, keys| {
            b.iter(|| {
                let snap = fib.load();
                let table = snap.network(VNI).expect("network present");
                let mut hits = 0usize;
                for key in keys {
                    hits += usize::from(table.lookup_mac(black_box(key)).is_some());
                }
                hits
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("fib_lookup_load_per_lookup_with_writer");
    group.throughput(Throughput::Elements(BATCH as u64));
    let entries = 10_000;
    let fib = filled(entries);
    let _writer = Writer::start(Arc::clone(&fib), entries);
    let keys: Vec<MacAddr> = (0..BATCH as u32).map(|i| mac(i * 131 % entries)).collect();
    group.bench_function(BenchmarkId::from_parameter(entries), |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for key in &keys {
                let snap = fib.load();
                hits += usize::from(
                    snap.network(VNI)
                        .and_then(|t| t.lookup_mac(black_box(key)))
                        .is_some(),
                );
            }
            hits
        })
    });
    group.finish();
}

fn writes(c: &mut Criterion) {
    // What one Raft apply costs the writer at 100k entries (copy-on-write of the network table).
    let fib = filled(100_000);
    c.bench_function("fib_apply_one_update_100k", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = i.wrapping_add(1);
            fib.apply(&[FibUpdate::SetMac {
                vni: VNI,
                mac: mac(i % 100_000),
                location: MacLocation::Remote(vtep(i % 64)),
            }]);
        })
    });
}

criterion_group!(benches, lookups, writes);
criterion_main!(benches);
