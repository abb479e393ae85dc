//! Listening TCP sockets of a network namespace, from sock_diag netlink with
//! a LISTEN state filter: the kernel then walks only its listening table.
//! Reading /proc/<pid>/net/tcp instead walks every bucket of the host's
//! established hash and formats every connection as text; on a busy host
//! that was the largest single cost of the agent's 5 s rescan.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use std::collections::HashMap;
use std::io::{Error, ErrorKind, Result};
use std::os::fd::AsRawFd;

/// socket inode -> local port of every TCP listener in the namespace of
/// `pid` (IPv4 and IPv6).
pub fn of_netns_of(pid: u32) -> Result<HashMap<u64, u16>> {
    let ns = format!("/proc/{pid}/ns/net");
    let same = std::fs::read_link(&ns)? == std::fs::read_link("/proc/self/ns/net")?;
    if same {
        return dump();
    }
    // setns() moves only the calling thread: a short-lived one does the
    // query, and the netlink socket it opens stays in that namespace.
    let file = std::fs::File::open(&ns)?;
    std::thread::Builder::new()
        .name("netns-listeners".into())
        .spawn(move || {
            // SAFETY: setns on a valid namespace fd; affects this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::last_os_error());
            }
            dump()
        })?
        .join()
        .map_err(|_| Error::other("listener query thread panicked"))?
}

fn dump() -> Result<HashMap<u64, u16>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut out = HashMap::new();
    for family in [AF_INET, AF_INET6] {
        request(&socket, family)?;
        read_replies(&socket, &mut out)?;
    }
    Ok(out)
}

fn request(socket: &Socket, family: u8) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    Ok(())
}

fn read_replies(socket: &Socket, out: &mut HashMap<u64, u16>) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[offset..size])
                .map_err(|e| Error::new(ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    out.insert(u64::from(r.header.inode), r.header.socket_id.source_port);
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(Error::other(format!("sock_diag: {e:?}")));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = of_netns_of(std::process::id()).unwrap();
        assert!(found.values().any(|p| *p == port), "{found:?}");
    }
}
