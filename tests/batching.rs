//! Batching, queues, timeouts, worker pools and lifecycle, with the test-only probe model
//! (`tests/fixtures/probe.mar`, made by scripts/gen_models.py): its input asks it to work for a
//! while or to fail, and its reply tells the batch size it saw.

mod common;

use std::sync::Arc;
use std::time::Duration;

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

/// Work units no machine finishes within a minute (each unit is a 256x256 matmul).
const FOREVER: u32 = 200_000;

/// A server with the gate model (one worker) and `config`.
fn gated(gate: &Gate, config: &str) -> Server {
    let config = format!(
        "python={}\nmodels={{\"gate\": {{\"1.0\": {{\"minWorkers\": 1, \"maxWorkers\": 1}}}}}}\n{config}",
        test_python()
    );
    Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| gate.write_mar(store),
    )
}

fn ask_gate(server: &Server, body: &str) -> u16 {
    post(
        &format!("{}/predictions/gate", server.inference),
        "text/plain",
        body,
    )
    .0
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
    let gate = Gate::default();
    let server = Arc::new(gated(&gate, "job_queue_size=2"));
    // One request holds the worker, two more fill the queue.
    let s = server.clone();
    let holder = std::thread::spawn(move || ask_gate(&s, "hold"));
    gate.wait_held(1);
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let s = server.clone();
            std::thread::spawn(move || ask_gate(&s, "quick"))
        })
        .collect();
    eventually("two requests queued", || {
        describe(&server, "gate")["jobQueueStatus"]["pendingRequests"] == 2
    });
    let (status, body, headers) = post(
        &format!("{}/predictions/gate", server.inference),
        "text/plain",
        "quick",
    );
    assert_eq!(status, 503, "{body}");
    let msg = assert_error(&body, 503, "ServiceUnavailableException");
    assert!(
        msg.starts_with("Model \"gate\" has no worker to serve inference request."),
        "{msg}"
    );
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    // Refused at once: the gate is still closed, so nothing ahead of it was answered.
    assert!(!holder.is_finished() && queued.iter().all(|q| !q.is_finished()));
    gate.open();
    assert_eq!(holder.join().unwrap(), 200);
    let queued: Vec<u16> = queued.into_iter().map(|q| q.join().unwrap()).collect();
    assert_eq!(queued, vec![200, 200]);
}

#[test]
fn a_request_past_the_response_timeout_fails_and_the_next_succeeds() {
    let server = Server::start(Setup {
        archives: &["probe.mar"],
        config: "models={\"probe\": {\"1.0\": {\"responseTimeout\": 1}}}",
        ..Setup::default()
    });
    let (status, body, _) = probe(&server, FOREVER);
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
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    let load = std::thread::spawn(move || {
        concurrently(6, {
            let (s, count) = (s.clone(), count.clone());
            move |_| {
                (0..25)
                    .map(|_| {
                        let status = probe(&s, 20).0;
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        status
                    })
                    .collect::<Vec<_>>()
            }
        })
    });
    for (step, (query, expected)) in [
        (
            "min_worker=3&synchronous=true",
            (200, "Workers scaled to 3 for model: probe"),
        ),
        ("min_worker=1", (202, "Processing worker updates...")),
        (
            "min_worker=2&max_worker=4&synchronous=true",
            (200, "Workers scaled to 2 for model: probe"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // Each change lands while requests are being answered.
        let after = 20 * (step + 1);
        eventually(&format!("{after} requests answered"), || {
            answered.load(std::sync::atomic::Ordering::SeqCst) >= after
        });
        let (status, body, _) = agent_put(&format!("{m}/models/probe?{query}"));
        assert_eq!(status, expected.0, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], expected.1);
    }
    let statuses: Vec<u16> = load.join().unwrap().into_iter().flatten().collect();
    assert_eq!(statuses.len(), 150);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let ready = |d: &serde_json::Value| {
        d["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["status"] == "READY")
            .count()
    };
    eventually("two workers READY", || {
        ready(&describe(&server, "probe")) == 2
    });
    let d = describe(&server, "probe");
    assert_eq!(
        (
            d["minWorkers"].as_u64(),
            d["maxWorkers"].as_u64(),
            ready(&d)
        ),
        (Some(2), Some(4), 2),
        "{d}"
    );
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
    let gate = Gate::default();
    let server = Arc::new(gated(&gate, "metrics_mode=prometheus"));
    let s = server.clone();
    let holder = std::thread::spawn(move || ask_gate(&s, "hold"));
    gate.wait_held(1);
    // This client gives up while its request waits in the queue.
    let impatient = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(300)))
        .build()
        .new_agent();
    let gave_up = impatient
        .post(format!("{}/predictions/gate", server.inference))
        .header("Content-Type", "text/plain")
        .send("quick");
    assert!(gave_up.is_err());
    // The server has noticed once it answered the request as a client error.
    eventually("the departure noticed", || {
        get(&format!("{}/metrics", server.metrics))
            .1
            .lines()
            .any(|l| {
                l.starts_with("ferroserve_inference_responses_total{")
                    && l.contains("code=\"4xx\"")
                    && l.contains("model_name=\"gate\"")
                    && l.ends_with(" 1")
            })
    });
    gate.open();
    assert_eq!(holder.join().unwrap(), 200);
    assert_eq!(ask_gate(&server, "quick"), 200);
    let d = describe(&server, "gate");
    assert_eq!(d["stats"]["droppedRequests"], 1, "{d}");
    assert_eq!(d["stats"]["requests"], 2, "the held one and the last: {d}");
}

#[test]
fn sigterm_drains_accepted_requests() {
    let gate = Gate::default();
    let mut server = gated(&gate, "");
    let url = format!("{}/predictions/gate", server.inference);
    // One held in the worker, three queued behind it.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || post(&url, "text/plain", "hold").0)
        })
        .collect();
    gate.wait_held(1);
    eventually("three requests queued", || {
        describe(&server, "gate")["jobQueueStatus"]["pendingRequests"] == 3
    });
    server.signal_term();
    eventually("the drain begins", || {
        server.log_text().contains("draining in-flight requests")
    });
    assert!(clients.iter().all(|c| !c.is_finished()));
    gate.open();
    let status = server.wait_exit();
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
