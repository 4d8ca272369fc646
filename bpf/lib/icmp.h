/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ICMP errors about translated connections (destination unreachable, time exceeded, parameter
 * problem; ICMPv6 also packet too big) are translated back like the connection's packets, as
 * conntrack's nf_nat_icmp_reply_translation does: the quoted packet's 5-tuple, reversed, finds the
 * flow; the outer destination and the quoted header get the transposition, and the outer source
 * too when the error comes from the peer itself. Without this, "connection refused" and path-MTU
 * discovery break for Services, masquerade and outbound NAT.
 */
#ifndef FLOWGATE_ICMP_H
#define FLOWGATE_ICMP_H

#include <stddef.h>

#include "common.h"
#include "parse.h"
#include "flow.h"

/* RFC 1624 incremental update of a 16-bit one's complement checksum for a 16-bit change. */
static __always_inline __u16 fg_csum16(__u16 csum, __u16 old, __u16 new)
{
	__u32 s = (__u16)~csum + (__u16)~old + new;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

struct fg_icmp_ctx {
	struct fg_flow_key inner;        /* the quoted packet's 5-tuple */
	struct fg_flow_key rev;          /* ... reversed: the flow-table key */
	struct fg_addr outer_src;
	struct fg_addr outer_dst;
	__u32 inner_l3;
	__u32 inner_l4;
	struct iphdr o4;
	struct iphdr i4;
	struct ipv6hdr o6;
	struct ipv6hdr i6;
	__u16 ports[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_icmp_ctx);
} fg_icmp_scratch SEC(".maps");

/* Rewrites a 4-byte IPv4 address at `off` inside the quote: fixes the quoted IPv4 header checksum
 * (at `ip_csum_off`) and the ICMP checksum (at `icmp_csum_off`) for both changes. */
static __always_inline int fg_icmp4_quoted_addr(struct __sk_buff *skb, __u32 off, __u32 ip_csum_off, __u32 icmp_csum_off,
						__be32 old, __be32 new)
{
	if (old == new)
		return 0;
	__u16 ipc_old;
	if (bpf_skb_load_bytes(skb, ip_csum_off, &ipc_old, 2) < 0)
		return -1;
	__u16 ipc_new = fg_csum16(fg_csum16(ipc_old, old & 0xffff, new & 0xffff), old >> 16, new >> 16);
	if (bpf_skb_store_bytes(skb, off, &new, 4, 0) < 0 || bpf_skb_store_bytes(skb, ip_csum_off, &ipc_new, 2, 0) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, icmp_csum_off, old, new, 4) < 0)
		return -1;
	return bpf_l4_csum_replace(skb, icmp_csum_off, ipc_old, ipc_new, 2);
}

/* An ICMP error (the message at l4_off): 1 when it is about a connection the flow table allows
 * (then translated back as the connection's packets are, and to be let through), 0 otherwise (not
 * an error, unreadable, or about no allowed connection). (A rewrite that fails leaves the error
 * as it is, still about its connection.) */
static __attribute__((noinline)) int fg_icmp_error(struct __sk_buff *skb, __u32 l3_off, __u32 l4_off, __u32 v6)
{
	__u8 type;
	if (bpf_skb_load_bytes(skb, l4_off, &type, 1) < 0)
		return 0;
	if (v6 ? (type < 1 || type > 4) : (type != 3 && type != 11 && type != 12))
		return 0;
	__u32 zero = 0;
	struct fg_icmp_ctx *c = bpf_map_lookup_elem(&fg_icmp_scratch, &zero);
	if (!c)
		return 0;
	__builtin_memset(c, 0, sizeof(*c));
	c->inner_l3 = l4_off + 8;
	__u8 proto;
	if (!v6) {
		if (bpf_skb_load_bytes(skb, l3_off, &c->o4, sizeof(c->o4)) < 0 ||
		    bpf_skb_load_bytes(skb, c->inner_l3, &c->i4, sizeof(c->i4)) < 0 || c->i4.ihl < 5)
			return 0;
		fg_addr_v4(&c->outer_src, c->o4.saddr);
		fg_addr_v4(&c->outer_dst, c->o4.daddr);
		fg_addr_v4(&c->inner.src, c->i4.saddr);
		fg_addr_v4(&c->inner.dst, c->i4.daddr);
		proto = c->i4.protocol;
		c->inner_l4 = c->inner_l3 + c->i4.ihl * 4;
	} else {
		if (bpf_skb_load_bytes(skb, l3_off, &c->o6, sizeof(c->o6)) < 0 ||
		    bpf_skb_load_bytes(skb, c->inner_l3, &c->i6, sizeof(c->i6)) < 0)
			return 0;
		__builtin_memcpy(&c->outer_src, &c->o6.saddr, 16);
		__builtin_memcpy(&c->outer_dst, &c->o6.daddr, 16);
		__builtin_memcpy(&c->inner.src, &c->i6.saddr, 16);
		__builtin_memcpy(&c->inner.dst, &c->i6.daddr, 16);
		proto = c->i6.nexthdr;
		c->inner_l4 = c->inner_l3 + sizeof(c->i6);
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return 0;
	if (bpf_skb_load_bytes(skb, c->inner_l4, c->ports, sizeof(c->ports)) < 0)
		return 0;
	c->inner.proto = proto;
	c->inner.sport = c->ports[0];
	c->inner.dport = c->ports[1];
	c->rev.proto = proto;
	c->rev.src = c->inner.dst;
	c->rev.dst = c->inner.src;
	c->rev.sport = c->inner.dport;
	c->rev.dport = c->inner.sport;
	struct fg_flow *f = fg_flow_find(&c->rev);
	if (!f || f->verdict != FG_VERDICT_ALLOW)
		return 0;

	int dst = f->flags & FG_FLOW_REWRITE_DST, src = f->flags & FG_FLOW_REWRITE_SRC;
	int from_peer = fg_addr_eq(&c->outer_src, &c->inner.dst);
	__u32 icmp_csum = l4_off + 2;
	if (!v6) {
		__u32 outer_csum = l3_off + offsetof(struct iphdr, check);
		__u32 inner_csum = c->inner_l3 + offsetof(struct iphdr, check);
		if (dst) {
			__be32 old = c->outer_dst.w[3], new = f->new_dst.w[3];
			if (bpf_l3_csum_replace(skb, outer_csum, old, new, 4) < 0 ||
			    bpf_skb_store_bytes(skb, l3_off + offsetof(struct iphdr, daddr), &new, 4, 0) < 0)
				return 1;
			if (fg_icmp4_quoted_addr(skb, c->inner_l3 + offsetof(struct iphdr, saddr), inner_csum, icmp_csum,
						 c->inner.src.w[3], new) < 0)
				return 1;
		}
		if (src) {
			__be32 new = f->new_src.w[3];
			if (from_peer) {
				__be32 old = c->outer_src.w[3];
				if (bpf_l3_csum_replace(skb, outer_csum, old, new, 4) < 0 ||
				    bpf_skb_store_bytes(skb, l3_off + offsetof(struct iphdr, saddr), &new, 4, 0) < 0)
					return 1;
			}
			if (fg_icmp4_quoted_addr(skb, c->inner_l3 + offsetof(struct iphdr, daddr), inner_csum, icmp_csum,
						 c->inner.dst.w[3], new) < 0)
				return 1;
		}
	} else {
		__u32 base = l3_off + offsetof(struct ipv6hdr, saddr);
		if (dst) {
			__s64 d = bpf_csum_diff(c->outer_dst.w, 16, f->new_dst.w, 16, 0);
			if (bpf_l4_csum_replace(skb, icmp_csum, 0, d, BPF_F_PSEUDO_HDR) < 0 ||
			    bpf_skb_store_bytes(skb, base + 16, f->new_dst.w, 16, 0) < 0)
				return 1;
			d = bpf_csum_diff(c->inner.src.w, 16, f->new_dst.w, 16, 0);
			if (bpf_l4_csum_replace(skb, icmp_csum, 0, d, 0) < 0 ||
			    bpf_skb_store_bytes(skb, c->inner_l3 + offsetof(struct ipv6hdr, saddr), f->new_dst.w, 16, 0) < 0)
				return 1;
		}
		if (src) {
			if (from_peer) {
				__s64 d = bpf_csum_diff(c->outer_src.w, 16, f->new_src.w, 16, 0);
				if (bpf_l4_csum_replace(skb, icmp_csum, 0, d, BPF_F_PSEUDO_HDR) < 0 ||
				    bpf_skb_store_bytes(skb, base, f->new_src.w, 16, 0) < 0)
					return 1;
			}
			__s64 d = bpf_csum_diff(c->inner.dst.w, 16, f->new_src.w, 16, 0);
			if (bpf_l4_csum_replace(skb, icmp_csum, 0, d, 0) < 0 ||
			    bpf_skb_store_bytes(skb, c->inner_l3 + offsetof(struct ipv6hdr, daddr), f->new_src.w, 16, 0) < 0)
				return 1;
		}
	}
	/* The quoted ports: source gets new_dst's port, destination new_src's. */
	if (dst && f->new_dport != c->inner.sport) {
		if (bpf_l4_csum_replace(skb, icmp_csum, c->inner.sport, f->new_dport, 2) < 0 ||
		    bpf_skb_store_bytes(skb, c->inner_l4, &f->new_dport, 2, 0) < 0)
			return 1;
	}
	if (src && f->new_sport != c->inner.dport) {
		if (bpf_l4_csum_replace(skb, icmp_csum, c->inner.dport, f->new_sport, 2) < 0 ||
		    bpf_skb_store_bytes(skb, c->inner_l4 + 2, &f->new_sport, 2, 0) < 0)
			return 1;
	}
	fg_count(FG_COUNTER_FLOW_HIT);
	return 1;
}

#endif
