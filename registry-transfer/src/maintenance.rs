//! Looking after what is already in a registry: listing a repository's
//! tags, reading when an image was created, deleting a manifest by digest.
//! Retention builds on these; they never copy anything.

use std::collections::HashSet;

use serde::Deserialize;

use crate::bounded::{BodyKind, MAX_CONFIG_BYTES, read_stream_bounded};
use crate::client::{RegistryClient, pull_scope};
use crate::engine::Transfer;
use crate::error::TransferError;
use crate::manifest::{self, ManifestContent, sha256_digest, verify};
use crate::reference::{ImageReference, RepositoryRef};
use crate::referrers::{ReferrerScheme, ReferrersPolicy, fallback_tag};
use crate::{Descriptor, Digest};

/// Tags asked for per page of a tag list.
const TAGS_PER_PAGE: usize = 1000;

/// Pages of a tag list followed at most (a million tags).
const MAX_TAG_PAGES: usize = 1000;

/// Every tag of `name` in the registry of `client`, following its
/// pagination, sorted. With an engine, each page holds its permit.
pub(crate) async fn all_tags(
    client: &RegistryClient,
    name: &str,
    engine: Option<&Transfer>,
) -> Result<Vec<String>, TransferError> {
    let mut next = Some(format!("/v2/{name}/tags/list?n={TAGS_PER_PAGE}"));
    let mut tags = Vec::new();
    let mut pages = 0;
    while let Some(page) = next.take() {
        pages += 1;
        if pages > MAX_TAG_PAGES {
            return Err(TransferError::Protocol {
                registry: client.name().to_owned(),
                detail: format!("tag list of {name} has more than {MAX_TAG_PAGES} pages"),
            });
        }
        let _permits = match engine {
            Some(engine) => Some(engine.permits(&[Some(client.name())]).await),
            None => None,
        };
        let (page_tags, link) = client.tags_page(name, &page).await?;
        tags.extend(page_tags);
        next = link;
    }
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// What a registry holds under a reference, with the image's creation time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestSummary {
    /// Digest of the manifest or index itself.
    pub digest: Digest,
    pub media_type: String,
    /// The `created` field of the image config (RFC 3339, as written by
    /// the image's builder). For an index, that of its first child with a
    /// real platform. `None` when the image does not say.
    pub created: Option<String>,
    /// An index's child manifests (platform images and attestation
    /// manifests), by digest; empty for an image. Their referrers belong
    /// to the image too.
    pub children: Vec<Digest>,
}

/// What deleting an image with its referrers deleted besides the image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletedReferrers {
    /// Referrer manifests deleted (OCI 1.1 referrers and cosign's
    /// `.sig`/`.att`/`.sbom`, every level).
    pub referrers: Vec<Digest>,
    /// Fallback referrers tag indexes (`sha256-<hex>`) deleted with the
    /// subjects they list referrers of.
    pub fallback_tags: Vec<String>,
}

/// What goes with the images a retention deletes: the referrers found at
/// the target for their subjects (`found`: digest and subject, as
/// [`Transfer::list_referrers`] walks them) whose subject goes, level by
/// level, and the fallback tag index of every subject that goes, when the
/// repository has that tag. A subject of an image that stays (`kept`: a
/// platform manifest two indexes share) keeps its referrers, and nothing
/// in `kept` is ever deleted. A referrer names one subject, so nothing
/// else can need it. Pure.
pub fn plan_referrer_deletions(
    deleted: &[Digest],
    found: &[(Digest, Digest)],
    kept: &HashSet<Digest>,
    tags: &HashSet<String>,
) -> DeletedReferrers {
    let mut going: HashSet<&Digest> = deleted.iter().filter(|d| !kept.contains(*d)).collect();
    let mut plan = DeletedReferrers::default();
    // Found lists come level by level, but the answer must not depend on
    // their order: repeat until nothing is added.
    loop {
        let before = plan.referrers.len();
        for (referrer, subject) in found {
            if going.contains(subject) && !kept.contains(referrer) && going.insert(referrer) {
                plan.referrers.push(referrer.clone());
            }
        }
        if plan.referrers.len() == before {
            break;
        }
    }
    let mut subjects: Vec<&Digest> = going.into_iter().collect();
    subjects.sort();
    plan.fallback_tags = subjects
        .into_iter()
        .map(fallback_tag)
        .filter(|tag| tags.contains(tag))
        .collect();
    plan
}

#[derive(Deserialize)]
struct ConfigPointer {
    #[serde(default)]
    config: Option<RawDescriptor>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize)]
struct SubjectPointer {
    #[serde(default)]
    subject: Option<RawDescriptor>,
}

/// The digest of the subject a manifest names (`subject`), if any.
pub(crate) fn manifest_subject(manifest: &[u8]) -> Option<String> {
    serde_json::from_slice::<SubjectPointer>(manifest)
        .ok()?
        .subject
        .map(|s| s.digest)
}

#[derive(Deserialize)]
struct Created {
    #[serde(default)]
    created: Option<String>,
}

/// The child of an index whose config tells the image's age: the first one
/// with a real platform (attestation manifests say `unknown/unknown`).
fn representative_child(children: &[manifest::ChildManifest]) -> Option<&Descriptor> {
    children
        .iter()
        .find(|c| {
            c.platform
                .as_ref()
                .is_some_and(|p| p.os != "unknown" && p.architecture != "unknown")
        })
        .or_else(|| children.first())
        .map(|c| &c.descriptor)
}

/// The `created` time in an image config document, if it has one.
pub fn config_created(config: &[u8]) -> Option<String> {
    serde_json::from_slice::<Created>(config)
        .ok()
        .and_then(|c| c.created)
        .filter(|c| !c.trim().is_empty())
}

impl Transfer {
    /// Every tag of a repository, following the registry's pagination. A
    /// repository the registry does not know has none.
    pub async fn list_tags(
        &self,
        repository: &RepositoryRef,
    ) -> Result<Vec<String>, TransferError> {
        let client = self.client(&repository.registry)?;
        let name = repository.repository.as_str();
        all_tags(&client, name, Some(self)).await
    }

    /// Deletes a manifest by digest. Registries drop the tags pointing at it
    /// with it; its blobs stay until the registry's garbage collection.
    /// `false` when the registry did not have it.
    pub async fn delete_manifest(
        &self,
        repository: &RepositoryRef,
        digest: &Digest,
    ) -> Result<bool, TransferError> {
        let client = self.client(&repository.registry)?;
        let _permits = self.permits(&[Some(client.name())]).await;
        client
            .manifest_delete(repository.repository.as_str(), digest)
            .await
    }

    /// The digest a reference (tag or digest) resolves to and when the
    /// image was created, or `None` when the registry does not have it.
    /// Two or three GETs: the manifest, an index's first real child, the
    /// config blob.
    pub async fn manifest_summary(
        &self,
        image: &ImageReference,
    ) -> Result<Option<ManifestSummary>, TransferError> {
        let client = self.client(&image.registry)?;
        let repository = image.repository.as_str();
        let scopes = [pull_scope(repository)];
        let reference = match (&image.digest, &image.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        };
        let fetched = {
            let _permits = self.permits(&[Some(client.name())]).await;
            client.manifest_get(repository, &reference, &scopes).await?
        };
        let Some((bytes, reported_type)) = fetched else {
            return Ok(None);
        };
        let digest = sha256_digest(&bytes);
        if let Some(wanted) = &image.digest {
            verify(&bytes, wanted)?;
        }
        let media_type = manifest::effective_media_type(&bytes, &reported_type);
        let content = manifest::parse(&bytes, &media_type, &digest)?;
        let children: Vec<Digest> = match &content {
            ManifestContent::Image { .. } => Vec::new(),
            ManifestContent::Index { children } => children
                .iter()
                .map(|c| c.descriptor.digest.clone())
                .collect(),
        };
        let image_bytes = match content {
            ManifestContent::Image { .. } => bytes.clone(),
            ManifestContent::Index { children: listed } => {
                let Some(child) = representative_child(&listed) else {
                    return Ok(Some(ManifestSummary {
                        digest,
                        media_type,
                        created: None,
                        children,
                    }));
                };
                let child_digest = child.digest.clone();
                let fetched = {
                    let _permits = self.permits(&[Some(client.name())]).await;
                    client
                        .manifest_get(repository, child_digest.as_str(), &scopes)
                        .await?
                };
                let Some((child_bytes, _)) = fetched else {
                    return Ok(Some(ManifestSummary {
                        digest,
                        media_type,
                        created: None,
                        children,
                    }));
                };
                verify(&child_bytes, &child_digest)?;
                child_bytes
            }
        };
        let config = serde_json::from_slice::<ConfigPointer>(&image_bytes)
            .ok()
            .and_then(|p| p.config)
            .filter(|c| c.size <= MAX_CONFIG_BYTES)
            .and_then(|c| Digest::parse(&c.digest).ok());
        let created = match config {
            Some(config_digest) => self
                .read_config(&client, repository, &config_digest)
                .await?
                .as_deref()
                .and_then(config_created),
            None => None,
        };
        Ok(Some(ManifestSummary {
            digest,
            media_type,
            created,
            children,
        }))
    }

    /// Deletes an image by digest with its referrers (every level, both
    /// schemes) and the fallback tag indexes of its subjects, except what
    /// belongs to `kept` (the images that stay in the repository, and
    /// their platform manifests): see [`plan_referrer_deletions`]. The
    /// referrers are looked for first; if they cannot be, nothing is
    /// deleted. `None` when the registry did not have the image.
    pub async fn delete_with_referrers(
        &self,
        repository: &RepositoryRef,
        digest: &Digest,
        kept: &HashSet<Digest>,
    ) -> Result<Option<DeletedReferrers>, TransferError> {
        let image = ImageReference {
            registry: repository.registry.clone(),
            repository: repository.repository.clone(),
            tag: None,
            digest: Some(digest.clone()),
        };
        let found = match self.list_referrers(&image, &ReferrersPolicy::All).await {
            Ok(found) => found,
            Err(TransferError::SourceNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let tags: HashSet<String> = self.list_tags(repository).await?.into_iter().collect();
        let mut deleted = vec![digest.clone()];
        deleted.extend(
            found
                .iter()
                .filter(|r| r.depth == 1)
                .map(|r| r.subject.clone()),
        );
        let found = self.with_subjects_confirmed(&image, found).await?;
        let scheme_tags: Vec<(Digest, String)> = found
            .iter()
            .filter_map(|r| match &r.scheme {
                ReferrerScheme::Tag(tag) => Some((r.digest.clone(), tag.clone())),
                ReferrerScheme::Subject => None,
            })
            .collect();
        let found: Vec<(Digest, Digest)> =
            found.into_iter().map(|r| (r.digest, r.subject)).collect();
        let plan = plan_referrer_deletions(&deleted, &found, kept, &tags);
        if !self.delete_manifest(repository, digest).await? {
            return Ok(None);
        }
        // Deepest first, so an interrupted pass leaves no referrer whose
        // own subject is already gone unlisted.
        for referrer in plan.referrers.iter().rev() {
            self.delete_manifest(repository, referrer).await?;
        }
        let going_tags = scheme_tags
            .into_iter()
            .filter(|(digest, _)| plan.referrers.contains(digest))
            .map(|(_, tag)| tag);
        for tag in plan.fallback_tags.iter().cloned().chain(going_tags) {
            self.delete_tag(repository, &tag).await?;
        }
        Ok(Some(plan))
    }

    /// The listed referrers whose manifest does name the subject they are
    /// listed under. A fallback tag index is written by clients: whoever
    /// can push there could list any manifest (an image someone pushed by
    /// hand) as a referrer of a digest retention deletes; such an entry is
    /// left out (and so is one gone since it was listed). Tag-scheme
    /// artifacts name their subject in the tag alone and are kept as found.
    async fn with_subjects_confirmed(
        &self,
        image: &ImageReference,
        found: Vec<crate::ReferrerCopy>,
    ) -> Result<Vec<crate::ReferrerCopy>, TransferError> {
        let source = self.registry_source(image)?;
        let mut confirmed = Vec::with_capacity(found.len());
        for referrer in found {
            if referrer.scheme == ReferrerScheme::Subject {
                let bytes = match self.source_manifest(&source, &referrer.digest).await {
                    Ok((bytes, _)) => bytes,
                    Err(TransferError::SourceNotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if manifest_subject(&bytes).as_deref() != Some(referrer.subject.as_str()) {
                    tracing::warn!(referrer = %referrer.digest, subject = %referrer.subject, "listed as a referrer but does not name that subject: not deleted");
                    continue;
                }
            }
            confirmed.push(referrer);
        }
        Ok(confirmed)
    }

    /// Deletes what a tag points at, by digest; then, where the registry
    /// still serves the tag (go-containerregistry's keeps tags of deleted
    /// manifests), the tag itself.
    async fn delete_tag(&self, repository: &RepositoryRef, tag: &str) -> Result<(), TransferError> {
        let tagged = ImageReference {
            registry: repository.registry.clone(),
            repository: repository.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        };
        let Some(digest) = self.manifest_digest(&tagged).await? else {
            return Ok(());
        };
        self.delete_manifest(repository, &digest).await?;
        if self.manifest_digest(&tagged).await?.is_some() {
            let client = self.client(&repository.registry)?;
            let _permits = self.permits(&[Some(client.name())]).await;
            client
                .manifest_delete_reference(repository.repository.as_str(), tag)
                .await?;
        }
        Ok(())
    }

    async fn read_config(
        &self,
        client: &crate::client::RegistryClient,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, TransferError> {
        let _permits = self.permits(&[Some(client.name())]).await;
        let Some(stream) = client.blob_get(repository, digest, 0).await? else {
            return Ok(None);
        };
        let body = read_stream_bounded(
            client.name(),
            BodyKind::ConfigBlob,
            Box::pin(stream),
            self.config().body_timeout,
        )
        .await?;
        verify(&body, digest)?;
        Ok(Some(body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ChildManifest, Platform};

    #[test]
    fn created_comes_from_the_config_when_it_says() {
        assert_eq!(
            config_created(br#"{"created":"2026-01-02T03:04:05Z","architecture":"amd64"}"#)
                .as_deref(),
            Some("2026-01-02T03:04:05Z")
        );
        assert_eq!(config_created(br#"{"architecture":"amd64"}"#), None);
        assert_eq!(config_created(br#"{"created":""}"#), None);
        assert_eq!(config_created(b"not json"), None);
    }

    fn child(hex: char, platform: Option<(&str, &str)>) -> ChildManifest {
        ChildManifest {
            descriptor: Descriptor {
                media_type: manifest::OCI_MANIFEST.into(),
                digest: Digest::parse(&format!("sha256:{}", hex.to_string().repeat(64))).unwrap(),
                size: 1,
            },
            platform: platform.map(|(os, arch)| Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            attests: None,
        }
    }

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn set<T: Clone + Eq + std::hash::Hash>(items: &[T]) -> HashSet<T> {
        items.iter().cloned().collect()
    }

    #[test]
    fn a_manifest_names_its_subject_or_none() {
        let with =
            br#"{"schemaVersion":2,"subject":{"mediaType":"m","digest":"sha256:ab","size":3}}"#;
        assert_eq!(manifest_subject(with).as_deref(), Some("sha256:ab"));
        assert_eq!(manifest_subject(br#"{"schemaVersion":2}"#), None);
        assert_eq!(manifest_subject(b"not json"), None);
    }

    #[test]
    fn referrers_go_with_their_subject_at_every_level_and_with_their_fallback_tag() {
        // Image a: SBOM 5 (listed in the fallback tag of a), signature 6 on
        // 5 (in the fallback tag of 5), cosign signature c (tag scheme).
        // Image b stays, with its fallback tag.
        let found = [(d('5'), d('a')), (d('c'), d('a')), (d('6'), d('5'))];
        let tags = set(&[
            fallback_tag(&d('a')),
            fallback_tag(&d('5')),
            fallback_tag(&d('b')),
            "sha256-aaaa.sig".to_owned(),
            "lifeboat-sha256-bbbb".to_owned(),
        ]);
        let plan = plan_referrer_deletions(&[d('a')], &found, &set(&[d('b')]), &tags);
        assert_eq!(plan.referrers, vec![d('5'), d('c'), d('6')]);
        let mut wanted = vec![fallback_tag(&d('a')), fallback_tag(&d('5'))];
        wanted.sort();
        assert_eq!(plan.fallback_tags, wanted);

        // The order the walk lists them in does not matter.
        let reversed: Vec<_> = found.iter().rev().cloned().collect();
        let again = plan_referrer_deletions(&[d('a')], &reversed, &set(&[d('b')]), &tags);
        assert_eq!(set(&again.referrers), set(&plan.referrers));
        assert_eq!(again.fallback_tags, plan.fallback_tags);
    }

    #[test]
    fn referrers_of_what_stays_are_never_deleted() {
        // Index e goes; its platform manifest 7 is shared with index f,
        // which stays: 7's signature and fallback tag stay. e's own
        // platform 8 goes, with its attestation.
        let found = [(d('1'), d('7')), (d('2'), d('8')), (d('3'), d('e'))];
        let tags = set(&[fallback_tag(&d('7')), fallback_tag(&d('8'))]);
        let kept = set(&[d('f'), d('7')]);
        let plan = plan_referrer_deletions(&[d('e'), d('7'), d('8')], &found, &kept, &tags);
        assert_eq!(plan.referrers, vec![d('2'), d('3')]);
        assert_eq!(plan.fallback_tags, vec![fallback_tag(&d('8'))]);

        // A referrer that is itself kept (listed by an image that stays)
        // stays, and so do its own referrers.
        let found = [(d('9'), d('a')), (d('5'), d('9'))];
        let plan = plan_referrer_deletions(&[d('a')], &found, &set(&[d('9')]), &HashSet::new());
        assert!(plan.referrers.is_empty(), "{plan:?}");
        // Nothing deleted when the image itself stays.
        let plan = plan_referrer_deletions(&[d('a')], &found, &set(&[d('a')]), &HashSet::new());
        assert_eq!(plan, DeletedReferrers::default());
    }

    #[test]
    fn an_index_is_dated_by_its_first_real_platform() {
        let children = [
            child('a', Some(("unknown", "unknown"))),
            child('b', Some(("linux", "arm64"))),
            child('c', Some(("linux", "amd64"))),
        ];
        assert_eq!(
            representative_child(&children).map(|d| d.digest.encoded().chars().next()),
            Some(Some('b'))
        );
        let odd = [child('d', None)];
        assert_eq!(
            representative_child(&odd).map(|d| d.digest.encoded().chars().next()),
            Some(Some('d'))
        );
        assert_eq!(representative_child(&[]), None);
    }
}
