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

/*
 * SCTP's CRC32c covers the ports but not the addresses. A port rewrite updates it without reading
 * the packet: CRC32c is affine, so for messages of equal length crc(M') = crc(M) ^ L(M ^ M'), where
 * L is the CRC's linear part; M ^ M' is the 4-byte change followed by len - 4 zero bytes, whose L
 * is L(change) multiplied by x^(8 (len - 4)) modulo the CRC polynomial (zlib's crc32_combine).
 */
#define FG_CRC32C_POLY 0x82f63b78u

/* a * b modulo the CRC polynomial, reflected (zlib's multmodp). Branch-free, so that the verifier
 * walks it once rather than once per path. */
static __always_inline __u32 fg_multmodp(__u32 a, __u32 b)
{
	__u32 p = 0;
	for (int i = 0; i < 32; i++) {
		p ^= b & -((a >> (31 - i)) & 1);
		b = (b >> 1) ^ (FG_CRC32C_POLY & -(b & 1));
	}
	return p;
}

/* x^(8 n) modulo the CRC polynomial, reflected (n < 2^17). */
static __always_inline __u32 fg_x8nmodp(__u32 n)
{
	__u32 p = 1u << 31;      /* x^0 */
	__u32 sq = 1u << 23;     /* x^8 */
	for (int k = 0; k < 17; k++) {
		__u32 t = fg_multmodp(sq, p);
		__u32 take = -((n >> k) & 1);
		p = (t & take) | (p & ~take);
		sq = fg_multmodp(sq, sq);
	}
	return p;
}

/* The linear part of CRC32c over 4 bytes (register starting at 0, no final xor). */
static __always_inline __u32 fg_crc32c_linear4(__u32 bytes)
{
	__u32 crc = bytes; /* the bytes in memory order, read little-endian: the register's layout */
	for (int b = 0; b < 32; b++)
		crc = (crc >> 1) ^ (FG_CRC32C_POLY & -(crc & 1));
	return crc;
}

/* The CRC32c change for a 4-byte change `delta` (as the bytes lie in memory) at the start of a
 * `len`-byte message. A global function: the verifier checks its loops once, not at every call. */
__attribute__((noinline)) __u32 fg_sctp_crc_delta(__u32 len, __u32 delta)
{
	return fg_multmodp(fg_x8nmodp(len - 4), fg_crc32c_linear4(delta));
}

/* Updates the SCTP checksum for the 4 port bytes changing from `old` to `new`. */
static __always_inline int fg_sctp_ports_changed(struct __sk_buff *skb, const struct fg_pkt *p, const __u8 *old, const __u8 *new)
{
	if (p->l4_len < 12 || p->l4_len > 65535)
		return -1;
	__u32 o, n;
	__builtin_memcpy(&o, old, 4);
	__builtin_memcpy(&n, new, 4);
	__u32 lin = fg_sctp_crc_delta(p->l4_len, o ^ n);
	__u32 crc;
	if (bpf_skb_load_bytes(skb, p->l4_off + 8, &crc, 4) < 0)
		return -1;
	/* The checksum is stored little-endian on the wire, which is how a 4-byte load reads it on
	 * the little-endian BPF target the programs are built for. */
	crc ^= lin;
	return bpf_skb_store_bytes(skb, p->l4_off + 8, &crc, 4, 0);
}

/*
 * Ones' complement arithmetic for incremental checksum updates (RFC 1624), done by the program
 * itself: a helper call costs more than the rest of an established packet's work, so a rewrite
 * makes at most two — the transport checksum's, whose update depends on skb->ip_summed, which only
 * the kernel sees (with CHECKSUM_PARTIAL the field holds the pseudo-header sum alone).
 */
static __always_inline __u32 fg_csum_add(__u32 sum, __u32 v)
{
	sum += v;
	return sum + (sum < v);
}

/* `sum` plus the change from address `from` to `to` (the last word only for IPv4). */
static __always_inline __u32 fg_csum_addr_diff(__u32 sum, const struct fg_addr *from, const struct fg_addr *to, int v6)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (!v6 && i < 3)
			continue;
		sum = fg_csum_add(sum, ~from->w[i]);
		sum = fg_csum_add(sum, to->w[i]);
	}
	return sum;
}

/* A checksum field updated by `diff`, as the kernel's csum_replace_by_diff does. */
static __always_inline __u16 fg_csum_replace(__u16 check, __u32 diff)
{
	__u32 sum = fg_csum_add(diff, ~(__u32)check);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Headers beyond this offset are never rewritten in place (a bound for the verifier). */
#define FG_MAX_L4_OFF 0x3fff

/* Applies a transposition to the packet: addresses and ports written in place (the headers are
 * pulled into the linear area first if they are not there), the IPv4 header checksum updated
 * here, then the transport checksum — TCP and UDP: one helper call for the addresses (as
 * pseudo-header) and one for both ports as one 32-bit word; SCTP: its CRC32c for the ports. */
static __always_inline int fg_apply(struct __sk_buff *skb, const struct fg_pkt *p, const struct fg_flow *f)
{
	int rs = (f->flags & FG_FLOW_REWRITE_SRC) != 0, rd = (f->flags & FG_FLOW_REWRITE_DST) != 0;
	int src_changed = rs && !fg_addr_eq(&p->key.src, &f->new_src);
	int dst_changed = rd && !fg_addr_eq(&p->key.dst, &f->new_dst);
	__u16 sport = rs ? f->new_sport : p->key.sport, dport = rd ? f->new_dport : p->key.dport;
	int ports_changed = sport != p->key.sport || dport != p->key.dport;
	if (!src_changed && !dst_changed && !ports_changed)
		return 0;
	__u32 l4 = p->l4_off;
	if (l4 > FG_MAX_L4_OFF || p->l3_off != sizeof(struct ethhdr))
		return -1;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u16 *ports = data + (l4 & FG_MAX_L4_OFF);
	if ((void *)(ports + 2) > end) {
		if (bpf_skb_pull_data(skb, l4 + 4) < 0)
			return -1;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		ports = data + (l4 & FG_MAX_L4_OFF);
		if ((void *)(ports + 2) > end)
			return -1;
	}
	__u32 diff = 0;
	if (src_changed)
		diff = fg_csum_addr_diff(diff, &p->key.src, &f->new_src, p->v6);
	if (dst_changed)
		diff = fg_csum_addr_diff(diff, &p->key.dst, &f->new_dst, p->v6);
	if (!p->v6) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > end)
			return -1;
		if (src_changed)
			ip->saddr = f->new_src.w[3];
		if (dst_changed)
			ip->daddr = f->new_dst.w[3];
		if (src_changed || dst_changed)
			ip->check = fg_csum_replace(ip->check, diff);
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > end)
			return -1;
		if (src_changed)
			__builtin_memcpy(&ip6->saddr, f->new_src.w, 16);
		if (dst_changed)
			__builtin_memcpy(&ip6->daddr, f->new_dst.w, 16);
	}
	ports[0] = sport;
	ports[1] = dport;
	/* (Packet pointers are not used past this point: the helpers below invalidate them.) */
	__u32 old_ports = (__u32)p->key.sport | (__u32)p->key.dport << 16; /* as the 4 bytes lie in memory */
	__u32 new_ports = (__u32)sport | (__u32)dport << 16;
	if (p->key.proto == IPPROTO_SCTP)
		return ports_changed ? fg_sctp_ports_changed(skb, p, (const __u8 *)&old_ports, (const __u8 *)&new_ports) : 0;
	__u64 flags;
	int csum_off = fg_l4_csum_off(p, &flags);
	if (csum_off < 0)
		return 0;
	if ((src_changed || dst_changed) && bpf_l4_csum_replace(skb, csum_off, 0, diff, flags | BPF_F_PSEUDO_HDR) < 0)
		return -1;
	/* With CHECKSUM_COMPLETE the helper took the pseudo-header change out of skb->csum, right for
	 * IPv4 (whose header checksum compensates the addresses) but not for IPv6, whose addresses
	 * changed in the packet by the same amount: put it back (a no-op for other skbs). Forwarding
	 * drops such a sum; direct delivery hands it to the pod's stack. */
	if (p->v6 && (src_changed || dst_changed))
		bpf_csum_update(skb, diff);
	if (ports_changed && bpf_l4_csum_replace(skb, csum_off, old_ports, new_ports, flags | 4) < 0)
		return -1;
	return 0;
}

#endif
