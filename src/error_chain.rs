//! An error and the errors beneath it on one line (`a: b: c`), for logs and the CLI:
//! the outer error alone often says only "network error" or "client error", and the
//! cause (a refused connection, a certificate rustls refused) is what a reader acts on.

use std::error::Error;

pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_follows_on_the_line() {
        let error = Outer(std::io::Error::other("Connection refused"));
        assert_eq!(one_line(&error), "outer: Connection refused");
    }
}
