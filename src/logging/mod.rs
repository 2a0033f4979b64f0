//! Logs, with `tracing`: the console, and TorchServe's log files so that log-based pipelines
//! keep working. Under `$LOG_LOCATION` (default `logs`): `ts_log.log` (the server),
//! `access_log.log` (one line per HTTP response), `model_log.log` (Python workers' output);
//! under `$METRICS_LOCATION` (default `logs`): `ts_metrics.log`, `model_metrics.log`.
//! Events choose their file by target, the names of TorchServe's loggers: `ACCESS_LOG`,
//! `MODEL_LOG`, `TS_METRICS`, `MODEL_METRICS`. Files are appended to and never rotated (use
//! logrotate with `copytruncate`). Lines are written by the thread that logs them, to a file
//! opened for appending, as log4j's default (synchronous) appenders write: lines of concurrent
//! threads never interleave. A line is one `write(2)`, or, where a thread logs a burst of
//! lines for one request (a worker after its batch, an HTTP thread as the answer goes out),
//! the burst is one `write(2)` per file at its end ([`file`]). Measured under load, this costs
//! no more than a background writer: tracing-appender's per-file threads spun in their
//! channels' receive before parking, ≈ 0.1 ms of CPU per request on two cores.

mod file;
mod layout;

use std::path::Path;
use std::sync::Arc;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Layer, Registry};

use file::LogFile;
pub use file::{hold_lines, lines_per_poll, HeldLines};
use layout::{Log4j, MessageFields};

pub const ACCESS_LOG: &str = "ACCESS_LOG";
pub const MODEL_LOG: &str = "MODEL_LOG";
pub const TS_METRICS: &str = "TS_METRICS";
pub const MODEL_METRICS: &str = "MODEL_METRICS";
const METRIC_TARGETS: [&str; 2] = [TS_METRICS, MODEL_METRICS];

/// Keeps the console's background writer writing; dropping it writes what is left.
pub struct Guards(#[allow(dead_code)] WorkerGuard);

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// A file's layer: INFO and above of the targets `wanted` accepts, in a log4j layout.
fn file_layer(w: LogFile, full: bool, wanted: fn(&str) -> bool) -> BoxedLayer {
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .fmt_fields(MessageFields)
        .event_format(Log4j { full })
        .with_writer(w)
        .with_filter(filter_fn(move |m| {
            *m.level() <= tracing::Level::INFO && wanted(m.target())
        }))
        .boxed()
}

/// Installs the global subscriber: the console (filtered by `RUST_LOG`, default `info`
/// without the access and metric lines) and, when the directories can be created, the files.
pub fn init() -> Guards {
    let (stderr, guard) = tracing_appender::non_blocking(std::io::stderr());
    // The access and metric lines have their files; the console shows them only when
    // RUST_LOG names their targets.
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let mut directives = wanted.clone();
    for target in [ACCESS_LOG, TS_METRICS, MODEL_METRICS] {
        if !wanted.contains(target) {
            directives.push_str(&format!(",{target}=off"));
        }
    }
    let console_filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let console = tracing_subscriber::fmt::layer()
        .with_writer(stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_thread_names(true)
        .with_filter(console_filter)
        .boxed();

    let log_dir = std::env::var("LOG_LOCATION").unwrap_or_else(|_| "logs".into());
    let metrics_dir = std::env::var("METRICS_LOCATION").unwrap_or_else(|_| "logs".into());
    let file = |dir: &str, name: &str| {
        let path = Path::new(dir).join(name);
        let opened = std::fs::create_dir_all(dir).and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        });
        match opened {
            Ok(f) => Some(LogFile(Arc::new(f))),
            Err(e) => {
                eprintln!(
                    "cannot write {}: {e}; that log goes to the console only",
                    path.display()
                );
                None
            }
        }
    };
    let mut layers: Vec<BoxedLayer> = vec![Box::new(console)];
    if let Some(w) = file(&log_dir, "ts_log.log") {
        layers.push(file_layer(w, true, |t| {
            t != ACCESS_LOG && t != MODEL_LOG && !METRIC_TARGETS.contains(&t)
        }));
    }
    if let Some(w) = file(&log_dir, "access_log.log") {
        layers.push(file_layer(w, false, |t| t == ACCESS_LOG));
    }
    if let Some(w) = file(&log_dir, "model_log.log") {
        layers.push(file_layer(w, true, |t| t == MODEL_LOG));
    }
    if let Some(w) = file(&metrics_dir, "ts_metrics.log") {
        layers.push(file_layer(w, false, |t| t == TS_METRICS));
    }
    if let Some(w) = file(&metrics_dir, "model_metrics.log") {
        layers.push(file_layer(w, false, |t| t == MODEL_METRICS));
    }
    tracing_subscriber::registry().with(layers).init();
    Guards(guard)
}

/// Console only, for commands that serve nothing (`--stop`, the detaching parent).
pub fn init_console() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
}
