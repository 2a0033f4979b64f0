//! TorchScript models through libtorch (`tch`).

use std::path::Path;

use super::{Backend, RuntimeOptions, Tensor};
use crate::device::Device;
use crate::error::BackendError;

pub struct TorchScriptModel {
    // CModule is Send + Sync; libtorch runs concurrent inference on one module safely.
    module: tch::CModule,
    device: Device,
}

impl TorchScriptModel {
    pub fn load(path: &Path, options: &RuntimeOptions) -> Result<Self, BackendError> {
        let mut module =
            tch::CModule::load_on_device(path, options.device.to_tch()).map_err(|e| {
                BackendError::Load {
                    file: path.display().to_string(),
                    reason: format!(
                        "{e} (is it TorchScript saved by torch <= {LIBTORCH_VERSION}?)"
                    ),
                }
            })?;
        module.set_eval();
        Ok(Self {
            module,
            device: options.device,
        })
    }
}

/// The libtorch this build links; newer TorchScript files may not load.
const LIBTORCH_VERSION: &str = "2.13";

impl Backend for TorchScriptModel {
    fn forward(&self, input: Tensor) -> Result<Tensor, BackendError> {
        let _guard = tch::no_grad_guard();
        let dims: Vec<i64> = input.shape.iter().map(|&d| d as i64).collect();
        let x = tch::Tensor::from_slice(&input.data)
            .view(dims.as_slice())
            .to_device(self.device.to_tch());
        let y = self
            .module
            .forward_ts(&[x])
            .map_err(|e| BackendError::Inference(e.to_string()))?;
        let y = y
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        let shape = y.size().iter().map(|&d| d as usize).collect();
        let data = Vec::<f32>::try_from(y.flatten(0, -1))
            .map_err(|e| BackendError::Inference(e.to_string()))?;
        Ok(Tensor { shape, data })
    }

    fn device(&self) -> Device {
        self.device
    }

    fn runtime(&self) -> &'static str {
        "torchscript"
    }
}
