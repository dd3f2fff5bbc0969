//! Downloads and uploads: signed manifests, `download` arguments, upload chunk headers.
//! The properties checked are `rapfuzz::manifest` (crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rapfuzz::manifest(data));
