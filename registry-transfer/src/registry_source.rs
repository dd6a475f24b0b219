//! A registry repository as a [`ContentSource`].

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::client::{RegistryClient, pull_scope};
use crate::error::TransferError;
use crate::maintenance::all_tags;
use crate::manifest::{sha256_digest, verify};
use crate::reference::{DOCKER_HUB_API_HOST, ImageReference, RepositoryRef};
use crate::referrers::{
    ListedReferrer, MAX_REFERRER_PAGES, MAX_REFERRERS_PER_IMAGE, TaggedArtifact, fallback_tag,
    parse_referrers_index, tag_scheme_tags,
};
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
    /// The repository's tags, listed once per source when referrers are
    /// looked for: one request answers for the fallback tag index and
    /// every tag-scheme artifact of every subject.
    tags: tokio::sync::OnceCell<HashSet<String>>,
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
            tags: tokio::sync::OnceCell::new(),
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
    async fn tags(&self) -> Result<&HashSet<String>, TransferError> {
        self.tags
            .get_or_try_init(|| async {
                let tags = all_tags(&self.client, self.repository(), None).await?;
                Ok(tags.into_iter().collect())
            })
            .await
    }

    /// The referrers API's list, all pages; `None` when the registry has
    /// no such API.
    async fn referrers_by_api(
        &self,
        subject: &Digest,
    ) -> Result<Option<Vec<ListedReferrer>>, TransferError> {
        let mut listed = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..MAX_REFERRER_PAGES {
            let Some(answer) = self
                .client
                .referrers_page(self.repository(), subject, page.as_deref())
                .await?
            else {
                return Ok(None);
            };
            listed.extend(parse_referrers_index(
                self.client.name(),
                subject,
                &answer.index,
            )?);
            if listed.len() > MAX_REFERRERS_PER_IMAGE {
                break;
            }
            match answer.next {
                Some(next) => page = Some(next),
                None => return Ok(Some(listed)),
            }
        }
        Err(TransferError::TooManyReferrers {
            subject: subject.clone(),
            detail: format!(
                "the referrers list of {} goes on past {MAX_REFERRER_PAGES} pages or {MAX_REFERRERS_PER_IMAGE} entries",
                self.image.name()
            ),
        })
    }

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

    /// The referrers API when the registry has it (known after its first
    /// answer), else the fallback tag index, read only when the tag list
    /// has its tag.
    async fn referrers(&self, subject: &Digest) -> Result<Vec<ListedReferrer>, TransferError> {
        if self.client.referrers_api() != Some(false)
            && let Some(listed) = self.referrers_by_api(subject).await?
        {
            return Ok(listed);
        }
        let tag = fallback_tag(subject);
        if !self.tags().await?.contains(&tag) {
            return Ok(Vec::new());
        }
        match self
            .client
            .manifest_get(self.repository(), &tag, &self.scopes())
            .await?
        {
            Some((index, _)) => parse_referrers_index(self.client.name(), subject, &index),
            None => Ok(Vec::new()),
        }
    }

    async fn tagged_artifacts(
        &self,
        subject: &Digest,
    ) -> Result<Vec<TaggedArtifact>, TransferError> {
        let tags = self.tags().await?;
        let mut found = Vec::new();
        for tag in tag_scheme_tags(subject) {
            if !tags.contains(&tag) {
                continue;
            }
            // Deleted since the tag list was read: nothing to copy.
            if let Some((manifest, media_type)) = self
                .client
                .manifest_get(self.repository(), &tag, &self.scopes())
                .await?
            {
                found.push(TaggedArtifact {
                    digest: sha256_digest(&manifest),
                    tag,
                    manifest,
                    media_type,
                });
            }
        }
        Ok(found)
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
