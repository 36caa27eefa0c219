//! Host checks before loading anything, each failing with one line that says what is
//! wrong and how to fix it.
//!
//! Capabilities (measured on Linux 6.18, see the README's "Least privilege"): the agent
//! needs CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_NET_ADMIN;
//! CAP_SYS_ADMIN only to mount tracefs when it is not mounted, and for the OpenSSL
//! uprobes (Linux 6.16 and later refuse uprobes without it). CAP_SYS_RESOURCE is never
//! needed: kernels since 5.11 charge BPF memory to the memory cgroup, not to
//! RLIMIT_MEMLOCK.
use std::ffi::CStr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{}", missing_message(.missing))]
    Capabilities { missing: Vec<Cap> },
    #[error("kernel BTF not found at /sys/kernel/btf/vmlinux: ghostwire needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.8); in a container, mount the host's /sys")]
    NoBtf,
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({source}): mount it on the host with `mount -t tracefs nodev /sys/kernel/tracing`, or give the container CAP_SYS_ADMIN and the host's /sys")]
    Tracefs {
        #[source]
        source: std::io::Error,
    },
}

/// A capability the agent may need: its bit, its name, and what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub bit: u32,
    pub name: &'static str,
    pub purpose: &'static str,
}

pub const CAP_DAC_READ_SEARCH: Cap =
    Cap { bit: 2, name: "CAP_DAC_READ_SEARCH", purpose: "reads /sys/kernel/tracing and other users' /proc files" };
pub const CAP_NET_ADMIN: Cap =
    Cap { bit: 12, name: "CAP_NET_ADMIN", purpose: "asks conntrack (netlink) how Service NAT translated a connection" };
pub const CAP_SYS_PTRACE: Cap = Cap {
    bit: 19,
    name: "CAP_SYS_PTRACE",
    purpose: "reads other processes' /proc/PID/exe, maps, environ and root, to name services and find their OpenSSL",
};
pub const CAP_SYS_ADMIN: Cap = Cap {
    bit: 21,
    name: "CAP_SYS_ADMIN",
    purpose: "mounts tracefs, which is not mounted at /sys/kernel/tracing; or mount it on the host first",
};
pub const CAP_PERFMON: Cap =
    Cap { bit: 38, name: "CAP_PERFMON", purpose: "loads the tracing programs and attaches the tracepoints" };
pub const CAP_BPF: Cap = Cap { bit: 39, name: "CAP_BPF", purpose: "creates the eBPF maps and loads the programs" };

/// The capabilities the agent always needs, in the order they are reported.
pub const REQUIRED: [Cap; 5] = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_NET_ADMIN];

fn missing_message(missing: &[Cap]) -> String {
    let what: Vec<String> = missing.iter().map(|c| format!("{} ({})", c.name, c.purpose)).collect();
    let word = if missing.len() == 1 { "capability" } else { "capabilities" };
    let names: Vec<&str> = missing.iter().map(|c| c.name.trim_start_matches("CAP_")).collect();
    format!(
        "missing {word} {}: add {} to the container's securityContext.capabilities.add, or run ghostwire as root",
        what.join(", "),
        names.join(", ")
    )
}

fn has(caps: u64, cap: Cap) -> bool {
    caps & (1 << cap.bit) != 0
}

/// The capabilities missing from the effective set `caps`: the five always needed, and
/// CAP_SYS_ADMIN when tracefs is not mounted (the agent must mount it).
#[must_use]
pub fn missing_caps(caps: u64, tracefs_mounted: bool) -> Vec<Cap> {
    let mut missing: Vec<Cap> = REQUIRED.into_iter().filter(|c| !has(caps, *c)).collect();
    if !tracefs_mounted && !has(caps, CAP_SYS_ADMIN) {
        missing.push(CAP_SYS_ADMIN);
    }
    missing
}

/// Whether the OpenSSL uprobes can be attached with `caps`: Linux 6.16 and later (and
/// the stable kernels the change went to) require CAP_SYS_ADMIN for uprobes
/// (commit ba677dbe77af, "perf: Revert to requiring CAP_SYS_ADMIN for uprobes").
#[must_use]
pub fn uprobes_permitted(caps: u64) -> bool {
    has(caps, CAP_SYS_ADMIN)
}

/// Effective capability bits of this process.
#[must_use]
pub fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

pub fn check() -> Result<(), PreflightError> {
    if let Some(caps) = effective_caps() {
        let missing = missing_caps(caps, tracefs_mounted());
        if !missing.is_empty() {
            return Err(PreflightError::Capabilities { missing });
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Whether tracefs is reachable at /sys/kernel/tracing (or through debugfs at
/// /sys/kernel/debug/tracing). Read from /proc/self/mounts: /sys/kernel/tracing is mode
/// 0700, so a look inside it would say "absent" to a process without the right to.
fn tracefs_mounted() -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Path::new("/sys/kernel/tracing/events").is_dir();
    };
    tracefs_in_mounts(&mounts)
}

fn tracefs_in_mounts(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next(), f.next(), f.next());
        matches!(
            (point, fstype),
            (Some("/sys/kernel/tracing"), Some("tracefs")) | (Some("/sys/kernel/debug/tracing"), Some("tracefs"))
        )
    })
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is reachable (aya attaches
/// tracepoints through it).
pub fn ensure_tracefs() -> Result<(), PreflightError> {
    if tracefs_mounted() {
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

/// Older kernels charge BPF memory to RLIMIT_MEMLOCK; since 5.11 it goes to the memory
/// cgroup (ghostwire needs 6.3 or newer). Raising the limit fails without
/// CAP_SYS_RESOURCE, which is harmless there: logged at debug level only.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Cap]) -> u64 {
        caps.iter().fold(0, |acc, c| acc | (1 << c.bit))
    }

    /// `CapEff` of `setpriv --inh-caps=-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search,+net_admin`
    /// as root with the same bounding set, read from /proc/PID/status.
    const FIVE_MEASURED: u64 = 0x0000_00c0_0008_1004;

    #[test]
    fn the_five_are_enough_when_tracefs_is_mounted() {
        assert_eq!(set(&REQUIRED), FIVE_MEASURED);
        assert_eq!(missing_caps(FIVE_MEASURED, true), Vec::<Cap>::new());
        // Full root: nothing missing, mounted or not.
        assert!(missing_caps(0x1ff_ffff_ffff, false).is_empty());
    }

    #[test]
    fn sys_admin_is_needed_only_to_mount_tracefs() {
        assert_eq!(missing_caps(FIVE_MEASURED, false), vec![CAP_SYS_ADMIN]);
        assert!(missing_caps(FIVE_MEASURED | set(&[CAP_SYS_ADMIN]), false).is_empty());
    }

    #[test]
    fn each_missing_capability_is_named_alone() {
        for cap in REQUIRED {
            let caps = FIVE_MEASURED & !(1 << cap.bit);
            assert_eq!(missing_caps(caps, true), vec![cap], "{}", cap.name);
            // CAP_SYS_ADMIN does not stand in for the others in this check: the kernel
            // would accept it for BPF and PERFMON, but the agent asks for the documented set.
            assert_eq!(missing_caps(caps | set(&[CAP_SYS_ADMIN]), true), vec![cap], "{}", cap.name);
        }
        assert_eq!(missing_caps(0, true), REQUIRED.to_vec());
        assert_eq!(missing_caps(0, false).last(), Some(&CAP_SYS_ADMIN));
    }

    #[test]
    fn the_error_is_one_line_naming_each_missing_cap_and_the_fix() {
        let e = PreflightError::Capabilities { missing: missing_caps(FIVE_MEASURED & !(1 << CAP_NET_ADMIN.bit), true) };
        let line = e.to_string();
        assert_eq!(
            line,
            "missing capability CAP_NET_ADMIN (asks conntrack (netlink) how Service NAT translated a connection): \
             add NET_ADMIN to the container's securityContext.capabilities.add, or run ghostwire as root"
        );
        let e = PreflightError::Capabilities { missing: missing_caps(0, false) };
        let line = e.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("missing capabilities CAP_BPF ("), "{line}");
        assert!(line.contains("add BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH, NET_ADMIN, SYS_ADMIN to"), "{line}");
    }

    #[test]
    fn uprobes_need_sys_admin() {
        assert!(!uprobes_permitted(FIVE_MEASURED));
        assert!(uprobes_permitted(FIVE_MEASURED | set(&[CAP_SYS_ADMIN])));
    }

    #[test]
    fn tracefs_is_found_in_the_mount_table() {
        assert!(tracefs_in_mounts("sysfs /sys sysfs rw 0 0\nnodev /sys/kernel/tracing tracefs rw,relatime 0 0\n"));
        assert!(tracefs_in_mounts("tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n"));
        assert!(!tracefs_in_mounts("sysfs /sys sysfs rw 0 0\ndebugfs /sys/kernel/debug debugfs rw 0 0\n"));
        assert!(!tracefs_in_mounts(""));
    }
}
