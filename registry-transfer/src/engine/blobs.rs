//! One blob: single flight per target registry, then found, mounted or
//! uploaded, remembered for the next image that shares it.

use super::*;

/// Blobs recently seen in target repositories, so that a blob shared by
/// many images is checked or mounted instead of re-sent.
#[derive(Default)]
pub(super) struct KnownBlobs {
    by_blob: HashMap<(String, Digest), Vec<(String, Instant)>>,
}

pub(super) const KNOWN_BLOBS_MAX: usize = 100_000;

impl KnownBlobs {
    pub(super) fn live<'a>(
        &'a self,
        registry: &str,
        digest: &Digest,
        ttl: Duration,
    ) -> impl Iterator<Item = &'a str> + 'a {
        let now = Instant::now();
        self.by_blob
            .get(&(registry.to_owned(), digest.clone()))
            .into_iter()
            .flatten()
            .filter(move |(_, seen)| now.duration_since(*seen) < ttl)
            .map(|(repo, _)| repo.as_str())
    }

    pub(super) fn remember(&mut self, registry: &str, repository: &str, digest: &Digest) {
        if self.by_blob.len() >= KNOWN_BLOBS_MAX {
            // A cache, not a record: forgetting only costs a HEAD later.
            self.by_blob.clear();
        }
        let repos = self
            .by_blob
            .entry((registry.to_owned(), digest.clone()))
            .or_default();
        repos.retain(|(repo, _)| repo != repository);
        repos.push((repository.to_owned(), Instant::now()));
    }
}

/// The leader's claim on a blob; dropping it (done, failed or cancelled)
/// releases the waiters.
pub(super) struct Flight<'a> {
    flights: &'a Mutex<HashMap<BlobKey, tokio::sync::watch::Receiver<()>>>,
    key: BlobKey,
    _finished: tokio::sync::watch::Sender<()>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        lock(self.flights).remove(&self.key);
    }
}

impl Transfer {
    /// Single flight per (target registry, blob): one copy moves the
    /// bytes, concurrent copies of the same blob wait for it and then find
    /// it (same repository) or mount it (another repository) in parallel.
    /// If the leader failed, the next waiter becomes the leader.
    pub(super) async fn copy_blob<S: ContentSource>(
        &self,
        source: &S,
        target: &Arc<RegistryClient>,
        target_repo: &RepositoryRef,
        descriptor: &Descriptor,
        tally: &Tally,
    ) -> Result<(), TransferError> {
        let key: BlobKey = (target.name().to_owned(), descriptor.digest.clone());
        let ttl = self.inner.config.known_blob_ttl;
        let mut waited = false;
        loop {
            if waited
                && lock(&self.inner.known)
                    .live(target.name(), &descriptor.digest, ttl)
                    .next()
                    .is_some()
            {
                return self
                    .copy_blob_alone(source, target, target_repo, descriptor, tally)
                    .await;
            }
            let leader = {
                let mut flights = lock(&self.inner.in_flight);
                match flights.get(&key) {
                    Some(done) => Err(done.clone()),
                    None => {
                        let (finished, done) = tokio::sync::watch::channel(());
                        flights.insert(key.clone(), done);
                        Ok(Flight {
                            flights: &self.inner.in_flight,
                            key: key.clone(),
                            _finished: finished,
                        })
                    }
                }
            };
            match leader {
                Ok(_flight) => {
                    return self
                        .copy_blob_alone(source, target, target_repo, descriptor, tally)
                        .await;
                }
                Err(mut done) => {
                    // Resolves when the leader's sender is dropped.
                    let _ = done.changed().await;
                    waited = true;
                }
            }
        }
    }

    pub(super) async fn copy_blob_alone<S: ContentSource>(
        &self,
        source: &S,
        target: &Arc<RegistryClient>,
        target_repo: &RepositoryRef,
        descriptor: &Descriptor,
        tally: &Tally,
    ) -> Result<(), TransferError> {
        let repository = target_repo.repository.as_str();
        let digest = &descriptor.digest;
        let ttl = self.inner.config.known_blob_ttl;
        let mount_from = {
            let known = lock(&self.inner.known);
            if known
                .live(target.name(), digest, ttl)
                .any(|r| r == repository)
            {
                bump(&tally.blobs_skipped);
                return Ok(());
            }
            known
                .live(target.name(), digest, ttl)
                .next()
                .map(str::to_owned)
        };
        let mount_from = mount_from.or_else(|| {
            source
                .mount_origin()
                .filter(|origin| {
                    api_host(&origin.registry) == api_host(&target_repo.registry)
                        && origin.repository != repository
                })
                .map(|origin| origin.repository)
        });
        let remember = || lock(&self.inner.known).remember(target.name(), repository, digest);

        let source_key = source.concurrency_key();
        let _permits = self
            .permits(&[Some(target.name()), source_key.as_deref()])
            .await;
        let mut session = None;
        if let Some(from) = &mount_from {
            match mount(target, repository, digest, from).await? {
                None => {
                    remember();
                    bump(&tally.blobs_mounted);
                    return Ok(());
                }
                Some(opened) => session = Some(opened),
            }
        }
        if session.is_none() && mount_from.is_none() && target.mounts_work() {
            // "Mount from the target repository itself": present, the
            // registry says 201 (skip); absent, it opens the upload session
            // we need anyway. One request instead of HEAD then POST. Only
            // once this registry has shown that it mounts: elsewhere a 202
            // would hide a blob that is in fact there.
            return match mount(target, repository, digest, repository).await? {
                None => {
                    remember();
                    bump(&tally.blobs_skipped);
                    Ok(())
                }
                Some(session) => self
                    .upload(source, target, repository, descriptor, Some(session), tally)
                    .await
                    .map(|()| remember()),
            };
        }
        let scopes = [push_scope(repository)];
        if target.blob_exists(repository, digest, &scopes).await? {
            if let Some(mut session) = session {
                session.cancel().await;
            }
            remember();
            bump(&tally.blobs_skipped);
            return Ok(());
        }
        self.upload(source, target, repository, descriptor, session, tally)
            .await
            .map(|()| remember())
    }

    /// Streams one blob from the source into the target repository.
    pub(super) async fn upload<S: ContentSource>(
        &self,
        source: &S,
        target: &Arc<RegistryClient>,
        repository: &str,
        descriptor: &Descriptor,
        session: Option<SessionGuard>,
        tally: &Tally,
    ) -> Result<(), TransferError> {
        let plan = UploadPlan {
            client: target,
            repository,
            descriptor,
            chunk_size: self.inner.config.chunk_size,
            buffered_max: self.inner.config.buffered_blob_max,
            retry: &self.inner.config.retry,
        };
        let sent = upload_blob(plan, session, |offset| async move {
            let stream = source
                .open_blob_at(descriptor, offset)
                .await
                .map_err(source_error::<S>)?;
            let stream: BlobStream<TransferError> =
                Box::pin(stream.map(|item| item.map_err(source_error::<S>)));
            Ok(stream)
        })
        .await?;
        bump(&tally.blobs_copied);
        tally.bytes_copied.fetch_add(sent, Ordering::Relaxed);
        Ok(())
    }
}

/// Asks `target` to mount `digest` from `from` into `repository`: `None`
/// once mounted, else the upload session the registry opened instead.
async fn mount(
    target: &Arc<RegistryClient>,
    repository: &str,
    digest: &Digest,
    from: &str,
) -> Result<Option<SessionGuard>, TransferError> {
    Ok(
        match target
            .upload_start(repository, Some((digest, from)))
            .await?
        {
            UploadStart::Mounted => None,
            UploadStart::Session(url) => Some(SessionGuard::new(target.clone(), repository, url)),
        },
    )
}
