/* SPDX-License-Identifier: Apache-2.0 */
/* Includes, the maps themselves, and small helpers shared by every program. */
#ifndef FLOWGATE_COMMON_H
#define FLOWGATE_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* What an allowed packet returns: TC_ACT_OK ends a TCX chain, TC_ACT_UNSPEC continues it
 * (set at load time when other programs share the hook). */
volatile const int FG_PASS = TC_ACT_OK;

#define FG_MAX_ENTRIES_FLOWS 262144
#define FG_MAX_ENTRIES_SERVICES 262144
#define FG_MAX_ENTRIES_BACKENDS 1048576

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* entries allocated on demand: maps sized for 100k Services */
	__uint(max_entries, FG_MAX_ENTRIES_SERVICES);
	__type(key, struct fg_lb_key);
	__type(value, struct fg_rule_list);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_lb_dest SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* entries allocated on demand: maps sized for 100k Services */
	__uint(max_entries, FG_MAX_ENTRIES_SERVICES);
	__type(key, struct fg_port_key);
	__type(value, struct fg_rule_list);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_lb_nodeport SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FG_GROUP_MAX);
	__type(key, __u32);
	__type(value, struct fg_rule_list);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FG_MAX_ENTRIES_SERVICES * 4);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fg_set_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FG_MAX_ENTRIES_SERVICES * 4);
	__type(key, struct fg_set_data);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_set_hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FG_MAX_ENTRIES_SERVICES * 2);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_set_info SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* entries allocated on demand: maps sized for 100k Services */
	__uint(max_entries, FG_MAX_ENTRIES_SERVICES * 2);
	__type(key, __u32);
	__type(value, struct fg_backend_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_backend_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* entries allocated on demand: maps sized for 100k Services */
	__uint(max_entries, FG_MAX_ENTRIES_BACKENDS);
	__type(key, struct fg_backend_key);
	__type(value, struct fg_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_backends SEC(".maps");

/* (set, backend address and port) -> 1: is a backend still in its set (re-checking old flows) */
struct fg_member_key {
	__u32 set;
	struct fg_addr addr;
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* entries allocated on demand: maps sized for 100k Services */
	__uint(max_entries, FG_MAX_ENTRIES_BACKENDS);
	__type(key, struct fg_member_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_backend_members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FG_MAX_ENTRIES_FLOWS);
	__type(key, struct fg_affinity_key);
	__type(value, struct fg_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_affinity SEC(".maps");

/* The flow table of connections that are not established yet (and of those that never will be:
 * unanswered, dropped by a later policy): LRU, so that under pressure they are the ones that go.
 * Established connections live in fg_flows_est (bpf/lib/flow.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FG_MAX_ENTRIES_FLOWS);
	__type(key, struct fg_flow_key);
	__type(value, struct fg_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fg_frag_key);
	__type(value, struct fg_flow_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_fragments SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct fg_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 131072);
	__type(key, struct fg_endpoint_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_endpoint_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 131072);
	__type(key, struct fg_addr);
	__type(value, struct fg_acl_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_acl_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FG_MAX_ENTRIES_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fg_set_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_acl_classes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FG_MAX_ENTRIES_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fg_acl_port_key);
	__type(value, struct fg_acl_verdict);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_acl_verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FG_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, FG_MAX_ENTRIES_SERVICES);
	__type(key, struct fg_rule_hit_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_rule_hits SEC(".maps");

/* One more connection decided by a rule: `what` is kind | proto << 8 | port (network order) << 16
 * (five arguments at most). */
static __attribute__((noinline)) int fg_count_rule(__u32 what, __u32 index, __u32 id, const struct fg_addr *addr)
{
	struct fg_rule_hit_key k = { .kind = what & 0xff, .proto = (what >> 8) & 0xff, .port = what >> 16,
				     .index = index, .id = id };
	if (addr)
		k.addr = *addr;
	__u64 *v = bpf_map_lookup_elem(&fg_rule_hits, &k);
	if (v) {
		*v += 1;
		return 0;
	}
	__u64 one = 1;
	bpf_map_update_elem(&fg_rule_hits, &k, &one, BPF_NOEXIST);
	return 0;
}
#define FG_RULE_WHAT(kind, proto, port) ((__u32)(kind) | ((__u32)(proto) << 8) | ((__u32)(port) << 16))

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_last);
} fg_last SEC(".maps");

static __always_inline void fg_count(__u32 index)
{
	__u64 *c = bpf_map_lookup_elem(&fg_counters, &index);
	if (c)
		*c += 1;
}

static __always_inline int fg_addr_eq(const struct fg_addr *a, const struct fg_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

/* IPv4-mapped addresses: ::ffff:a.b.c.d */
static __always_inline void fg_addr_v4(struct fg_addr *a, __be32 ip)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = ip;
}

static __always_inline int fg_addr_is_v4(const struct fg_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

#endif
