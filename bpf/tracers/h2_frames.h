/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * HTTP/2 frames past what one call's capture keeps. One read or write of an
 * HTTP/2 connection carries the frames of many streams, and a large DATA
 * frame (a gRPC message over the capture) pushes the HEADERS, trailers and
 * RST_STREAM frames behind it out of the prefix: streams never seen to start
 * or end, and header blocks whose HPACK table updates every later block
 * needs. So the kernel follows the frame boundaries of each direction of a
 * wide connection, carrying the position from call to call (a frame may span
 * many calls), and appends to the event one record (AT_H2_RECORD) per frame
 * whose header lies past the prefix, or whose payload runs past it unless it
 * is DATA: where it starts, its header, and its payload unless it is DATA,
 * which user space counts and never reads.
 *
 * Frames whose header is inside the prefix cost a hop over the copy already
 * made; only the frames past it cost user-memory reads (one per header, one
 * per payload piece, one per iovec entry walked).
 *
 * Included by syscalls.h after the capture helpers it uses.
 */
#ifndef AUTOTEL_H2_FRAMES_H
#define AUTOTEL_H2_FRAMES_H

#define AT_H2_PREFACE_LEN 24
#define AT_H2_HEADER 9
#define AT_H2_DATA 0
#define AT_H2_MAX_TYPE 9 /* CONTINUATION: a higher type is not a sender's frame */
/* Steps of one call's walk (a frame header, an iovec entry or a payload
 * piece each): a call past it leaves the position unknown. */
#define AT_H2_MAX_STEPS 16384

enum at_h2_state {
	AT_H2_READ_HEADER = 0,
	AT_H2_COPY_PAYLOAD = 1,
};

struct at_h2_walk {
	__u64 iov_ptr; /* iovec array; 0: a plain buffer */
	__u64 iovcnt;
	__u64 base;	 /* user address of the piece (iovec or buffer) being read */
	__u32 piece_at;	 /* call offset where that piece starts */
	__u32 piece_len; /* its bytes within the call */
	__u32 next_iov;
	__u32 len;	 /* bytes the call moved */
	__u32 captured;	 /* prefix bytes in ev->data */
	__u32 pos;	 /* call offset of the next frame header */
	__u32 at;	 /* call offset of the next byte to read */
	__u32 out;	 /* where the next record goes in ev->data */
	__u32 copy_left; /* payload bytes still to copy into the last record */
	__u8 state;	 /* enum at_h2_state */
	__u8 have;	 /* bytes of hdr read */
	__u8 lost;	 /* not a frame boundary, or unreadable memory */
	/* The header being read: 9 bytes, the rest room for masked offsets. */
	__u8 hdr[32];
};

/* The walk's state lives in a per-CPU map, not on the stack: the verifier
 * tracks every stack value, and a loop callback over stack state it could
 * tell apart was verified again and again (loading took ~2 s). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct at_h2_walk);
} h2_walks SEC(".maps");

static __always_inline struct at_h2_walk *h2_walk_state(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&h2_walks, &zero);
}

static __always_inline __u32 h2_frame_len(const __u8 *h)
{
	return (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
}

#define AT_H2_NO_HOP 2

/* A header wholly inside the prefix: hop over its frame, unless the frame
 * is a header block (or any frame but DATA) running past the prefix, which
 * gets a record (AT_H2_NO_HOP). */
static __always_inline long h2_hop(struct at_h2_walk *w)
{
	struct at_data_event *ev = scratch_event();
	if (!ev) {
		w->lost = 1;
		return 1;
	}
	__u64 p = w->pos;
	asm volatile("%0 &= %1" : "+r"(p) : "i"(AT_CAP_MASK));
	__u8 type = ev->data[p + 3];
	if (type > AT_H2_MAX_TYPE) {
		w->lost = 1;
		return 1;
	}
	__u32 end = w->pos + AT_H2_HEADER + h2_frame_len(&ev->data[p]);
	if (type != AT_H2_DATA && end > w->captured)
		return AT_H2_NO_HOP;
	w->pos = end;
	w->at = end;
	return 0;
}

/* Moves to the next iovec entry: the piece holding `at` comes later. */
static __always_inline long h2_next_piece(struct at_h2_walk *w)
{
	if (!w->iov_ptr || w->next_iov >= w->iovcnt) {
		w->lost = 1;
		return 1;
	}
	struct iovec iov = {};
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(w->iov_ptr + (__u64)w->next_iov * sizeof(iov)))) {
		w->lost = 1;
		return 1;
	}
	w->next_iov++;
	w->piece_at += w->piece_len;
	__u32 rest = w->len - w->piece_at;
	w->piece_len = iov.iov_len < rest ? (__u32)iov.iov_len : rest;
	w->base = (__u64)iov.iov_base;
	return 0;
}

/* Writes a record's fixed part: the frame at call offset `start` with up to
 * `kept` payload bytes to follow. Returns how many fit, or -1: no room (then
 * none for any later frame either: `out` only grows, so records never skip
 * a frame). */
static __always_inline long h2_put_record(struct at_h2_walk *w, __u32 start, __u32 kept)
{
	if (w->out + AT_H2_RECORD > AT_WIDE_CAPTURE)
		return -1;
	__u32 room = AT_WIDE_CAPTURE - w->out - AT_H2_RECORD;
	if (kept > room)
		kept = room;
	struct at_data_event *ev = scratch_event();
	if (!ev) {
		w->lost = 1;
		return -1;
	}
	__u64 o = w->out;
	asm volatile("%0 &= %1" : "+r"(o) : "i"(AT_CAP_MASK));
	__u8 *r = &ev->data[o];
	r[0] = start;
	r[1] = start >> 8;
	r[2] = start >> 16;
	r[3] = start >> 24;
	r[4] = kept;
	r[5] = kept >> 8;
	__builtin_memcpy(&r[6], w->hdr, AT_H2_HEADER);
	w->out += AT_H2_RECORD;
	return kept;
}

/* Starts the record of the frame whose header was just read. */
static __always_inline void h2_record(struct at_h2_walk *w, __u32 start, __u8 type, __u32 flen)
{
	__u32 kept = 0;
	if (type != AT_H2_DATA) {
		__u32 rest = w->len - w->at;
		kept = flen < rest ? flen : rest;
	}
	long n = h2_put_record(w, start, kept);
	if (n > 0) {
		w->copy_left = n;
		w->state = AT_H2_COPY_PAYLOAD;
	}
}

/* Reads (the rest of) a frame header from user memory at `src`. */
static __always_inline long h2_read_header(struct at_h2_walk *w, __u64 src, __u32 avail)
{
	__u32 n = AT_H2_HEADER - w->have;
	if (n > avail)
		n = avail;
	__u64 o = w->have, m = n;
	asm volatile("%0 &= %1" : "+r"(o) : "i"(15));
	asm volatile("%0 &= %1" : "+r"(m) : "i"(15));
	if (bpf_probe_read_user(&w->hdr[o], m, (void *)src)) {
		w->lost = 1;
		return 1;
	}
	w->have += n;
	w->at += n;
	if (w->have < AT_H2_HEADER)
		return 0; /* in the next piece, or past the call's end */
	w->have = 0;
	__u8 type = w->hdr[3];
	if (type > AT_H2_MAX_TYPE) {
		w->lost = 1;
		return 1;
	}
	__u32 start = w->pos;
	__u32 flen = h2_frame_len(w->hdr);
	w->pos = start + AT_H2_HEADER + flen;
	h2_record(w, start, type, flen);
	if (w->state == AT_H2_READ_HEADER)
		w->at = w->pos;
	return 0;
}

/* Copies the next piece of a record's payload. */
static __always_inline long h2_copy_payload(struct at_h2_walk *w, __u64 src, __u32 avail)
{
	__u32 n = w->copy_left < avail ? w->copy_left : avail;
	struct at_data_event *ev = scratch_event();
	if (!ev) {
		w->lost = 1;
		return 1;
	}
	__u64 o = w->out, m = n;
	asm volatile("%0 &= %1" : "+r"(o) : "i"(AT_CAP_MASK));
	asm volatile("%0 &= %1" : "+r"(m) : "i"(AT_CAP_MASK));
	if (bpf_probe_read_user(&ev->data[o], m, (void *)src)) {
		w->lost = 1;
		return 1;
	}
	w->out += n;
	w->at += n;
	w->copy_left -= n;
	if (!w->copy_left) {
		w->state = AT_H2_READ_HEADER;
		w->at = w->pos;
	}
	return 0;
}

static long h2_step(__u64 i, void *ctx)
{
	struct at_h2_walk *w = h2_walk_state();
	if (!w || w->at >= w->len || w->lost)
		return 1;
	if (w->state == AT_H2_READ_HEADER && !w->have && w->pos + AT_H2_HEADER <= w->captured) {
		long r = h2_hop(w);
		if (r != AT_H2_NO_HOP)
			return r;
	}
	if (w->at >= w->piece_at + w->piece_len)
		return h2_next_piece(w);
	__u32 avail = w->piece_at + w->piece_len - w->at;
	__u64 src = w->base + (w->at - w->piece_at);
	if (w->state == AT_H2_READ_HEADER)
		return h2_read_header(w, src, avail);
	return h2_copy_payload(w, src, avail);
}

#define AT_H2_UNKNOWN (-1)
#define AT_H2_PROBE (-2)

/* Where this call's first frame header is: carried from the last call, or
 * after the client preface. A direction not followed yet (the server writes
 * its SETTINGS before it reads the preface) is probed: a call captured whole
 * whose frames end exactly at its end started at a boundary and ends at one. */
static __always_inline long h2_first_header(struct at_h2_pos *hp, const struct at_data_event *ev, __u32 len)
{
	if (!hp->tracked) {
		if (starts_with_h2_preface(ev))
			return AT_H2_PREFACE_LEN;
		return ev->captured_len == len ? AT_H2_PROBE : AT_H2_UNKNOWN;
	}
	if (!hp->have)
		return hp->skip;
	/* The last call ended inside a length field: its rest opens this one. */
	__u32 need = 3 - hp->have;
	if (ev->captured_len < need)
		return AT_H2_UNKNOWN;
	__u8 f[3] = { hp->part[0], hp->part[1], 0 };
	if (hp->have == 1) {
		f[1] = ev->data[0];
		f[2] = ev->data[1];
	} else {
		f[2] = ev->data[0];
	}
	return AT_H2_HEADER - hp->have + h2_frame_len(f);
}

/* How much of a call the prefix takes: on a followed HTTP/2 direction, a
 * call past the capture keeps half of it for the records of its frames. */
static __always_inline __u32 h2_prefix_cap(const struct at_conn_info *info, __u8 dir, __u32 cap, __u32 len)
{
	if (info->wide && len > cap && info->h2[dir & 1].tracked)
		return cap / 2;
	return cap;
}

/* Follows the frames of one call (`len` bytes at `buf`, an iovec array when
 * iovcnt) whose prefix is in this CPU's event slot, appending records for
 * those past it. A global function: the verifier checks it once, not once
 * per hook that calls it (inlined into each, loading took seconds). */
__noinline int h2_follow(struct at_conn_info *info, __u32 dir, __u64 buf, __u64 iovcnt, __u32 len)
{
	if (!info || !info->wide)
		return 0;
	struct at_data_event *ev = scratch_event();
	if (!ev)
		return 0;
	struct at_h2_pos *hp = &info->h2[dir & 1];
	long first = h2_first_header(hp, ev, len);
	hp->tracked = 0;
	hp->have = 0;
	if (first == AT_H2_UNKNOWN)
		return 0;
	int probe = first == AT_H2_PROBE;
	if (probe)
		first = 0;
	if ((__u64)first >= len) {
		/* Inside one frame's payload all along (a big DATA frame). */
		hp->skip = first - len;
		hp->tracked = 1;
		return 0;
	}
	struct at_h2_walk *w = h2_walk_state();
	if (!w)
		return 0;
	*w = (struct at_h2_walk){
		.iov_ptr = iovcnt ? buf : 0,
		.iovcnt = iovcnt,
		.base = iovcnt ? 0 : buf,
		.piece_len = iovcnt ? 0 : len,
		.len = len,
		.captured = ev->captured_len,
		.pos = first,
		.at = first,
		.out = ev->captured_len,
	};
	bpf_loop(AT_H2_MAX_STEPS, h2_step, 0, 0);
	if (probe) {
		if (w->lost || w->have || w->pos != w->len)
			return 0;
	} else if (w->lost || w->at < w->len) {
		count(AT_CNT_H2_UNFOLLOWED);
		return 0;
	}
	/* A header the call's end cuts: its first bytes as a record (user space
	 * sees the record runs past the call), the rest opens the next call. */
	if (w->have && w->len > w->captured)
		h2_put_record(w, w->pos, 0);
	if (w->have >= 3) {
		hp->skip = AT_H2_HEADER - w->have + h2_frame_len(w->hdr);
	} else if (w->have) {
		hp->have = w->have;
		hp->part[0] = w->hdr[0];
		hp->part[1] = w->hdr[1];
		hp->skip = 0;
	} else {
		hp->skip = w->pos - w->len;
	}
	hp->tracked = 1;
	ev->frames_len = w->out - ev->captured_len;
	return 0;
}

#endif
