//! rapd's configuration loading on arbitrary text.
//! The properties checked are `rapfuzz::config` (crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rapfuzz::config(data));
