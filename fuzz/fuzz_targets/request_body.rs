//! Request bodies: the native handlers' JSON-to-tensor decoding (json_tensor_classifier at two
//! model shapes, with each JSON reader: serde_json and sonic-rs must agree bit for bit but for a
//! zero's sign, the scan exactly with sonic-rs, errors included; json_tensor's nested
//! arrays), form bodies and query strings, request paths (TorchServe's path split), and the
//! traffic-split JSON documents.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use ferroserve::handler::tensor_classifier::{parse_request_with, JsonReader};
    for (frames, features) in [(64, 469), (2, 3)] {
        let serde = parse_request_with(JsonReader::SerdeJson, data, frames, features);
        let sonic = parse_request_with(JsonReader::Sonic, data, frames, features);
        let scan = parse_request_with(JsonReader::Scan, data, frames, features);
        let exact = |r: &Result<(Vec<f32>, usize), _>| {
            r.as_ref()
                .map(|(v, k): &(Vec<f32>, usize)| {
                    (v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), *k)
                })
                .map_err(ToString::to_string)
        };
        assert_eq!(
            exact(&scan),
            exact(&sonic),
            "the scan and sonic-rs disagree"
        );
        match (serde, sonic) {
            (Ok((a, ka)), Ok((b, kb))) => {
                assert_eq!(ka, kb);
                // A zero's sign aside: serde_json reads the integer -0 as -0.0, sonic-rs as 0.
                let bits = |v: &f32| (v + 0.0).to_bits();
                assert!(a.iter().map(bits).eq(b.iter().map(bits)));
            }
            (Err(_), Err(_)) => {}
            (serde, sonic) => panic!("readers disagree: serde_json {serde:?}, sonic-rs {sonic:?}"),
        }
    }
    let _ = ferroserve::handler::json_tensor::parse_array(data);
    let _ = ferroserve::api::input::url_encoded(data);
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = ferroserve::api::input::segments(path);
    }
    if let Ok(spec) = serde_json::from_slice::<ferroserve::canary::SplitSpec>(data) {
        if spec
            .validate("m", "1.0", &|v| v == "2.0" || v == "3.0")
            .is_ok()
        {
            let mut split = ferroserve::canary::Split::new(spec);
            let _ = split.route(Some("key"));
            let _ = split.tick("1.0");
        }
    }
});
