//! The one error type of node-exporter.

use std::path::PathBuf;

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
            Error::Usage(_) => "InvalidArguments",
            Error::SocketNotFound { .. } => "ContainerdSocketNotFound",
            Error::Connect { .. } => "ContainerdUnavailable",
            Error::Containerd { .. } => "ContainerdError",
            Error::ImageNotFound(_) => "ImageNotOnNode",
            Error::ContentMissing { .. } => "ContentMissing",
            Error::LayerUnrecoverable { .. } => "LayerUnrecoverable",
            Error::RebuildDenied { .. } => "RebuildDenied",
            Error::InvalidManifest { .. } => "InvalidManifest",
            Error::InvalidReference { .. } => "InvalidReference",
            Error::Push { .. } => "PushFailed",
            Error::Io { .. } => "IoError",
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
