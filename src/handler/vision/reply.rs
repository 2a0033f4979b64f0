//! The vision handlers' `postprocess`, written as TorchServe's worker writes what they return
//! (`json.dumps(item, indent=2)` per image).

use bytes::Bytes;

use super::super::labels::Labels;
use super::super::pyjson::{push_py_float, push_py_str, write_float_dict, write_nested};
use super::super::scores::{ranked, softmax};
use super::super::Reply;
use crate::backend::{Tensor, Value};
use crate::error::ServeError;

/// `ObjectDetector.threshold`.
const DETECTION_THRESHOLD: f32 = 0.5;

pub fn json(text: String) -> Reply {
    Reply::new(200, None, Vec::new(), Bytes::from(text))
}

fn unexpected(what: String) -> ServeError {
    ServeError::PredictionFailed(format!("Prediction failed: {what}"))
}

/// The dimensions of a model's `[batch, classes, ...]` answer, checked against the batch.
fn batch_dims<const N: usize>(
    t: &Tensor,
    batch: usize,
    what: &str,
    expected: &str,
) -> Result<[usize; N], ServeError> {
    let dims: [usize; N] = t.shape[..]
        .try_into()
        .map_err(|_| unexpected(format!("{what} has shape {:?}; {expected}", t.shape)))?;
    if dims[0] != batch || dims.get(1) == Some(&0) {
        return Err(unexpected(format!(
            "{what} has shape {:?} for a batch of {batch}",
            t.shape
        )));
    }
    Ok(dims)
}

/// An image's answer and its top-1 class with that class's probability.
pub type Classified = (String, (usize, f32));

/// `ImageClassifier.postprocess`, with each image's top-1 class and probability: softmax, the top k classes (most probable first) as
/// `{label: probability}`.
pub fn classes(
    logits: &Tensor,
    batch: usize,
    topk: usize,
    labels: &Labels,
) -> Result<Vec<Classified>, ServeError> {
    let [_, classes] = batch_dims(
        logits,
        batch,
        "the model's answer",
        "image_classifier takes [batch, classes] logits",
    )?;
    Ok(logits
        .data
        .chunks(classes)
        .map(|row| {
            let probs = softmax(row);
            let order = ranked(&probs);
            let names: Vec<_> = order.iter().take(topk).map(|&c| labels.name(c)).collect();
            let mut text = String::with_capacity(64 * topk);
            write_float_dict(
                &mut text,
                names
                    .iter()
                    .zip(&order)
                    .map(|(name, &c)| (name.as_ref(), f64::from(probs[c]))),
                0,
            );
            (text, (order[0], probs[order[0]]))
        })
        .collect())
}

/// `ImageSegmenter.postprocess`: softmax over the classes of `out`, then per pixel
/// `[class, probability]` of the most probable class: `[H][W][2]` per image.
pub fn segments(out: &Value, batch: usize) -> Result<Vec<String>, ServeError> {
    let tensor = match out.get("out").or(Some(out)) {
        Some(Value::Tensor(t)) => t,
        _ => {
            return Err(unexpected(format!(
                "image_segmenter reads the model's \"out\" tensor; the model answered {}",
                out.kind()
            )))
        }
    };
    let [_, classes, height, width] = batch_dims(
        tensor,
        batch,
        "\"out\"",
        "image_segmenter takes [batch, classes, height, width]",
    )?;
    let plane = height * width;
    Ok(tensor
        .data
        .chunks(classes * plane)
        .map(|image| {
            let mut best = vec![0f32; plane * 2];
            let mut scores = vec![0f32; classes];
            for pixel in 0..plane {
                for (k, s) in scores.iter_mut().enumerate() {
                    *s = image[k * plane + pixel];
                }
                let probs = softmax(&scores);
                // torch.max: the first of equal maxima.
                let (class, p) =
                    probs
                        .iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |(bi, bp), (i, &p)| {
                            if p > bp {
                                (i, p)
                            } else {
                                (bi, bp)
                            }
                        });
                best[pixel * 2] = class as f32;
                best[pixel * 2 + 1] = p;
            }
            let mut text = String::with_capacity(plane * 60);
            write_nested(&mut text, &[height, width, 2], &best, 0);
            text
        })
        .collect())
}

/// A detector's answer: torchvision's scripted detectors return `(losses, detections)`, eager
/// ones the list of detections.
fn detection_list(out: &Value) -> Option<&[Value]> {
    match out {
        Value::Seq(items) => match &items[..] {
            [Value::Dict(_), Value::Seq(detections)] => Some(detections),
            _ => Some(items),
        },
        _ => None,
    }
}

fn field<'a>(detection: &'a Value, key: &str) -> Result<&'a Tensor, ServeError> {
    match detection.get(key) {
        Some(Value::Tensor(t)) => Ok(t),
        _ => Err(unexpected(format!(
            "object_detector reads \"boxes\", \"labels\" and \"scores\"; the model answered {}",
            detection.kind()
        ))),
    }
}

/// `ObjectDetector.postprocess`: per image, the detections scoring at least 0.5 as
/// `{label: [x1, y1, x2, y2], "score": score}`.
pub fn detections(out: &Value, batch: usize, labels: &Labels) -> Result<Vec<String>, ServeError> {
    let list = detection_list(out).ok_or_else(|| {
        unexpected(format!(
            "object_detector takes a list of detections per image; the model answered {}",
            out.kind()
        ))
    })?;
    if list.len() != batch {
        return Err(unexpected(format!(
            "the model answered {} detection sets for a batch of {batch}",
            list.len()
        )));
    }
    list.iter()
        .map(|detection| {
            let (boxes, classes, scores) = (
                field(detection, "boxes")?,
                field(detection, "labels")?,
                field(detection, "scores")?,
            );
            let n = scores.data.len();
            if boxes.data.len() != 4 * n || classes.data.len() != n {
                return Err(unexpected(format!(
                    "boxes {:?}, labels {:?} and scores {:?} do not match",
                    boxes.shape, classes.shape, scores.shape
                )));
            }
            let mut text = String::new();
            let mut first = true;
            for i in (0..n).filter(|&i| scores.data[i] >= DETECTION_THRESHOLD) {
                text.push_str(if first {
                    "[\n  {\n    "
                } else {
                    ",\n  {\n    "
                });
                first = false;
                let name = labels.name(classes.data[i] as usize);
                // A class named "score" is overwritten by the score, as in a Python dict.
                if name != "score" {
                    push_py_str(&mut text, &name);
                    text.push_str(": ");
                    write_nested(&mut text, &[4], &boxes.data[4 * i..4 * i + 4], 2);
                    text.push_str(",\n    ");
                }
                text.push_str("\"score\": ");
                push_py_float(&mut text, f64::from(scores.data[i]));
                text.push_str("\n  }");
            }
            text.push_str(if first { "[]" } else { "\n]" });
            Ok(text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_the_top_k_by_probability() {
        let labels = Labels::parse(r#"{"0": "a", "1": "b", "2": "c"}"#).unwrap();
        let logits = Tensor::new(vec![1, 3], vec![0.0, 2.0, 1.0]);
        let out = classes(&logits, 1, 2, &labels).unwrap();
        let (body, (top1, p)) = &out[0];
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        let keys: Vec<_> = parsed.as_object().unwrap().keys().cloned().collect();
        assert!(body.starts_with("{\n  \"b\": 0.66"), "{body}");
        assert_eq!((*top1, format!("{p:.4}")), (1, "0.6652".to_string()));
        assert_eq!(keys.len(), 2);
        assert!(classes(&Tensor::new(vec![3], vec![0.0; 3]), 1, 2, &labels).is_err());
    }

    #[test]
    fn detections_keep_scores_over_the_threshold() {
        let t = |shape: Vec<usize>, data: Vec<f32>| Value::Tensor(Tensor::new(shape, data));
        let detection = Value::Dict(vec![
            (
                "boxes".into(),
                t(vec![2, 4], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
            ),
            ("labels".into(), t(vec![2], vec![1.0, 0.0])),
            ("scores".into(), t(vec![2], vec![0.75, 0.25])),
        ]);
        let scripted = Value::Seq(vec![Value::Dict(vec![]), Value::Seq(vec![detection])]);
        let labels = Labels::parse(r#"{"object_type_names": ["bg", "person"]}"#).unwrap();
        let out = detections(&scripted, 1, &labels).unwrap();
        assert_eq!(
            out[0],
            "[\n  {\n    \"person\": [\n      1.0,\n      2.0,\n      3.0,\n      4.0\n    ],\n    \"score\": 0.75\n  }\n]"
        );
    }

    #[test]
    fn segments_are_class_and_probability_per_pixel() {
        // Two classes, one 1 × 2 image: pixel 0 favours class 1, pixel 1 class 0.
        let out = Value::Dict(vec![(
            "out".into(),
            Value::Tensor(Tensor::new(vec![1, 2, 1, 2], vec![0.0, 1.0, 1.0, 0.0])),
        )]);
        let text = &segments(&out, 1).unwrap()[0];
        let v: Vec<Vec<Vec<f64>>> = serde_json::from_str(text).unwrap();
        assert_eq!(v[0][0][0], 1.0);
        assert_eq!(v[0][1][0], 0.0);
        assert!((v[0][0][1] - 0.7310586).abs() < 1e-6);
        assert!(text.contains("1.0,\n"), "{text}");
    }
}
