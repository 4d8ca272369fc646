// SPDX-License-Identifier: Apache-2.0
/* The host side of a pod's veth: traffic from the pod enters the switch here (TC ingress of the
 * host-side interface), including replies of connections translated elsewhere. */
#include "lib/switch.h"

/* lo is interface 1 in every network namespace (LOOPBACK_IFINDEX). */
#define FG_LOOPBACK_IFINDEX 1

/* Whether a packet the switch let through is addressed from loopback to loopback: the reply of
 * one of the node's own connections to a host port on 127.0.0.1 (or ::1), readdressed by the
 * switch (its first packet left through lo's egress program, masqueraded to a node address). No
 * pod can send such a packet itself: anti-spoofing admits only the pod's own addresses as
 * sources, and the interface must be bound for it to run. */
static __always_inline int fg_loopback_reply(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return 0;
		if ((ip->saddr & bpf_htonl(0xff000000)) != bpf_htonl(0x7f000000) ||
		    (ip->daddr & bpf_htonl(0xff000000)) != bpf_htonl(0x7f000000))
			return 0;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return 0;
		const __u32 *s = (const __u32 *)&ip6->saddr;
		const __u32 *d = (const __u32 *)&ip6->daddr;
		if ((s[0] | s[1] | s[2] | d[0] | d[1] | d[2]) || s[3] != bpf_htonl(1) || d[3] != bpf_htonl(1))
			return 0;
	} else {
		return 0;
	}
	__u32 ifindex = skb->ifindex;
	return bpf_map_lookup_elem(&fg_ports, &ifindex) != 0;
}

SEC("classifier")
int fg_from_endpoint(struct __sk_buff *skb)
{
	int r = fg_switch(skb, FG_INGRESS_ENDPOINT);
	if (r != FG_PASS || !fg_loopback_reply(skb))
		return r;
	/* Arriving on the veth, a loopback address is martian to the stack (and stays so: no
	 * route_localnet here, so no pod or peer ever reaches the node's loopback services). The reply
	 * belongs to lo: handed to lo's ingress, addressed to lo's MAC (all zeros, so the stack takes
	 * it as for this host); lo accepts loopback addresses arriving on it (route_localnet and
	 * accept_local on lo, set with the endpoints' sysctls). */
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return r;
	__builtin_memset(eth->h_dest, 0, ETH_ALEN);
	return bpf_redirect(FG_LOOPBACK_IFINDEX, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
