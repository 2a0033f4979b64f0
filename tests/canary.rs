//! Canary releases: weighted and sticky splits between versions of the probe model
//! (`tests/fixtures/probe.mar`, repackaged here as other versions), promotion, automatic
//! rollback of failing or slow canaries, stepped rollouts, shadow traffic, and splits kept
//! across a restart.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PROBE_CONFIG: &str =
    "ferroserve:\n  native_handler: json_tensor_classifier\nhandler:\n  frames: 1\n  features: 4\nminWorkers: 1\nmaxWorkers: 1\n";

/// The probe archive as `version`, answering with label `label` instead of "batch", with
/// `extra_config` appended to its model-config.yaml.
fn probe_version(store: &Path, file: &str, version: &str, label: &str, extra_config: &str) {
    probe_archive(
        &store.join(file),
        version,
        label,
        &format!("{PROBE_CONFIG}{extra_config}"),
    );
}

const BODY: &str = r#"{"landmarks": [[0, 0, 0, 0]], "topk": 2}"#;

/// Sends one probe request; returns (status, serving version, top label).
fn ask(server: &Server, path: &str, key: Option<&str>) -> (u16, String, String) {
    let mut req = agent()
        .post(format!("{}/predictions/{path}", server.inference))
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("X-Routing-Key", k);
    }
    let mut res = req.send(BODY).unwrap();
    let status = res.status().as_u16();
    let version = res
        .headers()
        .get("x-model-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = res
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("unreadable body: {e}"));
    let label = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["predictions"][0]["label"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, version, label)
}

fn management(server: &Server, method: &str, path: &str, body: &str) -> (u16, Value) {
    let url = format!("{}/models/{path}", server.management);
    let res = match method {
        "GET" => agent().get(&url).call(),
        "DELETE" => agent().delete(&url).call(),
        _ if body.is_empty() => agent().put(&url).send_empty(),
        _ => agent()
            .put(&url)
            .header("Content-Type", "application/json")
            .send(body),
    };
    let mut res = res.unwrap();
    let status = res.status().as_u16();
    let text = res
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("unreadable body: {e}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn split(server: &Server) -> Value {
    let (status, v) = management(server, "GET", "probe/canary", "");
    assert_eq!(status, 200, "{v}");
    v
}

fn two_versions(config: &str) -> Server {
    Server::start_with(
        Setup {
            archives: &["probe.mar"],
            config,
            ..Setup::default()
        },
        |store| {
            probe_version(store, "probe_v2.mar", "2.0", "v2", "");
        },
    )
}

#[test]
fn a_split_routes_by_weight_and_key_and_never_reroutes_versioned_requests() {
    let server = two_versions("load_models=probe.mar,probe_v2.mar\nmetrics_mode=prometheus");
    let (status, body) = management(&server, "PUT", "probe/canary?version=2.0&weight=30", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Traffic split set for model \"probe\"");

    // Unversioned, no key: random, within statistical tolerance of 30% (±5 sd).
    let n = 2000;
    let mut canary = 0;
    for _ in 0..n {
        let (status, version, label) = ask(&server, "probe", None);
        assert_eq!(status, 200);
        match version.as_str() {
            "2.0" => {
                assert_eq!(label, "v2");
                canary += 1;
            }
            "1.0" => assert_eq!(label, "batch"),
            other => panic!("served by {other:?}"),
        }
    }
    let sd = (n as f64 * 0.3 * 0.7).sqrt();
    assert!(
        (canary as f64 - n as f64 * 0.3).abs() < 5.0 * sd,
        "{canary} of {n} to the canary"
    );

    // A routing key always lands on the same version.
    let mut keyed_canary = 0;
    for user in 0..100 {
        let key = format!("user-{user}");
        let (_, first, _) = ask(&server, "probe", Some(&key));
        for _ in 0..3 {
            assert_eq!(ask(&server, "probe", Some(&key)).1, first, "{key}");
        }
        keyed_canary += (first == "2.0") as usize;
    }
    assert!(
        (10..=55).contains(&keyed_canary),
        "{keyed_canary} of 100 keys"
    );

    // Versioned requests go where they say.
    for _ in 0..50 {
        assert_eq!(ask(&server, "probe/1.0", None).1, "1.0");
        assert_eq!(ask(&server, "probe/2.0", Some("user-1")).1, "2.0");
    }

    // The split as the API and describe show it, with per-version counts.
    let s = split(&server);
    assert_eq!(s["state"], "active");
    assert_eq!(s["versions"]["2.0"]["weight"], 30.0);
    assert_eq!(s["versions"]["1.0"]["weight"], 70.0);
    assert_eq!(s["versions"]["2.0"]["role"], "canary");
    let counted = s["versions"]["2.0"]["requests"].as_u64().unwrap()
        + s["versions"]["1.0"]["requests"].as_u64().unwrap();
    assert_eq!(counted, n + 400, "{s}");
    let (_, d) = management(&server, "GET", "probe", "");
    assert_eq!(d[0]["trafficSplit"]["versions"]["2.0"]["weight"], 30.0);
    let (_, metrics, _) = get(&format!(
        "{}/metrics?name[]=ferroserve_canary_weight_percent",
        server.metrics
    ));
    assert!(
        metrics.contains(
            "ferroserve_canary_weight_percent{model_name=\"probe\",model_version=\"2.0\"} 30"
        ),
        "{metrics}"
    );

    let (_, description, _) = get(&format!("{}/api-description", server.management));
    assert!(
        description.contains("/models/{model_name}/canary/promote")
            && description.contains("TrafficSplit"),
        "{description}"
    );

    // Bad splits: TorchServe-style errors, nothing changed.
    let (status, e) = management(&server, "PUT", "probe/canary?version=2.0&weight=150", "");
    assert_eq!(
        (status, e["type"].as_str()),
        (400, Some("BadRequestException")),
        "{e}"
    );
    let (status, e) = management(
        &server,
        "PUT",
        "probe/canary",
        r#"{"canaries": {"9.9": 5}}"#,
    );
    assert_eq!(status, 404, "{e}");
    assert_eq!(
        e["message"],
        "Model version: 9.9 does not exist for model: probe"
    );
    let (status, _) = management(
        &server,
        "PUT",
        "probe/canary",
        r#"{"canaries": {"1.0": 5}}"#,
    );
    assert_eq!(status, 400);
    let (status, _) = management(&server, "PUT", "probe/canary", "{not json");
    assert_eq!(status, 400);
    let (status, _) = management(&server, "GET", "nope/canary", "");
    assert_eq!(status, 404);
    assert_eq!(split(&server)["versions"]["2.0"]["weight"], 30.0);

    // Promote: the canary becomes the default and the split goes.
    let (status, body) = management(&server, "PUT", "probe/canary/promote", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["status"],
        "Default version successfully updated for model \"probe\" to \"2.0\""
    );
    assert_eq!(management(&server, "GET", "probe/canary", "").0, 404);
    let (_, d) = management(&server, "GET", "probe", "");
    assert_eq!(d[0]["modelVersion"], "2.0");
    for _ in 0..20 {
        assert_eq!(ask(&server, "probe", None).1, "2.0");
    }

    // Clear: every unversioned request to the default again.
    let (status, _) = management(&server, "PUT", "probe/canary?version=1.0&weight=50", "");
    assert_eq!(status, 200);
    let (status, body) = management(&server, "DELETE", "probe/canary", "");
    assert_eq!(status, 200, "{body}");
    for _ in 0..20 {
        assert_eq!(ask(&server, "probe", None).1, "2.0");
    }
    assert_eq!(management(&server, "DELETE", "probe/canary", "").0, 404);
}

/// Sends unversioned requests until the split's state is `state` (or a minute passes).
fn drive_until(server: &Server, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..10 {
            ask(server, "probe", None);
        }
        let s = split(server);
        if s["state"] == state {
            return s;
        }
        assert!(Instant::now() < deadline, "never {state}: {s}");
    }
}

/// The canary is a Python handler that fails every request; its archive's model-config.yaml
/// enters it as a canary with guard rails.
#[test]
fn a_failing_canary_is_rolled_back_automatically() {
    let config = format!(
        "load_models=probe.mar,failing.mar\nmetrics_mode=prometheus\npython={}",
        test_python()
    );
    let server = Server::start_with(
        Setup {
            archives: &["probe.mar"],
            config: &config,
            ..Setup::default()
        },
        |store| {
            let manifest = r#"{"runtime": "python", "model": {"modelName": "probe", "handler": "failing:handle", "modelVersion": "2.0", "configFile": "model-config.yaml"}}"#;
            let handler = "def handle(data, context):\n    if data is None:\n        return None\n    raise RuntimeError('canary broken')\n";
            let yaml = "minWorkers: 1\nmaxWorkers: 1\nferroserve:\n  canary:\n    weight: 50\n    guards:\n      maxErrorRate: 0.2\n      minRequests: 20\n      windowSec: 60\n";
            write_mar(
                &store.join("failing.mar"),
                manifest,
                &[
                    ("failing.py", handler.as_bytes()),
                    ("model-config.yaml", yaml.as_bytes()),
                ],
            );
        },
    );
    // Wait for the Python worker, then send traffic until the guard trips.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ask(&server, "probe/2.0", None).0 != 503 {
        assert!(
            Instant::now() < deadline,
            "the failing worker never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(split(&server)["versions"]["2.0"]["weight"], 50.0);
    let s = drive_until(&server, "rolled_back");
    assert_eq!(s["versions"]["2.0"]["weight"], 0.0, "{s}");
    assert!(
        s["versions"]["2.0"]["errors"].as_u64().unwrap() >= 20,
        "{s}"
    );
    assert_eq!(s["rollback"]["version"], "2.0");
    let reason = s["rollback"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("error rate 100.0%") && reason.contains("limit of 20.0%"),
        "{reason}"
    );
    for _ in 0..30 {
        assert_eq!(
            ask(&server, "probe", None),
            (200, "1.0".into(), "batch".into())
        );
    }
    let (_, metrics, _) = get(&format!(
        "{}/metrics?name[]=ferroserve_canary_rollbacks_total",
        server.metrics
    ));
    assert!(
        metrics.contains(
            "ferroserve_canary_rollbacks_total{model_name=\"probe\",model_version=\"2.0\"} 1"
        ),
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("canary rolled back") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The canary names its top-1 class differently from the default version: to clients its
/// answers' labels diverge completely (Jensen-Shannon divergence 1), past the guard's 0.3.
#[test]
fn a_canary_whose_answers_diverge_is_rolled_back() {
    let server = Server::start_with(
        Setup {
            archives: &["probe.mar"],
            config: "load_models=probe.mar,probe_renamed.mar\nmetrics_mode=prometheus",
            ..Setup::default()
        },
        |store| probe_version(store, "probe_renamed.mar", "4.0", "renamed", ""),
    );
    let spec =
        r#"{"canaries": {"4.0": 50}, "guards": {"maxLabelDivergence": 0.3, "minRequests": 20}}"#;
    assert_eq!(management(&server, "PUT", "probe/canary", spec).0, 200);
    let s = drive_until(&server, "rolled_back");
    let reason = s["rollback"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("Jensen-Shannon divergence 1.000 exceeds the limit of 0.3"),
        "{reason}"
    );
    assert_eq!(s["versions"]["4.0"]["weight"], 0.0);
    for _ in 0..10 {
        assert_eq!(ask(&server, "probe", None).2, "batch");
    }
}

/// The canary batches with a 300 ms delay: its p99 is far above the default's.
#[test]
fn a_slow_canary_is_rolled_back_by_the_latency_guard() {
    let server = Server::start_with(
        Setup {
            archives: &["probe.mar"],
            config: "load_models=probe.mar,probe_slow.mar",
            ..Setup::default()
        },
        |store| {
            probe_version(
                store,
                "probe_slow.mar",
                "3.0",
                "slow",
                "batchSize: 8\nmaxBatchDelay: 300\n",
            );
        },
    );
    let spec = r#"{"canaries": {"3.0": 50}, "guards": {"maxP99Ratio": 3, "minRequests": 5, "windowSec": 60}}"#;
    assert_eq!(management(&server, "PUT", "probe/canary", spec).0, 200);
    let s = drive_until(&server, "rolled_back");
    let reason = s["rollback"]["reason"].as_str().unwrap();
    assert!(reason.contains("p99 latency"), "{reason}");
    assert_eq!(s["versions"]["3.0"]["weight"], 0.0);
}

fn restart_from_snapshot(server: &mut Server) -> std::process::Child {
    assert!(server.terminate().success());
    let dir = server.dir.path();
    let child = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--foreground")
        .current_dir(dir)
        .env("TMPDIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent()
        .get(format!("{}/ping", server.inference))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "no restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        wait_models_ready(&server.inference, Duration::from_secs(60)),
        "models not ready after the restart"
    );
    child
}

#[test]
fn a_stepped_rollout_advances_while_guards_hold_and_splits_survive_a_restart() {
    let mut server = two_versions("load_models=probe.mar,probe_v2.mar");
    let spec = r#"{"canaries": {"2.0": 0}, "rollout": {"steps": [10, 50, 100], "dwellSec": 1}, "guards": {"maxErrorRate": 0.5, "minRequests": 3}}"#;
    assert_eq!(management(&server, "PUT", "probe/canary", spec).0, 200);
    assert_eq!(split(&server)["versions"]["2.0"]["weight"], 10.0);
    let s = drive_until(&server, "completed");
    assert_eq!(s["versions"]["2.0"]["weight"], 100.0, "{s}");
    for _ in 0..20 {
        assert_eq!(ask(&server, "probe", None).1, "2.0");
    }

    // A fixed split with guard rails comes back after a restart, through the snapshot.
    let spec = r#"{"canaries": {"2.0": 25}, "guards": {"maxErrorRate": 0.1, "minRequests": 50}}"#;
    assert_eq!(management(&server, "PUT", "probe/canary", spec).0, 200);
    let mut again = restart_from_snapshot(&mut server);
    let s = split(&server);
    let _ = again.kill();
    let _ = again.wait();
    assert_eq!(s["versions"]["2.0"]["weight"], 25.0, "{s}");
    assert_eq!(s["spec"]["guards"]["maxErrorRate"], 0.1, "{s}");
    assert_eq!(s["state"], "active");
}

/// A shadow set in `models=` gets a copy of every request; clients only see the default's
/// answers.
#[test]
fn shadow_traffic_never_changes_the_answer() {
    let server = two_versions(
        "load_models=probe.mar,probe_v2.mar\nmodels={\"probe\": {\"canary\": {\"shadow\": {\"version\": \"2.0\", \"percent\": 100}}}}",
    );
    for _ in 0..50 {
        assert_eq!(
            ask(&server, "probe", None),
            (200, "1.0".into(), "batch".into())
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = split(&server);
        assert_eq!(s["versions"]["2.0"]["role"], "shadow");
        assert_eq!(s["versions"]["1.0"]["requests"], 50);
        if s["versions"]["2.0"]["requests"] == 50 {
            assert_eq!(s["versions"]["2.0"]["errors"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
