//! Feeds arbitrary bytes to every parser of `flowgate-wire`: the flow-key
//! parsers, each protocol's `new_checked`, all accessors, setters and
//! `Repr::parse`, asserting the invariants that hold for any input.
//!
//! The driver is shared with the crate's robustness tests (which run it on
//! stable over golden, mutated and random inputs), so a crash found here
//! reproduces with `cargo test -p flowgate-wire --test robustness` once the
//! input is added there. Run with `cargo +nightly fuzz run packet`.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/wire/tests/exercise/mod.rs"]
mod exercise;

fuzz_target!(|data: &[u8]| {
    exercise::exercise(data);
});
