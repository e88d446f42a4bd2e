//! The `hookgate` binary: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use hookgate::bench::LoadOptions;
use hookgate::cli::{BenchCommand, Cli, Command, LogFormat, SignArgs, VerifyArgs};
use hookgate::cli_client::Trust;
use hookgate::config::StoreBackend;
use hookgate::diagnose;
use hookgate::log_writer::{BatchedWriter, FlushGuard};
use hookgate::sign::{self, SignInput};
use hookgate::verify::{self, KeyError};
use http::StatusCode;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system allocator: the request path allocates many small,
/// short-lived buffers, and glibc's malloc was a tenth of the gateway's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = runtime_builder()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(dispatch(cli.command, cli.log_format)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// With one CPU to run on (a container limited to one, a process pinned to one core)
/// every task runs on the main thread, as an nginx worker is one event loop: a worker
/// thread beside it would only add cross-thread wake-ups and work-stealing bookkeeping.
/// `TOKIO_WORKER_THREADS`, when set, still asks for the multi-threaded runtime.
fn runtime_builder() -> tokio::runtime::Builder {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    if one_cpu && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

/// Logs go to stderr. `RUST_LOG` wins over `level` (`log.level` for `serve`).
/// Lines are batched in memory and written by a thread of their own (`log_writer`);
/// dropping the returned guard writes what waits, so a clean shutdown loses no line.
fn init_logging(format: LogFormat, level: &str) -> FlushGuard {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, guard) = BatchedWriter::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

/// What `hookgate check` says of the database's schema: its version against this
/// binary's, or why it could not be read (the configuration itself is still valid).
async fn postgres_schema_line(pg: &hookgate::config::PostgresSettings) -> String {
    use hookgate::store::postgres::{SCHEMA_VERSION, status};
    match status(pg).await {
        Ok(0) => format!(
            "schema: no hookgate schema yet (serve or `hookgate migrate` creates version {SCHEMA_VERSION})"
        ),
        Ok(found) if found == SCHEMA_VERSION => format!("schema: version {found} (current)"),
        Ok(found) if found < SCHEMA_VERSION => format!(
            "schema: version {found}; serve or `hookgate migrate` brings it to {SCHEMA_VERSION}"
        ),
        Ok(found) => format!(
            "schema: version {found}, NEWER than this binary's {SCHEMA_VERSION}: serve refuses to start"
        ),
        Err(e) => format!("schema: unknown ({e})"),
    }
}

async fn dispatch(command: Command, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    // Held until the command returns: dropping it flushes the log.
    let mut _log_guard = None;
    if !matches!(command, Command::Serve { .. }) {
        _log_guard = Some(init_logging(log_format, "info"));
    }
    match command {
        Command::Serve { config } => {
            // First: SIGHUP's default action ends the process, and a reload right
            // after a (re)start (a config-management handler) must not.
            let hangups = hookgate::reload_signals();
            let settings = hookgate::config::load_or_default(config.as_deref())?;
            _log_guard = Some(init_logging(log_format, &settings.log_level));
            tracing::info!(config = %settings.origin, "configuration loaded");
            hookgate::run(settings, hangups).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let settings = hookgate::config::load_or_default(config.as_deref())?;
            let mut summary = settings.summary();
            if let Some(persistence) = hookgate::queue::redis_persistence(&settings).await {
                summary.push_str(&format!("queue persistence: {persistence}\n"));
            }
            for warning in &settings.warnings {
                eprintln!("warning: {warning}");
            }
            if let StoreBackend::Postgres(pg) = &settings.store.backend {
                summary.push_str(&format!("{}\n", postgres_schema_line(pg).await));
            }
            summary.push_str("ok");
            print_out(&summary)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { config } => {
            let settings = hookgate::config::load_or_default(config.as_deref())?;
            let StoreBackend::Postgres(pg) = &settings.store.backend else {
                bail!("hookgate migrate needs [store] postgres_url in the configuration");
            };
            let migrated = hookgate::store::postgres::migrate(pg).await?;
            println!(
                "{}: schema version {} (was {})",
                pg.target(),
                migrated.to,
                migrated.from
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign(args) => sign_command(args).await,
        Command::Verify(args) => verify_command(args),
        Command::DevCert { out, cert, key } => {
            let (cert, key) = match (cert, key) {
                (Some(cert), Some(key)) => hookgate::tls::write_dev_cert_files(&cert, &key)
                    .with_context(|| format!("writing {} and {}", cert.display(), key.display()))?,
                (None, None) => hookgate::tls::write_dev_cert(&out)
                    .with_context(|| format!("writing the certificate into {}", out.display()))?,
                // clap lets `--out DIR --key FILE` through: the key was silently ignored.
                _ => anyhow::bail!("--cert and --key go together (or use --out DIR alone)"),
            };
            println!(
                "wrote {} and {} (valid for {})",
                cert.display(),
                key.display(),
                hookgate::tls::DEV_NAMES.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo { listen, status } => {
            let status = StatusCode::from_u16(status).context("--status")?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                hookgate::shutdown_signal().await;
                let _ = stop.send(true);
            });
            hookgate::echo::run(listen, status, stopped)
                .await
                .with_context(|| format!("echo on {listen}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Load(args)) => {
            let report = hookgate::bench::load(LoadOptions {
                url: args.url,
                secret: args.secret,
                requests: args.requests,
                connections: args.connections,
                body_size: args.body_size,
                event_types: args.types,
                repeat_share: args.repeat,
                http2: args.http2,
                insecure: args.insecure,
            })
            .await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.to_text());
            }
            // A run cut short is no measurement of `-n` requests.
            Ok(if report.unsent > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Deliveries(args) => {
            let out = hookgate::deliveries::run(args).await?;
            print_out(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Sink { listen, status }) => {
            let status = StatusCode::from_u16(status).context("--status")?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                hookgate::shutdown_signal().await;
                let _ = stop.send(true);
            });
            let stats = hookgate::bench::sink(listen, status, stopped, |addr| {
                println!("sink: listening on http://{addr}")
            })
            .await
            .with_context(|| format!("sink on {listen}"))?;
            println!("sink: {stats}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn sign_command(args: SignArgs) -> anyhow::Result<ExitCode> {
    let scheme = verify::scheme(&args.scheme).map_err(|e| anyhow!("--scheme: {e}"))?;
    let header = |flag: &str, name: &Option<String>| {
        name.as_deref()
            .map(|n| verify::parse_header_name(n).map_err(|e| anyhow!("--{flag}: {e}")))
            .transpose()
    };
    // Values are checked first, each under its flag's name.
    header("signature-header", &args.signature_header)?;
    header("timestamp-header", &args.timestamp_header)?;
    header("id-header", &args.id_header)?;
    if let Some(encoding) = &args.encoding {
        encoding
            .parse::<verify::hmac::Encoding>()
            .map_err(|e| anyhow!("--encoding: {e}"))?;
    }
    // The flags are the scheme keys of a source, read by the scheme as a config file's
    // are: one the scheme does not read is refused, not ignored.
    let mut keys = toml::Table::new();
    for (key, flag) in [
        ("signature_header", &args.signature_header),
        ("encoding", &args.encoding),
        ("prefix", &args.prefix),
        ("timestamp_header", &args.timestamp_header),
        ("id_header", &args.id_header),
        ("signed_content", &args.signed_content),
    ] {
        if let Some(value) = flag {
            keys.insert(key.to_owned(), value.clone().into());
        }
    }
    let options = (scheme.options)(keys).map_err(|e| match e {
        KeyError {
            key: Some(key),
            unknown: true,
            ..
        } => anyhow!(
            "--{} does not apply to --scheme {}",
            key.replace('_', "-"),
            scheme.name
        ),
        other => anyhow!("{other}"),
    })?;
    let request = sign::build_with(
        &*options,
        &SignInput {
            secret: &args.secret,
            event_type: &args.event_type,
            data: args.data.as_deref(),
            id: args.id.as_deref(),
            timestamp: args.timestamp,
        },
        SystemTime::now(),
    )?;
    let trust = Trust::from_flags(args.cacert.as_deref(), args.insecure);
    let Some(url) = args.send else {
        if args.raw {
            let raw = sign::raw_request(&request, &args.url).map_err(|e| anyhow!("--url: {e}"))?;
            std::io::Write::write_all(&mut std::io::stdout(), raw.as_bytes())?;
        } else {
            println!("{}", sign::curl_command(&request, &args.url, &trust));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let (status, body) = sign::send(&request, &url, &trust).await?;
    let label = match scheme.name {
        "standard-webhooks" => "webhook-id",
        _ => "delivery id",
    };
    println!("{label}: {}", request.id);
    println!("HTTP {status}");
    println!("{}", String::from_utf8_lossy(&body));
    if !status.is_success() {
        bail!("the gateway answered {status}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `hookgate verify`: exit 0 when the capture verifies, 1 when it does not.
fn verify_command(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let settings = hookgate::config::load_or_default(args.config.as_deref())?;
    let capture = match (&args.request, &args.headers, &args.body) {
        (Some(path), _, _) => {
            let raw =
                std::fs::read(path).with_context(|| format!("--request {}", path.display()))?;
            diagnose::parse_request(&raw)
                .map_err(|e| anyhow!("--request {}: {e}", path.display()))?
        }
        (None, Some(headers), Some(body)) => {
            let text = std::fs::read(headers)
                .with_context(|| format!("--headers {}", headers.display()))?;
            let body = std::fs::read(body).with_context(|| format!("--body {}", body.display()))?;
            diagnose::parse_parts(&text, body)
                .map_err(|e| anyhow!("--headers {}: {e}", headers.display()))?
        }
        _ => bail!("give --request FILE, or --headers FILE and --body FILE"),
    };
    let now = match args.at {
        Some(at) => {
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(at).context("--at must not be negative")?)
        }
        None => SystemTime::now(),
    };
    let report = diagnose::diagnose(&settings, args.source.as_deref(), &capture, now)
        .map_err(|e| anyhow!("{e}"))?;
    print!("{}", report.text);
    Ok(if report.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `text` and a newline on stdout. A reader that closes the pipe early (`| head`,
/// `| grep -q`) is no error: `println!` panicked, and `check` of a valid file exited 101.
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written,
    }
}
