//! Batching, queues, timeouts, worker pools and lifecycle, with the test-only probe model
//! (`tests/fixtures/probe.mar`, made by scripts/gen_models.py): its input asks it to work for a
//! while or to fail, and its reply tells the batch size it saw.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A probe request: `work` matmul units, optionally failing.
fn probe_body(work: u32, fail: bool) -> String {
    let fail = if fail { 1.0 } else { 0.0 };
    format!("{{\"landmarks\": [[{work}, {fail}, 0, 0]], \"topk\": 2}}")
}

/// The batch size the probe saw: confidence of "batch" is B / (B + 1).
fn batch_seen(body: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let p = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "batch")
        .unwrap()["confidence"]
        .as_f64()
        .unwrap();
    (p / (1.0 - p)).round() as usize
}

fn probe(server: &Server, work: u32) -> (u16, String, Vec<(String, String)>) {
    post(
        &format!("{}/predictions/probe", server.inference),
        "application/json",
        &probe_body(work, false),
    )
}

/// Work units that take about `target` on this machine (measured after TorchScript's first,
/// slower runs, as speed varies between machines).
fn calibrate(server: &Server, target: Duration) -> u32 {
    for _ in 0..3 {
        assert_eq!(probe(server, 50).0, 200);
    }
    let start = Instant::now();
    assert_eq!(probe(server, 500).0, 200);
    let per_unit = start.elapsed().as_secs_f64() / 500.0;
    ((target.as_secs_f64() / per_unit) as u32).max(1)
}

fn describe(server: &Server, model: &str) -> serde_json::Value {
    let (status, body, _) = get(&format!("{}/models/{model}", server.management));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()[0].clone()
}

fn concurrently<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || f(i))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn requests_are_batched_up_to_batch_size_within_the_delay() {
    let server = Arc::new(Server::start(Setup {
        archives: &["probe.mar"],
        config: "models={\"probe\": {\"1.0\": {\"batchSize\": 4, \"maxBatchDelay\": 500}}}",
        ..Setup::default()
    }));
    // Six at once: one batch of four at once, the remaining two after the 500 ms delay.
    let s = server.clone();
    let mut sizes = concurrently(6, move |_| {
        let (status, body, _) = probe(&s, 0);
        assert_eq!(status, 200, "{body}");
        batch_seen(&body)
    });
    sizes.sort();
    // The two left over ran together: the partial batch waited for company.
    assert_eq!(sizes, vec![2, 2, 4, 4, 4, 4]);
    let d = describe(&server, "probe");
    assert_eq!(d["stats"]["batches"], 2);
    assert_eq!(d["stats"]["requests"], 6);

    // A lone request, when no company comes within the delay, runs alone.
    let (_, body, _) = probe(&server, 0);
    assert_eq!(batch_seen(&body), 1);
    assert_eq!(describe(&server, "probe")["stats"]["batches"], 3);
}

#[test]
fn a_lone_request_with_batch_size_one_never_waits() {
    // A delay of an hour: waiting for it would outlast the client's 60 s deadline.
    let server = Server::start(Setup {
        archives: &["probe.mar"],
        config: "models={\"probe\": {\"1.0\": {\"batchSize\": 1, \"maxBatchDelay\": 3600000}}}",
        ..Setup::default()
    });
    let (status, body, _) = probe(&server, 0);
    assert_eq!(status, 200);
    assert_eq!(batch_seen(&body), 1);
}

#[test]
fn a_full_queue_answers_503_at_once_and_queued_requests_complete() {
    let server = Arc::new(Server::start(Setup {
        archives: &["probe.mar"],
        config: "job_queue_size=2",
        ..Setup::default()
    }));
    let slow = calibrate(&server, Duration::from_millis(1500));
    // One request occupies the worker, two more fill the queue.
    let s = server.clone();
    let busy = std::thread::spawn(move || {
        concurrently(3, {
            let s = s.clone();
            move |i| {
                std::thread::sleep(Duration::from_millis(100 * i as u64));
                (probe(&s, if i == 0 { slow } else { 0 }).0, Instant::now())
            }
        })
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        describe(&server, "probe")["jobQueueStatus"]["pendingRequests"],
        2
    );
    let (status, body, headers) = probe(&server, 0);
    let refused_at = Instant::now();
    assert_eq!(status, 503, "{body}");
    let msg = assert_error(&body, 503, "ServiceUnavailableException");
    assert!(
        msg.starts_with("Model \"probe\" has no worker to serve inference request."),
        "{msg}"
    );
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    let busy = busy.join().unwrap();
    assert_eq!(
        busy.iter().map(|b| b.0).collect::<Vec<_>>(),
        vec![200, 200, 200]
    );
    // Refused at once: before the request holding the worker was answered.
    assert!(busy.iter().all(|b| refused_at < b.1), "not refused at once");
}

#[test]
fn a_request_past_the_response_timeout_fails_and_the_next_succeeds() {
    let server = Server::start(Setup {
        archives: &["probe.mar"],
        config: "models={\"probe\": {\"1.0\": {\"responseTimeout\": 1}}}",
        ..Setup::default()
    });
    let slow = calibrate(&server, Duration::from_secs(4));
    let (status, body, _) = probe(&server, slow);
    // The timeout's answer, not the computation's.
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        assert_error(&body, 500, "InternalServerException"),
        "Worker died."
    );
    // The stuck worker is abandoned and replaced: the queue keeps moving.
    let (status, _, _) = probe(&server, 0);
    assert_eq!(status, 200);
    let d = describe(&server, "probe");
    let ids: Vec<&str> = d["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.len() >= 2 && ids.contains(&"9001"),
        "a replacement worker was started: {ids:?}"
    );
}

#[test]
fn a_failing_model_does_not_affect_another() {
    let server = Arc::new(Server::start(Setup {
        archives: &["probe.mar", "sign.mar"],
        ..Setup::default()
    }));
    let reference = Reference::load();
    let sign_body = Arc::new(request_body(&reference.cases()[0], reference.features(), 1));
    let s = server.clone();
    let failures = std::thread::spawn(move || {
        (0..30)
            .map(|_| {
                let (status, body, _) = post(
                    &format!("{}/predictions/probe", s.inference),
                    "application/json",
                    &probe_body(0, true),
                );
                assert_error(&body, status, "InternalServerException");
                assert!(body.contains("probe: failure requested"), "{body}");
                status
            })
            .collect::<Vec<_>>()
    });
    for _ in 0..30 {
        let (status, _, _) = post(
            &format!("{}/predictions/sign", server.inference),
            "application/json",
            &sign_body,
        );
        assert_eq!(status, 200);
    }
    assert!(failures.join().unwrap().iter().all(|&s| s == 503));
    let (status, _, _) = get(&format!("{}/ping", server.inference));
    assert_eq!(status, 200);
    assert_eq!(describe(&server, "probe")["stats"]["failedBatches"], 30);
    // The probe's worker still answers good requests.
    assert_eq!(probe(&server, 0).0, 200);
}

#[test]
fn scaling_under_load_loses_no_request() {
    let server = Arc::new(Server::start(Setup {
        archives: &["probe.mar"],
        ..Setup::default()
    }));
    let m = &server.management;
    let (status, body, _) = agent_put(&format!("{m}/models/probe?min_worker=3&max_worker=2"));
    assert_eq!(status, 400);
    assert_eq!(
        assert_error(&body, 400, "BadRequestException"),
        "max_worker cannot be less than min_worker."
    );
    let (status, body, _) = agent_put(&format!("{m}/models/nope?min_worker=1"));
    assert_eq!(status, 404, "{body}");
    // A worker count that would exhaust the machine is refused; the model keeps its workers.
    let (status, body, _) = agent_put(&format!("{m}/models/probe?min_worker=100000000"));
    assert_eq!(
        (status, assert_error(&body, 400, "BadRequestException")),
        (400, "max_worker cannot be more than 256.".to_string())
    );
    assert_eq!(probe(&server, 0).0, 200);

    let s = server.clone();
    let load = std::thread::spawn(move || {
        concurrently(6, {
            let s = s.clone();
            move |_| (0..25).map(|_| probe(&s, 20).0).collect::<Vec<_>>()
        })
    });
    for (query, expected) in [
        (
            "min_worker=3&synchronous=true",
            (200, "Workers scaled to 3 for model: probe"),
        ),
        ("min_worker=1", (202, "Processing worker updates...")),
        (
            "min_worker=2&max_worker=4&synchronous=true",
            (200, "Workers scaled to 2 for model: probe"),
        ),
    ] {
        std::thread::sleep(Duration::from_millis(300));
        let (status, body, _) = agent_put(&format!("{m}/models/probe?{query}"));
        assert_eq!(status, expected.0, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], expected.1);
    }
    let statuses: Vec<u16> = load.join().unwrap().into_iter().flatten().collect();
    assert_eq!(statuses.len(), 150);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    std::thread::sleep(Duration::from_millis(300));
    let d = describe(&server, "probe");
    assert_eq!(
        (d["minWorkers"].as_u64(), d["maxWorkers"].as_u64()),
        (Some(2), Some(4))
    );
    let ready = d["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["status"] == "READY")
        .count();
    assert_eq!(ready, 2, "{d}");
    let (status, body, _) = agent_put(&format!(
        "{m}/models/probe/1.0?min_worker=1&synchronous=true"
    ));
    assert_eq!(status, 200);
    assert!(
        body.contains("Workers scaled to 1 for model: probe, version: 1.0"),
        "{body}"
    );
}

#[test]
fn requests_whose_client_left_are_dropped_before_the_model() {
    let server = Arc::new(Server::start(Setup {
        archives: &["probe.mar"],
        ..Setup::default()
    }));
    let slow = calibrate(&server, Duration::from_millis(1500));
    let s = server.clone();
    let busy = std::thread::spawn(move || probe(&s, slow).0);
    std::thread::sleep(Duration::from_millis(300));
    // This client gives up while its request waits in the queue.
    let impatient = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(300)))
        .build()
        .new_agent();
    let gave_up = impatient
        .post(format!("{}/predictions/probe", server.inference))
        .header("Content-Type", "application/json")
        .send(probe_body(0, false).as_str());
    assert!(gave_up.is_err());
    assert_eq!(busy.join().unwrap(), 200);
    assert_eq!(probe(&server, 0).0, 200);
    let d = describe(&server, "probe");
    assert_eq!(d["stats"]["droppedRequests"], 1, "{d}");
    assert_eq!(
        d["stats"]["requests"], 6,
        "calibration (4), the slow one and the last: {d}"
    );
}

#[test]
fn sigterm_drains_accepted_requests() {
    let mut server = Server::start(Setup {
        archives: &["probe.mar"],
        config: "models={\"probe\": {\"1.0\": {\"minWorkers\": 2, \"maxWorkers\": 2}}}",
        ..Setup::default()
    });
    let slow = calibrate(&server, Duration::from_millis(800));
    let url = format!("{}/predictions/probe", server.inference);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || post(&url, "application/json", &probe_body(slow, false)).0)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let answers: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(answers, vec![200; 4]);
    assert!(agent()
        .get(format!("{}/ping", server.inference))
        .call()
        .is_err());
}

#[test]
fn health_routes_for_kubernetes() {
    let server = Server::start(Setup {
        archives: &["probe.mar"],
        ..Setup::default()
    });
    let base = &server.inference;
    let (status, body, _) = get(&format!("{base}/v2/health/live"));
    assert_eq!((status, body.as_str()), (200, "{\n  \"live\": true\n}\n"));
    let (status, body, _) = get(&format!("{base}/v2/health/ready"));
    assert_eq!((status, body.as_str()), (200, "{\n  \"ready\": true\n}\n"));
    let (status, body, _) = get(&format!("{base}/v2/models/probe/ready"));
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"name": "probe", "ready": true})
    );
    let (status, _, _) = get(&format!("{base}/v2/models/nope/ready"));
    assert_eq!(status, 404);
}
