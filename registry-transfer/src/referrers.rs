//! Referrers: the signatures, SBOMs and attestations that describe an
//! image, copied with it, digest-exact, recursively and within limits.
//!
//! Two ways of attaching them exist in the wild and both are followed:
//! - OCI 1.1 referrers, manifests whose `subject` names the image (or one
//!   of its platform manifests). Found through the referrers API
//!   (`GET /v2/<name>/referrers/<digest>`), or where a registry has none,
//!   the referrers tag schema: an index tagged `sha256-<hex>`. Written at
//!   the target by digest; a target without the API gets that tag index,
//!   merged with what it already lists.
//! - The tag scheme cosign made common: `sha256-<hex>.sig`, `.att`,
//!   `.sbom` in the image's repository. Copied under the same tags.
//!
//! A referrer may have referrers of its own (a signature on an SBOM): the
//! walk goes [`MAX_REFERRER_DEPTH`] levels deep and copies at most
//! [`MAX_REFERRERS_PER_IMAGE`]; beyond either it stops with
//! [`TransferError::TooManyReferrers`] before fetching more.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::client::RegistryClient;
use crate::engine::{Tally, Transfer, source_error};
use crate::error::TransferError;
use crate::manifest::{self, ManifestContent, OCI_INDEX, effective_media_type, verify};
use crate::reference::{ImageReference, RepositoryRef};
use crate::{ContentSource, Descriptor, Digest};

/// Levels of referrers followed: 1 is the image's own (its signature),
/// 2 their referrers (a signature on an SBOM), and so on.
pub const MAX_REFERRER_DEPTH: usize = 4;
/// Referrers copied with one image, all levels and both schemes counted.
/// Real images have a handful (a signature, an SBOM, a provenance
/// attestation, each maybe signed).
pub const MAX_REFERRERS_PER_IMAGE: usize = 128;
/// Pages of one referrers list followed at most.
pub(crate) const MAX_REFERRER_PAGES: usize = 16;

/// The suffixes of cosign's tag scheme: `sha256-<hex>.<suffix>`.
pub const TAG_SCHEME_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Which referrers a copy brings along.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ReferrersPolicy {
    /// The image alone (the engine's default: a warm copy stays one
    /// request).
    #[default]
    None,
    /// Every referrer, both schemes, recursively.
    All,
    /// Only referrers of these artifact types (see [`artifact_type`]);
    /// their own referrers are judged by the same list.
    ArtifactTypes(Vec<String>),
}

impl ReferrersPolicy {
    pub fn is_none(&self) -> bool {
        matches!(self, ReferrersPolicy::None)
    }

    /// Whether a referrer of `artifact_type` is wanted.
    pub fn wants(&self, artifact_type: Option<&str>) -> bool {
        match self {
            ReferrersPolicy::None => false,
            ReferrersPolicy::All => true,
            ReferrersPolicy::ArtifactTypes(types) => {
                artifact_type.is_some_and(|t| types.iter().any(|w| w == t))
            }
        }
    }
}

/// How a referrer is attached to its subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReferrerScheme {
    /// OCI 1.1: its manifest's `subject` field.
    Subject,
    /// A tag in the subject's repository (`sha256-<hex>.sig`, ...).
    Tag(String),
}

/// One referrer a copy brought along (or found already there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferrerCopy {
    pub digest: Digest,
    /// What it refers to: the image, a platform manifest, or another
    /// referrer.
    pub subject: Digest,
    pub artifact_type: Option<String>,
    pub scheme: ReferrerScheme,
    /// 1 for the image's own referrers, 2 for theirs, ...
    pub depth: usize,
    /// The target had it already: nothing was written for it.
    pub already_there: bool,
}

/// A referrer as a source lists it: the descriptor, and the index entry
/// exactly as listed (artifact type and annotations included), which is
/// what a fallback tag index at the target lists in turn.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedReferrer {
    pub descriptor: Descriptor,
    pub artifact_type: Option<String>,
    pub entry: serde_json::Value,
}

/// A tag-scheme artifact as a source holds it: the tag and the manifest
/// bytes it points to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedArtifact {
    pub tag: String,
    pub digest: Digest,
    pub manifest: Bytes,
    pub media_type: String,
}

/// The referrers tag schema's tag for `subject`: `<algorithm>-<hex>`,
/// cut to the 128 characters a tag may have.
pub fn fallback_tag(subject: &Digest) -> String {
    let mut tag = subject.as_str().replacen(':', "-", 1);
    tag.truncate(128);
    tag
}

/// The cosign tag-scheme tags of `subject`.
pub fn tag_scheme_tags(subject: &Digest) -> Vec<String> {
    let base = subject.as_str().replacen(':', "-", 1);
    TAG_SCHEME_SUFFIXES
        .iter()
        .map(|suffix| format!("{base}.{suffix}"))
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactShape {
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<MediaTypeOnly>,
    #[serde(default)]
    layers: Option<Vec<MediaTypeOnly>>,
    #[serde(default)]
    blobs: Option<Vec<MediaTypeOnly>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaTypeOnly {
    #[serde(default)]
    media_type: Option<String>,
}

/// Config media types that say nothing about what an artifact is.
const GENERIC_CONFIGS: [&str; 3] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.empty.v1+json",
];

/// What kind of artifact a manifest is, for policies and reports: its
/// `artifactType`; else its config's media type (what the referrers API
/// reports) unless that is a generic one; else its first layer's media
/// type (cosign's tag-scheme signatures:
/// `application/vnd.dev.cosign.simplesigning.v1+json`, attestations:
/// `application/vnd.dsse.envelope.v1+json`).
pub fn artifact_type(manifest: &[u8]) -> Option<String> {
    let shape: ArtifactShape = serde_json::from_slice(manifest).ok()?;
    if let Some(t) = shape.artifact_type.filter(|t| !t.is_empty()) {
        return Some(t);
    }
    if let Some(t) = shape
        .config
        .and_then(|c| c.media_type)
        .filter(|t| !t.is_empty() && !GENERIC_CONFIGS.contains(&t.as_str()))
    {
        return Some(t);
    }
    shape
        .layers
        .or(shape.blobs)
        .and_then(|layers| layers.into_iter().next())
        .and_then(|l| l.media_type)
        .filter(|t| !t.is_empty())
}

fn protocol(registry: &str, detail: String) -> TransferError {
    TransferError::Protocol {
        registry: registry.to_owned(),
        detail,
    }
}

/// Reads a referrers list (the API's answer or a fallback tag index).
/// Entries that are not descriptors are refused with the whole list: a
/// registry that lists garbage is not half-trusted.
pub fn parse_referrers_index(
    registry: &str,
    subject: &Digest,
    index: &[u8],
) -> Result<Vec<ListedReferrer>, TransferError> {
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        media_type: String,
        digest: String,
        size: u64,
        #[serde(default)]
        artifact_type: Option<String>,
    }
    let index: Index = serde_json::from_slice(index).map_err(|e| {
        protocol(
            registry,
            format!("referrers list of {subject} is not an index: {e}"),
        )
    })?;
    index
        .manifests
        .into_iter()
        .map(|entry| {
            let parsed: Entry = serde_json::from_value(entry.clone()).map_err(|e| {
                protocol(
                    registry,
                    format!("referrers list of {subject} has a bad entry: {e}"),
                )
            })?;
            let digest = Digest::parse(&parsed.digest).map_err(|e| {
                protocol(
                    registry,
                    format!("referrers list of {subject}: bad digest: {e}"),
                )
            })?;
            Ok(ListedReferrer {
                descriptor: Descriptor {
                    media_type: parsed.media_type,
                    digest,
                    size: parsed.size,
                },
                // A registry that lists the empty config's media type as
                // artifact type (go-containerregistry's does) says nothing:
                // the manifest itself is asked then.
                artifact_type: parsed
                    .artifact_type
                    .filter(|t| !t.is_empty() && !GENERIC_CONFIGS.contains(&t.as_str())),
                entry,
            })
        })
        .collect()
}

/// The fallback tag index to write for `subject`: what `existing` lists
/// (kept as it is, if it is an index) plus the `entries` it lacks, by
/// digest. `None` when it lacks none: nothing to write. An existing tag
/// that is not an index is replaced, as the spec says clients treat it
/// as no referrers.
pub fn merge_fallback_index(
    existing: Option<&[u8]>,
    entries: &[serde_json::Value],
) -> Option<Bytes> {
    let mut document = existing
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
        .filter(|doc| doc.get("manifests").is_some_and(|m| m.is_array()));
    let replacing = document.is_none();
    let document = document.get_or_insert_with(|| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [],
        })
    });
    let manifests = document.get_mut("manifests")?.as_array_mut()?;
    let mut listed: HashSet<String> = manifests
        .iter()
        .filter_map(|m| m.get("digest").and_then(|d| d.as_str()).map(str::to_owned))
        .collect();
    let mut added = false;
    for entry in entries {
        let Some(digest) = entry.get("digest").and_then(|d| d.as_str()) else {
            continue;
        };
        if listed.insert(digest.to_owned()) {
            manifests.push(entry.clone());
            added = true;
        }
    }
    if !added && !replacing {
        return None;
    }
    serde_json::to_vec(document).ok().map(Bytes::from)
}

/// The subjects whose referrers travel with an image: the top-level
/// manifest unless a platform filter rewrote it (signatures of the
/// original index cannot verify the new one), and each platform manifest
/// of an index (not buildx's attestation manifests: they travel inside
/// the index).
pub(crate) fn image_subjects(
    top: &Digest,
    top_rewritten: bool,
    content: &ManifestContent,
) -> Vec<Digest> {
    let mut subjects = Vec::new();
    if !top_rewritten {
        subjects.push(top.clone());
    }
    if let ManifestContent::Index { children } = content {
        subjects.extend(
            children
                .iter()
                .filter(|c| c.attests.is_none())
                .map(|c| c.descriptor.digest.clone()),
        );
    }
    subjects
}

/// Checks the referrers found for a subject against the limits, before
/// any is fetched. Pure, unit-tested.
pub(crate) fn check_referrer_limits(
    subject: &Digest,
    depth: usize,
    found: usize,
    so_far: usize,
) -> Result<(), TransferError> {
    let too_many = |detail: String| TransferError::TooManyReferrers {
        subject: subject.clone(),
        detail,
    };
    if found == 0 {
        return Ok(());
    }
    if depth > MAX_REFERRER_DEPTH {
        return Err(too_many(format!(
            "referrers nested more than {MAX_REFERRER_DEPTH} deep"
        )));
    }
    if so_far.saturating_add(found) > MAX_REFERRERS_PER_IMAGE {
        return Err(too_many(format!(
            "more than {MAX_REFERRERS_PER_IMAGE} referrers for one image"
        )));
    }
    Ok(())
}

/// Where referrers go: the target registry and repository.
pub(crate) struct ReferrerTarget<'a> {
    pub client: &'a Arc<RegistryClient>,
    pub repo: &'a RepositoryRef,
}

impl Transfer {
    /// The referrers a copy of `image` with `policy` would bring (its own
    /// and theirs, every platform manifest of an index included), found
    /// and judged exactly as a copy does, without writing anything: what a
    /// dry run lists. Reads the source only.
    pub async fn list_referrers(
        &self,
        image: &ImageReference,
        policy: &ReferrersPolicy,
    ) -> Result<Vec<ReferrerCopy>, TransferError> {
        if policy.is_none() {
            return Ok(Vec::new());
        }
        let source = self.registry_source(image)?;
        let subjects = self.subjects_of(&source).await?;
        self.copy_referrers(&source, None, subjects, policy, &Tally::default())
            .await
    }

    /// Copies the referrers of `image` (its own and theirs, every platform
    /// manifest of an index included) into `target`, without the image:
    /// for an image that reached the target another way (a node's
    /// containerd holds no signatures, the backup registry does). The
    /// fallback tag index is maintained at a target without the referrers
    /// API, as a copy does.
    pub async fn copy_referrers_of(
        &self,
        image: &ImageReference,
        target: &RepositoryRef,
        policy: &ReferrersPolicy,
    ) -> Result<Vec<ReferrerCopy>, TransferError> {
        if policy.is_none() {
            return Ok(Vec::new());
        }
        let source = self.registry_source(image)?;
        let subjects = self.subjects_of(&source).await?;
        let client = self.client(&target.registry)?;
        let target = ReferrerTarget {
            client: &client,
            repo: target,
        };
        self.copy_referrers(&source, Some(target), subjects, policy, &Tally::default())
            .await
    }

    /// The subjects of an image in a registry: its manifest is read to
    /// find its platform manifests.
    async fn subjects_of(
        &self,
        source: &crate::RegistrySource,
    ) -> Result<Vec<Digest>, TransferError> {
        let digest = match source.known_digest() {
            Some(digest) => digest,
            None => self.resolve_source(source).await?,
        };
        let (bytes, reported) = self.source_manifest(source, &digest).await?;
        let media_type = effective_media_type(&bytes, &reported);
        let content = manifest::parse(&bytes, &media_type, &digest)?;
        Ok(image_subjects(&digest, false, &content))
    }

    /// Copies the referrers of `subjects` (and theirs, recursively) from
    /// `source` into the target, as `policy` says; without a target, only
    /// lists them. Sequential per subject: an image has a handful, and each
    /// referrer's own blobs are copied concurrently like an image's.
    pub(crate) async fn copy_referrers<S: ContentSource>(
        &self,
        source: &S,
        target: Option<ReferrerTarget<'_>>,
        subjects: Vec<Digest>,
        policy: &ReferrersPolicy,
        tally: &Tally,
    ) -> Result<Vec<ReferrerCopy>, TransferError> {
        let mut copied: Vec<ReferrerCopy> = Vec::new();
        if policy.is_none() {
            return Ok(copied);
        }
        let mut seen: HashSet<Digest> = subjects.iter().cloned().collect();
        let mut level = subjects;
        let mut depth = 1;
        while !level.is_empty() {
            let mut next = Vec::new();
            for subject in &level {
                let (listed, tagged) = self.find_referrers(source, subject).await?;
                let listed: Vec<ListedReferrer> = listed
                    .into_iter()
                    .filter(|r| seen.insert(r.descriptor.digest.clone()))
                    .collect();
                let tagged: Vec<TaggedArtifact> = tagged
                    .into_iter()
                    .filter(|t| seen.insert(t.digest.clone()))
                    .collect();
                check_referrer_limits(subject, depth, listed.len() + tagged.len(), copied.len())?;
                let mut indexed = Vec::new();
                for referrer in &listed {
                    if let Some(copy) = self
                        .copy_listed(source, target.as_ref(), subject, referrer, policy, tally)
                        .await?
                    {
                        indexed.push(referrer.entry.clone());
                        next.push(copy.digest.clone());
                        copied.push(ReferrerCopy { depth, ..copy });
                    }
                }
                if let Some(target) = &target
                    && !indexed.is_empty()
                {
                    self.maintain_fallback_index(target, subject, &indexed)
                        .await?;
                }
                for artifact in &tagged {
                    if let Some(copy) = self
                        .copy_tagged(source, target.as_ref(), subject, artifact, policy, tally)
                        .await?
                    {
                        next.push(copy.digest.clone());
                        copied.push(ReferrerCopy { depth, ..copy });
                    }
                }
            }
            level = next;
            depth += 1;
        }
        Ok(copied)
    }

    async fn find_referrers<S: ContentSource>(
        &self,
        source: &S,
        subject: &Digest,
    ) -> Result<(Vec<ListedReferrer>, Vec<TaggedArtifact>), TransferError> {
        let key = source.concurrency_key();
        let _permits = self.permits(&[key.as_deref()]).await;
        let listed = source.referrers(subject).await.map_err(source_error::<S>)?;
        let tagged = source
            .tagged_artifacts(subject)
            .await
            .map_err(source_error::<S>)?;
        Ok((listed, tagged))
    }

    /// Copies one OCI 1.1 referrer by digest. `None` when the policy does
    /// not want it.
    async fn copy_listed<S: ContentSource>(
        &self,
        source: &S,
        target: Option<&ReferrerTarget<'_>>,
        subject: &Digest,
        referrer: &ListedReferrer,
        policy: &ReferrersPolicy,
        tally: &Tally,
    ) -> Result<Option<ReferrerCopy>, TransferError> {
        let digest = &referrer.descriptor.digest;
        let listed_type = referrer.artifact_type.clone();
        if listed_type.is_some() && !policy.wants(listed_type.as_deref()) {
            return Ok(None);
        }
        let present = match target {
            Some(target) => self
                .target_manifest(target.client, &target.repo.repository, digest.as_str())
                .await?
                .is_some(),
            None => false,
        };
        if (present || target.is_none()) && listed_type.is_some() {
            return Ok(Some(ReferrerCopy {
                digest: digest.clone(),
                subject: subject.clone(),
                artifact_type: listed_type,
                scheme: ReferrerScheme::Subject,
                depth: 0,
                already_there: present,
            }));
        }
        let (bytes, reported) = self.source_manifest(source, digest).await?;
        let artifact = listed_type.or_else(|| artifact_type(&bytes));
        if !policy.wants(artifact.as_deref()) {
            return Ok(None);
        }
        if let Some(target) = target
            && !present
        {
            let reported = if reported.is_empty() {
                referrer.descriptor.media_type.as_str()
            } else {
                reported.as_str()
            };
            let media_type = effective_media_type(&bytes, reported);
            self.push_artifact(
                source,
                target,
                digest,
                &bytes,
                &media_type,
                digest.as_str(),
                tally,
            )
            .await?;
        }
        Ok(Some(ReferrerCopy {
            digest: digest.clone(),
            subject: subject.clone(),
            artifact_type: artifact,
            scheme: ReferrerScheme::Subject,
            depth: 0,
            already_there: present,
        }))
    }

    /// Copies one tag-scheme artifact under its tag. The tag follows the
    /// source: cosign rewrites it to add signatures, so the source's is
    /// the newer list. `None` when the policy does not want it.
    async fn copy_tagged<S: ContentSource>(
        &self,
        source: &S,
        target: Option<&ReferrerTarget<'_>>,
        subject: &Digest,
        artifact: &TaggedArtifact,
        policy: &ReferrersPolicy,
        tally: &Tally,
    ) -> Result<Option<ReferrerCopy>, TransferError> {
        verify(&artifact.manifest, &artifact.digest)?;
        let kind = artifact_type(&artifact.manifest);
        if !policy.wants(kind.as_deref()) {
            return Ok(None);
        }
        let Some(target) = target else {
            return Ok(Some(ReferrerCopy {
                digest: artifact.digest.clone(),
                subject: subject.clone(),
                artifact_type: kind,
                scheme: ReferrerScheme::Tag(artifact.tag.clone()),
                depth: 0,
                already_there: false,
            }));
        };
        let repository = target.repo.repository.as_str();
        let present = self
            .target_manifest(target.client, repository, &artifact.tag)
            .await?
            .is_some_and(|existing| existing == artifact.digest);
        if !present {
            let media_type = effective_media_type(&artifact.manifest, &artifact.media_type);
            self.push_artifact(
                source,
                target,
                &artifact.digest,
                &artifact.manifest,
                &media_type,
                &artifact.tag,
                tally,
            )
            .await?;
        }
        Ok(Some(ReferrerCopy {
            digest: artifact.digest.clone(),
            subject: subject.clone(),
            artifact_type: kind,
            scheme: ReferrerScheme::Tag(artifact.tag.clone()),
            depth: 0,
            already_there: present,
        }))
    }

    /// Copies what a referrer's manifest references, then the manifest
    /// itself under `reference` (its digest, or its tag).
    #[allow(clippy::too_many_arguments)]
    async fn push_artifact<S: ContentSource>(
        &self,
        source: &S,
        target: &ReferrerTarget<'_>,
        digest: &Digest,
        bytes: &Bytes,
        media_type: &str,
        reference: &str,
        tally: &Tally,
    ) -> Result<(), TransferError> {
        let content = manifest::parse(bytes, media_type, digest)?;
        self.copy_content(
            source,
            target.client,
            target.repo,
            (&content, digest, 0),
            tally,
        )
        .await?;
        self.push_manifest(
            target.client,
            &target.repo.repository,
            reference,
            bytes,
            media_type,
            digest,
        )
        .await?;
        tally.count_manifest_copied();
        Ok(())
    }

    /// A target without the referrers API lists a subject's referrers in
    /// the fallback tag index: read it, add what it lacks, write it back
    /// when something was added. Whether the target has the API is learned
    /// from its answers (`OCI-Subject` on a push, or one referrers GET).
    async fn maintain_fallback_index(
        &self,
        target: &ReferrerTarget<'_>,
        subject: &Digest,
        entries: &[serde_json::Value],
    ) -> Result<(), TransferError> {
        let client = target.client;
        let repository = target.repo.repository.as_str();
        if client.referrers_api().is_none() {
            let _permits = self.permits(&[Some(client.name())]).await;
            client.referrers_page(repository, subject, None).await?;
        }
        if client.referrers_api() == Some(true) {
            return Ok(());
        }
        let tag = fallback_tag(subject);
        let existing = {
            let _permits = self.permits(&[Some(client.name())]).await;
            let scopes = [crate::client::push_scope(repository)];
            client.manifest_get(repository, &tag, &scopes).await?
        };
        let Some(index) =
            merge_fallback_index(existing.as_ref().map(|(bytes, _)| &bytes[..]), entries)
        else {
            return Ok(());
        };
        let _permits = self.permits(&[Some(client.name())]).await;
        client
            .manifest_put(repository, &tag, &index, OCI_INDEX)
            .await?;
        tracing::debug!(%subject, %tag, "fallback referrers tag index written");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn policies_choose_by_artifact_type() {
        assert!(!ReferrersPolicy::None.wants(Some("a")));
        assert!(ReferrersPolicy::All.wants(None));
        let only = ReferrersPolicy::ArtifactTypes(vec!["application/spdx+json".into()]);
        assert!(only.wants(Some("application/spdx+json")));
        assert!(!only.wants(Some("application/vnd.dev.cosign.simplesigning.v1+json")));
        assert!(!only.wants(None));
    }

    #[test]
    fn tags_of_both_schemes_are_named_after_the_subject() {
        let subject = d('a');
        assert_eq!(fallback_tag(&subject), format!("sha256-{}", "a".repeat(64)));
        assert_eq!(
            tag_scheme_tags(&subject),
            ["sig", "att", "sbom"].map(|s| format!("sha256-{}.{s}", "a".repeat(64)))
        );
        let long = Digest::parse(&format!("sha512:{}", "b".repeat(128))).unwrap();
        assert_eq!(fallback_tag(&long).len(), 128);
    }

    #[test]
    fn artifact_types_come_from_the_field_then_config_then_first_layer() {
        assert_eq!(
            artifact_type(br#"{"artifactType":"x/sbom","config":{"mediaType":"y"}}"#).as_deref(),
            Some("x/sbom")
        );
        assert_eq!(
            artifact_type(br#"{"config":{"mediaType":"application/vnd.example.sig"}}"#).as_deref(),
            Some("application/vnd.example.sig")
        );
        let cosign = br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},
            "layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"}]}"#;
        assert_eq!(
            artifact_type(cosign).as_deref(),
            Some("application/vnd.dev.cosign.simplesigning.v1+json")
        );
        assert_eq!(artifact_type(b"not json"), None);
    }

    #[test]
    fn referrers_lists_are_parsed_or_refused_whole() {
        let subject = d('f');
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{}","digest":"{}","size":3,"artifactType":"x/sig","annotations":{{"k":"v"}}}}]}}"#,
            manifest::OCI_MANIFEST,
            d('1')
        );
        let listed = parse_referrers_index("r", &subject, index.as_bytes()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].descriptor.digest, d('1'));
        assert_eq!(listed[0].artifact_type.as_deref(), Some("x/sig"));
        assert_eq!(listed[0].entry["annotations"]["k"], "v");
        let bad = r#"{"manifests":[{"mediaType":"a","digest":"sha256:zz","size":1}]}"#;
        assert_eq!(
            parse_referrers_index("r", &subject, bad.as_bytes())
                .unwrap_err()
                .reason(),
            "RegistryProtocolError"
        );
        assert!(parse_referrers_index("r", &subject, b"[").is_err());
    }

    #[test]
    fn fallback_indexes_are_merged_not_overwritten() {
        let entry =
            |c: char| serde_json::json!({"mediaType": "m", "digest": d(c).to_string(), "size": 1});
        // Nothing there: a new index with the entries.
        let fresh = merge_fallback_index(None, &[entry('1')]).unwrap();
        let fresh: serde_json::Value = serde_json::from_slice(&fresh).unwrap();
        assert_eq!(fresh["mediaType"], OCI_INDEX);
        assert_eq!(fresh["manifests"].as_array().unwrap().len(), 1);
        // Someone else's entry and annotations stay; ours is added once.
        let existing = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [entry('2')], "annotations": {"keep": "me"}
        }))
        .unwrap();
        let merged =
            merge_fallback_index(Some(&existing), &[entry('1'), entry('2'), entry('1')]).unwrap();
        let merged: serde_json::Value = serde_json::from_slice(&merged).unwrap();
        let digests: Vec<&str> = merged["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, vec![d('2').as_str(), d('1').as_str()]);
        assert_eq!(merged["annotations"]["keep"], "me");
        // Already listed: nothing to write.
        assert!(merge_fallback_index(Some(&existing), &[entry('2')]).is_none());
        // Not an index: replaced.
        assert!(merge_fallback_index(Some(b"garbage"), &[entry('1')]).is_some());
    }

    #[test]
    fn referrer_limits_bound_depth_and_count() {
        let s = d('a');
        assert!(check_referrer_limits(&s, MAX_REFERRER_DEPTH, 3, 0).is_ok());
        assert!(check_referrer_limits(&s, MAX_REFERRER_DEPTH + 1, 0, 0).is_ok());
        let deep = check_referrer_limits(&s, MAX_REFERRER_DEPTH + 1, 1, 0).unwrap_err();
        assert_eq!(deep.reason(), "TooManyReferrers");
        assert!(
            deep.to_string().contains("nested more than 4 deep"),
            "{deep}"
        );
        assert!(check_referrer_limits(&s, 1, 28, 100).is_ok());
        let wide = check_referrer_limits(&s, 1, 29, 100).unwrap_err();
        assert!(
            wide.to_string().contains("more than 128 referrers"),
            "{wide}"
        );
        assert_eq!(wide.metric_label(), "registry_limit");
    }

    #[test]
    fn subjects_are_the_image_and_its_platforms_unless_rewritten() {
        let child = |c: char, attests: Option<Digest>| manifest::ChildManifest {
            descriptor: Descriptor {
                media_type: manifest::OCI_MANIFEST.into(),
                digest: d(c),
                size: 1,
            },
            platform: None,
            attests,
        };
        let index = ManifestContent::Index {
            children: vec![child('1', None), child('2', Some(d('1')))],
        };
        assert_eq!(image_subjects(&d('f'), false, &index), vec![d('f'), d('1')]);
        assert_eq!(image_subjects(&d('f'), true, &index), vec![d('1')]);
        let image = ManifestContent::Image { blobs: vec![] };
        assert_eq!(image_subjects(&d('f'), false, &image), vec![d('f')]);
    }
}
