//! Replies from a misbehaving Python worker on its socket, and its `[METRICS]` lines.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferroserve::handler::python::decode_reply(data, 1 << 20);
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = ferroserve::metrics::BackendMetric::parse(line);
    }
});
