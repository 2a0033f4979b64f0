//! Request bodies: the native handler's JSON-to-tensor decoding (two model shapes), form
//! bodies, and the KServe / traffic-split JSON documents.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use ferroserve::handler::tensor_classifier::parse_request;
    let _ = parse_request(data, 64, 469);
    let _ = parse_request(data, 2, 3);
    let _ = ferroserve::api::input::url_encoded(data);
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
