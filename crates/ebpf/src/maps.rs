//! The kernel maps' layouts, mirroring `bpf/lib/maps.h` (the source of truth) field for field.
//! Every type is `#[repr(C)]` with explicit padding; `tests::layouts_match_the_c_header` checks
//! sizes against the header's.

use std::net::IpAddr;

/// `struct fg_addr`: 16 bytes, network order; IPv4 as IPv4-mapped IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr {
    /// The address, as four network-order words.
    pub w: [u32; 4],
}

impl Addr {
    /// The kernel form of an address.
    pub fn from_ip(ip: IpAddr) -> Addr {
        let v6 = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        let o = v6.octets();
        let mut w = [0u32; 4];
        for (i, word) in w.iter_mut().enumerate() {
            *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
        }
        Addr { w }
    }

    /// The address back (IPv4-mapped addresses as IPv4).
    pub fn to_ip(self) -> IpAddr {
        let mut o = [0u8; 16];
        for (i, word) in self.w.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        let v6 = std::net::Ipv6Addr::from(o);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// `FG_MAX_RULES`.
pub const MAX_RULES: usize = 6;
/// `FG_SET_V4`: marks IPv4 entries of the address-set trie.
pub const SET_V4: u32 = 0x8000_0000;
/// `FG_NO_SET`.
pub const NO_SET: u32 = u32::MAX;

/// `enum fg_match`.
pub mod matching {
    /// Any address.
    pub const ANY: u8 = 0;
    /// In the set.
    pub const IN: u8 = 1;
    /// Not in the set.
    pub const NOT_IN: u8 = 2;
}

/// `enum fg_ingress`.
pub mod ingress {
    /// Any port.
    pub const ANY: u8 = 0;
    /// A pod endpoint.
    pub const ENDPOINT: u8 = 1;
    /// The host.
    pub const HOST: u8 = 2;
    /// The uplink.
    pub const UPLINK: u8 = 3;
}

/// `enum fg_action`.
pub mod action {
    /// Allow.
    pub const ALLOW: u8 = 0;
    /// Drop.
    pub const DROP: u8 = 1;
    /// Reject.
    pub const REJECT: u8 = 2;
    /// DNAT to a backend set.
    pub const DNAT: u8 = 3;
    /// SNAT to the node address.
    pub const SNAT: u8 = 4;
}

/// `FG_F_MASQUERADE`.
pub const F_MASQUERADE: u8 = 0x1;
/// `FG_F_HAIRPIN`.
pub const F_HAIRPIN: u8 = 0x2;

/// `struct fg_rule`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Source condition's set.
    pub src_set: u32,
    /// Destination condition's set.
    pub dst_set: u32,
    /// DNAT backend set.
    pub backends: u32,
    /// `enum fg_match` for the source.
    pub src_match: u8,
    /// `enum fg_match` for the destination.
    pub dst_match: u8,
    /// `enum fg_ingress`.
    pub ingress: u8,
    /// `enum fg_action`.
    pub action: u8,
    /// Drop reason.
    pub reason: u8,
    /// `FG_F_*`.
    pub flags: u8,
    /// Padding.
    pub pad: [u8; 2],
}

/// `struct fg_rule_list`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleList {
    /// Rules in use.
    pub count: u32,
    /// Padding.
    pub pad: u32,
    /// The rules, first match wins.
    pub rules: [Rule; MAX_RULES],
}

/// `struct fg_lb_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbKey {
    /// Destination address.
    pub dst: Addr,
    /// Destination port, network order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Padding.
    pub pad: u8,
}

/// An orderable copy of an [`LbKey`] (address words, port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbKeyOrd {
    /// Address words.
    pub dst: [u32; 4],
    /// Port, network order.
    pub dport: u16,
    /// Protocol.
    pub proto: u8,
}

impl LbKeyOrd {
    /// The map key.
    pub fn key(&self) -> LbKey {
        LbKey { dst: Addr { w: self.dst }, dport: self.dport, proto: self.proto, pad: 0 }
    }
}

/// `struct fg_port_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Port, network order.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Padding.
    pub pad: u8,
}

/// `enum fg_group` slots.
pub mod group {
    /// The service filter's ordered group.
    pub const SERVICE_FILTER: u32 = 0;
    /// Outbound NAT's ordered group.
    pub const OUTBOUND_NAT: u32 = 1;
    /// Number of slots.
    pub const MAX: u32 = 2;
}

/// `struct fg_set_key` (LPM trie key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetKey {
    /// Matched bits: 32 (the set id) + the address prefix (IPv4: 96 + length).
    pub prefixlen: u32,
    /// Set id, as the first 32 matched bits (big-endian so that they compare as a prefix).
    pub set: u32,
    /// The address.
    pub addr: Addr,
}

/// The data part of an LPM [`SetKey`] (aya's `lpm_trie::Key` adds the prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetData {
    /// Set id.
    pub set: u32,
    /// The address.
    pub addr: Addr,
}

/// `struct fg_backend_set`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendSet {
    /// Backends at indexes `0..count`.
    pub count: u32,
    /// ClientIP affinity timeout in seconds; 0 for none.
    pub affinity_timeout: u32,
}

/// `struct fg_backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// Backend set.
    pub set: u32,
    /// Index in the set.
    pub index: u32,
}

/// `struct fg_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Address.
    pub addr: Addr,
    /// Port, network order.
    pub port: u16,
    /// Padding.
    pub pad: u16,
}

/// `struct fg_member_key` (in common.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemberKey {
    /// Backend set.
    pub set: u32,
    /// Backend address.
    pub addr: Addr,
    /// Backend port, network order.
    pub port: u16,
    /// Padding.
    pub pad: u16,
}

/// `struct fg_flow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Padding.
    pub pad: [u8; 3],
}

impl FlowKey {
    /// The kernel's key of the model's 5-tuple.
    pub fn of(key: &flowgate_switch::FlowKey) -> FlowKey {
        FlowKey {
            src: Addr::from_ip(key.src),
            dst: Addr::from_ip(key.dst),
            sport: key.sport.to_be(),
            dport: key.dport.to_be(),
            proto: key.proto.0,
            pad: [0; 3],
        }
    }
}

/// `struct fg_flow`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// New source address.
    pub new_src: Addr,
    /// New destination address.
    pub new_dst: Addr,
    /// New source port, network order.
    pub new_sport: u16,
    /// New destination port, network order.
    pub new_dport: u16,
    /// `enum fg_verdict`.
    pub verdict: u8,
    /// Drop reason.
    pub reason: u8,
    /// `FG_FLOW_*`.
    pub flags: u8,
    /// Padding.
    pub pad: u8,
    /// Policy generation when decided.
    pub generation: u64,
    /// Last packet, ns (monotonic).
    pub last_seen_ns: u64,
}

/// `FG_FLOW_*` flags of a [`Flow`].
pub mod flow_flags {
    /// The source is rewritten.
    pub const REWRITE_SRC: u8 = 0x1;
    /// The destination is rewritten.
    pub const REWRITE_DST: u8 = 0x2;
    /// The reply direction's entry.
    pub const REPLY: u8 = 0x4;
    /// TCP: a FIN or RST was seen.
    pub const CLOSED: u8 = 0x8;
    /// Never delivered directly.
    pub const VIA_STACK: u8 = 0x10;
    /// A reply has passed.
    pub const SEEN_REPLY: u8 = 0x20;
    /// In `fg_flows_est`: the connection is established.
    pub const ESTABLISHED: u8 = 0x40;
}

/// `FG_NAT_WORDS`: 64-bit words of a port pool's bitmap.
pub const NAT_WORDS: usize = 1024;

/// `struct fg_nat_pool_key`: the ports translated connections use towards one peer under one
/// translated source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatPoolKey {
    /// The translated source address.
    pub nat: Addr,
    /// The peer (destination after translation).
    pub peer: Addr,
    /// The peer's port, network order.
    pub peer_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Padding.
    pub pad: u8,
}

/// `struct fg_nat_pool`: one bit per port in use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPool {
    /// The bitmap (port `p` is bit `p % 64` of word `p / 64`).
    pub used: [u64; NAT_WORDS],
    /// The word the next search starts at.
    pub next: u32,
    /// The clock hand.
    pub hand: u32,
}

impl NatPool {
    /// Whether port `port` (host order) is marked in use.
    pub fn is_used(&self, port: u16) -> bool {
        self.used[usize::from(port) / 64] & (1u64 << (port % 64)) != 0
    }
}

/// `enum fg_flow_counter`: indexes of `fg_flow_counters`, with the names `flowgate status` gives them.
pub const FLOW_COUNTERS: [(u32, &str); 5] = [
    (0, "flows_promoted"),
    (1, "flows_expired"),
    (2, "flows_evicted"),
    (3, "flows_established_table_full"),
    (4, "flows_rebound"),
];

/// `struct fg_flow_gauges`: what the last sweep found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowGauges {
    /// Entries in `fg_flows_est`.
    pub established: u64,
    /// Entries in `fg_flows`.
    pub embryonic: u64,
    /// Sweeps run.
    pub sweeps: u64,
    /// When the last one ran (monotonic ns).
    pub last_sweep_ns: u64,
}

/// `struct fg_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Policy generation.
    pub generation: u64,
    /// Set of NodePort destinations.
    pub nodeport_set: u32,
    /// Padding.
    pub pad0: u32,
    /// IPv4 masquerade source (mapped).
    pub snat_v4: Addr,
    /// IPv6 masquerade source.
    pub snat_v6: Addr,
    /// Whether `snat_v4` is set.
    pub has_snat_v4: u8,
    /// Whether `snat_v6` is set.
    pub has_snat_v6: u8,
    /// Padding.
    pub pad: [u8; 6],
}

/// `struct fg_port`: an endpoint's host-side interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Port {
    /// The switch policy's port id.
    pub port_id: u32,
    /// `enum fg_ingress`.
    pub ingress: u8,
    /// Whether `mac` is set.
    pub has_mac: u8,
    /// The pod interface's MAC.
    pub mac: [u8; 6],
}

/// `struct fg_endpoint_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// The endpoint's port id.
    pub port_id: u32,
    /// One of its addresses.
    pub addr: Addr,
}

/// `FG_ANY_ENDPOINT_PORT`: the port id under which `fg_endpoint_addrs` lists every local
/// endpoint's addresses (what may not arrive from the network as a source).
pub const ANY_ENDPOINT_PORT: u32 = u32::MAX;

/// `FG_NO_ACL`: an endpoint direction no ACL applies to.
pub const NO_ACL: u32 = u32::MAX;

/// `struct fg_acl_endpoint`: an endpoint address's ACL tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AclEndpoint {
    /// Egress table id, or [`NO_ACL`].
    pub egress: u32,
    /// Ingress table id, or [`NO_ACL`].
    pub ingress: u32,
}

/// `struct fg_acl_port_key` without its `prefixlen` (the data of an LPM key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclPortData {
    /// Table id.
    pub table: u32,
    /// Address class.
    pub class: u32,
    /// IP protocol.
    pub proto: u8,
    /// Destination port, network order.
    pub port: [u8; 2],
    /// Padding.
    pub pad: u8,
}

/// `struct fg_acl_verdict`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AclVerdict {
    /// Index of the deciding rule in the layer.
    pub rule: u32,
    /// `enum fg_action` (ALLOW).
    pub action: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// `enum fg_rule_list_kind`: which kind of rule list a rule counter is about.
pub mod rule_list {
    /// `fg_lb_dest`.
    pub const LB_DEST: u8 = 1;
    /// `fg_lb_nodeport`.
    pub const LB_NODEPORT: u8 = 2;
    /// `fg_groups` (id: slot).
    pub const GROUP: u8 = 3;
    /// An ACL table (id: table).
    pub const ACL: u8 = 4;
}

/// `struct fg_rule_hit_key`: a rule, by its list and its index in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleHitKey {
    /// [`rule_list`].
    pub kind: u8,
    /// IP protocol (LB lists).
    pub proto: u8,
    /// Port, network order (LB lists).
    pub port: u16,
    /// The rule's index in its list.
    pub index: u32,
    /// Group slot or ACL table.
    pub id: u32,
    /// Destination (`fg_lb_dest`).
    pub addr: Addr,
}

/// `struct fg_frag_key`: a fragmented datagram (`fg_fragments`, written by the programs only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// IP identification (IPv4's 16 bits or IPv6's 32), network order.
    pub id: u32,
    /// IP protocol.
    pub proto: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// `struct fg_last`: the outcome of the last packet on this CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Last {
    /// `enum fg_verdict`.
    pub verdict: u8,
    /// Drop reason.
    pub reason: u8,
    /// Decided by the flow table.
    pub cached: u8,
    /// Padding.
    pub pad: [u8; 5],
    /// Unused (backend index of the last decision).
    pub backend_index: u32,
    /// Unused (backend set of the last decision).
    pub backend_set: u32,
}

/// `enum fg_verdict`.
pub mod verdict {
    /// Allowed.
    pub const ALLOW: u8 = 0;
    /// Dropped.
    pub const DROP: u8 = 1;
    /// Rejected.
    pub const REJECT: u8 = 2;
}

/// Counter index of flow-table hits (`FG_COUNTER_FLOW_HIT`).
pub const COUNTER_FLOW_HIT: u32 = 16;
/// Counter index of first packets (`FG_COUNTER_FIRST_PACKET`).
pub const COUNTER_FIRST_PACKET: u32 = 17;
/// Counter index of allowed packets handed to a pod on the node directly, past the node's IP
/// stack (`FG_COUNTER_DELIVERED`).
pub const COUNTER_DELIVERED: u32 = 18;

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: the type is `#[repr(C)]`, made only of integers and arrays of integers, with all
        // padding spelled out as fields, so every bit pattern is valid and there are no holes.
        #[allow(unsafe_code)]
        unsafe impl aya::Pod for $t {}
    )*};
}
pod!(
    FragKey,
    RuleHitKey,
    AclEndpoint,
    AclPortData,
    AclVerdict,
    Addr,
    Rule,
    RuleList,
    LbKey,
    PortKey,
    SetKey,
    SetData,
    BackendSet,
    BackendKey,
    Backend,
    MemberKey,
    FlowKey,
    Flow,
    Config,
    Last,
    Port,
    EndpointKey,
    NatPoolKey,
    NatPool,
    FlowGauges
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes as clang computes them for `bpf/lib/maps.h` (x86-64 and BPF agree: natural alignment).
    #[test]
    fn layouts_match_the_c_header() {
        assert_eq!(std::mem::size_of::<Addr>(), 16);
        assert_eq!(std::mem::size_of::<Rule>(), 20);
        assert_eq!(std::mem::size_of::<RuleList>(), 8 + 20 * MAX_RULES);
        assert_eq!(std::mem::size_of::<LbKey>(), 20);
        assert_eq!(std::mem::size_of::<PortKey>(), 4);
        assert_eq!(std::mem::size_of::<SetKey>(), 24);
        assert_eq!(std::mem::size_of::<BackendKey>(), 8);
        assert_eq!(std::mem::size_of::<Backend>(), 20);
        assert_eq!(std::mem::size_of::<MemberKey>(), 24);
        assert_eq!(std::mem::size_of::<FlowKey>(), 40);
        assert_eq!(std::mem::size_of::<Flow>(), 56);
        assert_eq!(std::mem::size_of::<Config>(), 56);
        assert_eq!(std::mem::size_of::<Last>(), 16);
        assert_eq!(std::mem::size_of::<Port>(), 12);
        assert_eq!(std::mem::size_of::<EndpointKey>(), 20);
        assert_eq!(std::mem::size_of::<FragKey>(), 40);
        assert_eq!(std::mem::size_of::<AclEndpoint>(), 8);
        assert_eq!(std::mem::size_of::<RuleHitKey>(), 28);
        assert_eq!(std::mem::size_of::<AclPortData>() + 4, 16);
        assert_eq!(std::mem::size_of::<AclVerdict>(), 8);
        assert_eq!(std::mem::size_of::<NatPoolKey>(), 36);
        assert_eq!(std::mem::size_of::<NatPool>(), 8 * NAT_WORDS + 8);
        assert_eq!(std::mem::size_of::<FlowGauges>(), 32);
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["10.0.1.5", "2001:db8::1", "::1"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(Addr::from_ip(ip).to_ip(), ip);
        }
        let v4 = Addr::from_ip("1.2.3.4".parse().unwrap());
        assert_eq!(v4.w[3].to_ne_bytes(), [1, 2, 3, 4]);
    }
}
