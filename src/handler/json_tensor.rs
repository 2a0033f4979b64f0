//! `json_tensor`: TorchServe's `BaseHandler` contract, natively. A request's body is a JSON
//! array of numbers (nested to any depth, rectangular) or one number; the batch's requests
//! are stacked into one tensor (`torch.as_tensor`), the model runs once, and each request
//! gets its row of the output back (`tolist()`), written as TorchServe's Python worker
//! writes a handler's list: `json.dumps(row, indent=2)`, Python's float spelling included.

use std::sync::Arc;

use bytes::Bytes;

#[cfg(test)]
use super::pyjson::push_py_float;
use super::pyjson::write_nested;
use super::{
    native_worker, unexpected_input, Engine, Handler, NativeBatch, Prepared, Reply, RequestInput,
};
use crate::backend::{Backend, Tensor};
use crate::device::Device;
use crate::error::ServeError;

pub const NAME: &str = "json_tensor";
/// The most numbers one request may carry (64 MiB of f32).
const MAX_ELEMENTS: usize = 1 << 24;
/// Nesting deeper than any tensor a model takes is refused before it is walked.
const MAX_RANK: usize = 16;

pub struct JsonTensor {
    model: Arc<dyn Backend>,
    /// Whether replies carry observations (drift monitoring is on).
    observe: bool,
}

impl JsonTensor {
    pub fn new(model: Arc<dyn Backend>, observe: bool) -> Self {
        Self { model, observe }
    }
}

impl Handler for JsonTensor {
    fn prepare(&self, input: RequestInput) -> Result<Prepared, ServeError> {
        let param = input
            .data()
            .ok_or_else(|| ServeError::bad_input("missing request body"))?;
        Ok(Prepared::Array(parse_array(&param.value)?))
    }

    fn start_worker(self: Arc<Self>, _id: u32) -> Result<Box<dyn Engine>, String> {
        native_worker(self)
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    fn observed_inputs(&self) -> &'static [&'static str] {
        &super::observe::TENSOR_SUMMARIES
    }
}

impl NativeBatch for JsonTensor {
    fn model(&self) -> &dyn Backend {
        self.model.as_ref()
    }

    fn run(&self, batch: Vec<Prepared>) -> Result<Vec<Reply>, ServeError> {
        let mut arrays = batch
            .into_iter()
            .map(|p| match p {
                Prepared::Array(t) => Ok(t),
                _ => Err(unexpected_input()),
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .peekable();
        // Requests of one shape run as one forward pass; a batch mixing shapes (which
        // `torch.as_tensor` would refuse whole) runs one pass per run of equal shapes.
        let mut replies = Vec::new();
        while let Some(first) = arrays.next() {
            let mut group = vec![first];
            while let Some(next) = arrays.next_if(|t| t.shape == group[0].shape) {
                group.push(next);
            }
            replies.extend(self.rows(group)?);
        }
        Ok(replies)
    }
}

impl JsonTensor {
    /// One forward pass over requests of one shape (their buffers move into it); each gets
    /// its row.
    fn rows(&self, group: Vec<Tensor>) -> Result<Vec<Reply>, ServeError> {
        let n = group.len();
        let shape = group[0].shape.clone();
        let mut seen = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        for input in group {
            let mut summary = super::observe::Inputs::new();
            if self.observe {
                super::observe::summarize(&input.data, &mut summary);
            }
            seen.push(summary);
            rows.push(input.data);
        }
        let output = self
            .model
            .forward_rows(rows, &shape)
            .map_err(|e| ServeError::PredictionFailed(format!("Prediction failed: {e}")))?;
        if output.shape.first() != Some(&n) {
            return Err(ServeError::PredictionFailed(format!(
                "model returned shape {:?} for a batch of {n}",
                output.shape
            )));
        }
        let row_shape = &output.shape[1..];
        let per_row = row_shape.iter().product::<usize>();
        // Row by index, not `chunks`: rows of no values (a body `[]`) are rows too.
        Ok((0..n)
            .map(|i| &output.data[i * per_row..(i + 1) * per_row])
            .zip(seen)
            .map(|(row, input)| {
                let mut text = String::with_capacity(row.len() * 12);
                write_nested(&mut text, row_shape, row, 0);
                Reply::new(200, None, Vec::new(), Bytes::from(text)).observed_if(
                    self.observe,
                    || super::observe::Observation { top1: None, input },
                )
            })
            .collect())
    }
}

/// A JSON body as a tensor: its nesting is the shape, which must be rectangular.
pub fn parse_array(body: &[u8]) -> Result<Tensor, ServeError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ServeError::bad_input(format!("invalid request: {e}")))?;
    array_from_value(&value)
}

/// A parsed JSON value as a tensor (`torch.as_tensor`): numbers nested rectangularly.
pub fn array_from_value(value: &serde_json::Value) -> Result<Tensor, ServeError> {
    let mut shape = Vec::new();
    let mut level = value;
    while let serde_json::Value::Array(items) = level {
        shape.push(items.len());
        if shape.len() > MAX_RANK {
            return Err(ServeError::bad_input(format!(
                "invalid request: more than {MAX_RANK} levels of nesting"
            )));
        }
        match items.first() {
            Some(first) => level = first,
            None => break,
        }
    }
    let count = shape.iter().product::<usize>();
    if count > MAX_ELEMENTS {
        return Err(ServeError::bad_input(format!(
            "invalid request: more than {MAX_ELEMENTS} numbers"
        )));
    }
    let mut data = Vec::with_capacity(count);
    flatten(value, &shape, &mut data)?;
    Ok(Tensor::new(shape, data))
}

fn flatten(
    value: &serde_json::Value,
    shape: &[usize],
    out: &mut Vec<f32>,
) -> Result<(), ServeError> {
    match (value, shape.split_first()) {
        (serde_json::Value::Number(n), None) => {
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        (serde_json::Value::Array(items), Some((&len, rest))) if items.len() == len => {
            items.iter().try_for_each(|item| flatten(item, rest, out))
        }
        (serde_json::Value::Array(items), Some((&len, _))) => Err(ServeError::bad_input(format!(
            "invalid request: not rectangular: a list of {} where the first has {len}",
            items.len()
        ))),
        _ => Err(ServeError::bad_input(format!(
            "invalid request: expected numbers nested {} deep, found {value}",
            shape.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(v: f64) -> String {
        let mut s = String::new();
        push_py_float(&mut s, v);
        s
    }

    /// The spellings are Python 3's `repr` of the same values.
    #[test]
    fn floats_are_spelled_as_python_spells_them() {
        let cases = [
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (100.0, "100.0"),
            (0.1, "0.1"),
            (f64::from(0.1f32), "0.10000000149011612"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456789012345.0, "123456789012345.0"),
            (1e16, "1e+16"),
            (1.25e20, "1.25e+20"),
            (-0.0, "-0.0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (v, want) in cases {
            assert_eq!(py(v), want, "{v}");
        }
    }

    #[test]
    fn bodies_become_tensors_of_their_shape() {
        let t = parse_array(b"[[1, 2, 3], [4, 5, 6]]").unwrap();
        assert_eq!(
            (t.shape, t.data),
            (vec![2, 3], vec![1., 2., 3., 4., 5., 6.])
        );
        let t = parse_array(b"7.5").unwrap();
        assert_eq!((t.shape, t.data), (vec![], vec![7.5]));
        for (bad, why) in [
            (&b"[[1, 2], [3]]"[..], "not rectangular"),
            (b"[1, [2]]", "expected numbers"),
            (b"[\"a\"]", "expected numbers"),
            (b"{\"a\": 1}", "expected numbers"),
            (b"[1, 2", "invalid request"),
        ] {
            let e = parse_array(bad).unwrap_err();
            assert!(
                e.to_string().contains(why),
                "{}: {}",
                String::from_utf8_lossy(bad),
                e
            );
        }
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(parse_array(deep.as_bytes()).is_err());
    }

    /// `json.dumps([[1.0, 2.0], [3.0, 4.0]], indent=2)` and `json.dumps(1.0, indent=2)`.
    #[test]
    fn rows_are_written_as_json_dumps_with_indent_2() {
        let mut s = String::new();
        write_nested(&mut s, &[2, 2], &[1.0, 2.0, 3.0, 4.0], 0);
        assert_eq!(
            s,
            "[\n  [\n    1.0,\n    2.0\n  ],\n  [\n    3.0,\n    4.0\n  ]\n]"
        );
        let mut s = String::new();
        write_nested(&mut s, &[], &[1.0], 0);
        assert_eq!(s, "1.0");
        let mut s = String::new();
        write_nested(&mut s, &[0], &[], 0);
        assert_eq!(s, "[]");
    }
}
