//! The one place node-exporter hands an image to the shared copy engine.

use std::path::PathBuf;

use registry_transfer::Digest;

use crate::error::Error;
use crate::reference::Reference;
use crate::source::ContainerdSource;

/// Where and how to push.
#[derive(Clone, Debug)]
pub struct PushTarget {
    /// Repository and optional tag; without a tag the image is pushed by
    /// digest only.
    pub reference: Reference,
    /// A mounted `.dockerconfigjson` with credentials for the target.
    pub docker_config: Option<PathBuf>,
    /// Talk plain HTTP to the target (test and in-cluster registries).
    pub plain_http: bool,
}

/// What the engine did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The digest of the top-level manifest or index now in the registry.
    pub digest: Digest,
    /// Bytes uploaded (blobs the registry already had are not counted).
    pub bytes_uploaded: u64,
}

/// Pushes the image `source` resolves to, with every blob streamed from the
/// node and verified on the way by the engine.
pub async fn push(source: &ContainerdSource, target: &PushTarget) -> Result<Pushed, Error> {
    let _ = source;
    Err(Error::Push {
        target: target.reference.to_string(),
        engine_reason: None,
        message: "registry-transfer does not expose a push API yet".to_owned(),
    })
}
