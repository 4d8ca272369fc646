/* SPDX-License-Identifier: Apache-2.0 */
/* Rewriting addresses and ports in place, with incremental checksum updates (the IPv4 header
 * checksum, and the TCP/UDP checksum whose pseudo-header covers the addresses). */
#ifndef FLOWGATE_NAT_H
#define FLOWGATE_NAT_H

#include <stddef.h>

#include "common.h"
#include "parse.h"

static __always_inline int fg_l4_csum_off(const struct fg_pkt *p, __u64 *flags)
{
	*flags = 0;
	if (p->key.proto == IPPROTO_TCP)
		return p->l4_off + offsetof(struct tcphdr, check);
	if (p->key.proto == IPPROTO_UDP) {
		/* A zero UDP checksum (IPv4: none) stays zero; a computed zero is written as 0xffff. */
		*flags = BPF_F_MARK_MANGLED_0;
		return p->l4_off + offsetof(struct udphdr, check);
	}
	return -1; /* SCTP: CRC32c over the packet, not covering addresses */
}

/* Rewrites one address (source when `dst` is 0) from p->key's value to `to`. */
static __always_inline int fg_rewrite_addr(struct __sk_buff *skb, const struct fg_pkt *p, int dst, const struct fg_addr *to)
{
	const struct fg_addr *from = dst ? &p->key.dst : &p->key.src;
	if (fg_addr_eq(from, to))
		return 0;
	__u64 flags;
	int csum_off = fg_l4_csum_off(p, &flags);
	if (!p->v6) {
		__u32 off = p->l3_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
		__be32 old = from->w[3], new = to->w[3];
		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old, new, 4) < 0)
			return -1;
		if (csum_off >= 0 && bpf_l4_csum_replace(skb, csum_off, old, new, flags | BPF_F_PSEUDO_HDR | 4) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, off, &new, 4, 0);
	}
	__u32 off = p->l3_off + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
	if (csum_off >= 0) {
		__s64 diff = bpf_csum_diff((__be32 *)from->w, 16, (__be32 *)to->w, 16, 0);
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, flags | BPF_F_PSEUDO_HDR) < 0)
			return -1;
	}
	return bpf_skb_store_bytes(skb, off, to->w, 16, 0);
}

/* Rewrites one port (source when `dst` is 0) from p->key's value to `to` (network order). */
static __always_inline int fg_rewrite_port(struct __sk_buff *skb, const struct fg_pkt *p, int dst, __u16 to)
{
	__u16 from = dst ? p->key.dport : p->key.sport;
	if (from == to)
		return 0;
	__u64 flags;
	int csum_off = fg_l4_csum_off(p, &flags);
	if (csum_off >= 0 && bpf_l4_csum_replace(skb, csum_off, from, to, flags | 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, p->l4_off + (dst ? 2 : 0), &to, 2, 0);
}

/* Applies a transposition to the packet. */
static __always_inline int fg_apply(struct __sk_buff *skb, const struct fg_pkt *p, const struct fg_flow *f)
{
	if (f->flags & FG_FLOW_REWRITE_SRC) {
		if (fg_rewrite_addr(skb, p, 0, &f->new_src) < 0 || fg_rewrite_port(skb, p, 0, f->new_sport) < 0)
			return -1;
	}
	if (f->flags & FG_FLOW_REWRITE_DST) {
		if (fg_rewrite_addr(skb, p, 1, &f->new_dst) < 0 || fg_rewrite_port(skb, p, 1, f->new_dport) < 0)
			return -1;
	}
	return 0;
}

#endif
