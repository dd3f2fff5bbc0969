//! The command channel: the data center's answers and the commands in them, as rapd
//! decodes them. The properties checked are `rapfuzz::command` (crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rapfuzz::command(data));
