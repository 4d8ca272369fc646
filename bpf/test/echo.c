// SPDX-License-Identifier: Apache-2.0
/* A throwaway classifier for crates/ebpf's own infrastructure tests (loading, load-time constants,
 * pinned maps, BPF_PROG_TEST_RUN, TCX links). Not part of the data plane.
 *
 * It swaps the Ethernet source and destination addresses, counts packets in a map pinned by
 * name (key 0: packets seen; key 1: skb->ifindex of the last packet) and returns FG_PASS. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

/* Load-time constant: the loader overrides it (aya's override_global). */
volatile const int FG_PASS = TC_ACT_OK;

#define ECHO_KEY_PACKETS 0
#define ECHO_KEY_IFINDEX 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fg_echo_count SEC(".maps");

static __always_inline void echo_set(__u32 key, __u64 value)
{
	bpf_map_update_elem(&fg_echo_count, &key, &value, BPF_ANY);
}

SEC("classifier")
int fg_echo(struct __sk_buff *skb)
{
	__u32 key = ECHO_KEY_PACKETS;
	__u64 *packets = bpf_map_lookup_elem(&fg_echo_count, &key);

	if (packets)
		__sync_fetch_and_add(packets, 1);
	else
		echo_set(ECHO_KEY_PACKETS, 1);
	echo_set(ECHO_KEY_IFINDEX, skb->ifindex);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;

	unsigned char tmp[ETH_ALEN];
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return FG_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
