//! Internet checksum (RFC 1071), incremental updates (RFC 1624), the IPv4 and
//! IPv6 pseudo-headers, and CRC32c for SCTP.
//!
//! Conventions: a *sum* is the folded 16-bit one's-complement sum of some data
//! (not complemented); a *checksum* is the complement of a sum, the value a
//! header carries. Data is summed as big-endian 16-bit words; an odd trailing
//! byte is padded with zero, as RFC 1071 says.
//!
//! The incremental helpers let a NAT rewrite an address or port and fix the
//! stored checksum without touching the payload:
//!
//! ```
//! use flowgate_wire::checksum;
//! let data = [0x45u8, 0x00, 0x12, 0x34, 0xab, 0xcd];
//! let before = checksum::internet(&data);
//! let after = checksum::update_u16(before, 0x1234, 0x4321);
//! assert_eq!(after, checksum::internet(&[0x45, 0x00, 0x43, 0x21, 0xab, 0xcd]));
//! ```
//!
//! Nothing here panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ip::Protocol;

/// Folds a wide accumulator of 16-bit words into a one's-complement sum.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves acc <= 0xffff, so the conversion is exact.
    u16::try_from(acc).unwrap_or(u16::MAX)
}

/// One's-complement sum of `data` as big-endian 16-bit words, folded to 16 bits.
///
/// An odd final byte counts as the high byte of a word whose low byte is zero.
/// The sum of empty data is 0.
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        if let [hi, lo] = word {
            acc += u64::from(u16::from_be_bytes([*hi, *lo]));
        }
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(acc)
}

/// One's-complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The Internet checksum of `data`: the complement of [`sum`].
///
/// To fill a header, compute this over the bytes with the checksum field set
/// to zero; data that includes a correct checksum yields 0.
pub fn internet(data: &[u8]) -> u16 {
    !sum(data)
}

/// Sum of the IPv4 pseudo-header (RFC 793 / RFC 768) for TCP, UDP and the like.
///
/// `length` is the upper-layer length (header plus payload). IPv4 carries it
/// in 16 bits; a larger value is summed as two words, which cannot occur for
/// a packet that fits in IPv4.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: Protocol, length: u32) -> u16 {
    let mut acc = u64::from(sum(&src.octets())) + u64::from(sum(&dst.octets()));
    acc += u64::from(u8::from(protocol));
    acc += u64::from(length >> 16) + u64::from(length & 0xffff);
    fold(acc)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1) for TCP, UDP and ICMPv6.
///
/// `next_header` is the upper-layer protocol (not an extension header) and
/// `length` the upper-layer length.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: Protocol, length: u32) -> u16 {
    let mut acc = u64::from(sum(&src.octets())) + u64::from(sum(&dst.octets()));
    acc += u64::from(length >> 16) + u64::from(length & 0xffff);
    acc += u64::from(u8::from(next_header));
    fold(acc)
}

/// Updates `checksum` after a 16-bit word of the covered data changed from
/// `old` to `new` (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
///
/// The word must sit at an even offset of the checksummed data (true of every
/// port, identifier and address field this crate exposes). For UDP over IPv4,
/// a stored checksum of 0 means "none" and must be left alone, and a result
/// of 0 must be stored as `0xffff`; see [`crate::udp`].
pub fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    !combine(&[!checksum, !old, new])
}

/// Updates `checksum` after a 32-bit field changed from `old` to `new`.
///
/// Same contract as [`update_u16`].
pub fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    update_bytes(checksum, &old.to_be_bytes(), &new.to_be_bytes())
}

/// Updates `checksum` after covered bytes changed from `old` to `new`.
///
/// `old` and `new` are summed as words from their first byte, so each must
/// start at an even offset of the checksummed data. They may differ in length
/// (e.g. an IPv4 address replaced by an IPv6 one in a pseudo-header).
pub fn update_bytes(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    !combine(&[!checksum, !sum(old), sum(new)])
}

/// Updates `checksum` after an address it covers changed from `old` to `new`.
///
/// Use it for the IPv4 header checksum and for TCP, UDP and ICMPv6, whose
/// checksums cover the addresses through the pseudo-header. Same contract as
/// [`update_u16`].
pub fn update_ip_addr(checksum: u16, old: IpAddr, new: IpAddr) -> u16 {
    !combine(&[!checksum, !addr_sum(old), addr_sum(new)])
}

fn addr_sum(addr: IpAddr) -> u16 {
    match addr {
        IpAddr::V4(a) => sum(&a.octets()),
        IpAddr::V6(a) => sum(&a.octets()),
    }
}

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78) lookup table, built at
/// compile time so the crate needs no CRC dependency.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Running CRC32c state, for checksumming data held in pieces.
///
/// `Crc32c::new().update(a).update(b).finish() == crc32c(ab)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crc32c(u32);

impl Crc32c {
    /// Starts a new CRC32c computation.
    pub const fn new() -> Self {
        Crc32c(!0)
    }

    /// Feeds `data` into the computation.
    #[must_use]
    pub fn update(self, data: &[u8]) -> Self {
        let mut crc = self.0;
        for &byte in data {
            crc = CRC32C_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8);
        }
        Crc32c(crc)
    }

    /// The CRC32c of everything fed so far.
    pub const fn finish(self) -> u32 {
        !self.0
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

/// CRC32c (RFC 3720 appendix B.4) of `data`, as SCTP uses it (RFC 9260 appendix A).
///
/// `crc32c(b"123456789") == 0xE306_9283`.
pub fn crc32c(data: &[u8]) -> u32 {
    Crc32c::new().update(data).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(internet(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn crc32c_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 B.4: 32 bytes of zeros, and of 0xff.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        assert_eq!(Crc32c::new().update(b"1234").update(b"56789").finish(), 0xE306_9283);
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 §4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn update_matches_recompute() {
        let mut data = [0u8; 24];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let before = internet(&data);
        let old = Ipv4Addr::new(data[4], data[5], data[6], data[7]);
        let new = Ipv4Addr::new(192, 0, 2, 200);
        data[4..8].copy_from_slice(&new.octets());
        assert_eq!(update_ip_addr(before, old.into(), new.into()), internet(&data));
    }
}
