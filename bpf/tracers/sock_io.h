/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Socket-level capture, on kernels with the sock_send_length and
 * sock_recv_length tracepoints (6.3+). They fire for socket I/O only, after
 * the transfer, with the sock in hand; the call's own arguments (fd, buffer)
 * come from the registers saved at syscall entry. Nothing hooks every
 * syscall of every process: the generic sys_enter/sys_exit pair stays
 * detached and syscalls keep their fast path. Connection ends come from the
 * TCP state machine (close() moves the state with both shutdown bits set),
 * and an fd that names another sock than before was closed and reused.
 * Older kernels keep the syscall hooks (syscalls.h). */
#ifndef AUTOTEL_SOCK_IO_H
#define AUTOTEL_SOCK_IO_H

#define AT_TCP_FIN_WAIT1 4
#define AT_TCP_LAST_ACK 9
#define AT_TCP_LISTEN 10
#define AT_SHUTDOWN_MASK 3
/* Messages of one sendmmsg come back to back; a later call with the same
 * array starts over. */
#define AT_MMSG_GAP_NS 1000000

/* Per sock: how it was opened, and the conns entry naming it. */
struct at_sk_state {
	__u64 conn_key; /* (tgid << 32 | fd); 0: none */
	__u8 role;
	__u8 _pad[7];
};

/* Freed with the sock: nothing to clean up, nothing to evict. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct at_sk_state);
} sk_state SEC(".maps");

static __always_inline struct at_sk_state *sk_state_get(const struct sock *sk, __u64 flags)
{
	return bpf_sk_storage_get(&sk_state, (struct sock *)sk, 0, flags);
}

/* A reset or a close unhashes the sock, which clears its port, while its
 * owner may still read what came before a reset. */
static __always_inline int sock_unhashed(const struct sock *sk)
{
	return sk->__sk_common.skc_num == 0;
}

/* A freed sock's memory is soon another sock's: when a close went unseen
 * and the fd and the address are both reused, the ports still tell the
 * connections apart. Only called from tp_btf programs (trusted `sk`). */
static __always_inline int same_ports(const struct at_conn_info *info, struct sock *sk)
{
	/* A sock doing I/O without a port is the entry's own, closed one (a new
	 * connection has a port). */
	if (sock_unhashed(sk))
		return 1;
	/* An unconnected socket's entry holds its last peer, not the sock's. */
	return info->tuple.sport == sk->__sk_common.skc_num &&
	       (info->is_socket == AT_SOCK_PER_CALL ||
		info->tuple.dport == bpf_ntohs(sk->__sk_common.skc_dport));
}

/* The peer of this call on an unconnected UDP socket, into the entry's tuple:
 * the destination a send names, else the sock's own when connected since,
 * else the last one (a reply comes from where the query went; the source
 * address of a receive reaches the user only after this hook). True when it
 * is a DNS server. */
static __always_inline int per_call_dns_peer(struct at_conn_info *info, struct sock *sk, __u64 addr)
{
	struct at_conn_tuple *t = &info->tuple;
	if (addr) {
		struct sockaddr_in v4 = {};
		if (bpf_probe_read_user(&v4, sizeof(v4), (void *)addr))
			return 0;
		if (v4.sin_family == AT_AF_INET && t->family == AT_AF_INET) {
			__builtin_memcpy(t->daddr, &v4.sin_addr, 4);
			t->dport = bpf_ntohs(v4.sin_port);
		} else if (v4.sin_family == AT_AF_INET6 && t->family == AT_AF_INET6) {
			struct sockaddr_in6 v6 = {};
			if (bpf_probe_read_user(&v6, sizeof(v6), (void *)addr))
				return 0;
			__builtin_memcpy(t->daddr, &v6.sin6_addr, 16);
			t->dport = bpf_ntohs(v6.sin6_port);
		} else {
			return 0;
		}
	} else if (sk->__sk_common.skc_dport) {
		read_sk_tuple(sk, t);
	}
	return t->dport == AT_DNS_PORT;
}

/* The entry of the first fd of this process that carried `sk`, when that
 * entry still names it. */
static __always_inline struct at_conn_info *first_fd_conn(__u64 first_key, __u32 tgid, struct sock *sk)
{
	if (!first_key || first_key >> 32 != tgid)
		return 0;
	struct at_conn_info *first = bpf_map_lookup_elem(&conns, &first_key);
	return first && first->is_socket && first->sk == (__u64)sk ? first : 0;
}

/* The conns entry of (tgid, fd) for this sock, made on first sight. When the
 * fd named another sock before, that one was closed: user space hears so
 * first. A sock this process already uses under another fd (dup) is one
 * connection: the entry of the fd it was first seen on holds it. NULL for
 * socks we do not parse (unix, raw, non-DNS UDP). */
static __always_inline struct at_conn_info *sock_conn(__u32 tgid, __u32 tid, __s32 fd, struct sock *sk)
{
	__u64 key = conn_key(tgid, fd);
	struct at_conn_info *info = bpf_map_lookup_elem(&conns, &key);
	if (info && info->sk == (__u64)sk && (!info->is_socket || same_ports(info, sk))) {
		if (!info->is_socket)
			return 0;
		if (info->event_fd == fd)
			return info;
		struct at_conn_info *first = first_fd_conn(conn_key(tgid, info->event_fd), tgid, sk);
		if (first)
			return first;
		/* The first fd now names another sock: this one holds it. */
		info->event_fd = fd;
		struct at_sk_state *ss = sk_state_get(sk, 0);
		if (ss) {
			info->role = ss->role;
			ss->conn_key = key;
		}
		return info;
	}
	if (info && info->event_fd != fd) {
		/* An alias: the connection is the holding entry's to end. */
		bpf_map_delete_elem(&conns, &key);
	} else if (info) {
		if (info->is_socket)
			emit_close(info, tgid, tid, fd);
		drop_conn(info, tgid, fd);
	}
	/* Bytes read from a reset or closed sock after its connection ended
	 * (nginx's lingering close discarding a request) start nothing. */
	if (sock_unhashed(sk))
		return 0;
	struct at_conn_info fresh = {};
	fresh.start_ns = bpf_ktime_get_ns();
	fresh.event_fd = fd;
	/* TCP, or UDP to port 53 (or unconnected); anything else is cached as
	 * not ours. */
	int parsed = read_sock_tuple(sk, &fresh);
	fresh.is_socket = parsed == 0 ? 1 : parsed == AT_SOCK_PER_CALL ? AT_SOCK_PER_CALL : 0;
	int tcp = fresh.is_socket && fresh.tuple.proto == AT_IPPROTO_TCP;
	/* DNS over UDP: we only parse the asking side. */
	if (fresh.is_socket && !tcp)
		fresh.role = AT_ROLE_CLIENT;
	if (tcp) {
		struct at_sk_state *ss = sk_state_get(sk, BPF_SK_STORAGE_GET_F_CREATE);
		if (ss) {
			struct at_conn_info *first = first_fd_conn(ss->conn_key, tgid, sk);
			if (first) {
				fresh.event_fd = first->event_fd;
				bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY);
				return first;
			}
			fresh.role = ss->role;
			ss->conn_key = key;
		}
	}
	bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY);
	/* The passive side's owner is known now, at its first data. */
	if (tcp && fresh.role == AT_ROLE_SERVER)
		flow_accepted_sock(tgid, tid, sk, AT_FLOW_OWNER_SELECTED);
	info = bpf_map_lookup_elem(&conns, &key);
	return info && info->is_socket ? info : 0;
}

/* sendmmsg: this hook runs once per message; which one is counted per
 * thread. Fills a->buf with the message's first buffer (DNS queries are one
 * buffer), or returns -1 past the messages we read. */
static __always_inline int mmsg_buffer(struct at_task_state *st, struct at_syscall_args *a, __u32 vlen)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 idx = 0;
	if (st->mmsg_vec == a->buf && st->mmsg_idx + 1 < vlen && now - st->mmsg_ns < AT_MMSG_GAP_NS)
		idx = st->mmsg_idx + 1;
	st->mmsg_vec = a->buf;
	st->mmsg_idx = idx;
	st->mmsg_ns = now;
	if (idx >= AT_MAX_MMSG)
		return -1;
	struct mmsghdr m = {};
	if (bpf_probe_read_user(&m, sizeof(m), (void *)(a->buf + idx * sizeof(m))))
		return -1;
	struct iovec iov = {};
	if (!m.msg_hdr.msg_iov || bpf_probe_read_user(&iov, sizeof(iov), m.msg_hdr.msg_iov))
		return -1;
	a->buf = (__u64)iov.iov_base;
	a->iovcnt = 0;
	a->addr = (__u64)m.msg_hdr.msg_name;
	a->syscall = AT_SYS_SENDTO;
	return 0;
}

/* The running syscall's arguments, from the registers saved at its entry.
 * -1 when it is not one we capture (io_uring, splice, kernel callers). */
static __always_inline int call_args(struct at_task_state *st, struct at_syscall_args *a, __u8 direction)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return -1;
	long nr = AT_SYSCALL_ID(regs);
	a->fd = (__s32)AT_ARG0(regs);
	a->buf = AT_ARG1(regs);
	a->iovcnt = 0;
	a->enter_ns = 0; /* the transfer is over: the event's exit time stands for both */
	if (direction == AT_DIR_INGRESS) {
		switch (nr) {
		case AT_NR_READ:
			a->syscall = AT_SYS_READ;
			return 0;
		case AT_NR_RECVFROM:
			a->syscall = AT_SYS_RECVFROM;
			return 0;
		case AT_NR_READV:
			a->syscall = AT_SYS_READV;
			a->iovcnt = AT_ARG2(regs);
			return 0;
		case AT_NR_RECVMSG:
			a->syscall = AT_SYS_RECVMSG;
			break;
		default:
			return -1;
		}
	} else {
		switch (nr) {
		case AT_NR_WRITE:
			a->syscall = AT_SYS_WRITE;
			return 0;
		case AT_NR_SENDTO:
			a->syscall = AT_SYS_SENDTO;
			a->addr = AT_ARG4(regs);
			return 0;
		case AT_NR_WRITEV:
			a->syscall = AT_SYS_WRITEV;
			a->iovcnt = AT_ARG2(regs);
			return 0;
		case AT_NR_SENDFILE:
			a->syscall = AT_SYS_SENDFILE;
			a->buf = 0;
			return 0;
		case AT_NR_SENDMMSG:
			a->syscall = AT_SYS_SENDMMSG;
			return mmsg_buffer(st, a, (__u32)AT_ARG2(regs));
		case AT_NR_SENDMSG:
			a->syscall = AT_SYS_SENDMSG;
			break;
		default:
			return -1;
		}
	}
	/* recvmsg/sendmsg: the iovec array of the user's msghdr. */
	struct user_msghdr msg = {};
	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)a->buf))
		return -1;
	if (!msg.msg_iov || !msg.msg_iovlen)
		return -1;
	a->buf = (__u64)msg.msg_iov;
	a->iovcnt = msg.msg_iovlen;
	if (direction == AT_DIR_EGRESS)
		a->addr = (__u64)msg.msg_name;
	return 0;
}

/* Whole-host network metrics: an unselected process reading or writing a
 * passive connection first is its owner. */
static __always_inline void claim_passive_flow(struct sock *sk, __u64 id)
{
	__u64 key = (__u64)sk;
	struct at_flow_state *fl = bpf_map_lookup_elem(&flows, &key);
	if (fl && fl->owner == AT_FLOW_OWNER_UNKNOWN)
		flow_accepted_sock(id >> 32, (__u32)id, sk, AT_FLOW_OWNER_OTHER);
}

static __always_inline int sock_transfer(struct sock *sk, long ret, __u8 direction)
{
	/* tp_btf hands us a trusted sock: plain loads (CO-RE relocated), not
	 * a probe-read helper call per field, on every socket call of the host. */
	__u16 family = sk->__sk_common.skc_family;
	if (family != AT_AF_INET && family != AT_AF_INET6)
		return 0;
	/* The ids from the task itself: plain loads, where the pid_tgid helper
	 * is a call (and a return thunk) on every socket call of the host. */
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = task->tgid;
	__u64 id = (__u64)tgid << 32 | (__u32)task->pid;
	struct at_task_state *st = selected_task_state(tgid);
	if (!st) {
		if (network_whole_host)
			claim_passive_flow(sk, id);
		return 0;
	}
	if (AT_IS_COMPAT())
		return 0;
	struct at_syscall_args a = {};
	if (call_args(st, &a, direction))
		return 0;
	ssl_learn_fd(st, a.fd);
	/* Ciphertext of a TLS call we hook: its plaintext comes from the uprobe. */
	if (st->ssl.active)
		return 0;
	struct at_conn_info *info = sock_conn(tgid, (__u32)id, a.fd, sk);
	if (!info)
		return 0;
	if (info->is_socket == AT_SOCK_PER_CALL && !per_call_dns_peer(info, sk, a.addr))
		return 0;
	emit_transfer(st, info, (__u32)id, tgid, &a, ret, direction);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(at_sock_send, struct sock *sk, int ret, int flags)
{
	if (ret <= 0)
		return 0;
	return sock_transfer(sk, ret, AT_DIR_EGRESS);
}

/* MSG_PEEK reads leave the bytes queued: the real read reports them. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(at_sock_recv, struct sock *sk, int ret, int flags)
{
	if (ret <= 0 || (flags & AT_MSG_PEEK))
		return 0;
	return sock_transfer(sk, ret, AT_DIR_INGRESS);
}

/* Trace context on the wire needs the ids in place before the first segment
 * of a request leaves: this runs inside tcp_sendmsg, before any copy.
 * Loaded only with context propagation on. */
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(at_tcp_send_pre, struct sock *sk, struct msghdr *msg, struct sk_buff *skb, int size_goal)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct at_task_state *st = selected_task_state(tgid);
	if (!st || AT_IS_COMPAT())
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return 0;
	switch (AT_SYSCALL_ID(regs)) {
	case AT_NR_WRITE:
	case AT_NR_WRITEV:
	case AT_NR_SENDTO:
	case AT_NR_SENDMSG:
	case AT_NR_SENDFILE:
		break;
	default:
		return 0;
	}
	__s32 fd = (__s32)AT_ARG0(regs);
	struct at_conn_info *info = sock_conn(tgid, (__u32)id, fd, sk);
	if (info)
		wire_client_write(st, info, tgid, info->event_fd);
	return 0;
}

/* The connection `sk` carries ends: its close event, its entry dropped. */
static __always_inline int end_conn(const struct sock *sk)
{
	struct at_sk_state *ss = sk_state_get(sk, 0);
	if (!ss || !ss->conn_key)
		return 0;
	__u64 key = ss->conn_key;
	ss->conn_key = 0;
	struct at_conn_info *info = bpf_map_lookup_elem(&conns, &key);
	if (!info || info->sk != (__u64)sk)
		return 0;
	__u32 tgid = key >> 32;
	__s32 fd = (__s32)key;
	emit_close(info, tgid, (__u32)bpf_get_current_pid_tgid(), fd);
	drop_conn(info, tgid, fd);
	return 0;
}

/* Roles from the handshake, connection ends from close(), new listeners
 * (socket-level capture only). `selected`: see at_sock_state. */
static __always_inline int conn_state_change(const struct sock *sk, int oldstate, int newstate, int selected)
{
	if (newstate == AT_TCP_SYN_SENT) {
		/* connect(), in the caller's context. */
		if (!selected)
			return 0;
		struct at_sk_state *ss = sk_state_get(sk, BPF_SK_STORAGE_GET_F_CREATE);
		if (ss)
			ss->role = AT_ROLE_CLIENT;
		return 0;
	}
	if (newstate == AT_TCP_ESTABLISHED && oldstate == AT_TCP_SYN_RECV) {
		/* A passive open, in softirq: the owner shows at its first data. */
		struct at_sk_state *ss = sk_state_get(sk, BPF_SK_STORAGE_GET_F_CREATE);
		if (ss)
			ss->role = AT_ROLE_SERVER;
		return 0;
	}
	if (newstate == AT_TCP_LISTEN)
		return on_listen(0);
	if (newstate != AT_TCP_FIN_WAIT1 && newstate != AT_TCP_LAST_ACK && newstate != AT_TCP_CLOSE)
		return 0;
	/* close() sets both shutdown bits before it moves the state; a
	 * shutdown(SHUT_WR) or a reset from the peer does not. */
	if (BPF_CORE_READ(sk, sk_shutdown) != AT_SHUTDOWN_MASK)
		return 0;
	return end_conn(sk);
}

/* A connection the peer reset has no state change left for close() to make
 * (tcp_close finds it closed and destroys it), and until then its owner may
 * read what came before the reset (see same_ports): it ends when the sock is
 * destroyed. Connections closed the usual way ended at their close(). */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(at_sock_destroy, struct sock *sk)
{
	return end_conn(sk);
}

/* Every TCP state change of the host passes here: one program for the flow
 * metrics and the capture's connection ends, so the tracepoint dispatches
 * once and the protocol is read once (a connection moves through ~5 states
 * per side). */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(at_sock_state, const struct sock *sk, int oldstate, int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != AT_IPPROTO_TCP)
		return 0;
	/* Only connect() (SYN_SENT, in the caller's context) asks whether the
	 * process is traced: both parts need the answer, one lookup serves them. */
	int selected = newstate == AT_TCP_SYN_SENT && is_selected(bpf_get_current_pid_tgid() >> 32);
	flow_state_change(sk, oldstate, newstate, selected);
	if (socket_capture)
		return conn_state_change(sk, oldstate, newstate, selected);
	return 0;
}

#endif
