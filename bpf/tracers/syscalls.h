/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Syscall hooks: save arguments at entry, copy the payload prefix at exit
 * (when the returned length is known), one event per syscall. Two raw
 * tp_btf hooks (sys_enter/sys_exit) dispatch on the syscall number instead
 * of one tracepoint per syscall: they skip the perf trace-event machinery on
 * every syscall, and two links detach in milliseconds where thirty took
 * seconds (each release waits for its own RCU grace period). No kprobes or
 * fentry: this works where both are unavailable. */
#ifndef AUTOTEL_SYSCALLS_H
#define AUTOTEL_SYSCALLS_H

#include "sockets.h"
#include "wire_ctx.h"
#include "../common/syscall_nr.h"

#define AT_CAP_MASK (AT_MAX_CAPTURE - 1)
#define AT_MSG_PEEK 2

/* Inside SSL_read/SSL_write/SSL_do_handshake, a socket call names the
 * library's socket. */
static __always_inline void ssl_learn_fd(struct at_task_state *st, __s32 fd)
{
	if (st->ssl.active && st->ssl.fd != fd) {
		st->ssl.fd = fd;
		struct at_ssl_key key = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = st->ssl.ssl };
		bpf_map_update_elem(&ssl_fds, &key, &fd, BPF_ANY);
	}
}

/* Entry side: the selected-pid check comes first, then files we already know
 * are not sockets are dropped with one more lookup. */
static __always_inline int save_args(__s32 fd, __u64 buf, __u64 iovcnt, __u8 syscall)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct at_task_state *st = selected_task_state(tgid);
	if (!st)
		return 0;
	__u64 key = conn_key(tgid, fd);
	struct at_conn_info *info = bpf_map_lookup_elem(&conns, &key);
	if (info && !info->is_socket)
		return 0;
	ssl_learn_fd(st, fd);
	if (syscall == AT_SYS_WRITE || syscall == AT_SYS_WRITEV || syscall == AT_SYS_SENDTO ||
	    syscall == AT_SYS_SENDMSG || syscall == AT_SYS_SENDFILE)
		wire_client_write(st, info, tgid, fd);
	st->args.enter_ns = bpf_ktime_get_ns();
	st->args.buf = buf;
	st->args.iovcnt = iovcnt;
	st->args.fd = fd;
	st->args.syscall = syscall;
	st->args_valid = 1;
	return 0;
}

/* This CPU's slot of the event scratch space. */
static __always_inline struct at_data_event *scratch_event(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(&data_scratch, &cpu);
}

/* How much of one transfer an event carries on this connection. */
static __always_inline __u32 capture_cap(const struct at_conn_info *info)
{
	return info->wide ? capture_wide_bytes : capture_max_bytes;
}

/* The HTTP/2 client preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") opens the
 * connection's byte stream, read or written: capture it wide from now on.
 * Eight bytes tell it apart from anything HTTP/1 could send. */
#define AT_H2_PREFACE_HEAD 0x5448202a20495250ULL /* "PRI * HT", little endian */
static __always_inline int starts_with_h2_preface(const struct at_data_event *ev)
{
	return ev->captured_len >= 8 && *(const __u64 *)ev->data == AT_H2_PREFACE_HEAD;
}

/* A frame header's length (24 bits, big endian) under 64 KiB and a known
 * type: HTTP/1 text (byte 3 is a letter or a space) and the databases'
 * first bytes fail this, so only such calls pay the hint lookup. */
static __always_inline int may_start_with_frame(const struct at_data_event *ev)
{
	return ev->captured_len >= 9 && ev->data[0] == 0 && ev->data[3] <= 9;
}

static __always_inline void note_http2(struct at_conn_info *info, const struct at_data_event *ev)
{
	if (info->wide)
		return;
	if (starts_with_h2_preface(ev)) {
		info->wide = 1;
		return;
	}
	if (!may_start_with_frame(ev))
		return;
	__u64 key = conn_key(ev->pid, ev->fd);
	__u64 *start = bpf_map_lookup_elem(&h2_joined, &key);
	if (!start)
		return;
	if (*start == info->start_ns)
		info->wide = 1;
	bpf_map_delete_elem(&h2_joined, &key);
}

/* Copies up to `want` bytes from user memory into ev->data at `off`. */
static __always_inline void copy_chunk(struct at_data_event *ev, __u32 off, __u64 src, __u32 want)
{
	if (off >= AT_MAX_CAPTURE)
		return;
	/* Mask in registers the verifier sees: clang would drop a C mask it
	 * can prove redundant, and the verifier would lose the bound. */
	__u64 o = off, n = want;
	asm volatile("%0 &= %1" : "+r"(o) : "i"(AT_CAP_MASK));
	asm volatile("%0 &= %1" : "+r"(n) : "i"(AT_CAP_MASK));
	bpf_probe_read_user(&ev->data[o], n, (void *)src);
}

static __always_inline void copy_tail(struct at_data_event *ev, __u64 end)
{
	bpf_probe_read_user(ev->tail, AT_TAIL_BYTES, (void *)(end - AT_TAIL_BYTES));
	ev->tail_len = AT_TAIL_BYTES;
}

/* Plain buffer: prefix, and the last bytes when the prefix stops short. */
static __always_inline void capture_plain(struct at_data_event *ev, __u64 buf, __u32 len, __u32 cap)
{
	__u32 n = len < cap ? len : cap;
	copy_chunk(ev, 0, buf, n);
	ev->captured_len = n;
	if (len > n) {
		count(AT_CNT_TRUNCATED);
		/* Overlapping the prefix when fewer bytes were left out: a head
		 * or a chunked body ending a few bytes past the cut shows there. */
		if (len >= AT_TAIL_BYTES)
			copy_tail(ev, buf + len);
	}
}

/* iovec walk state for bpf_loop: the callback is verified once, so gRPC
 * style writes of dozens of small iovecs cost no verifier budget per entry. */
struct at_iov_walk {
	__u64 iov_ptr;
	__u64 iovcnt;
	__u32 len;
	__u32 cap;
	__u32 off;
	__u32 left;
	__u32 head_only; /* the bytes past cap are a body, left out on purpose */
	__u32 tail_got;	 /* bytes of ev->tail filled */
};

/* The part of one iovec that lies in the last AT_TAIL_BYTES of a write the
 * prefix stops short of, into ev->tail. Several iovecs may share the tail:
 * node writes a chunked body's last chunk and its end as iovecs of 1-5
 * bytes, and only the tail shows where the body ends. */
static __always_inline void iov_tail(struct at_iov_walk *w, struct at_data_event *ev, __u64 base, __u32 seg)
{
	if (w->left >= AT_TAIL_BYTES || w->len < AT_TAIL_BYTES || (w->len <= w->cap && !w->head_only))
		return;
	__u32 before = w->left + seg;
	__u32 from = before < AT_TAIL_BYTES ? before : AT_TAIL_BYTES;
	__u64 n = from - w->left;
	__u64 dst = AT_TAIL_BYTES - from;
	if (!n)
		return;
	__u64 src = base + seg - n;
	/* n <= from and dst = 32 - from: in bounds; the masks let the
	 * verifier see it (past tail[] lies data[], still in the value). */
	asm volatile("%0 &= %1" : "+r"(dst) : "i"(AT_TAIL_BYTES - 1));
	asm volatile("%0 &= %1" : "+r"(n) : "i"(2 * AT_TAIL_BYTES - 1));
	if (!bpf_probe_read_user(&ev->tail[dst], n, (void *)src))
		w->tail_got += n;
}

/* One iovec of the walk: its part of the prefix into `ev`, the count of
 * bytes left, and its part of the tail. */
static __always_inline void iov_take(struct at_iov_walk *w, struct at_data_event *ev, const struct iovec *iov)
{
	__u32 seg = iov->iov_len < w->left ? iov->iov_len : w->left;
	if (w->off < w->cap) {
		__u32 room = w->cap - w->off;
		copy_chunk(ev, w->off, (__u64)iov->iov_base, seg < room ? seg : room);
	}
	w->off += seg;
	w->left -= seg;
	iov_tail(w, ev, (__u64)iov->iov_base, seg);
}

static long iov_step(__u64 i, void *ctx)
{
	struct at_iov_walk *w = ctx;
	if (i >= w->iovcnt || w->left == 0)
		return 1;
	struct iovec iov = {};
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(w->iov_ptr + i * sizeof(iov))))
		return 1;
	/* The event being built: this CPU's scratch slot. */
	struct at_data_event *ev = scratch_event();
	if (!ev)
		return 1;
	iov_take(w, ev, &iov);
	return 0;
}

/* Up to this many iovecs (a server's header + body writev) are read in one
 * go and walked inline: no bpf_loop, one user read for the array. */
#define AT_FEW_IOV 4

#define AT_HTTP1_PREFIX 0x002e312f50545448ULL /* "HTTP/1.", little endian */
#define AT_HEAD_END 0x0a0d0a0dU		       /* "\r\n\r\n", little endian */

/* A whole HTTP/1 response head, `len` bytes at the start of ev->data? Not
 * for 1xx: what follows those is a final response, or (101) another
 * protocol, and user space reads both. */
static __always_inline int http1_response_head(const struct at_data_event *ev, __u32 len)
{
	if (len < 16 || (*(const __u64 *)ev->data & 0x00ffffffffffffffULL) != AT_HTTP1_PREFIX ||
	    ev->data[9] == '1')
		return 0;
	__u64 i = len - 4;
	asm volatile("%0 &= %1" : "+r"(i) : "i"(AT_CAP_MASK));
	__u32 end = ev->data[i] | ev->data[i + 1] << 8 | ev->data[i + 2] << 16 | (__u32)ev->data[i + 3] << 24;
	return end == AT_HEAD_END;
}

/* Returns -1 when the array could not be read (the caller walks it then). */
static __always_inline int iov_walk_few(struct at_iov_walk *w, struct at_data_event *ev)
{
	struct iovec v[AT_FEW_IOV] = {};
	__u64 size = w->iovcnt * sizeof(struct iovec);
	asm volatile("%0 &= %1" : "+r"(size) : "i"(AT_FEW_IOV * sizeof(struct iovec) - 1));
	if (!size)
		size = sizeof(v); /* iovcnt == AT_FEW_IOV */
	if (bpf_probe_read_user(v, size, (void *)w->iov_ptr))
		return -1;
#pragma unroll
	for (int i = 0; i < AT_FEW_IOV; i++) {
		if (i >= w->iovcnt || w->left == 0)
			break;
		iov_take(w, ev, &v[i]);
		/* A server's writev of a response head and its body: user space
		 * frames HTTP/1 bodies by their length (chunked ones by the tail)
		 * and never reads them, so the body is counted, not copied. With
		 * exactly two iovecs nothing else (a next response) can follow. */
		if (i == 0 && w->iovcnt == 2 && w->off == v[0].iov_len && w->off <= w->cap &&
		    http1_response_head(ev, w->off)) {
			w->cap = w->off;
			w->head_only = 1;
		}
	}
	return 0;
}

/* iovec array: walk at most AT_MAX_IOV entries, filling the prefix in order
 * and remembering where the returned length ends for the tail. */
static __always_inline void capture_iov(struct at_data_event *ev, __u64 iov_ptr, __u64 iovcnt, __u32 len,
					__u32 cap)
{
	struct at_iov_walk w = {
		.iov_ptr = iov_ptr,
		.iovcnt = iovcnt,
		.len = len,
		.cap = cap,
		.left = len,
	};
	if (iovcnt > AT_FEW_IOV || iov_walk_few(&w, ev))
		bpf_loop(AT_MAX_IOV, iov_step, &w, 0);
	if (w.left)
		count(AT_CNT_IOV_CUT);
	ev->captured_len = w.off < w.cap ? w.off : w.cap;
	if (len > ev->captured_len && !w.head_only)
		count(AT_CNT_TRUNCATED);
	/* Whole or not at all: an unread iovec leaves it partial. */
	if (w.tail_got == AT_TAIL_BYTES)
		ev->tail_len = AT_TAIL_BYTES;
}

#include "h2_frames.h"

static __always_inline void output_data(struct at_data_event *ev)
{
	/* The prefix and the HTTP/2 frame records behind it (together within
	 * the capture ceiling). */
	__u64 n = ev->captured_len + ev->frames_len;
	asm volatile("%0 &= %1" : "+r"(n) : "i"(AT_CAP_MASK));
	__u64 size = offsetof(struct at_data_event, data) + n;
	if (bpf_ringbuf_output(&data_events, ev, size, output_flags(&data_events, size)))
		count(AT_CNT_DATA_LOST);
}

/* sendmmsg (glibc's resolver sends its A and AAAA queries in one call): one
 * event per message, first iovec only (DNS queries are a single buffer). */
#define AT_MAX_MMSG 2
static __always_inline void emit_mmsg(struct at_data_event *ev, __u64 vec, long sent)
{
	for (int i = 0; i < AT_MAX_MMSG; i++) {
		if (i >= sent)
			break;
		struct mmsghdr m = {};
		if (bpf_probe_read_user(&m, sizeof(m), (void *)(vec + i * sizeof(m))))
			break;
		struct iovec iov = {};
		if (!m.msg_hdr.msg_iov || bpf_probe_read_user(&iov, sizeof(iov), m.msg_hdr.msg_iov))
			break;
		__u32 len = m.msg_len < iov.iov_len ? m.msg_len : (__u32)iov.iov_len;
		ev->total_len = len;
		ev->tail_len = 0;
		capture_plain(ev, (__u64)iov.iov_base, len, capture_max_bytes);
		output_data(ev);
	}
}

/* Fills the fixed part of a data event in this CPU's scratch slot, and
 * keeps the thread's "request being served" context up to date. */
static __always_inline struct at_data_event *begin_event(struct at_task_state *st, struct at_conn_info *info,
							  __u32 tid, __u32 tgid, __u8 direction, __u8 syscall,
							  __u64 enter_ns, long ret)
{
	/* The fd that names the connection (see at_conn_info). */
	__s32 fd = info->event_fd;
	struct at_data_event *ev = scratch_event();
	if (!ev)
		return 0;
	ev->type = AT_EV_DATA;
	ev->direction = direction;
	ev->role = info->role;
	ev->syscall = syscall;
	ev->pid = tgid;
	ev->tid = tid;
	ev->fd = fd;
	ev->conn_start_ns = info->start_ns;
	ev->exit_ns = bpf_ktime_get_ns();
	ev->enter_ns = enter_ns ? enter_ns : ev->exit_ns;
	ev->total_len = (__u32)ret;
	ev->captured_len = 0;
	ev->tail_len = 0;
	ev->tuple = info->tuple;
	ev->ctx_fd = -1;
	ev->frames_len = 0;
	ev->_pad = 0;
	ev->ctx_conn_start_ns = 0;
	wire_note_direction(st, info, tgid, fd, direction);
	if (info->role == AT_ROLE_SERVER) {
		if (direction == AT_DIR_INGRESS) {
			/* This thread now serves the request arriving on this connection. */
			st->serving.ctx.fd = fd;
			st->serving.ctx.conn_start_ns = info->start_ns;
			st->serving.ctx_valid = 1;
			serving_note_read(st, tgid, info, ret);
		} else {
			serving_note_reply(st, info);
		}
	} else if (direction == AT_DIR_EGRESS) {
		struct at_serving *sv = serving_for_call(st, tgid, info);
		if (sv->ctx_valid) {
			ev->ctx_fd = sv->ctx.fd;
			ev->ctx_conn_start_ns = sv->ctx.conn_start_ns;
		} else if (sv->inherited) {
			ev->ctx_fd = AT_CTX_OVER;
		}
	}
	return ev;
}

/* One data event for `ret` bytes moved by the call `a` describes. Shared by
 * the syscall and the socket-level hooks. */
static __always_inline void emit_transfer(struct at_task_state *st, struct at_conn_info *info, __u32 tid, __u32 tgid,
					  struct at_syscall_args *a, long ret, __u8 direction)
{
	struct at_data_event *ev =
		begin_event(st, info, tid, tgid, direction, a->syscall, a->enter_ns, ret);
	if (!ev)
		return;
	if (a->syscall == AT_SYS_SENDMMSG) {
		emit_mmsg(ev, a->buf, ret);
		return;
	}
	if (a->syscall == AT_SYS_SENDFILE) {
		/* The body never passes through user memory: count it only. */
		output_data(ev);
		return;
	}
	__u32 cap = h2_prefix_cap(info, direction, capture_cap(info), (__u32)ret);
	if (a->iovcnt)
		capture_iov(ev, a->buf, a->iovcnt, (__u32)ret, cap);
	else
		capture_plain(ev, a->buf, (__u32)ret, cap);
	note_http2(info, ev);
	if (info->wide && !info->tls_plain)
		h2_follow(info, direction, a->buf, a->iovcnt, (__u32)ret);
	output_data(ev);
}

/* Exit side: pairs with the saved entry, resolves the connection, emits. */
static __always_inline int emit_data(long ret, __u8 direction)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 tid = (__u32)id;
	struct at_task_state *st = selected_task_state(tgid);
	if (!st || !st->args_valid)
		return 0;
	struct at_syscall_args a = st->args;
	st->args_valid = 0;
	if (ret <= 0)
		return 0;

	/* Ciphertext of a TLS call we hook: its plaintext comes from the uprobe. */
	if (st->ssl.active)
		return 0;
	struct at_conn_info *info = lookup_conn(tgid, a.fd, AT_ROLE_UNKNOWN, 0);
	if (!info || !info->is_socket)
		return 0;
	emit_transfer(st, info, tid, tgid, &a, ret, direction);
	return 0;
}

/* Reads msg_iov/msg_iovlen of a user msghdr at entry. */
static __always_inline int save_msg_args(__s32 fd, __u64 msg_ptr, __u8 syscall)
{
	struct user_msghdr msg = {};
	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)msg_ptr))
		return 0;
	if (!msg.msg_iov || !msg.msg_iovlen)
		return 0;
	return save_args(fd, (__u64)msg.msg_iov, msg.msg_iovlen, syscall);
}

/* accept/accept4 return a server-side fd. */
static __always_inline int save_role_args(__s32 fd, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_selected(id >> 32))
		return 0;
	struct at_task_state *st = task_state_get(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
	st->args.fd = fd;
	st->args.syscall = kind;
	st->args_valid = 1;
	return 0;
}

static __always_inline int mark_conn(long ret, int accepted)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_selected(tgid)) {
		/* Whole-host flows: the accepting process is the passive side's owner. */
		if (network_whole_host && accepted && ret >= 0)
			flow_accepted(tgid, (__u32)id, (__s32)ret, AT_FLOW_OWNER_OTHER);
		return 0;
	}
	struct at_task_state *st = task_state_get(0);
	if (!st || !st->args_valid)
		return 0;
	__u8 kind = st->args.syscall;
	__s32 fd = st->args.fd;
	st->args_valid = 0;
	if (kind == AT_ARGS_ACCEPT && ret >= 0) {
		lookup_conn(tgid, (__s32)ret, AT_ROLE_SERVER, 1);
		flow_accepted(tgid, (__u32)id, (__s32)ret, AT_FLOW_OWNER_SELECTED);
	}
	/* Non-blocking connect returns -EINPROGRESS: still a client. */
	else if (kind == AT_ARGS_CONNECT && (ret == 0 || ret == -115))
		lookup_conn(tgid, fd, AT_ROLE_CLIENT, 1);
	return 0;
}

/* Tells user space a connection ended. Same ring as the data: the close
 * must be read after the last data. */
static __always_inline void emit_close(struct at_conn_info *info, __u32 tgid, __u32 tid, __s32 fd)
{
	struct at_close_event *ev = bpf_ringbuf_reserve(&data_events, sizeof(*ev), 0);
	if (!ev) {
		count(AT_CNT_CLOSE_LOST);
		return;
	}
	ev->type = AT_EV_CLOSE;
	ev->role = info->role;
	ev->_pad = 0;
	ev->pid = tgid;
	ev->tid = tid;
	ev->fd = fd;
	ev->conn_start_ns = info->start_ns;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->tuple = info->tuple;
	bpf_ringbuf_submit(ev, submit_flags(&data_events, sizeof(*ev)));
}

/* Forgets (tgid, fd) and the wire context kept for its connection. */
static __always_inline void drop_conn(struct at_conn_info *info, __u32 tgid, __s32 fd)
{
	if (propagate_ctx && info->role == AT_ROLE_SERVER)
		bpf_map_delete_elem(&ctx_in, &info->tuple);
	else if (propagate_ctx && info->role == AT_ROLE_CLIENT)
		bpf_map_delete_elem(&ctx_out, &info->tuple);
	__u64 key = conn_key(tgid, fd);
	bpf_map_delete_elem(&conns, &key);
}

/* close: tell user space the connection ended, forget the fd. */
static __always_inline int forget_fd(__s32 fd, int report)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_selected(tgid))
		return 0;
	__u64 key = conn_key(tgid, fd);
	struct at_conn_info *info = bpf_map_lookup_elem(&conns, &key);
	if (!info)
		return 0;
	if (report && info->is_socket)
		emit_close(info, tgid, (__u32)id, fd);
	drop_conn(info, tgid, fd);
	return 0;
}

/* Entry dispatch: only the syscalls we follow go further. */
SEC("tp_btf/sys_enter")
int BPF_PROG(at_sys_enter, struct pt_regs *regs, long id)
{
	switch (id) {
	case AT_NR_READ:
	case AT_NR_WRITE:
	case AT_NR_READV:
	case AT_NR_WRITEV:
	case AT_NR_RECVFROM:
	case AT_NR_SENDTO:
	case AT_NR_RECVMSG:
	case AT_NR_SENDMSG:
	case AT_NR_SENDMMSG:
	case AT_NR_SENDFILE:
	case AT_NR_ACCEPT:
	case AT_NR_ACCEPT4:
	case AT_NR_CONNECT:
	case AT_NR_CLOSE:
	case AT_NR_DUP2:
	case AT_NR_DUP3:
		break;
	default:
		return 0;
	}
	if (AT_IS_COMPAT())
		return 0;
	__s32 fd = (__s32)AT_ARG0(regs);
	__u64 buf = AT_ARG1(regs);
	switch (id) {
	case AT_NR_READ:
		return save_args(fd, buf, 0, AT_SYS_READ);
	case AT_NR_WRITE:
		return save_args(fd, buf, 0, AT_SYS_WRITE);
	case AT_NR_READV:
		return save_args(fd, buf, AT_ARG2(regs), AT_SYS_READV);
	case AT_NR_WRITEV:
		return save_args(fd, buf, AT_ARG2(regs), AT_SYS_WRITEV);
	/* MSG_PEEK reads leave the bytes queued: the real read reports them. */
	case AT_NR_RECVFROM:
		if (AT_ARG3(regs) & AT_MSG_PEEK)
			return 0;
		return save_args(fd, buf, 0, AT_SYS_RECVFROM);
	case AT_NR_SENDTO:
		return save_args(fd, buf, 0, AT_SYS_SENDTO);
	case AT_NR_RECVMSG:
		if (AT_ARG2(regs) & AT_MSG_PEEK)
			return 0;
		return save_msg_args(fd, buf, AT_SYS_RECVMSG);
	case AT_NR_SENDMSG:
		return save_msg_args(fd, buf, AT_SYS_SENDMSG);
	case AT_NR_SENDMMSG:
		return save_args(fd, buf, AT_ARG2(regs), AT_SYS_SENDMMSG);
	/* sendfile(out_fd, in_fd, ...): nginx static bodies; counted, not copied. */
	case AT_NR_SENDFILE:
		return save_args(fd, 0, 0, AT_SYS_SENDFILE);
	/* accept/accept4 return a server-side fd. */
	case AT_NR_ACCEPT:
	case AT_NR_ACCEPT4:
		return save_role_args(-1, AT_ARGS_ACCEPT);
	case AT_NR_CONNECT:
		return save_role_args(fd, AT_ARGS_CONNECT);
	case AT_NR_CLOSE:
		return forget_fd(fd, 1);
	/* dup2/dup3 silently close newfd: its cached identity is stale. */
	case AT_NR_DUP2:
	case AT_NR_DUP3:
		return forget_fd((__s32)buf, 1);
	}
	return 0;
}

/* Exit dispatch: the saved entry says what to finish. */
SEC("tp_btf/sys_exit")
int BPF_PROG(at_sys_exit, struct pt_regs *regs, long ret)
{
	long id = AT_SYSCALL_ID(regs);
	switch (id) {
	case AT_NR_READ:
	case AT_NR_READV:
	case AT_NR_RECVFROM:
	case AT_NR_RECVMSG:
		if (AT_IS_COMPAT())
			return 0;
		return emit_data(ret, AT_DIR_INGRESS);
	case AT_NR_WRITE:
	case AT_NR_WRITEV:
	case AT_NR_SENDTO:
	case AT_NR_SENDMSG:
	case AT_NR_SENDMMSG:
	case AT_NR_SENDFILE:
		if (AT_IS_COMPAT())
			return 0;
		return emit_data(ret, AT_DIR_EGRESS);
	case AT_NR_ACCEPT:
	case AT_NR_ACCEPT4:
	case AT_NR_CONNECT:
		if (AT_IS_COMPAT())
			return 0;
		return mark_conn(ret, id != AT_NR_CONNECT);
	case AT_NR_LISTEN:
		if (AT_IS_COMPAT())
			return 0;
		return on_listen(ret);
	}
	return 0;
}
#endif
