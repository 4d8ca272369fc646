/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Endpoint ACLs (NetworkPolicy compiled by crates/compiler/src/policy.rs, tables by
 * crates/ebpf/src/acl.rs): remote address -> address class through an LPM trie, then (class,
 * protocol, port prefix) -> verdict through a second one. Two lookups per table, whatever the
 * number of policies or rules.
 */
#ifndef FLOWGATE_ACL_H
#define FLOWGATE_ACL_H

#include "common.h"

/* Whether table `table` lets a connection with this remote address, protocol and destination port
 * (network order) through. */
static __always_inline int fg_acl_allows(__u32 table, const struct fg_addr *remote, __u8 proto, __u8 v6, __u16 port)
{
	/* (The packet's family decides, never the address's form: an IPv6 packet is never judged
	 * among IPv4 classes.) */
	struct fg_set_key ck = { .prefixlen = 32 + 128, .set = table | (v6 ? 0 : FG_SET_V4) };
	ck.addr = *remote;
	__u32 *class = bpf_map_lookup_elem(&fg_acl_classes, &ck);
	struct fg_acl_port_key pk = { .prefixlen = 32 + 32 + 8 + 16, .table = table, .proto = proto };
	pk.class = class ? *class : 0;
	__builtin_memcpy(pk.port, &port, 2);
	struct fg_acl_verdict *v = bpf_map_lookup_elem(&fg_acl_verdicts, &pk);
	if (!v || v->action != FG_ACT_ALLOW)
		return 0;
	fg_count_rule(FG_RULE_WHAT(FG_LIST_ACL, 0, 0), v->rule, table, 0);
	return 1;
}

/* What fg_acl_check is asked about besides the addresses, in one word (BPF passes five
 * arguments at most). */
#define FG_ACL_ASK(proto, v6, from_endpoint) ((__u32)(proto) | ((__u32)(v6) << 8) | ((__u32)(from_endpoint) << 9))

/* The ACLs of a connection's first packet: the source endpoint's egress table on the translated
 * destination (only for packets that left an endpoint), then the destination endpoint's ingress
 * table on the client's address. `ask` is FG_ACL_ASK(...). 0 = allowed. */
static __attribute__((noinline)) int fg_acl_check(const struct fg_addr *src, const struct fg_addr *dst, __u32 ask,
						   __u16 dport)
{
	__u8 proto = ask & 0xff, v6 = (ask >> 8) & 1;
	struct fg_acl_endpoint *e;
	if (ask & (1 << 9)) {
		e = bpf_map_lookup_elem(&fg_acl_endpoints, src);
		if (e && e->egress != FG_NO_ACL && !fg_acl_allows(e->egress, dst, proto, v6, dport))
			return -1;
	}
	e = bpf_map_lookup_elem(&fg_acl_endpoints, dst);
	if (e && e->ingress != FG_NO_ACL && !fg_acl_allows(e->ingress, src, proto, v6, dport))
		return -1;
	return 0;
}

#endif
