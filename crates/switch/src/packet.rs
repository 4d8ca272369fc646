//! The part of a packet the switch decides on: its 5-tuple.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// An IP protocol number (IANA), as it appears in the IPv4 protocol / IPv6 next-header field.
///
/// A newtype rather than an enum so that the model, the wire parsers and the kernel maps all carry
/// the same byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Proto(pub u8);

impl Proto {
    /// ICMP for IPv4.
    pub const ICMP: Proto = Proto(1);
    /// TCP.
    pub const TCP: Proto = Proto(6);
    /// UDP.
    pub const UDP: Proto = Proto(17);
    /// ICMP for IPv6.
    pub const ICMPV6: Proto = Proto(58);
    /// SCTP.
    pub const SCTP: Proto = Proto(132);

    /// Whether the protocol carries 16-bit source and destination ports at the start of its header.
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::TCP | Proto::UDP | Proto::SCTP)
    }

    /// Lower-case name as used by Kubernetes (upper-cased) and nftables: `tcp`, `udp`, `sctp`, ...
    pub fn name(self) -> &'static str {
        match self {
            Proto::TCP => "tcp",
            Proto::UDP => "udp",
            Proto::SCTP => "sctp",
            Proto::ICMP => "icmp",
            Proto::ICMPV6 => "icmpv6",
            _ => "ip",
        }
    }

    /// Parses `tcp`, `udp`, `sctp` (any case).
    pub fn from_name(name: &str) -> Option<Proto> {
        match name.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::TCP),
            "udp" => Some(Proto::UDP),
            "sctp" => Some(Proto::SCTP),
            "icmp" => Some(Proto::ICMP),
            "icmpv6" => Some(Proto::ICMPV6),
            _ => None,
        }
    }
}

impl fmt::Debug for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "ip" => write!(f, "proto{}", self.0),
            n => f.write_str(n),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The 5-tuple of a packet: what the flow table is keyed on and what rules match.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol.
    pub proto: Proto,
    /// Source port (0 for protocols without ports).
    pub sport: u16,
    /// Destination port (0 for protocols without ports).
    pub dport: u16,
}

impl FlowKey {
    /// Builds a key from two socket addresses.
    pub fn new(src: SocketAddr, dst: SocketAddr, proto: Proto) -> FlowKey {
        FlowKey { src: src.ip(), dst: dst.ip(), proto, sport: src.port(), dport: dst.port() }
    }

    /// The key of the other direction of the same connection.
    pub fn reversed(&self) -> FlowKey {
        FlowKey { src: self.dst, dst: self.src, proto: self.proto, sport: self.dport, dport: self.sport }
    }

    /// Source address and port.
    pub fn src_socket(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.sport)
    }

    /// Destination address and port.
    pub fn dst_socket(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.dport)
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} {}", self.src_socket(), self.dst_socket(), self.proto)
    }
}
