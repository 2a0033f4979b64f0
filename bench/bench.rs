//! Measurements of the bundled sign models, run through `bench/run.sh` and `bench/load.sh`:
//! - `latency [N]`: start-up, RSS and single-connection latency next to the raw forward pass
//!   and the body decode, measured in the same run;
//! - `raw B`: the in-process forward pass at batch size B (TorchScript and ONNX);
//! - `overload`: how fast a full queue is refused (503);
//! - `memory`: RSS of one model with 1 and with 4 workers (the weights are shared);
//! - `parallel T`: forward passes per second of one loaded model driven from T threads at
//!   once (TorchScript and ONNX), as T workers of one model version run them;
//! - `vision MODEL.pt IMAGE`: the native image_classifier's limit on one thread: median µs of
//!   decode + transforms, and of the raw forward pass (`bench/vision.sh`);
//! - `decode [body.json]`: median µs of the sign body's decode (the given file's body, else
//!   the benchmark body; `bench/compare.sh` passes the body it sends);
//! - `readers`: the sign body's decode with each JSON reader (serde_json, sonic-rs, the scan) and as
//!   an `application/x-npy` array, median µs and whether they decode the same tensor;
//! - `drift`: drift monitoring's work per sign request on one thread: median µs of the input
//!   summaries, and mean µs of recording one observation (scoring every 100 included)
//!   (`bench/drift.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferroserve::archive::ModelArchive;
use ferroserve::backend::{self, RuntimeOptions, Tensor};
use ferroserve::device::Device;
use ferroserve::handler::binary_input::parse_npy;
use ferroserve::handler::tensor_classifier::{parse_request, parse_request_with, JsonReader};
use ferroserve::handler::vision;

const FRAMES: usize = 64;
const FEATURES: usize = 469;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn time_us(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// The body decode with each JSON reader, on the benchmark body (numbers as their shortest
/// f32 spelling) and on the same values as Python's `json.dumps` of float64 writes them
/// (17 significant digits, what numpy-based clients send): median µs of 500 decodes, size,
/// and whether the readers' tensors are bit for bit the same.
fn readers() {
    let frames: Vec<Vec<f32>> = (0..FRAMES)
        .map(|f| {
            (0..FEATURES)
                .map(|j| (((f * FEATURES + j) as f64 * 0.001).sin() * 0.5) as f32)
                .collect()
        })
        .collect();
    // f32 values serialize with their shortest spelling; a JSON value holds them as f64,
    // which is what Python writes for numpy's float32 values turned into floats.
    let short = format!(
        "{{\"landmarks\": {}}}",
        serde_json::to_string(&frames).unwrap()
    );
    let long = serde_json::json!({ "landmarks": frames }).to_string();
    // The same values as NumPy's .npy (what `np.save` writes), read without any JSON.
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({FRAMES}, {FEATURES}), }}");
    while (11 + header.len()) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend(frames.iter().flatten().flat_map(|v| v.to_le_bytes()));
    let from_json = parse_request(long.as_bytes(), FRAMES, FEATURES).unwrap().0;
    let from_npy = parse_npy(&npy, FRAMES, FEATURES).unwrap();
    let t = time_us(500, || drop(parse_npy(&npy, FRAMES, FEATURES).unwrap()));
    println!(
        "npy {:.0}KB {:.0} us (p10 {:.0}, p90 {:.0}) same={}",
        npy.len() as f64 / 1024.0,
        median(t.clone()),
        percentile(t.clone(), 0.1),
        percentile(t, 0.9),
        from_json == from_npy
    );
    for (name, body) in [("short", &short), ("python", &long)] {
        let decode = |reader| parse_request_with(reader, body.as_bytes(), FRAMES, FEATURES);
        let bits = |reader| {
            decode(reader)
                .unwrap()
                .0
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        let sonic = bits(JsonReader::Sonic);
        let same = bits(JsonReader::SerdeJson) == sonic && bits(JsonReader::Scan) == sonic;
        for reader in [JsonReader::SerdeJson, JsonReader::Sonic, JsonReader::Scan] {
            let t = time_us(500, || drop(decode(reader).unwrap()));
            println!(
                "{name} {:.0}KB {reader:?} {:.0} us (p10 {:.0}, p90 {:.0}) same={same}",
                body.len() as f64 / 1024.0,
                median(t.clone()),
                percentile(t.clone(), 0.1),
                percentile(t, 0.9)
            );
        }
    }
}

/// The benchmark request: 64 frames of 469 values, the same formula as `bench/load.sh` uses.
fn request_body() -> String {
    let frames: Vec<Vec<f32>> = (0..FRAMES)
        .map(|f| {
            (0..FEATURES)
                .map(|j| (((f * FEATURES + j) as f64 * 0.001).sin() * 0.5) as f32)
                .collect()
        })
        .collect();
    serde_json::json!({ "landmarks": frames }).to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> u16 {
    match agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
    {
        Ok(mut res) => {
            let _ = res.body_mut().read_to_string();
            res.status().as_u16()
        }
        Err(_) => 0,
    }
}

/// Raw in-process forward passes at `batch`, one intra-op thread: p50 in µs (TorchScript, ONNX).
fn raw_forward(batch: usize) -> [f64; 2] {
    raw(batch, false)
}

/// Decode then forward, one after the other on one thread, as a server must: the forward then
/// starts with the caches the decode left. What a served request costs beyond this is the
/// server's own.
fn raw_pipeline() -> [f64; 2] {
    raw(1, true)
}

/// The bundled sign model as TorchScript and as ONNX, on the CPU with one intra-op thread.
fn sign_models() -> [Box<dyn backend::Backend>; 2] {
    // libtorch accepts its thread counts once per process.
    static THREADS: std::sync::Once = std::sync::Once::new();
    THREADS.call_once(|| {
        tch::set_num_threads(1);
        tch::set_num_interop_threads(1);
    });
    let options = RuntimeOptions {
        device: Device::Cpu,
        intra_op_threads: 1,
        onnxruntime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
    };
    ["sign.mar", "sign_onnx.mar"].map(|mar| {
        let archive =
            ModelArchive::open(&repo().join("model-store"), mar, 1 << 30).expect("archive");
        let file = archive.manifest.model.serialized_file.clone().unwrap();
        backend::load(&archive.file(&file), &options).expect("model")
    })
}

/// Forward passes per second (batch 1, one intra-op thread each) of one loaded model, from
/// `threads` threads at once for three seconds.
fn parallel(threads: usize) -> [f64; 2] {
    let body = request_body();
    let input = parse_request(body.as_bytes(), FRAMES, FEATURES).unwrap().0;
    let mut out = [0.0; 2];
    for (i, model) in sign_models().iter().enumerate() {
        let forward = || {
            model
                .forward(Tensor::new(vec![1, FRAMES, FEATURES], input.clone()))
                .expect("forward");
        };
        // Warm-up on every thread (each gets its session, as a starting worker does).
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    model.prepare_thread();
                    for _ in 0..20 {
                        forward();
                    }
                });
            }
        });
        let until = Instant::now() + Duration::from_secs(3);
        let started = Instant::now();
        let done: usize = std::thread::scope(|s| {
            let runs: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut n = 0;
                        while Instant::now() < until {
                            forward();
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).sum()
        });
        out[i] = done as f64 / started.elapsed().as_secs_f64();
    }
    out
}

fn raw(batch: usize, decode: bool) -> [f64; 2] {
    let body = request_body();
    let one = parse_request(body.as_bytes(), FRAMES, FEATURES).unwrap().0;
    let input: Vec<f32> = (0..batch).flat_map(|_| one.iter().copied()).collect();
    let mut out = [0.0; 2];
    for (i, model) in sign_models().iter().enumerate() {
        let run = || {
            let input = if decode {
                parse_request(body.as_bytes(), FRAMES, FEATURES).unwrap().0
            } else {
                input.clone()
            };
            model
                .forward(Tensor::new(vec![batch, FRAMES, FEATURES], input))
                .unwrap();
        };
        time_us(20, run);
        out[i] = median(time_us(200, run));
    }
    out
}

/// A server on free loopback ports with the given archives and extra config lines.
struct Running {
    child: std::process::Child,
    base: String,
    management: String,
    metrics: String,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(bin: &Path, archives: &[&str], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        for a in archives {
            let src = [
                repo().join("model-store").join(a),
                repo().join("tests/fixtures").join(a),
            ]
            .into_iter()
            .find(|p| p.exists())
            .expect("archive");
            std::fs::copy(src, store.join(a)).unwrap();
        }
        let (ip, mp, xp) = (free_port(), free_port(), free_port());
        let cfg = dir.path().join("config.properties");
        std::fs::write(
            &cfg,
            format!(
                "inference_address=http://127.0.0.1:{ip}\nmanagement_address=http://127.0.0.1:{mp}\n\
                 metrics_address=http://127.0.0.1:{xp}\nmodel_store={}\nload_models=all\n\
                 intra_op_threads=1\ndisable_token_authorization=true\n\
                 grpc_inference_port={}\ngrpc_management_port={}\n{extra}\n",
                store.display(),
                free_port(),
                free_port()
            ),
        )
        .unwrap();
        let started = Instant::now();
        let child = Command::new(bin)
            .args(["--foreground", "--ts-config", cfg.to_str().unwrap()])
            .current_dir(dir.path())
            .env("TMPDIR", dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferroserve");
        Self {
            child,
            base: format!("http://127.0.0.1:{ip}"),
            management: format!("http://127.0.0.1:{mp}"),
            metrics: format!("http://127.0.0.1:{xp}"),
            started,
            _dir: dir,
        }
    }

    /// Time from start to the first `/ping` answered 200.
    fn wait_ready(&self, agent: &ureq::Agent) -> Duration {
        loop {
            if agent
                .get(format!("{}/ping", self.base))
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                return self.started.elapsed();
            }
            assert!(
                self.started.elapsed() < Duration::from_secs(60),
                "server never became ready"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// The metrics listener, the inference port's neighbour in the config above.
    fn metrics(&self) -> String {
        self.metrics.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: bench <ferroserve binary> latency [requests] | raw <batch> | parallel <threads> | overload | memory | scrape | decode [body.json] | readers | vision <model.pt> <image> | drift";
    let bin = PathBuf::from(args.get(1).expect(usage));
    match args.get(2).map(String::as_str) {
        Some("latency") => latency(
            &bin,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000),
        ),
        Some("raw") => {
            let batch = args.get(3).and_then(|s| s.parse().ok()).expect(usage);
            let [ts, onnx] = raw_forward(batch);
            println!("{ts:.0} {onnx:.0}");
        }
        Some("parallel") => {
            let threads = args.get(3).and_then(|s| s.parse().ok()).expect(usage);
            let [ts, onnx] = parallel(threads);
            println!("{ts:.0} {onnx:.0}");
        }
        Some("overload") => overload(&bin),
        Some("memory") => memory(&bin),
        Some("scrape") => scrape(&bin),
        Some("decode") => {
            // The body a load test sends, when given, so the ceiling is the served body's.
            let body = match args.get(3) {
                Some(path) => std::fs::read_to_string(path).expect("the body file reads"),
                None => request_body(),
            };
            let t = time_us(500, || {
                parse_request(body.as_bytes(), FRAMES, FEATURES).unwrap();
            });
            println!("{:.0}", median(t));
        }
        Some("readers") => readers(),
        Some("drift") => {
            let [summaries, observe] = drift_cost();
            println!("{summaries:.2} {observe:.2}");
        }
        Some("vision") => {
            let (model, image) = (args.get(3).expect(usage), args.get(4).expect(usage));
            let [decode, forward] = vision(Path::new(model), Path::new(image));
            println!("{decode:.0} {forward:.0}");
        }
        _ => panic!("{usage}"),
    }
}

/// Drift monitoring's share of a sign request: the summaries of its padded input (median
/// µs), and recording an observation in a monitor with a reference, window 1000 and period
/// 100, so that every hundredth call scores the window (mean µs over 20 000 calls).
fn drift_cost() -> [f64; 2] {
    use ferroserve::drift::{Monitor, Settings};
    use ferroserve::handler::labels::Labels;
    use ferroserve::handler::observe::{self, Inputs, Observation};
    let (tensor, _) = parse_request(request_body().as_bytes(), FRAMES, FEATURES).unwrap();
    let summarize = || {
        let mut seen = Inputs::new();
        observe::summarize(&tensor, &mut seen);
        let frames = tensor
            .chunks(FEATURES)
            .rposition(|f| f.iter().any(|&v| v != 0.0));
        let _ = seen.try_push(("frames", frames.unwrap_or(0) as f64));
        seen
    };
    let summaries = median(time_us(2000, || drop(summarize())));
    let labels = Labels::parse(r#"{"0": "a", "1": "b", "2": "c", "3": "d"}"#).unwrap();
    let monitor = Monitor::new(
        Settings::default(),
        labels,
        ferroserve::metrics::drift::DriftFamilies::new(),
        ("sign", "1.0"),
        &["mean", "std", "zero_share", "frames"],
        None,
    );
    let seen = |i: usize| Observation {
        top1: Some((i % 4, 0.9)),
        input: summarize(),
    };
    for i in 0..1000 {
        monitor.observe(&seen(i));
    }
    monitor.capture().unwrap();
    let calls: Vec<Observation> = (0..20_000).map(seen).collect();
    let started = Instant::now();
    for o in &calls {
        monitor.observe(o);
    }
    let observe = started.elapsed().as_secs_f64() * 1e6 / calls.len() as f64;
    [summaries, observe]
}

/// The image classifier's work per request on one thread: decode + transforms, and the raw
/// forward pass of the model at batch 1 (median µs of each).
fn vision(model: &Path, image: &Path) -> [f64; 2] {
    tch::set_num_threads(1);
    tch::set_num_interop_threads(1);
    let bytes = std::fs::read(image).expect("image");
    let limit = Some(vision::PILLOW_MAX_IMAGE_PIXELS);
    let input = || vision::classifier_input(&bytes, limit).expect("image decodes");
    time_us(5, || drop(input()));
    let decode = median(time_us(50, || drop(input())));
    let options = RuntimeOptions {
        device: Device::Cpu,
        intra_op_threads: 1,
        onnxruntime_library: None,
    };
    let model = backend::load(model, &options).expect("model");
    let one = input();
    let batch = || Tensor::new(vec![1, 3, 224, 224], one.data.clone());
    time_us(3, || drop(model.forward(batch()).unwrap()));
    let forward = median(time_us(30, || drop(model.forward(batch()).unwrap())));
    [decode, forward]
}

fn latency(bin: &Path, requests: usize) {
    let body = request_body();
    let raw = raw_forward(1);
    let pipeline = raw_pipeline();
    let decode = median(time_us(500, || {
        parse_request(body.as_bytes(), FRAMES, FEATURES).unwrap();
    }));

    // The server: start to ready, first prediction, RSS, then sequential requests.
    let server = Running::start(bin, &["sign.mar", "sign_onnx.mar"], "");
    let client = agent();
    let ready = server.wait_ready(&client);
    let predict = |model: &str| {
        let status = post(
            &client,
            &format!("{}/predictions/{model}", server.base),
            &body,
        );
        assert_eq!(status, 200);
    };
    predict("sign");
    let first_prediction = server.started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let rss = server.rss_mib();

    let mut served = Vec::new();
    for model in ["sign", "sign_onnx"] {
        time_us(50, || predict(model));
        let t = time_us(requests, || predict(model));
        served.push((median(t.clone()), percentile(t, 0.99)));
    }
    let rss_after = server.rss_mib();
    drop(server);

    println!("| measure | TorchScript | ONNX |");
    println!("|---|---|---|");
    println!(
        "| raw forward, batch 1, 1 thread (p50) | {:.0} µs | {:.0} µs |",
        raw[0], raw[1]
    );
    println!("| body decode, 64×469 JSON (p50) | {decode:.0} µs | {decode:.0} µs |");
    println!(
        "| served prediction, 1 connection (p50) | {:.0} µs | {:.0} µs |",
        served[0].0, served[1].0
    );
    println!(
        "| served prediction, 1 connection (p99) | {:.0} µs | {:.0} µs |",
        served[0].1, served[1].1
    );
    println!(
        "| decode then forward, in process (p50) | {:.0} µs | {:.0} µs |",
        pipeline[0], pipeline[1]
    );
    println!(
        "| p50 − (decode + forward) | {:.0} µs | {:.0} µs |",
        served[0].0 - decode - raw[0],
        served[1].0 - decode - raw[1]
    );
    println!(
        "| p50 − (decode then forward, in process) | {:.0} µs | {:.0} µs |",
        served[0].0 - pipeline[0],
        served[1].0 - pipeline[1]
    );
    println!();
    println!(
        "- start to ready (first /ping 200): {:.0} ms; start to first prediction: {:.0} ms",
        ready.as_secs_f64() * 1e3,
        first_prediction.as_secs_f64() * 1e3
    );
    println!(
        "- RSS after start (both models, one prediction): {rss:.0} MiB; after {} requests: {rss_after:.0} MiB",
        2 * (requests + 50)
    );
}

/// A full queue must be refused at once: the probe model keeps the only worker busy and the
/// queue (size 1) full while 503s are timed, each on a new connection (a 503 closes it).
fn overload(bin: &Path) {
    let server = Running::start(bin, &["probe.mar"], "job_queue_size=1");
    let client = agent();
    server.wait_ready(&client);
    let url = format!("{}/predictions/probe", server.base);
    let occupy = |work: u32| {
        let url = url.clone();
        std::thread::spawn(move || {
            post(
                &agent(),
                &url,
                &format!("{{\"landmarks\": [[{work}, 0, 0, 0]]}}"),
            )
        })
    };
    let busy = occupy(40_000);
    std::thread::sleep(Duration::from_millis(300));
    let queued = occupy(0);
    std::thread::sleep(Duration::from_millis(300));
    let times = time_us(500, || {
        assert_eq!(post(&client, &url, "{\"landmarks\": [[0, 0, 0, 0]]}"), 503);
    });
    println!(
        "- 503 on a full queue, client-side including a new loopback connection: p50 {:.0} µs, p99 {:.0} µs",
        median(times.clone()),
        percentile(times, 0.99)
    );
    drop(server);
    let _ = (busy.join(), queued.join());
}

/// RSS of the sign model with one worker, then scaled to four workers that all ran.
fn memory(bin: &Path) {
    let server = Running::start(bin, &["sign.mar"], "");
    let client = agent();
    server.wait_ready(&client);
    let body = request_body();
    let url = format!("{}/predictions/sign", server.base);
    for _ in 0..20 {
        assert_eq!(post(&client, &url, &body), 200);
    }
    let one = server.rss_mib();
    let res = client
        .put(format!(
            "{}/models/sign?min_worker=4&synchronous=true",
            server.management
        ))
        .send_empty()
        .unwrap();
    assert_eq!(res.status(), 200);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let client = agent();
                for _ in 0..50 {
                    assert_eq!(post(&client, &url, &body), 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let four = server.rss_mib();
    println!(
        "- RSS of the sign model: 1 worker {one:.0} MiB, 4 workers {four:.0} MiB (+{:.0} MiB for 3 more workers)",
        four - one
    );
}

/// The cost of one `/metrics` scrape in prometheus mode with 20 models loaded, each having
/// served requests (so every family has series for every model).
fn scrape(bin: &Path) {
    let server = Running::start(
        bin,
        &["sign.mar"],
        "metrics_mode=prometheus\nenable_model_api=true",
    );
    let client = agent();
    server.wait_ready(&client);
    let body = request_body();
    for i in 1..20 {
        let res = client
            .post(format!(
                "{}/models?url=sign.mar&model_name=sign{i:02}&initial_workers=1&synchronous=true",
                server.management
            ))
            .send_empty()
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    for i in 0..20 {
        let model = if i == 0 {
            "sign".to_string()
        } else {
            format!("sign{i:02}")
        };
        for _ in 0..5 {
            let url = format!("{}/predictions/{model}", server.base);
            assert_eq!(post(&client, &url, &body), 200);
        }
    }
    let url = format!("{}/metrics", server.metrics());
    let fetch = || {
        client
            .get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let size = fetch().len();
    let t = time_us(200, || {
        fetch();
    });
    println!(
        "- /metrics with 20 models (prometheus mode, {size} bytes, {} lines): p50 {:.0} µs, p99 {:.0} µs per scrape, client-side on a kept-alive connection",
        fetch().lines().count(),
        median(t.clone()),
        percentile(t, 0.99)
    );
}
