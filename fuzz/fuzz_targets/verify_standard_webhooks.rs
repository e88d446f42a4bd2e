//! The standard-webhooks scheme's header parsing and verification, driven by its vectors' source.
#![no_main]

use std::sync::OnceLock;

static SCHEME: OnceLock<hookgate_fuzz::Scheme> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hookgate_fuzz::verify(
        &SCHEME,
        include_str!("../../tests/vectors/standard-webhooks.toml"),
        data,
    );
});
