//! The timestamp parser every timestamped scheme uses: decimal Unix seconds, nothing else.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(seconds) = hookgate::verify::parse_timestamp(text) {
        assert!(seconds >= 0, "{text:?} parsed to {seconds}");
        assert!(
            text.bytes().all(|b| b.is_ascii_digit()),
            "{text:?} accepted"
        );
    }
});
