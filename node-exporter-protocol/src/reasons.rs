//! The reasons node-exporter gives for a failed image or run (the
//! `reason` fields of the report), and how they group.

pub const INVALID_ARGUMENTS: &str = "InvalidArguments";
pub const INVALID_REFERENCE: &str = "InvalidReference";
pub const CONTAINERD_SOCKET_NOT_FOUND: &str = "ContainerdSocketNotFound";
pub const CONTAINERD_UNAVAILABLE: &str = "ContainerdUnavailable";
pub const CONTAINERD_ERROR: &str = "ContainerdError";
pub const IMAGE_NOT_ON_NODE: &str = "ImageNotOnNode";
pub const CONTENT_MISSING: &str = "ContentMissing";
pub const LAYER_UNRECOVERABLE: &str = "LayerUnrecoverable";
pub const REBUILD_DENIED: &str = "RebuildDenied";
pub const INVALID_MANIFEST: &str = "InvalidManifest";
pub const PUSH_FAILED: &str = "PushFailed";
pub const IO_ERROR: &str = "IoError";
/// An import's pull (from a registry or a peer node) failed: retrying may help.
pub const PULL_FAILED: &str = "PullFailed";
/// An import got content whose digest is not the one asked for (a peer
/// that holds only a rebuilt image): never recorded under the original.
pub const DIGEST_MISMATCH: &str = "DigestMismatch";
/// The process was asked to stop (SIGTERM) before it finished.
pub const TERMINATED: &str = "Terminated";

/// Failures that mean "this node does not (completely) hold the image":
/// another node may, so the operator asks elsewhere.
pub const NOT_ON_NODE: [&str; 4] = [
    IMAGE_NOT_ON_NODE,
    CONTENT_MISSING,
    LAYER_UNRECOVERABLE,
    REBUILD_DENIED,
];

/// Whether `reason` says the node does not hold the image.
pub fn is_not_on_node(reason: &str) -> bool {
    NOT_ON_NODE.contains(&reason)
}

/// Run failures that are the caller's fault (exit [`crate::exit::USAGE`]).
pub const USAGE: [&str; 2] = [INVALID_ARGUMENTS, INVALID_REFERENCE];

/// Run failures that mean no containerd here (exit
/// [`crate::exit::NO_CONTAINERD`]).
pub const NO_CONTAINERD: [&str; 2] = [CONTAINERD_SOCKET_NOT_FOUND, CONTAINERD_UNAVAILABLE];
