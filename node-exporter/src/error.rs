//! The one error type of node-exporter.

use std::path::PathBuf;

use lifeboat_node_protocol::reasons;

/// Everything that can go wrong while reading a node's containerd or pushing
/// out of it. Each variant maps to a CamelCase [`reason`](Self::reason) that
/// ends up in the termination message, so the operator can act on it without
/// parsing prose.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("no containerd socket found (tried {})", display_paths(.tried))]
    SocketNotFound { tried: Vec<PathBuf> },

    #[error("cannot connect to containerd at {}: {source}", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },

    #[error("containerd {operation} failed: {} ({:?})", .status.message(), .status.code())]
    Containerd {
        operation: &'static str,
        #[source]
        status: tonic::Status,
    },

    #[error("image {0} is not on this node")]
    ImageNotFound(String),

    #[error("blob {digest} is not in the content store")]
    ContentMissing { digest: String },

    #[error("layer {digest} is missing and cannot be rebuilt: {reason}")]
    LayerUnrecoverable { digest: String, reason: String },

    #[error("layer {digest} is missing and rebuilding was not allowed")]
    RebuildDenied { digest: String },

    #[error("invalid manifest or config {digest}: {reason}")]
    InvalidManifest { digest: String, reason: String },

    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("push to {target} failed: {message}")]
    Push {
        target: String,
        /// The engine's own reason, kept so the report can say more than
        /// "PushFailed" when the engine knows more.
        engine_reason: Option<String>,
        message: String,
    },

    #[error("pull of {what} failed: {message}")]
    Pull { what: String, message: String },

    #[error(
        "{requested} was asked for but the source holds {received}: not recorded under {requested}"
    )]
    DigestMismatch { requested: String, received: String },

    #[error("stopped by {0} before finishing")]
    Terminated(&'static str),

    #[error("{context} {}: {source}", .path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// CamelCase machine-readable cause, stable across releases.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Usage(_) => reasons::INVALID_ARGUMENTS,
            Error::SocketNotFound { .. } => reasons::CONTAINERD_SOCKET_NOT_FOUND,
            Error::Connect { .. } => reasons::CONTAINERD_UNAVAILABLE,
            Error::Containerd { .. } => reasons::CONTAINERD_ERROR,
            Error::ImageNotFound(_) => reasons::IMAGE_NOT_ON_NODE,
            Error::ContentMissing { .. } => reasons::CONTENT_MISSING,
            Error::LayerUnrecoverable { .. } => reasons::LAYER_UNRECOVERABLE,
            Error::RebuildDenied { .. } => reasons::REBUILD_DENIED,
            Error::InvalidManifest { .. } => reasons::INVALID_MANIFEST,
            Error::InvalidReference { .. } => reasons::INVALID_REFERENCE,
            Error::Push { .. } => reasons::PUSH_FAILED,
            Error::Io { .. } => reasons::IO_ERROR,
            Error::Pull { .. } => reasons::PULL_FAILED,
            Error::Terminated(_) => reasons::TERMINATED,
            Error::DigestMismatch { .. } => reasons::DIGEST_MISMATCH,
        }
    }

    pub(crate) fn containerd(operation: &'static str) -> impl FnOnce(tonic::Status) -> Error {
        move |status| Error::Containerd { operation, status }
    }

    /// Whether the error means this node cannot supply the image (another
    /// node might), as opposed to a failure that could go away on retry.
    pub fn is_not_on_node(&self) -> bool {
        matches!(
            self,
            Error::ImageNotFound(_)
                | Error::ContentMissing { .. }
                | Error::LayerUnrecoverable { .. }
                | Error::RebuildDenied { .. }
        )
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_on_node_errors_are_the_protocols_not_on_node_reasons() {
        let errors = [
            Error::ImageNotFound("x".into()),
            Error::ContentMissing { digest: "d".into() },
            Error::Usage("x".into()),
            Error::SocketNotFound { tried: vec![] },
        ];
        for error in errors {
            assert_eq!(
                error.is_not_on_node(),
                reasons::is_not_on_node(error.reason()),
                "{error:?}"
            );
        }
    }

    #[test]
    fn reasons_are_camel_case() {
        let errors = [
            Error::Usage("x".into()),
            Error::ImageNotFound("x".into()),
            Error::ContentMissing { digest: "d".into() },
            Error::Push {
                target: "t".into(),
                engine_reason: None,
                message: "m".into(),
            },
        ];
        for error in errors {
            let reason = error.reason();
            assert!(
                reason
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase())
            );
            assert!(
                reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
        }
    }
}
