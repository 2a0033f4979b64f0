//! TorchServe's built-in vision handlers, natively: `image_classifier`, `image_segmenter` and
//! `object_detector` (`ts/torch_handler/`). The request decoding, transforms and answers are
//! theirs; images are decoded and transformed on the request side (off the async executor),
//! a batch's images run as one forward pass, and `/explanations` computes captum's integrated
//! gradients with libtorch's autograd.

mod decode;
mod reply;
mod resample;
mod transform;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use base64::Engine as _;

use super::labels::Labels;
use super::observe::{self, Observation};
use super::{
    native_worker, unexpected_input, Engine, Handler, HandlerSpec, NativeBatch, Prepared, Reply,
    RequestInput,
};
use crate::archive::ModelArchive;
use crate::backend::{Backend, Input, Tensor, Value};
use crate::device::Device;
use crate::error::{BackendError, LoadError, ServeError};

pub const CLASSIFIER: &str = "image_classifier";
pub const SEGMENTER: &str = "image_segmenter";
pub const DETECTOR: &str = "object_detector";
/// The vision handlers' names, as archives name them.
pub const NAMES: &[&str] = &[CLASSIFIER, SEGMENTER, DETECTOR];

/// `ImageClassifier.topk`.
const DEFAULT_TOPK: usize = 5;
/// `VisionHandler.get_insights`: `IntegratedGradients.attribute(..., n_steps=15)`.
const EXPLAIN_STEPS: usize = 15;
/// The classifier's and segmenter's `Resize(256)` and `CenterCrop(224)`.
const RESIZE: u32 = 256;
const CROP: u32 = 224;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Classifier,
    Segmenter,
    Detector,
}

pub struct Vision {
    kind: Kind,
    model: Arc<dyn Backend>,
    labels: Labels,
    topk: usize,
    /// Pillow's decompression-bomb limit (`limit_max_image_pixels`), None when lifted.
    max_pixels: Option<u64>,
    /// The input form the detector takes, once a batch has shown it (UNKNOWN, LIST, STACKED).
    detector_form: AtomicU8,
    /// Whether replies carry observations (drift monitoring is on).
    observe: bool,
}

/// A request's tensor and its image's decoded size (none for a JSON list).
type Sized<'a> = (&'a Tensor, Option<(u32, u32)>);

const UNKNOWN: u8 = 0;
const LIST: u8 = 1;
const STACKED: u8 = 2;

impl Vision {
    pub fn new(
        name: &str,
        archive: &ModelArchive,
        model: Arc<dyn Backend>,
        spec: &HandlerSpec,
    ) -> Result<Self, LoadError> {
        let kind = match name {
            CLASSIFIER => Kind::Classifier,
            SEGMENTER => Kind::Segmenter,
            DETECTOR => Kind::Detector,
            other => {
                return Err(LoadError::Unsupported(format!(
                    "{other} is not a vision handler"
                )))
            }
        };
        // `set_max_result_classes`, configured: `handler: {topk: k}` in model-config.yaml.
        let topk = match archive.config.get("handler").and_then(|h| h.get("topk")) {
            None => DEFAULT_TOPK,
            Some(v) => v.as_u64().filter(|&k| k > 0).ok_or_else(|| {
                LoadError::Invalid(
                    "model-config.yaml: handler.topk must be a positive integer".into(),
                )
            })? as usize,
        };
        Ok(Self {
            kind,
            model,
            labels: Labels::load(archive)?,
            topk,
            max_pixels: spec
                .settings
                .limit_max_image_pixels
                .then_some(PILLOW_MAX_IMAGE_PIXELS),
            detector_form: AtomicU8::new(UNKNOWN),
            observe: spec.observe,
        })
    }

    /// `VisionHandler.preprocess` for one row: image bytes (a string is base64) through the
    /// handler's transforms (with the decoded size), or a JSON list taken as the tensor itself.
    fn tensor(&self, content: Content) -> Result<(Tensor, Option<(u32, u32)>), ServeError> {
        let image = |bytes: &[u8]| self.image(bytes).map(|(t, size)| (t, Some(size)));
        match content {
            Content::Array(t) => Ok((t, None)),
            Content::Bytes(b) => image(&b),
            Content::Base64(text) => image(
                &base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| {
                        ServeError::bad_input(format!("the image is not valid base64: {e}"))
                    })?,
            ),
        }
    }

    /// An image through the handler's transforms, and its decoded size.
    fn image(&self, bytes: &[u8]) -> Result<(Tensor, (u32, u32)), ServeError> {
        let image = decode::decode(bytes, self.max_pixels)?;
        let size = (image.width, image.height);
        Ok(match self.kind {
            Kind::Detector => {
                let shape = vec![3, image.height as usize, image.width as usize];
                (Tensor::new(shape, transform::to_tensor(&image)), size)
            }
            Kind::Classifier | Kind::Segmenter => (classifier_tensor(image)?, size),
        })
    }

    /// What drift monitoring records of one image: its decoded size and the mean intensity
    /// (0–1) of each channel of what the model was given. A JSON list is no image: nothing.
    fn observation(&self, input: &Tensor, size: Option<(u32, u32)>) -> Observation {
        let mut seen = observe::Inputs::new();
        if let Some((width, height)) = size {
            seen.push(("width", f64::from(width)));
            seen.push(("height", f64::from(height)));
            observe::channel_means(&input.data, 3, &mut seen);
            if self.kind != Kind::Detector {
                // Undo `Normalize`: a mean of normalized values is (intensity - mean) / std.
                for (i, (_, v)) in seen.iter_mut().skip(2).enumerate() {
                    *v = *v * f64::from(transform::STD[i]) + f64::from(transform::MEAN[i]);
                }
            }
        }
        Observation {
            top1: None,
            input: seen,
        }
    }

    /// One forward pass over requests of one shape (with their decoded sizes).
    fn predict(&self, group: &[Sized<'_>]) -> Result<Vec<Reply>, ServeError> {
        let failed =
            |e: BackendError| ServeError::PredictionFailed(format!("Prediction failed: {e}"));
        let tensors: Vec<&Tensor> = group.iter().map(|(t, _)| *t).collect();
        let stack = || stack(&tensors);
        let untyped = |bodies: Vec<String>| bodies.into_iter().map(|b| (b, None)).collect();
        let bodies: Vec<(String, Option<(usize, f32)>)> = match self.kind {
            Kind::Classifier => {
                let logits = self.model.forward(stack()).map_err(failed)?;
                reply::classes(&logits, group.len(), self.topk, &self.labels)?
                    .into_iter()
                    .map(|(body, top1)| (body, Some(top1)))
                    .collect()
            }
            Kind::Segmenter => {
                let out = self.model.call(Input::Tensor(stack())).map_err(failed)?;
                untyped(reply::segments(&out, group.len())?)
            }
            Kind::Detector => {
                let out = self.detect(group).map_err(failed)?;
                untyped(reply::detections(&out, group.len(), &self.labels)?)
            }
        };
        Ok(bodies
            .into_iter()
            .zip(group)
            .map(|((body, top1), (input, size))| {
                reply::json(body).observed_if(self.observe, || Observation {
                    top1,
                    ..self.observation(input, *size)
                })
            })
            .collect())
    }

    /// A detector's forward pass. torchvision's detectors take a list of images, models of a
    /// stacked batch (as TorchServe passes them) a tensor: the first batch tries the list,
    /// then the stack, and the form that worked is kept for the model's later batches.
    fn detect(&self, group: &[Sized<'_>]) -> Result<Value, BackendError> {
        let group: Vec<&Tensor> = group.iter().map(|(t, _)| *t).collect();
        let group = group.as_slice();
        let form = self.detector_form.load(Ordering::Relaxed);
        if form != STACKED {
            match self.model.call(Input::Tensors(group)) {
                Ok(out) => {
                    self.detector_form.store(LIST, Ordering::Relaxed);
                    return Ok(out);
                }
                Err(e) if form == LIST => return Err(e),
                Err(list) => {
                    let out = self
                        .model
                        .call(Input::Tensor(stack(group)))
                        .map_err(|stacked| {
                            BackendError::Inference(format!(
                                "as a list of images: {list}; as a stacked batch: {stacked}"
                            ))
                        })?;
                    self.detector_form.store(STACKED, Ordering::Relaxed);
                    return Ok(out);
                }
            }
        }
        self.model.call(Input::Tensor(stack(group)))
    }

    /// Attributions for requests of one shape and target.
    fn explain(&self, group: &[&Tensor], target: i64) -> Result<Vec<Reply>, ServeError> {
        let input = stack(group);
        let row_shape = input.shape[1..].to_vec();
        let attributions = self
            .model
            .integrated_gradients(input, target, EXPLAIN_STEPS)
            .map_err(|e| ServeError::PredictionFailed(format!("Prediction failed: {e}")))?;
        let per_row = row_shape.iter().product::<usize>().max(1);
        Ok(attributions
            .data
            .chunks(per_row)
            .map(|row| {
                let mut text = String::with_capacity(row.len() * 26);
                super::pyjson::write_nested(&mut text, &row_shape, row, 0);
                reply::json(text)
            })
            .collect())
    }
}

/// The classifier's and segmenter's input for one image, `[3, 224, 224]`: decoded, then
/// `Resize(256)`, `CenterCrop(224)`, `ToTensor` and `Normalize` (their `image_processing`).
/// `max_pixels` is Pillow's decompression-bomb limit (None: lifted).
pub fn classifier_input(bytes: &[u8], max_pixels: Option<u64>) -> Result<Tensor, ServeError> {
    classifier_tensor(decode::decode(bytes, max_pixels)?)
}

fn classifier_tensor(image: decode::Rgb) -> Result<Tensor, ServeError> {
    let image = transform::resize(image, RESIZE)?;
    let side = CROP as usize;
    let mut data = vec![0f32; 3 * side * side];
    transform::crop_normalize(&image, CROP, &mut data);
    Ok(Tensor::new(vec![3, side, side], data))
}

/// Pillow's default decompression-bomb limit, as the vision handlers apply it.
pub const PILLOW_MAX_IMAGE_PIXELS: u64 = decode::PILLOW_MAX_IMAGE_PIXELS;

/// Stacks requests' tensors of one shape into a batch (`torch.stack`).
fn stack(group: &[&Tensor]) -> Tensor {
    let mut shape = vec![group.len()];
    shape.extend_from_slice(&group[0].shape);
    let mut data = Vec::with_capacity(shape.iter().product());
    for t in group {
        data.extend_from_slice(&t.data);
    }
    Tensor::new(shape, data)
}

/// What a request row holds, as `VisionHandler.preprocess` tells them apart.
enum Content {
    Bytes(bytes::Bytes),
    Base64(String),
    Array(Tensor),
}

/// A JSON value of a row: a string is base64, a list is the tensor; an object (a KServe
/// instance) holds them under `data` or `body`, and the explanation's `target`.
fn from_json(value: &serde_json::Value, target: &mut i64) -> Result<Content, ServeError> {
    match value {
        serde_json::Value::String(s) => Ok(Content::Base64(s.clone())),
        serde_json::Value::Array(_) => {
            Ok(Content::Array(super::json_tensor::array_from_value(value)?))
        }
        serde_json::Value::Object(o) => {
            if let Some(t) = o.get("target").and_then(|t| t.as_i64()) {
                *target = t;
            }
            let inner = o
                .get("data")
                .filter(|v| !v.is_null())
                .or_else(|| o.get("body"))
                .ok_or_else(|| {
                    ServeError::bad_input("the JSON object has no \"data\" or \"body\" image")
                })?;
            if inner.is_object() {
                return Err(ServeError::bad_input(
                    "\"data\" must be an image (base64 string) or a list of numbers",
                ));
            }
            from_json(inner, target)
        }
        _ => Err(ServeError::bad_input(
            "the request must be an image, a base64 string or a list of numbers",
        )),
    }
}

impl Handler for Vision {
    fn prepare(&self, input: RequestInput) -> Result<Prepared, ServeError> {
        let explain = input
            .headers
            .iter()
            .any(|(k, v)| k == "explain" && v == "True");
        let param = input
            .data()
            .ok_or_else(|| ServeError::bad_input("missing request body: send an image"))?;
        let content_type = param
            .content_type
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut target = input
            .param("target")
            .and_then(|t| std::str::from_utf8(&t.value).ok()?.trim().parse().ok())
            .unwrap_or(0);
        // The Python worker hands JSON bodies over parsed and text as a string.
        let content = if content_type.starts_with("application/json") {
            let value: serde_json::Value = serde_json::from_slice(&param.value)
                .map_err(|e| ServeError::bad_input(format!("invalid JSON body: {e}")))?;
            from_json(&value, &mut target)?
        } else if content_type.starts_with("text/") {
            Content::Base64(String::from_utf8_lossy(&param.value).into_owned())
        } else {
            Content::Bytes(param.value.clone())
        };
        let (tensor, size) = self.tensor(content)?;
        Ok(match size {
            _ if explain => Prepared::Explain {
                input: tensor,
                target,
            },
            Some(size) => Prepared::Image { tensor, size },
            None => Prepared::Array(tensor),
        })
    }

    /// Decoding and resizing an image takes milliseconds, whatever its file's size.
    fn prepare_blocks(&self, _input: &RequestInput) -> bool {
        true
    }

    fn start_worker(self: Arc<Self>, _id: u32) -> Result<Box<dyn Engine>, String> {
        native_worker(self)
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    fn observed_inputs(&self) -> &'static [&'static str] {
        &[
            "width",
            "height",
            "channel_0_mean",
            "channel_1_mean",
            "channel_2_mean",
        ]
    }
}

impl NativeBatch for Vision {
    fn model(&self) -> &dyn Backend {
        self.model.as_ref()
    }

    /// Requests of one shape (and explanation target) run together, in order.
    fn run(&self, batch: Vec<Prepared>) -> Result<Vec<Reply>, ServeError> {
        let items = batch
            .iter()
            .map(|p| match p {
                Prepared::Array(t) => Ok(((t, None), None)),
                Prepared::Image { tensor, size } => Ok(((tensor, Some(*size)), None)),
                Prepared::Explain { input, target } => Ok(((input, None), Some(*target))),
                _ => Err(unexpected_input()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut replies = Vec::with_capacity(batch.len());
        for run in items.chunk_by(|a, b| a.0 .0.shape == b.0 .0.shape && a.1 == b.1) {
            let group: Vec<Sized<'_>> = run.iter().map(|(sized, _)| *sized).collect();
            replies.extend(match run[0].1 {
                None => self.predict(&group)?,
                Some(target) => {
                    let tensors: Vec<&Tensor> = group.iter().map(|(t, _)| *t).collect();
                    self.explain(&tensors, target)?
                }
            });
        }
        Ok(replies)
    }
}
