//! What we ship besides the binary: the container image's build context and the
//! configuration files a user is told to run or copy.
//!
//! No container engine runs here, so `.ci/run` builds the Dockerfile's build stage from
//! a directory holding exactly the files that stage COPYs. These tests keep that list
//! and the Dockerfile in step, and check that the list holds every file Cargo reads to
//! build the binary, so a missing one fails `cargo test` too, not only CI.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// The Dockerfile's build stage: the sources its COPY lines take from the context, and
/// the `cargo build` command of its RUN step.
struct BuildStage {
    copied: BTreeSet<String>,
    cargo_build: String,
}

fn dockerfile_build_stage() -> BuildStage {
    let dockerfile = repo_file("Dockerfile");
    // Instructions, with continuation lines joined and comments dropped.
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let stage: Vec<&String> = instructions
        .iter()
        .skip_while(|i| !(i.starts_with("FROM ") && i.ends_with(" AS build")))
        .skip(1)
        .take_while(|i| !i.starts_with("FROM "))
        .collect();
    assert!(
        !stage.is_empty(),
        "the Dockerfile has no `FROM ... AS build` stage"
    );
    let mut copied = BTreeSet::new();
    for copy in stage.iter().filter_map(|i| i.strip_prefix("COPY ")) {
        let words: Vec<&str> = copy.split_whitespace().collect();
        assert!(
            !words.iter().any(|w| w.starts_with("--")),
            "COPY with flags in the build stage: {copy}"
        );
        let (_destination, sources) = words.split_last().expect("COPY has arguments");
        copied.extend(
            sources
                .iter()
                .map(|s| s.trim_start_matches("./").to_owned()),
        );
    }
    let runs: Vec<&str> = stage
        .iter()
        .filter_map(|i| i.strip_prefix("RUN "))
        .filter(|run| run.contains("cargo build"))
        .collect();
    assert_eq!(runs.len(), 1, "one RUN with cargo build: {runs:?}");
    let from_cargo = &runs[0][runs[0].find("cargo build").expect("found above")..];
    let cargo_build = from_cargo
        .split("&&")
        .next()
        .expect("split yields one part")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    BuildStage {
        copied,
        cargo_build,
    }
}

/// `.ci/run`'s `DOCKER_BUILD_CONTEXT=(...)` and `DOCKER_BUILD_COMMAND="..."`.
fn ci_build_step() -> (BTreeSet<String>, String) {
    let ci = repo_file(".ci/run");
    let value = |name: &str| {
        ci.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!(".ci/run no longer sets {name}"))
            .to_owned()
    };
    let context = value("DOCKER_BUILD_CONTEXT");
    let context = context
        .strip_prefix('(')
        .and_then(|c| c.strip_suffix(')'))
        .expect("DOCKER_BUILD_CONTEXT is a bash array on one line");
    let command = value("DOCKER_BUILD_COMMAND");
    (
        context.split_whitespace().map(str::to_owned).collect(),
        command.trim_matches('"').to_owned(),
    )
}

#[test]
fn ci_builds_exactly_what_the_dockerfile_build_stage_copies_with_its_command() {
    let stage = dockerfile_build_stage();
    let (context, command) = ci_build_step();
    assert_eq!(
        context, stage.copied,
        ".ci/run's DOCKER_BUILD_CONTEXT must list exactly the Dockerfile build stage's COPY sources"
    );
    assert_eq!(
        command, stage.cargo_build,
        ".ci/run's DOCKER_BUILD_COMMAND must be the Dockerfile build stage's cargo build"
    );
    assert!(command.contains("--locked"), "{command}");
}

/// Every file Cargo needs to build the package: the manifest, the lock file, each
/// declared target's source, and every file the sources include at compile time.
fn files_cargo_reads() -> BTreeSet<String> {
    let manifest: toml::Table = toml::from_str(&repo_file("Cargo.toml")).expect("Cargo.toml");
    let mut needed = BTreeSet::from([
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "src/main.rs".to_owned(),
        "src/lib.rs".to_owned(),
        // mimalloc's build flags (`[env]`): without them the image's allocator differs.
        ".cargo/config.toml".to_owned(),
    ]);
    for (kind, default_dir) in [
        ("bench", "benches"),
        ("test", "tests"),
        ("example", "examples"),
    ] {
        for target in manifest
            .get(kind)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let path = match (target.get("path"), target.get("name")) {
                (Some(path), _) => path.as_str().expect("path is a string").to_owned(),
                (None, Some(name)) => format!("{default_dir}/{}.rs", name.as_str().unwrap()),
                (None, None) => panic!("a [[{kind}]] without name or path"),
            };
            needed.insert(path);
        }
    }
    let mut sources = vec![PathBuf::from("src")];
    while let Some(dir) = sources.pop() {
        let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(&dir);
        for entry in std::fs::read_dir(&full).expect("read a source dir") {
            let path = dir.join(entry.expect("a dir entry").file_name());
            if path.extension().is_some_and(|e| e == "rs") {
                let text = repo_file(path.to_str().expect("utf-8 path"));
                for included in included_files(&text) {
                    needed.insert(normalize(&path.parent().expect("in a dir").join(included)));
                }
            } else if Path::new(env!("CARGO_MANIFEST_DIR")).join(&path).is_dir() {
                sources.push(path);
            }
        }
    }
    needed
}

/// The paths of `include_str!("...")` and `include_bytes!("...")` in a source file.
fn included_files(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for mac in ["include_str!(\"", "include_bytes!(\""] {
        for (at, _) in text.match_indices(mac) {
            let rest = &text[at + mac.len()..];
            let end = rest.find('"').expect("a closing quote");
            found.push(rest[..end].to_owned());
        }
    }
    found
}

/// `src/config/../../config/x.toml` -> `config/x.toml`.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.iter().map(|p| p.to_str().expect("utf-8 path")) {
        match part {
            ".." => {
                parts.pop();
            }
            "." => {}
            part => parts.push(part),
        }
    }
    parts.join("/")
}

#[test]
fn the_dockerfile_build_stage_copies_every_file_cargo_reads() {
    let copied = dockerfile_build_stage().copied;
    let missing: Vec<String> = files_cargo_reads()
        .into_iter()
        .filter(|file| {
            !copied
                .iter()
                .any(|c| file == c || file.starts_with(&format!("{c}/")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile's build stage does not COPY {missing:?} (it copies {copied:?}); \
         `docker build` would fail"
    );
}

#[test]
fn files_cargo_reads_include_the_declared_bench_and_the_embedded_config() {
    let needed = files_cargo_reads();
    assert!(needed.contains("benches/stages.rs"), "{needed:?}");
    assert!(needed.contains("tests/it/main.rs"), "{needed:?}");
    assert!(needed.contains("config/hookgate.toml"), "{needed:?}");
}

/// The image's own config: it must check, listen on every interface of the container,
/// and the runtime stage must copy it to where HOOKGATE_CONFIG points.
#[tokio::test]
async fn the_container_images_config_checks_and_listens_on_every_interface() {
    let dockerfile = repo_file("Dockerfile");
    assert!(
        dockerfile.contains("COPY config/container.toml /etc/hookgate/hookgate.toml"),
        "the runtime stage copies config/container.toml to /etc/hookgate/hookgate.toml"
    );
    assert!(dockerfile.contains("HOOKGATE_CONFIG=/etc/hookgate/hookgate.toml"));
    let (ok, stdout, stderr) = hookgate_in_repo(
        &["check", "--config", "config/container.toml"],
        &[("HOOKGATE_ADMIN_TOKEN", "test-token")],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("listen: 0.0.0.0:8443 https"), "{stdout}");
    assert!(stdout.contains("admin:  0.0.0.0:9090"), "{stdout}");
    assert!(
        stdout.contains("bearer token required except /healthz /readyz"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dedupe ttl 72h,"),
        "durations as written: {stdout}"
    );
}

/// Runs the built binary from the repository root with extra environment variables;
/// returns (success, stdout, stderr).
async fn hookgate_in_repo(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("HOOKGATE_CONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.expect("run hookgate");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `config/dev-tls.toml` is the walkthrough's gateway on a verifiable certificate: the
/// same file as `config/hookgate.toml` but for `[server.tls]`.
#[test]
fn the_dev_tls_config_is_the_walkthrough_config_but_for_its_certificate() {
    let table = |path: &str| -> toml::Table { toml::from_str(&repo_file(path)).unwrap() };
    let (mut walkthrough, mut dev_tls) =
        (table("config/hookgate.toml"), table("config/dev-tls.toml"));
    let tls = |config: &mut toml::Table| {
        config["server"]
            .as_table_mut()
            .unwrap()
            .remove("tls")
            .unwrap()
    };
    assert_eq!(tls(&mut walkthrough)["self_signed"].as_bool(), Some(true));
    let dev = tls(&mut dev_tls);
    assert_eq!(dev["cert"].as_str(), Some("certs/dev-cert.pem"));
    assert_eq!(dev["key"].as_str(), Some("certs/dev-key.pem"));
    assert_eq!(walkthrough, dev_tls);
}

/// The example production config checks on a fresh machine after the steps its header
/// (and the README) give: its TLS paths are the ones `dev-cert` is told to write. The
/// files go to a temp dir here instead of /etc.
#[tokio::test]
async fn the_example_production_config_checks_after_its_documented_steps() {
    let text = repo_file("config/openai.example.toml");
    let config: toml::Table = toml::from_str(&text).unwrap();
    let tls = config["server"]["tls"].as_table().unwrap();
    let (cert, key) = (tls["cert"].as_str().unwrap(), tls["key"].as_str().unwrap());
    let documented = format!("dev-cert --cert {cert} --key {key}");
    assert!(
        text.lines()
            .any(|l| l.starts_with('#') && l.contains(&documented)),
        "the header of config/openai.example.toml shows `{documented}`"
    );
    assert!(
        repo_file("README.md").contains(&format!("cargo run -q -- {documented}")),
        "the README shows `cargo run -q -- {documented}`"
    );

    let root = tempfile::tempdir().unwrap();
    let rooted = |path: &str| root.path().join(path.trim_start_matches('/'));
    let (ok, _, stderr) = hookgate_in_repo(
        &[
            "dev-cert",
            "--cert",
            rooted(cert).to_str().unwrap(),
            "--key",
            rooted(key).to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(ok, "{stderr}");
    let moved = root.path().join("openai.example.toml");
    std::fs::write(
        &moved,
        text.replace(cert, rooted(cert).to_str().unwrap())
            .replace(key, rooted(key).to_str().unwrap()),
    )
    .unwrap();
    let secret = (
        "OPENAI_WEBHOOK_SECRET",
        "whsec_aG9va2dhdGUtZGVtby1zZWNyZXQtZG8tbm90LXVzZSE=",
    );
    let (ok, stdout, stderr) =
        hookgate_in_repo(&["check", "--config", moved.to_str().unwrap()], &[secret]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.ends_with("ok\n"), "{stdout}");
}

/// The README's walkthroughs run one after the other with their gateways and backends
/// left running: no two of them listen on one port, and the compose stack publishes
/// none of theirs on the host.
#[test]
fn the_walkthroughs_and_the_compose_stack_use_ports_of_their_own() {
    let walkthroughs = [
        "config/hookgate.toml",
        "config/schemes.example.toml",
        "config/queue-demo.toml",
    ];
    let mut taken: Vec<(u16, String)> = Vec::new();
    for path in walkthroughs {
        let config: toml::Table = toml::from_str(&repo_file(path)).unwrap();
        let port = |addr: &str| addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let mut ports = BTreeSet::new();
        ports.insert(port(config["server"]["listen"].as_str().unwrap()));
        ports.insert(port(config["admin"]["listen"].as_str().unwrap()));
        // The `hookgate echo` backends the walkthrough starts.
        for source in config["sources"].as_array().unwrap() {
            for route in source["routes"].as_array().unwrap() {
                let upstream = route["upstream"].as_str().unwrap();
                let authority = upstream.split('/').nth(2).unwrap();
                ports.insert(port(authority));
            }
        }
        taken.extend(ports.into_iter().map(|p| (p, path.to_owned())));
    }
    for line in repo_file("docker-compose.yml").lines() {
        // `- "127.0.0.1:19090:9090"` or `- "18443:8443"`: the host port is the second to last.
        let Some(mapping) = line.trim().strip_prefix("- \"") else {
            continue;
        };
        let parts: Vec<&str> = mapping.trim_end_matches('"').split(':').collect();
        if parts.len() >= 2
            && let Ok(host) = parts[parts.len() - 2].parse::<u16>()
        {
            taken.push((host, "docker-compose.yml".to_owned()));
        }
    }
    assert!(taken.iter().any(|(_, who)| who == "docker-compose.yml"));
    taken.sort();
    let clashes: Vec<_> = taken.windows(2).filter(|w| w[0].0 == w[1].0).collect();
    assert!(clashes.is_empty(), "ports used twice: {clashes:?}");
}

/// The compose stack's `sender` service runs `hookgate sign` from the image: its
/// entrypoint and default command, pointed at a test gateway instead of the `hookgate`
/// service, deliver a signed event.
#[tokio::test]
async fn the_compose_senders_command_delivers_a_signed_event() {
    let compose = repo_file("docker-compose.yml");
    let service = compose
        .split("\n  sender:\n")
        .nth(1)
        .expect("docker-compose.yml has a sender service");
    let array = |key: &str| -> Vec<String> {
        let line = service
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("the sender has {key}"));
        serde_json::from_str(line).expect("a JSON-style flow sequence")
    };
    let (entrypoint, command) = (array("entrypoint"), array("command"));
    assert_eq!(entrypoint[0], "/usr/local/bin/hookgate");
    assert!(service.contains("HOOKGATE_SIGN_SECRET: *demo-secret"));
    let demo_secret = "whsec_aG9va2dhdGUtZGVtby1zZWNyZXQtZG8tbm90LXVzZSE=";
    assert!(compose.contains(&format!("x-demo-secret: &demo-secret \"{demo_secret}\"")));

    let cert = crate::support::DevCert::generate();
    let upstream = crate::support::Upstream::start().await;
    let gw = crate::support::Gateway::start(
        crate::support::config()
            .secrets(&[demo_secret])
            .tls(&cert)
            .route("*", &upstream),
    )
    .await;
    let args: Vec<String> = entrypoint[1..]
        .iter()
        .chain(&command)
        .map(|a| a.replace("https://hookgate:8443", &format!("https://{}", gw.addr())))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) =
        hookgate_in_repo(&args, &[("HOOKGATE_SIGN_SECRET", demo_secret)]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("HTTP 200 OK"), "{stdout}");
    assert_eq!(upstream.received().len(), 1);
}

/// The systemd unit's install steps, run as its header writes them with `/etc/hookgate`
/// moved under a temporary root and its `hookgate` group played by `nogroup`: the unit's
/// user can then read the config and the TLS key, which it must, as hookgate reads them
/// itself (a `DynamicUser` could read neither, and the unit never started). Runs as root
/// only, as the steps do (CI runs as root).
#[test]
fn the_systemd_units_install_steps_let_its_user_read_the_config_and_key() {
    use std::process::Command;
    let unit = repo_file("config/hookgate.service");
    if !crate::support::skips::root_or_skip() {
        return;
    }
    let user = unit
        .lines()
        .find_map(|l| l.strip_prefix("User="))
        .expect("the unit names its User");
    assert!(
        unit.lines()
            .any(|l| l.starts_with("#   useradd --system") && l.ends_with(&format!(" {user}"))),
        "the install steps create the unit's user {user}"
    );
    assert!(
        !unit.lines().any(|l| l.starts_with("DynamicUser=")),
        "a DynamicUser cannot read the key"
    );

    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    for dir in [root.path(), etc.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let moved = format!("{}/etc/hookgate", root.path().display());
    let bin = env!("CARGO_BIN_EXE_hookgate");
    // Every command line of the header but those that install the binary, the user and
    // the unit itself into the system.
    let steps: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .filter(|l| {
            !["/usr/local/bin", "useradd", "systemctl"]
                .iter()
                .any(|s| l.contains(s))
        })
        .map(|l| {
            l.replace("/etc/hookgate", &moved)
                .replace(&format!("-g {user} "), "-g nogroup ")
                .replace(&format!("chgrp {user} "), "chgrp nogroup ")
                .replace("hookgate dev-cert", &format!("{bin} dev-cert"))
        })
        .collect();
    assert_eq!(steps.len(), 5, "{steps:#?}");
    for step in &steps {
        let ran = Command::new("sh")
            .args(["-c", step])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run sh");
        assert!(
            ran.status.success(),
            "{step}: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    // The installed config's TLS paths, moved as well (as root: mode and group stay).
    let config = format!("{moved}/hookgate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("/etc/hookgate", &moved)).unwrap();

    let checked = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin])
        .args(["check", "--config", &config])
        .env(
            "OPENAI_WEBHOOK_SECRET",
            "whsec_aG9va2dhdGUtZGVtby1zZWNyZXQtZG8tbm90LXVzZSE=",
        )
        .env_remove("HOOKGATE_CONFIG")
        .output()
        .expect("run setpriv");
    assert!(
        checked.status.success(),
        "hookgate check as the unit's user: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let env_file = std::fs::metadata(format!("{moved}/env")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(env_file.permissions().mode() & 0o777, 0o600);
}

/// Under systemd (`Type=notify`) hookgate says READY once it listens, its SIGHUP
/// handler in place: with `Type=exec`, a `systemctl reload` right after a (re)start
/// could come before the handler and end the process.
#[tokio::test]
async fn under_systemd_hookgate_says_ready_once_it_listens() {
    let unit = repo_file("config/hookgate.service");
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let upstream = crate::support::Upstream::start().await;
    let gw = crate::support::GatewayProcess::spawn_notifying(
        crate::support::config().route("*", &upstream),
        &path,
    )
    .await;
    let mut message = [0u8; 64];
    let n = socket.recv(&mut message).expect("READY=1 within 10 s");
    assert_eq!(&message[..n], b"READY=1");
    drop(gw);
}
