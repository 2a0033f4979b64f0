//! Soak: mixed native and Python traffic while models are registered, scaled and unregistered
//! in a loop; RSS, open descriptors, threads and temporary files are sampled and must not grow
//! without bound. `FERROSERVE_SOAK_SECS` sets the duration (default 40 s here; `scripts/soak.sh`
//! runs it for half an hour).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_mib: f64,
    fds: usize,
    threads: usize,
    tmp_files: usize,
}

fn status_field(pid: u32, name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        1 + count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn sample(server: &Server) -> Sample {
    let pid = server.pid;
    Sample {
        rss_mib: status_field(pid, "VmRSS:") / 1024.0,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        threads: status_field(pid, "Threads:") as usize,
        // The server's TMPDIR is its directory: extracted archives (models/), worker
        // sockets (ferroserve-<pid>/) and downloads live there.
        tmp_files: std::fs::read_dir(server.dir.path())
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        n == "models" || n.starts_with("ferroserve-") || n.starts_with(".tmp")
                    })
                    .map(|e| count_files(&e.path()))
                    .sum()
            })
            .unwrap_or(0),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn soak_without_growth() {
    let secs: u64 = std::env::var("FERROSERVE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let echo =
        "def handle(data, context):\n    return None if data is None else ['ok' for _ in data]\n";
    let server = python_model_server("echo", echo, "enable_model_api=true");
    // The native model, registered next to the Python one.
    let store = Server::model_store(server.dir.path());
    std::fs::copy(
        std::path::Path::new(REPO).join("model-store/sign.mar"),
        store.join("sign.mar"),
    )
    .unwrap();
    let m = server.management.clone();
    let res = agent()
        .post(format!("{m}/models?url=sign.mar&initial_workers=1"))
        .send_empty()
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get(&format!("{m}/models/echo")).1.contains("\"READY\"") {
        assert!(Instant::now() < deadline, "the Python worker never started");
        std::thread::sleep(Duration::from_millis(200));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let reference = Reference::load();
    let body = request_body(&reference.cases()[0], reference.features(), 1);
    let mut load = Vec::new();
    for (model, ct, payload) in [
        ("sign", "application/json", body.clone()),
        ("sign", "application/json", body),
        ("echo", "text/plain", "x".to_string()),
    ] {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        let url = format!("{}/predictions/{model}", server.inference);
        load.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if post(&url, ct, &payload).0 == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // Management churn: register, scale, predict, unregister, again and again.
    let churn = {
        let (stop, m, inference) = (stop.clone(), m.clone(), server.inference.clone());
        let body = request_body(&reference.cases()[1], reference.features(), 1);
        std::thread::spawn(move || {
            let mut cycles = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("cycle{}", cycles % 3);
                let ok = agent()
                    .post(format!(
                        "{m}/models?url=sign.mar&model_name={name}&initial_workers=1"
                    ))
                    .send_empty()
                    .is_ok_and(|r| r.status() == 200);
                assert!(ok, "registration failed in cycle {cycles}");
                let scaled = agent()
                    .put(format!("{m}/models/{name}?min_worker=2&synchronous=true"))
                    .send_empty()
                    .unwrap();
                assert_eq!(scaled.status(), 200);
                assert_eq!(
                    post(
                        &format!("{inference}/predictions/{name}"),
                        "application/json",
                        &body
                    )
                    .0,
                    200
                );
                let gone = agent().delete(format!("{m}/models/{name}")).call().unwrap();
                assert_eq!(gone.status(), 200);
                cycles += 1;
            }
            cycles
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(2));
        samples.push(sample(&server));
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let cycles = churn.join().unwrap();

    // Warm-up excluded: the first quarter against the last quarter.
    let q = (samples.len() / 4).max(1);
    let (first, last) = (&samples[..q], &samples[samples.len() - q..]);
    let med = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    let rss = (med(first, |s| s.rss_mib), med(last, |s| s.rss_mib));
    let fds = (med(first, |s| s.fds as f64), med(last, |s| s.fds as f64));
    let threads = (
        med(first, |s| s.threads as f64),
        med(last, |s| s.threads as f64),
    );
    let tmp = (
        med(first, |s| s.tmp_files as f64),
        med(last, |s| s.tmp_files as f64),
    );
    println!(
        "soak {secs} s: {} requests served, {} failed, {cycles} register/scale/unregister cycles; \
         RSS {:.0} -> {:.0} MiB, fds {} -> {}, threads {} -> {}, temp files {} -> {}",
        served.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        rss.0,
        rss.1,
        fds.0,
        fds.1,
        threads.0,
        threads.1,
        tmp.0,
        tmp.1
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed under churn"
    );
    assert!(cycles >= 3, "only {cycles} management cycles");
    assert!(rss.1 <= rss.0 * 1.25 + 40.0, "RSS grew: {rss:?}");
    assert!(fds.1 <= fds.0 + 16.0, "descriptors grew: {fds:?}");
    assert!(threads.1 <= threads.0 + 16.0, "threads grew: {threads:?}");
    assert!(tmp.1 <= tmp.0 + 64.0, "temporary files grew: {tmp:?}");
}
