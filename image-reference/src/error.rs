//! Everything that can be wrong with an image reference or a digest.

use thiserror::Error;

/// The condition reason every variant maps to: an operator puts it into a
/// `Stalled` condition together with the `Display` text.
pub const INVALID_IMAGE_REFERENCE: &str = "InvalidImageReference";

/// Why a reference, a repository name, a tag or a digest was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    EmptyReference,

    #[error("image reference is {length} characters long; at most {max} are allowed")]
    ReferenceTooLong { length: usize, max: usize },

    #[error("image reference {input:?} contains {what}; only printable ASCII is allowed")]
    ReferenceCharacters { input: String, what: &'static str },

    #[error("image reference {input:?} is malformed: {problem}")]
    MalformedReference { input: String, problem: String },

    #[error("registry {registry:?} is not a valid host[:port]: {problem}")]
    InvalidRegistry { registry: String, problem: String },

    #[error("repository name {repository:?} must be lowercase")]
    UppercaseRepository { repository: String },

    #[error("repository name {repository:?} is invalid: {problem}")]
    InvalidRepository { repository: String, problem: String },

    #[error(
        "repository name {name:?} is {length} characters long; at most 255 are allowed (registry included)"
    )]
    NameTooLong { name: String, length: usize },

    #[error("tag {tag:?} is invalid: {problem}")]
    InvalidTag { tag: String, problem: String },

    #[error("digest {digest:?} is invalid: {problem}")]
    InvalidDigest { digest: String, problem: String },
}

impl ReferenceError {
    /// One CamelCase word for a condition's `reason`: the same for every
    /// variant, the message says which part is wrong.
    pub fn reason(&self) -> &'static str {
        INVALID_IMAGE_REFERENCE
    }
}

/// The crate's result type.
pub type Result<T, E = ReferenceError> = std::result::Result<T, E>;
