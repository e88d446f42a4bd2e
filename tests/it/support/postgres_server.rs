//! Real PostgreSQL for the integration tests: `PostgresServer`, one `postgres` started
//! by `initdb` + `pg_ctl` in a temp dir, on a free loopback port (never the machine's
//! 5432) with its Unix socket in that dir too, stopped and removed when dropped.
//!
//! Most tests share one server (`PostgresServer::shared_or_skip`) under a schema of
//! their own; a test that stops the server starts its own. As root (PostgreSQL refuses
//! to run as root) the server runs as the `postgres` user, owning its temp dir. The
//! binaries are looked for in `/usr/lib/postgresql/<version>/bin` (Debian), then on
//! PATH; when missing the test is skipped, unless `HOOKGATE_REQUIRE_POSTGRES=1` (CI),
//! where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::skips;

/// Set to `1` (as CI does) to fail, not skip, a test whose PostgreSQL binaries are missing.
const REQUIRE_POSTGRES: &str = "HOOKGATE_REQUIRE_POSTGRES";

/// The machine's own PostgreSQL, which tests must never touch.
const SYSTEM_POSTGRES_PORT: u16 = 5432;

/// The directory holding `initdb`, `pg_ctl` and `postgres`: the newest Debian one.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// `initdb`'s path, or `None` after saying why the test is skipped.
fn initdb_or_skip() -> Option<PathBuf> {
    match bin_dir() {
        Some(bin) => Some(bin.join("initdb")),
        None => skips::installed_or_skip("initdb", "postgresql", REQUIRE_POSTGRES)
            .then(|| PathBuf::from("initdb")),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` with `args`, as the `postgres` user when this process is root.
fn command(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("bound address").port();
        if port != SYSTEM_POSTGRES_PORT {
            return port;
        }
    }
}

/// One PostgreSQL server on 127.0.0.1, stopped and removed when dropped.
pub struct PostgresServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
    /// More `-c` settings for the server (TLS).
    options: String,
}

impl PostgresServer {
    /// A server of this test's own, or `None` after saying why the test is skipped.
    pub fn start_or_skip() -> Option<PostgresServer> {
        let initdb = initdb_or_skip()?;
        Some(PostgresServer::start(
            initdb.parent().unwrap_or(Path::new("")).to_owned(),
            None,
        ))
    }

    /// A server of this test's own that offers TLS with this certificate and key (PEM),
    /// or `None` after saying why the test is skipped.
    pub fn start_with_tls_or_skip(cert: &Path, key: &Path) -> Option<PostgresServer> {
        let initdb = initdb_or_skip()?;
        Some(PostgresServer::start(
            initdb.parent().unwrap_or(Path::new("")).to_owned(),
            Some((cert, key)),
        ))
    }

    fn start(bin: PathBuf, tls: Option<(&Path, &Path)>) -> PostgresServer {
        let dir = tempfile::tempdir().expect("a temp dir for postgres");
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            let (to_cert, to_key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(cert, &to_cert).expect("copy the server certificate");
            std::fs::copy(key, &to_key).expect("copy the server key");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to_key, std::fs::Permissions::from_mode(0o600))
                .expect("the key private");
            options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                to_cert.display(),
                to_key.display()
            );
        }
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("-R").arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown the postgres temp dir",
            );
        }
        let mut initdb = command(&bin.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb");
        let mut server = PostgresServer {
            bin,
            dir,
            port: 0,
            running: false,
            options,
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                return server;
            }
        }
        panic!("postgres did not start; its log:\n{}", server.log());
    }

    /// `pg_ctl start` on `self.port`; false when it did not come up (a port race).
    fn launch(&mut self) -> bool {
        assert_ne!(
            self.port, SYSTEM_POSTGRES_PORT,
            "never the machine's PostgreSQL"
        );
        // fsync off is safe here: a stop is a crash of the server's processes, not of
        // the machine, so written WAL survives in the page cache. Commits stay
        // synchronous: what a commit acknowledged must survive `stop`.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=300{}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        let status = command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        self.running = status.success();
        self.running
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the `postgres` database, without TLS.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Runs `sql` through `psql` (as a user would paste it), with `vars` as `-v`
    /// variables; returns the rows, columns separated by `|`.
    pub fn psql(&self, vars: &[(&str, &str)], sql: &str) -> Vec<String> {
        use std::io::Write;
        let mut command = Command::new(self.bin.join("psql"));
        command
            .arg(self.url())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        for (name, value) in vars {
            command.arg("-v").arg(format!("{name}={value}"));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .expect("psql's stdin")
            .write_all(sql.as_bytes())
            .expect("write to psql");
        let output = child.wait_with_output().expect("psql finishes");
        assert!(
            output.status.success(),
            "psql failed on:\n{sql}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Stops the server at once (`immediate`: as a crash would, no checkpoint).
    pub fn stop(&mut self) {
        assert!(self.running, "postgres is not running");
        self.pg_ctl_stop();
    }

    fn pg_ctl_stop(&mut self) {
        let _ = command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// Starts the stopped server again on the same port, with everything it committed.
    pub fn restart(&mut self) {
        if self.running {
            self.pg_ctl_stop();
        }
        assert!(
            self.launch(),
            "postgres did not restart; its log:\n{}",
            self.log()
        );
    }

    /// The server the tests share, started on first use and stopped when the test
    /// binary exits; each test uses a schema of its own (`fresh_schema`).
    pub fn shared_or_skip() -> Option<String> {
        let initdb = initdb_or_skip()?;
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let server = shared.get_or_insert_with(|| {
            PostgresServer::start(initdb.parent().unwrap_or(Path::new("")).to_owned(), None)
        });
        Some(server.url())
    }
}

/// A schema name no other test of this run uses.
pub fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            self.pg_ctl_stop();
        }
    }
}

static SHARED: Mutex<Option<PostgresServer>> = Mutex::new(None);

#[dtor::dtor(unsafe)]
fn stop_the_shared_server_at_exit() {
    drop(SHARED.lock().unwrap_or_else(|e| e.into_inner()).take());
}
