//! Per-process resources (`service.name`, `process.*`, `host.name`), read from `/proc`
//! once per process — when its first connection is announced, not per event — and
//! forgotten when it exits.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::model::{AttrValue, Attribute, Resource};

pub struct ResourceCache {
    proc_root: std::path::PathBuf,
    host_name: String,
    by_pid: HashMap<u32, Arc<Resource>>,
}

/// Most processes of a node fit; beyond it the oldest-looked-up entries are not kept and
/// are simply read again.
const MAX_PROCESSES: usize = 16_384;

impl Default for ResourceCache {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ResourceCache {
    #[must_use]
    pub fn new(proc_root: impl Into<std::path::PathBuf>) -> Self {
        Self { proc_root: proc_root.into(), host_name: host_name(), by_pid: HashMap::new() }
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
        if self.by_pid.len() >= MAX_PROCESSES {
            self.by_pid.clear();
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
            attributes.push(("process.executable.name".into(), AttrValue::Str(comm.to_owned())));
        }
        Resource { pid, service_name, attributes }
    }

    fn common(&self, service_name: &str, pid: u32) -> Vec<Attribute> {
        vec![
            ("service.name".into(), AttrValue::Str(service_name.to_owned())),
            ("process.pid".into(), AttrValue::Int(i64::from(pid))),
            ("host.name".into(), AttrValue::Str(self.host_name.clone())),
            ("telemetry.sdk.name".into(), AttrValue::Str("ghostwire".into())),
            ("telemetry.sdk.version".into(), AttrValue::Str(env!("CARGO_PKG_VERSION").into())),
        ]
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// `None` when the process's `/proc` entry is gone.
    fn read(&self, pid: u32, comm: &str) -> Option<Resource> {
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
        let service_name = match env_name {
            Some(name) => name,
            None if !exe_name.is_empty() => exe_name.clone(),
            None => format!("unknown_service:{pid}"),
        };
        let mut attributes = self.common(&service_name, pid);
        if !exe_name.is_empty() {
            attributes.push(("process.executable.name".into(), AttrValue::Str(exe_name)));
        }
        if let Some(path) = exe_path {
            attributes.push(("process.executable.path".into(), AttrValue::Str(path.to_string_lossy().into_owned())));
        }
        if !cmdline.is_empty() {
            attributes.push(("process.command_line".into(), AttrValue::Str(cmdline)));
        }
        Some(Resource { pid, service_name, attributes })
    }
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
