//! Types shared by IPv4 and IPv6: the upper-layer protocol number and the
//! address pair a pseudo-header checksum covers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checksum;
use crate::error::{Error, Result};

enum_with_unknown! {
    /// An IP protocol number (IPv4 "protocol", IPv6 "next header").
    ///
    /// IPv6 extension headers and every protocol without a name here are
    /// [`Protocol::Other`].
    pub enum Protocol(u8) {
        /// ICMP for IPv4 (1).
        Icmp = 1,
        /// TCP (6).
        Tcp = 6,
        /// UDP (17).
        Udp = 17,
        /// ICMP for IPv6 (58).
        Icmpv6 = 58,
        /// SCTP (132).
        Sctp = 132,
    }
    /// Any other protocol number.
    unknown Other
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::Sctp => f.write_str("sctp"),
            Protocol::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// Source and destination addresses of one IP family.
///
/// This is what a TCP, UDP or ICMPv6 checksum needs from the IP header (the
/// pseudo-header), and what [`crate::FrameSpec`] builds a header from. Having
/// one family per variant makes a mixed pair unrepresentable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpPair {
    /// An IPv4 source and destination.
    V4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
    },
    /// An IPv6 source and destination.
    V6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
    },
}

impl IpPair {
    /// Pairs two addresses.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if one is IPv4 and the other IPv6.
    pub fn new(src: IpAddr, dst: IpAddr) -> Result<Self> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Ok(IpPair::V4 { src, dst }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Ok(IpPair::V6 { src, dst }),
            _ => Err(Error::Malformed { what: "address pair mixes IPv4 and IPv6" }),
        }
    }

    /// The source address.
    pub fn src(&self) -> IpAddr {
        match *self {
            IpPair::V4 { src, .. } => src.into(),
            IpPair::V6 { src, .. } => src.into(),
        }
    }

    /// The destination address.
    pub fn dst(&self) -> IpAddr {
        match *self {
            IpPair::V4 { dst, .. } => dst.into(),
            IpPair::V6 { dst, .. } => dst.into(),
        }
    }

    /// Whether this is an IPv6 pair.
    pub fn is_ipv6(&self) -> bool {
        matches!(self, IpPair::V6 { .. })
    }

    /// The same pair with source and destination swapped.
    #[must_use]
    pub fn reversed(&self) -> Self {
        match *self {
            IpPair::V4 { src, dst } => IpPair::V4 { src: dst, dst: src },
            IpPair::V6 { src, dst } => IpPair::V6 { src: dst, dst: src },
        }
    }

    /// Sum of the pseudo-header for an upper-layer message of `length` bytes.
    ///
    /// See [`checksum::pseudo_header_v4`] and [`checksum::pseudo_header_v6`].
    pub fn pseudo_header(&self, protocol: Protocol, length: u32) -> u16 {
        match *self {
            IpPair::V4 { src, dst } => checksum::pseudo_header_v4(src, dst, protocol, length),
            IpPair::V6 { src, dst } => checksum::pseudo_header_v6(src, dst, protocol, length),
        }
    }

    /// The checksum of an upper-layer message whose own sum (with its
    /// checksum field zero) is `message_sum` and whose length is `length`.
    pub(crate) fn upper_layer_checksum(&self, protocol: Protocol, length: usize, message_sum: u16) -> u16 {
        let pseudo = self.pseudo_header(protocol, crate::field::saturating_u32(length));
        !checksum::combine(&[pseudo, message_sum])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn protocol_round_trips() {
        for n in 0..=u8::MAX {
            assert_eq!(u8::from(Protocol::from(n)), n);
        }
        assert_eq!(Protocol::from(6), Protocol::Tcp);
        assert_eq!(Protocol::from(47), Protocol::Other(47));
        assert_eq!(Protocol::Sctp.to_string(), "sctp");
    }

    #[test]
    fn pair_rejects_mixed_families() {
        let v4: IpAddr = Ipv4Addr::LOCALHOST.into();
        let v6: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert!(IpPair::new(v4, v6).is_err());
        let pair = IpPair::new(v6, v6).unwrap();
        assert!(pair.is_ipv6());
        assert_eq!(pair.reversed().src(), v6);
    }
}
