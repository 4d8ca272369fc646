/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The compiled switch policy as kernel maps: one source of truth for their layouts.
 * Mirrored in Rust by crates/ebpf/src/maps.rs (a test checks sizes and offsets).
 *
 * Addresses are 16 bytes, network order: IPv6 as is, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d).
 * Ports are network order. Ids (sets, backend sets) are the switch policy's, host order.
 */
#ifndef FLOWGATE_MAPS_H
#define FLOWGATE_MAPS_H

#include <linux/types.h>

#define FG_MAX_RULES 6           /* rules under one destination (kube-proxy chains are <= 5) */
#define FG_NO_SET 0xffffffffu

struct fg_addr {
	__u32 w[4];
};

/* ---- rules ------------------------------------------------------------------------------ */

enum fg_match {
	FG_MATCH_ANY = 0,
	FG_MATCH_IN = 1,
	FG_MATCH_NOT_IN = 2,
};

enum fg_ingress {
	FG_INGRESS_ANY = 0,
	FG_INGRESS_ENDPOINT = 1,
	FG_INGRESS_HOST = 2,
	FG_INGRESS_UPLINK = 3,
};

enum fg_action {
	FG_ACT_ALLOW = 0,
	FG_ACT_DROP = 1,
	FG_ACT_REJECT = 2,
	FG_ACT_DNAT = 3,
	FG_ACT_SNAT = 4,
};

#define FG_F_MASQUERADE 0x1      /* DNAT: rewrite the source to the node address */
#define FG_F_HAIRPIN 0x2         /* DNAT: ... when the chosen backend is the source itself */

struct fg_rule {
	__u32 src_set;           /* address set of the source condition */
	__u32 dst_set;           /* address set of the destination condition */
	__u32 backends;          /* DNAT: backend set id */
	__u8 src_match;          /* enum fg_match */
	__u8 dst_match;          /* enum fg_match */
	__u8 ingress;            /* enum fg_ingress */
	__u8 action;             /* enum fg_action */
	__u8 reason;             /* drop reason (enum fg_drop_reason) for DROP/REJECT */
	__u8 flags;              /* FG_F_* */
	__u8 pad[2];
};

struct fg_rule_list {
	__u32 count;
	__u32 pad;
	struct fg_rule rules[FG_MAX_RULES];
};

/* fg_lb_dest: lb layer, "service-ips" group: exact destination -> rules */
struct fg_lb_key {
	struct fg_addr dst;
	__u16 dport;
	__u8 proto;
	__u8 pad;
};

/* fg_lb_nodeport: lb layer, "service-nodeports" group: (proto, port) -> rules, for destinations in
 * the set fg_config.nodeport_set */
struct fg_port_key {
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* fg_groups: ordered rule groups of the other layers, by slot (FG_GROUP_*) */
enum fg_group {
	FG_GROUP_SERVICE_FILTER = 0,
	FG_GROUP_OUTBOUND_NAT = 1,
	FG_GROUP_MAX = 2,
};

/* ---- address sets ------------------------------------------------------------------------ */

/* fg_sets: one LPM trie for every address set; prefixlen counts the 32 bits of `set` plus the
 * address prefix (IPv4 prefixes are mapped: /L becomes 96 + L). IPv4 entries carry FG_SET_V4 in
 * `set`, so that an IPv6 prefix such as ::/0 never matches an (IPv4-mapped) IPv4 address. Value: 1. */
#define FG_SET_V4 0x80000000u

/* fg_set_hosts: the single addresses (/32, /128) of every set, looked up by hash first: most sets
 * (ClusterIPs, node addresses) hold only those, and a hash lookup costs the same at any size.
 * Key: struct fg_set_data; value: 1. fg_set_info: set -> FG_SET_HAS_PREFIXES_* (which families
 * also have real prefixes in fg_sets). */
struct fg_set_data {
	__u32 set;
	struct fg_addr addr;
};
#define FG_SET_HAS_PREFIXES_V4 0x1
#define FG_SET_HAS_PREFIXES_V6 0x2
struct fg_set_key {
	__u32 prefixlen;
	__u32 set;
	struct fg_addr addr;
};

/* ---- backends ----------------------------------------------------------------------------- */

struct fg_backend_set {
	__u32 count;
	__u32 affinity_timeout;  /* seconds; 0 = no affinity (random) */
};

struct fg_backend_key {
	__u32 set;
	__u32 index;
};

struct fg_backend {
	struct fg_addr addr;
	__u16 port;
	__u16 pad;
};

struct fg_affinity_key {
	__u32 set;
	struct fg_addr client;
};

struct fg_affinity {
	__u64 last_used_ns;
	struct fg_addr addr;     /* the backend chosen last, re-checked against the set */
	__u16 port;
	__u16 pad[3];
};

/* ---- flows -------------------------------------------------------------------------------- */

struct fg_flow_key {
	struct fg_addr src;
	struct fg_addr dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

enum fg_verdict {
	FG_VERDICT_ALLOW = 0,
	FG_VERDICT_DROP = 1,
	FG_VERDICT_REJECT = 2,
};

#define FG_FLOW_REWRITE_SRC 0x1
#define FG_FLOW_REWRITE_DST 0x2
#define FG_FLOW_REPLY 0x4
#define FG_FLOW_CLOSED 0x8       /* TCP: a FIN or RST was seen (either direction) */
#define FG_FLOW_VIA_STACK 0x10   /* from the network, not routed back where it came from: never
				  * delivered directly (bpf/lib/deliver.h) */
#define FG_FLOW_SEEN_REPLY 0x20  /* a reply has passed (both entries of the connection) */
#define FG_FLOW_ESTABLISHED 0x40 /* in fg_flows_est: answered, and the opener went on (bpf/lib/flow.h) */

/* A header transposition: what every later packet of this direction gets. */
struct fg_flow {
	struct fg_addr new_src;
	struct fg_addr new_dst;
	__u16 new_sport;
	__u16 new_dport;
	__u8 verdict;            /* enum fg_verdict */
	__u8 reason;
	__u8 flags;              /* FG_FLOW_* */
	__u8 pad;
	__u64 generation;        /* fg_config.generation when decided */
	__u64 last_seen_ns;
};

/* fg_fragments: a fragmented datagram (source, destination, protocol, IP identification; IPv4's
 * 16 bits or IPv6's 32) -> the flow key of its first fragment, recorded when the first fragment
 * passes the switch: the later fragments carry no ports, and get that flow's verdict and address
 * rewrite (LRU; written by the programs only). */
struct fg_frag_key {
	struct fg_addr src;
	struct fg_addr dst;
	__u32 id;
	__u8 proto;
	__u8 pad[3];
};

/* fg_nat_pools: the source ports in use towards one peer (address, port, protocol) under one
 * translated source address — the masquerade ports of the node address, or the ports the switch
 * gave connections whose own reply key was taken — one bit per port (bpf/lib/flow.h). A hint kept by
 * the programs: a clear bit is a free port unless a connection the pool never saw holds it (every
 * candidate is checked against the flow tables), a set bit whose connection is gone (evicted) is
 * found by the pool's clock hand. LRU; written by the programs only. */
#define FG_NAT_PORT_FIRST 1024   /* ports handed out: 1024..65535 */
#define FG_NAT_WORDS 1024        /* 65,536 bits */
struct fg_nat_pool_key {
	struct fg_addr nat;      /* the translated source address (the replies' destination) */
	struct fg_addr peer;     /* the destination after translation (the replies' source) */
	__u16 peer_port;         /* network order */
	__u8 proto;
	__u8 pad;
};

struct fg_nat_pool {
	__u64 used[FG_NAT_WORDS];
	__u32 next;              /* the word the next search starts at */
	__u32 hand;              /* the clock hand: the next port checked when no bit is clear */
};

/* fg_flow_counters: per-CPU counters of the flow tables under pressure. */
enum fg_flow_counter {
	FG_FLOW_PROMOTED = 0,    /* connections moved to fg_flows_est */
	FG_FLOW_EXPIRED = 1,     /* connections removed after their idle timeout */
	FG_FLOW_EVICTED = 2,     /* embryonic connections that gave their port to a new connection */
	FG_FLOW_EST_FULL = 3,    /* promotions refused: fg_flows_est was full */
	FG_FLOW_REBOUND = 4,     /* first packets whose reply key a live connection held: another source port */
	FG_FLOW_COUNTERS = 8,
};

/* fg_flow_gauges: what the last sweep (fg_flow_gc) found. */
struct fg_flow_gauges {
	__u64 established;       /* entries in fg_flows_est */
	__u64 embryonic;         /* entries in fg_flows */
	__u64 sweeps;
	__u64 last_sweep_ns;
};

/* ---- configuration, ports, counters -------------------------------------------------------- */

struct fg_config {
	__u64 generation;        /* bumped by every policy change; older flows are re-checked */
	__u32 nodeport_set;      /* NodePort destinations */
	__u32 pad0;
	struct fg_addr snat_v4;  /* masquerade source, IPv4 (mapped) */
	struct fg_addr snat_v6;  /* masquerade source, IPv6 */
	__u8 has_snat_v4;
	__u8 has_snat_v6;
	__u8 pad[6];
};

/* fg_ports: ifindex of an endpoint's host-side interface -> the endpoint. Packets entering through
 * a bound interface must carry the endpoint's MAC (when known) and one of its addresses
 * (fg_endpoint_addrs), or they are dropped as spoofed. */
struct fg_port {
	__u32 port_id;           /* the switch policy's PortId */
	__u8 ingress;            /* enum fg_ingress: the kind of port packets enter through */
	__u8 has_mac;
	__u8 mac[6];             /* the pod interface's MAC */
};

/* fg_endpoint_addrs: (port id, address) of every endpoint; anti-spoofing. Every address is also
 * listed under FG_ANY_ENDPOINT_PORT, with the node's own addresses and its pods' gateway addresses
 * (the switch policy's host addresses): a packet from the network with one as its source is
 * spoofed. */
struct fg_endpoint_key {
	__u32 port_id;
	struct fg_addr addr;
};

#define FG_ANY_ENDPOINT_PORT 0xffffffffu

/* ---- endpoint ACLs (NetworkPolicy) ---------------------------------------------------------- */

/* An endpoint's ACL in one direction is a table, shared by every endpoint whose ACL compiles to the
 * same entries. A packet costs two LPM lookups per table, whatever the number of rules:
 *   fg_acl_classes:  (table, remote address) -> address class (key: struct fg_set_key with the
 *                    table id in `set`, FG_SET_V4 on IPv4 entries; no match = class 0);
 *   fg_acl_verdicts: (table, class, protocol, destination port prefix) -> the rule that allows.
 * No verdict entry = the table's default: drop (policy-denied). */
#define FG_NO_ACL 0xffffffffu

/* fg_acl_endpoints: an address of an endpoint on this node -> its tables (FG_NO_ACL = open) */
struct fg_acl_endpoint {
	__u32 egress;
	__u32 ingress;
};

/* prefixlen counts table (32) + class (32) + proto (8) + the port's leading bits (0..16);
 * 64 = every protocol and port of the class. */
struct fg_acl_port_key {
	__u32 prefixlen;
	__u32 table;
	__u32 class;
	__u8 proto;
	__u8 port[2];            /* network order */
	__u8 pad;
};

struct fg_acl_verdict {
	__u32 rule;              /* index of the allowing rule in the layer, for people */
	__u8 action;             /* enum fg_action: ALLOW */
	__u8 pad[3];
};

/* Drop reasons: the same numbers as flowgate_switch::DropReason. */
enum fg_drop_reason {
	FG_REASON_NONE = 0,
	FG_REASON_NO_ENDPOINTS = 1,
	FG_REASON_NO_LOCAL_ENDPOINTS = 2,
	FG_REASON_SOURCE_RANGE_DENIED = 3,
	FG_REASON_UNDEFINED_SERVICE_PORT = 4,
	FG_REASON_UNALLOCATED_SERVICE_IP = 5,
	FG_REASON_SPOOFED = 6,
	FG_REASON_POLICY_DENIED = 7,
	FG_REASON_MALFORMED = 8,
	FG_REASON_NAT_EXHAUSTED = 9,
	FG_REASON_FRAGMENT = 10,     /* a later fragment whose first fragment the switch has not seen */
	FG_REASON_MAX = 16,
};

/* fg_counters: per-CPU array; index 0 = allowed packets, 1..FG_REASON_MAX-1 = drops by reason,
 * FG_REASON_MAX + i = packets that hit flow-table entries (i = 0) or walked the layers (i = 1). */
#define FG_COUNTER_FLOW_HIT (FG_REASON_MAX + 0)
#define FG_COUNTER_FIRST_PACKET (FG_REASON_MAX + 1)
#define FG_COUNTER_DELIVERED (FG_REASON_MAX + 2) /* allowed packets handed to a local pod directly */
#define FG_COUNTERS (FG_REASON_MAX + 3)

/* fg_rule_hits: per-CPU, the connections (first packets) each rule decided, by the rule list and
 * the rule's index in it. */
enum fg_rule_list_kind {
	FG_LIST_LB_DEST = 1,     /* fg_lb_dest: addr, port, proto */
	FG_LIST_LB_NODEPORT = 2, /* fg_lb_nodeport: port, proto */
	FG_LIST_GROUP = 3,       /* fg_groups: id = slot */
	FG_LIST_ACL = 4,         /* an ACL table: id = table, index = the allowing rule's */
};

struct fg_rule_hit_key {
	__u8 kind;               /* enum fg_rule_list_kind */
	__u8 proto;
	__u16 port;              /* network order */
	__u32 index;
	__u32 id;
	struct fg_addr addr;
};

/* fg_last: per-CPU, the outcome of the last packet (tests read it after BPF_PROG_TEST_RUN) */
struct fg_last {
	__u8 verdict;
	__u8 reason;
	__u8 cached;
	__u8 pad[5];
	__u32 backend_index;
	__u32 backend_set;
};

#endif
