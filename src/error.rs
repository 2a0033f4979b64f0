//! Error types shared across layers, and the one place that maps them to TorchServe's
//! `{"code", "type", "message"}` bodies and status codes.

use thiserror::Error;

/// An error answered to an HTTP client. `kind` is the Java exception name TorchServe puts in
/// `type`; clients and dashboards match on it.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{kind}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequestException", message)
    }

    pub fn resource_not_found() -> Self {
        Self::new(
            404,
            "ResourceNotFoundException",
            "Requested resource is not found, please refer to API document.",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowedException",
            "Requested method is not allowed, please refer to API document.",
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "ModelNotFoundException",
            format!("Model not found: {model}"),
        )
    }

    pub fn version_not_found(model: &str, version: &str) -> Self {
        Self::new(
            404,
            "ModelVersionNotFoundException",
            format!("Model version: {version} does not exist for model: {model}"),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLargeException",
            format!("Request body exceeds max_request_size ({limit} bytes)"),
        )
    }

    /// TorchServe's exact text, including the stray quote it adds when a version is named.
    pub fn no_worker(model: &str, version: Option<&str>) -> Self {
        let who = match version {
            Some(v) => format!("Model \"{model}\" Version {v}\""),
            None => format!("Model \"{model}\""),
        };
        Self::new(
            503,
            "ServiceUnavailableException",
            format!(
                "{who} has no worker to serve inference request. Please use scale workers API to add workers. \
                 If this is a sequence inference, please check if it is closed, or expired; or exceeds maxSequenceJobQueueSize"
            ),
        )
    }

    pub fn internal(code: u16, message: impl Into<String>) -> Self {
        Self::new(code, "InternalServerException", message)
    }

    /// The body TorchServe writes: fields in its order, Gson pretty printing, trailing newline.
    pub fn body(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            code: u16,
            #[serde(rename = "type")]
            kind: &'a str,
            message: &'a str,
        }
        let mut s = serde_json::to_string_pretty(&Body {
            code: self.code,
            kind: self.kind,
            message: &self.message,
        })
        .expect("error body serializes");
        s.push('\n');
        s
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

impl From<LoadError> for ApiError {
    /// A model that cannot be loaded, as the register API reports it.
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Archive(ArchiveError::NotFound(message)) => {
                ApiError::new(404, "ModelNotFoundException", message)
            }
            LoadError::Backend(e) => ApiError::internal(500, e.to_string()),
            other => ApiError::new(400, "InvalidModelException", other.to_string()),
        }
    }
}
