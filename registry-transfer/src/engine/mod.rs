//! The copy engine: walks an image from any [`ContentSource`] and makes the
//! target repository hold exactly the same bytes, moving as little as it can.
//!
//! The pieces: `request` (what to copy where, what a copy did, the tag
//! policy), `manifests` (walking an image top-down and pushing its
//! manifests bottom-up), `blobs` (one blob: single flight, skip, mount or
//! upload); this file holds the engine, its limits and its deadlines.

mod blobs;
mod manifests;
mod request;

use blobs::KnownBlobs;
pub use request::{CopyReport, CopyRequest, TagDecision, tag_decision};

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
