//! Process helpers shared by every task: progress lines with elapsed time, commands that
//! fail with their full command line, bounded waits and child processes stopped by `Drop`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// The workspace root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory (`$CARGO_TARGET_DIR` when set, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    let root = repo_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Path of the release agent binary.
pub fn agent_bin() -> PathBuf {
    target_dir().join("release").join("ghostwire")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A slow step: prints `==> <label>` when it starts and the elapsed time when done.
pub struct Step {
    label: String,
    start: Instant,
}

impl Step {
    pub fn start(label: impl Into<String>) -> Self {
        let label = label.into();
        println!("==> {label}");
        flush();
        Self { label, start: Instant::now() }
    }

    pub fn done(self) {
        println!("    done in {} ({})", fmt_duration(self.start.elapsed()), self.label);
        flush();
    }
}

/// A step that had nothing to do.
pub fn skipped(what: impl std::fmt::Display) {
    println!("==> ok: {what}");
    flush();
}

/// A one-line notice.
pub fn note(what: impl std::fmt::Display) {
    println!("==> {what}");
    flush();
}

fn flush() {
    let _ = std::io::stdout().flush();
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Quotes one word for a shell, only when needed.
fn shell_word(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command as one shell line, with the environment variables it sets explicitly.
pub fn display(cmd: &Command) -> String {
    let mut out = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(out, "{}={} ", key.to_string_lossy(), shell_word(value));
        }
    }
    out.push_str(&shell_word(cmd.get_program()));
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&shell_word(arg));
    }
    out
}

/// Runs a command with inherited stdio; fails naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("command failed ({status}): {}", display(cmd));
    }
    Ok(())
}

/// Runs a command with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Runs a command and returns its stdout; fails naming the command, with its stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("command failed ({}): {}\n{}", out.status, display(cmd), String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a check quietly: `Some((success, stdout + stderr))`, or `None` when the program
/// cannot be started (not installed).
pub fn probe(cmd: &mut Command) -> Option<(bool, String)> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), text))
}

/// Finds a program on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("kill({pid}, {sig})"));
    }
    Ok(())
}

/// Waits at most `timeout` for a child to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waitpid")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is stopped when dropped (even on error paths): the given signal
/// first, then SIGKILL if it has not exited within a grace period.
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
    stop_signal: libc::c_int,
    grace: Duration,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child, stop_signal: libc::c_int, grace: Duration) -> Self {
        Self { name: name.into(), child: Some(child), stop_signal, grace }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some(status)` if the process has exited already.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().with_context(|| format!("waitpid({})", self.name)),
            None => bail!("{} was already stopped", self.name),
        }
    }

    /// Stops the process (signal, bounded wait, SIGKILL) and returns its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // The process may exit between try_wait and kill: ESRCH is not an error here.
        let _ = signal(child.id(), self.stop_signal);
        if let Some(status) = wait_timeout(&mut child, self.grace)? {
            return Ok(status);
        }
        eprintln!(
            "warning: {} (pid {}) did not exit {} after signal {}: killing it",
            self.name,
            child.id(),
            fmt_duration(self.grace),
            self.stop_signal
        );
        let _ = child.kill();
        child.wait().with_context(|| format!("waitpid({})", self.name))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.stop() {
                eprintln!("warning: stopping {}: {e:#}", self.name);
            }
        }
    }
}

/// A directory removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/<prefix>-<pid>-<nanos>`, mode 0755 so that unprivileged worker
    /// processes (nginx's) can read what is served from it.
    pub fn new(prefix: &str) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_when_needed() {
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "bpf-linker", "--version", "0.13.0", "it's here", ""]);
        cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22");
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 'it'\''s here' ''"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(1234)), "1.2 s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn guard_stops_a_sleeping_child() {
        let child = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let mut guard = ChildGuard::new("sleep", child, libc::SIGTERM, Duration::from_secs(5));
        let status = guard.stop().expect("stop");
        assert!(!status.success());
    }
}
