//! A `.mar` (zip) from the network or the store: opening it must end in an archive or an
//! error, never a panic, a write outside the extraction directory or unbounded memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(store) = tempfile::tempdir() else {
        return;
    };
    if std::fs::write(store.path().join("x.mar"), data).is_err() {
        return;
    }
    let _ = ferroserve::archive::ModelArchive::open(store.path(), "x.mar", 16 << 20);
});
