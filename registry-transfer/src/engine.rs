//! The copy engine: walks an image from any [`ContentSource`] and makes the
//! target repository hold exactly the same bytes, moving as little as it can.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};

use crate::bounded::{MAX_INDEX_DEPTH, MAX_MANIFESTS_PER_IMAGE, ThroughputFloor};
use crate::client::{
    COPY_REQUESTS, HttpTuning, RegistryClient, RegistrySettings, UploadStart, push_scope,
};
use crate::error::TransferError;
use crate::limits::{Limiter, Permits};
use crate::manifest::{
    self, ManifestContent, Platform, effective_media_type, filter_index, sha256_digest, verify,
};
use crate::reference::{ImageReference, RepositoryRef, api_host, deterministic_tag, is_valid_tag};
use crate::referrers::{ReferrerCopy, ReferrerTarget, ReferrersPolicy, image_subjects};
use crate::registry_source::RegistrySource;
use crate::retry::RetryPolicy;
use crate::source::SourceErrorKind;
use crate::upload::{SessionGuard, UploadPlan, upload_blob};
use crate::{BlobStream, ContentSource, Descriptor, Digest};

/// Engine-wide tuning.
#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Concurrent registry operations in the whole process. A streamed blob
    /// copy (source GET plus target upload) counts as one.
    pub max_concurrent_requests: usize,
    /// Concurrent operations per registry (source and target alike).
    pub max_concurrent_per_registry: usize,
    /// Streamed blobs are sent in PATCH requests of at most this size.
    pub chunk_size: u64,
    /// Blobs up to this size are read and verified in memory, then sent
    /// in one PUT (two requests instead of three); larger ones stream.
    /// Bounds memory at this times the number of concurrent operations.
    pub buffered_blob_max: u64,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// Longest silence on a connection before it counts as broken.
    pub read_timeout: Duration,
    /// Longest time to receive one answer that is read whole: a manifest,
    /// a token, a tag-list page, an error body, an image config. These are
    /// small and bounded ([`crate::bounded`]), so a registry trickling one
    /// in is given up on instead of holding the copy.
    pub body_timeout: Duration,
    /// Slowest a blob download may be, judged over each window; `None`:
    /// only `read_timeout` applies.
    pub blob_throughput_floor: Option<ThroughputFloor>,
    /// How long a blob seen in a target repository is trusted to still be
    /// there without asking again.
    pub known_blob_ttl: Duration,
    /// The overall time one copy may take; `None`: no overall limit.
    pub copy_deadline: Option<CopyDeadline>,
}

/// How long one copy may take in all: `base` plus the bytes of the image
/// (as far as its manifests have been read) at `min_bytes_per_second`.
/// The limit grows while the engine learns the image's size, so a large
/// image gets its time and a trickling registry is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyDeadline {
    pub base: Duration,
    pub min_bytes_per_second: u64,
}

impl CopyDeadline {
    /// The limit for an image of `bytes` (saturating: never panics on a
    /// size a registry made up).
    pub fn limit_for(&self, bytes: u64) -> Duration {
        let per_second = self.min_bytes_per_second.max(1);
        let seconds = bytes.div_ceil(per_second);
        self.base.saturating_add(Duration::from_secs(seconds))
    }
}

tokio::task_local! {
    /// Bytes of the blobs of the copy running in this task, as its
    /// manifests are read (what [`CopyDeadline`] is judged by).
    static COPY_SIZE: Arc<AtomicU64>;
}

/// How often a running copy is compared with its deadline.
const DEADLINE_TICK: Duration = Duration::from_millis(250);

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            max_concurrent_requests: 64,
            max_concurrent_per_registry: 32,
            chunk_size: 128 * 1024 * 1024,
            buffered_blob_max: 512 * 1024,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            // ~1 KiB/s: far below any working link, far above a trickle.
            blob_throughput_floor: Some(ThroughputFloor {
                min_bytes: 64 * 1024,
                window: Duration::from_secs(60),
            }),
            known_blob_ttl: Duration::from_secs(300),
            copy_deadline: None,
        }
    }
}

/// Runs `work` until it ends or outlives `deadline` for the bytes known
/// so far; then it is dropped (its requests cancelled, its upload
/// sessions cleaned up by their guards).
async fn within_deadline(
    work: impl std::future::Future<Output = Result<CopyReport, TransferError>>,
    deadline: CopyDeadline,
    size: &AtomicU64,
    started: Instant,
    request: &CopyRequest,
) -> Result<CopyReport, TransferError> {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(DEADLINE_TICK);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = tick.tick() => {
                let bytes_known = size.load(Ordering::Relaxed);
                let limit = deadline.limit_for(bytes_known);
                let elapsed = started.elapsed();
                if elapsed > limit {
                    return Err(TransferError::CopyDeadlineExceeded {
                        target: request.target.to_string(),
                        deadline_seconds: limit.as_secs(),
                        elapsed_seconds: elapsed.as_secs(),
                        bytes_known,
                    });
                }
            }
        }
    }
}

/// What to copy where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyRequest {
    pub target: RepositoryRef,
    /// The tag to set in the target. `None`: the deterministic tag of the
    /// final digest ([`deterministic_tag`]).
    pub tag: Option<String>,
    /// Only these platforms of a multi-platform index (empty: all). When
    /// this drops children, the pushed index is new and has a new digest.
    pub platforms: Vec<Platform>,
    /// Whether a target tag that points elsewhere may be moved.
    pub allow_tag_move: bool,
    /// Which signatures, SBOMs and attestations come along (default:
    /// none, the image alone).
    pub referrers: ReferrersPolicy,
    /// More tags pointed at the copy once it is there, moved from wherever
    /// they pointed (a source's own tag beside a deterministic one): one
    /// manifest PUT each, where a second copy would read the source again.
    pub moved_tags: Vec<String>,
}

impl CopyRequest {
    pub fn new(target: RepositoryRef) -> CopyRequest {
        CopyRequest {
            target,
            tag: None,
            platforms: Vec::new(),
            allow_tag_move: false,
            referrers: ReferrersPolicy::None,
            moved_tags: Vec::new(),
        }
    }

    /// Also points `tag` at the copy, moving it if it points elsewhere
    /// (see [`CopyRequest::moved_tags`]).
    pub fn also_tagging(mut self, tag: impl Into<String>) -> CopyRequest {
        self.moved_tags.push(tag.into());
        self
    }

    pub fn with_referrers(mut self, referrers: ReferrersPolicy) -> CopyRequest {
        self.referrers = referrers;
        self
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> CopyRequest {
        self.tag = Some(tag.into());
        self
    }

    pub fn with_platforms(mut self, platforms: Vec<Platform>) -> CopyRequest {
        self.platforms = platforms;
        self
    }

    pub fn allowing_tag_move(mut self, allow: bool) -> CopyRequest {
        self.allow_tag_move = allow;
        self
    }
}

/// What a copy did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyReport {
    pub target: RepositoryRef,
    /// The tag now pointing at `digest` in the target.
    pub tag: String,
    /// Digest of the top-level manifest or index at the source.
    pub source_digest: Digest,
    /// Digest of the top-level manifest or index in the target. Equal to
    /// `source_digest` unless a platform filter rewrote the index.
    pub digest: Digest,
    /// True when a platform filter dropped children, so the target index
    /// (and its digest) differs from the source's.
    pub index_digest_changed: bool,
    /// The target already had everything: nothing was written.
    pub up_to_date: bool,
    pub manifests_copied: u32,
    pub manifests_skipped: u32,
    pub blobs_copied: u32,
    pub blobs_skipped: u32,
    pub blobs_mounted: u32,
    /// Blob bytes streamed into the target (manifests not counted).
    pub bytes_copied: u64,
    /// HTTP requests this copy made (token requests included), source and
    /// target together.
    pub requests: u64,
    /// The referrers brought along (or found already there), as the
    /// request's policy chose them. Their manifests and blobs are counted
    /// in the figures above too.
    pub referrers: Vec<ReferrerCopy>,
}

#[derive(Default)]
pub(crate) struct Tally {
    manifests_copied: AtomicU32,
    manifests_skipped: AtomicU32,
    blobs_copied: AtomicU32,
    blobs_skipped: AtomicU32,
    blobs_mounted: AtomicU32,
    bytes_copied: AtomicU64,
    /// Manifests this copy has been shown so far, all index levels
    /// counted, against [`MAX_MANIFESTS_PER_IMAGE`].
    manifests_seen: AtomicUsize,
}

/// Checks an index about to be walked against the complexity limits:
/// `depth` is its nesting level (the top manifest is 0), `seen` the
/// manifests counted so far including its children. Pure, so the limits
/// are unit-tested without a registry.
pub(crate) fn check_index_limits(
    registry: &str,
    digest: &Digest,
    depth: usize,
    seen: usize,
) -> Result<(), TransferError> {
    let too_complex = |detail: String| TransferError::ImageTooComplex {
        registry: registry.to_owned(),
        digest: digest.to_string(),
        detail,
    };
    if depth >= MAX_INDEX_DEPTH {
        return Err(too_complex(format!(
            "indexes nested more than {MAX_INDEX_DEPTH} deep"
        )));
    }
    if seen > MAX_MANIFESTS_PER_IMAGE {
        return Err(too_complex(format!(
            "more than {MAX_MANIFESTS_PER_IMAGE} manifests in all"
        )));
    }
    Ok(())
}

fn bump(counter: &AtomicU32) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Tally {
    pub(crate) fn count_manifest_copied(&self) {
        bump(&self.manifests_copied);
    }
}

/// What to do about the target tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagDecision {
    /// The tag already points at the wanted digest.
    UpToDate,
    /// Push (the tag is absent, or may be moved).
    Push,
    /// The tag points elsewhere and may not be moved.
    Conflict(Digest),
}

/// The tag policy, pure: refuse to move a tag unless allowed.
pub fn tag_decision(existing: Option<&Digest>, wanted: &Digest, allow_move: bool) -> TagDecision {
    match existing {
        None => TagDecision::Push,
        Some(existing) if existing == wanted => TagDecision::UpToDate,
        Some(_) if allow_move => TagDecision::Push,
        Some(existing) => TagDecision::Conflict(existing.clone()),
    }
}

/// Blobs recently seen in target repositories, so that a blob shared by
/// many images is checked or mounted instead of re-sent.
#[derive(Default)]
struct KnownBlobs {
    by_blob: HashMap<(String, Digest), Vec<(String, Instant)>>,
}

const KNOWN_BLOBS_MAX: usize = 100_000;

impl KnownBlobs {
    fn live<'a>(
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

    fn remember(&mut self, registry: &str, repository: &str, digest: &Digest) {
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

/// The copy engine. Cheap to clone; clones share connections, tokens,
/// limits and the single-flight state, so one per process is the idea.
#[derive(Clone)]
pub struct Transfer {
    inner: Arc<Inner>,
}

/// A blob in a target registry: (registry, digest).
type BlobKey = (String, Digest);

struct Inner {
    config: TransferConfig,
    settings: RegistrySettings,
    tuning: HttpTuning,
    clients: Mutex<HashMap<String, Arc<RegistryClient>>>,
    limiter: Limiter,
    /// Blobs being copied right now; waiters watch for the sender to drop.
    in_flight: Mutex<HashMap<BlobKey, tokio::sync::watch::Receiver<()>>>,
    known: Mutex<KnownBlobs>,
}

/// The leader's claim on a blob; dropping it (done, failed or cancelled)
/// releases the waiters.
struct Flight<'a> {
    flights: &'a Mutex<HashMap<BlobKey, tokio::sync::watch::Receiver<()>>>,
    key: BlobKey,
    _finished: tokio::sync::watch::Sender<()>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        lock(self.flights).remove(&self.key);
    }
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("config", &self.inner.config)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing in these maps can be left half-updated by a panic.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turns a source's error into ours, keeping our own errors as they are.
pub(crate) fn source_error<S: ContentSource>(error: S::Error) -> TransferError {
    let kind = S::classify_error(&error);
    let boxed: Box<dyn StdError + Send + Sync> = Box::new(error);
    match boxed.downcast::<TransferError>() {
        Ok(ours) => *ours,
        Err(other) => {
            let detail = crate::client::error_chain(other.as_ref());
            match kind {
                SourceErrorKind::NotFound => TransferError::SourceNotFound { what: detail },
                SourceErrorKind::Transient => TransferError::SourceUnavailable {
                    detail,
                    transient: true,
                },
                SourceErrorKind::Other => TransferError::SourceUnavailable {
                    detail,
                    transient: false,
                },
            }
        }
    }
}

impl Transfer {
    pub fn new(config: TransferConfig, settings: RegistrySettings) -> Transfer {
        let tuning = HttpTuning {
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            body_timeout: config.body_timeout,
            blob_floor: config.blob_throughput_floor,
            retry: config.retry.clone(),
            max_idle_per_host: config.max_concurrent_per_registry.max(8),
        };
        let limiter = Limiter::new(
            config.max_concurrent_requests,
            config.max_concurrent_per_registry,
        );
        Transfer {
            inner: Arc::new(Inner {
                config,
                settings,
                tuning,
                clients: Mutex::new(HashMap::new()),
                limiter,
                in_flight: Mutex::new(HashMap::new()),
                known: Mutex::new(KnownBlobs::default()),
            }),
        }
    }

    pub fn config(&self) -> &TransferConfig {
        &self.inner.config
    }

    /// HTTP requests made so far by all copies and sources of this engine.
    pub fn requests_made(&self) -> u64 {
        lock(&self.inner.clients)
            .values()
            .map(|c| c.requests())
            .sum()
    }

    pub(crate) fn client(&self, registry: &str) -> Result<Arc<RegistryClient>, TransferError> {
        // One client per registry, whatever alias or case it is written with.
        let registry = &crate::credentials::normalize_registry(registry);
        if let Some(client) = lock(&self.inner.clients).get(registry) {
            return Ok(client.clone());
        }
        // Built outside the lock: loading system roots takes a moment.
        let client = Arc::new(RegistryClient::new(
            registry,
            api_host(registry),
            self.inner.settings.client_options(registry),
            &self.inner.tuning,
        )?);
        Ok(lock(&self.inner.clients)
            .entry(registry.to_owned())
            .or_insert(client)
            .clone())
    }

    /// A registry image as a source, sharing this engine's connections.
    pub fn registry_source(&self, image: &ImageReference) -> Result<RegistrySource, TransferError> {
        let client = self.client(&image.registry)?;
        Ok(RegistrySource::new(client, image.clone()))
    }

    /// What a registry holds under an image reference (its digest if
    /// given, else its tag): the manifest digest, or `None` if absent. One
    /// HEAD request; never counts as a pull on Docker Hub.
    pub async fn manifest_digest(
        &self,
        image: &ImageReference,
    ) -> Result<Option<Digest>, TransferError> {
        let client = self.client(&image.registry)?;
        let repository = image.repository.as_str();
        let reference = match (&image.digest, &image.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        };
        let _permits = self.permits(&[Some(client.name())]).await;
        let scopes = [crate::client::pull_scope(repository)];
        Ok(client
            .manifest_digest(repository, &reference, &scopes)
            .await?
            .map(|head| head.digest))
    }

    /// Copies a registry image. Without a tag in `request`, the source's
    /// tag is used, and for a digest-only source the deterministic tag.
    pub async fn copy_image(
        &self,
        source: &ImageReference,
        request: &CopyRequest,
    ) -> Result<CopyReport, TransferError> {
        let registry_source = self.registry_source(source)?;
        let mut request = request.clone();
        if request.tag.is_none() {
            request.tag = source.tag.clone();
        }
        self.copy(&registry_source, &request).await
    }

    /// Copies the image `source` was opened for into `request.target`.
    pub async fn copy<S: ContentSource>(
        &self,
        source: &S,
        request: &CopyRequest,
    ) -> Result<CopyReport, TransferError> {
        let counter = Arc::new(AtomicU64::new(0));
        let size = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let work = COPY_SIZE.scope(
            size.clone(),
            COPY_REQUESTS.scope(counter.clone(), self.copy_with_referrers(source, request)),
        );
        let result = match self.inner.config.copy_deadline {
            None => work.await,
            Some(deadline) => within_deadline(work, deadline, &size, started, request).await,
        };
        let requests = counter.load(Ordering::Relaxed);
        match &result {
            Ok(report) => tracing::info!(
                target = %request.target, tag = %report.tag, digest = %report.digest,
                up_to_date = report.up_to_date, blobs_copied = report.blobs_copied,
                blobs_mounted = report.blobs_mounted, bytes = report.bytes_copied,
                referrers = report.referrers.len(), requests, elapsed_ms = started.elapsed().as_millis() as u64, "copied"
            ),
            Err(e) => tracing::warn!(
                target = %request.target, reason = e.reason(), error = %e, requests, "copy failed"
            ),
        }
        result.map(|mut report| {
            report.requests = requests;
            report
        })
    }

    pub(crate) async fn permits(&self, registries: &[Option<&str>]) -> Permits {
        let keys: Vec<&str> = registries.iter().flatten().copied().collect();
        self.inner.limiter.acquire(&keys).await
    }

    pub(crate) async fn target_manifest(
        &self,
        target: &RegistryClient,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Digest>, TransferError> {
        let _permits = self.permits(&[Some(target.name())]).await;
        let scopes = [push_scope(repository)];
        Ok(target
            .manifest_digest(repository, reference, &scopes)
            .await?
            .map(|head| head.digest))
    }

    pub(crate) async fn source_manifest<S: ContentSource>(
        &self,
        source: &S,
        digest: &Digest,
    ) -> Result<(Bytes, String), TransferError> {
        let key = source.concurrency_key();
        let _permits = self.permits(&[key.as_deref()]).await;
        let (bytes, media_type) = source
            .fetch_manifest(digest)
            .await
            .map_err(source_error::<S>)?;
        verify(&bytes, digest)?;
        Ok((bytes, media_type))
    }

    pub(crate) async fn resolve_source<S: ContentSource>(
        &self,
        source: &S,
    ) -> Result<Digest, TransferError> {
        let key = source.concurrency_key();
        let _permits = self.permits(&[key.as_deref()]).await;
        Ok(source.resolve().await.map_err(source_error::<S>)?.digest)
    }

    pub(crate) async fn push_manifest(
        &self,
        target: &RegistryClient,
        repository: &str,
        reference: &str,
        bytes: &Bytes,
        media_type: &str,
        digest: &Digest,
    ) -> Result<(), TransferError> {
        let _permits = self.permits(&[Some(target.name())]).await;
        let stored = target
            .manifest_put(repository, reference, bytes, media_type)
            .await?;
        match stored.digest {
            Some(stored) if &stored != digest => Err(TransferError::DigestMismatch {
                expected: digest.clone(),
                actual: stored.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The image, then (when the policy asks) its referrers. The tally is
    /// shared, so the report counts both.
    async fn copy_with_referrers<S: ContentSource>(
        &self,
        source: &S,
        request: &CopyRequest,
    ) -> Result<CopyReport, TransferError> {
        let tally = Tally::default();
        let (mut report, content) = self.copy_inner(source, request, &tally).await?;
        if request.referrers.is_none() {
            return Ok(report);
        }
        let content = match content {
            Some(content) => content,
            // Warm: the image was not read; its manifest says which
            // platform manifests may have referrers of their own.
            None => {
                let (bytes, reported) = self.source_manifest(source, &report.source_digest).await?;
                let media_type = effective_media_type(&bytes, &reported);
                manifest::parse(&bytes, &media_type, &report.source_digest)?
            }
        };
        let subjects = image_subjects(&report.digest, report.index_digest_changed, &content);
        let target = self.client(&request.target.registry)?;
        let referrers = self
            .copy_referrers(
                source,
                Some(ReferrerTarget {
                    client: &target,
                    repo: &request.target,
                }),
                subjects,
                &request.referrers,
                &tally,
            )
            .await?;
        report.manifests_copied = tally.manifests_copied.load(Ordering::Relaxed);
        report.manifests_skipped =
            tally.manifests_skipped.load(Ordering::Relaxed) + u32::from(report.up_to_date);
        report.blobs_copied = tally.blobs_copied.load(Ordering::Relaxed);
        report.blobs_skipped = tally.blobs_skipped.load(Ordering::Relaxed);
        report.blobs_mounted = tally.blobs_mounted.load(Ordering::Relaxed);
        report.bytes_copied = tally.bytes_copied.load(Ordering::Relaxed);
        report.referrers = referrers;
        Ok(report)
    }

    /// Copies the image alone. Returns its report and the content pushed
    /// at the top (`None` when the target was up to date without reading
    /// it).
    async fn copy_inner<S: ContentSource>(
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
            let tag = request
                .tag
                .clone()
                .unwrap_or_else(|| deterministic_tag(known));
            let existing = match early.take() {
                Some((early_tag, existing)) if early_tag == tag => existing,
                _ => self.target_manifest(&target, repository, &tag).await?,
            };
            match tag_decision(existing.as_ref(), known, request.allow_tag_move) {
                TagDecision::UpToDate => {
                    let moved = self
                        .point_moved_tags(
                            source,
                            &target,
                            repository,
                            &request.moved_tags,
                            known,
                            None,
                        )
                        .await?;
                    let report = report(tag, known.clone(), known.clone(), false, !moved, tally);
                    return Ok((report, None));
                }
                TagDecision::Conflict(existing) => {
                    return Err(TransferError::TagConflict {
                        repository: request.target.to_string(),
                        tag,
                        existing: existing.to_string(),
                        wanted: known.clone(),
                    });
                }
                TagDecision::Push => checked = Some((tag, existing)),
            }
        }

        let source_digest = match source_digest {
            Some(digest) => digest,
            None => self.resolve_source(source).await?,
        };
        let (bytes, reported_type) = self.source_manifest(source, &source_digest).await?;
        let media_type = effective_media_type(&bytes, &reported_type);
        let content = manifest::parse(&bytes, &media_type, &source_digest)?;
        let (bytes, digest, content, changed) = match (&content, filtering) {
            (ManifestContent::Index { children }, true) => {
                match filter_index(&bytes, &source_digest, children, &request.platforms)? {
                    Some((new_bytes, kept)) => {
                        let new_digest = sha256_digest(&new_bytes);
                        (
                            new_bytes,
                            new_digest,
                            ManifestContent::Index { children: kept },
                            true,
                        )
                    }
                    None => (bytes, source_digest.clone(), content, false),
                }
            }
            _ => (bytes, source_digest.clone(), content, false),
        };

        let tag = request
            .tag
            .clone()
            .unwrap_or_else(|| deterministic_tag(&digest));
        let existing = match checked {
            Some((checked_tag, existing)) if checked_tag == tag => existing,
            _ => self.target_manifest(&target, repository, &tag).await?,
        };
        match tag_decision(existing.as_ref(), &digest, request.allow_tag_move) {
            TagDecision::UpToDate => {
                let moved = self
                    .point_moved_tags(
                        source,
                        &target,
                        repository,
                        &request.moved_tags,
                        &digest,
                        Some((&bytes, &media_type)),
                    )
                    .await?;
                let report = report(tag, source_digest, digest, changed, !moved, tally);
                return Ok((report, Some(content)));
            }
            TagDecision::Conflict(existing) => {
                return Err(TransferError::TagConflict {
                    repository: request.target.to_string(),
                    tag,
                    existing: existing.to_string(),
                    wanted: digest,
                });
            }
            TagDecision::Push => {}
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

    /// Points `tags` at `digest` in a target that already holds it: one
    /// HEAD each, and a PUT of the manifest for each that points
    /// elsewhere or nowhere (its bytes as read, else read from the source,
    /// verified, only then). Whether any tag was written.
    async fn point_moved_tags<S: ContentSource>(
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

    async fn copy_child<S: ContentSource>(
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

    /// Single flight per (target registry, blob): one copy moves the
    /// bytes, concurrent copies of the same blob wait for it and then find
    /// it (same repository) or mount it (another repository) in parallel.
    /// If the leader failed, the next waiter becomes the leader.
    async fn copy_blob<S: ContentSource>(
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

    async fn copy_blob_alone<S: ContentSource>(
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
            match target
                .upload_start(repository, Some((digest, from)))
                .await?
            {
                UploadStart::Mounted => {
                    remember();
                    bump(&tally.blobs_mounted);
                    return Ok(());
                }
                UploadStart::Session(url) => {
                    session = Some(SessionGuard::new(target.clone(), repository, url));
                }
            }
        }
        if session.is_none() && mount_from.is_none() && target.mounts_work() {
            // "Mount from the target repository itself": present, the
            // registry says 201 (skip); absent, it opens the upload session
            // we need anyway. One request instead of HEAD then POST. Only
            // once this registry has shown that it mounts: elsewhere a 202
            // would hide a blob that is in fact there.
            match target
                .upload_start(repository, Some((digest, repository)))
                .await?
            {
                UploadStart::Mounted => {
                    remember();
                    bump(&tally.blobs_skipped);
                    return Ok(());
                }
                UploadStart::Session(url) => {
                    let session = SessionGuard::new(target.clone(), repository, url);
                    return self
                        .upload(source, target, repository, descriptor, Some(session), tally)
                        .await
                        .map(|()| remember());
                }
            }
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
    async fn upload<S: ContentSource>(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Compile-time check: copies can be spawned on a multi-threaded runtime.
    #[allow(dead_code)]
    fn copy_futures_are_send(
        transfer: &Transfer,
        source: &RegistrySource,
        image: &ImageReference,
        request: &CopyRequest,
    ) {
        fn send<T: Send>(_: T) {}
        send(transfer.copy(source, request));
        send(transfer.copy_image(image, request));
        send(transfer.clone());
    }

    #[test]
    fn a_deadline_is_its_base_plus_the_size_at_the_minimum_throughput() {
        let deadline = CopyDeadline {
            base: Duration::from_secs(60),
            min_bytes_per_second: 1024 * 1024,
        };
        assert_eq!(deadline.limit_for(0), Duration::from_secs(60));
        assert_eq!(deadline.limit_for(1), Duration::from_secs(61));
        assert_eq!(
            deadline.limit_for(1024 * 1024 * 1024),
            Duration::from_secs(60 + 1024)
        );
        // A size a registry made up neither panics nor wraps around.
        assert!(deadline.limit_for(u64::MAX) > Duration::from_secs(1 << 40));
        let zero = CopyDeadline {
            base: Duration::from_secs(1),
            min_bytes_per_second: 0,
        };
        assert_eq!(zero.limit_for(5), Duration::from_secs(6));
    }

    #[test]
    fn tag_policy_refuses_moves_unless_allowed() {
        let a = sha256_digest(b"a");
        let b = sha256_digest(b"b");
        assert_eq!(tag_decision(None, &a, false), TagDecision::Push);
        assert_eq!(tag_decision(Some(&a), &a, false), TagDecision::UpToDate);
        assert_eq!(
            tag_decision(Some(&b), &a, false),
            TagDecision::Conflict(b.clone())
        );
        assert_eq!(tag_decision(Some(&b), &a, true), TagDecision::Push);
    }

    #[test]
    fn index_limits_bound_depth_and_total_manifests() {
        let d = sha256_digest(b"i");
        assert!(check_index_limits("r", &d, 0, 2).is_ok());
        assert!(check_index_limits("r", &d, MAX_INDEX_DEPTH - 1, MAX_MANIFESTS_PER_IMAGE).is_ok());
        let deep = check_index_limits("r", &d, MAX_INDEX_DEPTH, 2).unwrap_err();
        assert_eq!(deep.reason(), "ImageTooComplex");
        assert!(
            deep.to_string().contains("nested more than 8 deep"),
            "{deep}"
        );
        assert!(deep.to_string().contains("from r "), "{deep}");
        let wide = check_index_limits("r", &d, 0, MAX_MANIFESTS_PER_IMAGE + 1).unwrap_err();
        assert!(
            wide.to_string().contains("more than 1000 manifests"),
            "{wide}"
        );
    }

    #[test]
    fn known_blobs_expire_and_prefer_nothing_stale() {
        let mut known = KnownBlobs::default();
        let d = sha256_digest(b"x");
        known.remember("r", "a", &d);
        known.remember("r", "b", &d);
        known.remember("r", "a", &d);
        let live: Vec<&str> = known.live("r", &d, Duration::from_secs(60)).collect();
        assert_eq!(live, vec!["b", "a"]);
        assert_eq!(known.live("r", &d, Duration::ZERO).count(), 0);
        assert_eq!(known.live("other", &d, Duration::from_secs(60)).count(), 0);
    }
}
