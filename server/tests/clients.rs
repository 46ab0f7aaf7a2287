//! The client SDKs' own suites, run by `cargo test` against this crate's `switchboard` binary:
//! node's test runner for `clients/typescript` (after checking that the committed `dist/`, which
//! the server embeds, is the build of the current source) and pytest for `clients/python`.
//!
//! What they need is installed here, from the lockfile and `pyproject.toml`: `npm ci` into
//! `clients/typescript/node_modules`, and a virtual environment under this build's target
//! directory (`CARGO_TARGET_TMPDIR`) with the Python package and its test extras. Each install is
//! skipped while its stamp (a copy of the lockfile or of `pyproject.toml`) still matches, so only
//! the first run, or a dependency change, needs the npm and PyPI registries. Node 20+ and
//! Python 3.10+ must be on `PATH`; without them these tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Runs a command, failing the test with its output unless it succeeds.
fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?} ({e}); node 20+ and python 3.10+ must be on PATH",
            cmd.get_program()
        )
    });
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
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
        );
        stamp(&marker, &lock);
    }
    // The server embeds dist/switchboard.js: it must be the build of src/.
    run("npm run check-build", Command::new("npm").args(["run", "check-build"]).current_dir(&dir));
    let out = run(
        "the TypeScript client's tests",
        Command::new("npm")
            .arg("test")
            .current_dir(&dir)
            .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard")),
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
        run("python3 -m venv", Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv));
        run(
            "pip install",
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e"])
                .arg(format!("{}[test]", dir.display())),
        );
        stamp(&marker, &project);
    }
    let out = run(
        "the Python client's tests",
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .current_dir(&dir)
            .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard")),
    );
    let report = summary(&out);
    assert!(report.contains(" passed") && !report.contains("failed"), "{report}");
    println!("{report}");
}
