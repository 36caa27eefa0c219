//! `cargo xtask test`: every test, in three phases.
//!
//! 0. format and lints: `cargo fmt --all --check` and `cargo clippy --all-targets --
//!    -D warnings` (a change that fails them does not land);
//! 1. unprivileged: `cargo test --workspace --exclude ghostwire-tests` (unit and golden
//!    tests of the agent, xtask's own tests);
//! 2. privileged end-to-end: `cargo test -p ghostwire-tests --release -- --test-threads=1`
//!    against the release agent and the installed peers.
//!
//! Every phase runs, the test phases with `--no-fail-fast` so that one failing test binary
//! does not hide the others (`CI` is passed through untouched: the tests use it to turn
//! "cannot load probes" into a failure). cargo's output is streamed live and its
//! `test result:` lines are summed into one final `N passed, N failed` line.

use std::io::{Read as _, Write as _};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, Result};

use crate::util::{self, Step};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Only phases 0 and 1: format, lints, unit, golden and xtask tests (no root, no
    /// peers, no release build).
    #[arg(long, conflicts_with = "e2e")]
    pub unit: bool,
    /// Only phase 2: the privileged end-to-end tests.
    #[arg(long)]
    pub e2e: bool,
    /// Passed to the test binaries: name filters, `--nocapture`, ...
    #[arg(last = true)]
    pub passthrough: Vec<String>,
}

/// Passed/failed counts summed over `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    /// Number of `test result:` lines seen (test binaries run).
    pub binaries: u64,
}

impl Counts {
    /// Adds one line of `cargo test` output if it is a libtest summary line:
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
    pub fn add_line(&mut self, line: &str) {
        if let Some((passed, failed)) = parse_test_result(line) {
            self.passed += passed;
            self.failed += failed;
            self.binaries += 1;
        }
    }
}

/// `(passed, failed)` from a libtest summary line (ANSI colours tolerated).
pub fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let line = strip_ansi(line);
    let rest = line.trim().strip_prefix("test result:")?;
    // "ok. 12 passed; 0 failed; 1 ignored; ..." or "FAILED. 3 passed; 1 failed; ..."
    let (_, counts) = rest.split_once('.')?;
    let (mut passed, mut failed) = (None, None);
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => passed = Some(n),
            "failed" => failed = Some(n),
            _ => {}
        }
    }
    Some((passed?, failed?))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs a `cargo test` command, streaming its stdout live while counting results.
fn run_streaming(cmd: &mut Command) -> Result<(ExitStatus, Counts)> {
    let shown = util::display(cmd);
    println!("+ {shown}");
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("could not start `{shown}`"))?;
    let mut pipe = child.stdout.take().context("child stdout is not piped")?;
    let mut counts = Counts::default();
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let stdout = std::io::stdout();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading the output of `{shown}`")),
        };
        // Forward as it comes (libtest prints "test name ... " before the test ends).
        let mut out = stdout.lock();
        let _ = out.write_all(&buf[..n]);
        let _ = out.flush();
        for &b in &buf[..n] {
            if b == b'\n' {
                counts.add_line(&String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    counts.add_line(&String::from_utf8_lossy(&line));
    let status = child.wait().with_context(|| format!("waiting for `{shown}`"))?;
    Ok((status, counts))
}

struct Phase {
    name: &'static str,
    status: ExitStatus,
    counts: Counts,
}

impl Phase {
    fn ok(&self) -> bool {
        self.status.success() && self.counts.failed == 0
    }
}

/// Runs the selected phases; `Ok(false)` when any failed.
pub fn test(args: &TestArgs) -> Result<bool> {
    let unit = !args.e2e;
    let e2e = !args.unit;
    let root = util::repo_root();

    let peers = if e2e {
        let peers = crate::setup::setup(true)?.context("setup returned no peers")?;
        crate::build_agent()?;
        Some(peers)
    } else {
        crate::setup::setup(false)?;
        None
    };

    let mut phases = Vec::new();
    if unit {
        let step = Step::start("phase 0: cargo fmt --check, cargo clippy -D warnings");
        let fmt = util::status(Command::new("cargo").current_dir(&root).args(["fmt", "--all", "--check"]))?;
        let clippy = util::status(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        step.done();
        for (name, status) in [("fmt", fmt), ("clippy", clippy)] {
            phases.push(Phase {
                name,
                status,
                counts: Counts {
                    passed: u64::from(status.success()),
                    failed: u64::from(!status.success()),
                    binaries: 0,
                },
            });
        }
    }
    if unit {
        let step = Step::start("phase 1: unit, golden and xtask tests");
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            // The eBPF crate only builds for the BPF target (agent/build.rs builds it).
            .args([
                "test",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "ghostwire-tests",
                "--exclude",
                "ghostwire-ebpf",
            ]);
        if !args.passthrough.is_empty() {
            cmd.arg("--").args(&args.passthrough);
        }
        let (status, counts) = run_streaming(&mut cmd)?;
        step.done();
        phases.push(Phase { name: "unit", status, counts });
    }
    if let Some(peers) = peers {
        if !util::is_root() {
            eprintln!(
                "warning: the end-to-end tests need root (they load eBPF programs and create \
                 namespaces, cgroups and mounts): run as root or with sudo -E"
            );
        }
        let step = Step::start("phase 2: privileged end-to-end tests");
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .env("GHOSTWIRE_BIN", util::agent_bin())
            .env("GHOSTWIRE_PEERS_VENV", &peers.venv)
            .env("GHOSTWIRE_ROTEL", &peers.rotel)
            .env("GHOSTWIRE_PHOENIX_VENV", &peers.phoenix_venv)
            .env("GHOSTWIRE_HELM", &peers.helm)
            .args(["test", "--no-fail-fast", "-p", "ghostwire-tests", "--release", "--", "--test-threads=1"])
            .args(&args.passthrough);
        let (status, counts) = run_streaming(&mut cmd)?;
        step.done();
        phases.push(Phase { name: "end-to-end", status, counts });
    }

    let mut total = Counts::default();
    for phase in &phases {
        total.passed += phase.counts.passed;
        total.failed += phase.counts.failed;
        let verdict = if phase.ok() {
            "ok".to_owned()
        } else if phase.status.success() {
            "FAILED".to_owned()
        } else {
            format!("FAILED ({})", phase.status)
        };
        println!(
            "==> {}: {} passed, {} failed, {} test binaries: {verdict}",
            phase.name, phase.counts.passed, phase.counts.failed, phase.counts.binaries
        );
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(phases.iter().all(Phase::ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_and_failed_summaries() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.03s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_test_result(
                "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.50s"
            ),
            Some((3, 2))
        );
        assert_eq!(
            parse_test_result("test result: \u{1b}[32mok\u{1b}[0m. 1 passed; 0 failed; 0 ignored"),
            Some((1, 0))
        );
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(parse_test_result("test parse_result ... ok"), None);
        assert_eq!(parse_test_result("running 3 tests"), None);
        assert_eq!(parse_test_result("   Doc-tests ghostwire"), None);
        // A test *named* like the summary is not a summary.
        assert_eq!(parse_test_result("test test_result::ok ... ok"), None);
    }

    #[test]
    fn sums_a_whole_run() {
        let out = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\n\
                   test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                   running 0 tests\n\
                   test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                   test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n";
        let mut counts = Counts::default();
        out.lines().for_each(|l| counts.add_line(l));
        assert_eq!(counts, Counts { passed: 6, failed: 1, binaries: 3 });
    }
}
