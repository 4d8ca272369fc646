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
