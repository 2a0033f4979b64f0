//! The metrics listener: TorchServe's frontend metrics per `metrics_mode`, after real traffic.

mod common;

use common::*;

fn sample(text: &str, family: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn traffic(server: &Server, n: usize) {
    let reference = Reference::load();
    let body = request_body(&reference.cases()[0], reference.features(), 1);
    for _ in 0..n {
        assert_eq!(
            post(
                &format!("{}/predictions/sign", server.inference),
                "application/json",
                &body
            )
            .0,
            200
        );
    }
    assert_eq!(
        post(
            &format!("{}/predictions/sign/1.0", server.inference),
            "application/json",
            &body
        )
        .0,
        200
    );
    assert_eq!(
        get(&format!("{}/predictions/nope", server.inference)).0,
        404
    );
}

#[test]
fn prometheus_mode_counts_requests_and_latencies() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "metrics_mode=prometheus",
        ..Setup::default()
    });
    traffic(&server, 3);
    let (status, text, headers) = get(&format!("{}/metrics", server.metrics));
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(text.contains("# HELP ts_inference_requests_total Torchserve prometheus counter metric with unit: Count"), "{text}");
    assert!(
        text.contains("# TYPE ts_inference_requests_total counter"),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ts_inference_requests_total",
            "model_version=\"default\""
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ts_inference_requests_total",
            "model_version=\"1.0\""
        ),
        Some(1.0),
        "{text}"
    );
    let latency = sample(
        &text,
        "ts_inference_latency_microseconds",
        "model_version=\"default\"",
    )
    .unwrap();
    let queued = sample(
        &text,
        "ts_queue_latency_microseconds",
        "model_version=\"default\"",
    )
    .unwrap();
    assert!(latency > queued && queued >= 0.0, "{latency} {queued}");
    assert!(
        sample(&text, "Requests2XX", "Level=\"Host\"").unwrap() >= 4.0,
        "{text}"
    );
    assert!(
        sample(&text, "Requests4XX", "Level=\"Host\"").unwrap() >= 1.0,
        "{text}"
    );

    let (_, only, _) = get(&format!(
        "{}/metrics?name[]=ts_queue_latency_microseconds",
        server.metrics
    ));
    assert!(
        only.contains("ts_queue_latency_microseconds{") && !only.contains("Requests2XX"),
        "{only}"
    );
    let (_, none, _) = get(&format!("{}/metrics?name[]=no_such_metric", server.metrics));
    assert_eq!(none, "");
}

#[test]
fn log_and_legacy_modes() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        ..Setup::default()
    });
    traffic(&server, 1);
    let (status, text, _) = get(&format!("{}/metrics", server.metrics));
    assert_eq!(
        (status, text.as_str()),
        (200, ""),
        "log mode (the default) exposes nothing"
    );
    drop(server);

    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "metrics_mode=legacy",
        ..Setup::default()
    });
    traffic(&server, 2);
    let (_, text, _) = get(&format!("{}/metrics", server.metrics));
    assert_eq!(
        sample(
            &text,
            "ts_inference_requests_total",
            "model_name=\"sign\",model_version=\"default\""
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        !text.contains("Requests2XX"),
        "legacy exposes only the ts_* counters: {text}"
    );
}

/// Metrics a Python worker prints (`[METRICS]` lines) appear as gauges in prometheus mode.
#[test]
fn python_worker_metrics_are_exposed() {
    const ECHO: &str =
        "def handle(data, context):\n    return None if data is None else [\"ok\" for _ in data]\n";
    let config = format!(
        "metrics_mode=prometheus\npython={}\nmodels={{\"echo\": {{\"1.0\": {{\"minWorkers\": 1, \"maxWorkers\": 1}}}}}}",
        test_python()
    );
    let server = Server::start_with(
        Setup {
            config: &config,
            ..Setup::default()
        },
        |store| {
            let manifest = r#"{"runtime": "python", "model": {"modelName": "echo", "handler": "echo:handle", "modelVersion": "1.0"}}"#;
            write_mar(
                &store.join("echo.mar"),
                manifest,
                &[("echo.py", ECHO.as_bytes())],
            );
        },
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, _, _) = post(
            &format!("{}/predictions/echo", server.inference),
            "text/plain",
            "x",
        );
        let (_, text, _) = get(&format!("{}/metrics?name[]=PredictionTime", server.metrics));
        if status == 200 && sample(&text, "PredictionTime", "ModelName=\"echo\"").is_some() {
            assert!(text.contains("# TYPE PredictionTime gauge"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no PredictionTime from the worker: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
