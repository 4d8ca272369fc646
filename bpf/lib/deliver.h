/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Direct delivery to the node's pods. A packet the switch has allowed (and translated) whose
 * destination is a pod on this node is handed to the pod by the switch itself: bpf_redirect_peer
 * from the TC ingress hook it entered through (the uplink, or another pod's host interface) to the
 * pod side of the endpoint's veth, past the node's IP stack (routing decision, netfilter hooks,
 * neighbour output, the veth's transmit and the backlog queue it feeds).
 *
 * The node's routing still decides: one FIB lookup on the translated packet, and only when it
 * says "forward, out of a bound endpoint interface" is the packet delivered directly, its TTL or
 * hop limit decremented as forwarding would, its MAC header what the pod would have got (the
 * host-side interface's address as source, the pod's as destination). Everything else takes the
 * stack's path exactly as before: a TTL about to expire (the stack answers), IPv4 options and
 * fragments, IPv6 extension headers, a VLAN-tagged frame, a packet larger than the outgoing
 * interface's MTU (GSO packets are the kernel's to segment), a destination the FIB does not
 * forward or whose neighbour entry does not exist yet (the stack makes it), a frame not addressed
 * to this host, an IPv6 packet from the unspecified address, and every packet of a connection from
 * the network whose source the node does not route back out of the interface it came in through
 * (fg_routed_back, on its first packet: the stack's rp_filter then decides, as without the switch;
 * sources only the node may use never get this far, see fg_uplink_source_ok). What the node no
 * longer does for the packets delivered this way: its netfilter hooks (FORWARD chain, conntrack)
 * and the host-side interface's egress qdisc. Load the programs with FG_DIRECT_DELIVERY = 0 (the agent's
 * `localDelivery: Routed`) to keep every packet on the stack's path.
 */
#ifndef FLOWGATE_DELIVER_H
#define FLOWGATE_DELIVER_H

#include "common.h"
#include "parse.h"

volatile const __u8 FG_DIRECT_DELIVERY = 1;

#ifndef PACKET_HOST
#define PACKET_HOST 0
#endif

/* Hands an allowed packet that entered at a TC ingress hook to a local pod, or returns FG_PASS for
 * the stack's path. `fib` is per-CPU scratch. */
static __attribute__((noinline)) int fg_deliver(struct __sk_buff *skb, const struct fg_pkt *p, struct bpf_fib_lookup *fib)
{
	if (!FG_DIRECT_DELIVERY || skb->pkt_type != PACKET_HOST || skb->vlan_present)
		return FG_PASS;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = skb->ifindex;
	if (!p->v6) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->ttl <= 1 || (ip->frag_off & bpf_htons(0x3fff)))
			return FG_PASS;
		fib->family = 2; /* AF_INET */
		fib->tos = ip->tos;
		fib->l4_protocol = ip->protocol;
		fib->ipv4_src = ip->saddr;
		fib->ipv4_dst = ip->daddr;
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > end || p->l4_off != sizeof(struct ethhdr) + sizeof(struct ipv6hdr) ||
		    ip6->hop_limit <= 1)
			return FG_PASS;
		const __u32 *s6 = (const __u32 *)&ip6->saddr;
		if (!(s6[0] | s6[1] | s6[2] | s6[3]))
			return FG_PASS;
		fib->family = 10; /* AF_INET6 */
		fib->flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
		fib->l4_protocol = ip6->nexthdr;
		__builtin_memcpy(fib->ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib->ipv6_dst, &ip6->daddr, 16);
	}
	__u16 *ports = data + (p->l4_off & 0x3fff);
	if ((void *)(ports + 2) > end)
		return FG_PASS;
	fib->sport = ports[0];
	fib->dport = ports[1];
	/* (tot_len 0: the length check is the kernel's is_skb_forwardable against the outgoing
	 * interface's MTU. The neighbour lookup gives the host-side interface's MAC as source.) */
	if (bpf_fib_lookup(skb, fib, sizeof(*fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return FG_PASS;
	__u32 out = fib->ifindex;
	struct fg_port *port = bpf_map_lookup_elem(&fg_ports, &out);
	if (!port || out == skb->ifindex)
		return FG_PASS;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return FG_PASS;
	if (!p->v6) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return FG_PASS;
		/* As the kernel's ip_decrease_ttl: the checksum's incremental update for ttl - 1. */
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xffff));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return FG_PASS;
		ip6->hop_limit--;
		/* No header checksum to compensate: a CHECKSUM_COMPLETE sum (which the pod's stack will
		 * use; forwarding would have dropped it) loses the hop limit's 1 (a no-op otherwise). */
		bpf_csum_update(skb, ~(__u32)bpf_htons(1));
	}
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return FG_PASS;
	/* The pod's own MAC when the binding knows it (authoritative), else the neighbour's. */
	__builtin_memcpy(eth->h_dest, port->has_mac ? port->mac : fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	fg_count(FG_COUNTER_DELIVERED);
	return bpf_redirect_peer(out, 0);
}

/* The reverse-path check of a connection's first packet from the network (as rp_filter's strict
 * mode, for IPv4 and IPv6 alike): whether the node routes the packet's source back out of the
 * interface it arrived on. `fib` is per-CPU scratch. 1 = yes. */
static __attribute__((noinline)) int fg_routed_back(struct __sk_buff *skb, const struct fg_pkt *p,
						    struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = skb->ifindex;
	fib->l4_protocol = p->key.proto;
	fib->sport = p->key.dport;
	fib->dport = p->key.sport;
	if (!p->v6) {
		fib->family = 2; /* AF_INET */
		fib->ipv4_src = p->key.dst.w[3];
		fib->ipv4_dst = p->key.src.w[3];
	} else {
		fib->family = 10; /* AF_INET6 */
		__builtin_memcpy(fib->ipv6_src, p->key.dst.w, 16);
		__builtin_memcpy(fib->ipv6_dst, p->key.src.w, 16);
	}
	/* (A source on a link-local route, or one the node reaches through a neighbour it has not
	 * resolved yet, still counts: the neighbour is not looked up.) */
	long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	return rc == BPF_FIB_LKUP_RET_SUCCESS && fib->ifindex == skb->ifindex;
}

#endif
