/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The flow table under pressure, in the manner of Linux conntrack:
 *
 * - Two tables. A connection's two entries (one per direction) start in fg_flows, an LRU: under
 *   pressure the connections that are not established are the ones that go. When a reply has
 *   passed and the opener goes on (TCP: an ACK without SYN, the handshake's last step; UDP and
 *   SCTP: its next packet), both entries move to fg_flows_est, a hash the programs never evict
 *   from for a new connection: a flood of new 5-tuples cannot push an established connection out.
 * - Timeouts. Every connection has an idle timeout (load-time constants the agent sets from
 *   FlowgateConfiguration.flowTimeouts): short for the embryonic ones, conntrack-like for the
 *   established ones, 10 s after a FIN or RST. An expired connection gives its reply key (its
 *   masquerade port) to a new connection at once, and the sweep (fg_flow_gc, run by the agent)
 *   removes it from either table.
 * - Ports. The source ports a translation hands out towards one peer are recorded in a bitmap
 *   (fg_nat_pools): a free port is found whenever one is free; when none is, the pool's clock hand
 *   looks at the ports after it and the longest idle embryonic connection among them (one never
 *   answered first) gives its port way. An established connection's port is never taken.
 * - Reply keys. A first packet never overwrites a live connection's entry: when its reply key is
 *   taken (a host socket that picked a pod's masquerade port, a forged packet), the new connection
 *   gets another source port, as conntrack's NAT does for clashing tuples.
 */
#ifndef FLOWGATE_FLOW_H
#define FLOWGATE_FLOW_H

#include "common.h"

#define FG_MAX_NAT_POOLS 1024
#define FG_NAT_PORTS (65536 - FG_NAT_PORT_FIRST)
#define FG_NAT_FIRST_WORD (FG_NAT_PORT_FIRST / 64)
#define FG_NAT_CLOCK_STEPS 32    /* ports the clock hand looks at when a pool is full */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FG_MAX_ENTRIES_FLOWS);
	__type(key, struct fg_flow_key);
	__type(value, struct fg_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_flows_est SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FG_MAX_NAT_POOLS);
	__type(key, struct fg_nat_pool_key);
	__type(value, struct fg_nat_pool);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_nat_pools SEC(".maps");

/* An empty pool, the value new pools are made from (too large for the stack; never written). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_nat_pool);
} fg_nat_pool_zero SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FG_FLOW_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_flow_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_flow_gauges);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_flow_gauges SEC(".maps");

/* Idle timeouts (load-time constants; the agent sets them from FlowgateConfiguration.flowTimeouts).
 * Embryonic: not established yet (a SYN with no answer, UDP with no reply or a single exchange such
 * as a DNS lookup); closed: a FIN or RST seen. SCTP is timed as TCP. */
volatile const __u64 FG_CLOSED_TIMEOUT_NS = 10000000000ull;           /* 10 s */
volatile const __u64 FG_TCP_EMBRYONIC_TIMEOUT_NS = 30000000000ull;    /* 30 s */
volatile const __u64 FG_TCP_TIMEOUT_NS = 86400000000000ull;           /* 24 h, kube-proxy's */
volatile const __u64 FG_UDP_EMBRYONIC_TIMEOUT_NS = 30000000000ull;    /* 30 s, conntrack's */
volatile const __u64 FG_UDP_TIMEOUT_NS = 120000000000ull;             /* 120 s, conntrack's stream */

static __always_inline void fg_flow_count(__u32 index)
{
	__u64 *c = bpf_map_lookup_elem(&fg_flow_counters, &index);
	if (c)
		*c += 1;
}

/* The key of the other direction of the connection whose entry under `k` is `f`. */
static __always_inline void fg_reverse_key(struct fg_flow_key *rev, const struct fg_flow_key *k, const struct fg_flow *f)
{
	__builtin_memset(rev, 0, sizeof(*rev));
	rev->proto = k->proto;
	rev->src = (f->flags & FG_FLOW_REWRITE_DST) ? f->new_dst : k->dst;
	rev->sport = (f->flags & FG_FLOW_REWRITE_DST) ? f->new_dport : k->dport;
	rev->dst = (f->flags & FG_FLOW_REWRITE_SRC) ? f->new_src : k->src;
	rev->dport = (f->flags & FG_FLOW_REWRITE_SRC) ? f->new_sport : k->sport;
}

static __always_inline int fg_key_eq(const struct fg_flow_key *a, const struct fg_flow_key *b)
{
	return fg_addr_eq(&a->src, &b->src) && fg_addr_eq(&a->dst, &b->dst) && a->sport == b->sport &&
	       a->dport == b->dport && a->proto == b->proto;
}

/* The entry for packets with key `k`: established connections first (most packets are theirs). */
static __always_inline struct fg_flow *fg_flow_find(const struct fg_flow_key *k)
{
	struct fg_flow *f = bpf_map_lookup_elem(&fg_flows_est, k);
	return f ? f : bpf_map_lookup_elem(&fg_flows, k);
}

static __always_inline void fg_flow_forget(const struct fg_flow_key *k)
{
	bpf_map_delete_elem(&fg_flows_est, k);
	bpf_map_delete_elem(&fg_flows, k);
}

/* Writes an entry into the table its connection is in. */
static __always_inline long fg_flow_put(const struct fg_flow_key *k, const struct fg_flow *f, __u64 how)
{
	if (f->flags & FG_FLOW_ESTABLISHED)
		return bpf_map_update_elem(&fg_flows_est, k, f, how);
	return bpf_map_update_elem(&fg_flows, k, f, how);
}

static __always_inline __u64 fg_flow_timeout(const struct fg_flow *f, __u8 proto)
{
	if (f->flags & FG_FLOW_CLOSED)
		return FG_CLOSED_TIMEOUT_NS;
	int est = (f->flags & FG_FLOW_ESTABLISHED) != 0;
	if (proto == IPPROTO_UDP)
		return est ? FG_UDP_TIMEOUT_NS : FG_UDP_EMBRYONIC_TIMEOUT_NS;
	return est ? FG_TCP_TIMEOUT_NS : FG_TCP_EMBRYONIC_TIMEOUT_NS;
}

/* Whether one entry has been idle past its connection's timeout (signed: another CPU may have
 * stamped it after `now` was read). */
static __always_inline int fg_entry_idle(const struct fg_flow *f, __u8 proto, __u64 now)
{
	return (__s64)(now - f->last_seen_ns) > (__s64)fg_flow_timeout(f, proto);
}

/* ---- port pools ---------------------------------------------------------------------------- */

/* The pool of a reply key: (peer, peer port, protocol) -> translated source address; the port is
 * the reply key's destination port. */
static __always_inline void fg_pool_key(struct fg_nat_pool_key *pk, const struct fg_flow_key *reply)
{
	__builtin_memset(pk, 0, sizeof(*pk));
	pk->nat = reply->dst;
	pk->peer = reply->src;
	pk->peer_port = reply->sport;
	pk->proto = reply->proto;
}

static __always_inline struct fg_nat_pool *fg_pool_get(const struct fg_nat_pool_key *pk, int create)
{
	struct fg_nat_pool *pool = bpf_map_lookup_elem(&fg_nat_pools, pk);
	if (pool || !create)
		return pool;
	__u32 zero = 0;
	struct fg_nat_pool *empty = bpf_map_lookup_elem(&fg_nat_pool_zero, &zero);
	if (!empty)
		return 0;
	bpf_map_update_elem(&fg_nat_pools, pk, empty, BPF_NOEXIST);
	return bpf_map_lookup_elem(&fg_nat_pools, pk);
}

/* Marks a port (host order) used or free. Not atomic: a bit lost to a race is a hint gone wrong,
 * which the checks against the flow tables catch (a port is taken only if its reply key is free,
 * and the reply entry is written BPF_NOEXIST). */
static __always_inline void fg_pool_mark(struct fg_nat_pool *pool, __u32 port, int used)
{
	__u32 w = (port >> 6) & (FG_NAT_WORDS - 1);
	__u64 bit = 1ull << (port & 63);
	if (used)
		pool->used[w] |= bit;
	else
		pool->used[w] &= ~bit;
}

/* A connection whose source was translated (its reply entry readdresses to the original source)
 * gives its port back to the pool; `reply` is its reply key. */
static __always_inline void fg_pool_release(const struct fg_flow_key *reply, struct fg_nat_pool_key *pk)
{
	fg_pool_key(pk, reply);
	struct fg_nat_pool *pool = fg_pool_get(pk, 0);
	if (pool)
		fg_pool_mark(pool, bpf_ntohs(reply->dport), 0);
}

/* Removes both entries of the connection whose entry under `k` is `f` (`other`, `pk`: scratch). */
static __always_inline void fg_conn_delete(const struct fg_flow_key *k, const struct fg_flow *f, struct fg_flow_key *other,
					   struct fg_nat_pool_key *pk)
{
	__u8 flags = f->flags;
	fg_reverse_key(other, k, f);
	if ((flags & (FG_FLOW_REPLY | FG_FLOW_REWRITE_DST)) == (FG_FLOW_REPLY | FG_FLOW_REWRITE_DST))
		fg_pool_release(k, pk);
	else if (!(flags & FG_FLOW_REPLY) && (flags & FG_FLOW_REWRITE_SRC))
		fg_pool_release(other, pk);
	fg_flow_forget(k);
	fg_flow_forget(other);
}

/* Whether the connection whose entry under `k` is `f` is over: both of its entries idle past its
 * timeout (or the other one gone). If so, it is removed. */
static __always_inline int fg_conn_reclaim(const struct fg_flow_key *k, const struct fg_flow *f, __u64 now,
					   struct fg_flow_key *other, struct fg_nat_pool_key *pk)
{
	if (!fg_entry_idle(f, k->proto, now))
		return 0;
	fg_reverse_key(other, k, f);
	struct fg_flow *o = fg_flow_find(other);
	if (o && !fg_entry_idle(o, k->proto, now))
		return 0;
	fg_conn_delete(k, f, other, pk);
	fg_flow_count(FG_FLOW_EXPIRED);
	return 1;
}

/* Scratch for binding a connection's source port (in the per-CPU work area). */
struct fg_nat_scratch {
	struct fg_flow_key rev;
	struct fg_flow_key other;
	struct fg_flow_key victim;
	struct fg_nat_pool_key pk;
	struct fg_nat_pool_key pk2;
};

/* Whether reply key s->rev may be taken by the connection whose first packet is `k`: nobody holds
 * it, its connection is over (removed here), or it is this connection's own reply entry (its
 * forward entry went, evicted or expired, and its opener sends again). */
static __always_inline int fg_reply_key_free(const struct fg_flow_key *k, struct fg_nat_scratch *s, __u64 now)
{
	struct fg_flow *o = fg_flow_find(&s->rev);
	if (!o)
		return 1;
	if (o->flags & FG_FLOW_REPLY) {
		fg_reverse_key(&s->other, &s->rev, o);
		if (fg_key_eq(&s->other, k)) {
			fg_flow_forget(&s->rev);
			return 1;
		}
	}
	return fg_conn_reclaim(&s->rev, o, now, &s->other, &s->pk2);
}

struct fg_scan {
	struct fg_nat_pool *pool;
	__u32 start;
	__u32 port;
};

/* bpf_loop step: the first word after the start with a clear bit; takes the bit. */
static long fg_scan_word(__u32 i, void *ctx)
{
	struct fg_scan *c = ctx;
	struct fg_nat_pool *pool = c->pool;
	__u32 w = FG_NAT_FIRST_WORD + (c->start + i) % (FG_NAT_WORDS - FG_NAT_FIRST_WORD);
	/* (The verifier does not bound a remainder; the compiler would drop a mask it knows is a
	 * no-op, so it is hidden from it.) */
	asm volatile("" : "+r"(w));
	w &= FG_NAT_WORDS - 1;
	__u64 v = pool->used[w];
	if (v == ~0ull)
		return 0;
	__u64 x = ~v;
	__u32 b = 0;
	/* The lowest set bit of x (no count-trailing-zeros instruction in BPF). */
	if (!(x & 0xffffffffull)) {
		b += 32;
		x >>= 32;
	}
	if (!(x & 0xffff)) {
		b += 16;
		x >>= 16;
	}
	if (!(x & 0xff)) {
		b += 8;
		x >>= 8;
	}
	if (!(x & 0xf)) {
		b += 4;
		x >>= 4;
	}
	if (!(x & 0x3)) {
		b += 2;
		x >>= 2;
	}
	if (!(x & 0x1))
		b += 1;
	b &= 63;
	pool->used[w] = v | (1ull << b);
	pool->next = w;
	c->port = w * 64 + b;
	return 1;
}

struct fg_clock {
	struct fg_nat_scratch *s;
	__u64 now;
	__u32 start;
	__u32 found;             /* a port whose reply key is free (host order), or 0 */
	__u32 victim;            /* the embryonic connection to evict, or 0 */
	__u32 victim_answered;
	__u64 victim_seen;
};

/* bpf_loop step of the clock hand: a port whose connection is gone or over is taken; otherwise
 * the embryonic connection idle longest (those never answered before those answered) is noted. */
static long fg_clock_step(__u32 i, void *ctx)
{
	struct fg_clock *c = ctx;
	struct fg_nat_scratch *s = c->s;
	__u32 port = FG_NAT_PORT_FIRST + (c->start + i) % FG_NAT_PORTS;
	s->rev.dport = bpf_htons(port);
	struct fg_flow *o = fg_flow_find(&s->rev);
	if (!o || fg_conn_reclaim(&s->rev, o, c->now, &s->other, &s->pk2)) {
		c->found = port;
		return 1;
	}
	if (o->flags & FG_FLOW_ESTABLISHED)
		return 0;
	__u32 answered = (o->flags & FG_FLOW_SEEN_REPLY) != 0;
	if (!c->victim || answered < c->victim_answered ||
	    (answered == c->victim_answered && o->last_seen_ns < c->victim_seen)) {
		c->victim = port;
		c->victim_answered = answered;
		c->victim_seen = o->last_seen_ns;
	}
	return 0;
}

/*
 * Binds the source port of a connection whose first packet is `k` and whose transposition `f`
 * rewrites the source (to f->new_src): the client's own port if its reply key is free, else a
 * free port of the pool, else the port of the pool's longest idle embryonic connection near the
 * clock hand, which goes. Returns -1 when every port is held by an established connection (or
 * the pool cannot be had). The port is marked in the pool.
 */
static __attribute__((noinline)) int fg_nat_bind(const struct fg_flow_key *k, struct fg_flow *f, struct fg_nat_scratch *s)
{
	__u64 now = bpf_ktime_get_ns();
	f->new_sport = k->sport;
	fg_reverse_key(&s->rev, k, f);
	fg_pool_key(&s->pk, &s->rev);
	struct fg_nat_pool *pool;
	if (fg_reply_key_free(k, s, now)) {
		pool = fg_pool_get(&s->pk, 1);
		if (pool)
			fg_pool_mark(pool, bpf_ntohs(k->sport), 1);
		return 0;
	}
	pool = fg_pool_get(&s->pk, 1);
	if (!pool)
		return -1;
	/* A clear bit: a port no connection of the pool holds (checked: one the pool never saw may). */
	for (int tries = 0; tries < 4; tries++) {
		struct fg_scan scan = { .pool = pool, .start = pool->next };
		if (bpf_loop(FG_NAT_WORDS - FG_NAT_FIRST_WORD, fg_scan_word, &scan, 0) <= 0 || !scan.port)
			break;
		s->rev.dport = bpf_htons(scan.port);
		if (fg_reply_key_free(k, s, now)) {
			fg_pool_mark(pool, scan.port, 1);
			f->new_sport = s->rev.dport;
			return 0;
		}
	}
	/* Every bit set: the clock hand. */
	struct fg_clock c = { .s = s, .now = now, .start = pool->hand };
	bpf_loop(FG_NAT_CLOCK_STEPS, fg_clock_step, &c, 0);
	pool->hand = (c.start + FG_NAT_CLOCK_STEPS) % FG_NAT_PORTS;
	__u32 port = c.found;
	if (!port && c.victim) {
		s->victim = s->rev;
		s->victim.dport = bpf_htons(c.victim);
		struct fg_flow *o = fg_flow_find(&s->victim);
		if (o && !(o->flags & FG_FLOW_ESTABLISHED)) {
			fg_conn_delete(&s->victim, o, &s->other, &s->pk2);
			fg_flow_count(FG_FLOW_EVICTED);
			port = c.victim;
		} else if (!o) {
			/* Gone since the hand passed it (another CPU's first packet took it as its victim,
			 * or it expired): the port is free unless that connection holds it already. */
			s->rev.dport = bpf_htons(c.victim);
			if (fg_reply_key_free(k, s, now))
				port = c.victim;
		}
	}
	if (!port)
		return -1;
	fg_pool_mark(pool, port, 1);
	f->new_sport = bpf_htons(port);
	return 0;
}

/* ---- promotion ----------------------------------------------------------------------------- */

/*
 * A packet of a connection that is not established, hitting its entry `f` under `k` in fg_flows:
 * a reply marks both entries answered; the opener's next packet after that (TCP: an ACK without
 * SYN — a SYN flood's answered SYNs never get there) moves both entries to fg_flows_est. Returns
 * the entry to apply: `fwd`, a copy, once moved (the old entry is freed).
 */
static __always_inline struct fg_flow *fg_flow_progress(const struct fg_flow_key *k, struct fg_flow *f, __u8 tcp_flags,
							struct fg_flow *fwd, struct fg_flow *back, struct fg_flow_key *rev)
{
	if (f->flags & FG_FLOW_REPLY) {
		if (f->flags & FG_FLOW_SEEN_REPLY)
			return f;
		f->flags |= FG_FLOW_SEEN_REPLY;
		fg_reverse_key(rev, k, f);
		struct fg_flow *o = bpf_map_lookup_elem(&fg_flows, rev);
		if (o)
			o->flags |= FG_FLOW_SEEN_REPLY;
		return f;
	}
	if ((f->flags & (FG_FLOW_SEEN_REPLY | FG_FLOW_CLOSED)) != FG_FLOW_SEEN_REPLY)
		return f;
	if (k->proto == IPPROTO_TCP && (tcp_flags & 0x12) != 0x10) /* SYN, or no ACK */
		return f;
	fg_reverse_key(rev, k, f);
	struct fg_flow *o = bpf_map_lookup_elem(&fg_flows, rev);
	if (!o)
		return f;
	*fwd = *f;
	*back = *o;
	fwd->flags |= FG_FLOW_ESTABLISHED;
	back->flags |= FG_FLOW_ESTABLISHED | FG_FLOW_SEEN_REPLY;
	/* Into fg_flows_est first: a packet on another CPU finds the connection in one table or the
	 * other at every moment. */
	if (bpf_map_update_elem(&fg_flows_est, rev, back, BPF_ANY) < 0) {
		fg_flow_count(FG_FLOW_EST_FULL);
		return f;
	}
	if (bpf_map_update_elem(&fg_flows_est, k, fwd, BPF_ANY) < 0) {
		bpf_map_delete_elem(&fg_flows_est, rev);
		fg_flow_count(FG_FLOW_EST_FULL);
		return f;
	}
	bpf_map_delete_elem(&fg_flows, k);
	bpf_map_delete_elem(&fg_flows, rev);
	fg_flow_count(FG_FLOW_PROMOTED);
	return fwd;
}

/* ---- the sweep ----------------------------------------------------------------------------- */

struct fg_sweep {
	__u64 now;
	__u64 live;
	struct fg_flow_key other;
	struct fg_nat_pool_key pk;
};

static long fg_sweep_entry(void *map, const void *key, void *value, void *ctx)
{
	struct fg_sweep *c = ctx;
	const struct fg_flow_key *k = key;
	if (!fg_conn_reclaim(k, value, c->now, &c->other, &c->pk))
		c->live++;
	return 0;
}

/* The sweep: removes the connections that are over from both tables (their ports back to their
 * pools) and records how many entries are left. Run by the agent every few seconds with
 * BPF_PROG_TEST_RUN (any frame will do); never attached. */
SEC("classifier")
int fg_flow_gc(struct __sk_buff *skb)
{
	struct fg_sweep c = { .now = bpf_ktime_get_ns() };
	bpf_for_each_map_elem(&fg_flows_est, fg_sweep_entry, &c, 0);
	__u64 established = c.live;
	c.live = 0;
	bpf_for_each_map_elem(&fg_flows, fg_sweep_entry, &c, 0);
	__u32 zero = 0;
	struct fg_flow_gauges *g = bpf_map_lookup_elem(&fg_flow_gauges, &zero);
	if (g) {
		g->established = established;
		g->embryonic = c.live;
		g->sweeps += 1;
		g->last_sweep_ns = c.now;
	}
	return TC_ACT_OK;
}

#endif
