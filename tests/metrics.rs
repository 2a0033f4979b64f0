//! The metrics listener and the log files, after real traffic: TorchServe's metrics per
//! `metrics_mode` and `metrics_config`, ferroserve's own families, Python workers' metrics,
//! the access/model/metric logs, and a real Prometheus server scraping it all.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};

fn scrape(server: &Server, query: &str) -> (Scrape, String) {
    let (status, text, _) = get(&format!("{}/metrics{query}", server.metrics));
    assert_eq!(status, 200, "{text}");
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("exposition does not parse: {e}\n{text}"));
    (parsed, text)
}

/// The value of the one sample of `family` whose labels include every pair in `labels`.
fn value(s: &Scrape, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == family && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            // A histogram's value here is its count: the +Inf bucket.
            Value::Histogram(b) => b.iter().map(|h| h.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

fn kind(s: &Scrape, family: &str) -> &'static str {
    match s
        .samples
        .iter()
        .find(|x| x.metric == family)
        .map(|x| &x.value)
    {
        Some(Value::Counter(_)) => "counter",
        Some(Value::Gauge(_)) => "gauge",
        Some(Value::Histogram(_)) => "histogram",
        Some(_) => "other",
        None => "absent",
    }
}

fn traffic(server: &Server, n: usize) {
    let reference = Reference::load();
    let body = request_body(&reference.cases()[0], reference.features(), 1);
    for _ in 0..n {
        let url = format!("{}/predictions/sign", server.inference);
        assert_eq!(post(&url, "application/json", &body).0, 200);
    }
    let url = format!("{}/predictions/sign/1.0", server.inference);
    assert_eq!(post(&url, "application/json", &body).0, 200);
    let url = format!("{}/predictions/sign", server.inference);
    assert_eq!(post(&url, "application/json", "{not json").0, 400);
    let url = format!("{}/predictions/nope", server.inference);
    assert_eq!(get(&url).0, 404);
}

/// Polls until `f` holds (background samples and worker lines arrive on their own time).
fn eventually(what: &str, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(why) = f() else { return };
        assert!(Instant::now() < deadline, "{what}: {why}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn prometheus_mode_exposes_torchserves_families_and_ferroserves_own() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "metrics_mode=prometheus",
        ..Setup::default()
    });
    traffic(&server, 3);
    let (status, _, headers) = get(&format!("{}/metrics", server.metrics));
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // System metrics are sampled at start-up, in the background.
    eventually("system metrics", || {
        let (s, text) = scrape(&server, "");
        (kind(&s, "DiskAvailable") != "gauge").then_some(text)
    });
    let (s, text) = scrape(&server, "");
    let host = ("Level", "Host");

    // TorchServe's frontend families: names, types, help, labels and counts.
    assert_eq!(
        s.docs
            .get("ts_inference_requests_total")
            .map(String::as_str),
        Some("Torchserve prometheus counter metric with unit: Count")
    );
    for family in [
        "ts_inference_requests_total",
        "ts_inference_latency_microseconds",
        "ts_queue_latency_microseconds",
        "Requests2XX",
        "Requests4XX",
    ] {
        assert_eq!(kind(&s, family), "counter", "{family}: {text}");
    }
    let requests = |v| {
        value(
            &s,
            "ts_inference_requests_total",
            &[("model_name", "sign"), ("model_version", v)],
        )
    };
    // The unparsable body was counted too: TorchServe counts before decoding.
    assert_eq!(requests("default"), Some(4.0), "{text}");
    assert_eq!(requests("1.0"), Some(1.0), "{text}");
    let sign = [("model_name", "sign"), ("model_version", "default")];
    let latency = value(&s, "ts_inference_latency_microseconds", &sign).unwrap();
    let queued = value(&s, "ts_queue_latency_microseconds", &sign).unwrap();
    assert!(latency > queued && queued >= 0.0, "{latency} {queued}");
    assert!(value(&s, "Requests2XX", &[host]).unwrap() >= 4.0, "{text}");
    assert_eq!(value(&s, "Requests4XX", &[host]), Some(2.0), "{text}");
    for gauge in [
        "QueueTime",
        "WorkerThreadTime",
        "WorkerLoadTime",
        "CPUUtilization",
        "MemoryUsed",
        "MemoryAvailable",
        "MemoryUtilization",
        "DiskUsage",
        "DiskAvailable",
        "DiskUtilization",
    ] {
        assert_eq!(kind(&s, gauge), "gauge", "{gauge}: {text}");
        let v = value(&s, gauge, &[host]).unwrap();
        assert!(v >= 0.0, "{gauge} = {v}");
    }
    let worker = s
        .samples
        .iter()
        .find(|x| x.metric == "WorkerLoadTime")
        .and_then(|x| x.labels.get("WorkerName"))
        .unwrap();
    assert!(
        worker.starts_with("W-") && worker.ends_with("-sign_1.0"),
        "{worker}"
    );
    let pct = value(&s, "MemoryUtilization", &[host]).unwrap();
    assert!(pct > 0.0 && pct <= 100.0, "{pct}");

    // ferroserve's own, per model and served version.
    let v = [("model_name", "sign"), ("model_version", "1.0")];
    assert_eq!(kind(&s, "ferroserve_request_duration_seconds"), "histogram");
    assert_eq!(
        value(&s, "ferroserve_request_duration_seconds", &v),
        Some(5.0),
        "every request that reached the model version: {text}"
    );
    assert_eq!(
        value(&s, "ferroserve_queue_duration_seconds", &v),
        Some(4.0)
    );
    assert_eq!(value(&s, "ferroserve_batch_size", &v), Some(4.0));
    assert_eq!(
        value(&s, "ferroserve_inference_duration_seconds", &v),
        Some(4.0)
    );
    let code = |c| {
        value(
            &s,
            "ferroserve_inference_responses_total",
            &[v[0], v[1], ("code", c)],
        )
    };
    assert_eq!((code("2xx"), code("4xx")), (Some(4.0), Some(1.0)), "{text}");
    assert_eq!(value(&s, "ferroserve_queue_depth", &v), Some(0.0));
    assert_eq!(value(&s, "ferroserve_requests_in_flight", &v), Some(0.0));
    assert_eq!(value(&s, "ferroserve_worker_restarts_total", &v), Some(0.0));
    assert_eq!(
        value(
            &s,
            "ferroserve_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // name[] keeps families by name or by sample name; unknown names give an empty body.
    let (only, text) = scrape(
        &server,
        "?name[]=ts_queue_latency_microseconds&name[]=ferroserve_batch_size_bucket",
    );
    let mut names: Vec<&str> = only.samples.iter().map(|x| x.metric.as_str()).collect();
    names.dedup();
    assert!(
        names.contains(&"ts_queue_latency_microseconds")
            && names.contains(&"ferroserve_batch_size")
            && !text.contains("Requests2XX"),
        "{text}"
    );
    let (_, none, _) = get(&format!("{}/metrics?name[]=no_such_metric", server.metrics));
    assert_eq!(none, "");

    // Prometheus' own linter parses it; lint remarks are allowed only on TorchServe's names.
    let out = promtool_check(&text_of(&server));
    assert!(
        !out.contains("error while linting") && !out.contains("parsing"),
        "{out}"
    );
    assert!(!out.contains("ferroserve_"), "{out}");
    // TorchServe's own regression suite matches its exposition with this pattern.
    let full = text_of(&server);
    let postman =
        regex::Regex::new(r#"Requests2XX\{Level="Host",Hostname=".*",\} \d+\.\d+"#).unwrap();
    assert!(postman.is_match(&full), "{full}");
}

fn text_of(server: &Server) -> String {
    get(&format!("{}/metrics", server.metrics)).1
}

fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // 0: clean, 3: lint remarks only; anything else is a failure to read the exposition.
    let code = out.status.code().unwrap_or(-1);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(code == 0 || code == 3, "promtool exit {code}: {said}");
    said
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn log_mode_writes_torchserves_log_files() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        env: &[
            ("LOG_LOCATION", "my-logs"),
            ("METRICS_LOCATION", "my-metrics"),
        ],
        ..Setup::default()
    });
    traffic(&server, 1);
    let (status, text, _) = get(&format!("{}/metrics", server.metrics));
    assert_eq!(
        (status, text.as_str()),
        (200, ""),
        "log mode (the default) exposes nothing"
    );
    let logs = server.dir.path().join("my-logs");
    let metrics = server.dir.path().join("my-metrics");
    eventually("access log", || {
        let access = read(&logs.join("access_log.log"));
        let Some(line) = access
            .lines()
            .find(|l| l.contains("\"POST /predictions/sign HTTP/1.1\" 200 "))
        else {
            return Some(access);
        };
        // `<ISO8601> - /127.0.0.1:<port> "<METHOD> <uri> <proto>" <status> <ms>`
        let (time, rest) = line.split_once(" - ").unwrap();
        // log4j's ISO8601 in local time, to the millisecond: the time the line was written.
        let written = chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%dT%H:%M:%S,%3f")
            .unwrap_or_else(|e| panic!("{e}: {line}"));
        let off = chrono::Local::now().naive_local() - written;
        assert!(off.num_minutes().abs() < 10, "{line} is not the local time");
        assert!(rest.starts_with("/127.0.0.1:"), "{line}");
        (!access.contains("\"GET /predictions/nope HTTP/1.1\" 404 ")).then_some(access)
    });
    eventually("metric log", || {
        let ts = read(&metrics.join("ts_metrics.log"));
        let want = "ts_inference_requests_total.Count:1.0|#model_name:sign,model_version:default|#hostname:";
        let found = ts.lines().any(|l| l.contains(want))
            && ts.contains("Requests2XX.Count:1.0|#Level:Host|#hostname:")
            && ts.contains("MemoryUtilization.Percent:");
        (!found).then_some(ts)
    });
    let ts_log = read(&logs.join("ts_log.log"));
    assert!(ts_log.contains("model loaded"), "{ts_log}");
    assert!(!logs.join("ts_metrics.log").exists());
    drop(server);

    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "metrics_mode=legacy",
        ..Setup::default()
    });
    traffic(&server, 2);
    let (s, text) = scrape(&server, "");
    assert_eq!(
        value(
            &s,
            "ts_inference_requests_total",
            &[("model_name", "sign"), ("model_version", "default")]
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        !text.contains("Requests2XX") && !text.contains("ferroserve_"),
        "legacy exposes only the ts_* counters: {text}"
    );
    // Everything else goes to the metric log, in the default place.
    let logs = server.dir.path().join("logs");
    eventually("legacy metric log", || {
        let ts = read(&logs.join("ts_metrics.log"));
        (!ts.contains("Requests2XX.Count:1.0")).then_some(ts)
    });
    assert!(!read(&logs.join("ts_metrics.log")).contains("ts_inference_requests_total"));
}

#[test]
fn a_metrics_config_file_decides_what_exists() {
    let yaml = "\
dimensions:
  - &level Level
ts_metrics:
  counter:
    - name: Requests2XX
      unit: Count
      dimensions: [*level, Hostname]
  histogram:
    - name: ts_inference_latency_microseconds
      unit: Microseconds
      dimensions: [model_name]
";
    let server = Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: "metrics_mode=prometheus\nmetrics_config=custom-metrics.yaml\ndisable_system_metrics=true",
            ..Setup::default()
        },
        |store| std::fs::write(store.join("../custom-metrics.yaml"), yaml).unwrap(),
    );
    traffic(&server, 2);
    let (s, text) = scrape(&server, "");
    assert_eq!(kind(&s, "ts_inference_latency_microseconds"), "histogram");
    assert_eq!(
        value(
            &s,
            "ts_inference_latency_microseconds",
            &[("model_name", "sign")]
        ),
        Some(3.0),
        "{text}"
    );
    for absent in [
        "ts_inference_requests_total",
        "Requests4XX",
        "QueueTime",
        "CPUUtilization",
    ] {
        assert_eq!(kind(&s, absent), "absent", "{absent}: {text}");
    }
    assert_eq!(kind(&s, "Requests2XX"), "counter");
}

/// Python workers' `[METRICS]` lines: the default ones always, a handler's own only with
/// `model_metrics_auto_detect`; the workers' other output goes to the model log.
#[test]
fn python_worker_metrics_and_model_log() {
    const ECHO: &str = "\
def handle(data, context):
    if data is None:
        return None
    context.metrics.add_counter(\"EchoCalls\", len(data))
    print(\"echo handled\", len(data), flush=True)
    return [\"ok\" for _ in data]
";
    // Request spans are DEBUG: turned on for the service, they name each request's lines.
    let server = python_model_server_with_env(
        "echo",
        ECHO,
        "metrics_mode=prometheus\nmodel_metrics_auto_detect=true",
        &[("RUST_LOG", "info,ferroserve::serve=debug")],
    );
    let mut sent = 0;
    eventually("worker metrics", || {
        let (status, _, _) = post(
            &format!("{}/predictions/echo", server.inference),
            "text/plain",
            "x",
        );
        sent += (status == 200) as usize;
        let (s, text) = scrape(&server, "?name[]=PredictionTime&name[]=EchoCalls");
        let ok = value(&s, "PredictionTime", &[("ModelName", "echo")]).is_some()
            && value(&s, "EchoCalls", &[("ModelName", "echo")]) == Some(sent as f64);
        (!ok).then_some(text)
    });
    let (s, _) = scrape(&server, "");
    assert_eq!(kind(&s, "PredictionTime"), "gauge");
    assert_eq!(kind(&s, "EchoCalls"), "counter");
    // `W-<id>-echo_1.0-stdout MODEL_LOG - echo handled 1`, as TorchServe's model log.
    let model_log = server.dir.path().join("logs/model_log.log");
    eventually("model log", || {
        let log = read(&model_log);
        let ok = log.lines().any(|l| {
            l.contains("[INFO ] W-") && l.contains("-echo_1.0-stdout MODEL_LOG - echo handled 1")
        });
        (!ok).then_some(log)
    });
    assert!(!read(&model_log).contains("[METRICS]"));
    // On the console, each line the worker prints while serving a request names it: the
    // request's span reaches the worker's output.
    let (status, _, headers) = post(
        &format!("{}/predictions/echo", server.inference),
        "text/plain",
        "xy",
    );
    assert_eq!(status, 200);
    let id = header(&headers, "x-request-id")
        .expect("x-request-id")
        .to_string();
    eventually("the worker's line under its request", || {
        let log = server.log_text();
        let ok = log
            .lines()
            .any(|l| l.contains(&format!("id={id}")) && l.contains("echo handled 1"));
        (!ok).then_some(log)
    });
}

/// A real Prometheus server scrapes the metrics listener; its query API returns the series,
/// and every query of the Grafana dashboard has data: traffic on the sign model and on the
/// probe model split between two versions, sent while Prometheus scrapes.
#[test]
fn a_prometheus_server_scrapes_ferroserve() {
    let server = Server::start_with(
        Setup {
            archives: &["sign.mar", "probe.mar"],
            config: "metrics_mode=prometheus\nload_models=sign.mar,probe.mar,probe_v2.mar",
            ..Setup::default()
        },
        |store| {
            probe_archive(
                &store.join("probe_v2.mar"),
                "2.0",
                "v2",
                "ferroserve:\n  native_handler: json_tensor_classifier\nhandler:\n  frames: 1\n  features: 4\nminWorkers: 1\nmaxWorkers: 1\n",
            );
        },
    );
    let target = server.metrics.trim_start_matches("http://");
    let dir = server.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ferroserve\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package; scripts/test.sh installs it)"),
    );
    let query = |q: &str| {
        let url = format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            percent_encode(q)
        );
        // Refused until Prometheus listens.
        let mut res = agent().get(&url).call().ok()?;
        let text = res.body_mut().read_to_string().ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        assert_eq!(v["status"], "success", "{q}: {v}");
        Some(v)
    };
    let first = |q: &str| {
        query(q).and_then(|v| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_string)
        })
    };
    // Traffic once Prometheus has scraped, so rates see it happen.
    eventually("a first scrape", || {
        let up = first("up{job=\"ferroserve\"}");
        (up.as_deref() != Some("1")).then(|| format!("{up:?}"))
    });
    let url = format!(
        "{}/models/probe/canary?version=2.0&weight=30",
        server.management
    );
    let (status, body, _) = into_parts(agent().put(&url).send_empty().unwrap());
    assert_eq!(status, 200, "{body}");
    traffic(&server, 4);
    // A drift reference from that traffic: the drift panels' scores and shares exist.
    let url = format!("{}/models/sign/1.0/drift/reference", server.management);
    let (status, body, _) = into_parts(agent().put(&url).send_empty().unwrap());
    assert_eq!(status, 200, "{body}");
    let probe = |path: &str, body: &str| {
        let url = format!("{}/predictions/{path}", server.inference);
        post(&url, "application/json", body).0
    };
    // Routing keys decide the version: key-0 and key-1 hash below 30, into the canary's
    // share, the other eight above it; both versions get traffic on every run.
    for i in 0..10 {
        let url = format!("{}/predictions/probe", server.inference);
        let res = agent()
            .post(&url)
            .header("Content-Type", "application/json")
            .header("X-Routing-Key", format!("key-{i}"))
            .send(r#"{"landmarks": [[0, 0, 0, 0]]}"#)
            .unwrap();
        let version = res
            .headers()
            .get("x-model-version")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(version, if i < 2 { "2.0" } else { "1.0" }, "key-{i}");
    }
    // A model failure on the stable version: a 5xx for the error-ratio panel.
    assert_eq!(probe("probe/1.0", r#"{"landmarks": [[0, 1, 0, 0]]}"#), 503);
    eventually("series in Prometheus", || {
        let got = [
            first("ts_inference_requests_total{model_name=\"sign\",model_version=\"default\"}"),
            first("sum(ferroserve_request_duration_seconds_count{model_name=\"sign\"})"),
        ];
        let want = ["5", "6"].map(|v| Some(v.to_string()));
        (got != want).then(|| format!("{got:?}"))
    });
    // Every query of the Grafana dashboard is valid PromQL with data behind it: at least one
    // series, every value a number. Rates look back 15 minutes: the traffic above happens
    // once, and on a busy machine the queries below may run more than a minute after it.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(REPO).join("deploy/grafana/ferroserve.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        // Rows group panels and query nothing.
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        for target in &targets {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "15m")
                .replace("$model", ".*")
                .replace("$version", ".*");
            exprs.push(expr);
        }
    }
    // The example alerting rules' expressions, their thresholds left out, name series that
    // exist.
    let rules =
        std::fs::read_to_string(Path::new(REPO).join("deploy/prometheus/ferroserve-alerts.yaml"))
            .unwrap();
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr: ") {
            exprs.push(expr.split(" > ").next().unwrap().to_string());
        }
    }
    // A rate over the histogram, as an autoscaler would ask.
    exprs.push("histogram_quantile(0.99, sum by (le) (rate(ferroserve_request_duration_seconds_bucket[15m])))".into());
    for expr in &exprs {
        eventually(expr, || {
            let answer = query(expr);
            let values: Vec<Option<f64>> = answer
                .as_ref()
                .and_then(|a| a["data"]["result"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|r| r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
                .collect();
            let numbers =
                !values.is_empty() && values.iter().all(|v| v.is_some_and(f64::is_finite));
            (!numbers).then(|| format!("{answer:?}"))
        });
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir).join("data"));
}

fn percent_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
