/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* fd -> socket -> 4-tuple, once per new fd, cached in the conns map. Plain
 * CO-RE reads through task->files, allowed under lockdown=integrity. */
#ifndef AUTOTEL_SOCKETS_H
#define AUTOTEL_SOCKETS_H

#define AT_AF_INET 2
#define AT_AF_INET6 10
#define AT_S_IFMT 00170000
#define AT_S_IFSOCK 0140000
#define AT_SOCK_STREAM 1
#define AT_SOCK_DGRAM 2
#define AT_IPPROTO_TCP 6
#define AT_IPPROTO_UDP 17
#define AT_DNS_PORT 53

static __always_inline struct file *fd_to_file(__s32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return 0;
	unsigned int max_fds = BPF_CORE_READ(fdt, max_fds);
	if (fd < 0 || (unsigned int)fd >= max_fds)
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_core_read(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The sock behind an fd, or NULL when the fd is not a socket. */
static __always_inline struct sock *fd_to_sock(__s32 fd)
{
	struct file *f = fd_to_file(fd);
	if (!f)
		return 0;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & AT_S_IFMT) != AT_S_IFSOCK)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return 0;
	return BPF_CORE_READ(sock, sk);
}

/* Endpoints of an IPv4/IPv6 sock. Returns 0 on success. */
static __always_inline int read_sk_tuple(const struct sock *sk, struct at_conn_tuple *t)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AT_AF_INET && family != AT_AF_INET6)
		return -1;
	t->family = family;
	t->proto = BPF_CORE_READ(sk, sk_protocol);
	t->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AT_AF_INET) {
		__u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(t->saddr, &s, 4);
		__builtin_memcpy(t->daddr, &d, 4);
	} else {
		BPF_CORE_READ_INTO(&t->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&t->daddr, sk, __sk_common.skc_v6_daddr);
	}
	return 0;
}

/* Fills info from the sock. Returns 0 for what we parse: TCP over IPv4/IPv6,
 * and connected UDP sockets talking to port 53 (DNS lookups);
 * AT_SOCK_PER_CALL for an unconnected UDP socket (musl's resolver, dnspython):
 * only a call that names its peer tells. */
static __always_inline int read_sock_tuple(struct sock *sk, struct at_conn_info *info)
{
	info->sk = (__u64)sk;
	__u16 type = BPF_CORE_READ(sk, sk_type);
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	int tcp = type == AT_SOCK_STREAM && proto == AT_IPPROTO_TCP;
	int udp = type == AT_SOCK_DGRAM && proto == AT_IPPROTO_UDP;
	if (!tcp && !udp)
		return -1;
	if (read_sk_tuple(sk, &info->tuple))
		return -1;
	if (udp && info->tuple.dport == 0)
		return AT_SOCK_PER_CALL;
	/* Other UDP traffic (media, QUIC, metrics) is not ours to parse. */
	if (udp && info->tuple.dport != AT_DNS_PORT)
		return -1;
	return 0;
}

/* The cached info for (tgid, fd), resolving and caching it on first sight.
 * Non-sockets are cached too (is_socket = 0) so files cost one lookup. */
static __always_inline struct at_conn_info *lookup_conn(__u32 tgid, __s32 fd, __u8 role, int refresh)
{
	__u64 key = conn_key(tgid, fd);
	struct at_conn_info *info = bpf_map_lookup_elem(&conns, &key);
	if (info && !refresh)
		return info;

	struct at_conn_info fresh = {};
	fresh.start_ns = bpf_ktime_get_ns();
	fresh.event_fd = fd;
	fresh.role = role;
	struct sock *sk = fd_to_sock(fd);
	fresh.is_socket = sk && read_sock_tuple(sk, &fresh) == 0;
	bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY);
	return bpf_map_lookup_elem(&conns, &key);
}

#endif
