//! A workflow archive's spec: YAML models and DAG, parsed and validated.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = ferroserve::workflow::spec::Spec::parse(text, "wf") {
            assert_eq!(spec.nodes.len(), spec.dag.len());
            assert_eq!(spec.dag.topological().len(), spec.dag.len());
            let start = spec.dag.start();
            assert!(spec.dag.parents(start).is_empty());
        }
    }
});
