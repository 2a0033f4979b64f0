//! Logs, with `tracing`: the console, and TorchServe's log files so that log-based pipelines
//! keep working. Under `$LOG_LOCATION` (default `logs`): `ts_log.log` (the server),
//! `access_log.log` (one line per HTTP response), `model_log.log` (Python workers' output);
//! under `$METRICS_LOCATION` (default `logs`): `ts_metrics.log`, `model_metrics.log`.
//! Events choose their file by target, the names of TorchServe's loggers: `ACCESS_LOG`,
//! `MODEL_LOG`, `TS_METRICS`, `MODEL_METRICS`. Files are appended to and never rotated (use
//! logrotate with `copytruncate`). Each line is one `write(2)` by the thread that logs it, to
//! a file opened for appending, as log4j's default (synchronous) appenders write: lines of
//! concurrent threads never interleave and none waits in a buffer to be lost. Measured under
//! load, this costs no more than a background writer: tracing-appender's per-file threads
//! spun in their channels' receive before parking, ≈ 0.1 ms of CPU per request on two cores.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

pub const ACCESS_LOG: &str = "ACCESS_LOG";
pub const MODEL_LOG: &str = "MODEL_LOG";
pub const TS_METRICS: &str = "TS_METRICS";
pub const MODEL_METRICS: &str = "MODEL_METRICS";
const METRIC_TARGETS: [&str; 2] = [TS_METRICS, MODEL_METRICS];

/// Keeps the console's background writer writing; dropping it writes what is left.
pub struct Guards(#[allow(dead_code)] WorkerGuard);

/// log4j's layouts: `%d{ISO8601} [%-5p] %t %c - %m%n` (`full`) or `%d{ISO8601} - %m%n`.
struct Log4j {
    full: bool,
}

impl<S, N> FormatEvent<S, N> for Log4j
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_time(&mut w)?;
        if self.full {
            let meta = event.metadata();
            let thread = std::thread::current();
            write!(
                w,
                " [{:<5}] {} {} - ",
                meta.level().as_str(),
                thread.name().unwrap_or("main"),
                meta.target()
            )?;
        } else {
            write!(w, " - ")?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// log4j's ISO8601 time, `2026-12-06T21:43:16,871`. The part up to the second is formatted
/// once a second per thread: chrono formats character by character, and every request logs
/// several lines.
fn write_time(w: &mut Writer<'_>) -> fmt::Result {
    thread_local! {
        static SECOND: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Local::now();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != now.timestamp() {
            *second = now.timestamp();
            *text = now.format("%Y-%m-%dT%H:%M:%S").to_string();
        }
        write!(w, "{text},{:03}", now.timestamp_subsec_millis().min(999))
    })
}

/// A file line's message, written whole when tracing-subscriber's escaping would leave it as
/// it is: that escaping goes character by character (≈ 4 % of the server's CPU on small
/// requests, which log about nine lines each). An event with other fields, or a message with a
/// byte the escaping may act on (a control character, DEL, the lead byte of U+0080–U+00BF),
/// is formatted by `DefaultFields`, escaping included, so every line reads as before.
struct MessageFields;

impl<'w> FormatFields<'w> for MessageFields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        // Never borrowed twice: tracing does not dispatch an event raised while a subscriber
        // handles one on the same thread (a value's Debug that logs is dropped).
        LINE.with_borrow_mut(|line| {
            line.clear();
            let mut message = Message { line, whole: true };
            fields.record(&mut message);
            let whole = message.whole;
            let plain = !line.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2);
            if whole && plain {
                w.write_str(line)
            } else {
                DefaultFields::new().format_fields(w, fields)
            }
        })
    }
}

/// Collects an event's `message`; `whole` turns false at any other field.
struct Message<'a> {
    line: &'a mut String,
    whole: bool,
}

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use fmt::Write;
        if field.name() == "message" && self.line.is_empty() {
            self.whole &= write!(self.line, "{value:?}").is_ok();
        } else {
            self.whole = false;
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// A file's layer: INFO and above of the targets `wanted` accepts, in a log4j layout.
fn file_layer(w: Arc<File>, full: bool, wanted: fn(&str) -> bool) -> BoxedLayer {
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
            Ok(f) => Some(Arc::new(f)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What a subscriber with the given field formatter writes for `log`.
    fn written<N>(fields: N, log: impl FnOnce()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .fmt_fields(fields)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A value whose Debug logs a line of its own while the outer line is formatted (the
    /// thread's line buffer is then in use).
    struct LogsWhenShown;

    impl fmt::Debug for LogsWhenShown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            tracing::info!("inner");
            f.write_str("shown")
        }
    }

    /// File lines read exactly as tracing-subscriber's own field formatting writes them,
    /// terminal escapes escaped, whether the message is written whole or not.
    #[test]
    fn file_lines_read_as_tracing_writes_them() {
        let log = || {
            let name = "sign";
            tracing::info!("Requests2XX.Count:1|#Level:Host|#hostname:vm,timestamp:1");
            tracing::info!("ts_inference_latency_microseconds.Microseconds:12.5|#ModelName:{name}");
            tracing::info!("/127.0.0.1:4000 \"POST /predictions/caf\u{e9} HTTP/1.1\" 200 3");
            tracing::info!("a model named \u{1b}[31mred\u{7}, \u{9b}2J and \u{85} with DEL \u{7f}");
            tracing::info!("tabs\tand\nnew lines");
            tracing::info!(status = 200, "with a field");
            tracing::info!(status = 200);
            tracing::info!("outer {:?} after", LogsWhenShown);
        };
        let ours = written(MessageFields, log);
        assert_eq!(ours, written(DefaultFields::new(), log));
        assert!(ours.contains("\\x1b[31mred\\x07, \\u{9b}2J"), "{ours}");
        assert!(ours.contains("caf\u{e9}"), "{ours}");
        // tracing drops the line a value's Debug logs while the outer one is formatted.
        assert!(
            ours.contains("outer shown after") && !ours.contains("inner"),
            "{ours}"
        );
    }
}
