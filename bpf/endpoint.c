// SPDX-License-Identifier: Apache-2.0
/* The host side of a pod's veth: traffic from the pod enters the switch here (TC ingress of the
 * host-side interface), including replies of connections translated elsewhere. */
#include "lib/switch.h"

SEC("classifier")
int fg_from_endpoint(struct __sk_buff *skb)
{
	return fg_switch(skb, FG_INGRESS_ENDPOINT);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
