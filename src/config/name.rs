//! The names a config gives sources, routes and upstreams: they end up in metric labels,
//! store keys and record fields, so they stay short and plain.

use super::error::Invalid;

/// Names end up in metric labels and store keys: keep them short and plain.
pub(super) fn check_name(key: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::at(
            key,
            format!(
                "{key} {name:?} must be 1 to 64 characters of letters, digits, '_', '-' or '.'"
            ),
        ))
    }
}
