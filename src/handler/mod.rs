//! Handlers: what turns requests into model inputs and model outputs into replies.
//!
//! Native handlers implement TorchServe handler contracts in Rust. Which archives run natively
//! (README, "Native handlers"): `ferroserve.native_handler` in the archive's model-config.yaml
//! names one (or `false` keeps the archive on Python); else a manifest `handler` that names a
//! native handler, or one of TorchServe's built-in vision handlers over a TorchScript or ONNX
//! file. Any other handler is Python code, which needs TorchServe's Python worker.

pub mod binary_input;
pub mod json_tensor;
pub mod labels;
pub mod observe;
pub mod pyjson;
pub mod python;
pub mod scores;
pub mod tensor_classifier;
pub mod vision;

use std::sync::Arc;

use bytes::Bytes;

use crate::archive::ModelArchive;
use crate::backend::{self, RuntimeOptions};
use crate::error::{LoadError, ServeError};

/// One input parameter, as TorchServe builds them (§1.3 of its request decoding).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub content_type: Option<String>,
    pub value: Bytes,
}

/// One request as the handler sees it.
#[derive(Debug, Clone, Default)]
pub struct RequestInput {
    pub request_id: String,
    pub headers: Vec<(String, String)>,
    pub params: Vec<Param>,
}

impl RequestInput {
    /// The last parameter with that name (TorchServe keeps the last duplicate).
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().rev().find(|p| p.name == name)
    }

    /// The request's payload as TorchServe's handlers read it: the `data` part, else `body`.
    pub fn data(&self) -> Option<&Param> {
        self.param("data").or_else(|| self.param("body"))
    }

    /// The last header with that name, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A handler's answer to one request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// For a streamed answer: the chunks after `body`, ending when the sender is dropped
    /// (an `Err` aborts the response).
    pub stream: Option<ReplyStream>,
    /// How long the request waited in the queue before its batch started (set by the worker).
    pub queue_time: std::time::Duration,
    /// What a native handler saw and answered, for drift monitoring.
    pub observation: Option<observe::Observation>,
}

pub type ReplyStream = tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>;

impl Reply {
    /// The whole answer, a streamed one's chunks joined, for callers that return it in one
    /// piece; refused past `limit` bytes, as a handler may stream without end.
    pub async fn collect(mut self, limit: usize) -> Result<Bytes, String> {
        let Some(mut stream) = self.stream.take() else {
            return Ok(self.body);
        };
        let mut whole = self.body.to_vec();
        while let Some(chunk) = stream.recv().await {
            whole.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
            if whole.len() > limit {
                return Err(format!(
                    "the streamed answer is larger than max_response_size ({limit} bytes)"
                ));
            }
        }
        Ok(whole.into())
    }

    pub fn new(
        status: u16,
        content_type: Option<String>,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Self {
        Self {
            status,
            content_type,
            headers,
            body,
            stream: None,
            queue_time: std::time::Duration::ZERO,
            observation: None,
        }
    }

    /// The reply with what its request showed, when drift monitoring wants it (`observe`):
    /// otherwise the observation is not even computed.
    pub fn observed_if(
        mut self,
        observe: bool,
        observation: impl FnOnce() -> observe::Observation,
    ) -> Self {
        if observe {
            self.observation = Some(observation());
        }
        self
    }
}

/// A request ready to join a batch, prepared on the request thread.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// A native handler's decoded input, shaped for the batch (no batch dimension).
    Tensor { tensor: Vec<f32>, topk: usize },
    /// A request's own array, of its own shape (no batch dimension).
    Array(backend::Tensor),
    /// A decoded image's tensor, and the image's size as decoded (width, height).
    Image {
        tensor: backend::Tensor,
        size: (u32, u32),
    },
    /// A request for attributions of its array's prediction for class `target`.
    Explain { input: backend::Tensor, target: i64 },
    /// The request as TorchServe's frontend hands it to a Python worker.
    Request(RequestInput),
}

/// The largest body a text format is parsed from on the HTTP worker itself: the hand-off
/// to a blocking thread costs about what parsing this much does.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// Whether parsing the request's body from a text format is worth a blocking thread.
pub fn parse_blocks(input: &RequestInput) -> bool {
    parse_blocks_at(input.params.iter().map(|p| p.value.len()).sum())
}

/// Whether parsing `bytes` of a text format is worth a blocking thread.
pub fn parse_blocks_at(bytes: usize) -> bool {
    bytes > PARSE_INLINE_BYTES
}

/// A model version's handler: it prepares requests and starts workers.
pub trait Handler: Send + Sync {
    /// Decodes one request; runs on the HTTP side so bad input never occupies a worker.
    fn prepare(&self, input: RequestInput) -> Result<Prepared, ServeError>;
    /// Whether `prepare` takes long enough (tens of microseconds and more) to run on a
    /// blocking thread rather than hold up the connections of its HTTP worker. By default a
    /// body of more than 64 KiB, which a text format takes that long to parse.
    fn prepare_blocks(&self, input: &RequestInput) -> bool {
        parse_blocks(input)
    }
    /// Starts what one worker runs batches with: a view of the shared native model, or a
    /// Python worker process. Runs on the worker's own thread; blocking, may take seconds.
    /// The error is the reason, for logs.
    fn start_worker(self: Arc<Self>, id: u32) -> Result<Box<dyn Engine>, String>;
    /// The device the model runs on.
    fn device(&self) -> crate::device::Device;
    /// Whether the handler answers TorchServe's DESCRIBE request (customized metadata).
    fn describes(&self) -> bool {
        false
    }
    /// The input summaries its replies' observations carry (drift monitoring).
    fn observed_inputs(&self) -> &'static [&'static str] {
        &[]
    }
}

/// One worker's means of running batches.
pub trait Engine: Send {
    /// Runs one batch; one final reply per request, in order. A streaming handler's
    /// intermediate answers go to `partial(request index, reply)` as they come. The engine
    /// owns the batch, so a native handler can move a request's buffer into its forward pass.
    fn infer(
        &mut self,
        batch: Vec<Prepared>,
        partial: &mut dyn FnMut(usize, Reply),
    ) -> Result<Vec<Reply>, EngineError>;
    /// One round of continuous batching: one part per request, in order. A request marked
    /// `true` was in the previous round and is sent without its parameters (the handler keeps
    /// its state); a part with `ts_stream_next: true` continues in the next round.
    fn round(&mut self, _batch: &[(&Prepared, bool)]) -> Result<Vec<Reply>, EngineError> {
        Err(EngineError::Batch(ServeError::Internal(
            "continuous batching is served by Python handlers only".into(),
        )))
    }
    /// The worker process, when the engine has one.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// Whether the engine reports TorchServe's `HandlerTime` and `PredictionTime` itself (a
    /// Python worker prints them); for the others the worker loop reports them.
    fn reports_handler_time(&self) -> bool {
        false
    }
}

/// A native handler's work on a batch, with the model version's one loaded model: all its
/// workers share the handler, so adding workers adds no copy of the weights.
pub trait NativeBatch: Send + Sync + 'static {
    fn model(&self) -> &dyn backend::Backend;
    /// One reply per request, in order; an error fails the batch and the worker carries on.
    fn run(&self, batch: Vec<Prepared>) -> Result<Vec<Reply>, ServeError>;
}

/// Starts a native worker: readies the calling (worker) thread for the model's forward passes.
pub fn native_worker<H: NativeBatch>(handler: Arc<H>) -> Result<Box<dyn Engine>, String> {
    handler.model().prepare_thread();
    Ok(Box::new(Native(handler)))
}

/// A native worker's engine.
struct Native<H>(Arc<H>);

impl<H: NativeBatch> Engine for Native<H> {
    fn infer(
        &mut self,
        batch: Vec<Prepared>,
        _partial: &mut dyn FnMut(usize, Reply),
    ) -> Result<Vec<Reply>, EngineError> {
        self.0.run(batch).map_err(EngineError::Batch)
    }
}

/// A prepared input of another handler's kind reached a native handler.
pub fn unexpected_input() -> ServeError {
    ServeError::Internal("unexpected input for a native handler".into())
}

#[derive(Debug, Clone)]
pub enum EngineError {
    /// The batch failed (a handler error); the worker carries on.
    Batch(ServeError),
    /// The worker is gone (process died, broken protocol): it must be restarted.
    Died(ServeError),
}

/// Names of the handlers implemented natively.
pub const NATIVE_HANDLERS: &[&str] = &[
    tensor_classifier::NAME,
    json_tensor::NAME,
    vision::CLASSIFIER,
    vision::SEGMENTER,
    vision::DETECTOR,
];

/// Which runtime serves a model version, and why: describe's `servedBy`, and the load log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServedBy {
    pub runtime: Runtime,
    pub handler: String,
    pub reason: String,
}

/// In process (libtorch or ONNX Runtime), or TorchServe's Python worker.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Native,
    Python,
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Runtime::Native => "native",
            Runtime::Python => "python",
        })
    }
}

/// The choice before loading: a native handler (named by the archive's configuration, or
/// chosen because the archive's form allows it), or the Python worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Native {
        name: String,
        /// Named by `ferroserve.native_handler`: a model that cannot load natively fails
        /// instead of falling back to Python.
        explicit: bool,
        reason: String,
    },
    Python {
        reason: String,
    },
}

impl Choice {
    pub fn is_native(&self) -> bool {
        matches!(self, Choice::Native { .. })
    }
}

/// Which handler serves this archive.
pub fn choose(archive: &ModelArchive) -> Choice {
    let configured = archive.config.ferroserve("native_handler");
    if let Some(name) = configured.and_then(|v| v.as_str()) {
        return Choice::Native {
            name: name.to_string(),
            explicit: true,
            reason: "ferroserve.native_handler in model-config.yaml".into(),
        };
    }
    if configured.and_then(|v| v.as_bool()) == Some(false) {
        return Choice::Python {
            reason: "ferroserve.native_handler: false in model-config.yaml".into(),
        };
    }
    let model = &archive.manifest.model;
    let Some(handler) = model.handler.as_deref() else {
        return Choice::Python {
            reason: "the manifest names no handler".into(),
        };
    };
    if !NATIVE_HANDLERS.contains(&handler) {
        let reason = if handler == "text_classifier" {
            "text_classifier needs its pickled torchtext vocabulary: Python".to_string()
        } else {
            format!("handler {handler} is Python code")
        };
        return Choice::Python { reason };
    }
    if !vision::NAMES.contains(&handler) {
        return Choice::Native {
            name: handler.to_string(),
            explicit: false,
            reason: "the manifest names a native handler".into(),
        };
    }
    // TorchServe's built-in vision handlers load TorchScript with torch.jit.load, or an ONNX
    // file; an eager model (a Python class and its state dict) needs Python.
    if model.model_file.as_deref().is_some_and(|f| !f.is_empty()) {
        return Choice::Python {
            reason: "an eager model (modelFile and a state dict) needs Python to build".into(),
        };
    }
    let file = model.serialized_file.as_deref().unwrap_or_default();
    let extension = std::path::Path::new(file)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("pt" | "pth") => Choice::Native {
            name: handler.to_string(),
            explicit: false,
            reason: format!("built-in {handler} over TorchScript {file}"),
        },
        Some("onnx") if handler != vision::DETECTOR => Choice::Native {
            name: handler.to_string(),
            explicit: false,
            reason: format!("built-in {handler} over ONNX {file}"),
        },
        Some("onnx") => Choice::Python {
            reason: "object_detector reads torchvision's detection dicts, which ONNX models do not return".into(),
        },
        _ => Choice::Python {
            reason: format!("serializedFile {file:?} is neither TorchScript (.pt) nor ONNX (.onnx)"),
        },
    }
}

/// What building a handler needs beyond the archive.
pub struct HandlerSpec<'a> {
    pub runtime: &'a RuntimeOptions,
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub batch_size: usize,
    pub response_timeout: std::time::Duration,
    pub startup_timeout: std::time::Duration,
    /// `useVenv`: Python workers run in a virtual environment of the model's own.
    pub use_venv: bool,
    pub settings: &'a crate::config::Settings,
    pub metrics: &'a Arc<crate::metrics::Metrics>,
    /// Native replies carry observations for drift monitoring.
    pub observe: bool,
}

/// The request envelope of a model: the server-wide `service_envelope` wins over the
/// archive's, as in TorchServe.
pub fn envelope(settings: &crate::config::Settings, archive: &ModelArchive) -> Option<String> {
    settings
        .service_envelope
        .clone()
        .or_else(|| archive.manifest.model.envelope.clone())
}

/// Builds the handler for an archive: native when one is chosen, else TorchServe's Python
/// worker running the archive's own handler. A built-in handler whose model file the native
/// runtime cannot load falls back to Python, with the reason.
pub fn load(
    archive: &ModelArchive,
    spec: &HandlerSpec,
) -> Result<(Arc<dyn Handler>, ServedBy), LoadError> {
    let (name, explicit, reason) = match choose(archive) {
        Choice::Python { reason } => return python_served(archive, spec, reason),
        Choice::Native {
            name,
            explicit,
            reason,
        } => (name, explicit, reason),
    };
    let model = match native_model(archive, spec) {
        Ok(model) => model,
        Err(LoadError::Backend(e @ crate::error::BackendError::Load { .. })) if !explicit => {
            tracing::warn!(model = spec.model_name, error = %e, "the native runtime cannot load the model file; the Python worker serves it");
            return python_served(archive, spec, format!("native load failed: {e}"));
        }
        Err(e) => return Err(e),
    };
    let handler: Arc<dyn Handler> = match name.as_str() {
        tensor_classifier::NAME => Arc::new(tensor_classifier::TensorClassifier::new(
            archive,
            model,
            spec.observe,
        )?),
        json_tensor::NAME => Arc::new(json_tensor::JsonTensor::new(model, spec.observe)),
        vision::CLASSIFIER | vision::SEGMENTER | vision::DETECTOR => {
            Arc::new(vision::Vision::new(&name, archive, model, spec)?)
        }
        other => {
            return Err(LoadError::Unsupported(format!(
                "unknown native handler {other:?} (known: {})",
                NATIVE_HANDLERS.join(", ")
            )))
        }
    };
    Ok((
        handler,
        ServedBy {
            runtime: Runtime::Native,
            handler: name,
            reason,
        },
    ))
}

fn python_served(
    archive: &ModelArchive,
    spec: &HandlerSpec,
    reason: String,
) -> Result<(Arc<dyn Handler>, ServedBy), LoadError> {
    let handler = python_handler(archive, spec)?;
    let served = ServedBy {
        runtime: Runtime::Python,
        handler: archive.manifest.model.handler.clone().unwrap_or_default(),
        reason,
    };
    Ok((handler, served))
}

/// The archive's serialized model, loaded by the runtime its file calls for.
fn native_model(
    archive: &ModelArchive,
    spec: &HandlerSpec,
) -> Result<Arc<dyn backend::Backend>, LoadError> {
    let file = archive
        .manifest
        .model
        .serialized_file
        .as_deref()
        .ok_or_else(|| LoadError::Invalid("the manifest names no serializedFile".into()))?;
    let path = crate::archive::safe_join(&archive.dir, file).ok_or_else(|| {
        LoadError::Invalid(format!(
            "serializedFile {file:?} escapes the model directory"
        ))
    })?;
    if !path.is_file() {
        return Err(LoadError::Invalid(format!(
            "serializedFile {file} is missing from the archive"
        )));
    }
    Ok(Arc::from(backend::load(&path, spec.runtime)?))
}

fn python_handler(
    archive: &ModelArchive,
    spec: &HandlerSpec,
) -> Result<Arc<dyn Handler>, LoadError> {
    let settings = spec.settings;
    let handler = archive
        .manifest
        .model
        .handler
        .clone()
        .or_else(|| settings.default_service_handler.clone())
        .unwrap_or_else(|| {
            // TorchServe registers such a model and its workers then fail to start; the same
            // here, with the reason said once.
            tracing::warn!(
                model = spec.model_name,
                "no handler: the manifest names none, and neither the registration (`handler=`) nor `default_service_handler` gives one; its workers will fail to start"
            );
            String::new()
        });
    let ts_home = python::locate_ts(&settings.python)?;
    let (venv, worker_python) = if spec.use_venv {
        let (dir, venv_python) = python::create_venv(&settings.python, spec.model_name)?;
        (Some(dir), venv_python)
    } else {
        (None, settings.python.clone())
    };
    let deps = match (
        &archive.manifest.model.requirements_file,
        settings.install_py_dep_per_model,
    ) {
        (Some(file), true) => python::install_requirements(
            &settings.python,
            archive,
            file,
            spec.model_name,
            match venv {
                Some(_) => python::Requirements::Venv(&worker_python),
                None => python::Requirements::Directory,
            },
        )?,
        _ => None,
    };
    let model_dir = archive
        .dir
        .canonicalize()
        .map_err(|e| LoadError::Invalid(format!("model directory: {e}")))?;
    Ok(Arc::new(python::PythonHandler {
        model_name: spec.model_name.to_string(),
        model_dir,
        handler,
        envelope: envelope(settings, archive).unwrap_or_default(),
        batch_size: spec.batch_size,
        response_timeout: spec.response_timeout,
        startup_timeout: spec.startup_timeout,
        max_response_size: settings.max_response_size,
        decode_input_request: settings.decode_input_request,
        ipex: (settings.ipex_enable, settings.ipex_gpu_enable),
        limit_max_image_pixels: settings.limit_max_image_pixels,
        python: worker_python,
        venv,
        ts_home,
        socket_dir: python::socket_dir().map_err(|e| {
            LoadError::Invalid(format!("cannot create the worker socket directory: {e}"))
        })?,
        device: spec.runtime.device,
        deps,
        metrics: spec.metrics.clone(),
        metrics_config: settings.metrics_config.clone(),
        model_version: spec.model_version.to_string(),
        blacklist_env_vars: settings.blacklist_env_vars.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(choice: Choice) -> String {
        match choice {
            Choice::Python { reason } => format!("python: {reason}"),
            Choice::Native { name, reason, .. } => format!("native {name}: {reason}"),
        }
    }

    /// Which handler a model folder with this manifest model section and model-config.yaml
    /// gets.
    fn folder(model: &str, config: Option<&str>) -> Choice {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("m");
        std::fs::create_dir_all(root.join("MAR-INF")).unwrap();
        let config_key = if config.is_some() {
            r#", "configFile": "model-config.yaml""#
        } else {
            ""
        };
        std::fs::write(
            root.join("MAR-INF/MANIFEST.json"),
            format!(
                r#"{{"runtime": "python", "model": {{"modelName": "m", {model}{config_key}}}}}"#
            ),
        )
        .unwrap();
        if let Some(config) = config {
            std::fs::write(root.join("model-config.yaml"), config).unwrap();
        }
        choose(&ModelArchive::open(dir.path(), "m", 1 << 30).unwrap())
    }

    #[test]
    fn builtin_vision_archives_run_natively_unless_eager_or_told_not_to() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision");
        let open = |name| {
            reason(choose(
                &ModelArchive::open(&fixtures, name, 1 << 30).unwrap(),
            ))
        };
        assert_eq!(
            open("vclass.mar"),
            "native image_classifier: built-in image_classifier over TorchScript grid.pt"
        );
        assert_eq!(
            open("vclass_onnx.mar"),
            "native image_classifier: built-in image_classifier over ONNX grid.onnx"
        );
        assert_eq!(
            open("vseg.mar"),
            "native image_segmenter: built-in image_segmenter over TorchScript segmenter.pt"
        );
        assert!(
            open("vclass_eager.mar").starts_with("python: an eager model"),
            "{}",
            open("vclass_eager.mar")
        );
        let vision = r#""handler": "image_classifier", "serializedFile": "m.pt""#;
        assert!(folder(vision, None).is_native());
        let off = folder(vision, Some("ferroserve:\n  native_handler: false\n"));
        assert_eq!(
            reason(off),
            "python: ferroserve.native_handler: false in model-config.yaml"
        );
        let named = folder(
            r#""handler": "h.py", "serializedFile": "m.pt""#,
            Some("ferroserve:\n  native_handler: json_tensor\n"),
        );
        assert_eq!(
            reason(named),
            "native json_tensor: ferroserve.native_handler in model-config.yaml"
        );
        let text = folder(
            r#""handler": "text_classifier", "serializedFile": "m.pt""#,
            None,
        );
        assert!(reason(text).contains("torchtext vocabulary"));
        let onnx_detector = folder(
            r#""handler": "object_detector", "serializedFile": "m.onnx""#,
            None,
        );
        assert!(reason(onnx_detector).starts_with("python: object_detector reads"));
        let other = folder(
            r#""handler": "image_classifier", "serializedFile": "m.bin""#,
            None,
        );
        assert!(reason(other).contains("neither TorchScript"));
        let custom = folder(
            r#""handler": "my_handler.py", "serializedFile": "m.pt""#,
            None,
        );
        assert_eq!(
            reason(custom),
            "python: handler my_handler.py is Python code"
        );
    }

    /// A streamed answer joined whole, and refused once past the limit.
    #[tokio::test]
    async fn a_streamed_answer_is_collected_up_to_the_limit() {
        let streamed = |chunks: &[&'static str]| {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            for c in chunks {
                tx.try_send(Ok(Bytes::from_static(c.as_bytes()))).unwrap();
            }
            Reply {
                stream: Some(rx),
                ..Reply::new(200, None, Vec::new(), Bytes::from_static(b"ab"))
            }
        };
        assert_eq!(streamed(&["cd", "ef"]).collect(6).await.unwrap(), "abcdef");
        let e = streamed(&["cd", "ef"]).collect(5).await.unwrap_err();
        assert!(e.contains("larger than max_response_size (5 bytes)"), "{e}");
        let whole = Reply::new(200, None, Vec::new(), Bytes::from_static(b"whole"));
        assert_eq!(whole.collect(1).await.unwrap(), "whole");
    }
}
