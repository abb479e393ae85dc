/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Syscall numbers the raw sys_enter/sys_exit dispatch cares about. vmlinux.h
 * carries no __NR_* constants and the BPF target has no asm/unistd.h, so the
 * per-architecture tables (stable kernel ABI) are spelled out here. */
#ifndef AUTOTEL_SYSCALL_NR_H
#define AUTOTEL_SYSCALL_NR_H

#if defined(__TARGET_ARCH_arm64)
#define AT_NR_READ 63
#define AT_NR_WRITE 64
#define AT_NR_CLOSE 57
#define AT_NR_READV 65
#define AT_NR_WRITEV 66
#define AT_NR_SENDFILE 71
#define AT_NR_CONNECT 203
#define AT_NR_ACCEPT 202
#define AT_NR_ACCEPT4 242
#define AT_NR_SENDTO 206
#define AT_NR_RECVFROM 207
#define AT_NR_SENDMSG 211
#define AT_NR_SENDMMSG 269
#define AT_NR_RECVMSG 212
#define AT_NR_LISTEN 201
#define AT_NR_DUP2 (-1) /* arm64 has only dup3 */
#define AT_NR_DUP3 24
#define AT_SYSCALL_ID(regs) ((regs)->syscallno)
/* Go's register ABI keeps the running goroutine (its g) in R28. */
#define AT_GO_G(regs) ((regs)->regs[28])
#define AT_ARG0(regs) ((regs)->orig_x0)
#define AT_ARG1(regs) ((regs)->regs[1])
#define AT_ARG2(regs) ((regs)->regs[2])
#define AT_ARG3(regs) ((regs)->regs[3])
#define AT_ARG4(regs) ((regs)->regs[4])
#define AT_IS_COMPAT() 0
#else /* x86_64 */
#define AT_NR_READ 0
#define AT_NR_WRITE 1
#define AT_NR_CLOSE 3
#define AT_NR_READV 19
#define AT_NR_WRITEV 20
#define AT_NR_DUP2 33
#define AT_NR_SENDFILE 40
#define AT_NR_CONNECT 42
#define AT_NR_ACCEPT 43
#define AT_NR_SENDTO 44
#define AT_NR_RECVFROM 45
#define AT_NR_SENDMSG 46
#define AT_NR_SENDMMSG 307
#define AT_NR_RECVMSG 47
#define AT_NR_LISTEN 50
#define AT_NR_ACCEPT4 288
#define AT_NR_DUP3 292
#define AT_SYSCALL_ID(regs) ((regs)->orig_ax)
/* Go's register ABI (1.17+) keeps the running goroutine (its g) in R14,
 * also at a syscall and at a probe. */
#define AT_GO_G(regs) ((regs)->r14)
#define AT_ARG0(regs) ((regs)->di)
#define AT_ARG1(regs) ((regs)->si)
#define AT_ARG2(regs) ((regs)->dx)
#define AT_ARG3(regs) ((regs)->r10)
#define AT_ARG4(regs) ((regs)->r8)
/* 32-bit tasks number their syscalls differently (ia32 table): skip them. */
#define AT_TS_COMPAT 0x0002
#define AT_IS_COMPAT() (bpf_get_current_task_btf()->thread_info.status & AT_TS_COMPAT)
#endif

#endif
