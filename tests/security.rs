//! Secure defaults against TorchServe's vulnerability classes (SSRF and arbitrary reads
//! through registration, YAML bombs in archives, oversized requests, exposed listeners,
//! leaked secrets). Archive extraction attacks (zip-slip, symlinks, bombs) are in
//! tests/archives.rs, token checks in tests/auth.rs.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

/// A tiny HTTP server: each path maps to a response; counts the requests it got.
fn http_server(routes: Vec<(String, Vec<u8>)>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let reply = routes
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec());
            let _ = s.write_all(&reply);
        }
    });
    (port, hits)
}

fn redirect(to: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

fn file_response(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn register(server: &Server, query: &str) -> (u16, String) {
    let mut res = agent()
        .post(format!("{}/models?{query}", server.management))
        .send_empty()
        .unwrap();
    (
        res.status().as_u16(),
        res.body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("unreadable body: {e}")),
    )
}

#[test]
fn registration_cannot_be_redirected_or_pointed_outside_the_store() {
    let mar = std::fs::read(Path::new(REPO).join("model-store/sign.mar")).unwrap();
    // The disallowed host: it must never be asked.
    let (evil, evil_hits) = http_server(vec![("/evil/sign.mar".into(), file_response(&mar))]);
    let (port, _) = http_server(vec![
        (
            "/allowed/away.mar".into(),
            redirect(&format!("http://127.0.0.1:{evil}/evil/sign.mar")),
        ),
        (
            "/allowed/dots.mar".into(),
            redirect("/allowed/../x/sign.mar"),
        ),
        ("/allowed/hop.mar".into(), redirect("/allowed/sign.mar")),
        ("/allowed/sign.mar".into(), file_response(&mar)),
    ]);
    let config = format!(
        "enable_model_api=true\nload_models=\nallowed_urls=http://127\\\\.0\\\\.0\\\\.1:{port}/allowed/.*,file://.*"
    );
    let server = Server::start(Setup {
        config: &config,
        ..Setup::default()
    });
    let store = Server::model_store(server.dir.path());

    let url = format!("http://127.0.0.1:{port}/allowed/away.mar");
    let (code, body) = register(&server, &format!("url={url}&model_name=away"));
    assert_eq!(code, 404, "{body}");
    assert!(
        assert_error(&body, 404, "ModelNotFoundException")
            .contains("does not match any allowed URL(s)"),
        "{body}"
    );
    assert_eq!(
        evil_hits.load(Ordering::SeqCst),
        0,
        "the disallowed host was contacted"
    );
    let url = format!("http://127.0.0.1:{port}/allowed/dots.mar");
    assert_eq!(
        register(&server, &format!("url={url}&model_name=dots")).0,
        404
    );
    assert!(!store.join("away.mar").exists() && !store.join("dots.mar").exists());

    // A redirect that stays inside the allow-list is followed.
    let url = format!("http://127.0.0.1:{port}/allowed/hop.mar");
    let (code, body) = register(
        &server,
        &format!("url={url}&model_name=hop&initial_workers=1"),
    );
    assert_eq!(code, 200, "{body}");

    // file:// may copy only from inside the store, even with `file://.*` allowed.
    let (code, body) = register(&server, "url=file:///etc/hostname&model_name=leak");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("is outside the model store"), "{body}");
    assert!(!store.join("hostname").exists());
    std::fs::create_dir_all(store.join("incoming")).unwrap();
    std::fs::write(store.join("incoming/copy.mar"), &mar).unwrap();
    let inside = format!("file://{}", store.join("incoming/copy.mar").display());
    let (code, body) = register(&server, &format!("url={inside}&model_name=copy"));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn yaml_bombs_and_oversized_requests_are_refused_and_others_keep_serving() {
    let server = Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: "enable_model_api=true",
            ..Setup::default()
        },
        |store| {
            let mut bomb = String::from("a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
            let mut prev = 'a';
            for name in 'b'..='i' {
                let refs = vec![format!("*{prev}"); 9].join(", ");
                bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
                prev = name;
            }
            let manifest = r#"{"runtime": "python", "model": {"modelName": "bomb", "handler": "h:handle", "modelVersion": "1.0", "configFile": "model-config.yaml"}}"#;
            write_mar(
                &store.join("bomb.mar"),
                manifest,
                &[
                    ("h.py", b"def handle(d, c):\n    return d\n"),
                    ("model-config.yaml", bomb.as_bytes()),
                ],
            );
            // Nesting deep enough to overflow a recursive loader's stack (≈ 1 MB).
            let deep = format!("{}x\n", "- ".repeat(500_000));
            write_mar(
                &store.join("deep.mar"),
                &manifest.replace("bomb", "deep"),
                &[
                    ("h.py", b"def handle(d, c):\n    return d\n"),
                    ("model-config.yaml", deep.as_bytes()),
                ],
            );
        },
    );
    let (code, body) = register(&server, "url=bomb.mar");
    assert!(code >= 400, "{code} {body}");
    assert!(body.contains("72 YAML aliases"), "{body}");
    let (code, body) = register(&server, "url=deep.mar");
    assert!(code >= 400, "{code} {body}");
    assert!(body.contains("nested deeper than the 50 levels"), "{body}");

    // A header far past the limit is refused; the server keeps serving.
    let addr = server.inference.trim_start_matches("http://").to_string();
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    let huge = "x".repeat(128 << 10);
    let request = format!("GET /ping HTTP/1.1\r\nHost: a\r\nx-big: {huge}\r\n\r\n");
    let _ = raw.write_all(request.as_bytes());
    let mut reply = String::new();
    let _ = raw.read_to_string(&mut reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );
    let reference = Reference::load();
    let body = request_body(&reference.cases()[0], reference.features(), 1);
    let url = format!("{}/predictions/sign", server.inference);
    assert_eq!(post(&url, "application/json", &body).0, 200);
}

#[test]
fn exposed_listeners_without_tokens_are_warned_about() {
    let port = free_port();
    let server = Server::start(Setup {
        config: &format!("metrics_address=http://0.0.0.0:{port}"),
        ..Setup::default()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server
        .log_text()
        .contains("SECURITY: metrics_address listen on every network interface")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Loopback (the default) draws no warning.
    let quiet = Server::start(Setup::default());
    // The warnings come before this line, once the listeners are bound.
    eventually("the server started", || {
        quiet.log_text().contains("Model server started.")
    });
    assert!(
        !quiet.log_text().contains("SECURITY:"),
        "{}",
        quiet.log_text()
    );
}

#[test]
fn secrets_reach_neither_logs_nor_handlers() {
    const ENV: &str = "import os\n\ndef handle(data, context):\n    if data is None:\n        return None\n    return [os.environ.get('FS_SECRET_TOKEN', 'absent') + ',' + os.environ.get('FS_VISIBLE', 'absent') for _ in data]\n";
    let config = format!(
        "disable_token_authorization=false\nblacklist_env_vars=FS_SECRET.*\npython={}\nmodels={{\"env\": {{\"1.0\": {{\"minWorkers\": 1, \"maxWorkers\": 1}}}}}}",
        test_python()
    );
    let server = Server::start_with(
        Setup {
            config: &config,
            env: &[("FS_SECRET_TOKEN", "s3cr3t"), ("FS_VISIBLE", "yes")],
            ..Setup::default()
        },
        |store| {
            let manifest = r#"{"runtime": "python", "model": {"modelName": "env", "handler": "env:handle", "modelVersion": "1.0"}}"#;
            write_mar(
                &store.join("env.mar"),
                manifest,
                &[("env.py", ENV.as_bytes())],
            );
        },
    );
    let text = std::fs::read_to_string(server.dir.path().join("key_file.json")).unwrap();
    let keys: serde_json::Value = serde_json::from_str(&text).unwrap();
    let inference = keys["inference"]["key"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let answer = loop {
        let mut res = agent()
            .post(format!("{}/predictions/env", server.inference))
            .header("Authorization", &format!("Bearer {inference}"))
            .header("Content-Type", "text/plain")
            .send("x")
            .unwrap();
        if res.status() == 200 {
            break res.body_mut().read_to_string().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(answer, "absent,yes");
    // No key appears in any log.
    let mut logs = server.log_text();
    for f in ["ts_log.log", "access_log.log", "model_log.log"] {
        logs.push_str(
            &std::fs::read_to_string(server.dir.path().join("logs").join(f)).unwrap_or_default(),
        );
    }
    for kind in ["inference", "management", "API"] {
        let key = keys[kind]["key"].as_str().unwrap();
        assert!(!logs.contains(key), "the {kind} key is in the logs");
    }
    assert!(!logs.contains("s3cr3t"));
}

/// Sizes an archive asks for that would exhaust the machine: a queue of a trillion jobs is held
/// to 100,000; an input of a trillion values, or more workers than 256, is refused; the model
/// and the server keep serving.
#[test]
fn archive_sizes_are_bounded() {
    const SHAPE: &str =
        "ferroserve:\n  native_handler: json_tensor_classifier\nminWorkers: 1\nmaxWorkers: 1\n";
    let server = Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: "enable_model_api=true\nload_models=sign.mar",
            ..Setup::default()
        },
        |store| {
            let queue = format!(
                "{SHAPE}handler:\n  frames: 1\n  features: 4\njobQueueSize: 1000000000000\n"
            );
            probe_archive(&store.join("queue.mar"), "1.0", "q", &queue);
            let input = format!("{SHAPE}handler:\n  frames: 1000000000000\n  features: 4\n");
            probe_archive(&store.join("input.mar"), "1.0", "i", &input);
            let workers = "ferroserve:\n  native_handler: json_tensor_classifier\nhandler:\n  frames: 1\n  features: 4\nminWorkers: 100000000\nmaxWorkers: 100000000\n";
            probe_archive(&store.join("workers.mar"), "1.0", "w", workers);
        },
    );
    let (code, body) = register(&server, "url=queue.mar&model_name=queue");
    assert_eq!(code, 200, "{body}");
    let (_, body, _) = get(&format!("{}/models/queue", server.management));
    let described: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        described[0]["jobQueueStatus"]["remainingCapacity"], 100_000,
        "{body}"
    );
    let answer = post(
        &format!("{}/predictions/queue", server.inference),
        "application/json",
        r#"{"landmarks": [[0, 0, 0, 0]], "topk": 1}"#,
    );
    assert_eq!(answer.0, 200, "{}", answer.1);

    let (code, body) = register(&server, "url=input.mar&model_name=input");
    assert!(code >= 400, "{code} {body}");
    assert!(body.contains("more than 16777216 values"), "{body}");
    let (code, body) = register(&server, "url=workers.mar&model_name=workers");
    assert!(code >= 400, "{code} {body}");
    assert!(body.contains("more than the 256"), "{body}");
    let (_, body, _) = get(&format!("{}/models", server.management));
    assert!(!body.contains("\"workers\""), "{body}");

    let reference = Reference::load();
    let sign = request_body(&reference.cases()[0], reference.features(), 1);
    let url = format!("{}/predictions/sign", server.inference);
    assert_eq!(post(&url, "application/json", &sign).0, 200);
}
