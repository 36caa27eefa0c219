//! Ring-buffer records → typed events. Borrowed: a data event's payload is a slice of the
//! ring buffer item, nothing is copied or allocated.
use ghostwire_common::{CloseEvent, ConnEvent, DataEvent, EventKind, ExitEvent};

/// One decoded ring-buffer record.
#[derive(Debug)]
pub enum Event<'a> {
    Data { header: DataEvent, payload: &'a [u8] },
    Conn(ConnEvent),
    Close(CloseEvent),
    Exit(ExitEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for its kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("data record claims {captured} captured bytes but carries {available}")]
    Truncated { captured: u32, available: usize },
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
        Some(EventKind::Data) => {
            let header: DataEvent = read(bytes, kind)?;
            let rest = &bytes[size_of::<DataEvent>()..];
            let payload = rest.get(..header.captured as usize).ok_or(DecodeError::Truncated {
                captured: header.captured,
                available: rest.len(),
            })?;
            Ok(Event::Data { header, payload })
        }
        Some(EventKind::Conn) => read(bytes, kind).map(Event::Conn),
        Some(EventKind::Close) => read(bytes, kind).map(Event::Close),
        Some(EventKind::ProcExit) => read(bytes, kind).map(Event::Exit),
        None => Err(DecodeError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghostwire_common::{ROLE_SERVER, DIR_INGRESS};

    fn as_bytes<T>(v: &T) -> &[u8] {
        // SAFETY: test helper over repr(C) plain data.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn data_record_with_payload() {
        let header = DataEvent {
            kind: EventKind::Data as u32,
            tgid: 7,
            tid: 8,
            fd: 3,
            sock: 0xffff,
            conn_gen: 1,
            ts_enter_ns: 10,
            ts_exit_ns: 11,
            len: 100,
            captured: 5,
            direction: DIR_INGRESS,
            role: ROLE_SERVER,
            probe: 0,
            _pad: [0; 5],
        };
        let mut rec = as_bytes(&header).to_vec();
        rec.extend_from_slice(b"GET /");
        match decode(&rec) {
            Ok(Event::Data { header: h, payload }) => {
                assert_eq!(h.tgid, 7);
                assert_eq!(h.len, 100);
                assert_eq!(payload, b"GET /");
            }
            other => panic!("unexpected {other:?}"),
        }
        // A record cut short of its payload is an error, not a panic.
        rec.truncate(rec.len() - 1);
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::Truncated { captured: 5, available: 4 });
    }

    #[test]
    fn bad_records_are_errors() {
        assert!(matches!(decode(&[]), Err(DecodeError::Short { .. })));
        assert_eq!(decode(&[9, 0, 0, 0]).unwrap_err(), DecodeError::UnknownKind { kind: 9 });
        assert!(matches!(decode(&[2, 0, 0, 0, 1]), Err(DecodeError::Short { kind: 2, .. })));
    }
}
