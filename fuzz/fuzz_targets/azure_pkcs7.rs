//! libFuzzer entry point for [`idgate_fuzz::targets::azure_pkcs7`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate_fuzz::targets::azure_pkcs7(data));
