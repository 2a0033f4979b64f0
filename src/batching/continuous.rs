//! Continuous batching (TorchServe's `continuousBatching: true`) for streaming Python
//! handlers. A worker serves rounds: each round sends the requests still streaming plus new
//! ones up to the batch size, and the worker answers each with one part. A part whose
//! `ts_stream_next` header is `true` keeps its request in the next round, sent again with its
//! headers but without its parameters (the handler keeps the request's state); the others
//! end their answers. New requests join at any round, so a long answer never holds back a
//! short one; a request whose client left is dropped from the next round.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::{admit, batch_span, settle, Answer, BatchSettings, Intake, Job, Outcome, Stats};
use crate::handler::{Engine, Prepared, Reply};

/// A request being answered over several rounds.
struct Streaming {
    input: Prepared,
    span: tracing::Span,
    answer: Answer,
    /// It was in an earlier round: its parameters are not sent again.
    cached: bool,
}

impl Streaming {
    fn new(job: Job, dispatched: Instant) -> Self {
        Self {
            answer: Answer::new(job.reply, dispatched - job.enqueued),
            input: job.input,
            span: job.span,
            cached: false,
        }
    }
}

/// Whether a part says more parts follow.
fn continues(reply: &Reply) -> bool {
    reply
        .headers
        .iter()
        .any(|(k, v)| k == "ts_stream_next" && v.eq_ignore_ascii_case("true"))
}

/// Serves rounds until the worker is told to stop (and its streams are done), or its engine
/// dies.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    engine: &mut dyn Engine,
    intake: &Intake,
    worker: u32,
    settings: BatchSettings,
    stop: &Receiver<()>,
    stats: &Stats,
    metrics: &crate::metrics::VersionMetrics,
    runtime: &tokio::runtime::Handle,
) -> Outcome {
    let mut streaming: Vec<Streaming> = Vec::new();
    loop {
        // Idle, the worker waits for work; streaming, it takes what waits and goes on.
        let fresh = if streaming.is_empty() {
            match intake.next_batch(worker, settings, stop) {
                Some(batch) => batch,
                None => return Outcome::Done,
            }
        } else if stop.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected) {
            // Retiring: the answers under way are finished, no new request joins.
            Vec::new()
        } else {
            intake.take_now(settings.batch_size.saturating_sub(streaming.len()))
        };
        let dispatched = Instant::now();
        streaming.extend(
            admit(fresh, settings.client_timeout, dispatched, stats)
                .into_iter()
                .map(|job| Streaming::new(job, dispatched)),
        );
        streaming.retain(|s| {
            let gone = s.answer.abandoned();
            if gone {
                tracing::info!("a streaming request's client left; it leaves the batch");
            }
            !gone
        });
        if streaming.is_empty() {
            continue;
        }
        match round(engine, &mut streaming, stats, metrics, runtime) {
            Outcome::Done => {}
            Outcome::Died => return Outcome::Died,
        }
    }
}

/// One round: every streaming request gets its next part; those that end leave `streaming`.
fn round(
    engine: &mut dyn Engine,
    streaming: &mut Vec<Streaming>,
    stats: &Stats,
    metrics: &crate::metrics::VersionMetrics,
    runtime: &tokio::runtime::Handle,
) -> Outcome {
    let span = batch_span(streaming.iter().map(|s| &s.span));
    let _entered = span.enter();
    let fresh = streaming.iter().filter(|s| !s.cached).count();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.requests.fetch_add(fresh as u64, Ordering::Relaxed);
    let batch: Vec<(&Prepared, bool)> = streaming.iter().map(|s| (&s.input, s.cached)).collect();
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| engine.round(&batch)));
    metrics.batch(batch.len(), started.elapsed(), std::time::Duration::ZERO);
    let (error, result) = match settle(outcome, streaming.len()) {
        Ok(parts) => {
            let mut next = Vec::with_capacity(streaming.len());
            for (mut s, part) in streaming.drain(..).zip(parts) {
                if continues(&part) {
                    s.answer.partial(runtime, part);
                    s.cached = true;
                    next.push(s);
                } else {
                    s.answer.finish(runtime, part);
                }
            }
            *streaming = next;
            return Outcome::Done;
        }
        Err(failed) => failed,
    };
    // As TorchServe: a failed round fails every request in it.
    stats.failed_batches.fetch_add(1, Ordering::Relaxed);
    for mut s in streaming.drain(..) {
        s.answer.fail(runtime, &error);
    }
    result
}
