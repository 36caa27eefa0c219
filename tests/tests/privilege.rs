//! Least privilege: the agent traces with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE,
//! CAP_DAC_READ_SEARCH and CAP_NET_ADMIN alone (no CAP_SYS_ADMIN, tracefs mounted), and
//! without any one of them stops with one line naming it. The agent runs as root with
//! its capabilities cut down by `setpriv` (bounding and inheritable sets: what a
//! container with `capabilities: {drop: [ALL], add: [...]}` gets).
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ghostwire_tests::*;

/// The documented set, as `setpriv` spells the names, with each one's bit.
const FIVE: [(&str, u32); 5] =
    [("bpf", 39), ("perfmon", 38), ("sys_ptrace", 19), ("dac_read_search", 2), ("net_admin", 12)];
const CAP_SYS_ADMIN_BIT: u32 = 21;

/// `setpriv` running the agent as root with exactly `caps` (bounding, inheritable and
/// so permitted and effective).
fn agent_with_caps(caps: &[&str], args: &[String]) -> Command {
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--inh-caps=-all{set}")).arg(format!("--bounding-set=-all{set}")).arg("--");
    cmd.arg(agent_binary()).args(args);
    cmd
}

/// Runs `cmd` to its end (killed after `timeout`): exit success and stderr.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let dir = TempDir::new("priv-run");
    let err_path = dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).expect("create stderr file");
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().expect("run setpriv");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not exit within {timeout:?}:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), std::fs::read_to_string(&err_path).unwrap_or_default())
}

/// The effective capability bits of process `pid`.
fn cap_eff(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff line").trim();
    u64::from_str_radix(hex, 16).expect("CapEff hex")
}

#[test]
fn the_five_capabilities_trace_http_without_sys_admin() {
    require_root();
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("tracefs")) {
        // The premise of this test: mount it as the agent would, once, for the host.
        let out = Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]).output();
        assert!(out.is_ok_and(|o| o.status.success()), "cannot mount tracefs at /sys/kernel/tracing");
    }
    let dir = TempDir::new("priv-five");
    let port = free_port();
    let _backend = python_backend(port, "priv-backend");
    let jsonl = dir.path().join("spans.jsonl");
    let stderr_path = dir.path().join("stderr");
    let names: Vec<&str> = FIVE.iter().map(|(n, _)| *n).collect();
    let args = vec!["--output".to_owned(), format!("jsonl:{}", jsonl.display()), "--port".to_owned(), port.to_string()];
    let mut cmd = agent_with_caps(&names, &args);
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&stderr_path).expect("create stderr file"));
    // setpriv execs the agent: this process is the agent.
    let mut agent = Proc::spawn("ghostwire (five capabilities)", &mut cmd);
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let ready = wait_for(Duration::from_secs(60), || {
        if let Some(status) = agent.try_wait() {
            panic!("ghostwire exited with {status} before it was ready:\n{}", stderr());
        }
        stderr().lines().any(|l| l.starts_with("ready")).then_some(())
    });
    assert!(ready.is_some(), "ghostwire not ready within 60 s:\n{}", stderr());

    let eff = cap_eff(agent.pid());
    let want: u64 = FIVE.iter().fold(0, |acc, (_, bit)| acc | (1 << bit));
    assert_eq!(eff, want, "the agent's CapEff is {eff:#x}, not the five capabilities {want:#x}");
    assert_eq!(eff & (1 << CAP_SYS_ADMIN_BIT), 0, "the agent has CAP_SYS_ADMIN");
    // TLS decryption is off, said once, and capture goes on.
    let text = stderr();
    assert!(text.contains("TLS not decrypted (no CAP_SYS_ADMIN for uprobes)"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("OpenSSL uprobes need CAP_SYS_ADMIN")).count(), 1, "{text}");
    assert!(!text.lines().any(|l| l.starts_with("error")), "{text}");

    assert_eq!(curl(port, "/least-privilege"), 200);
    let spans = wait_for(Duration::from_secs(15), || {
        let s = read_jsonl(&jsonl);
        let has = |kind| s.iter().any(|x| x.kind == kind && x.path().as_deref() == Some("/least-privilege"));
        (has(KIND_SERVER) && has(KIND_CLIENT)).then_some(s)
    });
    let exit = agent.signal_and_wait(libc::SIGINT, Duration::from_secs(20));
    let text = stderr();
    assert!(exit.is_some_and(|s| s.success()), "ghostwire did not exit cleanly on SIGINT ({exit:?}):\n{text}");
    let spans =
        spans.unwrap_or_else(|| panic!("no SERVER and CLIENT span:\n{}\n{text}", describe(&read_jsonl(&jsonl))));
    let one = |kind: i64| -> &SpanRec {
        let found: Vec<&SpanRec> =
            spans.iter().filter(|s| s.kind == kind && s.path().as_deref() == Some("/least-privilege")).collect();
        assert_eq!(found.len(), 1, "kind {kind}:\n{}", describe(&spans));
        found[0]
    };
    let (server, client) = (one(KIND_SERVER), one(KIND_CLIENT));
    // The backend runs as root with every capability: its environ (service name) and
    // executable are readable only through CAP_SYS_PTRACE.
    assert_eq!(server.service(), "priv-backend", "{server:#?}");
    assert!(server.resource.contains_key("process.executable.path"), "{server:#?}");
    assert_eq!(client.service(), "curl", "{client:#?}");
    assert_eq!(server.attr_int("http.response.status_code"), 200);
    assert_eq!(server.trace_id, client.trace_id, "{}", describe(&spans));
    assert_eq!(server.parent_span_id, client.span_id, "{}", describe(&spans));
}

#[test]
fn without_each_of_the_five_the_agent_stops_with_one_line_naming_it() {
    require_root();
    for (dropped, _) in FIVE {
        let caps: Vec<&str> = FIVE.iter().map(|(n, _)| *n).filter(|n| *n != dropped).collect();
        let started = Instant::now();
        let (ok, stderr) = run_bounded(
            &mut agent_with_caps(&caps, &["--output".to_owned(), "jsonl:/dev/null".to_owned()]),
            Duration::from_secs(30),
        );
        assert!(!ok, "ghostwire without CAP_{} exited 0:\n{stderr}", dropped.to_uppercase());
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "want exactly one stderr line without CAP_{}:\n{stderr}", dropped.to_uppercase());
        let name = format!("CAP_{}", dropped.to_uppercase());
        let want = format!("error: missing capability {name} (");
        assert!(lines[0].starts_with(&want), "want `{want}...`, got: {}", lines[0]);
        assert!(
            lines[0].contains(&format!("add {} to the container's securityContext", dropped.to_uppercase())),
            "{}",
            lines[0]
        );
        // Caught before anything loads: no probe is left behind, and it is quick.
        assert!(started.elapsed() < Duration::from_secs(10), "{name}: {:?}", started.elapsed());
    }
}

#[test]
fn without_tracefs_the_five_are_not_enough_and_sys_admin_is_named() {
    require_root();
    // A private mount namespace where tracefs is not mounted (the host keeps its own).
    let names: Vec<String> = FIVE.iter().map(|(n, _)| format!(",+{n}")).collect();
    let set = names.concat();
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         grep -q tracefs /proc/self/mounts && {{ echo 'tracefs still mounted' >&2; exit 99; }}; \
         exec setpriv --inh-caps=-all{set} --bounding-set=-all{set} -- {} --output jsonl:/dev/null",
        agent_binary().display()
    );
    let (ok, stderr) =
        run_bounded(Command::new("unshare").args(["--mount", "sh", "-c", &script]), Duration::from_secs(30));
    assert!(!ok, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: missing capability CAP_SYS_ADMIN (mounts tracefs"), "{}", lines[0]);
}
