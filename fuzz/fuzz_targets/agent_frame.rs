//! The agent protocol: a frame body, and the same bytes as a stream of frames.
//! The properties checked are `rapfuzz::agent_frame` (crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rapfuzz::agent_frame(data));
