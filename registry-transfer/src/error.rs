//! The one error type of the crate, and what a controller makes of it.
//!
//! Messages name registries, repositories and digests, never credentials,
//! tokens or upload URLs (their query strings carry signed state).

use std::time::Duration;

use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid reference {0}")]
    InvalidReference(String),

    #[error("invalid configuration: {0}")]
    InvalidConfiguration(String),

    #[error("{what} not found in the source")]
    SourceNotFound { what: String },

    #[error("source unavailable: {detail}")]
    SourceUnavailable { detail: String, transient: bool },

    #[error("registry {registry} refused our credentials (401)")]
    Unauthorized { registry: String },

    #[error("registry {registry} denied access (403)")]
    Forbidden { registry: String },

    #[error("content {expected} arrived with digest {actual}")]
    DigestMismatch { expected: Digest, actual: String },

    #[error("content {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },

    #[error(
        "tag {tag} in {repository} points to {existing}, not {wanted}, and moving tags is not allowed"
    )]
    TagConflict {
        repository: String,
        tag: String,
        existing: String,
        wanted: Digest,
    },

    #[error("registry {registry} unavailable: {detail}")]
    RegistryUnavailable { registry: String, detail: String },

    #[error("registry {registry} keeps answering 429 Too Many Requests")]
    RateLimited {
        registry: String,
        retry_after: Option<Duration>,
    },

    #[error("transfer from or to {registry} interrupted: {detail}")]
    Interrupted { registry: String, detail: String },

    #[error("TLS with {registry} failed: {detail}")]
    Tls { registry: String, detail: String },

    #[error("registry {registry} rejected {operation}: {status} {detail}")]
    Rejected {
        registry: String,
        operation: String,
        status: u16,
        detail: String,
    },

    #[error("unsupported manifest media type {media_type}")]
    UnsupportedMediaType { media_type: String },

    #[error("manifest {digest} is invalid: {detail}")]
    InvalidManifest { digest: String, detail: String },

    #[error("no manifest in index {digest} matches the requested platforms")]
    NoMatchingPlatform { digest: Digest },

    #[error("registry {registry} answered unexpectedly: {detail}")]
    Protocol { registry: String, detail: String },

    /// A body longer than the limit Lifeboat reads for that kind of
    /// answer; nothing beyond the limit was buffered.
    #[error("registry {registry} sent a {what} larger than the {limit}-byte limit")]
    ResponseTooLarge {
        registry: String,
        what: &'static str,
        limit: u64,
    },

    /// An image whose indexes nest deeper, or hold more manifests in
    /// total, than a real image does.
    #[error("image {digest} from {registry} is too complex: {detail}")]
    ImageTooComplex {
        registry: String,
        digest: String,
        detail: String,
    },

    /// More referrers (signatures, SBOMs, attestations) than an image
    /// really has, or referrers of referrers nested deeper: the copy stops
    /// before fetching them. A policy can opt out of referrers, or keep
    /// only some artifact types.
    #[error("referrers of {subject}: {detail}")]
    TooManyReferrers { subject: Digest, detail: String },

    /// A registry that sends so slowly that the copy gives up rather than
    /// hold its slots.
    #[error("registry {registry} is too slow: {detail}")]
    TooSlow { registry: String, detail: String },

    /// A copy ran past its overall deadline (a base plus the image's size
    /// at the slowest throughput the operator accepts) and was cancelled,
    /// so one slow registry cannot hold a copy slot for hours.
    #[error(
        "copy to {target} cancelled after {elapsed_seconds} s: its deadline was {deadline_seconds} s for {bytes_known} bytes known so far"
    )]
    CopyDeadlineExceeded {
        target: String,
        deadline_seconds: u64,
        elapsed_seconds: u64,
        bytes_known: u64,
    },

    /// A registry asked for credentials to be sent somewhere they do not
    /// belong (another host, or plain HTTP), and Lifeboat refused.
    #[error("registry {registry} asked for credentials to be sent to {destination}: refused")]
    CredentialsRefused {
        registry: String,
        destination: String,
    },
}

impl TransferError {
    /// A CamelCase reason for Kubernetes conditions and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TransferError::InvalidReference(_) => "InvalidReference",
            TransferError::InvalidConfiguration(_) => "InvalidConfiguration",
            TransferError::SourceNotFound { .. } => "SourceNotFound",
            TransferError::SourceUnavailable { .. } => "SourceUnavailable",
            TransferError::Unauthorized { .. } => "Unauthorized",
            TransferError::Forbidden { .. } => "Forbidden",
            TransferError::DigestMismatch { .. } => "DigestMismatch",
            TransferError::SizeMismatch { .. } => "SizeMismatch",
            TransferError::TagConflict { .. } => "TagConflict",
            TransferError::RegistryUnavailable { .. } => "RegistryUnavailable",
            TransferError::RateLimited { .. } => "RateLimited",
            TransferError::Interrupted { .. } => "TransferInterrupted",
            TransferError::Tls { .. } => "TlsError",
            TransferError::Rejected { .. } => "RegistryRejected",
            TransferError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            TransferError::InvalidManifest { .. } => "InvalidManifest",
            TransferError::NoMatchingPlatform { .. } => "NoMatchingPlatform",
            TransferError::Protocol { .. } => "RegistryProtocolError",
            TransferError::ResponseTooLarge { .. } => "RegistryResponseTooLarge",
            TransferError::ImageTooComplex { .. } => "ImageTooComplex",
            TransferError::TooManyReferrers { .. } => "TooManyReferrers",
            TransferError::TooSlow { .. } => "RegistryTooSlow",
            TransferError::CopyDeadlineExceeded { .. } => "CopyDeadlineExceeded",
            TransferError::CredentialsRefused { .. } => "CredentialsRefused",
        }
    }

    /// Whether trying again later can succeed. Authentication, missing
    /// content and wrong bytes are never transient: retrying them only hides
    /// the problem and loads the registry.
    pub fn is_transient(&self) -> bool {
        match self {
            TransferError::RegistryUnavailable { .. }
            | TransferError::RateLimited { .. }
            | TransferError::Interrupted { .. } => true,
            TransferError::SourceUnavailable { transient, .. } => *transient,
            _ => false,
        }
    }

    /// A low-cardinality metric label: the registry's fault classes apart,
    /// so a dashboard tells a hostile or broken registry from an outage.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TransferError::ResponseTooLarge { .. }
            | TransferError::ImageTooComplex { .. }
            | TransferError::TooManyReferrers { .. }
            | TransferError::TooSlow { .. } => "registry_limit",
            TransferError::CopyDeadlineExceeded { .. } => "copy_deadline",
            TransferError::CredentialsRefused { .. } => "registry_credentials_refused",
            _ => "registry",
        }
    }

    /// How long the registry asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TransferError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_camel_case_and_transience_is_conservative() {
        let digest = Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
        let mismatch = TransferError::DigestMismatch {
            expected: digest,
            actual: "sha256:x".into(),
        };
        assert_eq!(mismatch.reason(), "DigestMismatch");
        assert!(!mismatch.is_transient());
        let unauthorized = TransferError::Unauthorized {
            registry: "r".into(),
        };
        assert!(!unauthorized.is_transient());
        let limited = TransferError::RateLimited {
            registry: "r".into(),
            retry_after: Some(Duration::from_secs(2)),
        };
        assert!(limited.is_transient());
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(2)));
        for reason in [mismatch.reason(), unauthorized.reason(), limited.reason()] {
            assert!(reason.chars().next().unwrap().is_ascii_uppercase());
            assert!(reason.chars().all(|c| c.is_ascii_alphanumeric()));
        }
    }
}
