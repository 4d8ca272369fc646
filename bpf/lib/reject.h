/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Reject: the packet is turned into the ICMP (IPv4) or ICMPv6 "port unreachable" error that
 * answers it — what kube-proxy's nftables `reject` sends, for TCP as for UDP and SCTP — and sent
 * back out of the interface it came in through. The error quotes the original IP header and the
 * first 8 bytes after it, as RFC 792 and RFC 4443 ask.
 */
#ifndef FLOWGATE_REJECT_H
#define FLOWGATE_REJECT_H

#include "common.h"
#include "parse.h"

/* (linux/icmp.h drags in libc's socket headers, which do not build for the BPF target.) */
#define FG_ICMP_DEST_UNREACH 3
#define FG_ICMP_PORT_UNREACH 3
#define FG_ICMPV6_DEST_UNREACH 1
#define FG_ICMPV6_PORT_UNREACH 4

/* The 8-byte header of ICMP and ICMPv6 errors. */
struct fg_icmp_err {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 unused;
};

#define FG_ICMP_TTL 64

static __always_inline __u16 fg_fold(__s64 sum)
{
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

struct fg_icmp4_body {
	struct fg_icmp_err icmp;
	__u8 quote[28];          /* the original IPv4 header (no options) and 8 bytes after it */
};

struct fg_icmp6_body {
	struct fg_icmp_err icmp;
	__u8 quote[48];          /* the original IPv6 header and 8 bytes after it */
};

struct fg_pseudo6 {
	struct in6_addr saddr;
	struct in6_addr daddr;
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
};

/* Scratch space for building the error (per CPU: too large for the BPF stack). */
struct fg_reject_scratch {
	struct ethhdr eth;
	__u8 pad[2];
	struct iphdr orig4;
	struct iphdr ip4;
	struct ipv6hdr orig6;
	struct ipv6hdr ip6;
	struct fg_pseudo6 ph;
	struct fg_icmp4_body b4;
	struct fg_icmp6_body b6;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_reject_scratch);
} fg_reject_scratch SEC(".maps");

static __always_inline void fg_swap_macs(struct ethhdr *eth)
{
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
}

static __always_inline int fg_reject4(struct __sk_buff *skb, __u32 l3_off, struct fg_reject_scratch *s)
{
	if (bpf_skb_load_bytes(skb, l3_off, &s->orig4, sizeof(s->orig4)) < 0 || s->orig4.ihl != 5)
		return TC_ACT_SHOT;
	__builtin_memset(&s->b4, 0, sizeof(s->b4));
	if (bpf_skb_load_bytes(skb, l3_off, s->b4.quote, sizeof(s->b4.quote)) < 0)
		return TC_ACT_SHOT;
	s->b4.icmp.type = FG_ICMP_DEST_UNREACH;
	s->b4.icmp.code = FG_ICMP_PORT_UNREACH;
	s->b4.icmp.checksum = fg_fold(bpf_csum_diff(0, 0, (__be32 *)&s->b4, sizeof(s->b4), 0));

	__builtin_memset(&s->ip4, 0, sizeof(s->ip4));
	s->ip4.version = 4;
	s->ip4.ihl = 5;
	s->ip4.tot_len = bpf_htons(sizeof(s->ip4) + sizeof(s->b4));
	s->ip4.ttl = FG_ICMP_TTL;
	s->ip4.protocol = IPPROTO_ICMP;
	s->ip4.saddr = s->orig4.daddr;
	s->ip4.daddr = s->orig4.saddr;
	s->ip4.check = fg_fold(bpf_csum_diff(0, 0, (__be32 *)&s->ip4, sizeof(s->ip4), 0));
	fg_swap_macs(&s->eth);

	__u32 len = sizeof(struct ethhdr) + sizeof(s->ip4) + sizeof(s->b4);
	if (bpf_skb_change_tail(skb, len, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, &s->eth, sizeof(s->eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, sizeof(s->eth), &s->ip4, sizeof(s->ip4), 0) < 0 ||
	    bpf_skb_store_bytes(skb, sizeof(s->eth) + sizeof(s->ip4), &s->b4, sizeof(s->b4), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int fg_reject6(struct __sk_buff *skb, __u32 l3_off, struct fg_reject_scratch *s)
{
	if (bpf_skb_load_bytes(skb, l3_off, &s->orig6, sizeof(s->orig6)) < 0)
		return TC_ACT_SHOT;
	__builtin_memset(&s->b6, 0, sizeof(s->b6));
	if (bpf_skb_load_bytes(skb, l3_off, s->b6.quote, sizeof(s->b6.quote)) < 0)
		return TC_ACT_SHOT;
	s->b6.icmp.type = FG_ICMPV6_DEST_UNREACH;
	s->b6.icmp.code = FG_ICMPV6_PORT_UNREACH;

	__builtin_memset(&s->ph, 0, sizeof(s->ph));
	s->ph.saddr = s->orig6.daddr;
	s->ph.daddr = s->orig6.saddr;
	s->ph.len = bpf_htonl(sizeof(s->b6));
	s->ph.nexthdr = IPPROTO_ICMPV6;
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&s->ph, sizeof(s->ph), 0);
	s->b6.icmp.checksum = fg_fold(bpf_csum_diff(0, 0, (__be32 *)&s->b6, sizeof(s->b6), sum));

	__builtin_memset(&s->ip6, 0, sizeof(s->ip6));
	s->ip6.version = 6;
	s->ip6.payload_len = bpf_htons(sizeof(s->b6));
	s->ip6.nexthdr = IPPROTO_ICMPV6;
	s->ip6.hop_limit = FG_ICMP_TTL;
	s->ip6.saddr = s->orig6.daddr;
	s->ip6.daddr = s->orig6.saddr;
	fg_swap_macs(&s->eth);

	__u32 len = sizeof(struct ethhdr) + sizeof(s->ip6) + sizeof(s->b6);
	if (bpf_skb_change_tail(skb, len, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, &s->eth, sizeof(s->eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, sizeof(s->eth), &s->ip6, sizeof(s->ip6), 0) < 0 ||
	    bpf_skb_store_bytes(skb, sizeof(s->eth) + sizeof(s->ip6), &s->b6, sizeof(s->b6), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* Answers the packet with a port-unreachable error (a subprogram: it has its own stack frame);
 * drops it when that is not possible. */
static __attribute__((noinline)) int fg_reject(struct __sk_buff *skb, __u32 l3_off, __u32 v6)
{
	__u32 zero = 0;
	struct fg_reject_scratch *s = bpf_map_lookup_elem(&fg_reject_scratch, &zero);
	if (!s)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, 0, &s->eth, sizeof(s->eth)) < 0)
		return TC_ACT_SHOT;
	return v6 ? fg_reject6(skb, l3_off, s) : fg_reject4(skb, l3_off, s);
}

#endif
