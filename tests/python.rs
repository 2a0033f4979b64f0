//! Custom Python handlers run unchanged by TorchServe's own Python worker.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A class handler using the context API: response status, content type and headers,
/// request headers, batches; "raise" fails the batch, "sleep:N" sleeps N seconds, "mark:PATH"
/// creates PATH and then stalls.
const ECHO: &str = r#"
import time

class EchoHandler:
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        out = []
        for i, row in enumerate(data):
            body = row.get("body")
            if body is None:
                body = row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = body.decode()
            if body == "raise":
                raise ValueError("asked to fail")
            if isinstance(body, str) and body.startswith("sleep:"):
                time.sleep(float(body[6:]))
            if isinstance(body, str) and body.startswith("mark:"):
                open(body[5:], "w").close()
                time.sleep(3600)
            if isinstance(body, str) and body.startswith("status:"):
                context.set_response_status(int(body[7:]), "Custom Phrase", i)
            context.set_response_content_type(i, "application/x-echo")
            context.set_response_header(i, "X-Handler", "echo")
            out.append({
                "body": body,
                "batch": len(data),
                "model": context.model_name,
                "explain": context.get_request_header(i, "explain"),
                "url_path": context.get_request_header(i, "url_path"),
                "request_id": context.get_request_id(i),
            })
        return out
"#;

/// A `module:function` entry point (called once with `data=None` at load).
const FUNCTION: &str = r#"
def predict(data, context):
    if data is None:
        return None
    return [f"function saw {len(data)} request(s)" for _ in data]
"#;

/// A streaming handler: three intermediate answers, then the last one.
const STREAM: &str = r#"
from ts.handler_utils.utils import send_intermediate_predict_response

def handle(data, context):
    if data is None:
        return None
    for i in range(3):
        send_intermediate_predict_response(
            [f"chunk{i} " for _ in data], context.request_ids, "Intermediate Prediction success", 200, context
        )
    return ["last" for _ in data]
"#;

fn manifest(name: &str, handler: &str) -> String {
    format!(
        r#"{{"runtime": "python", "model": {{"modelName": "{name}", "handler": "{handler}", "modelVersion": "1.0"}}, "archiverVersion": "0.12.0"}}"#
    )
}

fn python_config(extra: &str) -> String {
    format!("python={}\n{extra}", test_python())
}

#[test]
fn custom_handlers_run_unchanged() {
    let config = python_config(
        "models={\"echo\": {\"1.0\": {\"batchSize\": 4, \"maxBatchDelay\": 300, \"minWorkers\": 1, \"maxWorkers\": 1}}, \"fn\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}, \"stream\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}}",
    );
    let server = Arc::new(Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| {
            write_mar(
                &store.join("echo.mar"),
                &manifest("echo", "echo_handler.py"),
                &[("echo_handler.py", ECHO.as_bytes())],
            );
            write_mar(
                &store.join("fn.mar"),
                &manifest("fn", "fn_handler:predict"),
                &[("fn_handler.py", FUNCTION.as_bytes())],
            );
            write_mar(
                &store.join("stream.mar"),
                &manifest("stream", "stream_handler.py"),
                &[("stream_handler.py", STREAM.as_bytes())],
            );
        },
    ));
    let base = server.inference.clone();

    let (status, body, headers) = post(
        &format!("{base}/predictions/echo"),
        "application/json",
        "{\"a\": 1}",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "content-type"), Some("application/x-echo"));
    assert_eq!(header(&headers, "x-handler"), Some("echo"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["body"],
        serde_json::json!({"a": 1}),
        "JSON bodies reach the handler decoded"
    );
    assert_eq!(v["model"], "echo");
    assert_eq!(v["explain"], "False");
    assert_eq!(v["url_path"], "");
    assert_eq!(v["request_id"].as_str(), header(&headers, "x-request-id"));
    assert!(
        body.starts_with("{\n  \"body\": {\n    \"a\": 1\n  },"),
        "json.dumps(indent=2): {body}"
    );

    let (_, body, _) = post(
        &format!("{base}/explanations/echo/1.0/extra/path"),
        "text/plain",
        "hi",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            v["body"].as_str(),
            v["explain"].as_str(),
            v["url_path"].as_str()
        ),
        (Some("hi"), Some("True"), Some("extra/path"))
    );

    let (status, _, _) = post(
        &format!("{base}/predictions/echo"),
        "text/plain",
        "status:599",
    );
    assert_eq!(status, 599, "the handler's status reaches the client");

    let (status, body, _) = post(&format!("{base}/predictions/echo"), "text/plain", "raise");
    assert_eq!(status, 503);
    assert_eq!(
        assert_error(&body, 503, "InternalServerException"),
        "Prediction failed"
    );

    let (status, body, _) = post(&format!("{base}/predictions/fn"), "text/plain", "x");
    assert_eq!((status, body.as_str()), (200, "function saw 1 request(s)"));

    // Streamed answers arrive as one chunked body, in order.
    let (status, body, headers) = post(&format!("{base}/predictions/stream"), "text/plain", "go");
    assert_eq!((status, body.as_str()), (200, "chunk0 chunk1 chunk2 last"));
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&headers, "ts_stream_next"), Some("true"));

    // Four at once with batch_size 4: the handler receives them as one batch.
    let s = server.clone();
    let batches: Vec<u64> = (0..4)
        .map(|i| {
            let url = format!("{}/predictions/echo", s.inference);
            std::thread::spawn(move || {
                let (status, body, _) = post(&url, "text/plain", &format!("r{i}"));
                assert_eq!(status, 200, "{body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    v["body"],
                    format!("r{i}"),
                    "each client gets its own answer"
                );
                v["batch"].as_u64().unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(batches, vec![4; 4]);

    let (_, body, _) = get(&format!("{}/models/echo", server.management));
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pid = d[0]["workers"][0]["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_ne!(
        pid, server.pid as i64,
        "describe shows the Python worker's own pid"
    );
    // Its memory is the worker process's RSS, in bytes (a Python worker holds megabytes).
    let memory = d[0]["workers"][0]["memoryUsage"].as_u64().unwrap();
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(memory > 10 << 20, "{memory}");
    let now = rss_kb * 1024;
    assert!(memory.abs_diff(now) < now / 2, "{memory} vs {now}");
}

/// The sign model through TorchServe's worker and its Python handler (examples/sign_py.mar)
/// answers as the native path does.
#[test]
fn sign_model_python_path_matches_native() {
    let config = python_config("");
    let server = Server::start(Setup {
        archives: &["sign.mar", "sign_py.mar"],
        config: &config,
        ..Setup::default()
    });
    let reference = Reference::load();
    for case in reference.cases() {
        let body = request_body(case, reference.features(), reference.classes());
        for model in ["sign", "sign_py"] {
            let (status, text, _) = post(
                &format!("{}/predictions/{model}", server.inference),
                "application/json",
                &body,
            );
            assert_eq!(status, 200, "{model}: {text}");
            let answer = serde_json::from_str(&text).unwrap();
            reference.assert_answer(&answer, case, &format!("{model} seed {}", case["seed"]));
        }
    }
}

/// A worker killed mid-request fails that request with "Worker died." and comes back; a
/// handler slower than the response timeout does too; other models never notice.
#[test]
fn python_worker_failures_recover() {
    let config = python_config(
        "models={\"echo\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}, \"slow\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1, \"responseTimeout\": 1}}}",
    );
    let server = Arc::new(Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: &config,
            ..Setup::default()
        },
        |store| {
            write_mar(
                &store.join("echo.mar"),
                &manifest("echo", "echo_handler.py"),
                &[("echo_handler.py", ECHO.as_bytes())],
            );
            write_mar(
                &store.join("slow.mar"),
                &manifest("slow", "echo_handler.py"),
                &[("echo_handler.py", ECHO.as_bytes())],
            );
        },
    ));
    let reference = Reference::load();
    let sign_body = request_body(&reference.cases()[0], reference.features(), 1);
    // The worker's process, once it is up (describe shows -1 before).
    let pid_of = |model: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body, _) = get(&format!("{}/models/{model}", server.management));
            let d: serde_json::Value = serde_json::from_str(&body).unwrap();
            let w = &d[0]["workers"][0];
            let pid = w["pid"].as_i64().unwrap();
            if w["status"] == "READY" && pid > 0 {
                assert_ne!(
                    pid, server.pid as i64,
                    "a Python worker has its own process"
                );
                return pid;
            }
            assert!(Instant::now() < deadline, "{model} never became READY");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = pid_of("echo");
    let s = server.clone();
    let marker = server.dir.path().join("in-handler");
    let body = format!("mark:{}", marker.display());
    let in_flight = std::thread::spawn(move || {
        post(
            &format!("{}/predictions/echo", s.inference),
            "text/plain",
            &body,
        )
    });
    eventually("the request reached the handler", || marker.exists());
    // SAFETY: kill(2) on the worker process this test's server started.
    unsafe { libc::kill(before as i32, libc::SIGKILL) };
    let (status, body, _) = in_flight.join().unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        assert_error(&body, 500, "InternalServerException"),
        "Worker died."
    );
    assert_eq!(
        post(
            &format!("{}/predictions/sign", server.inference),
            "application/json",
            &sign_body
        )
        .0,
        200
    );
    // Restarted after the back-off, in a new process.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, _) = post(
            &format!("{}/predictions/echo", server.inference),
            "text/plain",
            "back",
        );
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(pid_of("echo"), before);

    let (status, body, _) = post(
        &format!("{}/predictions/slow", server.inference),
        "text/plain",
        "sleep:4",
    );
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        assert_error(&body, 500, "InternalServerException"),
        "Worker died."
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while post(
        &format!("{}/predictions/slow", server.inference),
        "text/plain",
        "ok",
    )
    .0 != 200
    {
        assert!(Instant::now() < deadline, "the slow model never recovered");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        post(
            &format!("{}/predictions/sign", server.inference),
            "application/json",
            &sign_body
        )
        .0,
        200
    );
}

/// A handler that cannot even be imported is reported with the worker's own error text, and
/// a missing interpreter with a clear line; native models keep serving.
#[test]
fn python_load_failures_are_reported() {
    let config =
        python_config("models={\"broken\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}}");
    let server = Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: &config,
            ..Setup::default()
        },
        |store| {
            write_mar(
                &store.join("broken.mar"),
                &manifest("broken", "broken_handler.py"),
                &[("broken_handler.py", b"import module_that_does_not_exist\n")],
            );
        },
    );
    // The start failure is logged with the worker's own traceback text.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.log_text().lines().any(|l| {
        l.contains("worker failed to start")
            && l.contains("No module named 'module_that_does_not_exist'")
    }) {
        assert!(
            Instant::now() < deadline,
            "no start failure with the worker's error in the log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reference = Reference::load();
    let sign_body = request_body(&reference.cases()[0], reference.features(), 1);
    assert_eq!(
        post(
            &format!("{}/predictions/sign", server.inference),
            "application/json",
            &sign_body
        )
        .0,
        200
    );

    let missing = Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: "python=/nonexistent/python3",
            ..Setup::default()
        },
        |store| {
            write_mar(
                &store.join("echo.mar"),
                &manifest("echo", "echo_handler.py"),
                &[("echo_handler.py", ECHO.as_bytes())],
            );
        },
    );
    let log = missing.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("echo.mar") && l.contains("/nonexistent/python3")),
        "{log}"
    );
    assert_eq!(
        post(
            &format!("{}/predictions/sign", missing.inference),
            "application/json",
            &sign_body
        )
        .0,
        200
    );
}

/// TorchServe's built-in image classifier, a KServe envelope, and per-model requirements.
#[test]
fn builtin_handler_envelope_and_requirements() {
    const IDENTITY: &str = "def handle(data, context):\n    return data\n";
    // Doubles each KServe v2 input (triples it when asked to explain).
    const SCALE: &str = "import numpy as np\n\ndef handle(data, context):\n    if data is None:\n        return None\n    k = 3 if context.get_request_header(0, \"explain\") == \"True\" else 2\n    return [np.asarray(i[\"data\"]) * k for i in data]\n";
    const SIX: &str = "import six\n\ndef handle(data, context):\n    if data is None:\n        return None\n    return [{\"six\": six.__version__, \"from\": six.__file__} for _ in data]\n";
    let config = python_config(
        "install_py_dep_per_model=true\nmodels={\"image_classifier\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}, \"kecho\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}, \"kscale\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}, \"deps\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}}",
    );
    let server = Server::start_with(
        Setup {
            archives: &["image_classifier.mar"],
            config: &config,
            ..Setup::default()
        },
        |store| {
            let kserve = r#"{"runtime": "python", "model": {"modelName": "kecho", "handler": "identity:handle", "modelVersion": "1.0", "envelope": "kserve"}}"#;
            write_mar(
                &store.join("kecho.mar"),
                kserve,
                &[("identity.py", IDENTITY.as_bytes())],
            );
            let v2 = r#"{"runtime": "python", "model": {"modelName": "kscale", "handler": "scale:handle", "modelVersion": "1.0", "envelope": "kservev2"}}"#;
            write_mar(
                &store.join("kscale.mar"),
                v2,
                &[("scale.py", SCALE.as_bytes())],
            );
            let deps = r#"{"runtime": "python", "model": {"modelName": "deps", "handler": "six_handler:handle", "modelVersion": "1.0", "requirementsFile": "requirements.txt"}}"#;
            write_mar(
                &store.join("deps.mar"),
                deps,
                &[
                    ("six_handler.py", SIX.as_bytes()),
                    ("requirements.txt", b"six==1.16.0\n"),
                ],
            );
        },
    );
    let base = &server.inference;

    let image = std::fs::read(Path::new(REPO).join("tests/fixtures/image.png")).unwrap();
    let res = agent()
        .post(format!("{base}/predictions/image_classifier"))
        .header("Content-Type", "image/png")
        .send(&image[..])
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().read_to_string().unwrap();
    let top5: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(top5.len(), 5, "{body}");
    let labels = [
        "cat", "dog", "bird", "fish", "horse", "frog", "deer", "ship", "truck", "plane",
    ];
    assert!(top5.keys().all(|k| labels.contains(&k.as_str())), "{body}");
    let total: f64 = top5.values().map(|v| v.as_f64().unwrap()).sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-6, "{body}");

    let instances = r#"{"instances": [{"a": 1}, {"a": 2}]}"#;
    let (status, body, _) = post(
        &format!("{base}/v1/models/kecho:predict"),
        "application/json",
        instances,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"predictions": [{"a": 1}, {"a": 2}]}));
    let (status, body, _) = post(
        &format!("{base}/v1/models/kecho:explain"),
        "application/json",
        instances,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"explanations": [{"a": 1}, {"a": 2}]}));
    // KServe v2: the request's id and inputs in, the envelope's outputs back.
    let v2 = r#"{"id": "r1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]}]}"#;
    for (verb, k) in [("infer", 2), ("explain", 3)] {
        let (status, body, _) = post(
            &format!("{base}/v2/models/kscale/{verb}"),
            "application/json",
            v2,
        );
        assert_eq!(status, 200, "{verb}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "r1", "model_name": "kscale", "model_version": "1.0",
                "outputs": [{"name": "x", "datatype": "INT64", "shape": [4],
                    "data": [k, 2 * k, 3 * k, 4 * k]}]}),
            "{verb}"
        );
    }

    let (status, body, _) = post(&format!("{base}/predictions/deps"), "text/plain", "x");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["six"], "1.16.0");
    assert!(
        v["from"].as_str().unwrap().contains("pydeps-"),
        "installed for this model only: {body}"
    );
    assert!(
        server.log_text().contains("pip: "),
        "pip's output is logged"
    );
}

/// A worker killed while it loads its model is started again; other models never notice.
#[test]
fn worker_killed_during_load_recovers() {
    let config =
        python_config("models={\"slowinit\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}}");
    let server = Server::launch(
        Setup {
            archives: &["sign.mar"],
            config: &config,
            ..Setup::default()
        },
        |store| {
            // The first load marks that it started, then stalls; the next one loads at once.
            let marker = store.join("first-load");
            let source = format!(
                "import os, time\n\nclass H:\n    def initialize(self, context):\n        \
                 if not os.path.exists({marker:?}):\n            \
                 open({marker:?}, 'w').close()\n            time.sleep(3600)\n\n    \
                 def handle(self, data, context):\n        return [\"loaded\" for _ in data]\n",
                marker = marker.to_str().unwrap()
            );
            write_mar(
                &store.join("slowinit.mar"),
                &manifest("slowinit", "slow_init.py"),
                &[("slow_init.py", source.as_bytes())],
            );
        },
    );
    let marker = Server::model_store(server.dir.path()).join("first-load");
    eventually("the first load began", || marker.exists());
    // The worker process listening on a socket in this server's temp dir.
    let socket_dir = server.dir.path().to_string_lossy().to_string();
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).to_string();
            (cmd.contains("model_service_worker.py") && cmd.contains(&socket_dir)).then_some(pid)
        })
        .next()
        .expect("no worker process found");
    // SAFETY: kill(2) on the worker process this test's server started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        wait_models_ready(&server.inference, Duration::from_secs(120)),
        "the model never loaded after its worker was killed:\n{}",
        server.log_text()
    );
    let reference = Reference::load();
    let sign_body = request_body(&reference.cases()[0], reference.features(), 1);
    assert_eq!(
        post(
            &format!("{}/predictions/sign", server.inference),
            "application/json",
            &sign_body
        )
        .0,
        200
    );
    let (status, body, _) = post(
        &format!("{}/predictions/slowinit", server.inference),
        "text/plain",
        "x",
    );
    assert_eq!((status, body.as_str()), (200, "loaded"));
    assert!(
        server.log_text().contains("worker failed to start"),
        "{}",
        server.log_text()
    );
}

/// `GET /models/{m}?customized=true` runs the handler's `describe_handle` alone and nests its
/// answer under `customizedMetadata`.
#[test]
fn customized_describe_metadata() {
    const DESCRIBED: &str = r#"
from ts.torch_handler.base_handler import BaseHandler

class Described(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.initialized = True

    def handle(self, data, context):
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        return ["predicted" for _ in data]

    def describe_handle(self):
        return {"purpose": "demo", "classes": 3}
"#;
    let config =
        python_config("models={\"described\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}}");
    let server = Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| {
            write_mar(
                &store.join("described.mar"),
                &manifest("described", "described.py"),
                &[("described.py", DESCRIBED.as_bytes())],
            );
        },
    );
    let m = &server.management;
    let (_, plain, _) = get(&format!("{m}/models/described"));
    assert!(!plain.contains("customizedMetadata"), "{plain}");
    let (status, body, _) = get(&format!("{m}/models/described?customized=true"));
    assert_eq!(status, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        d[0]["customizedMetadata"],
        serde_json::json!({"purpose": "demo", "classes": 3})
    );
    let (status, body, _) = post(
        &format!("{}/predictions/described", server.inference),
        "text/plain",
        "x",
    );
    assert_eq!((status, body.as_str()), (200, "predicted"));
}

/// The listeners answer while a start-up model is still loading (TorchServe loads workers
/// behind its listeners too): the handler's module cannot finish importing until the test
/// creates a file, which it does only after `/ping` has answered.
#[test]
fn listeners_answer_while_start_up_models_load() {
    let gate = tempfile::tempdir().unwrap();
    let release = gate.path().join("release");
    let source = format!(
        "import os, time\nwhile not os.path.exists({release:?}):\n    time.sleep(0.05)\n\
         def handle(data, context):\n    if data is None:\n        return None\n    \
         return [\"loaded\"] * len(data)\n",
        release = release.to_str().unwrap()
    );
    let python = test_python();
    let config = format!(
        "python={python}\nmodels={{\"gated\": {{\"1.0\": {{\"minWorkers\": 1, \"maxWorkers\": 1}}}}}}\n"
    );
    let server = Server::launch(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| {
            write_mar(
                &store.join("gated.mar"),
                &manifest("gated", "gated:handle"),
                &[("gated.py", source.as_bytes())],
            );
        },
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let ping = loop {
        if let Ok(mut r) = agent().get(format!("{}/ping", server.inference)).call() {
            break (r.status().as_u16(), r.body_mut().read_to_string().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "no /ping:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Workers still starting count as healthy, as in TorchServe; readiness waits for them.
    assert_eq!(ping.0, 200, "{}", ping.1);
    assert!(ping.1.contains("Healthy"), "{}", ping.1);
    let (status, body, _) = get(&format!("{}/v2/health/ready", server.inference));
    assert_eq!((status, body.contains("false")), (503, true), "{body}");

    std::fs::write(&release, b"").unwrap();
    assert!(
        wait_models_ready(&server.inference, Duration::from_secs(120)),
        "{}",
        server.log_text()
    );
    let (status, body, _) = post(
        &format!("{}/predictions/gated", server.inference),
        "text/plain",
        "x",
    );
    assert_eq!((status, body.as_str()), (200, "loaded"), "{body}");
}

/// The identity archive served natively (`json_tensor`) and the same model through
/// TorchServe's worker and its BaseHandler (handlers/tensor_handler.py) give the same bytes,
/// batched or not.
#[test]
fn json_tensor_native_answers_as_the_base_handler_does() {
    let config = python_config(
        "models={\"noop\": {\"1.0\": {\"batchSize\": 2, \"maxBatchDelay\": 600000}}, \
         \"noop_py\": {\"1.0\": {\"batchSize\": 2, \"maxBatchDelay\": 600000, \"minWorkers\": 1, \"maxWorkers\": 1}}}",
    );
    let server = Server::start_with(
        Setup {
            archives: &["noop.mar"],
            config: &config,
            ..Setup::default()
        },
        |store| {
            // The same model and handler file, without the native selection.
            let src = Path::new(REPO).join("tests/fixtures/noop.mar");
            let mut zip = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
            let mut read = |name: &str| {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut zip.by_name(name).unwrap(), &mut data).unwrap();
                data
            };
            let (model, handler) = (read("noop.pt"), read("tensor_handler.py"));
            write_mar(
                &store.join("noop_py.mar"),
                r#"{"runtime": "python", "model": {"modelName": "noop_py", "serializedFile": "noop.pt", "handler": "tensor_handler.py", "modelVersion": "1.0"}}"#,
                &[("noop.pt", &model), ("tensor_handler.py", &handler)],
            );
        },
    );
    assert!(wait_models_ready(
        &server.inference,
        Duration::from_secs(120)
    ));
    let pairs = [
        ("[0.1, 2, -3.75, 1e-05]", "[1e16, 0, 123456.789, -0.5]"),
        ("[[1, 2, 3]]", "[[4, 5, 6]]"),
        ("7", "8.25"),
    ];
    for (a, b) in pairs {
        let answers: Vec<Vec<(u16, String)>> = ["noop", "noop_py"]
            .iter()
            .map(|model| {
                let url = format!("{}/predictions/{model}", server.inference);
                // Two at once: a batch of two on both.
                let handles: Vec<_> = [a, b]
                    .iter()
                    .map(|body| {
                        let (url, body) = (url.clone(), body.to_string());
                        std::thread::spawn(move || {
                            let (status, text, _) = post(&url, "application/json", &body);
                            (status, text)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
            .collect();
        assert_eq!(answers[0], answers[1], "{a} / {b}");
        assert!(answers[0].iter().all(|(s, _)| *s == 200), "{answers:?}");
    }
}
