//! Ring-buffer records → typed, normalised events: roles, directions and socket
//! addresses as the rest of the agent uses them. Borrowed: a data event's payload is a
//! slice of the ring buffer item, nothing is copied or allocated.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ghostwire_common::{
    payload, state, ConnEvent, DataEvent, EventKind, ExecEvent, ExitEvent, ListenEvent, StateEvent, TlsBindEvent,
    Tuple, COMM_LEN, CONN_MIDSTREAM, DIR_EGRESS, DIR_INGRESS, ROLE_CLIENT, ROLE_SERVER,
};

use crate::protocol::{Direction, Role};

/// A connection: the kernel socket address and when the kernel started tracking it (a
/// recycled `struct sock` is a new connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub sock: u64,
    pub gen: u64,
}

/// Where a data event's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Copied from the process's buffer (the prefix and tail slices).
    Copied,
    /// The bytes never passed through user memory (sendfile, splice, io_uring).
    NoUserBuffer,
    /// The kernel could not read the process's buffer.
    ReadFailed,
}

/// Bytes a process moved on a connection: `[offset, offset + len)` of the direction's
/// stream. The first `prefix.len()` are in `prefix`, the last `tail.len()` in `tail`,
/// the ones between are a gap of [`Data::gap`] bytes.
#[derive(Clone, Copy, Debug)]
pub struct Data<'a> {
    /// `sock` is 0 for TLS plaintext whose connection is not known yet.
    pub conn: ConnId,
    /// The TLS session (`SSL*`) whose plaintext this is; `None` for socket bytes.
    pub tls: Option<u64>,
    pub pid: u32,
    pub tid: u32,
    pub dir: Direction,
    pub offset: u64,
    /// When the last transfer of this direction that was not reported happened (0:
    /// none): after a jump in offsets, the missing bytes moved at or before it.
    pub unreported_ns: u64,
    pub len: u32,
    /// CLOCK_MONOTONIC, when the socket layer finished the transfer.
    pub ts_ns: u64,
    pub prefix: &'a [u8],
    pub tail: &'a [u8],
    pub payload: Payload,
}

impl Data<'_> {
    /// Bytes between the prefix and the tail that were not copied.
    #[must_use]
    pub fn gap(&self) -> u64 {
        u64::from(self.len) - self.prefix.len() as u64 - self.tail.len() as u64
    }

    /// A read that returned 0: the peer will send nothing more.
    #[must_use]
    pub fn is_eof(&self) -> bool {
        self.len == 0
    }
}

/// A process started using a connection (the first time, or after another process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub conn: ConnId,
    pub pid: u32,
    pub tid: u32,
    /// Network namespace inode (as in `/proc/PID/ns/net`).
    pub netns: u32,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// From the handshake; `None` for a connection joined mid-stream.
    pub role: Option<Role>,
    /// Opened before the kernel tracked it: the byte stream is joined mid-way.
    pub midstream: bool,
    /// TCP sequence number of stream offset 0, per direction (ingress, egress).
    pub tcp_seq: [u32; 2],
    /// The kernel's name of the thread (NUL-padded).
    pub comm: [u8; COMM_LEN],
    /// The process's parent (0: unknown).
    pub ppid: u32,
    pub ts_ns: u64,
    /// Client connections: the thread that called `connect()`, and when.
    pub opened_by: Option<crate::conn::Opener>,
}

/// What happened to a tracked connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateChange {
    /// This side will send nothing more (the process closed or shut down its writes).
    SendClosed,
    /// The connection is gone.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub conn: ConnId,
    pub ts_ns: u64,
    pub change: StateChange,
}

/// A TCP socket started or stopped listening on `port` in namespace `netns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    pub netns: u32,
    pub port: u16,
    pub listening: bool,
}

/// One decoded ring-buffer record.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    Data(Data<'a>),
    Conn(Conn),
    State(State),
    Listen(Listen),
    Exit {
        pid: u32,
        ts_ns: u64,
    },
    /// TLS session `ssl` of process `pid` runs over `conn`.
    TlsBind {
        pid: u32,
        ssl: u64,
        conn: ConnId,
        ts_ns: u64,
    },
    /// Process `pid` called exec.
    Exec {
        pid: u32,
        ts_ns: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for its kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("data record claims {claimed} copied bytes but carries {available}")]
    Truncated { claimed: u64, available: usize },
    #[error("data record copies {copied} bytes of a {len}-byte transfer")]
    Overlong { copied: u64, len: u32 },
    #[error("record field {field} has the invalid value {value}")]
    Invalid { field: &'static str, value: u64 },
}

/// Reads a `T` from the start of `bytes` if it is long enough.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short { kind, len: bytes.len() });
    }
    // SAFETY: length checked; the record types are `repr(C)` plain integers for which
    // every bit pattern is valid; `read_unaligned` has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let kind = read::<u32>(bytes, 0)?;
    match EventKind::from_u32(kind) {
        Some(EventKind::Data) => data(bytes, kind).map(Event::Data),
        Some(EventKind::Conn) => read::<ConnEvent>(bytes, kind).and_then(conn).map(Event::Conn),
        Some(EventKind::State) => {
            let ev: StateEvent = read(bytes, kind)?;
            let change = match ev.state {
                state::SEND_CLOSED => StateChange::SendClosed,
                state::CLOSED => StateChange::Closed,
                other => return Err(DecodeError::Invalid { field: "state", value: other.into() }),
            };
            Ok(Event::State(State { conn: ConnId { sock: ev.sock, gen: ev.conn_gen }, ts_ns: ev.ts_ns, change }))
        }
        Some(EventKind::Listen) => {
            let ev: ListenEvent = read(bytes, kind)?;
            Ok(Event::Listen(Listen { netns: ev.netns, port: ev.port, listening: ev.listening != 0 }))
        }
        Some(EventKind::ProcExit) => {
            let ev: ExitEvent = read(bytes, kind)?;
            Ok(Event::Exit { pid: ev.tgid, ts_ns: ev.ts_ns })
        }
        Some(EventKind::TlsBind) => {
            let ev: TlsBindEvent = read(bytes, kind)?;
            if ev.ssl == 0 || ev.sock == 0 {
                return Err(DecodeError::Invalid { field: "tls_bind", value: 0 });
            }
            Ok(Event::TlsBind {
                pid: ev.tgid,
                ssl: ev.ssl,
                conn: ConnId { sock: ev.sock, gen: ev.conn_gen },
                ts_ns: ev.ts_ns,
            })
        }
        Some(EventKind::Exec) => {
            let ev: ExecEvent = read(bytes, kind)?;
            Ok(Event::Exec { pid: ev.tgid, ts_ns: ev.ts_ns })
        }
        None => Err(DecodeError::UnknownKind { kind }),
    }
}

fn data(bytes: &[u8], kind: u32) -> Result<Data<'_>, DecodeError> {
    let h: DataEvent = read(bytes, kind)?;
    let dir = direction(h.direction)?;
    let copied = u64::from(h.captured) + u64::from(h.tail);
    if copied > u64::from(h.len) {
        return Err(DecodeError::Overlong { copied, len: h.len });
    }
    let rest = &bytes[size_of::<DataEvent>()..];
    let truncated = || DecodeError::Truncated { claimed: copied, available: rest.len() };
    let prefix = rest.get(..h.captured as usize).ok_or_else(truncated)?;
    let tail = rest.get(h.captured as usize..copied as usize).ok_or_else(truncated)?;
    let payload = match h.payload {
        payload::COPIED => Payload::Copied,
        payload::NO_USER_BUFFER => Payload::NoUserBuffer,
        payload::READ_FAILED => Payload::ReadFailed,
        other => return Err(DecodeError::Invalid { field: "payload", value: other.into() }),
    };
    Ok(Data {
        conn: ConnId { sock: h.sock, gen: h.conn_gen },
        tls: (h.tls != 0).then_some(h.tls),
        pid: h.tgid,
        tid: h.tid,
        dir,
        offset: h.offset,
        unreported_ns: h.unreported_ns,
        len: h.len,
        ts_ns: h.ts_ns,
        prefix,
        tail,
        payload,
    })
}

fn conn(ev: ConnEvent) -> Result<Conn, DecodeError> {
    let role = match ev.role {
        ROLE_SERVER => Some(Role::Server),
        ROLE_CLIENT => Some(Role::Client),
        _ => None,
    };
    if ev.tuple.family != 2 && ev.tuple.family != 10 {
        return Err(DecodeError::Invalid { field: "family", value: ev.tuple.family.into() });
    }
    let (local, peer) = addrs(&ev.tuple);
    Ok(Conn {
        conn: ConnId { sock: ev.sock, gen: ev.conn_gen },
        pid: ev.tgid,
        tid: ev.tid,
        netns: ev.netns,
        local,
        peer,
        role,
        midstream: ev.flags & CONN_MIDSTREAM != 0,
        tcp_seq: ev.tcp_seq,
        comm: ev.comm,
        ppid: ev.ppid,
        // Only a connection seen going SYN_SENT → ESTABLISHED has an opener.
        opened_by: (role == Some(Role::Client) && ev.connect_ns != 0)
            .then_some(crate::conn::Opener { tid: ev.connect_tid, ts_ns: ev.connect_ns }),
        ts_ns: ev.ts_ns,
    })
}

fn direction(raw: u8) -> Result<Direction, DecodeError> {
    match raw {
        DIR_INGRESS => Ok(Direction::Ingress),
        DIR_EGRESS => Ok(Direction::Egress),
        other => Err(DecodeError::Invalid { field: "direction", value: other.into() }),
    }
}

/// (local, peer) socket addresses of a kernel tuple. IPv4-mapped IPv6 addresses are
/// shown as IPv4.
#[must_use]
pub fn addrs(t: &Tuple) -> (SocketAddr, SocketAddr) {
    (SocketAddr::new(ip(t.family, &t.saddr), t.sport), SocketAddr::new(ip(t.family, &t.daddr), t.dport))
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == 2 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(*raw);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn as_bytes<T>(v: &T) -> &[u8] {
        // SAFETY: test helper over repr(C) plain data.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    pub(crate) fn data_header(len: u32, captured: u32, tail: u32) -> DataEvent {
        DataEvent {
            kind: EventKind::Data as u32,
            tgid: 7,
            tid: 8,
            _pad0: 0,
            sock: 0xffff,
            conn_gen: 1,
            tls: 0,
            ts_ns: 11,
            offset: 300,
            unreported_ns: 0,
            len,
            captured,
            tail,
            direction: DIR_INGRESS,
            payload: payload::COPIED,
            _pad: [0; 2],
        }
    }

    #[test]
    fn data_record_with_prefix_gap_and_tail() {
        let mut rec = as_bytes(&data_header(100, 5, 3)).to_vec();
        rec.extend_from_slice(b"GET /END");
        match decode(&rec) {
            Ok(Event::Data(d)) => {
                assert_eq!((d.pid, d.tid, d.offset, d.len), (7, 8, 300, 100));
                assert_eq!(d.dir, Direction::Ingress);
                assert_eq!((d.prefix, d.tail, d.gap()), (&b"GET /"[..], &b"END"[..], 92));
                assert_eq!(d.conn, ConnId { sock: 0xffff, gen: 1 });
            }
            other => panic!("unexpected {other:?}"),
        }
        // A record cut short of its payload is an error, not a panic.
        rec.truncate(rec.len() - 1);
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::Truncated { claimed: 8, available: 7 });
    }

    #[test]
    fn inconsistent_data_records_are_errors() {
        let mut rec = as_bytes(&data_header(4, 5, 0)).to_vec();
        rec.extend_from_slice(b"GET /");
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::Overlong { copied: 5, len: 4 });
        let mut h = data_header(4, 0, 0);
        h.direction = 9;
        assert_eq!(decode(as_bytes(&h)).unwrap_err(), DecodeError::Invalid { field: "direction", value: 9 });
    }

    #[test]
    fn conn_records_normalise_roles_and_addresses() {
        let mut tuple = Tuple { sport: 8080, dport: 40000, family: 10, ..Tuple::default() };
        // ::ffff:127.0.0.1 on both sides.
        for a in [&mut tuple.saddr, &mut tuple.daddr] {
            a[10] = 0xff;
            a[11] = 0xff;
            a[12] = 127;
            a[15] = 1;
        }
        let ev = ConnEvent {
            kind: EventKind::Conn as u32,
            tgid: 9,
            tid: 10,
            netns: 4_026_531_840,
            sock: 1,
            conn_gen: 2,
            ts_ns: 3,
            tuple,
            comm: [0; COMM_LEN],
            tcp_seq: [1, 2],
            role: 0,
            flags: CONN_MIDSTREAM,
            _pad: [0; 2],
            ppid: 1,
            // Not a client connection: an opener it might carry is not believed.
            connect_tid: 12,
            _pad1: 0,
            connect_ns: 13,
        };
        let Ok(Event::Conn(c)) = decode(as_bytes(&ev)) else { panic!("not a conn") };
        assert_eq!(c.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.peer, "127.0.0.1:40000".parse().unwrap());
        assert_eq!((c.role, c.midstream, c.netns, c.opened_by), (None, true, 4_026_531_840, None));

        // A client connection carries the thread that called connect(), and when.
        let client = ConnEvent { role: ROLE_CLIENT, flags: 0, ..ev };
        let Ok(Event::Conn(c)) = decode(as_bytes(&client)) else { panic!("not a conn") };
        assert_eq!(c.role, Some(Role::Client));
        assert_eq!(c.opened_by, Some(crate::conn::Opener { tid: 12, ts_ns: 13 }));
        // 0 = the connect was not seen (evicted, or before the agent started).
        let unseen = ConnEvent { connect_tid: 0, connect_ns: 0, ..client };
        let Ok(Event::Conn(c)) = decode(as_bytes(&unseen)) else { panic!("not a conn") };
        assert_eq!(c.opened_by, None);
    }

    #[test]
    fn bad_records_are_errors() {
        assert!(matches!(decode(&[]), Err(DecodeError::Short { .. })));
        assert_eq!(decode(&[9, 0, 0, 0]).unwrap_err(), DecodeError::UnknownKind { kind: 9 });
        assert!(matches!(decode(&[2, 0, 0, 0, 1]), Err(DecodeError::Short { kind: 2, .. })));
    }
}
