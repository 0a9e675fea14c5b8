//! Container statistics in one set of units whatever the cgroup version: CPU times in
//! nanoseconds, memory in bytes. libcgroups reports v1 CPU totals in ns and user/system in
//! clock ticks, and v2 everything in microseconds; this module evens that out. The JSON shape
//! is runc's `events --stats`, which tools already parse.

use libcgroups::stats::Stats;
use serde::Serialize;

use crate::cgroups::Version;

#[derive(Debug, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub data: Data,
}

#[derive(Debug, Serialize)]
pub struct Data {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
}

#[derive(Debug, Serialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

#[derive(Debug, Serialize)]
pub struct CpuUsage {
    /// Nanoseconds.
    pub total: u64,
    pub percpu: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    /// Nanoseconds.
    pub throttled_time: u64,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
}

/// Bytes.
#[derive(Debug, Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Serialize)]
pub struct Pids {
    pub current: u64,
    pub limit: u64,
}

fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks.saturating_mul(1_000_000_000 / hz)
}

/// The stats of one container as runc's `events --stats` prints them, in ns and bytes.
pub fn normalize<'a>(id: &'a str, stats: &Stats, version: Version) -> Event<'a> {
    let u = &stats.cpu.usage;
    let t = &stats.cpu.throttling;
    let (total, percpu, kernel, user, throttled) = match version {
        Version::V1 => (
            u.usage_total,
            u.per_core_usage_total.clone(),
            ticks_to_ns(u.usage_kernel),
            ticks_to_ns(u.usage_user),
            t.throttled_time,
        ),
        Version::V2 => (
            u.usage_total.saturating_mul(1000),
            u.per_core_usage_total
                .iter()
                .map(|v| v.saturating_mul(1000))
                .collect(),
            u.usage_kernel.saturating_mul(1000),
            u.usage_user.saturating_mul(1000),
            t.throttled_time.saturating_mul(1000),
        ),
    };
    let entry = |m: &libcgroups::stats::MemoryData| MemoryEntry {
        limit: m.limit,
        usage: m.usage,
        max: m.max_usage,
        failcnt: m.fail_count,
    };
    Event {
        kind: "stats",
        id,
        data: Data {
            cpu: Cpu {
                usage: CpuUsage {
                    total,
                    percpu,
                    kernel,
                    user,
                },
                throttling: Throttling {
                    periods: t.periods,
                    throttled_periods: t.throttled_periods,
                    throttled_time: throttled,
                },
            },
            memory: Memory {
                usage: entry(&stats.memory.memory),
                swap: entry(&stats.memory.memswap),
            },
            pids: Pids {
                current: stats.pids.current,
                limit: stats.pids.limit,
            },
        },
    }
}
