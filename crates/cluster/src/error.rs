//! Errors from loading manifests. Each names the file, the document (by index, counting from 0),
//! and for invalid objects the object and the field, so a person can go straight to the line.

use std::path::PathBuf;

/// Why a set of manifests could not be loaded. Nothing is loaded when any error occurs.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML or JSON.
    #[error("{path}: document {document}: not valid YAML/JSON: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file, from 0.
        document: usize,
        /// What the parser said.
        message: String,
    },
    /// An object is not what the Kubernetes API (or the configuration kind) would accept.
    #[error("{path}: document {document}: {object}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file, from 0.
        document: usize,
        /// The object, as `Kind namespace/name` (or `Kind` when it has no name yet).
        object: String,
        /// The field, in Kubernetes' notation (`spec.ports[0].port`).
        field: String,
        /// What is wrong, and what is expected.
        message: String,
    },
    /// The same object appears twice.
    #[error("{path}: document {document}: {object}: defined twice (first in {first})")]
    Duplicate {
        /// The file of the second definition.
        path: PathBuf,
        /// Index of the document in the file, from 0.
        document: usize,
        /// The object.
        object: String,
        /// Where it was first defined (`file: document N`).
        first: String,
    },
}

/// A problem with one field of an object, before the file and document are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, in Kubernetes' notation.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}
