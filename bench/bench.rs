//! Start-up, memory and single-request latency of the bundled sign models, next to the raw
//! forward pass and body decoding measured in the same run. Run through `bench/run.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferroserve::archive::ModelArchive;
use ferroserve::backend::{self, RuntimeOptions, Tensor};
use ferroserve::device::Device;
use ferroserve::handler::tensor_classifier::parse_request;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server_bin = PathBuf::from(
        args.get(1)
            .expect("usage: bench <ferroserve binary> [requests]"),
    );
    let requests: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = repo.join("model-store");
    let body = request_body();
    tch::set_num_threads(1);
    tch::set_num_interop_threads(1);

    // Raw runtimes, in process: batch 1, one intra-op thread.
    let options = RuntimeOptions {
        device: Device::Cpu,
        intra_op_threads: 1,
        onnxruntime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
    };
    let mut raw = Vec::new();
    for mar in ["sign.mar", "sign_onnx.mar"] {
        let archive = ModelArchive::open(&store, mar, 1 << 30).expect("archive");
        let file = archive.manifest.model.serialized_file.clone().unwrap();
        let model = backend::load(&archive.file(&file), &options).expect("model");
        let input = parse_request(body.as_bytes(), FRAMES, FEATURES)
            .unwrap()
            .tensor;
        let run = || {
            model
                .forward(Tensor::new(vec![1, FRAMES, FEATURES], input.clone()))
                .unwrap();
        };
        time_us(50, run);
        raw.push(median(time_us(500, run)));
    }
    let decode = median(time_us(500, || {
        parse_request(body.as_bytes(), FRAMES, FEATURES).unwrap();
    }));

    // The server: start to ready, first prediction, RSS, then sequential requests.
    let dir = tempfile::tempdir().unwrap();
    let (ip, mp, xp) = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("config.properties");
    std::fs::write(
        &cfg,
        format!(
            "inference_address=http://127.0.0.1:{ip}\nmanagement_address=http://127.0.0.1:{mp}\n\
             metrics_address=http://127.0.0.1:{xp}\nmodel_store={}\nload_models=all\nintra_op_threads=1\n",
            store.display()
        ),
    )
    .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://127.0.0.1:{ip}");
    let start = Instant::now();
    let mut child = Command::new(&server_bin)
        .args(["--foreground", "--ts-config", cfg.to_str().unwrap()])
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ferroserve");
    let ready = loop {
        if agent
            .get(format!("{base}/ping"))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server never became ready"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let predict = |model: &str| {
        let res = agent
            .post(format!("{base}/predictions/{model}"))
            .header("Content-Type", "application/json")
            .send(body.as_str())
            .unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().read_to_string().unwrap();
    };
    predict("sign");
    let first_prediction = start.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let rss = rss_mib(child.id());

    let mut served = Vec::new();
    for model in ["sign", "sign_onnx"] {
        time_us(50, || predict(model));
        let t = time_us(requests, || predict(model));
        served.push((median(t.clone()), percentile(t, 0.99)));
    }
    let rss_after = rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();

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
        "| server overhead: p50 − (decode + forward) | {:.0} µs | {:.0} µs |",
        served[0].0 - decode - raw[0],
        served[1].0 - decode - raw[1]
    );
    println!();
    println!(
        "start to ready (first /ping 200): {:.0} ms",
        ready.as_secs_f64() * 1e3
    );
    println!(
        "start to first prediction: {:.0} ms",
        first_prediction.as_secs_f64() * 1e3
    );
    println!("RSS after start (both models loaded, one prediction): {rss:.0} MiB");
    println!(
        "RSS after {} requests: {rss_after:.0} MiB",
        2 * (requests + 50)
    );
}
