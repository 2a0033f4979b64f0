//! Metrics with TorchServe's names, types, units and dimensions (from `metrics.yaml`), exposed
//! on the metrics listener in Prometheus' text format or written to the metric logs, as
//! `metrics_mode` says:
//! - `log` (the default): every metric is a line in `ts_metrics.log` / `model_metrics.log`;
//!   the exposition is empty;
//! - `prometheus`: every metric is exposed, plus ferroserve's own families (histograms, queue
//!   depth, in-flight requests, batch sizes, restarts, build info) — nothing is logged;
//! - `legacy`: the three `ts_*` counters are exposed, everything else is logged.

mod backend;
pub mod config;
pub mod drift;
pub mod system;

pub use backend::BackendMetric;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::proto::MetricType;
use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, Opts,
    Registry, TextEncoder,
};

pub use config::{Kind, MetricsConfig, Spec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Log,
    Prometheus,
    Legacy,
}

impl Mode {
    /// Whitespace-stripped and case-insensitive; anything unknown is `log`, as in TorchServe.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().to_ascii_uppercase()).as_deref() {
            Some("PROMETHEUS") => Mode::Prometheus,
            Some("LEGACY") => Mode::Legacy,
            Some("LOG") | None => Mode::Log,
            Some(other) => {
                tracing::error!(
                    "metrics_mode {other:?} is not log, prometheus or legacy; using log"
                );
                Mode::Log
            }
        }
    }
}

/// The three counters `legacy` mode exposes (always as counters, whatever the YAML says).
const LEGACY: [&str; 3] = [
    "ts_inference_requests_total",
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
];

/// Seconds; from sub-millisecond native inference to slow Python handlers.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Which metric log a metric writes to when it is not exposed.
#[derive(Clone, Copy)]
enum LogTo {
    /// `ts_metrics.log`: the server's own metrics.
    Server,
    /// `model_metrics.log`: what Python workers report.
    Model,
}

/// Where one metric's updates go.
enum Sink {
    Log(LogTo),
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

struct Entry {
    name: String,
    unit: String,
    dims: Vec<String>,
    sink: Sink,
}

impl Entry {
    fn new(kind: Kind, spec: Spec, exposed: bool, log_to: LogTo) -> Option<Self> {
        let help = format!(
            "Torchserve prometheus {} metric with unit: {}",
            match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            },
            spec.unit
        );
        let labels: Vec<&str> = spec.dimensions.iter().map(String::as_str).collect();
        let sink = if !exposed {
            Sink::Log(log_to)
        } else {
            match kind {
                Kind::Counter => {
                    Sink::Counter(CounterVec::new(Opts::new(&spec.name, help), &labels).ok()?)
                }
                Kind::Gauge => {
                    Sink::Gauge(GaugeVec::new(Opts::new(&spec.name, help), &labels).ok()?)
                }
                Kind::Histogram => Sink::Histogram(
                    HistogramVec::new(HistogramOpts::new(&spec.name, help), &labels).ok()?,
                ),
            }
        };
        Some(Self {
            name: spec.name,
            unit: spec.unit,
            dims: spec.dimensions,
            sink,
        })
    }

    fn collector(&self) -> Option<Box<dyn prometheus::core::Collector>> {
        match &self.sink {
            Sink::Log(_) => None,
            Sink::Counter(c) => Some(Box::new(c.clone())),
            Sink::Gauge(g) => Some(Box::new(g.clone())),
            Sink::Histogram(h) => Some(Box::new(h.clone())),
        }
    }

    /// This family in the text TorchServe's Java client (simpleclient 0.9) writes: labels in
    /// metrics.yaml's order, a comma after the last one, Java's number format, and the HELP
    /// and TYPE lines even while the family has no samples (unless `names` filters).
    fn expose(&self, names: &[String], out: &mut String) {
        let Some(collector) = self.collector() else {
            return;
        };
        let wanted = |sample: &str| names.is_empty() || names.iter().any(|n| n == sample);
        for family in collector.collect() {
            let mut samples = String::new();
            let mut sample = |name: &str, labels: &[(&str, &str)], value: f64| {
                if !wanted(name) {
                    return;
                }
                samples.push_str(name);
                samples.push('{');
                for (k, v) in labels {
                    samples.push_str(&format!("{k}=\"{}\",", escape_label(v)));
                }
                samples.push_str("} ");
                samples.push_str(&go_double(value));
                samples.push('\n');
            };
            for m in family.get_metric() {
                let pairs = m.get_label();
                let mut labels: Vec<(&str, &str)> = self
                    .dims
                    .iter()
                    .filter_map(|d| {
                        pairs
                            .iter()
                            .find(|p| p.name() == d)
                            .map(|p| (d.as_str(), p.value()))
                    })
                    .collect();
                match family.get_field_type() {
                    MetricType::COUNTER => sample(&self.name, &labels, m.get_counter().get_value()),
                    MetricType::GAUGE => sample(&self.name, &labels, m.get_gauge().get_value()),
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        let bucket = format!("{}_bucket", self.name);
                        let count = h.get_sample_count() as f64;
                        let bounds: Vec<(String, f64)> = h
                            .get_bucket()
                            .iter()
                            .map(|b| (go_double(b.upper_bound()), b.cumulative_count() as f64))
                            .chain(std::iter::once(("+Inf".to_string(), count)))
                            .collect();
                        for (le, n) in &bounds {
                            labels.push(("le", le));
                            sample(&bucket, &labels, *n);
                            labels.pop();
                        }
                        sample(&format!("{}_count", self.name), &labels, count);
                        sample(&format!("{}_sum", self.name), &labels, h.get_sample_sum());
                    }
                    _ => {}
                }
            }
            if names.is_empty() || !samples.is_empty() {
                let kind = match family.get_field_type() {
                    MetricType::COUNTER => "counter",
                    MetricType::HISTOGRAM => "histogram",
                    _ => "gauge",
                };
                out.push_str(&format!("# HELP {} {}\n", self.name, family.help()));
                out.push_str(&format!("# TYPE {} {kind}\n", self.name));
                out.push_str(&samples);
            }
        }
    }

    /// Counters add, gauges set, histograms observe (TorchServe's `addOrUpdate`).
    fn update(&self, value: f64, values: &[&str], hostname: &str, extra: Option<&str>) {
        match &self.sink {
            Sink::Counter(c) => {
                if value >= 0.0 {
                    if let Ok(c) = c.get_metric_with_label_values(values) {
                        c.inc_by(value);
                    }
                }
            }
            Sink::Gauge(g) => {
                if let Ok(g) = g.get_metric_with_label_values(values) {
                    g.set(value);
                }
            }
            Sink::Histogram(h) => {
                if let Ok(h) = h.get_metric_with_label_values(values) {
                    h.observe(value);
                }
            }
            Sink::Log(to) => {
                let line = self.log_line(value, values, hostname, extra);
                match to {
                    LogTo::Server => tracing::info!(target: crate::logging::TS_METRICS, "{line}"),
                    LogTo::Model => tracing::info!(target: crate::logging::MODEL_METRICS, "{line}"),
                }
            }
        }
    }

    /// `Name.Unit:value|#Dim:v,...|#hostname:h[,requestID:ids],timestamp:epoch`, the host
    /// dimension moved to the last part, as TorchServe's metric logs have it.
    fn log_line(&self, value: f64, values: &[&str], hostname: &str, extra: Option<&str>) -> String {
        use std::fmt::Write;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Written into one string: a request logs several of these lines.
        let mut line = String::with_capacity(160);
        let _ = write!(line, "{}.{}:{}|#", self.name, self.unit, java_double(value));
        let dims = self.dims.iter().zip(values);
        for (i, (d, v)) in dims
            .filter(|(d, _)| !d.eq_ignore_ascii_case("hostname"))
            .enumerate()
        {
            let _ = write!(line, "{}{d}:{v}", if i == 0 { "" } else { "," });
        }
        let _ = write!(line, "|#hostname:{hostname},");
        if let Some(ids) = extra {
            let _ = write!(line, "requestID:{ids},");
        }
        let _ = write!(line, "timestamp:{epoch}");
        line
    }
}

/// What the frontend knows about an event, by TorchServe's dimension names.
#[derive(Default, Clone, Copy)]
pub struct Dims<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub worker: &'a str,
    pub device: &'a str,
}

/// ferroserve's own families, exposed in prometheus mode next to TorchServe's.
struct Extras {
    request_duration: HistogramVec,
    queue_duration: HistogramVec,
    inference_duration: HistogramVec,
    batch_size: HistogramVec,
    queue_depth: GaugeVec,
    in_flight: GaugeVec,
    worker_restarts: CounterVec,
    responses: CounterVec,
    build_info: GaugeVec,
    canary_weight: GaugeVec,
    canary_rollbacks: CounterVec,
    drift: drift::DriftFamilies,
}

impl Extras {
    fn new() -> Self {
        let mv = ["model_name", "model_version"];
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &mv,
            )
            .expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &mv).expect("valid metric")
        };
        Self {
            request_duration: hist(
                "ferroserve_request_duration_seconds",
                "Inference requests from arrival to the reply, in seconds",
                &LATENCY_BUCKETS,
            ),
            queue_duration: hist(
                "ferroserve_queue_duration_seconds",
                "Time inference requests waited in the queue for a worker, in seconds",
                &LATENCY_BUCKETS,
            ),
            inference_duration: hist(
                "ferroserve_inference_duration_seconds",
                "Time a worker spent running one batch, in seconds",
                &LATENCY_BUCKETS,
            ),
            batch_size: hist(
                "ferroserve_batch_size",
                "Requests per batch handed to a worker",
                &BATCH_BUCKETS,
            ),
            queue_depth: gauge(
                "ferroserve_queue_depth",
                "Inference requests waiting for a worker",
            ),
            in_flight: gauge(
                "ferroserve_requests_in_flight",
                "Inference requests received and not yet answered",
            ),
            worker_restarts: CounterVec::new(
                Opts::new(
                    "ferroserve_worker_restarts_total",
                    "Worker restarts after a crash or a failed start",
                ),
                &mv,
            )
            .expect("valid metric"),
            responses: CounterVec::new(
                Opts::new(
                    "ferroserve_inference_responses_total",
                    "Inference responses by status class",
                ),
                &["model_name", "model_version", "code"],
            )
            .expect("valid metric"),
            canary_weight: GaugeVec::new(
                Opts::new(
                    "ferroserve_canary_weight_percent",
                    "Share of a model's unversioned requests routed to this version by its traffic split",
                ),
                &mv,
            )
            .expect("valid metric"),
            canary_rollbacks: CounterVec::new(
                Opts::new(
                    "ferroserve_canary_rollbacks_total",
                    "Automatic rollbacks of a canary version by its guard rails",
                ),
                &mv,
            )
            .expect("valid metric"),
            build_info: GaugeVec::new(
                Opts::new("ferroserve_build_info", "The ferroserve build serving"),
                &["version", "torchserve_api"],
            )
            .expect("valid metric"),
            drift: drift::DriftFamilies::new(),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let own: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.request_duration.clone()),
            Box::new(self.queue_duration.clone()),
            Box::new(self.inference_duration.clone()),
            Box::new(self.batch_size.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.in_flight.clone()),
            Box::new(self.worker_restarts.clone()),
            Box::new(self.responses.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.canary_weight.clone()),
            Box::new(self.canary_rollbacks.clone()),
        ];
        own.into_iter().chain(self.drift.collectors()).collect()
    }
}

pub struct Metrics {
    mode: Mode,
    hostname: String,
    registry: Registry,
    frontend: HashMap<String, Entry>,
    /// Backend metrics by name; grows when `model_metrics_auto_detect` is on.
    backend: RwLock<HashMap<String, Entry>>,
    auto_detect: bool,
    extras: Extras,
}

impl Metrics {
    pub fn new(mode: Mode, config: MetricsConfig, auto_detect: bool) -> Self {
        let registry = Registry::new();
        let exposed = |name: &str| match mode {
            Mode::Log => false,
            Mode::Prometheus => true,
            Mode::Legacy => LEGACY.contains(&name),
        };
        let mut frontend = HashMap::new();
        for (mut kind, spec) in config.frontend {
            if mode == Mode::Legacy && LEGACY.contains(&spec.name.as_str()) {
                kind = Kind::Counter;
            }
            let exposed = exposed(&spec.name);
            if let Some(entry) = Entry::new(kind, spec, exposed, LogTo::Server) {
                frontend.insert(entry.name.clone(), entry);
            }
        }
        let mut backend = HashMap::new();
        for (kind, mut spec) in config.backend {
            if let Err(e) = usable_name(&frontend, &spec.name) {
                tracing::error!("metric not exposed: {e}");
                continue;
            }
            spec.dimensions.push("Hostname".into());
            if let Some(entry) = Entry::new(kind, spec, mode == Mode::Prometheus, LogTo::Model) {
                backend.insert(entry.name.clone(), entry);
            }
        }
        // The registry holds ferroserve's own families only: TorchServe's are written from
        // their entries, in TorchServe's text.
        let extras = Extras::new();
        if mode == Mode::Prometheus {
            for c in extras.collectors() {
                if let Err(e) = registry.register(c) {
                    tracing::error!("metric not exposed: {e}");
                }
            }
            extras
                .build_info
                .with_label_values(&[env!("CARGO_PKG_VERSION"), "0.12"])
                .set(1.0);
        }
        Self {
            mode,
            hostname: hostname(),
            registry,
            frontend,
            backend: RwLock::new(backend),
            auto_detect,
            extras,
        }
    }

    /// TorchServe's default metrics, no auto-detection.
    pub fn with_defaults(mode: Mode) -> Self {
        Self::new(mode, MetricsConfig::load(None), false)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Updates a server metric named in metrics.yaml; names it does not list are ignored.
    pub fn frontend(&self, name: &str, value: f64, dims: Dims) {
        let Some(entry) = self.frontend.get(name) else {
            return;
        };
        let values: Vec<&str> = entry
            .dims
            .iter()
            .map(|d| match d.as_str() {
                "Hostname" | "hostname" => self.hostname.as_str(),
                "Level" => "Host",
                "model_name" | "ModelName" => dims.model,
                "model_version" | "ModelVersion" => dims.version,
                "WorkerName" => dims.worker,
                "DeviceId" => dims.device,
                _ => "",
            })
            .collect();
        entry.update(value, &values, &self.hostname, None);
    }

    /// An inference request for an existing model; `version` is the URL's, or "default".
    pub fn inference_request(&self, model: &str, version: &str) {
        let dims = Dims {
            model,
            version,
            ..Dims::default()
        };
        self.frontend("ts_inference_requests_total", 1.0, dims);
    }

    /// A successful inference reply: its total and queue times.
    pub fn inference_done(&self, model: &str, version: &str, total: Duration, queued: Duration) {
        let dims = Dims {
            model,
            version,
            ..Dims::default()
        };
        self.frontend(
            "ts_inference_latency_microseconds",
            total.as_secs_f64() * 1e6,
            dims,
        );
        self.frontend(
            "ts_queue_latency_microseconds",
            queued.as_secs_f64() * 1e6,
            dims,
        );
        self.queue_time(model, version, queued);
    }

    /// How long a request waited for a worker (TorchServe's `QueueTime`, REST and gRPC).
    pub fn queue_time(&self, model: &str, version: &str, queued: Duration) {
        let dims = Dims {
            model,
            version,
            ..Dims::default()
        };
        self.frontend("QueueTime", queued.as_millis() as f64, dims);
    }

    /// Any response on any listener, by status class (1xx and 3xx count as 5XX, as TorchServe).
    pub fn response(&self, status: u16) {
        let name = match status {
            200..=299 => "Requests2XX",
            400..=499 => "Requests4XX",
            _ => "Requests5XX",
        };
        self.frontend(name, 1.0, Dims::default());
    }

    /// A Python worker's `[METRICS]` line. Metrics metrics.yaml does not list are ignored
    /// unless `model_metrics_auto_detect` is on; then the line's type and dimensions (plus
    /// `Hostname`) define them.
    pub fn backend(&self, m: &BackendMetric) {
        self.record_backend(
            &m.name,
            &m.unit,
            m.value,
            &m.dimensions,
            m.kind.as_deref(),
            m.request_id.as_deref(),
        );
    }

    /// A handler-side metric sample (a worker's line, or a native handler's own), its
    /// dimensions by name.
    fn record_backend<K: AsRef<str>, V: AsRef<str>>(
        &self,
        name: &str,
        unit: &str,
        value: f64,
        dimensions: &[(K, V)],
        kind: Option<&str>,
        request_id: Option<&str>,
    ) {
        let known = self
            .backend
            .read()
            .map(|b| b.contains_key(name))
            .unwrap_or(false);
        if !known {
            if !self.auto_detect {
                return;
            }
            let mut dims: Vec<String> = dimensions
                .iter()
                .map(|(k, _)| k.as_ref().to_string())
                .collect();
            dims.push("Hostname".into());
            let spec = Spec {
                name: name.to_string(),
                unit: unit.to_string(),
                dimensions: dims,
            };
            let kind = Kind::from_line(kind);
            let Some(entry) = Entry::new(kind, spec, self.mode == Mode::Prometheus, LogTo::Model)
            else {
                return;
            };
            let Ok(mut backend) = self.backend.write() else {
                return;
            };
            if let Err(e) = usable_name(&self.frontend, name) {
                tracing::warn!("backend metric not exposed: {e}");
                return;
            }
            backend.entry(name.to_string()).or_insert(entry);
        }
        let Ok(backend) = self.backend.read() else {
            return;
        };
        let Some(entry) = backend.get(name) else {
            return;
        };
        // Dimensions by name; the host is this machine's, like the worker's.
        let values: Vec<&str> = entry
            .dims
            .iter()
            .map(|d| {
                if d == "Hostname" {
                    return self.hostname.as_str();
                }
                dimensions
                    .iter()
                    .find(|(k, _)| k.as_ref() == d)
                    .map(|(_, v)| v.as_ref())
                    .unwrap_or("")
            })
            .collect();
        entry.update(value, &values, &self.hostname, request_id);
    }

    /// The label-bound handles of one model version.
    pub fn version(self: &Arc<Self>, model: &str, version: &str) -> Arc<VersionMetrics> {
        let mv = [model, version];
        let e = &self.extras;
        let class = |c: &str| e.responses.with_label_values(&[model, version, c]);
        Arc::new(VersionMetrics {
            metrics: self.clone(),
            model: model.to_string(),
            version: version.to_string(),
            request_duration: e.request_duration.with_label_values(&mv),
            queue_duration: e.queue_duration.with_label_values(&mv),
            inference_duration: e.inference_duration.with_label_values(&mv),
            batch_size: e.batch_size.with_label_values(&mv),
            queue_depth: e.queue_depth.with_label_values(&mv),
            in_flight: e.in_flight.with_label_values(&mv),
            worker_restarts: e.worker_restarts.with_label_values(&mv),
            responses: [class("2xx"), class("4xx"), class("5xx")],
        })
    }

    /// The drift monitors' families (each monitor binds and forgets its own series).
    pub fn drift(&self) -> &drift::DriftFamilies {
        &self.extras.drift
    }

    /// A version's share of its model's unversioned traffic under a split.
    pub fn canary_weight(&self, model: &str, version: &str, percent: f64) {
        let e = &self.extras;
        e.canary_weight
            .with_label_values(&[model, version])
            .set(percent);
        // The rollback counter exists from the split on, at 0, so `increase()` over it has
        // data before the first rollback.
        e.canary_rollbacks.with_label_values(&[model, version]);
    }

    pub fn canary_rollback(&self, model: &str, version: &str) {
        self.extras
            .canary_rollbacks
            .with_label_values(&[model, version])
            .inc();
    }

    /// Drops an unregistered version's series from ferroserve's own families.
    pub fn forget_version(&self, model: &str, version: &str) {
        let e = &self.extras;
        let mv = [model, version];
        let _ = e.request_duration.remove_label_values(&mv);
        let _ = e.queue_duration.remove_label_values(&mv);
        let _ = e.inference_duration.remove_label_values(&mv);
        let _ = e.batch_size.remove_label_values(&mv);
        let _ = e.queue_depth.remove_label_values(&mv);
        let _ = e.in_flight.remove_label_values(&mv);
        let _ = e.worker_restarts.remove_label_values(&mv);
        let _ = e.canary_weight.remove_label_values(&mv);
        for c in ["2xx", "4xx", "5xx"] {
            let _ = e.responses.remove_label_values(&[model, version, c]);
        }
    }

    /// The exposition. TorchServe's families (those of metrics.yaml and auto-detected ones)
    /// are written as TorchServe's Java client writes them, since scrapers and alert rules
    /// match that text; ferroserve's own families in the standard text format. `names` (the
    /// `name[]` query) keeps only samples with those names, as TorchServe filters, except
    /// that a ferroserve family is also kept whole by its family name; none keeps all.
    pub fn render(&self, names: &[String]) -> String {
        let mut out = String::new();
        let backend = self.backend.read().ok();
        for entry in self
            .frontend
            .values()
            .chain(backend.iter().flat_map(|b| b.values()))
        {
            entry.expose(names, &mut out);
        }
        let wanted = |family: &str| {
            names.is_empty()
                || names.iter().any(|n| {
                    n == family
                        || n.strip_prefix(family)
                            .is_some_and(|suffix| matches!(suffix, "_bucket" | "_sum" | "_count"))
                })
        };
        let own: Vec<_> = self
            .registry
            .gather()
            .into_iter()
            .filter(|f| wanted(f.name()))
            .collect();
        let mut standard = Vec::new();
        let _ = TextEncoder::new().encode(&own, &mut standard);
        out.push_str(&String::from_utf8_lossy(&standard));
        out
    }
}

/// One model version's handles into ferroserve's families, bound once at load so the request
/// path does not hash label values.
pub struct VersionMetrics {
    metrics: Arc<Metrics>,
    model: String,
    version: String,
    request_duration: Histogram,
    queue_duration: Histogram,
    inference_duration: Histogram,
    batch_size: Histogram,
    queue_depth: Gauge,
    in_flight: Gauge,
    worker_restarts: Counter,
    responses: [Counter; 3],
}

/// Counts a request in flight until dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a request ended, by TorchServe's status classes (the responses counter's `class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success = 0,
    ClientError = 1,
    ServerError = 2,
}

impl Outcome {
    /// A handler's reply status (1xx and 3xx count as server errors, as in TorchServe).
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Success,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }

    pub fn of_error(e: &crate::error::ServeError) -> Self {
        if e.is_client_fault() {
            Self::ClientError
        } else {
            Self::ServerError
        }
    }
}

impl VersionMetrics {
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// An inference request answered with `status`; `queued` when a worker reached it.
    pub fn request_done(&self, outcome: Outcome, total: Duration, queued: Option<Duration>) {
        self.request_duration.observe(total.as_secs_f64());
        if let Some(q) = queued {
            self.queue_duration.observe(q.as_secs_f64());
        }
        self.responses[outcome as usize].inc();
    }

    /// A batch a worker ran: its size, the engine's time, and the worker loop's own time
    /// around it (TorchServe's `WorkerThreadTime`).
    pub fn batch(&self, size: usize, engine: Duration, overhead: Duration) {
        self.batch_size.observe(size as f64);
        self.inference_duration.observe(engine.as_secs_f64());
        self.metrics.frontend(
            "WorkerThreadTime",
            overhead.as_millis() as f64,
            Dims::default(),
        );
    }

    /// A native handler's successful batch: TorchServe's handler-side `HandlerTime` and
    /// `PredictionTime` (milliseconds to two decimals), which Python workers print themselves.
    pub fn handler_time(&self, took: Duration) {
        let ms = (took.as_secs_f64() * 100_000.0).round() / 100.0;
        let dimensions = [("ModelName", self.model.as_str()), ("Level", "Model")];
        for name in ["HandlerTime", "PredictionTime"] {
            self.metrics
                .record_backend(name, "ms", ms, &dimensions, None, None);
        }
    }

    /// A worker became ready `took` after it started (TorchServe's `WorkerLoadTime`).
    pub fn worker_loaded(&self, worker: &str, took: Duration) {
        let dims = Dims {
            model: &self.model,
            version: &self.version,
            worker,
            ..Dims::default()
        };
        self.metrics
            .frontend("WorkerLoadTime", took.as_millis() as f64, dims);
    }

    pub fn worker_restarted(&self) {
        self.worker_restarts.inc();
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as f64);
    }
}

/// Java's `Double.toString`, which TorchServe's metric log lines use: `3.0`, `0.08`,
/// `1.1536819933E7` from 10^7 up and below 10^-3.
pub fn java_double(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e7).contains(&a) {
        let s = format!("{v:E}");
        return match s.split_once('E') {
            Some((m, e)) if !m.contains('.') => format!("{m}.0E{e}"),
            _ => s,
        };
    }
    let s = format!("{v}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// A backend metric's name must not be a server metric's, nor in ferroserve's own namespace:
/// each family is written once.
fn usable_name(frontend: &HashMap<String, Entry>, name: &str) -> Result<(), String> {
    if frontend.contains_key(name) || name.starts_with("ferroserve_") {
        return Err(format!("{name} is already a metric of the server"));
    }
    Ok(())
}

/// The number format of TorchServe's exposition: Java's, with Go's names for the specials.
fn go_double(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v => java_double(v),
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The host's name, as TorchServe's `Hostname` dimension (gethostname(2): Linux and macOS).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer outlives the call and its length is passed; the name is
    // NUL-terminated when it fits, which the zeroed last byte guarantees.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0;
    let name = std::ffi::CStr::from_bytes_until_nul(&buf)
        .ok()
        .and_then(|c| c.to_str().ok())
        .filter(|h| ok && !h.is_empty());
    name.unwrap_or("localhost").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_decide_what_is_exposed() {
        let m = Arc::new(Metrics::with_defaults(Mode::Prometheus));
        m.inference_request("sign", "default");
        m.inference_done(
            "sign",
            "default",
            Duration::from_micros(1500),
            Duration::from_micros(200),
        );
        m.response(200);
        m.response(302);
        let v = m.version("sign", "1.0");
        v.batch(3, Duration::from_millis(2), Duration::from_micros(10));
        let text = m.render(&[]);
        assert!(text.contains("# HELP ts_inference_requests_total Torchserve prometheus counter metric with unit: Count"), "{text}");
        assert!(
            text.contains("ts_inference_requests_total{model_name=\"sign\",model_version=\"default\",hostname=\""),
            "{text}"
        );
        assert!(text.contains("Requests5XX{"), "a 3xx counts as 5XX: {text}");
        assert!(text.contains("ferroserve_build_info{"), "{text}");
        assert!(text.contains("WorkerThreadTime{"), "{text}");
        let only = m.render(&["ts_queue_latency_microseconds".into()]);
        assert!(
            only.contains("ts_queue_latency_microseconds{") && !only.contains("Requests2XX"),
            "{only}"
        );
        let buckets = m.render(&["ferroserve_batch_size_bucket".into()]);
        assert!(
            buckets.contains("ferroserve_batch_size_bucket{") && !buckets.contains("Requests2XX"),
            "{buckets}"
        );
        assert_eq!(m.render(&["unknown".into()]), "");
        m.forget_version("sign", "1.0");
        assert!(!m.render(&[]).contains("ferroserve_batch_size_bucket{"));

        let legacy = Metrics::with_defaults(Mode::Legacy);
        legacy.inference_request("m", "1.0");
        legacy.response(200);
        let text = legacy.render(&[]);
        assert!(
            text.contains("ts_inference_requests_total") && !text.contains("Requests2XX"),
            "{text}"
        );
        assert!(!text.contains("ferroserve_"), "{text}");

        let log = Metrics::with_defaults(Mode::Log);
        log.inference_request("m", "1.0");
        assert_eq!(log.render(&[]), "");
        assert_eq!(Mode::parse(Some(" prometheus ")), Mode::Prometheus);
        assert_eq!(Mode::parse(Some("nonsense")), Mode::Log);
    }

    #[test]
    fn a_custom_config_decides_names_types_and_dimensions() {
        let yaml = "ts_metrics:\n  histogram:\n    - name: ts_inference_latency_microseconds\n      unit: Microseconds\n      dimensions: [model_name]\n";
        let m = Metrics::new(Mode::Prometheus, MetricsConfig::parse(yaml).unwrap(), false);
        m.inference_done(
            "a",
            "1",
            Duration::from_micros(300),
            Duration::from_micros(1),
        );
        m.inference_request("a", "1");
        let text = m.render(&[]);
        assert!(
            text.contains("# TYPE ts_inference_latency_microseconds histogram")
                && text.contains("ts_inference_latency_microseconds_count{model_name=\"a\",} 1.0"),
            "{text}"
        );
        assert!(!text.contains("ts_inference_requests_total"), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_hostname_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname(), kernel.trim());
    }

    #[test]
    fn torchserve_families_are_written_as_its_java_client_writes_them() {
        let m = Metrics::with_defaults(Mode::Prometheus);
        let host = hostname();
        for _ in 0..6 {
            m.response(200);
        }
        m.inference_request("sign", "default");
        let text = m.render(&[]);
        assert!(
            text.contains(&format!(
                "# HELP Requests2XX Torchserve prometheus counter metric with unit: Count\n\
                 # TYPE Requests2XX counter\n\
                 Requests2XX{{Level=\"Host\",Hostname=\"{host}\",}} 6.0\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ts_inference_requests_total{{model_name=\"sign\",model_version=\"default\",hostname=\"{host}\",}} 1.0\n"
            )),
            "{text}"
        );
        // A family without samples yet: its HELP and TYPE lines, as TorchServe lists it.
        assert!(
            text.contains(
                "# HELP Requests5XX Torchserve prometheus counter metric with unit: Count\n\
                 # TYPE Requests5XX counter\n#"
            ),
            "{text}"
        );
        // `name[]` keeps samples by name; families left empty disappear.
        let only = m.render(&["Requests2XX".into()]);
        assert_eq!(
            only.lines().filter(|l| !l.starts_with('#')).count(),
            1,
            "{only}"
        );
        assert!(!only.contains("Requests5XX"), "{only}");

        let yaml = "ts_metrics:\n  histogram:\n    - name: QueueTime\n      unit: ms\n      dimensions: [Level, Hostname]\n";
        let h = Metrics::new(Mode::Prometheus, MetricsConfig::parse(yaml).unwrap(), false);
        h.frontend("QueueTime", 0.02, Dims::default());
        let text = h.render(&[]);
        assert!(
            text.contains(&format!(
                "QueueTime_bucket{{Level=\"Host\",Hostname=\"{host}\",le=\"0.025\",}} 1.0\n"
            )) && text.contains(&format!(
                "QueueTime_bucket{{Level=\"Host\",Hostname=\"{host}\",le=\"+Inf\",}} 1.0\n"
            )) && text.contains(&format!(
                "QueueTime_count{{Level=\"Host\",Hostname=\"{host}\",}} 1.0\n"
            )),
            "{text}"
        );
        // A histogram's family name is no sample name: TorchServe keeps nothing for it.
        assert_eq!(h.render(&["QueueTime".into()]), "");
        assert!(h
            .render(&["QueueTime_count".into()])
            .contains("QueueTime_count{"));
        assert_eq!(go_double(f64::INFINITY), "+Inf");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn metric_log_lines_read_like_torchserves() {
        let c = MetricsConfig::load(None);
        let (kind, spec) = c
            .frontend
            .into_iter()
            .find(|(_, s)| s.name == "Requests2XX")
            .unwrap();
        let e = Entry::new(kind, spec, false, LogTo::Server).unwrap();
        let line = e.log_line(1.0, &["Host", "vm"], "vm", None);
        assert!(
            line.starts_with("Requests2XX.Count:1.0|#Level:Host|#hostname:vm,timestamp:"),
            "{line}"
        );
        assert_eq!(java_double(3.0), "3.0");
        assert_eq!(java_double(0.08), "0.08");
        assert_eq!(java_double(8408.103000000001), "8408.103000000001");
        assert_eq!(java_double(11536819.933), "1.1536819933E7");
        assert_eq!(java_double(1e7), "1.0E7");
        assert_eq!(java_double(0.0), "0.0");
    }
}
