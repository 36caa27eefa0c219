//! Service NAT: the destination a client really connected to, asked of conntrack.
//!
//! kube-proxy implements a ClusterIP with an iptables DNAT: the client's socket is
//! connected to the virtual IP, while the server's accepted socket sees the client's
//! address and its own real address. The socket link pairs a server request with the
//! client request at the other end by the reversed 4-tuple, which across DNAT matches
//! nothing. The kernel still knows both sides: the conntrack entry of the connection has
//! the *reply* tuple `server -> client` (what the server's socket sees) and the
//! *original* tuple `client -> virtual IP` (what the client's socket sees). One ctnetlink
//! GET by the reply tuple returns the entry, and with it the original destination.
//!
//! Conntrack tables are per network namespace and this socket sees the agent's own (the
//! node's, in a DaemonSet): pod traffic to a ClusterIP is translated there, so routable
//! addresses are looked up whatever namespace the socket is in; loopback connections of
//! other namespaces are not (counted as `nat.other_netns`).
//!
//! A lookup is one request and one answer on a blocking netlink socket with a short
//! receive timeout, so the caller's drain loop never stalls for long. Requests carry
//! sequence numbers; an answer that arrives after its lookup timed out is recognised by
//! its number and discarded by the next lookup, never taken for that lookup's answer.
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::stats::{self, Counter};

/// How long one lookup waits for the kernel's answer. The kernel answers a GET from
/// the syscall itself (microseconds); this bound only matters if something is wrong.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(50);

/// Datagrams one lookup reads at most (its answer plus stale answers of lookups that
/// timed out), so a lookup is bounded in count as well as time.
const MAX_DATAGRAMS: usize = 64;

/// Receive buffer: a conntrack entry with all its attributes is a few hundred bytes.
const RECV_BUF: usize = 8192;

/// Where a client's connection really went, for the socket link across NAT.
pub trait NatLookup {
    /// For a connection accepted by a server (`local`: the server's address, `peer`:
    /// the client's), the destination the client actually connected to when NAT
    /// rewrote it: the conntrack entry whose reply tuple is local -> peer has an
    /// original tuple peer -> X; returns Some(X) when X != local. None when there is no
    /// entry, no translation, the lookup failed, or the connection is loopback in
    /// another network namespace than the agent's (conntrack tables are per namespace;
    /// routable addresses of other namespaces are translated in the node's).
    ///
    /// IPv4-mapped IPv6 addresses are looked up (and answered) as IPv4, which is how
    /// conntrack tracks them. When the source was rewritten too (SNAT, masquerade, or
    /// the source-port remap conntrack makes when a DNAT reply tuple would clash with an
    /// existing entry) the client's socket is not `peer -> X` and the answer is None: a
    /// pairing on `peer` would find nothing or, worse, another connection. Use
    /// [`NatLookup::original_connection`] to pair those.
    fn original_destination(&mut self, netns: u32, local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr>;

    /// The client's own view `(client local, client peer)` of the connection a server
    /// accepted as `local <- peer`, when NAT rewrote either address (None as for
    /// [`NatLookup::original_destination`] otherwise). This also covers a rewritten
    /// source. The default knows only what `original_destination` says.
    fn original_connection(
        &mut self,
        netns: u32,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        self.original_destination(netns, local, peer).map(|dst| (peer, dst))
    }
}

/// Errors of the conntrack handle. Opening errors are for the user; lookup errors are
/// counted (`nat.lookup_failed`) and the first one is logged at debug level.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("conntrack netlink socket: {step}: {source} (needs a kernel with CONFIG_NF_CT_NETLINK)")]
    Socket {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("conntrack lookups are not permitted: run the agent as root or with CAP_NET_ADMIN")]
    NotPermitted,
    #[error("cannot tell the agent's network namespace from /proc/self/ns/net: {detail}")]
    Netns { detail: String },
    #[error("conntrack did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("conntrack netlink socket: {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("conntrack answered with error {errno} ({})", io::Error::from_raw_os_error(*errno))]
    Kernel { errno: i32 },
    #[error("conntrack answer could not be decoded: {detail}")]
    Decode { detail: String },
    #[error("local {local} and peer {peer} are of different address families")]
    MixedFamilies { local: SocketAddr, peer: SocketAddr },
}

/// A conntrack entry's two directions, as far as the socket link needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What the client's socket sees: client -> the address it connected to.
    pub original: (SocketAddr, SocketAddr),
    /// What the server's socket sees: server -> client.
    pub reply: (SocketAddr, SocketAddr),
}

/// What one answer datagram says about the lookup with a given sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The entry.
    Found(Entry),
    /// The kernel has no entry for the tuple (ENOENT).
    NotFound,
    /// Only answers to earlier lookups (which had timed out): read on.
    Stale,
}

/// A ctnetlink handle in the agent's network namespace.
pub struct Conntrack {
    socket: Socket,
    own_netns: u32,
    seq: u32,
    send: Vec<u8>,
    recv: Box<[u8]>,
    failure_logged: bool,
}

impl Conntrack {
    /// Opens a NETLINK_NETFILTER socket and checks with one probe lookup that the
    /// kernel answers and allows it (CAP_NET_ADMIN).
    pub fn open() -> Result<Self, NatError> {
        let own_netns = own_netns()?;
        let mut socket =
            Socket::new(NETLINK_NETFILTER).map_err(|source| NatError::Socket { step: "socket", source })?;
        socket.bind_auto().map_err(|source| NatError::Socket { step: "bind", source })?;
        socket
            .connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(|source| NatError::Socket { step: "connect", source })?;
        set_recv_timeout(&socket, LOOKUP_TIMEOUT).map_err(|source| NatError::Socket { step: "SO_RCVTIMEO", source })?;
        let mut ct = Self {
            socket,
            own_netns,
            seq: 0,
            send: Vec::with_capacity(128),
            recv: vec![0; RECV_BUF].into(),
            failure_logged: false,
        };
        // A tuple no connection has (port 0): the kernel answers ENOENT when lookups
        // work, EPERM without CAP_NET_ADMIN.
        let probe = SocketAddr::from(([127, 0, 0, 1], 0));
        match ct.lookup(probe, probe) {
            Ok(_) => Ok(ct),
            Err(NatError::Kernel { errno: libc::EPERM }) => Err(NatError::NotPermitted),
            Err(e) => Err(e),
        }
    }

    /// The network namespace (inode) whose conntrack table this handle reads.
    #[must_use]
    pub fn netns(&self) -> u32 {
        self.own_netns
    }

    /// The conntrack entry (TCP) with the tuple `local -> peer`, if there is one. The
    /// request names it as the reply tuple, but the kernel finds a tuple in either
    /// direction: [`classify`] tells an accepted connection's entry from the entry of a
    /// connection `local` opened itself.
    pub fn lookup(&mut self, local: SocketAddr, peer: SocketAddr) -> Result<Option<Entry>, NatError> {
        let seq = self.send_request(local, peer)?;
        self.read_answer(seq)
    }

    /// Sends the GET of [`Conntrack::lookup`] and returns its sequence number, for
    /// [`Conntrack::read_answer`]. A request whose answer is never read leaves a stale
    /// answer on the socket, which the next `read_answer` skips.
    pub fn send_request(&mut self, local: SocketAddr, peer: SocketAddr) -> Result<u32, NatError> {
        self.seq = match self.seq.wrapping_add(1) {
            0 => 1,
            s => s,
        };
        encode_get(self.seq, local, peer, &mut self.send)?;
        self.socket.send(&self.send, 0).map_err(|source| NatError::Io { op: "send", source })?;
        Ok(self.seq)
    }

    /// Waits (at most [`LOOKUP_TIMEOUT`]) for the answer to request `seq`, skipping the
    /// answers to earlier requests.
    pub fn read_answer(&mut self, seq: u32) -> Result<Option<Entry>, NatError> {
        let deadline = Instant::now() + LOOKUP_TIMEOUT;
        for _ in 0..MAX_DATAGRAMS {
            let n = match self.socket.recv(&mut &mut self.recv[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted && Instant::now() < deadline => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(NatError::TimedOut(LOOKUP_TIMEOUT));
                }
                Err(source) => return Err(NatError::Io { op: "recv", source }),
            };
            let Some(datagram) = self.recv.get(..n) else {
                return Err(NatError::Decode { detail: format!("answer of {n} bytes does not fit {RECV_BUF}") });
            };
            match decode_reply(datagram, seq)? {
                Reply::Found(entry) => return Ok(Some(entry)),
                Reply::NotFound => return Ok(None),
                Reply::Stale if Instant::now() < deadline => {}
                Reply::Stale => break,
            }
        }
        Err(NatError::TimedOut(LOOKUP_TIMEOUT))
    }

    fn failed(&mut self, e: &NatError) {
        stats::global().incr(Counter::NatLookupFailed);
        if !self.failure_logged {
            self.failure_logged = true;
            log::debug!("nat.lookup_failed: {e} (further failures are only counted)");
        }
    }
}

impl NatLookup for Conntrack {
    fn original_destination(&mut self, netns: u32, local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr> {
        let (client, dst) = self.original_connection(netns, local, peer)?;
        (client == canonical(peer)).then_some(dst)
    }

    fn original_connection(
        &mut self,
        netns: u32,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let s = stats::global();
        // Another namespace's loopback is its own; routable addresses of other
        // namespaces (pods) are NATed in the agent's (the node's) table, where
        // kube-proxy's rules are.
        if netns != self.own_netns && (local.ip().is_loopback() || peer.ip().is_loopback()) {
            s.incr(Counter::NatOtherNetns);
            return None;
        }
        s.incr(Counter::NatLookups);
        let (local, peer) = (canonical(local), canonical(peer));
        let found = match self.lookup(local, peer) {
            Ok(found) => found,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        match classify(found, local, peer) {
            Translation::NotFound => {
                s.incr(Counter::NatNotFound);
                None
            }
            Translation::None => None,
            Translation::Destination(client_view) => {
                s.incr(Counter::NatTranslated);
                Some(client_view)
            }
            Translation::Source(client_view) => {
                s.incr(Counter::NatTranslated);
                s.incr(Counter::NatSourceTranslated);
                Some(client_view)
            }
        }
    }
}

/// What a lookup says about a server's connection `local <- peer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// No entry with the reply tuple `local -> peer`.
    NotFound,
    /// The client connected to `local` from `peer`: no NAT.
    None,
    /// Only the destination was rewritten: the client's view `(peer, X)`.
    Destination((SocketAddr, SocketAddr)),
    /// The source was rewritten (with or without the destination): the client's view.
    Source((SocketAddr, SocketAddr)),
}

/// Classifies the answer to a lookup of the reply tuple `local -> peer`.
#[must_use]
pub fn classify(found: Option<Entry>, local: SocketAddr, peer: SocketAddr) -> Translation {
    let Some(entry) = found else { return Translation::NotFound };
    // The kernel finds a tuple in either direction: an answer whose reply tuple is not
    // the one asked for is the entry of a connection `local` itself opened to `peer`.
    if entry.reply != (local, peer) {
        return Translation::NotFound;
    }
    let (client, dst) = entry.original;
    if client != peer {
        Translation::Source(entry.original)
    } else if dst != local {
        Translation::Destination(entry.original)
    } else {
        Translation::None
    }
}

/// IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer) as IPv4, the form
/// conntrack tracks the connection in.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Encodes a ctnetlink GET of the TCP entry whose reply tuple is `local -> peer` into
/// `out` (cleared first).
pub fn encode_get(seq: u32, local: SocketAddr, peer: SocketAddr, out: &mut Vec<u8>) -> Result<(), NatError> {
    let family = match (local.ip(), peer.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => NetfilterProtoFamily::IPv4,
        (IpAddr::V6(_), IpAddr::V6(_)) => NetfilterProtoFamily::IPv6,
        _ => return Err(NatError::MixedFamilies { local, peer }),
    };
    let tuple = vec![
        Tuple::Ip(vec![IPTuple::SourceAddress(local.ip()), IPTuple::DestinationAddress(peer.ip())]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Tcp),
            ProtoTuple::SourcePort(local.port()),
            ProtoTuple::DestinationPort(peer.port()),
        ]),
    ];
    let mut header = NetlinkHeader::default();
    // No NLM_F_ACK: a found entry is answered with the entry alone, a miss with an
    // error message; either way exactly one answer per request.
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleReply(tuple)]),
        )),
    );
    msg.finalize();
    out.clear();
    out.resize(msg.buffer_len(), 0);
    // `out` is exactly `buffer_len()` long, which is what `serialize` needs.
    msg.serialize(out);
    Ok(())
}

/// Decodes one answer datagram to the lookup with sequence number `seq`. Messages with
/// other sequence numbers are answers to earlier lookups that timed out: skipped.
pub fn decode_reply(datagram: &[u8], seq: u32) -> Result<Reply, NatError> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(rest)
            .map_err(|e| NatError::Decode { detail: one_line(&e.to_string()) })?;
        let len = usize::try_from(msg.header.length).unwrap_or(usize::MAX);
        // Messages are 4-byte aligned within a datagram; `deserialize` checked `len`
        // against the buffer, so `len` is at least a header and at most `rest.len()`.
        let next = len.div_ceil(4).saturating_mul(4).min(rest.len());
        if len == 0 || next == 0 {
            return Err(NatError::Decode { detail: "netlink message of length 0".to_owned() });
        }
        rest = rest.get(next..).unwrap_or_default();
        if msg.header.sequence_number != seq {
            continue;
        }
        return match msg.payload {
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs)),
                ..
            }) => entry(&attrs).map(Reply::Found),
            NetlinkPayload::Error(e) => match e.code {
                Some(code) if code.get() == -libc::ENOENT => Ok(Reply::NotFound),
                Some(code) => Err(NatError::Kernel { errno: code.get().saturating_neg() }),
                None => Err(NatError::Decode { detail: "an acknowledgement instead of an entry".to_owned() }),
            },
            other => Err(NatError::Decode { detail: format!("unexpected message type {}", other.message_type()) }),
        };
    }
    Ok(Reply::Stale)
}

/// The original and reply tuples of a conntrack entry (TCP only).
fn entry(attrs: &[ConntrackAttribute]) -> Result<Entry, NatError> {
    let mut original = None;
    let mut reply = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => original = Some(tcp_tuple(t, "original")?),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(tcp_tuple(t, "reply")?),
            _ => {}
        }
    }
    match (original, reply) {
        (Some(original), Some(reply)) => Ok(Entry { original, reply }),
        _ => Err(NatError::Decode { detail: "entry without its original and reply tuples".to_owned() }),
    }
}

/// (source, destination) of one TCP tuple.
fn tcp_tuple(tuple: &[Tuple], which: &str) -> Result<(SocketAddr, SocketAddr), NatError> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, None, None, None);
    for t in tuple {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(p) => {
                for p in p {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(*n),
                        ProtoTuple::SourcePort(n) => sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, dst, sport, dport, proto) {
        (Some(s), Some(d), Some(sp), Some(dp), Some(Protocol::Tcp)) => {
            Ok((SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
        }
        (.., Some(p)) if p != Protocol::Tcp => {
            Err(NatError::Decode { detail: format!("{which} tuple is not TCP (protocol {})", u8::from(p)) })
        }
        _ => Err(NatError::Decode { detail: format!("{which} tuple lacks an address, port or protocol") }),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Inode of the agent's network namespace: `/proc/self/ns/net` reads `net:[INODE]`.
fn own_netns() -> Result<u32, NatError> {
    let link = std::fs::read_link("/proc/self/ns/net").map_err(|e| NatError::Netns { detail: e.to_string() })?;
    parse_netns_link(&link.to_string_lossy())
        .ok_or_else(|| NatError::Netns { detail: format!("unexpected link {link:?}") })
}

fn parse_netns_link(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: the fd is the open socket `socket` owns; the option value points to a
    // `timeval` that lives for the call, with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(libc::socklen_t::MAX),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer (6.18) to a GET by the reply tuple 127.0.0.1:18081 ->
    /// 127.0.0.1:36550, sequence number 7, captured while a client was connected to
    /// 127.0.0.100:80 with `iptables -t nat -A OUTPUT -d 127.0.0.100 -p tcp --dport 80
    /// -j DNAT --to-destination 127.0.0.1:18081` in place.
    const DNAT_REPLY: &str = "d400000000010200070000008d6d0000020000003400018014000180080001007f000001080002007f0000641c0002800500010006000000060002008ec6000006000300005000003400028014000180080001007f000001080002007f0000011c00028005000100060000000600020046a10000060003008ec6000008000300000001ae080008000000000008000c00d510bd9208000b0000000002080007000006977f300004802c0001800500010003000000050002000a000000050003000a00000006000400230000000600050023000000";

    /// The kernel's answer to the same GET for a tuple it has no entry for (ENOENT,
    /// followed by the request echoed back).
    const ENOENT_REPLY: &str = "5c0000000200000007000000906d0000feffffff48000000010101000700000000000000020000003400028014000180080001007f000001080002007f0000011c00028005000100060000000600020046a100000600030000010000";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn get_request_bytes_ipv4() {
        let mut out = Vec::new();
        encode_get(7, addr("127.0.0.1:18081"), addr("127.0.0.1:36550"), &mut out).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            // nlmsghdr: length 72, type CTNETLINK<<8 | IPCTNL_MSG_CT_GET, NLM_F_REQUEST, seq 7, pid 0
            72, 0, 0, 0, 0x01, 0x01, 0x01, 0x00, 7, 0, 0, 0, 0, 0, 0, 0,
            // nfgenmsg: AF_INET, version 0, res_id 0
            2, 0, 0, 0,
            // CTA_TUPLE_REPLY (nested), 52 bytes
            52, 0, 0x02, 0x80,
            //   CTA_TUPLE_IP (nested), 20 bytes: V4_SRC 127.0.0.1, V4_DST 127.0.0.1
            20, 0, 0x01, 0x80, 8, 0, 1, 0, 127, 0, 0, 1, 8, 0, 2, 0, 127, 0, 0, 1,
            //   CTA_TUPLE_PROTO (nested), 28 bytes: PROTO_NUM 6, SRC_PORT 18081, DST_PORT 36550 (big endian)
            28, 0, 0x02, 0x80, 5, 0, 1, 0, 6, 0, 0, 0, 6, 0, 2, 0, 0x46, 0xa1, 0, 0, 6, 0, 3, 0, 0x8e, 0xc6, 0, 0,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn get_request_bytes_ipv6() {
        let mut out = Vec::new();
        encode_get(0x0102_0304, addr("[::1]:8080"), addr("[fd00::2]:40000"), &mut out).unwrap();
        assert_eq!(out.len(), 96);
        assert_eq!(&out[..4], &96u32.to_ne_bytes());
        assert_eq!(&out[8..12], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(out[16], 10, "nfgenmsg family AF_INET6");
        // CTA_TUPLE_REPLY, then CTA_TUPLE_IP with CTA_IP_V6_SRC (3) and CTA_IP_V6_DST
        // (4), 16 bytes each, then CTA_TUPLE_PROTO with the ports.
        assert_eq!(&out[20..24], &[76, 0, 0x02, 0x80]);
        assert_eq!(&out[24..28], &[44, 0, 0x01, 0x80]);
        assert_eq!(&out[28..32], &[20, 0, 3, 0]);
        assert_eq!(&out[32..48], &"::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(&out[48..52], &[20, 0, 4, 0]);
        assert_eq!(&out[52..68], &"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(&out[68..72], &[28, 0, 0x02, 0x80]);
        assert_eq!(&out[72..77], &[5, 0, 1, 0, 6]);
        assert_eq!(&out[80..86], &[6, 0, 2, 0, 0x1f, 0x90]);
        assert_eq!(&out[88..94], &[6, 0, 3, 0, 0x9c, 0x40]);
    }

    #[test]
    fn mixed_families_are_refused() {
        let mut out = Vec::new();
        let e = encode_get(1, addr("127.0.0.1:1"), addr("[::1]:2"), &mut out).unwrap_err();
        assert!(matches!(e, NatError::MixedFamilies { .. }), "{e}");
    }

    #[test]
    fn decodes_a_captured_dnat_entry() {
        let got = decode_reply(&unhex(DNAT_REPLY), 7).unwrap();
        let want = Entry {
            original: (addr("127.0.0.1:36550"), addr("127.0.0.100:80")),
            reply: (addr("127.0.0.1:18081"), addr("127.0.0.1:36550")),
        };
        assert_eq!(got, Reply::Found(want));
    }

    #[test]
    fn enoent_is_not_found_and_other_numbers_are_stale() {
        assert_eq!(decode_reply(&unhex(ENOENT_REPLY), 7).unwrap(), Reply::NotFound);
        assert_eq!(decode_reply(&unhex(ENOENT_REPLY), 8).unwrap(), Reply::Stale);
        assert_eq!(decode_reply(&unhex(DNAT_REPLY), 6).unwrap(), Reply::Stale);
    }

    #[test]
    fn a_stale_answer_before_the_current_one_in_a_datagram_is_skipped() {
        let mut both = unhex(ENOENT_REPLY);
        both.extend(unhex(DNAT_REPLY));
        // The ENOENT is for sequence 7, the entry (rewritten) for sequence 9.
        let at = unhex(ENOENT_REPLY).len() + 8;
        both[at..at + 4].copy_from_slice(&9u32.to_ne_bytes());
        assert!(matches!(decode_reply(&both, 9).unwrap(), Reply::Found(_)));
        assert_eq!(decode_reply(&both, 7).unwrap(), Reply::NotFound);
    }

    #[test]
    fn other_kernel_errors_are_errors() {
        let mut eperm = unhex(ENOENT_REPLY);
        eperm[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        let e = decode_reply(&eperm, 7).unwrap_err();
        assert!(matches!(e, NatError::Kernel { errno: libc::EPERM }), "{e}");
        assert!(!e.to_string().contains('\n'));
        // An acknowledgement (error code 0) is not an answer to a GET without NLM_F_ACK.
        let mut ack = unhex(ENOENT_REPLY);
        ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert!(matches!(decode_reply(&ack, 7), Err(NatError::Decode { .. })));
    }

    /// Builds an answer with the crate's emitter: an IPv6 entry whose destination was
    /// rewritten, the way the kernel would answer.
    fn ipv6_reply(seq: u32, proto: Protocol) -> Vec<u8> {
        let tuple = |s: SocketAddr, d: SocketAddr| {
            vec![
                Tuple::Ip(vec![IPTuple::SourceAddress(s.ip()), IPTuple::DestinationAddress(d.ip())]),
                Tuple::Proto(vec![
                    ProtoTuple::Protocol(proto),
                    ProtoTuple::SourcePort(s.port()),
                    ProtoTuple::DestinationPort(d.port()),
                ]),
            ]
        };
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv6, 0, 0),
                ConntrackMessage::New(vec![
                    ConntrackAttribute::CtaTupleOrig(tuple(addr("[fd00::2]:40000"), addr("[fd00::100]:80"))),
                    ConntrackAttribute::CtaTupleReply(tuple(addr("[::1]:8080"), addr("[fd00::2]:40000"))),
                    ConntrackAttribute::CtaTimeout(120),
                ]),
            )),
        );
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        out
    }

    #[test]
    fn decodes_an_ipv6_entry() {
        let got = decode_reply(&ipv6_reply(3, Protocol::Tcp), 3).unwrap();
        let Reply::Found(e) = got else { panic!("{got:?}") };
        assert_eq!(e.original, (addr("[fd00::2]:40000"), addr("[fd00::100]:80")));
        assert_eq!(e.reply, (addr("[::1]:8080"), addr("[fd00::2]:40000")));
    }

    #[test]
    fn a_udp_entry_is_an_error() {
        let e = decode_reply(&ipv6_reply(3, Protocol::Udp), 3).unwrap_err();
        assert!(e.to_string().contains("not TCP"), "{e}");
    }

    #[test]
    fn an_entry_without_its_original_tuple_is_an_error() {
        // Drop CTA_TUPLE_ORIG (the first attribute, 52 bytes) from the captured answer.
        let mut bytes = unhex(DNAT_REPLY);
        bytes.drain(20..72);
        let len = u32::try_from(bytes.len()).unwrap();
        bytes[..4].copy_from_slice(&len.to_ne_bytes());
        assert!(matches!(decode_reply(&bytes, 7), Err(NatError::Decode { .. })));
    }

    /// Every truncation and every single-byte corruption of the captured answers decodes
    /// to a result or an error, never a panic, and errors are one line.
    #[test]
    fn odd_answers_never_panic() {
        for fixture in [unhex(DNAT_REPLY), unhex(ENOENT_REPLY), ipv6_reply(7, Protocol::Tcp)] {
            for n in 0..fixture.len() {
                if let Err(e) = decode_reply(&fixture[..n], 7) {
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
            for i in 0..fixture.len() {
                for v in [0u8, 1, 3, 0x7f, 0x80, 0xff] {
                    let mut b = fixture.clone();
                    b[i] = v;
                    let _ = decode_reply(&b, 7);
                }
            }
        }
        assert!(decode_reply(&[], 7).is_ok_and(|r| r == Reply::Stale));
    }

    #[test]
    fn netns_link() {
        assert_eq!(parse_netns_link("net:[4026531840]"), Some(4_026_531_840));
        assert_eq!(parse_netns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_netns_link("net:[x]"), None);
        assert!(own_netns().is_ok_and(|n| n > 0));
    }

    #[test]
    fn classification() {
        let (server, client, vip) = (addr("127.0.0.1:8080"), addr("127.0.0.1:40000"), addr("127.0.0.100:80"));
        let e = |original, reply| Some(Entry { original, reply });
        assert_eq!(classify(None, server, client), Translation::NotFound);
        // DNAT: the client connected to the virtual IP.
        assert_eq!(
            classify(e((client, vip), (server, client)), server, client),
            Translation::Destination((client, vip))
        );
        // No NAT.
        assert_eq!(classify(e((client, server), (server, client)), server, client), Translation::None);
        // DNAT plus a source-port remap (the reply tuple would have clashed): the server
        // sees port 40001, the client's socket is 40000 -> VIP.
        let remapped = addr("127.0.0.1:40001");
        assert_eq!(
            classify(e((client, vip), (server, remapped)), server, remapped),
            Translation::Source((client, vip))
        );
        // The kernel matched the asked tuple as an original tuple: `server` opened this
        // connection itself; not an answer about an accepted connection.
        assert_eq!(classify(e((server, client), (client, server)), server, client), Translation::NotFound);
    }

    #[test]
    fn mapped_addresses_are_looked_up_as_ipv4() {
        assert_eq!(canonical(addr("[::ffff:127.0.0.1]:80")), addr("127.0.0.1:80"));
        assert_eq!(canonical(addr("[::1]:80")), addr("[::1]:80"));
    }
}
