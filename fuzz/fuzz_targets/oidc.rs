//! libFuzzer entry point for [`idgate_fuzz::targets::oidc`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate_fuzz::targets::oidc(data));
