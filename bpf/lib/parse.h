/* SPDX-License-Identifier: Apache-2.0 */
/* Parsing a frame into the 5-tuple the switch decides on: Ethernet + IPv4/IPv6 + TCP/UDP/SCTP as
 * connections; ICMP/ICMPv6 and other IP protocols with their addresses (judged without ports);
 * anything else (other ethertypes) is not the switch's business and passes. */
#ifndef FLOWGATE_PARSE_H
#define FLOWGATE_PARSE_H

#include "common.h"

struct fg_pkt {
	struct fg_flow_key key;
	__u32 l3_off;
	__u32 l4_off;
	__u32 l4_len;            /* bytes from l4_off to the end of the IP packet */
	__u8 v6;
	__u8 frag;               /* enum fg_frag */
	__u32 frag_id;           /* IP identification of a fragment (IPv4: 16 bits, network order) */
};

enum fg_frag {
	FG_FRAG_NONE = 0,
	FG_FRAG_FIRST = 1,       /* offset 0, more fragments follow */
	FG_FRAG_LATER = 2,       /* offset > 0: no transport header */
};

enum fg_parse_result {
	FG_PARSE_OK = 0,
	FG_PARSE_PASS = 1,       /* not a packet the switch handles */
	FG_PARSE_MALFORMED = 2,
	FG_PARSE_ICMP = 3,       /* ICMP or ICMPv6: l3_off, l4_off, v6 and the outer addresses are set */
	FG_PARSE_OTHER = 4,      /* another IP protocol: the same are set, and key.proto; no ports */
	FG_PARSE_FRAGMENT = 5,   /* a later fragment: addresses, key.proto, frag and frag_id set */
};

#define FG_MAX_EXT_HEADERS 4

static __always_inline int fg_parse(struct __sk_buff *skb, struct fg_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return FG_PARSE_MALFORMED;
	__builtin_memset(p, 0, sizeof(*p));
	p->l3_off = sizeof(struct ethhdr);
	__u8 proto;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > end)
			return FG_PARSE_MALFORMED;
		if (ip->ihl < 5)
			return FG_PARSE_MALFORMED;
		fg_addr_v4(&p->key.src, ip->saddr);
		fg_addr_v4(&p->key.dst, ip->daddr);
		proto = ip->protocol;
		/* A later fragment carries no ports: it follows its first fragment (fg_fragments). */
		if (ip->frag_off & bpf_htons(0x3fff)) {
			p->frag_id = ip->id;
			p->frag = (ip->frag_off & bpf_htons(0x1fff)) ? FG_FRAG_LATER : FG_FRAG_FIRST;
			if (p->frag == FG_FRAG_LATER) {
				p->key.proto = proto;
				return FG_PARSE_FRAGMENT;
			}
		}
		p->l4_off = p->l3_off + ip->ihl * 4;
		p->l4_len = bpf_ntohs(ip->tot_len) - ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > end)
			return FG_PARSE_MALFORMED;
		__builtin_memcpy(&p->key.src, &ip6->saddr, 16);
		__builtin_memcpy(&p->key.dst, &ip6->daddr, 16);
		proto = ip6->nexthdr;
		p->l4_off = p->l3_off + sizeof(struct ipv6hdr);
		p->l4_len = bpf_ntohs(ip6->payload_len);
		p->v6 = 1;
		/* Extension headers before the transport header: skipped, so that a Hop-by-Hop, Routing,
		 * Destination Options, Authentication or (first) Fragment header never hides a
		 * connection from the switch. More than FG_MAX_EXT_HEADERS of them: dropped. */
#pragma unroll
		for (int i = 0; i < FG_MAX_EXT_HEADERS; i++) {
			__u8 h[4];
			if (proto != 0 && proto != 43 && proto != 60 && proto != 51 && proto != 44)
				break;
			if (bpf_skb_load_bytes(skb, p->l4_off, h, sizeof(h)) < 0)
				return FG_PARSE_MALFORMED;
			__u32 len;
			if (proto == 44) {
				/* Fragment: a later one carries no ports and follows its first (as for IPv4). */
				__u32 id;
				if (bpf_skb_load_bytes(skb, p->l4_off + 4, &id, 4) < 0)
					return FG_PARSE_MALFORMED;
				if ((h[2] << 8 | h[3]) & 0xfff8) {
					p->frag = FG_FRAG_LATER;
					p->frag_id = id;
					p->key.proto = h[0];
					return FG_PARSE_FRAGMENT;
				}
				if (h[3] & 1) {
					p->frag = FG_FRAG_FIRST;
					p->frag_id = id;
				}
				len = 8;
			} else if (proto == 51) {
				len = ((__u32)h[1] + 2) * 4;
			} else {
				len = ((__u32)h[1] + 1) * 8;
			}
			proto = h[0];
			p->l4_off += len;
			if (p->l4_len < len)
				return FG_PARSE_MALFORMED;
			p->l4_len -= len;
		}
		if (proto == 0 || proto == 43 || proto == 60 || proto == 51 || proto == 44)
			return FG_PARSE_MALFORMED;
	} else {
		return FG_PARSE_PASS;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		p->key.proto = proto;
		return FG_PARSE_ICMP;
	}
	p->key.proto = proto;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return FG_PARSE_OTHER;
	/* The ports: read in place when the linear area holds them (nearly always), else copied. */
	__u32 l4 = p->l4_off;
	__u16 *in_place = data + (l4 & 0x3fff);
	if (l4 <= 0x3fff && (void *)(in_place + 2) <= end) {
		p->key.sport = in_place[0];
		p->key.dport = in_place[1];
		return FG_PARSE_OK;
	}
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
		return FG_PARSE_MALFORMED;
	p->key.sport = ports[0];
	p->key.dport = ports[1];
	return FG_PARSE_OK;
}

#endif
