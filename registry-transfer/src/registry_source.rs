//! A registry repository as a [`ContentSource`].

use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::client::{RegistryClient, pull_scope};
use crate::error::TransferError;
use crate::manifest::{sha256_digest, verify};
use crate::reference::{DOCKER_HUB_API_HOST, ImageReference, RepositoryRef};
use crate::source::SourceErrorKind;
use crate::{BlobStream, ContentSource, Descriptor, Digest};

/// An image in a registry, opened by tag or digest. Made by
/// [`Transfer::registry_source`](crate::Transfer::registry_source), so it
/// shares the engine's connections, credentials and limits.
pub struct RegistrySource {
    client: Arc<RegistryClient>,
    image: ImageReference,
    /// The top-level manifest as fetched by `resolve`, so that the copy's
    /// `fetch_manifest` right after does not ask again.
    resolved: Mutex<Option<(Digest, Bytes, String)>>,
}

impl fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySource")
            .field("image", &self.image.to_string())
            .finish()
    }
}

impl RegistrySource {
    pub(crate) fn new(client: Arc<RegistryClient>, image: ImageReference) -> RegistrySource {
        RegistrySource {
            client,
            image,
            resolved: Mutex::new(None),
        }
    }

    pub fn image(&self) -> &ImageReference {
        &self.image
    }

    fn repository(&self) -> &str {
        &self.image.repository
    }

    fn scopes(&self) -> [String; 1] {
        [pull_scope(self.repository())]
    }

    fn reference(&self) -> String {
        match (&self.image.digest, &self.image.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl RegistrySource {
    async fn resolve_by_head(&self) -> Result<Descriptor, TransferError> {
        let head = self
            .client
            .manifest_digest(self.repository(), &self.reference(), &self.scopes())
            .await?
            .ok_or_else(|| TransferError::SourceNotFound {
                what: self.image.to_string(),
            })?;
        if let Some(expected) = &self.image.digest
            && &head.digest != expected
        {
            return Err(TransferError::DigestMismatch {
                expected: expected.clone(),
                actual: head.digest.to_string(),
            });
        }
        Ok(Descriptor {
            media_type: head.media_type,
            digest: head.digest,
            size: head.size,
        })
    }
}

impl ContentSource for RegistrySource {
    type Error = TransferError;

    /// One GET (not HEAD then GET): a manifest is small, and the copy
    /// needs its bytes right after. Except on Docker Hub, where a manifest
    /// GET counts against the pull rate limit and a HEAD does not.
    async fn resolve(&self) -> Result<Descriptor, TransferError> {
        if self.image.api_host() == DOCKER_HUB_API_HOST {
            return self.resolve_by_head().await;
        }
        let (bytes, media_type) = self
            .client
            .manifest_get(self.repository(), &self.reference(), &self.scopes())
            .await?
            .ok_or_else(|| TransferError::SourceNotFound {
                what: self.image.to_string(),
            })?;
        let digest = sha256_digest(&bytes);
        if let Some(expected) = &self.image.digest
            && &digest != expected
        {
            return Err(TransferError::DigestMismatch {
                expected: expected.clone(),
                actual: digest.to_string(),
            });
        }
        let descriptor = Descriptor {
            media_type: media_type.clone(),
            digest: digest.clone(),
            size: bytes.len() as u64,
        };
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((digest, bytes, media_type));
        Ok(descriptor)
    }

    async fn fetch_manifest(&self, digest: &Digest) -> Result<(Bytes, String), TransferError> {
        let cached = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(resolved, _, _)| resolved == digest)
            .map(|(_, bytes, media_type)| (bytes.clone(), media_type.clone()));
        if let Some(cached) = cached {
            return Ok(cached);
        }
        let (bytes, media_type) = self
            .client
            .manifest_get(self.repository(), digest.as_str(), &self.scopes())
            .await?
            .ok_or_else(|| TransferError::SourceNotFound {
                what: format!("{}@{digest}", self.image.name()),
            })?;
        verify(&bytes, digest)?;
        Ok((bytes, media_type))
    }

    async fn open_blob(
        &self,
        descriptor: &Descriptor,
    ) -> Result<BlobStream<TransferError>, TransferError> {
        self.open_blob_at(descriptor, 0).await
    }

    async fn open_blob_at(
        &self,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<BlobStream<TransferError>, TransferError> {
        match self
            .client
            .blob_get(self.repository(), &descriptor.digest, offset)
            .await?
        {
            Some(stream) => Ok(Box::pin(stream)),
            None => Err(TransferError::SourceNotFound {
                what: format!("blob {} in {}", descriptor.digest, self.image.name()),
            }),
        }
    }

    async fn has_blob(&self, descriptor: &Descriptor) -> Result<bool, TransferError> {
        self.client
            .blob_exists(self.repository(), &descriptor.digest, &self.scopes())
            .await
    }

    fn known_digest(&self) -> Option<Digest> {
        self.image.digest.clone()
    }

    fn mount_origin(&self) -> Option<RepositoryRef> {
        Some(RepositoryRef::of(&self.image))
    }

    fn concurrency_key(&self) -> Option<String> {
        Some(self.client.name().to_owned())
    }

    fn classify_error(error: &TransferError) -> SourceErrorKind {
        match error {
            TransferError::SourceNotFound { .. } => SourceErrorKind::NotFound,
            e if e.is_transient() => SourceErrorKind::Transient,
            _ => SourceErrorKind::Other,
        }
    }
}
