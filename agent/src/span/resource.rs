//! Per-process resources (`service.name`, `process.*`, `host.name`, `container.id`,
//! `k8s.*`), read from `/proc` once per process — when its first connection is
//! announced, not per event — and forgotten when it exits.
//!
//! Kubernetes: the cgroup gives the container id and pod uid (`span::container`); the
//! pod's names come from the [`PodIndex`] the API watcher fills. A process read before
//! its pod (or its container's status) reached the index waits in `waiting`; when the
//! index changes, its resource is described again and replaces the cached one, so the
//! spans built from then on carry the names (those built before keep what was known).
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Arc;

use object::read::elf::{FileHeader, SectionHeader as _};
use object::read::{ReadCache, ReadRef};
use object::{Endianness, FileKind};

use super::container::{self, CgroupIdentity};
use super::model::{AttrValue, Attribute, Resource};
use super::pods::PodIndex;

pub struct ResourceCache {
    proc_root: std::path::PathBuf,
    host_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES` and `--resource-attribute`: on every resource.
    node_attributes: Vec<Attribute>,
    by_pid: HashMap<u32, Arc<Resource>>,
    /// The language runtime of each executable seen, by (device, inode): the processes
    /// of one program (workers, restarts) parse its ELF headers once.
    runtimes: HashMap<(u64, u64), Option<Runtime>>,
    /// This node's pods, when the Kubernetes API is watched.
    pods: Option<Arc<PodIndex>>,
    /// The index generation `waiting` was last checked against.
    pods_seen: u64,
    /// Processes in a pod the index did not (fully) describe yet.
    waiting: HashMap<u32, Waiting>,
}

/// A process whose pod metadata is still to come.
#[derive(Clone, Debug)]
struct Waiting {
    cgroup: CgroupIdentity,
    /// The process names its service itself (`OTEL_SERVICE_NAME`): the pod's workload
    /// does not rename it.
    named: bool,
}

/// A language runtime found in an executable (OTel `process.runtime.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    pub name: &'static str,
    pub version: Option<String>,
}

/// Most processes of a node fit; beyond it one entry makes room for each new one (it is
/// simply read again if it comes back), so a full cache costs one eviction per miss, not
/// a re-read of every process.
const MAX_PROCESSES: usize = 16_384;
/// Distinct executables remembered; beyond it, as for processes, one makes room.
const MAX_EXECUTABLES: usize = 4096;

impl Default for ResourceCache {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ResourceCache {
    #[must_use]
    pub fn new(proc_root: impl Into<std::path::PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            host_name: host_name(),
            node_attributes: Vec::new(),
            by_pid: HashMap::new(),
            runtimes: HashMap::new(),
            pods: None,
            pods_seen: 0,
            waiting: HashMap::new(),
        }
    }

    /// Describes processes in pods with what `pods` knows of them (`k8s.pod.name`, ...).
    /// Adds these attributes (e.g. `k8s.cluster.name`) to every resource described from
    /// now on; one named like a built-in one (`host.name`) replaces it.
    pub fn set_node_attributes(&mut self, attrs: &[(String, String)]) {
        self.node_attributes = attrs.iter().map(|(k, v)| (k.clone().into(), AttrValue::from(v.clone()))).collect();
        self.by_pid.clear();
    }

    pub fn set_pods(&mut self, pods: Arc<PodIndex>) {
        self.pods_seen = pods.generation();
        self.pods = Some(pods);
    }

    /// Re-describes the processes waiting for their pod, if the index changed since the
    /// last look (one atomic load otherwise).
    fn refresh_waiting(&mut self) {
        let Some(pods) = &self.pods else { return };
        let generation = pods.generation();
        if generation == self.pods_seen || self.waiting.is_empty() {
            self.pods_seen = generation;
            return;
        }
        self.pods_seen = generation;
        let pods = Arc::clone(pods);
        let mut done = Vec::new();
        for (pid, w) in &self.waiting {
            let Some(old) = self.by_pid.get(pid) else {
                done.push(*pid);
                continue;
            };
            let mut r = Resource::clone(old);
            r.attributes.retain(|(k, _)| !k.starts_with("k8s.") || k == "k8s.pod.uid");
            let complete = describe_pod(&pods, &mut r, &w.cgroup, w.named);
            if r != **old {
                self.by_pid.insert(*pid, Arc::new(r));
            }
            if complete {
                done.push(*pid);
            }
        }
        for pid in done {
            self.waiting.remove(&pid);
        }
    }

    /// The resource of `pid`, read from `/proc` the first time. `comm` (the kernel's
    /// thread name) names processes that are already gone.
    pub fn get(&mut self, pid: u32, comm: &str) -> Arc<Resource> {
        self.get_with_parent(pid, comm, 0)
    }

    /// As [`get`](Self::get); a process already gone whose parent `ppid` has the same
    /// name (a forked child that did not exec, such as a forking server's handler) is
    /// described as its parent, with its own pid.
    pub fn get_with_parent(&mut self, pid: u32, comm: &str, ppid: u32) -> Arc<Resource> {
        self.refresh_waiting();
        if let Some(r) = self.by_pid.get(&pid) {
            return Arc::clone(r);
        }
        let r = match self.read(pid, comm) {
            Some(r) => r,
            None => self.forked_from(ppid, comm).map_or_else(|| self.gone(pid, comm), |parent| parent.with_pid(pid)),
        };
        let r = Arc::new(r);
        self.insert(pid, Arc::clone(&r));
        r
    }

    fn insert(&mut self, pid: u32, r: Arc<Resource>) {
        if self.by_pid.len() >= MAX_PROCESSES && !self.by_pid.contains_key(&pid) {
            evict_one(&mut self.by_pid);
        }
        self.by_pid.insert(pid, r);
    }

    /// The parent's resource, if the parent runs under the name `comm`.
    fn forked_from(&mut self, ppid: u32, comm: &str) -> Option<Arc<Resource>> {
        if ppid == 0 || comm.is_empty() {
            return None;
        }
        let parent_comm = std::fs::read_to_string(self.proc_root.join(ppid.to_string()).join("comm")).ok()?;
        if parent_comm.trim() != comm {
            return None;
        }
        if let Some(r) = self.by_pid.get(&ppid) {
            return Some(Arc::clone(r));
        }
        let r = Arc::new(self.read(ppid, "")?);
        self.insert(ppid, Arc::clone(&r));
        Some(r)
    }

    /// A process whose `/proc` entry is gone: named by its kernel name.
    fn gone(&self, pid: u32, comm: &str) -> Resource {
        let service_name = if comm.is_empty() { format!("unknown_service:{pid}") } else { comm.to_owned() };
        let mut attributes = self.common(&service_name, pid);
        if !comm.is_empty() {
            attributes.push(("process.executable.name".into(), AttrValue::from(comm.to_owned())));
        }
        Resource { pid, service_name, attributes }
    }

    fn common(&self, service_name: &str, pid: u32) -> Vec<Attribute> {
        let mut attrs = vec![
            ("service.name".into(), AttrValue::from(service_name.to_owned())),
            ("process.pid".into(), AttrValue::Int(i64::from(pid))),
            ("host.name".into(), AttrValue::from(self.host_name.clone())),
            ("telemetry.sdk.name".into(), AttrValue::Str("ghostwire".into())),
            ("telemetry.sdk.version".into(), AttrValue::Str(env!("CARGO_PKG_VERSION").into())),
        ];
        for (key, value) in &self.node_attributes {
            match attrs.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.clone(),
                None => attrs.push((key.clone(), value.clone())),
            }
        }
        attrs
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
        self.waiting.remove(&pid);
    }

    /// The runtime of the executable behind `exe` (`/proc/PID/exe`, which opens the
    /// process's file even when it is deleted or in another mount namespace). `None`
    /// when it is not one ghostwire knows or cannot be read.
    fn runtime(&mut self, exe: &Path) -> Option<Runtime> {
        let file = File::open(exe).ok()?;
        let meta = file.metadata().ok()?;
        let key = (meta.dev(), meta.ino());
        if let Some(r) = self.runtimes.get(&key) {
            return r.clone();
        }
        let r = go_runtime(file);
        if self.runtimes.len() >= MAX_EXECUTABLES {
            evict_one(&mut self.runtimes);
        }
        self.runtimes.insert(key, r.clone());
        r
    }

    /// `None` when the process's `/proc` entry is gone.
    fn read(&mut self, pid: u32, comm: &str) -> Option<Resource> {
        let dir = self.proc_root.join(pid.to_string());
        let exe_path = std::fs::read_link(dir.join("exe")).ok();
        let exe_name = exe_path
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().trim_end_matches(" (deleted)").to_owned())
            .or_else(|| std::fs::read_to_string(dir.join("comm")).ok().map(|c| c.trim().to_owned()));
        // Neither the executable nor the name: the process is gone.
        let exe_name = match exe_name {
            Some(name) => name,
            None if dir.exists() => comm.to_owned(),
            None => return None,
        };
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(String::from_utf8_lossy)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
        // A process that exited (a zombie, or one tearing down its memory) keeps its
        // `/proc` entry and name but has no executable, command line or environment
        // any more: what it ran as is known only from its parent, so it counts as gone.
        if exe_path.is_none() && cmdline.is_empty() && environ.is_empty() {
            return None;
        }
        let env_name = service_name_from_environ(&environ);
        let named = env_name.is_some();
        let service_name = match env_name {
            Some(name) => name,
            None if !exe_name.is_empty() => exe_name.clone(),
            None => format!("unknown_service:{pid}"),
        };
        let mut attributes = self.common(&service_name, pid);
        if !exe_name.is_empty() {
            attributes.push(("process.executable.name".into(), AttrValue::from(exe_name)));
        }
        if let Some(path) = exe_path {
            attributes.push(("process.executable.path".into(), AttrValue::from(path.to_string_lossy().into_owned())));
        }
        if !cmdline.is_empty() {
            attributes.push(("process.command_line".into(), AttrValue::from(cmdline)));
        }
        if let Some(rt) = self.runtime(&dir.join("exe")) {
            attributes.push(("process.runtime.name".into(), AttrValue::from(rt.name.to_owned())));
            if let Some(version) = rt.version {
                attributes.push(("process.runtime.version".into(), AttrValue::from(version)));
            }
        }
        let cgroup = std::fs::read(dir.join("cgroup"))
            .map(|b| container::parse(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        if let Some(id) = &cgroup.container_id {
            attributes.push(("container.id".into(), AttrValue::from(id.as_str())));
        }
        if let Some(uid) = &cgroup.pod_uid {
            attributes.push(("k8s.pod.uid".into(), AttrValue::from(uid.as_str())));
        }
        let mut r = Resource { pid, service_name, attributes };
        if let Some(pods) = &self.pods {
            // Only a pod uid says the process belongs to a pod of this node that the
            // index will describe; a container alone (Docker, Podman) is looked up once.
            if !describe_pod(pods, &mut r, &cgroup, named) && cgroup.pod_uid.is_some() {
                if self.waiting.len() >= MAX_PROCESSES && !self.waiting.contains_key(&pid) {
                    evict_one(&mut self.waiting);
                }
                self.waiting.insert(pid, Waiting { cgroup, named });
            }
        }
        Some(r)
    }
}

/// Adds what `pods` knows of the process's pod to `r`: the pod's names and, unless the
/// process is `named` by itself, `service.name` from its workload. Whether the pod and
/// (if the cgroup names one) the container were found.
fn describe_pod(pods: &PodIndex, r: &mut Resource, cgroup: &CgroupIdentity, named: bool) -> bool {
    let container_id = cgroup.container_id.as_deref();
    let meta = match (&cgroup.pod_uid, container_id) {
        (Some(uid), _) => pods.get(uid),
        (None, Some(id)) => pods.by_container(id),
        (None, None) => return true,
    };
    let Some(meta) = meta else { return false };
    r.attributes.extend(meta.attributes(container_id));
    if !named {
        if let Some(name) = meta.service_name() {
            name.clone_into(&mut r.service_name);
            for (k, v) in &mut r.attributes {
                if k == "service.name" {
                    *v = AttrValue::from(name);
                }
            }
        }
    }
    container_id.is_none_or(|c| meta.container_name(c).is_some())
}

/// Makes room for one entry in a full cache: drops one (whichever the map yields first;
/// an entry dropped is read again when needed).
fn evict_one<K: Copy + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if let Some(k) = map.keys().next().copied() {
        map.remove(&k);
    }
}

/// Whether `file` is a Go executable, and which Go built it. Go's goroutines move
/// between OS threads, so the linker must not read anything into which thread did what
/// in such a process.
///
/// Reads only the ELF header, the section table and its names, and the start of
/// `.go.buildinfo`, through `object`'s `ReadCache` (a few KB of a many-MB binary; no
/// memory map, see `capture::tls_libs`). The Go linker writes `.go.buildinfo` (and
/// `.note.go.buildid`) into every executable, `strip` keeps both. Not ELF, or a
/// malformed one: `None`.
#[must_use]
pub fn go_runtime(file: File) -> Option<Runtime> {
    let data = ReadCache::new(file);
    match FileKind::parse(&data).ok()? {
        FileKind::Elf64 => go_runtime_in::<object::elf::FileHeader64<Endianness>, _>(&data),
        FileKind::Elf32 => go_runtime_in::<object::elf::FileHeader32<Endianness>, _>(&data),
        _ => None,
    }
}

fn go_runtime_in<'data, Elf: FileHeader<Endian = Endianness>, R: ReadRef<'data>>(data: R) -> Option<Runtime> {
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    // The section names in one read (`object` would read each name on its own).
    let index = header.shstrndx(endian, data).ok()?;
    let strtab = sections.section(object::SectionIndex(index as usize)).ok()?;
    let names =
        data.read_bytes_at(strtab.sh_offset(endian).into(), strtab.sh_size(endian).into().min(MAX_NAMES)).ok()?;
    let names = object::read::StringTable::new(names, 0, names.len() as u64);
    let mut go = false;
    let mut version = None;
    for section in sections.iter() {
        let Ok(name) = section.name(endian, names) else { continue };
        if name == b".note.go.buildid" {
            go = true;
        } else if name == b".go.buildinfo" {
            go = true;
            let len = section.sh_size(endian).into().min(BUILDINFO_PREFIX);
            version = data.read_bytes_at(section.sh_offset(endian).into(), len).ok().and_then(buildinfo_version);
        }
    }
    go.then_some(Runtime { name: "go", version })
}

/// Bytes of section names read at most (a Go binary has about 300, a large C++ one a
/// few KB).
const MAX_NAMES: u64 = 64 * 1024;

/// Bytes of `.go.buildinfo` read: its 32-byte header and the version string after it.
const BUILDINFO_PREFIX: u64 = 32 + 1 + 64;

/// The Go version (`go1.19.8`) in the start of a `.go.buildinfo` section: the magic
/// `\xff Go buildinf:`, pointer size, flags, padding to 32 bytes, then (Go 1.18 on,
/// flag bit 1) the version as a varint-length-prefixed string. Older Go stores
/// pointers to it instead: `None`, the process still counts as Go.
fn buildinfo_version(b: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !b.starts_with(MAGIC) || b.get(15)? & 2 == 0 {
        return None;
    }
    // A one-byte varint: any version string is shorter than 128 bytes.
    let len = usize::from(*b.get(32)?);
    if len >= 0x80 {
        return None;
    }
    let v = std::str::from_utf8(b.get(33..33 + len)?).ok()?;
    (v.starts_with("go") || v.starts_with("devel")).then(|| v.to_owned())
}

/// `OTEL_SERVICE_NAME`, else `service.name` inside `OTEL_RESOURCE_ATTRIBUTES`, from a
/// NUL-separated environment block.
#[must_use]
pub fn service_name_from_environ(environ: &[u8]) -> Option<String> {
    let mut from_attrs = None;
    for var in environ.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix("OTEL_SERVICE_NAME=") {
            if !v.trim().is_empty() {
                return Some(v.trim().to_owned());
            }
        } else if let Some(v) = var.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
            from_attrs = v
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == "service.name")
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty());
        }
    }
    from_attrs
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_precedence() {
        assert_eq!(service_name_from_environ(b"A=1\0OTEL_SERVICE_NAME=shop\0"), Some("shop".into()));
        assert_eq!(
            service_name_from_environ(b"OTEL_RESOURCE_ATTRIBUTES=a=b,service.name=cart\0OTEL_SERVICE_NAME=shop\0"),
            Some("shop".into())
        );
        assert_eq!(service_name_from_environ(b"OTEL_RESOURCE_ATTRIBUTES=a=b,service.name=cart\0"), Some("cart".into()));
        assert_eq!(service_name_from_environ(b"PATH=/bin\0"), None);
    }

    #[test]
    fn own_process_resource() {
        let mut cache = ResourceCache::default();
        let r = cache.get(std::process::id(), "");
        assert_eq!(r.pid, std::process::id());
        assert!(!r.service_name.is_empty());
        let exe = r.attributes.iter().find(|(k, _)| k == "process.executable.name").map(|(_, v)| v.clone());
        assert!(matches!(exe, Some(AttrValue::Str(ref s)) if !s.is_empty()), "{exe:?}");
        // Cached: the same Arc comes back.
        assert!(Arc::ptr_eq(&r, &cache.get(std::process::id(), "")));
    }

    /// `gofmt` from golang-go is a real Go binary (stripped, as Debian ships it).
    fn gofmt() -> std::path::PathBuf {
        let dirs = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&dirs)
            .map(|d| d.join("gofmt"))
            .chain([std::path::PathBuf::from("/usr/lib/go/bin/gofmt")])
            .find(|p| p.exists())
            .expect("gofmt not found: install golang-go")
    }

    #[test]
    fn go_executables_are_detected() {
        let go = go_runtime(File::open(gofmt()).unwrap()).expect("gofmt is a Go binary");
        assert_eq!(go.name, "go");
        // The version golang-go's `go version` reports, e.g. go1.19.8.
        let version = go.version.expect("Go 1.18+ buildinfo carries its version");
        assert!(version.starts_with("go1.") && version.len() > 4, "{version}");
        for not_go in ["/bin/true", "/bin/sh", "/etc/hostname"] {
            assert_eq!(go_runtime(File::open(not_go).unwrap()), None, "{not_go}");
        }
    }

    #[test]
    fn buildinfo_versions() {
        let mut b = b"\xff Go buildinf:\x08\x02".to_vec();
        b.resize(32, 0);
        b.push(8);
        b.extend_from_slice(b"go1.21.5\x20\x00");
        assert_eq!(buildinfo_version(&b).as_deref(), Some("go1.21.5"));
        // Pre-1.18 (pointers, not inline strings), cut short, or not buildinfo at all.
        let mut old = b.clone();
        old[15] = 0;
        assert_eq!(buildinfo_version(&old), None);
        assert_eq!(buildinfo_version(&b[..36]), None);
        assert_eq!(buildinfo_version(&b[1..]), None);
    }

    #[test]
    fn a_go_process_says_so_in_its_resource() {
        // A fake /proc whose entry's `exe` leads to gofmt; another's to /bin/true.
        let root = std::env::temp_dir().join(format!("ghostwire-proc-go-{}", std::process::id()));
        for (pid, exe) in [("20", gofmt()), ("21", "/bin/true".into()), ("22", gofmt())] {
            let dir = root.join(pid);
            std::fs::create_dir_all(&dir).unwrap();
            let _ = std::fs::remove_file(dir.join("exe"));
            std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
            std::fs::write(dir.join("cmdline"), b"x\0").unwrap();
        }
        let mut cache = ResourceCache::new(&root);
        let go = cache.get(20, "");
        assert!(go.is_go(), "{:?}", go.attributes);
        assert!(!cache.get(21, "").is_go());
        // The second process of the same executable comes from the cache.
        assert!(cache.get(22, "").is_go());
        assert_eq!(cache.runtimes.len(), 2);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_full_cache_makes_room_for_one_not_all() {
        let mut cache = ResourceCache::new("/nonexistent-proc");
        for pid in 0..MAX_PROCESSES as u32 {
            cache.get(pid, "p");
        }
        assert_eq!(cache.by_pid.len(), MAX_PROCESSES);
        let next = cache.get(u32::MAX, "late");
        assert_eq!(next.service_name, "late");
        assert_eq!(cache.by_pid.len(), MAX_PROCESSES, "one entry made room");
        assert!(cache.by_pid.contains_key(&u32::MAX));
        // A hit changes nothing.
        cache.get(u32::MAX, "late");
        assert_eq!(cache.by_pid.len(), MAX_PROCESSES);
    }

    /// A fake /proc entry in a kubelet/containerd cgroup.
    fn pod_process(root: &Path, pid: u32, environ: &[u8], cgroup: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("comm"), "python3\n").unwrap();
        std::fs::write(dir.join("cmdline"), b"python3\0app.py\0").unwrap();
        std::fs::write(dir.join("environ"), environ).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
    }

    #[test]
    fn processes_in_pods_get_their_ids_then_their_names() {
        use crate::span::pods::{PodIndex, PodMeta, Workload};
        let cid = "3f1a5ad9c2b84e0f7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170a";
        let uid = "8d6c1f2e-4b3a-4c5d-9e8f-7a6b5c4d3e2f";
        let cgroup = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope\n",
            uid.replace('-', "_")
        );
        let root = std::env::temp_dir().join(format!("ghostwire-proc-pod-{}", std::process::id()));
        pod_process(&root, 30, b"PATH=/bin\0", &cgroup);
        pod_process(&root, 31, b"OTEL_SERVICE_NAME=billing\0", &cgroup);
        let pods = Arc::new(PodIndex::new());
        let mut cache = ResourceCache::new(&root);
        cache.set_pods(Arc::clone(&pods));
        let attr = |r: &Resource, k: &str| r.attributes.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        // Before the API described the pod: the cgroup's ids, the executable's name.
        let early = cache.get(30, "");
        assert_eq!(attr(&early, "container.id"), Some(AttrValue::from(cid)));
        assert_eq!(attr(&early, "k8s.pod.uid"), Some(AttrValue::from(uid)));
        assert_eq!(attr(&early, "k8s.pod.name"), None);
        assert_eq!(early.service_name, "python3");
        assert!(Arc::ptr_eq(&early, &cache.get(30, "")), "nothing changed: the same resource");
        let named = cache.get(31, "");
        // The pod arrives: the waiting processes are described again.
        pods.upsert(PodMeta {
            uid: uid.into(),
            name: "checkout-7d9f8b6c5d-x2k4q".into(),
            namespace: "shop".into(),
            node: Some("node-a".into()),
            workload: Some(Workload::Deployment {
                deployment: "checkout".into(),
                replicaset: "checkout-7d9f8b6c5d".into(),
            }),
            service_name: None,
            containers: vec![(cid.into(), "app".into())],
        });
        let late = cache.get(30, "");
        assert_eq!(late.service_name, "checkout");
        assert_eq!(attr(&late, "service.name"), Some(AttrValue::from("checkout")));
        assert_eq!(attr(&late, "k8s.pod.name"), Some(AttrValue::from("checkout-7d9f8b6c5d-x2k4q")));
        assert_eq!(attr(&late, "k8s.container.name"), Some(AttrValue::from("app")));
        assert_eq!(attr(&late, "k8s.deployment.name"), Some(AttrValue::from("checkout")));
        assert_eq!(attr(&late, "container.id"), Some(AttrValue::from(cid)));
        assert_eq!(late.attributes.iter().filter(|(k, _)| k == "k8s.pod.name").count(), 1);
        // OTEL_SERVICE_NAME wins over the workload.
        let named_late = cache.get(31, "");
        assert!(!Arc::ptr_eq(&named, &named_late));
        assert_eq!(named_late.service_name, "billing");
        assert_eq!(attr(&named_late, "k8s.namespace.name"), Some(AttrValue::from("shop")));
        assert!(cache.waiting.is_empty(), "both are complete");
        // A process read after the pod is described at once.
        pod_process(&root, 32, b"", &cgroup);
        assert_eq!(cache.get(32, "").service_name, "checkout");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_process_already_gone_is_named_by_its_comm() {
        let mut cache = ResourceCache::new("/nonexistent-proc");
        let r = cache.get(7, "curl");
        assert_eq!(r.service_name, "curl");
        assert_eq!(
            r.attributes.iter().find(|(k, _)| k == "process.pid").map(|(_, v)| v.clone()),
            Some(AttrValue::Int(7))
        );
    }

    #[test]
    fn a_forked_child_already_gone_is_described_as_its_parent() {
        // A fake /proc: the parent (pid 10, "python3", OTEL_SERVICE_NAME=shop) is there;
        // its child (pid 11) is gone.
        let root = std::env::temp_dir().join(format!("ghostwire-proc-{}", std::process::id()));
        let parent = root.join("10");
        std::fs::create_dir_all(&parent).unwrap();
        std::fs::write(parent.join("comm"), "python3\n").unwrap();
        std::fs::write(parent.join("environ"), b"A=1\0OTEL_SERVICE_NAME=shop\0").unwrap();
        let mut cache = ResourceCache::new(&root);
        let child = cache.get_with_parent(11, "python3", 10);
        assert_eq!((child.pid, child.service_name.as_str()), (11, "shop"));
        let pid = child.attributes.iter().find(|(k, _)| k == "process.pid").map(|(_, v)| v.clone());
        assert_eq!(pid, Some(AttrValue::Int(11)));
        // A child that exec'd something else is not its parent.
        assert_eq!(cache.get_with_parent(12, "curl", 10).service_name, "curl");
        // A child that exited but is not reaped yet (a zombie): its entry has a name and
        // nothing else.
        let zombie = root.join("13");
        std::fs::create_dir_all(&zombie).unwrap();
        std::fs::write(zombie.join("comm"), "python3\n").unwrap();
        std::fs::write(zombie.join("environ"), b"").unwrap();
        assert_eq!(cache.get_with_parent(13, "python3", 10).service_name, "shop");
        let _ = std::fs::remove_dir_all(&root);
    }
}
