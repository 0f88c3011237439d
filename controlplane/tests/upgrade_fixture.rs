//! Upgrades: a data dir written by an earlier release opens with this one and shows the same
//! state. `fixtures/datadir-v0.1.0` was written by vxnetd 0.1.0 (commit 5ba448c), killed with
//! SIGKILL after these commands, so its state lives in the bootstrap snapshot plus the WAL:
//!
//! ```text
//! network create --subnet 10.77.0.0/24 --label env=prod red
//! network create --subnet 10.78.0.0/24 --internal --vni 5000 blue
//! network create green
//! network connect --alias web red <netns>
//! network connect --ip 10.78.0.9 blue <netns>
//! network rm green
//! fdb add red --vtep 192.168.201.9 --mac 02:00:00:00:00:09 --ip 10.77.0.99
//! ```
//!
//! Keep this fixture forever; add one per release whose on-disk format changes.

use std::path::Path;

use vxnet_controlplane::node::{Node, NodeConfig, discard_logger};
use vxnet_controlplane::storage::{DiskStorage, StorageOptions};

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dir = tempfile::tempdir().expect("tempdir");
    for file in ["meta", "snapshot", "wal"] {
        std::fs::copy(src.join(file), dir.path().join(file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    dir
}

#[test]
fn data_dir_of_v0_1_0_opens_with_its_state() {
    let dir = copy_fixture("datadir-v0.1.0");
    let before: Vec<(String, Vec<u8>)> = ["meta", "snapshot", "wal"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.path().join(f)).unwrap()))
        .collect();
    let mut cfg = NodeConfig::new(dir.path());
    cfg.logger = discard_logger();
    let node = Node::open(cfg).expect("the 0.1.0 data dir opens");
    // Opening replays the whole committed log: the state is there before anything asks.
    let state = node.state();
    assert_eq!(node.id(), 1);
    assert!(state.applied_index() >= 9, "{}", state.applied_index());

    let mut names: Vec<&str> = state.networks().map(|n| n.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["blue", "red"], "green was removed");
    let red = state.resolve_network("red").unwrap();
    assert_eq!(red.subnet, "10.77.0.0/24");
    assert_eq!(red.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(red.vni, 4096);
    let blue = state.resolve_network("blue").unwrap();
    assert!(blue.internal);
    assert_eq!(blue.vni, 5000);

    let red_eps = state.endpoints_of("red").unwrap();
    assert_eq!(red_eps.len(), 1);
    assert_eq!(red_eps[0].ipv4, "10.77.0.2");
    assert_eq!(red_eps[0].aliases, ["web"]);
    assert_eq!(red_eps[0].host, "fix1");
    let blue_eps = state.endpoints_of("blue").unwrap();
    assert_eq!(blue_eps[0].ipv4, "10.78.0.9");
    assert_eq!(blue_eps[0].mac, "02:42:0a:4e:00:09");

    let vteps: Vec<_> = state.static_vteps().collect();
    assert_eq!(vteps.len(), 1);
    assert_eq!(vteps[0].vtep, "192.168.201.9");
    assert_eq!(vteps[0].ipv4, "10.77.0.99");
    assert_eq!(state.hosts().count(), 1);
    drop(node);

    // Opening changed nothing on disk (no torn tail to cut, no format rewrite).
    for (file, bytes) in before {
        assert_eq!(
            std::fs::read(dir.path().join(&file)).unwrap(),
            bytes,
            "{file}"
        );
    }
    // And the storage layer alone agrees on the log it holds.
    let store = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap();
    assert!(store.hard_state().commit >= 9);
}
