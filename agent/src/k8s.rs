//! The Kubernetes API: a watch on this node's pods (`fieldSelector=spec.nodeName=NODE`)
//! that keeps a [`PodIndex`] up to date for the resource cache. It runs as one task on
//! the exporters' runtime, never on the drain task: the hot path only reads the index.
//!
//! Without an API server (mode `auto` and neither `KUBERNETES_SERVICE_HOST` nor a
//! kubeconfig, or a configuration that cannot be loaded) the agent says so in one line
//! and runs on: `container.id` and `k8s.pod.uid` still come from cgroups. A watch that
//! fails is retried with kube's default backoff; each outage is logged once, and its end.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;

use crate::span::pods::{PodIndex, PodMeta};
use crate::stats::{self, Counter};

/// `--kubernetes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// On when the agent runs in a cluster (`KUBERNETES_SERVICE_HOST`) or finds a
    /// kubeconfig (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`).
    #[default]
    Auto,
    /// Always try (a failure is logged, never fatal).
    On,
    /// Never ask the API; cgroups still give container and pod ids.
    Off,
}

/// Where and whether to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    /// The node whose pods are watched.
    pub node: String,
    /// A kubeconfig to use instead of the usual places.
    pub kubeconfig: Option<PathBuf>,
}

/// The line said when pod names are off for want of an API server.
const OFF: &str = "Kubernetes pod names are off";
const STILL: &str = "container.id and k8s.pod.uid still come from cgroups";

/// How the client would be configured, decided from the settings and `env`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// This kubeconfig file.
    Kubeconfig(PathBuf),
    /// kube's inference: `KUBECONFIG`, `~/.kube/config`, then the in-cluster service
    /// account.
    Infer,
    /// Off, with the reason to say (`None`: off on purpose, nothing to say).
    Off(Option<String>),
}

/// Decides where the API is, without touching the network.
pub fn source(settings: &Settings, env: impl Fn(&str) -> Option<String>) -> Source {
    if settings.mode == Mode::Off {
        return Source::Off(None);
    }
    if let Some(path) = &settings.kubeconfig {
        return Source::Kubeconfig(path.clone());
    }
    if settings.mode == Mode::On {
        return Source::Infer;
    }
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let kubeconfig_var = env("KUBECONFIG").filter(|v| !v.trim().is_empty());
    let home_config = env("HOME").map(|h| Path::new(&h).join(".kube/config")).filter(|p| p.is_file());
    if set("KUBERNETES_SERVICE_HOST") || kubeconfig_var.is_some() || home_config.is_some() {
        Source::Infer
    } else {
        Source::Off(Some(format!("{OFF}: no API server (KUBERNETES_SERVICE_HOST unset, no kubeconfig); {STILL}")))
    }
}

/// Starts the watch on `runtime`, if the settings and environment call for one; the
/// index it fills. Never fails: what goes wrong is logged (once) and the agent runs on.
pub fn start(settings: &Settings, runtime: &tokio::runtime::Handle) -> Option<Arc<PodIndex>> {
    let source = match source(settings, |k| std::env::var(k).ok()) {
        Source::Off(reason) => {
            if let Some(reason) = reason {
                log::info!("{reason}");
            }
            return None;
        }
        s => s,
    };
    // kube's TLS asks rustls for the process's provider: ring, unless another part of
    // the agent already chose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let index = Arc::new(PodIndex::new());
    runtime.spawn(run(source, settings.node.clone(), Arc::clone(&index)));
    Some(index)
}

async fn client(source: &Source) -> Result<kube::Client, String> {
    let config = match source {
        Source::Kubeconfig(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        _ => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// The watch, until the runtime shuts down.
async fn run(source: Source, node: String, index: Arc<PodIndex>) {
    let client = match client(&source).await {
        Ok(c) => c,
        Err(e) => {
            log::warn!("{OFF}: cannot configure the API client ({}); {STILL}", one_line(&e));
            return;
        }
    };
    let pods: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut listing: Option<HashSet<String>> = None;
    let mut outage = false;
    let mut listed_once = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let Some(uid) = apply(&index, &pod) {
                    if let Some(seen) = &mut listing {
                        seen.insert(uid);
                    }
                }
            }
            Ok(Event::InitDone) => {
                if let Some(seen) = listing.take() {
                    // A pod not in the fresh list was deleted while the watch was down.
                    index.retain(|uid| seen.contains(uid));
                }
                if outage {
                    log::info!("Kubernetes pod names are back: watching {} pods on node {node}", index.len());
                } else if !listed_once {
                    log::info!("Kubernetes pod names on: watching {} pods on node {node}", index.len());
                }
                outage = false;
                listed_once = true;
            }
            Ok(Event::Apply(pod)) => {
                apply(&index, &pod);
            }
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    index.remove(uid);
                }
            }
            Err(e) => {
                stats::global().incr(Counter::K8sWatchErrors);
                if !outage {
                    let when = if listed_once {
                        "the watch of this node's pods failed"
                    } else {
                        "cannot list this node's pods"
                    };
                    log::warn!(
                        "{OFF} until the API server answers: {when} ({}); retrying with backoff; {STILL}",
                        one_line(&e.to_string())
                    );
                    outage = true;
                }
            }
        }
    }
}

/// Indexes one pod; its uid.
fn apply(index: &PodIndex, pod: &Pod) -> Option<String> {
    let meta = PodMeta::from_pod(pod)?;
    let uid = meta.uid.clone();
    if !index.upsert(meta) {
        stats::global().incr(Counter::K8sPodsDropped);
    }
    Some(uid)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The node name when neither `GHOSTWIRE_NODE_NAME` nor a flag gives one: the host's
/// name (what the kubelet registers the node as, unless told otherwise).
#[must_use]
pub fn host_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_the_api_is() {
        let auto = Settings { node: "n".into(), ..Settings::default() };
        let none = |_: &str| None;
        let Source::Off(Some(line)) = source(&auto, |k| (k == "HOME").then(|| "/nonexistent".to_owned())) else {
            panic!("auto without a cluster is off")
        };
        assert_eq!(
            line,
            "Kubernetes pod names are off: no API server (KUBERNETES_SERVICE_HOST unset, no kubeconfig); container.id and k8s.pod.uid still come from cgroups"
        );
        let in_cluster = |k: &str| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_owned());
        assert_eq!(source(&auto, in_cluster), Source::Infer);
        assert_eq!(source(&auto, |k| (k == "KUBECONFIG").then(|| "/etc/kc".to_owned())), Source::Infer);
        let off = Settings { mode: Mode::Off, ..auto.clone() };
        assert_eq!(source(&off, in_cluster), Source::Off(None));
        let file = Settings { kubeconfig: Some("/k".into()), ..auto.clone() };
        assert_eq!(source(&file, none), Source::Kubeconfig("/k".into()));
        assert_eq!(source(&Settings { mode: Mode::On, ..auto }, none), Source::Infer);
    }
}
