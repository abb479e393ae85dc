// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
/* The single BPF object autotel loads: every tracer shares the maps in
 * common/maps.h. Kernel code only captures and does cheap classification;
 * all protocol parsing happens in user space. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "common/events.h"
#include "common/maps.h"
#include "tracers/process.h"
#include "tracers/sockets.h"
#include "tracers/network.h"
#include "tracers/syscalls.h"
#include "tracers/sock_io.h"
#include "tracers/tls.h"
#include "tracers/go_http.h"
#include "tracers/go_spawn.h"

/* Force BTF emission of the event types so the skeleton generates Rust
 * mirrors of them (checked against our own abi.rs layout in tests). */
struct at_data_event *_at_data_event_btf;
struct at_close_event *_at_close_event_btf;
struct at_proc_event *_at_proc_event_btf;
struct at_flow_event *_at_flow_event_btf;
struct at_wire_ctx_event *_at_wire_ctx_event_btf;

char LICENSE[] SEC("license") = "Dual BSD/GPL";
