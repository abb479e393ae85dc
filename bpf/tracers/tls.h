/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Plaintext at the TLS library boundary: uprobes on OpenSSL's SSL_read,
 * SSL_write and their _ex forms. The socket behind an
 * SSL* is learned from the syscalls the library makes while inside a call
 * (recorded by the sys_enter hook) and remembered per SSL* for calls served
 * from the library's buffer. Attached by user space per library file, for
 * every process mapping it; this side keeps only selected processes. */
#ifndef AUTOTEL_TLS_H
#define AUTOTEL_TLS_H

/* Entry of a TLS call: remember what the return needs. */
static __always_inline int ssl_enter(__u64 ssl, __u64 buf, __u64 len_ptr, __u8 kind)
{
	struct at_task_state *st = selected_task_state(bpf_get_current_pid_tgid() >> 32);
	if (!st)
		return 0;
	__s32 *fd = bpf_map_lookup_elem(&ssl_fds, &ssl);
	st->ssl.ssl = ssl;
	st->ssl.buf = buf;
	st->ssl.len_ptr = len_ptr;
	st->ssl.enter_ns = bpf_ktime_get_ns();
	st->ssl.fd = fd ? *fd : -1;
	st->ssl.kind = kind;
	st->ssl.active = 1;
	return 0;
}

/* Return of a TLS call: emit the plaintext as a data event of the socket. */
static __always_inline int ssl_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct at_task_state *st = selected_task_state(tgid);
	if (!st || !st->ssl.active)
		return 0;
	struct at_ssl_call c = st->ssl;
	/* The functions return int: the upper half of the register is noise. */
	long len = (int)ret;
	st->ssl.active = 0;
	if (c.len_ptr) {
		/* SSL_read_ex/SSL_write_ex return 1 and write the count. */
		__u64 n = 0;
		if (len != 1 || bpf_probe_read_user(&n, sizeof(n), (void *)c.len_ptr))
			return 0;
		len = (long)n;
	}
	if (len <= 0)
		return 0;
	if (c.fd < 0) {
		count(AT_CNT_TLS_NO_FD);
		return 0;
	}
	struct at_conn_info *info = lookup_conn(tgid, c.fd, AT_ROLE_UNKNOWN, 0);
	if (!info || !info->is_socket)
		return 0;
	__u8 dir = c.kind == AT_SYS_SSL_WRITE ? AT_DIR_EGRESS : AT_DIR_INGRESS;
	struct at_data_event *ev = begin_event(st, info, (__u32)id, tgid, c.fd, dir, c.kind, c.enter_ns, len);
	if (!ev)
		return 0;
	capture_plain(ev, c.buf, (__u32)len, capture_cap(info));
	note_http2(info, ev);
	output_data(ev);
	return 0;
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

/* SSL_set_fd(ssl, fd): the socket is known before the first call. Without
 * it, a request that arrived with the client's Finished is read into the
 * library's buffer during the handshake and the first SSL_read makes no
 * syscall to learn the fd from. Entry only: nothing to wait for. */
SEC("uprobe")
int BPF_UPROBE(at_ssl_set_fd, void *ssl, int fd)
{
	if (!is_selected(bpf_get_current_pid_tgid() >> 32) || fd < 0)
		return 0;
	__u64 key = (__u64)ssl;
	__s32 v = fd;
	bpf_map_update_elem(&ssl_fds, &key, &v, BPF_ANY);
	return 0;
}

/* One return probe serves every function above: the thread's saved call
 * says which it was. */
SEC("uretprobe")
int BPF_URETPROBE(at_ssl_ret, long ret)
{
	return ssl_exit(ret);
}

#endif
