//! Which ports are listening, per network namespace: the role of a connection whose
//! handshake the agent did not see (it predates the agent) is "server" when its local
//! port listens in its namespace.
//!
//! Seeded once at start-up from `/proc/PID/net/tcp{,6}` (one process per namespace),
//! then kept up to date from the kernel's LISTEN transitions.
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Listening (namespace inode, port) pairs.
#[derive(Debug, Default)]
pub struct ListenTable {
    ports: HashSet<(u32, u16)>,
}

/// What the start-up scan of `/proc` found.
#[derive(Debug, Default)]
pub struct Scan {
    pub listening: ListenTable,
    /// TCP connections established at start-up, over every namespace.
    pub established: u64,
    pub namespaces: usize,
}

/// Upper bound on listening sockets remembered (a host with more is unusual; beyond it
/// roles of pre-existing connections fall back to their first message).
const MAX_LISTENING: usize = 65_536;

impl ListenTable {
    #[must_use]
    pub fn is_listening(&self, netns: u32, port: u16) -> bool {
        self.ports.contains(&(netns, port))
    }

    pub fn set(&mut self, netns: u32, port: u16, listening: bool) {
        if listening {
            if self.ports.len() < MAX_LISTENING {
                self.ports.insert((netns, port));
            }
        } else {
            self.ports.remove(&(netns, port));
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// Reads the listening ports and counts the established connections of every network
/// namespace that has a process under `proc_root`.
#[must_use]
pub fn scan(proc_root: &Path) -> Scan {
    let mut scan = Scan::default();
    // One process per namespace is enough: /proc/PID/net/tcp shows its namespace.
    let mut by_ns: HashMap<u64, String> = HashMap::new();
    for entry in std::fs::read_dir(proc_root).into_iter().flatten().filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(meta) = std::fs::metadata(entry.path().join("ns/net")) else { continue };
        by_ns.entry(std::os::unix::fs::MetadataExt::ino(&meta)).or_insert_with(|| pid.to_owned());
    }
    scan.namespaces = by_ns.len();
    for (ns, pid) in by_ns {
        let netns = u32::try_from(ns).unwrap_or(0);
        for file in ["net/tcp", "net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(proc_root.join(&pid).join(file)) else { continue };
            let (listening, established) = parse_proc_net_tcp(&text);
            scan.established += established;
            for port in listening {
                scan.listening.set(netns, port, true);
            }
        }
    }
    scan
}

/// Listening local ports and the number of established connections in the text of
/// `/proc/net/tcp` or `tcp6`.
#[must_use]
pub fn parse_proc_net_tcp(text: &str) -> (Vec<u16>, u64) {
    const ESTABLISHED: &str = "01";
    const LISTEN: &str = "0A";
    let mut listening = Vec::new();
    let mut established = 0;
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(st)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        match st {
            ESTABLISHED => established += 1,
            LISTEN => {
                let port = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                listening.extend(port);
            }
            _ => {}
        }
    }
    (listening, established)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:A000 0100007F:1F90 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn parses_listening_ports_and_established_connections() {
        assert_eq!(parse_proc_net_tcp(TCP), (vec![8080], 2));
        assert_eq!(parse_proc_net_tcp(""), (vec![], 0));
        assert_eq!(parse_proc_net_tcp("header\ngarbage line\n"), (vec![], 0));
    }

    #[test]
    fn table_follows_listen_transitions_per_namespace() {
        let mut t = ListenTable::default();
        t.set(1, 80, true);
        assert!(t.is_listening(1, 80) && !t.is_listening(2, 80));
        t.set(1, 80, false);
        assert!(t.is_empty());
    }

    #[test]
    fn scans_this_machine() {
        // Whatever runs here, the scan must not fail and must see this namespace.
        let scan = scan(Path::new("/proc"));
        assert!(scan.namespaces >= 1);
    }
}
