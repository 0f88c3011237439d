//! A writer through one agent's API for the length of a test, so that a test can show an
//! operation (refusals, renewals, rotations) cost the cluster no write.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use super::output_text;

/// A writer through one agent's API: `network create NAME` and `network rm NAME` in turn, each
/// through the `vxnet` CLI (answered once committed and applied there), until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: JoinHandle<Vec<String>>,
}

impl Writer {
    pub fn start(api: &Path, name: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let (api, name) = (api.to_path_buf(), name.to_string());
            let started = Instant::now();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                let mut exists = false;
                while !stop.load(Ordering::Relaxed) {
                    let verb = if exists { "rm" } else { "create" };
                    let out = Command::new(env!("CARGO_BIN_EXE_vxnet"))
                        .arg("-H")
                        .arg(&api)
                        .args(["network", verb, &name])
                        .output()
                        .expect("run vxnet");
                    if out.status.success() {
                        ok.fetch_add(1, Ordering::Relaxed);
                        exists = !exists;
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!(
                            "{verb} {name} at {:?}: {}",
                            started.elapsed(),
                            output_text(&out).trim()
                        ));
                        // A create whose answer was lost may have committed: look before the
                        // next turn, so that one failure does not become two.
                        let ls = Command::new(env!("CARGO_BIN_EXE_vxnet"))
                            .arg("-H")
                            .arg(&api)
                            .args(["network", "ls", "--format", "{{.Name}}"])
                            .output()
                            .expect("run vxnet");
                        if ls.status.success() {
                            exists = String::from_utf8_lossy(&ls.stdout)
                                .lines()
                                .any(|l| l == name);
                        }
                    }
                }
                errors
            })
        };
        Writer {
            stop,
            ok,
            failed,
            thread,
        }
    }

    /// Writes attempted so far (committed or failed).
    pub fn attempts(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Stops the writer: (writes committed, the failures' messages).
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.join().expect("the writer thread");
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

/// The writer through `through` made progress (more than 20 writes) and no write failed.
pub fn assert_writes_ok(ok: u64, errors: &[String], through: &str) {
    assert!(ok > 20, "the writer made progress: {ok} writes");
    assert!(
        errors.is_empty(),
        "writes failed through {through}: {errors:#?}"
    );
}
