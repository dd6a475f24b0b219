//! Moving one blob from a source into a target upload session, verified.
//!
//! Nothing is committed under a wrong digest, and no request is ever cut
//! half-way on purpose (distribution 2.8 cannot resume nor even delete a
//! session whose last request broke off, so such sessions linger):
//!
//! * Small blobs (up to `buffered_max`, i.e. configs and small layers) are
//!   read and verified in memory first, then sent in one PUT: two requests,
//!   and a wrong blob never reaches the target at all.
//! * Larger blobs stream source response -> hasher -> PATCH body through a
//!   small bounded channel, in PATCH requests of at most `chunk_size`. When
//!   the source breaks off, the PATCH body is ended cleanly, so the registry
//!   holds exactly the bytes we hashed; the source is reopened at that offset
//!   (HTTP Range) and the upload resumes. Only when the whole blob has
//!   passed the hasher, and the digest matched, is the session committed
//!   (PUT with the digest and no body); on a mismatch it is deleted.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use reqwest::Url;
use sha2::{Digest as _, Sha256, Sha512};
use tokio::sync::mpsc;

use crate::client::{RegistryClient, UploadStart, push_scope};
use crate::error::TransferError;
use crate::retry::RetryPolicy;
use crate::{BlobStream, Descriptor};

/// sha256 or sha512, whichever the descriptor uses.
#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn for_algorithm(algorithm: &str) -> Hasher {
        match algorithm {
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn digest_string(&self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.clone().finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.clone().finalize())),
        }
    }
}

/// Checks the size and digest of everything hashed so far.
fn check(hasher: &Hasher, received: u64, descriptor: &Descriptor) -> Result<(), TransferError> {
    if received != descriptor.size {
        return Err(TransferError::SizeMismatch {
            digest: descriptor.digest.clone(),
            expected: descriptor.size,
            actual: received,
        });
    }
    let actual = hasher.digest_string();
    if actual != descriptor.digest.as_str() {
        return Err(TransferError::DigestMismatch {
            expected: descriptor.digest.clone(),
            actual,
        });
    }
    Ok(())
}

fn too_long(descriptor: &Descriptor, actual: u64) -> TransferError {
    TransferError::SizeMismatch {
        digest: descriptor.digest.clone(),
        expected: descriptor.size,
        actual,
    }
}

type BodyItem = Result<Bytes, std::io::Error>;

/// A source interruption after at least this much progress does not count
/// against the retry budget: a flaky but advancing source still finishes,
/// and each such retry moves the upload forward by this much at least.
const PROGRESS_FOR_FREE_RETRY: u64 = 64 * 1024;

fn body_from(receiver: mpsc::Receiver<BodyItem>) -> reqwest::Body {
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    reqwest::Body::wrap_stream(stream)
}

/// How one PATCH body ended.
struct Fed {
    /// Bytes sent (and hashed) into this request.
    sent: u64,
    /// Set when the source failed: the body was ended early, cleanly.
    source_error: Option<TransferError>,
    /// The request stopped reading: its own result says why.
    body_dropped: bool,
}

/// An open upload session that is deleted if nobody commits or cancels it:
/// when a copy fails, its sibling uploads are dropped mid-way, and their
/// sessions must not linger in the target.
pub(crate) struct SessionGuard {
    client: Arc<RegistryClient>,
    repository: String,
    url: Option<Url>,
}

impl SessionGuard {
    pub(crate) fn new(client: Arc<RegistryClient>, repository: &str, url: Url) -> SessionGuard {
        SessionGuard {
            client,
            repository: repository.to_owned(),
            url: Some(url),
        }
    }

    async fn open(
        client: &Arc<RegistryClient>,
        repository: &str,
    ) -> Result<SessionGuard, TransferError> {
        let url = start_session(client, repository).await?;
        Ok(SessionGuard::new(client.clone(), repository, url))
    }

    fn url(&self) -> Result<&Url, TransferError> {
        self.url.as_ref().ok_or_else(|| TransferError::Protocol {
            registry: self.client.name().to_owned(),
            detail: "internal: upload session already closed".into(),
        })
    }

    fn moved_to(&mut self, url: Url) {
        self.url = Some(url);
    }

    fn committed(&mut self) {
        self.url = None;
    }

    pub(crate) async fn cancel(&mut self) {
        if let Some(url) = self.url.take() {
            self.client.upload_cancel(&url, &self.repository).await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some(url) = self.url.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let repository = std::mem::take(&mut self.repository);
            runtime.spawn(async move { client.upload_cancel(&url, &repository).await });
        }
    }
}

/// The tuning of one blob upload.
pub(crate) struct UploadPlan<'a> {
    pub client: &'a Arc<RegistryClient>,
    pub repository: &'a str,
    pub descriptor: &'a Descriptor,
    pub chunk_size: u64,
    pub buffered_max: u64,
    pub retry: &'a RetryPolicy,
}

/// Uploads a blob, retrying transient failures; `open(offset)` opens the
/// source at a byte offset. `session` is an upload already opened (by a
/// mount request that fell back). Returns the bytes sent to the target.
pub(crate) async fn upload_blob<F, Fut>(
    plan: UploadPlan<'_>,
    session: Option<SessionGuard>,
    open: F,
) -> Result<u64, TransferError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<BlobStream<TransferError>, TransferError>>,
{
    if plan.descriptor.size <= plan.buffered_max {
        upload_buffered(plan, session, open).await
    } else {
        upload_streamed(plan, session, open).await
    }
}

async fn read_all(
    mut stream: BlobStream<TransferError>,
    descriptor: &Descriptor,
) -> Result<Bytes, TransferError> {
    let mut buffer = BytesMut::with_capacity(descriptor.size as usize);
    while let Some(piece) = stream.next().await {
        let piece = piece?;
        if (buffer.len() + piece.len()) as u64 > descriptor.size {
            return Err(too_long(descriptor, (buffer.len() + piece.len()) as u64));
        }
        buffer.extend_from_slice(&piece);
    }
    Ok(buffer.freeze())
}

async fn upload_buffered<F, Fut>(
    plan: UploadPlan<'_>,
    mut session: Option<SessionGuard>,
    mut open: F,
) -> Result<u64, TransferError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<BlobStream<TransferError>, TransferError>>,
{
    let UploadPlan {
        client,
        repository,
        descriptor,
        retry,
        ..
    } = plan;
    let mut attempt = 1u32;
    loop {
        let result = async {
            // Reading the source and opening the session are independent:
            // one round trip instead of two.
            let existing = session.take();
            let read = async { read_all(open(0).await?, descriptor).await };
            let start = async {
                match existing {
                    Some(session) => Ok(session),
                    None => SessionGuard::open(client, repository).await,
                }
            };
            let (bytes, mut target) = match futures::future::join(read, start).await {
                (Ok(bytes), Ok(target)) => (bytes, target),
                (Err(e), Ok(mut target)) => {
                    target.cancel().await;
                    return Err(e);
                }
                (_, Err(e)) => return Err(e),
            };
            let mut hasher = Hasher::for_algorithm(descriptor.digest.algorithm());
            hasher.update(&bytes);
            if let Err(wrong) = check(&hasher, bytes.len() as u64, descriptor) {
                target.cancel().await;
                return Err(wrong);
            }
            // A failed PUT leaves its session unusable: a retry opens a new one.
            client
                .upload_commit(target.url()?, repository, &descriptor.digest, bytes)
                .await?;
            target.committed();
            Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(descriptor.size),
            Err(error) => match retry.delay_after(attempt, &error, rand::random::<f64>()) {
                Some(delay) => {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                None => return Err(error),
            },
        }
    }
}

/// A source stream with its position and running hash.
struct Pump {
    stream: BlobStream<TransferError>,
    pending: Option<Bytes>,
    hasher: Hasher,
    position: u64,
}

impl Pump {
    async fn next_piece(&mut self) -> Option<Result<Bytes, TransferError>> {
        if let Some(pending) = self.pending.take() {
            return Some(Ok(pending));
        }
        loop {
            match self.stream.next().await? {
                Ok(piece) if piece.is_empty() => continue,
                other => return Some(other),
            }
        }
    }

    /// Sends up to `length` bytes into a PATCH body. A source failure ends
    /// the body early but cleanly (the channel closes, the chunked body
    /// terminates), so the registry keeps exactly what was sent.
    async fn feed(
        &mut self,
        body: mpsc::Sender<BodyItem>,
        length: u64,
        descriptor: &Descriptor,
    ) -> Fed {
        let mut fed = Fed {
            sent: 0,
            source_error: None,
            body_dropped: false,
        };
        while fed.sent < length {
            let mut piece = match self.next_piece().await {
                Some(Ok(piece)) => piece,
                Some(Err(e)) => {
                    fed.source_error = Some(e);
                    break;
                }
                None => {
                    // Shorter than its descriptor: caught by the final check,
                    // but no reason to keep the session around for it.
                    fed.source_error = Some(TransferError::SizeMismatch {
                        digest: descriptor.digest.clone(),
                        expected: descriptor.size,
                        actual: self.position,
                    });
                    break;
                }
            };
            if piece.len() as u64 > length - fed.sent {
                self.pending = Some(piece.split_off((length - fed.sent) as usize));
            }
            // Hash only what goes out: the hash must describe exactly the
            // bytes the registry holds.
            if body.send(Ok(piece.clone())).await.is_err() {
                fed.body_dropped = true;
                self.pending = None;
                break;
            }
            self.hasher.update(&piece);
            self.position += piece.len() as u64;
            fed.sent += piece.len() as u64;
        }
        fed
    }
}

async fn upload_streamed<F, Fut>(
    plan: UploadPlan<'_>,
    session: Option<SessionGuard>,
    mut open: F,
) -> Result<u64, TransferError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<BlobStream<TransferError>, TransferError>>,
{
    let UploadPlan {
        client,
        repository,
        descriptor,
        chunk_size,
        retry,
        ..
    } = plan;
    let chunk_size = chunk_size.max(1);
    let fresh_hasher = || Hasher::for_algorithm(descriptor.digest.algorithm());
    let mut session = match session {
        Some(session) => session,
        None => SessionGuard::open(client, repository).await?,
    };
    // What the registry holds, hashed: the resume point.
    let mut offset = 0u64;
    let mut hasher = fresh_hasher();
    let mut pump: Option<Pump> = None;
    let mut bytes_sent = 0u64;
    let mut attempt = 1u32;
    loop {
        let failure = if offset < descriptor.size {
            let url = session.url()?.clone();
            match patch_once(
                client, repository, descriptor, chunk_size, &url, offset, &hasher, &mut pump,
                &mut open,
            )
            .await
            {
                Ok((next, fed)) => {
                    session.moved_to(next);
                    offset += fed.sent;
                    tracing::debug!(digest = %descriptor.digest, offset, "upload chunk sent");
                    bytes_sent += fed.sent;
                    if let Some(pump) = &pump {
                        hasher = pump.hasher.clone();
                    }
                    match fed.source_error {
                        // Resumable: the registry holds exactly `offset` bytes.
                        Some(error) if error.is_transient() => {
                            pump = None;
                            if fed.sent >= PROGRESS_FOR_FREE_RETRY {
                                // Real progress: not counted as a failed attempt.
                                attempt = attempt.saturating_sub(1).max(1);
                            }
                            Some((error, true))
                        }
                        Some(error) => {
                            session.cancel().await;
                            return Err(error);
                        }
                        None => None,
                    }
                }
                Err(error) => {
                    pump = None;
                    Some((error, false))
                }
            }
        } else {
            // Everything went through the hasher: commit only if it is right.
            if let Err(wrong) = check(&hasher, offset, descriptor) {
                session.cancel().await;
                return Err(wrong);
            }
            match client
                .upload_commit(session.url()?, repository, &descriptor.digest, Bytes::new())
                .await
            {
                Ok(()) => {
                    session.committed();
                    tracing::debug!(digest = %descriptor.digest, bytes_sent, "upload committed");
                    return Ok(bytes_sent);
                }
                Err(error) => Some((error, false)),
            }
        };
        let Some((error, position_known)) = failure else {
            continue;
        };
        let Some(delay) = retry.delay_after(attempt, &error, rand::random::<f64>()) else {
            session.cancel().await;
            return Err(error);
        };
        attempt += 1;
        tracing::debug!(
            registry = client.name(), repository, digest = %descriptor.digest, offset,
            reason = error.reason(), ?delay, "blob upload interrupted, will retry"
        );
        tokio::time::sleep(delay).await;
        if position_known {
            continue;
        }
        // A request to the target failed: ask where the session stands.
        match client.upload_status(session.url()?, repository).await {
            Ok((received, url)) if received == offset => session.moved_to(url),
            _ => {
                session.cancel().await;
                // The commit may have landed with only its answer lost.
                let scopes = [push_scope(repository)];
                if client
                    .blob_exists(repository, &descriptor.digest, &scopes)
                    .await
                    .unwrap_or(false)
                {
                    return Ok(bytes_sent);
                }
                session = SessionGuard::open(client, repository).await?;
                offset = 0;
                hasher = fresh_hasher();
            }
        }
    }
}

/// One PATCH of up to `chunk_size` bytes from `offset`.
#[allow(clippy::too_many_arguments)]
async fn patch_once<F, Fut>(
    client: &RegistryClient,
    repository: &str,
    descriptor: &Descriptor,
    chunk_size: u64,
    session: &Url,
    offset: u64,
    hasher: &Hasher,
    pump_slot: &mut Option<Pump>,
    open: &mut F,
) -> Result<(Url, Fed), TransferError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<BlobStream<TransferError>, TransferError>>,
{
    if pump_slot.is_none() {
        *pump_slot = Some(Pump {
            stream: open(offset).await?,
            pending: None,
            hasher: hasher.clone(),
            position: offset,
        });
    }
    let Some(pump) = pump_slot.as_mut() else {
        return Err(TransferError::Protocol {
            registry: client.name().to_owned(),
            detail: "internal: no source stream".into(),
        });
    };
    let length = chunk_size.min(descriptor.size - offset);
    // Two reads in flight: enough to keep both sockets busy, and memory per
    // stream stays at a few network buffers whatever the blob size.
    let (sender, receiver) = mpsc::channel(2);
    let request = client.upload_patch(session, repository, body_from(receiver));
    let feed = pump.feed(sender, length, descriptor);
    let (request_result, fed) = tokio::join!(request, feed);
    let (next_session, received) = request_result?;
    if fed.body_dropped {
        return Err(TransferError::Protocol {
            registry: client.name().to_owned(),
            detail: "registry answered before reading the upload".into(),
        });
    }
    if let Some(received) = received
        && received != offset + fed.sent
    {
        return Err(TransferError::Interrupted {
            registry: client.name().to_owned(),
            detail: format!(
                "registry holds {received} bytes of the upload, {} were sent",
                offset + fed.sent
            ),
        });
    }
    Ok((next_session, fed))
}

async fn start_session(client: &RegistryClient, repository: &str) -> Result<Url, TransferError> {
    match client.upload_start(repository, None).await? {
        UploadStart::Session(url) => Ok(url),
        UploadStart::Mounted => Err(TransferError::Protocol {
            registry: client.name().to_owned(),
            detail: "upload start answered 201 without a mount request".into(),
        }),
    }
}
