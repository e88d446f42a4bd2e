//! hookgate as a separate program: `GatewayProcess` (`hookgate serve` as a child process,
//! so it can really be killed or sent SIGHUP) and `hookgate_cli` for one-shot commands.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::{ConfigFile, PATIENCE, Scrape, TestClient, eventually};

/// Runs the built `hookgate` binary with `args` and returns (success, stdout, stderr).
pub async fn hookgate_cli(args: &[&str]) -> (bool, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(args)
        .env_remove("HOOKGATE_CONFIG")
        .env_remove("HOOKGATE_ADMIN_URL")
        .env_remove("HOOKGATE_DELIVERIES_TOKEN")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("hookgate finishes in time")
        .expect("run hookgate");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `hookgate serve` as a child process of the built binary, so it can really be killed.
/// Its stderr (JSON log lines) is kept for the failure message.
pub struct GatewayProcess {
    child: std::process::Child,
    config: ConfigFile,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GatewayProcess {
    /// Starts `hookgate serve` on `config` and returns once it listens.
    pub async fn spawn(config: impl fmt::Display) -> GatewayProcess {
        GatewayProcess::spawn_logging(config, "info").await
    }

    /// `spawn` with `RUST_LOG=filter` (for example "info,hookgate::server=debug").
    pub async fn spawn_logging(config: impl fmt::Display, filter: &str) -> GatewayProcess {
        let command = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
        GatewayProcess::spawn_command(command, config, filter).await
    }

    /// `spawn` with `NOTIFY_SOCKET` set, as systemd starts a `Type=notify` service.
    pub async fn spawn_notifying(
        config: impl fmt::Display,
        socket: &std::path::Path,
    ) -> GatewayProcess {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
        command.env("NOTIFY_SOCKET", socket);
        GatewayProcess::spawn_command(command, config, "info").await
    }

    /// `spawn` allowed to run on CPU 0 only (`taskset`), as in a container given one CPU.
    pub async fn spawn_on_one_cpu(config: impl fmt::Display) -> GatewayProcess {
        let mut command = std::process::Command::new("taskset");
        command.args(["-c", "0", env!("CARGO_BIN_EXE_hookgate")]);
        GatewayProcess::spawn_command(command, config, "info").await
    }

    async fn spawn_command(
        mut command: std::process::Command,
        config: impl fmt::Display,
        filter: &str,
    ) -> GatewayProcess {
        use std::io::BufRead;
        let config = ConfigFile::new(config);
        let mut child = command
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config.path())
            .env("RUST_LOG", filter)
            .env_remove("HOOKGATE_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn hookgate serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (listening_tx, listening) = std::sync::mpsc::channel();
        let reader = std::thread::spawn({
            let log = log.clone();
            move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                        && event["message"] == "listening"
                    {
                        let addr = |key: &str| event[key].as_str().and_then(|a| a.parse().ok());
                        if let (Some(addr), Some(admin)) = (addr("addr"), addr("admin_addr")) {
                            let _ = listening_tx.send((addr, admin));
                        }
                    }
                    log.lock().expect("not poisoned").push(line);
                }
            }
        });
        let waited = tokio::task::spawn_blocking(move || listening.recv_timeout(PATIENCE))
            .await
            .expect("the waiting thread");
        let Ok((addr, admin_addr)) = waited else {
            let _ = child.kill();
            panic!(
                "hookgate serve did not start listening:\n{}",
                log.lock().expect("not poisoned").join("\n")
            );
        };
        GatewayProcess {
            child,
            config,
            addr,
            admin_addr,
            log,
            reader: Some(reader),
        }
    }

    pub fn client(&self) -> TestClient {
        TestClient::new(format!("http://{}", self.addr))
    }

    /// The process id, to read its `/proc` entries (CPU time, memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the process was started with (rewrite it, then `hangup`).
    pub fn config_file(&self) -> &ConfigFile {
        &self.config
    }

    /// SIGHUP: read the config file again.
    pub fn hangup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// SIGTERM: begins a clean shutdown; `wait_exit` waits for its end.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits until the process has exited and its log is read to the end.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let exit = self.child.wait().expect("wait for hookgate");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader");
        }
        exit
    }

    /// SIGKILL: no shutdown, no hand back; waits until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("not poisoned").join("\n")
    }

    /// The log, once a line containing `text` is in it: lines reach stderr in batches,
    /// up to 50 ms after they were logged (`log_writer`).
    pub async fn log_containing(&self, text: &str) -> String {
        eventually(format!("a log line containing {text:?}"), || {
            std::future::ready(self.log().contains(text))
        })
        .await;
        self.log()
    }

    pub async fn metrics(&self) -> Scrape {
        let reply = self
            .client()
            .get(&format!("http://{}/metrics", self.admin_addr))
            .await;
        Scrape(reply.text())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
