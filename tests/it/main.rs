//! The netns integration tests of the root crate, in one binary (one link, one set of helpers):
//! real `vxnetd` agents on hosts and containers made of network namespaces, a module per area.
//! As root every test builds its own hosts on its own switch (names `vx<pid%10000><tag>-…`,
//! tags unique across all modules, checked by `Cluster::new`); as another user they print
//! `skipped: ... needs root` and pass. The harness is `vxnet-testkit` (shared with the
//! benchmarks) plus `support` (clusters, agents and the CLI, captures).

mod support;

mod api_limits;
mod cni;
mod cni_latency;
mod cni_podman;
mod cni_portmap;
mod cp_badinput;
mod cp_cluster;
mod cp_scale;
mod dns;
mod dns_badinput;
mod docker;
mod docker_badinput;
mod docker_crash;
mod docker_dns;
mod docker_ports;
mod dp_arp;
mod dp_badinput;
mod dp_churn;
mod dp_interop;
mod dp_isolation;
mod dp_mtu;
mod dp_offload;
mod dp_pcap;
mod dp_raft_down;
mod dp_steering;
mod fault_disk;
#[cfg(feature = "fault-injection")]
mod fault_panic;
mod fault_restart;
mod fault_wal;
mod gw_egress;
mod ops;
mod overlay;
mod ports;
mod sec_ca_rotate;
mod sec_capture;
mod sec_flood;
mod sec_join;
mod sec_renew;
mod upgrade_mixed;
