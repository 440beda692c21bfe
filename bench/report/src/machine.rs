//! What a benchmark run records about where it ran (cores, memory, CPU
//! model, kernel, commit, toolchain versions), and the CPU time and memory of
//! a process it measured, read from `/proc`. Linux only, like the suite.
//! Not a profiler.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The machine and software a result was measured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Online logical CPUs.
    pub cores: usize,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// `git rev-parse --short HEAD`, with `-dirty` when the tree has changes.
    pub commit: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `go version`, when Go was involved.
    #[serde(default)]
    pub go: Option<String>,
    /// 1-minute load average when the run started: a busy machine shows here.
    pub load_average: f64,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
}

impl Machine {
    /// Reads everything from the running system. `with_go` adds `go version`.
    pub fn probe(with_go: bool) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(f64::NAN);
        let dirty = output("git", &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        let commit = output("git", &["rev-parse", "--short", "HEAD"]).map_or_else(
            || "unknown".to_owned(),
            |c| if dirty { format!("{c}-dirty") } else { c },
        );
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mib,
            cpu_model,
            kernel: output("uname", &["-r"]).unwrap_or_else(|| "unknown".to_owned()),
            commit,
            rustc: output("rustc", &["--version"]).unwrap_or_else(|| "unknown".to_owned()),
            go: if with_go {
                output("go", &["version"])
            } else {
                None
            },
            load_average,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// CPU time and memory of one process, from `/proc/<pid>/stat` and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcUsage {
    /// User plus system CPU time so far, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size now, in bytes.
    pub rss_bytes: u64,
    /// Peak resident set size (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
}

impl ProcUsage {
    /// Reads the usage of process `pid` (use `std::process::id()` for oneself).
    pub fn of(pid: u32) -> anyhow::Result<ProcUsage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name (field 2) may contain spaces; fields are counted after its ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("no ')' in /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is index 0, so utime (field 14) is 11 and stime (15) is 12.
        let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
            bail!("/proc/{pid}/stat has too few fields");
        };
        let ticks = utime.parse::<u64>()? + stime.parse::<u64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(ProcUsage {
            cpu_seconds: ticks as f64 / clock_ticks_per_second(),
            rss_bytes: kib("VmRSS:") * 1024,
            peak_rss_bytes: kib("VmHWM:") * 1024,
        })
    }
}

/// `getconf CLK_TCK`; 100 on every Linux this suite runs on, read anyway.
fn clock_ticks_per_second() -> f64 {
    output("getconf", &["CLK_TCK"])
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// CPU time of `pid` so far, in nanoseconds: its threads' run time from
/// `/proc/<pid>/task/*/schedstat`, which resolves what 10 ms ticks cannot
/// (a 100-subscriber push). `None` when the kernel does not provide it.
pub fn schedstat_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// CPU seconds of `pid` so far: [`schedstat_ns`], or [`ProcUsage`]'s ticks
/// without it.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    match schedstat_ns(pid) {
        Some(ns) => Ok(ns as f64 / 1e9),
        None => Ok(ProcUsage::of(pid)?.cpu_seconds),
    }
}

/// Pins every thread of this process, and every thread it starts later, to
/// `cpu` (with `taskset`, from util-linux).
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .output()
        .context("running `taskset` (util-linux) to pin a benchmark process")?;
    if !out.status.success() {
        bail!("taskset failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        // Burn a little CPU so the counter is not trivially zero on a fast machine.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let u = ProcUsage::of(std::process::id()).unwrap();
        assert!(u.rss_bytes > 0);
        assert!(u.peak_rss_bytes >= u.rss_bytes);
        assert!(u.cpu_seconds >= 0.0);
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(ProcUsage::of(u32::MAX).is_err());
    }

    #[test]
    fn probe_sees_this_machine() {
        let m = Machine::probe(false);
        assert!(m.cores >= 1);
        assert!(m.memory_mib > 0);
    }
}
