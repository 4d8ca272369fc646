// SPDX-License-Identifier: Apache-2.0
/* The node's uplink, ingress: traffic from the network to NodePorts, externalIPs, load-balancer
 * IPs and ClusterIPs routed to this node, and replies of translated connections. */
#include "lib/switch.h"

SEC("classifier")
int fg_uplink_ingress(struct __sk_buff *skb)
{
	return fg_switch(skb, FG_INGRESS_UPLINK);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Scratch for the egress program, per CPU: the packet as the switch left it, and the FIB lookup. */
struct fg_egress {
	struct fg_pkt after;
	struct bpf_fib_lookup fib;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_egress);
} fg_egress SEC(".maps");

/* The node's uplink, egress: packets the node's own stack sends out (skb->ingress_ifindex is 0
 * for them; forwarded packets were decided where they entered). Host traffic to a Service is
 * translated here; when its destination changed, the packet is routed again for the new one
 * (FIB lookup, then out of the interface it says, with its neighbour's address). */
SEC("classifier")
int fg_uplink_egress(struct __sk_buff *skb)
{
	if (skb->ingress_ifindex != 0)
		return FG_PASS;
	__u32 zero = 0;
	struct fg_work *w = bpf_map_lookup_elem(&fg_work, &zero);
	if (!w || fg_parse(skb, &w->p) != FG_PARSE_OK)
		return FG_PASS;
	/* (The switch parses no more and leaves w->p as it was: the packet before translation.) */
	int r = fg_switch_packet(skb, FG_INGRESS_HOST, w);
	if (r != FG_PASS)
		return r;
	struct fg_egress *e = bpf_map_lookup_elem(&fg_egress, &zero);
	if (!e || fg_parse(skb, &e->after) != FG_PARSE_OK || fg_addr_eq(&e->after.key.dst, &w->p.key.dst))
		return r;
	struct bpf_fib_lookup *fib = &e->fib;
	struct fg_pkt *after_p = &e->after;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = skb->ifindex;
	fib->l4_protocol = after_p->key.proto;
	fib->sport = after_p->key.sport;
	fib->dport = after_p->key.dport;
	if (!after_p->v6) {
		fib->family = 2; /* AF_INET */
		fib->ipv4_src = after_p->key.src.w[3];
		fib->ipv4_dst = after_p->key.dst.w[3];
	} else {
		fib->family = 10; /* AF_INET6 */
		__builtin_memcpy(fib->ipv6_src, after_p->key.src.w, 16);
		__builtin_memcpy(fib->ipv6_dst, after_p->key.dst.w, 16);
	}
	/* (From an ingress perspective: with BPF_FIB_LOOKUP_OUTPUT the interface would be taken as the
	 * output device, and no route to the new destination leaves through it.) */
	long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return r;
	return bpf_redirect_neigh(fib->ifindex, 0, 0, 0);
}
