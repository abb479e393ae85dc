/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Process discovery: exec, fork, exit and listen. These fire for every
 * process (user space decides selection), but are rare compared to I/O. */
#ifndef AUTOTEL_PROCESS_H
#define AUTOTEL_PROCESS_H

#include "goroutines.h"

static __always_inline struct at_proc_event *reserve_proc(void)
{
	struct at_proc_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	if (!ev)
		count(AT_CNT_PROC_LOST);
	return ev;
}

static __always_inline void submit_proc(struct at_proc_event *ev, __u8 kind, __u32 pid, __u32 ppid, __u32 exec_sel)
{
	ev->type = AT_EV_PROC;
	ev->kind = kind;
	ev->_pad = 0;
	ev->pid = pid;
	ev->ppid = ppid;
	ev->exec_sel = exec_sel;
	ev->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	/* Discovery must be prompt (< 1 s): always wake the reader. */
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void emit_proc(__u8 kind, __u32 pid, __u32 ppid)
{
	struct at_proc_event *ev = reserve_proc();
	if (!ev)
		return;
	ev->filename[0] = 0;
	submit_proc(ev, kind, pid, ppid, 0);
}

/* exec replaces the program: an inherited selection no longer holds. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(at_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid == self_tgid)
		return 0;
	__u32 *flags = bpf_map_lookup_elem(&selected_pids, &tgid);
	__u32 explicit_flag = flags ? (*flags & AT_SEL_EXPLICIT) : 0;
	__u32 v = 0;
	if (select_on_exec) {
		/* `ip netns exec`, `sh -c`, `env`: the wrapper's rejection reaches
		 * the map after this exec re-selected the pid; the tag lets it
		 * remove only its own selection. */
		__u32 tag = bpf_get_prandom_u32() << AT_SEL_TAG_SHIFT;
		v = AT_SEL_PROVISIONAL | explicit_flag | (tag ? tag : 1u << AT_SEL_TAG_SHIFT);
		sel_mark(tgid);
		bpf_map_update_elem(&selected_pids, &tgid, &v, BPF_ANY);
	} else if (flags && !explicit_flag) {
		bpf_map_delete_elem(&selected_pids, &tgid);
		sel_gen_bump();
	} else if (flags && (*flags & AT_SEL_GO)) {
		/* The new program may not be Go: user space decides again. */
		__u32 kept = *flags & ~AT_SEL_GO;
		bpf_map_update_elem(&selected_pids, &tgid, &kept, BPF_ANY);
		sel_gen_bump();
	}
	struct at_proc_event *ev = reserve_proc();
	if (!ev)
		return 0;
	bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), BPF_CORE_READ(bprm, filename));
	submit_proc(ev, AT_PROC_EXEC, tgid, 0, v);
	return 0;
}

/* A child of a selected process is selected at once, in the kernel: pre-fork
 * servers (nginx workers) accept right after fork, before user space could react. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(at_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (ctgid != BPF_CORE_READ(child, pid) || ctgid == ptgid)
		return 0; /* a new thread, not a new process */
	if (sel_bit_clear(ptgid))
		return 0;
	__u32 *pflags = bpf_map_lookup_elem(&selected_pids, &ptgid);
	if (!pflags)
		return 0;
	/* Same program, same runtime. */
	__u32 v = AT_SEL_INHERITED | (*pflags & AT_SEL_GO);
	sel_mark(ctgid);
	bpf_map_update_elem(&selected_pids, &ctgid, &v, BPF_ANY);
	emit_proc(AT_PROC_FORK, ctgid, ptgid);
	return 0;
}

/* fds a process never closed would keep their conns entries (files and
 * pipes are cached there as "not a socket"): walk its open-fd bitmap at
 * exit, while the fd table still exists, and forget each. */
struct at_exit_walk {
	__u64 open_fds; /* kernel address of the bitmap */
	__u32 words;
	__u32 tgid;
};

struct at_exit_bits {
	__u64 bits;
	__u32 first_fd;
	__u32 tgid;
};

/* One bit per call: a bpf_loop callback is verified once, whereas an open
 * 64-step loop over an unknown word made some verifiers walk every path
 * (1M instructions, E2BIG on 6.18.44, so the agent did not load). */
static long exit_fd_bit(__u64 b, void *ctx)
{
	struct at_exit_bits *s = ctx;
	if (!s->bits)
		return 1;
	if (s->bits & 1) {
		__u64 key = conn_key(s->tgid, (__s32)(s->first_fd + b));
		bpf_map_delete_elem(&conns, &key);
	}
	s->bits >>= 1;
	return 0;
}

static long exit_fd_word(__u64 i, void *ctx)
{
	struct at_exit_walk *w = ctx;
	if (i >= w->words)
		return 1;
	struct at_exit_bits s = { .first_fd = (__u32)(i * 64), .tgid = w->tgid };
	if (bpf_probe_read_kernel(&s.bits, sizeof(s.bits), (void *)(w->open_fds + i * 8)))
		return 1;
	if (s.bits)
		bpf_loop(64, exit_fd_bit, &s, 0);
	return 0;
}

/* Enough for 65536 descriptors; larger tables keep the rest to the LRU. */
#define AT_MAX_FD_WORDS 1024

static __always_inline void forget_open_fds(__u32 tgid)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return;
	struct at_exit_walk w = {
		.open_fds = (__u64)BPF_CORE_READ(fdt, open_fds),
		.words = (BPF_CORE_READ(fdt, max_fds) + 63) / 64,
		.tgid = tgid,
	};
	if (!w.open_fds)
		return;
	bpf_loop(AT_MAX_FD_WORDS, exit_fd_word, &w, 0);
}

/* A Go program's writer goroutines: an entry that never bound to a
 * connection could bind to a later process's with the same pid and g. */
static long forget_go_writer(struct bpf_map *map, struct at_go_key *key, struct at_go_writer *w, __u32 *tgid)
{
	if (key->tgid == *tgid)
		bpf_map_delete_elem(map, key);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(at_exit)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (tgid != (__u32)id)
		return 0; /* a thread, not the process */
	__u32 *flags = sel_bit_clear(tgid) ? 0 : bpf_map_lookup_elem(&selected_pids, &tgid);
	if (!flags) {
		/* Selected provisionally at exec and rejected since: its fds may
		 * still have entries (it has task state only if it was traced). */
		if (task_state_get(0))
			forget_open_fds(tgid);
		return 0;
	}
	__u32 go = *flags & AT_SEL_GO;
	bpf_map_delete_elem(&selected_pids, &tgid);
	sel_unmark(tgid);
	sel_gen_bump();
	forget_open_fds(tgid);
	if (go)
		bpf_for_each_map_elem(&go_writers, forget_go_writer, &tgid, 0);
	emit_proc(AT_PROC_EXIT, tgid, 0);
	return 0;
}

/* listen(): a process that starts serving later is picked up at once.
 * Called from the sys_exit dispatch. */
static __always_inline int on_listen(long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (ret == 0 && tgid != self_tgid)
		emit_proc(AT_PROC_LISTEN, tgid, 0);
	return 0;
}

#endif
