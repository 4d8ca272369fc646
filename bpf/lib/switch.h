/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The switch: the flow table first; on a miss, the layer walk of a connection's first packet —
 * the same walk as the model engine (crates/switch/src/walk.rs): the load-balancing layer, backend
 * choice, the service filter on the translated destination, the endpoints' ACLs, masquerade and
 * outbound NAT — then the transposition is stored for both directions and applied.
 */
#ifndef FLOWGATE_SWITCH_H
#define FLOWGATE_SWITCH_H

#include "common.h"
#include "nat.h"
#include "parse.h"
#include "reject.h"
#include "icmp.h"
#include "acl.h"
#include "deliver.h"
#include "flow.h"

/* Whether address `a` is in set `set`: one hash lookup for single addresses, then the LPM trie only
 * for sets that also hold prefixes of a's family. */
static __always_inline int fg_in_set(__u32 set, const struct fg_addr *a)
{
	int v4 = fg_addr_is_v4(a);
	struct fg_set_data h = { .set = set | (v4 ? FG_SET_V4 : 0) };
	h.addr = *a;
	if (bpf_map_lookup_elem(&fg_set_hosts, &h))
		return 1;
	__u8 *info = bpf_map_lookup_elem(&fg_set_info, &set);
	if (!info || !(*info & (v4 ? FG_SET_HAS_PREFIXES_V4 : FG_SET_HAS_PREFIXES_V6)))
		return 0;
	struct fg_set_key k = { .prefixlen = 32 + 128, .set = h.set };
	k.addr = *a;
	return bpf_map_lookup_elem(&fg_sets, &k) != 0;
}

static __always_inline int fg_cond(__u8 match, __u32 set, const struct fg_addr *a)
{
	if (match == FG_MATCH_ANY)
		return 1;
	int in = fg_in_set(set, a);
	return match == FG_MATCH_IN ? in : !in;
}

/* The first rule of `l` whose conditions hold, or 0; its index in `*index`. */
static __always_inline const struct fg_rule *fg_eval(const struct fg_rule_list *l, const struct fg_addr *src,
						     const struct fg_addr *dst, __u8 ingress, __u32 *index)
{
#pragma unroll
	for (int i = 0; i < FG_MAX_RULES; i++) {
		if (i >= l->count)
			return 0;
		const struct fg_rule *r = &l->rules[i];
		if (r->ingress != FG_INGRESS_ANY && r->ingress != ingress)
			continue;
		if (!fg_cond(r->src_match, r->src_set, src))
			continue;
		if (!fg_cond(r->dst_match, r->dst_set, dst))
			continue;
		*index = i;
		return r;
	}
	return 0;
}

struct fg_decision {
	__u8 verdict;
	__u8 reason;
	__u8 dnat;
	__u8 masq;
	struct fg_backend backend;
};

/* Chooses a backend of `set` for `client`; keeps `keep` when it is still a member. */
static __always_inline int fg_choose(__u32 set, const struct fg_addr *client, const struct fg_flow *keep,
				     struct fg_backend *out)
{
	struct fg_backend_set *bs = bpf_map_lookup_elem(&fg_backend_sets, &set);
	if (!bs || bs->count == 0)
		return -1;
	if (keep && (keep->flags & FG_FLOW_REWRITE_DST)) {
		struct fg_member_key mk = { .set = set, .port = keep->new_dport };
		mk.addr = keep->new_dst;
		if (bpf_map_lookup_elem(&fg_backend_members, &mk)) {
			out->addr = keep->new_dst;
			out->port = keep->new_dport;
			return 0;
		}
	}
	__u64 now = bpf_ktime_get_ns();
	struct fg_affinity_key ak = { .set = set };
	if (bs->affinity_timeout) {
		ak.client = *client;
		struct fg_affinity *a = bpf_map_lookup_elem(&fg_affinity, &ak);
		if (a && now - a->last_used_ns <= (__u64)bs->affinity_timeout * 1000000000ull) {
			struct fg_member_key mk = { .set = set, .port = a->port };
			mk.addr = a->addr;
			if (bpf_map_lookup_elem(&fg_backend_members, &mk)) {
				a->last_used_ns = now;
				out->addr = a->addr;
				out->port = a->port;
				return 0;
			}
		}
	}
	struct fg_backend_key bk = { .set = set, .index = bpf_get_prandom_u32() % bs->count };
	struct fg_backend *b = bpf_map_lookup_elem(&fg_backends, &bk);
	if (!b)
		return -1;
	*out = *b;
	if (bs->affinity_timeout) {
		struct fg_affinity na = { .last_used_ns = now, .port = b->port };
		na.addr = b->addr;
		bpf_map_update_elem(&fg_affinity, &ak, &na, BPF_ANY);
	}
	return 0;
}

static __always_inline void fg_stop(struct fg_decision *d, const struct fg_rule *r)
{
	d->verdict = r->action == FG_ACT_DROP ? FG_VERDICT_DROP : FG_VERDICT_REJECT;
	d->reason = r->reason;
}

/* The walk for a connection's first packet (or a re-check of a stale flow, `keep`). */
static __always_inline void fg_decide(const struct fg_pkt *p, __u8 ingress, const struct fg_config *cfg,
				      const struct fg_flow *keep, struct fg_decision *d)
{
	__builtin_memset(d, 0, sizeof(*d));
	const struct fg_addr *src = &p->key.src;
	const struct fg_rule *r = 0;

	/* Load-balancing layer: exact destination, then NodePorts on NodePort addresses. */
	struct fg_lb_key lk = { .dport = p->key.dport, .proto = p->key.proto };
	lk.dst = p->key.dst;
	__u32 idx = 0;
	const struct fg_rule_list *l = bpf_map_lookup_elem(&fg_lb_dest, &lk);
	if (l) {
		r = fg_eval(l, src, &p->key.dst, ingress, &idx);
		if (r)
			fg_count_rule(FG_RULE_WHAT(FG_LIST_LB_DEST, p->key.proto, p->key.dport), idx, 0, &p->key.dst);
	}
	if (!r && fg_in_set(cfg->nodeport_set, &p->key.dst)) {
		struct fg_port_key pk = { .port = p->key.dport, .proto = p->key.proto };
		l = bpf_map_lookup_elem(&fg_lb_nodeport, &pk);
		if (l) {
			r = fg_eval(l, src, &p->key.dst, ingress, &idx);
			if (r)
				fg_count_rule(FG_RULE_WHAT(FG_LIST_LB_NODEPORT, p->key.proto, p->key.dport), idx, 0, 0);
		}
	}
	__u8 flags = 0;
	if (r) {
		if (r->action == FG_ACT_DROP || r->action == FG_ACT_REJECT) {
			fg_stop(d, r);
			return;
		}
		if (r->action == FG_ACT_DNAT && fg_choose(r->backends, src, keep, &d->backend) == 0) {
			d->dnat = 1;
			flags = r->flags;
		}
	}
	struct fg_addr dst = p->key.dst;
	if (d->dnat)
		dst = d->backend.addr;

	/* Service filter, on the translated destination. */
	__u32 slot = FG_GROUP_SERVICE_FILTER;
	l = bpf_map_lookup_elem(&fg_groups, &slot);
	if (l) {
		r = fg_eval(l, src, &dst, ingress, &idx);
		if (r)
			fg_count_rule(FG_RULE_WHAT(FG_LIST_GROUP, 0, 0), idx, slot, 0);
		if (r && (r->action == FG_ACT_DROP || r->action == FG_ACT_REJECT)) {
			fg_stop(d, r);
			d->dnat = 0;
			return;
		}
	}
	/* The endpoints' ACLs, on the translated destination and the client's own address. */
	if (fg_acl_check(src, &dst, FG_ACL_ASK(p->key.proto, p->v6, ingress == FG_INGRESS_ENDPOINT),
			 d->dnat ? d->backend.port : p->key.dport)) {
		d->verdict = FG_VERDICT_DROP;
		d->reason = FG_REASON_POLICY_DENIED;
		d->dnat = 0;
		return;
	}
	d->masq = (flags & FG_F_MASQUERADE) || ((flags & FG_F_HAIRPIN) && d->dnat && fg_addr_eq(&d->backend.addr, src));
	/* Outbound NAT on the endpoint. */
	if (!d->masq && ingress == FG_INGRESS_ENDPOINT) {
		slot = FG_GROUP_OUTBOUND_NAT;
		l = bpf_map_lookup_elem(&fg_groups, &slot);
		if (l) {
			r = fg_eval(l, src, &dst, ingress, &idx);
			if (r && r->action == FG_ACT_SNAT) {
				d->masq = 1;
				fg_count_rule(FG_RULE_WHAT(FG_LIST_GROUP, 0, 0), idx, slot, 0);
			}
		}
	}
	d->verdict = FG_VERDICT_ALLOW;
}

/* The reply direction's entry of a connection whose first packet is `k` and whose forward
 * transposition has `fwd_flags`: replies are readdressed back to the original source and appear to
 * come from the original destination. */
static __always_inline void fg_reply_entry(struct fg_flow *back, const struct fg_flow_key *k, __u8 fwd_flags,
					   __u8 verdict, __u8 reason, __u64 generation)
{
	__builtin_memset(back, 0, sizeof(*back));
	back->verdict = verdict;
	back->reason = reason;
	back->flags = FG_FLOW_REPLY;
	back->generation = generation;
	back->last_seen_ns = bpf_ktime_get_ns();
	if (fwd_flags & FG_FLOW_REWRITE_DST) {
		back->flags |= FG_FLOW_REWRITE_SRC;
		back->new_src = k->dst;
		back->new_sport = k->dport;
	}
	if (fwd_flags & FG_FLOW_REWRITE_SRC) {
		back->flags |= FG_FLOW_REWRITE_DST;
		back->new_dst = k->src;
		back->new_dport = k->sport;
	}
}

/* Builds the forward transposition from a decision; binds its source port: a masquerade port, or
 * another port for a connection whose reply key a live connection holds (bpf/lib/flow.h). */
static __always_inline int fg_transposition(const struct fg_pkt *p, const struct fg_config *cfg, const struct fg_decision *d,
					    const struct fg_flow *keep, struct fg_flow *f, struct fg_nat_scratch *s)
{
	__builtin_memset(f, 0, sizeof(*f));
	f->verdict = d->verdict;
	f->reason = d->reason;
	f->generation = cfg->generation;
	if (d->verdict != FG_VERDICT_ALLOW)
		return 0;
	if (d->dnat) {
		f->flags |= FG_FLOW_REWRITE_DST;
		f->new_dst = d->backend.addr;
		f->new_dport = d->backend.port;
	}
	const struct fg_addr *dst = d->dnat ? &d->backend.addr : &p->key.dst;
	int v4 = fg_addr_is_v4(dst);
	int masq = d->masq && (v4 ? cfg->has_snat_v4 : cfg->has_snat_v6);
	if (masq) {
		f->flags |= FG_FLOW_REWRITE_SRC;
		f->new_src = v4 ? cfg->snat_v4 : cfg->snat_v6;
	}
	/* A re-checked flow that still goes to the same place keeps its source port: its reply
	 * entry is its own, not a collision. (With another backend, the port is checked again.) */
	int same_dst = d->dnat ? ((keep && (keep->flags & FG_FLOW_REWRITE_DST)) && fg_addr_eq(&keep->new_dst, &f->new_dst) &&
				  keep->new_dport == f->new_dport)
			       : (keep && !(keep->flags & FG_FLOW_REWRITE_DST));
	if (keep && same_dst) {
		if (!(keep->flags & FG_FLOW_REWRITE_SRC) && !masq)
			return 0;
		if ((keep->flags & FG_FLOW_REWRITE_SRC) && fg_addr_eq(&keep->new_src, masq ? &f->new_src : &p->key.src)) {
			f->flags |= FG_FLOW_REWRITE_SRC;
			f->new_src = keep->new_src;
			f->new_sport = keep->new_sport;
			return 0;
		}
	}
	if (masq)
		return fg_nat_bind(&p->key, f, s);
	/* Not translated: its reply key must be free, or it gets another source port (never a live
	 * connection's entry overwritten: a forged packet, or a host socket on a pod's masquerade
	 * port, would take that connection's replies). */
	fg_reverse_key(&s->rev, &p->key, f);
	if (fg_reply_key_free(&p->key, s, bpf_ktime_get_ns()))
		return 0;
	f->flags |= FG_FLOW_REWRITE_SRC;
	f->new_src = p->key.src;
	fg_flow_count(FG_FLOW_REBOUND);
	return fg_nat_bind(&p->key, f, s);
}

static __always_inline void fg_last_set(__u8 verdict, __u8 reason, __u8 cached)
{
	__u32 zero = 0;
	struct fg_last *last = bpf_map_lookup_elem(&fg_last, &zero);
	if (last) {
		last->verdict = verdict;
		last->reason = reason;
		last->cached = cached;
	}
}

static __always_inline int fg_verdict_ret(struct __sk_buff *skb, const struct fg_pkt *p, __u8 verdict, __u8 reason,
					  __u8 cached)
{
	fg_last_set(verdict, reason, cached);
	if (verdict == FG_VERDICT_ALLOW) {
		fg_count(0);
		return FG_PASS;
	}
	fg_count(reason < FG_REASON_MAX ? reason : FG_REASON_MALFORMED);
	if (verdict == FG_VERDICT_REJECT && p)
		return fg_reject(skb, p->l3_off, p->v6);
	return TC_ACT_SHOT;
}

static __always_inline int fg_mac_eq(const __u8 *a, const __u8 *b)
{
	/* (memcmp would become a call the loader cannot resolve) */
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* A TCP packet's flags (0 if unreadable). */
static __always_inline __u8 fg_tcp_flags(struct __sk_buff *skb, const struct fg_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 off = p->l4_off + 13;
	__u8 *in_place = data + (off & 0x3fff);
	__u8 flags;
	if (off <= 0x3fff && (void *)(in_place + 1) <= end)
		flags = *in_place;
	else if (bpf_skb_load_bytes(skb, off, &flags, 1) < 0)
		return 0;
	return flags;
}

/* A FIN or RST closes the connection: both of its entries are marked, so that its masquerade
 * port can be taken over once it has been idle for FG_CLOSED_TIMEOUT_NS. */
static __always_inline void fg_tcp_closing(const struct fg_pkt *p, __u8 tcp_flags, struct fg_flow *f,
					   struct fg_flow_key *other)
{
	if (!(tcp_flags & 0x05)) /* FIN, RST */
		return;
	f->flags |= FG_FLOW_CLOSED;
	fg_reverse_key(other, &p->key, f);
	struct fg_flow *o = fg_flow_find(other);
	if (o)
		o->flags |= FG_FLOW_CLOSED;
}

/* The switch's working state for one packet, per CPU: too large for the BPF stack. */
struct fg_work {
	struct fg_pkt p;
	struct fg_flow keep;
	struct fg_flow fwd;
	struct fg_flow back;
	struct fg_flow_key rev;
	struct fg_flow_key old_rev;
	struct fg_decision d;
	struct bpf_fib_lookup fib;
	struct fg_nat_scratch nat;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_work);
} fg_work SEC(".maps");

/* An allowed (and translated) packet goes on: to a local pod directly when it entered at a TC
 * ingress hook (and its flow may be delivered so, `flow_flags`), else the stack's way. */
static __always_inline int fg_allowed(struct __sk_buff *skb, struct fg_work *w, __u32 ingress, __u8 cached,
				      __u8 flow_flags)
{
	int r = fg_verdict_ret(skb, &w->p, FG_VERDICT_ALLOW, 0, cached);
	if (ingress == FG_INGRESS_HOST || (flow_flags & FG_FLOW_VIA_STACK))
		return r;
	return fg_deliver(skb, &w->p, &w->fib);
}

/* The switch for a TCP, UDP or SCTP packet parsed into w->p (a subprogram with its own stack frame). */
static __attribute__((noinline)) int fg_switch_packet(struct __sk_buff *skb, __u32 ingress, struct fg_work *w)
{
	__u32 zero = 0;
	struct fg_pkt *p = &w->p;
	struct fg_config *cfg = bpf_map_lookup_elem(&fg_config, &zero);
	if (!cfg)
		return FG_PASS;

	struct fg_flow *f = fg_flow_find(&p->key);
	int have_keep = 0;
	if (f && f->generation != cfg->generation && (f->flags & FG_FLOW_REPLY)) {
		/* A reply follows its connection's forward entry, which is re-checked when the opening
		 * side sends. Without one (evicted), the reply entry goes and the packet is decided as
		 * a new connection: no reply entry outlives the policy that allowed its connection. */
		fg_reverse_key(&w->rev, &p->key, f);
		if (!fg_flow_find(&w->rev)) {
			fg_flow_forget(&p->key);
			f = 0;
		}
	}
	if (f) {
		if (f->generation == cfg->generation || (f->flags & FG_FLOW_REPLY)) {
			fg_count(FG_COUNTER_FLOW_HIT);
			f->last_seen_ns = bpf_ktime_get_ns();
			__u8 tcp_flags = p->key.proto == IPPROTO_TCP ? fg_tcp_flags(skb, p) : 0;
			if (p->key.proto == IPPROTO_TCP && !(f->flags & FG_FLOW_CLOSED))
				fg_tcp_closing(p, tcp_flags, f, &w->rev);
			if (f->verdict != FG_VERDICT_ALLOW)
				return fg_verdict_ret(skb, p, f->verdict, f->reason, 1);
			if (!(f->flags & FG_FLOW_ESTABLISHED))
				f = fg_flow_progress(&p->key, f, tcp_flags, &w->fwd, &w->back, &w->rev);
			if (fg_apply(skb, p, f) < 0)
				return fg_verdict_ret(skb, p, FG_VERDICT_DROP, FG_REASON_MALFORMED, 1);
			return fg_allowed(skb, w, ingress, 1, f->flags);
		}
		/* Decided under an older policy: re-check, keeping the backend if it is still valid. */
		w->keep = *f;
		have_keep = 1;
	}
	fg_count(FG_COUNTER_FIRST_PACKET);
	fg_decide(p, ingress, cfg, have_keep ? &w->keep : 0, &w->d);
	if (fg_transposition(p, cfg, &w->d, have_keep ? &w->keep : 0, &w->fwd, &w->nat) < 0)
		return fg_verdict_ret(skb, p, FG_VERDICT_DROP, FG_REASON_NAT_EXHAUSTED, 0);
	/* A new connection that is dropped takes no entries: a flood of refused packets cannot fill
	 * the table (each is decided again, as cheaply as the first time). Except a first fragment's:
	 * its datagram's later fragments carry no ports and follow its entry (fg_fragment_entry). */
	if (!have_keep && w->fwd.verdict != FG_VERDICT_ALLOW && p->frag != FG_FRAG_FIRST)
		return fg_verdict_ret(skb, p, w->fwd.verdict, w->fwd.reason, 0);
	/* A re-checked connection stays in the table it is in. */
	if (have_keep)
		w->fwd.flags |= w->keep.flags & (FG_FLOW_ESTABLISHED | FG_FLOW_SEEN_REPLY);
	if (w->fwd.verdict == FG_VERDICT_ALLOW)
		fg_reverse_key(&w->rev, &p->key, &w->fwd);
	else if (have_keep && (w->keep.flags & (FG_FLOW_REWRITE_SRC | FG_FLOW_REWRITE_DST))) {
		/* A stopped connection keeps its translation (backend, masquerade port), so that it
		 * resumes as it was if a later policy lets it through again. */
		w->fwd.flags |= w->keep.flags & (FG_FLOW_REWRITE_SRC | FG_FLOW_REWRITE_DST);
		w->fwd.new_src = w->keep.new_src;
		w->fwd.new_sport = w->keep.new_sport;
		w->fwd.new_dst = w->keep.new_dst;
		w->fwd.new_dport = w->keep.new_dport;
	}
	if (have_keep)
		fg_reverse_key(&w->old_rev, &p->key, &w->keep);
	if (have_keep && w->keep.verdict == FG_VERDICT_ALLOW) {
		/* The old reply entry goes when its key changes; under the same key it is overwritten
		 * below, never deleted first (a reply on another CPU must never miss it). A connection
		 * the new policy stops is closed in both directions: its reply entry becomes a drop, so
		 * that a packet of the other side cannot open it again as a new flow. */
		if (w->fwd.verdict != FG_VERDICT_ALLOW) {
			/* (With the reply's translation, so that it still leads to its forward entry.) */
			fg_reply_entry(&w->back, &p->key, w->keep.flags, FG_VERDICT_DROP, w->fwd.reason, cfg->generation);
			w->back.flags |= w->fwd.flags & (FG_FLOW_ESTABLISHED | FG_FLOW_SEEN_REPLY);
			fg_flow_put(&w->old_rev, &w->back, BPF_ANY);
		} else if (!fg_key_eq(&w->old_rev, &w->rev)) {
			if (w->keep.flags & FG_FLOW_REWRITE_SRC)
				fg_pool_release(&w->old_rev, &w->nat.pk);
			fg_flow_forget(&w->old_rev);
		}
	}
	/* A connection from the network whose source the node would not route back out of the
	 * interface it came in through takes the stack's path, never direct delivery: its reverse-path
	 * filter (rp_filter) and martian checks decide, as they would without this switch. */
	if (w->fwd.verdict == FG_VERDICT_ALLOW && ingress == FG_INGRESS_UPLINK && FG_DIRECT_DELIVERY &&
	    !fg_routed_back(skb, p, &w->fib))
		w->fwd.flags |= FG_FLOW_VIA_STACK;
	w->fwd.last_seen_ns = bpf_ktime_get_ns();
	if (w->fwd.verdict == FG_VERDICT_ALLOW) {
		fg_reply_entry(&w->back, &p->key, w->fwd.flags, FG_VERDICT_ALLOW, 0, cfg->generation);
		w->back.flags |= w->fwd.flags & (FG_FLOW_ESTABLISHED | FG_FLOW_SEEN_REPLY);
		/* A new reply key is taken only if nobody has it (another CPU's connection may have
		 * bound the same port a moment ago): never overwritten. */
		int own = have_keep && fg_key_eq(&w->old_rev, &w->rev);
		if (fg_flow_put(&w->rev, &w->back, own ? BPF_ANY : BPF_NOEXIST) < 0)
			return fg_verdict_ret(skb, p, FG_VERDICT_DROP, FG_REASON_NAT_EXHAUSTED, 0);
	}
	fg_flow_put(&p->key, &w->fwd, BPF_ANY);
	if (w->fwd.verdict == FG_VERDICT_ALLOW) {
		if (fg_apply(skb, p, &w->fwd) < 0)
			return fg_verdict_ret(skb, p, FG_VERDICT_DROP, FG_REASON_MALFORMED, 0);
		return fg_allowed(skb, w, ingress, 0, w->fwd.flags);
	}
	return fg_verdict_ret(skb, p, w->fwd.verdict, w->fwd.reason, 0);
}

/* The fg_fragments key of the datagram p is a fragment of. */
static __always_inline void fg_frag_key_of(struct fg_frag_key *k, const struct fg_pkt *p)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->src = p->key.src;
	k->dst = p->key.dst;
	k->id = p->frag_id;
	k->proto = p->key.proto;
}

/* A later fragment (p parsed as FG_PARSE_FRAGMENT): it carries no ports, so it follows the first
 * fragment of its datagram — the verdict of the flow that fragment decided, and its address
 * rewrite (IPv4: the header checksum follows; the transport checksum is in the first fragment).
 * Without one (the first fragment not seen yet, or evicted, or another datagram's forged
 * identification) it is dropped: a later fragment is never a way around the flow table's NAT or
 * policy. Nothing is delivered directly (the pod's stack reassembles). */
static __attribute__((noinline)) int fg_fragment_entry(struct __sk_buff *skb, struct fg_work *w)
{
	struct fg_pkt *p = &w->p;
	struct fg_frag_key k;
	fg_frag_key_of(&k, p);
	struct fg_flow_key *first = bpf_map_lookup_elem(&fg_fragments, &k);
	if (!first)
		return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_FRAGMENT, 0);
	w->rev = *first;
	struct fg_flow *f = fg_flow_find(&w->rev);
	if (!f)
		return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_FRAGMENT, 0);
	if (f->verdict != FG_VERDICT_ALLOW)
		return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, f->reason, 1);
	__u32 off = p->l3_off + (p->v6 ? offsetof(struct ipv6hdr, saddr) : offsetof(struct iphdr, saddr));
	if (f->flags & FG_FLOW_REWRITE_SRC) {
		if (!p->v6) {
			__be32 old = p->key.src.w[3], new = f->new_src.w[3];
			if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old, new, 4) < 0 ||
			    bpf_skb_store_bytes(skb, off, &new, 4, 0) < 0)
				return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_MALFORMED, 1);
		} else if (bpf_skb_store_bytes(skb, off, f->new_src.w, 16, 0) < 0) {
			return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_MALFORMED, 1);
		}
	}
	if (f->flags & FG_FLOW_REWRITE_DST) {
		if (!p->v6) {
			__be32 old = p->key.dst.w[3], new = f->new_dst.w[3];
			if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old, new, 4) < 0 ||
			    bpf_skb_store_bytes(skb, off + 4, &new, 4, 0) < 0)
				return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_MALFORMED, 1);
		} else if (bpf_skb_store_bytes(skb, off + 16, f->new_dst.w, 16, 0) < 0) {
			return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_MALFORMED, 1);
		}
	}
	fg_count(FG_COUNTER_FLOW_HIT);
	return fg_verdict_ret(skb, 0, FG_VERDICT_ALLOW, 0, 1);
}

/* Whether an ICMPv6 message of type `type` to `dst` is on-link housekeeping a pod needs whatever
 * its policies: neighbour discovery (router and neighbour solicitations and advertisements) and
 * multicast listener discovery, to a link-local or multicast destination (never routed). */
static __always_inline int fg_icmp6_onlink(__u8 type, const struct fg_addr *dst)
{
	if (!((type >= 130 && type <= 136) || type == 143))
		return 0;
	return (dst->w[0] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000) ||
	       (dst->w[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000);
}

/* ICMP and ICMPv6 (p parsed as such), in a subprogram of its own: it and fg_switch_packet never
 * share a stack frame, which keeps the deepest call chain inside the verifier's 512 bytes. The
 * endpoints' ACLs judge every message as protocol ICMP with port 0 (only rules that name no port
 * let it through), except: an error about a connection the flow table allows belongs to that
 * connection and passes (translated back like its packets); an echo reply passes where the echo
 * request it answers would have (judged the other way round: echo is not tracked); ICMPv6 neighbour
 * and multicast listener discovery on the link passes (fg_icmp6_onlink). Nothing is cached. */
static __attribute__((noinline)) int fg_icmp_entry(struct __sk_buff *skb, __u32 ingress, const struct fg_pkt *p)
{
	__u8 type;
	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
		return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_MALFORMED, 0);
	if (p->v6 && fg_icmp6_onlink(type, &p->key.dst))
		return fg_verdict_ret(skb, 0, FG_VERDICT_ALLOW, 0, 0);
	if (fg_icmp_error(skb, p->l3_off, p->l4_off, p->v6))
		return fg_verdict_ret(skb, 0, FG_VERDICT_ALLOW, 0, 0);
	const struct fg_addr *src = &p->key.src, *dst = &p->key.dst;
	int from_endpoint = ingress == FG_INGRESS_ENDPOINT;
	if (type == (p->v6 ? 129 : 0)) {
		/* (The request went the other way; any local end of it is an endpoint.) */
		src = &p->key.dst;
		dst = &p->key.src;
		from_endpoint = 1;
	}
	if (fg_acl_check(src, dst, FG_ACL_ASK(p->key.proto, p->v6, from_endpoint), 0))
		return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_POLICY_DENIED, 0);
	return fg_verdict_ret(skb, 0, FG_VERDICT_ALLOW, 0, 0);
}

/* Another IP protocol (GRE, ESP, ...; p parsed as FG_PARSE_OTHER): no ports, so judged by the
 * endpoints' ACLs as that protocol with port 0 — an isolated pod sends and receives it only where
 * a rule naming no port (or the own-node rule) allows. Nothing is cached or translated. */
static __attribute__((noinline)) int fg_other_entry(struct __sk_buff *skb, __u32 ingress, const struct fg_pkt *p)
{
	if (fg_acl_check(&p->key.src, &p->key.dst, FG_ACL_ASK(p->key.proto, p->v6, ingress == FG_INGRESS_ENDPOINT), 0))
		return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_POLICY_DENIED, 0);
	return fg_verdict_ret(skb, 0, FG_VERDICT_ALLOW, 0, 0);
}

/* Whether an IPv6 packet (from an endpoint) is ICMPv6 neighbour or multicast listener discovery on
 * the link (fg_icmp6_onlink), directly after the IPv6 header or after one Hop-by-Hop Options
 * header (MLD's router alert). */
static __always_inline int fg_endpoint_onlink_nd(struct __sk_buff *skb)
{
	__u8 next;
	struct fg_addr dst;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &next, 1) < 0 || bpf_skb_load_bytes(skb, ETH_HLEN + 24, &dst, 16) < 0)
		return 0;
	__u32 off = ETH_HLEN + 40;
	if (next == 0) {
		__u8 h[2];
		if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
			return 0;
		next = h[0];
		off += ((__u32)h[1] + 1) * 8;
	}
	__u8 type;
	if (next != IPPROTO_ICMPV6 || bpf_skb_load_bytes(skb, off, &type, 1) < 0)
		return 0;
	return fg_icmp6_onlink(type, &dst);
}

/* Anti-spoofing: every frame an endpoint sends carries its MAC (when known) and, for IP, one of
 * its addresses as the source, whatever the protocol (IPv6 link-local and unspecified sources for
 * neighbour and multicast listener discovery on the link excepted). ARP passes; other ethertypes
 * (VLAN tags included) are dropped. */
static __attribute__((noinline)) int fg_endpoint_source_ok(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct fg_port *port = bpf_map_lookup_elem(&fg_ports, &ifindex);
	if (!port)
		return 1;
	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return 0;
	if (port->has_mac && !fg_mac_eq(eth.h_source, port->mac))
		return 0;
	struct fg_endpoint_key ek = { .port_id = port->port_id };
	if (eth.h_proto == bpf_htons(ETH_P_IP)) {
		__u32 saddr;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 12, &saddr, 4) < 0)
			return 0;
		fg_addr_v4(&ek.addr, saddr);
	} else if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 8, &ek.addr, 16) < 0)
			return 0;
		/* A link-local or unspecified source: neighbour and multicast listener discovery on the
		 * link only, never a way around anti-spoofing or egress policy. */
		if ((ek.addr.w[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000) ||
		    !(ek.addr.w[0] | ek.addr.w[1] | ek.addr.w[2] | ek.addr.w[3]))
			return fg_endpoint_onlink_nd(skb);
		/* An IPv4-mapped source is an IPv4 address in disguise: never an endpoint's. */
		if (!ek.addr.w[0] && !ek.addr.w[1] && ek.addr.w[2] == bpf_htonl(0xffff))
			return 0;
	} else {
		return eth.h_proto == bpf_htons(ETH_P_ARP);
	}
	return bpf_map_lookup_elem(&fg_endpoint_addrs, &ek) != 0;
}

/* Anti-spoofing on the uplink, for every IPv4 and IPv6 packet whatever its protocol or fragment
 * offset: nothing from the network may carry a source that only this node may use — an address of
 * one of its pods, of the node itself or of a pod gateway (all listed under FG_ANY_ENDPOINT_PORT:
 * NetworkPolicy judges peers by source and lets the node's own traffic through), or one the
 * kernel's martian-source checks refuse (ip_route_input_slow, ip6_rcv_core): loopback, multicast,
 * the limited broadcast, 0.0.0.0/8 and :: (except to a broadcast or multicast destination: DHCP,
 * IGMP, duplicate address detection, MLD), and IPv4-mapped IPv6. Those checks would not help:
 * the switch may hand the packet to a pod past the node's stack (direct delivery), and the node
 * accepts its own addresses as sources (accept_local, needed because the switch masquerades on
 * ingress, before routing). IPv4 link-local sources (169.254.0.0/16) and IPv6 link-local ones
 * pass, as the kernel lets them: a cloud's metadata service answers from one, routers speak from
 * the other. */
static __attribute__((noinline)) int fg_uplink_source_ok(struct __sk_buff *skb)
{
	__u16 proto;
	if (bpf_skb_load_bytes(skb, 12, &proto, 2) < 0)
		return 1;
	struct fg_endpoint_key ek = { .port_id = FG_ANY_ENDPOINT_PORT };
	if (proto == bpf_htons(ETH_P_IP)) {
		__u32 a[2]; /* source, destination */
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 12, a, sizeof(a)) < 0)
			return 1; /* truncated: the parser's to judge */
		__u32 s = bpf_ntohl(a[0]), d = bpf_ntohl(a[1]);
		if ((s >> 24) == 127 || (s >> 28) == 0xe || s == 0xffffffff)
			return 0;
		if ((s >> 24) == 0)
			return d == 0xffffffff || (d >> 28) == 0xe;
		fg_addr_v4(&ek.addr, a[0]);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct fg_addr d;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 8, &ek.addr, 16) < 0 ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 24, &d, 16) < 0)
			return 1;
		const __u32 *s = ek.addr.w;
		if ((s[0] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000))
			return 0; /* multicast */
		if (!s[0] && !s[1] && (s[2] == bpf_htonl(0xffff) || (!s[2] && s[3] == bpf_htonl(1))))
			return 0; /* IPv4-mapped, ::1 */
		if (!(s[0] | s[1] | s[2] | s[3]))
			return (d.w[0] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000);
	} else {
		return 1;
	}
	return bpf_map_lookup_elem(&fg_endpoint_addrs, &ek) == 0;
}

/* The whole switch for one packet entering through a port of kind `ingress`. */
static __always_inline int fg_switch(struct __sk_buff *skb, __u8 ingress)
{
	if (ingress == FG_INGRESS_ENDPOINT && !fg_endpoint_source_ok(skb))
		return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_SPOOFED, 0);
	if (ingress == FG_INGRESS_UPLINK && !fg_uplink_source_ok(skb))
		return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_SPOOFED, 0);
	__u32 zero = 0;
	struct fg_work *w = bpf_map_lookup_elem(&fg_work, &zero);
	if (!w)
		return FG_PASS;
	int pr = fg_parse(skb, &w->p);
	if (pr == FG_PARSE_OK && w->p.frag == FG_FRAG_FIRST) {
		/* The later fragments of this datagram follow its flow (fg_fragment_entry). */
		struct fg_frag_key fk;
		fg_frag_key_of(&fk, &w->p);
		bpf_map_update_elem(&fg_fragments, &fk, &w->p.key, BPF_ANY);
	}
	if (pr == FG_PARSE_OK)
		return fg_switch_packet(skb, ingress, w);
	if (pr == FG_PARSE_FRAGMENT)
		return fg_fragment_entry(skb, w);
	if (pr == FG_PARSE_ICMP)
		return fg_icmp_entry(skb, ingress, &w->p);
	if (pr == FG_PARSE_OTHER)
		return fg_other_entry(skb, ingress, &w->p);
	if (pr == FG_PARSE_PASS)
		return FG_PASS;
	return fg_verdict_ret(skb, 0, FG_VERDICT_DROP, FG_REASON_MALFORMED, 0);
}

#endif
