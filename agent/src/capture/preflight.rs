//! Host checks before loading anything, each failing with one line that says what is
//! wrong and how to fix it.
use std::ffi::CStr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("missing capabilities {missing}: run ghostwire as root (sudo -E ghostwire ...) or, in Kubernetes, as a privileged DaemonSet container")]
    Capabilities { missing: String },
    #[error("kernel BTF not found at /sys/kernel/btf/vmlinux: ghostwire needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.8); in a container, mount the host's /sys")]
    NoBtf,
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({source}): mount it on the host with `mount -t tracefs nodev /sys/kernel/tracing`, or give the container CAP_SYS_ADMIN and the host's /sys")]
    Tracefs {
        #[source]
        source: std::io::Error,
    },
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability bits of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

pub fn check() -> Result<(), PreflightError> {
    if let Some(caps) = effective_caps() {
        let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
            .iter()
            .filter(|(bit, _)| caps & (1 << bit) == 0)
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(PreflightError::Capabilities { missing: missing.join(", ") });
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is reachable (aya attaches
/// tracepoints through it).
pub fn ensure_tracefs() -> Result<(), PreflightError> {
    if Path::new("/sys/kernel/tracing/events").is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(());
    }
    const SOURCE: &CStr = c"nodev";
    const TARGET: &CStr = c"/sys/kernel/tracing";
    const FSTYPE: &CStr = c"tracefs";
    // SAFETY: valid NUL-terminated strings, no data argument.
    let ret = unsafe { libc::mount(SOURCE.as_ptr(), TARGET.as_ptr(), FSTYPE.as_ptr(), 0, std::ptr::null()) };
    if ret != 0 {
        return Err(PreflightError::Tracefs { source: std::io::Error::last_os_error() });
    }
    log::info!("tracefs was not mounted: mounted it at {TRACEFS}");
    Ok(())
}

/// Older kernels charge BPF memory to RLIMIT_MEMLOCK; newer ones to the memory cgroup.
/// Raising the limit can fail without CAP_SYS_RESOURCE, which is harmless on the latter.
pub fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed ({}); fine on kernels that account BPF memory to the cgroup",
            std::io::Error::last_os_error()
        );
    }
}
