/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Goroutines started while serving a request, in a Go program: they inherit
 * the request (see goroutines.h).
 */
#ifndef AUTOTEL_GO_SPAWN_H
#define AUTOTEL_GO_SPAWN_H

#include "goroutines.h"
#include "wire_ctx.h"

/* Goroutine creation (`go f()`), at runtime.newproc's closure's call of
 * runqput, on the creating thread's system stack (see
 * protocols::go_binary::NEWPROC_CLOSURE): the new goroutine is in RBX, and
 * its creator is g0.m.curg, g0 in R14; the cookie holds the offsets of g.m
 * (high half) and m.curg (low half). A goroutine started while serving a
 * request works for it (errgroup, fan-out, a handler's `go`): it gets a copy
 * of its creator's context. One started with none gets none. Either way
 * what the kernel kept for an earlier goroutine with the same g (Go reuses a
 * g at once) goes: its request, and the persistConn of a net/http writer
 * that ended before it wrote, which a new goroutine would otherwise take for
 * its own at its first write. */
SEC("uprobe")
int at_go_newproc(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct at_task_state *st = selected_task_state(tgid);
	if (!st || !(st->sel_flags & AT_SEL_GO))
		return 0;
	struct at_go_key key = { .tgid = tgid, .addr = ctx->bx };
	bpf_map_delete_elem(&go_writers, &key);
	__u64 offsets = bpf_get_attach_cookie(ctx);
	__u64 m = 0, creator = 0;
	if (!bpf_probe_read_user(&m, sizeof(m), (void *)(ctx->r14 + (offsets >> 32))) && m)
		bpf_probe_read_user(&creator, sizeof(creator), (void *)(m + (__u32)offsets));
	struct at_serving *from = creator ? goroutine_serving(tgid, creator) : 0;
	/* The g's earlier entry, when it has one, is overwritten in place: a
	 * busy server reuses the same few g's, and an update would allocate. */
	struct at_serving *to = bpf_map_lookup_elem(&go_serving, &key);
	if (from && from->ctx_valid) {
		wire_trace_pick(from);
		struct at_serving copy = *from;
		copy.inherited = 1;
		if (to)
			*to = copy;
		else
			bpf_map_update_elem(&go_serving, &key, &copy, BPF_ANY);
	} else if (to) {
		bpf_map_delete_elem(&go_serving, &key);
	}
	return 0;
}

#endif
