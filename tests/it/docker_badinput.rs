//! Bad input on the Docker plugin socket: malformed JSON, unknown ids and paths, and a flood of
//! both from many connections; every answer is a clear error, the agent keeps serving and
//! nothing half-made is left (real dockerds beside it, as in `docker`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::docker::*;
use crate::support::docker::*;

/// Runs the plugin client with `args`, `stdin` on its standard input; its JSON output.
fn plugin_client(dc: &DockerCluster, args: &[&str], stdin: &str) -> Value {
    plugin_client_in(dc.cluster.dir(), args, stdin)
}

#[test]
fn docker_plugin_bad_input() {
    let mut phases = Phases::new("dkb");
    let Some(dc) = DockerCluster::new("docker_plugin_bad_input", "dkb", 2) else {
        return;
    };
    phases.done("2 hosts, 2 dockerds, 2 agents");
    for i in 0..2 {
        dc.docker_ok(i, &create_args(SUBNET, "vxnet.network=prod", "prod"));
    }
    run_sleeper(&dc, 0, "keeper");
    let keeper_ip = dc.container_ip(0, "keeper");
    let keeper_ep = dc.endpoint_id(0, "keeper");
    let known_net = dc.docker_ok(0, &["network", "inspect", "-f", "{{.Id}}", "prod"]);
    let networks_before = network_names(dc.agent(0));
    let socket = dc.daemons[0].plugin_socket(DRIVER);
    let socket = socket.to_str().expect("socket path");
    phases.done("prod on both daemons, keeper on h1");

    // One request at a time: each answer printed.
    let unknown_net = "deadbeef".repeat(8);
    let unknown_ep = "cafe0123".repeat(8);
    let ids = |net: &str| json!({"NetworkID": net, "EndpointID": unknown_ep}).to_string();
    let join = |net: &str| {
        json!({"NetworkID": net, "EndpointID": unknown_ep,
               "SandboxKey": "/var/run/docker/netns/000000000000", "Options": {}})
        .to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/NetworkDriver.CreateNetwork",
            r#"{"NetworkID": "abc", "IPv4Data": ["#.into(),
            "error",
        ),
        (
            "/IpamDriver.RequestAddress",
            r#"{"PoolID": "#.into(),
            "error",
        ),
        ("/NetworkDriver.Join", "{not json at all".into(), "error"),
        (
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": unknown_net, "EndpointID": unknown_ep,
                   "Interface": {"Address": "10.30.0.9/24", "AddressIPv6": "", "MacAddress": ""},
                   "Options": {}})
            .to_string(),
            "error",
        ),
        ("/NetworkDriver.Join", join(&unknown_net), "error"),
        ("/NetworkDriver.Join", join(&known_net), "error"),
        (
            "/NetworkDriver.EndpointOperInfo",
            ids(&unknown_net),
            "error",
        ),
        ("/NetworkDriver.EndpointOperInfo", ids(&known_net), "error"),
        ("/NetworkDriver.Leave", ids(&unknown_net), "remove"),
        ("/NetworkDriver.Leave", ids(&known_net), "remove"),
        ("/NetworkDriver.DeleteEndpoint", ids(&unknown_net), "remove"),
        ("/NetworkDriver.DeleteEndpoint", ids(&known_net), "remove"),
        (
            "/NetworkDriver.DeleteNetwork",
            json!({"NetworkID": unknown_net}).to_string(),
            "remove",
        ),
        ("/NetworkDriver.NoSuchMethod", "{}".into(), "error"),
        ("/nope", "{}".into(), "error"),
    ];
    let input = Value::Array(
        cases
            .iter()
            .map(|(path, body, kind)| json!({"path": path, "body": body, "kind": kind}))
            .collect(),
    );
    let answers = plugin_client(&dc, &["cases", socket], &input.to_string());
    let mut wrong = Vec::new();
    for (answer, (_, sent, _)) in answers.as_array().expect("answers").iter().zip(&cases) {
        let line = format!(
            "{} ({}) ← {}: {} {}",
            answer["path"].as_str().unwrap_or(""),
            answer["kind"].as_str().unwrap_or(""),
            sent.chars().take(60).collect::<String>(),
            answer["status"],
            answer["body"].as_str().unwrap_or("").trim()
        );
        eprintln!("{line}");
        if let Some(why) = answer["why"].as_str() {
            wrong.push(format!("{line}: {why}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );
    phases.done("single bad requests");

    // A flood: 2000 requests over 50 connections.
    let summary = plugin_client(&dc, &["flood", socket, "2000", "50", &known_net], "");
    eprintln!("flood: {summary:#}");
    assert_eq!(
        summary["unanswered"], 0,
        "requests without an answer: {summary:#}"
    );
    assert_eq!(summary["answered"], 2000, "{summary:#}");
    assert_eq!(
        summary["violations"], 0,
        "unexpected answers: {:#}",
        summary["samples"]
    );
    phases.done("flood of 2000 requests");

    // The agent still serves, nothing was made, Docker still works.
    let stats = dc.agent(0).stats();
    assert!(!stats.is_empty(), "vxnet stats after the flood");
    assert_eq!(
        network_names(dc.agent(0)),
        networks_before,
        "networks after the flood"
    );
    let addr = dc.docker_ok(
        0,
        &[
            "run",
            "--rm",
            "--network",
            "prod",
            IMAGE,
            "ip",
            "-o",
            "-4",
            "addr",
            "show",
        ],
    );
    assert!(
        addr.contains("inet 10.30.0."),
        "docker run after the flood: {addr}"
    );
    assert_reaches(
        &dc,
        1,
        keeper_ip,
        Duration::from_secs(15),
        "h2 → keeper after the flood",
    );
    let keeper_link: BTreeSet<String> = [vxv_of(&keeper_ep)].into();
    let expected_eps: BTreeSet<String> = [keeper_ep.clone()].into();
    let mut last = None;
    let clean = wait_for_or(Duration::from_secs(5), || {
        let links = [vxv_links(&dc, 0), vxv_links(&dc, 1)];
        let eps: Vec<BTreeSet<String>> = (0..2)
            .map(|i| endpoints(dc.agent(i), "prod").into_keys().collect())
            .collect();
        let ok = links[0] == keeper_link
            && links[1].is_empty()
            && eps.iter().all(|e| *e == expected_eps);
        last = Some((links, eps));
        ok
    });
    assert!(
        clean,
        "half-made state after the flood (vxv links on h1, h2; endpoints on h1, h2; expected \
         only keeper's {keeper_ep}): {last:#?}"
    );
    phases.done("checks after the flood");
}
