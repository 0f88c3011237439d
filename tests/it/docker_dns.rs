//! vxnet's embedded DNS as the runtimes see it: real dockerds (`support::docker`) and the CNI
//! plugin invoked as a runtime does (`support::cni`).
//!
//! The Docker user story, exactly as typed:
//!
//! ```text
//! docker network create -d vxnet --ipam-driver vxnet --subnet 10.30.0.0/24 -o vxnet.network=prod prod  # each daemon
//! vxnet network connect --alias db prod c1                                  # a CLI netns on host 1
//! docker run --rm --network prod --dns 10.30.0.1 busybox nslookup c1        # host 2: c1's address
//! docker run --rm --network prod --dns 10.30.0.1 busybox ping -c1 db        # host 2
//! docker network connect --driver-opt vxnet.name=web --driver-opt '"vxnet.alias=api,www"' prod ctr  # host 1
//! ip netns exec c1 dig +short web @10.30.0.1                                 # ctr's prod address
//! ip netns exec c1 ping -c1 api                                              # no flags: the agent wrote c1's resolv.conf
//! ```
//!
//! Docker's CLI splits `--driver-opt` values at commas (a `strings` flag), so a list of aliases
//! must be quoted as one CSV field, as above; `--driver-opt vxnet.alias=api,www` unquoted is
//! refused by the CLI ("invalid key/value pair format in driver options"). Docker 20.10's
//! `docker run` takes no per-network driver options: a container named from the start with
//! prod as its only network is `docker create --network prod`, `docker network disconnect`,
//! `docker network connect --driver-opt vxnet.name=…`, `docker start`.
//!
//! Docker containers keep Docker's own resolver (127.0.0.11); `--dns <the vxnet network's
//! gateway>` makes vxnet's resolver its upstream (Docker forwards from the container's
//! namespace, so vxnet sees the container's own address and answers). Without `--dns`, Docker
//! forwards to the host's resolv.conf servers and vxnet names do not resolve: that is the
//! documented behaviour, checked here. Docker's own names (`--name`, `--network-alias`) are
//! Docker's: they are not handed to network drivers, so vxnet names a Docker endpoint only
//! through `--driver-opt vxnet.name=…` / `vxnet.alias=…`.
//!
//! Namespaces are the harness's (`vx<pid><tag>-cN`): a CLI sandbox's DNS name is its netns
//! name, so `c1` above is `vx1234ddk-c1` here. The agents of a Docker cluster run in their
//! dockerd's private mount namespace, where a namespace named after that namespace was made is
//! invisible (mounts do not propagate into it); [`share_netns`] bind-mounts it there, as it
//! would simply exist on a real host.
//!
//! Without dockerd on the machine the Docker test prints why and passes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cni::{GATEWAY, setup};
use crate::docker::{Phases, SUBNET, create_args, in_subnet, wait_for_or};
use crate::support::cni::*;
use crate::support::docker::*;
use crate::support::*;

/// Where `ip netns exec NAME` finds NAME's own resolv.conf (the agent writes it for a CLI
/// sandbox; the harness removes `/etc/netns/NS` with namespace NS).
const ETC_NETNS: &str = "/etc/netns";
/// The contract's bound for a connect or disconnect to show in every host's answers.
const PROPAGATION: Duration = Duration::from_secs(1);

/// `dig +time=2 +tries=1 ARGS` in namespace `ns`: stdout and stderr.
fn dig(cluster: &Cluster, ns: &str, args: &str) -> String {
    output_text(&cluster.exec(ns, &format!("dig +time=2 +tries=1 {args}")))
}

/// The IPv4 addresses of `dig +short NAME @SERVER` in `ns` (sorted).
fn dig_a(cluster: &Cluster, ns: &str, name: &str, server: &str) -> Vec<Ipv4Addr> {
    let text = dig(cluster, ns, &format!("+short {name} @{server}"));
    let mut ips: Vec<Ipv4Addr> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    ips.sort();
    ips
}

/// The `status:` of `dig NAME @SERVER` in `ns` (`NOERROR`, `NXDOMAIN`, …), with the output.
fn dig_status(cluster: &Cluster, ns: &str, name: &str, server: &str) -> (String, String) {
    let text = dig(cluster, ns, &format!("{name} @{server}"));
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no status)")
        .to_string();
    (status, text)
}

/// Polls `check` (its verdict and what it saw) until it holds, for at most the contract's
/// [`PROPAGATION`] bound, not longer; prints how long it took and panics if it did not hold.
fn within_propagation(what: &str, mut check: impl FnMut() -> (bool, String)) {
    let start = Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        let (ok, seen) = check();
        let took = start.elapsed();
        if ok {
            eprintln!(
                "{what}: after {:.0} ms ({polls} poll(s); bound {PROPAGATION:?})",
                took.as_secs_f64() * 1e3
            );
            return;
        }
        assert!(
            took < PROPAGATION,
            "{what}: not within {PROPAGATION:?} ({:.0} ms, {polls} polls); last: {seen}",
            took.as_secs_f64() * 1e3
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes named namespace `ns` (made by the test, on the real host) visible in the mount
/// namespace of host `i`'s dockerd, where its agent runs: bind-mounts it over its (empty)
/// file there, as `ip netns add` does on the host. The mount goes with the holder.
fn share_netns(dc: &DockerCluster, i: usize, ns: &str) {
    let holder = dc.daemons[i].holder_pid();
    sh(&format!(
        "nsenter --net=/run/netns/{ns} -- nsenter -t {holder} -m -- \
         mount --bind /proc/self/ns/net /run/netns/{ns}"
    ));
}

/// `docker run --rm --network prod [--dns DNS] local/busybox CMD…` on host `i`, killed after
/// a minute; the output whatever the status.
fn run_prod(dc: &DockerCluster, i: usize, dns: Option<Ipv4Addr>, cmd: &[&str]) -> Output {
    let dns = dns.map(|d| d.to_string());
    let mut args = vec!["run", "--rm", "--network", "prod"];
    if let Some(dns) = &dns {
        args.extend(["--dns", dns.as_str()]);
    }
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    dc.docker_timeout(i, Duration::from_secs(60), &args)
}

/// The answer addresses busybox `nslookup` printed (the `Address:` lines after a `Name:`
/// line; the server's own lines come before it).
fn nslookup_addrs(text: &str) -> Vec<Ipv4Addr> {
    let mut answers = false;
    let mut ips = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Name:") {
            answers = true;
        } else if answers
            && let Some(addr) = line.strip_prefix("Address:")
            && let Ok(ip) = addr.trim().parse()
        {
            ips.push(ip);
        }
    }
    ips.sort();
    ips
}

/// Container `ctr`'s address on Docker network `net` (host `i`).
fn docker_ip_on(dc: &DockerCluster, i: usize, ctr: &str, net: &str) -> Ipv4Addr {
    let ip = dc.docker_ok(
        i,
        &[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            ctr,
        ],
    );
    ip.parse()
        .unwrap_or_else(|_| panic!("{ctr}'s address on {net} (h{}): {ip:?}", i + 1))
}

/// The Docker story, two hosts. A CLI netns on h1 (`--alias db`) is resolved by name from a
/// `docker run --dns <gateway>` container on h2 through Docker's 127.0.0.11 (nslookup and
/// ping, name, alias and `alias.network`); without `--dns` it is not (Docker forwards to the
/// host's servers). A Docker container on h1 connected to prod with `--driver-opt vxnet.name=web
/// --driver-opt vxnet.alias=api,www` is resolved under those names by the CLI netns (dig at
/// the gateway, and plain `getent`/`ping` through the resolv.conf the agent wrote) and by
/// Docker containers on h2 (nslookup, wget by alias); `docker create` + `network connect
/// --driver-opt` + `start` names a container whose only network is prod; `docker network
/// disconnect` takes the names away within 1 s. Docker's own `--name`/`--network-alias` are
/// printed as observed at vxnet's resolver (NXDOMAIN: drivers never see them), not asserted.
#[test]
fn docker_containers_resolve_vxnet_names() {
    let mut phases = Phases::new("ddk");
    let Some(mut dc) = DockerCluster::new("docker_containers_resolve_vxnet_names", "ddk", 2) else {
        return;
    };
    phases.done("2 hosts, 2 dockerds, 2 agents");

    for i in 0..2 {
        dc.docker_ok(i, &create_args(SUBNET, "vxnet.network=prod", "prod"));
    }
    let gw: Ipv4Addr = dc
        .agent(0)
        .inspect("prod")
        .and_then(|n| {
            n["IPAM"]["Config"][0]["Gateway"]
                .as_str()
                .and_then(|g| g.split('/').next()?.parse().ok())
        })
        .expect("prod's gateway in vxnet network inspect");
    assert_eq!(gw, Ipv4Addr::new(10, 30, 0, 1), "prod's gateway");
    let gws = gw.to_string();
    phases.done("docker network create prod on both daemons");

    // c1: a CLI sandbox on h1, named by its netns, alias db.
    let c1 = dc.cluster.container();
    share_netns(&dc, 0, &c1);
    dc.agent(0)
        .vxnet(&["network", "connect", "--alias", "db", "prod", &c1]);
    let c1_ip: Ipv4Addr = dc
        .cluster
        .ipv4_of(&c1, "eth0")
        .parse()
        .expect("c1's address");
    assert!(in_subnet(c1_ip), "c1's address {c1_ip}");
    eprintln!("c1 = {c1} at {c1_ip}, alias db; prod's gateway {gw}");
    assert_eq!(
        dig_a(&dc.cluster, &c1, &c1, &gws),
        vec![c1_ip],
        "c1 resolves its own name at h1's resolver: {}",
        dig(&dc.cluster, &c1, &format!("{c1} @{gw}"))
    );
    phases.done("vxnet network connect --alias db prod c1 on h1");

    // h2: exactly the user's command, in a fresh container (the first endpoint of prod on h2).
    let out = run_prod(&dc, 1, Some(gw), &["nslookup", &c1]);
    let text = output_text(&out);
    eprintln!(
        "h2: docker run --dns {gw} … nslookup {c1}:\n{}",
        text.trim()
    );
    assert_eq!(
        nslookup_addrs(&text),
        vec![c1_ip],
        "docker run --rm --network prod --dns {gw} busybox nslookup {c1} on h2 ({}): {text}\n\
         --- h2 agent log tail ---\n{}",
        out.status,
        dc.agent(1).log_tail(30)
    );
    // The alias, NAME.NETWORK, and ping by name and by alias (libc's resolver, not nslookup's).
    let script = format!(
        "cat /etc/resolv.conf; echo '=== db'; nslookup -type=a db; \
         echo '=== db.prod'; nslookup -type=a db.prod; \
         echo '=== ping {c1}'; ping -c 1 -W 2 {c1} && echo PING-NAME-OK; \
         echo '=== ping db'; ping -c 1 -W 2 db && echo PING-ALIAS-OK"
    );
    let out = run_prod(&dc, 1, Some(gw), &["sh", "-c", &script]);
    let text = output_text(&out);
    eprintln!("h2: docker run --dns {gw} …:\n{}", text.trim());
    let section = |name: &str| -> &str {
        let start = text
            .find(&format!("=== {name}\n"))
            .unwrap_or_else(|| panic!("no section {name}: {text}"));
        let rest = &text[start + name.len() + 5..];
        rest.find("\n=== ").map_or(rest, |end| &rest[..end])
    };
    assert!(
        section_first(&text).contains("nameserver 127.0.0.11"),
        "--dns keeps Docker's resolver in the container's resolv.conf: {text}"
    );
    for name in ["db", "db.prod"] {
        assert_eq!(
            nslookup_addrs(section(name)),
            vec![c1_ip],
            "nslookup -type=a {name} from a container on h2: {text}"
        );
    }
    assert!(
        text.contains("PING-NAME-OK") && text.contains(&format!("({c1_ip})")),
        "ping -c1 {c1} from a container on h2 (resolved to {c1_ip}, answered): {text}"
    );
    assert!(
        text.contains("PING-ALIAS-OK"),
        "ping -c1 db from a container on h2: {text}"
    );
    phases.done("h2: docker run --dns gateway: nslookup/ping c1 and db");

    // Without --dns: Docker forwards to the host's resolv.conf servers, not to vxnet.
    let script = format!("cat /etc/resolv.conf; echo ===; nslookup -type=a {c1}");
    let out = run_prod(&dc, 1, None, &["sh", "-c", &script]);
    let text = output_text(&out);
    eprintln!(
        "h2: docker run without --dns … nslookup {c1} ({}):\n{}",
        out.status,
        text.trim()
    );
    assert!(
        !nslookup_addrs(&text).contains(&c1_ip),
        "without --dns a container resolved the vxnet name {c1} (the documented story says it \
         does not; update the docs if this changed): {text}"
    );
    phases.done("h2: docker run without --dns (no vxnet names)");

    // A Docker endpoint named by driver options: websrv lives on its own network `side` and
    // joins prod as web (aliases api, www).
    dc.docker_ok(
        0,
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
    dc.docker_ok(
        0,
        &[
            "run",
            "-d",
            "--network",
            "side",
            "--name",
            "websrv",
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    // Docker's CLI splits a --driver-opt value at commas (a CSV list): `vxnet.alias=api,www`
    // reaches it as `vxnet.alias=api` and `www`, which it refuses. Quoting the pair as one CSV
    // field (`'"vxnet.alias=api,www"'` in a shell) passes the whole list.
    let connect = |alias_opt: &str| {
        dc.docker(
            0,
            &[
                "network",
                "connect",
                "--driver-opt",
                "vxnet.name=web",
                "--driver-opt",
                alias_opt,
                "prod",
                "websrv",
            ],
        )
    };
    let out = connect("vxnet.alias=api,www");
    eprintln!(
        "observed: docker network connect --driver-opt vxnet.alias=api,www ({}): {}",
        out.status,
        output_text(&out).trim()
    );
    if !out.status.success() {
        let out = connect("\"vxnet.alias=api,www\"");
        assert!(
            out.status.success(),
            "docker network connect --driver-opt vxnet.name=web --driver-opt \
             '\"vxnet.alias=api,www\"' prod websrv: {}\n--- h1 agent log tail ---\n{}",
            output_text(&out),
            dc.agent(0).log_tail(20)
        );
    }
    let web_ip = docker_ip_on(&dc, 0, "websrv", "prod");
    assert!(in_subnet(web_ip), "websrv's prod address {web_ip}");
    eprintln!("websrv: prod address {web_ip} (vxnet.name=web, vxnet.alias=api,www)");
    for name in ["web", "api", "www", "web.prod", "API.PROD"] {
        within_propagation(
            &format!("c1 (h1) resolves {name} after docker network connect"),
            || {
                let ips = dig_a(&dc.cluster, &c1, name, &gws);
                (ips == vec![web_ip], format!("{ips:?}"))
            },
        );
    }
    let ptr = dig(&dc.cluster, &c1, &format!("+short -x {web_ip} @{gw}"));
    assert_eq!(
        ptr.trim(),
        "web.prod.",
        "PTR of websrv's prod address from c1"
    );
    // With no flags: the resolv.conf the agent wrote for c1.
    let conf_path = Path::new(ETC_NETNS).join(&c1).join("resolv.conf");
    let conf = std::fs::read_to_string(&conf_path)
        .unwrap_or_else(|e| panic!("{}: {e}", conf_path.display()));
    eprintln!("{}:\n{}", conf_path.display(), conf.trim());
    let out = dc.cluster.exec(&c1, "getent hosts api");
    let text = output_text(&out);
    assert!(
        out.status.success() && text.split_whitespace().next() == Some(&web_ip.to_string()),
        "ip netns exec c1 getent hosts api: {text}"
    );
    let out = dc.cluster.exec(&c1, "ping -c 1 -W 2 api");
    assert!(
        out.status.success(),
        "ip netns exec c1 ping -c1 api: {}",
        output_text(&out)
    );
    phases.done("docker network connect --driver-opt vxnet.name/alias; c1 resolves them");

    // The Docker endpoint's names from a Docker container on the other host.
    let script = "nslookup -type=a web; echo ===; wget -qO- http://api/";
    let out = run_prod(&dc, 1, Some(gw), &["sh", "-c", script]);
    let text = output_text(&out);
    eprintln!(
        "h2: docker run --dns {gw} … nslookup web; wget api:\n{}",
        text.trim()
    );
    assert_eq!(
        nslookup_addrs(section_first(&text)),
        vec![web_ip],
        "nslookup -type=a web from a container on h2: {text}"
    );
    assert!(
        text.contains(PAGE),
        "wget -qO- http://api/ from a container on h2: {text}"
    );
    phases.done("h2: docker run --dns gateway: web and api");

    // Docker's own names are Docker's: observed, not part of the contract.
    dc.docker_ok(
        0,
        &[
            "run",
            "-d",
            "--network",
            "prod",
            "--name",
            "named",
            "--network-alias",
            "dockeralias",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    for name in ["named", "dockeralias"] {
        let (status, _) = dig_status(&dc.cluster, &c1, name, &gws);
        eprintln!(
            "observed: Docker's own name {name:?} (docker run --name/--network-alias on h1) at \
             vxnet's resolver: {status}"
        );
    }
    phases.done("observed Docker's own names");

    // Named from the start with prod as its only network (Docker 20.10's `docker run` has no
    // per-network driver options): create, swap the endpoint for one with options, start.
    dc.docker_ok(
        0,
        &[
            "create",
            "--network",
            "prod",
            "--name",
            "solo",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    dc.docker_ok(0, &["network", "disconnect", "prod", "solo"]);
    dc.docker_ok(
        0,
        &[
            "network",
            "connect",
            "--driver-opt",
            "vxnet.name=solo-db",
            "prod",
            "solo",
        ],
    );
    dc.docker_ok(0, &["start", "solo"]);
    let networks = dc.docker_ok(
        0,
        &[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            "solo",
        ],
    );
    assert_eq!(networks.trim(), "prod", "solo's networks");
    let solo_ip = docker_ip_on(&dc, 0, "solo", "prod");
    within_propagation("c1 (h1) resolves solo-db after docker start", || {
        let ips = dig_a(&dc.cluster, &c1, "solo-db", &gws);
        (ips == vec![solo_ip], format!("{ips:?}"))
    });
    phases.done("docker create, network disconnect/connect --driver-opt, start");

    // docker network disconnect: the names go, on both hosts' resolvers.
    dc.docker_ok(0, &["network", "disconnect", "prod", "websrv"]);
    within_propagation(
        "web gone (NXDOMAIN) at h1's resolver after disconnect",
        || {
            let (status, text) = dig_status(&dc.cluster, &c1, "web", &gws);
            (status == "NXDOMAIN", text)
        },
    );
    let (status, text) = dig_status(&dc.cluster, &c1, "api", &gws);
    assert_eq!(status, "NXDOMAIN", "alias api after disconnect: {text}");
    let out = run_prod(&dc, 1, Some(gw), &["nslookup", "-type=a", "web"]);
    let text = output_text(&out);
    assert!(
        nslookup_addrs(&text).is_empty(),
        "web still resolves on h2 after docker network disconnect: {text}"
    );
    phases.done("docker network disconnect: names gone");

    // c1 leaves: its resolv.conf goes with it.
    dc.agent(0).vxnet(&["network", "disconnect", "prod", &c1]);
    assert!(
        wait_for_or(Duration::from_secs(5), || !conf_path.exists()),
        "{} still there 5 s after c1's disconnect",
        conf_path.display()
    );
}

/// The text before the first `\n===` line (the first part of a script's output).
fn section_first(text: &str) -> &str {
    text.find("\n===").map_or(text, |end| &text[..end])
}

/// The `dns` of a CNI result, checked: `{"nameservers": [GATEWAY]}`.
fn assert_dns(what: &str, result: &Value) {
    assert_eq!(
        result["dns"]["nameservers"],
        json!([GATEWAY]),
        "{what}: the result's dns.nameservers is the gateway: {result:#}"
    );
}

/// The bare address of a CNI result's first IP (`a.b.c.d`).
fn result_ip(what: &str, result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no ips[0].address: {result:#}"))
}

/// Direct CNI invocation (as `cni`), network cninet (gateway 10.60.0.1): ADD with
/// `CNI_ARGS=K8S_POD_NAME=web-0` on h1 returns `dns.nameservers = [10.60.0.1]` (so does a
/// cniVersion 0.4.0 ADD on h2 with the kubelet's full CNI_ARGS, pod web-1); web-1 (h2)
/// resolves `web-0`, `web-0.cninet` and `WEB-0` to web-0's address and its PTR to
/// `web-0.cninet.`, within 1 s of the ADD; web-0 resolves web-1; after DEL, `web-0` is
/// NXDOMAIN at h2's resolver within 1 s. The counters move.
#[test]
fn cni_result_carries_dns_and_pod_name() {
    let Some((mut phases, mut cluster, cni)) = setup("cni_result_carries_dns_and_pod_name", "ddc")
    else {
        return;
    };
    let bin: PathBuf = cni.bin.clone();

    // web-1 on h2 first (the querier), as the kubelet calls it, cniVersion 0.4.0.
    let p1 = cluster.container();
    let mut a1 = Attachment::new(&p1, &bin);
    a1.args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;\
         K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=4f0a7c1e-0d6b-4d7e-9a55-3c1d2b8e9f00",
        a1.container_id
    );
    let conf04 = cni.conf(1, "0.4.0");
    let r1 = cni
        .call("web-1 (kubelet CNI_ARGS)", 1, "ADD", &a1, &conf04)
        .ok_json();
    eprintln!("ADD web-1 on h2 (0.4.0): {r1}");
    assert_dns("web-1 (0.4.0)", &r1);
    let ip1 = result_ip("web-1", &r1);

    // web-0 on h1, CNI_ARGS exactly K8S_POD_NAME=web-0.
    let p0 = cluster.container();
    let mut a0 = Attachment::new(&p0, &bin);
    a0.args = "K8S_POD_NAME=web-0".into();
    let r0 = cni.add("web-0", 0, &a0);
    eprintln!("ADD web-0 on h1 (1.0.0): {r0}");
    assert_dns("web-0 (1.0.0)", &r0);
    let ip0 = result_ip("web-0", &r0);
    assert_ne!(ip0, ip1);
    within_propagation("web-0 (added on h1) resolves at h2's resolver", || {
        let ips = dig_a(&cluster, &p1, "web-0", GATEWAY);
        (ips == vec![ip0], format!("{ips:?}"))
    });
    phases.done("ADD web-1 (h2, 0.4.0), ADD web-0 (h1, 1.0.0)");

    let answered = cluster.agents[1].counter("dns.answered");
    for name in ["web-0", "web-0.cninet", "WEB-0"] {
        assert_eq!(
            dig_a(&cluster, &p1, name, GATEWAY),
            vec![ip0],
            "web-1 (h2): dig {name} @{GATEWAY}: {}",
            dig(&cluster, &p1, &format!("{name} @{GATEWAY}"))
        );
    }
    let ptr = dig(&cluster, &p1, &format!("+short -x {ip0} @{GATEWAY}"));
    assert_eq!(ptr.trim(), "web-0.cninet.", "web-1 (h2): PTR of {ip0}");
    assert_eq!(
        dig_a(&cluster, &p0, "web-1", GATEWAY),
        vec![ip1],
        "web-0 (h1): dig web-1 @{GATEWAY}: {}",
        dig(&cluster, &p0, &format!("web-1 @{GATEWAY}"))
    );
    let answered_after = cluster.agents[1].counter("dns.answered");
    eprintln!("h2 dns.answered: {answered:?} -> {answered_after:?}");
    assert!(
        answered
            .zip(answered_after)
            .is_some_and(|(b, a)| a >= b + 4),
        "h2's dns.answered counts the 4 answers: {answered:?} -> {answered_after:?}\n{:?}",
        cluster.agents[1].stats()
    );
    phases.done("web-0, web-0.cninet, WEB-0, PTR from h2; web-1 from h1");

    // DEL: the name goes everywhere.
    let nx = cluster.agents[1].counter("dns.nxdomain");
    cni.del("web-0", 0, &a0, Some(&r0));
    within_propagation("web-0 NXDOMAIN at h2's resolver after DEL on h1", || {
        let (status, text) = dig_status(&cluster, &p1, "web-0", GATEWAY);
        (status == "NXDOMAIN", text)
    });
    let nx_after = cluster.agents[1].counter("dns.nxdomain");
    eprintln!("h2 dns.nxdomain: {nx:?} -> {nx_after:?}");
    assert!(
        nx.zip(nx_after).is_some_and(|(b, a)| a > b),
        "h2's dns.nxdomain counts the NXDOMAIN: {nx:?} -> {nx_after:?}"
    );
    // web-1 still resolves (its own name, at its own host).
    assert_eq!(dig_a(&cluster, &p1, "web-1", GATEWAY), vec![ip1]);
    cni.call("web-1", 1, "DEL", &a1, &with_prev_result(&conf04, &r1))
        .ok_empty();
    phases.done("DEL web-0: NXDOMAIN");
}
