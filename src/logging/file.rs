//! Writing lines to the log files. A line is one `write(2)` to its file, by the thread that
//! logs it, unless that thread holds its lines ([`hold_lines`]): then the lines it logs are
//! kept, per file, and each file gets them in one `write(2)` when the hold ends. A request
//! logs nine lines, most of them in two bursts (the worker's after its batch, the HTTP
//! thread's when the answer goes out): a burst costs one system call per file instead of one
//! per line, and one turn on each file's lock, which threads appending to it share.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

/// Where a file layer's lines end up: the file, or a test's recorder.
pub(super) trait Append: Send + Sync {
    /// Writes `bytes` at the end, in one call when the target allows.
    fn append(&self, bytes: &[u8]) -> io::Result<()>;
}

impl Append for std::fs::File {
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        // Opened for appending: one write(2) puts the bytes at the end, whole.
        io::Write::write_all(&mut &*self, bytes)
    }
}

/// A file layer's writer (`tracing_subscriber`'s `MakeWriter`).
pub(super) struct LogFile(pub(super) Arc<dyn Append>);

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.0)
    }
}

/// One formatted line (tracing-subscriber writes a line with one `write_all`).
pub(super) struct Line<'a>(&'a Arc<dyn Append>);

impl io::Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // At a thread's exit the held lines are gone already: write at once.
        let held = HELD
            .try_with(|held| held.borrow_mut().keep(self.0, bytes))
            .unwrap_or(false);
        if !held {
            self.0.append(bytes)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static HELD: RefCell<Held> = const { RefCell::new(Held { depth: 0, files: Vec::new() }) };
}

/// The lines this thread holds: how many holds are open, and each file's bytes (a thread
/// writes to a handful of files; their buffers are kept for the next hold).
struct Held {
    depth: usize,
    files: Vec<(Arc<dyn Append>, Vec<u8>)>,
}

impl Held {
    /// Keeps the line if a hold is open.
    fn keep(&mut self, file: &Arc<dyn Append>, bytes: &[u8]) -> bool {
        if self.depth == 0 {
            return false;
        }
        let at = match self.files.iter().position(|(f, _)| Arc::ptr_eq(f, file)) {
            Some(at) => at,
            None => {
                self.files.push((file.clone(), Vec::new()));
                self.files.len() - 1
            }
        };
        self.files[at].1.extend_from_slice(bytes);
        true
    }

    fn write_out(&mut self) {
        for (file, bytes) in &mut self.files {
            if bytes.is_empty() {
                continue;
            }
            // As tracing-subscriber reports a line it could not write.
            if let Err(e) = file.append(bytes) {
                eprintln!("[ferroserve] Unable to write held log lines to their file: {e}");
            }
            bytes.clear();
        }
    }
}

/// While alive, the file lines this thread logs are held; when the outermost hold ends, each
/// file's lines are written in one `write(2)`, in the order they were logged. Holds are
/// meant to be short, synchronous stretches of work (never across an `.await`: see
/// [`lines_per_poll`]).
pub struct HeldLines {
    // Bound to its thread: the lines are the thread's.
    _thread: PhantomData<*const ()>,
}

/// Holds this thread's file lines until the returned value drops.
pub fn hold_lines() -> HeldLines {
    HELD.with_borrow_mut(|held| held.depth += 1);
    HeldLines {
        _thread: PhantomData,
    }
}

impl Drop for HeldLines {
    fn drop(&mut self) {
        HELD.with_borrow_mut(|held| {
            held.depth -= 1;
            if held.depth == 0 {
                held.write_out();
            }
        });
    }
}

/// Runs `work` holding the lines each of its polls logs, written when that poll returns: an
/// HTTP request's lines logged together (its answer's metric and access lines) share one
/// `write(2)` per file, and none waits while the request awaits something.
pub async fn lines_per_poll<F: Future>(work: F) -> F::Output {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        let _held = hold_lines();
        work.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::task::Poll;
    use tracing_subscriber::prelude::*;

    /// Records each `append` call apart.
    #[derive(Default)]
    struct Calls(Mutex<Vec<String>>);

    impl Append for Calls {
        fn append(&self, bytes: &[u8]) -> io::Result<()> {
            let line = String::from_utf8(bytes.to_vec()).expect("lines are UTF-8");
            self.0.lock().unwrap().push(line);
            Ok(())
        }
    }

    impl Calls {
        fn taken(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// Two files (targets `a` and `b`), each line its message.
    fn two_files() -> (impl tracing::Subscriber, Arc<Calls>, Arc<Calls>) {
        let (a, b) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
        let layer = |calls: &Arc<Calls>, target: &'static str| {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_writer(LogFile(calls.clone()))
                .with_filter(tracing_subscriber::filter::filter_fn(move |m| {
                    m.target() == target
                }))
                .boxed()
        };
        let subscriber = tracing_subscriber::registry().with(vec![layer(&a, "a"), layer(&b, "b")]);
        (subscriber, a, b)
    }

    #[test]
    fn held_lines_are_written_once_per_file_when_the_hold_ends() {
        let (subscriber, a, b) = two_files();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "a", "1");
            tracing::info!(target: "a", "2");
            assert_eq!(a.taken(), ["1\n", "2\n"], "a line each write unheld");
            {
                let _outer = hold_lines();
                tracing::info!(target: "a", "3");
                tracing::info!(target: "b", "x");
                {
                    let _inner = hold_lines();
                    tracing::info!(target: "a", "4");
                }
                assert!(a.taken().is_empty(), "an inner hold's end writes nothing");
                tracing::info!(target: "a", "5");
                assert!(a.taken().is_empty() && b.taken().is_empty());
            }
            assert_eq!(a.taken(), ["3\n4\n5\n"]);
            assert_eq!(b.taken(), ["x\n"]);
            tracing::info!(target: "b", "y");
            assert_eq!(b.taken(), ["y\n"], "unheld again");
            // Another thread's lines are not this thread's to hold.
            let _held = hold_lines();
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            std::thread::scope(|s| {
                s.spawn(|| {
                    tracing::dispatcher::with_default(&dispatch, || {
                        tracing::info!(target: "b", "elsewhere");
                    })
                });
            });
            assert_eq!(b.taken(), ["elsewhere\n"]);
        });
    }

    #[test]
    fn each_poll_writes_its_own_lines() {
        let (subscriber, a, _b) = two_files();
        tracing::subscriber::with_default(subscriber, || {
            let mut polls = 0;
            let work = std::future::poll_fn(|cx| {
                polls += 1;
                tracing::info!(target: "a", "poll {polls} line 1");
                tracing::info!(target: "a", "poll {polls} line 2");
                if polls == 1 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(polls)
            });
            let mut work = pin!(lines_per_poll(work));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(work.as_mut().poll(&mut cx).is_pending());
            assert_eq!(a.taken(), ["poll 1 line 1\npoll 1 line 2\n"]);
            assert_eq!(work.as_mut().poll(&mut cx), Poll::Ready(2));
            assert_eq!(a.taken(), ["poll 2 line 1\npoll 2 line 2\n"]);
        });
    }
}
