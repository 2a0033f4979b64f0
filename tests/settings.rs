//! TorchServe's per-model settings (model-config.yaml) as they act on the real server: each
//! setting ferroserve honours changes what a client sees, each one it cannot honour refuses
//! the model by name.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn describe(server: &Server, model: &str) -> serde_json::Value {
    let (status, body, _) = get(&format!("{}/models/{model}", server.management));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()[0].clone()
}

/// A server with the gate model (one worker) whose model-config.yaml is `yaml`.
fn gated(gate: &Gate, yaml: &str) -> Server {
    let config = format!(
        "python={}\nmodels={{\"gate\": {{\"1.0\": {{\"minWorkers\": 1, \"maxWorkers\": 1}}}}}}\n",
        test_python()
    );
    let server = Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| gate.write_mar_with_config(store, Some(yaml)),
    );
    // Its worker is up: no request waits for it to start.
    assert!(
        wait_models_ready(&server.inference, Duration::from_secs(120)),
        "{}",
        server.log_text()
    );
    server
}

fn ask(server: &Server, body: &str) -> (u16, String, Vec<(String, String)>) {
    post(
        &format!("{}/predictions/gate", server.inference),
        "text/plain",
        body,
    )
}

/// TorchServe's answer when a request cannot be queued.
const NO_WORKER: &str = "Model \"gate\" has no worker to serve inference request. Please use scale workers API to add workers. If this is a sequence inference, please check if it is closed, or expired; or exceeds maxSequenceJobQueueSize";

#[test]
fn a_request_that_waited_past_client_timeout_is_answered_not_run() {
    let gate = Gate::default();
    let server = std::sync::Arc::new(gated(&gate, "clientTimeoutInMills: 300\n"));
    assert_eq!(describe(&server, "gate")["clientTimeoutInMills"], 300);

    let s = server.clone();
    let held = std::thread::spawn(move || ask(&s, "hold"));
    gate.wait_held(1);
    let s = server.clone();
    let sent = Instant::now();
    let late = std::thread::spawn(move || ask(&s, "late"));
    eventually("the late request is queued", || {
        describe(&server, "gate")["jobQueueStatus"]["pendingRequests"] == 1
    });
    // Let the queued request outlive the model's client timeout before a worker reaches it.
    std::thread::sleep(Duration::from_millis(600).saturating_sub(sent.elapsed()));
    gate.open();

    let (status, body, _) = held.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "done"));
    let (status, body, headers) = late.join().unwrap();
    let message = assert_error(&body, 503, "ServiceUnavailableException");
    assert_eq!(status, 503);
    assert!(
        message.starts_with("Request dropped: it waited ")
            && message.ends_with("longer than the model's clientTimeoutInMills (300 ms)"),
        "{message}"
    );
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    // The handler ran the held request only; the late one was counted as dropped.
    let stats = &describe(&server, "gate")["stats"];
    assert_eq!(
        (
            stats["requests"].as_u64(),
            stats["droppedRequests"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // A request reached at once is run.
    let (status, body, _) = ask(&server, "fresh");
    assert_eq!((status, body.as_str()), (200, "done"));
}

#[test]
fn with_job_tickets_a_request_is_refused_while_no_worker_waits() {
    let gate = Gate::default();
    let server = std::sync::Arc::new(gated(&gate, "useJobTicket: true\njobQueueSize: 10\n"));
    let d = describe(&server, "gate");
    assert_eq!(d["useJobTicket"], true);
    assert_eq!(d["jobQueueStatus"]["remainingCapacity"], 10);

    // The worker may still be on its way to waiting for work: the held request is sent
    // again until it is taken.
    let s = server.clone();
    let held = std::thread::spawn(move || loop {
        let answer = ask(&s, "hold");
        if answer.0 != 503 {
            return answer;
        }
    });
    gate.wait_held(1);
    // The only worker is busy: refused at once although the queue has room.
    let (status, body, headers) = ask(&server, "x");
    assert_eq!(status, 503);
    assert_eq!(
        assert_error(&body, 503, "ServiceUnavailableException"),
        NO_WORKER
    );
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(
        describe(&server, "gate")["jobQueueStatus"]["pendingRequests"],
        0
    );
    gate.open();
    let (status, body, _) = held.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "done"));
    // Waiting again, the worker takes the next request.
    eventually("a request is taken once the worker waits again", || {
        ask(&server, "x").0 == 200
    });
}

/// model-config.yaml keys that need what ferroserve does not run refuse the model with the
/// key's name, at registration and at start-up; the server goes on serving the others.
#[test]
fn settings_that_cannot_run_refuse_the_model_by_name() {
    let cases: &[(&str, &str)] = &[
        ("parallel", "parallelType: tp\nparallelLevel: 2\n"),
        ("torchrun", "torchrun:\n  nproc-per-node: 2\n"),
        ("deepspeed", "deepspeed:\n  config: ds-config.json\n"),
        ("asyncc", "asyncCommunication: true\n"),
    ];
    let keys = [
        "parallelType",
        "torchrun",
        "deepspeed",
        "asyncCommunication",
    ];
    let write = |store: &Path, name: &str, yaml: &str| {
        let manifest = format!(
            r#"{{"runtime": "python", "model": {{"modelName": "{name}", "handler": "echo:handle", "modelVersion": "1.0", "configFile": "model-config.yaml"}}}}"#
        );
        write_mar(
            &store.join(format!("{name}.mar")),
            &manifest,
            &[
                (
                    "echo.py",
                    b"def handle(data, context):\n    return data and ['ok'] * len(data)\n",
                ),
                ("model-config.yaml", yaml.as_bytes()),
            ],
        );
    };
    let config = format!("python={}\nenable_model_api=true\n", test_python());
    let server = Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| {
            for (name, yaml) in cases {
                write(store, name, yaml);
            }
            write(store, "plain", "minWorkers: 1\nmaxWorkers: 1\n");
        },
    );
    // At start-up: each refused model is logged with its key, the plain one serves.
    let log = server.log_text();
    for key in keys {
        assert!(
            log.contains(&format!("{key} is not supported by ferroserve")),
            "no refusal naming {key}:\n{log}"
        );
    }
    let (status, body, _) = get(&format!("{}/models", server.management));
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["modelName"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["plain"]);
    let (status, body, _) = post(
        &format!("{}/predictions/plain", server.inference),
        "text/plain",
        "x",
    );
    assert_eq!((status, body.as_str()), (200, "ok"));

    // By the register API: 400 with the key in TorchServe's error body.
    for ((name, _), key) in cases.iter().zip(keys) {
        let (status, body, _) = post(
            &format!(
                "{}/models?url={name}.mar&initial_workers=1&synchronous=true",
                server.management
            ),
            "text/plain",
            "",
        );
        assert_eq!(status, 400, "{body}");
        let message = assert_error(&body, 400, "InvalidModelException");
        assert!(
            message.starts_with(&format!(
                "model-config.yaml: {key} is not supported by ferroserve: "
            )),
            "{message}"
        );
    }
}

/// A gzipped tar the way `torch-model-archiver --archive-format tgz` writes one.
fn archiver_tgz(dir: &Path, name: &str, handler_source: &str) -> std::path::PathBuf {
    let work = dir.join(format!("src-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    let handler = work.join(format!("{name}.py"));
    std::fs::write(&handler, handler_source).unwrap();
    let archiver = Path::new(&test_python())
        .parent()
        .unwrap()
        .join("torch-model-archiver");
    let out = std::process::Command::new(archiver)
        .args(["--model-name", name, "--version", "1.0", "--handler"])
        .arg(&handler)
        .args(["--archive-format", "tgz", "--export-path"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tgz = dir.join(format!("{name}.tar.gz"));
    assert!(tgz.is_file(), "the archiver wrote no {}", tgz.display());
    tgz
}

fn echo_source(answer: &str) -> String {
    format!("def handle(data, context):\n    return data and ['{answer}'] * len(data)\n")
}

/// `.tar.gz` archives from the real archiver: in the store (`load_models`), by `http://` and
/// `file://` URLs in `load_models`, and by registration URL; each answers with its own handler.
#[test]
fn tar_gz_archives_load_from_the_store_urls_and_registration() {
    let sources = tempfile::tempdir().unwrap();
    let remote = archiver_tgz(sources.path(), "remote", &echo_source("from http"));
    let port = serve_bytes(std::fs::read(&remote).unwrap());
    let registered = archiver_tgz(sources.path(), "registered", &echo_source("registered"));
    let reg_port = serve_bytes(std::fs::read(&registered).unwrap());
    let config = format!(
        "python={py}\nenable_model_api=true\ndefault_workers_per_model=1\n\
         load_models=tgz.tar.gz,http://127.0.0.1:{port}/remote.tar.gz,file://{{model_store}}/incoming/local.tar.gz\n",
        py = test_python(),
    );
    let server = Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| {
            archiver_tgz(store, "tgz", &echo_source("from the store"));
            std::fs::create_dir(store.join("incoming")).unwrap();
            archiver_tgz(&store.join("incoming"), "local", &echo_source("from file"));
        },
    );
    assert!(
        wait_models_ready(&server.inference, Duration::from_secs(120)),
        "{}",
        server.log_text()
    );
    let predict = |model: &str| {
        post(
            &format!("{}/predictions/{model}", server.inference),
            "text/plain",
            "x",
        )
    };
    for (model, answer) in [
        ("tgz", "from the store"),
        ("remote", "from http"),
        ("local", "from file"),
    ] {
        let (status, body, _) = predict(model);
        assert_eq!((status, body.as_str()), (200, answer), "{model}");
    }
    // The URL is what the model list shows, as for any fetched archive.
    let d = describe(&server, "remote");
    assert_eq!(
        d["modelUrl"],
        format!("http://127.0.0.1:{port}/remote.tar.gz")
    );

    let (status, body, _) = post(
        &format!(
            "{}/models?url=http://127.0.0.1:{reg_port}/registered.tar.gz&initial_workers=1&synchronous=true",
            server.management
        ),
        "text/plain",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = predict("registered");
    assert_eq!((status, body.as_str()), (200, "registered"));
}

/// A pure-Python wheel of one module, `tinypkg` (`VALUE = 'from the venv'`), installable with
/// no index.
fn tiny_wheel() -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        let files: [(&str, &str); 4] = [
            ("tinypkg/__init__.py", "VALUE = 'from the venv'\n"),
            (
                "tinypkg-1.0.dist-info/METADATA",
                "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
            ),
            (
                "tinypkg-1.0.dist-info/WHEEL",
                "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            ),
            (
                "tinypkg-1.0.dist-info/RECORD",
                "tinypkg/__init__.py,,\ntinypkg-1.0.dist-info/METADATA,,\ntinypkg-1.0.dist-info/WHEEL,,\ntinypkg-1.0.dist-info/RECORD,,\n",
            ),
        ];
        for (name, text) in files {
            zip.start_file(name, opts).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// `useVenv` with `install_py_dep_per_model`: the model's requirements go into a virtual
/// environment made once for the model; its workers run there and see the package, a model
/// without it and the server's own environment do not.
#[test]
fn use_venv_gives_a_model_its_own_environment() {
    let handler = "import sys\n\n\
        def handle(data, context):\n    \
            if data is None:\n        return None\n    \
            try:\n        import tinypkg\n        found = tinypkg.VALUE\n    \
            except ImportError:\n        found = 'missing'\n    \
            return [found + ' ' + sys.prefix] * len(data)\n";
    let wheel = tiny_wheel();
    let write = |store: &Path, name: &str, yaml: &str, requirements: bool| {
        let requirements = if requirements {
            r#", "requirementsFile": "requirements.txt""#
        } else {
            ""
        };
        let manifest = format!(
            r#"{{"runtime": "python", "model": {{"modelName": "{name}", "handler": "probe_env:handle", "modelVersion": "1.0", "configFile": "model-config.yaml"{requirements}}}}}"#
        );
        write_mar(
            &store.join(format!("{name}.mar")),
            &manifest,
            &[
                ("probe_env.py", handler.as_bytes()),
                ("model-config.yaml", yaml.as_bytes()),
                (
                    "requirements.txt",
                    b"--no-index\n./tinypkg-1.0-py3-none-any.whl\n",
                ),
                ("tinypkg-1.0-py3-none-any.whl", &wheel),
            ],
        );
    };
    let config = format!("python={}\ninstall_py_dep_per_model=true\n", test_python());
    let server = Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| {
            write(
                store,
                "venv",
                "useVenv: true\nminWorkers: 2\nmaxWorkers: 2\n",
                true,
            );
            write(store, "other", "minWorkers: 1\nmaxWorkers: 1\n", false);
        },
    );
    assert!(
        wait_models_ready(&server.inference, Duration::from_secs(120)),
        "{}",
        server.log_text()
    );
    assert_eq!(describe(&server, "venv")["useVenv"], true);
    assert_eq!(describe(&server, "other")["useVenv"], false);
    let ask = |model: &str| {
        let (status, body, _) = post(
            &format!("{}/predictions/{model}", server.inference),
            "text/plain",
            "x",
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    // Both workers of the venv model: the package, from one environment made once.
    let prefixes: std::collections::HashSet<String> = (0..6)
        .map(|_| {
            let body = ask("venv");
            let prefix = body
                .strip_prefix("from the venv ")
                .unwrap_or_else(|| panic!("the venv model lacks its package: {body}"));
            prefix.to_string()
        })
        .collect();
    assert_eq!(prefixes.len(), 1, "{prefixes:?}");
    let prefix = prefixes.into_iter().next().unwrap();
    assert!(
        Path::new(&prefix).join("pyvenv.cfg").is_file(),
        "{prefix} is no virtual environment"
    );
    assert_eq!(
        server
            .log_text()
            .matches("created the model's virtual environment")
            .count(),
        1
    );
    // A model without it runs in the server's environment, which lacks the package.
    let other = ask("other");
    let other_prefix = other
        .strip_prefix("missing ")
        .unwrap_or_else(|| panic!("the package reached another model: {other}"));
    assert_ne!(other_prefix, prefix);
    // The server's environment never got the package.
    let out = std::process::Command::new(test_python())
        .args(["-c", "import tinypkg"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "tinypkg leaked into the server's environment"
    );
}
