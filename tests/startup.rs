//! Start-up failures: one clear line naming the problem, and a non-zero exit.

mod common;

use common::*;

/// Starts the server in `dir` (its config.properties), output to `dir/server.log`; the caller
/// kills it.
fn serve_in(dir: &std::path::Path) -> std::process::Child {
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--foreground")
        .current_dir(dir)
        .env("TMPDIR", dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Polls `probe` until it answers, for up to 30 s; if the server exits first or never answers,
/// fails with what the server printed.
fn wait_for<T>(
    child: &mut std::process::Child,
    dir: &std::path::Path,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(answer) = probe() {
            return answer;
        }
        let exited = child.try_wait().unwrap();
        if exited.is_some() || std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("no {what} (server exit: {exited:?}):\n{log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn config_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    std::fs::write(
        dir.path().join("config.properties"),
        format!(
            "model_store={}\ndisable_token_authorization=true\ngrpc_inference_port={}\ngrpc_management_port={}\n{text}\n",
            dir.path().join("store").display(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    dir
}

#[test]
fn bad_config_values_name_the_key() {
    for (line, key) in [
        (
            "inference_address=http://127.0.0.1:80x0",
            "inference_address",
        ),
        ("max_request_size=big", "max_request_size"),
        ("enable_metrics_api=maybe", "enable_metrics_api"),
        ("models={oops", "models"),
        ("token_expiration_min=1e300", "token_expiration_min"),
    ] {
        let dir = config_dir(line);
        let (code, out) = run_to_exit(dir.path(), &["--foreground"], &[]);
        assert_ne!(code, 0, "{line}");
        let last = out.lines().last().unwrap_or_default();
        assert!(last.contains(key), "{line}: {out}");
    }
}

#[test]
fn missing_files_and_store() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_to_exit(
        dir.path(),
        &["--foreground", "--ts-config", "/no/such/file.properties"],
        &[],
    );
    assert_ne!(code, 0);
    assert!(out.contains("/no/such/file.properties"), "{out}");
    let (code, out) = run_to_exit(dir.path(), &["--foreground"], &[]);
    assert_ne!(code, 0);
    assert!(out.contains("--model-store"), "{out}");
    let (code, out) = run_to_exit(
        dir.path(),
        &["--foreground", "--model-store", "/no/such/store"],
        &[],
    );
    assert_ne!(code, 0);
    assert!(out.contains("/no/such/store"), "{out}");
}

#[test]
fn invalid_or_unavailable_device_stops_startup() {
    let dir = config_dir("");
    let (code, out) = run_to_exit(dir.path(), &["--foreground"], &[("TORCH_DEVICE", "tpu")]);
    assert_ne!(code, 0);
    assert!(
        out.contains("TORCH_DEVICE") && out.contains("tpu") && out.contains("cuda:N"),
        "{out}"
    );
    // No GPU (or no CUDA libtorch) on the test host: asking for CUDA must fail loudly.
    if std::env::var("FERROSERVE_TEST_HAS_CUDA").is_err() {
        let (code, out) = run_to_exit(dir.path(), &["--foreground"], &[("TORCH_DEVICE", "cuda")]);
        assert_ne!(code, 0);
        assert!(
            out.contains("cuda was requested but is not available"),
            "{out}"
        );
    }
    let (code, out) = run_to_exit(dir.path(), &["--foreground"], &[("DEVICE", "mps")]);
    assert_ne!(code, 0);
    assert!(out.contains("mps was requested"), "{out}");
}

#[test]
fn env_overrides_apply_when_enabled() {
    // enable_envvars_config lets TS_* override the file (CLI > env is covered by unit tests).
    let port = free_port();
    let dir = config_dir("enable_envvars_config=true\ninference_address=http://127.0.0.1:1");
    let addr = format!("http://127.0.0.1:{port}");
    let bad = run_to_exit(
        dir.path(),
        &["--foreground"],
        &[("TS_INFERENCE_ADDRESS", "http://127.0.0.1:xx")],
    );
    assert_ne!(bad.0, 0);
    assert!(bad.1.contains("inference_address"), "{}", bad.1);
    // A good env value is used: the server answers there.
    let log = dir.path().join("run.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .args([
            "--foreground",
            "--model-store",
            dir.path().join("store").to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env("TS_INFERENCE_ADDRESS", &addr)
        .env(
            "TS_MANAGEMENT_ADDRESS",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env(
            "TS_METRICS_ADDRESS",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut ok = false;
    while std::time::Instant::now() < deadline {
        if let Ok(res) = agent().get(format!("{addr}/ping")).call() {
            ok = res.status() == 200;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "server did not answer on the TS_INFERENCE_ADDRESS port");
}

/// ONNX Runtime missing: the ONNX model is refused with a clear error, TorchScript still serves.
#[test]
fn missing_onnxruntime_library_is_reported() {
    let server = Server::start(Setup {
        archives: &["sign.mar", "sign_onnx.mar"],
        env: &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
        ..Setup::default()
    });
    let log = server.log_text();
    assert!(
        log.lines().any(|l| l.contains("sign_onnx.mar")
            && l.contains("/nonexistent/libonnxruntime.so")
            && l.contains("ORT_DYLIB_PATH")),
        "{log}"
    );
    let (_, body, _) = get(&format!("{}/models", server.management));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v["models"][0]["modelName"], "sign");
}

/// `--start` detaches and returns at once, like `torchserve --start`; `--stop` ends the server.
#[test]
fn start_detaches_and_stop_stops() {
    let port = free_port();
    let dir = config_dir(&format!(
        "inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{}\nmetrics_address=http://127.0.0.1:{}",
        free_port(),
        free_port()
    ));
    let (code, _) = run_to_exit(dir.path(), &["--start"], &[]);
    assert_eq!(code, 0);
    let ping = format!("http://127.0.0.1:{port}/ping");
    let up = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        agent().get(&ping).call().is_ok()
    });
    assert!(up, "detached server never answered");
    let (code, out) = run_to_exit(dir.path(), &["--stop"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stopped"), "{out}");
    let down = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        agent().get(&ping).call().is_err()
    });
    assert!(down, "server still answering after --stop");
}

/// Equal inference and management addresses: one listener serves both (and the metrics);
/// a `unix:` address listens on a Unix socket.
#[test]
fn single_port_and_unix_socket_listeners() {
    let port = free_port();
    let dir = config_dir(&format!(
        "inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{port}\n\
         metrics_address=http://127.0.0.1:{port}\nmetrics_mode=prometheus\nload_models=sign.mar"
    ));
    std::fs::copy(
        std::path::Path::new(REPO).join("model-store/sign.mar"),
        dir.path().join("store/sign.mar"),
    )
    .unwrap();
    let mut child = serve_in(dir.path());
    let base = format!("http://127.0.0.1:{port}");
    wait_for(&mut child, dir.path(), "single-port listener", || {
        agent()
            .get(format!("{base}/v2/health/ready"))
            .call()
            .ok()
            .filter(|r| r.status() == 200)
    });
    let (models, describe, metrics) = (
        get(&format!("{base}/models")),
        get(&format!("{base}/models/sign/1.0")),
        get(&format!("{base}/metrics")),
    );
    // KServe's readiness route is the management API's, on the shared port too.
    let ready = get(&format!("{base}/v1/models/sign"));
    let reference = Reference::load();
    let case = &reference.cases()[0];
    let body = request_body(case, reference.features(), reference.classes());
    let predicted = post(
        &format!("{base}/predictions/sign"),
        "application/json",
        &body,
    );
    let _ = child.kill();
    let _ = child.wait();
    let listed: serde_json::Value = serde_json::from_str(&models.1).unwrap();
    assert_eq!(
        (models.0, &listed["models"][0]["modelName"]),
        (200, &serde_json::json!("sign")),
        "{}",
        models.1
    );
    let described: serde_json::Value = serde_json::from_str(&describe.1).unwrap();
    assert_eq!(
        (describe.0, &described[0]["modelVersion"]),
        (200, &serde_json::json!("1.0")),
        "{}",
        describe.1
    );
    assert_eq!(metrics.0, 200);
    assert!(
        metrics.1.contains("ferroserve_build_info{"),
        "{}",
        metrics.1
    );
    assert_eq!(
        (ready.0, ready.1.contains("\"ready\": true")),
        (200, true),
        "{}",
        ready.1
    );
    assert_eq!(predicted.0, 200, "{}", predicted.1);
    let answer = serde_json::from_str(&predicted.1).unwrap();
    reference.assert_answer(&answer, case, "single port");

    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("inference.sock");
    let dir = config_dir(&format!(
        "inference_address=unix:{}\nmanagement_address=http://127.0.0.1:{}\nmetrics_address=http://127.0.0.1:{}",
        socket.display(),
        free_port(),
        free_port()
    ));
    let mut child = serve_in(dir.path());
    let reply = wait_for(&mut child, dir.path(), "unix socket listener", || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket).ok()?;
        s.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        Some(out)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("Healthy"),
        "{reply}"
    );
}

/// `https://` listeners with a PEM certificate and key; a clear refusal without them.
#[test]
fn https_listeners_with_pem_files() {
    use std::process::Command;
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (scripts/env.sh installs it)");
    assert!(made.success());
    let port = free_port();
    let dir = config_dir(&format!(
        "inference_address=https://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{}\n\
         metrics_address=http://127.0.0.1:{}\ncertificate_file={}\nprivate_key_file={}",
        free_port(),
        free_port(),
        cert.display(),
        key.display()
    ));
    let mut child = serve_in(dir.path());
    let answer = wait_for(&mut child, dir.path(), "https listener", || {
        let out = Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(&cert)
            .arg(format!("https://127.0.0.1:{port}/ping"))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.contains("Healthy"), "{answer}");

    let dir = config_dir(&format!(
        "inference_address=https://127.0.0.1:{}",
        free_port()
    ));
    let (code, out) = run_to_exit(dir.path(), &["--foreground"], &[]);
    assert_ne!(code, 0);
    assert!(
        out.contains("private_key_file and certificate_file"),
        "{out}"
    );
    let dir = config_dir(&format!(
        "inference_address=https://127.0.0.1:{}\nkeystore=ks.p12",
        free_port()
    ));
    let (code, out) = run_to_exit(dir.path(), &["--foreground"], &[]);
    assert_ne!(code, 0);
    assert!(out.contains("Java keystores are not supported"), "{out}");

    // A 1024-bit RSA key in PKCS#1 form, like TorchServe's own test key: it parses, and is
    // refused by size, not as unreadable.
    let weak = certs.path().join("weak.pem");
    let made = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&weak)
        .arg("1024")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    assert!(std::fs::read_to_string(&weak)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let dir = config_dir(&format!(
        "inference_address=https://127.0.0.1:{}\ncertificate_file={}\nprivate_key_file={}",
        free_port(),
        cert.display(),
        weak.display()
    ));
    let (code, out) = run_to_exit(dir.path(), &["--foreground"], &[]);
    assert_ne!(code, 0);
    assert!(
        out.contains("an RSA key of 1024 bits is refused as too weak")
            && out.contains("2048 to 8192 bits")
            && !out.contains("failed to parse"),
        "{out}"
    );
}
