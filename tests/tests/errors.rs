//! User-facing errors are one line that says what is wrong and how to fix it.
use std::process::Command;

use ghostwire_tests::*;

fn one_error_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "want exactly one error line, got:\n{stderr}");
    assert!(!out.status.success());
    errors[0].to_owned()
}

#[test]
fn without_capabilities_the_agent_says_to_run_as_root() {
    require_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"])
        .arg(agent_binary())
        .args(["--output", "jsonl:/dev/null"])
        .output()
        .expect("run setpriv");
    let line = one_error_line(&out);
    assert!(line.contains("missing capabilities") && line.contains("CAP_BPF"), "{line}");
    assert!(line.contains("run ghostwire as root"), "{line}");
}

#[test]
fn without_kernel_btf_the_agent_says_what_kernel_it_needs() {
    require_root();
    let dir = TempDir::new("nobtf");
    // A private mount namespace where /sys/kernel/btf is an empty directory.
    let script = format!(
        "mount --bind {} /sys/kernel/btf && exec {} --output jsonl:/dev/null",
        dir.path().display(),
        agent_binary().display()
    );
    let out = Command::new("unshare").args(["--mount", "sh", "-c", &script]).output().expect("run unshare");
    let line = one_error_line(&out);
    assert!(line.contains("kernel BTF not found") && line.contains("CONFIG_DEBUG_INFO_BTF"), "{line}");
}

#[test]
fn bad_flags_are_one_line_errors() {
    let out = Command::new(agent_binary()).args(["--output", "zipkin:x"]).output().expect("run agent");
    let line = one_error_line(&out);
    assert!(line.contains("--output jsonl:PATH"), "{line}");
    let out = Command::new(agent_binary()).args(["--otlp-endpoint", "collector:4317"]).output().expect("run agent");
    let line = one_error_line(&out);
    assert!(line.contains("http://"), "{line}");
}
