//! The one place node-exporter hands an image to the shared copy engine.

use registry_transfer::{
    CopyRequest, Digest, ImageReference, RegistrySettings, RepositoryRef, Transfer, TransferConfig,
    TransferError,
};

use crate::error::Error;
use crate::source::ContainerdSource;

/// What the engine did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The digest of the top-level manifest or index now in the registry.
    pub digest: Digest,
    /// The tag now pointing at it (the engine's deterministic tag when the
    /// target named none).
    pub tag: String,
    /// Blob bytes uploaded (blobs the registry already had not counted).
    pub bytes_uploaded: u64,
    pub blobs_copied: u32,
    pub blobs_skipped: u32,
}

/// The copy engine, configured once per run.
pub struct Pusher {
    engine: Transfer,
    allow_tag_move: bool,
}

impl Pusher {
    /// `settings` says how to reach registries (see [`crate::registry`]).
    pub fn new(
        settings: RegistrySettings,
        allow_tag_move: bool,
        parallel_blobs: usize,
    ) -> Result<Pusher, Error> {
        // A node Job shares the node with workloads: fewer parallel streams
        // than the operator's default. Memory grows with this, not with
        // image size.
        let parallel_blobs = parallel_blobs.max(1);
        let config = TransferConfig {
            max_concurrent_requests: parallel_blobs,
            max_concurrent_per_registry: parallel_blobs,
            ..TransferConfig::default()
        };
        Ok(Pusher {
            engine: Transfer::new(config, settings),
            allow_tag_move,
        })
    }

    /// Pushes the image `source` resolves to, every blob streamed from the
    /// node and verified on the way by the engine. A target without a tag
    /// gets the engine's deterministic tag.
    pub async fn push(
        &self,
        source: &ContainerdSource,
        target: &ImageReference,
    ) -> Result<Pushed, Error> {
        let mut request =
            CopyRequest::new(RepositoryRef::of(target)).allowing_tag_move(self.allow_tag_move);
        if let Some(tag) = &target.tag {
            request = request.with_tag(tag.clone());
        }
        let report = self
            .engine
            .copy(source, &request)
            .await
            .map_err(|e| engine_error(e, target))?;
        Ok(Pushed {
            digest: report.digest,
            tag: report.tag,
            bytes_uploaded: report.bytes_copied,
            blobs_copied: report.blobs_copied,
            blobs_skipped: report.blobs_skipped + report.blobs_mounted,
        })
    }
}

/// Content vanishing from the node mid-copy means the node cannot supply
/// the image; everything else is a failed push.
fn engine_error(error: TransferError, target: &ImageReference) -> Error {
    match error {
        TransferError::SourceNotFound { what } => Error::ContentMissing { digest: what },
        other => Error::Push {
            target: target.to_string(),
            engine_reason: Some(other.reason().to_owned()),
            message: format!("{}: {other}", other.reason()),
        },
    }
}
