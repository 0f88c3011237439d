//! CNI ADD latency: 50 ADDs timed from spawn to exit, the CLI's connect for comparison, and 10
//! concurrent ADDs as a runtime starting many containers at once.

use std::collections::BTreeSet;

use vxnet_testkit::stats::percentile;

use crate::cni::*;
use crate::support::cni::*;

#[test]
fn cni_add_latency() {
    let Some((mut phases, mut cluster, cni)) = setup("cni_add_latency", "cnl") else {
        return;
    };
    let bin = cni.bin.clone();
    // ADD latency: 50 namespaces, h1 and h2 alternately; each invocation from spawn to exit.
    let mut added = Vec::new();
    let mut millis = Vec::new();
    for k in 0..LATENCY_ADDS {
        let host = k % 2;
        let ns = cluster.container();
        let att = Attachment::new(&ns, &bin);
        let out = cni.call(
            &format!("latency ADD {k}"),
            host,
            "ADD",
            &att,
            &cni.conf(host, "1.0.0"),
        );
        millis.push(out.elapsed.as_secs_f64() * 1e3);
        let res = out.ok_json();
        let ip = res["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("ADD {k}: {res}"))
            .to_string();
        added.push((host, att, res, ip));
    }
    let distinct: BTreeSet<&String> = added.iter().map(|(_, _, _, ip)| ip).collect();
    assert_eq!(
        distinct.len(),
        LATENCY_ADDS,
        "{LATENCY_ADDS} ADDs, distinct addresses"
    );
    millis.sort_by(f64::total_cmp);
    eprintln!(
        "CNI ADD: p50 {:.1} ms, p99 {:.1} ms (n={LATENCY_ADDS}; min {:.1}, max {:.1})",
        percentile(&millis, 50.0),
        percentile(&millis, 99.0),
        millis[0],
        millis[millis.len() - 1]
    );
    let mut del_millis = Vec::new();
    for (host, att, res, _) in &added {
        let conf = with_prev_result(&cni.conf(*host, "1.0.0"), res);
        let out = cni.call("latency DEL", *host, "DEL", att, &conf);
        del_millis.push(out.elapsed.as_secs_f64() * 1e3);
        out.ok_empty();
    }
    del_millis.sort_by(f64::total_cmp);
    eprintln!(
        "CNI DEL: p50 {:.1} ms, p99 {:.1} ms (n={LATENCY_ADDS})",
        percentile(&del_millis, 50.0),
        percentile(&del_millis, 99.0)
    );
    for (_, _, _, ip) in &added {
        wait_unlisted(&cluster, ip);
    }
    phases.done("50 ADDs timed, 50 DELs");

    // For comparison: the same attachment through the CLI (`vxnet network connect`).
    let mut cli_millis = Vec::new();
    let mut connected = Vec::new();
    for k in 0..10 {
        let host = k % 2;
        let ns = cluster.container();
        let start = std::time::Instant::now();
        cluster.agents[host].vxnet(&["network", "connect", NET, &ns]);
        cli_millis.push(start.elapsed().as_secs_f64() * 1e3);
        connected.push((host, ns));
    }
    cli_millis.sort_by(f64::total_cmp);
    eprintln!(
        "vxnet network connect (CLI): p50 {:.1} ms, max {:.1} ms (n=10)",
        percentile(&cli_millis, 50.0),
        cli_millis[cli_millis.len() - 1]
    );
    for (host, ns) in &connected {
        cluster.agents[*host].vxnet(&["network", "disconnect", NET, ns]);
    }

    // Concurrent ADDs, as a runtime starting many containers at once: 5 per host.
    let namespaces: Vec<(usize, String)> = (0..10).map(|k| (k % 2, cluster.container())).collect();
    let results: Vec<(usize, Attachment, CniOutput)> = std::thread::scope(|s| {
        let cni = &cni;
        let bin = &bin;
        let handles: Vec<_> = namespaces
            .iter()
            .map(|(host, ns)| {
                s.spawn(move || {
                    let att = Attachment::new(ns, bin);
                    let out = cni.call(
                        "concurrent ADD",
                        *host,
                        "ADD",
                        &att,
                        &cni.conf(*host, "1.0.0"),
                    );
                    (*host, att, out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let mut concurrent_ips = BTreeSet::new();
    for ((_, att, out), (_, ns)) in results.iter().zip(&namespaces) {
        let res = out.ok_json();
        concurrent_ips.insert(check_add_result(&res, "1.0.0", att, ns));
    }
    assert_eq!(
        concurrent_ips.len(),
        10,
        "10 concurrent ADDs, 10 addresses: {concurrent_ips:?}"
    );
    let slowest = results
        .iter()
        .map(|(_, _, o)| o.elapsed)
        .max()
        .unwrap_or_default();
    eprintln!(
        "10 concurrent ADDs: slowest {:.1} ms",
        slowest.as_secs_f64() * 1e3
    );
    for (host, att, out) in &results {
        cni.del("concurrent", *host, att, Some(&out.json()));
    }
    for ip in &concurrent_ips {
        wait_unlisted(&cluster, ip);
    }
    phases.done("CLI baseline, 10 concurrent ADDs");
}
