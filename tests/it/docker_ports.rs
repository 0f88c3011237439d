//! Docker's `-p` on a vxnet network (`support::docker`: a real dockerd per host, the agent
//! serving its plugin socket), exactly as a user types it:
//!
//! ```text
//! docker run -d -p 8080:80 --network prod --name web local/busybox httpd -f -p 80 -h /www   # host 1
//! curl http://192.168.200.1:8080/                                   # from anywhere that routes there
//! ```
//!
//! The page is fetched from an outside namespace (192.168.200.100 on the underlay switch), from
//! h1 itself and from a container on h2; `vxnet network inspect prod` shows the endpoint's
//! `Ports`; a second `-p 8080:80` on h1 is refused with Docker's `port is already allocated`
//! and leaves nothing; h2 may use 8080 too; `docker rm -f web` closes the port.
//!
//! Without dockerd on the machine (or one that does not answer) the test prints why and passes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::docker::{
    Phases, SUBNET, create_args, endpoints, remove_all_containers, run_in_prod, vxv_links,
    wait_for_or,
};
use crate::ports::{OUTSIDE_IP, ports, ports_of, ruleset, ruleset_diff};
use crate::support::docker::*;
use crate::support::*;

const H1: &str = "192.168.200.1";
const H2: &str = "192.168.200.2";

/// Prints the body of GET URL, or `error: ...`.
const HTTP_GET: &str = r#"
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())
except Exception as e:
    print("error:", e)
"#;

/// The body of `http://HOST:PORT/` fetched from namespace `ns` (`error: ...` on failure).
fn http_get(dc: &DockerCluster, ns: &str, host: &str, port: u16) -> String {
    let script = dc.cluster.dir().join("http_get.py");
    std::fs::write(&script, HTTP_GET).expect("write http_get.py");
    let out = sh_output(&format!(
        "ip netns exec {ns} python3 {} http://{host}:{port}/",
        script.display()
    ));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls [`http_get`] until it gives the page (`want_page`) or an error (not); panics with the
/// last answer after `timeout`. How long it took.
fn wait_http(
    dc: &DockerCluster,
    what: &str,
    (ns, host, port): (&str, &str, u16),
    want_page: bool,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    let ok = wait_for_or(timeout, || {
        last = http_get(dc, ns, host, port);
        if want_page {
            last == PAGE
        } else {
            last.starts_with("error:")
        }
    });
    assert!(
        ok,
        "{what}: GET http://{host}:{port}/ from {ns}: expected {}, got {last:?} after {:.1} s",
        if want_page { "the page" } else { "an error" },
        start.elapsed().as_secs_f64()
    );
    start.elapsed()
}

/// `docker run --rm --network prod local/busybox wget -qO- http://HOST:PORT/` on host `i`,
/// bounded from outside: the page or `error: ...`.
fn wget_from_container(dc: &DockerCluster, i: usize, host: &str, port: u16) -> String {
    let url = format!("http://{host}:{port}/");
    let out = run_in_prod(
        dc,
        i,
        Some(Duration::from_secs(10)),
        &["wget", "-qO-", &url],
    );
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        format!("error: {}", output_text(&out).trim())
    }
}

/// `docker run -d [-p SPEC] --network prod --name NAME local/busybox httpd -f -p 80 -h /www` on
/// host `i`; the output whatever the status.
fn run_httpd(dc: &DockerCluster, i: usize, name: &str, publish: &str) -> std::process::Output {
    dc.docker(
        i,
        &[
            "run",
            "-d",
            "-p",
            publish,
            "--network",
            "prod",
            "--name",
            name,
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    )
}

/// Whether `port` appears as a number in the `inet vxnet` table of `ns`.
fn table_mentions(ns: &str, port: u16) -> bool {
    let table = sh(&format!("ip netns exec {ns} nft list table inet vxnet"));
    table
        .split(|c: char| !c.is_ascii_digit())
        .any(|w| w == port.to_string())
}

#[test]
fn docker_published_ports() {
    let mut phases = Phases::new("dkp");
    let Some(mut dc) = DockerCluster::new("docker_published_ports", "dkp", 2) else {
        return;
    };
    phases.done("2 hosts, 2 dockerds, 2 agents");
    for i in 0..2 {
        dc.docker_ok(i, &create_args(SUBNET, "vxnet.network=prod", "prod"));
    }
    let outside = format!("{}-out", dc.cluster.prefix);
    dc.cluster.add_netns(&outside);
    dc.cluster.plug(&outside, "pout");
    sh(&format!("ip -n {outside} addr add {OUTSIDE_IP}/24 dev ul0"));
    let h1 = dc.host_ns(0).to_string();
    phases.done("prod on both daemons, the outside namespace");

    // docker run -p 8080:80 on h1: the page from outside, from h1 itself, from a container on h2.
    let start = Instant::now();
    let out = run_httpd(&dc, 0, "web", "8080:80");
    assert!(
        out.status.success(),
        "docker run -d -p 8080:80 --network prod --name web on h1: {}\n--- dockerd log tail \
         ---\n{}\n--- agent log tail ---\n{}",
        output_text(&out),
        dc.daemons[0].log_tail(25),
        dc.agent(0).log_tail(25)
    );
    let ran = start.elapsed();
    let web_ep = dc.endpoint_id(0, "web");
    let web_ip = dc.container_ip(0, "web");
    let took = wait_http(
        &dc,
        "outside → h1:8080",
        (&outside, H1, 8080),
        true,
        Duration::from_secs(15),
    );
    eprintln!(
        "web {web_ip} (endpoint {web_ep}): docker run -p 8080:80 {:.1} s, the page from \
         outside {:.1} s later",
        ran.as_secs_f64(),
        took.as_secs_f64()
    );
    assert_eq!(http_get(&dc, &h1, H1, 8080), PAGE, "h1 itself → {H1}:8080");
    let mut last = String::new();
    let fetched = wait_for_or(Duration::from_secs(20), || {
        last = wget_from_container(&dc, 1, H1, 8080);
        last == PAGE
    });
    assert!(fetched, "a container on h2 → {H1}:8080: {last:?}");
    phases.done("the page from outside, h1 and a container on h2");

    // vxnet network inspect prod shows web's Ports, on both agents.
    let want = ports(&[("80/tcp", "0.0.0.0", "8080")]);
    for i in 0..2 {
        let mut got = None;
        let shown = wait_for_or(Duration::from_secs(10), || {
            got = endpoints(dc.agent(i), "prod")
                .get(&web_ep)
                .map(|e| (ports_of(e), e.clone()));
            got.as_ref().is_some_and(|(p, _)| *p == want)
        });
        assert!(
            shown,
            "h{}: vxnet network inspect prod, web's endpoint {web_ep}: expected Ports {want}, \
             got {got:#?}",
            i + 1
        );
    }
    let docker_ports = dc.docker(
        0,
        &["inspect", "-f", "{{json .NetworkSettings.Ports}}", "web"],
    );
    eprintln!(
        "docker inspect web: NetworkSettings.Ports = {}",
        output_text(&docker_ports).trim()
    );
    phases.done("inspect Ports on both agents");

    // A second -p 8080:80 on h1: refused with Docker's words, nothing left.
    let rules = ruleset(&h1);
    let links = vxv_links(&dc, 0);
    let out = run_httpd(&dc, 0, "web2", "8080:80");
    let text = output_text(&out);
    eprintln!("second docker run -p 8080:80 on h1: {}", text.trim());
    assert!(
        !out.status.success(),
        "a second -p 8080:80 on h1 was accepted: {text}"
    );
    assert!(
        text.contains("port is already allocated"),
        "the refusal says `port is already allocated`: {text}"
    );
    let only_web: BTreeSet<String> = [web_ep.clone()].into();
    let mut listed = BTreeSet::new();
    let settled = wait_for_or(Duration::from_secs(5), || {
        listed = (0..2)
            .flat_map(|i| endpoints(dc.agent(i), "prod").into_keys())
            .collect();
        listed == only_web && vxv_links(&dc, 0) == links
    });
    assert!(
        settled,
        "5 s after the refused run: endpoints listed {listed:?} (expected only web's), vxv \
         links on h1 {:?} (before: {links:?})",
        vxv_links(&dc, 0)
    );
    let now = ruleset(&h1);
    assert!(
        now == rules,
        "the refused run changed h1's inet vxnet table:\n{}",
        ruleset_diff(&rules, &now)
    );
    assert_eq!(
        http_get(&dc, &outside, H1, 8080),
        PAGE,
        "web after the refusal"
    );
    let _ = dc.docker(0, &["rm", "-f", "web2"]);
    phases.done("second -p 8080:80 on h1 refused");

    // h2 may publish 8080 too.
    let out = run_httpd(&dc, 1, "web_h2", "8080:80");
    assert!(
        out.status.success(),
        "docker run -p 8080:80 on h2: {}",
        output_text(&out)
    );
    wait_http(
        &dc,
        "outside → h2:8080",
        (&outside, H2, 8080),
        true,
        Duration::from_secs(15),
    );
    assert_eq!(http_get(&dc, &outside, H1, 8080), PAGE, "h1:8080 still web");
    let h2_ep = dc.endpoint_id(1, "web_h2");
    let shown = endpoints(dc.agent(0), "prod")
        .get(&h2_ep)
        .map(ports_of)
        .unwrap_or(json!(null));
    assert_eq!(shown, want, "h1 inspects web_h2's Ports");
    phases.done("8080 on h2 too");

    // docker rm -f web closes h1's port (h2's stays); then it is free again.
    let start = Instant::now();
    dc.docker_ok(0, &["rm", "-f", "web"]);
    let rm = start.elapsed();
    let closed = wait_http(
        &dc,
        "h1:8080 after docker rm -f web",
        (&outside, H1, 8080),
        false,
        Duration::from_secs(10),
    );
    eprintln!(
        "docker rm -f web: {:.1} s, port closed {:.1} s later",
        rm.as_secs_f64(),
        closed.as_secs_f64()
    );
    assert!(
        wait_for_or(Duration::from_secs(5), || {
            (0..2).all(|i| !endpoints(dc.agent(i), "prod").contains_key(&web_ep))
        }),
        "web's endpoint {web_ep} still listed after docker rm -f web"
    );
    assert!(
        !table_mentions(&h1, 8080),
        "8080 still in h1's inet vxnet table after docker rm -f web:\n{}",
        sh(&format!("ip netns exec {h1} nft list table inet vxnet"))
    );
    assert_eq!(http_get(&dc, &outside, H2, 8080), PAGE, "h2:8080 stays");
    let out = run_httpd(&dc, 0, "web3", "8080:80");
    assert!(
        out.status.success(),
        "docker run -p 8080:80 on h1 once web is gone: {}",
        output_text(&out)
    );
    wait_http(
        &dc,
        "outside → h1:8080 (web3)",
        (&outside, H1, 8080),
        true,
        Duration::from_secs(15),
    );
    for i in 0..2 {
        remove_all_containers(&dc, i);
    }
    phases.done("docker rm -f closes the port, free again");
}
