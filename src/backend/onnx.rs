//! ONNX models through ONNX Runtime (`ort`, loaded at run time from a configured library).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::SessionBuilder;
use ort::session::Session;

use super::{Backend, Input, RuntimeOptions, Tensor, Value};
use crate::device::Device;
use crate::error::BackendError;

/// ONNX Runtime is process-wide: its library is loaded and its environment created once.
static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Where to look for ONNX Runtime's library (`libonnxruntime.so`, `.dylib` on macOS) when
/// nothing is configured.
fn default_library() -> Option<PathBuf> {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let name = format!("{DLL_PREFIX}onnxruntime{DLL_SUFFIX}");
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("../lib").join(&name));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(
            PathBuf::from(home)
                .join(".cache/ferroserve/deps/onnxruntime-1.31.1/lib")
                .join(&name),
        );
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn runtime(configured: Option<&Path>) -> Result<&'static Environment, BackendError> {
    RUNTIME
        .get_or_init(|| {
            let path = configured
                .map(Path::to_path_buf)
                .or_else(default_library)
                .ok_or_else(|| {
                    "ONNX Runtime library not found: set onnxruntime_library in config.properties \
                     or ORT_DYLIB_PATH (scripts/native-deps.sh installs it)"
                        .to_string()
                })?;
            if !path.is_file() {
                return Err(format!(
                    "ONNX Runtime library {} does not exist (set onnxruntime_library or ORT_DYLIB_PATH)",
                    path.display()
                ));
            }
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("ferroserve")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
        })
        .as_ref()
        .map_err(|e| BackendError::Runtime(e.clone()))
}

/// An ONNX model: sessions of one model file. `run` takes a session exclusively, so the
/// model keeps a pool: a forward pass takes an idle session, or opens one when all are
/// running, and the model's workers run their forward passes in parallel. There are never
/// more sessions than forward passes ran at once, so at most one per worker.
pub struct OnnxModel {
    path: PathBuf,
    options: RuntimeOptions,
    /// Sessions no forward pass holds right now.
    idle: Mutex<Vec<Session>>,
    input_name: String,
    input_dims: Option<Vec<Option<usize>>>,
    device: Device,
}

impl OnnxModel {
    pub fn load(path: &Path, options: &RuntimeOptions) -> Result<Self, BackendError> {
        let (session, device) = open(path, options)?;
        let file = path.display().to_string();
        let input = session.inputs().first().ok_or_else(|| BackendError::Load {
            file,
            reason: "the model has no inputs".into(),
        })?;
        let input_name = input.name().to_string();
        let input_dims = input.dtype().tensor_shape().map(|shape| {
            shape
                .iter()
                .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
                .collect()
        });
        Ok(Self {
            path: path.to_path_buf(),
            options: options.clone(),
            idle: Mutex::new(vec![session]),
            input_name,
            input_dims,
            device,
        })
    }

    /// An idle session, or a new one when every session is running.
    fn take(&self) -> Result<Session, BackendError> {
        let idle = self.idle.lock().map_err(|_| poisoned())?.pop();
        match idle {
            Some(session) => Ok(session),
            None => Ok(open(&self.path, &self.options)?.0),
        }
    }

    fn give_back(&self, session: Session) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
        }
    }
}

fn poisoned() -> BackendError {
    BackendError::Inference("session pool poisoned by an earlier panic".into())
}

/// Opens a session of a model file with the server's threads and device; the device is the
/// one ONNX Runtime will really use.
fn open(path: &Path, options: &RuntimeOptions) -> Result<(Session, Device), BackendError> {
    let env = runtime(options.onnxruntime_library.as_deref())?;
    let file = path.display().to_string();
    let load_err = |reason: String| BackendError::Load {
        file: file.clone(),
        reason,
    };
    let builder = Session::builder(env)
        .map_err(|e| load_err(e.to_string()))?
        .with_intra_threads(options.intra_op_threads)
        .map_err(|e| load_err(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| load_err(e.to_string()))?;
    let (mut builder, device) = with_provider(builder, options.device, std::env::consts::OS, &file);
    let session = builder
        .commit_from_file(path)
        .map_err(|e| load_err(e.to_string()))?;
    Ok((session, device))
}

/// The execution provider a device asks ONNX Runtime for. ONNX Runtime has no MPS provider:
/// on macOS CoreML runs the model on the same Apple GPU (and Neural Engine); elsewhere an MPS
/// request can only mean the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Cpu,
    Cuda(usize),
    CoreMl,
}

impl Provider {
    /// The provider for `device` on the operating system `os` (`std::env::consts::OS`).
    fn for_device(device: Device, os: &str) -> Provider {
        match device {
            Device::Cpu => Provider::Cpu,
            Device::Cuda(i) => Provider::Cuda(i),
            Device::Mps if os == "macos" => Provider::CoreMl,
            Device::Mps => Provider::Cpu,
        }
    }

    /// The device a model runs on once this provider is registered.
    fn device(self) -> Device {
        match self {
            Provider::Cpu => Device::Cpu,
            Provider::Cuda(i) => Device::Cuda(i),
            Provider::CoreMl => Device::Mps,
        }
    }

    /// What to register; failing registration must be an error (the CUDA provider falls back
    /// to the CPU silently otherwise), so the fallback is logged.
    fn execution_provider(self) -> Option<ort::ep::ExecutionProviderDispatch> {
        match self {
            Provider::Cpu => None,
            Provider::Cuda(i) => Some(
                ort::ep::CUDA::default()
                    .with_device_id(i as i32)
                    .build()
                    .error_on_failure(),
            ),
            Provider::CoreMl => Some(ort::ep::CoreML::default().build().error_on_failure()),
        }
    }
}

/// Registers the provider of `device`; one that ONNX Runtime cannot register (a CPU-only
/// library, no GPU, CoreML outside macOS) is logged and the model runs on the CPU. Returns the
/// builder and the device ONNX Runtime will really use.
fn with_provider(
    builder: SessionBuilder,
    device: Device,
    os: &str,
    file: &str,
) -> (SessionBuilder, Device) {
    let provider = Provider::for_device(device, os);
    let Some(ep) = provider.execution_provider() else {
        if device != Device::Cpu {
            tracing::warn!(model = %file, %device, "ONNX Runtime has no provider for this device here; this ONNX model runs on the CPU");
        }
        return (builder, Device::Cpu);
    };
    match builder.with_execution_providers([ep]) {
        Ok(builder) => (builder, provider.device()),
        Err(e) => {
            tracing::warn!(model = %file, provider = ?provider, error = %e, "execution provider unavailable; this ONNX model runs on the CPU");
            (e.recover(), Device::Cpu)
        }
    }
}

fn inference(e: ort::Error) -> BackendError {
    BackendError::Inference(e.to_string())
}

/// An output as an f32 tensor; integer outputs (a detector's labels) are converted.
fn tensor_of(value: &ort::value::DynValue) -> Result<Tensor, BackendError> {
    let (shape, data) = match value.try_extract_tensor::<f32>() {
        Ok((shape, data)) => (shape.to_vec(), data.to_vec()),
        Err(_) => {
            let (shape, data) = value.try_extract_tensor::<i64>().map_err(inference)?;
            (shape.to_vec(), data.iter().map(|&v| v as f32).collect())
        }
    };
    Ok(Tensor {
        shape: shape.iter().map(|&d| d as usize).collect(),
        data,
    })
}

impl OnnxModel {
    /// Runs `input` on an idle session; `read` takes what it needs from the outputs before
    /// the session goes back to the pool.
    fn run<T>(
        &self,
        input: Tensor,
        read: impl FnOnce(&ort::session::SessionOutputs<'_>) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let value = ort::value::Tensor::from_array((input.shape, input.data)).map_err(inference)?;
        let mut session = self.take()?;
        let output = session
            .run(ort::inputs![self.input_name.as_str() => value])
            .map_err(inference)
            .and_then(|outputs| read(&outputs));
        self.give_back(session);
        output
    }
}

impl Backend for OnnxModel {
    fn forward(&self, input: Tensor) -> Result<Tensor, BackendError> {
        self.run(input, |outputs| tensor_of(&outputs[0]))
    }

    /// Every output, by name.
    fn call(&self, input: Input<'_>) -> Result<Value, BackendError> {
        let Input::Tensor(input) = input else {
            return Err(BackendError::Inference(
                "ONNX models take one input tensor, not a list of images".into(),
            ));
        };
        self.run(input, |outputs| {
            outputs
                .iter()
                .map(|(name, value)| Ok((name.to_string(), Value::Tensor(tensor_of(&value)?))))
                .collect::<Result<_, BackendError>>()
                .map(Value::Dict)
        })
    }

    fn device(&self) -> Device {
        self.device
    }

    fn input_dims(&self) -> Option<Vec<Option<usize>>> {
        self.input_dims.clone()
    }

    fn runtime(&self) -> &'static str {
        "onnxruntime"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_asks_for_its_provider() {
        for os in ["linux", "macos"] {
            assert_eq!(Provider::for_device(Device::Cpu, os), Provider::Cpu);
            assert_eq!(Provider::for_device(Device::Cuda(1), os), Provider::Cuda(1));
        }
        assert_eq!(Provider::for_device(Device::Mps, "macos"), Provider::CoreMl);
        assert_eq!(Provider::for_device(Device::Mps, "linux"), Provider::Cpu);
        assert_eq!(Provider::CoreMl.device(), Device::Mps);
    }

    /// Through the real ONNX Runtime library of this host (ORT_DYLIB_PATH, exported by
    /// scripts/env.sh), which has neither CoreML nor CUDA: the macOS and GPU choices fall back
    /// to the CPU instead of failing the model.
    #[test]
    fn a_provider_that_cannot_register_falls_back_to_the_cpu() {
        let library = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .expect("ORT_DYLIB_PATH (scripts/env.sh exports it)");
        let env = runtime(Some(&library)).unwrap();
        for (device, os) in [
            (Device::Mps, "macos"),
            (Device::Cuda(0), "linux"),
            (Device::Mps, "linux"),
            (Device::Cpu, "macos"),
        ] {
            let builder = Session::builder(env).unwrap();
            let (_, chosen) = with_provider(builder, device, os, "test.onnx");
            assert_eq!(chosen, Device::Cpu, "{device} on {os}");
        }
    }
}
