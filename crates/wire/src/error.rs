//! The one error type of this crate.

/// Why bytes could not be viewed or parsed as a packet.
///
/// Parsing never panics: every failure on untrusted input is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// packet truncated: the buffer is shorter than a header or length field requires
    #[error("packet truncated: the buffer is shorter than a header or length field requires")]
    Truncated,
    /// malformed packet: {what}
    #[error("malformed packet: {what}")]
    Malformed {
        /// Which field is inconsistent and how, e.g. "IPv4 IHL below 5".
        what: &'static str,
    },
    /// unsupported packet: {what}
    #[error("unsupported packet: {what}")]
    Unsupported {
        /// What this crate does not handle, e.g. "non-IP ethertype".
        what: &'static str,
    },
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T> = core::result::Result<T, Error>;
