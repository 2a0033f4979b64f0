//! The files' line layouts, log4j's, written without tracing-subscriber's per-character work.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// log4j's layouts: `%d{ISO8601} [%-5p] %t %c - %m%n` (`full`) or `%d{ISO8601} - %m%n`.
pub(super) struct Log4j {
    pub(super) full: bool,
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
pub(super) struct MessageFields;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
