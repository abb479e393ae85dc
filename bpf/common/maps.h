/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Maps shared by every tracer in autotel.bpf.c, and the read-only knobs user
 * space sets before load. */
#ifndef AUTOTEL_MAPS_H
#define AUTOTEL_MAPS_H

#include "events.h"

/* Set by the loader before load (libbpf .rodata); the verifier treats them as
 * constants, so disabled paths cost nothing. */
const volatile __u32 capture_max_bytes = 4096;
/* The prefix on HTTP/2 connections (capture.http2_max_bytes). */
const volatile __u32 capture_wide_bytes = AT_WIDE_CAPTURE;
/* Wake the reader only when this much data is waiting; below it the reader's
 * timer drains the ring (see DESIGN, performance notes). */
const volatile __u64 wakeup_data_bytes = 256 * 1024;
/* Our own tgid: never traced even if something selects it. */
const volatile __u32 self_tgid = 0;
/* Set when processes are selected by executable name: every exec is selected
 * provisionally, so a short-lived client is traced from its first syscall,
 * and user space confirms or drops it on the exec event. */
const volatile __u32 select_on_exec = 0;
/* Trace context in TCP header options (context_propagation: tcp_option). */
const volatile __u32 propagate_ctx = 0;
/* Capture from the socket-level tracepoints (sock_io.h), not the syscall hooks. */
const volatile __u32 socket_capture = 0;

/* tgid -> flags. The first lookup of every program: unselected processes stop here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} selected_pids SEC(".maps");

/* One bit per tgid (PID_MAX_LIMIT of them): set before any selected_pids
 * entry for that tgid is written, cleared only where the entry is known
 * gone. A clear bit proves "not selected" with one inlined array load; a
 * set bit sends the check on to selected_pids. The hash lookup was a third
 * of what every socket call of an unselected process cost (~50 of 130 ns).
 * Mmapped by user space, which sets and clears bits with atomics. */
#define AT_SEL_BITS_WORDS (4194304 / 64)
/* The word after the bits counts selected_pids removals (see
 * selected_task_state). */
#define AT_SEL_GEN_WORD AT_SEL_BITS_WORDS
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, AT_SEL_BITS_WORDS + 1);
	__type(key, __u32);
	__type(value, __u64);
} selected_bits SEC(".maps");

/* HTTP/2 connections user space recognised from their frames alone (they
 * opened before the agent: no preface): conn_key(tgid, event fd) -> the
 * connection's start_ns, so that a hint outliving its connection does not
 * widen the next one on that fd. Taken by the next call that may start
 * with a frame header (see note_http2). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} h2_joined SEC(".maps");

/* Payload events (one per syscall). Size set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
} data_events SEC(".maps");

/* Process lifecycle events: small and rare, kept apart so a flood of payload
 * can never delay discovery. (Connection closes go with the data, to keep
 * their order.) */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} proc_events SEC(".maps");

/* (tgid << 32 | fd) -> what we know about that fd. LRU: bounded even if a
 * close is missed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct at_conn_info);
} conns SEC(".maps");

/* Syscall arguments saved at entry, consumed at exit. */
struct at_syscall_args {
	__u64 enter_ns;
	__u64 buf;    /* user buffer, or iovec array */
	__u64 iovcnt; /* 0 for a plain buffer */
	__u64 addr;   /* sendto/sendmsg: the user's destination sockaddr (0: none) */
	__s32 fd;
	__u8 syscall; /* enum at_syscall, or one of AT_ARGS_* below */
	__u8 _pad[3];
};
#define AT_ARGS_ACCEPT 100
#define AT_ARGS_CONNECT 101

/* The request a thread (or, in a Go program, a goroutine) serves: the
 * context its own calls are made in. */
struct at_serving {
	struct at_thread_ctx ctx;
	/* Trace id the outgoing requests carry on the wire: the one a peer sent
	 * with the request being served, or one chosen at the first call. */
	__u8 wire_trace[16];
	__u8 ctx_valid;
	__u8 wire_trace_valid;
	/* A Go goroutine's copy of its creator's (goroutines.h); 0 in a
	 * thread's own. */
	__u8 inherited;
	__u8 _pad;
	/* Go: which request of its connection (at_conn_info.go_requests). */
	__u32 request;
};

/* Per-thread state in task-local storage: no hashing, freed with the
 * thread. `args`: syscall arguments saved at entry for the exit; `serving`:
 * the server request this thread serves (trace context inside a process). */
/* A TLS library call in progress on this thread (uprobe entry -> return). */
struct at_ssl_call {
	__u64 ssl;     /* SSL* */
	__u64 buf;     /* plaintext buffer */
	__u64 len_ptr; /* SSL_*_ex: where the byte count is written; 0 otherwise */
	__u64 enter_ns;
	__s32 fd;      /* socket the library used, -1 until known */
	__u8 kind;     /* AT_SYS_SSL_* */
	__u8 active;
	__u8 _pad[2];
};

struct at_task_state {
	struct at_syscall_args args;
	struct at_serving serving;
	struct at_ssl_call ssl;
	/* 1 + the removal count at which this thread's process was last found
	 * in selected_pids (0: never), and the flags it had then. */
	__u64 sel_gen;
	__u32 sel_flags;
	__u32 _pad_flags;
	/* sendmmsg seen by the socket hooks: the array, and the message last
	 * reported from it, and when. */
	__u64 mmsg_vec;
	__u64 mmsg_ns;
	__u32 mmsg_idx;
	__u8 args_valid;
	__u8 _pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct at_task_state);
} task_state SEC(".maps");

static __always_inline struct at_task_state *task_state_get(__u64 flags)
{
	return bpf_task_storage_get(&task_state, bpf_get_current_task_btf(), 0, flags);
}

/* (process, SSL*) -> socket fd, learned from the syscalls a TLS call makes:
 * a later SSL_read served from the library's buffer makes none. The process
 * is part of the key: forked workers (nginx, gunicorn) allocate their SSL
 * objects at the same addresses, and one worker's fd must not name another
 * worker's connection. */
struct at_ssl_key {
	__u32 tgid;
	__u32 _pad;
	__u64 ssl;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct at_ssl_key);
	__type(value, __s32);
} ssl_fds SEC(".maps");

/* Scratch space for building a data event (too big for the 512-byte stack),
 * one slot per CPU, indexed by CPU id: a per-CPU array would be simpler, but
 * its values are limited to 32 KiB and an event is larger. The loader sets
 * max_entries to the number of possible CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct at_data_event);
} data_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AT_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline __u64 *sel_word(__u32 tgid)
{
	__u32 idx = tgid >> 6;
	if (idx >= AT_SEL_BITS_WORDS)
		return 0; /* past PID_MAX_LIMIT: the hash decides */
	return bpf_map_lookup_elem(&selected_bits, &idx);
}

/* Before writing a selected_pids entry for `tgid`. */
static __always_inline void sel_mark(__u32 tgid)
{
	__u64 *w = sel_word(tgid);
	if (w)
		__sync_fetch_and_or(w, 1ULL << (tgid & 63));
}

/* After deleting the entry, where no other writer can race (the process
 * itself is exiting). */
static __always_inline void sel_unmark(__u32 tgid)
{
	__u64 *w = sel_word(tgid);
	if (w)
		__sync_fetch_and_and(w, ~(1ULL << (tgid & 63)));
}

/* The count of selected_pids removals, and of flag changes that threads
 * must see (see selected_task_state). */
static __always_inline __u64 *sel_gen_word(void)
{
	__u32 idx = AT_SEL_GEN_WORD;
	return bpf_map_lookup_elem(&selected_bits, &idx);
}

/* After deleting a selected_pids entry: threads that cached "selected"
 * look again. */
static __always_inline void sel_gen_bump(void)
{
	__u64 *g = sel_gen_word();
	if (g)
		__sync_fetch_and_add(g, 1);
}

static __always_inline int sel_bit_clear(__u32 tgid)
{
	__u64 *w = sel_word(tgid);
	return w && !(*w & (1ULL << (tgid & 63)));
}

static __always_inline int is_selected(__u32 tgid)
{
	if (sel_bit_clear(tgid))
		return 0;
	return bpf_map_lookup_elem(&selected_pids, &tgid) != 0;
}

/* The hot-path check: the thread's state when its process is traced, NULL
 * when not. A thread found in selected_pids remembers the removal count it
 * was found at, and the flags, and skips the hash until an entry is removed
 * (or gains AT_SEL_GO) anywhere. The
 * count is read before the hash, and removers bump it after deleting, so a
 * removal is never missed. */
static __always_inline struct at_task_state *selected_task_state(__u32 tgid)
{
	if (sel_bit_clear(tgid))
		return 0;
	__u64 *g = sel_gen_word();
	if (!g)
		return 0;
	__u64 gen = *(volatile __u64 *)g + 1;
	struct at_task_state *st = task_state_get(0);
	if (st && st->sel_gen == gen)
		return st;
	__u32 *flags = bpf_map_lookup_elem(&selected_pids, &tgid);
	if (!flags)
		return 0;
	if (!st)
		st = task_state_get(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (st) {
		st->sel_gen = gen;
		st->sel_flags = *flags;
	}
	return st;
}

static __always_inline __u64 conn_key(__u32 tgid, __s32 fd)
{
	return ((__u64)tgid << 32) | (__u32)fd;
}

/* Bytes a record of `size` takes in a ring: an 8-byte header, 8-byte aligned. */
static __always_inline __u64 ring_span(__u64 size)
{
	return (size + 8 + 7) & ~7ULL;
}

/* Wake the reader when a record takes the unread bytes past the threshold,
 * not on every record after that: by then the reader is up (its epoll wait
 * returns at once while anything is unread, and it times out every 50 ms
 * anyway), and each forced wakeup is an IRQ-work interrupt on the traced
 * process's CPU. `before`: the unread bytes without this record. */
static __always_inline __u64 wakeup_flag(__u64 before, __u64 size)
{
	return before < wakeup_data_bytes && before + ring_span(size) >= wakeup_data_bytes
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
}

/* For a record about to be written with bpf_ringbuf_output. */
static __always_inline __u64 output_flags(void *rb, __u64 size)
{
	return wakeup_flag(bpf_ringbuf_query(rb, BPF_RB_AVAIL_DATA), size);
}

/* For a reserved record: the unread bytes count it already. */
static __always_inline __u64 submit_flags(void *rb, __u64 size)
{
	__u64 avail = bpf_ringbuf_query(rb, BPF_RB_AVAIL_DATA);
	__u64 span = ring_span(size);
	return wakeup_flag(avail > span ? avail - span : 0, size);
}

#endif
