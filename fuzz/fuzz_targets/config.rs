//! The config loader on arbitrary text: it must answer with settings or an error that
//! names the file, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Paths are the operator's to choose; reading a device file is not a parser bug.
    if text.contains("/dev/") || text.contains("/proc/") || text.contains("/sys/") {
        return;
    }
    if let Err(e) = hookgate::config::parse(text, "fuzz.toml") {
        assert!(e.to_string().starts_with("fuzz.toml: "), "{e}");
    }
});
