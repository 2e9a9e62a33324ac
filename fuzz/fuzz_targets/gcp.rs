//! libFuzzer entry point for [`idgate_fuzz::targets::gcp`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate_fuzz::targets::gcp(data));
