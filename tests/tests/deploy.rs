//! Deploying: the container image (`cargo xtask image`, buildah, FROM scratch) holds a
//! `/ghostwire` that starts from the image's own files; the Kubernetes manifests and the
//! rendered Helm chart pass `kubernetes-validate --strict` (offline schemas), say the
//! least-privilege set, and agree with each other; the ConfigMap's file loads in the
//! real agent. Tools missing is a failure, never a skip.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ghostwire_tests::*;
use serde_json::Value;

const MANIFESTS: &str = "../deploy/kubernetes/ghostwire.yaml";
const CHART: &str = "../deploy/helm/ghostwire";
/// README "Least privilege", agent/src/capture/preflight.rs REQUIRED.
const FIVE: [&str; 5] = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(MANIFESTS)
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART)
}

/// Runs `cmd` with `stdin`; (success, stdout, stderr). Not starting is a failure.
fn run(cmd: &mut Command, stdin: &[u8]) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (run `cargo xtask setup --peers`)"));
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn ok(cmd: &mut Command, stdin: &[u8]) -> String {
    let (success, stdout, stderr) = run(cmd, stdin);
    assert!(success, "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn validator() -> PathBuf {
    let v = venv().join("bin/kubernetes-validate");
    assert!(v.is_file(), "{} missing: run `cargo xtask setup --peers`", v.display());
    v
}

fn helm() -> PathBuf {
    let h = std::env::var_os("GHOSTWIRE_HELM")
        .map_or_else(|| PathBuf::from("/opt/ghostwire-peers/helm/helm"), PathBuf::from);
    assert!(h.is_file(), "helm not found at {}: run `cargo xtask setup --peers`", h.display());
    h
}

/// `kubernetes-validate --strict` on YAML text: (passed, output).
fn validate(yaml: &str) -> (bool, String) {
    let (success, out, err) = run(Command::new(validator()).args(["--strict", "-"]), yaml.as_bytes());
    (success, format!("{out}{err}"))
}

/// Every document of a YAML stream, as JSON (PyYAML from the peers venv).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let script = "import sys, json, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))";
    let out = ok(Command::new(python()).args(["-c", script]), yaml.as_bytes());
    serde_json::from_str::<Vec<Value>>(&out).expect("JSON from PyYAML")
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in {docs:#?}");
    found[0]
}

/// The least-privilege facts every rendering of the DaemonSet must say.
fn check_daemonset(docs: &[Value]) {
    let ds = find(docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "{pod:#}");
    assert_eq!(pod["hostNetwork"], true, "{pod:#}");
    assert_eq!(pod["tolerations"], serde_json::json!([{ "operator": "Exists" }]));
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false, "{sc:#}");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], serde_json::json!(FIVE), "exactly the five, no SYS_ADMIN");
    for (name, path) in [("btf", "/sys/kernel/btf"), ("tracefs", "/sys/kernel/tracing")] {
        let mount = c["volumeMounts"].as_array().expect("mounts").iter().find(|m| m["name"] == name);
        let mount = mount.unwrap_or_else(|| panic!("no {name} mount: {c:#}"));
        assert_eq!((&mount["mountPath"], &mount["readOnly"]), (&Value::from(path), &Value::from(true)));
        let vol = pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == name).expect("volume");
        assert_eq!(vol["hostPath"]["path"], path);
    }
    for key in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][key][r].is_string(), "resources.{key}.{r}: {c:#}");
        }
    }
    let node = c["env"].as_array().expect("env").iter().find(|e| e["name"] == "GHOSTWIRE_NODE_NAME").expect("node env");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    // The metrics port is the one the config file listens on.
    let cm = find(docs, "ConfigMap");
    let config = cm["data"]["ghostwire.yaml"].as_str().expect("ghostwire.yaml in the ConfigMap");
    let file = &yaml_docs(config)[0];
    let listen = file["metrics"]["listen"].as_str().expect("metrics.listen");
    let port = c["ports"].as_array().expect("ports").iter().find(|p| p["name"] == "metrics").expect("metrics port");
    assert_eq!(listen, format!("0.0.0.0:{}", port["containerPort"]), "the pod must listen where it is scraped");
    let role = find(docs, "ClusterRole");
    assert_eq!(
        role["rules"],
        serde_json::json!([{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"] }])
    );
}

#[test]
fn the_manifests_pass_the_strict_validator_and_say_least_privilege() {
    let yaml = std::fs::read_to_string(manifests()).expect("read the manifests");
    let (passed, out) = validate(&yaml);
    assert!(passed, "kubernetes-validate --strict:\n{out}");
    assert_eq!(out.matches("passed for resource").count(), 6, "{out}");
    // The validator is strict: an unknown field in the container is refused.
    let typo =
        yaml.replacen("imagePullPolicy: IfNotPresent", "imagePullPolicy: IfNotPresent\n          privilegd: true", 1);
    assert_ne!(typo, yaml);
    let (passed, out) = validate(&typo);
    assert!(!passed, "a misspelt field passed:\n{out}");
    check_daemonset(&yaml_docs(&yaml));
}

#[test]
fn the_configmaps_file_loads_in_the_agent() {
    let docs = yaml_docs(&std::fs::read_to_string(manifests()).expect("read the manifests"));
    let config = find(&docs, "ConfigMap")["data"]["ghostwire.yaml"].as_str().expect("config").to_owned();
    let dir = TempDir::new("deploy-config");
    let file = dir.path().join("ghostwire.yaml");
    std::fs::write(&file, &config).unwrap();
    // Loopback only here: the collector and metrics addresses are replaced by flags
    // (a flag wins over the file); everything else is the file's.
    let [otlp, metrics] = free_ports();
    let args = [
        "--config".to_owned(),
        file.display().to_string(),
        "--otlp-endpoint".to_owned(),
        format!("http://127.0.0.1:{otlp}"),
        "--metrics-listen".to_owned(),
        format!("127.0.0.1:{metrics}"),
    ];
    let agent = Agent::start(&args, &[("GHOSTWIRE_NODE_NAME", "node-a")]);
    let text = agent.stderr_text();
    let exit = agent.stop();
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(text.contains(&format!("metrics at http://127.0.0.1:{metrics}/metrics")), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("error")), "{text}");
}

#[test]
fn the_helm_chart_lints_renders_valid_and_matches_the_manifests() {
    let out = ok(Command::new(helm()).args(["lint", "--strict"]).arg(chart()), b"");
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let render = |extra: &[&str]| {
        ok(
            Command::new(helm()).args(["template", "ghostwire", "--namespace", "ghostwire"]).arg(chart()).args(extra),
            b"",
        )
    };
    let rendered = render(&[]);
    let (passed, out) = validate(&rendered);
    assert!(passed, "helm template | kubernetes-validate --strict:\n{out}");
    assert_eq!(out.matches("passed for resource").count(), 5, "{out}");
    let chart_docs = yaml_docs(&rendered);
    check_daemonset(&chart_docs);

    // The same pod as deploy/kubernetes/ghostwire.yaml, field by field.
    let plain = yaml_docs(&std::fs::read_to_string(manifests()).expect("read the manifests"));
    let pod = |docs: &[Value]| find(docs, "DaemonSet")["spec"]["template"]["spec"].clone();
    let (a, b) = (pod(&plain), pod(&chart_docs));
    for key in ["hostPID", "hostNetwork", "dnsPolicy", "tolerations", "volumes", "terminationGracePeriodSeconds"] {
        assert_eq!(a[key], b[key], "pod spec {key}");
    }
    for key in ["image", "args", "env", "ports", "resources", "securityContext", "volumeMounts", "readinessProbe"] {
        assert_eq!(a["containers"][0][key], b["containers"][0][key], "container {key}");
    }
    let config = |docs: &[Value]| yaml_docs(find(docs, "ConfigMap")["data"]["ghostwire.yaml"].as_str().expect("cfg"));
    assert_eq!(config(&plain), config(&chart_docs), "the same configuration file");
    assert_eq!(find(&plain, "ClusterRole")["rules"], find(&chart_docs, "ClusterRole")["rules"]);

    // Values reach the objects: SYS_ADMIN for TLS, another metrics port.
    let more = render(&[
        "--set",
        "capabilities={BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH,NET_ADMIN,SYS_ADMIN}",
        "--set",
        "metrics.port=9500",
        "--set",
        "config.metrics.listen=0.0.0.0:9500",
    ]);
    let docs = yaml_docs(&more);
    let c = &pod(&docs)["containers"][0];
    assert_eq!(c["securityContext"]["capabilities"]["add"].as_array().map(Vec::len), Some(6), "{c:#}");
    assert_eq!(c["ports"][0]["containerPort"], 9500);
    let (passed, out) = validate(&more);
    assert!(passed, "{out}");
}

/// Removes the working container and unmounts it on drop.
struct BuildahContainer(String);

impl Drop for BuildahContainer {
    fn drop(&mut self) {
        let _ = Command::new("buildah").args(["umount", &self.0]).output();
        let _ = Command::new("buildah").args(["rm", &self.0]).output();
    }
}

#[test]
fn the_image_builds_from_scratch_and_its_binary_starts_from_its_own_files() {
    require_root();
    let bin = agent_binary();
    // The same path as `cargo xtask image`, packing the binary under test.
    let out = ok(
        Command::new(env!("CARGO"))
            .current_dir(repo())
            .args(["run", "--quiet", "-p", "xtask", "--", "image"])
            .env("GHOSTWIRE_BIN", &bin),
        b"",
    );
    let reference = out
        .lines()
        .find_map(|l| l.strip_prefix("==> image ").and_then(|r| r.split_whitespace().next()))
        .unwrap_or_else(|| panic!("no `==> image` line:\n{out}"))
        .to_owned();
    let version = ok(Command::new(&bin).arg("--version"), b"");
    assert_eq!(reference, format!("localhost/ghostwire:{}", version.trim().trim_start_matches("ghostwire ")));

    let inspect = ok(Command::new("buildah").args(["inspect", "--type", "image", &reference]), b"");
    let inspect: Value = serde_json::from_str(&inspect).expect("buildah inspect JSON");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["/ghostwire"]), "{config:#}");
    assert_eq!(inspect["OCIv1"]["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(1), "one layer, no base");

    let name = ok(Command::new("buildah").args(["from", "--pull-never", &reference]), b"").trim().to_owned();
    let container = BuildahContainer(name);
    let root = PathBuf::from(ok(Command::new("buildah").args(["mount", &container.0]), b"").trim());
    let inside = std::fs::read(root.join("ghostwire")).expect("/ghostwire in the image");
    assert!(inside == std::fs::read(&bin).expect("read the binary"), "/ghostwire is not the binary under test");
    for file in ["lib64/ld-linux-x86-64.so.2", "etc/ssl/certs/ca-certificates.crt", "etc/nsswitch.conf"] {
        assert!(root.join(file).is_file(), "/{file} missing from the image");
    }
    // No shell, no coreutils: only what the binary needs.
    assert!(!root.join("bin/sh").exists() && !root.join("usr").exists(), "the image has more than the agent");
    // podman run cannot start containers here (crun cannot set RLIMIT_NOFILE without
    // CAP_SYS_RESOURCE): run the image's loader and libraries in a chroot instead.
    let out = ok(Command::new("chroot").arg(&root).args(["/ghostwire", "--version"]), b"");
    assert_eq!(out, version, "the binary in the image, with the image's libraries");
    let help = ok(Command::new("chroot").arg(&root).args(["/ghostwire", "--help"]), b"");
    assert!(help.contains("--metrics-listen"), "{help}");
}
