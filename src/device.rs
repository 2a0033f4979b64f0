//! Device selection at start-up, like the image's `start.sh`: `TORCH_DEVICE` (or `DEVICE`,
//! or `FORCE_CPU=true`) picks `auto|cpu|cuda|cuda:N|mps`; auto prefers CUDA, then MPS, then CPU.
//! An invalid or unavailable device stops start-up.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
    Mps,
}

impl Device {
    pub fn to_tch(self) -> tch::Device {
        match self {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(i) => tch::Device::Cuda(i),
            Device::Mps => tch::Device::Mps,
        }
    }

    pub fn is_gpu(self) -> bool {
        !matches!(self, Device::Cpu)
    }

    /// `deviceType` in describe output: TorchServe says `cpu` or `gpu`.
    pub fn device_type(self) -> &'static str {
        if self.is_gpu() {
            "gpu"
        } else {
            "cpu"
        }
    }
}

/// A model's device from its model-config.yaml, as TorchServe decides it: `deviceType: cpu`
/// keeps it on the CPU (`gpu` on a host without one is the CPU too); `deviceIds` names the GPU,
/// and a list with an id outside `[0, gpus)` is ignored with a warning (on a CPU host it always
/// is). TorchServe spreads workers round-robin over several ids; ferroserve runs a version on
/// one device, so a list of several valid ids is refused by name.
pub fn for_model(
    device_type: Option<&str>,
    device_ids: Option<&[i64]>,
    server: Device,
    gpus: usize,
) -> Result<Device, String> {
    if device_type.is_some_and(|t| t.eq_ignore_ascii_case("cpu")) || !server.is_gpu() {
        if device_ids.is_some_and(|ids| !ids.is_empty()) {
            tracing::warn!("model-config.yaml: deviceIds ignored: the model runs on the CPU");
        }
        return Ok(Device::Cpu);
    }
    let Some(ids) = device_ids.filter(|ids| !ids.is_empty()) else {
        return Ok(server);
    };
    if ids.iter().any(|&id| id < 0 || id as usize >= gpus) {
        tracing::warn!(?ids, gpus, "model-config.yaml: invalid deviceIds, ignored");
        return Ok(server);
    }
    match (ids, server) {
        ([id], Device::Cuda(_)) => Ok(Device::Cuda(*id as usize)),
        ([_], _) => Ok(server),
        _ => Err(format!(
            "model-config.yaml: deviceIds is not supported by ferroserve with more than one GPU ({ids:?}): a model version runs on one device; list one id"
        )),
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Mps => f.write_str("mps"),
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(Option<usize>),
    Mps,
}

#[derive(Debug, Error, PartialEq)]
pub enum DeviceError {
    #[error("invalid {var} value {value:?}: expected auto, cpu, cuda, cuda:N or mps")]
    Invalid { var: &'static str, value: String },
    #[error("{0} was requested but is not available: {1}")]
    Unavailable(String, String),
}

impl DeviceRequest {
    /// Reads `FORCE_CPU`, then `TORCH_DEVICE`, then `DEVICE`.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, DeviceError> {
        if env
            .get("FORCE_CPU")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
        {
            return Ok(DeviceRequest::Cpu);
        }
        for var in ["TORCH_DEVICE", "DEVICE"] {
            if let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) {
                return Self::parse(var, v);
            }
        }
        Ok(DeviceRequest::Auto)
    }

    pub fn parse(var: &'static str, value: &str) -> Result<Self, DeviceError> {
        let v = value.trim().to_ascii_lowercase();
        let invalid = || DeviceError::Invalid {
            var,
            value: value.to_string(),
        };
        match v.as_str() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda(None)),
            "mps" => Ok(DeviceRequest::Mps),
            _ => match v.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(|i| DeviceRequest::Cuda(Some(i)))
                    .map_err(|_| invalid()),
                None => Err(invalid()),
            },
        }
    }
}

/// What the host offers.
pub trait Probe {
    /// A cheap look for an NVIDIA GPU, so that `auto` loads the CUDA libraries only then.
    fn gpu_present(&mut self) -> bool;
    fn cuda_devices(&mut self) -> Result<usize, String>;
    fn mps(&mut self) -> bool;
}

/// Probes through libtorch. CUDA needs `libtorch_cuda.so` loaded globally first: the linker
/// drops it (`--as-needed`) since nothing references it, so its kernels would never register.
pub struct LibtorchProbe {
    /// Extra places to look for `libtorch_cuda.so`.
    pub search: Vec<PathBuf>,
}

impl LibtorchProbe {
    pub fn new(env: &HashMap<String, String>) -> Self {
        let mut search = Vec::new();
        if let Some(p) = env.get("FERROSERVE_LIBTORCH_CUDA") {
            search.push(PathBuf::from(p));
        }
        if let Some(dir) = env.get("LIBTORCH") {
            search.push(PathBuf::from(dir).join("lib/libtorch_cuda.so"));
        }
        if let Some(dir) = option_env!("FERROSERVE_LIBTORCH_LIB") {
            search.push(PathBuf::from(dir).join("libtorch_cuda.so"));
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                search.push(dir.join("../lib/libtorch_cuda.so"));
            }
        }
        Self { search }
    }

    fn load_cuda(&self) -> Result<(), String> {
        let Some(path) = self.search.iter().find(|p| p.is_file()) else {
            return Err("libtorch_cuda.so not found (scripts/native-deps.sh --cuda fetches it; or set FERROSERVE_LIBTORCH_CUDA)".into());
        };
        // SAFETY: loading libtorch's own CUDA library; its initialisers only register kernels.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        // The kernels must stay registered for the life of the process.
        std::mem::forget(lib);
        Ok(())
    }
}

impl Probe for LibtorchProbe {
    fn gpu_present(&mut self) -> bool {
        let driver_gpus = std::fs::read_dir("/proc/driver/nvidia/gpus")
            .is_ok_and(|mut entries| entries.next().is_some());
        driver_gpus || std::path::Path::new("/dev/nvidia0").exists()
    }

    fn cuda_devices(&mut self) -> Result<usize, String> {
        self.load_cuda()?;
        match tch::Cuda::device_count() {
            0 => {
                Err("no CUDA device visible (driver missing or CUDA_VISIBLE_DEVICES empty)".into())
            }
            n => Ok(n as usize),
        }
    }

    fn mps(&mut self) -> bool {
        tch::utils::has_mps()
    }
}

/// Resolves the request against what the host offers.
pub fn select(request: DeviceRequest, probe: &mut dyn Probe) -> Result<Device, DeviceError> {
    match request {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Cuda(index) => {
            let n = probe
                .cuda_devices()
                .map_err(|e| DeviceError::Unavailable("cuda".into(), e))?;
            let i = index.unwrap_or(0);
            if i >= n {
                return Err(DeviceError::Unavailable(
                    format!("cuda:{i}"),
                    format!("only {n} CUDA device(s)"),
                ));
            }
            Ok(Device::Cuda(i))
        }
        DeviceRequest::Mps => {
            if probe.mps() {
                Ok(Device::Mps)
            } else {
                Err(DeviceError::Unavailable(
                    "mps".into(),
                    "MPS exists only on Apple Silicon macOS, never inside Linux containers".into(),
                ))
            }
        }
        DeviceRequest::Auto => {
            if probe.gpu_present() && probe.cuda_devices().is_ok() {
                Ok(Device::Cuda(0))
            } else if probe.mps() {
                Ok(Device::Mps)
            } else {
                Ok(Device::Cpu)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        cuda: usize,
        mps: bool,
    }
    impl Probe for Fake {
        fn gpu_present(&mut self) -> bool {
            self.cuda > 0
        }
        fn cuda_devices(&mut self) -> Result<usize, String> {
            if self.cuda == 0 {
                Err("none".into())
            } else {
                Ok(self.cuda)
            }
        }
        fn mps(&mut self) -> bool {
            self.mps
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parse_requests() {
        assert_eq!(
            DeviceRequest::from_env(&env(&[])).unwrap(),
            DeviceRequest::Auto
        );
        assert_eq!(
            DeviceRequest::from_env(&env(&[("TORCH_DEVICE", "CUDA:1")])).unwrap(),
            DeviceRequest::Cuda(Some(1))
        );
        assert_eq!(
            DeviceRequest::from_env(&env(&[("DEVICE", "mps")])).unwrap(),
            DeviceRequest::Mps
        );
        assert_eq!(
            DeviceRequest::from_env(&env(&[("TORCH_DEVICE", "cuda"), ("FORCE_CPU", "true")]))
                .unwrap(),
            DeviceRequest::Cpu
        );
        let err = DeviceRequest::from_env(&env(&[("TORCH_DEVICE", "tpu")])).unwrap_err();
        assert!(err.to_string().contains("TORCH_DEVICE") && err.to_string().contains("tpu"));
        assert!(DeviceRequest::parse("TORCH_DEVICE", "cuda:x").is_err());
    }

    #[test]
    fn auto_prefers_cuda_then_mps_then_cpu() {
        let pick = |cuda, mps| select(DeviceRequest::Auto, &mut Fake { cuda, mps }).unwrap();
        assert_eq!(pick(2, true), Device::Cuda(0));
        assert_eq!(pick(0, true), Device::Mps);
        assert_eq!(pick(0, false), Device::Cpu);
    }

    #[test]
    fn unavailable_devices_are_errors() {
        let mut none = Fake {
            cuda: 0,
            mps: false,
        };
        assert!(select(DeviceRequest::Cuda(None), &mut none).is_err());
        assert!(select(DeviceRequest::Mps, &mut none).is_err());
        let mut one = Fake {
            cuda: 1,
            mps: false,
        };
        assert!(select(DeviceRequest::Cuda(Some(1)), &mut one).is_err());
        assert_eq!(
            select(DeviceRequest::Cuda(Some(0)), &mut one).unwrap(),
            Device::Cuda(0)
        );
    }

    #[test]
    fn a_models_device_follows_device_type_and_ids() {
        let gpu = Device::Cuda(0);
        assert_eq!(for_model(Some("cpu"), None, gpu, 2), Ok(Device::Cpu));
        assert_eq!(
            for_model(Some("gpu"), None, Device::Cpu, 0),
            Ok(Device::Cpu)
        );
        assert_eq!(for_model(None, Some(&[1]), gpu, 2), Ok(Device::Cuda(1)));
        // An id outside the GPUs present: the list is ignored, as in TorchServe.
        assert_eq!(for_model(None, Some(&[3]), gpu, 2), Ok(gpu));
        assert_eq!(for_model(None, Some(&[0]), Device::Cpu, 0), Ok(Device::Cpu));
        let e = for_model(None, Some(&[0, 1]), gpu, 2).unwrap_err();
        assert!(e.contains("deviceIds"), "{e}");
    }
}
