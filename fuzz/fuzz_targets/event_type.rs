//! The event type read by JSON pointer from a body: the first line is the pointer, the
//! rest the body. Whatever it returns must be what a parser that keeps every value
//! (`serde_json::Value`, where the last of duplicate keys wins) finds there too: a
//! body on which the two could disagree (a key twice on the path) must be refused.
#![no_main]

use hookgate::event::PayloadError;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (pointer, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"/type"[..], data),
    };
    let Ok(text) = std::str::from_utf8(pointer) else {
        return;
    };
    let Ok(pointer) = hookgate::event::JsonPointer::parse(text) else {
        return;
    };
    let ours = hookgate::event::type_at(body, &pointer);
    let value = serde_json::from_slice::<serde_json::Value>(body);
    let theirs = value
        .as_ref()
        .ok()
        .and_then(|v| v.pointer(text))
        .and_then(serde_json::Value::as_str);
    match (&ours, &value) {
        (Ok(event_type), Ok(_)) => {
            assert!(!event_type.is_empty() && event_type.len() <= 256);
            assert_eq!(
                Some(&**event_type),
                theirs,
                "the backend would read another type"
            );
        }
        // Values hookgate skips are checked for syntax, not for what `Value` cannot
        // hold (numbers beyond f64, nesting beyond 128, UTF-16 surrogates that pair
        // with nothing): no parser routes on those, and most keep them.
        (Ok(_), Err(e)) => {
            let text = e.to_string();
            assert!(
                [
                    "number out of range",
                    "recursion limit exceeded",
                    "lone leading surrogate",
                    "unexpected end of hex escape",
                ]
                .iter()
                .any(|skipped| text.starts_with(skipped)),
                "accepted a body serde_json refuses: {e}"
            );
        }
        (Err(PayloadError::NotJson), Ok(_)) => panic!("refused JSON serde_json accepts"),
        (Err(PayloadError::NoEventType), Ok(_)) => {
            assert!(theirs.is_none_or(str::is_empty), "missed {theirs:?}");
        }
        (Err(PayloadError::EventTypeTooLong), Ok(_)) => {
            assert!(theirs.is_some_and(|t| t.len() > 256));
        }
        _ => {}
    }
});
