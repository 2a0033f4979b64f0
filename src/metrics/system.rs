//! TorchServe's system metrics (CPU, memory, disk of `/`, and GPUs when the server uses CUDA),
//! sampled every `metric_time_interval` seconds from /proc, statvfs and `nvidia-smi`, without
//! the Python collector process TorchServe starts for this.

use std::sync::Arc;
use std::time::Duration;

use super::{Dims, Metrics};

/// CPU time counters from the first line of /proc/stat: (busy, total) jiffies.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait are not busy.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// A `Name:   123 kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let kib = text.lines().find_map(|l| l.strip_prefix(name))?;
    let kib: u64 = kib.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// (total, available) bytes from /proc/meminfo.
fn memory() -> Option<(f64, f64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name| kib_field(&info, name).map(|b| b as f64);
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// A process's resident memory in bytes (`VmRSS` in /proc/<pid>/status).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    kib_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS:",
    )
}

/// (total, free) bytes of the file system holding `/`.
fn disk() -> Option<(f64, f64)> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed struct the call fills.
    if unsafe { libc::statvfs(c"/".as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as f64;
    Some((st.f_blocks as f64 * frsize, st.f_bavail as f64 * frsize))
}

/// (device id, utilisation %, memory used MB, memory total MB) per GPU, from `nvidia-smi`.
fn gpus() -> Vec<(String, f64, f64, f64)> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let num = |i: usize| f.get(i)?.parse::<f64>().ok();
            Some((f.first()?.to_string(), num(1)?, num(2)?, num(3)?))
        })
        .collect()
}

/// One sample of every system metric; `last_cpu` carries the CPU counters between calls.
pub fn sample(metrics: &Metrics, last_cpu: &mut Option<(u64, u64)>, gpu: bool) {
    let host = Dims::default();
    let now = cpu_times();
    if let (Some((b0, t0)), Some((b1, t1))) = (*last_cpu, now) {
        if t1 > t0 {
            let pct = (b1 - b0) as f64 * 100.0 / (t1 - t0) as f64;
            metrics.frontend("CPUUtilization", round1(pct), host);
        }
    }
    *last_cpu = now;
    const MB: f64 = 1024.0 * 1024.0;
    const GB: f64 = MB * 1024.0;
    if let Some((total, available)) = memory() {
        usage(
            metrics,
            ["MemoryUsed", "MemoryAvailable", "MemoryUtilization"],
            total,
            available,
            MB,
        );
    }
    if let Some((total, free)) = disk() {
        usage(
            metrics,
            ["DiskUsage", "DiskAvailable", "DiskUtilization"],
            total,
            free,
            GB,
        );
    }
    if gpu {
        for (id, util, used, total) in gpus() {
            let d = Dims {
                device: &id,
                ..Dims::default()
            };
            metrics.frontend("GPUUtilization", util, d);
            metrics.frontend("GPUMemoryUsed", used, d);
            if total > 0.0 {
                metrics.frontend("GPUMemoryUtilization", round1(used * 100.0 / total), d);
            }
        }
    }
}

/// Used and free amounts in `unit`, and the used share in percent, under `[used, free, share]`.
fn usage(metrics: &Metrics, names: [&str; 3], total: f64, free: f64, unit: f64) {
    let host = Dims::default();
    metrics.frontend(names[0], round1((total - free) / unit), host);
    metrics.frontend(names[1], round1(free / unit), host);
    metrics.frontend(names[2], round1((total - free) * 100.0 / total), host);
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Samples on `runtime` shortly after start-up, then every `interval`, for the life of the
/// process.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    interval: Duration,
    gpu: bool,
) {
    runtime.spawn(async move {
        // The first CPU figure needs two readings; take them a moment apart.
        let mut last = cpu_times();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
        loop {
            tick.tick().await;
            // Reading /proc is quick, and the GPU query is bounded; both block briefly.
            tokio::task::block_in_place(|| sample(&metrics, &mut last, gpu));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Mode;

    #[test]
    fn a_sample_sets_the_host_gauges() {
        let m = Metrics::with_defaults(Mode::Prometheus);
        let mut last = cpu_times();
        std::thread::sleep(Duration::from_millis(50));
        sample(&m, &mut last, false);
        let text = m.render(&[]);
        for name in [
            "CPUUtilization",
            "MemoryUsed",
            "MemoryAvailable",
            "MemoryUtilization",
            "DiskUsage",
            "DiskAvailable",
            "DiskUtilization",
        ] {
            assert!(
                text.contains(&format!("{name}{{Level=\"Host\",Hostname=")),
                "{name}: {text}"
            );
        }
        let (total, available) = memory().unwrap();
        assert!(total > available && available > 0.0);
    }
}
