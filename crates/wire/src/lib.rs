//! Zero-copy views of the packet formats flowgate's switch reads and rewrites.
//!
//! In the style of smoltcp's `wire` module: each protocol has a
//! `Packet<T: AsRef<[u8]>>` view over a buffer and a small `Repr` to parse
//! and emit its header. Nothing is copied or allocated while parsing.
//!
//! # The contract
//!
//! - `Packet::new_checked(buffer)` checks every length the accessors rely on;
//!   after it succeeds, **no accessor can panic**. `Packet::new_unchecked`
//!   skips the checks and its accessors panic on a buffer that is too short.
//! - `Repr::parse` re-checks, so it never panics either. It reads structure
//!   only: checksums are verified with `Packet::verify_checksum`.
//! - `Repr::emit` writes a header into a buffer of at least
//!   `Repr::buffer_len()` bytes (and panics on a shorter one). Upper layers
//!   leave their checksum zero: write the payload, then call
//!   `Packet::fill_checksum`.
//! - Every failure on untrusted input is an [`Error`]; the crate has no
//!   `unsafe` and is fuzzed (`fuzz/fuzz_targets/packet.rs`).
//!
//! # Public API
//!
//! | item | what it is |
//! | --- | --- |
//! | [`ethernet`], [`vlan`] | Ethernet II header, [`ethernet::EtherType`], [`ethernet::Address`]; 802.1Q/802.1ad tag |
//! | [`ipv4`] | header with options, checksum, fragment fields; [`ipv4::Packet::new_checked_header`] for quoted packets |
//! | [`ipv6`] | fixed header; [`ipv6::Packet::upper_layer`] walks extension headers (bounded) |
//! | [`tcp`], [`udp`], [`sctp`] | ports, [`tcp::Flags`], checksums with pseudo-header ([`IpPair`]); SCTP CRC32c |
//! | [`icmpv4`], [`icmpv6`] | type/code/checksum, echo id/seq, the invoking packet of errors |
//! | [`checksum`] | `internet`, `sum`, `combine`, `pseudo_header_v4/v6`, RFC 1624 `update_u16/u32/bytes/ip_addr`, `crc32c` |
//! | [`Protocol`], [`IpPair`] | IP protocol numbers; a same-family address pair |
//! | [`parse_flow_key`], [`parse_ip_flow_key`], [`parse_embedded_flow_key`] → [`FlowKey`] | 5-tuple and offsets of a frame, an IP packet, or the packet quoted in an ICMP error |
//! | [`build_frame`]`(&`[`FrameSpec`]`) -> Vec<u8>` with [`L4Spec`] | complete, checksum-correct frames for tests |
//! | [`Error`], [`Result`] | `Truncated`, `Malformed { what }`, `Unsupported { what }` |
//!
//! ```
//! use flowgate_wire::{build_frame, parse_flow_key, tcp, FrameSpec, IpPair, L4Spec, Protocol};
//!
//! let ips = IpPair::V4 { src: [10, 244, 1, 5].into(), dst: [10, 96, 0, 10].into() };
//! let frame = build_frame(&FrameSpec::new(ips, L4Spec::tcp(40000, 80, tcp::Flags::SYN)));
//! let key = parse_flow_key(&frame)?;
//! assert_eq!((key.protocol, key.src_port, key.dst_port), (Protocol::Tcp, 40000, 80));
//! assert_eq!((key.l3_offset, key.l4_offset), (14, 34));
//! # Ok::<(), flowgate_wire::Error>(())
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

#[macro_use]
mod macros;
mod error;
mod field;
mod flow;
mod frame;

pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod sctp;
pub mod tcp;
pub mod udp;
pub mod vlan;

pub use error::{Error, Result};
pub use flow::{parse_embedded_flow_key, parse_flow_key, parse_ip_flow_key, FlowKey, MAX_VLAN_TAGS};
pub use frame::{build_frame, FrameSpec, L4Spec};
pub use ip::{IpPair, Protocol};
