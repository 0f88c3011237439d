//! Sandboxes' resolv.conf: for a named network namespace, `/etc/netns/<name>/resolv.conf`,
//! which `ip netns exec <name>` bind-mounts over `/etc/resolv.conf`, lists the gateways of the
//! sandbox's networks, so `ip netns exec c2 ping c1` resolves through vxnet with no flags.
//!
//! Computed from the state ([`plan`], pure) and installed as a difference ([`ResolvConfs`]).
//! Each file starts with a mark naming the agent that wrote it (host and cluster): an agent
//! rewrites or removes only its own files (several agents, even several clusters with the same
//! host names, share one `/etc` in tests), never a file someone else wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vxnet_controlplane::state::State;
use vxnet_proto::Endpoint;

/// Where `ip netns exec` looks.
pub const NETNS_ETC: &str = "/etc/netns";
/// glibc reads at most three nameservers.
const MAX_NAMESERVERS: usize = 3;

/// The first line of a file written by the agent `writer` (`host h1 of cluster 0123...`).
fn mark(writer: &str) -> String {
    format!("# vxnet: written by the agent of {writer}; removed when the sandbox leaves")
}

/// The name of a named network namespace (`c1`, `/run/netns/c1`, `/var/run/netns/c1`); `None`
/// for a PID or any other path, whose resolv.conf is the runtime's business.
pub fn netns_name(sandbox: &str) -> Option<&str> {
    let name = sandbox
        .strip_prefix("/run/netns/")
        .or_else(|| sandbox.strip_prefix("/var/run/netns/"))
        .unwrap_or(sandbox);
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.bytes().all(|b| b.is_ascii_digit())
        && !name.starts_with("docker:");
    ok.then_some(name)
}

/// Netns name → the resolv.conf the agent `writer` of host `host` wants for it.
pub fn plan(state: &State, host: &str, writer: &str) -> BTreeMap<String, String> {
    let gateways: BTreeMap<&str, &str> = state
        .networks()
        .map(|n| (n.id.as_str(), n.gateway.as_str()))
        .collect();
    let mut local: Vec<&Endpoint> = state
        .endpoints()
        .filter(|e| e.host == host && e.runtime.is_empty())
        .collect();
    local.sort_by_key(|e| e.created_index);
    let mut servers: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for endpoint in local {
        let (Some(name), Some(gateway)) = (
            netns_name(&endpoint.sandbox),
            gateways.get(endpoint.network_id.as_str()),
        ) else {
            continue;
        };
        let list = servers.entry(name.to_string()).or_default();
        if !gateway.is_empty() && !list.contains(gateway) && list.len() < MAX_NAMESERVERS {
            list.push(gateway);
        }
    }
    servers
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(name, list)| {
            let mut text = mark(writer);
            text.push('\n');
            for server in list {
                text.push_str(&format!("nameserver {server}\n"));
            }
            (name, text)
        })
        .collect()
}

/// Installs plans under a root (`/etc/netns`; a scratch directory in tests).
#[derive(Debug)]
pub struct ResolvConfs {
    root: PathBuf,
    host: String,
    writer: String,
    applied: Mutex<Option<BTreeMap<String, String>>>,
}

impl ResolvConfs {
    /// Files of the agent `writer` of host `host` under `root`.
    pub fn new(root: impl Into<PathBuf>, host: &str, writer: &str) -> ResolvConfs {
        ResolvConfs {
            root: root.into(),
            host: host.to_string(),
            writer: writer.to_string(),
            applied: Mutex::new(None),
        }
    }

    /// What this agent wants for `state` (see [`plan`]).
    pub fn plan(&self, state: &State) -> BTreeMap<String, String> {
        plan(state, &self.host, &self.writer)
    }

    /// Writes what `plan` wants and removes this host's files it no longer wants (`full`: look
    /// at the disk even if the plan did not change). Returns what failed.
    pub fn apply(&self, plan: &BTreeMap<String, String>, full: bool) -> Vec<String> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if !full && applied.as_ref() == Some(plan) {
            return Vec::new();
        }
        let mark = mark(&self.writer);
        let mut errors = Vec::new();
        for (name, text) in plan {
            let dir = self.root.join(name);
            let path = dir.join("resolv.conf");
            match std::fs::read_to_string(&path) {
                Ok(current) if current == *text => continue,
                Ok(current) if !current.starts_with(&mark) => {
                    if full {
                        tracing::info!(
                            path = %path.display(),
                            "not written by vxnet: left as it is"
                        );
                    }
                    continue;
                }
                _ => {}
            }
            if let Err(e) = write_atomically(&dir, &path, text) {
                errors.push(format!("{}: {e}", path.display()));
            }
        }
        errors.extend(self.remove_unwanted(plan, &mark));
        *applied = errors.is_empty().then(|| plan.clone());
        errors
    }

    /// Removes every file of this host that `plan` does not want (all of them: an empty plan).
    fn remove_unwanted(&self, plan: &BTreeMap<String, String>, mark: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if plan.contains_key(&name) {
                continue;
            }
            let dir = entry.path();
            let path = dir.join("resolv.conf");
            let ours = std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with(mark));
            if !ours {
                continue;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
            // The directory too, when nothing else is in it.
            let _ = std::fs::remove_dir(&dir);
        }
        errors
    }

    /// Removes all of this host's files (the agent leaves the cluster).
    pub fn remove_all(&self) -> Vec<String> {
        let errors = self.remove_unwanted(&BTreeMap::new(), &mark(&self.writer));
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = None;
        errors
    }
}

/// Writes through a temporary file and a rename, so `ip netns exec` never reads half a file.
fn write_atomically(dir: &Path, path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".resolv.conf.vxnet");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vxnet_proto::{Network, StateSnapshot};

    fn state() -> State {
        let net = |id: &str, vni: u32, subnet: &str, gateway: &str| Network {
            id: id.repeat(64),
            name: format!("n{vni}"),
            vni,
            subnet: subnet.into(),
            gateway: gateway.into(),
            ..Network::default()
        };
        let a = net("a", 1, "10.1.0.0/24", "10.1.0.1");
        let b = net("b", 2, "10.2.0.0/24", "10.2.0.1");
        let ep = |n: u64, net: &Network, host: &str, sandbox: &str, ip: &str| Endpoint {
            id: format!("{n:064x}"),
            network_id: net.id.clone(),
            name: sandbox.into(),
            host: host.into(),
            sandbox: sandbox.into(),
            ipv4: ip.into(),
            created_index: n,
            ..Endpoint::default()
        };
        let snapshot = StateSnapshot {
            endpoints: vec![
                ep(1, &b, "h1", "c1", "10.2.0.2"),
                ep(2, &a, "h1", "c1", "10.1.0.2"),
                ep(3, &a, "h1", "/run/netns/c2", "10.1.0.3"),
                ep(4, &a, "h1", "1234", "10.1.0.4"),
                ep(5, &a, "h2", "c5", "10.1.0.5"),
            ],
            networks: vec![a, b],
            ..State::new().to_snapshot()
        };
        State::from_snapshot(&snapshot).expect("a valid snapshot")
    }

    #[test]
    fn named_sandboxes_of_this_host_get_their_networks_gateways_in_connect_order() {
        let plan = plan(&state(), "h1", "host h1 of cluster 1");
        assert_eq!(plan.keys().collect::<Vec<_>>(), ["c1", "c2"]);
        assert!(plan["c1"].ends_with("nameserver 10.2.0.1\nnameserver 10.1.0.1\n"));
        assert!(plan["c2"].starts_with("# vxnet: written by the agent of host h1"));
    }

    #[test]
    fn netns_names() {
        assert_eq!(netns_name("c1"), Some("c1"));
        assert_eq!(netns_name("/run/netns/c1"), Some("c1"));
        assert_eq!(netns_name("/var/run/netns/c1"), Some("c1"));
        for none in ["1234", "/proc/1/ns/net", "..", "", "docker:0123"] {
            assert_eq!(netns_name(none), None, "{none}");
        }
    }

    #[test]
    fn files_are_written_replaced_and_removed_but_only_our_own() {
        let root = std::env::temp_dir().join(format!("vxnet-resolvconf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("mine")).unwrap();
        std::fs::write(root.join("mine/resolv.conf"), "nameserver 9.9.9.9\n").unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        std::fs::write(
            root.join("other/resolv.conf"),
            // The same host name in another cluster (tests run several at once).
            format!("{}\nnameserver 10.9.0.1\n", mark("host h1 of cluster 2")),
        )
        .unwrap();
        let files = ResolvConfs::new(&root, "h1", "host h1 of cluster 1");
        let mut want = plan(&state(), "h1", "host h1 of cluster 1");
        want.insert(
            "mine".into(),
            format!("{}\nnameserver 10.1.0.1\n", mark("host h1 of cluster 1")),
        );
        assert!(files.apply(&want, true).is_empty());
        let c1 = std::fs::read_to_string(root.join("c1/resolv.conf")).unwrap();
        assert_eq!(c1, want["c1"]);
        assert_eq!(
            std::fs::read_to_string(root.join("mine/resolv.conf")).unwrap(),
            "nameserver 9.9.9.9\n",
            "a file vxnet did not write is left alone"
        );
        want.remove("c1");
        assert!(files.apply(&want, false).is_empty());
        assert!(
            !root.join("c1").exists(),
            "c1 left: file and directory gone"
        );
        assert!(
            root.join("other/resolv.conf").exists(),
            "another host's file"
        );
        assert!(files.remove_all().is_empty());
        assert!(!root.join("c2").exists());
        assert!(root.join("mine/resolv.conf").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
