//! An image's manifests: checked against the target, read and verified from
//! the source, walked top-down (an index's children, then their blobs),
//! pushed bottom-up so that nothing refers to what is not there yet.

use super::*;

/// The manifest at the top of a copy, as it will be pushed.
struct TopManifest {
    bytes: Bytes,
    media_type: String,
    digest: Digest,
    content: ManifestContent,
    changed: bool,
}

impl Transfer {
    /// Copies the image alone. Returns its report and the content pushed
    /// at the top (`None` when the target was up to date without reading
    /// it).
    pub(super) async fn copy_inner<S: ContentSource>(
        &self,
        source: &S,
        request: &CopyRequest,
        tally: &Tally,
    ) -> Result<(CopyReport, Option<ManifestContent>), TransferError> {
        if let Some(tag) = request
            .tag
            .iter()
            .chain(&request.moved_tags)
            .find(|t| !is_valid_tag(t))
        {
            return Err(TransferError::InvalidReference(format!(
                "invalid tag {tag:?}"
            )));
        }
        let target = self.client(&request.target.registry)?;
        let repository = request.target.repository.as_str();
        let filtering = !request.platforms.is_empty();
        let report = |tag: String,
                      source_digest: Digest,
                      digest: Digest,
                      changed: bool,
                      up_to_date: bool,
                      tally: &Tally| CopyReport {
            target: request.target.clone(),
            tag,
            source_digest,
            digest,
            index_digest_changed: changed,
            up_to_date,
            manifests_copied: tally.manifests_copied.load(Ordering::Relaxed),
            manifests_skipped: tally.manifests_skipped.load(Ordering::Relaxed)
                + u32::from(up_to_date),
            blobs_copied: tally.blobs_copied.load(Ordering::Relaxed),
            blobs_skipped: tally.blobs_skipped.load(Ordering::Relaxed),
            blobs_mounted: tally.blobs_mounted.load(Ordering::Relaxed),
            bytes_copied: tally.bytes_copied.load(Ordering::Relaxed),
            requests: 0,
            referrers: Vec::new(),
        };

        // Warm path: once the source digest is known (for free when the
        // source was opened by digest, else one HEAD), and with nothing to
        // rewrite, one HEAD on the target answers "already there".
        let mut source_digest = source.known_digest();
        let mut early: Option<(String, Option<Digest>)> = None;
        if source_digest.is_none() && !filtering {
            match &request.tag {
                // Both questions at once: one round trip instead of two.
                Some(tag) => {
                    let (resolved, existing) = futures::try_join!(
                        self.resolve_source(source),
                        self.target_manifest(&target, repository, tag)
                    )?;
                    source_digest = Some(resolved);
                    early = Some((tag.clone(), existing));
                }
                None => source_digest = Some(self.resolve_source(source).await?),
            }
        }
        let mut checked: Option<(String, Option<Digest>)> = None;
        if let (Some(known), false) = (&source_digest, filtering) {
            let (tag, existing) = self
                .target_tag(&target, request, known, early.take())
                .await?;
            let settled = self
                .settle_tag(
                    source,
                    &target,
                    request,
                    &tag,
                    existing.as_ref(),
                    known,
                    None,
                )
                .await?;
            if let Some(moved) = settled {
                let report = report(tag, known.clone(), known.clone(), false, !moved, tally);
                return Ok((report, None));
            }
            checked = Some((tag, existing));
        }

        let source_digest = match source_digest {
            Some(digest) => digest,
            None => self.resolve_source(source).await?,
        };
        let TopManifest {
            bytes,
            media_type,
            digest,
            content,
            changed,
        } = self
            .top_manifest(source, &source_digest, &request.platforms)
            .await?;

        let (tag, existing) = self.target_tag(&target, request, &digest, checked).await?;
        let settled = self
            .settle_tag(
                source,
                &target,
                request,
                &tag,
                existing.as_ref(),
                &digest,
                Some((&bytes, &media_type)),
            )
            .await?;
        if let Some(moved) = settled {
            let report = report(tag, source_digest, digest, changed, !moved, tally);
            return Ok((report, Some(content)));
        }

        self.copy_content(
            source,
            &target,
            &request.target,
            (&content, &digest, 0),
            tally,
        )
        .await?;
        self.push_manifest(&target, repository, &tag, &bytes, &media_type, &digest)
            .await?;
        bump(&tally.manifests_copied);
        // Just pushed: no tag can be asked about more cheaply than set.
        for moved in &request.moved_tags {
            self.push_manifest(&target, repository, moved, &bytes, &media_type, &digest)
                .await?;
        }
        let report = report(tag, source_digest, digest, changed, false, tally);
        Ok((report, Some(content)))
    }

    /// The top manifest, read from the source and verified, and with the
    /// request's platforms kept if it is an index (then with bytes and a
    /// digest of its own).
    async fn top_manifest<S: ContentSource>(
        &self,
        source: &S,
        source_digest: &Digest,
        platforms: &[Platform],
    ) -> Result<TopManifest, TransferError> {
        let (bytes, reported_type) = self.source_manifest(source, source_digest).await?;
        let media_type = effective_media_type(&bytes, &reported_type);
        let content = manifest::parse(&bytes, &media_type, source_digest)?;
        let filtered = match &content {
            ManifestContent::Index { children } if !platforms.is_empty() => {
                filter_index(&bytes, source_digest, children, platforms)?
            }
            _ => None,
        };
        Ok(match filtered {
            Some((new_bytes, kept)) => TopManifest {
                digest: sha256_digest(&new_bytes),
                bytes: new_bytes,
                media_type,
                content: ManifestContent::Index { children: kept },
                changed: true,
            },
            None => TopManifest {
                bytes,
                media_type,
                digest: source_digest.clone(),
                content,
                changed: false,
            },
        })
    }

    /// The tag a copy of `digest` goes under (the request's, else the
    /// deterministic one) and where the target's tag points now: from
    /// `asked` when that answer was about this same tag, else one HEAD.
    async fn target_tag(
        &self,
        target: &RegistryClient,
        request: &CopyRequest,
        digest: &Digest,
        asked: Option<(String, Option<Digest>)>,
    ) -> Result<(String, Option<Digest>), TransferError> {
        let tag = request
            .tag
            .clone()
            .unwrap_or_else(|| deterministic_tag(digest));
        let existing = match asked {
            Some((asked_tag, existing)) if asked_tag == tag => existing,
            _ => {
                self.target_manifest(target, request.target.repository.as_str(), &tag)
                    .await?
            }
        };
        Ok((tag, existing))
    }

    /// What the target's `tag`, pointing at `existing`, means for a copy of
    /// `digest`: `Some(wrote)` when it already points there (the request's
    /// other tags are then pointed there too; `wrote`: whether any had to
    /// be), `None` when the manifest is to be pushed; a tag that points
    /// elsewhere and may not move is a conflict.
    #[allow(clippy::too_many_arguments)]
    async fn settle_tag<S: ContentSource>(
        &self,
        source: &S,
        target: &RegistryClient,
        request: &CopyRequest,
        tag: &str,
        existing: Option<&Digest>,
        digest: &Digest,
        manifest: Option<(&Bytes, &str)>,
    ) -> Result<Option<bool>, TransferError> {
        match tag_decision(existing, digest, request.allow_tag_move) {
            TagDecision::UpToDate => self
                .point_moved_tags(
                    source,
                    target,
                    request.target.repository.as_str(),
                    &request.moved_tags,
                    digest,
                    manifest,
                )
                .await
                .map(Some),
            TagDecision::Conflict(existing) => Err(TransferError::TagConflict {
                repository: request.target.to_string(),
                tag: tag.to_owned(),
                existing: existing.to_string(),
                wanted: digest.clone(),
            }),
            TagDecision::Push => Ok(None),
        }
    }

    /// Points `tags` at `digest` in a target that already holds it: one
    /// HEAD each, and a PUT of the manifest for each that points
    /// elsewhere or nowhere (its bytes as read, else read from the source,
    /// verified, only then). Whether any tag was written.
    pub(super) async fn point_moved_tags<S: ContentSource>(
        &self,
        source: &S,
        target: &RegistryClient,
        repository: &str,
        tags: &[String],
        digest: &Digest,
        manifest: Option<(&Bytes, &str)>,
    ) -> Result<bool, TransferError> {
        let mut read: Option<(Bytes, String)> = None;
        let mut wrote = false;
        for tag in tags {
            if self
                .target_manifest(target, repository, tag)
                .await?
                .as_ref()
                == Some(digest)
            {
                continue;
            }
            let (bytes, media_type) = match (manifest, &read) {
                (Some((bytes, media_type)), _) => (bytes.clone(), media_type.to_owned()),
                (None, Some((bytes, media_type))) => (bytes.clone(), media_type.clone()),
                (None, None) => {
                    let (bytes, reported) = self.source_manifest(source, digest).await?;
                    let media_type = effective_media_type(&bytes, &reported);
                    read = Some((bytes.clone(), media_type.clone()));
                    (bytes, media_type)
                }
            };
            self.push_manifest(target, repository, tag, &bytes, &media_type, digest)
                .await?;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Copies what a manifest references. `manifest` is its parsed
    /// content, its digest and its nesting level (0 for the top).
    pub(crate) fn copy_content<'a, S: ContentSource>(
        &'a self,
        source: &'a S,
        target: &'a Arc<RegistryClient>,
        target_repo: &'a RepositoryRef,
        manifest: (&'a ManifestContent, &'a Digest, usize),
        tally: &'a Tally,
    ) -> BoxFuture<'a, Result<(), TransferError>> {
        let width = self.inner.config.max_concurrent_per_registry.max(1);
        let (content, digest, depth) = manifest;
        Box::pin(async move {
            match content {
                ManifestContent::Index { children } => {
                    // Judged before any child is fetched: an index nested
                    // 1,000 deep or listing 100,000 children costs a few
                    // requests, not a walk.
                    let seen = tally
                        .manifests_seen
                        .fetch_add(children.len(), Ordering::Relaxed)
                        .saturating_add(children.len())
                        .saturating_add(1);
                    let registry = source.concurrency_key().unwrap_or_else(|| "source".into());
                    check_index_limits(&registry, digest, depth, seen)?;
                    futures::stream::iter(children.iter().map(Ok))
                        .try_for_each_concurrent(width, |child| {
                            self.copy_child(
                                source,
                                target,
                                target_repo,
                                (&child.descriptor, depth + 1),
                                tally,
                            )
                        })
                        .await
                }
                ManifestContent::Image { blobs } => {
                    let bytes = blobs
                        .iter()
                        .fold(0u64, |sum, blob| sum.saturating_add(blob.size));
                    let _ = COPY_SIZE.try_with(|size| size.fetch_add(bytes, Ordering::Relaxed));
                    futures::stream::iter(blobs.iter().map(Ok))
                        .try_for_each_concurrent(width, |blob| {
                            self.copy_blob(source, target, target_repo, blob, tally)
                        })
                        .await
                }
            }
        })
    }

    pub(super) async fn copy_child<S: ContentSource>(
        &self,
        source: &S,
        target: &Arc<RegistryClient>,
        target_repo: &RepositoryRef,
        (descriptor, depth): (&Descriptor, usize),
        tally: &Tally,
    ) -> Result<(), TransferError> {
        let repository = target_repo.repository.as_str();
        if self
            .target_manifest(target, repository, descriptor.digest.as_str())
            .await?
            .is_some()
        {
            bump(&tally.manifests_skipped);
            return Ok(());
        }
        let (bytes, reported_type) = self.source_manifest(source, &descriptor.digest).await?;
        let reported = if reported_type.is_empty() {
            descriptor.media_type.as_str()
        } else {
            reported_type.as_str()
        };
        let media_type = effective_media_type(&bytes, reported);
        let content = manifest::parse(&bytes, &media_type, &descriptor.digest)?;
        self.copy_content(
            source,
            target,
            target_repo,
            (&content, &descriptor.digest, depth),
            tally,
        )
        .await?;
        self.push_manifest(
            target,
            repository,
            descriptor.digest.as_str(),
            &bytes,
            &media_type,
            &descriptor.digest,
        )
        .await?;
        bump(&tally.manifests_copied);
        Ok(())
    }
}
