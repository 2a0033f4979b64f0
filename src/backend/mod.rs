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

/// What a forward pass takes beyond one tensor: torchvision's detectors take a list of images.
#[derive(Debug)]
pub enum Input<'a> {
    Tensor(Tensor),
    Tensors(&'a [&'a Tensor]),
}

/// A model's structured answer: TorchScript returns tensors and tuples, lists and dicts of
/// them; ONNX Runtime returns its outputs by name (a dict).
#[derive(Debug)]
pub enum Value {
    Tensor(Tensor),
    /// A tuple or a list.
    Seq(Vec<Value>),
    Dict(Vec<(String, Value)>),
    Number(f64),
    /// Anything else (a string, None...), by its kind, for error messages.
    Other(String),
}

impl Value {
    /// The dict entry under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// What the value is, for messages naming an unexpected model answer.
    pub fn kind(&self) -> String {
        match self {
            Value::Tensor(t) => format!("a tensor of shape {:?}", t.shape),
            Value::Seq(items) => format!("a sequence of {} items", items.len()),
            Value::Dict(entries) => format!(
                "a dict with keys {:?}",
                entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
            ),
            Value::Number(_) => "a number".into(),
            Value::Other(kind) => kind.clone(),
        }
    }
}

pub trait Backend: Send + Sync {
    /// One forward pass; blocking, called from a worker thread.
    fn forward(&self, input: Tensor) -> Result<Tensor, BackendError>;
    /// One forward pass over `rows`, each of `row_shape`, as one batch `[rows.len(), ..]`. A
    /// row alone is moved into the forward pass (ONNX Runtime runs on that very buffer);
    /// several are copied once, into the runtime's input. A row of another length is refused.
    fn forward_rows(
        &self,
        rows: Vec<Vec<f32>>,
        row_shape: &[usize],
    ) -> Result<Tensor, BackendError> {
        let shape = batch_shape(&rows, row_shape)?;
        let data = match <[Vec<f32>; 1]>::try_from(rows) {
            Ok([row]) => row,
            Err(rows) => rows.concat(),
        };
        self.forward(Tensor::new(shape, data))
    }
    /// One forward pass with structured values in and out (dict outputs, lists of images).
    fn call(&self, input: Input<'_>) -> Result<Value, BackendError> {
        match input {
            Input::Tensor(t) => self.forward(t).map(Value::Tensor),
            Input::Tensors(_) => Err(BackendError::Inference(format!(
                "{} models take one input tensor, not a list of images",
                self.runtime()
            ))),
        }
    }
    /// Integrated-gradients attributions of output class `target` for each input row, as
    /// captum's `IntegratedGradients` computes them (zero baseline, Gauss-Legendre steps).
    fn integrated_gradients(
        &self,
        _input: Tensor,
        _target: i64,
        _steps: usize,
    ) -> Result<Tensor, BackendError> {
        Err(BackendError::Inference(format!(
            "explanations need gradients, which {} models do not give (TorchScript models do)",
            self.runtime()
        )))
    }
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

/// `[rows.len(), ..row_shape]`, when every row holds `row_shape`'s number of values.
fn batch_shape(rows: &[Vec<f32>], row_shape: &[usize]) -> Result<Vec<usize>, BackendError> {
    let per_row: usize = row_shape.iter().product();
    if let Some(row) = rows.iter().find(|r| r.len() != per_row) {
        return Err(BackendError::Inference(format!(
            "a row of {} values in a batch of rows of shape {row_shape:?}",
            row.len()
        )));
    }
    Ok(std::iter::once(rows.len())
        .chain(row_shape.iter().copied())
        .collect())
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
