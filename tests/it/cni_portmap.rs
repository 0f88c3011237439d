//! CNI chaining: vxnet first, the reference `portmap` plugin after it with vxnet's result as
//! `prevResult` (part of `cni_plugin_contract`, whose cluster it uses).

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;
use vxnet_testkit::netns::Proc;

use crate::cni::*;
use crate::support::cni::*;
use crate::support::*;

/// vxnet ADD, portmap ADD with vxnet's result as prevResult, the container's port 80 reached
/// at h1's underlay address, port 8080; portmap DEL, vxnet DEL.
pub(crate) fn portmap_chain(cluster: &mut Cluster, cni: &Cni, portmap: &Path) {
    let pm = cluster.container();
    let att = Attachment::new(&pm, &cni.bin);
    let res = cni.add("pm", 0, &att);
    let ip = check_add_result(&res, "1.0.0", &att, &pm);
    let bare = ip.split('/').next().unwrap_or("").to_string();
    let pm_conf = json!({
        "cniVersion": "1.0.0",
        "name": CONF_NAME,
        "type": "portmap",
        "runtimeConfig": {"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"}
        ]},
        "prevResult": res,
    });
    let mut pm_att = att.clone();
    pm_att.path = REFERENCE_PLUGINS.to_string();
    let h1 = cni.hosts[0].0.clone();
    let out = invoke(
        "portmap ADD",
        &h1,
        portmap,
        &pm_att.env("ADD"),
        &pm_conf.to_string(),
    );
    let chained = out.ok_json();
    assert_eq!(
        chained["ips"], res["ips"],
        "portmap passes vxnet's result on: {chained:#}"
    );
    assert_eq!(
        chained["interfaces"], res["interfaces"],
        "portmap passes vxnet's result on: {chained:#}"
    );
    let nat = sh(&format!("ip netns exec {h1} iptables-save -t nat"));
    let dnat: Vec<&str> = nat
        .lines()
        .filter(|l| l.contains("DNAT") && l.contains(&bare))
        .collect();
    eprintln!("portmap ADD: {chained}; its DNAT rules in h1: {dnat:?}");
    assert!(
        !dnat.is_empty(),
        "portmap made no DNAT rule to {bare} in h1:\n{nat}"
    );

    // The server in the container.
    let script = cluster.dir().join("server.py");
    std::fs::write(&script, SERVER).expect("write server.py");
    let mut server = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &pm, "python3"])
            .arg(&script)
            .arg(CONTAINER_PORT.to_string())
            .arg(BANNER)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("server");
    {
        use std::io::{BufRead, BufReader};
        let stdout = server.child().stdout.take().expect("stdout");
        let ready = BufReader::new(stdout).lines().next().and_then(Result::ok);
        assert_eq!(ready.as_deref(), Some("listening"));
    }
    let h2 = cni.hosts[1].0.clone();
    assert_eq!(
        fetch(cluster, &h1, &bare, CONTAINER_PORT),
        BANNER,
        "h1 → the container directly"
    );
    assert_eq!(
        fetch(cluster, &h1, "192.168.200.1", HOST_PORT),
        BANNER,
        "h1 → 192.168.200.1:{HOST_PORT} (portmap's OUTPUT DNAT)"
    );
    assert_eq!(
        fetch(cluster, &h2, "192.168.200.1", HOST_PORT),
        BANNER,
        "h2 → 192.168.200.1:{HOST_PORT} (portmap's PREROUTING DNAT)"
    );
    // A client that is no cluster host: the gateway lets connections a port mapping sent
    // (conntrack's DNAT status) into the network.
    let outside = format!("{}-out", cluster.prefix);
    cluster.add_netns(&outside);
    cluster.plug(&outside, "pout");
    sh(&format!(
        "ip -n {outside} addr add 192.168.200.100/24 dev ul0"
    ));
    assert_eq!(
        fetch(cluster, &outside, "192.168.200.1", HOST_PORT),
        BANNER,
        "outside (192.168.200.100, not a cluster host) → 192.168.200.1:{HOST_PORT}"
    );

    let out = invoke(
        "portmap DEL",
        &h1,
        portmap,
        &pm_att.env("DEL"),
        &pm_conf.to_string(),
    );
    out.ok_empty();
    let seen = fetch(cluster, &h1, "192.168.200.1", HOST_PORT);
    assert!(
        seen.starts_with("error:"),
        "port {HOST_PORT} still forwarded after portmap DEL: {seen}"
    );
    let nat = sh(&format!("ip netns exec {h1} iptables-save -t nat"));
    assert!(
        !nat.lines().any(|l| l.contains("DNAT") && l.contains(&bare)),
        "portmap DEL left DNAT rules:\n{nat}"
    );
    drop(server);
    cni.del("pm", 0, &att, Some(&res));
    wait_unlisted(cluster, &ip);
}
