//! TorchScript models through libtorch (`tch`).

use std::path::Path;

use super::{Backend, Input, RuntimeOptions, Tensor, Value};
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

impl TorchScriptModel {
    fn to_tch(&self, input: &Tensor) -> tch::Tensor {
        let dims: Vec<i64> = input.shape.iter().map(|&d| d as i64).collect();
        tch::Tensor::from_slice(&input.data)
            .view(dims.as_slice())
            .to_device(self.device.to_tch())
    }

    /// The module's `forward` on one input tensor already on the model's device.
    fn run_module(&self, x: tch::Tensor) -> Result<Tensor, BackendError> {
        let _guard = tch::no_grad_guard();
        let y = self.module.forward_ts(&[x]).map_err(inference)?;
        from_tch(&y)
    }
}

fn inference(e: tch::TchError) -> BackendError {
    BackendError::Inference(e.to_string())
}

/// A libtorch tensor as f32 on the CPU, whatever its kind (detectors' labels are int64).
fn from_tch(y: &tch::Tensor) -> Result<Tensor, BackendError> {
    let y = y
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Float)
        .contiguous();
    let shape = y.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(y.flatten(0, -1)).map_err(inference)?;
    Ok(Tensor { shape, data })
}

fn from_ivalue(v: &tch::IValue) -> Result<Value, BackendError> {
    use tch::IValue as I;
    Ok(match v {
        I::Tensor(t) => Value::Tensor(from_tch(t)?),
        I::TensorList(ts) => Value::Seq(
            ts.iter()
                .map(|t| from_tch(t).map(Value::Tensor))
                .collect::<Result<_, _>>()?,
        ),
        I::Tuple(items) | I::GenericList(items) => {
            Value::Seq(items.iter().map(from_ivalue).collect::<Result<_, _>>()?)
        }
        I::GenericDict(entries) => Value::Dict(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        I::String(s) => s.clone(),
                        I::Int(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    Ok((key, from_ivalue(v)?))
                })
                .collect::<Result<_, BackendError>>()?,
        ),
        I::Double(d) => Value::Number(*d),
        I::Int(i) => Value::Number(*i as f64),
        I::DoubleList(ds) => Value::Seq(ds.iter().map(|&d| Value::Number(d)).collect()),
        I::IntList(is) => Value::Seq(is.iter().map(|&i| Value::Number(i as f64)).collect()),
        other => Value::Other(format!("{other:?}").chars().take(40).collect()),
    })
}

/// Gauss-Legendre nodes and weights on [-1, 1] (numpy's `leggauss`), by Newton's method on
/// the Legendre polynomial from Chebyshev starting points.
fn leggauss(n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let mut x = -(std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
            let mut derivative = 1.0;
            for _ in 0..100 {
                // P_n(x) and P_n'(x) by the three-term recurrence.
                let (mut p0, mut p1) = (1.0, x);
                for k in 2..=n {
                    let p2 = ((2 * k - 1) as f64 * x * p1 - (k - 1) as f64 * p0) / k as f64;
                    (p0, p1) = (p1, p2);
                }
                let p = if n == 0 { 1.0 } else { p1 };
                derivative = n as f64 * (x * p - p0) / (x * x - 1.0);
                let dx = p / derivative;
                x -= dx;
                if dx.abs() < 1e-16 {
                    break;
                }
            }
            (x, 2.0 / ((1.0 - x * x) * derivative * derivative))
        })
        .collect()
}

impl Backend for TorchScriptModel {
    fn forward(&self, input: Tensor) -> Result<Tensor, BackendError> {
        self.run_module(self.to_tch(&input))
    }

    /// The rows are gathered straight into a libtorch tensor: the one copy libtorch needs
    /// (a row alone too: a module may keep its input past the call, so libtorch never gets
    /// our buffer).
    fn forward_rows(
        &self,
        rows: Vec<Vec<f32>>,
        row_shape: &[usize],
    ) -> Result<Tensor, BackendError> {
        let shape = super::batch_shape(&rows, row_shape)?;
        let per_row: usize = row_shape.iter().product();
        if rows.len() * per_row == 0 {
            // No values: an empty tensor has no storage to write into.
            return self.forward(Tensor::new(shape, Vec::new()));
        }
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let x = tch::Tensor::f_empty(dims.as_slice(), (tch::Kind::Float, tch::Device::Cpu))
            .map_err(inference)?;
        let base = x.data_ptr().cast::<f32>();
        for (i, row) in rows.iter().enumerate() {
            // SAFETY: `x` is a new contiguous f32 tensor of rows.len() × per_row elements
            // (not zero, so it has storage) that nothing else refers to; every row holds
            // per_row values (checked above), so each copy stays inside it.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(i * per_row), per_row) };
        }
        self.run_module(x.to_device(self.device.to_tch()))
    }

    fn call(&self, input: Input<'_>) -> Result<Value, BackendError> {
        let _guard = tch::no_grad_guard();
        let arg = match &input {
            Input::Tensor(t) => tch::IValue::Tensor(self.to_tch(t)),
            Input::Tensors(ts) => {
                tch::IValue::TensorList(ts.iter().map(|t| self.to_tch(t)).collect())
            }
        };
        let y = self.module.forward_is(&[arg]).map_err(inference)?;
        from_ivalue(&y)
    }

    /// captum's `IntegratedGradients.attribute(x, target=target, n_steps=steps)`: the inputs
    /// scaled by each step's alpha, batched in one forward and backward pass; the gradients
    /// weighted by the steps' sizes in float64, summed, times the input.
    fn integrated_gradients(
        &self,
        input: Tensor,
        target: i64,
        steps: usize,
    ) -> Result<Tensor, BackendError> {
        let x = self.to_tch(&input);
        let batch = input.shape.first().copied().unwrap_or(1) as i64;
        let nodes = leggauss(steps);
        let scaled: Vec<tch::Tensor> = nodes.iter().map(|(n, _)| &x * (0.5 * (1.0 + n))).collect();
        let scaled = tch::Tensor::cat(&scaled, 0).set_requires_grad(true);
        let out = self.module.forward_ts(&[&scaled]).map_err(inference)?;
        let classes = out.size().get(1).copied().unwrap_or(0);
        if out.dim() != 2 || !(0..classes).contains(&target) {
            return Err(BackendError::Inference(format!(
                "explanations need [batch, classes] logits and a target class in range; the model answered shape {:?} for target {target}",
                out.size()
            )));
        }
        let selected = out.select(1, target).sum(tch::Kind::Float);
        let grads = tch::Tensor::run_backward(&[selected], &[&scaled], false, false);
        let grads = grads.into_iter().next().ok_or_else(|| {
            BackendError::Inference("the model's output does not depend on its input".into())
        })?;
        let sizes: Vec<f64> = nodes.iter().map(|(_, w)| 0.5 * w).collect();
        let sizes = tch::Tensor::from_slice(&sizes)
            .to_device(grads.device())
            .view([steps as i64, 1]);
        let scaled_grads = grads.contiguous().view([steps as i64, -1]) * sizes;
        let mut shape = vec![steps as i64, batch];
        shape.extend(input.shape.iter().skip(1).map(|&d| d as i64));
        let total =
            scaled_grads
                .reshape(shape.as_slice())
                .sum_dim_intlist(0, false, tch::Kind::Double);
        from_tch(&(total * x.detach()))
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

    /// numpy.polynomial.legendre.leggauss(15), to the last digits numpy prints.
    #[test]
    fn gauss_legendre_nodes_are_numpys() {
        let nodes = leggauss(15);
        assert!(
            (nodes[0].0 - -0.9879925180204854).abs() < 1e-15,
            "{nodes:?}"
        );
        assert!((nodes[0].1 - 0.030753241996117).abs() < 1e-14, "{nodes:?}");
        assert!(nodes[7].0.abs() < 1e-15);
        assert!((nodes[7].1 - 0.2025782419255613).abs() < 1e-14, "{nodes:?}");
        assert!((nodes.iter().map(|n| n.1).sum::<f64>() - 2.0).abs() < 1e-14);
    }

    fn sign_model() -> TorchScriptModel {
        let store = Path::new(env!("CARGO_MANIFEST_DIR")).join("model-store");
        let archive = crate::archive::ModelArchive::open(&store, "sign.mar", 1 << 30).unwrap();
        let file = archive.file(archive.manifest.model.serialized_file.as_deref().unwrap());
        let options = RuntimeOptions {
            device: Device::Cpu,
            intra_op_threads: 1,
            onnxruntime_library: None,
        };
        TorchScriptModel::load(&file, &options).unwrap()
    }

    /// Rows gathered straight into libtorch's input answer as the same batch built as one
    /// buffer; a row of another length is refused, not read past.
    #[test]
    fn gathered_rows_answer_as_one_buffer() {
        let model = sign_model();
        let (frames, features) = (64, 469);
        let rows: Vec<Vec<f32>> = (0..3)
            .map(|r| {
                (0..frames * features)
                    .map(|i| ((r * 7919 + i) as f32 * 0.001).sin())
                    .collect()
            })
            .collect();
        let gathered = model
            .forward_rows(rows.clone(), &[frames, features])
            .unwrap();
        let whole = model
            .forward(Tensor::new(vec![3, frames, features], rows.concat()))
            .unwrap();
        assert_eq!(gathered, whole);
        assert_eq!(gathered.shape[0], 3);
        let short = vec![rows[0].clone(), rows[1][..100].to_vec()];
        assert!(model.forward_rows(short, &[frames, features]).is_err());
        // No values at all (a JSON body `[]`): the model's own error, not a write into nothing.
        assert!(model.forward_rows(vec![Vec::new()], &[0]).is_err());
    }

    #[test]
    fn worker_threads_take_the_intra_op_setting() {
        let model = sign_model();
        // A thread of its own, as a worker has: libtorch's default there is one per core.
        std::thread::scope(|s| {
            s.spawn(|| {
                model.prepare_thread();
                assert_eq!(tch::get_num_threads(), 1);
            });
        });
    }
}
