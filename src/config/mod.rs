//! Configuration: read a TOML file, check it, and hand the rest of hookgate `Settings`.
//!
//! Each file has one job. `file.rs` mirrors the TOML (serde, toml reports a bad value
//! with its line); `build.rs` turns it into `settings.rs`'s types, checking what spans
//! several keys, with `source.rs` building each `[[sources]]` section (its scheme reads
//! its own keys); `summary.rs` describes the result for `check`; `error.rs` is
//! `ConfigError`, which starts with the file, names the key path and gives its line, so a
//! user never has to guess which of three sources is wrong. `secret.rs` is `Secret`
//! (`${VAR}`, never printed), `duration.rs` writes durations back as a file would,
//! `controls.rs` builds a route's delivery controls (`match`, fan-out, breaker, rate).

mod build;
mod controls;
pub mod duration;
mod error;
mod file;
mod name;
pub mod secret;
mod settings;
mod source;
mod summary;

use std::net::SocketAddr;
use std::path::Path;

pub use crate::tls::UpstreamTrust;
pub use crate::verify::parse_header_name;
pub use error::ConfigError;
pub use file::{
    ContentEncoding, DeliveryMode, EnrichProvider, FieldSpec, FileConfig, OnError,
    Route as RouteFile, SecretEntry, Source as SourceFile,
};
pub use secret::Secret;
pub use settings::{
    ADMIN_PATHS, AdminAuth, DedupeSettings, EnrichSettings, HTTP2_RESET_WINDOW, Limits,
    PenaltyBoxSettings, PostgresSettings, QueueSettings, RateLimitSettings, RedisSettings,
    RedisTarget, ServerSettings, Settings, Source, StoreBackend, StoreSettings, TelemetrySettings,
    TlsSettings, in_flight_ttl_for, in_flight_ttl_warning,
};

/// The embedded default configuration: the same text as `config/hookgate.toml`, so the
/// binary runs anywhere with no file at all (self-signed TLS, in-memory store, demo secret).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/hookgate.toml");

/// The configuration file path used when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/hookgate.toml";

/// The `origin` of settings parsed from `EMBEDDED_DEFAULT`.
pub const EMBEDDED_ORIGIN: &str = "<embedded default config>";

/// Reads the settings again from where `origin` says they came from (hot reload).
pub fn reload(origin: &str) -> Result<Settings, ConfigError> {
    if origin == EMBEDDED_ORIGIN {
        parse(EMBEDDED_DEFAULT, EMBEDDED_ORIGIN)
    } else {
        load(Path::new(origin))
    }
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_or_default(Some(path))
}

/// Loads `path` when given; otherwise `config/hookgate.toml` if it exists, else the
/// embedded default. An explicit path that does not exist is an error, never a fallback.
pub fn load_or_default(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let (text, origin) = read_or_default(path)?;
    parse(&text, &origin)
}

/// The text and origin `load_or_default` parses.
fn read_or_default(path: Option<&Path>) -> Result<(String, String), ConfigError> {
    let path = match path {
        Some(path) => path,
        None if Path::new(DEFAULT_PATH).exists() => Path::new(DEFAULT_PATH),
        None => return Ok((EMBEDDED_DEFAULT.to_owned(), EMBEDDED_ORIGIN.to_owned())),
    };
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&origin, format!("cannot read the file: {e}")))?;
    Ok((text, origin))
}

/// Where the admin API listens, and its token: `[admin]` of the file `load_or_default`
/// would read, and nothing else of it. A client of the admin API (`hookgate
/// deliveries`) needs none of the webhook secrets, TLS files or store URLs the rest
/// names, which on a server are in an environment the operator's shell does not have.
/// With `token` false (the caller has one of its own), not even `admin.token` is read:
/// its variable may be in that environment only.
pub fn admin_access(
    path: Option<&Path>,
    token: bool,
) -> Result<(SocketAddr, Option<Secret>), ConfigError> {
    #[derive(serde::Deserialize)]
    struct AdminOnly {
        #[serde(default)]
        admin: file::Admin,
    }
    #[derive(serde::Deserialize)]
    struct ListenOnly {
        admin: Option<Listen>,
    }
    #[derive(serde::Deserialize)]
    struct Listen {
        listen: Option<SocketAddr>,
    }
    let (text, origin) = read_or_default(path)?;
    let error = |e: toml::de::Error| ConfigError::parse(&origin, &text, &e, "");
    if !token {
        let only: ListenOnly = toml::from_str(&text).map_err(error)?;
        let listen = only.admin.and_then(|admin| admin.listen);
        return Ok((listen.unwrap_or(file::Admin::default().listen), None));
    }
    let only: AdminOnly = toml::from_str(&text).map_err(error)?;
    Ok((only.admin.listen, only.admin.token))
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Settings, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let unset = secret::unset_variables(|| toml::from_str::<FileConfig>(text));
        let also = if unset.len() > 1 {
            format!(
                "\n{} environment variables are not set: {}",
                unset.len(),
                unset.join(", ")
            )
        } else {
            String::new()
        };
        ConfigError::parse(origin, text, &e, &also)
    })?;
    build::build(file, origin).map_err(|invalid| ConfigError::invalid(origin, text, invalid))
}
