//! hookgate: a webhook gateway in front of backends that should not each re-implement
//! signature checks, replay protection, deduplication and rate limiting.
//!
//! A request goes `server` (admission, TLS, HTTP/1.1 and HTTP/2) → `pipeline`, whose
//! stages run cheapest refusal first: client IP, header limits, penalty box, `allow_ips`,
//! rate limit, source and method, body (under its cap and the `body_budget`), signature
//! (`verify`), dedupe key and event type (`event`), route, dedupe claim, then `forward`
//! (proxy mode) or the queue's enqueue (queue mode, delivered later by `queue::worker`),
//! then the claim's commit or release. `reject` alone decides what a sender sees.
//!
//! The modules sit in floors and import only downward (`floors` below fails on a cycle):
//!
//! | floor | modules |
//! |---|---|
//! | entry points | `main.rs`, `cli`, the commands `sign`, `diagnose`, `deliveries`, `bench`, `echo`, `cli_client` |
//! | wiring | `app`: builds every part from `Settings` and hands handlers to the listeners |
//! | surfaces | `console` (the web pages on the admin listener), `admin` (metrics, health, deliveries API), `reload` (the swappable request path) |
//! | request path, workers | `pipeline`, `queue::worker` |
//! | stages and mappings | `dedupe`, `ratelimit`, `reject` |
//! | parts with state or I/O | `store` and `queue` backends (behind factories), `forward`, `breaker`, `enrich`, `body_budget`, `penalty_box`, `connections`, `server`, `telemetry` |
//! | settings | `config` (file mirror, validation, the `check` summary) |
//! | vocabulary | `upstream`, `event`, `route`, `client_ip`, `dropped_headers`, `verify` (one file per scheme), `tls`, `provider`, `metrics`, `queue::record`, `queue::policy`, `random`, `log_gate`, `log_writer`, `error_chain` |
//!
//! A new scheme is one file in `verify/` and a line in `verify::SCHEMES`; a new backend
//! one file in `store/` (and in `queue/`) and an arm in each factory; a new stage one
//! function in `pipeline` with its refusal in `reject`. Nothing here logs bodies, secrets
//! or signatures.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod bench;
pub mod body_budget;
pub mod breaker;
pub mod cli;
pub mod cli_client;
pub mod client_ip;
pub mod config;
pub mod connections;
pub mod console;
pub mod dedupe;
pub mod deliveries;
pub mod diagnose;
pub mod dropped_headers;
pub mod echo;
pub mod enrich;
pub mod error_chain;
pub mod event;
pub mod forward;
pub mod log_gate;
pub mod log_writer;
pub mod metrics;
pub mod penalty_box;
pub mod pipeline;
pub mod provider;
pub mod queue;
pub mod random;
pub mod ratelimit;
pub mod reject;
pub mod reload;
pub mod route;
pub mod server;
pub mod sign;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod verify;

pub use app::{Running, StartError, start};
pub use config::{ConfigError, Settings};

/// Serves until SIGTERM or SIGINT, then shuts down gracefully; reloads on each SIGHUP
/// `hangups` receives (`reload_signals`; one that arrived while starting, once started).
pub async fn run(
    settings: Settings,
    mut hangups: tokio::signal::unix::Signal,
) -> Result<(), StartError> {
    warn_about_dev_settings(&settings);
    let running = start(settings).await?;
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        notify_ready(&socket);
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // The outcome is logged by the reload itself.
            Some(()) = hangups.recv() => { let _ = running.reload().await; }
        }
    }
    tracing::info!("shutdown requested: no new connections; finishing open requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn warn_about_dev_settings(settings: &Settings) {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    match &settings.server.tls {
        None => tracing::warn!(
            "no [server.tls]: serving plain HTTP; only do this behind a proxy that terminates TLS"
        ),
        Some(tls) if tls.self_signed => tracing::warn!(
            "server.tls.self_signed = true: using a certificate generated at start-up for localhost. \
             FOR DEVELOPMENT ONLY: senders will not trust it; configure cert and key for production"
        ),
        Some(_) => {}
    }
    if matches!(
        settings.upstream_tls,
        config::UpstreamTrust::InsecureSkipVerify
    ) {
        tracing::warn!(
            "upstream_tls.insecure_skip_verify = true: https upstreams, and an https OTLP \
             collector, are NOT VERIFIED; anyone on the path to them can read and change \
             forwarded events (and the collector's headers). FOR DEVELOPMENT ONLY"
        );
    }
}

/// Tells systemd (`Type=notify`, its `NOTIFY_SOCKET`) that hookgate serves, its
/// listeners bound and its SIGHUP handler in place. With `Type=exec` systemd took the
/// process for started at its `exec`, so a `systemctl reload` right after a (re)start
/// could send SIGHUP before the handler was installed, and its default action ended
/// the process.
pub fn notify_ready(socket: &std::ffi::OsStr) {
    use std::os::unix::ffi::OsStrExt;
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|datagram| {
        match socket.as_bytes().strip_prefix(b"@") {
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                datagram.send_to_addr(b"READY=1", &addr)
            }
            _ => datagram.send_to(b"READY=1", socket),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot tell systemd hookgate is ready (NOTIFY_SOCKET)");
    }
}

/// SIGHUP, caught from now on (its default action ends the process).
pub fn reload_signals() -> tokio::signal::unix::Signal {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).expect("SIGHUP handler can be installed")
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The modules sit in floors and import only downward: a cycle between files means a
/// type lives on the wrong floor. This reads the `crate::` and `super::` paths of every
/// file under `src/` (test modules left out), as `../shared/tools/import_cycles.py` does.
#[cfg(test)]
mod floors {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    type Module = Vec<String>;

    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    fn module_of(src: &Path, file: &Path) -> Module {
        let rel = file
            .strip_prefix(src)
            .expect("under src/")
            .with_extension("");
        let mut parts: Module = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        parts
    }

    /// The text without comments and without `#[cfg(test)] mod name { ... }` blocks.
    fn code(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if text[i..].starts_with("//") {
                i += text[i..].find('\n').unwrap_or(text.len() - i);
            } else if text[i..].starts_with("/*") {
                i += text[i..].find("*/").map_or(text.len() - i, |end| end + 2);
            } else if let Some(skip) = test_module_at(&text[i..]) {
                i += skip;
            } else {
                let c = text[i..].chars().next().expect("in bounds");
                out.push(c);
                i += c.len_utf8();
            }
        }
        out
    }

    /// The length of the `#[cfg(test)] mod name { ... }` block starting here, if one does.
    fn test_module_at(text: &str) -> Option<usize> {
        let rest = text.strip_prefix("#[cfg(test)]")?.trim_start();
        let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
        let rest = rest.strip_prefix("mod ")?;
        let open = rest.find(['{', ';'])?;
        if !rest[..open]
            .trim()
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_')
        {
            return None;
        }
        if rest.as_bytes()[open] == b';' {
            return None; // `mod tests;` in a file of its own: not counted either way
        }
        let mut depth = 0;
        for (j, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(text.len() - rest.len() + open + j + 1);
                    }
                }
                _ => {}
            }
        }
        Some(text.len())
    }

    /// Every module path named after `prefix` (`crate::` or `super::`), groups expanded.
    fn paths_after(code: &str, prefix: &str) -> Vec<Module> {
        let mut found = Vec::new();
        for (at, _) in code.match_indices(prefix) {
            if code[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            use_tree(&code[at + prefix.len()..], &mut Vec::new(), &mut found);
        }
        found
    }

    fn is_ident(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }

    /// Reads one use tree (`a::b`, `a::{b, c::{d, e}}`) at the start of `text` onto
    /// `base`; returns how much of `text` it took.
    fn use_tree(text: &str, base: &mut Module, found: &mut Vec<Module>) -> usize {
        let depth = base.len();
        let mut i = 0;
        loop {
            let rest = &text[i..];
            let skipped = rest.len() - rest.trim_start().len();
            let rest = rest.trim_start();
            i += skipped;
            if let Some(group) = rest.strip_prefix('{') {
                let mut inner = text.len() - group.len();
                loop {
                    inner += use_tree(&text[inner..], base, found);
                    let after = text[inner..].trim_start();
                    inner = text.len() - after.len();
                    match after.chars().next() {
                        Some(',') => inner += 1,
                        Some('}') => {
                            inner += 1;
                            break;
                        }
                        _ => break,
                    }
                }
                i = inner;
                break;
            }
            let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            if len == 0 {
                break;
            }
            base.push(rest[..len].to_owned());
            i += len;
            match text[i..].strip_prefix("::") {
                Some(_) => i += 2,
                None => {
                    found.push(base.clone());
                    break;
                }
            }
        }
        base.truncate(depth);
        i
    }

    fn segments(path: &str) -> Module {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn no_file_imports_a_file_that_imports_it_back() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let by_module: BTreeMap<Module, PathBuf> = all
            .iter()
            .filter(|f| !f.ends_with("main.rs"))
            .map(|f| (module_of(&src, f), f.clone()))
            .collect();
        let resolve = |path: &[String]| {
            (1..=path.len())
                .rev()
                .find_map(|k| by_module.get(&path[..k]).cloned())
        };
        let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for file in &all {
            let code = code(&std::fs::read_to_string(file).expect("a readable file"));
            let parent = {
                let mut m = module_of(&src, file);
                m.pop();
                m
            };
            let mut targets: Vec<PathBuf> = paths_after(&code, "crate::")
                .iter()
                .filter_map(|p| resolve(p))
                .collect();
            for path in paths_after(&code, "super::") {
                let mut full = parent.clone();
                full.extend(path);
                targets.extend(resolve(&full).or_else(|| by_module.get(&parent).cloned()));
            }
            targets.retain(|t| t != file);
            edges.entry(file.clone()).or_default().extend(targets);
        }
        // Depth-first search; a path back to a file on the stack is a cycle.
        fn visit(
            at: &PathBuf,
            edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
            stack: &mut Vec<PathBuf>,
            done: &mut BTreeSet<PathBuf>,
        ) -> Option<Vec<PathBuf>> {
            if let Some(start) = stack.iter().position(|f| f == at) {
                let mut cycle = stack[start..].to_vec();
                cycle.push(at.clone());
                return Some(cycle);
            }
            if !done.insert(at.clone()) {
                return None;
            }
            stack.push(at.clone());
            for next in edges.get(at).into_iter().flatten() {
                if let Some(cycle) = visit(next, edges, stack, done) {
                    return Some(cycle);
                }
            }
            stack.pop();
            None
        }
        let mut done = BTreeSet::new();
        for file in edges.keys() {
            if let Some(cycle) = visit(file, &edges, &mut Vec::new(), &mut done) {
                let names: Vec<String> = cycle
                    .iter()
                    .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
                    .collect();
                panic!(
                    "an import cycle: {} (see lib.rs's floors and move the type that closes it down)",
                    names.join(" -> ")
                );
            }
        }
    }

    #[test]
    fn the_reader_finds_grouped_and_nested_paths_and_skips_test_modules() {
        let text = "use crate::a::{b, c::{d, E}};\n// use crate::gone;\nfn f() { crate::x::y(); }\n\
                    #[cfg(test)]\nmod tests { use crate::hidden; }\nuse super::sibling;";
        let code = code(text);
        let found = paths_after(&code, "crate::");
        let expected: Vec<Module> = ["a::b", "a::c::d", "a::c::E", "x::y"]
            .into_iter()
            .map(segments)
            .collect();
        assert_eq!(found, expected);
        assert!(!code.contains("gone") && !code.contains("hidden"), "{code}");
        assert_eq!(paths_after(&code, "super::"), vec![segments("sibling")]);
    }
}
