//! A dockerd that crashes leaves nothing behind in vxnet: the endpoint of a container whose
//! sandbox died without Leave or DeleteEndpoint is removed cluster-wide and its address
//! released (after the agent's 30 s grace without the endpoint's host-side veth), and an address
//! a runtime reserved and never used is released (after 60 s without an endpoint). Then the
//! dockerd starts again and works (real dockerds, as in `docker`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::docker::*;
use crate::support::docker::*;
use crate::support::*;

/// One request to plugin socket `socket`: (HTTP status, the answer's JSON body).
fn plugin_call(dir: &Path, socket: &Path, path: &str, body: &Value) -> (u64, Value) {
    let socket = socket.display().to_string();
    let answer = plugin_client_in(dir, &["call", &socket, path], &body.to_string());
    let text = answer["body"].as_str().unwrap_or("");
    let body = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{path}: answer is not JSON ({e}): {answer}"));
    (answer["status"].as_u64().unwrap_or(0), body)
}

/// The address of an `IPv4Address` (without a prefix length, if it has one).
fn bare(address: &str) -> &str {
    address.split('/').next().unwrap_or(address)
}

/// `vxnet network inspect NETWORK` on `agent`: its "Reservations" as address → host.
fn reservations(agent: &Agent, network: &str) -> BTreeMap<String, String> {
    let Some(net) = agent.inspect(network) else {
        panic!(
            "vxnet network inspect {network} on {} failed: {}",
            agent.name,
            output_text(&agent.cli(&["network", "inspect", network]))
        );
    };
    let Some(list) = net["Reservations"].as_array() else {
        panic!(
            "{}: vxnet network inspect {network} has no Reservations list: {net:#}",
            agent.name
        );
    };
    list.iter()
        .map(|r| {
            (
                bare(r["IPv4Address"].as_str().unwrap_or("")).to_string(),
                r["Host"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Both agents' view of `prod`: (endpoints: EndpointID → (address, host); reservations).
type View = (BTreeMap<String, (String, String)>, BTreeMap<String, String>);

fn views(dc: &DockerCluster) -> [View; 2] {
    [0, 1].map(|i| {
        let eps = endpoints(dc.agent(i), "prod")
            .into_iter()
            .map(|(id, e)| {
                (
                    id,
                    (
                        bare(e["IPv4Address"].as_str().unwrap_or("")).to_string(),
                        e["Host"].as_str().unwrap_or("").to_string(),
                    ),
                )
            })
            .collect();
        (eps, reservations(dc.agent(i), "prod"))
    })
}

/// The lines of `path` from byte `from` on that contain one of `needles`.
fn log_lines(path: &Path, from: usize, needles: &[&str]) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
    text.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn file_len(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX))
}

#[test]
fn docker_crash_leaves_nothing_behind() {
    let mut phases = Phases::new("dkc");
    let Some(mut dc) = DockerCluster::new("docker_crash_leaves_nothing_behind", "dkc", 2) else {
        return;
    };
    phases.done("2 hosts, 2 dockerds, 2 agents");

    // 1. web on h1, victim on h2.
    for i in 0..2 {
        dc.docker_ok(i, &create_args(SUBNET, "vxnet.network=prod", "prod"));
    }
    run_web(&dc);
    let web_ip = dc.container_ip(0, "web");
    let web_ep = dc.endpoint_id(0, "web");
    let victim_id = run_sleeper(&dc, 1, "victim");
    let victim_ip = dc.container_ip(1, "victim");
    let victim_ep = dc.endpoint_id(1, "victim");
    let victim_addr = victim_ip.to_string();
    let web_addr = web_ip.to_string();
    eprintln!("web: {web_ip}, endpoint {web_ep}; victim: {victim_ip}, endpoint {victim_ep}");
    assert!(
        in_subnet(web_ip) && in_subnet(victim_ip),
        "addresses in {SUBNET}"
    );
    let mut last = None;
    let listed = wait_for_or(Duration::from_secs(5), || {
        let v = views(&dc);
        let ok = v.iter().all(|(eps, res)| {
            eps.get(&victim_ep) == Some(&(victim_addr.clone(), "h2".to_string()))
                && eps.get(&web_ep) == Some(&(web_addr.clone(), "h1".to_string()))
                && res.get(&victim_addr).map(String::as_str) == Some("h2")
                && res.get(&web_addr).map(String::as_str) == Some("h1")
        });
        last = Some(v);
        ok
    });
    assert!(
        listed,
        "both agents list victim's endpoint {victim_ep} ({victim_ip}, h2) and web's, and their \
         reservations (h2, h1); (endpoints, reservations) on h1, h2: {last:#?}"
    );
    let victim_link = vxv_of(&victim_ep);
    assert!(
        vxv_links(&dc, 1).contains(&victim_link),
        "h2 has victim's host-side veth {victim_link}: {:?}",
        vxv_links(&dc, 1)
    );
    phases.done("prod on both daemons, web on h1, victim on h2, both listed");

    // 2. A leaked reservation: an address asked for on h2's plugin socket and never used.
    let socket = dc.daemons[1].plugin_socket(DRIVER);
    let leaked_at = Instant::now();
    let (status, answer) = plugin_call(
        dc.cluster.dir(),
        &socket,
        "/IpamDriver.RequestAddress",
        &json!({"PoolID": format!("vxnet:{SUBNET}"), "Address": "", "Options": null}),
    );
    assert_eq!(status, 200, "RequestAddress on h2: {answer}");
    let leaked = answer["Address"].as_str().unwrap_or("");
    assert!(
        leaked.ends_with("/24"),
        "RequestAddress answers an address with its prefix length: {answer}"
    );
    let leaked: Ipv4Addr = bare(leaked)
        .parse()
        .unwrap_or_else(|_| panic!("RequestAddress answer: {answer}"));
    assert!(
        in_subnet(leaked) && leaked != web_ip && leaked != victim_ip,
        "leaked address {leaked} (web {web_ip}, victim {victim_ip})"
    );
    let leaked_addr = leaked.to_string();
    eprintln!("leaked reservation: {leaked} ({answer})");
    let mut last = None;
    let reserved = wait_for_or(Duration::from_secs(5), || {
        let v = views(&dc);
        let ok = v.iter().all(|(eps, res)| {
            res.get(&leaked_addr).map(String::as_str) == Some("h2")
                && eps.values().all(|(ip, _)| *ip != leaked_addr)
        });
        last = Some(v);
        ok
    });
    assert!(
        reserved,
        "both agents list the reservation of {leaked} (h2) and no endpoint with it; (endpoints, \
         reservations) on h1, h2: {last:#?}"
    );
    phases.done("leaked reservation on h2");

    // 3. Crash: dockerd killed, victim's processes killed, its network namespace gone.
    let holder = dc.daemons[1].holder_pid().to_string();
    let mounts = dc.daemons[1].netns_mounts();
    let in_holder = |args: &[&str]| {
        Command::new("nsenter")
            .args(["-t", &holder, "-m"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn nsenter")
    };
    let needle = format!("inet {victim_ip}/");
    let victims: Vec<&Path> = mounts
        .iter()
        .map(|m| m.as_path())
        .filter(|m| {
            let net = format!("--net={}", m.display());
            let out = in_holder(&["nsenter", &net, "ip", "-o", "-4", "addr", "show"]);
            String::from_utf8_lossy(&out.stdout).contains(&needle)
        })
        .collect();
    assert_eq!(
        victims.len(),
        1,
        "exactly one of h2's sandbox namespaces {mounts:?} has {victim_ip}"
    );
    let victim_netns = victims[0].to_path_buf();
    let pids = dc.daemons[1].container_pids(&victim_id);
    assert!(
        !pids.is_empty(),
        "victim's processes (cgroup of {victim_id})"
    );
    eprintln!(
        "h2 sandbox namespaces {mounts:?}; victim's: {}; victim's processes {pids:?}",
        victim_netns.display()
    );
    let crashed = Instant::now();
    assert!(dc.daemons[1].kill(), "h2's dockerd was running");
    for &pid in &pids {
        sh(&format!("kill -9 {pid} 2>/dev/null || true"));
    }
    wait_for("victim's processes to die", Duration::from_secs(10), || {
        dc.daemons[1]
            .container_pids(&victim_id)
            .is_empty()
            .then_some(())
    });
    let out = in_holder(&["umount", &victim_netns.display().to_string()]);
    assert!(
        out.status.success(),
        "umount {} in h2's holder: {}",
        victim_netns.display(),
        output_text(&out)
    );
    wait_for(
        "victim's host-side veth to go",
        Duration::from_secs(10),
        || (!vxv_links(&dc, 1).contains(&victim_link)).then_some(()),
    );
    let unlinked = Instant::now();
    eprintln!(
        "{victim_link} gone from h2 {:.1} s after the kill",
        (unlinked - crashed).as_secs_f64()
    );
    phases.done("h2's dockerd killed, victim's processes killed, its netns unmounted");

    // 4. The agents clean up: the endpoint (30 s without its veth) and the leaked reservation
    // (60 s unused), the waits overlapping.
    let endpoint_deadline = unlinked + Duration::from_secs(60);
    let leak_deadline = leaked_at + Duration::from_secs(100);
    let mut endpoint_gone: Option<Instant> = None;
    let mut leak_gone: Option<Instant> = None;
    loop {
        let v = views(&dc);
        let now = Instant::now();
        if endpoint_gone.is_none()
            && v.iter()
                .all(|(eps, res)| !eps.contains_key(&victim_ep) && !res.contains_key(&victim_addr))
        {
            endpoint_gone = Some(now);
            eprintln!(
                "victim's endpoint and reservation gone from both agents {:.1} s after its veth \
                 went ({:.1} s after the kill)",
                (now - unlinked).as_secs_f64(),
                (now - crashed).as_secs_f64()
            );
        }
        if leak_gone.is_none() && v.iter().all(|(_, res)| !res.contains_key(&leaked_addr)) {
            leak_gone = Some(now);
            eprintln!(
                "leaked reservation {leaked} gone from both agents {:.1} s after RequestAddress",
                (now - leaked_at).as_secs_f64()
            );
        }
        if endpoint_gone.is_some() && leak_gone.is_some() {
            break;
        }
        let h2_log = || {
            log_lines(
                &dc.agent(1).log,
                0,
                &["runtime endpoint has no interface", "releasing it"],
            )
        };
        assert!(
            endpoint_gone.is_some() || now < endpoint_deadline,
            "victim's endpoint {victim_ep} ({victim_ip}) still listed 60 s after its veth went; \
             (endpoints, reservations) on h1, h2: {v:#?}\nh2's clean-up log lines: {:#?}",
            h2_log()
        );
        assert!(
            leak_gone.is_some() || now < leak_deadline,
            "leaked reservation {leaked} still listed 100 s after RequestAddress; (endpoints, \
             reservations) on h1, h2: {v:#?}\nh2's clean-up log lines: {:#?}",
            h2_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for line in log_lines(
        &dc.agent(1).log,
        0,
        &["runtime endpoint has no interface", "releasing it"],
    ) {
        eprintln!("h2 agent: {line}");
    }
    // Only those two went: web's endpoint and reservation stay.
    for (i, (eps, res)) in views(&dc).iter().enumerate() {
        assert_eq!(
            eps.keys().collect::<Vec<_>>(),
            vec![&web_ep],
            "h{}: endpoints after the clean-up: {eps:#?}",
            i + 1
        );
        assert_eq!(
            res.keys().collect::<Vec<_>>(),
            vec![&web_addr],
            "h{}: reservations after the clean-up: {res:#?}",
            i + 1
        );
    }
    phases.done("victim's endpoint and the leaked reservation cleaned up");

    // 5. Recovery: h2's dockerd starts again on the same directories and works.
    let agent_log_at = file_len(&dc.agent(1).log);
    let dockerd_log_at = file_len(&dc.daemons[1].log_path());
    let restarted = Instant::now();
    must(dc.daemons[1].start_again());
    eprintln!(
        "h2's dockerd started again in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    let docker_names = dc.docker_ok(1, &["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        docker_names.lines().any(|n| n == "prod"),
        "h2's docker network ls after the restart: {docker_names}"
    );
    eprintln!(
        "victim after the restart: {}",
        dc.docker_ok(
            1,
            &[
                "ps",
                "-a",
                "--filter",
                "name=victim",
                "--format",
                "{{.Status}}"
            ]
        )
    );
    let (ok, text) = docker_ping(&dc, 1, web_ip, 2);
    assert!(
        ok,
        "docker run --rm --network prod {IMAGE} ping -c 2 -W 1 {web_ip} on h2 after the \
         restart: {text}\n--- h2 dockerd log tail ---\n{}\n--- h2 agent log tail ---\n{}",
        dc.daemons[1].log_tail(30),
        dc.agent(1).log_tail(30)
    );
    eprintln!("h2 → web after the restart: {:?}", ping_counts(&text));
    phases.done("h2's dockerd started again, ping from h2 to web");

    // What dockerd did about the stale endpoint on restart.
    let plugin_lines = log_lines(&dc.agent(1).log, agent_log_at, &["docker plugin:"]);
    eprintln!(
        "h2 agent, refused plugin calls since the restart ({}):",
        plugin_lines.len()
    );
    for line in &plugin_lines {
        eprintln!("  {line}");
    }
    let short_ep = &victim_ep[..12];
    let dockerd_lines = log_lines(
        &dc.daemons[1].log_path(),
        dockerd_log_at,
        &[
            short_ep,
            &victim_id[..12],
            "vxnet",
            "DeleteEndpoint",
            "ReleaseAddress",
            "level=error",
            "level=warn",
        ],
    );
    eprintln!(
        "h2 dockerd log since the restart, lines about victim, vxnet, errors ({}):",
        dockerd_lines.len()
    );
    for line in &dockerd_lines {
        eprintln!("  {line}");
    }

    // Nothing came back, nothing leaked: the ping's container is gone with its address.
    let mut last = None;
    let settled = wait_for_or(Duration::from_secs(10), || {
        let v = views(&dc);
        let ok = v
            .iter()
            .all(|(eps, res)| eps.keys().eq([&web_ep]) && res.keys().eq([&web_addr]));
        last = Some(v);
        ok
    });
    assert!(
        settled,
        "after the restart and the ping, only web's endpoint and reservation are listed; \
         (endpoints, reservations) on h1, h2: {last:#?}"
    );
    for agent in &dc.cluster.agents {
        let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panic")).collect();
        assert!(
            panics.is_empty(),
            "{}'s log mentions a panic: {panics:#?}",
            agent.name
        );
    }
    phases.done("nothing left, no panic");
}
