//! CPU accounting from /proc, and the facts about this machine that go with the results.

use vxnet_testkit::procfs::{clk_tck, cpu_jiffies, machine_jiffies};

/// CPU time in jiffies, machine-wide and of the agents, at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSnap {
    softirq: u64,
    busy: u64,
    agents: u64,
}

impl CpuSnap {
    /// Now, with `agent_pids` as the agents.
    pub fn take(agent_pids: &[u32]) -> CpuSnap {
        let (softirq, busy) = machine_jiffies();
        CpuSnap {
            softirq,
            busy,
            agents: agent_pids.iter().map(|&p| cpu_jiffies(p)).sum(),
        }
    }

    /// Seconds of (agent, softirq, machine busy) CPU time from `before` to `self`.
    pub fn since(&self, before: &CpuSnap) -> CpuSeconds {
        let tck = clk_tck();
        CpuSeconds {
            agent: (self.agents - before.agents) as f64 / tck,
            softirq: (self.softirq - before.softirq) as f64 / tck,
            busy: (self.busy - before.busy) as f64 / tck,
        }
    }
}

/// CPU seconds spent between two [`CpuSnap`]s.
#[derive(Clone, Copy, Debug)]
pub struct CpuSeconds {
    /// utime + stime of the agents.
    pub agent: f64,
    /// Softirq time over all CPUs.
    pub softirq: f64,
    /// All non-idle time over all CPUs.
    pub busy: f64,
}

/// What the numbers depend on: the kernel, the CPUs and how busy the machine was.
pub struct Machine {
    pub kernel: String,
    pub cores: usize,
    pub cpu_model: String,
    /// /proc/loadavg when the run started.
    pub load_before: String,
    /// `net.bridge.bridge-nf-call-iptables` (`absent` without br_netfilter).
    pub bridge_nf: String,
}

impl Machine {
    pub fn read() -> Machine {
        Machine {
            kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: std::fs::read_to_string("/proc/cpuinfo")
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            load_before: loadavg(),
            bridge_nf: read_trimmed("/proc/sys/net/bridge/bridge-nf-call-iptables")
                .unwrap_or_else(|| "absent".to_string()),
        }
    }
}

/// /proc/loadavg, trimmed.
pub fn loadavg() -> String {
    read_trimmed("/proc/loadavg").unwrap_or_default()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|x| x.trim().to_string())
}
