/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * The one definition of every record that crosses the kernel/user boundary.
 * The Rust side (crates/agent/src/tracer/abi.rs) mirrors these structs and
 * asserts their size and field offsets in a unit test; change both together.
 * Every record starts with a one-byte type tag so a reader can dispatch
 * without knowing which ring buffer it came from. Padding is explicit
 * (built with -Wpadded -Werror) so the layout never depends on the compiler.
 */
#ifndef AUTOTEL_EVENTS_H
#define AUTOTEL_EVENTS_H

/* Hard ceiling of the payload prefix one event carries; the runtime limit
 * (capture.max_bytes) is a read-only global set before load and is below this.
 * HTTP/2 connections get their own limit (capture.http2_max_bytes, the
 * whole ceiling by default): one read or write there carries the frames of
 * many streams at once, and a frame in the uncaptured part is a stream never
 * seen to start or end. */
#define AT_MAX_CAPTURE 32768
#define AT_WIDE_CAPTURE (AT_MAX_CAPTURE - 1)
/* Last bytes of a syscall's buffer when the prefix did not reach them:
 * enough to see the end of a chunked body ("\r\n0\r\n\r\n") without
 * copying the body. */
#define AT_TAIL_BYTES 32
/* Bytes of an exec'ed path carried in a process event. */
#define AT_FILENAME_LEN 128

/* Values of the selected_pids map (bit flags). */
#define AT_SEL_CONFIRMED 1   /* user space selected it */
#define AT_SEL_INHERITED 2   /* forked from a selected process */
#define AT_SEL_PROVISIONAL 4 /* exec'ed while an executable-name selector is set: user space decides */
#define AT_SEL_EXPLICIT 8    /* listed by pid: survives exec */
#define AT_SEL_GO 16         /* a Go program (amd64 register ABI): context follows goroutines */
/* Bits above the flags of a provisional selection: a random tag of the exec
 * that made it, also sent in that exec's event, so user space rejecting one
 * exec never removes the selection a later exec of the same pid made. */
#define AT_SEL_TAG_SHIFT 8

/* readv/writev/sendmsg/recvmsg: iovec entries walked per syscall, the
 * kernel's own UIO_MAXIOV. gRPC writes three iovecs per call, and a busy
 * channel sends dozens of calls in one sendmsg: a lower bound lost calls. */
#define AT_MAX_IOV 1024

/* Any implicit padding in the structs below is a build error. */
#pragma clang diagnostic push
#pragma clang diagnostic error "-Wpadded"

enum at_event_type {
	AT_EV_DATA = 1,
	AT_EV_CLOSE = 2,
	AT_EV_PROC = 3,
	AT_EV_FLOW = 4,
	AT_EV_WIRE_CTX = 5,
};

enum at_direction {
	AT_DIR_INGRESS = 0, /* the process read it */
	AT_DIR_EGRESS = 1,  /* the process wrote it */
};

enum at_role {
	AT_ROLE_UNKNOWN = 0, /* connection existed before we saw accept/connect */
	AT_ROLE_CLIENT = 1,  /* connect() */
	AT_ROLE_SERVER = 2,  /* accept()/accept4() */
};

/* Which syscall produced a data event (for debugging and counters). */
enum at_syscall {
	AT_SYS_READ = 1,
	AT_SYS_WRITE,
	AT_SYS_READV,
	AT_SYS_WRITEV,
	AT_SYS_RECVFROM,
	AT_SYS_SENDTO,
	AT_SYS_RECVMSG,
	AT_SYS_SENDMSG,
	AT_SYS_SENDFILE,
	AT_SYS_SENDMMSG,
	AT_SYS_SSL_READ,      /* plaintext returned by SSL_read/SSL_read_ex */
	AT_SYS_SSL_WRITE,     /* plaintext given to SSL_write/SSL_write_ex */
};

enum at_proc_kind {
	AT_PROC_EXEC = 1,
	AT_PROC_EXIT = 2,
	AT_PROC_LISTEN = 3,
	AT_PROC_FORK = 4,
};

/* Indexes of the per-CPU counter array the kernel side bumps when it has to
 * drop or cut something; user space sums them and exports them. */
enum at_counter {
	AT_CNT_DATA_LOST = 0,     /* ring buffer full: data event dropped */
	AT_CNT_PROC_LOST = 1,     /* ring buffer full: process event dropped */
	AT_CNT_CLOSE_LOST = 2,    /* ring buffer full: close event dropped */
	AT_CNT_TRUNCATED = 3,     /* payload longer than the capture limit */
	AT_CNT_IOV_CUT = 4,       /* more iovecs than AT_MAX_IOV */
	AT_CNT_ARGS_MISSING = 5,  /* exit without a matching enter */
	AT_CNT_FLOW_LOST = 6,     /* ring buffer full: TCP lifecycle event dropped */
	AT_CNT_TLS_NO_FD = 7,     /* TLS call whose socket we never saw: plaintext dropped */
	AT_CNT_WIRE_NO_ROOM = 8,  /* data segment with no TCP option space left: context not sent */
	AT_CNT_WIRE_LOST = 9,     /* ring buffer full: trace-context event dropped */
	AT_CNT_H2_UNFOLLOWED = 10, /* HTTP/2 frame boundaries lost in a call: later frames past the capture unseen */
	AT_CNT_MAX = 11,
};

/* A connection's endpoints as the process sees them. Addresses are IPv4 in
 * the first 4 bytes (family 2) or IPv6 (family 10); ports in host order. */
struct at_conn_tuple {
	__u8 saddr[16]; /* local */
	__u8 daddr[16]; /* remote */
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 proto; /* 6 TCP, 17 UDP */
	__u8 _pad;
};

struct at_data_event {
	__u8 type;      /* AT_EV_DATA */
	__u8 direction; /* enum at_direction */
	__u8 role;      /* enum at_role */
	__u8 syscall;   /* enum at_syscall */
	__u32 pid;      /* tgid */
	__u32 tid;
	__s32 fd;
	__u64 conn_start_ns; /* when we first saw this fd as a socket: with pid+fd a unique connection id */
	__u64 enter_ns;      /* CLOCK_MONOTONIC at syscall entry */
	__u64 exit_ns;       /* CLOCK_MONOTONIC at syscall exit */
	__u32 total_len;     /* bytes the syscall moved */
	__u16 captured_len;  /* bytes of data[] that are valid */
	__u16 tail_len;      /* bytes of tail[] that are valid */
	/* The server connection whose request this thread was serving when it
	 * wrote this (egress on non-server sockets); ctx_fd < 0: none
	 * (AT_CTX_OVER: known to serve none, see goroutine_serving). */
	__s32 ctx_fd;
	/* HTTP/2: bytes of frame records after the prefix in data[] (see
	 * AT_H2_RECORD); 0 on every other connection. */
	__u16 frames_len;
	__u16 _pad;
	__u64 ctx_conn_start_ns;
	struct at_conn_tuple tuple;
	__u8 tail[AT_TAIL_BYTES]; /* last bytes of the buffer when captured_len < total_len */
	/* Twice the ceiling so the verifier can prove a masked offset plus a
	 * masked length stays in bounds; only captured_len bytes are sent. */
	__u8 data[AT_MAX_CAPTURE * 2];
};

struct at_close_event {
	__u8 type; /* AT_EV_CLOSE */
	__u8 role;
	__u16 _pad;
	__u32 pid;
	__u32 tid;
	__s32 fd;
	__u64 conn_start_ns;
	__u64 ts_ns;
	struct at_conn_tuple tuple;
};

struct at_proc_event {
	__u8 type; /* AT_EV_PROC */
	__u8 kind; /* enum at_proc_kind */
	__u16 _pad;
	__u32 pid;  /* tgid */
	__u32 ppid; /* parent tgid (fork) */
	__u32 exec_sel; /* exec: the selected_pids value it wrote (0: none) */
	__u64 ts_ns;
	char comm[16];
	char filename[AT_FILENAME_LEN]; /* exec: the path given to execve */
};

enum at_flow_kind {
	AT_FLOW_OPEN = 1,  /* active: SYN-ACK came back; passive: accept() returned it */
	AT_FLOW_CLOSE = 2, /* the socket reached TCP_CLOSE (closed, reset, refused, timed out) */
};

/* Who a flow belongs to. Other/unknown only in whole-host mode. */
enum at_flow_owner {
	AT_FLOW_OWNER_UNKNOWN = 0,  /* passive connection closed before any accept() */
	AT_FLOW_OWNER_SELECTED = 1, /* a selected process connected/accepted it */
	AT_FLOW_OWNER_OTHER = 2,    /* an unselected process (pid and comm known) */
};

/* TCP lifecycle of one socket of a selected process (of any process in
 * whole-host mode). Byte counts are payload, derived from the kernel's own
 * tcp_sock counters at the time of the event. */
struct at_flow_event {
	__u8 type; /* AT_EV_FLOW */
	__u8 kind; /* enum at_flow_kind */
	__u8 role; /* enum at_role: client = active open, server = passive */
	__u8 old_state; /* state before TCP_CLOSE (SYN_SENT: the connect failed) */
	__u32 pid;
	__u32 tid;       /* the thread that connected/accepted */
	__s32 sk_err;    /* errno the socket ended with (ECONNREFUSED, ETIMEDOUT, ECONNRESET) */
	__u64 start_ns;  /* connect() sent the SYN / accept() returned */
	__u64 established_ns; /* 0: never established */
	__u64 ts_ns;
	__u64 bytes_sent;     /* payload, each byte once (retransmissions not counted again) */
	__u64 bytes_received; /* payload received in order */
	__u32 retransmits;    /* total_retrans */
	/* The server request the connecting thread was serving (ctx_fd < 0: none). */
	__s32 ctx_fd;
	__u64 ctx_conn_start_ns;
	struct at_conn_tuple tuple;
	char comm[16]; /* the owner's command name, when known */
	__u8 owner;    /* enum at_flow_owner */
	__u8 _pad[7];
};

/* The request a thread is serving: the server connection it last read a
 * request from. Keyed by tid. */
struct at_thread_ctx {
	__s32 fd;
	__u32 _pad;
	__u64 conn_start_ns;
};

/* An HTTP/2 frame whose header lies past an event's captured prefix (or,
 * not DATA, whose payload runs past it), as a record in
 * data[captured_len..captured_len + frames_len]: the call offset
 * of its header (u32, little endian), the payload bytes that follow the
 * header in the record (u16, little endian; none for DATA), the 9-byte
 * frame header, then that payload. Records come in call order. The last
 * may hold a header the call's end cuts: only its bytes before that end
 * are valid. */
#define AT_H2_RECORD 15

/* Where one direction of an HTTP/2 connection stands in its frames, carried
 * from one call to the next. */
struct at_h2_pos {
	__u32 skip;   /* bytes from the next call's start to the next frame header */
	__u8 tracked; /* skip is known */
	__u8 have;    /* 1-2: the last call ended inside a header's length field */
	__u8 part[2]; /* those bytes */
};

/* Per-connection state the kernel keeps, keyed by (tgid << 32 | fd). */
struct at_conn_info {
	__u64 start_ns;
	struct at_conn_tuple tuple;
	__u8 role;
	__u8 is_socket; /* 0: a file/pipe/unix socket we ignore (negative cache);
			 * AT_SOCK_PER_CALL: unconnected UDP, each call names its peer */
	__u8 last_dir;  /* enum at_last_dir: request boundaries for trace context on the wire */
	__u8 wide;      /* HTTP/2 (its preface was seen): capture up to capture_wide_bytes */
	/* The fd whose entry holds this connection: this one, or (dup/dup2:
	 * inetd-style servers read fd 0 and write fd 1, shells redirect a
	 * socket onto them) the first fd of this process the sock was seen on. */
	__s32 event_fd;
	/* The sock behind the fd: a different one means the fd was closed and
	 * reused, which the socket-level hooks see without a close() hook. */
	__u64 sk;
	struct at_h2_pos h2[2]; /* by enum at_direction, once wide */
	/* TLS plaintext was read from a library on it: the socket calls carry
	 * ciphertext, which must not move the HTTP/2 frame positions. */
	__u8 tls_plain;
	/* Go programs (see goroutines.h), server side: a response was written
	 * since the last request read, and how many requests were read. */
	__u8 go_replied;
	__u8 _pad[2];
	__u32 go_requests;
	/* Go programs: the goroutine that last read from it. */
	__u64 go_reader;
};

/* at_data_event.ctx_fd of a write by a Go goroutine whose inherited request
 * is over: no parent, not even the one the connection's last write had. */
#define AT_CTX_OVER -2

/* at_conn_info.is_socket of an unconnected UDP socket (socket hooks only):
 * its calls to port 53 are DNS, the tuple holds the last peer. */
#define AT_SOCK_PER_CALL 2

enum at_last_dir {
	AT_LAST_NONE = 0,
	AT_LAST_INGRESS = 1,
	AT_LAST_EGRESS = 2,
};

/* Trace context carried in a TCP header option (RFC 6994 experimental
 * option, kind 253, 16-bit ExID): trace id + span id of the client span
 * whose request the segment carries. 28 bytes: it fits next to timestamps
 * (12 bytes) in the 40 bytes of option space. */
#define AT_WIRE_KIND 253
#define AT_WIRE_EXID 0x6174 /* "at" */
struct at_wire_opt {
	__u8 kind;
	__u8 len;
	__u8 exid[2];
	__u8 trace_id[16];
	__u8 span_id[8];
};

enum at_wire_kind {
	AT_WIRE_OUT = 1, /* ids the kernel chose for a client request it is sending */
	AT_WIRE_IN = 2,  /* ids a peer sent with the request being read */
};

/* User space adopts these ids for the span of the request that follows on
 * this connection (OUT: the client span; IN: the server span's parent). */
struct at_wire_ctx_event {
	__u8 type; /* AT_EV_WIRE_CTX */
	__u8 kind; /* enum at_wire_kind */
	__u16 _pad;
	__u32 pid;
	__s32 fd;
	/* OUT: the server connection whose request the sending thread serves
	 * (-1: none), so user space can give that request the same trace id. */
	__s32 ctx_fd;
	__u64 conn_start_ns;
	__u64 ctx_conn_start_ns;
	__u8 trace_id[16];
	__u8 span_id[8];
};

#pragma clang diagnostic pop

#endif
