//! Per model-version job queue and batch aggregation, drained by worker threads.
//!
//! The queue is bounded (`job_queue_size`): a full queue refuses at once instead of buffering.
//! Workers of one model version share the queue; the one holding the receiver assembles a batch
//! (as TorchServe's model-wide lock does): the first job blocks, then up to `batch_size - 1`
//! more are taken until `max_batch_delay` after the first was taken.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::handler::{NativeHandler, Prepared, Reply};

pub type JobResult = Result<Reply, ApiError>;

pub struct Job {
    pub input: Prepared,
    pub reply: oneshot::Sender<JobResult>,
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

pub struct JobQueue {
    tx: SyncSender<Job>,
    rx: Arc<Mutex<Receiver<Job>>>,
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

impl JobQueue {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel(capacity);
        Self {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            pending: Arc::new(AtomicUsize::new(0)),
            capacity,
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.tx.try_send(job).map_err(|e| {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => SubmitError::Full,
                TrySendError::Disconnected(_) => SubmitError::Closed,
            }
        })
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A worker: a dedicated OS thread running batches through the shared handler.
pub struct Worker {
    pub id: u32,
    pub started: chrono::DateTime<chrono::Local>,
    alive: Arc<AtomicBool>,
    _thread: std::thread::JoinHandle<()>,
}

impl Worker {
    pub fn spawn(
        id: u32,
        label: &str,
        queue: &JobQueue,
        handler: Arc<dyn NativeHandler>,
        settings: BatchSettings,
    ) -> std::io::Result<Self> {
        let rx = queue.rx.clone();
        let pending = queue.pending.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let alive_in = alive.clone();
        let thread = std::thread::Builder::new()
            .name(format!("W-{id}-{label}"))
            .spawn(move || {
                while let Some(batch) = next_batch(&rx, &pending, settings) {
                    run_batch(handler.as_ref(), batch);
                }
                alive_in.store(false, Ordering::SeqCst);
            })?;
        Ok(Self {
            id,
            started: chrono::Local::now(),
            alive,
            _thread: thread,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// Blocks for the first job, then gathers more within the delay. `None` when the queue closed.
fn next_batch(
    rx: &Mutex<Receiver<Job>>,
    pending: &AtomicUsize,
    settings: BatchSettings,
) -> Option<Vec<Job>> {
    let rx = rx.lock().ok()?;
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    let deadline = Instant::now() + settings.max_batch_delay;
    while batch.len() < settings.batch_size {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(rx);
    pending.fetch_sub(batch.len(), Ordering::SeqCst);
    Some(batch)
}

fn run_batch(handler: &dyn NativeHandler, batch: Vec<Job>) {
    // Requests whose client went away are dropped before they reach the model.
    let (inputs, replies): (Vec<Prepared>, Vec<oneshot::Sender<JobResult>>) = batch
        .into_iter()
        .filter(|j| !j.reply.is_closed())
        .map(|j| (j.input, j.reply))
        .unzip();
    if inputs.is_empty() {
        return;
    }
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| handler.infer(&inputs)));
    let result = match outcome {
        Ok(Ok(answers)) if answers.len() == replies.len() => {
            for (tx, answer) in replies.into_iter().zip(answers) {
                let _ = tx.send(Ok(answer));
            }
            return;
        }
        Ok(Ok(_)) => ApiError::internal(503, "number of batch response mismatched"),
        Ok(Err(e)) => e,
        Err(_) => {
            tracing::error!("a native handler panicked; the batch failed");
            ApiError::internal(500, "Worker died.")
        }
    };
    for tx in replies {
        let _ = tx.send(Err(result.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use std::sync::Mutex as StdMutex;

    /// Records batch sizes; answers each request with its own first value, or misbehaves.
    struct Recorder {
        sizes: StdMutex<Vec<usize>>,
        mode: &'static str,
    }

    impl NativeHandler for Recorder {
        fn preprocess(&self, _: &crate::handler::RequestInput) -> Result<Prepared, ApiError> {
            unreachable!("jobs are queued already prepared")
        }
        fn infer(&self, batch: &[Prepared]) -> Result<Vec<Reply>, ApiError> {
            self.sizes.lock().unwrap().push(batch.len());
            match self.mode {
                "panic" => panic!("boom"),
                "short" => Ok(Vec::new()),
                _ => Ok(batch
                    .iter()
                    .map(|p| Reply {
                        status: 200,
                        content_type: None,
                        headers: Vec::new(),
                        body: bytes::Bytes::from(p.tensor[0].to_string()),
                    })
                    .collect()),
            }
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }

    fn run(mode: &'static str, jobs: usize, batch_size: usize) -> (Vec<usize>, Vec<JobResult>) {
        let queue = JobQueue::new(100);
        let handler = Arc::new(Recorder {
            sizes: StdMutex::new(Vec::new()),
            mode,
        });
        let mut receivers = Vec::new();
        for i in 0..jobs {
            let (tx, rx) = oneshot::channel();
            let input = Prepared {
                tensor: vec![i as f32],
                topk: 1,
            };
            assert!(queue.submit(Job { input, reply: tx }).is_ok());
            receivers.push(rx);
        }
        assert_eq!(queue.pending(), jobs);
        let settings = BatchSettings {
            batch_size,
            max_batch_delay: Duration::from_millis(50),
        };
        let _worker = Worker::spawn(1, "t", &queue, handler.clone(), settings).unwrap();
        let results: Vec<JobResult> = receivers
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect();
        assert_eq!(queue.pending(), 0);
        let sizes = handler.sizes.lock().unwrap().clone();
        (sizes, results)
    }

    #[test]
    fn batches_are_cut_at_batch_size_and_answers_keep_order() {
        let (sizes, results) = run("ok", 10, 4);
        assert_eq!(sizes, vec![4, 4, 2]);
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap().body, bytes::Bytes::from(i.to_string()));
        }
    }

    #[test]
    fn a_wrong_answer_count_or_a_panic_fails_only_that_batch() {
        let (_, results) = run("short", 2, 2);
        for r in results {
            assert_eq!(
                r.unwrap_err().message,
                "number of batch response mismatched"
            );
        }
        let (sizes, results) = run("panic", 3, 2);
        assert_eq!(
            sizes,
            vec![2, 1],
            "the worker survives a panic and takes the next batch"
        );
        for r in results {
            assert_eq!(r.unwrap_err().message, "Worker died.");
        }
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let queue = JobQueue::new(1);
        let job = || Job {
            input: Prepared {
                tensor: vec![0.0],
                topk: 1,
            },
            reply: oneshot::channel().0,
        };
        assert!(queue.submit(job()).is_ok());
        assert!(matches!(queue.submit(job()), Err(SubmitError::Full)));
        assert_eq!(queue.pending(), 1);
    }
}
