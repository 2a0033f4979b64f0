//! Binary tensor inputs for native tensor handlers, beyond TorchServe, for clients that can
//! change: no JSON to scan and no decimal numbers to convert.
//! - `application/x-npy`: what NumPy's `np.save` writes (read by `npyz`);
//! - the KServe v2 / Triton binary tensor extension: a JSON inference header of
//!   `Inference-Header-Content-Length` bytes, then each input's raw little-endian data
//!   (`"parameters": {"binary_data_size": n}`), or its values inline as `data`.
//!
//! Either is read straight into the handler's zero-padded `[frames, features]` buffer: an array
//! `[n, features]`, `[1, n, features]` or `[n, points, coordinates]` (points × coordinates =
//! features) keeps its first `frames` frames.

use serde::Deserialize;

use crate::error::ServeError;

/// The content type of NumPy's `.npy` format.
pub const NPY_CONTENT_TYPE: &str = "application/x-npy";

/// The header that marks a body as a KServe v2 binary inference request (its JSON's length).
pub const INFERENCE_HEADER_LENGTH: &str = "inference-header-content-length";

fn bad(message: String) -> ServeError {
    ServeError::bad_input(format!("invalid request: {message}"))
}

/// How many values of the array fill the buffer, once its shape is checked.
fn kept_values(shape: &[u64], frames: usize, features: usize) -> Result<usize, ServeError> {
    // A leading batch dimension of one is the request itself.
    let shape = match shape {
        [1, rest @ ..] if rest.len() >= 2 => rest,
        _ => shape,
    };
    // Checked: the shape is the client's, and a product may not fit.
    let per_frame = shape
        .iter()
        .skip(1)
        .try_fold(1u64, |n, &d| n.checked_mul(d));
    if !(2..=3).contains(&shape.len()) || shape[0] == 0 || per_frame != Some(features as u64) {
        return Err(bad(format!(
            "array of shape {shape:?}, expected [<= {frames}, {features}] (or [frames, points, \
             coordinates] with {features} values a frame)"
        )));
    }
    Ok((shape[0] as usize).min(frames) * features)
}

/// An `application/x-npy` body: float32 or float64, C order.
pub fn parse_npy(body: &[u8], frames: usize, features: usize) -> Result<Vec<f32>, ServeError> {
    let npy = npyz::NpyFile::new(body).map_err(|e| bad(format!("not a NumPy .npy array: {e}")))?;
    let kept = kept_values(npy.shape(), frames, features)?;
    if npy.order() != npyz::Order::C {
        return Err(bad(
            "the array must be in C order (fortran_order false)".into()
        ));
    }
    let mut out = vec![0f32; frames * features];
    let truncated = |e: std::io::Error| bad(format!("the array's data ends early: {e}"));
    let descr = npy.dtype().descr().trim_matches('\'').to_string();
    match npy.try_data::<f32>() {
        Ok(values) => {
            for (slot, v) in out[..kept].iter_mut().zip(values) {
                *slot = v.map_err(truncated)?;
            }
        }
        Err(npy) => {
            let values = npy
                .data::<f64>()
                .map_err(|_| bad(format!("dtype {descr}, expected float32 or float64")))?;
            for (slot, v) in out[..kept].iter_mut().zip(values) {
                *slot = v.map_err(truncated)? as f32;
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct InferenceHeader {
    inputs: Vec<InputHeader>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
struct InputHeader {
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    data: Option<Vec<f64>>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize, Default)]
struct Parameters {
    binary_data_size: Option<usize>,
    topk: Option<usize>,
}

/// A KServe v2 binary inference request: the first input (FP32 or FP64) is the frames; the
/// request's `parameters.topk`, if any, is returned with them.
pub fn parse_v2_binary(
    body: &[u8],
    header_length: &str,
    frames: usize,
    features: usize,
) -> Result<(Vec<f32>, Option<usize>), ServeError> {
    let length: usize = header_length.trim().parse().map_err(|_| {
        bad(format!(
            "Inference-Header-Content-Length {header_length:?} is not a byte count"
        ))
    })?;
    if length > body.len() {
        return Err(bad(format!(
            "Inference-Header-Content-Length {length} is past the body's {} bytes",
            body.len()
        )));
    }
    let (json, binary) = body.split_at(length);
    let header: InferenceHeader = serde_json::from_slice(json)
        .map_err(|e| bad(format!("the inference header is not a v2 request: {e}")))?;
    let Some(input) = header.inputs.first() else {
        return Err(bad("the inference header has no inputs".into()));
    };
    let kept = kept_values(&input.shape, frames, features)?;
    let width = match input.datatype.as_str() {
        "FP32" => 4,
        "FP64" => 8,
        other => return Err(bad(format!("datatype {other}, expected FP32 or FP64"))),
    };
    // The shape passed the check above, so only its frame count can be large.
    let count = input
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
        .and_then(|n| n.checked_mul(width).map(|_| n))
        .ok_or_else(|| bad(format!("shape {:?} is too large", input.shape)))?;
    let mut out = vec![0f32; frames * features];
    match (&input.data, input.parameters.binary_data_size) {
        (_, Some(size)) => {
            if size != count * width || size > binary.len() {
                return Err(bad(format!(
                    "binary_data_size {size}: {count} {} values take {} bytes, {} follow the header",
                    input.datatype,
                    count * width,
                    binary.len()
                )));
            }
            let data = &binary[..kept * width];
            if width == 4 {
                for (slot, v) in out.iter_mut().zip(data.chunks_exact(4)) {
                    *slot = f32::from_le_bytes(v.try_into().expect("4 bytes"));
                }
            } else {
                for (slot, v) in out.iter_mut().zip(data.chunks_exact(8)) {
                    *slot = f64::from_le_bytes(v.try_into().expect("8 bytes")) as f32;
                }
            }
        }
        (Some(values), None) if values.len() == count => {
            for (slot, v) in out[..kept].iter_mut().zip(values) {
                *slot = *v as f32;
            }
        }
        (Some(values), None) => {
            return Err(bad(format!(
                "data has {} values, the shape {:?} takes {count}",
                values.len(),
                input.shape
            )))
        }
        (None, None) => {
            return Err(bad(
                "the input has neither data nor parameters.binary_data_size".into(),
            ))
        }
    }
    Ok((out, header.parameters.topk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(header: &str, data: &[u8]) -> Vec<u8> {
        let mut body = header.as_bytes().to_vec();
        body.extend(data);
        body
    }

    #[test]
    fn v2_binary_inputs_fill_the_padded_buffer() {
        let values: Vec<u8> = [1f32, 2., 3., 4.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let header = r#"{"inputs": [{"name": "landmarks", "shape": [1, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}], "parameters": {"topk": 3}}"#;
        let body = request(header, &values);
        let (tensor, topk) = parse_v2_binary(&body, &header.len().to_string(), 3, 2).unwrap();
        assert_eq!(tensor, vec![1., 2., 3., 4., 0., 0.]);
        assert_eq!(topk, Some(3));
        // Truncated to the model's frames; FP64; inline data.
        let values: Vec<u8> = [1f64, 2., 3., 4.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let header = r#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "parameters": {"binary_data_size": 32}}]}"#;
        let body = request(header, &values);
        let (tensor, topk) = parse_v2_binary(&body, &header.len().to_string(), 1, 2).unwrap();
        assert_eq!((tensor, topk), (vec![1., 2.], None));
        let header = r#"{"inputs": [{"name": "x", "shape": [2, 1, 2], "datatype": "FP32", "data": [5, 6, 7, 8]}]}"#;
        let (tensor, _) =
            parse_v2_binary(header.as_bytes(), &header.len().to_string(), 2, 2).unwrap();
        assert_eq!(tensor, vec![5., 6., 7., 8.]);
    }

    #[test]
    fn bad_v2_binary_requests_name_the_problem() {
        let header = r#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}"#;
        let short = request(header, &[0; 8]);
        let cases: Vec<(Vec<u8>, String, &str)> = vec![
            (short, header.len().to_string(), "binary_data_size 16"),
            (header.as_bytes().to_vec(), "9999".into(), "past the body's"),
            (header.as_bytes().to_vec(), "x".into(), "not a byte count"),
            (b"{}".to_vec(), "2".into(), "not a v2 request"),
            (br#"{"inputs": []}"#.to_vec(), "14".into(), "has no inputs"),
            (
                br#"{"inputs": [{"shape": [2, 3], "datatype": "FP32", "data": [1]}]}"#.to_vec(),
                "63".into(),
                "array of shape [2, 3]",
            ),
            (
                br#"{"inputs": [{"shape": [2, 2], "datatype": "INT8", "data": [1]}]}"#.to_vec(),
                "63".into(),
                "datatype INT8",
            ),
            (
                br#"{"inputs": [{"shape": [2, 2], "datatype": "FP32", "data": [1]}]}"#.to_vec(),
                "63".into(),
                "data has 1 values",
            ),
            (
                br#"{"inputs": [{"shape": [2, 4294967296, 4294967296], "datatype": "FP32", "data": [1]}]}"#.to_vec(),
                "63".into(),
                "array of shape [2, 4294967296, 4294967296]",
            ),
            (
                br#"{"inputs": [{"shape": [18446744073709551615, 2], "datatype": "FP32", "data": [1]}]}"#.to_vec(),
                "63".into(),
                "too large",
            ),
        ];
        for (body, length, message) in cases {
            let length = if length == "63" {
                body.len().to_string()
            } else {
                length
            };
            let e = parse_v2_binary(&body, &length, 2, 2)
                .unwrap_err()
                .to_string();
            assert!(e.contains(message), "{message}: {e}");
        }
    }
}
