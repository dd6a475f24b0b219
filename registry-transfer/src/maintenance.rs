//! Looking after what is already in a registry: listing a repository's
//! tags, reading when an image was created, deleting a manifest by digest.
//! Retention builds on these; they never copy anything.

use serde::Deserialize;

use crate::bounded::{BodyKind, MAX_CONFIG_BYTES, read_stream_bounded};
use crate::client::{RegistryClient, pull_scope};
use crate::engine::Transfer;
use crate::error::TransferError;
use crate::manifest::{self, ManifestContent, sha256_digest, verify};
use crate::reference::{ImageReference, RepositoryRef};
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
        let image_bytes = match manifest::parse(&bytes, &media_type, &digest)? {
            ManifestContent::Image { .. } => bytes.clone(),
            ManifestContent::Index { children } => {
                let Some(child) = representative_child(&children) else {
                    return Ok(Some(ManifestSummary {
                        digest,
                        media_type,
                        created: None,
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
        }))
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
    use crate::client::next_link;
    use crate::manifest::{ChildManifest, Platform};

    #[test]
    fn next_links_are_followed_only_for_rel_next() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(
            next_link(r#"</prev>; rel="prev", </v2/a/tags/list?last=y>; rel=next"#).as_deref(),
            Some("/v2/a/tags/list?last=y")
        );
        assert_eq!(next_link(r#"</v2/a/tags/list>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

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
