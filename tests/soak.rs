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
    /// Totals over the server's process tree.
    rss_mib: f64,
    processes: usize,
    /// Register/scale/unregister cycles done when the sample was taken.
    cycles: usize,
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

/// The server and every process below it (its Python workers and anything they start).
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ...": the name may hold spaces, so split after it.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    tree
}

fn sample(pid: u32, dir: &std::path::Path) -> Sample {
    let tree = process_tree(pid);
    let sum = |f: &dyn Fn(u32) -> f64| tree.iter().map(|p| f(*p)).sum::<f64>();
    Sample {
        rss_mib: sum(&|p| status_field(p, "VmRSS:")) / 1024.0,
        fds: sum(&|p| std::fs::read_dir(format!("/proc/{p}/fd")).map_or(0, |d| d.count()) as f64)
            as usize,
        threads: sum(&|p| status_field(p, "Threads:")) as usize,
        processes: tree.len(),
        cycles: 0,
        // The server's TMPDIR is its directory: extracted archives (models/), worker
        // sockets (ferroserve-<pid>/) and downloads live there.
        tmp_files: std::fs::read_dir(dir)
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

/// Bytes of the serialized model inside an archive (its weights).
fn serialized_size(archive: &str) -> f64 {
    let file = std::fs::File::open(std::path::Path::new(REPO).join(archive)).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let manifest: serde_json::Value = {
        let entry = zip.by_name("MAR-INF/MANIFEST.json").unwrap();
        serde_json::from_reader(entry).unwrap()
    };
    let name = manifest["model"]["serializedFile"].as_str().unwrap();
    let size = zip.by_name(name).unwrap().size();
    size as f64
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
    // Management churn: register, scale, predict, unregister, again and again. The tree is
    // sampled at the same point of every cycle: once the unregistered version has retired
    // (its extracted files gone with its last reference), so that no sample catches a model
    // half loaded or half released.
    let done_cycles = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (stop, m, inference) = (stop.clone(), m.clone(), server.inference.clone());
        let (pid, dir) = (server.pid, server.dir.path().to_path_buf());
        let resting_files = sample(pid, &dir).tmp_files;
        let done_cycles = done_cycles.clone();
        let body = request_body(&reference.cases()[1], reference.features(), 1);
        std::thread::spawn(move || {
            let mut samples = Vec::new();
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
                let retired_by = Instant::now() + Duration::from_secs(60);
                let at_rest = loop {
                    let s = sample(pid, &dir);
                    if s.tmp_files <= resting_files {
                        break s;
                    }
                    assert!(
                        Instant::now() < retired_by,
                        "{name} never released its files after unregistration ({} > {resting_files})",
                        s.tmp_files
                    );
                    std::thread::sleep(Duration::from_millis(20));
                };
                samples.push(Sample { cycles, ..at_rest });
                done_cycles.store(cycles, Ordering::SeqCst);
            }
            samples
        })
    };

    // At least the duration asked for and enough cycles for a per-cycle bound to mean
    // something on a slow machine; five minutes at most.
    const MIN_CYCLES: usize = 80;
    let started = Instant::now();
    let give_up = started + Duration::from_secs(secs.max(300));
    while (started.elapsed() < Duration::from_secs(secs)
        || done_cycles.load(Ordering::SeqCst) < MIN_CYCLES)
        && Instant::now() < give_up
    {
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let samples = churn.join().unwrap();
    let cycles = samples.len();
    assert!(cycles >= MIN_CYCLES, "only {cycles} management cycles");

    // Warm-up excluded: the first quarter against the last quarter for descriptors, threads
    // and files; for memory, the trend over everything after the first quarter (Theil-Sen:
    // the median of the slopes between every two samples), which the allocators' back and
    // forth under the request load does not move as it moves two medians.
    let q = samples.len() / 4;
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
    let settled = &samples[q..];
    let per_cycle = median(
        settled
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                settled[i + 1..]
                    .iter()
                    .map(move |b| (b.rss_mib - a.rss_mib) / (b.cycles - a.cycles) as f64)
            })
            .collect(),
    );
    let between = settled.len();
    // A cycle loads the model for one worker, then for a second: leaking one load per
    // cycle would grow the tree by at least the weights each time.
    let weights_mib = serialized_size("model-store/sign.mar") / (1024.0 * 1024.0);
    println!(
        "soak {:.0} s: {} requests served, {} failed, {cycles} register/scale/unregister cycles; \
         process tree ({} processes) RSS {:.1} -> {:.1} MiB over {between} cycles \
         ({per_cycle:.3} MiB per cycle; one load of the weights is {weights_mib:.2} MiB), \
         fds {} -> {}, threads {} -> {}, temp files {} -> {}",
        started.elapsed().as_secs_f64(),
        served.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        samples.last().map_or(0, |s| s.processes),
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
    // A leaked load per cycle adds at least the weights each time, well past a quarter of them.
    assert!(
        per_cycle < weights_mib / 4.0,
        "the process tree's RSS grew {per_cycle:.3} MiB per cycle over {between} cycles: {rss:?}"
    );
    assert!(fds.1 <= fds.0 + 16.0, "descriptors grew: {fds:?}");
    assert!(threads.1 <= threads.0 + 16.0, "threads grew: {threads:?}");
    assert!(tmp.1 <= tmp.0 + 64.0, "temporary files grew: {tmp:?}");
}
