//! libFuzzer entry point for [`idgate_fuzz::targets::aws_pkcs7`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate_fuzz::targets::aws_pkcs7(data));
