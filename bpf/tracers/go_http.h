/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * net/http's client, in a Go program: carries the context of the goroutine
 * that makes a request to the goroutine that writes it (see goroutines.h).
 * Entry probes only, on the prologue's stack check where found (cookie 1,
 * see go_growing_stack); the receiver, a *persistConn, is in RAX.
 */
#ifndef AUTOTEL_GO_HTTP_H
#define AUTOTEL_GO_HTTP_H

#include "goroutines.h"
#include "wire_ctx.h"

/* (*persistConn).roundTrip, on the goroutine making the request: the
 * request belongs to what that goroutine serves. */
SEC("uprobe")
int at_go_http_round_trip(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct at_task_state *st = selected_task_state(tgid);
	if (!st || go_growing_stack(ctx))
		return 0;
	struct at_serving *sv = serving_for_call(st, tgid, 0);
	/* The writer's call shares the request's trace on the wire. */
	wire_trace_pick(sv);
	struct at_go_key key = { .tgid = tgid, .addr = ctx->ax };
	bpf_map_update_elem(&go_round_trips, &key, sv, BPF_ANY);
	return 0;
}

/* (*persistConn).writeLoop, at the start of a connection's writer
 * goroutine: which persistConn it writes for. */
SEC("uprobe")
int at_go_http_write_loop(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_selected(tgid) || go_growing_stack(ctx))
		return 0;
	struct at_go_key key = { .tgid = tgid, .addr = ctx->r14 };
	struct at_go_writer w = { .pconn = ctx->ax, .fd = -1 };
	bpf_map_update_elem(&go_writers, &key, &w, BPF_ANY);
	return 0;
}

#endif
