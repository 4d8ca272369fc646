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
	if (p->key.proto == IPPROTO_SCTP) {
		__u16 old[2], new[2];
		if (bpf_skb_load_bytes(skb, p->l4_off, old, 4) < 0)
			return -1;
		new[0] = dst ? old[0] : to;
		new[1] = dst ? to : old[1];
		if (fg_sctp_ports_changed(skb, p, (const __u8 *)old, (const __u8 *)new) < 0)
			return -1;
	}
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
