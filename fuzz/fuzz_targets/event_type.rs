//! The event type read by JSON pointer from a body: the first line is the pointer, the
//! rest the body. Whatever it returns must be a non-empty string found in valid JSON.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (pointer, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"/type"[..], data),
    };
    let Ok(pointer) = std::str::from_utf8(pointer) else {
        return;
    };
    let Ok(pointer) = hookgate::event::JsonPointer::parse(pointer) else {
        return;
    };
    if let Ok(event_type) = hookgate::event::type_at(body, &pointer) {
        assert!(!event_type.is_empty());
    }
});
