//! Strangers on the underlay cannot slow the cluster down through its peer port. From a fourth
//! namespace on the switch, 500 connections to 7946 of the three voters — 250 that send garbage
//! (random bytes; a TLS record header then junk; a zero byte then junk) and 250 half-open ones
//! (silent; half a ClientHello, then a stall) — are kept up for the whole phase, each re-opened
//! (at most once a second) when the agent closes it; the agents close a source that keeps
//! failing handshakes at accept. Meanwhile a writer on a follower (its writes are forwarded to the
//! leader over the peer channel) keeps committing at ≥ 90% of the rate the same writer reaches
//! undisturbed (flooded windows alternate with undisturbed ones; each is compared with its two
//! neighbours, and the median of those ratios counts), without a single failed write; every
//! agent still runs, and every voter counted the connections it refused or evicted.
//!
//! The stranger runs on the same cores as the agents (on real hosts it runs elsewhere), so
//! `deploy/test.sh` runs this test alone, after the others: another test's load would land in
//! some windows only.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use vxnet::api;
use vxnet_dataplane::io::NetnsHandle;
use vxnet_proto::{
    ApiRequest, CreateNetwork, NamesRequest, api_request::Kind as Req, api_response::Kind as Resp,
};
use vxnet_testkit::procfs;

/// Flooded windows, each between two undisturbed ones: 6 × 3 s ≈ the 20 s of flood of §18 of
/// docs/design/peer-tls.md. Short alternating windows compare the two rates under the same
/// background load: the two cores are shared with whatever else runs, whose load moves the
/// undisturbed rate by a factor of two within a minute.
const ROUNDS: usize = 6;
/// One window of the writer.
const WINDOW: Duration = Duration::from_secs(3);
/// After switching the flood on (its held connections pile up) or off (the agents see them
/// close), before the next window.
const SETTLE: Duration = Duration::from_secs(1);
/// One write's deadline: a write that takes longer counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Slots of each sort. The leader gets 400 of the 500 (see [`plan`]), more than its 256 inbound
/// slots, so its admission has to refuse or evict strangers for its members' connections.
const GARBAGE_SLOTS: usize = 250;
const HALF_OPEN_SLOTS: usize = 250;
/// A slot opens at most one connection per this period (plus jitter): the ones the agent closes
/// at once wait the rest of it, the ones it holds re-open as soon as it lets go. 500
/// connections, re-opened once a second: the stranger's own CPU and the kernel's TCP handshakes
/// run on the same two cores as the agents, so a faster churn would measure how fast this
/// machine opens connections, not vxnet (on separate hosts the stranger's side costs the
/// agents nothing).
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// How often a held connection looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// The stranger's underlay address (hosts are .1–.3).
const STRANGER_IP: &str = "192.168.200.77";

/// Deterministic pseudo-random bytes (xorshift64*), advancing `state`.
fn noise(state: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let x = &mut *state;
            *x ^= *x >> 12;
            *x ^= *x << 25;
            *x ^= *x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// What one slot of the flood does with each of its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// 64–574 random bytes.
    Random,
    /// A TLS handshake record header (0x16 0x03 0x01), then 300 random bytes: the record
    /// length is random too, so some are refused at once and some wait for the rest.
    TlsJunk,
    /// A zero byte (what a previous-release frame starts with), then 200 random bytes.
    ZeroJunk,
    /// Connects and says nothing.
    Silent,
    /// The first 60 bytes of a 205-byte ClientHello record, then nothing.
    HalfHello,
}

impl Kind {
    fn opening(self, rng: &mut u64) -> Vec<u8> {
        match self {
            Kind::Random => {
                let n = 64 + 2 * usize::from(noise(rng, 1)[0]);
                noise(rng, n)
            }
            Kind::TlsJunk => [vec![0x16, 0x03, 0x01], noise(rng, 300)].concat(),
            Kind::ZeroJunk => [vec![0x00], noise(rng, 200)].concat(),
            Kind::Silent => Vec::new(),
            Kind::HalfHello => {
                // Record: handshake, TLS 1.0 on the record layer, 200 bytes; handshake message:
                // ClientHello of 196 bytes, legacy version 1.2, random, a 32-byte session id.
                let mut b = vec![
                    0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
                ];
                b.extend(noise(rng, 32));
                b.push(0x20);
                b.extend(noise(rng, 16));
                b
            }
        }
    }
}

/// The flood's bookkeeping, shared by its threads.
#[derive(Default)]
struct FloodStats {
    /// Connections open right now.
    open: AtomicUsize,
    opened: AtomicU64,
    /// Closed (or reset) by the agent.
    closed_by_agent: AtomicU64,
    /// Connections on which the agent sent something (a TLS alert, a greeting).
    answered: AtomicU64,
    connect_failed: AtomicU64,
    /// CPU time of the flood's threads, in µs.
    cpu_us: AtomicU64,
}

/// Sleeps `d`, in steps, unless `stop` is raised.
fn nap(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// One slot: while `active`, a connection of `kind` to `target`, re-opened whenever the agent
/// closes it; until `stop`.
fn slot(
    kind: Kind,
    target: SocketAddr,
    seed: u64,
    (stop, active): (&AtomicBool, &AtomicBool),
    stats: &FloodStats,
) {
    lowest_priority();
    let mut rng = seed | 1;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if !active.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let began = Instant::now();
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Err(_) => {
                stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(mut s) => {
                stats.open.fetch_add(1, Ordering::Relaxed);
                stats.opened.fetch_add(1, Ordering::Relaxed);
                let _ = s.set_read_timeout(Some(POLL));
                // The agent may close while we still write.
                let _ = s.write_all(&kind.opening(&mut rng));
                let mut answered = false;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            stats.closed_by_agent.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(_) => answered = true,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            if stop.load(Ordering::Relaxed) || !active.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        Err(_) => {
                            stats.closed_by_agent.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                if answered {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                }
                stats.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let jitter = Duration::from_millis(u64::from(noise(&mut rng, 1)[0] % 50));
        nap(REOPEN_EVERY.saturating_sub(began.elapsed()) + jitter, stop);
    }
    stats.cpu_us.fetch_add(thread_cpu_us(), Ordering::Relaxed);
}

/// Moves the calling thread to nice 19. The stranger stands for another host, with CPUs of its
/// own: here it shares the agents' two cores, and its threads must not take their time (the
/// agents' own work for its connections is what the test is about).
fn lowest_priority() {
    // SAFETY: gettid and setpriority take plain integers; nice is per thread on Linux.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// The calling thread's CPU time (user + system), in µs.
fn thread_cpu_us() -> u64 {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_THREAD needs nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Runs every slot of `plan` on its own thread (in the caller's network namespace), flooding
/// while `active`, until `stop`.
fn flood(plan: &[(Kind, SocketAddr)], stop: &AtomicBool, active: &AtomicBool, stats: &FloodStats) {
    std::thread::scope(|s| {
        for (i, &(kind, target)) in plan.iter().enumerate() {
            std::thread::Builder::new()
                .name(format!("flood-{i}"))
                .stack_size(128 * 1024)
                .spawn_scoped(s, move || {
                    slot(kind, target, 0x9e37_79b9 + i as u64, (stop, active), stats)
                })
                .expect("spawn a flood thread");
        }
    });
}

/// 250 garbage and 250 half-open slots; of each 250, 200 aim at the leader and 25 at each
/// follower, every sort of connection at every target.
fn plan(leader: SocketAddr, followers: [SocketAddr; 2]) -> Vec<(Kind, SocketAddr)> {
    let target = |j: usize| match j % 10 {
        8 => followers[0],
        9 => followers[1],
        _ => leader,
    };
    let garbage = (0..GARBAGE_SLOTS).map(|j| {
        let kind = [Kind::Random, Kind::TlsJunk, Kind::ZeroJunk][(j / 10) % 3];
        (kind, target(j))
    });
    let half_open = (0..HALF_OPEN_SLOTS).map(|j| {
        let kind = [Kind::Silent, Kind::HalfHello][(j / 10) % 2];
        (kind, target(j))
    });
    garbage.chain(half_open).collect()
}

/// Raises the flag when dropped: the flood stops on every path, a panic included.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One run of the writer.
#[derive(Debug)]
struct Run {
    writes: u64,
    failures: Vec<String>,
    elapsed: Duration,
    /// CPU seconds the three agents spent meanwhile, and the whole machine (both cores, all
    /// processes: the background load).
    agents_cpu: f64,
    machine_busy: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

/// Writes through the API socket `api_socket` for `phase`, one at a time: `network create NAME`
/// and `network rm NAME` in turn (each answered once committed and applied on that agent).
/// Leaves no network behind. `pids`: the agents, whose CPU time is noted.
fn write_for(api_socket: &Path, pids: &[u32], name: &str, phase: Duration) -> Run {
    let call = |kind: Req| -> Result<(), String> {
        match api::call(api_socket, &ApiRequest { kind: Some(kind) }, CALL_TIMEOUT) {
            Ok(r) => match r.kind {
                Some(Resp::Applied(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
            Err(e) => Err(e.to_string()),
        }
    };
    let create = || {
        Req::NetworkCreate(CreateNetwork {
            name: name.to_string(),
            ..CreateNetwork::default()
        })
    };
    let remove = || {
        Req::NetworkRemove(NamesRequest {
            names: vec![name.to_string()],
        })
    };
    let cpu = || {
        let agents: u64 = pids.iter().map(|p| procfs::cpu_jiffies(*p)).sum();
        (agents, procfs::machine_jiffies().1)
    };
    let cpu_before = cpu();
    let start = Instant::now();
    let (mut writes, mut failures, mut exists) = (0, Vec::new(), false);
    while start.elapsed() < phase && failures.len() < 20 {
        let t = Instant::now();
        match call(if exists { remove() } else { create() }) {
            Ok(()) => {
                writes += 1;
                exists = !exists;
            }
            Err(e) => failures.push(format!(
                "{} {name} after {:?}: {e}",
                if exists { "rm" } else { "create" },
                t.elapsed()
            )),
        }
    }
    let elapsed = start.elapsed();
    let cpu_after = cpu();
    let tck = procfs::clk_tck();
    if exists {
        // Not counted: the next run starts from the same state.
        if let Err(e) = call(remove()) {
            failures.push(format!("final rm {name}: {e}"));
        }
    }
    Run {
        writes,
        failures,
        elapsed,
        agents_cpu: cpu_after.0.saturating_sub(cpu_before.0) as f64 / tck,
        machine_busy: cpu_after.1.saturating_sub(cpu_before.1) as f64 / tck,
    }
}

/// The transport counters of `agent` (`transport.*` of `vxnet stats`).
fn transport_counters(agent: &Agent) -> BTreeMap<String, u64> {
    agent
        .stats()
        .into_iter()
        .filter(|(k, _)| k.starts_with("transport."))
        .collect()
}

/// `after - before` of the counters that moved, as "name +delta".
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    after
        .iter()
        .filter_map(|(k, v)| {
            let was = before.get(k).copied().unwrap_or(0);
            (*v != was).then(|| format!("{} +{}", k.trim_start_matches("transport."), v - was))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes per second over several runs.
fn pooled_rate(runs: &[&Run]) -> f64 {
    let writes: u64 = runs.iter().map(|r| r.writes).sum();
    let secs: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    writes as f64 / secs
}

/// 500 garbage and half-open connections from a stranger: the follower's writes keep ≥ 90% of
/// their undisturbed rate, none fails, the agents live, the voters refused the strangers.
#[test]
fn flood_of_500_strangers_keeps_commit_rate() {
    let Some(mut cluster) = cluster_for("flood_of_500_strangers_keeps_commit_rate", "sfl", 3)
    else {
        return;
    };
    let leader_name = wait_for("a leader", Duration::from_secs(10), || {
        cluster.agents[0].leader_name()
    });
    let leader = cluster
        .agents
        .iter()
        .position(|a| a.name == leader_name)
        .unwrap_or_else(|| panic!("leader {leader_name} is one of the hosts"));
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // The writer's agent: a follower, whose writes travel to the leader over the peer channel.
    let writer = followers[0];
    let peer = |i: usize| -> SocketAddr {
        format!("192.168.200.{}:7946", i + 1)
            .parse()
            .expect("address")
    };

    let stranger = format!("{}-x", cluster.prefix);
    cluster.add_netns(&stranger);
    cluster.plug(&stranger, "px");
    sh(&format!(
        "ip -n {stranger} addr add {STRANGER_IP}/24 dev ul0"
    ));
    let stranger_ns = NetnsHandle::open(&stranger).expect("open the stranger's namespace");
    let plan = plan(peer(leader), [peer(followers[0]), peer(followers[1])]);
    let at_leader = plan.iter().filter(|(_, t)| *t == peer(leader)).count();

    let api_socket = cluster.agents[writer].api.clone();
    let pids: Vec<u32> = cluster.agents.iter().filter_map(Agent::pid).collect();
    let term_before = cluster.agents[leader].counter("raft.term");
    let counters_before: Vec<BTreeMap<String, u64>> =
        cluster.agents.iter().map(transport_counters).collect();

    let stop = AtomicBool::new(false);
    let active = AtomicBool::new(false);
    let sampling = AtomicBool::new(false);
    let stats = FloodStats::default();
    // Undisturbed and flooded windows in turn, undisturbed first and last.
    let (windows, held, opened_flooded) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let attacker = s.spawn(|| {
            stranger_ns
                .run(|| flood(&plan, &stop, &active, &stats))
                .expect("enter the stranger's namespace")
        });
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if sampling.load(Ordering::Relaxed) {
                    samples.push(stats.open.load(Ordering::Relaxed));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        let mut windows: Vec<(bool, Run)> = Vec::new();
        let mut opened = 0;
        for i in 0..=ROUNDS {
            if i > 0 {
                active.store(true, Ordering::Relaxed);
                std::thread::sleep(SETTLE);
                let opened_at = stats.opened.load(Ordering::Relaxed);
                sampling.store(true, Ordering::Relaxed);
                windows.push((
                    true,
                    write_for(&api_socket, &pids, &format!("flood-f{i}"), WINDOW),
                ));
                sampling.store(false, Ordering::Relaxed);
                opened += stats.opened.load(Ordering::Relaxed) - opened_at;
                active.store(false, Ordering::Relaxed);
                std::thread::sleep(SETTLE);
            }
            windows.push((
                false,
                write_for(&api_socket, &pids, &format!("flood-u{i}"), WINDOW),
            ));
        }
        stop.store(true, Ordering::Relaxed);
        let held = sampler.join().expect("sampler");
        attacker.join().expect("attacker");
        (windows, held, opened)
    });

    let running: Vec<(String, bool)> = cluster
        .agents
        .iter_mut()
        .map(|a| (a.name.clone(), a.is_running()))
        .collect();
    let term_after = cluster.agents[leader].counter("raft.term");
    let leader_after = cluster.agents[writer].leader_name();
    let counters_after: Vec<BTreeMap<String, u64>> =
        cluster.agents.iter().map(transport_counters).collect();

    let runs = |flooded: bool| -> Vec<&Run> {
        windows
            .iter()
            .filter(|(f, _)| *f == flooded)
            .map(|(_, r)| r)
            .collect()
    };
    let (quiet, noisy) = (runs(false), runs(true));
    let baseline = pooled_rate(&quiet);
    let under_flood = pooled_rate(&noisy);
    let pooled_ratio = under_flood / baseline;
    // Each flooded window against the undisturbed ones on either side of it (which also
    // cancels a steady drift of the background), and the median of those.
    let mut round_ratios: Vec<f64> = (0..noisy.len())
        .map(|i| noisy[i].rate() / ((quiet[i].rate() + quiet[i + 1].rate()) / 2.0))
        .collect();
    let in_order: Vec<String> = round_ratios.iter().map(|r| format!("{r:.2}")).collect();
    round_ratios.sort_by(f64::total_cmp);
    let n = round_ratios.len();
    let ratio = (round_ratios[(n - 1) / 2] + round_ratios[n / 2]) / 2.0;
    // Agents' CPU per write, and the machine's load, undisturbed and flooded.
    let per_write = |rs: &[&Run]| {
        1000.0 * rs.iter().map(|r| r.agents_cpu).sum::<f64>()
            / rs.iter().map(|r| r.writes).sum::<u64>().max(1) as f64
    };
    let load = |rs: &[&Run]| {
        rs.iter().map(|r| r.machine_busy).sum::<f64>()
            / rs.iter().map(|r| r.elapsed.as_secs_f64()).sum::<f64>()
    };
    let rates = |rs: &[&Run]| -> String {
        rs.iter()
            .map(|r| format!("{:.1}", r.rate()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let failures: Vec<&String> = windows.iter().flat_map(|(_, r)| &r.failures).collect();
    let held_max = held.iter().copied().max().unwrap_or(0);
    let held_min = held.iter().copied().min().unwrap_or(0);
    let held_mean = held.iter().sum::<usize>() as f64 / held.len().max(1) as f64;
    let flooded_secs: f64 = noisy.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let refused =
        |i: usize, c: &[BTreeMap<String, u64>]| c[i].get("transport.handshakes_refused").copied();
    eprintln!(
        "sec_flood: writes/s through {} (a follower; leader {leader_name}), {} flooded windows of \
         {WINDOW:?} between {} undisturbed ones: undisturbed {baseline:.1} (windows {}), flooded \
         {under_flood:.1} (windows {}); ratio {ratio:.3} = median of each flooded window against \
         the mean of its two neighbours {in_order:?}; pooled ratio {pooled_ratio:.3}; {} writes, \
         {} failed; agents' CPU per write {:.2} ms undisturbed, {:.2} ms flooded; machine busy \
         {:.2} of 2 cores undisturbed, {:.2} flooded",
        cluster.agents[writer].name,
        noisy.len(),
        quiet.len(),
        rates(&quiet),
        rates(&noisy),
        windows.iter().map(|(_, r)| r.writes).sum::<u64>(),
        failures.len(),
        per_write(&quiet),
        per_write(&noisy),
        load(&quiet),
        load(&noisy),
    );
    eprintln!(
        "sec_flood: flood of {} slots ({at_leader} at the leader) from {STRANGER_IP}: {opened_flooded} \
         connections opened in the flooded windows ({:.0}/s), {} in all; held open min/mean/max \
         {held_min}/{held_mean:.0}/{held_max}; closed by the agents {}, answered {}, connect \
         failures {}; the flood's own CPU {:.1} s; raft term {term_before:?} → {term_after:?}, leader after: {leader_after:?}; \
         agents running {running:?}",
        plan.len(),
        opened_flooded as f64 / flooded_secs,
        stats.opened.load(Ordering::Relaxed),
        stats.closed_by_agent.load(Ordering::Relaxed),
        stats.answered.load(Ordering::Relaxed),
        stats.connect_failed.load(Ordering::Relaxed),
        stats.cpu_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    for (i, agent) in cluster.agents.iter().enumerate() {
        eprintln!(
            "sec_flood: {} transport counters moved: {}",
            agent.name,
            moved(&counters_before[i], &counters_after[i])
        );
    }

    assert!(failures.is_empty(), "failed writes: {failures:#?}");
    assert!(
        windows.iter().all(|(_, r)| r.writes > 0),
        "every window wrote"
    );
    assert!(
        running.iter().all(|(_, up)| *up),
        "every agent still runs: {running:?}"
    );
    // The flood was one: its connections were opened, re-opened and held.
    assert!(
        opened_flooded >= (ROUNDS * plan.len()) as u64,
        "only {opened_flooded} connections opened during the flooded windows"
    );
    assert!(
        ratio >= 0.9,
        "under the flood the writes/s fell below 90% of the undisturbed rate: median ratio \
         {ratio:.3} of {in_order:?} (undisturbed windows {}, flooded {})",
        rates(&quiet),
        rates(&noisy)
    );
    // Every voter was flooded, and counted what it refused or evicted.
    for (i, agent) in cluster.agents.iter().enumerate() {
        let before = refused(i, &counters_before).unwrap_or_else(|| {
            panic!(
                "`vxnet stats` of {} has no transport.handshakes_refused: {:?}",
                agent.name,
                counters_before[i].keys().collect::<Vec<_>>()
            )
        });
        let after = refused(i, &counters_after).unwrap_or(0);
        assert!(
            after > before,
            "{}'s transport.handshakes_refused did not move ({before} → {after})",
            agent.name
        );
    }
}
