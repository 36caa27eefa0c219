//! Container and Kubernetes identity on spans: real processes in real cgroups named the
//! way the kubelet and containerd name them (cgroup v2, at /sys/fs/cgroup/unified on
//! this machine), and pod names from a Kubernetes API. No API server can run here: the
//! API is `tests/peers/kube_api.py` replaying recorded list and watch responses
//! (`tests/data/k8s/`), reached through a kubeconfig.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ghostwire_tests::*;

const CGROUP2: &str = "/sys/fs/cgroup/unified";

/// The recorded pods (`tests/data/k8s/pods-list.json`): a Deployment's pod (checkout),
/// a StatefulSet's pod whose container starts in the watch (loadgen-0).
const NODE: &str = "gw-node-1";
const UID_A: &str = "5f0c6f2a-9b1e-4c7d-8a3b-2e6f1d4c9a01";
const CID_A: &str = "4b1f0e9d2c3a5b6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6";
const UID_B: &str = "0d7e3b58-61a4-4f2e-b9c0-7a5d2e8f4b12";
const CID_B: &str = "e3d2c1b0a9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e";

/// cgroup directories created for a test, under the cgroup v2 root. On drop (also when
/// the test fails) every process still in them goes back to the root and the
/// directories the guard created are removed, innermost first.
struct Cgroup {
    leaf: PathBuf,
    created: Vec<PathBuf>,
}

impl Cgroup {
    /// `rel`: a path under the v2 root, e.g. `kubepods/besteffort/pod<uid>/<id>`.
    fn create(rel: &str) -> Self {
        let mut created = Vec::new();
        let mut dir = PathBuf::from(CGROUP2);
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        Self { leaf: dir, created }
    }

    /// The file a process joins by writing its pid.
    fn procs(&self) -> PathBuf {
        self.leaf.join("cgroup.procs")
    }

    /// `program args` started inside the cgroup: a shell joins it, then execs.
    fn command(&self, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("echo $$ > '{}' && exec \"$@\"", self.procs().display())).arg("sh").arg(program);
        cmd.args(args);
        cmd
    }

    /// `curl` from inside the cgroup (a new process each call): the status code.
    fn curl(&self, port: u16, path: &str) -> u16 {
        let args = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
            .map(str::to_owned)
            .into_iter()
            .chain([format!("http://127.0.0.1:{port}{path}")])
            .collect::<Vec<_>>();
        let out = self.command("curl", &args).output().expect("run curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let root = Path::new(CGROUP2).join("cgroup.procs");
        for dir in self.created.iter().rev() {
            let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = std::fs::write(&root, pid);
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("cannot remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// The kubelet's systemd-driver cgroup of a BestEffort pod's containerd container.
fn systemd_driver(uid: &str, cid: &str) -> String {
    let uid_ = uid.replace('-', "_");
    format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{cid}.scope")
}

/// The kubelet's cgroupfs-driver cgroup of a Burstable pod's container.
fn cgroupfs_driver(uid: &str, cid: &str) -> String {
    format!("kubepods/burstable/pod{uid}/{cid}")
}

/// The legacy Python backend started inside `cg`, without OTEL_SERVICE_NAME (so that
/// the pod's workload can name it).
fn backend_in(cg: &Cgroup, port: u16) -> Proc {
    let mut cmd = cg.command("python3", &[peers_dir().join("backend.py").display().to_string(), port.to_string()]);
    cmd.env_remove("OTEL_SERVICE_NAME");
    let mut proc = Proc::spawn("backend", &mut cmd);
    wait_port(port, "python backend");
    proc.assert_running();
    proc
}

fn resource_str(s: &SpanRec, key: &str) -> Option<String> {
    s.resource.get(key).and_then(|v| v.as_str()).map(str::to_owned)
}

fn spans_of<'a>(spans: &'a [SpanRec], kind: i64, path: &str) -> Vec<&'a SpanRec> {
    spans.iter().filter(|s| s.kind == kind && s.path().as_deref() == Some(path)).collect()
}

#[test]
fn without_an_api_server_spans_carry_cgroup_ids_and_the_agent_says_so_once() {
    require_root();
    let dir = TempDir::new("identity-cgroups");
    let uid_server = "3c9a1f7e-2b4d-4e6f-8a0c-5d7e9f1b3a24";
    let cid_server = "51d6a2c8e4f0b7a93d5c1e8f2a6b4d0c9e7f3a1b5d8c2e6f0a4b9d3c7e1f5a28";
    let uid_client = "a7e2c4f6-8b0d-4a1c-9e3f-5b7d9f1a3c06";
    let cid_client = "0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e";
    let server_cg = Cgroup::create(&systemd_driver(uid_server, cid_server));
    let client_cg = Cgroup::create(&cgroupfs_driver(uid_client, cid_client));
    let port = free_port();
    let server = backend_in(&server_cg, port);
    let in_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid())).expect("server's cgroup");
    assert!(in_cgroup.contains(&format!("cri-containerd-{cid_server}.scope")), "{in_cgroup}");

    let jsonl = dir.path().join("spans.jsonl");
    // Auto mode with no cluster around: no KUBERNETES_SERVICE_HOST, no kubeconfig.
    let home = dir.path().display().to_string();
    let agent = Agent::start(
        &["--output".into(), format!("jsonl:{}", jsonl.display()), "--port".into(), port.to_string()],
        &[("HOME", home.as_str())],
    );
    assert_eq!(client_cg.curl(port, "/in-pod"), 200);
    // The test process itself is in no container (only a 32-digit v1 memory cgroup).
    assert_eq!(HttpConn::connect(port).get("/host").status, 200);
    let got = wait_for(Duration::from_secs(15), || (read_jsonl(&jsonl).len() >= 4).then_some(()));
    let exit = agent.stop();
    drop(server);
    assert!(exit.status.success(), "{}", exit.stderr);
    let spans = read_jsonl(&jsonl);
    assert!(got.is_some(), "want 4 spans:\n{}\n{}", describe(&spans), exit.stderr);

    let off: Vec<&str> = exit.stderr.lines().filter(|l| l.contains("pod names are off")).collect();
    assert_eq!(off.len(), 1, "one line, once:\n{}", exit.stderr);
    assert!(
        off[0].ends_with(
            "Kubernetes pod names are off: no API server (KUBERNETES_SERVICE_HOST unset, no kubeconfig); container.id and k8s.pod.uid still come from cgroups"
        ),
        "{}",
        off[0]
    );

    for s in spans_of(&spans, KIND_SERVER, "/in-pod").into_iter().chain(spans_of(&spans, KIND_SERVER, "/host")) {
        assert_eq!(resource_str(s, "container.id").as_deref(), Some(cid_server), "{s:#?}");
        assert_eq!(resource_str(s, "k8s.pod.uid").as_deref(), Some(uid_server), "{s:#?}");
        assert_eq!(resource_str(s, "k8s.pod.name"), None, "no API, no names: {s:#?}");
        assert_eq!(s.service(), resource_str(s, "process.executable.name").unwrap(), "as without a pod: {s:#?}");
    }
    let client = spans_of(&spans, KIND_CLIENT, "/in-pod");
    assert_eq!(client.len(), 1, "{}", describe(&spans));
    assert_eq!(client[0].service(), "curl");
    assert_eq!(resource_str(client[0], "container.id").as_deref(), Some(cid_client), "{:#?}", client[0]);
    assert_eq!(resource_str(client[0], "k8s.pod.uid").as_deref(), Some(uid_client), "{:#?}", client[0]);
    let host = spans_of(&spans, KIND_CLIENT, "/host");
    assert_eq!(host.len(), 1, "{}", describe(&spans));
    assert_eq!(host[0].service(), own_service_name());
    assert_eq!(resource_str(host[0], "container.id"), None, "{:#?}", host[0]);
    assert_eq!(resource_str(host[0], "k8s.pod.uid"), None, "{:#?}", host[0]);
}

/// A kubeconfig for the recorded API server on `port`.
fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: recorded\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: ghostwire\n  user:\n    token: recorded-token\ncontexts:\n- name: recorded\n  context:\n    \
             cluster: recorded\n    user: ghostwire\ncurrent-context: recorded\n"
        ),
    )
    .expect("write kubeconfig");
    path
}

fn recorded_api(port: u16, log: &Path) -> Proc {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/k8s");
    let mut proc = Proc::spawn(
        "kube_api",
        Command::new("python3").arg(peers_dir().join("kube_api.py")).args([
            port.to_string(),
            data.join("pods-list.json").display().to_string(),
            data.join("pods-watch.jsonl").display().to_string(),
            log.display().to_string(),
        ]),
    );
    wait_port(port, "recorded Kubernetes API");
    proc.assert_running();
    proc
}

#[test]
fn pod_names_come_from_the_api_servers_list_and_watch() {
    require_root();
    let dir = TempDir::new("identity-k8s");
    let api_port = free_port();
    let api_log = dir.path().join("api.log");
    let _api = recorded_api(api_port, &api_log);
    let kubeconfig = kubeconfig(dir.path(), api_port);
    // checkout-…: the Deployment's pod, running in the list (systemd driver); loadgen-0:
    // the StatefulSet's, whose container id arrives in a watch event (cgroupfs driver).
    let server_cg = Cgroup::create(&systemd_driver(UID_A, CID_A));
    let client_cg = Cgroup::create(&cgroupfs_driver(UID_B, CID_B));
    let port = free_port();
    let server = backend_in(&server_cg, port);

    let jsonl = dir.path().join("spans.jsonl");
    let (kc, home) = (kubeconfig.display().to_string(), dir.path().display().to_string());
    let agent = Agent::start(
        &["--output".into(), format!("jsonl:{}", jsonl.display()), "--port".into(), port.to_string()],
        &[("KUBECONFIG", kc.as_str()), ("HOME", home.as_str()), ("GHOSTWIRE_NODE_NAME", NODE)],
    );
    // A new client process per request until one is described with its pod's names
    // (the watch event that starts its container comes a second after the list).
    let named = |spans: &[SpanRec]| {
        spans.iter().any(|s| s.kind == KIND_CLIENT && resource_str(s, "k8s.container.name").is_some())
            && spans.iter().any(|s| s.kind == KIND_SERVER && resource_str(s, "k8s.container.name").is_some())
    };
    let mut n = 0;
    let got = wait_for(Duration::from_secs(20), || {
        n += 1;
        assert_eq!(client_cg.curl(port, &format!("/order/{n}")), 200);
        std::thread::sleep(Duration::from_millis(300));
        named(&read_jsonl(&jsonl)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let exit = agent.stop();
    drop(server);
    assert!(exit.status.success(), "{}", exit.stderr);
    let spans = read_jsonl(&jsonl);
    assert!(got.is_some(), "no spans with pod names after {n} requests:\n{}\n{}", describe(&spans), exit.stderr);

    // What the agent asked: this node's pods only, with the kubeconfig's token.
    let requests = std::fs::read_to_string(&api_log).expect("API log");
    let requests: Vec<serde_json::Value> =
        requests.lines().map(|l| serde_json::from_str(l).expect("log line")).collect();
    let path = |r: &serde_json::Value| r["path"].as_str().unwrap_or_default().to_owned();
    let list = requests.iter().find(|r| !path(r).contains("watch=")).expect("a list request");
    let watch = requests.iter().find(|r| path(r).contains("watch=true")).expect("a watch request");
    for r in [list, watch] {
        assert!(path(r).starts_with("/api/v1/pods?"), "{r}");
        assert!(path(r).contains(&format!("fieldSelector=spec.nodeName%3D{NODE}")), "{r}");
        assert_eq!(r["authorization"].as_str(), Some("Bearer recorded-token"), "{r}");
    }
    assert!(path(watch).contains("resourceVersion=48235"), "the watch starts at the list's version: {watch}");
    assert!(
        exit.stderr.contains(&format!("Kubernetes pod names on: watching 3 pods on node {NODE}")),
        "{}",
        exit.stderr
    );
    assert!(!exit.stderr.contains("pod names are off"), "{}", exit.stderr);

    // The server (the Deployment's pod): every span named, the service after the
    // Deployment (the backend sets no OTEL_SERVICE_NAME).
    let servers: Vec<&SpanRec> = spans.iter().filter(|s| s.kind == KIND_SERVER).collect();
    let named_server: Vec<&&SpanRec> = servers.iter().filter(|s| resource_str(s, "k8s.pod.name").is_some()).collect();
    assert!(!named_server.is_empty(), "{}", describe(&spans));
    for s in named_server {
        for (k, v) in [
            ("container.id", CID_A),
            ("k8s.pod.uid", UID_A),
            ("k8s.pod.name", "checkout-6d5f7c9b8d-qx7zp"),
            ("k8s.namespace.name", "shop"),
            ("k8s.container.name", "app"),
            ("k8s.node.name", NODE),
            ("k8s.deployment.name", "checkout"),
            ("k8s.replicaset.name", "checkout-6d5f7c9b8d"),
        ] {
            assert_eq!(resource_str(s, k).as_deref(), Some(v), "{k}: {s:#?}");
        }
        assert_eq!(s.service(), "checkout", "{s:#?}");
    }
    // The client (the StatefulSet's pod): named once its container's status came.
    let clients: Vec<&SpanRec> = spans.iter().filter(|s| s.kind == KIND_CLIENT).collect();
    let named_client: Vec<&&SpanRec> =
        clients.iter().filter(|s| resource_str(s, "k8s.container.name").is_some()).collect();
    assert!(!named_client.is_empty(), "{}", describe(&spans));
    for s in &clients {
        assert_eq!(resource_str(s, "container.id").as_deref(), Some(CID_B), "{s:#?}");
        assert_eq!(resource_str(s, "k8s.pod.uid").as_deref(), Some(UID_B), "{s:#?}");
    }
    for s in named_client {
        for (k, v) in [
            ("k8s.pod.name", "loadgen-0"),
            ("k8s.namespace.name", "shop"),
            ("k8s.container.name", "curl"),
            ("k8s.node.name", NODE),
            ("k8s.statefulset.name", "loadgen"),
        ] {
            assert_eq!(resource_str(s, k).as_deref(), Some(v), "{k}: {s:#?}");
        }
        assert_eq!(s.service(), "loadgen", "{s:#?}");
    }
}

#[test]
fn an_api_server_that_does_not_answer_is_one_line_per_outage() {
    require_root();
    let dir = TempDir::new("identity-k8s-down");
    // Nothing listens on this port.
    let kubeconfig = kubeconfig(dir.path(), free_port());
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(
        &[
            "--output".into(),
            format!("jsonl:{}", jsonl.display()),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--kubernetes-node".into(),
            NODE.into(),
            "--stats-interval".into(),
            "1".into(),
        ],
        &[],
    );
    // kube's backoff retries within the first seconds (800 ms, then doubling).
    let retried = wait_for(Duration::from_secs(15), || {
        agent.stat_history("k8s.watch_errors").last().is_some_and(|n| *n >= 3).then_some(())
    });
    let exit = agent.stop();
    assert!(exit.status.success(), "the agent runs on: {}", exit.stderr);
    assert!(retried.is_some(), "retried: {}", exit.stderr);
    let lines: Vec<&str> = exit.stderr.lines().filter(|l| l.contains("pod names are off")).collect();
    assert_eq!(lines.len(), 1, "one line for the outage:\n{}", exit.stderr);
    assert!(lines[0].contains("until the API server answers: cannot list this node's pods"), "{}", lines[0]);
    assert!(lines[0].contains("retrying with backoff"), "{}", lines[0]);
}
