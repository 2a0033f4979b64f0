//! TorchScript models through libtorch (`tch`).

use std::path::Path;

use super::{Backend, RuntimeOptions, Tensor};
use crate::device::Device;
use crate::error::BackendError;

pub struct TorchScriptModel {
    // CModule is Send + Sync; libtorch runs concurrent inference on one module safely.
    module: tch::CModule,
    device: Device,
    intra_op_threads: usize,
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
            intra_op_threads: options.intra_op_threads.max(1),
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

    /// libtorch's intra-op thread count (OpenMP's) is per thread: a thread that never set it
    /// runs every operator on as many threads as there are cores, whatever the setting says.
    fn prepare_thread(&self) {
        tch::set_num_threads(self.intra_op_threads as i32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_take_the_intra_op_setting() {
        let store = Path::new(env!("CARGO_MANIFEST_DIR")).join("model-store");
        let archive = crate::archive::ModelArchive::open(&store, "sign.mar", 1 << 30).unwrap();
        let file = archive.file(archive.manifest.model.serialized_file.as_deref().unwrap());
        let options = RuntimeOptions {
            device: Device::Cpu,
            intra_op_threads: 1,
            onnxruntime_library: None,
        };
        let model = TorchScriptModel::load(&file, &options).unwrap();
        // A thread of its own, as a worker has: libtorch's default there is one per core.
        std::thread::scope(|s| {
            s.spawn(|| {
                model.prepare_thread();
                assert_eq!(tch::get_num_threads(), 1);
            });
        });
    }
}
