//! Which files carry OpenSSL, and attaching the TLS uprobes to each of them once.
//!
//! A uprobe lives on an inode: attached to one file, it fires in every process that maps
//! that file, whatever path the process used. So discovery thinks in files, not
//! processes: a process is looked at only to learn which files it maps, each file is
//! identified by `(st_dev, st_ino)` and decided once.
//!
//! Two kinds of file carry OpenSSL:
//! - a mapped `libssl.so.*` (`libssl.so.3`, `libssl.so.1.1`; not NSS's `libssl3.so`);
//! - the process's executable when it links OpenSSL statically and exports `SSL_read`
//!   and `SSL_write` in its dynamic symbol table (Node.js does).
//!
//! Paths are taken as the process sees them, through `/proc/PID/root/`, so a container's
//! own libssl is found and attached, not the host's.
//!
//! When: the host's own libssl files at start-up (a process started later is then
//! traced from its very first `SSL_*` call), then every process; after an exec, the new
//! image a few times (ld.so maps libraries after exec returns, Python dlopens libssl on
//! `import ssl`); and every process again, slowly, for libraries loaded late. All of it
//! runs on a thread of its own ([`Worker`]): `/proc` and ELF reads never stall the
//! ring-buffer drain.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt::Display;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use object::elf::{FileHeader64, SHN_LORESERVE, SHN_UNDEF, SHT_DYNSYM, STT_FUNC, STT_GNU_IFUNC};
use object::read::elf::{FileHeader as _, SectionHeader as _, SectionTable, Sym as _, SymbolTable, VersionTable};
use object::read::{ReadCache, ReadRef};
use object::{Endianness, FileKind};

use super::Capture;
use crate::stats::{self, Counter};

/// Files attached (or tried) at most: bounds the probes and the kernel's uprobe work.
pub const MAX_FILES: usize = 64;
/// Executables remembered as "no OpenSSL here"; beyond it they are re-checked.
const MAX_VERDICTS: usize = 8192;
/// `(pid, file)` pairs remembered, so a process is counted as sharing a file once.
const MAX_SEEN: usize = 65_536;
/// When a process is looked at again after its exec: ld.so maps the libraries within
/// milliseconds; a program may dlopen libssl later (Python on `import ssl`).
pub const EXEC_RESCANS: [Duration; 4] =
    [Duration::ZERO, Duration::from_millis(20), Duration::from_millis(200), Duration::from_secs(2)];
/// How often every process is looked at again (libraries loaded late by long-running
/// processes, and exec notifications that did not fit the queue).
pub const FULL_RESCAN: Duration = Duration::from_secs(30);
/// Exec notifications queued between the pipeline and the worker.
const EXEC_QUEUE: usize = 1024;
/// Rescans waiting for their time; beyond it a full rescan replaces them.
const MAX_PENDING: usize = 4096;
/// Directories searched for the host's own libssl at start-up.
const HOST_LIB_DIRS: &[&str] = &[
    "/usr/lib/{arch}-linux-gnu",
    "/lib/{arch}-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
];
/// The process name shown for the host's own libraries (found before any process).
const HOST: &str = "(host)";

/// A file as the kernel knows it. Two paths to one inode (merged /usr: `/lib` →
/// `/usr/lib`) are one file, and one set of probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity of the file `path` leads to (symlinks followed, like the kernel's
    /// uprobe path lookup).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self { dev: m.dev(), ino: m.ino() })
    }
}

/// The distinct `libssl.so.*` files in the text of `/proc/PID/maps`, in order of
/// appearance. Deleted files (replaced on disk since they were mapped) are left out:
/// their path now leads to another file.
#[must_use]
pub fn libssl_mappings(maps: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for path in maps.lines().filter_map(mapped_path) {
        if is_libssl(path) && !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

/// The pathname of one maps line (`address perms offset dev inode pathname`), if it
/// maps a file. The pathname may contain spaces.
fn mapped_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace)?..];
    }
    let path = rest.trim_start();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// OpenSSL's libssl: `libssl.so` or `libssl.so.<version>`. NSS's `libssl3.so` exports
/// other functions and is not one.
#[must_use]
pub fn is_libssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_prefix("libssl.so").is_some_and(|v| v.is_empty() || v.starts_with('.'))
}

/// Why an executable could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a readable ELF file: {0}")]
    Parse(#[from] object::read::Error),
}

/// Whether `path` is a 64-bit ELF file whose dynamic symbol table defines both
/// `SSL_read` and `SSL_write` (what [`Capture::attach_tls`] needs).
///
/// Reads only what the answer needs, through `object`'s `ReadCache` over the open
/// file: the ELF and section headers, `.dynsym`, the hash table and a few names —
/// about 2.3 MB of Node's 100 MB. Not a memory map: a file truncated under a map
/// raises SIGBUS in the agent, a read just fails. (`object` is already built for aya
/// with these features.)
pub fn exports_openssl(path: &Path) -> Result<bool, ElfError> {
    Ok(function_offsets(path, &["SSL_read", "SSL_write"])?.iter().all(Option::is_some))
}

/// The file offsets (what a uprobe is attached at) of the functions `names` that
/// `path`'s dynamic symbol table defines; `None` for each it does not (and for all when
/// the file is not a 64-bit ELF). One hash lookup per name: for Node, about 4 ms in
/// all, where resolving each symbol by a scan of the whole table takes ~50 ms.
pub fn function_offsets(path: &Path, names: &[&str]) -> Result<Vec<Option<u64>>, ElfError> {
    let mut out = vec![None; names.len()];
    let data = ReadCache::new(File::open(path)?);
    // Not ELF (too short, a script's interpreter is the exe anyway) or 32-bit.
    if !matches!(FileKind::parse(&data), Ok(FileKind::Elf64)) {
        return Ok(out);
    }
    let header = FileHeader64::<Endianness>::parse(&data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, &data)?;
    let symbols = sections.symbols(endian, &data, SHT_DYNSYM)?;
    if symbols.is_empty() {
        return Ok(out);
    }
    let lookup = Lookup::new(endian, &sections, &data);
    for (slot, name) in out.iter_mut().zip(names) {
        let Some(sym) = lookup.function(&symbols, name.as_bytes()) else { continue };
        // Virtual address → file offset through the containing section, as the kernel
        // wants it (and as aya computes it for a symbol name).
        let Ok(section) = sections.section(object::SectionIndex(usize::from(sym.st_shndx(endian)))) else { continue };
        let (value, addr, offset) = (sym.st_value(endian), section.sh_addr(endian), section.sh_offset(endian));
        *slot = value.checked_sub(addr).and_then(|d| d.checked_add(offset));
    }
    Ok(out)
}

/// How names are found in one file's dynamic symbol table: through its hash table
/// (a few entries read) or, lacking one, a bounded linear scan.
struct Lookup<'data> {
    endian: Endianness,
    table: HashKind<'data>,
}

enum HashKind<'data> {
    Gnu(object::read::elf::GnuHashTable<'data, FileHeader64<Endianness>>),
    SysV(object::read::elf::HashTable<'data, FileHeader64<Endianness>>),
    Linear,
}

impl<'data> Lookup<'data> {
    fn new<R: ReadRef<'data>>(
        endian: Endianness,
        sections: &SectionTable<'data, FileHeader64<Endianness>, R>,
        data: R,
    ) -> Self {
        let table = if let Ok(Some((t, _))) = sections.gnu_hash(endian, data) {
            HashKind::Gnu(t)
        } else if let Ok(Some((t, _))) = sections.hash(endian, data) {
            HashKind::SysV(t)
        } else {
            HashKind::Linear
        };
        Self { endian, table }
    }

    /// `name`'s symbol when it is a function defined in this file (not an import).
    fn function<R: ReadRef<'data>>(
        &self,
        symbols: &SymbolTable<'data, FileHeader64<Endianness>, R>,
        name: &[u8],
    ) -> Option<&'data object::elf::Sym64<Endianness>> {
        let endian = self.endian;
        let versions = VersionTable::default();
        let found = match &self.table {
            HashKind::Gnu(t) => {
                t.find(endian, name, object::elf::gnu_hash(name), None, symbols, &versions).map(|s| s.1)
            }
            HashKind::SysV(t) => t.find(endian, name, object::elf::hash(name), None, symbols, &versions).map(|s| s.1),
            // Files without a hash table are small (or odd); stop at a bound anyway.
            HashKind::Linear => symbols
                .symbols()
                .iter()
                .take(1 << 20)
                .find(|s| s.name(endian, symbols.strings()).is_ok_and(|n| n == name)),
        };
        found.filter(|s| {
            let shndx = s.st_shndx(endian);
            shndx != SHN_UNDEF && shndx < SHN_LORESERVE && matches!(s.st_type(), STT_FUNC | STT_GNU_IFUNC)
        })
    }
}

/// What was decided about one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Attached,
    /// An executable without OpenSSL's exported functions.
    NotOpenSsl,
    /// Attaching failed (counted and logged once).
    Failed,
    /// Past [`MAX_FILES`].
    OverLimit,
}

/// Which processes to look at: with `--pid` or `--exe`, only those (probing libraries
/// other processes use would slow them for nothing).
#[derive(Clone, Debug, Default)]
pub struct ScanFilter {
    pub pids: Vec<u32>,
    pub exes: Vec<String>,
}

impl ScanFilter {
    fn is_active(&self) -> bool {
        !self.pids.is_empty() || !self.exes.is_empty()
    }

    fn wants_pid(&self, pid: u32) -> bool {
        self.pids.is_empty() || self.pids.contains(&pid)
    }

    /// Matched like the kernel does: against `comm`, names cut to 15 bytes.
    fn wants_comm(&self, comm: &str) -> bool {
        self.exes.is_empty()
            || self.exes.iter().any(|e| {
                let e = e.as_bytes();
                comm.as_bytes() == &e[..e.len().min(ghostwire_common::COMM_LEN - 1)]
            })
    }
}

/// What one pass over the processes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Processes looked at (those that vanished mid-scan not included).
    pub processes: usize,
    /// Files attached during the pass.
    pub attached: usize,
    pub elapsed: Duration,
}

/// The per-file decisions and the walk over `/proc`. Pure bookkeeping around an
/// `attach` function, so it is tested without a kernel.
pub struct Discovery {
    proc: PathBuf,
    own_pid: u32,
    filter: ScanFilter,
    files: HashMap<FileId, Verdict>,
    /// Files attached so far.
    attached: usize,
    /// Files tried so far (attached or failed), bounded by [`MAX_FILES`].
    tried: usize,
    seen: HashSet<(u32, FileId)>,
}

impl Discovery {
    /// `proc`: where procfs is (`/proc`; tests use a fake tree).
    #[must_use]
    pub fn new(proc: impl Into<PathBuf>, filter: ScanFilter) -> Self {
        Self {
            proc: proc.into(),
            own_pid: std::process::id(),
            filter,
            files: HashMap::new(),
            attached: 0,
            tried: 0,
            seen: HashSet::new(),
        }
    }

    /// Files with the probes attached.
    #[must_use]
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Attaches the host's own libssl files (each inode once), so processes started
    /// later are traced from their first `SSL_*` call. Skipped under `--pid`/`--exe`.
    pub fn attach_host_libraries<E: Display>(&mut self, attach: &mut impl FnMut(&Path) -> Result<usize, E>) -> usize {
        if self.filter.is_active() {
            return 0;
        }
        let before = self.attached;
        let mut paths: Vec<PathBuf> = Vec::new();
        for dir in HOST_LIB_DIRS {
            let dir = dir.replace("{arch}", std::env::consts::ARCH);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_str().is_some_and(is_libssl))
                .collect();
            found.sort();
            paths.extend(found);
        }
        for path in paths {
            // The file itself, not the `libssl.so` dev symlink to it: that is the name
            // the log line should show. A dangling link is not a library.
            let Ok(path) = std::fs::canonicalize(&path) else { continue };
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if !meta.is_file() {
                continue;
            }
            let id = FileId { dev: meta.dev(), ino: meta.ino() };
            let shown = path.display().to_string();
            self.consider(id, &path, &shown, 0, HOST, false, attach);
        }
        self.attached - before
    }

    /// Looks at every process in `/proc` (but the agent). Processes that vanish
    /// mid-scan are skipped; they are normal, not errors.
    pub fn scan_all<E: Display>(&mut self, attach: &mut impl FnMut(&Path) -> Result<usize, E>) -> ScanReport {
        let start = Instant::now();
        let before = self.attached;
        let mut live = HashSet::new();
        let mut processes = 0;
        if let Ok(entries) = std::fs::read_dir(&self.proc) {
            for entry in entries.filter_map(Result::ok) {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
                live.insert(pid);
                if self.scan_pid(pid, attach) {
                    processes += 1;
                }
            }
        }
        // Forget processes that are gone (their pids will be reused).
        self.seen.retain(|(pid, _)| live.contains(pid));
        ScanReport { processes, attached: self.attached - before, elapsed: start.elapsed() }
    }

    /// A process replaced its image: what it mapped before says nothing any more.
    pub fn exec(&mut self, pid: u32) {
        self.seen.retain(|(p, _)| *p != pid);
    }

    /// Looks at one process's libraries and executable. False when it is not looked at
    /// (the agent itself, filtered out, or gone).
    pub fn scan_pid<E: Display>(&mut self, pid: u32, attach: &mut impl FnMut(&Path) -> Result<usize, E>) -> bool {
        if pid == self.own_pid || pid == 0 || !self.filter.wants_pid(pid) {
            return false;
        }
        let dir = self.proc.join(pid.to_string());
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { return false };
        let comm = comm.trim_end_matches('\n');
        if !self.filter.wants_comm(comm) {
            return false;
        }
        let Ok(maps) = std::fs::read_to_string(dir.join("maps")) else { return false };
        if maps.is_empty() {
            // A kernel thread, or a process exiting.
            return true;
        }
        let root = dir.join("root");
        for path in libssl_mappings(&maps) {
            let full = root.join(path.trim_start_matches('/'));
            // Gone since, or in a mount namespace the agent cannot enter: nothing to do.
            let Ok(id) = FileId::of(&full) else { continue };
            self.consider(id, &full, path, pid, comm, false, attach);
        }
        let exe = dir.join("exe");
        if let Ok(id) = FileId::of(&exe) {
            let shown =
                std::fs::read_link(&exe).map_or_else(|_| exe.display().to_string(), |p| p.display().to_string());
            self.consider(id, &exe, &shown, pid, comm, true, attach);
        }
        true
    }

    /// Decides one file once: attaches it, or remembers why not.
    #[expect(clippy::too_many_arguments, reason = "one call site per kind of file; a struct would only rename them")]
    fn consider<E: Display>(
        &mut self,
        id: FileId,
        open: &Path,
        shown: &str,
        pid: u32,
        comm: &str,
        executable: bool,
        attach: &mut impl FnMut(&Path) -> Result<usize, E>,
    ) {
        match self.files.get(&id) {
            Some(Verdict::Attached) => {
                if pid != 0 && self.remember(pid, id) {
                    stats::global().incr(Counter::TlsAttachShared);
                }
                return;
            }
            Some(_) => return,
            None => {}
        }
        if executable {
            match exports_openssl(open) {
                Ok(true) => {}
                Ok(false) | Err(ElfError::Parse(_)) => {
                    if self.files.len() < MAX_VERDICTS {
                        self.files.insert(id, Verdict::NotOpenSsl);
                    }
                    return;
                }
                // The process went away under us: decide when the file is seen again.
                Err(ElfError::Io(e)) => {
                    log::debug!("tls: cannot read {shown} (pid {pid}): {e}");
                    return;
                }
            }
        }
        if self.tried >= MAX_FILES {
            if !self.files.values().any(|v| *v == Verdict::OverLimit) {
                log::warn!(
                    "tls: {MAX_FILES} files already tried for OpenSSL probes: {shown} (pid {pid} {comm}) and later ones are not traced"
                );
            }
            self.files.insert(id, Verdict::OverLimit);
            stats::global().incr(Counter::TlsAttachFailed);
            return;
        }
        self.tried += 1;
        let start = Instant::now();
        match attach(open) {
            Ok(0) => {
                self.files.insert(id, Verdict::Failed);
                stats::global().incr(Counter::TlsAttachFailed);
                log::warn!("tls: cannot attach the OpenSSL probes to {shown}: it defines none of SSL_read, SSL_write");
            }
            Ok(n) => {
                self.files.insert(id, Verdict::Attached);
                self.attached += 1;
                stats::global().incr(Counter::TlsLibrariesAttached);
                if pid != 0 {
                    self.remember(pid, id);
                }
                log::info!("tls: OpenSSL probes on {shown} ({n} probes; first seen in pid {pid} {comm})");
                log::debug!("tls: attaching to {shown} took {:?}", start.elapsed());
            }
            Err(e) => {
                self.files.insert(id, Verdict::Failed);
                stats::global().incr(Counter::TlsAttachFailed);
                log::warn!("tls: cannot attach the OpenSSL probes to {shown} (pid {pid} {comm}): {e}");
            }
        }
    }

    /// Records that `pid` maps `id`; true the first time.
    fn remember(&mut self, pid: u32, id: FileId) -> bool {
        if self.seen.len() >= MAX_SEEN {
            // Only the count of sharing processes suffers; full rescans prune it.
            return !self.seen.contains(&(pid, id));
        }
        self.seen.insert((pid, id))
    }
}

/// The pipeline's end of the exec queue: never blocks, never allocates.
#[derive(Clone)]
pub struct ExecNotifier {
    tx: SyncSender<u32>,
    overflow: Arc<AtomicBool>,
}

impl ExecNotifier {
    /// Process `pid` called exec: look at its new image soon. A full queue is counted
    /// and turns into a full rescan, so no process is missed for long.
    pub fn notify(&self, pid: u32) {
        if pid == 0 {
            return;
        }
        match self.tx.try_send(pid) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.overflow.store(true, Ordering::Relaxed);
                stats::global().drop_event(Counter::DropTlsExecQueueFull, format_args!("exec of pid {pid}"));
            }
        }
    }
}

/// The discovery thread. It owns the [`Discovery`] and shares the [`Capture`] with the
/// main task, locking it only to attach a new file.
pub struct Worker {
    handle: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    wake: SyncSender<u32>,
}

impl Worker {
    /// Starts the thread; returns it and the notifier the pipeline feeds.
    pub fn spawn(discovery: Discovery, capture: Arc<Mutex<Capture>>) -> std::io::Result<(Self, ExecNotifier)> {
        let (tx, rx) = mpsc::sync_channel(EXEC_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::Builder::new().name("ghostwire-tls".into()).spawn({
            let (overflow, stop) = (overflow.clone(), stop.clone());
            move || run(discovery, &capture, &rx, &overflow, &stop)
        })?;
        Ok((Self { handle, stop, wake: tx.clone() }, ExecNotifier { tx, overflow }))
    }

    /// Stops the thread (after the file it may be attaching) and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // pid 0 only wakes it; a full queue wakes it anyway.
        let _ = self.wake.try_send(0);
        if self.handle.join().is_err() {
            log::warn!("tls: the discovery thread panicked");
        }
    }
}

/// The thread's loop: exec rescans when due, a full rescan every [`FULL_RESCAN`].
fn run(
    mut discovery: Discovery,
    capture: &Mutex<Capture>,
    rx: &Receiver<u32>,
    overflow: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut attach = |path: &Path| capture.lock().unwrap_or_else(PoisonError::into_inner).attach_tls(path);
    let mut due: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut next_full = Instant::now() + FULL_RESCAN;
    while !stop.load(Ordering::Relaxed) {
        let next = due.peek().map_or(next_full, |Reverse((t, _))| (*t).min(next_full));
        match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(0) | Err(RecvTimeoutError::Timeout) => {}
            Ok(pid) => {
                discovery.exec(pid);
                if due.len() + EXEC_RESCANS.len() > MAX_PENDING {
                    overflow.store(true, Ordering::Relaxed);
                } else {
                    let now = Instant::now();
                    due.extend(EXEC_RESCANS.iter().map(|d| Reverse((now + *d, pid))));
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now >= next_full || overflow.swap(false, Ordering::Relaxed) {
            let report = discovery.scan_all(&mut attach);
            log::debug!("tls: rescanned {} processes in {:?}", report.processes, report.elapsed);
            next_full = now + FULL_RESCAN;
        }
        while let Some(&Reverse((t, pid))) = due.peek() {
            if t > now || stop.load(Ordering::Relaxed) {
                break;
            }
            due.pop();
            discovery.scan_pid(pid, &mut attach);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

    #[test]
    fn maps_give_each_libssl_once() {
        let maps = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 fe:00 123  /usr/bin/python3.11
7f1c2a000000-7f1c2a020000 r--p 00000000 fe:00 326798                     /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2a020000-7f1c2a09c000 r-xp 00020000 fe:00 326798                     /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2b000000-7f1c2b001000 r--p 00000000 fe:00 400                        /opt/old/lib/libssl.so.1.1
7f1c2c000000-7f1c2c001000 r--p 00000000 fe:00 401                        /usr/lib/x86_64-linux-gnu/libssl3.so
7f1c2d000000-7f1c2d001000 r--p 00000000 fe:00 402                        /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1c2e000000-7f1c2e001000 r--p 00000000 fe:00 403                        /tmp/my dir/libssl.so.3
7f1c2f000000-7f1c2f001000 r--p 00000000 fe:00 404                        /tmp/gone/libssl.so.3 (deleted)
7f1c30000000-7f1c30001000 rw-p 00000000 00:00 0                          [heap]
7f1c31000000-7f1c31001000 rw-p 00000000 00:00 0
7ffd1000-7ffd2000 r-xp 00000000 00:00 0                                  [vdso]
garbage line
";
        assert_eq!(libssl_mappings(maps), vec![LIBSSL, "/opt/old/lib/libssl.so.1.1", "/tmp/my dir/libssl.so.3"]);
        assert!(libssl_mappings("").is_empty());
    }

    #[test]
    fn libssl_names() {
        assert!(is_libssl("/lib/libssl.so.3"));
        assert!(is_libssl("/lib/libssl.so.1.1"));
        assert!(is_libssl("libssl.so"));
        assert!(!is_libssl("/lib/libssl3.so"), "NSS, not OpenSSL");
        assert!(!is_libssl("/lib/libssl.so3"));
        assert!(!is_libssl("/lib/libssl.sox"));
        assert!(!is_libssl("/lib/libcrypto.so.3"));
        assert!(!is_libssl("/libssl.so.3/python"));
    }

    #[test]
    fn symbol_check_on_real_files() {
        let ls = Path::new("/bin/ls");
        if ls.exists() {
            assert!(!exports_openssl(ls).unwrap(), "/bin/ls has no OpenSSL");
        }
        let lib = Path::new(LIBSSL);
        if lib.exists() {
            assert!(exports_openssl(lib).unwrap(), "{LIBSSL} defines SSL_read and SSL_write");
        }
        let node = Path::new("/usr/bin/node");
        if node.exists() {
            let start = Instant::now();
            assert!(exports_openssl(node).unwrap(), "node exports its static OpenSSL");
            eprintln!("node checked in {:?}", start.elapsed());
        }
        // The offsets agree with the ones aya computes for a symbol name (object's
        // high-level API over the whole file, section file range).
        for path in [lib, node] {
            if !path.exists() {
                continue;
            }
            let names = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"];
            let offsets = function_offsets(path, &[&names[..], &["no_such_fn"]].concat()).unwrap();
            assert_eq!(offsets[4], None);
            let bytes = std::fs::read(path).unwrap();
            let file = object::File::parse(&*bytes).unwrap();
            for (name, got) in names.iter().zip(&offsets) {
                use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
                let sym = file.dynamic_symbols().find(|s| s.name() == Ok(name)).unwrap();
                let section = file.section_by_index(sym.section_index().unwrap()).unwrap();
                let want = sym.address() - section.address() + section.file_range().unwrap().0;
                assert_eq!(*got, Some(want), "{name} in {}", path.display());
            }
        }
        // nginx imports SSL_read from libssl: undefined there, so not a target itself.
        let nginx = Path::new("/usr/sbin/nginx");
        if nginx.exists() {
            assert!(!exports_openssl(nginx).unwrap(), "nginx only imports the symbols");
        }
        // Not ELF at all, and too short to be.
        let dir = tempdir("elf");
        std::fs::write(dir.join("script"), "#!/bin/sh\necho hi\n").unwrap();
        assert!(!exports_openssl(&dir.join("script")).unwrap());
        std::fs::write(dir.join("short"), "\x7fELF").unwrap();
        assert!(!exports_openssl(&dir.join("short")).unwrap());
        // An ELF header with garbage after it is an error, not a panic.
        let mut bad = std::fs::read("/bin/ls").unwrap_or_default();
        if bad.len() > 64 {
            bad.truncate(64);
            bad[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
            std::fs::write(dir.join("bad"), &bad).unwrap();
            assert!(exports_openssl(&dir.join("bad")).is_err());
        }
        assert!(matches!(exports_openssl(&dir.join("missing")), Err(ElfError::Io(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ghostwire-tls-{tag}-{}-{:?}", std::process::id(), Instant::now()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A fake `/proc` entry: `root` is the real root, so maps paths resolve to real files.
    fn fake_process(proc: &Path, pid: u32, comm: &str, exe: &str, maps: &[&str]) {
        let dir = proc.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        let text: String = maps
            .iter()
            .enumerate()
            .map(|(i, p)| format!("7f00{i:04x}0000-7f00{i:04x}1000 r-xp 00000000 fe:00 1 {p}\n"))
            .collect();
        std::fs::write(dir.join("maps"), text).unwrap();
        std::os::unix::fs::symlink("/", dir.join("root")).unwrap();
        std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
    }

    #[test]
    fn each_file_is_attached_once() {
        let dir = tempdir("proc");
        // Two copies of one library (the test cannot rely on merged /usr): a hard link is
        // the same inode under another path.
        let lib = dir.join("libssl.so.3");
        let other = dir.join("other").join("libssl.so.3");
        std::fs::create_dir_all(dir.join("other")).unwrap();
        std::fs::write(&lib, "not really a library").unwrap();
        std::fs::hard_link(&lib, &other).unwrap();
        let proc = dir.join("proc");
        let (lib_s, other_s) = (lib.to_str().unwrap(), other.to_str().unwrap());
        fake_process(&proc, 101, "python3", "/bin/ls", &[lib_s, lib_s]);
        fake_process(&proc, 102, "curl", "/bin/ls", &[other_s]);
        fake_process(&proc, 103, "sleep", "/bin/ls", &["/usr/lib/x86_64-linux-gnu/libc.so.6"]);
        // Node exports the symbols: its executable is attached, once for two processes.
        let node = Path::new("/usr/bin/node").exists();
        if node {
            fake_process(&proc, 104, "node", "/usr/bin/node", &["/usr/bin/node"]);
            fake_process(&proc, 105, "node", "/usr/bin/node", &["/usr/bin/node"]);
        }
        // Our own pid is never looked at.
        fake_process(&proc, std::process::id(), "ghostwire", "/bin/ls", &[lib_s]);
        // A vanished process: its directory has no maps.
        std::fs::create_dir_all(proc.join("106")).unwrap();

        let calls: std::cell::RefCell<Vec<PathBuf>> = std::cell::RefCell::default();
        let mut attach = |p: &Path| -> Result<usize, String> {
            calls.borrow_mut().push(p.to_owned());
            Ok(8)
        };
        let s = stats::global();
        let (attached0, shared0) = (s.get(Counter::TlsLibrariesAttached), s.get(Counter::TlsAttachShared));
        let mut d = Discovery::new(&proc, ScanFilter::default());
        let report = d.scan_all(&mut attach);
        assert_eq!(report.processes, if node { 5 } else { 3 });
        let expected = if node { 2 } else { 1 };
        assert_eq!(report.attached, expected);
        assert_eq!(d.attached(), expected);
        assert_eq!(calls.borrow().len(), expected, "one attach per file: {calls:?}");
        assert!(calls
            .borrow()
            .iter()
            .any(|c| c.ends_with(lib_s.trim_start_matches('/')) || c.ends_with(other_s.trim_start_matches('/'))));
        // Counters are global and tests run in parallel: at least what this test did.
        assert!(s.get(Counter::TlsLibrariesAttached) - attached0 >= expected as u64);
        assert!(s.get(Counter::TlsAttachShared) - shared0 >= expected as u64, "{:?}", d.seen);

        // A second pass finds nothing new and counts no process twice.
        let again = d.scan_all(&mut attach);
        assert_eq!(again.attached, 0);
        assert_eq!(calls.borrow().len(), expected);
        assert_eq!(d.seen.len(), if node { 4 } else { 2 });
        // After an exec the process is counted again when it maps the file.
        d.exec(101);
        assert_eq!(d.seen.len(), if node { 3 } else { 1 });
        assert!(d.scan_pid(101, &mut attach));
        assert_eq!(d.seen.len(), if node { 4 } else { 2 });
        assert!(!d.scan_pid(std::process::id(), &mut attach));
        assert!(!d.scan_pid(999_999, &mut attach), "no such process");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_are_decided_once_and_filters_apply() {
        let dir = tempdir("fail");
        let lib = dir.join("libssl.so.1.1");
        std::fs::write(&lib, "x").unwrap();
        let proc = dir.join("proc");
        let lib_s = lib.to_str().unwrap();
        fake_process(&proc, 201, "a", "/bin/ls", &[lib_s]);
        fake_process(&proc, 202, "b", "/bin/ls", &[lib_s]);
        let calls = std::cell::Cell::new(0);
        let mut attach = |_: &Path| -> Result<usize, String> {
            calls.set(calls.get() + 1);
            Err("no such symbol".into())
        };
        let mut d = Discovery::new(&proc, ScanFilter::default());
        d.scan_all(&mut attach);
        d.scan_all(&mut attach);
        assert_eq!(calls.get(), 1, "a failed file is not tried again");
        assert_eq!(d.attached(), 0);

        // --exe b: process a is not looked at; --pid 201: b is not.
        let mut attach_ok = |_: &Path| -> Result<usize, String> { Ok(1) };
        let mut d = Discovery::new(&proc, ScanFilter { pids: vec![], exes: vec!["b".into()] });
        assert!(!d.scan_pid(201, &mut attach_ok));
        assert!(d.scan_pid(202, &mut attach_ok));
        assert_eq!(d.attach_host_libraries(&mut attach_ok), 0, "filters skip the host's libraries");
        let mut d = Discovery::new(&proc, ScanFilter { pids: vec![201], exes: vec![] });
        assert!(!d.scan_pid(202, &mut attach_ok));
        assert!(d.scan_pid(201, &mut attach_ok));
        assert_eq!(d.attached(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_number_of_files_is_bounded() {
        let dir = tempdir("bound");
        let proc = dir.join("proc");
        let mut libs = Vec::new();
        for i in 0..MAX_FILES + 3 {
            let lib = dir.join(format!("l{i}")).join("libssl.so.3");
            std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
            std::fs::write(&lib, "x").unwrap();
            libs.push(lib.to_str().unwrap().to_owned());
        }
        let refs: Vec<&str> = libs.iter().map(String::as_str).collect();
        fake_process(&proc, 301, "many", "/bin/ls", &refs);
        let calls = std::cell::Cell::new(0);
        let mut attach = |_: &Path| -> Result<usize, String> {
            calls.set(calls.get() + 1);
            Ok(1)
        };
        let mut d = Discovery::new(&proc, ScanFilter::default());
        d.scan_all(&mut attach);
        d.scan_all(&mut attach);
        assert_eq!(calls.get(), MAX_FILES);
        assert_eq!(d.attached(), MAX_FILES);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_libraries_are_deduplicated_by_inode() {
        if !Path::new(LIBSSL).exists() {
            return;
        }
        let calls: std::cell::RefCell<Vec<PathBuf>> = std::cell::RefCell::default();
        let mut attach = |p: &Path| -> Result<usize, String> {
            calls.borrow_mut().push(p.to_owned());
            Ok(8)
        };
        let mut d = Discovery::new("/nonexistent-proc", ScanFilter::default());
        let n = d.attach_host_libraries(&mut attach);
        assert!(n >= 1);
        let calls = calls.into_inner();
        let ids: HashSet<FileId> = calls.iter().map(|p| FileId::of(p).unwrap()).collect();
        assert_eq!(ids.len(), calls.len(), "each inode once (merged /usr lists it twice): {calls:?}");
        assert!(ids.contains(&FileId::of(Path::new(LIBSSL)).unwrap()));
    }

    #[test]
    fn exec_queue_overflow_is_counted_and_asks_for_a_rescan() {
        let (tx, rx) = mpsc::sync_channel(1);
        let n = ExecNotifier { tx, overflow: Arc::new(AtomicBool::new(false)) };
        let before = stats::global().get(Counter::DropTlsExecQueueFull);
        n.notify(10);
        assert!(!n.overflow.load(Ordering::Relaxed));
        n.notify(11);
        assert!(n.overflow.load(Ordering::Relaxed));
        assert!(stats::global().get(Counter::DropTlsExecQueueFull) > before);
        assert_eq!(rx.try_recv(), Ok(10));
    }
}
