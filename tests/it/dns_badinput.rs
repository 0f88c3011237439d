//! Bad input to the embedded DNS resolver: 10,000 malformed datagrams, a few hundred garbage TCP
//! connections (100 of them held open, silent) and a ~3 s flood of valid queries, all from one
//! container against its gateway's port 53. Meanwhile and afterwards another container resolves
//! names, the API answers, nothing of network A shows on network B, the counters moved, the
//! agent is alive with its resident memory not grown by 50 MB or more, and no datagram that is
//! itself a response (QR=1) was answered. No timing is asserted.
//!
//! Two hosts. Network `alpha`: `a1` (the attacker) and `a2` (the checker) on h1, `a3` on h2 (alias
//! `web-a`). Network `bravo`: `b1` on h1, `b2` on h2. Containers are named netns (`<prefix>-cN`),
//! so their DNS names are their namespace names and the agents write
//! `/etc/netns/<prefix>-cN/resolv.conf`; [`EtcNetnsGuard`] removes whatever is left of those.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vxnet_testkit::netns::Proc;

use crate::support::*;

/// The attacker, run in `a1`: `python3 attack.py GW PER_CLASS FLOOD_SECS NAMES`.
///
/// Phases, each announced on stdout (`phase NAME`): `udp` (10 classes × PER_CLASS malformed
/// datagrams from one socket, shuffled, in bursts; replies are counted per class by the query
/// id, which every datagram of 2 bytes or more carries), `tcp` (garbage connections, then 100
/// connections opened and held without a byte sent), `flood` (valid queries from one socket, as
/// fast as it can, never reading a reply), `release` (the held connections closed). Then one line
/// of JSON with what was sent and what came back.
const ATTACK: &str = r#"
import json, random, socket, struct, sys, threading, time
gw, per_class, flood_secs, names = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(",")
rng = random.Random(53)

def hdr(qid, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", qid & 0xFFFF, flags, qd, an, ns, ar)
def qname(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\0"
def question(name, qtype=1):
    return qname(name) + struct.pack(">HH", qtype, 1)
def opt(payload=4096, rdata=b"", version=0, rdlen=None):
    rdlen = len(rdata) if rdlen is None else rdlen
    return b"\0" + struct.pack(">HHBBHH", 41, payload, 0, version, 0x8000, rdlen) + rdata
name = names[0]

def random_bytes(qid):
    return rng.randbytes(rng.randrange(0, 601))
def truncated_header(qid):
    return hdr(qid)[: rng.randrange(0, 12)]
def bogus_counts(qid):
    qd = rng.choice([1, 2, 7, 500, 0xFFFF])
    an, ns, ar = (rng.choice([0, 1, 0xFFFF]) for _ in range(3))
    body = rng.choice([b"", question(name), question(name) + rng.randbytes(rng.randrange(1, 40))])
    return hdr(qid, qd=qd, an=an, ns=ns, ar=ar) + body
def pointer_loop(qid):
    k = rng.randrange(6)
    tail = struct.pack(">HH", 1, 1)
    if k == 0:  # a pointer to itself
        return hdr(qid) + b"\xc0\x0c" + tail
    if k == 1:  # a label, then a pointer back to the name's start
        return hdr(qid) + b"\x01a\xc0\x0c" + tail
    if k == 2:  # two pointers pointing at each other
        return hdr(qid) + b"\xc0\x0e\xc0\x0c" + tail
    if k == 3:  # a pointer past the end
        return hdr(qid) + b"\xc0\xff" + tail
    if k == 4:  # a pointer into the header
        return hdr(qid) + b"\xc0\x02" + tail
    # the question's name points at the answer's owner name, which points back
    return hdr(qid, an=1) + b"\x01a\xc0\x14" + tail + b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + b"\x0a\0\0\x01"
def long_label(qid):
    k = rng.randrange(4)
    if k == 0:  # a length byte of 64..191: no valid label type
        n = rng.randrange(64, 192)
        return hdr(qid) + bytes([n]) + b"x" * n + b"\0" + struct.pack(">HH", 1, 1)
    if k == 1:  # 63-byte labels making a name far over 255 bytes
        return hdr(qid) + (b"\x3f" + b"y" * 63) * rng.randrange(5, 9) + b"\0" + struct.pack(">HH", 1, 1)
    if k == 2:  # a 63-byte label cut short by the end of the datagram
        return hdr(qid) + b"\x3f" + b"z" * rng.randrange(0, 63)
    return hdr(qid) + b"\x40" + b"w" * 64 + b"\0" + struct.pack(">HH", 1, 1)
def qdcount0(qid):
    return hdr(qid, qd=0) + rng.choice([b"", question(name)])
def qdcount2(qid):
    return hdr(qid, qd=2) + question(name) + question(rng.choice(names), rng.choice([1, 28, 12]))
def opcode(qid):
    op = rng.choice([5, 4, 2, 3, 15])  # UPDATE, NOTIFY, STATUS, unassigned
    return hdr(qid, flags=(op << 11) | 0x0100) + question(name)
def response(qid):
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + b"\x0a\0\0\x01"
    return hdr(qid, flags=0x8180, an=1) + question(name) + rr
def huge_edns(qid):
    k = rng.randrange(5)
    q = question(name)
    if k == 0:  # RDLENGTH far beyond the datagram
        return hdr(qid, ar=1) + q + opt(65535, b"\0\x0a\0\x08abcdefgh", rdlen=65535)
    if k == 1:  # a big OPT RDATA (padding options) in a big datagram
        pad = b"".join(struct.pack(">HH", 12, 1000) + b"\0" * 1000 for _ in range(rng.randrange(1, 4)))
        return hdr(qid, ar=1) + q + opt(65535, pad)
    if k == 2:  # two OPT records
        return hdr(qid, ar=2) + q + opt() + opt()
    if k == 3:  # an EDNS version nobody speaks
        return hdr(qid, ar=1) + q + opt(65535, version=255)
    return hdr(qid, ar=1) + q + opt(65535, struct.pack(">HH", 10, 2000) + b"c" * 40)

classes = [random_bytes, truncated_header, bogus_counts, pointer_loop, long_label, qdcount0,
           qdcount2, opcode, response, huge_edns]
queue = [(c.__name__, c) for c in classes for _ in range(per_class)]
rng.shuffle(queue)
by_id, sent, sent_bytes = {}, {}, 0
replies, rcodes = {}, {}
recv_bytes, unknown_replies = [0], [0]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
u.settimeout(0.2)
stop = threading.Event()
def receive():
    while not stop.is_set():
        try:
            d = u.recv(70000)
        except socket.timeout:
            continue
        recv_bytes[0] += len(d)
        cls = by_id.get(int.from_bytes(d[:2], "big")) if len(d) >= 2 else None
        if cls is None:
            unknown_replies[0] += 1
            continue
        replies[cls] = replies.get(cls, 0) + 1
        rc = str(d[3] & 0x0F) if len(d) >= 4 else "short"
        rcodes.setdefault(cls, {})[rc] = rcodes.setdefault(cls, {}).get(rc, 0) + 1
print("phase udp", flush=True)
t = threading.Thread(target=receive); t.start()
for i, (cls, make) in enumerate(queue):
    d = bytearray(make(i))
    if len(d) >= 2:
        d[0:2] = struct.pack(">H", i & 0xFFFF)
        by_id[i & 0xFFFF] = cls
    sent[cls] = sent.get(cls, 0) + 1
    sent_bytes += len(d)
    try:
        u.sendto(bytes(d), (gw, 53))
    except OSError:
        pass
    if i % 250 == 249:
        time.sleep(0.005)
time.sleep(1.0)
stop.set(); t.join()

print("phase tcp", flush=True)
tcp = {"garbage": 0, "short_length": 0, "zero_length": 0, "malformed_body": 0, "held": 0,
       "connect_failed": 0}
def connect():
    if tcp["connect_failed"] >= 5:  # port 53/tcp unreachable: do not wait 2 s 400 times
        tcp["skipped"] = tcp.get("skipped", 0) + 1
        return None
    try:
        return socket.create_connection((gw, 53), timeout=2)
    except OSError:
        tcp["connect_failed"] += 1
        return None
def close(c, reset):
    if reset:  # SO_LINGER 0: an RST instead of a FIN
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
def send_and_close(kind, payload, reset=False):
    c = connect()
    if c is None:
        return
    try:
        c.sendall(payload)
    except OSError:
        pass
    close(c, reset)
    tcp[kind] += 1
for i in range(100):
    send_and_close("garbage", rng.randbytes(rng.randrange(1, 2000)), reset=i % 2 == 0)
for i in range(100):
    n = rng.choice([12, 40, 300, 512, 4096, 65535])
    send_and_close("short_length", struct.pack(">H", n) + rng.randbytes(rng.randrange(0, min(n, 200))), reset=i % 3 == 0)
for i in range(50):
    send_and_close("zero_length", rng.choice([b"\0\0", b"\0", b"\0\0\0\0"]))
for i in range(50):
    body = bytes(rng.choice(classes)(i))
    send_and_close("malformed_body", struct.pack(">H", len(body)) + body)
held = []
for i in range(100):
    c = connect()
    if c is not None:
        held.append(c)
tcp["held"] = len(held)

print("phase flood", flush=True)
qs = []
for j in range(256):
    n = rng.choice(names)
    qtype = rng.choice([1, 1, 1, 28])
    qs.append(bytes(hdr(j) + question(n if j % 8 else "nosuchname%d" % j, qtype)))
f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
f.connect((gw, 53))
flood_sent, flood_errors = 0, 0
end = time.monotonic() + flood_secs
while True:
    for q in qs:
        try:
            f.send(q)
            flood_sent += 1
        except OSError:
            flood_errors += 1
    if time.monotonic() >= end:
        break
elapsed = flood_secs + (time.monotonic() - end)

print("phase release", flush=True)
for c in held:
    c.close()
print(json.dumps({
    "udp": {"sent": sent, "sent_bytes": sent_bytes, "replies": replies, "rcodes": rcodes,
            "reply_bytes": recv_bytes[0], "unattributed_replies": unknown_replies[0]},
    "tcp": tcp,
    "flood": {"sent": flood_sent, "send_errors": flood_errors, "secs": round(elapsed, 3)},
}), flush=True)
"#;

/// Removes the `/etc/netns/<prefix>-*` directories the agents write resolv.conf files into (they
/// remove their own on disconnect; a killed agent or a failed test may leave some), and
/// `/etc/netns` itself if it did not exist before and is empty. Dropped after the cluster.
struct EtcNetnsGuard {
    prefix: String,
    had_etc_netns: bool,
}

impl EtcNetnsGuard {
    fn new(tag: &str) -> EtcNetnsGuard {
        EtcNetnsGuard {
            prefix: vxnet_testkit::netns::prefix(tag),
            had_etc_netns: std::path::Path::new("/etc/netns").exists(),
        }
    }
}

impl Drop for EtcNetnsGuard {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::read_dir("/etc/netns") {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}-", self.prefix)) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        if !self.had_etc_netns {
            // Fails (harmlessly) if anything else is in it.
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}

/// One `dig` answer: the status of its header and the addresses or names of its answer section.
#[derive(Debug)]
struct Dig {
    status: String,
    answers: Vec<String>,
    text: String,
}

/// `dig +time=1 +tries=3 @server ARGS` in namespace `ns`.
fn dig(ns: &str, server: &str, args: &str) -> Dig {
    let out = sh_output(&format!(
        "ip netns exec {ns} dig +time=1 +tries=3 @{server} {args}"
    ));
    let text = output_text(&out);
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let answers = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    Dig {
        status,
        answers,
        text,
    }
}

/// A check run while the attack went on: what, in which phase it started, and the failure.
#[derive(Debug)]
struct Check {
    what: &'static str,
    phase: String,
    failure: Option<String>,
    /// How long it took (reported only: over 1 s means dig had to retry).
    took: Duration,
}

/// `Udp:` counters of namespace `ns` (`/proc/net/snmp`): name → value.
fn udp_snmp(ns: &str) -> BTreeMap<String, u64> {
    let text = sh(&format!("ip netns exec {ns} cat /proc/net/snmp"));
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    lines[0]
        .split_whitespace()
        .zip(lines[1].split_whitespace())
        .skip(1)
        .map(|(n, v)| (n.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

#[test]
fn malformed_queries_and_a_flood() {
    const TEST: &str = "malformed_queries_and_a_flood";
    const TAG: &str = "dbi";
    if !require_root(TEST) {
        return;
    }
    let started = Instant::now();
    // Declared before the cluster: dropped after it, once the agents are gone.
    let _etc_guard = EtcNetnsGuard::new(TAG);
    let Some(mut cluster) = cluster_for(TEST, TAG, 2) else {
        return;
    };
    let h1 = cluster.host_ns(0).to_string();
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.61.0.0/24", "alpha"]);
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.62.0.0/24", "bravo"]);
    let gateway = |net: &str| {
        cluster.agents[0].inspect(net).expect("inspect")["IPAM"]["Config"][0]["Gateway"]
            .as_str()
            .expect("gateway")
            .to_string()
    };
    let (gw_a, gw_b) = (gateway("alpha"), gateway("bravo"));
    let mut attach = |host: usize, net: &str, extra: &[&str]| {
        let c = cluster.container();
        let mut args = vec!["network", "connect"];
        args.extend_from_slice(extra);
        args.extend([net, c.as_str()]);
        // The networks are created through h1; h2 may need a moment to apply them.
        wait_for(
            &format!("connect {c} to {net} on h{}", host + 1),
            Duration::from_secs(20),
            || {
                cluster.agents[host]
                    .cli(&args)
                    .status
                    .success()
                    .then_some(())
            },
        );
        let ip = cluster.ipv4_of(&c, "eth0");
        (c, ip)
    };
    let (a1, _a1_ip) = attach(0, "alpha", &[]);
    let (a2, _a2_ip) = attach(0, "alpha", &[]);
    let (a3, a3_ip) = attach(1, "alpha", &["--alias", "web-a"]);
    let (b1, _b1_ip) = attach(0, "bravo", &[]);
    let (b2, b2_ip) = attach(1, "bravo", &[]);

    // Before: a2 resolves a3 (on the other host), and b1 sees b2 but not a3.
    wait_for("a2 to resolve a3", Duration::from_secs(10), || {
        (dig(&a2, &gw_a, &a3).answers == std::slice::from_ref(&a3_ip)).then_some(())
    });
    wait_for("b1 to resolve b2", Duration::from_secs(10), || {
        (dig(&b1, &gw_b, &b2).answers == std::slice::from_ref(&b2_ip)).then_some(())
    });

    let agent_pid = cluster.agents[0].pid().expect("h1's agent pid");
    let rss_before = rss_kib(agent_pid).expect("VmRSS");
    let stats_before = cluster.agents[0].stats();
    let snmp_before = udp_snmp(&h1);

    let script = cluster.dir().join("attack.py");
    std::fs::write(&script, ATTACK).expect("write attack.py");
    let flood_names = [
        a3.clone(),
        format!("{a3}.alpha"),
        a2.clone(),
        "web-a".into(),
    ]
    .join(",");
    let mut attacker = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &a1, "python3"])
            .arg(&script)
            .args([gw_a.as_str(), "1000", "3", &flood_names])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("spawn the attacker");
    let stdout = attacker.child().stdout.take().expect("attacker stdout");

    // The checker: a2 resolves a3 over UDP and TCP, and h1's API answers, in a loop until the
    // attacker is done; every check is recorded with the phase it started in.
    let phase = Mutex::new("setup".to_string());
    let done = AtomicBool::new(false);
    let checks: Mutex<Vec<Check>> = Mutex::new(Vec::new());
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_vxnet"));
    let api = cluster.agents[0].api.clone();
    let report: Value = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let current = phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let t = Instant::now();
                let udp = dig(&a2, &gw_a, &a3);
                let udp_took = t.elapsed();
                let udp_fail =
                    (udp.answers != std::slice::from_ref(&a3_ip)).then(|| udp.text.clone());
                let t = Instant::now();
                let tcp = dig(&a2, &gw_a, &format!("+tcp {a3}"));
                let tcp_took = t.elapsed();
                let tcp_fail =
                    (tcp.answers != std::slice::from_ref(&a3_ip)).then(|| tcp.text.clone());
                let t = Instant::now();
                let stats = vxnet_testkit::agent::vxnet_cli(&cli, &api, &["stats"]);
                let stats_took = t.elapsed();
                let stats_fail = match stats {
                    Ok(o) if o.status.success() => None,
                    Ok(o) => Some(output_text(&o)),
                    Err(e) => Some(format!("{e:#}")),
                };
                let mut list = checks.lock().unwrap_or_else(|e| e.into_inner());
                for (what, failure, took) in [
                    ("dig (udp)", udp_fail, udp_took),
                    ("dig +tcp", tcp_fail, tcp_took),
                    ("vxnet stats", stats_fail, stats_took),
                ] {
                    list.push(Check {
                        what,
                        phase: current.clone(),
                        failure,
                        took,
                    });
                }
            }
        });
        let mut result = Value::Null;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("attacker output");
            if let Some(p) = line.strip_prefix("phase ") {
                eprintln!("{TEST}: phase {p} at {:?}", started.elapsed());
                *phase.lock().unwrap_or_else(|e| e.into_inner()) = p.to_string();
            } else {
                result = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("attacker JSON: {e}: {line}"));
            }
        }
        done.store(true, Ordering::Relaxed);
        result
    });
    let status = attacker.child().wait().expect("attacker exit");
    assert!(status.success(), "the attacker failed: {status}; {report}");
    drop(attacker);

    // What was sent and what came back.
    let udp_sent: u64 = report["udp"]["sent"]
        .as_object()
        .expect("udp.sent")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(udp_sent, 10_000, "{report}");
    eprintln!(
        "{TEST}: attacker report: {}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let replies_to_responses = report["udp"]["replies"]["response"].as_u64().unwrap_or(0);
    let (sent_bytes, reply_bytes) = (
        report["udp"]["sent_bytes"].as_u64().unwrap_or(0),
        report["udp"]["reply_bytes"].as_u64().unwrap_or(0),
    );
    eprintln!(
        "{TEST}: malformed UDP: {sent_bytes} bytes sent, {reply_bytes} bytes of replies \
         (×{:.2}); replies to QR=1 packets: {replies_to_responses}; flood: {} queries in {} s \
         ({:.0}/s)",
        reply_bytes as f64 / sent_bytes.max(1) as f64,
        report["flood"]["sent"],
        report["flood"]["secs"],
        report["flood"]["sent"].as_f64().unwrap_or(0.0)
            / report["flood"]["secs"].as_f64().unwrap_or(1.0),
    );

    // Every check during the attack passed, and some ran during the flood.
    let checks = checks.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut per_phase: BTreeMap<(String, &str), (usize, usize, Duration)> = BTreeMap::new();
    for c in &checks {
        let e = per_phase.entry((c.phase.clone(), c.what)).or_default();
        e.0 += 1;
        e.1 += usize::from(c.failure.is_some());
        e.2 = e.2.max(c.took);
    }
    eprintln!(
        "{TEST}: checks during the attack (phase, check) → (run, failed, slowest; a dig over 1 s \
         retried): {per_phase:?}"
    );
    let failed: Vec<&Check> = checks.iter().filter(|c| c.failure.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} checks failed during the attack; first: {:#?}",
        failed.len(),
        checks.len(),
        failed.first()
    );
    for what in ["dig (udp)", "dig +tcp", "vxnet stats"] {
        assert!(
            per_phase.contains_key(&("flood".to_string(), what)),
            "no {what} check ran during the flood: {per_phase:?}"
        );
    }

    // After: the agent is alive, answers, and its memory did not balloon.
    std::thread::sleep(Duration::from_millis(500));
    assert!(cluster.agents[0].is_running(), "h1's agent survived");
    let rss_after = rss_kib(agent_pid).expect("VmRSS after");
    let grown_kib = rss_after as i64 - rss_before as i64;
    eprintln!(
        "{TEST}: h1 vxnetd VmRSS {rss_before} KiB before, {rss_after} KiB after ({grown_kib:+} KiB)"
    );
    assert!(
        grown_kib < 50 * 1024,
        "VmRSS grew by {grown_kib} KiB ({rss_before} → {rss_after})"
    );
    let stats_after = cluster.agents[0].stats();
    let snmp_after = udp_snmp(&h1);
    let dns_deltas: BTreeMap<&str, u64> = stats_after
        .keys()
        .filter(|k| k.starts_with("dns."))
        .map(|k| (k.as_str(), delta(&stats_before, &stats_after, k)))
        .collect();
    eprintln!(
        "{TEST}: h1 dns counters moved by {dns_deltas:?}; h1 UDP InDatagrams +{} \
         RcvbufErrors +{} InErrors +{} SndbufErrors +{}",
        delta(&snmp_before, &snmp_after, "InDatagrams"),
        delta(&snmp_before, &snmp_after, "RcvbufErrors"),
        delta(&snmp_before, &snmp_after, "InErrors"),
        delta(&snmp_before, &snmp_after, "SndbufErrors"),
    );
    // FORMERR (1) and NOTIMP (4) answers the attacker got, for comparison with dns.malformed.
    let rejected: u64 = report["udp"]["rcodes"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(_, codes)| codes.as_object().into_iter().flatten())
        .filter(|(code, _)| *code == "1" || *code == "4")
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    eprintln!(
        "{TEST}: FORMERR/NOTIMP replies to the malformed datagrams: {rejected}; dns.malformed \
         moved by {} (includes any of the TCP phase's)",
        dns_deltas.get("dns.malformed").copied().unwrap_or(0)
    );
    assert!(
        dns_deltas.get("dns.malformed").copied().unwrap_or(0) > 0,
        "dns.malformed did not move: {dns_deltas:?}"
    );
    assert!(
        dns_deltas.get("dns.queries").copied().unwrap_or(0) > 0,
        "dns.queries did not move: {dns_deltas:?}"
    );

    // Nothing leaks: A's names (name, alias, NAME.NETWORK, its address) are NXDOMAIN on B, on
    // both hosts; B's names are NXDOMAIN on A; A's names still resolve on A.
    let ptr = |ip: &str| format!("-x {ip}");
    for (ns, gw) in [(&b1, &gw_b), (&b2, &gw_b)] {
        for q in [
            a3.clone(),
            a1.clone(),
            "web-a".to_string(),
            format!("{a3}.alpha"),
            ptr(&a3_ip),
        ] {
            let d = dig(ns, gw, &q);
            assert_eq!(d.status, "NXDOMAIN", "{q} from {ns} (bravo): {}", d.text);
            assert!(d.answers.is_empty(), "{q} from {ns}: {}", d.text);
        }
    }
    for q in [b2.clone(), format!("{b2}.bravo"), ptr(&b2_ip)] {
        let d = dig(&a2, &gw_a, &q);
        assert_eq!(d.status, "NXDOMAIN", "{q} from {a2} (alpha): {}", d.text);
    }
    for q in [a3.clone(), "web-a".to_string(), format!("{a3}.alpha")] {
        let d = dig(&a2, &gw_a, &q);
        assert_eq!(
            d.answers,
            std::slice::from_ref(&a3_ip),
            "{q} from {a2}: {}",
            d.text
        );
    }
    let d = dig(&a2, &gw_a, &ptr(&a3_ip));
    assert_eq!(d.answers, [format!("{a3}.alpha.")], "PTR of a3: {}", d.text);
    cluster.agents[0].vxnet(&["stats"]);
    assert!(cluster.agents[0].is_running(), "h1's agent still up");

    // A response (QR=1) is never answered: two servers answering each other's answers loop,
    // and a forged source turns the resolver into a reflector (RFC 1035 §7.3: responses go to
    // the resolver that asked). Checked last, so that everything above is reported first.
    assert_eq!(
        replies_to_responses, 0,
        "the resolver answered {replies_to_responses} of {} QR=1 datagrams (rcodes {})",
        report["udp"]["sent"]["response"], report["udp"]["rcodes"]["response"]
    );
    eprintln!("{TEST}: total {:?}", started.elapsed());
}
