//! `json_tensor_classifier`: a JSON sequence of feature frames in, top-k labels out.
//!
//! Request: `{"landmarks": [frame, ...], "topk": 5}` where a frame is a flat list of numbers or
//! a list of points (`[x, y, z]`...) that is flattened. Sequences are zero-padded or truncated
//! to the model's frame count. Reply: `{"predictions": [{"label", "confidence"}...],
//! "device": "cpu"}`, written like the Python handler's `json.dumps(indent=2)`.
//!
//! The shape comes from model-config.yaml (`handler.frames`, `handler.features`), or from the
//! ONNX input's static dimensions.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use super::binary_input::{parse_npy, parse_v2_binary, INFERENCE_HEADER_LENGTH, NPY_CONTENT_TYPE};
use super::labels::Labels;
use super::observe::{self, Inputs, Observation};
use super::scores::{ranked, softmax};
use super::{
    native_worker, parse_blocks, parse_blocks_at, unexpected_input, Engine, Handler, NativeBatch,
    Param, Prepared, Reply, RequestInput,
};
use crate::archive::ModelArchive;
use crate::backend::Backend;
use crate::device::Device;
use crate::error::{LoadError, ServeError};

mod scan;

pub const NAME: &str = "json_tensor_classifier";
const DEFAULT_TOPK: usize = 5;
/// The largest input a request may be padded to (64 MiB of f32).
const MAX_INPUT_ELEMENTS: usize = 1 << 24;

pub struct TensorClassifier {
    model: Arc<dyn Backend>,
    frames: usize,
    features: usize,
    labels: Labels,
    /// Whether replies carry observations (drift monitoring is on).
    observe: bool,
}

impl TensorClassifier {
    pub fn new(
        archive: &ModelArchive,
        model: Arc<dyn Backend>,
        observe: bool,
    ) -> Result<Self, LoadError> {
        let section = archive.config.get("handler");
        let from_yaml = |key: &str| {
            section
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
        };
        let dims = model.input_dims().unwrap_or_default();
        let from_model = |i: usize| dims.get(i).copied().flatten();
        let frames = from_yaml("frames").or_else(|| from_model(1));
        let features = from_yaml("features").or_else(|| from_model(2));
        let (Some(frames), Some(features)) = (frames, features) else {
            return Err(LoadError::Invalid(format!(
                "{NAME} needs the input shape: set handler.frames and handler.features in model-config.yaml"
            )));
        };
        if frames == 0 || features == 0 {
            return Err(LoadError::Invalid(
                "handler.frames and handler.features must be > 0".into(),
            ));
        }
        // Every request allocates frames × features floats.
        if frames
            .checked_mul(features)
            .is_none_or(|n| n > MAX_INPUT_ELEMENTS)
        {
            return Err(LoadError::Invalid(format!(
                "handler.frames × handler.features is more than {MAX_INPUT_ELEMENTS} values"
            )));
        }
        let labels = Labels::load(archive)?;
        Ok(Self {
            model,
            frames,
            features,
            labels,
            observe,
        })
    }

    /// The input's summaries for drift monitoring: its values', and the sequence's length
    /// (the frames before the zero padding).
    fn summary(&self, tensor: &[f32]) -> Inputs {
        let mut seen = Inputs::new();
        if !self.observe {
            return seen;
        }
        observe::summarize(tensor, &mut seen);
        let frames = tensor
            .chunks(self.features)
            .rposition(|f| f.iter().any(|&v| v != 0.0))
            .map_or(0, |last| last + 1);
        let _ = seen.try_push(("frames", frames as f64));
        seen
    }
}

#[derive(Serialize)]
struct Prediction<'a> {
    /// Borrowed from `index_to_name.json` (an index's own digits when it has no name).
    label: std::borrow::Cow<'a, str>,
    confidence: f64,
}

#[derive(Serialize)]
struct Answer<'a> {
    predictions: Vec<Prediction<'a>>,
    device: &'a str,
}

impl Handler for TensorClassifier {
    fn prepare(&self, input: RequestInput) -> Result<Prepared, ServeError> {
        let param = input
            .data()
            .ok_or_else(|| ServeError::bad_input("missing request body"))?;
        let npy = is_npy(param);
        let (tensor, topk) = if let Some(length) = input.header(INFERENCE_HEADER_LENGTH) {
            let (tensor, topk) = parse_v2_binary(&param.value, length, self.frames, self.features)?;
            let topk = match topk {
                Some(0) => return Err(bad_topk()),
                Some(k) => k,
                None => requested_topk(&input)?,
            };
            (tensor, topk)
        } else if npy {
            let tensor = parse_npy(&param.value, self.frames, self.features)?;
            (tensor, requested_topk(&input)?)
        } else {
            parse_request(&param.value, self.frames, self.features)?
        };
        Ok(Prepared::Tensor { tensor, topk })
    }

    /// A binary body is copied into the input buffer in microseconds; only JSON is parsed.
    fn prepare_blocks(&self, input: &RequestInput) -> bool {
        decode_blocks(input)
    }

    fn start_worker(self: Arc<Self>, _id: u32) -> Result<Box<dyn Engine>, String> {
        native_worker(self)
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    fn observed_inputs(&self) -> &'static [&'static str] {
        &["mean", "std", "zero_share", "frames"]
    }
}

impl NativeBatch for TensorClassifier {
    fn model(&self) -> &dyn Backend {
        self.model.as_ref()
    }

    fn run(&self, batch: Vec<Prepared>) -> Result<Vec<Reply>, ServeError> {
        let size = batch.len();
        let mut tensors = Vec::with_capacity(size);
        let mut topks = Vec::with_capacity(size);
        let mut inputs = Vec::with_capacity(size);
        for item in batch {
            let Prepared::Tensor { tensor, topk } = item else {
                return Err(unexpected_input());
            };
            topks.push(topk);
            inputs.push(self.summary(&tensor));
            tensors.push(tensor);
        }
        let output = self
            .model
            .forward_rows(tensors, &[self.frames, self.features])
            .map_err(|e| ServeError::PredictionFailed(format!("Prediction failed: {e}")))?;
        if output.shape.first() != Some(&size) || output.data.len() % size != 0 {
            return Err(ServeError::PredictionFailed(format!(
                "model returned shape {:?} for a batch of {size}",
                output.shape
            )));
        }
        let classes = output.data.len() / size;
        let device = self.model.device().to_string();
        let device = device.split(':').next().unwrap_or("cpu");
        Ok(topks
            .iter()
            .zip(output.data.chunks(classes))
            .zip(&mut inputs)
            .map(|((topk, logits), seen)| {
                let probs = softmax(logits);
                let answer = Answer {
                    predictions: ranked(&probs)
                        .into_iter()
                        .take(topk.clamp(&1, &classes).to_owned())
                        .map(|c| Prediction {
                            label: self.labels.name(c),
                            confidence: f64::from(probs[c]),
                        })
                        .collect(),
                    device,
                };
                Reply::new(
                    200,
                    None,
                    Vec::new(),
                    Bytes::from(serde_json::to_vec_pretty(&answer).expect("answer serializes")),
                )
                .observed_if(self.observe, || Observation {
                    top1: observe::top1(&probs),
                    input: std::mem::take(seen),
                })
            })
            .collect())
    }
}

/// Whether decoding the request is worth a blocking thread: a binary tensor (KServe v2 or
/// `.npy`) is copied, not parsed, whatever its size.
fn decode_blocks(input: &RequestInput) -> bool {
    if let Some(length) = input.header(INFERENCE_HEADER_LENGTH) {
        // Only the JSON header is parsed (it may carry the tensor inline as `data`).
        return length.trim().parse().is_ok_and(parse_blocks_at);
    }
    !input.data().is_some_and(is_npy) && parse_blocks(input)
}

fn is_npy(param: &Param) -> bool {
    param
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with(NPY_CONTENT_TYPE))
}

fn bad_topk() -> ServeError {
    ServeError::bad_input("invalid request: topk must be a positive integer")
}

/// `topk` for a binary body, which has no room for it: a form field beside the file part, or
/// a `topk` header (TorchServe hands a handler both); the default without either.
fn requested_topk(input: &RequestInput) -> Result<usize, ServeError> {
    let header = input.header("topk").map(str::as_bytes);
    match input.param("topk").map(|p| &p.value[..]).or(header) {
        None => Ok(DEFAULT_TOPK),
        Some(value) => std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&k: &usize| k > 0)
            .ok_or_else(bad_topk),
    }
}

/// A JSON reader a body can be decoded with. Both feed the same visitors below, so the
/// tensor, the checks and the messages are the same; only the scanning differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonReader {
    /// `serde_json`: byte at a time.
    SerdeJson,
    /// `sonic-rs`: SIMD scanning and number parsing (x86_64 SSE/AVX2, aarch64 NEON, else a
    /// portable fallback).
    Sonic,
    /// The usual form read in one pass with sonic-rs' number parser, without serde
    /// ([`scan`]); any other body through [`JsonReader::Sonic`].
    Scan,
}

/// Parses the JSON body straight into the zero-padded `[frames, features]` buffer: no
/// intermediate JSON tree for the tens of thousands of numbers a request carries.
/// Returns the padded tensor and `topk`.
pub fn parse_request(
    body: &[u8],
    frames: usize,
    features: usize,
) -> Result<(Vec<f32>, usize), ServeError> {
    parse_request_with(JsonReader::Scan, body, frames, features)
}

/// [`parse_request`] with a chosen reader (the benchmark and the fuzzer compare them).
pub fn parse_request_with(
    reader: JsonReader,
    body: &[u8],
    frames: usize,
    features: usize,
) -> Result<(Vec<f32>, usize), ServeError> {
    let seed = RequestSeed { frames, features };
    let invalid = |e: String| ServeError::bad_input(format!("invalid request: {e}"));
    let (tensor, topk) = match reader {
        JsonReader::SerdeJson => {
            let mut de = serde_json::Deserializer::from_slice(body);
            seed.deserialize(&mut de)
                .and_then(|p| de.end().map(|_| p))
                .map_err(|e| invalid(e.to_string()))?
        }
        JsonReader::Scan => match scan::scan(body, frames, features) {
            Some(decoded) => decoded,
            None => return parse_request_with(JsonReader::Sonic, body, frames, features),
        },
        JsonReader::Sonic => {
            let mut de = sonic_rs::Deserializer::from_slice(body);
            seed.deserialize(&mut de)
                .and_then(|p| de.end().map(|_| p))
                // sonic-rs follows its message with the text around the error: the first
                // line is the message, as serde_json's.
                .map_err(|e| invalid(e.to_string().lines().next().unwrap_or_default().into()))?
        }
    };
    let tensor = tensor.ok_or_else(|| {
        ServeError::bad_input(format!(
            "invalid request: missing \"landmarks\" (expected [<= {frames} frames, {features} features])"
        ))
    })?;
    Ok((tensor, topk.unwrap_or(DEFAULT_TOPK)))
}

struct RequestSeed {
    frames: usize,
    features: usize,
}

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = (Option<Vec<f32>>, Option<usize>);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = (Option<Vec<f32>>, Option<usize>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"landmarks\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut tensor, mut topk) = (None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "landmarks" => {
                    tensor = Some(map.next_value_seed(Landmarks {
                        frames: self.frames,
                        features: self.features,
                    })?)
                }
                "topk" => {
                    let k: usize = map
                        .next_value()
                        .map_err(|_| de::Error::custom("\"topk\" must be a positive integer"))?;
                    if k == 0 {
                        return Err(de::Error::custom("\"topk\" must be a positive integer"));
                    }
                    topk = Some(k);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((tensor, topk))
    }
}

/// `[frame, ...]` → padded buffer; frames past the model's count are skipped unread.
struct Landmarks {
    frames: usize,
    features: usize,
}

impl<'de> DeserializeSeed<'de> for Landmarks {
    type Value = Vec<f32>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<f32>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Landmarks {
    type Value = Vec<f32>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\"landmarks\" as a list of frames")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
        let mut out = vec![0f32; self.frames * self.features];
        let mut index = 0;
        loop {
            if index < self.frames {
                let row = &mut out[index * self.features..(index + 1) * self.features];
                let frame = Frame {
                    index,
                    frames: self.frames,
                    row,
                };
                if seq.next_element_seed(frame)?.is_none() {
                    break;
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            index += 1;
        }
        if index == 0 {
            return Err(de::Error::custom(
                "\"landmarks\" must be a non-empty list of frames",
            ));
        }
        Ok(out)
    }
}

/// One frame: numbers, or points (lists of numbers), flattened into `row`.
struct Frame<'a> {
    index: usize,
    frames: usize,
    row: &'a mut [f32],
}

impl<'de> DeserializeSeed<'de> for Frame<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Frame<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "frame {} as a list of numbers or of points", self.index)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let features = self.row.len();
        let mut row = Row {
            slots: self.row,
            count: 0,
        };
        while let Some(()) = seq.next_element_seed(Values { row: &mut row })? {}
        let count = row.count;
        if count != features {
            return Err(de::Error::custom(format!(
                "frame {} has {count} values, expected {features} (input shape [<= {}, {features}]; \
                 points such as [x, y, z] are flattened)",
                self.index, self.frames
            )));
        }
        Ok(())
    }
}

/// A frame's slots as its values come (from the serde visitors or the scan); values past
/// the row's end are only counted.
struct Row<'a> {
    slots: &'a mut [f32],
    count: usize,
}

impl Row<'_> {
    #[inline(always)]
    fn push(&mut self, v: f64) {
        if let Some(slot) = self.slots.get_mut(self.count) {
            *slot = v as f32;
        }
        self.count += 1;
    }
}

/// A number, or a point (list of numbers), into the frame's row.
struct Values<'a, 'b> {
    row: &'a mut Row<'b>,
}

impl<'de> DeserializeSeed<'de> for Values<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Values<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a list of numbers")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.row.push(v);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.row.push(v as f64);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.row.push(v as f64);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<f64>()? {
            self.row.push(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a large JSON body is parsed on a blocking thread; binary tensors are copied
    /// where they arrive, whatever their size.
    #[test]
    fn only_large_json_bodies_take_a_blocking_thread() {
        let input = |content_type: &str, size: usize, headers: &[(&str, &str)]| RequestInput {
            request_id: "r".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            params: vec![Param {
                name: "body".into(),
                content_type: Some(content_type.into()),
                value: Bytes::from(vec![b' '; size]),
            }],
        };
        assert!(decode_blocks(&input("application/json", 600_000, &[])));
        assert!(!decode_blocks(&input("application/json", 1_000, &[])));
        assert!(!decode_blocks(&input("application/x-npy", 600_000, &[])));
        let v2 = [("inference-header-content-length", "120")];
        assert!(!decode_blocks(&input(
            "application/octet-stream",
            600_000,
            &v2
        )));
        let v2_json = [("inference-header-content-length", "600000")];
        assert!(decode_blocks(&input(
            "application/octet-stream",
            600_000,
            &v2_json
        )));
    }

    /// The readers decode the same tensors bit for bit (serde_json a zero's sign aside; the
    /// scan exactly as sonic-rs, whose number parser it uses) and refuse the same bodies, on
    /// numbers chosen to break float parsers (ties of f32 rounding, long mantissas, extremes,
    /// subnormals, integers past u64) and on malformed bodies. The fuzzer's request_body
    /// target compares them on everything it finds.
    #[test]
    fn the_json_readers_decode_the_same() {
        let numbers = [
            "0",
            "-0",
            "1",
            "-1",
            "0.1",
            "1e5",
            "1E-5",
            "2.5e+3",
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "3.4028235e38",
            "3.4028236e38",
            "1e39",
            "1e308",
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "4.9e-324",
            "1e-400",
            "1.4e-45",
            "7e-46",
            "1.00000005960464477539062500000000001",
            "1.000000059604644775390625",
            "1.0000000596046447753906249999999",
            "0.30000000000000004",
            "9007199254740993",
            "0.000000000000000000000000000001",
            "1.7976931348623157e-308",
            &format!("0.{}1", "0".repeat(500)),
            &format!("1{}", "0".repeat(400)),
            &"9".repeat(800),
        ];
        let mut bodies: Vec<String> = numbers
            .iter()
            .map(|n| format!(r#"{{"landmarks": [[{n}, {n}], [[{n}], [-{n}]]], "topk": 1}}"#))
            .collect();
        bodies.extend(
            [
                r#"{"landmarks": [[1, 2]], "topk": 0}"#,
                r#"{"landmarks": [[1, 2]]} x"#,
                r#"{"landmarks": [[1, 2]],}"#,
                r#"{"landmarks": [[01, 2]]}"#,
                r#"{"landmarks": [[1., 2]]}"#,
                r#"{"landmarks": [[.5, 2]]}"#,
                r#"{"landmarks": [[+1, 2]]}"#,
                r#"{"landmarks": [[NaN, 2]]}"#,
                r#"{"landmarks": [[1, "2"]]}"#,
                r#"{"landmarks": [[1, 2, 3]]}"#,
                r#"{"landmarks": []}"#,
                r#"{"landmarks": [[1, 2]], "landmarks": [[3, 4]]}"#,
                r#"{"\u006candmarks": [[1, 2]]}"#,
                r#"{"topk": 3}"#,
                r#"[1, 2"#,
                " \t\n{\"landmarks\":[[1,2]]} \r\n",
                "\u{feff}{\"landmarks\": [[1, 2]]}",
                r#"{"landmarks": [[1, 2]], "other": {"a": [1e999, "\ud800"]}}"#,
                r#"{"topk": 2, "landmarks": [[1, 2], [[3], []]], "topk": 1}"#,
                r#"{"landmarks": [[1, 2], [3, 4], [5, 6, 7], "x", {}]}"#,
                r#"{"landmarks": [[1, 2], []]}"#,
                r#"{"landmarks": [[1, [2]]]}"#,
                r#"{"landmarks": [[1, 2]], "topk": 2.0}"#,
                r#"{"landmarks": [[1, 2]], "topk": -1}"#,
                r#"{"landmarks": [[1, 2]], "topk": 99999999999999999999}"#,
                r#"{"landmarks": [[1, 2]], "topk": "3"}"#,
                r#"{"landmarks": [[1, 2]] "topk": 3}"#,
                r#"{"landmarks": [[1 2]]}"#,
                r#"{"landmarks": [[1, 2]]"#,
                r#"{"landmarks": [[1, 2],]}"#,
                r#"{"landmarks": [[1, -]]}"#,
                r#"{"landmarks": [[1, 2x]]}"#,
                r#"{"landmarks"  :  [ [ 1 , 2 ] , [ [ 3 , 4 ] ] ] , "topk" : 3 }"#,
                "{\"land\tmarks\": [[1, 2]]}",
                "{\"landmarks\": [[1, 2]]}\u{0}",
                r#"{}"#,
                r#"{,}"#,
            ]
            .map(String::from),
        );
        for body in &bodies {
            let serde = parse_request_with(JsonReader::SerdeJson, body.as_bytes(), 2, 2);
            let sonic = parse_request_with(JsonReader::Sonic, body.as_bytes(), 2, 2);
            let scan = parse_request_with(JsonReader::Scan, body.as_bytes(), 2, 2);
            let exact = |r: &Result<(Vec<f32>, usize), ServeError>| {
                r.as_ref()
                    .map(|(v, k)| (v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), *k))
                    .map_err(ToString::to_string)
            };
            assert_eq!(exact(&scan), exact(&sonic), "{body}");
            match (&serde, &sonic) {
                (Ok((a, ka)), Ok((b, kb))) => {
                    // Zeros compare without their sign: serde_json reads the integer -0 as
                    // -0.0, sonic-rs as 0 (as Python's json does: int 0).
                    let bits =
                        |v: &Vec<f32>| v.iter().map(|x| (x + 0.0).to_bits()).collect::<Vec<_>>();
                    assert_eq!((bits(a), ka), (bits(b), kb), "{body}");
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{body}: serde_json {serde:?}, sonic-rs {sonic:?}"),
            }
        }
    }

    #[test]
    fn flat_and_point_frames_pad_and_truncate() {
        let p = parse_request(
            br#"{"landmarks": [[1, 2, 3, 4], [[5, 6], [7, 8]]], "topk": 2}"#,
            3,
            4,
        )
        .unwrap();
        assert_eq!(p.0, vec![1., 2., 3., 4., 5., 6., 7., 8., 0., 0., 0., 0.]);
        assert_eq!(p.1, 2);
        let p = parse_request(br#"{"x": {"y": 1}, "landmarks": [[1], [2], [3]]}"#, 2, 1).unwrap();
        assert_eq!(p.0, vec![1., 2.]);
        assert_eq!(p.1, DEFAULT_TOPK);
    }

    #[test]
    fn wrong_shapes_name_the_expected_shape() {
        let err = parse_request(br#"{"landmarks": [[1, 2, 3]]}"#, 64, 4).unwrap_err();
        assert!(matches!(err, ServeError::BadInput(_)));
        assert!(err.to_string().contains("expected 4"), "{err}");
        assert!(err.to_string().contains("[<= 64, 4]"), "{err}");
        for bad in [
            &br#"{"landmarks": []}"#[..],
            br#"{}"#,
            br#"[1]"#,
            b"not json",
            br#"{"landmarks": [["a"]]}"#,
            br#"{"landmarks": [[1]], "topk": 0}"#,
        ] {
            assert!(matches!(
                parse_request(bad, 2, 1).unwrap_err(),
                ServeError::BadInput(_)
            ));
        }
    }
}
