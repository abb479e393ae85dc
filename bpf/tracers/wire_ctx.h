/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Trace context across hosts in a TCP header option, with no payload
 * rewriting and no writes to process memory (lockdown=integrity forbids
 * bpf_probe_write_user anyway).
 *
 * Client side: when a selected process starts writing a request (its first
 * write after a read), the syscall hook picks the client span's ids, keeps
 * them in ctx_out keyed by the connection's 4-tuple and tells user space,
 * which adopts them for the span. The sock_ops program then writes them into
 * every data segment of that connection until the next request replaces them.
 * Server side: sock_ops parses the option of arriving segments into ctx_in;
 * the read that returns the request hands it to user space just before the
 * request's bytes, and user space makes it the server span's parent.
 *
 * A peer without the agent ignores the option (RFC 793: unknown options are
 * skipped). Segments with no option space left go without it (counted).
 */
#ifndef AUTOTEL_WIRE_CTX_H
#define AUTOTEL_WIRE_CTX_H

#include "goroutines.h"

#define AT_TCPHDR_SYN 0x02

struct at_wire_ids {
	__u8 trace_id[16];
	__u8 span_id[8];
};

struct at_wire_in {
	struct at_wire_ids ids;
	__u8 fresh; /* not yet handed to user space */
	__u8 _pad[7];
};

/* Client connections of selected processes: ids their current request carries. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct at_conn_tuple);
	__type(value, struct at_wire_ids);
} ctx_out SEC(".maps");

/* Server connections (any process): the last ids a peer sent. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct at_conn_tuple);
	__type(value, struct at_wire_in);
} ctx_in SEC(".maps");

static __always_inline void random_bytes(__u8 *out, int words)
{
	for (int i = 0; i < words; i++) {
		__u32 r = bpf_get_prandom_u32();
		__builtin_memcpy(out + 4 * i, &r, 4);
	}
}

/* Every call made while serving a request carries one trace on the wire:
 * choose it before `sv` is copied to another goroutine that may call first. */
static __always_inline void wire_trace_pick(struct at_serving *sv)
{
	if (propagate_ctx && sv->ctx_valid && !sv->wire_trace_valid) {
		random_bytes(sv->wire_trace, 4);
		sv->wire_trace_valid = 1;
	}
}

static __always_inline void emit_wire_event(__u8 kind, __u32 tgid, __s32 fd, struct at_conn_info *info,
					    struct at_serving *sv, struct at_wire_ids *ids)
{
	struct at_wire_ctx_event *ev = bpf_ringbuf_reserve(&data_events, sizeof(*ev), 0);
	if (!ev) {
		count(AT_CNT_WIRE_LOST);
		return;
	}
	ev->type = AT_EV_WIRE_CTX;
	ev->kind = kind;
	ev->_pad = 0;
	ev->pid = tgid;
	ev->fd = fd;
	ev->conn_start_ns = info->start_ns;
	ev->ctx_fd = -1;
	ev->ctx_conn_start_ns = 0;
	if (kind == AT_WIRE_OUT && sv->ctx_valid) {
		ev->ctx_fd = sv->ctx.fd;
		ev->ctx_conn_start_ns = sv->ctx.conn_start_ns;
	}
	__builtin_memcpy(ev->trace_id, ids->trace_id, 16);
	__builtin_memcpy(ev->span_id, ids->span_id, 8);
	bpf_ringbuf_submit(ev, submit_flags(&data_events, sizeof(*ev)));
}

/* Syscall entry of a write on a client connection: a new request starts
 * when the previous operation on the connection was not a write. */
static __always_inline void wire_client_write(struct at_task_state *st, struct at_conn_info *info, __u32 tgid,
					      __s32 fd)
{
	if (!propagate_ctx || !info || info->role != AT_ROLE_CLIENT || info->tuple.proto != AT_IPPROTO_TCP)
		return;
	if (info->last_dir == AT_LAST_EGRESS)
		return;
	info->last_dir = AT_LAST_EGRESS;
	struct at_serving *sv = serving_for_call(st, tgid, info);
	struct at_wire_ids ids;
	if (sv->wire_trace_valid) {
		__builtin_memcpy(ids.trace_id, sv->wire_trace, 16);
	} else {
		random_bytes(ids.trace_id, 4);
		/* Every call made while serving this request shares its trace. */
		if (sv->ctx_valid) {
			__builtin_memcpy(sv->wire_trace, ids.trace_id, 16);
			sv->wire_trace_valid = 1;
		}
	}
	random_bytes(ids.span_id, 2);
	ids.span_id[0] |= 1; /* never the all-zero invalid span id */
	bpf_map_update_elem(&ctx_out, &info->tuple, &ids, BPF_ANY);
	emit_wire_event(AT_WIRE_OUT, tgid, fd, info, sv, &ids);
}

/* Syscall exit of a read on a server connection, before its data event. */
static __always_inline void wire_server_read(struct at_task_state *st, struct at_conn_info *info, __u32 tgid,
					     __s32 fd)
{
	if (info->last_dir != AT_LAST_INGRESS) {
		/* A new request: what the previous one carried no longer applies. */
		info->last_dir = AT_LAST_INGRESS;
		st->serving.wire_trace_valid = 0;
	}
	struct at_wire_in *in = bpf_map_lookup_elem(&ctx_in, &info->tuple);
	if (!in || !in->fresh)
		return;
	in->fresh = 0;
	__builtin_memcpy(st->serving.wire_trace, in->ids.trace_id, 16);
	st->serving.wire_trace_valid = 1;
	emit_wire_event(AT_WIRE_IN, tgid, fd, info, &st->serving, &in->ids);
}

/* Request boundaries, seen at syscall exit (server reads go through
 * wire_server_read instead). */
static __always_inline void wire_note_direction(struct at_task_state *st, struct at_conn_info *info, __u32 tgid,
						__s32 fd, __u8 direction)
{
	if (!propagate_ctx || info->tuple.proto != AT_IPPROTO_TCP)
		return;
	if (info->role == AT_ROLE_SERVER && direction == AT_DIR_INGRESS)
		wire_server_read(st, info, tgid, fd);
	else
		info->last_dir = direction == AT_DIR_INGRESS ? AT_LAST_INGRESS : AT_LAST_EGRESS;
}

/* The connection of a sock_ops callback, as the syscall side keys it. */
static __always_inline int skops_tuple(struct bpf_sock_ops *skops, struct at_conn_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	__u32 family = skops->family;
	t->family = family;
	t->proto = AT_IPPROTO_TCP;
	t->sport = skops->local_port;
	t->dport = bpf_ntohl(skops->remote_port);
	if (family == AT_AF_INET) {
		__u32 s = skops->local_ip4, d = skops->remote_ip4;
		__builtin_memcpy(t->saddr, &s, 4);
		__builtin_memcpy(t->daddr, &d, 4);
	} else if (family == AT_AF_INET6) {
		/* Written out, not a loop: the verifier takes context fields at
		 * constant offsets from the context pointer only, and clang turns
		 * even an unrolled loop into a moving pointer. */
#define AT_COPY_IP6_WORD(i)                                         \
	do {                                                        \
		__u32 s = skops->local_ip6[i], d = skops->remote_ip6[i]; \
		__builtin_memcpy(t->saddr + 4 * (i), &s, 4);        \
		__builtin_memcpy(t->daddr + 4 * (i), &d, 4);        \
	} while (0)
		AT_COPY_IP6_WORD(0);
		AT_COPY_IP6_WORD(1);
		AT_COPY_IP6_WORD(2);
		AT_COPY_IP6_WORD(3);
#undef AT_COPY_IP6_WORD
	} else {
		return -1;
	}
	return 0;
}

/* Data segments only: a pure ACK or FIN starts no request. A NULL skb
 * (flags 0) is the kernel sizing the MSS: reserve there too, so segments
 * are cut small enough to take the option. */
static __always_inline int wants_option(struct bpf_sock_ops *skops)
{
	__u32 flags = skops->skb_tcp_flags;
	if (flags & AT_TCPHDR_SYN)
		return 0;
	return skops->skb_len > 0 || flags == 0;
}

static __always_inline void wire_reserve(struct bpf_sock_ops *skops)
{
	if (!wants_option(skops))
		return;
	struct at_conn_tuple t;
	if (skops_tuple(skops, &t) || !bpf_map_lookup_elem(&ctx_out, &t))
		return;
	if (bpf_reserve_hdr_opt(skops, sizeof(struct at_wire_opt), 0) && skops->skb_len > 0)
		count(AT_CNT_WIRE_NO_ROOM);
}

static __always_inline void wire_write(struct bpf_sock_ops *skops)
{
	if (!wants_option(skops) || skops->skb_len == 0)
		return;
	struct at_conn_tuple t;
	if (skops_tuple(skops, &t))
		return;
	struct at_wire_ids *ids = bpf_map_lookup_elem(&ctx_out, &t);
	if (!ids)
		return;
	struct at_wire_opt opt = {
		.kind = AT_WIRE_KIND,
		.len = sizeof(struct at_wire_opt),
		.exid = { AT_WIRE_EXID >> 8, AT_WIRE_EXID & 0xff },
	};
	__builtin_memcpy(opt.trace_id, ids->trace_id, 16);
	__builtin_memcpy(opt.span_id, ids->span_id, 8);
	/* Fails only when the reserve above found no room (already counted). */
	bpf_store_hdr_opt(skops, &opt, sizeof(opt), 0);
}

static __always_inline void wire_parse(struct bpf_sock_ops *skops)
{
	struct at_wire_opt opt = {
		.kind = AT_WIRE_KIND,
		.len = 4, /* search by kind + 2-byte ExID */
		.exid = { AT_WIRE_EXID >> 8, AT_WIRE_EXID & 0xff },
	};
	if (bpf_load_hdr_opt(skops, &opt, sizeof(opt), 0) != sizeof(opt) || opt.len != sizeof(opt))
		return;
	struct at_conn_tuple t;
	if (skops_tuple(skops, &t))
		return;
	struct at_wire_in *cur = bpf_map_lookup_elem(&ctx_in, &t);
	__u64 span, cur_span;
	__builtin_memcpy(&span, opt.span_id, 8);
	if (cur) {
		__builtin_memcpy(&cur_span, cur->ids.span_id, 8);
		if (cur_span == span)
			return; /* a later segment of the same request */
	}
	struct at_wire_in in = { .fresh = 1 };
	__builtin_memcpy(in.ids.trace_id, opt.trace_id, 16);
	__builtin_memcpy(in.ids.span_id, opt.span_id, 8);
	bpf_map_update_elem(&ctx_in, &t, &in, BPF_ANY);
}

/* Attached to a cgroup v2 (the root by default) only when
 * context_propagation is tcp_option. */
SEC("sockops")
int at_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		/* connect() runs in the caller's context: only selected
		 * processes' connections pay for the per-segment callbacks. */
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (tgid != self_tgid && is_selected(tgid))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
								 BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		break;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* Costs nothing until a segment carries an option the kernel
		 * does not know. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		wire_reserve(skops);
		break;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		wire_write(skops);
		break;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		wire_parse(skops);
		break;
	}
	return 1;
}

#endif
