//! Streaming a blob from a source into a target upload session, verified.
//!
//! The bytes flow source response -> hasher -> request body through a small
//! bounded channel; nothing is buffered beyond a few network chunks. The
//! last piece of the blob is held back until the whole blob has been hashed:
//! if the digest or size is wrong the request body fails instead, the
//! connection is cut before the registry has the byte count it was promised,
//! and the session is deleted. So nothing is ever committed under a wrong
//! digest (and the registry's own check on the final PUT is a second net).
//!
//! Blobs larger than the chunk size are sent as PATCH chunks; after each
//! accepted chunk the hasher state is checkpointed, so an interrupted
//! transfer resumes from what the registry reports having received instead
//! of starting over.

use std::future::Future;

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::Url;
use sha2::{Digest as _, Sha256, Sha512};
use tokio::sync::mpsc;

use crate::client::{RegistryClient, UploadStart};
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

/// Why feeding a request body stopped.
enum FeedError {
    /// The source failed, or its bytes are wrong.
    Source(TransferError),
    /// The request ended before taking all bytes: its own result says why.
    BodyDropped,
}

type BodyItem = Result<Bytes, std::io::Error>;

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
                Ok(chunk) if chunk.is_empty() => continue,
                other => return Some(other),
            }
        }
    }

    fn size_mismatch(&self, descriptor: &Descriptor, actual: u64) -> TransferError {
        TransferError::SizeMismatch {
            digest: descriptor.digest.clone(),
            expected: descriptor.size,
            actual,
        }
    }

    /// Reads and hashes `length` bytes without sending them (the registry
    /// already has them: resuming after a partially received chunk).
    async fn skip(&mut self, length: u64, descriptor: &Descriptor) -> Result<(), TransferError> {
        let mut left = length;
        while left > 0 {
            let mut piece = match self.next_piece().await {
                Some(piece) => piece?,
                None => return Err(self.size_mismatch(descriptor, self.position)),
            };
            if piece.len() as u64 > left {
                self.pending = Some(piece.split_off(left as usize));
            }
            self.hasher.update(&piece);
            self.position += piece.len() as u64;
            left -= piece.len() as u64;
        }
        Ok(())
    }

    /// Checks that the source is exhausted and the hash is right.
    async fn verify_end(&mut self, descriptor: &Descriptor) -> Result<(), TransferError> {
        match self.next_piece().await {
            None => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(extra)) => {
                return Err(self.size_mismatch(descriptor, self.position + extra.len() as u64));
            }
        }
        if self.position != descriptor.size {
            return Err(self.size_mismatch(descriptor, self.position));
        }
        let actual = self.hasher.digest_string();
        if actual != descriptor.digest.as_str() {
            return Err(TransferError::DigestMismatch {
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Sends the next `length` bytes into `body`. With `is_final`, these
    /// are the blob's last bytes: the last piece goes out only after the
    /// whole blob has been verified.
    async fn feed(
        &mut self,
        body: mpsc::Sender<BodyItem>,
        length: u64,
        is_final: bool,
        descriptor: &Descriptor,
    ) -> Result<(), FeedError> {
        let result = self.feed_inner(&body, length, is_final, descriptor).await;
        if let Err(FeedError::Source(e)) = &result {
            // Fail the body so the request is cut, not completed.
            let _ = body.send(Err(std::io::Error::other(e.reason()))).await;
        }
        result
    }

    async fn feed_inner(
        &mut self,
        body: &mpsc::Sender<BodyItem>,
        length: u64,
        is_final: bool,
        descriptor: &Descriptor,
    ) -> Result<(), FeedError> {
        let mut sent = 0u64;
        let mut held: Option<Bytes> = None;
        while sent < length {
            let mut piece = match self.next_piece().await {
                Some(Ok(piece)) => piece,
                Some(Err(e)) => return Err(FeedError::Source(e)),
                None => break,
            };
            if piece.len() as u64 > length - sent {
                if is_final {
                    let actual = self.position + piece.len() as u64;
                    return Err(FeedError::Source(self.size_mismatch(descriptor, actual)));
                }
                self.pending = Some(piece.split_off((length - sent) as usize));
            }
            self.hasher.update(&piece);
            self.position += piece.len() as u64;
            sent += piece.len() as u64;
            let to_send = if is_final { held.replace(piece) } else { Some(piece) };
            if let Some(to_send) = to_send
                && body.send(Ok(to_send)).await.is_err()
            {
                return Err(FeedError::BodyDropped);
            }
        }
        if sent < length {
            return Err(FeedError::Source(self.size_mismatch(descriptor, self.position)));
        }
        if is_final {
            self.verify_end(descriptor).await.map_err(FeedError::Source)?;
            if let Some(last) = held
                && body.send(Ok(last)).await.is_err()
            {
                return Err(FeedError::BodyDropped);
            }
        }
        Ok(())
    }
}

fn body_from(receiver: mpsc::Receiver<BodyItem>) -> reqwest::Body {
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    reqwest::Body::wrap_stream(stream)
}

/// Where the registry's copy of the upload stands, and our hash up to there.
struct Checkpoint {
    offset: u64,
    hasher: Hasher,
}

/// Tuning of one blob upload.
pub(crate) struct UploadPlan<'a> {
    pub client: &'a RegistryClient,
    pub repository: &'a str,
    pub descriptor: &'a Descriptor,
    pub chunk_size: u64,
    pub retry: &'a RetryPolicy,
}

/// Streams a blob into the target repository, resuming or restarting on
/// transient failures. `open(offset)` opens the source at a byte offset.
/// `session` is an upload already opened (e.g. by a mount that fell back).
/// Returns the number of bytes sent.
pub(crate) async fn upload_blob<F, Fut>(
    plan: UploadPlan<'_>,
    session: Option<Url>,
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
    } = plan;
    let chunk_size = chunk_size.max(1);
    let fresh = || Checkpoint {
        offset: 0,
        hasher: Hasher::for_algorithm(descriptor.digest.algorithm()),
    };
    let mut session = match session {
        Some(session) => session,
        None => start_session(client, repository).await?,
    };
    let mut checkpoint = fresh();
    let mut offset = 0u64;
    let mut pump: Option<Pump> = None;
    let mut bytes_sent = 0u64;
    let mut attempt = 1u32;
    loop {
        let step = send_step(
            client,
            repository,
            descriptor,
            chunk_size,
            &session,
            &checkpoint,
            offset,
            &mut pump,
            &mut open,
        )
        .await;
        match step {
            Ok(Step::Committed { sent }) => return Ok(bytes_sent + sent),
            Ok(Step::Chunk { next_session, sent }) => {
                bytes_sent += sent;
                offset += sent;
                session = next_session;
                if let Some(pump) = &pump {
                    checkpoint = Checkpoint {
                        offset,
                        hasher: pump.hasher.clone(),
                    };
                }
            }
            Err(error) => {
                pump = None;
                let jitter = rand::random::<f64>();
                let delay = retry.delay_after(attempt, &error, jitter);
                let Some(delay) = delay else {
                    client.upload_cancel(&session, repository).await;
                    return Err(error);
                };
                attempt += 1;
                tracing::debug!(
                    registry = client.name(), repository, digest = %descriptor.digest,
                    reason = error.reason(), ?delay, "blob upload interrupted, retrying"
                );
                tokio::time::sleep(delay).await;
                match client.upload_status(&session, repository).await {
                    Ok((received, url))
                        if received >= checkpoint.offset && received <= descriptor.size =>
                    {
                        tracing::debug!(received, "resuming upload");
                        session = url;
                        offset = received;
                    }
                    _ => {
                        client.upload_cancel(&session, repository).await;
                        // The commit may have landed with only its answer lost.
                        let scopes = [crate::client::push_scope(repository)];
                        if client
                            .blob_exists(repository, &descriptor.digest, &scopes)
                            .await
                            .unwrap_or(false)
                        {
                            return Ok(bytes_sent);
                        }
                        session = start_session(client, repository).await?;
                        checkpoint = fresh();
                        offset = 0;
                    }
                }
            }
        }
    }
}

enum Step {
    Chunk { next_session: Url, sent: u64 },
    Committed { sent: u64 },
}

#[allow(clippy::too_many_arguments)]
async fn send_step<F, Fut>(
    client: &RegistryClient,
    repository: &str,
    descriptor: &Descriptor,
    chunk_size: u64,
    session: &Url,
    checkpoint: &Checkpoint,
    offset: u64,
    pump_slot: &mut Option<Pump>,
    open: &mut F,
) -> Result<Step, TransferError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<BlobStream<TransferError>, TransferError>>,
{
    if pump_slot.is_none() {
        let stream = open(checkpoint.offset).await?;
        let mut pump = Pump {
            stream,
            pending: None,
            hasher: checkpoint.hasher.clone(),
            position: checkpoint.offset,
        };
        pump.skip(offset - checkpoint.offset, descriptor).await?;
        *pump_slot = Some(pump);
    }
    let Some(pump) = pump_slot.as_mut() else {
        return Err(TransferError::Protocol {
            registry: client.name().to_owned(),
            detail: "internal: no source stream".into(),
        });
    };
    let remaining = descriptor.size - offset;
    let is_final = remaining <= chunk_size;
    let length = if is_final { remaining } else { chunk_size };
    if is_final && length == 0 {
        // Nothing left to send: verify before committing an empty body.
        pump.verify_end(descriptor).await?;
    }
    let (sender, receiver) = mpsc::channel(8);
    let commit = is_final.then_some(&descriptor.digest);
    let request = client.upload_send(
        session,
        repository,
        offset,
        length,
        commit,
        body_from(receiver),
    );
    let feed = pump.feed(sender, length, is_final, descriptor);
    let (request_result, feed_result) = tokio::join!(request, feed);
    match (request_result, feed_result) {
        (_, Err(FeedError::Source(e))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(_), Err(FeedError::BodyDropped)) => Err(TransferError::Protocol {
            registry: client.name().to_owned(),
            detail: "registry answered before reading the upload".into(),
        }),
        (Ok(next_session), Ok(())) if is_final => {
            let _ = next_session;
            Ok(Step::Committed { sent: length })
        }
        (Ok(next_session), Ok(())) => Ok(Step::Chunk {
            next_session,
            sent: length,
        }),
    }
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
