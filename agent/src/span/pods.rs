//! This node's pods as the Kubernetes API describes them (`crate::k8s` keeps it up to
//! date), looked up by the pod uid and container id a process's cgroup gives
//! (`span::container`). Shared between the watcher task (writes) and the resource cache
//! on the drain task (reads, once per process); bounded.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::Pod;

use super::model::{AttrValue, Attribute};

/// Pods remembered at most: a node runs 110 by default and a few hundred at the very
/// most. Beyond it new pods are not described (and counted).
pub const MAX_PODS: usize = 4096;

/// The workload that owns a pod, as far as the pod says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Through a ReplicaSet whose name is the Deployment's plus `-<pod-template-hash>`.
    Deployment {
        deployment: String,
        replicaset: String,
    },
    /// A ReplicaSet not made by a Deployment (its name has no template hash).
    ReplicaSet(String),
    StatefulSet(String),
    DaemonSet(String),
    /// Through a Job named `<cronjob>-<minutes since the epoch>`, the CronJob
    /// controller's names.
    CronJob {
        cronjob: String,
        job: String,
    },
    Job(String),
}

impl Workload {
    /// The name `service.name` falls back to: the top of the ownership chain (the
    /// Deployment, not its ReplicaSet; the CronJob, not its Job), as OBI's default
    /// `service_name_template` does.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Deployment { deployment: n, .. }
            | Self::ReplicaSet(n)
            | Self::StatefulSet(n)
            | Self::DaemonSet(n)
            | Self::CronJob { cronjob: n, .. }
            | Self::Job(n) => n,
        }
    }

    fn attributes(&self, out: &mut Vec<Attribute>) {
        let mut put = |k: &'static str, v: &str| out.push((k.into(), AttrValue::from(v)));
        match self {
            Self::Deployment { deployment, replicaset } => {
                put("k8s.deployment.name", deployment);
                put("k8s.replicaset.name", replicaset);
            }
            Self::ReplicaSet(n) => put("k8s.replicaset.name", n),
            Self::StatefulSet(n) => put("k8s.statefulset.name", n),
            Self::DaemonSet(n) => put("k8s.daemonset.name", n),
            Self::CronJob { cronjob, job } => {
                put("k8s.cronjob.name", cronjob);
                put("k8s.job.name", job);
            }
            Self::Job(n) => put("k8s.job.name", n),
        }
    }
}

/// What the API says about one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub workload: Option<Workload>,
    /// The pod's `resource.opentelemetry.io/service.name` annotation (the OTel
    /// convention for naming a pod's service).
    pub service_name: Option<String>,
    /// Container id (64 hex digits, without the runtime's `containerd://`) → the
    /// container's name in the pod spec; init and ephemeral containers included.
    pub containers: Vec<(String, String)>,
}

/// The annotation the OTel conventions read a pod's service name from.
const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";

impl PodMeta {
    /// The pod's description, if it has a uid and a name.
    #[must_use]
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let m = &pod.metadata;
        let uid = m.uid.clone().filter(|u| !u.is_empty())?;
        let name = m.name.clone().filter(|n| !n.is_empty())?;
        let template_hash = m.labels.as_ref().and_then(|l| l.get("pod-template-hash")).map(String::as_str);
        let owners = m.owner_references.as_deref().unwrap_or_default();
        // The controller if one is marked, else the first owner.
        let owner = owners.iter().find(|o| o.controller == Some(true)).or_else(|| owners.first());
        let workload = owner.and_then(|o| workload(&o.kind, &o.name, template_hash));
        let mut containers = Vec::new();
        if let Some(status) = &pod.status {
            for list in
                [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses]
            {
                for c in list.as_deref().unwrap_or_default() {
                    if let Some(id) = c.container_id.as_deref().and_then(runtime_container_id) {
                        containers.push((id.to_owned(), c.name.clone()));
                    }
                }
            }
        }
        Some(Self {
            uid,
            name,
            namespace: m.namespace.clone().unwrap_or_default(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            workload,
            service_name: m
                .annotations
                .as_ref()
                .and_then(|a| a.get(SERVICE_NAME_ANNOTATION))
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
            containers,
        })
    }

    /// The name of the container `container_id` (64 hex digits) in this pod.
    #[must_use]
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers.iter().find(|(id, _)| id == container_id).map(|(_, n)| n.as_str())
    }

    /// The service name a process in this pod gets unless it names itself
    /// (`OTEL_SERVICE_NAME`): the pod's annotation, else its workload's name.
    #[must_use]
    pub fn service_name(&self) -> Option<&str> {
        self.service_name.as_deref().or_else(|| self.workload.as_ref().map(Workload::name))
    }

    /// The resource attributes of a process in container `container_id` of this pod
    /// (`k8s.pod.uid` comes from the cgroup and is not repeated).
    #[must_use]
    pub fn attributes(&self, container_id: Option<&str>) -> Vec<Attribute> {
        let mut out: Vec<Attribute> = vec![
            ("k8s.pod.name".into(), AttrValue::from(self.name.as_str())),
            ("k8s.namespace.name".into(), AttrValue::from(self.namespace.as_str())),
        ];
        if let Some(node) = &self.node {
            out.push(("k8s.node.name".into(), AttrValue::from(node.as_str())));
        }
        if let Some(name) = container_id.and_then(|c| self.container_name(c)) {
            out.push(("k8s.container.name".into(), AttrValue::from(name)));
        }
        if let Some(w) = &self.workload {
            w.attributes(&mut out);
        }
        out
    }
}

/// The workload behind an owner reference of kind `kind` named `name`.
fn workload(kind: &str, name: &str, template_hash: Option<&str>) -> Option<Workload> {
    let name = name.to_owned();
    Some(match kind {
        "ReplicaSet" => match deployment_of(&name, template_hash) {
            Some(deployment) => Workload::Deployment { deployment: deployment.to_owned(), replicaset: name },
            None => Workload::ReplicaSet(name),
        },
        "StatefulSet" => Workload::StatefulSet(name),
        "DaemonSet" => Workload::DaemonSet(name),
        "Job" => match cronjob_of(&name) {
            Some(cronjob) => Workload::CronJob { cronjob: cronjob.to_owned(), job: name },
            None => Workload::Job(name),
        },
        _ => return None,
    })
}

/// The Deployment that made ReplicaSet `rs`: the Deployment controller names it
/// `<deployment>-<pod-template-hash>` and labels its pods with that hash.
fn deployment_of<'a>(rs: &'a str, template_hash: Option<&str>) -> Option<&'a str> {
    let hash = template_hash.filter(|h| !h.is_empty())?;
    rs.strip_suffix(hash)?.strip_suffix('-').filter(|d| !d.is_empty())
}

/// The CronJob that made Job `job`: the CronJob controller names it
/// `<cronjob>-<scheduled time in minutes since the epoch>` (8 digits since 1980).
fn cronjob_of(job: &str) -> Option<&str> {
    let (base, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty()).then_some(base)
}

/// The id in a container status's `containerID` (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`), if it is a 64-hex-digit id.
fn runtime_container_id(s: &str) -> Option<&str> {
    let id = s.rsplit_once("://").map_or(s, |(_, id)| id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(id)
}

/// This node's pods by uid, with a generation number that moves on every change (the
/// resource cache re-describes processes that were waiting for their pod).
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: RwLock<HashMap<String, Arc<PodMeta>>>,
    generation: AtomicU64,
}

impl PodIndex {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The pod with uid `uid`.
    #[must_use]
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods.read().unwrap_or_else(PoisonError::into_inner).get(uid).cloned()
    }

    /// The pod holding container `container_id` (for a cgroup that names a container
    /// but no pod).
    #[must_use]
    pub fn by_container(&self, container_id: &str) -> Option<Arc<PodMeta>> {
        let pods = self.pods.read().unwrap_or_else(PoisonError::into_inner);
        pods.values().find(|p| p.container_name(container_id).is_some()).cloned()
    }

    /// Changes on every insert, update and removal.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.pods.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces a pod; `false` when the index is full and the pod new.
    pub fn upsert(&self, meta: PodMeta) -> bool {
        let mut pods = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        if pods.get(&meta.uid).is_some_and(|old| **old == meta) {
            return true;
        }
        if pods.len() >= MAX_PODS && !pods.contains_key(&meta.uid) {
            return false;
        }
        pods.insert(meta.uid.clone(), Arc::new(meta));
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub fn remove(&self, uid: &str) {
        if self.pods.write().unwrap_or_else(PoisonError::into_inner).remove(uid).is_some() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Keeps only the pods `keep` says (after a fresh list of the node's pods).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut pods = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        let before = pods.len();
        pods.retain(|uid, _| keep(uid));
        if pods.len() != before {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f1a5ad9c2b84e0f7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170a";
    const SIDECAR: &str = "9c0e2a1b3d4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";

    /// A pod as `kubectl get pod -o json` shows one made by a Deployment.
    fn deployment_pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "checkout-7d9f8b6c5d-x2k4q", "namespace": "shop",
                "uid": "8d6c1f2e-4b3a-4c5d-9e8f-7a6b5c4d3e2f", "resourceVersion": "4711",
                "labels": { "app": "checkout", "pod-template-hash": "7d9f8b6c5d" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "checkout-7d9f8b6c5d", "uid": "0b3c6f0e-1d2e-4f5a-8b7c-6d5e4f3a2b1c",
                    "controller": true, "blockOwnerDeletion": true }]
            },
            "spec": { "nodeName": "node-a", "containers": [{ "name": "app", "image": "checkout:1" },
                                                            { "name": "envoy", "image": "envoy:1" }] },
            "status": { "phase": "Running", "containerStatuses": [
                { "name": "app", "containerID": format!("containerd://{CID}"), "ready": true, "restartCount": 0,
                  "image": "checkout:1", "imageID": "sha256:00" },
                { "name": "envoy", "containerID": format!("cri-o://{SIDECAR}"), "ready": true, "restartCount": 0,
                  "image": "envoy:1", "imageID": "sha256:01" }
            ]}
        })
    }

    fn meta(v: serde_json::Value) -> PodMeta {
        PodMeta::from_pod(&serde_json::from_value::<Pod>(v).unwrap()).unwrap()
    }

    #[test]
    fn a_deployment_pod() {
        let m = meta(deployment_pod());
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str(), m.node.as_deref()),
            ("checkout-7d9f8b6c5d-x2k4q", "shop", Some("node-a"))
        );
        assert_eq!(
            m.workload,
            Some(Workload::Deployment { deployment: "checkout".into(), replicaset: "checkout-7d9f8b6c5d".into() })
        );
        assert_eq!(m.service_name(), Some("checkout"));
        assert_eq!(m.container_name(CID), Some("app"));
        assert_eq!(m.container_name(SIDECAR), Some("envoy"));
        let attrs = m.attributes(Some(SIDECAR));
        let get = |k: &str| attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("k8s.container.name"), Some(AttrValue::from("envoy")));
        assert_eq!(get("k8s.deployment.name"), Some(AttrValue::from("checkout")));
        assert_eq!(get("k8s.replicaset.name"), Some(AttrValue::from("checkout-7d9f8b6c5d")));
        assert_eq!(get("k8s.node.name"), Some(AttrValue::from("node-a")));
        // A container the pod does not list: the pod's attributes without a container name.
        assert_eq!(m.attributes(Some(&"0".repeat(64))).iter().filter(|(k, _)| k == "k8s.container.name").count(), 0);
    }

    #[test]
    fn owners_and_service_names() {
        let with_owner = |kind: &str, name: &str, hash: Option<&str>| {
            let mut v = deployment_pod();
            v["metadata"]["ownerReferences"][0]["kind"] = kind.into();
            v["metadata"]["ownerReferences"][0]["name"] = name.into();
            match hash {
                Some(h) => v["metadata"]["labels"]["pod-template-hash"] = h.into(),
                None => drop(v["metadata"]["labels"].as_object_mut().unwrap().remove("pod-template-hash")),
            }
            meta(v)
        };
        let cases = [
            ("StatefulSet", "postgres", None, Workload::StatefulSet("postgres".into()), "postgres"),
            ("DaemonSet", "fluent-bit", None, Workload::DaemonSet("fluent-bit".into()), "fluent-bit"),
            // A ReplicaSet made by hand: no template hash.
            ("ReplicaSet", "legacy-rs", None, Workload::ReplicaSet("legacy-rs".into()), "legacy-rs"),
            // A hash label that is not the ReplicaSet's suffix.
            ("ReplicaSet", "legacy-rs", Some("abc12"), Workload::ReplicaSet("legacy-rs".into()), "legacy-rs"),
            (
                "Job",
                "nightly-report-29400480",
                None,
                Workload::CronJob { cronjob: "nightly-report".into(), job: "nightly-report-29400480".into() },
                "nightly-report",
            ),
            ("Job", "migrate-2", None, Workload::Job("migrate-2".into()), "migrate-2"),
        ];
        for (kind, name, hash, want, service) in cases {
            let m = with_owner(kind, name, hash);
            assert_eq!(m.workload.as_ref(), Some(&want), "{kind} {name}");
            assert_eq!(m.service_name(), Some(service), "{kind} {name}");
        }
        // No owner (a bare pod), or one ghostwire does not know: no workload name.
        let mut bare = deployment_pod();
        bare["metadata"].as_object_mut().unwrap().remove("ownerReferences");
        assert_eq!(meta(bare).service_name(), None);
        assert_eq!(with_owner("Node", "node-a", None).workload, None);
        // The OTel annotation names the service over the workload.
        let mut annotated = deployment_pod();
        annotated["metadata"]["annotations"] = serde_json::json!({ SERVICE_NAME_ANNOTATION: "checkout-api" });
        assert_eq!(meta(annotated).service_name(), Some("checkout-api"));
    }

    #[test]
    fn pending_pods_and_junk() {
        // Scheduled, not started: no container ids yet.
        let mut v = deployment_pod();
        v["status"] = serde_json::json!({ "phase": "Pending",
            "containerStatuses": [{ "name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "" }] });
        assert!(meta(v).containers.is_empty());
        // No uid: not a pod ghostwire can join.
        let mut v = deployment_pod();
        v["metadata"].as_object_mut().unwrap().remove("uid");
        assert_eq!(PodMeta::from_pod(&serde_json::from_value::<Pod>(v).unwrap()), None);
        assert_eq!(runtime_container_id("containerd://abc"), None);
        assert_eq!(runtime_container_id(&format!("docker://{CID}")), Some(CID));
    }

    #[test]
    fn the_index_is_bounded_and_counts_changes() {
        let index = PodIndex::new();
        let m = meta(deployment_pod());
        let g0 = index.generation();
        assert!(index.upsert(m.clone()));
        let g1 = index.generation();
        assert!(g1 > g0);
        // The same pod again (a resync): no change.
        assert!(index.upsert(m.clone()));
        assert_eq!(index.generation(), g1);
        assert_eq!(index.by_container(CID).map(|p| p.name.clone()), Some(m.name.clone()));
        for i in 1..MAX_PODS {
            assert!(index.upsert(PodMeta { uid: format!("uid-{i}"), ..PodMeta::default() }));
        }
        assert!(!index.upsert(PodMeta { uid: "one-too-many".into(), ..PodMeta::default() }));
        assert_eq!(index.len(), MAX_PODS);
        index.retain(|uid| uid == m.uid);
        assert_eq!(index.len(), 1);
        index.remove(&m.uid);
        assert!(index.is_empty() && index.get(&m.uid).is_none());
    }
}
