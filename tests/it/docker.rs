//! Docker's remote network and IPAM driver (`vxnetd --docker-plugin`), driven by real dockerds:
//! one dockerd per host (`support::docker`), the agent in its mount namespace serving
//! `/run/docker/plugins/vxnet.sock`, containers from the offline image `local/busybox`.
//!
//! The contract, exactly as a user types it:
//!
//! ```text
//! docker network create -d vxnet --ipam-driver vxnet --subnet 10.30.0.0/24 -o vxnet.network=prod prod   # on both daemons
//! docker run -d --network prod --name web local/busybox httpd -f -p 80 -h /www      # host 1
//! docker run --rm --network prod local/busybox wget -qO- 10.30.0.2                     # host 2
//! ```
//!
//! Without dockerd on the machine (or one that does not answer) the tests print why and pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use vxnet_testkit::stats::percentile;

use crate::support::docker::*;
use crate::support::*;

pub(crate) const SUBNET: &str = "10.30.0.0/24";

/// `docker network create -d vxnet --ipam-driver vxnet --subnet SUBNET -o vxnet.network=NET NAME`.
pub(crate) fn create_args<'a>(subnet: &'a str, option: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "network",
        "create",
        "-d",
        DRIVER,
        "--ipam-driver",
        DRIVER,
        "--subnet",
        subnet,
        "-o",
        option,
        name,
    ]
}

pub(crate) fn in_subnet(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [10, 30, 0]
}

/// Prints how long each phase took (the runtime matters: dockerd with vfs is slow).
pub(crate) struct Phases {
    tag: &'static str,
    start: Instant,
    last: Instant,
}

impl Phases {
    pub(crate) fn new(tag: &'static str) -> Phases {
        let now = Instant::now();
        Phases {
            tag,
            start: now,
            last: now,
        }
    }

    pub(crate) fn done(&mut self, what: &str) {
        let now = Instant::now();
        eprintln!(
            "[{}] {what}: {:.1} s (total {:.1} s)",
            self.tag,
            (now - self.last).as_secs_f64(),
            (now - self.start).as_secs_f64()
        );
        self.last = now;
    }
}

/// The endpoints `vxnet network inspect NET` lists on `agent`: EndpointID → its entry.
pub(crate) fn endpoints(agent: &Agent, network: &str) -> BTreeMap<String, Value> {
    let Some(net) = agent.inspect(network) else {
        panic!(
            "vxnet network inspect {network} on {} failed: {}",
            agent.name,
            output_text(&agent.cli(&["network", "inspect", network]))
        );
    };
    net["Containers"]
        .as_object()
        .map(|m| {
            m.values()
                .map(|e| {
                    (
                        e["EndpointID"].as_str().unwrap_or("").to_string(),
                        e.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `vxnet network ls` names on `agent`.
pub(crate) fn network_names(agent: &Agent) -> BTreeSet<String> {
    agent
        .vxnet(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `vxv*` links (host ends of endpoint veths) in host `i`'s namespace.
pub(crate) fn vxv_links(dc: &DockerCluster, i: usize) -> BTreeSet<String> {
    dc.cluster
        .links(dc.host_ns(i))
        .into_iter()
        .filter(|l| l.starts_with("vxv"))
        .collect()
}

/// The host end of endpoint `id`'s veth.
pub(crate) fn vxv_of(endpoint_id: &str) -> String {
    format!("vxv{}", &endpoint_id[..12.min(endpoint_id.len())])
}

/// `docker run --rm --network prod local/busybox ping -c COUNT -W 1 IP` on host `i`.
pub(crate) fn docker_ping(
    dc: &DockerCluster,
    i: usize,
    ip: Ipv4Addr,
    count: u32,
) -> (bool, String) {
    let out = run_in_prod(
        dc,
        i,
        None,
        &["ping", "-c", &count.to_string(), "-W", "1", &ip.to_string()],
    );
    (out.status.success(), output_text(&out))
}

/// Waits (`timeout`) until one ping from a new container on host `i` reaches `ip`, then
/// requires `ping -c 3` to get every reply.
pub(crate) fn assert_reaches(
    dc: &DockerCluster,
    i: usize,
    ip: Ipv4Addr,
    timeout: Duration,
    what: &str,
) {
    let start = Instant::now();
    let mut attempts = 0;
    wait_for(what, timeout, || {
        attempts += 1;
        docker_ping(dc, i, ip, 1).0.then_some(())
    });
    let (ok, text) = docker_ping(dc, i, ip, 3);
    assert!(
        ok && ping_counts(&text) == (3, 3),
        "{what}: ping -c 3 {ip} from h{}: {text}",
        i + 1
    );
    eprintln!(
        "{what}: reached after {attempts} attempt(s), {:.1} s; ping -c 3: 3/3",
        start.elapsed().as_secs_f64()
    );
}

/// CLOCK_BOOTTIME in seconds: the clock of /proc/uptime, also inside containers (same kernel).
pub(crate) fn boottime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a live timespec; CLOCK_BOOTTIME exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Removes every container of host `i`'s dockerd.
pub(crate) fn remove_all_containers(dc: &DockerCluster, i: usize) {
    let ids = dc.docker_ok(i, &["ps", "-aq"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(&ids);
        dc.docker_ok(i, &args);
    }
}

#[test]
pub(crate) fn docker_contract() {
    let mut phases = Phases::new("dk");
    let Some(mut dc) = DockerCluster::new("docker_contract", "dk", 2) else {
        return;
    };
    phases.done("2 hosts, 2 dockerds, 2 agents");

    // Both daemons create the network; one vxnet network behind both.
    for i in 0..2 {
        dc.docker_ok(i, &create_args(SUBNET, "vxnet.network=prod", "prod"));
    }
    for i in 0..2 {
        let net = dc
            .agent(i)
            .inspect("prod")
            .unwrap_or_else(|| panic!("vxnet network inspect prod on h{}", i + 1));
        assert_eq!(
            net["IPAM"]["Config"][0]["Subnet"],
            SUBNET,
            "h{}: {net:#}",
            i + 1
        );
    }
    let vni = dc.agent(0).vni_of("prod");
    assert_eq!(dc.agent(1).vni_of("prod"), vni, "one VNI on both hosts");
    let gateway: Option<Ipv4Addr> = dc.agent(0).inspect("prod").and_then(|n| {
        n["IPAM"]["Config"][0]["Gateway"]
            .as_str()
            .and_then(|g| g.split('/').next()?.parse().ok())
    });
    phases.done("docker network create on both daemons");

    // The web server on h1, fetched and pinged from h2.
    run_web(&dc);
    let web_ip = dc.container_ip(0, "web");
    assert!(in_subnet(web_ip), "web's address {web_ip} is in {SUBNET}");
    let web_ep = dc.endpoint_id(0, "web");
    eprintln!("web: {web_ip}, endpoint {web_ep}");
    let mut attempts = 0;
    let page = wait_for("cross-host wget of web", Duration::from_secs(15), || {
        attempts += 1;
        // Exactly the user's command (busybox's wget crashes with -T in a container); bounded
        // from outside.
        let out = run_in_prod(
            &dc,
            1,
            Some(Duration::from_secs(5)),
            &["wget", "-qO-", &web_ip.to_string()],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(page.trim(), PAGE);
    eprintln!("wget from h2 (attempt {attempts}): {}", page.trim());
    let (ok, text) = docker_ping(&dc, 1, web_ip, 3);
    assert!(
        ok && ping_counts(&text) == (3, 3),
        "ping -c 3 web from h2: {text}"
    );
    phases.done("web on h1, wget and ping from h2");

    // vxnet lists Docker's endpoint, with Docker's EndpointID, on both agents.
    for i in 0..2 {
        let eps = endpoints(dc.agent(i), "prod");
        let entry = eps.get(&web_ep).unwrap_or_else(|| {
            panic!(
                "h{}: vxnet network inspect prod has no endpoint {web_ep}: {eps:#?}",
                i + 1
            )
        });
        assert_eq!(entry["Host"], "h1", "web's endpoint: {entry}");
    }

    // --ip is honoured.
    dc.docker_ok(
        1,
        &[
            "run",
            "-d",
            "--network",
            "prod",
            "--ip",
            "10.30.0.77",
            "--name",
            "fixed",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    assert_eq!(dc.container_ip(1, "fixed"), Ipv4Addr::new(10, 30, 0, 77));
    let addr = dc.docker_ok(1, &["exec", "fixed", "ip", "-o", "-4", "addr", "show"]);
    assert!(
        addr.contains("inet 10.30.0.77/24"),
        "fixed's addresses: {addr}"
    );
    let fixed_ep = dc.endpoint_id(1, "fixed");
    let out = dc.docker(
        0,
        &["exec", "web", "ping", "-c", "1", "-W", "2", "10.30.0.77"],
    );
    assert!(
        out.status.success(),
        "web → fixed (10.30.0.77): {}",
        output_text(&out)
    );
    phases.done("--ip 10.30.0.77");

    // Refused creates, with messages that say what to do.
    let out = dc.docker(
        1,
        &create_args("10.31.0.0/24", "vxnet.network=prod", "prod31"),
    );
    let text = output_text(&out);
    eprintln!("create with another subnet: {}", text.trim());
    assert!(
        !out.status.success(),
        "a second subnet for vxnet network prod was accepted: {text}"
    );
    assert!(
        text.contains(SUBNET),
        "the refusal names the existing subnet {SUBNET}: {text}"
    );
    let out = dc.docker(
        0,
        &[
            "network",
            "create",
            "-d",
            DRIVER,
            "--subnet",
            "10.34.0.0/24",
            "-o",
            "vxnet.network=noipam",
            "noipam",
        ],
    );
    let text = output_text(&out);
    eprintln!("create without --ipam-driver: {}", text.trim());
    assert!(
        !out.status.success(),
        "a vxnet network without vxnet IPAM was accepted: {text}"
    );
    assert!(
        text.contains("--ipam-driver vxnet"),
        "the refusal says to use --ipam-driver vxnet: {text}"
    );
    let names = network_names(dc.agent(0));
    assert!(
        !names.contains("noipam") && !names.contains("prod31"),
        "refused creates left vxnet networks: {names:?}"
    );
    for i in 0..2 {
        let docker_names = dc.docker_ok(i, &["network", "ls", "--format", "{{.Name}}"]);
        assert!(
            !docker_names.lines().any(|n| n == "noipam" || n == "prod31"),
            "h{}: refused creates left Docker networks: {docker_names}",
            i + 1
        );
    }
    phases.done("refused creates");

    // 20 containers at once, 10 per daemon: 20 distinct addresses.
    let started: Vec<(usize, std::process::Output)> = std::thread::scope(|s| {
        let dc = &dc;
        let handles: Vec<_> = (0..20)
            .map(|k| {
                s.spawn(move || {
                    let i = k % 2;
                    (
                        i,
                        dc.docker(
                            i,
                            &["run", "-d", "--network", "prod", IMAGE, "sleep", "600"],
                        ),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("docker run thread"))
            .collect()
    });
    let failed: Vec<String> = started
        .iter()
        .filter(|(_, o)| !o.status.success())
        .map(|(i, o)| format!("h{}: {}", i + 1, output_text(o).trim()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 20 concurrent docker runs failed:\n{}\n--- h1 agent log tail ---\n{}",
        failed.len(),
        failed.join("\n"),
        dc.agent(0).log_tail(30)
    );
    phases.done("20 concurrent docker run -d");
    let mut ids: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (i, out) in &started {
        ids[*i].push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let mut addresses = BTreeSet::new();
    let mut removed_eps = Vec::new();
    for (i, ids) in ids.iter().enumerate() {
        let mut args = vec![
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.EndpointID}}{{end}}",
        ];
        args.extend(ids.iter().map(String::as_str));
        for line in dc.docker_ok(i, &args).lines() {
            let (ip, ep) = line.split_once(' ').unwrap_or((line, ""));
            let ip: Ipv4Addr = ip
                .parse()
                .unwrap_or_else(|_| panic!("h{}: container address {line:?}", i + 1));
            assert!(in_subnet(ip), "h{}: {ip} is not in {SUBNET}", i + 1);
            assert!(
                ip != web_ip && ip != Ipv4Addr::new(10, 30, 0, 77) && Some(ip) != gateway,
                "h{}: {ip} is web's, fixed's or the gateway's",
                i + 1
            );
            assert!(addresses.insert(ip), "address {ip} given twice");
            removed_eps.push(ep.to_string());
        }
    }
    assert_eq!(addresses.len(), 20, "distinct addresses: {addresses:?}");
    eprintln!("20 concurrent containers: {addresses:?}");

    // Removed: both agents list only the remaining endpoints, and their veths are gone.
    std::thread::scope(|s| {
        for (i, ids) in ids.iter().enumerate() {
            let dc = &dc;
            s.spawn(move || {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                dc.docker_ok(i, &args);
            });
        }
    });
    phases.done("docker rm -f of the 20");
    let remaining: BTreeSet<String> = [web_ep.clone(), fixed_ep.clone()].into();
    let removed_links: BTreeSet<String> = removed_eps.iter().map(|e| vxv_of(e)).collect();
    let mut last = None;
    let settled = wait_for_or(Duration::from_secs(5), || {
        let listed: Vec<BTreeSet<String>> = (0..2)
            .map(|i| endpoints(dc.agent(i), "prod").into_keys().collect())
            .collect();
        let left_links: Vec<BTreeSet<String>> = (0..2)
            .map(|i| &vxv_links(&dc, i) & &removed_links)
            .collect();
        let ok =
            listed.iter().all(|l| *l == remaining) && left_links.iter().all(BTreeSet::is_empty);
        last = Some((listed, left_links));
        ok
    });
    assert!(
        settled,
        "5 s after docker rm -f of 20 containers (endpoints listed on h1, h2; their vxv links \
         left on h1, h2; expected only web's {web_ep} and fixed's {fixed_ep}): {last:#?}"
    );
    phases.done("removed endpoints gone on both agents");

    // docker run → first cross-host ping, 20 times (printed, not asserted).
    // The container prints its clock when it starts and when the first ping is answered: the
    // second minus the first is the part the network adds after Docker started the container.
    let script = format!(
        "cut -d' ' -f1 /proc/uptime; \
         timeout 20 sh -c 'until ping -c 1 -W 1 {web_ip} >/dev/null 2>&1; do :; done' \
         && cut -d' ' -f1 /proc/uptime"
    );
    let mut latencies = Vec::new();
    let mut after_start = Vec::new();
    for _ in 0..20 {
        let t0 = boottime();
        let out = run_in_prod(&dc, 1, None, &["sh", "-c", &script]);
        let text = output_text(&out);
        assert!(out.status.success(), "docker run → first ping: {text}");
        let clocks: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|t| {
                t.parse()
                    .unwrap_or_else(|_| panic!("docker run → first ping: {text}"))
            })
            .collect();
        let [started, t1] = clocks[..] else {
            panic!("docker run → first ping: {text}")
        };
        latencies.push((t1 - t0) * 1000.0);
        after_start.push((t1 - started) * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    after_start.sort_by(f64::total_cmp);
    eprintln!(
        "docker run → first cross-host ping: p50 {:.0} ms, p99 {:.0} ms (n={})",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.len()
    );
    eprintln!(
        "  of which after the container's first instruction: p50 {:.0} ms, p99 {:.0} ms",
        percentile(&after_start, 50.0),
        percentile(&after_start, 99.0),
    );
    eprintln!(
        "  (t0: CLOCK_BOOTTIME before `docker run` on h2; t1: the container's /proc/uptime at its \
         first answered ping, 10 ms resolution; includes creating and starting the container)"
    );
    phases.done("docker run → first ping, 20 times");

    // docker network connect / disconnect: a container of a network of its own (no
    // vxnet.network option) joins prod on the fly, reaches web across hosts, and leaves.
    let side = dc.docker_ok(
        1,
        &[
            "network",
            "create",
            "-d",
            DRIVER,
            "--ipam-driver",
            DRIVER,
            "--subnet",
            "10.33.0.0/24",
            "side",
        ],
    );
    let side_name = format!("docker-{}", &side.trim()[..12]);
    assert!(
        network_names(dc.agent(0)).contains(&side_name),
        "a Docker network without vxnet.network is vxnet network {side_name}"
    );
    dc.docker_ok(
        1,
        &[
            "run",
            "-d",
            "--network",
            "side",
            "--name",
            "multi",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    dc.docker_ok(1, &["network", "connect", "prod", "multi"]);
    let multi_ep = dc
        .docker_ok(
            1,
            &[
                "inspect",
                "-f",
                "{{(index .NetworkSettings.Networks \"prod\").EndpointID}}",
                "multi",
            ],
        )
        .trim()
        .to_string();
    assert!(
        endpoints(dc.agent(0), "prod").contains_key(&multi_ep),
        "h1 lists multi's prod endpoint {multi_ep}"
    );
    let web_now = dc.container_ip(0, "web");
    let ping = dc.docker(
        1,
        &[
            "exec",
            "multi",
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            &web_now.to_string(),
        ],
    );
    assert!(
        ping.status.success(),
        "multi → web after docker network connect: {}",
        output_text(&ping)
    );
    dc.docker_ok(1, &["network", "disconnect", "prod", "multi"]);
    assert!(
        wait_for_or(Duration::from_secs(5), || {
            (0..2).all(|i| !endpoints(dc.agent(i), "prod").contains_key(&multi_ep))
        }),
        "multi's prod endpoint still listed after docker network disconnect"
    );
    let ping = dc.docker(
        1,
        &[
            "exec",
            "multi",
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            &web_now.to_string(),
        ],
    );
    assert!(
        !ping.status.success(),
        "multi still reaches web after disconnect: {}",
        output_text(&ping)
    );
    dc.docker_ok(1, &["rm", "-f", "multi"]);
    dc.docker_ok(1, &["network", "rm", "side"]);
    assert!(
        wait_for_or(Duration::from_secs(5), || {
            !network_names(dc.agent(0)).contains(&side_name)
        }),
        "{side_name} still there after docker network rm side"
    );
    phases.done("docker network connect/disconnect");

    // A dockerd restart: web stops; Docker still knows prod; web starts again and is reached.
    let restart = Instant::now();
    must(dc.daemons[0].restart());
    eprintln!(
        "h1 dockerd restarted in {:.1} s",
        restart.elapsed().as_secs_f64()
    );
    let docker_names = dc.docker_ok(0, &["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        docker_names.lines().any(|n| n == "prod"),
        "h1's docker network ls after the restart: {docker_names}"
    );
    dc.docker_ok(0, &["start", "web"]);
    let web_ip = dc.container_ip(0, "web");
    assert!(
        in_subnet(web_ip),
        "web's address after the restart: {web_ip}"
    );
    assert_reaches(
        &dc,
        1,
        web_ip,
        Duration::from_secs(15),
        "h2 → web after h1's dockerd restart",
    );
    let out = run_in_prod(
        &dc,
        1,
        Some(Duration::from_secs(10)),
        &["wget", "-qO-", &web_ip.to_string()],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        PAGE,
        "wget web after the restart: {}",
        output_text(&out)
    );
    run_sleeper(&dc, 0, "after");
    let after_ip = dc.container_ip(0, "after");
    assert_reaches(
        &dc,
        1,
        after_ip,
        Duration::from_secs(15),
        "h2 → a new container on h1 after the restart",
    );
    phases.done("h1 dockerd restart");

    // docker network rm on both: the vxnet network goes with the last one.
    for i in 0..2 {
        remove_all_containers(&dc, i);
    }
    dc.docker_ok(1, &["network", "rm", "prod"]);
    let names = network_names(dc.agent(0));
    assert!(
        names.contains("prod"),
        "prod went while h1's Docker still has it: {names:?}"
    );
    dc.docker_ok(0, &["network", "rm", "prod"]);
    wait_for(
        "prod to go after the last docker network rm",
        Duration::from_secs(5),
        || {
            (0..2)
                .all(|i| !network_names(dc.agent(i)).contains("prod"))
                .then_some(())
        },
    );
    phases.done("docker network rm on both");

    // A network made with the CLI stays when Docker stops using it.
    dc.agent(0)
        .vxnet(&["network", "create", "--subnet", "10.32.0.0/24", "cli1"]);
    dc.docker_ok(
        0,
        &create_args("10.32.0.0/24", "vxnet.network=cli1", "cli1"),
    );
    dc.docker_ok(0, &["network", "rm", "cli1"]);
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..2 {
        let names = network_names(dc.agent(i));
        assert!(
            names.contains("cli1"),
            "h{}: the CLI's network cli1 went with Docker's: {names:?}",
            i + 1
        );
    }
    phases.done("CLI network outlives Docker's use");
}

/// Polls `f` every 100 ms until it returns true or `timeout` passes; its last answer.
pub(crate) fn wait_for_or(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `docker run -d --network prod --name web local/busybox httpd -f -p 80 -h /www` on h1.
pub(crate) fn run_web(dc: &DockerCluster) {
    dc.docker_ok(
        0,
        &[
            "run",
            "-d",
            "--network",
            "prod",
            "--name",
            "web",
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
}

/// `docker run --rm --network prod local/busybox CMD...` on host `i`, killed after `timeout`
/// if one is given; the output whatever the status.
pub(crate) fn run_in_prod(
    dc: &DockerCluster,
    i: usize,
    timeout: Option<Duration>,
    cmd: &[&str],
) -> std::process::Output {
    let mut args = vec!["run", "--rm", "--network", "prod", IMAGE];
    args.extend_from_slice(cmd);
    match timeout {
        Some(timeout) => dc.docker_timeout(i, timeout, &args),
        None => dc.docker(i, &args),
    }
}

/// `docker run -d --network prod --name NAME local/busybox sleep 600` on host `i`; the
/// container's id.
pub(crate) fn run_sleeper(dc: &DockerCluster, i: usize, name: &str) -> String {
    dc.docker_ok(
        i,
        &[
            "run",
            "-d",
            "--network",
            "prod",
            "--name",
            name,
            IMAGE,
            "sleep",
            "600",
        ],
    )
}
