//! Per model-version job queue and batch aggregation.
//!
//! The queue is bounded (`job_queue_size`): a full queue refuses at once instead of buffering.
//! Workers of one model version share the queue; the one holding the receiver assembles a batch
//! (as TorchServe's model-wide lock does): the first job blocks, then up to `batch_size - 1`
//! more are taken until `max_batch_delay` after the first was taken. A batch of one never waits.
//! A stateful model's requests wait in their sequences instead ([`sequence`]).

pub mod continuous;
pub mod sequence;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::handler::{Engine, EngineError, Prepared, Reply};
use crate::signal::Signal;

pub type JobResult = Result<Reply, ServeError>;

pub struct Job {
    pub input: Prepared,
    pub reply: oneshot::Sender<JobResult>,
    /// Runs in a batch of its own (TorchServe's DESCRIBE requests are never merged).
    pub solo: bool,
    /// When it was queued.
    pub enqueued: Instant,
    /// The request's span: the worker runs the batch inside it.
    pub span: tracing::Span,
    /// A stateful model's request: the sequence it belongs to.
    pub sequence: Option<sequence::Membership>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub batch_size: usize,
    pub max_batch_delay: Duration,
    /// `clientTimeoutInMills`: a job that waited longer is answered, not run.
    pub client_timeout: Option<Duration>,
}

/// Why a job was not queued.
pub enum SubmitError {
    /// The queue is full, or no worker holds a free job ticket.
    Full,
    Closed,
}

/// Counters of what a model version's workers did.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    /// Requests dropped before a worker ran them: their client left, or they waited past
    /// `clientTimeoutInMills`.
    pub dropped: AtomicU64,
    pub failed_batches: AtomicU64,
}

/// The receiving side, shared by the workers of one model version.
pub struct Intake {
    rx: Receiver<Job>,
    /// The right to gather a batch: one token, taken by the worker that assembles the next
    /// batch (TorchServe's model-wide lock), given back when its batch is cut.
    gather: (Sender<Gathering>, Receiver<Gathering>),
    pending: AtomicUsize,
    /// Signalled whenever the queue runs empty (draining waits on it).
    emptied: Signal,
    /// `useJobTicket`: a worker that starts waiting for a batch issues a ticket, each accepted
    /// request takes one, so requests are taken only while a worker waits (TorchServe's
    /// job tickets). `None`: requests queue up to the capacity.
    tickets: Option<AtomicUsize>,
    /// A stateful model's sequences: its requests wait there, not in `rx`.
    sequences: Option<sequence::Sequences>,
}

/// What the gathering worker holds: a solo job met while a batch was being gathered starts
/// the next batch.
#[derive(Default)]
struct Gathering {
    held: Option<Job>,
}

pub struct JobQueue {
    tx: Sender<Job>,
    intake: Arc<Intake>,
    capacity: usize,
}

/// The most jobs one queue holds.
pub const MAX_QUEUE_SIZE: usize = 100_000;

impl JobQueue {
    pub fn new(capacity: usize) -> Self {
        Self::with(capacity, false, None)
    }

    /// A queue that takes a request only while a worker waits for one (`useJobTicket`), and
    /// for a stateful model, keeps requests in their sequences; `workers` share the
    /// sequences out.
    pub fn with(
        capacity: usize,
        job_tickets: bool,
        sequences: Option<(sequence::SequenceSettings, usize)>,
    ) -> Self {
        let capacity = capacity.min(MAX_QUEUE_SIZE);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let gather = crossbeam_channel::bounded(1);
        gather
            .0
            .send(Gathering::default())
            .expect("the gather token fits");
        Self {
            tx,
            intake: Arc::new(Intake {
                rx,
                gather,
                pending: AtomicUsize::new(0),
                emptied: Default::default(),
                tickets: job_tickets.then(|| AtomicUsize::new(0)),
                sequences: sequences
                    .map(|(settings, workers)| sequence::Sequences::new(settings, workers)),
            }),
            capacity,
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        if let Some(tickets) = &self.intake.tickets {
            let took =
                tickets.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if took.is_err() {
                return Err(SubmitError::Full);
            }
        }
        self.intake.pending.fetch_add(1, Ordering::SeqCst);
        if let Some(sequences) = &self.intake.sequences {
            // A request outside any sequence (a describe request) is a sequence of its own.
            let member = job
                .sequence
                .clone()
                .unwrap_or_else(sequence::Membership::single);
            return sequences
                .submit(member, job)
                .inspect_err(|_| self.intake.taken(1));
        }
        self.tx.try_send(job).map_err(|e| {
            self.intake.taken(1);
            match e {
                TrySendError::Full(_) => SubmitError::Full,
                TrySendError::Disconnected(_) => SubmitError::Closed,
            }
        })
    }

    pub fn pending(&self) -> usize {
        self.intake.pending.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn intake(&self) -> Arc<Intake> {
        self.intake.clone()
    }

    /// The headers that carry a stateful model's sequences; none for other models.
    pub fn sequence_headers(&self) -> Option<&sequence::SequenceHeaders> {
        self.intake
            .sequences
            .as_ref()
            .map(|s| &s.settings().headers)
    }

    /// Waits until no job is pending, at most until `deadline`; true when none is.
    pub fn wait_empty(&self, deadline: Instant) -> bool {
        self.intake
            .emptied
            .wait_until(deadline, || self.pending() == 0)
    }
}

impl Intake {
    /// `n` jobs left the queue.
    fn taken(&self, n: usize) {
        if self.pending.fetch_sub(n, Ordering::SeqCst) == n {
            self.emptied.notify();
        }
    }

    /// Waits for the right to gather, then for the first job, then gathers more within the
    /// delay; for a stateful model, the next requests of `worker`'s sequences. `None` when the
    /// queue closed or `stop` disconnected while waiting.
    pub fn next_batch(
        &self,
        worker: u32,
        settings: BatchSettings,
        stop: &Receiver<()>,
    ) -> Option<Vec<Job>> {
        if let Some(tickets) = &self.tickets {
            tickets.fetch_add(1, Ordering::SeqCst);
        }
        let batch = match &self.sequences {
            Some(sequences) => sequences
                .next_batch(worker, settings, stop)
                .inspect(|b| self.taken(b.len())),
            None => self.wait_and_gather(settings, stop),
        };
        if let (None, Some(tickets)) = (&batch, &self.tickets) {
            // A worker that stops waiting takes its unused ticket back.
            let _ = tickets.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
        batch
    }

    /// Up to `n` queued jobs, without waiting (the next round of a continuous batch).
    pub fn take_now(&self, n: usize) -> Vec<Job> {
        let jobs: Vec<Job> = self.rx.try_iter().take(n).collect();
        if !jobs.is_empty() {
            self.taken(jobs.len());
        }
        jobs
    }

    /// A worker stopped for good: a stateful model's sequences it served go to the others.
    pub fn leave(&self, worker: u32) {
        if let Some(sequences) = &self.sequences {
            sequences.leave(worker);
        }
    }

    fn wait_and_gather(&self, settings: BatchSettings, stop: &Receiver<()>) -> Option<Vec<Job>> {
        let mut gathering = select! {
            recv(self.gather.1) -> token => token.ok()?,
            recv(stop) -> _ => return None,
        };
        let batch = self.gather_batch(&mut gathering, settings, stop);
        // Someone else may gather now; the channel has room for the one token.
        let _ = self.gather.0.send(gathering);
        let batch = batch?;
        self.taken(batch.len());
        Some(batch)
    }

    fn gather_batch(
        &self,
        gathering: &mut Gathering,
        settings: BatchSettings,
        stop: &Receiver<()>,
    ) -> Option<Vec<Job>> {
        let first = match gathering.held.take() {
            Some(job) => job,
            None => select! {
                recv(self.rx) -> job => job.ok()?,
                recv(stop) -> _ => return None,
            },
        };
        let solo = first.solo;
        let mut batch = vec![first];
        let deadline = Instant::now() + settings.max_batch_delay;
        while !solo && batch.len() < settings.batch_size {
            match self.rx.recv_deadline(deadline) {
                Ok(job) if job.solo => {
                    // Kept for the next batch, which it will have to itself.
                    gathering.held = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        Some(batch)
    }
}

/// What running a batch did to the worker.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The engine died or panicked: the worker must restart (TorchServe's "worker died").
    Died,
}

/// One request's answer on its way: a streamed answer switches the request from its one-shot
/// reply to a chunk channel.
struct Answer {
    /// Its wait in the queue, reported with its reply.
    queued: Duration,
    reply: Option<oneshot::Sender<JobResult>>,
    stream: Option<tokio::sync::mpsc::Sender<Chunk>>,
}

/// Chunks a streaming handler may run ahead of a slow client.
const STREAM_BUFFER: usize = 64;

/// How long a streamed answer waits for a client that takes none of its chunks; then the
/// stream is cut, so a reader that stopped reading does not hold the worker.
const STREAM_STALL: Duration = Duration::from_secs(30);

type Chunk = Result<bytes::Bytes, std::io::Error>;

/// Sends a chunk from a worker thread, waiting up to `stall` for room; false when the client
/// is gone or stalled.
fn send_chunk(
    runtime: &tokio::runtime::Handle,
    tx: &tokio::sync::mpsc::Sender<Chunk>,
    chunk: Chunk,
    stall: Duration,
) -> bool {
    runtime.block_on(async {
        matches!(
            tokio::time::timeout(stall, tx.send(chunk)).await,
            Ok(Ok(()))
        )
    })
}

impl Answer {
    fn new(reply: oneshot::Sender<JobResult>, queued: Duration) -> Self {
        Self {
            queued,
            reply: Some(reply),
            stream: None,
        }
    }

    /// Nobody waits for it any more: the client left, or its stream was cut.
    fn abandoned(&self) -> bool {
        match (&self.reply, &self.stream) {
            (Some(reply), _) => reply.is_closed(),
            (None, Some(stream)) => stream.is_closed(),
            (None, None) => true,
        }
    }

    /// A part of a streamed answer (the first starts the stream).
    fn partial(&mut self, runtime: &tokio::runtime::Handle, mut part: Reply) {
        part.queue_time = self.queued;
        if let Some(tx) = &self.stream {
            if !send_chunk(runtime, tx, Ok(part.body), STREAM_STALL) {
                tracing::warn!(
                    "streamed answer cut: its client took no chunk for {STREAM_STALL:?} or left"
                );
                self.stream = None;
            }
        } else if let Some(reply) = self.reply.take() {
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
            let _ = reply.send(Ok(Reply {
                stream: Some(rx),
                ..part
            }));
            self.stream = Some(tx);
        }
    }

    fn finish(&mut self, runtime: &tokio::runtime::Handle, mut last: Reply) {
        last.queue_time = self.queued;
        if let Some(tx) = self.stream.take() {
            send_chunk(runtime, &tx, Ok(last.body), STREAM_STALL);
        } else if let Some(reply) = self.reply.take() {
            let _ = reply.send(Ok(last));
        }
    }

    fn fail(&mut self, runtime: &tokio::runtime::Handle, error: &ServeError) {
        if let Some(tx) = self.stream.take() {
            let failed = std::io::Error::other(error.to_string());
            send_chunk(runtime, &tx, Err(failed), STREAM_STALL);
        } else if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// The jobs of a batch a worker may run: those whose client left are dropped, and those that
/// waited past `client_timeout` answered without running; both count as dropped.
fn admit(
    batch: Vec<Job>,
    client_timeout: Option<Duration>,
    dispatched: Instant,
    stats: &Stats,
) -> Vec<Job> {
    let total = batch.len();
    let live: Vec<Job> = batch
        .into_iter()
        .filter(|j| !j.reply.is_closed())
        .filter_map(|j| match client_timeout {
            Some(limit) if dispatched - j.enqueued > limit => {
                let waited = dispatched - j.enqueued;
                tracing::warn!(
                    waited_ms = waited.as_millis() as u64,
                    "request dropped: it waited longer than clientTimeoutInMills"
                );
                let _ = j.reply.send(Err(ServeError::ClientTimeout {
                    waited_ms: waited.as_millis() as u64,
                    limit_ms: limit.as_millis() as u64,
                }));
                None
            }
            _ => Some(j),
        })
        .collect();
    stats
        .dropped
        .fetch_add((total - live.len()) as u64, Ordering::Relaxed);
    live
}

/// The span a batch runs in: a batch of one runs in its request's span; a larger one in a span
/// that follows all of theirs, so every log line of the engine names the requests it serves.
fn batch_span<'a>(mut spans: impl ExactSizeIterator<Item = &'a tracing::Span>) -> tracing::Span {
    if spans.len() == 1 {
        return spans.next().cloned().unwrap_or_else(tracing::Span::none);
    }
    let span = tracing::debug_span!(target: "ferroserve::serve", "batch", size = spans.len());
    for s in spans {
        span.follows_from(s);
    }
    span
}

/// An engine call's outcome: one reply per request, or the error every request of the batch
/// gets and what the failure means for the worker.
fn settle(
    outcome: std::thread::Result<Result<Vec<Reply>, EngineError>>,
    requests: usize,
) -> Result<Vec<Reply>, (ServeError, Outcome)> {
    match outcome {
        Ok(Ok(replies)) if replies.len() == requests => Ok(replies),
        Ok(Ok(_)) => Err((
            ServeError::PredictionFailed("number of batch response mismatched".into()),
            Outcome::Done,
        )),
        Ok(Err(EngineError::Batch(e))) => Err((e, Outcome::Done)),
        Ok(Err(EngineError::Died(e))) => Err((e, Outcome::Died)),
        Err(_) => {
            tracing::error!("a handler panicked; its batch failed");
            Err((ServeError::WorkerDied, Outcome::Died))
        }
    }
}

/// Runs one batch and answers every job in it; `client_timeout` answers the jobs that waited
/// longer than it without running them.
pub fn run_batch(
    engine: &mut dyn Engine,
    batch: Vec<Job>,
    client_timeout: Option<Duration>,
    stats: &Stats,
    metrics: &crate::metrics::VersionMetrics,
    runtime: &tokio::runtime::Handle,
) -> Outcome {
    let dispatched = Instant::now();
    let live = admit(batch, client_timeout, dispatched, stats);
    if live.is_empty() {
        return Outcome::Done;
    }
    let span = batch_span(live.iter().map(|j| &j.span));
    let _entered = span.enter();
    let (inputs, mut answers): (Vec<Prepared>, Vec<Answer>) = live
        .into_iter()
        .map(|j| (j.input, Answer::new(j.reply, dispatched - j.enqueued)))
        .unzip();
    let size = inputs.len();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.requests.fetch_add(size as u64, Ordering::Relaxed);
    let engine_start = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        engine.infer(inputs, &mut |i, part| answers[i].partial(runtime, part))
    }));
    let engine_time = engine_start.elapsed();
    let settled = settle(outcome, size);
    {
        // The batch's metric lines in one write per file, on disk before the answers go.
        let _lines = crate::logging::hold_lines();
        metrics.batch(
            size,
            engine_time,
            dispatched.elapsed().saturating_sub(engine_time),
        );
        if settled.is_ok() && !engine.reports_handler_time() {
            metrics.handler_time(engine_time);
        }
    }
    let (error, result) = match settled {
        Ok(replies) => {
            for (answer, reply) in answers.iter_mut().zip(replies) {
                answer.finish(runtime, reply);
            }
            return Outcome::Done;
        }
        Err(failed) => failed,
    };
    stats.failed_batches.fetch_add(1, Ordering::Relaxed);
    for answer in &mut answers {
        answer.fail(runtime, &error);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that stops reading holds the worker for `stall` at most; one that left, not at all.
    #[test]
    fn a_chunk_waits_for_room_only_so_long() {
        // A multi-threaded runtime drives its timers itself (a current-thread one only
        // inside its own block_on).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let rt = runtime.handle();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(1);
        let stall = Duration::from_millis(50);
        assert!(send_chunk(rt, &tx, Ok("a".into()), stall));
        assert!(
            !send_chunk(rt, &tx, Ok("b".into()), stall),
            "the channel is full"
        );
        // Room again: the chunk goes through.
        assert_eq!(rx.try_recv().unwrap().unwrap(), "a");
        assert!(send_chunk(rt, &tx, Ok("c".into()), stall));
        drop(rx);
        // A closed stream fails at once: waiting out this stall would outlast the deadline.
        let (done, finished) = std::sync::mpsc::channel();
        let rt = rt.clone();
        std::thread::spawn(move || {
            let _ = done.send(send_chunk(
                &rt,
                &tx,
                Ok("d".into()),
                Duration::from_secs(3600),
            ));
        });
        let sent = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("a chunk for a closed stream waited for room");
        assert!(!sent);
    }
}
