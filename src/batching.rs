//! Per model-version job queue and batch aggregation.
//!
//! The queue is bounded (`job_queue_size`): a full queue refuses at once instead of buffering.
//! Workers of one model version share the queue; the one holding the receiver assembles a batch
//! (as TorchServe's model-wide lock does): the first job blocks, then up to `batch_size - 1`
//! more are taken until `max_batch_delay` after the first was taken. A batch of one never waits.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::handler::{Engine, EngineError, Prepared, Reply};

pub type JobResult = Result<Reply, ApiError>;

/// How often an idle worker looks up from the queue to see whether it was told to stop.
const STOP_POLL: Duration = Duration::from_millis(100);

pub struct Job {
    pub input: Prepared,
    pub reply: oneshot::Sender<JobResult>,
    /// Runs in a batch of its own (TorchServe's DESCRIBE requests are never merged).
    pub solo: bool,
    /// When it was queued.
    pub enqueued: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub batch_size: usize,
    pub max_batch_delay: Duration,
}

/// Why a job was not queued.
pub enum SubmitError {
    Full,
    Closed,
}

/// Counters of what a model version's workers did.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    /// Requests whose client left before a worker reached them.
    pub dropped: AtomicU64,
    pub failed_batches: AtomicU64,
}

/// The receiving side, shared by the workers of one model version.
pub struct Intake {
    rx: Mutex<Receiver<Job>>,
    pending: AtomicUsize,
    /// A solo job met while a batch was being gathered: it starts the next batch.
    held: Mutex<Option<Job>>,
}

pub struct JobQueue {
    tx: SyncSender<Job>,
    intake: Arc<Intake>,
    capacity: usize,
}

/// The most jobs one queue holds. The channel allocates every slot up front, so an archive's
/// `jobQueueSize` of a trillion would abort the process.
pub const MAX_QUEUE_SIZE: usize = 100_000;

impl JobQueue {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(MAX_QUEUE_SIZE);
        let (tx, rx) = mpsc::sync_channel(capacity);
        Self {
            tx,
            intake: Arc::new(Intake {
                rx: Mutex::new(rx),
                pending: AtomicUsize::new(0),
                held: Mutex::new(None),
            }),
            capacity,
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.intake.pending.fetch_add(1, Ordering::SeqCst);
        self.tx.try_send(job).map_err(|e| {
            self.intake.pending.fetch_sub(1, Ordering::SeqCst);
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
}

impl Intake {
    /// Blocks for the first job, then gathers more within the delay. `None` when the queue
    /// closed or `stop` was raised while waiting.
    pub fn next_batch(&self, settings: BatchSettings, stop: &AtomicBool) -> Option<Vec<Job>> {
        let rx = self.rx.lock().ok()?;
        let held = self.held.lock().ok()?.take();
        let first = match held {
            Some(job) => job,
            None => loop {
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
                match rx.recv_timeout(STOP_POLL) {
                    Ok(job) => break job,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return None,
                }
            },
        };
        let solo = first.solo;
        let mut batch = vec![first];
        let deadline = Instant::now() + settings.max_batch_delay;
        while !solo && batch.len() < settings.batch_size {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(job) if job.solo => {
                    // Kept for the next batch, which it will have to itself.
                    *self.held.lock().ok()? = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        drop(rx);
        self.pending.fetch_sub(batch.len(), Ordering::SeqCst);
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

/// Answers of one batch on their way to the waiting requests; a streamed answer switches a
/// request from its one-shot reply to a chunk channel.
struct Delivery {
    /// Each request's wait in the queue, reported with its reply.
    queued: Vec<Duration>,
    replies: Vec<Option<oneshot::Sender<JobResult>>>,
    streams: Vec<Option<tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>>>,
}

/// Chunks a streaming handler may run ahead of a slow client.
const STREAM_BUFFER: usize = 64;

/// How long a streamed answer waits for a client that takes none of its chunks; then the
/// stream is cut, so a reader that stopped reading does not hold the worker.
const STREAM_STALL: Duration = Duration::from_secs(30);

type Chunk = Result<bytes::Bytes, std::io::Error>;

/// Sends a chunk, waiting up to `stall` for room; false when the client is gone or stalled.
fn send_chunk(tx: &tokio::sync::mpsc::Sender<Chunk>, chunk: Chunk, stall: Duration) -> bool {
    use tokio::sync::mpsc::error::TrySendError;
    let deadline = Instant::now() + stall;
    let mut chunk = chunk;
    loop {
        match tx.try_send(chunk) {
            Ok(()) => return true,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(_)) if Instant::now() >= deadline => return false,
            Err(TrySendError::Full(back)) => {
                chunk = back;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

impl Delivery {
    fn partial(&mut self, i: usize, mut part: Reply) {
        part.queue_time = self.queued[i];
        if let Some(tx) = &self.streams[i] {
            if !send_chunk(tx, Ok(part.body), STREAM_STALL) {
                tracing::warn!(
                    "streamed answer cut: its client took no chunk for {STREAM_STALL:?} or left"
                );
                self.streams[i] = None;
            }
        } else if let Some(reply) = self.replies[i].take() {
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
            let _ = reply.send(Ok(Reply {
                stream: Some(rx),
                ..part
            }));
            self.streams[i] = Some(tx);
        }
    }

    fn finish(&mut self, i: usize, mut last: Reply) {
        last.queue_time = self.queued[i];
        if let Some(tx) = self.streams[i].take() {
            send_chunk(&tx, Ok(last.body), STREAM_STALL);
        } else if let Some(reply) = self.replies[i].take() {
            let _ = reply.send(Ok(last));
        }
    }

    fn fail(&mut self, error: &ApiError) {
        for (reply, stream) in self.replies.iter_mut().zip(self.streams.iter_mut()) {
            if let Some(tx) = stream.take() {
                let failed = std::io::Error::other(error.message.clone());
                send_chunk(&tx, Err(failed), STREAM_STALL);
            } else if let Some(reply) = reply.take() {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Runs one batch and answers every job in it.
pub fn run_batch(
    engine: &mut dyn Engine,
    batch: Vec<Job>,
    stats: &Stats,
    metrics: &crate::metrics::VersionMetrics,
) -> Outcome {
    let total = batch.len();
    let dispatched = Instant::now();
    // Requests whose client went away are dropped before they reach the model.
    let live: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    let queued = live.iter().map(|j| dispatched - j.enqueued).collect();
    let (inputs, replies): (Vec<Prepared>, Vec<Option<oneshot::Sender<JobResult>>>) =
        live.into_iter().map(|j| (j.input, Some(j.reply))).unzip();
    stats
        .dropped
        .fetch_add((total - inputs.len()) as u64, Ordering::Relaxed);
    if inputs.is_empty() {
        return Outcome::Done;
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .requests
        .fetch_add(inputs.len() as u64, Ordering::Relaxed);
    let mut delivery = Delivery {
        queued,
        streams: (0..replies.len()).map(|_| None).collect(),
        replies,
    };
    let engine_start = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        engine.infer(&inputs, &mut |i, part| delivery.partial(i, part))
    }));
    let engine_time = engine_start.elapsed();
    metrics.batch(
        inputs.len(),
        engine_time,
        dispatched.elapsed().saturating_sub(engine_time),
    );
    let (error, result) = match outcome {
        Ok(Ok(answers)) if answers.len() == inputs.len() => {
            for (i, answer) in answers.into_iter().enumerate() {
                delivery.finish(i, answer);
            }
            return Outcome::Done;
        }
        Ok(Ok(_)) => (
            ApiError::internal(503, "number of batch response mismatched"),
            Outcome::Done,
        ),
        Ok(Err(EngineError::Batch(e))) => (e, Outcome::Done),
        Ok(Err(EngineError::Died(e))) => (e, Outcome::Died),
        Err(_) => {
            tracing::error!("a handler panicked; the batch failed");
            (ApiError::internal(500, "Worker died."), Outcome::Died)
        }
    };
    stats.failed_batches.fetch_add(1, Ordering::Relaxed);
    delivery.fail(&error);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that stops reading holds the worker for `stall` at most; one that left, not at all.
    #[test]
    fn a_chunk_waits_for_room_only_so_long() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(1);
        let stall = Duration::from_millis(50);
        assert!(send_chunk(&tx, Ok("a".into()), stall));
        assert!(
            !send_chunk(&tx, Ok("b".into()), stall),
            "the channel is full"
        );
        // Room again: the chunk goes through.
        assert_eq!(rx.try_recv().unwrap().unwrap(), "a");
        assert!(send_chunk(&tx, Ok("c".into()), stall));
        drop(rx);
        // A closed stream fails at once: waiting out this stall would outlast the deadline.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(send_chunk(&tx, Ok("d".into()), Duration::from_secs(3600)));
        });
        let sent = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("a chunk for a closed stream waited for room");
        assert!(!sent);
    }
}
