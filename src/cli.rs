//! The command line: `serve`, `check`, `migrate`, `sign`, `verify`, `dev-cert`, `echo`, `bench`,
//! `deliveries`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "hookgate",
    version,
    about = "A webhook gateway: verifies signatures, rejects stale and replayed deliveries, \
             deduplicates, rate-limits and routes signed webhooks to your backends.",
    propagate_version = true
)]
pub struct Cli {
    /// Log format: human-readable text, or one JSON object per line. `auto` (the default)
    /// is text on a terminal and JSON otherwise (systemd, containers, files).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true, env = "HOOKGATE_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    ///
    /// Without --config, reads config/hookgate.toml if it exists, else the embedded
    /// default (self-signed TLS on 127.0.0.1:8443, admin on 127.0.0.1:9090, in-memory store,
    /// a demo secret). Log level: RUST_LOG (default "info").
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, env = "HOOKGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print a summary; exit 1 if it is invalid.
    Check {
        /// Configuration file (TOML); default as for `serve`.
        #[arg(long, short, env = "HOOKGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Bring the PostgreSQL schema of `[store] postgres_url` to this binary's version
    /// (what `serve` does at start), for example ahead of a deploy; exit 1 if it fails.
    Migrate {
        /// Configuration file (TOML); default as for `serve`.
        #[arg(long, short, env = "HOOKGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Build a correctly signed request in any scheme's format: print it as curl, or send it.
    Sign(SignArgs),
    /// Explain step by step why a captured request does or does not verify against a
    /// source: the headers read, the secrets tried, the signed content, the timestamp's
    /// age and the most likely mistake. Exits 0 when it verifies, 1 when not.
    Verify(VerifyArgs),
    /// Write a self-signed certificate and key for localhost, 127.0.0.1 and ::1.
    DevCert {
        /// Directory for dev-cert.pem and dev-key.pem (created if missing).
        #[arg(long, default_value = "certs", conflicts_with = "cert")]
        out: PathBuf,
        /// Write the certificate to this file instead (for example where a config's
        /// server.tls.cert points); directories are created.
        #[arg(long, value_name = "PATH", requires = "key")]
        cert: Option<PathBuf>,
        /// Write the key (mode 0600) to this file instead; goes with --cert.
        #[arg(long, value_name = "PATH", requires = "cert")]
        key: Option<PathBuf>,
    },
    /// A tiny upstream for trying hookgate out: prints one line per request, answers --status.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// HTTP status to answer with.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
        status: u16,
    },
    /// Measure a gateway: a load generator that signs every request, and a fast sink.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Queue mode: list, show and replay deliveries of a running gateway (through its
    /// admin listener, so it works with the in-memory queue and with Redis alike).
    Deliveries(DeliveriesArgs),
}

#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// The gateway's admin listener, for example http://127.0.0.1:9090 (default: the
    /// config's admin.listen).
    #[arg(long, env = "HOOKGATE_ADMIN_URL", global = true)]
    pub admin: Option<String>,
    /// Bearer token for the /deliveries API (default: the config's admin.token).
    #[arg(
        long,
        env = "HOOKGATE_DELIVERIES_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Configuration file to read the admin address and token from; default as for `serve`.
    #[arg(long, short, env = "HOOKGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// With an https:// --admin: accept any certificate (a development proxy).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// With an https:// --admin: trust exactly the certificates in this PEM file.
    #[arg(long, value_name = "PEM", global = true, conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,
    #[command(subcommand)]
    pub command: DeliveriesCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Delivery records, newest first (by when they were received or last replayed).
    List {
        /// Only this state: queued, processing, processed, failed_retryable, failed_final.
        #[arg(long)]
        status: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Only this route (its name; with --source, of that source).
        #[arg(long)]
        route: Option<String>,
        /// Only this upstream of a fan-out route (its name or index; needs --route).
        #[arg(long, requires = "route")]
        upstream: Option<String>,
        /// Only this event type (exactly).
        #[arg(long)]
        event_type: Option<String>,
        /// The delivery with this id, or the deliveries with this webhook id.
        #[arg(long)]
        search: Option<String>,
        /// Only those queued since this time: RFC 3339 (2026-11-20T10:00:00Z) or a
        /// duration ago (1h).
        #[arg(long)]
        since: Option<String>,
        /// Only those queued before this time: RFC 3339 or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// Continue where the previous page ended (the cursor it printed).
        #[arg(long)]
        cursor: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One record with its attempt history; the body only with --body.
    Show {
        id: String,
        /// Also print the stored body and header values.
        #[arg(long)]
        body: bool,
    },
    /// Queue a dead letter (failed_final) again, or with --status failed_final every
    /// dead letter (that failed since --since).
    Replay {
        #[arg(required_unless_present = "status", conflicts_with_all = ["status", "since"])]
        id: Option<String>,
        /// Replay every delivery in this state; only failed_final is accepted.
        #[arg(long, value_parser = ["failed_final"])]
        status: Option<String>,
        /// With --status: only those that failed since this time, RFC 3339
        /// (2026-11-20T10:00:00Z) or a duration ago (24h).
        #[arg(long, requires = "status")]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Sign N distinct deliveries up front, send them over C keep-alive connections,
    /// report throughput, latency percentiles (HDR histogram) and status counts.
    Load(LoadArgs),
    /// A minimal fast upstream: answers every POST, counts requests and distinct
    /// webhook-ids; GET /stats returns them as JSON, POST /reset zeroes them.
    Sink {
        #[arg(long, default_value = "127.0.0.1:9101")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
        status: u16,
    },
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Where to send (the gateway's source path, or a sink directly).
    #[arg(long)]
    pub url: http::Uri,
    /// Signing secret (default: the demo secret of config/hookgate.toml).
    #[arg(
        long,
        default_value = "whsec_aG9va2dhdGUtZGVtby1zZWNyZXQtZG8tbm90LXVzZSE="
    )]
    pub secret: String,
    /// Number of requests (each a distinct delivery unless --repeat).
    #[arg(long, short = 'n', default_value_t = 20_000)]
    pub requests: usize,
    /// Keep-alive connections, one request in flight on each.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub connections: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// Event types, used in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "response.completed,response.failed,batch.completed"
    )]
    pub types: Vec<String>,
    /// Share of requests (0 to <1) that repeat an earlier delivery: 200 duplicate, or 409
    /// in_flight when the original is still being forwarded on another connection.
    #[arg(long, default_value_t = 0.0)]
    pub repeat: f64,
    /// Use HTTP/2 (over TLS by ALPN, or prior knowledge on http://).
    #[arg(long)]
    pub http2: bool,
    /// Accept any TLS certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Configuration file (TOML); default as for `serve`.
    #[arg(long, short, env = "HOOKGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The source whose verifier runs (default: the one whose path the request line
    /// names, or the only one).
    #[arg(long)]
    pub source: Option<String>,
    /// A captured raw HTTP request: request line, headers, an empty line, the body.
    #[arg(long, value_name = "FILE", required_unless_present = "headers", conflicts_with_all = ["headers", "body"])]
    pub request: Option<PathBuf>,
    /// The request's headers, one `Name: value` per line.
    #[arg(long, value_name = "FILE", requires = "body")]
    pub headers: Option<PathBuf>,
    /// The request's body, byte for byte.
    #[arg(long, value_name = "FILE", requires = "headers")]
    pub body: Option<PathBuf>,
    /// Judge the timestamp as of this Unix time instead of now (an old capture).
    #[arg(long, value_name = "UNIX")]
    pub at: Option<i64>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Signing secret: whsec_<base64> or raw text (standard-webhooks; whsk_<base64> signs
    /// v1a), the secret text itself (stripe, github, hmac).
    #[arg(long, env = "HOOKGATE_SIGN_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Signature scheme: standard-webhooks, stripe, github or hmac.
    #[arg(long, default_value = "standard-webhooks")]
    pub scheme: String,
    /// stripe, hmac: the header carrying the signature (stripe: Stripe-Signature).
    #[arg(long, value_name = "NAME")]
    pub signature_header: Option<String>,
    /// hmac: how the tag is written: hex or base64 (default hex).
    #[arg(long, value_name = "ENCODING")]
    pub encoding: Option<String>,
    /// hmac: text before the tag, for example sha256=.
    #[arg(long)]
    pub prefix: Option<String>,
    /// hmac: the header carrying the Unix timestamp.
    #[arg(long, value_name = "NAME")]
    pub timestamp_header: Option<String>,
    /// hmac: the header carrying the delivery id.
    #[arg(long, value_name = "NAME")]
    pub id_header: Option<String>,
    /// hmac: the signed content, a template of {id}, {timestamp} and {body}.
    #[arg(long, value_name = "TEMPLATE")]
    pub signed_content: Option<String>,
    /// Event type: the body's "type" (response.completed, invoice.paid), or X-GitHub-Event (push).
    #[arg(long = "type")]
    pub event_type: String,
    /// JSON for the body's "data" (Stripe: "data.object"; github: the whole body). Default {}.
    #[arg(long)]
    pub data: Option<String>,
    /// Delivery id: webhook-id, Stripe's event id, X-GitHub-Delivery or the hmac id header
    /// (default: a fresh one). Reuse one to test deduplication.
    #[arg(long)]
    pub id: Option<String>,
    /// Timestamp in Unix seconds (default: now). An old one tests staleness.
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// URL used in the printed curl command.
    #[arg(
        long,
        default_value = "https://localhost:8443/webhooks/openai",
        conflicts_with = "send"
    )]
    pub url: String,
    /// Send the request to this URL and print the answer instead of printing curl.
    #[arg(long, value_name = "URL")]
    pub send: Option<String>,
    /// Print the request as raw HTTP/1.1 for --url instead of curl: what
    /// `hookgate verify --request` reads.
    #[arg(long, conflicts_with = "send")]
    pub raw: bool,
    /// Accept any TLS certificate (a dev listener with a self-signed certificate):
    /// `--send`, or `-k` in the printed curl command.
    #[arg(long, conflicts_with = "raw")]
    pub insecure: bool,
    /// Trust exactly the certificates in this PEM file (for example certs/dev-cert.pem):
    /// `--send`, or `--cacert` in the printed curl command.
    #[arg(long, value_name = "PEM", conflicts_with_all = ["insecure", "raw"])]
    pub cacert: Option<PathBuf>,
}
