//! Starts the real `ferroserve` binary on free loopback ports with a private model store.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A port nobody listens on, drawn below the kernel's ephemeral range (32768 and up): a port
/// the kernel hands out could be taken by any client connection of a concurrent test between
/// this check and the server's bind. A counter keeps one test binary from drawing a port twice.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let port = (FIRST + (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `{base}/v2/health/ready` until it answers 200: the listeners open at once and the
/// start-up models load behind them. False when `limit` runs out first.
pub fn wait_models_ready(base: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let agent = agent();
    while Instant::now() < deadline {
        let ready = agent
            .get(format!("{base}/v2/health/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub pid: u32,
    pub inference: String,
    pub management: String,
    pub metrics: String,
    pub grpc_inference: String,
    pub grpc_management: String,
    child: Child,
    log: PathBuf,
}

/// What a test server gets: extra config lines (`{model_store}` in them becomes the store's
/// path), archives copied from `model-store/`, extra environment.
#[derive(Default)]
pub struct Setup<'a> {
    pub archives: &'a [&'a str],
    pub config: &'a str,
    pub env: &'a [(&'a str, &'a str)],
}

impl Server {
    pub fn model_store(dir: &Path) -> PathBuf {
        dir.join("model-store")
    }

    /// Prepares the directory and config, then lets `prepare` add files before start; returns
    /// once the start-up models have loaded.
    pub fn start_with(setup: Setup, prepare: impl FnOnce(&Path)) -> Server {
        let server = Self::launch(setup, prepare);
        server.wait_ready();
        server
    }

    /// As `start_with`, but returns as soon as the process runs, before anything answers.
    pub fn launch(setup: Setup, prepare: impl FnOnce(&Path)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Self::model_store(dir.path());
        std::fs::create_dir_all(&store).unwrap();
        for a in setup.archives {
            // Bundled models live in model-store/, examples in examples/, test-only ones in
            // tests/fixtures/.
            let source = ["model-store", "examples", "tests/fixtures"]
                .iter()
                .map(|d| Path::new(REPO).join(d).join(a))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("no archive {a}"));
            std::fs::copy(source, store.join(a)).unwrap();
        }
        prepare(&store);
        let (ip, mp, xp) = (free_port(), free_port(), free_port());
        let (gi, gm) = (free_port(), free_port());
        let config =
            format!(
            "inference_address=http://127.0.0.1:{ip}\nmanagement_address=http://127.0.0.1:{mp}\n\
             metrics_address=http://127.0.0.1:{xp}\nmodel_store={}\nload_models=all\n\
             grpc_inference_port={gi}\ngrpc_management_port={gm}\n\
             disable_token_authorization=true\n{}\n",
            store.display(),
            setup.config.replace("{model_store}", &store.to_string_lossy())
        );
        let cfg_path = dir.path().join("config.properties");
        std::fs::write(&cfg_path, config).unwrap();
        let log = dir.path().join("server.log");
        let child = spawn(
            dir.path(),
            &["--foreground", "--ts-config", cfg_path.to_str().unwrap()],
            setup.env,
            &log,
        );
        Server {
            pid: child.id(),
            inference: format!("http://127.0.0.1:{ip}"),
            management: format!("http://127.0.0.1:{mp}"),
            metrics: format!("http://127.0.0.1:{xp}"),
            grpc_inference: format!("http://127.0.0.1:{gi}"),
            grpc_management: format!("http://127.0.0.1:{gm}"),
            dir,
            child,
            log,
        }
    }

    pub fn start(setup: Setup) -> Server {
        Self::start_with(setup, |_| {})
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let agent = agent();
        // The listeners open at once; the start-up models load behind them.
        while Instant::now() < deadline {
            if agent.get(format!("{}/ping", self.inference)).call().is_ok()
                && self.log_text().contains("start-up models loaded")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Server {
    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn signal_term(&self) {
        // SAFETY: kill(2) on the child this harness started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cwd: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroserve"));
    cmd.args(args)
        .current_dir(cwd)
        .env("TMPDIR", cwd)
        .env("RUST_LOG", "info")
        .env_remove("TORCH_DEVICE")
        .env_remove("DEVICE")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn ferroserve")
}

/// Runs the binary expecting it to exit (bad configuration); returns (exit code, output).
pub fn run_to_exit(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let log = cwd.join("exit.log");
    let mut child = spawn(cwd, args, env, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut text = String::new();
            std::fs::File::open(&log)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            return (status.code().unwrap_or(-1), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferroserve did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The generator's reference: formula inputs and the logits torch computed for them.
pub struct Reference {
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load() -> Self {
        let text =
            std::fs::read_to_string(Path::new(REPO).join("tests/fixtures/sign_reference.json"))
                .unwrap();
        Self {
            json: serde_json::from_str(&text).unwrap(),
        }
    }

    pub fn features(&self) -> usize {
        self.json["features"].as_u64().unwrap() as usize
    }

    pub fn cases(&self) -> &Vec<serde_json::Value> {
        self.json["cases"].as_array().unwrap()
    }

    pub fn label(&self, class: usize) -> String {
        self.json["labels"][class.to_string()]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn classes(&self) -> usize {
        self.json["classes"].as_u64().unwrap() as usize
    }

    /// The logits torch computed for a case.
    pub fn logits(&self, case: &serde_json::Value) -> Vec<f64> {
        let row = case["logits"].as_array().unwrap();
        row.iter().map(|v| v.as_f64().unwrap()).collect()
    }

    /// The logits an answer with every class implies: ln(confidence), shifted so that the
    /// class torch ranks first has torch's logit (a softmax loses only that constant).
    pub fn answer_logits(&self, answer: &serde_json::Value, case: &serde_json::Value) -> Vec<f64> {
        let logits = self.logits(case);
        let got = confidences(answer);
        let ln = |class: usize| {
            let label = self.label(class);
            let p = got
                .get(&label)
                .unwrap_or_else(|| panic!("{label} missing: {answer}"));
            p.ln()
        };
        let best = argmax(&logits);
        let shift = logits[best] - ln(best);
        (0..logits.len()).map(|c| ln(c) + shift).collect()
    }

    /// The largest relative difference between an answer's logits and torch's.
    pub fn logit_error(&self, answer: &serde_json::Value, case: &serde_json::Value) -> f64 {
        let logits = self.logits(case);
        relative_error(&self.answer_logits(answer, case), &logits)
    }

    /// An answer carries torch's logits within 1e-5 relative and its five best labels in
    /// torch's order.
    pub fn assert_answer(&self, answer: &serde_json::Value, case: &serde_json::Value, what: &str) {
        let error = self.logit_error(answer, case);
        assert!(
            error < 1e-5,
            "{what}: logits off by {error} (relative): {answer}"
        );
        let logits = self.logits(case);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        let expected: Vec<String> = order[..5].iter().map(|c| self.label(*c)).collect();
        let labels: Vec<&str> = answer["predictions"].as_array().unwrap()[..5]
            .iter()
            .map(|p| p["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, expected, "{what}");
    }
}

pub fn argmax(v: &[f64]) -> usize {
    (0..v.len()).max_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap()
}

/// max |a - b| / max(1, |b|) over the elements.
pub fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// The same formula as scripts/gen_models.py, computed in f64 then rounded to f32.
pub fn formula_frames(seed: u64, frames: usize, features: usize) -> Vec<Vec<f32>> {
    (0..frames)
        .map(|f| {
            (0..features)
                .map(|j| {
                    let idx = (f * features + j) as f64;
                    ((idx * 0.001 * (seed + 1) as f64 + seed as f64).sin() * 0.5) as f32
                })
                .collect()
        })
        .collect()
}

/// A request body for a reference case: flat frames or frames of `[x, y, z]` points.
pub fn request_body(case: &serde_json::Value, features: usize, topk: usize) -> String {
    let frames = formula_frames(
        case["seed"].as_u64().unwrap(),
        case["frames"].as_u64().unwrap() as usize,
        features,
    );
    let landmarks: serde_json::Value = if case["format"] == "points" {
        frames
            .iter()
            .map(|f| f.chunks(3).map(|p| p.to_vec()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
            .into()
    } else {
        frames.into()
    };
    serde_json::json!({"landmarks": landmarks, "topk": topk}).to_string()
}

/// POST a body; returns (status, body text, headers as lower-case pairs).
pub fn post(url: &str, content_type: &str, body: &str) -> (u16, String, Vec<(String, String)>) {
    let res = agent()
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap();
    into_parts(res)
}

pub fn get(url: &str) -> (u16, String, Vec<(String, String)>) {
    into_parts(agent().get(url).call().unwrap())
}

pub fn into_parts(
    mut res: ureq::http::Response<ureq::Body>,
) -> (u16, String, Vec<(String, String)>) {
    let status = res.status().as_u16();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let body = res
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_else(|e| panic!("unreadable body ({status}): {e}"));
    (status, body, headers)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Asserts TorchServe's error JSON: `{"code", "type", "message"}` in that order, pretty, `\n`.
pub fn assert_error(body: &str, code: u16, kind: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["code"], code, "{body}");
    assert_eq!(v["type"], kind, "{body}");
    assert!(body.ends_with("}\n"), "{body:?}");
    let order: Vec<usize> = ["\"code\"", "\"type\"", "\"message\""]
        .iter()
        .map(|k| body.find(k).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{body}");
    v["message"].as_str().unwrap().to_string()
}

pub fn agent_put(url: &str) -> (u16, String, Vec<(String, String)>) {
    into_parts(agent().put(url).send_empty().unwrap())
}

/// Writes a `.mar` (zip) with a manifest and files, as torch-model-archiver lays them out.
pub fn write_mar(path: &Path, manifest: &str, files: &[(&str, &[u8])]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("MAR-INF/MANIFEST.json", opts).unwrap();
    zip.write_all(manifest.as_bytes()).unwrap();
    for (name, data) in files {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

/// A server whose one model `name` (version 1.0, one worker) is a Python handler: module
/// `name.py` with `source`, entry point `handle`; `config` adds lines.
pub fn python_model_server(name: &str, source: &str, config: &str) -> Server {
    python_model_server_with_env(name, source, config, &[])
}

/// [`python_model_server`] with environment variables for the server.
pub fn python_model_server_with_env(
    name: &str,
    source: &str,
    config: &str,
    env: &[(&str, &str)],
) -> Server {
    let config = format!(
        "python={}\nmodels={{\"{name}\": {{\"1.0\": {{\"minWorkers\": 1, \"maxWorkers\": 1}}}}}}\n{config}",
        test_python()
    );
    Server::start_with(
        Setup {
            config: &config,
            env,
            ..Setup::default()
        },
        |store| {
            let manifest = format!(
                r#"{{"runtime": "python", "model": {{"modelName": "{name}", "handler": "{name}:handle", "modelVersion": "1.0"}}}}"#
            );
            let module = format!("{name}.py");
            write_mar(
                &store.join(format!("{name}.mar")),
                &manifest,
                &[(module.as_str(), source.as_bytes())],
            );
        },
    )
}

/// The interpreter with TorchServe's Python package (scripts/python-env.sh creates it).
pub fn test_python() -> String {
    if let Ok(p) = std::env::var("FERROSERVE_TEST_PYTHON") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = format!("{home}/.cache/ferroserve/deps/python-torchserve-0.12.0/bin/python");
    assert!(
        Path::new(&p).exists(),
        "no Python environment with torchserve: run scripts/python-env.sh (scripts/test.sh does)"
    );
    p
}

/// A sign-handler answer as label → confidence.
pub fn confidences(answer: &serde_json::Value) -> std::collections::HashMap<String, f64> {
    answer["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions: {answer}"))
        .iter()
        .map(|p| {
            (
                p["label"].as_str().unwrap().to_string(),
                p["confidence"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Serves `body` with a 200 to every connection on a loopback port (a download source).
pub fn serve_bytes(body: Vec<u8>) -> u16 {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

/// `tests/fixtures/probe.mar` rewritten as `version`, its class 0 labelled `label`, with
/// `model_config` as its model-config.yaml.
pub fn probe_archive(path: &Path, version: &str, label: &str, model_config: &str) {
    let src = Path::new(REPO).join("tests/fixtures/probe.mar");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut entry = |name: &str| {
        let mut data = Vec::new();
        zip.by_name(name).unwrap().read_to_end(&mut data).unwrap();
        data
    };
    let model = entry("probe.pt");
    let handler = entry("sign_handler.py");
    let manifest = format!(
        r#"{{"runtime": "python", "model": {{"modelName": "probe", "serializedFile": "probe.pt", "handler": "sign_handler.py", "modelVersion": "{version}", "configFile": "model-config.yaml"}}}}"#
    );
    let labels = format!(r#"{{"0": "{label}", "1": "rest"}}"#);
    write_mar(
        path,
        &manifest,
        &[
            ("probe.pt", &model),
            ("sign_handler.py", &handler),
            ("index_to_name.json", labels.as_bytes()),
            ("model-config.yaml", model_config.as_bytes()),
        ],
    );
}

/// A Python model (`gate`) that holds every request whose body is `hold` until the test
/// opens the gate, so tests order events by state instead of by sleeping: each held
/// request leaves a file in `entered/` when it reaches the handler. Other bodies are
/// answered at once with "done".
pub struct Gate {
    dir: tempfile::TempDir,
}

impl Default for Gate {
    fn default() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("entered")).unwrap();
        Gate { dir }
    }
}

impl Gate {
    /// Writes `gate.mar` into a model store.
    pub fn write_mar(&self, store: &Path) {
        self.write_mar_with_config(store, None)
    }

    /// Writes `gate.mar` into a model store, with `model_config` as its model-config.yaml.
    pub fn write_mar_with_config(&self, store: &Path, model_config: Option<&str>) {
        let source = format!(
            "import os, time, uuid\n\n\
             def handle(data, context):\n    \
                 if data is None:\n        return None\n    \
                 for row in data:\n        \
                     body = row.get('body') or row.get('data') or b''\n        \
                     if body in ('hold', b'hold', bytearray(b'hold')):\n            \
                         open(os.path.join({entered:?}, uuid.uuid4().hex), 'w').close()\n            \
                         while not os.path.exists({open:?}):\n                \
                             time.sleep(0.02)\n    \
                 return ['done'] * len(data)\n",
            entered = self.dir.path().join("entered").to_str().unwrap(),
            open = self.dir.path().join("open").to_str().unwrap(),
        );
        let config = if model_config.is_some() {
            r#", "configFile": "model-config.yaml""#
        } else {
            ""
        };
        let manifest = format!(
            r#"{{"runtime": "python", "model": {{"modelName": "gate", "handler": "gate:handle", "modelVersion": "1.0"{config}}}}}"#
        );
        let mut files: Vec<(&str, &[u8])> = vec![("gate.py", source.as_bytes())];
        if let Some(yaml) = model_config {
            files.push(("model-config.yaml", yaml.as_bytes()));
        }
        write_mar(&store.join("gate.mar"), &manifest, &files);
    }

    /// Waits (a minute at most, then fails) until `n` held requests are in the handler.
    pub fn wait_held(&self, n: usize) {
        let entered = self.dir.path().join("entered");
        let count = || std::fs::read_dir(&entered).unwrap().count();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} held requests reached the handler",
                count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn open(&self) {
        std::fs::write(self.dir.path().join("open"), b"").unwrap();
    }
}

/// Waits (a minute at most, then fails naming `what`) until `f` holds.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
