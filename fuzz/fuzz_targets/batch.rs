//! The uplink batch decoder the data center runs on untrusted bodies.
//! The properties checked are `rapfuzz::batch` (crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rapfuzz::batch(data));
