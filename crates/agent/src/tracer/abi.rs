//! Kernel records as Rust values. The layouts mirror bpf/common/events.h; the
//! test at the bottom checks them against the skeleton types libbpf-cargo
//! generated from the BPF object's BTF, so drift fails the build's tests.

/// Record type tags (the first byte of every ring-buffer record).
pub const EV_DATA: u8 = 1;
pub const EV_CLOSE: u8 = 2;
pub const EV_PROC: u8 = 3;
pub const EV_FLOW: u8 = 4;
pub const EV_WIRE_CTX: u8 = 5;

/// enum at_wire_kind: ids sent with a client request / received with a server one.
pub const WIRE_OUT: u8 = 1;
pub const WIRE_IN: u8 = 2;

pub const FLOW_OPEN: u8 = 1;
pub const FLOW_CLOSE: u8 = 2;
/// enum at_flow_owner: who a flow belongs to (0: unknown).
pub const FLOW_OWNER_SELECTED: u8 = 1;
pub const FLOW_OWNER_OTHER: u8 = 2;
/// TCP states (include/net/tcp_states.h).
pub const TCP_SYN_SENT: u8 = 2;
pub const PROTO_UDP: u8 = 17;

pub const DIR_INGRESS: u8 = 0;
/// at_data_event.ctx_fd of a write known to serve no request (AT_CTX_OVER).
pub const CTX_OVER: i32 = -2;

pub const ROLE_CLIENT: u8 = 1;
pub const ROLE_SERVER: u8 = 2;

pub const PROC_EXEC: u8 = 1;
pub const PROC_EXIT: u8 = 2;
pub const PROC_LISTEN: u8 = 3;
pub const PROC_FORK: u8 = 4;

/// Per-CPU counter indexes (enum at_counter).
pub const COUNTER_NAMES: [(u32, &str); 11] = [
    (0, "data_lost"),
    (1, "proc_lost"),
    (2, "close_lost"),
    (3, "truncated"),
    (4, "iov_cut"),
    (5, "args_missing"),
    (6, "flow_lost"),
    (7, "tls_no_fd"),
    (8, "wire_ctx_no_room"),
    (9, "wire_ctx_lost"),
    (10, "h2_unfollowed"),
];

/// DataHeader::syscall values of TLS plaintext (enum at_syscall).
pub const SYS_SSL_READ: u8 = 11;
pub const SYS_SSL_WRITE: u8 = 12;

pub const TAIL_BYTES: usize = 32;
pub const FILENAME_LEN: usize = 128;

/// selected_pids values (AT_SEL_* in events.h).
pub const SEL_CONFIRMED: u32 = 1;
pub const SEL_INHERITED: u32 = 2;
pub const SEL_EXPLICIT: u32 = 8;
pub const SEL_PROVISIONAL: u32 = 4;
/// A Go program (amd64 register ABI): the kernel follows context by goroutine.
pub const SEL_GO: u32 = 16;
/// Bits above the flags: the tag of the exec that made a provisional selection.
pub const SEL_TAG_SHIFT: u32 = 8;
/// Hard ceiling of capture.max_bytes and capture.http2_max_bytes
/// (AT_MAX_CAPTURE - 1: the kernel masks lengths).
pub const MAX_CAPTURE: u32 = 32767;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnTuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// 6 TCP, 17 UDP.
    pub proto: u8,
    pub _pad: u8,
}

impl ConnTuple {
    fn addr(&self, raw: &[u8; 16]) -> std::net::IpAddr {
        if self.family == 10 {
            let v6 = std::net::Ipv6Addr::from(*raw);
            v6.to_ipv4_mapped().map(Into::into).unwrap_or(v6.into())
        } else {
            std::net::Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()
        }
    }
    /// The address as flow keys hold it: an IPv4-mapped IPv6 address (the
    /// IPv4 peer of a dual-stack socket) as the IPv4 address it is, so the
    /// IPv4 client and the dual-stack server of one connection name the
    /// same flow.
    pub fn flow_addr(&self, raw: &[u8; 16]) -> [u8; 16] {
        match self.addr(raw) {
            std::net::IpAddr::V4(v4) if self.family == 10 => {
                let mut key = [0; 16];
                key[..4].copy_from_slice(&v4.octets());
                key
            }
            _ => *raw,
        }
    }

    pub fn local_addr(&self) -> std::net::IpAddr {
        self.addr(&self.saddr)
    }
    pub fn remote_addr(&self) -> std::net::IpAddr {
        self.addr(&self.daddr)
    }
    /// Both ends on this host: loopback, or one address talking to itself.
    pub fn is_same_host(&self) -> bool {
        self.saddr == self.daddr || self.local_addr().is_loopback()
    }
}

/// `struct at_data_event` without its payload array.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DataHeader {
    pub kind: u8,
    pub direction: u8,
    pub role: u8,
    pub syscall: u8,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_start_ns: u64,
    pub enter_ns: u64,
    pub exit_ns: u64,
    pub total_len: u32,
    pub captured_len: u16,
    pub tail_len: u16,
    pub ctx_fd: i32,
    /// HTTP/2 frame records after the prefix (AT_H2_RECORD).
    pub frames_len: u16,
    pub _pad: u16,
    pub ctx_conn_start_ns: u64,
    pub tuple: ConnTuple,
    pub tail: [u8; TAIL_BYTES],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CloseEvent {
    pub kind: u8,
    pub role: u8,
    pub _pad: u16,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_start_ns: u64,
    pub ts_ns: u64,
    pub tuple: ConnTuple,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProcEvent {
    pub kind: u8,
    pub proc_kind: u8,
    pub _pad: u16,
    pub pid: u32,
    pub ppid: u32,
    /// Exec: the selected_pids value the kernel wrote for it (0: none).
    pub exec_sel: u32,
    pub ts_ns: u64,
    pub comm: [u8; 16],
    pub filename: [u8; FILENAME_LEN],
}

impl ProcEvent {
    fn text(raw: &[u8]) -> String {
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    }
    pub fn comm(&self) -> String {
        Self::text(&self.comm)
    }
    pub fn filename(&self) -> String {
        Self::text(&self.filename)
    }
}

/// TCP lifecycle of one socket (struct at_flow_event).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FlowEvent {
    pub kind_tag: u8,
    pub kind: u8,
    pub role: u8,
    pub old_state: u8,
    pub pid: u32,
    pub tid: u32,
    pub sk_err: i32,
    pub start_ns: u64,
    pub established_ns: u64,
    pub ts_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u32,
    pub ctx_fd: i32,
    pub ctx_conn_start_ns: u64,
    pub tuple: ConnTuple,
    pub comm: [u8; 16],
    pub owner: u8,
    pub _pad: [u8; 7],
}

impl FlowEvent {
    /// The owner's command name (kernel comm), when the kernel knew it.
    pub fn comm(&self) -> Option<String> {
        (matches!(self.owner, FLOW_OWNER_SELECTED | FLOW_OWNER_OTHER) && self.comm[0] != 0)
            .then(|| ProcEvent::text(&self.comm))
    }
}

/// Trace context carried in a TCP option (struct at_wire_ctx_event).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WireCtxEvent {
    pub kind_tag: u8,
    pub kind: u8,
    pub _pad: u16,
    pub pid: u32,
    pub fd: i32,
    pub ctx_fd: i32,
    pub conn_start_ns: u64,
    pub ctx_conn_start_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// A data record borrowed from the ring buffer.
pub struct DataEvent<'a> {
    pub header: DataHeader,
    /// The captured prefix.
    pub data: &'a [u8],
    /// HTTP/2 frames past the prefix, as the kernel's records.
    pub frames: &'a [u8],
}

impl DataEvent<'_> {
    pub fn tail(&self) -> &[u8] {
        &self.header.tail[..(self.header.tail_len as usize).min(TAIL_BYTES)]
    }
}

pub enum Event<'a> {
    Data(DataEvent<'a>),
    Close(CloseEvent),
    Proc(ProcEvent),
    Flow(FlowEvent),
    WireCtx(WireCtxEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AbiError {
    #[error("record of {0} bytes is shorter than its type requires")]
    Short(usize),
    #[error("unknown record type {0}")]
    UnknownType(u8),
}

/// Reads a plain-old-data struct from the start of `bytes`, length-checked.
fn read_pod<T: Copy>(bytes: &[u8]) -> Result<T, AbiError> {
    if bytes.len() < std::mem::size_of::<T>() {
        return Err(AbiError::Short(bytes.len()));
    }
    // SAFETY: length checked above; T is a repr(C) struct of integers and
    // byte arrays, valid for any bit pattern; read_unaligned has no alignment needs.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// (pid, fd, conn_start_ns) of a data record: what the reader's look-ahead
/// needs to find the connection, without checking the payload as `decode` does.
pub fn data_conn(bytes: &[u8]) -> Option<(u32, i32, u64)> {
    if bytes.first() != Some(&EV_DATA) {
        return None;
    }
    // Only three fields are used: the compiler loads just those.
    let h: DataHeader = read_pod(bytes).ok()?;
    Some((h.pid, h.fd, h.conn_start_ns))
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, AbiError> {
    match bytes.first().copied() {
        Some(EV_DATA) => {
            let header: DataHeader = read_pod(bytes)?;
            let start = std::mem::size_of::<DataHeader>();
            let end = start + header.captured_len as usize;
            let data = bytes.get(start..end).ok_or(AbiError::Short(bytes.len()))?;
            let frames_end = end + header.frames_len as usize;
            let frames = bytes
                .get(end..frames_end)
                .ok_or(AbiError::Short(bytes.len()))?;
            Ok(Event::Data(DataEvent {
                header,
                data,
                frames,
            }))
        }
        Some(EV_CLOSE) => Ok(Event::Close(read_pod(bytes)?)),
        Some(EV_PROC) => Ok(Event::Proc(read_pod(bytes)?)),
        Some(EV_FLOW) => Ok(Event::Flow(read_pod(bytes)?)),
        Some(EV_WIRE_CTX) => Ok(Event::WireCtx(read_pod(bytes)?)),
        Some(t) => Err(AbiError::UnknownType(t)),
        None => Err(AbiError::Short(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracer::skel::types;
    use std::mem::{offset_of, size_of};

    /// An IPv4 client and a dual-stack server see one connection as an
    /// IPv4 and an IPv4-mapped IPv6 tuple: their flow addresses agree.
    #[test]
    fn flow_addr_unmaps_ipv4_mapped_addresses() {
        let v4 = ConnTuple {
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family: 2,
            ..Default::default()
        };
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        let dual = ConnTuple {
            saddr: mapped,
            family: 10,
            ..Default::default()
        };
        assert_eq!(dual.flow_addr(&dual.saddr), v4.flow_addr(&v4.saddr));
        let loopback6 = std::net::Ipv6Addr::LOCALHOST.octets();
        let v6 = ConnTuple {
            saddr: loopback6,
            family: 10,
            ..Default::default()
        };
        assert_eq!(v6.flow_addr(&v6.saddr), loopback6);
    }

    #[test]
    fn layouts_match_the_bpf_object() {
        assert_eq!(
            size_of::<DataHeader>(),
            offset_of!(types::at_data_event, data)
        );
        assert_eq!(
            offset_of!(DataHeader, conn_start_ns),
            offset_of!(types::at_data_event, conn_start_ns)
        );
        assert_eq!(
            offset_of!(DataHeader, total_len),
            offset_of!(types::at_data_event, total_len)
        );
        assert_eq!(
            offset_of!(DataHeader, frames_len),
            offset_of!(types::at_data_event, frames_len)
        );
        assert_eq!(
            offset_of!(DataHeader, tuple),
            offset_of!(types::at_data_event, tuple)
        );
        assert_eq!(
            offset_of!(DataHeader, tail),
            offset_of!(types::at_data_event, tail)
        );
        assert_eq!(size_of::<CloseEvent>(), size_of::<types::at_close_event>());
        assert_eq!(
            offset_of!(CloseEvent, tuple),
            offset_of!(types::at_close_event, tuple)
        );
        assert_eq!(size_of::<ProcEvent>(), size_of::<types::at_proc_event>());
        assert_eq!(
            offset_of!(ProcEvent, comm),
            offset_of!(types::at_proc_event, comm)
        );
        assert_eq!(size_of::<ConnTuple>(), size_of::<types::at_conn_tuple>());
        assert_eq!(
            offset_of!(ConnTuple, proto),
            offset_of!(types::at_conn_tuple, proto)
        );
        assert_eq!(size_of::<FlowEvent>(), size_of::<types::at_flow_event>());
        assert_eq!(
            offset_of!(FlowEvent, tuple),
            offset_of!(types::at_flow_event, tuple)
        );
        assert_eq!(
            offset_of!(FlowEvent, retransmits),
            offset_of!(types::at_flow_event, retransmits)
        );
        assert_eq!(
            offset_of!(FlowEvent, comm),
            offset_of!(types::at_flow_event, comm)
        );
        assert_eq!(
            offset_of!(FlowEvent, owner),
            offset_of!(types::at_flow_event, owner)
        );
        assert_eq!(
            size_of::<WireCtxEvent>(),
            size_of::<types::at_wire_ctx_event>()
        );
        assert_eq!(
            offset_of!(WireCtxEvent, trace_id),
            offset_of!(types::at_wire_ctx_event, trace_id)
        );
        assert_eq!(
            size_of::<types::at_data_event>() - offset_of!(types::at_data_event, data),
            2 * (MAX_CAPTURE as usize + 1)
        );
    }

    #[test]
    fn decode_rejects_short_and_unknown() {
        assert_eq!(decode(&[]).err(), Some(AbiError::Short(0)));
        assert_eq!(decode(&[EV_DATA, 0, 0]).err(), Some(AbiError::Short(3)));
        assert_eq!(decode(&[9; 200]).err(), Some(AbiError::UnknownType(9)));
        let mut rec = vec![0u8; size_of::<DataHeader>()];
        rec[0] = EV_DATA;
        // captured_len claims 5 bytes that are not there
        rec[offset_of!(DataHeader, captured_len)] = 5;
        assert!(decode(&rec).is_err());
        rec.extend_from_slice(b"hello");
        match decode(&rec).unwrap() {
            Event::Data(d) => assert_eq!((d.data, d.frames), (&b"hello"[..], &[][..])),
            _ => panic!("not data"),
        }
        // frames_len claims HTTP/2 records behind the prefix
        rec[offset_of!(DataHeader, frames_len)] = 3;
        assert!(decode(&rec).is_err());
        rec.extend_from_slice(b"abc");
        match decode(&rec).unwrap() {
            Event::Data(d) => assert_eq!((d.data, d.frames), (&b"hello"[..], &b"abc"[..])),
            _ => panic!("not data"),
        }
    }

    #[test]
    fn data_conn_reads_what_decode_reads() {
        let mut rec = vec![0u8; size_of::<DataHeader>()];
        rec[0] = EV_DATA;
        rec[offset_of!(DataHeader, pid)..][..4].copy_from_slice(&4242u32.to_ne_bytes());
        rec[offset_of!(DataHeader, fd)..][..4].copy_from_slice(&(-7i32).to_ne_bytes());
        rec[offset_of!(DataHeader, conn_start_ns)..][..8]
            .copy_from_slice(&123_456_789u64.to_ne_bytes());
        let Ok(Event::Data(d)) = decode(&rec) else {
            panic!("not data")
        };
        let h = d.header;
        assert_eq!(data_conn(&rec), Some((h.pid, h.fd, h.conn_start_ns)));
        assert_eq!(data_conn(&rec), Some((4242, -7, 123_456_789)));
        assert_eq!(data_conn(&rec[..rec.len() - 1]), None, "short");
        rec[0] = EV_CLOSE;
        assert_eq!(data_conn(&rec), None, "not a data record");
    }
}
