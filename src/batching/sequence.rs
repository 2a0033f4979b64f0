//! Stateful sequences (TorchServe's sequence batching, `sequenceBatching: true`). Requests
//! carry a sequence id; each sequence has a bounded queue of its own. The first worker to take
//! a sequence keeps it, because its handler holds the sequence's state; a batch takes at most
//! one request of each sequence, so a sequence's requests run one after another in order. A
//! sequence ends when it stays idle for `sequenceMaxIdleMSec`, once it is older than
//! `sequenceTimeoutMSec`, or after a request that marks its end.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::{BatchSettings, Job, SubmitError};
pub use crate::config::SequenceHeaders;
use crate::handler::RequestInput;

/// A stateful model's sequence settings (model-config.yaml), and the request headers that
/// carry a sequence (config.properties' `ts_header_key_sequence_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSettings {
    /// `sequenceMaxIdleMSec`: a sequence with no request for this long ends.
    pub max_idle: Duration,
    /// `sequenceTimeoutMSec`: a sequence older than this takes no new request; none: never.
    pub max_age: Option<Duration>,
    /// `maxNumSequence`: sequences open at once.
    pub max_sequences: usize,
    /// `maxSequenceJobQueueSize`: requests one sequence may have waiting.
    pub queue_size: usize,
    pub headers: SequenceHeaders,
}

/// Which sequence a request belongs to, and whether it is that sequence's last.
#[derive(Debug, Clone)]
pub struct Membership {
    pub id: String,
    pub last: bool,
}

/// A sequence id of the server's making, as TorchServe's frontend makes them.
fn new_id() -> String {
    format!("ts-seq-{}", uuid::Uuid::new_v4())
}

impl Membership {
    /// A sequence of one request, opened and closed by it.
    pub fn single() -> Self {
        Self {
            id: new_id(),
            last: true,
        }
    }
}

/// The request's sequence, as TorchServe's frontend decides it: the id header's value, or a
/// new `ts-seq-<uuid>` sequence whose first request this is (the start header is added). The
/// id header is set either way, so the handler's `context.get_sequence_id` reads it.
pub fn assign(headers: &SequenceHeaders, input: &mut RequestInput) -> Membership {
    let find = |input: &RequestInput, name: &str| {
        input
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let id = match find(input, &headers.id).filter(|id| !id.is_empty()) {
        Some(id) => id,
        None => {
            let id = new_id();
            input
                .headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case(&headers.start));
            input.headers.push((headers.start.clone(), "true".into()));
            id
        }
    };
    input
        .headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case(&headers.id));
    input.headers.push((headers.id.clone(), id.clone()));
    let last = find(input, &headers.end).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    Membership { id, last }
}

struct Sequence {
    jobs: VecDeque<Job>,
    /// The worker that serves it, once one took it.
    owner: Option<u32>,
    /// One of its requests is in its owner's batch.
    running: bool,
    /// When it last finished a request (or began).
    idle_since: Instant,
    /// When it stops taking requests (`sequenceTimeoutMSec`).
    ends: Option<Instant>,
    /// Its last request has arrived: it takes no more, and ends once that one has run.
    closing: bool,
}

impl Sequence {
    /// Over: nothing waits or runs, and it was idle too long, grew too old or was closed.
    fn over(&self, now: Instant, max_idle: Duration) -> bool {
        self.jobs.is_empty()
            && !self.running
            && (self.closing
                || now >= self.idle_since + max_idle
                || self.ends.is_some_and(|end| now >= end))
    }

    /// When it will be over if nothing arrives.
    fn expires(&self, max_idle: Duration) -> Instant {
        let idle = self.idle_since + max_idle;
        self.ends.map_or(idle, |end| end.min(idle))
    }
}

#[derive(Default)]
struct Table {
    sequences: HashMap<String, Sequence>,
    /// Sequences no worker has taken yet, oldest first.
    unowned: VecDeque<String>,
    /// Each worker's doorbell: rung when a request for it (or an unowned sequence) arrives.
    doorbells: HashMap<u32, (Sender<()>, Receiver<()>)>,
}

impl Table {
    fn ring(&self, owner: Option<u32>) {
        for (worker, (bell, _)) in &self.doorbells {
            if owner.is_none_or(|o| o == *worker) {
                let _ = bell.try_send(());
            }
        }
    }

    fn purge(&mut self, now: Instant, max_idle: Duration) {
        let before = self.sequences.len();
        self.sequences.retain(|_, s| !s.over(now, max_idle));
        if self.sequences.len() != before {
            let sequences = &self.sequences;
            self.unowned.retain(|id| sequences.contains_key(id));
        }
    }
}

/// The sequences of one stateful model version.
pub struct Sequences {
    settings: SequenceSettings,
    /// Sequences one worker takes at most (TorchServe: `maxNumSequence / minWorkers`).
    per_worker: usize,
    table: Mutex<Table>,
}

impl Sequences {
    pub fn new(settings: SequenceSettings, workers: usize) -> Self {
        let per_worker = (settings.max_sequences / workers.max(1)).max(1);
        Self {
            settings,
            per_worker,
            table: Mutex::default(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("sequence table lock")
    }

    /// Queues a request in its sequence, opening the sequence if it is new. Refused when
    /// `maxNumSequence` sequences are open, the sequence's queue is full, or it is closing.
    pub fn submit(&self, member: Membership, job: Job) -> Result<(), SubmitError> {
        let now = Instant::now();
        let mut table = self.table();
        table.purge(now, self.settings.max_idle);
        let owner = match table.sequences.get_mut(&member.id) {
            Some(s) => {
                if s.closing || s.jobs.len() >= self.settings.queue_size {
                    return Err(SubmitError::Full);
                }
                s.jobs.push_back(job);
                s.closing = member.last;
                s.owner
            }
            None => {
                if table.sequences.len() >= self.settings.max_sequences {
                    return Err(SubmitError::Full);
                }
                tracing::info!(sequence = %member.id, "sequence opened");
                table.sequences.insert(
                    member.id.clone(),
                    Sequence {
                        jobs: VecDeque::from([job]),
                        owner: None,
                        running: false,
                        idle_since: now,
                        ends: self.settings.max_age.map(|age| now + age),
                        closing: member.last,
                    },
                );
                table.unowned.push_back(member.id);
                None
            }
        };
        table.ring(owner);
        Ok(())
    }

    /// The next batch of `worker`: at most one request from each of its sequences, after the
    /// requests of its previous batch have run. Waits for the first request, then up to the
    /// batch delay for more. `None` when `stop` disconnects while nothing was taken.
    pub fn next_batch(
        &self,
        worker: u32,
        settings: BatchSettings,
        stop: &Receiver<()>,
    ) -> Option<Vec<Job>> {
        let bell = {
            let mut table = self.table();
            let now = Instant::now();
            // This worker's previous batch is done: its sequences may run again.
            for s in table.sequences.values_mut() {
                if s.owner == Some(worker) && s.running {
                    s.running = false;
                    s.idle_since = now;
                }
            }
            table
                .doorbells
                .entry(worker)
                .or_insert_with(|| crossbeam_channel::bounded(1))
                .1
                .clone()
        };
        let mut batch: Vec<Job> = Vec::new();
        let mut cut: Option<Instant> = None;
        loop {
            let wake = {
                let mut table = self.table();
                let now = Instant::now();
                table.purge(now, self.settings.max_idle);
                self.claim(&mut table, worker);
                for s in table.sequences.values_mut() {
                    if batch.len() >= settings.batch_size {
                        break;
                    }
                    if s.owner == Some(worker) && !s.running {
                        if let Some(job) = s.jobs.pop_front() {
                            s.running = true;
                            batch.push(job);
                        }
                    }
                }
                if !batch.is_empty() {
                    let cut = *cut.get_or_insert(now + settings.max_batch_delay);
                    if batch.len() >= settings.batch_size || now >= cut {
                        return Some(batch);
                    }
                    Some(cut)
                } else {
                    // Wake when one of this worker's idle sequences ends, so it can take a
                    // waiting one in its place.
                    let max_idle = self.settings.max_idle;
                    table
                        .sequences
                        .values()
                        .filter(|s| s.owner == Some(worker) && !s.running)
                        .map(|s| s.expires(max_idle))
                        .min()
                        .filter(|_| !table.unowned.is_empty())
                }
            };
            let timeout = wake.map_or(crossbeam_channel::never(), crossbeam_channel::at);
            select! {
                recv(bell) -> _ => {}
                recv(stop) -> _ => return (!batch.is_empty()).then_some(batch),
                recv(timeout) -> _ => {}
            }
        }
    }

    /// Takes unowned sequences for `worker` up to its share.
    fn claim(&self, table: &mut Table, worker: u32) {
        let owned = table
            .sequences
            .values()
            .filter(|s| s.owner == Some(worker))
            .count();
        for _ in owned..self.per_worker {
            let Some(id) = table.unowned.pop_front() else {
                return;
            };
            if let Some(s) = table.sequences.get_mut(&id) {
                s.owner = Some(worker);
            }
        }
    }

    /// A worker stopped for good: its sequences (their state is gone with it) go to the
    /// others.
    pub fn leave(&self, worker: u32) {
        let mut table = self.table();
        table.doorbells.remove(&worker);
        let mut freed = Vec::new();
        for (id, s) in table.sequences.iter_mut() {
            if s.owner == Some(worker) {
                s.owner = None;
                s.running = false;
                freed.push(id.clone());
            }
        }
        table.unowned.extend(freed);
        table.ring(None);
    }

    pub fn settings(&self) -> &SequenceSettings {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_an_id_opens_a_sequence_marked_as_its_start() {
        let headers = SequenceHeaders::default();
        let mut input = RequestInput {
            headers: vec![("TS_Request_Sequence_Id".into(), "s1".into())],
            ..RequestInput::default()
        };
        let m = assign(&headers, &mut input);
        assert_eq!((m.id.as_str(), m.last), ("s1", false));
        assert_eq!(
            input.headers,
            vec![("ts_request_sequence_id".to_string(), "s1".to_string())]
        );

        let mut input = RequestInput {
            headers: vec![("ts_request_sequence_end".into(), "True".into())],
            ..RequestInput::default()
        };
        let m = assign(&headers, &mut input);
        assert!(m.id.starts_with("ts-seq-") && m.last, "{m:?}");
        let get = |name: &str| {
            input
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("ts_request_sequence_start").as_deref(), Some("true"));
        assert_eq!(get("ts_request_sequence_id"), Some(m.id));
    }
}
