//! Frontend metrics with TorchServe's names, labels and help text, exposed on the metrics
//! listener in Prometheus' text format. `metrics_mode` decides what is exposed, as in
//! TorchServe: `log` (the default) exposes nothing, `prometheus` everything, `legacy` only the
//! three `ts_*` counters.

use std::time::Duration;

use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};

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

pub struct Metrics {
    registry: Registry,
    hostname: String,
    requests_total: CounterVec,
    latency_us: CounterVec,
    queue_latency_us: CounterVec,
    /// Requests2XX, Requests4XX, Requests5XX.
    responses: [CounterVec; 3],
    queue_time_ms: GaugeVec,
    /// Gauges from Python handlers' `[METRICS]` lines (HandlerTime, PredictionTime...), by
    /// name: TorchServe's `model_metrics` with their dimensions plus `Hostname`.
    backend: std::sync::Mutex<std::collections::HashMap<String, GaugeVec>>,
    mode: Mode,
}

fn help(kind: &str, unit: &str) -> String {
    format!("Torchserve prometheus {kind} metric with unit: {unit}")
}

impl Metrics {
    pub fn new(mode: Mode) -> Self {
        let registry = Registry::new();
        let model_labels = ["model_name", "model_version", "hostname"];
        let host_labels = ["Level", "Hostname"];
        let counter = |name: &str, unit: &str, labels: &[&str]| {
            CounterVec::new(Opts::new(name, help("counter", unit)), labels).expect("valid metric")
        };
        let metrics = Metrics {
            hostname: hostname(),
            requests_total: counter("ts_inference_requests_total", "Count", &model_labels),
            latency_us: counter(
                "ts_inference_latency_microseconds",
                "Microseconds",
                &model_labels,
            ),
            queue_latency_us: counter(
                "ts_queue_latency_microseconds",
                "Microseconds",
                &model_labels,
            ),
            responses: [
                counter("Requests2XX", "Count", &host_labels),
                counter("Requests4XX", "Count", &host_labels),
                counter("Requests5XX", "Count", &host_labels),
            ],
            queue_time_ms: GaugeVec::new(
                Opts::new("QueueTime", help("gauge", "Milliseconds")),
                &host_labels,
            )
            .expect("valid metric"),
            registry,
            backend: Default::default(),
            mode,
        };
        let legacy: [&CounterVec; 3] = [
            &metrics.requests_total,
            &metrics.latency_us,
            &metrics.queue_latency_us,
        ];
        if mode != Mode::Log {
            for c in legacy {
                metrics
                    .registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
            }
        }
        if mode == Mode::Prometheus {
            for c in &metrics.responses {
                metrics
                    .registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
            }
            metrics
                .registry
                .register(Box::new(metrics.queue_time_ms.clone()))
                .expect("unique metric");
        }
        metrics
    }

    /// An inference request for an existing model; `version` is the URL's, or "default".
    pub fn inference_request(&self, model: &str, version: &str) {
        self.requests_total
            .with_label_values(&[model, version, &self.hostname])
            .inc();
    }

    /// A successful inference reply: its total and queue times.
    pub fn inference_done(&self, model: &str, version: &str, total: Duration, queued: Duration) {
        let labels = [model, version, self.hostname.as_str()];
        self.latency_us
            .with_label_values(&labels)
            .inc_by(total.as_secs_f64() * 1e6);
        self.queue_latency_us
            .with_label_values(&labels)
            .inc_by(queued.as_secs_f64() * 1e6);
        self.queue_time_ms
            .with_label_values(&["Host", &self.hostname])
            .set(queued.as_millis() as f64);
    }

    /// Any response on any listener, by status class (1xx and 3xx count as 5XX, as TorchServe).
    pub fn response(&self, status: u16) {
        let class = match status {
            200..=299 => 0,
            400..=499 => 1,
            _ => 2,
        };
        self.responses[class]
            .with_label_values(&["Host", &self.hostname])
            .inc();
    }

    /// A Python worker's `[METRICS]` line, as a gauge (prometheus mode only, as TorchServe's
    /// backend metrics). The first line of a name fixes its dimensions; lines that do not fit
    /// them are ignored.
    pub fn backend(&self, m: &crate::handler::python::BackendMetric) {
        if self.mode != Mode::Prometheus {
            return;
        }
        let Ok(mut backend) = self.backend.lock() else {
            return;
        };
        let mut labels: Vec<&str> = m.dimensions.iter().map(|(k, _)| k.as_str()).collect();
        labels.push("Hostname");
        let gauge = match backend.get(&m.name) {
            Some(g) => g.clone(),
            None => {
                let Ok(g) =
                    GaugeVec::new(Opts::new(m.name.as_str(), help("gauge", &m.unit)), &labels)
                else {
                    return;
                };
                if self.registry.register(Box::new(g.clone())).is_err() {
                    return;
                }
                backend.insert(m.name.clone(), g.clone());
                g
            }
        };
        let mut values: Vec<&str> = m.dimensions.iter().map(|(_, v)| v.as_str()).collect();
        values.push(&self.hostname);
        if let Ok(g) = gauge.get_metric_with_label_values(&values) {
            g.set(m.value);
        }
    }

    /// The exposition, restricted to the families named in `names` when there are any.
    pub fn render(&self, names: &[String]) -> String {
        let families: Vec<_> = self
            .registry
            .gather()
            .into_iter()
            .filter(|f| names.is_empty() || names.iter().any(|n| n == f.name()))
            .collect();
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_decide_what_is_exposed() {
        let m = Metrics::new(Mode::Prometheus);
        m.inference_request("sign", "default");
        m.inference_done(
            "sign",
            "default",
            Duration::from_micros(1500),
            Duration::from_micros(200),
        );
        m.response(200);
        m.response(302);
        let text = m.render(&[]);
        assert!(text.contains("# HELP ts_inference_requests_total Torchserve prometheus counter metric with unit: Count"), "{text}");
        assert!(
            text.contains("ts_inference_requests_total{hostname="),
            "{text}"
        );
        assert!(text.contains("Requests5XX{"), "a 3xx counts as 5XX: {text}");
        let only = m.render(&["ts_queue_latency_microseconds".into()]);
        assert!(
            only.contains("ts_queue_latency_microseconds{") && !only.contains("Requests2XX"),
            "{only}"
        );
        assert_eq!(m.render(&["unknown".into()]), "");

        let legacy = Metrics::new(Mode::Legacy);
        legacy.inference_request("m", "1.0");
        legacy.response(200);
        let text = legacy.render(&[]);
        assert!(
            text.contains("ts_inference_requests_total") && !text.contains("Requests2XX"),
            "{text}"
        );

        let log = Metrics::new(Mode::Log);
        log.inference_request("m", "1.0");
        assert_eq!(log.render(&[]), "");
        assert_eq!(Mode::parse(Some(" prometheus ")), Mode::Prometheus);
        assert_eq!(Mode::parse(Some("nonsense")), Mode::Log);
    }
}
