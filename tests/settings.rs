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

/// A server with the test interpreter, `config` and the archives `prepare` writes, once its
/// start-up models' workers are up (no request then waits for a worker to start).
fn ready(config: &str, env: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Server {
    let config = format!("python={}\n{config}", test_python());
    let server = Server::start_with(
        Setup {
            config: &config,
            env,
            ..Setup::default()
        },
        prepare,
    );
    assert!(
        wait_models_ready(&server.inference, Duration::from_secs(120)),
        "{}",
        server.log_text()
    );
    server
}

/// The gate model (one worker) as its config line.
const GATE_WORKER: &str = "models={\"gate\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}}\n";

/// A server with the gate model (one worker) whose model-config.yaml is `yaml`.
fn gated(gate: &Gate, yaml: &str) -> Server {
    ready(GATE_WORKER, &[], |store| {
        gate.write_mar_with_config(store, Some(yaml))
    })
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
        "enable_model_api=true\ndefault_workers_per_model=1\n\
         load_models=tgz.tar.gz,http://127.0.0.1:{port}/remote.tar.gz,file://{{model_store}}/incoming/local.tar.gz\n",
    );
    let server = ready(&config, &[], |store| {
        archiver_tgz(store, "tgz", &echo_source("from the store"));
        std::fs::create_dir(store.join("incoming")).unwrap();
        archiver_tgz(&store.join("incoming"), "local", &echo_source("from file"));
    });
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
    let server = ready("install_py_dep_per_model=true\n", &[], |store| {
        write(
            store,
            "venv",
            "useVenv: true\nminWorkers: 2\nmaxWorkers: 2\n",
            true,
        );
        write(store, "other", "minWorkers: 1\nmaxWorkers: 1\n", false);
    });
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

/// A stateful Python handler in the manner of TorchServe's `examples/stateful`: it adds each
/// request's number to its sequence's running total (kept in the worker process) and answers
/// `<total> <pid> <start header>`; a `hold` body waits at the gate (`entered`, `open`).
fn stateful_mar(store: &Path, yaml: &str, gate: &Path) {
    let source = format!(
        "import os, time\n\n\
         totals = {{}}\n\n\
         def handle(data, context):\n    \
             if data is None:\n        return None\n    \
             out = []\n    \
             for i, row in enumerate(data):\n        \
                 seq = context.get_sequence_id(i)\n        \
                 body = row.get('body') or row.get('data')\n        \
                 if isinstance(body, (bytes, bytearray)):\n            body = body.decode()\n        \
                 if body == 'hold':\n            \
                     open(os.path.join({entered:?}, seq), 'w').close()\n            \
                     while not os.path.exists({open:?}):\n                time.sleep(0.02)\n            \
                     out.append('held')\n            \
                     continue\n        \
                 totals[seq] = totals.get(seq, 0) + int(body)\n        \
                 start = context.get_request_header(i, 'ts_request_sequence_start')\n        \
                 out.append(f'{{totals[seq]}} {{os.getpid()}} {{start}}')\n    \
             return out\n",
        entered = gate.join("entered").to_str().unwrap(),
        open = gate.join("open").to_str().unwrap(),
    );
    std::fs::create_dir_all(gate.join("entered")).unwrap();
    let manifest = r#"{"runtime": "python", "model": {"modelName": "stateful", "handler": "stateful:handle", "modelVersion": "1.0", "configFile": "model-config.yaml"}}"#;
    write_mar(
        &store.join("stateful.mar"),
        manifest,
        &[
            ("stateful.py", source.as_bytes()),
            ("model-config.yaml", yaml.as_bytes()),
        ],
    );
}

fn stateful_server(yaml: &str, gate: &Path) -> Server {
    ready("", &[], |store| stateful_mar(store, yaml, gate))
}

/// `(status, body)` of a request to the stateful model, in sequence `sequence` if given.
fn in_sequence(server: &Server, sequence: Option<&str>, body: &str) -> (u16, String) {
    let mut req = agent().post(format!("{}/predictions/stateful", server.inference));
    if let Some(id) = sequence {
        req = req.header("ts_request_sequence_id", id);
    }
    let (status, body, _) =
        into_parts(req.header("Content-Type", "text/plain").send(body).unwrap());
    (status, body)
}

/// TorchServe's own stateful test (`test_example_stateful_sequence_batching_http.py`): two
/// sequences sent at once to two workers each add up in order on the worker that took the
/// sequence; the same sequence over gRPC `StreamPredictions2`.
#[test]
fn sequences_run_in_order_on_the_worker_that_took_them() {
    let gate = tempfile::tempdir().unwrap();
    let yaml = "minWorkers: 2\nmaxWorkers: 2\nbatchSize: 4\nmaxNumSequence: 4\nsequenceMaxIdleMSec: 5000\nmaxSequenceJobQueueSize: 10\nsequenceBatching: true\n";
    let server = std::sync::Arc::new(stateful_server(yaml, gate.path()));
    let d = describe(&server, "stateful");
    assert_eq!(
        (
            &d["stateful"],
            &d["sequenceMaxIdleMSec"],
            &d["maxNumSequence"],
            &d["maxSequenceJobQueueSize"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(5000),
            &serde_json::json!(4),
            &serde_json::json!(10)
        )
    );
    let run = |id: &'static str, first: u32| {
        let s = server.clone();
        std::thread::spawn(move || {
            (0..5)
                .map(|i| {
                    let (status, body) = in_sequence(&s, Some(id), &(first + 2 * i).to_string());
                    assert_eq!(status, 200, "{body}");
                    let parts: Vec<String> = body.split(' ').map(str::to_string).collect();
                    (parts[0].clone(), parts[1].clone())
                })
                .collect::<Vec<_>>()
        })
    };
    let (s0, s1) = (run("seq_0", 1), run("seq_1", 2));
    for (answers, expected) in [
        (s0.join().unwrap(), "1 4 9 16 25"),
        (s1.join().unwrap(), "2 6 12 20 30"),
    ] {
        let totals: Vec<&str> = answers.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(totals.join(" "), expected);
        let pids: std::collections::HashSet<&str> =
            answers.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            pids.len(),
            1,
            "a sequence moved between workers: {answers:?}"
        );
    }

    // gRPC: a sequence over one StreamPredictions2 stream, and an in-band error for a
    // message with neither a sequence id nor the start flag.
    use ferroserve::api::grpc::pb::inference::inference_ap_is_service_client::InferenceApIsServiceClient;
    use ferroserve::api::grpc::pb::inference::PredictionsRequest;
    let message = |id: Option<&str>, n: &str| PredictionsRequest {
        model_name: "stateful".into(),
        model_version: String::new(),
        input: std::collections::HashMap::from([("data".to_string(), n.as_bytes().to_vec())]),
        sequence_id: id.map(str::to_string),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answers = runtime.block_on(async {
        let mut c = InferenceApIsServiceClient::connect(server.grpc_inference.clone())
            .await
            .unwrap();
        let outbound = tokio_stream::iter(vec![
            message(Some("g1"), "3"),
            message(Some("g1"), "4"),
            message(None, "1"),
            message(Some("g1"), "10"),
        ]);
        let mut inbound = c.stream_predictions2(outbound).await.unwrap().into_inner();
        let mut answers = Vec::new();
        while let Some(answer) = inbound.message().await.unwrap() {
            answers.push(answer);
        }
        answers
    });
    assert_eq!(answers.len(), 4);
    let total = |i: usize| {
        let body = String::from_utf8(answers[i].prediction.clone()).unwrap();
        body.split(' ').next().unwrap().to_string()
    };
    assert_eq!(
        (total(0), total(1), total(3)),
        ("3".into(), "7".into(), "17".into())
    );
    // As TorchServe's, the replies carry no sequence id.
    assert_eq!(answers[0].sequence_id, None);
    let error = answers[2].status.as_ref().expect("an in-band error");
    assert_eq!(
        (error.code, error.message.as_str()),
        (
            tonic::Code::Internal as i32,
            "Parameter sequenceId is required."
        )
    );
}

/// `maxNumSequence`, `maxSequenceJobQueueSize` and `sequenceMaxIdleMSec` as TorchServe
/// applies them: a full sequence or a full table refuses with TorchServe's 503; an idle
/// sequence ends and frees its place; a request without a sequence id opens a sequence of its
/// own, marked as its start.
#[test]
fn sequence_limits_refuse_and_idle_sequences_end() {
    let gate = tempfile::tempdir().unwrap();
    let yaml = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 2\nmaxNumSequence: 1\nsequenceMaxIdleMSec: 1500\nmaxSequenceJobQueueSize: 1\nsequenceBatching: true\n";
    let server = std::sync::Arc::new(stateful_server(yaml, gate.path()));
    let stateful_no_worker = NO_WORKER.replace("\"gate\"", "\"stateful\"");
    let s = server.clone();
    let held = std::thread::spawn(move || in_sequence(&s, Some("a"), "hold"));
    eventually("the held request reached the handler", || {
        gate.path().join("entered/a").exists()
    });
    let s = server.clone();
    let queued = std::thread::spawn(move || in_sequence(&s, Some("a"), "2"));
    eventually("the second request of the sequence waits", || {
        describe(&server, "stateful")["jobQueueStatus"]["pendingRequests"] == 1
    });
    // The sequence's queue holds one: a third is refused.
    let (status, body) = in_sequence(&server, Some("a"), "3");
    assert_eq!(
        (
            status,
            assert_error(&body, 503, "ServiceUnavailableException")
        ),
        (503, stateful_no_worker.clone())
    );
    // One sequence at most: another is refused, and so is a request that would open one.
    let (status, body) = in_sequence(&server, Some("b"), "5");
    assert_eq!(
        (
            status,
            assert_error(&body, 503, "ServiceUnavailableException")
        ),
        (503, stateful_no_worker.clone())
    );
    assert_eq!(in_sequence(&server, None, "5").0, 503);

    std::fs::write(gate.path().join("open"), b"").unwrap();
    assert_eq!(held.join().unwrap(), (200, "held".to_string()));
    // The queued request ran after the held one, in the same sequence (its total starts at 2).
    let (status, body) = queued.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("2 ") && body.ends_with(" None"), "{body}");

    // Once "a" has been idle for sequenceMaxIdleMSec, "b" takes its place.
    let mut answer = (0, String::new());
    eventually("the idle sequence ended and a new one opened", || {
        answer = in_sequence(&server, Some("b"), "5");
        answer.0 == 200
    });
    assert!(answer.1.starts_with("5 "), "{answer:?}");
    // Without an id: a sequence of its own, its first request flagged as the start.
    eventually("a request without a sequence id opens one", || {
        answer = in_sequence(&server, None, "7");
        answer.0 == 200
    });
    assert!(
        answer.1.starts_with("7 ") && answer.1.ends_with(" true"),
        "{answer:?}"
    );
}

/// A request flagged `ts_request_sequence_end: true` is its sequence's last: the sequence
/// takes no more requests and frees its place once that one has run, long before it would
/// idle out.
#[test]
fn the_last_request_of_a_sequence_closes_it() {
    let gate = tempfile::tempdir().unwrap();
    let yaml = "minWorkers: 1\nmaxWorkers: 1\nmaxNumSequence: 1\nsequenceMaxIdleMSec: 600000\nmaxSequenceJobQueueSize: 4\nsequenceBatching: true\n";
    let server = stateful_server(yaml, gate.path());
    assert_eq!(in_sequence(&server, Some("c"), "1").0, 200);
    // An open sequence holds the only place.
    assert_eq!(in_sequence(&server, Some("d"), "1").0, 503);
    let (status, body, _) = into_parts(
        agent()
            .post(format!("{}/predictions/stateful", server.inference))
            .header("ts_request_sequence_id", "c")
            .header("ts_request_sequence_end", "true")
            .header("Content-Type", "text/plain")
            .send("2")
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("3 "), "{body}");
    // Well within the ten-minute idle time, the place is free again.
    eventually("the closed sequence freed its place", || {
        in_sequence(&server, Some("d"), "4").0 == 200
    });
}

/// config.properties keys of TorchServe's that act here: CORS headers on every response of
/// every listener, `ipex_enable` handed to the Python worker, `number_of_netty_threads` as
/// the inference listener's HTTP threads; keys about the JVM are named in a warning, and a
/// key asking for what ferroserve does not do stops start-up by name.
#[test]
fn server_keys_act_warn_or_refuse() {
    let handler = "import os\n\ndef handle(data, context):\n    \
        return data and [os.environ.get('TS_IPEX_ENABLE', 'unset') + ' ' + os.environ.get('TS_IPEX_GPU_ENABLE', 'unset')] * len(data)\n";
    // One HTTP thread more than the default (one per core), so that the count shows the key.
    let http = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let server = python_model_server(
        "ipex",
        handler,
        &format!(
            "cors_allowed_origin=https://app.example\ncors_allowed_methods=GET, POST\n\
             cors_allowed_headers=X-Custom\nipex_enable=true\nvmargs=-Xmx4g\nnetty_client_threads=4\n\
             number_of_netty_threads={http}\n"
        ),
    );
    assert!(wait_models_ready(
        &server.inference,
        Duration::from_secs(120)
    ));
    let cors = |headers: &[(String, String)]| {
        (
            header(headers, "access-control-allow-origin").map(str::to_string),
            header(headers, "access-control-allow-methods").map(str::to_string),
            header(headers, "access-control-allow-headers").map(str::to_string),
        )
    };
    let expected = (
        Some("https://app.example".to_string()),
        Some("GET, POST".to_string()),
        Some("X-Custom".to_string()),
    );
    let (status, body, headers) = post(
        &format!("{}/predictions/ipex", server.inference),
        "text/plain",
        "x",
    );
    assert_eq!((status, body.as_str()), (200, "true false"));
    assert_eq!(cors(&headers), expected);
    for url in [
        format!("{}/ping", server.inference),
        format!("{}/models", server.management),
        format!("{}/models/nope", server.management),
        format!("{}/metrics", server.metrics),
    ] {
        assert_eq!(cors(&get(&url).2), expected, "{url}");
    }
    // actix-web's workers, under the actix System main starts, are named
    // "actix-rt|system:0|arbiter:N" (15 characters kept in comm): `http` for inference, one
    // each for the management and metrics listeners.
    let http_threads = std::fs::read_dir(format!("/proc/{}/task", server.pid))
        .unwrap()
        // A thread may end between the listing and the read (the blocking pool's idle ones).
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("actix-rt|system"))
        .count();
    assert_eq!(http_threads, http + 2);
    let log = server.log_text();
    assert!(
        !log.contains("number_of_netty_threads has no effect"),
        "{log}"
    );
    for key in ["vmargs", "netty_client_threads"] {
        assert!(
            log.contains(&format!(
                "config.properties: {key} has no effect in ferroserve: "
            )),
            "{log}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    std::fs::write(
        dir.path().join("config.properties"),
        "model_store=store\ncpu_launcher_enable=true\n",
    )
    .unwrap();
    let (code, out) = run_to_exit(
        dir.path(),
        &["--foreground", "--ts-config", "config.properties"],
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("cpu_launcher_enable") && out.contains("not supported by ferroserve"),
        "{out}"
    );
}

/// `grpc_inference_max_connection_age_ms` (+ `_grace_ms`): a connection is closed once it is
/// that old, and a call still open after the grace is cut.
#[test]
fn grpc_connections_are_aged_out() {
    use ferroserve::api::grpc::pb::inference::inference_ap_is_service_client::InferenceApIsServiceClient;
    use ferroserve::api::grpc::pb::inference::PredictionsRequest;
    let gate = Gate::default();
    let config = format!(
        "grpc_inference_max_connection_age_ms=300\ngrpc_inference_max_connection_age_grace_ms=200\n{GATE_WORKER}"
    );
    let server = ready(&config, &[], |store| gate.write_mar(store));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held = runtime.block_on(async {
        let mut c = InferenceApIsServiceClient::connect(server.grpc_inference.clone())
            .await
            .unwrap();
        let call = c.predictions(PredictionsRequest {
            model_name: "gate".into(),
            model_version: String::new(),
            input: std::collections::HashMap::from([("data".to_string(), b"hold".to_vec())]),
            sequence_id: None,
        });
        tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the held call was never cut")
    });
    gate.open();
    // The handler held the call past the connection's age and grace: it was cut.
    let e = held.expect_err("a call held past the connection's age and grace was answered");
    assert!(
        matches!(
            e.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        ),
        "{e:?}"
    );
}

/// `continuousBatching`: a streaming handler written for TorchServe's continuous batching
/// (state per request id in the context, `context.stopping_criteria` to say when a request is
/// done) answers each request part by part; a request arriving while another streams joins
/// the running batch at the next round instead of waiting for it to end, and is sent its
/// parameters once.
#[test]
fn continuous_batching_lets_new_requests_join_a_running_batch() {
    let handler = "import time\n\n\
        def handle(data, context):\n    \
            if data is None:\n        return None\n    \
            if not hasattr(context, 'steps'):\n        context.steps = {}\n    \
            out, stops = [], []\n    \
            for i, row in enumerate(data):\n        \
                rid = context.request_ids[i]\n        \
                if rid not in context.steps:\n            \
                    body = row.get('body') or row.get('data')\n            \
                    context.steps[rid] = [0, int(body)]\n        \
                elif row:\n            \
                    raise ValueError('a continuing request was sent its parameters again')\n        \
                state = context.steps[rid]\n        \
                state[0] += 1\n        \
                done = state[0] >= state[1]\n        \
                out.append(f'{state[0]}/{len(data)};')\n        \
                stops.append(lambda _, done=done: done)\n        \
                if done:\n            del context.steps[rid]\n    \
            context.stopping_criteria = stops\n    \
            time.sleep(0.05)\n    \
            return out\n";
    let config = "models={\"cb\": {\"1.0\": {\"minWorkers\": 1, \"maxWorkers\": 1}}}\n";
    let server = std::sync::Arc::new(ready(config, &[], |store| {
        write_mar(
            &store.join("cb.mar"),
            r#"{"runtime": "python", "model": {"modelName": "cb", "handler": "cb:handle", "modelVersion": "1.0", "configFile": "model-config.yaml"}}"#,
            &[
                ("cb.py", handler.as_bytes()),
                (
                    "model-config.yaml",
                    b"continuousBatching: true\nbatchSize: 4\n",
                ),
            ],
        );
    }));
    assert_eq!(describe(&server, "cb")["continuousBatching"], true);

    // A long answer (40 parts): once its first part is in, a short one (3 parts) is sent.
    let mut long = agent()
        .post(format!("{}/predictions/cb", server.inference))
        .header("Content-Type", "text/plain")
        .send("40")
        .unwrap();
    assert_eq!(long.status(), 200);
    let mut reader = long.body_mut().as_reader();
    let mut first = [0u8; 64];
    let n = std::io::Read::read(&mut reader, &mut first).unwrap();
    assert!(std::str::from_utf8(&first[..n])
        .unwrap()
        .starts_with("1/1;"));
    let (status, short, headers) = post(
        &format!("{}/predictions/cb", server.inference),
        "text/plain",
        "3",
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let long_parts: Vec<String> = format!("{}{rest}", std::str::from_utf8(&first[..n]).unwrap())
        .split_terminator(';')
        .map(str::to_string)
        .collect();

    // The short request ran in rounds shared with the long one, and ended first.
    assert_eq!(
        (status, short.as_str()),
        (200, "1/2;2/2;3/2;"),
        "{headers:?}"
    );
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(long_parts.len(), 40, "{long_parts:?}");
    for (i, part) in long_parts.iter().enumerate() {
        assert!(part.starts_with(&format!("{}/", i + 1)), "{long_parts:?}");
    }
    assert_eq!(
        long_parts.iter().filter(|p| p.ends_with("/2")).count(),
        3,
        "the long answer shared exactly three rounds: {long_parts:?}"
    );
    assert_eq!(describe(&server, "cb")["stats"]["requests"], 2);

    // A client that leaves mid-answer (2,000 parts, about 100 s) leaves the batch: well
    // before that answer could end, a new request runs alone.
    let mut endless = agent()
        .post(format!("{}/predictions/cb", server.inference))
        .header("Content-Type", "text/plain")
        .send("2000")
        .unwrap();
    let n = std::io::Read::read(&mut endless.body_mut().as_reader(), &mut first).unwrap();
    assert!(n > 0);
    drop(endless);
    eventually("the departed client's request left the batch", || {
        post(
            &format!("{}/predictions/cb", server.inference),
            "text/plain",
            "2",
        )
        .1 == "1/1;2/1;"
    });
}

/// `ts_header_key_sequence_id` renames the header that carries a sequence (the Python worker
/// reads the same name from `TS_REQUEST_SEQUENCE_ID`, which it inherits, as in TorchServe).
#[test]
fn the_sequence_header_can_be_renamed() {
    let gate = tempfile::tempdir().unwrap();
    // Two sequences at most: were the header not the sequence's, every request would open one.
    let yaml = "minWorkers: 1\nmaxWorkers: 1\nmaxNumSequence: 2\nsequenceMaxIdleMSec: 600000\nsequenceBatching: true\n";
    let server = ready(
        "ts_header_key_sequence_id=x-session\n",
        &[("TS_REQUEST_SEQUENCE_ID", "x-session")],
        |store| stateful_mar(store, yaml, gate.path()),
    );
    let send = |session: &str, n: &str| {
        let (status, body, _) = into_parts(
            agent()
                .post(format!("{}/predictions/stateful", server.inference))
                .header("x-session", session)
                .header("Content-Type", "text/plain")
                .send(n)
                .unwrap(),
        );
        assert_eq!(status, 200, "{body}");
        // No sequence was opened for it by the server (that would flag its start).
        assert!(body.ends_with(" None"), "{body}");
        body.split(' ').next().unwrap().to_string()
    };
    assert_eq!(send("a", "2"), "2");
    assert_eq!(send("b", "10"), "10");
    assert_eq!(send("a", "3"), "5");
    assert_eq!(send("b", "1"), "11");
}
