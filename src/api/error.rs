//! TorchServe's REST error answers: `{"code", "type", "message"}` bodies and their status,
//! decided for every [`ServeError`] in one place.

use crate::error::{ServeError, WorkflowFault};
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

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLargeException",
            format!("Request body exceeds max_request_size ({limit} bytes)"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalServerException", message)
    }

    /// TorchServe's answer to a missing, wrong or expired key.
    pub fn denied() -> Self {
        Self::new(
            400,
            "InvalidKeyException",
            "Token Authorization failed. Token either incorrect, expired, or not provided correctly",
        )
    }

    /// TorchServe's answer to a refused key rotation (its wording differs from `denied`).
    pub fn rotation_denied() -> Self {
        Self::new(
            400,
            "InvalidKeyException",
            "Token Authentication failed. Token either incorrect, expired, or not provided correctly",
        )
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

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        use ServeError as E;
        let (code, kind) = match &e {
            E::ModelNotFound(_) | E::ArchiveNotFound(_) | E::NoSplit(_) => {
                (404, "ModelNotFoundException")
            }
            E::VersionNotFound { .. } | E::DefaultVersionNotFound { .. } => {
                (404, "ModelVersionNotFoundException")
            }
            E::DownloadFailed(_) => (400, "DownloadArchiveException"),
            E::NotCanary { .. } | E::AmbiguousCanary(_) | E::BadInput(_) | E::ClientGone => {
                (400, "BadRequestException")
            }
            E::InvalidModel(_) => (400, "InvalidModelException"),
            E::DefaultVersionInUse(_) => (403, "InvalidModelVersionException"),
            E::Conflict(_) => (409, "ConflictStatusException"),
            E::NoWorker { .. }
            | E::QueueFull { .. }
            | E::NoDescribeWorker(_)
            | E::ClientTimeout { .. } => (503, "ServiceUnavailableException"),
            E::PredictionFailed(_) => (503, "InternalServerException"),
            E::Backend { status, .. } => (*status, "InternalServerException"),
            E::FileExists(_)
            | E::WorkersNotStarted(_)
            | E::WorkerDied
            | E::Timeout
            | E::Internal(_) => (500, "InternalServerException"),
            E::Workflow(_, fault) => match fault {
                WorkflowFault::NotFound => (404, "WorkflowNotFoundException"),
                WorkflowFault::Invalid => (500, "InvalidWorkflowException"),
                WorkflowFault::Dag => (400, "InvalidDAGException"),
                WorkflowFault::Conflict => (409, "ConflictStatusException"),
                WorkflowFault::Nodes => (500, "WorkflowException"),
                WorkflowFault::Internal => (500, "InternalServerException"),
            },
        };
        ApiError::new(code, kind, e.to_string())
    }
}
