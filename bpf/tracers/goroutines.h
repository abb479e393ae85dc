/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * The request a call belongs to, in a Go program. Elsewhere the thread that
 * read a request makes that request's calls, so "the server connection this
 * thread last read a request from" names it. Go moves goroutines between
 * threads at every blocking call, and a thread runs many handlers in turn:
 * the thread's last read names some request, often another handler's. A
 * handler's own calls (database drivers, Redis clients, anything written
 * from the handler's goroutine) are written by the goroutine that read its
 * request, wherever that runs by then, so in a Go program the goroutine
 * (its g, which the register ABI keeps in a register at every syscall and
 * probe) carries the context too.
 */
#ifndef AUTOTEL_GOROUTINES_H
#define AUTOTEL_GOROUTINES_H

#include "../common/syscall_nr.h"

/* A goroutine (its g) or a Go object, by address, in one process. */
struct at_go_key {
	__u32 tgid;
	__u32 _pad;
	__u64 addr;
};

/* goroutine -> the request it serves, copied at each of its server reads.
 * LRU: a goroutine's end is not seen; stale entries are checked against
 * their connection (see serving_for_call). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct at_go_key);
	__type(value, struct at_serving);
} go_serving SEC(".maps");

/* net/http's client writes a request from its connection's own writer
 * goroutine ((*persistConn).writeLoop), which the handler's goroutine hands
 * it to in (*persistConn).roundTrip (go_http.h probes both). */
struct at_go_writer {
	__u64 pconn;         /* the *persistConn it writes for */
	__u64 conn_start_ns; /* the connection of its first write (0: none yet) */
	__s32 fd;
	__u32 _pad;
};

/* writer goroutine -> its persistConn and connection. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct at_go_key);
	__type(value, struct at_go_writer);
} go_writers SEC(".maps");

/* persistConn -> the context of the request in its current round trip
 * (one at a time: HTTP/1 without pipelining). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct at_go_key);
	__type(value, struct at_serving);
} go_round_trips SEC(".maps");

static __always_inline __u64 current_goroutine(void)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	return regs ? AT_GO_G(regs) : 0;
}

/* After a server read of `len` bytes on `info` updated the thread's
 * context: the reading goroutine keeps a copy, and the connection notes its
 * reader. A 1-byte read is left out: net/http's background reader reads the
 * first byte of the next request while the handler finishes, then ends, and
 * its g, reused at once by the next goroutine started on that CPU, would
 * pass for the request's reader until the connection's own goroutine reads
 * the rest. */
static __always_inline void serving_note_read(struct at_task_state *st, __u32 tgid, struct at_conn_info *info,
					      long len)
{
	if (!(st->sel_flags & AT_SEL_GO) || len <= 1)
		return;
	struct at_go_key key = { .tgid = tgid, .addr = current_goroutine() };
	if (!key.addr)
		return;
	info->go_reader = key.addr;
	if (info->go_replied || !info->go_requests) {
		info->go_replied = 0;
		info->go_requests++;
	}
	st->serving.request = info->go_requests;
	struct at_serving *sv = bpf_map_lookup_elem(&go_serving, &key);
	if (sv)
		*sv = st->serving;
	else
		bpf_map_update_elem(&go_serving, &key, &st->serving, BPF_ANY);
}

/* The round trip a net/http writer goroutine is writing for, when `info`
 * (the connection written to) is its own: a writer binds to the connection
 * of its first write, so a g reused after its writer ended is not taken for
 * it. */
static __always_inline struct at_serving *writer_round_trip(struct at_go_key *key, struct at_conn_info *info)
{
	struct at_go_writer *w = bpf_map_lookup_elem(&go_writers, key);
	if (!w)
		return 0;
	if (!w->conn_start_ns) {
		w->fd = info->event_fd;
		w->conn_start_ns = info->start_ns;
	}
	if (w->fd != info->event_fd || w->conn_start_ns != info->start_ns) {
		bpf_map_delete_elem(&go_writers, key);
		return 0;
	}
	struct at_go_key pk = { .tgid = key->tgid, .addr = w->pconn };
	return bpf_map_lookup_elem(&go_round_trips, &pk);
}

/* A response written on a Go program's server connection: the next read
 * there starts another request. */
static __always_inline void serving_note_reply(struct at_task_state *st, struct at_conn_info *info)
{
	if (st->sel_flags & AT_SEL_GO)
		info->go_replied = 1;
}

/* The request goroutine `g` serves (0: none known): its own while it is
 * still the last reader of the connection it read it from (a g is reused
 * once its goroutine ends), or the one it inherited from its creator until
 * that connection reads its next request or closes. A goroutine that
 * outlives its request (a pool's, a refresher started lazily by the first
 * request) then serves none: its entry stays, without a valid context, so
 * its calls are roots rather than children of whatever its thread read. A
 * stale own entry is dropped. */
static __always_inline struct at_serving *goroutine_serving(__u32 tgid, __u64 g)
{
	struct at_go_key key = { .tgid = tgid, .addr = g };
	struct at_serving *sv = bpf_map_lookup_elem(&go_serving, &key);
	if (!sv)
		return 0;
	__u64 ck = conn_key(tgid, sv->ctx.fd);
	struct at_conn_info *srv = bpf_map_lookup_elem(&conns, &ck);
	int alive = srv && srv->start_ns == sv->ctx.conn_start_ns;
	if (sv->inherited) {
		if (!alive || srv->go_requests != sv->request) {
			sv->ctx_valid = 0;
			sv->wire_trace_valid = 0;
		}
		return sv;
	}
	if (alive && srv->go_reader == g)
		return sv;
	bpf_map_delete_elem(&go_serving, &key);
	return 0;
}

/* The context of a call made now on `info` (0: not known): in a Go program
 * the goroutine's own request; for a net/http writer goroutine that of the
 * round trip it writes, which comes before what the writer inherited from
 * the handler that dialed its connection; then what the goroutine
 * inherited (valid or over); otherwise, for goroutines that never read a
 * request nor were started while one was served (gRPC's writers), the
 * thread's. */
static __always_inline struct at_serving *serving_for_call(struct at_task_state *st, __u32 tgid,
							   struct at_conn_info *info)
{
	if (!(st->sel_flags & AT_SEL_GO))
		return &st->serving;
	struct at_go_key key = { .tgid = tgid, .addr = current_goroutine() };
	struct at_serving *sv = goroutine_serving(tgid, key.addr);
	if (sv && !sv->inherited)
		return sv;
	if (info) {
		struct at_serving *w = writer_round_trip(&key, info);
		if (w)
			return w;
	}
	return sv ? sv : &st->serving;
}

#endif
