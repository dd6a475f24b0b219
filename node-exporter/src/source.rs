//! containerd's content store as a [`ContentSource`] for the copy engine.

use std::collections::HashMap;

use bytes::Bytes;
use registry_transfer::{BlobStream, ContentSource, Descriptor, Digest, SourceErrorKind};

use crate::containerd::Containerd;
use crate::error::Error;
use crate::oci;

/// Serves one image out of a node's content store.
///
/// Blobs are streamed from containerd's `Content.Read` as they arrive, never
/// buffered whole. The only in-memory content is what node-exporter made
/// itself when rebuilding (a new manifest and config, a few KiB).
#[derive(Clone)]
pub struct ContainerdSource {
    containerd: Containerd,
    root: Descriptor,
    synthesized: HashMap<Digest, (Bytes, String)>,
}

impl ContainerdSource {
    /// A source whose top-level document is `root`, read from containerd.
    pub fn new(containerd: Containerd, root: Descriptor) -> ContainerdSource {
        ContainerdSource {
            containerd,
            root,
            synthesized: HashMap::new(),
        }
    }

    /// Adds a document that exists only in memory (a rebuilt manifest or
    /// config), served in place of the content store.
    pub fn with_document(mut self, descriptor: &Descriptor, bytes: Bytes) -> ContainerdSource {
        self.synthesized.insert(
            descriptor.digest.clone(),
            (bytes, descriptor.media_type.clone()),
        );
        self
    }

    /// Makes `root` the top-level document.
    pub fn with_root(mut self, root: Descriptor) -> ContainerdSource {
        self.root = root;
        self
    }

    pub fn root(&self) -> &Descriptor {
        &self.root
    }
}

impl ContentSource for ContainerdSource {
    type Error = Error;

    async fn resolve(&self) -> Result<Descriptor, Error> {
        Ok(self.root.clone())
    }

    async fn fetch_manifest(&self, digest: &Digest) -> Result<(Bytes, String), Error> {
        if let Some((bytes, media_type)) = self.synthesized.get(digest) {
            return Ok((bytes.clone(), media_type.clone()));
        }
        let bytes = self
            .containerd
            .read_small(digest.as_str(), oci::MAX_MANIFEST_BYTES)
            .await?;
        // containerd does not store media types with content: the root's is
        // known from the image record; children declare theirs (or their
        // shape tells).
        let media_type = if *digest == self.root.digest {
            self.root.media_type.clone()
        } else {
            oci::sniff_media_type(&bytes).ok_or_else(|| Error::InvalidManifest {
                digest: digest.to_string(),
                reason: "cannot tell the media type".to_owned(),
            })?
        };
        Ok((bytes, media_type))
    }

    async fn open_blob(&self, descriptor: &Descriptor) -> Result<BlobStream<Error>, Error> {
        if let Some((bytes, _)) = self.synthesized.get(&descriptor.digest) {
            let chunk: Result<Bytes, Error> = Ok(bytes.clone());
            return Ok(Box::pin(futures::stream::iter([chunk])));
        }
        let stream = self
            .containerd
            .read_stream(descriptor.digest.as_str())
            .await?;
        Ok(Box::pin(stream))
    }

    async fn has_blob(&self, descriptor: &Descriptor) -> Result<bool, Error> {
        if self.synthesized.contains_key(&descriptor.digest) {
            return Ok(true);
        }
        self.containerd.has(descriptor.digest.as_str()).await
    }

    async fn open_blob_at(
        &self,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<BlobStream<Error>, Error> {
        if let Some((bytes, _)) = self.synthesized.get(&descriptor.digest) {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let chunk: Result<Bytes, Error> = Ok(bytes.slice(start..));
            return Ok(Box::pin(futures::stream::iter([chunk])));
        }
        // containerd reads at an offset itself: no bytes re-sent to skip.
        let stream = self
            .containerd
            .read_stream_at(descriptor.digest.as_str(), offset)
            .await?;
        Ok(Box::pin(stream))
    }

    fn known_digest(&self) -> Option<Digest> {
        Some(self.root.digest.clone())
    }

    fn classify_error(error: &Error) -> SourceErrorKind {
        match error {
            Error::ContentMissing { .. } | Error::ImageNotFound(_) => SourceErrorKind::NotFound,
            Error::Containerd { status, .. }
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
                ) =>
            {
                SourceErrorKind::Transient
            }
            _ => SourceErrorKind::Other,
        }
    }
}
