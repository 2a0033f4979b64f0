//! Runtimes behind one trait. A backend owns one loaded copy of a model's weights and runs a
//! forward pass on a dense f32 tensor; it is shared by every worker of a model version.

pub mod onnx;
pub mod torchscript;

use std::path::Path;

use crate::device::Device;
use crate::error::BackendError;

/// A dense, row-major f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
}

pub trait Backend: Send + Sync {
    /// One forward pass; blocking, called from a worker thread.
    fn forward(&self, input: Tensor) -> Result<Tensor, BackendError>;
    /// The device the model actually runs on (ONNX Runtime may fall back to the CPU).
    fn device(&self) -> Device;
    /// The input's static dimensions, where the model file records them (`None` = dynamic).
    fn input_dims(&self) -> Option<Vec<Option<usize>>> {
        None
    }
    fn runtime(&self) -> &'static str;
    /// Readies the calling thread to run forward passes (a worker thread, before its first).
    fn prepare_thread(&self) {}
}

/// How to reach the runtimes.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub device: Device,
    pub intra_op_threads: usize,
    pub onnxruntime_library: Option<std::path::PathBuf>,
}

/// Loads a serialized model, picking the runtime from the file: `.onnx` → ONNX Runtime,
/// anything else (`.pt`, `.pth`, `.torchscript`...) → TorchScript through libtorch.
pub fn load(path: &Path, options: &RuntimeOptions) -> Result<Box<dyn Backend>, BackendError> {
    let is_onnx = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if is_onnx {
        Ok(Box::new(onnx::OnnxModel::load(path, options)?))
    } else {
        Ok(Box::new(torchscript::TorchScriptModel::load(
            path, options,
        )?))
    }
}
