//! Nothing panics on truncated, malformed or random input.
//!
//! Every check runs [`exercise::exercise`], which drives every parser,
//! checked constructor, accessor, setter and `Repr::parse` and asserts the
//! invariants that hold for any input. The fuzz target runs the same code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod exercise;
mod vectors;

use exercise::exercise;
use flowgate_wire::{parse_flow_key, Error};
use vectors::ALL;

#[test]
fn every_prefix_of_every_golden_frame_errors_cleanly() {
    for (name, frame) in ALL {
        for len in 0..frame.len() {
            // Every golden IP packet ends exactly at the end of its frame, so
            // any shorter prefix is missing bytes some length field promised.
            assert_eq!(parse_flow_key(&frame[..len]), Err(Error::Truncated), "{name}[..{len}]");
        }
    }
}

#[test]
fn every_slice_of_every_golden_frame_parses_or_errors() {
    // All [start..end] windows: each protocol's header sits at some start,
    // so this covers every prefix of every protocol's golden packet.
    for (_, frame) in ALL {
        for start in 0..=frame.len() {
            for end in start..=frame.len() {
                exercise(&frame[start..end]);
            }
        }
    }
}

/// xorshift64*: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Bytes that commonly steer a parser into a different branch.
const INTERESTING: [u8; 16] =
    [0x00, 0x01, 0x05, 0x06, 0x08, 0x11, 0x2b, 0x2c, 0x3a, 0x3c, 0x45, 0x4f, 0x60, 0x81, 0x84, 0xff];

#[test]
fn mutated_golden_frames_parse_or_error() {
    let mut rng = Rng(0x5eed_f10e_9a7e_0001);
    for _ in 0..20_000 {
        let (_, frame) = ALL[rng.below(ALL.len())];
        let mut bytes = frame.to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                0 => {
                    let at = rng.below(bytes.len().max(1));
                    if let Some(b) = bytes.get_mut(at) {
                        *b ^= 1 << rng.below(8);
                    }
                }
                1 => {
                    let at = rng.below(bytes.len().max(1));
                    if let Some(b) = bytes.get_mut(at) {
                        *b = INTERESTING[rng.below(INTERESTING.len())];
                    }
                }
                2 => {
                    let at = rng.below(bytes.len().max(1));
                    if let Some(b) = bytes.get_mut(at) {
                        *b = rng.byte();
                    }
                }
                3 => bytes.truncate(rng.below(bytes.len() + 1)),
                _ => {
                    for _ in 0..rng.below(64) {
                        bytes.push(rng.byte());
                    }
                }
            }
        }
        exercise(&bytes);
        // Also from the IP header on, as a bare packet or a quoted one.
        for start in [14, 18] {
            if let Some(tail) = bytes.get(start..) {
                exercise(tail);
            }
        }
    }
}

#[test]
fn random_bytes_parse_or_error() {
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    for _ in 0..20_000 {
        let len = rng.below(128);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Bias the version nibble so the IP parsers get past their first check.
        if let Some(first) = bytes.first_mut() {
            *first = [0x45, 0x46, 0x4f, 0x60, *first][rng.below(5)];
        }
        exercise(&bytes);
    }
}
