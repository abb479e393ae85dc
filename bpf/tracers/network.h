/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* TCP lifecycle of the sockets of selected processes (of every process in
 * whole-host mode): one event when a connection opens and one when it
 * reaches TCP_CLOSE, carrying the kernel's own byte and retransmit counters.
 * State changes mostly happen in softirq context, where the current task is
 * whoever the CPU was running, so the owning process is remembered per sock
 * only where it is known: at connect() (SYN_SENT is set in the caller's
 * context) and at accept(). */
#ifndef AUTOTEL_NETWORK_H
#define AUTOTEL_NETWORK_H

#include "goroutines.h"

#define AT_TCP_ESTABLISHED 1
#define AT_TCP_SYN_SENT 2
#define AT_TCP_SYN_RECV 3
#define AT_TCP_CLOSE 7

/* Set by the loader: follow the TCP flows of every process, not only the
 * selected ones (metrics only; spans stay with selected processes). A
 * constant, so with 0 the verifier drops the extra paths. */
const volatile __u32 network_whole_host = 0;

struct at_flow_state {
	__u64 start_ns;
	__u64 established_ns;
	__u64 ctx_conn_start_ns;
	__u32 pid;
	__u32 tid;
	__s32 ctx_fd;
	__u8 role;
	__u8 have_tuple;
	__u8 owner; /* enum at_flow_owner */
	__u8 _pad;
	/* Endpoints as they were when the connection opened: by TCP_CLOSE the
	 * kernel may have released the local port already. */
	struct at_conn_tuple tuple;
	char comm[16];
};

/* sock pointer -> owner. LRU: a sock we never see close must not pin a slot. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct at_flow_state);
} flows SEC(".maps");

/* The process's name (its main thread's comm), not the calling thread's:
 * thread names (worker-17, tokio-runtime-w) would split one process into
 * many series. */
static __always_inline void owner_comm(char dst[16])
{
	struct task_struct *leader = BPF_CORE_READ(bpf_get_current_task_btf(), group_leader);
	bpf_core_read_str(dst, 16, &leader->comm);
}

static __always_inline void emit_flow(const struct sock *sk, struct at_flow_state *st, __u8 kind, int old_state)
{
	struct at_flow_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	if (!ev) {
		count(AT_CNT_FLOW_LOST);
		return;
	}
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	ev->type = AT_EV_FLOW;
	ev->kind = kind;
	ev->role = st->role;
	ev->old_state = old_state;
	ev->pid = st->pid;
	ev->tid = st->tid;
	ev->sk_err = BPF_CORE_READ(sk, sk_err);
	ev->start_ns = st->start_ns;
	ev->established_ns = st->established_ns;
	ev->ts_ns = bpf_ktime_get_ns();
	/* Payload only. bytes_acked/bytes_received follow snd_una/rcv_nxt and so
	 * also step over the SYN and FIN sequence numbers. bytes_sent counts the
	 * payload of every segment transmitted, retransmissions included (hence
	 * minus bytes_retrans); the peer's FIN is in bytes_received exactly when
	 * tcp_fin() has run, which is what sets SOCK_DONE. */
	ev->bytes_sent = BPF_CORE_READ(tp, bytes_sent) - BPF_CORE_READ(tp, bytes_retrans);
	__u64 rx = BPF_CORE_READ(tp, bytes_received);
	unsigned long sk_flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	if (rx && (sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))))
		rx -= 1;
	ev->bytes_received = rx;
	ev->retransmits = BPF_CORE_READ(tp, total_retrans);
	ev->ctx_fd = st->ctx_fd;
	ev->ctx_conn_start_ns = st->ctx_conn_start_ns;
	ev->owner = st->owner;
	__builtin_memcpy(ev->comm, st->comm, sizeof(ev->comm));
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	__builtin_memset(&ev->tuple, 0, sizeof(ev->tuple));
	read_sk_tuple(sk, &ev->tuple);
	if (st->have_tuple && (ev->tuple.sport == 0 || ev->tuple.dport == 0))
		ev->tuple = st->tuple;
	else if (!st->have_tuple && ev->tuple.sport && ev->tuple.dport) {
		st->tuple = ev->tuple;
		st->have_tuple = 1;
	}
	bpf_ringbuf_submit(ev, submit_flags(&proc_events, sizeof(*ev)));
}

/* The passive side's owner is known: at accept() (syscall hooks) or at the
 * connection's first data (socket hooks). */
static __always_inline void flow_accepted_sock(__u32 tgid, __u32 tid, struct sock *sk, __u8 owner)
{
	if (BPF_CORE_READ(sk, sk_protocol) != AT_IPPROTO_TCP)
		return;
	__u64 key = (__u64)sk;
	if (tgid == self_tgid) {
		/* Our own exporter/Prometheus connections (whole-host mode). */
		bpf_map_delete_elem(&flows, &key);
		return;
	}
	__u64 now = bpf_ktime_get_ns();
	struct at_flow_state st = {
		.start_ns = now,
		.established_ns = now,
		.pid = tgid,
		.tid = tid,
		.ctx_fd = -1,
		.role = AT_ROLE_SERVER,
		.owner = owner,
	};
	owner_comm(st.comm);
	emit_flow(sk, &st, AT_FLOW_OPEN, AT_TCP_ESTABLISHED);
	bpf_map_update_elem(&flows, &key, &st, BPF_ANY);
}

/* Called at accept() exit with the new fd. */
static __always_inline void flow_accepted(__u32 tgid, __u32 tid, __s32 fd, __u8 owner)
{
	struct sock *sk = fd_to_sock(fd);
	if (sk)
		flow_accepted_sock(tgid, tid, sk, owner);
}

/* A TCP state change (the caller checked the protocol): the flow opens,
 * closes, or learns its owner. `selected`: on SYN_SENT, whether the calling
 * process is traced. Returns nothing: the caller goes on. */
static __always_inline void flow_state_change(const struct sock *sk, int oldstate, int newstate, int selected)
{
	__u64 key = (__u64)sk;
	if (newstate == AT_TCP_SYN_SENT) {
		/* connect() in the caller's context. */
		__u64 id = bpf_get_current_pid_tgid();
		__u32 tgid = id >> 32;
		if ((!selected && !network_whole_host) || tgid == self_tgid)
			return;
		struct at_flow_state st = {
			.start_ns = bpf_ktime_get_ns(),
			.pid = tgid,
			.tid = (__u32)id,
			.ctx_fd = -1,
			.role = AT_ROLE_CLIENT,
			.owner = selected ? AT_FLOW_OWNER_SELECTED : AT_FLOW_OWNER_OTHER,
		};
		owner_comm(st.comm);
		struct at_task_state *ts = selected ? task_state_get(0) : 0;
		struct at_serving *sv = ts ? serving_for_call(ts, tgid, 0) : 0;
		if (sv && sv->ctx_valid) {
			st.ctx_fd = sv->ctx.fd;
			st.ctx_conn_start_ns = sv->ctx.conn_start_ns;
		}
		bpf_map_update_elem(&flows, &key, &st, BPF_ANY);
		return;
	}
	if (network_whole_host && newstate == AT_TCP_ESTABLISHED && oldstate == AT_TCP_SYN_RECV) {
		/* A passive connection, in softirq: the current task is not its
		 * owner. Track it ownerless; accept() fills the owner in and
		 * reports the open, so one that closes first is still counted. */
		__u64 now = bpf_ktime_get_ns();
		struct at_flow_state st = {
			.start_ns = now,
			.established_ns = now,
			.ctx_fd = -1,
			.role = AT_ROLE_SERVER,
			.owner = AT_FLOW_OWNER_UNKNOWN,
		};
		bpf_map_update_elem(&flows, &key, &st, BPF_NOEXIST);
		return;
	}
	struct at_flow_state *st = bpf_map_lookup_elem(&flows, &key);
	if (!st)
		return;
	if (newstate == AT_TCP_ESTABLISHED && oldstate == AT_TCP_SYN_SENT) {
		st->established_ns = bpf_ktime_get_ns();
		emit_flow(sk, st, AT_FLOW_OPEN, oldstate);
	} else if (newstate == AT_TCP_CLOSE) {
		emit_flow(sk, st, AT_FLOW_CLOSE, oldstate);
		bpf_map_delete_elem(&flows, &key);
	}
}

#endif
