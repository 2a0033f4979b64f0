//! Workers and worker pools. A worker is a dedicated OS thread with an engine from the model
//! version's handler: for native models a view of the one loaded model (weights are never
//! copied per worker), for Python handlers its own worker process. All share the queue.
//!
//! Lifecycle, as TorchServe's: a worker whose engine dies (process exit, broken protocol,
//! panic) fails its batch with "Worker died.", waits out TorchServe's back-off and starts a new
//! engine; one failing for longer than `maxRetryTimeoutInSec` stays dead. A worker stuck past
//! the response timeout is abandoned (it exits when its call returns) and replaced, so the
//! queue keeps moving. Retiring a worker (scale down) lets it finish its batch first.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::batching::{run_batch, BatchSettings, Intake, Outcome, Stats};
use crate::handler::{Engine, Handler};
use crate::signal::Signal;

/// The most workers one model version runs: each is a thread, a Python worker a process too,
/// and `min_worker=100000000` must not exhaust the machine.
pub const MAX_WORKERS: usize = 256;

/// TorchServe's restart back-off in seconds; the index moves up before each wait.
const BACK_OFF: [u64; 18] = [
    0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Starting its engine (a Python worker loads its model).
    Starting = 5,
    Ready = 0,
    /// Waiting out the back-off after a failure.
    BackingOff = 1,
    /// Told to stop; finishing its current batch.
    Retiring = 2,
    /// Failed for longer than `maxRetryTimeoutInSec`.
    Dead = 3,
    Exited = 4,
}

impl WorkerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ready,
            1 => Self::BackingOff,
            2 => Self::Retiring,
            3 => Self::Dead,
            5 => Self::Starting,
            _ => Self::Exited,
        }
    }
}

/// What a worker thread and its pool share.
struct Shared {
    stop: AtomicBool,
    state: AtomicU8,
    /// Milliseconds since `epoch` when the current batch started; 0 when idle.
    busy_since_ms: AtomicU64,
    epoch: Instant,
    failing_since: Mutex<Option<Instant>>,
    restarts: AtomicU64,
    /// The process serving this worker (this one for native workers); 0 before it started.
    pid: std::sync::atomic::AtomicU32,
    /// The pool's signal: told of every state change.
    changed: Arc<Signal>,
}

impl WorkerState {
    fn running(self) -> bool {
        matches!(self, Self::Starting | Self::Ready | Self::BackingOff)
    }

    /// The worker thread and the pool change the state concurrently: a stop must not be
    /// undone by the thread's next step, nor an exit by a late stop (the pool would then
    /// wait for an exit that already happened).
    fn may_become(self, next: Self) -> bool {
        match next {
            Self::Starting | Self::Ready | Self::BackingOff | Self::Retiring => self.running(),
            Self::Dead => self != Self::Exited,
            Self::Exited => self != Self::Dead,
        }
    }
}

impl Shared {
    fn new(changed: Arc<Signal>) -> Self {
        Self {
            stop: AtomicBool::new(false),
            state: AtomicU8::new(WorkerState::Starting as u8),
            busy_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            failing_since: Mutex::new(None),
            restarts: AtomicU64::new(0),
            pid: std::sync::atomic::AtomicU32::new(0),
            changed,
        }
    }

    fn set(&self, state: WorkerState) {
        let changed = self
            .state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                WorkerState::from_u8(now)
                    .may_become(state)
                    .then_some(state as u8)
            })
            .is_ok();
        if changed {
            self.changed.notify();
        }
    }

    fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state.load(Ordering::SeqCst))
    }

    fn busy_for(&self) -> Option<Duration> {
        match self.busy_since_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

pub struct Worker {
    pub id: u32,
    pub started: chrono::DateTime<chrono::Local>,
    shared: Arc<Shared>,
    /// Dropped to stop the worker: its thread wakes from any wait at once.
    stop: Mutex<Option<Sender<()>>>,
}

/// How a pool's workers run.
#[derive(Clone)]
pub struct WorkerConfig {
    pub label: String,
    pub batch: BatchSettings,
    /// `continuousBatching`: the workers serve rounds of streaming requests.
    pub continuous: bool,
    pub max_retry: Duration,
    /// `startupTimeout`: a worker whose start takes longer has failed to start (as in
    /// TorchServe, where 0 fails every start).
    pub startup_timeout: Duration,
    /// The model version's metric handles (batch sizes, load times, restarts).
    pub metrics: Arc<crate::metrics::VersionMetrics>,
    /// The runtime whose timers bound a streamed answer's waits.
    pub runtime: tokio::runtime::Handle,
}

impl Worker {
    fn spawn(
        id: u32,
        config: &WorkerConfig,
        intake: Arc<Intake>,
        handler: Arc<dyn Handler>,
        stats: Arc<Stats>,
        changed: Arc<Signal>,
    ) -> std::io::Result<Self> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let shared = Arc::new(Shared::new(changed));
        let s = shared.clone();
        let cfg = config.clone();
        std::thread::Builder::new()
            .name(format!("W-{id}-{}", config.label))
            .spawn(move || {
                serve(id, &s, &cfg, &intake, handler, &stats, &stop_rx);
                intake.leave(id);
                s.set(WorkerState::Exited);
            })?;
        Ok(Self {
            id,
            started: chrono::Local::now(),
            shared,
            stop: Mutex::new(Some(stop_tx)),
        })
    }

    pub fn state(&self) -> WorkerState {
        self.shared.state()
    }

    /// Counts for `/ping`: starting, running or backing off, and not failing for too long.
    pub fn is_healthy(&self, max_retry: Duration) -> bool {
        let failing_too_long = self
            .shared
            .failing_since
            .lock()
            .map(|f| f.is_some_and(|t| t.elapsed() > max_retry))
            .unwrap_or(true);
        matches!(
            self.state(),
            WorkerState::Starting | WorkerState::Ready | WorkerState::BackingOff
        ) && !failing_too_long
    }

    /// TorchServe's describe status: READY only while serving.
    pub fn status(&self) -> &'static str {
        match self.state() {
            WorkerState::Ready => "READY",
            _ => "UNLOADING",
        }
    }

    /// The process serving the worker, once it started (TorchServe shows -1 before).
    pub fn pid(&self) -> Option<u32> {
        match self.shared.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    fn retire(&self) {
        self.shared.set(WorkerState::Retiring);
        self.shared.stop.store(true, Ordering::SeqCst);
        self.stop.lock().expect("worker lock").take();
    }

    fn running(&self) -> bool {
        self.state().running()
    }
}

/// The worker thread's loop: start an engine, serve batches until it dies, back off, repeat.
fn serve(
    id: u32,
    s: &Shared,
    cfg: &WorkerConfig,
    intake: &Intake,
    handler: Arc<dyn Handler>,
    stats: &Stats,
    stop: &Receiver<()>,
) {
    let mut backoff = 0usize;
    loop {
        s.set(WorkerState::Starting);
        let attempt = Instant::now();
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler.clone().start_worker(id)
        }))
        .unwrap_or_else(|_| Err("the handler panicked while starting".into()));
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let started = started.and_then(|engine| {
            if attempt.elapsed() > cfg.startup_timeout {
                return Err(format!(
                    "Backend worker did not respond in given time (startupTimeout {} s)",
                    cfg.startup_timeout.as_secs()
                ));
            }
            Ok(engine)
        });
        match started {
            Ok(mut engine) => {
                // A successful start resets TorchServe's back-off and failure window.
                backoff = 0;
                *s.failing_since.lock().expect("worker lock") = None;
                // A native worker is a thread of this process.
                let pid = engine.pid().unwrap_or_else(std::process::id);
                s.pid.store(pid, Ordering::SeqCst);
                s.set(WorkerState::Ready);
                // This thread carries the worker's name (`W-<id>-<model>_<version>`).
                let name = std::thread::current()
                    .name()
                    .unwrap_or_default()
                    .to_string();
                cfg.metrics.worker_loaded(&name, attempt.elapsed());
                if !serve_batches(id, s, cfg, intake, engine.as_mut(), stats, stop) {
                    return;
                }
                tracing::warn!(worker = %cfg.label, id, "worker died");
            }
            Err(reason) => {
                tracing::error!(worker = %cfg.label, id, "worker failed to start: {reason}");
            }
        }
        // The engine died or could not start: back off, or give up past maxRetryTimeoutInSec.
        s.restarts.fetch_add(1, Ordering::SeqCst);
        cfg.metrics.worker_restarted();
        let since = *s
            .failing_since
            .lock()
            .expect("worker lock")
            .get_or_insert_with(Instant::now);
        if since.elapsed() > cfg.max_retry {
            tracing::error!(worker = %cfg.label, id, "worker failed for longer than maxRetryTimeoutInSec; it stays down");
            s.set(WorkerState::Dead);
            return;
        }
        backoff = (backoff + 1).min(BACK_OFF.len() - 1);
        let wait = Duration::from_secs(BACK_OFF[backoff]);
        tracing::warn!(worker = %cfg.label, id, ?wait, "restarting worker after back-off");
        s.set(WorkerState::BackingOff);
        // Only a stop ends the wait early: the sender is dropped, never used.
        if let Err(RecvTimeoutError::Disconnected) = stop.recv_timeout(wait) {
            return;
        }
    }
}

/// Serves batches until the engine dies (`true`) or the worker is told to stop (`false`).
fn serve_batches(
    id: u32,
    s: &Shared,
    cfg: &WorkerConfig,
    intake: &Intake,
    engine: &mut dyn Engine,
    stats: &Stats,
    stop: &Receiver<()>,
) -> bool {
    if cfg.continuous {
        let outcome = crate::batching::continuous::serve(
            engine,
            intake,
            id,
            cfg.batch,
            stop,
            stats,
            &cfg.metrics,
            &cfg.runtime,
        );
        return outcome == Outcome::Died && !s.stop.load(Ordering::SeqCst);
    }
    while let Some(batch) = intake.next_batch(id, cfg.batch, stop) {
        let started = s.epoch.elapsed().as_millis().max(1) as u64;
        s.busy_since_ms.store(started, Ordering::SeqCst);
        let outcome = run_batch(
            engine,
            batch,
            cfg.batch.client_timeout,
            stats,
            &cfg.metrics,
            &cfg.runtime,
        );
        s.busy_since_ms.store(0, Ordering::SeqCst);
        if s.stop.load(Ordering::SeqCst) {
            return false;
        }
        if outcome == Outcome::Died {
            return true;
        }
    }
    false
}

/// The workers of one model version.
pub struct WorkerPool {
    config: WorkerConfig,
    intake: Arc<Intake>,
    handler: Arc<dyn Handler>,
    stats: Arc<Stats>,
    workers: Mutex<Vec<Worker>>,
    /// (min, max) workers.
    limits: Mutex<(usize, usize)>,
    changed: Arc<Signal>,
}

impl WorkerPool {
    pub fn new(
        config: WorkerConfig,
        intake: Arc<Intake>,
        handler: Arc<dyn Handler>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            config,
            intake,
            handler,
            stats,
            workers: Mutex::new(Vec::new()),
            limits: Mutex::new((0, 0)),
            changed: Default::default(),
        }
    }

    pub fn limits(&self) -> (usize, usize) {
        *self.limits.lock().expect("pool lock")
    }

    /// Starts or retires workers so that `min` run; retired workers finish their batch.
    /// `next_id` hands out worker ids (TorchServe's port-like numbering).
    pub fn scale(&self, min: usize, max: usize, next_id: &dyn Fn() -> u32) -> std::io::Result<()> {
        if min > MAX_WORKERS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{min} workers asked, more than the {MAX_WORKERS} a model version may run"),
            ));
        }
        *self.limits.lock().expect("pool lock") = (min, max.clamp(min, MAX_WORKERS));
        let mut workers = self.workers.lock().expect("pool lock");
        workers.retain(|w| w.state() != WorkerState::Exited);
        let mut running: Vec<&Worker> = workers.iter().filter(|w| w.running()).collect();
        // Highest ids go first, as TorchServe removes its newest threads.
        running.sort_by_key(|w| std::cmp::Reverse(w.id));
        let excess = running.len().saturating_sub(min);
        for w in running.into_iter().take(excess) {
            w.retire();
        }
        let have = workers.iter().filter(|w| w.running()).count();
        for _ in have..min {
            workers.push(Worker::spawn(
                next_id(),
                &self.config,
                self.intake.clone(),
                self.handler.clone(),
                self.stats.clone(),
                self.changed.clone(),
            )?);
        }
        Ok(())
    }

    /// Abandons workers busy for longer than `timeout` and starts replacements.
    pub fn replace_stuck(&self, timeout: Duration, next_id: &dyn Fn() -> u32) {
        let stuck: Vec<u32> = {
            let workers = self.workers.lock().expect("pool lock");
            workers
                .iter()
                .filter(|w| w.running() && w.shared.busy_for().is_some_and(|b| b > timeout))
                .map(|w| {
                    w.retire();
                    w.id
                })
                .collect()
        };
        if !stuck.is_empty() {
            tracing::warn!(worker = %self.config.label, ?stuck, ?timeout, "workers stuck past the response timeout were abandoned");
            let (min, max) = self.limits();
            if let Err(e) = self.scale(min, max, next_id) {
                tracing::error!(worker = %self.config.label, "cannot start replacement workers: {e}");
            }
        }
    }

    /// Waits until no worker is still starting (or `timeout` passed); true when none is.
    pub fn wait_started(&self, timeout: Duration) -> bool {
        self.changed.wait_until(Instant::now() + timeout, || {
            self.with_workers(|w| {
                !w.iter().any(|w| {
                    w.state() == WorkerState::Starting && !w.shared.stop.load(Ordering::SeqCst)
                })
            })
        })
    }

    /// Waits until every worker's thread is done (or `deadline` passed); true when all are.
    pub fn wait_exited(&self, deadline: Instant) -> bool {
        self.changed.wait_until(deadline, || {
            self.with_workers(|w| {
                w.iter()
                    .all(|w| matches!(w.state(), WorkerState::Exited | WorkerState::Dead))
            })
        })
    }

    pub fn healthy(&self) -> usize {
        let workers = self.workers.lock().expect("pool lock");
        workers
            .iter()
            .filter(|w| w.is_healthy(self.config.max_retry))
            .count()
    }

    pub fn ready(&self) -> usize {
        let workers = self.workers.lock().expect("pool lock");
        workers
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .count()
    }

    /// Workers that exist (any state but exited), for describe.
    pub fn with_workers<T>(&self, f: impl FnOnce(&[Worker]) -> T) -> T {
        let workers = self.workers.lock().expect("pool lock");
        f(&workers)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn has_workers(&self) -> bool {
        self.with_workers(|w| w.iter().any(|w| w.running()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batching::{Job, JobQueue, JobResult, SubmitError};
    use crate::device::Device;
    use crate::error::ServeError;
    use crate::handler::{EngineError, Prepared, Reply};
    use std::sync::atomic::AtomicU32;
    use tokio::sync::oneshot;

    /// Records batch sizes; answers each request with its own first value, or misbehaves.
    /// A batch led by a negative value is held until the test opens the gate.
    struct Recorder {
        sizes: Mutex<Vec<usize>>,
        mode: &'static str,
        held: AtomicU32,
        gate: (Mutex<bool>, std::sync::Condvar),
    }

    impl Recorder {
        fn open(&self) {
            *self.gate.0.lock().unwrap() = true;
            self.gate.1.notify_all();
        }
    }

    /// A worker's state as its thread and its pool race to change it.
    fn shared() -> Shared {
        Shared::new(Default::default())
    }

    #[test]
    fn a_late_stop_does_not_undo_an_exit_nor_a_thread_step_a_stop() {
        let s = shared();
        s.set(WorkerState::Ready);
        s.set(WorkerState::Exited);
        s.set(WorkerState::Retiring);
        assert_eq!(s.state(), WorkerState::Exited);

        let s = shared();
        s.set(WorkerState::Retiring);
        s.set(WorkerState::Ready);
        s.set(WorkerState::BackingOff);
        assert_eq!(s.state(), WorkerState::Retiring);
        s.set(WorkerState::Exited);
        assert_eq!(s.state(), WorkerState::Exited);

        let s = shared();
        s.set(WorkerState::Dead);
        s.set(WorkerState::Retiring);
        s.set(WorkerState::Exited);
        assert_eq!(s.state(), WorkerState::Dead);
    }

    /// Waits until `f` holds; fails after a minute.
    fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn value(p: &Prepared) -> f32 {
        match p {
            Prepared::Tensor { tensor, .. } => tensor[0],
            _ => unreachable!(),
        }
    }

    impl Handler for Recorder {
        fn prepare(&self, _: crate::handler::RequestInput) -> Result<Prepared, ServeError> {
            unreachable!("jobs are queued already prepared")
        }
        fn start_worker(self: Arc<Self>, _: u32) -> Result<Box<dyn Engine>, String> {
            Ok(Box::new(RecorderEngine(self)))
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }

    struct RecorderEngine(Arc<Recorder>);

    impl Engine for RecorderEngine {
        fn infer(
            &mut self,
            batch: Vec<Prepared>,
            _partial: &mut dyn FnMut(usize, Reply),
        ) -> Result<Vec<Reply>, EngineError> {
            self.0.sizes.lock().unwrap().push(batch.len());
            if value(&batch[0]) < 0.0 {
                self.0.held.fetch_add(1, Ordering::SeqCst);
                let (open, opened) = &self.0.gate;
                let _open = opened
                    .wait_while(open.lock().unwrap(), |open| !*open)
                    .unwrap();
            }
            match self.0.mode {
                "panic" => panic!("boom"),
                "short" => Ok(Vec::new()),
                _ => Ok(batch
                    .iter()
                    .map(|p| Reply::new(200, None, Vec::new(), value(p).to_string().into()))
                    .collect()),
            }
        }
    }

    struct Harness {
        _runtime: tokio::runtime::Runtime,
        queue: JobQueue,
        pool: WorkerPool,
        handler: Arc<Recorder>,
        ids: AtomicU32,
    }

    impl Harness {
        fn new(mode: &'static str, batch_size: usize) -> Self {
            Self::with_retry(mode, batch_size, Duration::from_secs(300))
        }

        fn with_retry(mode: &'static str, batch_size: usize, max_retry: Duration) -> Self {
            let queue = JobQueue::new(100);
            let handler = Arc::new(Recorder {
                sizes: Mutex::new(Vec::new()),
                mode,
                held: AtomicU32::new(0),
                gate: Default::default(),
            });
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_time()
                .build()
                .unwrap();
            let config = WorkerConfig {
                runtime: runtime.handle().clone(),
                label: "t".into(),
                batch: BatchSettings {
                    batch_size,
                    max_batch_delay: Duration::from_millis(50),
                    client_timeout: None,
                },
                continuous: false,
                max_retry,
                startup_timeout: Duration::from_secs(120),
                metrics: Arc::new(crate::metrics::Metrics::with_defaults(
                    crate::metrics::Mode::Prometheus,
                ))
                .version("t", "1.0"),
            };
            let pool = WorkerPool::new(
                config,
                queue.intake(),
                handler.clone(),
                Arc::new(Stats::default()),
            );
            Self {
                _runtime: runtime,
                queue,
                pool,
                handler,
                ids: AtomicU32::new(9000),
            }
        }

        fn scale(&self, n: usize) {
            self.pool
                .scale(n, n, &|| self.ids.fetch_add(1, Ordering::SeqCst))
                .unwrap();
            assert!(self.pool.wait_started(Duration::from_secs(5)));
        }

        fn submit(
            &self,
            values: impl IntoIterator<Item = f32>,
        ) -> Vec<oneshot::Receiver<JobResult>> {
            values
                .into_iter()
                .map(|v| {
                    let (tx, rx) = oneshot::channel();
                    let input = Prepared::Tensor {
                        tensor: vec![v],
                        topk: 1,
                    };
                    assert!(self
                        .queue
                        .submit(Job {
                            input,
                            reply: tx,
                            solo: v == 99.0,
                            enqueued: Instant::now(),
                            span: tracing::Span::none(),
                            sequence: None,
                        })
                        .is_ok());
                    rx
                })
                .collect()
        }
    }

    fn wait_all(rxs: Vec<oneshot::Receiver<JobResult>>) -> Vec<JobResult> {
        rxs.into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect()
    }

    #[test]
    fn batches_are_cut_at_batch_size_and_answers_keep_order() {
        let h = Harness::new("ok", 4);
        let rxs = h.submit((0..10).map(|i| i as f32));
        assert_eq!(h.queue.pending(), 10);
        h.scale(1);
        for (i, r) in wait_all(rxs).into_iter().enumerate() {
            assert_eq!(r.unwrap().body, bytes::Bytes::from(i.to_string()));
        }
        assert_eq!(*h.handler.sizes.lock().unwrap(), vec![4, 4, 2]);
        assert_eq!(h.queue.pending(), 0);
        assert_eq!(h.pool.stats().batches.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_solo_job_is_never_merged() {
        let h = Harness::new("ok", 4);
        let rxs = h.submit([1.0, 99.0, 2.0, 3.0]);
        h.scale(1);
        assert!(wait_all(rxs).iter().all(|r| r.is_ok()));
        assert_eq!(*h.handler.sizes.lock().unwrap(), vec![1, 1, 2]);
    }

    #[test]
    fn a_wrong_answer_count_fails_only_that_batch() {
        let h = Harness::new("short", 2);
        h.scale(1);
        for r in wait_all(h.submit([1.0, 2.0])) {
            assert_eq!(
                r.unwrap_err().to_string(),
                "number of batch response mismatched"
            );
        }
        assert_eq!(h.pool.healthy(), 1);
    }

    #[test]
    fn a_panicking_worker_backs_off_and_serves_again() {
        let h = Harness::new("panic", 1);
        h.scale(1);
        let first = wait_all(h.submit([1.0]));
        assert_eq!(first[0].as_ref().unwrap_err().to_string(), "Worker died.");
        let state = || h.pool.with_workers(|w| w[0].state());
        until("backing off", || state() == WorkerState::BackingOff);
        h.pool.with_workers(|w| {
            assert_eq!(w[0].status(), "UNLOADING");
            assert_eq!(w[0].restarts(), 1);
        });
        assert_eq!(h.pool.healthy(), 1, "backing off still counts as healthy");
        // A job waits in the queue while the worker backs off, and is taken after.
        let second = h.submit([2.0]);
        assert_eq!(h.queue.pending(), 1);
        assert!(wait_all(second)[0].is_err());
        until("a second restart", || {
            h.pool.with_workers(|w| w[0].restarts()) == 2
        });
    }

    #[test]
    fn a_worker_failing_past_max_retry_stays_dead_and_unhealthy() {
        let h = Harness::with_retry("panic", 1, Duration::ZERO);
        h.scale(1);
        assert!(wait_all(h.submit([1.0])).pop().unwrap().is_err());
        until("dead", || {
            h.pool.with_workers(|w| w[0].state()) == WorkerState::Dead
        });
        assert_eq!(
            h.pool.healthy(),
            0,
            "/ping turns Unhealthy below minWorkers"
        );
        assert_eq!(h.pool.ready(), 0);
    }

    #[test]
    fn scaling_down_lets_busy_workers_finish_and_scaling_up_adds_workers() {
        let h = Harness::new("ok", 1);
        h.scale(3);
        assert_eq!(h.pool.ready(), 3);
        // Three held jobs occupy all three workers, then two workers are retired.
        let rxs = h.submit([-1.0, -2.0, -3.0]);
        until("three jobs held", || {
            h.handler.held.load(Ordering::SeqCst) == 3
        });
        h.scale(1);
        h.handler.open();
        for r in wait_all(rxs) {
            assert!(r.is_ok(), "a retired worker finishes its batch");
        }
        let running = || {
            h.pool.with_workers(|w| {
                w.iter()
                    .filter(|w| w.running())
                    .map(|w| w.id)
                    .collect::<Vec<_>>()
            })
        };
        until("the newest workers retired first", || {
            running() == vec![9000]
        });
        h.scale(2);
        assert_eq!(h.pool.ready(), 2);
        assert!(wait_all(h.submit([5.0])).pop().unwrap().is_ok());
    }

    #[test]
    fn stuck_workers_are_replaced() {
        let h = Harness::new("ok", 1);
        h.scale(1);
        let mut slow = h.submit([-1.0]);
        until("the job held", || {
            h.handler.held.load(Ordering::SeqCst) == 1
        });
        until("a replacement worker", || {
            h.pool
                .replace_stuck(Duration::ZERO, &|| h.ids.fetch_add(1, Ordering::SeqCst));
            h.pool.with_workers(|w| w.iter().any(|w| w.id == 9001))
        });
        // The replacement serves while the stuck one is still held.
        assert!(wait_all(h.submit([7.0])).pop().unwrap().is_ok());
        assert!(slow[0].try_recv().is_err(), "the held job is still running");
        h.handler.open();
        assert!(wait_all(slow).pop().unwrap().is_ok());
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let queue = JobQueue::new(1);
        let job = || Job {
            solo: false,
            enqueued: Instant::now(),
            span: tracing::Span::none(),
            sequence: None,
            input: Prepared::Tensor {
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
