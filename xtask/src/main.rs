//! `cargo xtask`: what cargo alone cannot do for ghostwire — installing prerequisites,
//! running the agent as root, the demo, the privileged test run, benchmarks and fuzzing.

mod bench;
mod demo;
mod image;
mod setup;
mod soak;
mod test;
mod util;

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use crate::util::Step;

pub const NEEDS_ROOT: &str = "this task runs the agent and needs root (the agent alone needs CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_NET_ADMIN: README \"Least privilege\"): run as root or with sudo -E";

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "ghostwire developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install what is missing to build and run ghostwire (idempotent).
    Setup {
        /// Also install the peers the end-to-end tests and benchmarks run against
        /// (nginx, wrk, Go, h2load, hey, ab, and a Python venv with rotel + OpenTelemetry).
        #[arg(long)]
        peers: bool,
    },
    /// Setup, then build the agent in release mode.
    Build,
    /// Setup, build, then run the agent as this process (root needed).
    ///
    /// Without arguments ghostwire traces the whole machine with the live terminal view.
    /// Agent arguments follow, optionally after `--`: `cargo xtask run -- --port 8080`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "AGENT ARGS")]
        args: Vec<OsString>,
    },
    /// Six legacy services on loopback traced live: setup, build, run them with the agent's
    /// waterfall and a bounded load, stop after `--seconds` or on Ctrl-C (root needed).
    ///
    /// Agent arguments follow `--`: `cargo xtask demo -- --stats-interval 5`.
    Demo(demo::DemoArgs),
    /// Setup (and buildah), build, then build the container image
    /// `localhost/ghostwire:<version>` from deploy/Containerfile (FROM scratch).
    Image,
    /// Run every test: unit and golden tests, then the privileged end-to-end tests.
    Test(test::TestArgs),
    /// Benchmarks (not tests: they measure and print).
    Bench {
        #[command(subcommand)]
        which: bench::BenchCmd,
    },
    /// Fuzz a parser with cargo-fuzz (targets in agent/fuzz).
    Fuzz {
        /// Fuzz target (default: the only one, when there is only one).
        target: Option<String>,
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Extra libFuzzer arguments, after `--`.
        #[arg(last = true)]
        libfuzzer_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Setup { peers } => {
            if let Some(peers) = setup::setup(peers)? {
                println!("==> peers venv: {}", peers.venv.display());
                println!("==> rotel: {}", peers.rotel.display());
            }
        }
        Cmd::Build => {
            setup::setup(false)?;
            build_agent()?;
            println!("==> {}", util::agent_bin().display());
        }
        Cmd::Run { args } => run_agent(&args)?,
        Cmd::Demo(args) => {
            let status = demo::demo(&args)?;
            if !status.success() {
                eprintln!("error: ghostwire did not exit cleanly ({status})");
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Image => {
            let reference = image::image()?;
            println!("==> image {reference} in buildah's local storage (`buildah images`, `podman images`)");
        }
        Cmd::Test(args) => {
            if !test::test(&args)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Bench { which } => bench::run(&which)?,
        Cmd::Fuzz { target, seconds, libfuzzer_args } => return fuzz(target, seconds, &libfuzzer_args),
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo build --release -p ghostwire` (prerequisites must be installed).
pub fn build_agent() -> Result<()> {
    let step = Step::start("building ghostwire (release; first build takes 2-4 min)");
    util::run(Command::new("cargo").current_dir(util::repo_root()).args(["build", "--release", "-p", "ghostwire"]))?;
    let bin = util::agent_bin();
    if !bin.is_file() {
        bail!("cargo built ghostwire but {} does not exist", bin.display());
    }
    step.done();
    Ok(())
}

fn run_agent(args: &[OsString]) -> Result<()> {
    if !util::is_root() {
        bail!(NEEDS_ROOT);
    }
    setup::setup(false)?;
    build_agent()?;
    let bin = util::agent_bin();
    let mut cmd = Command::new(&bin);
    cmd.args(args);
    // exec: the agent replaces this process, so signals (Ctrl-C) reach it directly
    // and its exit code is ours. exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not exec `{}`", util::display(&cmd)))
}

fn fuzz(target: Option<String>, seconds: u64, libfuzzer_args: &[String]) -> Result<ExitCode> {
    let agent_dir = util::repo_root().join("agent");
    let fuzz_dir = agent_dir.join("fuzz");
    if !fuzz_dir.join("Cargo.toml").is_file() {
        bail!("{} does not exist yet: no fuzz targets to run", fuzz_dir.join("Cargo.toml").display());
    }
    setup::setup(false)?;
    let cargo_fuzz = || {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&agent_dir).args(["+nightly", "fuzz"]);
        cmd
    };
    if util::probe(cargo_fuzz().arg("--version")).is_some_and(|(ok, _)| ok) {
        util::skipped("cargo-fuzz already present");
    } else {
        let step = Step::start("installing cargo-fuzz (cargo install cargo-fuzz --locked; about 1-2 min)");
        util::run(Command::new("cargo").current_dir(std::env::temp_dir()).args(["install", "cargo-fuzz", "--locked"]))?;
        step.done();
    }

    let target = if let Some(target) = target {
        target
    } else {
        let list = util::capture(cargo_fuzz().arg("list"))?;
        let targets: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match targets.as_slice() {
            [one] => (*one).to_owned(),
            [] => bail!("agent/fuzz has no fuzz targets"),
            many => bail!("several fuzz targets, pick one: cargo xtask fuzz <{}>", many.join("|")),
        }
    };
    let corpus = fuzz_dir.join("corpus").join(&target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut cmd = cargo_fuzz();
    // libFuzzer writes new inputs to the first corpus directory and only reads the rest.
    cmd.args(["run", &target]).arg(&corpus).args(seed_dirs(&agent_dir, &target));
    cmd.arg("--").arg(format!("-max_total_time={seconds}")).args(libfuzzer_args);
    let step = Step::start(format!("fuzzing {target} for {seconds} s"));
    let status = util::status(&mut cmd)?;
    if !status.success() {
        eprintln!("error: `{}` failed ({status})", util::display(&cmd));
        return Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)));
    }
    step.done();
    Ok(ExitCode::SUCCESS)
}

/// Golden captures that seed a target: `agent/tests/data/<proto>/` for every `<proto>`
/// the target name mentions (`http1` seeds `http1`, `parse_http1_request`, ...).
fn seed_dirs(agent_dir: &std::path::Path, target: &str) -> Vec<PathBuf> {
    let data = agent_dir.join("tests/data");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&data)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir() && target.contains(&*e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_agent_args_with_or_without_dashes() {
        for argv in [&["xtask", "run", "--", "--port", "8080"][..], &["xtask", "run", "--port", "8080"][..]] {
            let Cmd::Run { args } = Cli::try_parse_from(argv).expect("parse").cmd else { panic!("not run") };
            assert_eq!(args, ["--port", "8080"]);
        }
    }

    #[test]
    fn test_flags_and_filters() {
        let Cmd::Test(args) =
            Cli::try_parse_from(["xtask", "test", "--e2e", "--", "http1", "--nocapture"]).expect("parse").cmd
        else {
            panic!("not test")
        };
        assert!(args.e2e && !args.unit);
        assert_eq!(args.passthrough, ["http1", "--nocapture"]);
        assert!(Cli::try_parse_from(["xtask", "test", "--unit", "--e2e"]).is_err());
    }

    #[test]
    fn demo_flags_and_agent_args() {
        let Cmd::Demo(args) = Cli::try_parse_from(["xtask", "demo"]).expect("parse").cmd else { panic!("not demo") };
        assert_eq!((args.seconds, args.rate), (30, 5.0));
        assert!(args.agent_args.is_empty());
        let Cmd::Demo(args) = Cli::try_parse_from([
            "xtask",
            "demo",
            "--seconds",
            "6",
            "--rate",
            "2.5",
            "--agent",
            "/opt/ghostwire",
            "--",
            "--stats-interval",
            "5",
        ])
        .expect("parse")
        .cmd
        else {
            panic!("not demo")
        };
        assert_eq!((args.seconds, args.rate), (6, 2.5));
        assert_eq!(args.agent.as_deref(), Some(std::path::Path::new("/opt/ghostwire")));
        assert_eq!(args.agent_args, ["--stats-interval", "5"]);
        assert!(Cli::try_parse_from(["xtask", "demo", "--seconds", "soon"]).is_err());
    }

    #[test]
    fn bench_defaults() {
        let Cmd::Bench { which: bench::BenchCmd::Overhead(args) } =
            Cli::try_parse_from(["xtask", "bench", "overhead"]).expect("parse").cmd
        else {
            panic!("not bench")
        };
        let l = &args.load;
        assert_eq!((l.rounds, l.duration, l.connections, l.threads), (3, 10, 32, 2));
        assert!(!args.no_agent);
    }
}
