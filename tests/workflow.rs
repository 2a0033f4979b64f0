//! Workflows (`.war`): archives built by the real `torch-workflow-archiver`, registered on the
//! real server, their function nodes run by TorchServe's own Python worker, their model nodes
//! by the Python worker or natively. Bodies and status codes are TorchServe 0.12's, as it
//! answered the same requests.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/workflow");

/// Builds `{name}.war` into `dest` with the real archiver: the spec `{name}.yaml` of the
/// fixtures and the tests' handler file.
fn war(dest: &Path, name: &str) {
    let python = PathBuf::from(test_python());
    let archiver = python.parent().unwrap().join("torch-workflow-archiver");
    // The archiver stages files in `$TMPDIR/{name}` and deletes that folder first: tests
    // that build the same workflow at once each need their own.
    let staging = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&archiver)
        .env("TMPDIR", staging.path())
        .args(["--workflow-name", name, "--spec-file"])
        .arg(Path::new(FIXTURES).join(format!("{name}.yaml")))
        .arg("--handler")
        .arg(Path::new(FIXTURES).join("wf_handler.py"))
        .arg("--export-path")
        .arg(dest)
        .arg("-f")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", archiver.display()));
    assert!(out.status.success(), "{out:?}");
}

/// The tests' Python model: doubles `values`.
fn double_mar(store: &Path) {
    let manifest = r#"{"createdOn": "01/01/2024 00:00:00", "runtime": "python", "archiverVersion": "0.12.0",
        "model": {"modelName": "double", "handler": "double.py", "modelVersion": "1.0"}}"#;
    let source = std::fs::read(Path::new(FIXTURES).join("double.py")).unwrap();
    write_mar(
        &store.join("double.mar"),
        manifest,
        &[("double.py", source.as_slice())],
    );
}

fn server(config: &str, archives: &'static [&'static str]) -> Server {
    let config = format!(
        "python={}\nenable_model_api=true\nload_models=\n{config}",
        test_python()
    );
    Server::start_with(
        Setup {
            config: &config,
            archives,
            ..Setup::default()
        },
        |store| {
            double_mar(store);
            std::fs::create_dir_all(store.parent().unwrap().join("wf-store")).unwrap();
        },
    )
}

fn register(server: &Server, query: &str) -> (u16, String) {
    let (code, body, _) = post(
        &format!("{}/workflows?{query}", server.management),
        "text/plain",
        "",
    );
    (code, body)
}

fn wfpredict(server: &Server, name: &str, body: &str) -> (u16, String) {
    let res = agent()
        .post(format!("{}/wfpredict/{name}", server.inference))
        .header("Content-Type", "application/json")
        .header("x-trace", "t-42")
        .send(body)
        .unwrap();
    let (code, body, headers) = into_parts(res);
    if code == 200 {
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
    }
    (code, body)
}

/// A model called directly, its input passed as raw bytes (as a workflow passes outputs on).
fn predict(server: &Server, model: &str, body: &str) -> String {
    let (code, body, _) = post(
        &format!("{}/predictions/{model}", server.inference),
        "application/octet-stream",
        body,
    );
    assert_eq!(code, 200, "{model}: {body}");
    body
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn model_names(server: &Server) -> Vec<String> {
    let (_, body, _) = get(&format!("{}/models", server.management));
    json(&body)["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["modelName"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pipeline_of_functions_and_a_model_matches_its_steps() {
    let mut server = server("", &[]);
    let store = Server::model_store(server.dir.path());
    war(&store, "wf");

    let (code, body) = register(&server, "url=wf.war");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body),
        json!({"status": "Workflow wf has been registered and scaled successfully."})
    );

    // Through the DAG, then the same three models called by hand.
    let input = r#"{"values": [1, 2, 3]}"#;
    let (code, out) = wfpredict(&server, "wf", input);
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        json(&out),
        json!({"sum": 18, "inputs": ["body"], "trace": "t-42"})
    );
    let step1 = predict(&server, "wf__pre", input);
    let step2 = predict(&server, "wf__m", &step1);
    let step3 = predict(&server, "wf__post", &step2);
    let mut by_hand = json(&step3);
    by_hand["trace"] = json!("t-42"); // the header the workflow call carried
    assert_eq!(json(&out), by_hand);

    // TorchServe's management answers.
    let (code, body, _) = get(&format!("{}/workflows/wf", server.management));
    assert_eq!(code, 200);
    assert_eq!(
        json(&body),
        json!([{
            "workflowName": "wf", "workflowUrl": "wf.war", "minWorkers": 1, "maxWorkers": 1,
            "batchSize": 1, "maxBatchDelay": 50, "workflowDag": "{pre=[m], m=[post]}"
        }])
    );
    // Function nodes are models without an archive: not listed, described without a URL.
    assert_eq!(model_names(&server), ["wf__m"]);
    let (_, body, _) = get(&format!("{}/models/wf__pre", server.management));
    let pre = &json(&body)[0];
    assert!(pre.get("modelUrl").is_none(), "{pre}");
    assert_eq!(
        (pre["batchSize"].as_u64(), pre["maxBatchDelay"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(pre["workers"].as_array().unwrap().len(), 1);

    let (code, body) = register(&server, "url=wf.war");
    assert_eq!(code, 409);
    assert_eq!(
        assert_error(&body, 409, "ConflictStatusException"),
        "Workflow wf is already registered."
    );

    // The same archive under another name, then paging.
    let (code, body) = register(
        &server,
        "url=wf.war&workflow_name=wf2&response_timeout=30&startup_timeout=40",
    );
    assert_eq!(code, 200, "{body}");
    // The call's timeouts go to every node's model.
    for node in ["wf2__pre", "wf2__m"] {
        let (_, body, _) = get(&format!("{}/models/{node}", server.management));
        let d = &json(&body)[0];
        let timeouts = (d["responseTimeout"].as_u64(), d["startupTimeout"].as_u64());
        assert_eq!(timeouts, (Some(30), Some(40)), "{node}");
    }
    let (_, body, _) = get(&format!("{}/workflows?limit=1", server.management));
    assert_eq!(
        json(&body),
        json!({"nextPageToken": "1", "workflows": [{"workflowName": "wf", "workflowUrl": "wf.war"}]})
    );
    // TorchServe's paging gives a token whenever a page ends exactly at the last item.
    let (_, body, _) = get(&format!(
        "{}/workflows?limit=1&next_page_token=1",
        server.management
    ));
    assert_eq!(
        json(&body),
        json!({"nextPageToken": "2", "workflows": [{"workflowName": "wf2", "workflowUrl": "wf.war"}]})
    );

    // Unregistering removes the workflow and its nodes' models; the other one keeps serving.
    let res = agent()
        .delete(format!("{}/workflows/wf2", server.management))
        .call()
        .unwrap();
    let (code, body, _) = into_parts(res);
    assert_eq!(code, 200);
    assert_eq!(
        json(&body),
        json!({"status": "Workflow \"wf2\" unregistered"})
    );
    let res = agent()
        .delete(format!("{}/workflows/wf2", server.management))
        .call()
        .unwrap();
    let (code, body, _) = into_parts(res);
    assert_eq!(
        (code, assert_error(&body, 404, "WorkflowNotFoundException")),
        (404, "Workflow not found: wf2".to_string())
    );
    assert_eq!(model_names(&server), ["wf__m"]);
    let (code, body, _) = get(&format!("{}/models/wf2__pre", server.management));
    assert_eq!(code, 404, "{body}");
    assert_eq!(wfpredict(&server, "wf", input).0, 200);
    let (code, body) = wfpredict(&server, "wf2", input);
    assert_eq!(
        (code, assert_error(&body, 404, "WorkflowNotFoundException")),
        (404, "Workflow not found: wf2".to_string())
    );
    let res = agent()
        .put(format!("{}/workflows/wf", server.management))
        .send_empty()
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);

    // Workflows are not snapshotted (as in TorchServe), nor are their nodes' models.
    assert!(server.terminate().success());
    let config = server.dir.path().join("logs/config");
    let shutdown = std::fs::read_dir(&config)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with("-shutdown.cfg"))
        .expect("a shutdown snapshot");
    let text = std::fs::read_to_string(shutdown.path()).unwrap();
    assert!(text.contains("model_snapshot"), "{text}");
    assert!(!text.contains("wf__"), "{text}");
}

#[test]
fn parallel_branches_join_and_several_leaves() {
    let server = server("", &[]);
    let store = Server::model_store(server.dir.path());
    // pre feeds m and n and count; m and n both feed agg; agg and count are the leaves.
    war(&store, "par");
    let (code, body) = register(&server, "url=par.war");
    assert_eq!(code, 200, "{body}");
    let (code, out) = wfpredict(&server, "par", r#"{"values": [1, 2, 3]}"#);
    assert_eq!(code, 200, "{out}");
    // A node with several parents gets each one's output under the parent's name; several
    // leaves answer as one object keyed by node.
    let doubled = json!({"doubled": [4, 6, 8]});
    assert_eq!(
        json(&out),
        json!({"agg": {"m": doubled, "n": doubled}, "count": {"count": 3}})
    );
    let (_, body, _) = get(&format!("{}/workflows/par", server.management));
    assert_eq!(
        json(&body)[0]["workflowDag"],
        "{pre=[m, n, count], m=[agg], n=[agg]}"
    );
}

#[test]
fn pipeline_around_a_native_model() {
    let server = server("load_models=sign.mar", &["sign.mar"]);
    let store = Server::model_store(server.dir.path());
    war(&store, "signwf");
    let (code, body) = register(&server, "url=signwf.war");
    assert_eq!(code, 200, "{body}");
    let (_, body, _) = get(&format!("{}/models/signwf__sign", server.management));
    let node = &json(&body)[0];
    assert_eq!(node["modelUrl"], "sign.mar");
    assert_eq!(
        (node["batchSize"].as_u64(), node["maxBatchDelay"].as_u64()),
        (Some(4), Some(5))
    );

    let reference = Reference::load();
    for case in reference.cases().iter().take(3) {
        let input = request_body(case, reference.features(), 1);
        let (code, out) = wfpredict(&server, "signwf", &input);
        assert_eq!(code, 200, "{out}");
        // By hand: what pre does (ask for the best 3), the natively served model, what post does.
        let mut asked = json(&input);
        asked["topk"] = json!(3);
        let (code, answer, _) = post(
            &format!("{}/predictions/sign", server.inference),
            "application/json",
            &asked.to_string(),
        );
        assert_eq!(code, 200, "{answer}");
        let answer = json(&answer);
        assert_eq!(answer["predictions"].as_array().unwrap().len(), 3);
        let best = &answer["predictions"][0];
        let out = json(&out);
        assert_eq!(out["sign"], best["label"]);
        assert!(
            (out["confidence"].as_f64().unwrap() - best["confidence"].as_f64().unwrap()).abs()
                < 1e-6
        );
    }
}

#[test]
fn failing_and_slow_nodes_fail_the_request_only() {
    let server = server("metrics_mode=prometheus", &[]);
    let store = Server::model_store(server.dir.path());
    war(&store, "boom");
    war(&store, "slow");
    war(&store, "wf");
    for name in ["boom", "slow", "wf"] {
        let (code, body) = register(&server, &format!("url={name}.war"));
        assert_eq!(code, 200, "{name}: {body}");
    }
    // TorchServe's answer names the node; the reason goes to the log.
    let (code, body) = wfpredict(&server, "boom", "{}");
    assert_eq!(
        (code, assert_error(&body, 500, "InternalServerException")),
        (500, "Error executing boom".to_string())
    );
    let (code, body) = wfpredict(&server, "slow", "{}");
    assert_eq!(
        (code, assert_error(&body, 500, "InternalServerException")),
        (500, "Error executing slow".to_string())
    );
    // A bad input fails in the first node; everything keeps serving.
    let (code, body) = wfpredict(&server, "wf", r#"{"nope": 1}"#);
    assert_eq!(
        (code, assert_error(&body, 500, "InternalServerException")),
        (500, "Error executing pre".to_string())
    );
    assert_eq!(wfpredict(&server, "wf", r#"{"values": [0]}"#).0, 200);
    let log = server.log_text();
    assert!(log.contains("Error executing boom"), "{log}");
    // The node calls that failed count in their models' metrics: boom answered 500 (on each
    // attempt), slow's timeout counts as a 500.
    let (_, metrics, _) = get(&format!("{}/metrics", server.metrics));
    for node in ["boom__boom", "slow__slow"] {
        let failed = metrics.lines().find(|l| {
            l.starts_with("ferroserve_inference_responses_total{")
                && l.contains(&format!("model_name=\"{node}\""))
                && l.contains("code=\"5xx\"")
        });
        let count = failed.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert!(count.is_some_and(|n| n >= 1.0), "{node}: {metrics}");
    }
}

#[test]
fn registration_errors_are_torchserves() {
    let server = server("workflow_store=wf-store", &[]);
    let wf_store = server.dir.path().join("wf-store");
    war(&wf_store, "twostart");
    war(&wf_store, "cycle");
    war(&wf_store, "dupedge");
    war(&wf_store, "badyaml");
    war(&wf_store, "missing");
    war(&wf_store, "nofunc");
    // No manifest: the name and then the archiver version are missing.
    let handler = std::fs::read(Path::new(FIXTURES).join("wf_handler.py")).unwrap();
    let spec = std::fs::read(Path::new(FIXTURES).join("wf.yaml")).unwrap();
    write_zip(
        &wf_store.join("noman.war"),
        &[("wf.yaml", &spec), ("wf_handler.py", &handler)],
    );
    write_zip(
        &wf_store.join("slip.war"),
        &[
            ("WAR-INF/MANIFEST.json", b"{}".as_slice()),
            // Extraction goes to $TMPDIR/models/<random>/, $TMPDIR being the server's dir.
            ("../evil.py", b"x".as_slice()),
            ("../../evil.py", b"x".as_slice()),
        ],
    );
    // The model store is not the workflow store here.
    let model_store = Server::model_store(server.dir.path());
    std::fs::copy(
        wf_store.join("missing.war"),
        model_store.join("elsewhere.war"),
    )
    .unwrap();

    let cases: &[(&str, u16, &str, &str)] = &[
        ("", 400, "BadRequestException", "Parameter url is required."),
        (
            "url=nothere.war",
            404,
            "WorkflowNotFoundException",
            "Workflow not found in workflow store: nothere.war",
        ),
        (
            "url=elsewhere.war",
            404,
            "WorkflowNotFoundException",
            "Workflow not found in workflow store: elsewhere.war",
        ),
        (
            "url=../model-store/elsewhere.war",
            404,
            "WorkflowNotFoundException",
            "Relative path is not allowed in url: ../model-store/elsewhere.war",
        ),
        ("url=twostart.war", 400, "InvalidDAGException", "DAG should have only one start node"),
        ("url=cycle.war", 400, "InvalidDAGException", "Not a valid DAG"),
        ("url=dupedge.war", 400, "InvalidDAGException", "loop exception"),
        ("url=badyaml.war", 500, "InvalidWorkflowException", "Failed to parse yaml."),
        (
            "url=missing.war",
            500,
            "WorkflowException",
            "Workflow missing has failed to register. Failures: [Workflow Node missing__m failed to register. Details: Model not found at: missing.mar]",
        ),
        (
            "url=nofunc.war",
            500,
            "WorkflowException",
            "Workflow nofunc has failed to register. Failures: [Failed to start workers for model nofunc__nosuch version: 1.0]",
        ),
        ("url=noman.war", 500, "InvalidWorkflowException", "Workflow name is not defined."),
        (
            "url=noman.war&workflow_name=nm",
            500,
            "InvalidWorkflowException",
            "Workflow archive version is not defined.",
        ),
    ];
    for (query, code, kind, message) in cases {
        let (got, body) = register(&server, query);
        assert_eq!(got, *code, "{query}: {body}");
        assert_eq!(assert_error(&body, *code, kind), *message, "{query}");
    }
    // An archive escaping its directory is refused before anything is written outside it.
    let (code, body) = register(&server, "url=slip.war");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("unsafe entry"), "{body}");
    for escaped in ["evil.py", "models/evil.py"] {
        assert!(!server.dir.path().join(escaped).exists(), "{escaped}");
    }
    // A failed registration leaves no node behind (missing's `pre` had registered).
    assert!(
        model_names(&server).is_empty(),
        "{:?}",
        model_names(&server)
    );
    let (code, body, _) = get(&format!("{}/models/missing__pre", server.management));
    assert_eq!(code, 404, "{body}");
    let (_, body, _) = get(&format!("{}/workflows", server.management));
    assert_eq!(json(&body), json!({"workflows": []}));
}

#[test]
fn a_workflow_registered_from_a_url() {
    let server = server("", &[]);
    let built = tempfile::tempdir().unwrap();
    war(built.path(), "boom");
    let port = serve_bytes(std::fs::read(built.path().join("boom.war")).unwrap());
    let url = format!("http://127.0.0.1:{port}/fetched.war");
    // Fetched into the workflow store under its URL's file name, kept while registered.
    let (code, body) = register(&server, &format!("url={url}&workflow_name=fetched"));
    assert_eq!(code, 200, "{body}");
    let fetched = server.dir.path().join("model-store/fetched.war");
    assert!(fetched.is_file());
    let (_, body, _) = get(&format!("{}/workflows", server.management));
    assert_eq!(
        json(&body),
        json!({"workflows": [{"workflowName": "fetched", "workflowUrl": url}]})
    );
    // A second registration would overwrite it: refused.
    let (code, body) = register(&server, &format!("url={url}&workflow_name=again"));
    assert_eq!(code, 500, "{body}");
    // Unregistering deletes the fetched file.
    let res = agent()
        .delete(format!("{}/workflows/fetched", server.management))
        .call()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(!fetched.exists());
    // A URL outside allowed_urls is refused before anything is fetched.
    let server = Server::start(Setup {
        config:
            "enable_model_api=true\nload_models=\nallowed_urls=https://models\\.example\\.com/.*",
        ..Setup::default()
    });
    let (code, body) = register(&server, &format!("url={url}"));
    assert_eq!(code, 404, "{body}");
    let message = assert_error(&body, 404, "WorkflowNotFoundException");
    assert!(
        message.contains("does not match any allowed URL"),
        "{message}"
    );
}

#[test]
fn workflow_registration_does_not_need_the_model_api() {
    // As in TorchServe, whose own workflow suite runs with the model API off: workflows
    // register and unregister whatever `enable_model_api` says (token authorization, on by
    // default, guards the management API); models stay behind the switch.
    let config = format!("python={}\nload_models=", test_python());
    let server = Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| {
            double_mar(store);
            war(store, "wf");
        },
    );
    let (code, body) = register(&server, "url=wf.war");
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = post(
        &format!("{}/models?url=double.mar", server.management),
        "text/plain",
        "",
    );
    assert_eq!(code, 405, "{body}");
    let (code, body) = wfpredict(&server, "wf", r#"{"values": [1, 2]}"#);
    assert_eq!(code, 200, "{body}");
    let res = agent()
        .delete(format!("{}/workflows/wf", server.management))
        .call()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let (code, body, _) = get(&format!("{}/workflows", server.management));
    assert_eq!((code, json(&body)), (200, json!({"workflows": []})));
}

fn write_zip(path: &Path, files: &[(&str, &[u8])]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in files {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}
