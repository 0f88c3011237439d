//! Prometheus metrics (`--metrics ADDR` → `http://ADDR/metrics`), encoded by `prometheus-client`.
//!
//! Counters live where the packet path and the Raft thread already keep them (per-worker drop
//! counters, per-network atomics in the FIB, the published Raft view); a collector reads them at
//! scrape time, so metrics cost nothing between scrapes.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::Agent;

/// Buckets of the commit latency histogram: 0.5 ms to ~4 s.
pub fn commit_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// One labelled sample: label pairs and a value.
type Row<T> = (Vec<(&'static str, String)>, T);

#[derive(Debug)]
struct AgentCollector {
    agent: Weak<Agent>,
}

fn counter<'a>(
    encoder: &mut DescriptorEncoder<'a>,
    name: &'a str,
    help: &str,
    rows: &[Row<u64>],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<'a>(
    encoder: &mut DescriptorEncoder<'a>,
    name: &'a str,
    help: &str,
    rows: &[Row<i64>],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(agent) = self.agent.upgrade() else {
            return Ok(());
        };
        let view = agent.driver.view();
        let fib = agent.fib.load();
        let mut per_network: [Vec<Row<u64>>; 6] = Default::default();
        for table in fib.networks() {
            let name = super::queries::network_name(&view.state, table.vni());
            let labels = vec![("network", name), ("vni", table.vni().to_string())];
            let c = table.counters().read();
            for (rows, value) in per_network.iter_mut().zip([
                c.rx_packets,
                c.rx_bytes,
                c.tx_packets,
                c.tx_bytes,
                c.suppressed,
                super::links::tap_queue_drops(table.vni()),
            ]) {
                rows.push((labels.clone(), value));
            }
        }
        let [
            rx_packets,
            rx_bytes,
            tx_packets,
            tx_bytes,
            suppressed,
            tap_drops,
        ] = per_network;
        let dns: Vec<Row<u64>> = agent
            .dns
            .counters()
            .into_iter()
            .filter(|(outcome, _)| *outcome != "queries")
            .map(|(outcome, n)| (vec![("outcome", outcome.to_string())], n))
            .collect();
        counter(
            &mut encoder,
            "vxnet_dns_queries",
            "Questions to the embedded resolver, by outcome",
            &dns,
        )?;
        counter(
            &mut encoder,
            "vxnet_network_rx_packets",
            "Frames received from the underlay and delivered to the network",
            &rx_packets,
        )?;
        counter(
            &mut encoder,
            "vxnet_network_rx_bytes",
            "Bytes of inner frames delivered to the network",
            &rx_bytes,
        )?;
        counter(
            &mut encoder,
            "vxnet_network_tx_packets",
            "Frames read from the network and sent to remote VTEPs",
            &tx_packets,
        )?;
        counter(
            &mut encoder,
            "vxnet_network_tx_bytes",
            "Bytes of inner frames sent to remote VTEPs",
            &tx_bytes,
        )?;
        counter(
            &mut encoder,
            "vxnet_network_arp_nd_suppressed",
            "ARP requests and neighbour solicitations answered locally",
            &suppressed,
        )?;
        counter(
            &mut encoder,
            "vxnet_network_tap_queue_drops",
            "Frames the kernel dropped at the network's TAP because the agent read too slowly",
            &tap_drops,
        )?;
        let drops: Vec<_> = agent
            .stats
            .snapshot()
            .into_iter()
            .map(|(reason, count)| (vec![("reason", reason.to_string())], count))
            .collect();
        counter(
            &mut encoder,
            "vxnet_drops",
            "Packets dropped by the data plane, by reason",
            &drops,
        )?;
        let io_errors: Vec<_> = agent
            .stats
            .io_errors()
            .into_iter()
            .map(|(call, count)| (vec![("call", call.to_string())], count))
            .collect();
        counter(
            &mut encoder,
            "vxnet_io_errors",
            "System calls of the data plane that failed (not WouldBlock, not Interrupted), by call",
            &io_errors,
        )?;
        let per_worker: Vec<_> = agent
            .stats
            .per_worker()
            .into_iter()
            .enumerate()
            .flat_map(|(index, worker)| {
                worker.into_iter().map(move |(kind, count)| {
                    (
                        vec![("worker", index.to_string()), ("kind", kind.to_string())],
                        count,
                    )
                })
            })
            .collect();
        counter(
            &mut encoder,
            "vxnet_worker_packets",
            "Packets each data plane worker moved: TAP frames read and written, underlay datagrams received and sent",
            &per_worker,
        )?;
        let steering = agent.reconciler.dataplane.steering();
        gauge(
            &mut encoder,
            "vxnet_steering_taps",
            "Network TAPs whose queue is picked by vxnet's flow-steering program (steered) or by the kernel (automatic)",
            &[
                (
                    vec![("mode", "steered".into())],
                    steering.taps_steered as i64,
                ),
                (
                    vec![("mode", "automatic".into())],
                    steering.taps_automatic as i64,
                ),
            ],
        )?;
        gauge(
            &mut encoder,
            "vxnet_steering_reuseport_program",
            "1 if the underlay receive sockets pick the worker by the inner flow",
            &[(vec![], i64::from(steering.reuseport_program))],
        )?;
        gauge(
            &mut encoder,
            "vxnet_fib_entries",
            "MAC entries in the forwarding table",
            &[(vec![], fib.mac_count() as i64)],
        )?;
        let raft = |v: u64| vec![(vec![], i64::try_from(v).unwrap_or(i64::MAX))];
        gauge(
            &mut encoder,
            "vxnet_raft_term",
            "Current Raft term",
            &raft(view.term),
        )?;
        gauge(
            &mut encoder,
            "vxnet_raft_commit_index",
            "Raft commit index",
            &raft(view.commit_index),
        )?;
        gauge(
            &mut encoder,
            "vxnet_raft_applied_index",
            "Raft index applied on this host",
            &raft(view.applied_index),
        )?;
        gauge(
            &mut encoder,
            "vxnet_raft_leader_id",
            "Raft node id of the leader this host knows (0: none)",
            &raft(view.leader_id.unwrap_or(0)),
        )?;
        gauge(
            &mut encoder,
            "vxnet_raft_is_leader",
            "1 if this host leads the cluster",
            &raft(u64::from(view.leader_id == Some(view.node_id))),
        )?;
        gauge(
            &mut encoder,
            "vxnet_agent_ready",
            "1: the agent replayed its local log (metrics are served only from then on)",
            &raft(1),
        )?;
        let health = agent.driver.health();
        gauge(
            &mut encoder,
            "vxnet_storage_writable",
            "0 while the data dir cannot be written (no writes accepted or acknowledged here)",
            &raft(u64::from(!health.storage_failed())),
        )?;
        counter(
            &mut encoder,
            "vxnet_storage_failures",
            "Storage write failures that took the Raft node down until the data dir recovered",
            &[(vec![], health.storage_failures())],
        )?;
        let peers: Vec<_> = view
            .state
            .hosts()
            .filter(|h| h.node_id != view.node_id)
            .map(|h| {
                (
                    vec![("peer", h.name.clone())],
                    i64::from(agent.transport.is_reachable(h.node_id)),
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "vxnet_peer_reachable",
            "1 if this host holds a working connection to the peer",
            &peers,
        )?;
        Ok(())
    }
}

/// Builds the registry: the live collector plus the commit latency histogram.
pub fn registry(agent: &Arc<Agent>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector {
        agent: Arc::downgrade(agent),
    }));
    registry.register(
        "vxnet_commit_latency_seconds",
        "Time from accepting a write on this host to its apply here",
        agent.commit_latency.clone(),
    );
    registry
}

/// Renders the metrics in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
        body.clear();
    }
    body
}

/// Serves `GET /metrics` on `addr` until the runtime stops.
pub async fn serve(agent: Arc<Agent>, addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics");
    let registry = Arc::new(registry(&agent));
    drop(agent);
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            // Read the request head (bounded); only the request line matters.
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            });
            if read.await.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&head);
            let target = line.split_whitespace().nth(1).unwrap_or("");
            let (status, content_type, body) = if line.starts_with("GET ")
                && (target == "/metrics" || target.starts_with("/metrics?"))
            {
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    render(&registry),
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "not found: try /metrics\n".to_string(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
