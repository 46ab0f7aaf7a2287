//! The client SDKs' own suites, run by `cargo test` against this crate's `switchboard` binary:
//! node's test runner for `clients/typescript` (after checking that the committed `dist/`, which
//! the server embeds, is the build of the current source) and pytest for `clients/python`.
//!
//! What they need is installed here, from the lockfile and `pyproject.toml`: `npm ci` into
//! `clients/typescript/node_modules`, and a virtual environment under this build's target
//! directory (`CARGO_TARGET_TMPDIR`) with the Python package and its test extras. Each install is
//! skipped while its stamp (a copy of the lockfile or of `pyproject.toml`) still matches, so only
//! the first run, or a dependency change, needs the npm and PyPI registries. Node 20+ and
//! Python 3.10+ must be on `PATH`; without them these tests fail and say so. Every step has a
//! time limit ([`INSTALL`], [`SUITE`]): a hung runner is killed with its process group and the
//! test fails with what it printed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// How long an install step (npm, pip) may take before the test gives up on it.
const INSTALL: Duration = Duration::from_secs(600);
/// How long a client suite may take: a few times its usual 20 s, so that a hang fails the test
/// with the runner's output rather than holding CI until its own limit.
const SUITE: Duration = Duration::from_secs(300);

/// Runs a command in its own process group, failing the test with its output unless it
/// succeeds within `limit`; on timeout the whole group (the runner and whatever it started) is
/// killed first.
fn run(what: &str, cmd: &mut Command, limit: Duration) -> Output {
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let name: String =
        what.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let (out_path, err_path) = (logs.join(format!("{name}.out")), logs.join(format!("{name}.err")));
    let file = |p: &Path| std::fs::File::create(p).expect("create a log file");
    cmd.stdin(Stdio::null()).stdout(file(&out_path)).stderr(file(&err_path)).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?} ({e}); node 20+ and python 3.10+ must be on PATH",
            cmd.get_program()
        )
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if start.elapsed() > limit {
            // The group's id is the child's pid (`process_group(0)`).
            let group = i32::try_from(child.id()).expect("a pid fits an i32");
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = Output {
        status: status.unwrap_or_default(),
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let failed = match status {
        None => format!("did not finish within {limit:?} and was killed"),
        Some(s) if !s.success() => format!("failed ({s})"),
        Some(_) => return output,
    };
    panic!(
        "{what} {failed}:\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether `stamp` holds exactly the bytes of `source` (the install it stands for is current).
fn current(stamp: &Path, source: &Path) -> bool {
    matches!((std::fs::read(stamp), std::fs::read(source)), (Ok(a), Ok(b)) if a == b)
}

fn stamp(stamp: &Path, source: &Path) {
    std::fs::copy(source, stamp).expect("write the install stamp");
}

/// The last lines of a runner's report, for the test log.
fn summary(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[test]
fn the_typescript_client_suite_passes_against_the_real_server() {
    let dir = repo().join("clients/typescript");
    let lock = dir.join("package-lock.json");
    let marker = dir.join("node_modules/.switchboard-stamp");
    if !current(&marker, &lock) {
        run(
            "npm ci",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
            INSTALL,
        );
        stamp(&marker, &lock);
    }
    // The server embeds dist/switchboard.js: it must be the build of src/.
    run(
        "npm run check-build",
        Command::new("npm").args(["run", "check-build"]).current_dir(&dir),
        INSTALL,
    );
    let out = run(
        "the TypeScript client's tests",
        Command::new("npm")
            .arg("test")
            .current_dir(&dir)
            .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard")),
        SUITE,
    );
    let report = summary(&out);
    assert!(report.contains("# fail 0") && !report.contains("# pass 0"), "{report}");
    println!("{report}");
}

#[test]
fn the_python_client_suite_passes_against_the_real_server() {
    let dir = repo().join("clients/python");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clients-pyvenv");
    let python = venv.join("bin/python");
    let project = dir.join("pyproject.toml");
    let marker = venv.join(".switchboard-stamp");
    if !current(&marker, &project) {
        run(
            "python3 -m venv",
            Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv),
            INSTALL,
        );
        run(
            "pip install",
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e"])
                .arg(format!("{}[test]", dir.display())),
            INSTALL,
        );
        stamp(&marker, &project);
    }
    let out = run(
        "the Python client's tests",
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .current_dir(&dir)
            .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard")),
        SUITE,
    );
    let report = summary(&out);
    assert!(report.contains(" passed") && !report.contains("failed"), "{report}");
    println!("{report}");
}
