//! model-config.yaml text from an archive.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = ferroserve::archive::ModelConfig::parse(text) {
            let _ = (
                c.int("batchSize"),
                c.string("handler"),
                c.ferroserve("canary"),
            );
        }
    }
});
