//! Request bodies: the native handlers' JSON-to-tensor decoding (json_tensor_classifier at two
//! model shapes, json_tensor's nested arrays), form bodies and query strings, request paths
//! (TorchServe's path split), and the traffic-split JSON documents.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use ferroserve::handler::tensor_classifier::parse_request;
    let _ = parse_request(data, 64, 469);
    let _ = parse_request(data, 2, 3);
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
