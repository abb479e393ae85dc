/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Plaintext at the TLS library boundary: uprobes on OpenSSL's SSL_read,
 * SSL_write and their _ex forms, or on the internal functions all four wrap
 * (see crates/protocols/src/openssl_binary.rs), and on GnuTLS's record
 * calls. The socket behind an
 * SSL* is learned from the syscalls the library makes while inside a call
 * (recorded by the sys_enter hook) and remembered per SSL* for calls served
 * from the library's buffer. Attached by user space per library file, for
 * every process mapping it; this side keeps only selected processes. */
#ifndef AUTOTEL_TLS_H
#define AUTOTEL_TLS_H

/* Entry of a TLS call: remember what the return needs. */
static __always_inline int ssl_enter(__u64 ssl, __u64 buf, __u64 len_ptr, __u8 kind)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct at_task_state *st = selected_task_state(tgid);
	if (!st)
		return 0;
	struct at_ssl_key key = { .tgid = tgid, .ssl = ssl };
	__s32 *fd = bpf_map_lookup_elem(&ssl_fds, &key);
	st->ssl.ssl = ssl;
	st->ssl.buf = buf;
	st->ssl.len_ptr = len_ptr;
	st->ssl.enter_ns = bpf_ktime_get_ns();
	st->ssl.fd = fd ? *fd : -1;
	st->ssl.kind = kind;
	st->ssl.active = 1;
	return 0;
}

/* Plaintext of one TLS call, as a data event of its socket. */
static __always_inline int emit_plaintext(struct at_task_state *st, __u64 id, __s32 fd, __u8 kind,
					  __u64 enter_ns, __u64 buf, long len)
{
	__u32 tgid = id >> 32;
	if (len <= 0)
		return 0;
	if (fd < 0) {
		count(AT_CNT_TLS_NO_FD);
		return 0;
	}
	struct at_conn_info *info = lookup_conn(tgid, fd, AT_ROLE_UNKNOWN, 0);
	if (!info || !info->is_socket)
		return 0;
	__u8 dir = kind == AT_SYS_SSL_WRITE ? AT_DIR_EGRESS : AT_DIR_INGRESS;
	info->tls_plain = 1;
	struct at_data_event *ev = begin_event(st, info, (__u32)id, tgid, dir, kind, enter_ns, len);
	if (!ev)
		return 0;
	capture_plain(ev, buf, (__u32)len, h2_prefix_cap(info, dir, capture_cap(info), (__u32)len));
	note_http2(info, ev);
	if (info->wide)
		h2_follow(info, dir, buf, 0, (__u32)len);
	output_data(ev);
	return 0;
}

/* Return of a TLS call: emit the plaintext as a data event of the socket. */
static __always_inline int ssl_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct at_task_state *st = selected_task_state(id >> 32);
	if (!st || !st->ssl.active)
		return 0;
	struct at_ssl_call c = st->ssl;
	/* The functions return int: the upper half of the register is noise. */
	long len = (int)ret;
	st->ssl.active = 0;
	if (c.len_ptr) {
		/* SSL_read_ex/SSL_write_ex (and the internal functions they
		 * wrap, which user space may probe instead) return 1, or more,
		 * when they wrote the count. */
		__u64 n = 0;
		if (len <= 0 || bpf_probe_read_user(&n, sizeof(n), (void *)c.len_ptr))
			return 0;
		len = (long)n;
	}
	return emit_plaintext(st, id, c.fd, c.kind, c.enter_ns, c.buf, len);
}

SEC("uprobe")
int BPF_UPROBE(at_ssl_write, void *ssl, const void *buf, int num)
{
	return ssl_enter((__u64)ssl, (__u64)buf, 0, AT_SYS_SSL_WRITE);
}

SEC("uprobe")
int BPF_UPROBE(at_ssl_write_ex, void *ssl, const void *buf, __u64 num, __u64 *written)
{
	return ssl_enter((__u64)ssl, (__u64)buf, (__u64)written, AT_SYS_SSL_WRITE);
}

SEC("uprobe")
int BPF_UPROBE(at_ssl_read, void *ssl, void *buf, int num)
{
	return ssl_enter((__u64)ssl, (__u64)buf, 0, AT_SYS_SSL_READ);
}

SEC("uprobe")
int BPF_UPROBE(at_ssl_read_ex, void *ssl, void *buf, __u64 num, __u64 *readbytes)
{
	return ssl_enter((__u64)ssl, (__u64)buf, (__u64)readbytes, AT_SYS_SSL_READ);
}

/* The socket of a TLS object, told by the application. */
static __always_inline int remember_ssl_fd(__u64 ssl, int fd)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_selected(tgid) || fd < 0)
		return 0;
	struct at_ssl_key key = { .tgid = tgid, .ssl = ssl };
	__s32 v = fd;
	bpf_map_update_elem(&ssl_fds, &key, &v, BPF_ANY);
	return 0;
}

/* SSL_set_fd(ssl, fd): the socket is known before the first call. Without
 * it, a request that arrived with the client's Finished is read into the
 * library's buffer during the handshake and the first SSL_read makes no
 * syscall to learn the fd from. Entry only: nothing to wait for. */
SEC("uprobe")
int BPF_UPROBE(at_ssl_set_fd, void *ssl, int fd)
{
	return remember_ssl_fd((__u64)ssl, fd);
}

/* GnuTLS: gnutls_record_recv(session, data, size) and
 * gnutls_record_send2(session, data, size, pad, flags), which
 * gnutls_record_send tail-calls; both return the byte count (ssize_t). The
 * session stands where OpenSSL's SSL* does. */
SEC("uprobe")
int BPF_UPROBE(at_gnutls_recv, void *session, void *data, __u64 size)
{
	return ssl_enter((__u64)session, (__u64)data, 0, AT_SYS_SSL_READ);
}

SEC("uprobe")
int BPF_UPROBE(at_gnutls_send, void *session, const void *data, __u64 size)
{
	return ssl_enter((__u64)session, (__u64)data, 0, AT_SYS_SSL_WRITE);
}

/* gnutls_transport_set_int2(session, recv_fd, send_fd): the socket, known
 * before the first call, as SSL_set_fd tells it. */
SEC("uprobe")
int BPF_UPROBE(at_gnutls_set_int2, void *session, int recv_fd)
{
	return remember_ssl_fd((__u64)session, recv_fd);
}

/* gnutls_transport_set_ptr(session, ptr): with the library's own socket
 * calls (no push/pull functions set) the pointer is the fd, cast. Anything
 * larger than an fd can be is an application's own object: left alone. A
 * wrong fd is replaced at the first socket call inside a record call. */
SEC("uprobe")
int BPF_UPROBE(at_gnutls_set_ptr, void *session, void *ptr)
{
	if ((__u64)ptr > 0xfffff)
		return 0;
	return remember_ssl_fd((__u64)session, (int)(__u64)ptr);
}

/* One return probe serves every function above: the thread's saved call
 * says which it was. */
SEC("uretprobe")
int BPF_URETPROBE(at_ssl_ret, long ret)
{
	return ssl_exit(ret);
}

/* Go's crypto/tls (Go 1.18+, x86-64 register ABI: receiver in RAX, the
 * slice's pointer and length in RBX and RCX, the goroutine's g in R14).
 * Where user space places the probes, and why, is in
 * crates/protocols/src/go_binary.rs: every site is an instruction the kernel
 * emulates where it can be.
 *
 * (*Conn).Write is emitted at entry, where its plaintext is whole: net/http
 * writes a request on one goroutine and reads the response on another, so
 * a write reported at its return could reach the ring after the response.
 *
 * (*Conn).Read: its entry saves the socket and the buffer; its copy of the
 * plaintext (runtime.memmove(to, from, n)) or, failing that, its RETs (n in
 * RAX) emit the bytes. The two are paired by goroutine, not thread: a
 * goroutine parked in Read resumes on whichever thread the scheduler picks. */
struct at_go_call {
	__u64 buf;
	__u64 enter_ns;
	__s32 fd;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct at_go_key);
	__type(value, struct at_go_call);
} go_tls_calls SEC(".maps");

/* An entry probe placed on the prologue's stack check (cookie 1) sees the
 * comparison's flags: `jbe` branches to morestack when CF or ZF is set, and
 * the call then starts over, so that visit is not the call's. */
#define AT_X86_EFLAGS_CF 0x1
#define AT_X86_EFLAGS_ZF 0x40
static __always_inline int go_growing_stack(struct pt_regs *ctx)
{
	return bpf_get_attach_cookie(ctx) && (ctx->flags & (AT_X86_EFLAGS_CF | AT_X86_EFLAGS_ZF));
}

/* The socket behind a *tls.Conn. Its first field, `conn net.Conn`, is an
 * interface whose data word points to a *net.TCPConn; that starts with its
 * *netFD, which starts with a poll.FD: a 16-byte mutex, then Sysfd. These
 * layouts have held since Go 1.9. Read on every call, not cached: Go reuses
 * a freed Conn's memory for the next one. Another net.Conn underneath gives
 * a number lookup_conn does not find as a socket of this process. */
static __always_inline __s32 go_conn_fd(__u64 conn)
{
	__u64 tcp = 0, netfd = 0;
	__s64 sysfd = -1;
	if (bpf_probe_read_user(&tcp, sizeof(tcp), (void *)(conn + 8)) || !tcp)
		return -1;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)tcp) || !netfd)
		return -1;
	if (bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + 16)))
		return -1;
	return sysfd >= 0 && sysfd < (1 << 30) ? (__s32)sysfd : -1;
}

SEC("uprobe")
int at_go_tls_read(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_selected(tgid) || go_growing_stack(ctx))
		return 0;
	struct at_go_key key = { .tgid = tgid, .addr = ctx->r14 };
	struct at_go_call c = {
		.buf = ctx->bx,
		.enter_ns = bpf_ktime_get_ns(),
		.fd = go_conn_fd(ctx->ax),
	};
	bpf_map_update_elem(&go_tls_calls, &key, &c, BPF_ANY);
	return 0;
}

SEC("uprobe")
int at_go_tls_write(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct at_task_state *st = selected_task_state(id >> 32);
	if (!st || go_growing_stack(ctx))
		return 0;
	return emit_plaintext(st, id, go_conn_fd(ctx->ax), AT_SYS_SSL_WRITE, 0, ctx->bx, (long)ctx->cx);
}

/* The end of a Read of this goroutine: `n` plaintext bytes at `buf` (0: the
 * buffer Read was given). */
static __always_inline int go_read_done(struct pt_regs *ctx, __u64 buf, long n)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct at_task_state *st = selected_task_state(id >> 32);
	if (!st)
		return 0;
	struct at_go_key key = { .tgid = id >> 32, .addr = ctx->r14 };
	struct at_go_call *p = bpf_map_lookup_elem(&go_tls_calls, &key);
	if (!p)
		return 0;
	struct at_go_call c = *p;
	bpf_map_delete_elem(&go_tls_calls, &key);
	return emit_plaintext(st, id, c.fd, AT_SYS_SSL_READ, c.enter_ns, buf ? buf : c.buf, n);
}

/* On Read's call of runtime.memmove(to, from, n), which copies the plaintext
 * out of the record buffer: read from `from`, just before the copy. */
SEC("uprobe")
int at_go_tls_copy(struct pt_regs *ctx)
{
	return go_read_done(ctx, ctx->bx, (long)ctx->cx);
}

/* On every RET of Read, where its copy could not be found: n in RAX. */
SEC("uprobe")
int at_go_tls_ret(struct pt_regs *ctx)
{
	return go_read_done(ctx, 0, (long)ctx->ax);
}

#endif
