//! Custom Python handlers, run unchanged by TorchServe's own Python worker
//! (`ts/model_service_worker.py` from `pip install torchserve==0.12.0`), driven over its Unix
//! socket protocol as TorchServe's Java frontend drives it. One worker process per worker.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Engine, EngineError, Handler, Prepared, Reply, RequestInput};
use crate::device::Device;
use crate::error::{LoadError, ServeError};

/// Everything a worker process needs, fixed when the model is loaded.
pub struct PythonHandler {
    pub model_name: String,
    pub model_dir: PathBuf,
    pub handler: String,
    pub envelope: String,
    pub batch_size: usize,
    pub response_timeout: Duration,
    pub startup_timeout: Duration,
    pub max_response_size: usize,
    pub decode_input_request: bool,
    /// `ipex_enable` / `ipex_gpu_enable`, passed on as TorchServe does.
    pub ipex: (bool, bool),
    pub limit_max_image_pixels: bool,
    /// The workers' interpreter: the server's, or the model's virtual environment's.
    pub python: PathBuf,
    /// `useVenv`: the model's virtual environment, held for the model's lifetime.
    pub venv: Option<tempfile::TempDir>,
    /// The directory holding the `ts` package.
    pub ts_home: PathBuf,
    /// Where worker sockets go (TorchServe: `<tmpdir>/.ts.sock.<id>`).
    pub socket_dir: PathBuf,
    pub device: Device,
    /// Packages from the archive's requirements file, installed for this model only.
    pub deps: Option<tempfile::TempDir>,
    /// Where the workers' `[METRICS]` lines go.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `metrics_config`, passed on to the workers; TorchServe's default file when unset.
    pub metrics_config: Option<PathBuf>,
    /// Names the workers in the logs: `W-<id>-<model>_<version>`, as TorchServe.
    pub model_version: String,
    /// Environment variables kept from the worker (`blacklist_env_vars`).
    pub blacklist_env_vars: Option<regex::Regex>,
}

/// Where a model's requirements go.
pub enum Requirements<'a> {
    /// A private directory of the model (never the server's environment) that joins the
    /// workers' PYTHONPATH: `pip install -U -t`.
    Directory,
    /// The model's virtual environment, by its interpreter: `pip install -U
    /// --upgrade-strategy only-if-needed`, as TorchServe's `useVenv`.
    Venv(&'a Path),
}

/// `pip install -r <requirementsFile>` for this model only, its output in the log. Returns the
/// private directory for [`Requirements::Directory`].
pub fn install_requirements(
    python: &Path,
    archive: &crate::archive::ModelArchive,
    file: &str,
    model: &str,
    into: Requirements<'_>,
) -> Result<Option<tempfile::TempDir>, LoadError> {
    let failed = |why: String| {
        LoadError::Invalid(format!(
            "Custom pip package installation failed for model {model}: {why}"
        ))
    };
    let requirements = crate::archive::safe_join(&archive.dir, file)
        .filter(|p| p.is_file())
        .ok_or_else(|| failed(format!("{file} is missing from the archive")))?;
    tracing::info!(model, "installing {file} for this model");
    let (interpreter, target) = match into {
        Requirements::Directory => {
            let target = tempfile::Builder::new()
                .prefix("pydeps-")
                .tempdir()
                .map_err(|e| failed(e.to_string()))?;
            (python, Some(target))
        }
        Requirements::Venv(venv_python) => (venv_python, None),
    };
    let mut cmd = Command::new(interpreter);
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "-U"]);
    match &target {
        Some(dir) => cmd.arg("-t").arg(dir.path()),
        None => cmd.args(["--upgrade-strategy", "only-if-needed"]),
    };
    let out = cmd
        .arg("-r")
        .arg(&requirements)
        .current_dir(&archive.dir)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    log_output(model, "pip", &out);
    if !out.status.success() {
        return Err(failed(last_line(&out.stderr, "pip failed")));
    }
    Ok(target)
}

/// `useVenv`: a virtual environment of the model's own, made once at load and used by all its
/// workers. Like TorchServe's, it inherits the server environment's packages (TorchServe's
/// worker, torch) through a `.pth` file, so what the model installs lands in it alone and
/// shadows, never changes, the server's. Returns the directory and its interpreter.
pub fn create_venv(python: &Path, model: &str) -> Result<(tempfile::TempDir, PathBuf), LoadError> {
    const CREATE: &str = "import glob, os, site, sys, venv\n\
        d = sys.argv[1]\n\
        venv.create(d, clear=True, symlinks=True, with_pip=False)\n\
        sp = glob.glob(os.path.join(d, 'lib', 'python*', 'site-packages'))[0]\n\
        inherited = ([site.getusersitepackages()] if site.ENABLE_USER_SITE else []) + site.getsitepackages()\n\
        open(os.path.join(sp, 'inherited-site-packages.pth'), 'w').write(''.join(p + '\\n' for p in inherited))\n";
    let failed = |why: String| {
        LoadError::Invalid(format!(
            "Virtual environment creation failed for model {model}: {why}"
        ))
    };
    let dir = tempfile::Builder::new()
        .prefix("pyvenv-")
        .tempdir()
        .map_err(|e| failed(e.to_string()))?;
    let out = Command::new(python)
        .args(["-c", CREATE])
        .arg(dir.path())
        .output()
        .map_err(|e| failed(e.to_string()))?;
    log_output(model, "venv", &out);
    if !out.status.success() {
        return Err(failed(last_line(&out.stderr, "venv failed")));
    }
    let venv_python = dir.path().join("bin/python");
    tracing::info!(model, venv = %dir.path().display(), "created the model's virtual environment");
    Ok((dir, venv_python))
}

fn log_output(model: &str, tool: &str, out: &std::process::Output) {
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        tracing::info!(model, "{tool}: {line}");
    }
}

fn last_line(text: &[u8], otherwise: &str) -> String {
    String::from_utf8_lossy(text)
        .trim()
        .lines()
        .last()
        .unwrap_or(otherwise)
        .to_string()
}

/// Worker sockets live in a directory of this server process, so that two servers (or a
/// TorchServe next to us) never share `.ts.sock.9000`.
pub fn socket_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ferroserve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Finds TorchServe's Python package for an interpreter; the error says how to get it.
pub fn locate_ts(python: &Path) -> Result<PathBuf, LoadError> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, ts; print(os.path.dirname(os.path.dirname(os.path.abspath(ts.__file__))))",
        ])
        .output()
        .map_err(|e| {
            LoadError::Unsupported(format!(
                "Python handler: cannot run the Python interpreter {}: {e} (set `python` in config.properties or --python)",
                python.display()
            ))
        })?;
    if !out.status.success() {
        return Err(LoadError::Unsupported(format!(
            "Python handler: TorchServe's Python package is not importable by {} \
             (pip install torchserve==0.12.0 into it): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

impl Handler for PythonHandler {
    fn prepare(&self, input: RequestInput) -> Result<Prepared, ServeError> {
        Ok(Prepared::Request(input))
    }

    /// The request goes to the worker as it came: nothing to decode.
    fn prepare_blocks(&self, _input: &RequestInput) -> bool {
        false
    }

    fn start_worker(self: Arc<Self>, id: u32) -> Result<Box<dyn Engine>, String> {
        PythonWorker::start(&self, id).map(|w| Box::new(w) as Box<dyn Engine>)
    }

    fn device(&self) -> Device {
        self.device
    }

    fn describes(&self) -> bool {
        true
    }
}

/// The last lines a worker wrote to stderr, for error messages.
type Tail = Arc<Mutex<VecDeque<String>>>;

struct PythonWorker {
    child: Child,
    response_timeout: Duration,
    stream: UnixStream,
    /// Reads replies; it lives as long as the connection, since the worker may send several
    /// messages (streaming) that land in one read.
    reader: BufReader<UnixStream>,
    socket: PathBuf,
    max_response_size: usize,
    tail: Tail,
    /// The span of the batch served last, so the worker's log lines name its requests.
    serving: Serving,
}

/// The span the worker's output is logged in.
type Serving = Arc<Mutex<tracing::Span>>;

impl PythonHandler {
    /// The server's environment variables a worker must not see.
    fn blacklisted(&self) -> Vec<String> {
        let Some(re) = &self.blacklist_env_vars else {
            return Vec::new();
        };
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| re.is_match(k))
            .collect()
    }
}

impl PythonWorker {
    fn start(h: &PythonHandler, id: u32) -> Result<Self, String> {
        let socket = h.socket_dir.join(format!(".ts.sock.{id}"));
        let _ = std::fs::remove_file(&socket);
        // TorchServe's order: inherited PYTHONPATH, then the model directory.
        let mut parts: Vec<String> = std::env::var("PYTHONPATH")
            .ok()
            .filter(|p| !p.is_empty())
            .into_iter()
            .collect();
        parts.push(h.model_dir.to_string_lossy().into_owned());
        if let Some(deps) = &h.deps {
            parts.push(deps.path().to_string_lossy().into_owned());
        }
        let pythonpath = parts.join(":");
        let mut cmd = Command::new(&h.python);
        cmd.arg(h.ts_home.join("ts/model_service_worker.py"))
            .args(["--sock-type", "unix", "--sock-name"])
            .arg(&socket)
            .arg("--metrics-config")
            .arg(
                h.metrics_config
                    .clone()
                    .unwrap_or_else(|| h.ts_home.join("ts/configs/metrics.yaml")),
            )
            .current_dir(&h.model_dir)
            .env("PYTHONPATH", pythonpath)
            .env(
                "TS_DECODE_INPUT_REQUEST",
                h.decode_input_request.to_string(),
            )
            .env("TS_IPEX_ENABLE", h.ipex.0.to_string())
            .env("TS_IPEX_GPU_ENABLE", h.ipex.1.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal reaches the server, which
            // then stops its workers itself.
            .process_group(0);
        for name in h.blacklisted() {
            cmd.env_remove(name);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", h.python.display()))?;
        let label = format!("W-{id}-{}_{}", h.model_name, h.model_version);
        let (started_tx, started_rx) = mpsc::channel();
        let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
        let serving: Serving = Arc::new(Mutex::new(tracing::Span::none()));
        let output = Output {
            label: &label,
            tail: &tail,
            metrics: &h.metrics,
            serving: &serving,
        };
        forward_output(child.stdout.take(), false, Some(started_tx), &output);
        forward_output(child.stderr.take(), true, None, &output);

        let fail = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            let last = tail_text(&tail);
            if last.is_empty() {
                why
            } else {
                format!("{why}; worker output: {last}")
            }
        };
        let deadline = Instant::now() + h.startup_timeout;
        if started_rx.recv_timeout(h.startup_timeout).is_err() {
            return Err(fail(&mut child, "the Python worker did not start".into()));
        }
        // The worker listens before it says it started.
        let stream = match UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(e) => {
                return Err(fail(
                    &mut child,
                    format!("cannot connect to the worker: {e}"),
                ))
            }
        };
        let reader = match stream.try_clone() {
            Ok(s) => BufReader::new(s),
            Err(e) => {
                return Err(fail(
                    &mut child,
                    format!("cannot use the worker socket: {e}"),
                ))
            }
        };
        let mut worker = PythonWorker {
            child,
            response_timeout: h.response_timeout,
            stream,
            reader,
            socket,
            max_response_size: h.max_response_size,
            tail: tail.clone(),
            serving,
        };
        let load = encode_load(h);
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match worker.exchange(&load, remaining) {
            Ok(reply) if reply.code == 200 => Ok(worker),
            Ok(reply) => Err(fail(
                &mut worker.child,
                format!("model load failed ({} {})", reply.code, reply.message),
            )),
            Err(e) => Err(fail(&mut worker.child, format!("model load failed: {e}"))),
        }
    }

    /// Sends one message and reads one reply.
    fn exchange(&mut self, message: &[u8], timeout: Duration) -> std::io::Result<WireReply> {
        self.stream.set_write_timeout(Some(timeout))?;
        self.stream.write_all(message)?;
        self.read_reply(timeout)
    }

    fn read_reply(&mut self, timeout: Duration) -> std::io::Result<WireReply> {
        let reader = Deadline {
            reader: &mut self.reader,
            socket: &self.stream,
            until: Instant::now() + timeout,
        };
        decode_reply(reader, self.max_response_size)
    }
}

/// Reads a whole reply against one deadline: a socket read timeout alone restarts with every
/// byte, so a worker trickling its reply could hold the request for ever.
struct Deadline<'a> {
    reader: &'a mut BufReader<UnixStream>,
    /// The same socket as the reader's: its read timeout is the reader's.
    socket: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::ErrorKind::{TimedOut, WouldBlock};
        let late = || std::io::Error::new(TimedOut, "no whole reply within the response timeout");
        // Only a read that reaches the socket can wait.
        if self.reader.buffer().is_empty() {
            let left = self.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(late());
            }
            self.socket.set_read_timeout(Some(left))?;
        }
        // The socket says a timeout ran out as EAGAIN.
        self.reader.read(buf).map_err(|e| {
            if matches!(e.kind(), WouldBlock | TimedOut) {
                late()
            } else {
                e
            }
        })
    }
}

/// Reads one worker reply (spec §7.4) from the socket; a misbehaving worker's bytes end in
/// an error, never a panic or an allocation past `limit` per field.
pub fn decode_reply<R: Read>(reader: R, limit: usize) -> std::io::Result<WireReply> {
    let mut r = Decoder {
        inner: reader,
        limit,
    };
    let code = r.int()?;
    let message = r.string()?;
    let mut entries = Vec::new();
    loop {
        let len = r.int()?;
        if len == -1 {
            break;
        }
        let request_id = r.string_of(len)?;
        let content_type = r.string()?;
        let status = r.int()?;
        let reason = r.string()?;
        let count = r.int()?;
        let mut headers = Vec::new();
        for _ in 0..count.max(0) {
            headers.push((r.string()?, r.string()?));
        }
        let body = r.bytes()?;
        entries.push(WireEntry {
            request_id,
            content_type,
            status,
            reason,
            headers,
            body,
        });
    }
    Ok(WireReply {
        code,
        message,
        entries,
    })
}

/// The requests of a batch, which for a Python handler are the requests as received.
fn requests<'a>(
    batch: impl Iterator<Item = &'a Prepared>,
) -> Result<Vec<&'a RequestInput>, EngineError> {
    batch
        .map(|p| match p {
            Prepared::Request(r) => Ok(r),
            Prepared::Tensor { .. }
            | Prepared::Array(_)
            | Prepared::Image { .. }
            | Prepared::Explain { .. } => Err(EngineError::Batch(ServeError::Internal(
                "unexpected input for a Python handler".into(),
            ))),
        })
        .collect()
}

/// A worker's failure status for the whole batch, passed on as TorchServe does.
fn batch_failure(reply: &WireReply) -> Option<EngineError> {
    (reply.code != 200).then(|| {
        let code = if reply.code == 413 { 507 } else { reply.code };
        EngineError::Batch(ServeError::Backend {
            status: u16::try_from(code).unwrap_or(500),
            message: reply.message.clone(),
        })
    })
}

impl PythonWorker {
    /// The worker's output arrives on its own pipe, after the reply at times: it belongs to
    /// the current batch until the next one starts.
    fn serve_under_current_span(&self) {
        if let Ok(mut serving) = self.serving.lock() {
            *serving = tracing::Span::current();
        }
    }

    fn died(&self) -> impl Fn(std::io::Error) -> EngineError {
        let tail = self.tail.clone();
        move |e: std::io::Error| {
            tracing::error!("Python worker connection failed: {e}; {}", tail_text(&tail));
            EngineError::Died(ServeError::WorkerDied)
        }
    }
}

impl Engine for PythonWorker {
    fn infer(
        &mut self,
        batch: Vec<Prepared>,
        partial: &mut dyn FnMut(usize, Reply),
    ) -> Result<Vec<Reply>, EngineError> {
        self.serve_under_current_span();
        let requests = requests(batch.iter())?;
        let died = self.died();
        // Each message of the reply must come within the response timeout, as in TorchServe.
        let timeout = self.response_timeout;
        let mut reply = self
            .exchange(&encode_inference(&requests), timeout)
            .map_err(&died)?;
        loop {
            if let Some(failed) = batch_failure(&reply) {
                return Err(failed);
            }
            // Intermediate messages carry `ts_stream_next: true`; they are passed on as
            // they come, and the worker's messages are read until none says more follows.
            let mut more = false;
            let mut finals: Vec<Option<Reply>> = (0..requests.len()).map(|_| None).collect();
            for e in reply.entries {
                let Some(i) = requests.iter().position(|r| r.request_id == e.request_id) else {
                    return Err(died(std::io::Error::other("reply for an unknown request")));
                };
                let streaming = e
                    .headers
                    .iter()
                    .any(|(k, v)| k == "ts_stream_next" && v.eq_ignore_ascii_case("true"));
                let reply = e.into_reply();
                if streaming {
                    more = true;
                    partial(i, reply);
                } else {
                    finals[i] = Some(reply);
                }
            }
            if !more {
                return finals
                    .into_iter()
                    .map(|f| f.ok_or_else(|| died(std::io::Error::other("a request got no reply"))))
                    .collect();
            }
            reply = self.read_reply(timeout).map_err(&died)?;
        }
    }

    fn round(&mut self, batch: &[(&Prepared, bool)]) -> Result<Vec<Reply>, EngineError> {
        self.serve_under_current_span();
        let requests = requests(batch.iter().map(|(p, _)| *p))?;
        // Carried over from the last round: headers only, as TorchServe sends them.
        let message = encode_requests(
            requests
                .iter()
                .zip(batch)
                .map(|(r, (_, cached))| (*r, !cached)),
        );
        let died = self.died();
        let reply = self
            .exchange(&message, self.response_timeout)
            .map_err(&died)?;
        if let Some(failed) = batch_failure(&reply) {
            return Err(failed);
        }
        let mut parts: Vec<Option<Reply>> = (0..requests.len()).map(|_| None).collect();
        for e in reply.entries {
            let Some(i) = requests.iter().position(|r| r.request_id == e.request_id) else {
                return Err(died(std::io::Error::other("reply for an unknown request")));
            };
            parts[i] = Some(e.into_reply());
        }
        parts
            .into_iter()
            .map(|p| p.ok_or_else(|| died(std::io::Error::other("a request got no reply"))))
            .collect()
    }

    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    fn reports_handler_time(&self) -> bool {
        true
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The worker's recent exception lines (`SomeError: ...`), else its last lines.
fn tail_text(tail: &Tail) -> String {
    let Ok(t) = tail.lock() else {
        return String::new();
    };
    let errors: Vec<&str> = t
        .iter()
        .map(|l| l.trim())
        .filter(|l| is_exception_line(l))
        .collect();
    let chosen: Vec<&str> = if errors.is_empty() {
        t.iter().rev().take(3).rev().map(|l| l.trim()).collect()
    } else {
        errors
    };
    chosen.join(" | ")
}

/// `ModuleNotFoundError: No module named 'x'` and the like.
fn is_exception_line(line: &str) -> bool {
    line.split_once(": ").is_some_and(|(name, _)| {
        !name.contains(' ')
            && (name.ends_with("Error") || name.ends_with("Exception") || name.ends_with("Exit"))
    })
}

/// Where a worker's output goes: the model log (in the span of the batch being served), the
/// tail kept for error messages, and the metrics of its `[METRICS]` lines.
struct Output<'a> {
    label: &'a str,
    tail: &'a Tail,
    metrics: &'a Arc<crate::metrics::Metrics>,
    serving: &'a Serving,
}

/// Copies a worker's stdout/stderr into the server log, line by line, and signals when the
/// worker announces it is listening.
fn forward_output(
    stream: Option<impl Read + Send + 'static>,
    is_stderr: bool,
    started: Option<mpsc::Sender<()>>,
    output: &Output,
) {
    let Some(stream) = stream else { return };
    let label = output.label.to_string();
    let (tail, metrics, serving) = (
        output.tail.clone(),
        output.metrics.clone(),
        output.serving.clone(),
    );
    let _ = std::thread::Builder::new()
        .name(format!(
            "{label}-{}",
            if is_stderr { "stderr" } else { "stdout" }
        ))
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &started {
                    if line.contains("Torch worker started.") {
                        let _ = tx.send(());
                    }
                }
                if let Some(metric) = line
                    .find("[METRICS]")
                    .and_then(|i| crate::metrics::BackendMetric::parse(&line[i..]))
                {
                    // To the metrics endpoint; kept out of the model log.
                    metrics.backend(&metric);
                    tracing::debug!(
                        target: "ferroserve::backend_metrics",
                        worker = %label,
                        name = %metric.name,
                        unit = %metric.unit,
                        value = metric.value,
                        dimensions = ?metric.dimensions,
                        kind = metric.kind.as_deref().unwrap_or(""),
                        request_id = metric.request_id.as_deref().unwrap_or(""),
                    );
                    continue;
                }
                // The thread is named as TorchServe's (`W-<id>-<model>_<v>-stdout`), which
                // the model log shows.
                let span = serving
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_else(|_| tracing::Span::none());
                let _entered = span.enter();
                if is_stderr {
                    tracing::warn!(target: crate::logging::MODEL_LOG, "{line}");
                } else {
                    tracing::info!(target: crate::logging::MODEL_LOG, "{line}");
                }
                if let Ok(mut t) = tail.lock() {
                    // Exception lines are kept longer than the rest of a traceback.
                    t.push_back(line);
                    while t.len() > 40 {
                        let drop = t
                            .iter()
                            .position(|l| !is_exception_line(l.trim()))
                            .unwrap_or(0);
                        t.remove(drop);
                    }
                }
            }
        });
}

// --- The wire format (big-endian ints, length-prefixed strings, -1 list terminators). ---

fn put_int(buf: &mut Vec<u8>, v: i32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_int(buf, b.len() as i32);
    buf.extend_from_slice(b);
}

fn encode_load(h: &PythonHandler) -> Vec<u8> {
    let mut buf = vec![b'L'];
    put_bytes(&mut buf, h.model_name.as_bytes());
    put_bytes(&mut buf, h.model_dir.to_string_lossy().as_bytes());
    put_int(&mut buf, h.batch_size.max(1) as i32);
    put_bytes(&mut buf, h.handler.as_bytes());
    // The GPU the worker should use; -1 on the CPU.
    let gpu = match h.device {
        Device::Cuda(i) => i as i32,
        _ => -1,
    };
    put_int(&mut buf, gpu);
    put_bytes(&mut buf, h.envelope.as_bytes());
    buf.push(u8::from(h.limit_max_image_pixels));
    buf
}

/// An INFERENCE message for a batch.
pub fn encode_inference(requests: &[&RequestInput]) -> Vec<u8> {
    encode_requests(requests.iter().map(|r| (*r, true)))
}

/// An `I` message whose requests carry their parameters or not: a continuous batch sends a
/// request carried over from the last round with its headers only.
fn encode_requests<'a>(requests: impl Iterator<Item = (&'a RequestInput, bool)>) -> Vec<u8> {
    let mut buf = vec![b'I'];
    for (r, with_params) in requests {
        put_bytes(&mut buf, r.request_id.as_bytes());
        for (k, v) in &r.headers {
            put_bytes(&mut buf, k.as_bytes());
            put_bytes(&mut buf, v.as_bytes());
        }
        put_int(&mut buf, -1);
        let params: &[super::Param] = if with_params { &r.params } else { &[] };
        for p in params {
            put_bytes(&mut buf, p.name.as_bytes());
            put_bytes(&mut buf, p.content_type.as_deref().unwrap_or("").as_bytes());
            put_bytes(&mut buf, &p.value);
        }
        put_int(&mut buf, -1);
    }
    put_int(&mut buf, -1);
    buf
}

pub struct WireEntry {
    request_id: String,
    content_type: String,
    status: i32,
    /// The handler's reason phrase (not relayed: HTTP/1.1 clients ignore it).
    #[allow(dead_code)]
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl WireEntry {
    fn into_reply(self) -> Reply {
        let headers = self
            .headers
            .into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
            .collect();
        Reply::new(
            u16::try_from(self.status).unwrap_or(500),
            (!self.content_type.is_empty()).then_some(self.content_type),
            headers,
            Bytes::from(self.body),
        )
    }
}

/// One reply of a worker: its code and message, and one entry per request.
pub struct WireReply {
    code: i32,
    message: String,
    entries: Vec<WireEntry>,
}

struct Decoder<R> {
    inner: R,
    limit: usize,
}

impl<R: Read> Decoder<R> {
    fn int(&mut self) -> std::io::Result<i32> {
        let mut b = [0u8; 4];
        self.inner.read_exact(&mut b)?;
        Ok(i32::from_be_bytes(b))
    }

    fn bytes_of(&mut self, len: i32) -> std::io::Result<Vec<u8>> {
        let len = usize::try_from(len.max(0)).unwrap_or(0);
        if len > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply field of {len} bytes exceeds max_response_size"),
            ));
        }
        let mut v = vec![0u8; len];
        self.inner.read_exact(&mut v)?;
        Ok(v)
    }

    fn bytes(&mut self) -> std::io::Result<Vec<u8>> {
        let len = self.int()?;
        self.bytes_of(len)
    }

    fn string_of(&mut self, len: i32) -> std::io::Result<String> {
        Ok(String::from_utf8_lossy(&self.bytes_of(len)?).into_owned())
    }

    fn string(&mut self) -> std::io::Result<String> {
        let len = self.int()?;
        self.string_of(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::Param;

    /// A worker sending its reply a byte at a time, each well within a read timeout, is cut
    /// off at the reply's deadline.
    #[test]
    fn a_trickled_reply_ends_at_its_deadline() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..200 {
                if theirs.write_all(&[0]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let mut reader = BufReader::new(ours.try_clone().unwrap());
        let started = Instant::now();
        let reply = decode_reply(
            Deadline {
                reader: &mut reader,
                socket: &ours,
                until: started + Duration::from_millis(150),
            },
            1 << 20,
        );
        // Without the deadline the trickle would end in an end of file two seconds later.
        let e = reply.err().expect("no reply can be whole");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        drop((reader, ours));
        trickle.join().unwrap();
    }

    #[test]
    fn inference_message_matches_the_spec_example() {
        let r = RequestInput {
            request_id: "r1".into(),
            headers: vec![("explain".into(), "False".into())],
            params: vec![Param {
                name: "body".into(),
                content_type: Some("application/json".into()),
                value: Bytes::from_static(br#"{"a":1}"#),
            }],
        };
        // 49 | 00000002 "r1" | 00000007 "explain" 00000005 "False" | FFFFFFFF |
        // 00000004 "body" 00000010 "application/json" 00000007 {"a":1} | FFFFFFFF | FFFFFFFF
        let mut expected = vec![0x49, 0, 0, 0, 2];
        expected.extend_from_slice(b"r1");
        expected.extend_from_slice(&[0, 0, 0, 7]);
        expected.extend_from_slice(b"explain");
        expected.extend_from_slice(&[0, 0, 0, 5]);
        expected.extend_from_slice(b"False");
        expected.extend_from_slice(&[0xff; 4]);
        expected.extend_from_slice(&[0, 0, 0, 4]);
        expected.extend_from_slice(b"body");
        expected.extend_from_slice(&[0, 0, 0, 0x10]);
        expected.extend_from_slice(b"application/json");
        expected.extend_from_slice(&[0, 0, 0, 7]);
        expected.extend_from_slice(br#"{"a":1}"#);
        expected.extend_from_slice(&[0xff; 8]);
        assert_eq!(encode_inference(&[&r]), expected);
    }

    #[test]
    fn replies_decode_and_oversized_fields_are_refused() {
        let mut wire = Vec::new();
        put_int(&mut wire, 200);
        put_bytes(&mut wire, b"Prediction success");
        put_bytes(&mut wire, b"r1");
        put_bytes(&mut wire, b"text/plain");
        put_int(&mut wire, 201);
        put_bytes(&mut wire, b"");
        put_int(&mut wire, 1);
        put_bytes(&mut wire, b"x-k");
        put_bytes(&mut wire, b"v");
        put_bytes(&mut wire, b"hello");
        put_int(&mut wire, -1);
        let mut d = Decoder {
            inner: &wire[..],
            limit: 100,
        };
        assert_eq!(d.int().unwrap(), 200);
        assert_eq!(d.string().unwrap(), "Prediction success");
        let len = d.int().unwrap();
        assert_eq!(d.string_of(len).unwrap(), "r1");
        let mut small = Decoder {
            inner: &wire[..],
            limit: 4,
        };
        small.int().unwrap();
        assert!(small.string().is_err());
    }
}
