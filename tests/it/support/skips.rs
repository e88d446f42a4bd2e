//! Tests that cannot run on this machine say so instead of passing quietly.
//!
//! A test that needs a program (`redis-server`, `python3`, `node`) or a raised open-files
//! limit asks here first. When the need is not met it fails if its `HOOKGATE_REQUIRE_*`
//! variable is `1` (CI sets them all), and otherwise is recorded as skipped, says so on
//! stderr and returns early: libtest then counts it as passed. So that this is not lost
//! in the run, the binary prints one line when it exits, after libtest's own summary:
//! how many tests were skipped and the command that installs what they need. libtest
//! has no hook after the last test, so the line comes from a process-exit function
//! (`dtor`), which runs both when libtest returns and when it exits on a failure.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Set to `1` (as CI does) to fail, not skip, a test that needs a raised open-files limit.
pub const REQUIRE_OPEN_FILES: &str = "HOOKGATE_REQUIRE_OPEN_FILES";

/// Set to `1` (as CI does) to fail, not skip, a test that needs to run as root.
pub const REQUIRE_ROOT: &str = "HOOKGATE_REQUIRE_ROOT";

/// What the skipped tests of this run were missing.
struct Skipped {
    tests: BTreeSet<String>,
    /// Programs not on PATH, and the Debian packages that install them.
    programs: BTreeSet<&'static str>,
    packages: BTreeSet<&'static str>,
    /// The open-files limit a test needed and the one in force.
    open_files: Option<(u64, u64)>,
    /// A test needed root.
    root: bool,
}

static SKIPPED: Mutex<Skipped> = Mutex::new(Skipped {
    tests: BTreeSet::new(),
    programs: BTreeSet::new(),
    packages: BTreeSet::new(),
    open_files: None,
    root: false,
});

fn current_test() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}

fn required(require: &str) -> bool {
    std::env::var(require).as_deref() == Ok("1")
}

/// Whether `program` can be run. When it cannot, the test fails under `require=1`, or
/// is recorded as skipped (the caller returns).
pub fn installed_or_skip(program: &'static str, package: &'static str, require: &str) -> bool {
    let found = match Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    if found {
        return true;
    }
    if required(require) {
        panic!(
            "{program} is not installed (not on PATH) and {require}=1: \
             install it (apt-get install -y {package}) or unset {require}"
        );
    }
    let test = current_test();
    // Straight to stderr, past the test harness' capture, so a skip is seen in the run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {program} is not on PATH (set {require}=1 to fail instead)"
    );
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    skipped.tests.insert(test);
    skipped.programs.insert(program);
    skipped.packages.insert(package);
    false
}

/// Whether this process may hold `needed` open files, after raising its soft limit to
/// the hard one. When it may not, the test fails under `HOOKGATE_REQUIRE_OPEN_FILES=1`,
/// or is recorded as skipped (the caller returns).
pub fn open_files_or_skip(needed: u64) -> bool {
    let limit = hookgate::connections::raise_open_files_limit().unwrap_or(0);
    if limit >= needed {
        return true;
    }
    if required(REQUIRE_OPEN_FILES) {
        panic!(
            "this test needs an open-files limit of at least {needed}, and the hard limit is \
             {limit}: raise it (ulimit -n {needed}) or unset {REQUIRE_OPEN_FILES}"
        );
    }
    let test = current_test();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs an open-files limit of {needed}, the hard limit is {limit} \
         (set {REQUIRE_OPEN_FILES}=1 to fail instead)"
    );
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    skipped.tests.insert(test);
    skipped.open_files = Some((needed, limit));
    false
}

/// Whether this process runs as root. When it does not, the test fails under
/// `HOOKGATE_REQUIRE_ROOT=1`, or is recorded as skipped (the caller returns).
pub fn root_or_skip() -> bool {
    let euid = Command::new("id").arg("-u").output().expect("run id");
    if String::from_utf8_lossy(&euid.stdout).trim() == "0" {
        return true;
    }
    if required(REQUIRE_ROOT) {
        panic!(
            "this test needs to run as root and {REQUIRE_ROOT}=1: run it as root or unset {REQUIRE_ROOT}"
        );
    }
    let test = current_test();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (set {REQUIRE_ROOT}=1 to fail instead)"
    );
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    skipped.tests.insert(test);
    skipped.root = true;
    false
}

/// The one line printed at exit, or `None` when nothing was skipped.
fn summary(skipped: &Skipped) -> Option<String> {
    let count = skipped.tests.len();
    if count == 0 {
        return None;
    }
    let mut todo = Vec::new();
    if !skipped.programs.is_empty() {
        let programs: Vec<&str> = skipped.programs.iter().copied().collect();
        let packages: Vec<&str> = skipped.packages.iter().copied().collect();
        todo.push(format!(
            "{} not installed: apt-get install -y {}",
            programs.join(", "),
            packages.join(" ")
        ));
    }
    if let Some((needed, limit)) = skipped.open_files {
        todo.push(format!(
            "open-files limit {limit}, {needed} needed: ulimit -n {needed} (as root, or after \
             raising the hard limit)"
        ));
    }
    if skipped.root {
        todo.push("not run as root: run the tests as root".to_owned());
    }
    let tests = if count == 1 { "test" } else { "tests" };
    Some(format!(
        "SKIPPED {count} {tests} (counted as passed above): {}",
        todo.join("; ")
    ))
}

#[dtor::dtor(unsafe)]
fn print_summary_at_exit() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(line) = summary(&skipped) {
        // Not eprintln!: it panics if stderr is gone, and this runs after main.
        let _ = writeln!(std::io::stderr(), "\n{line}");
    }
}

#[test]
fn the_summary_names_the_count_and_one_install_command() {
    let mut skipped = Skipped {
        tests: BTreeSet::new(),
        programs: BTreeSet::new(),
        packages: BTreeSet::new(),
        open_files: None,
        root: false,
    };
    assert_eq!(summary(&skipped), None);
    skipped.tests.extend(["a".to_owned(), "b".to_owned()]);
    skipped
        .programs
        .extend(["redis-server", "node", "redis-cli"]);
    skipped
        .packages
        .extend(["redis-server", "nodejs", "redis-tools"]);
    skipped.open_files = Some((11_000, 1_024));
    assert_eq!(
        summary(&skipped).unwrap(),
        "SKIPPED 2 tests (counted as passed above): node, redis-cli, redis-server not \
         installed: apt-get install -y nodejs redis-server redis-tools; open-files limit \
         1024, 11000 needed: ulimit -n 11000 (as root, or after raising the hard limit)"
    );
    skipped.root = true;
    assert!(
        summary(&skipped)
            .unwrap()
            .ends_with("; not run as root: run the tests as root"),
        "{:?}",
        summary(&skipped)
    );
}
