//! Kernel struct offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The kernel programs read a few fields of `struct sock`, `struct net`,
//! `struct task_struct` and `struct pt_regs`. aya has no compiler CO-RE, so their
//! offsets are looked up here once at start-up and handed to the programs in the
//! `CONFIG` map. Each field is also checked for the width the programs read.
use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation};
use ghostwire_common::KernelOffsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse kernel BTF at {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("kernel BTF has no usable `{field}` ({reason}): this kernel's layout is not supported (ghostwire needs Linux 6.3 or newer)")]
    Field { field: &'static str, reason: String },
}

/// BTF held in memory: btfparse reads it in many small pieces.
struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(buffer.len());
        match self.0.get(start..end) {
            Some(src) => {
                buffer.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
        }
    }
}

/// The fields the programs read, resolved in the kernel at `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| BtfError::Read { path: shown.clone(), source })?;
    let types =
        TypeInformation::new(&Bytes(bytes)).map_err(|e| BtfError::Parse { path: shown, reason: format!("{e:?}") })?;
    let f = |field: &'static str, width: usize| offset(&types, field, width);
    let regs = arch::REGS;
    let offsets = KernelOffsets {
        skc_daddr: f("sock.__sk_common.skc_daddr", 4)?,
        skc_rcv_saddr: f("sock.__sk_common.skc_rcv_saddr", 4)?,
        skc_dport: f("sock.__sk_common.skc_dport", 2)?,
        skc_num: f("sock.__sk_common.skc_num", 2)?,
        skc_family: f("sock.__sk_common.skc_family", 2)?,
        skc_state: f("sock.__sk_common.skc_state", 1)?,
        skc_v6_daddr: f("sock.__sk_common.skc_v6_daddr", 16)?,
        skc_v6_rcv_saddr: f("sock.__sk_common.skc_v6_rcv_saddr", 16)?,
        skc_net: f("sock.__sk_common.skc_net", 8)?,
        sk_protocol: f("sock.sk_protocol", 2)?,
        sk_type: f("sock.sk_type", 2)?,
        net_inum: f("net.ns.inum", 4)?,
        tcp_copied_seq: f("tcp_sock.copied_seq", 4)?,
        tcp_write_seq: f("tcp_sock.write_seq", 4)?,
        task_flags: f("task_struct.flags", 4)?,
        task_real_parent: f("task_struct.real_parent", 8)?,
        task_tgid: f("task_struct.tgid", 4)?,
        regs_nr: f(regs[0], 8)?,
        regs_arg: [f(regs[1], 8)?, f(regs[2], 8)?, f(regs[3], 8)?],
        _pad: 0,
    };
    // The programs load the registers at constant offsets (no helper call per load).
    let expected = [arch::NR, arch::ARGS[0], arch::ARGS[1], arch::ARGS[2]];
    let found = [offsets.regs_nr, offsets.regs_arg[0], offsets.regs_arg[1], offsets.regs_arg[2]];
    if found != expected {
        return Err(BtfError::Field {
            field: "pt_regs",
            reason: format!("syscall registers at offsets {found:?}, {expected:?} expected"),
        });
    }
    Ok(offsets)
}

/// Byte offset of `type.path.to.field`, which must be `width` bytes wide and fit the
/// programs' 16-bit offsets.
fn offset(types: &TypeInformation, field: &'static str, width: usize) -> Result<u16, BtfError> {
    let bad = |reason: String| BtfError::Field { field, reason };
    let (ty, path) = field.split_once('.').ok_or_else(|| bad("malformed field path".into()))?;
    let id = types.id_of(ty).ok_or_else(|| bad(format!("no type `{ty}`")))?;
    let (member_type, off) = types.offset_of(id, path).map_err(|e| bad(format!("{e:?}")))?;
    let Offset::ByteOffset(off) = off else {
        return Err(bad("a bitfield".into()));
    };
    let size = types.size_of(member_type).map_err(|e| bad(format!("{e:?}")))?;
    if size != width {
        return Err(bad(format!("{size} bytes wide, {width} expected")));
    }
    u16::try_from(off).map_err(|_| bad(format!("offset {off} too large")))
}

/// Where the running syscall's number and first arguments are saved.
mod arch {
    #[cfg(target_arch = "x86_64")]
    pub const REGS: [&str; 4] = ["pt_regs.orig_ax", "pt_regs.di", "pt_regs.si", "pt_regs.dx"];
    #[cfg(target_arch = "x86_64")]
    pub use ghostwire_common::x86_64::PT_REGS_ORIG_AX as NR;
    #[cfg(target_arch = "x86_64")]
    pub const ARGS: [u16; 3] = [
        ghostwire_common::x86_64::PT_REGS_DI,
        ghostwire_common::x86_64::PT_REGS_SI,
        ghostwire_common::x86_64::PT_REGS_DX,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    compile_error!(
        "ghostwire reads syscall arguments from x86_64 `struct pt_regs`; other architectures are not supported yet"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves against this machine's kernel when it has BTF (every supported one does).
    #[test]
    fn resolves_the_running_kernel() {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            assert!(std::env::var_os("CI").is_none(), "CI machines have kernel BTF at {VMLINUX}");
            return;
        }
        let o = kernel_offsets(path).expect("offsets");
        // sock_common's first fields have not moved in a decade.
        assert_eq!((o.skc_daddr, o.skc_rcv_saddr, o.skc_dport, o.skc_num, o.skc_family), (0, 4, 12, 14, 16));
        assert!(o.sk_protocol > o.skc_v6_rcv_saddr);
        assert_ne!(o.regs_arg[1], o.regs_arg[2]);
    }

    #[test]
    fn missing_fields_name_the_field() {
        let e = BtfError::Field { field: "sock.sk_protocol", reason: "a bitfield".into() };
        assert!(e.to_string().contains("sock.sk_protocol") && e.to_string().contains("6.3"));
    }
}
