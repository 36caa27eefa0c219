//! Service NAT against the real kernel: a client connects to a virtual IP that an
//! iptables DNAT rule (as kube-proxy writes for a ClusterIP) sends to a backend on
//! loopback; conntrack, asked by the backend's view of the connection, must name the
//! virtual IP. The rule is removed by its guard, also when the test fails.
//!
//! Prints `nat: lookup found=Nµs not_found=Mµs` (the cost of one lookup) on stderr.
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ghostwire::span::nat::{Conntrack, NatLookup};
use ghostwire::stats::{self, Counter};
use ghostwire_tests::*;

const VIP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);
/// The remap test's own virtual IP, so that its rule never catches the other test's
/// connections should the tests run in parallel.
const VIP_REMAP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 101);
const VPORT: u16 = 80;

/// The tests compare counter deltas of the process-wide stats: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The test's own network namespace, read independently of the agent's code.
fn own_netns() -> u32 {
    let link = std::fs::read_link("/proc/self/ns/net").expect("readlink /proc/self/ns/net");
    let link = link.to_string_lossy();
    link.strip_prefix("net:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/self/ns/net link {link}"))
}

fn nat_rules() -> String {
    let out = Command::new("iptables").args(["-w", "-t", "nat", "-S", "OUTPUT"]).output().expect("iptables -S");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Peers of the established sockets on 127.0.0.1:`port` (the server's view of its
/// connections, accepted or still in the accept queue), from /proc/net/tcp.
fn server_peers(port: u16) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let parse = |field: &str| -> Option<SocketAddr> {
        let (ip, p) = field.split_once(':')?;
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
        Some(SocketAddr::from((ip, u16::from_str_radix(p, 16).ok()?)))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, peer) = (parse(f.get(1)?)?, parse(f.get(2)?)?);
            (*f.get(3)? == "01" && local == SocketAddr::from(([127, 0, 0, 1], port))).then_some(peer)
        })
        .collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    s
}

/// Mean cost of one lookup in µs over at most `n` lookups or 2 s.
fn cost_us(ct: &mut Conntrack, netns: u32, local: SocketAddr, peer: SocketAddr, n: u32) -> f64 {
    let start = Instant::now();
    let mut done = 0u32;
    while done < n && start.elapsed() < Duration::from_secs(2) {
        std::hint::black_box(ct.original_destination(netns, local, peer));
        done += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(done.max(1))
}

#[test]
fn conntrack_names_the_virtual_ip_a_client_connected_to() {
    require_root();
    let _serial = serial();
    let port = free_port();
    let _backend = python_backend(port, "nat-backend");
    let backend = SocketAddr::from(([127, 0, 0, 1], port));
    let rule_text = format!("-d {VIP}/32 -p tcp -m tcp --dport {VPORT} -j DNAT --to-destination 127.0.0.1:{port}");
    let netns = own_netns();
    let mut ct = Conntrack::open().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ct.netns(), netns, "the handle's namespace is the test's own");
    {
        let rule = Dnat::loopback(VIP, VPORT, port);
        assert!(nat_rules().contains(&rule_text), "rule not in place: {:?}\n{}", rule.rule(), nat_rules());

        // The client connects to the virtual IP; the backend sees 127.0.0.1:port <- client.
        let mut client = connect(SocketAddr::from((VIP, VPORT)));
        let client_addr = client.local_addr().expect("local addr");
        assert_eq!(client.peer_addr().expect("peer addr"), SocketAddr::from((VIP, VPORT)));
        // The backend's view of it: its only established connection so far. Usually the
        // client's own address; another port when conntrack remapped the source because
        // the DNAT reply tuple clashed with an older entry (the readiness probe's).
        let peers = server_peers(port);
        let [server_peer] = peers[..] else { panic!("backend connections: {peers:?}") };
        let translated_before = stats::global().get(Counter::NatTranslated);
        // While the connection is open (nothing sent yet).
        assert_eq!(
            ct.original_connection(netns, backend, server_peer),
            Some((client_addr, SocketAddr::from((VIP, VPORT)))),
            "conntrack must give the client's own view of the connection: {:?}, {}",
            ct.lookup(backend, server_peer),
            stats::report(&stats::KernelCounters::default())
        );
        assert_eq!(stats::global().get(Counter::NatTranslated), translated_before + 1);
        let want = (server_peer == client_addr).then_some(SocketAddr::from((VIP, VPORT)));
        assert_eq!(
            ct.original_destination(netns, backend, server_peer),
            want,
            "the virtual IP, unless the source was remapped ({server_peer} seen for {client_addr})"
        );
        eprintln!("nat: client {client_addr} -> {VIP}:{VPORT}, backend sees {server_peer} -> {backend}");

        // And it really is the backend that answers through the rule.
        client.write_all(b"GET /nat HTTP/1.0\r\nHost: 127.0.0.100\r\n\r\n").expect("send");
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.0 200") && answer.contains("200 /nat"), "backend answer: {answer:?}");

        // Negative controls. A connection straight to the backend was not translated.
        let direct = connect(backend);
        let direct_addr = direct.local_addr().expect("local addr");
        assert_eq!(ct.original_destination(netns, backend, direct_addr), None, "no NAT, no translation");
        // Another namespace's connection is not looked up in this namespace's table.
        let other_before = stats::global().get(Counter::NatOtherNetns);
        assert_eq!(ct.original_destination(netns.wrapping_add(1), backend, server_peer), None);
        assert_eq!(stats::global().get(Counter::NatOtherNetns), other_before + 1);
        // The client's view is the entry's original tuple, not a reply tuple: conntrack
        // finds the entry by it, but it is not the entry asked for.
        let not_found_before = stats::global().get(Counter::NatNotFound);
        assert_eq!(ct.original_destination(netns, client_addr, SocketAddr::from((VIP, VPORT))), None);
        assert_eq!(stats::global().get(Counter::NatNotFound), not_found_before + 1);

        // An answer nobody waited for (a lookup that timed out) is not taken for the next
        // lookup's answer: the unanswered request asks for the direct connection, which
        // has no translation; the next lookup must still find the virtual IP.
        ct.send_request(backend, direct_addr).expect("send a request and abandon it");
        ct.send_request(backend, SocketAddr::from(([127, 0, 0, 1], 1))).expect("and a second one");
        assert_eq!(
            ct.original_connection(netns, backend, server_peer),
            Some((client_addr, SocketAddr::from((VIP, VPORT))))
        );
        assert_eq!(ct.original_connection(netns, backend, direct_addr), None);

        // The cost of one lookup, found and not found.
        let found = cost_us(&mut ct, netns, backend, server_peer, 2000);
        let missing = cost_us(&mut ct, netns, backend, SocketAddr::from(([127, 0, 0, 1], 1)), 2000);
        eprintln!("nat: lookup found={found:.1}µs not_found={missing:.1}µs");
        assert_eq!(stats::global().get(Counter::NatLookupFailed), 0, "no lookup may fail or time out");
        drop(direct);
    }
    assert!(!nat_rules().contains(&rule_text), "the guard must remove its rule:\n{}", nat_rules());
}

/// A connection bound to `port` on loopback with SO_REUSEADDR (0: any port).
fn connect_from(port: u16, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
    s.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    s.into()
}

/// Two connections from one client port, one straight to the backend and one to the
/// virtual IP: the DNAT reply tuple of the second would equal the first's, so conntrack
/// remaps its source port. The backend sees another port than the client's own; only the
/// client's full view pairs the two ends, and `original_destination` must say nothing.
#[test]
fn a_remapped_source_port_is_paired_by_the_clients_own_view() {
    require_root();
    let _serial = serial();
    let port = free_port();
    let _backend = python_backend(port, "nat-backend");
    let backend = SocketAddr::from(([127, 0, 0, 1], port));
    let netns = own_netns();
    let mut ct = Conntrack::open().unwrap_or_else(|e| panic!("{e}"));
    let _rule = Dnat::loopback(VIP_REMAP, VPORT, port);

    let direct = connect_from(0, backend);
    let client_port = direct.local_addr().expect("local addr").port();
    let client = connect_from(client_port, SocketAddr::from((VIP_REMAP, VPORT)));
    let client_addr = client.local_addr().expect("local addr");
    assert_eq!(client_addr.port(), client_port);

    let peers = server_peers(port);
    let remapped: Vec<SocketAddr> = peers.iter().copied().filter(|p| *p != client_addr).collect();
    let [server_peer] = remapped[..] else {
        panic!("backend connections {peers:?}: expected {client_addr} and one remapped")
    };
    eprintln!("nat: client {client_addr} -> {VIP_REMAP}:{VPORT}, backend sees {server_peer} -> {backend}");

    let source_before = stats::global().get(Counter::NatSourceTranslated);
    assert_eq!(
        ct.original_connection(netns, backend, server_peer),
        Some((client_addr, SocketAddr::from((VIP_REMAP, VPORT))))
    );
    assert_eq!(stats::global().get(Counter::NatSourceTranslated), source_before + 1);
    assert_eq!(ct.original_destination(netns, backend, server_peer), None, "the server's peer is not the client");
    // The direct connection from the same port was not translated.
    assert_eq!(ct.original_connection(netns, backend, client_addr), None);
    drop((direct, client));
}
