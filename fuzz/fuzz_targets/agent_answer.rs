//! libFuzzer entry point for [`idgate_fuzz::targets::agent_answer`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate_fuzz::targets::agent_answer(data));
