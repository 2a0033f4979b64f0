//! The domain's errors. [`ServeError`] is what the service, the registry, the handlers and the
//! queue report; each transport maps it once (REST: `api::error`, gRPC: `api::grpc::status`).

use thiserror::Error;

/// Why a request or a management operation failed. No transport's numbers here: REST and
/// gRPC each decide their status from the variant.
#[derive(Debug, Error, Clone)]
pub enum ServeError {
    #[error("Model not found: {0}")]
    ModelNotFound(String),
    #[error("Model version: {version} does not exist for model: {model}")]
    VersionNotFound { model: String, version: String },
    /// set-default's own wording of a missing version.
    #[error("Model version {version} does not exist for model {model}")]
    DefaultVersionNotFound { model: String, version: String },
    /// A registration's archive, store or URL is not there (TorchServe's texts).
    #[error("{0}")]
    ArchiveNotFound(String),
    #[error("Failed to download archive from: {0}")]
    DownloadFailed(String),
    #[error("Model file already exists {0}")]
    FileExists(String),
    #[error("Model {0} has no traffic split")]
    NoSplit(String),
    #[error("Version {version} is not a canary of model {model}")]
    NotCanary { model: String, version: String },
    #[error("Model {0} has several canaries; name one with ?version=")]
    AmbiguousCanary(String),
    /// TorchServe's text, including the stray quote it adds when a version is named.
    #[error("{} has no worker to serve inference request. Please use scale workers API to add workers. If this is a sequence inference, please check if it is closed, or expired; or exceeds maxSequenceJobQueueSize", who(.model, .version.as_deref()))]
    NoWorker {
        model: String,
        version: Option<String>,
    },
    #[error("Model \"{0}\" has no worker to serve describe request. Please use scale workers API to add workers.")]
    NoDescribeWorker(String),
    /// The job queue is full, or (`useJobTicket`) no worker waits for a request; TorchServe
    /// answers both as [`ServeError::NoWorker`].
    #[error("{} has no worker to serve inference request. Please use scale workers API to add workers. If this is a sequence inference, please check if it is closed, or expired; or exceeds maxSequenceJobQueueSize", who(.model, .version.as_deref()))]
    QueueFull {
        model: String,
        version: Option<String>,
    },
    /// A queued request older than the model's `clientTimeoutInMills` when a worker reached
    /// it: answered instead of run (TorchServe drops it without an answer).
    #[error("Request dropped: it waited {waited_ms} ms in the queue, longer than the model's clientTimeoutInMills ({limit_ms} ms)")]
    ClientTimeout { waited_ms: u64, limit_ms: u64 },
    /// The request, or a management call's parameters, cannot be used.
    #[error("{0}")]
    BadInput(String),
    /// An archive that cannot become a model.
    #[error("{0}")]
    InvalidModel(String),
    #[error("Cannot remove default version for model {0}")]
    DefaultVersionInUse(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    WorkersNotStarted(String),
    /// The engine died under the request (process exit, broken protocol, panic).
    #[error("Worker died.")]
    WorkerDied,
    /// No answer within the response timeout; TorchServe words it as a dead worker.
    #[error("Worker died.")]
    Timeout,
    /// A native model's forward failed, or answered the wrong shape or count.
    #[error("{0}")]
    PredictionFailed(String),
    /// A Python worker's own failure status and message, passed on as TorchServe does.
    #[error("{message}")]
    Backend { status: u16, message: String },
    #[error("client disconnected")]
    ClientGone,
    #[error("{0}")]
    Workflow(String, WorkflowFault),
    #[error("{0}")]
    Internal(String),
}

/// Which of TorchServe's workflow exceptions a workflow failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowFault {
    NotFound,
    Invalid,
    Dag,
    Conflict,
    Nodes,
    Internal,
}

fn who(model: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("Model \"{model}\" Version {v}\""),
        None => format!("Model \"{model}\""),
    }
}

impl ServeError {
    pub fn model_not_found(model: &str) -> Self {
        Self::ModelNotFound(model.to_string())
    }

    pub fn version_not_found(model: &str, version: &str) -> Self {
        Self::VersionNotFound {
            model: model.to_string(),
            version: version.to_string(),
        }
    }

    pub fn no_worker(model: &str, version: Option<&str>) -> Self {
        Self::NoWorker {
            model: model.to_string(),
            version: version.map(str::to_string),
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadInput(message.into())
    }

    /// The request's own fault (TorchServe's 4xx), as opposed to the server's or the model's.
    pub fn is_client_fault(&self) -> bool {
        match self {
            Self::ModelNotFound(_)
            | Self::VersionNotFound { .. }
            | Self::DefaultVersionNotFound { .. }
            | Self::ArchiveNotFound(_)
            | Self::DownloadFailed(_)
            | Self::NoSplit(_)
            | Self::NotCanary { .. }
            | Self::AmbiguousCanary(_)
            | Self::BadInput(_)
            | Self::InvalidModel(_)
            | Self::DefaultVersionInUse(_)
            | Self::Conflict(_)
            | Self::ClientGone => true,
            Self::Backend { status, .. } => (400..500).contains(status),
            Self::Workflow(_, fault) => {
                matches!(
                    fault,
                    WorkflowFault::NotFound | WorkflowFault::Dag | WorkflowFault::Conflict
                )
            }
            _ => false,
        }
    }
}

/// Why a model archive could not be read or loaded.
#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("model archive not found: {0}")]
    NotFound(String),
    #[error("cannot read model archive {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt model archive {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("unsafe entry {entry:?} in model archive {path}: {reason}")]
    UnsafeEntry {
        path: String,
        entry: String,
        reason: &'static str,
    },
    #[error("model archive {path} is too large when extracted: {reason}")]
    TooLarge { path: String, reason: String },
    #[error("invalid MAR-INF/MANIFEST.json in {path}: {reason}")]
    InvalidManifest { path: String, reason: String },
    #[error("invalid model config {file} in {path}: {reason}")]
    InvalidModelConfig {
        path: String,
        file: String,
        reason: String,
    },
}

/// Why a model could not be turned into a running native model.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Invalid(String),
}

/// Failures inside a runtime (libtorch, ONNX Runtime).
#[derive(Debug, Error, Clone)]
pub enum BackendError {
    #[error("cannot load {file}: {reason}")]
    Load { file: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("{0}")]
    Runtime(String),
}

/// A bad start-up configuration: one line naming the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid value for {key}: {value:?} ({reason})")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}

impl ConfigError {
    pub fn invalid(key: &str, value: &str, reason: impl Into<String>) -> Self {
        Self::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<LoadError> for ServeError {
    /// A model that cannot be loaded, as the register API reports it.
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Archive(ArchiveError::NotFound(message)) => Self::ArchiveNotFound(message),
            LoadError::Backend(e) => Self::Internal(e.to_string()),
            other => Self::InvalidModel(other.to_string()),
        }
    }
}
