//! Reading registry answers without trusting them: every body Lifeboat
//! holds in memory goes through [`read_bounded`], with a named limit per
//! kind of answer and a deadline for the whole read, so an endless or
//! trickling body costs at most the limit and the deadline.
//!
//! Blob streams are not read here (they are streamed, never held); their
//! speed is watched by [`ThroughputFloor`].

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;

use crate::error::TransferError;

/// Error bodies: only an excerpt makes it into a message anyway.
pub const MAX_ERROR_BODY_BYTES: u64 = 4 * 1024;
/// Token responses: real tokens are JWTs of a few KiB.
pub const MAX_TOKEN_RESPONSE_BYTES: u64 = 256 * 1024;
/// One page of a tag list: 1,000 tags of the longest allowed name (128
/// characters) are ~130 KiB; registries that ignore `n` and send every tag
/// at once get room for ~60,000 long tags.
pub const MAX_TAG_PAGE_BYTES: u64 = 8 * 1024 * 1024;
/// Manifests: distribution's own limit is 4 MiB.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Image config blobs read for their `created` time (real ones: a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Indexes nest this deep at most (an index of indexes of images is 2;
/// OCI allows nesting but nobody goes past 3).
pub const MAX_INDEX_DEPTH: usize = 8;
/// Manifests one image may consist of, all levels counted (a
/// multi-platform image with attestations has ~20-40).
pub const MAX_MANIFESTS_PER_IMAGE: usize = 1000;

/// What a bounded body is, for the error message and its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    ErrorBody,
    TokenResponse,
    TagPage,
    Manifest,
    ConfigBlob,
}

impl BodyKind {
    pub fn limit(self) -> u64 {
        match self {
            BodyKind::ErrorBody => MAX_ERROR_BODY_BYTES,
            BodyKind::TokenResponse => MAX_TOKEN_RESPONSE_BYTES,
            BodyKind::TagPage => MAX_TAG_PAGE_BYTES,
            BodyKind::Manifest => MAX_MANIFEST_BYTES,
            BodyKind::ConfigBlob => MAX_CONFIG_BYTES,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            BodyKind::ErrorBody => "error body",
            BodyKind::TokenResponse => "token response",
            BodyKind::TagPage => "tag list page",
            BodyKind::Manifest => "manifest",
            BodyKind::ConfigBlob => "image config",
        }
    }

    fn too_large(self, registry: &str) -> TransferError {
        TransferError::ResponseTooLarge {
            registry: registry.to_owned(),
            what: self.describe(),
            limit: self.limit(),
        }
    }
}

/// Reads a whole body of `kind` into memory: refused up front when its
/// `Content-Length` is over the limit, cut off (and refused) as soon as
/// more than the limit arrives, and given up when the read takes longer
/// than `deadline` (a body trickling in byte by byte never trips a
/// per-read timeout).
pub async fn read_bounded(
    registry: &str,
    kind: BodyKind,
    response: reqwest::Response,
    deadline: Duration,
) -> Result<Bytes, TransferError> {
    let limit = kind.limit();
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(kind.too_large(registry));
    }
    let stream = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(|e| e.without_url()));
    read_stream_bounded(registry, kind, stream, deadline).await
}

/// [`read_bounded`] on any stream of chunks (blob streams of config blobs).
pub async fn read_stream_bounded<S, E>(
    registry: &str,
    kind: BodyKind,
    mut stream: S,
    deadline: Duration,
) -> Result<Bytes, TransferError>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BodyError>,
{
    let limit = kind.limit();
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.into().into_transfer_error(registry))?;
            let total = (body.len() as u64).saturating_add(chunk.len() as u64);
            if total > limit {
                return Err(kind.too_large(registry));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(TransferError::TooSlow {
            registry: registry.to_owned(),
            detail: format!(
                "its {} did not arrive within {} s",
                kind.describe(),
                deadline.as_secs_f64()
            ),
        }),
    }
}

/// The first bytes of an error body, for a message: reads at most
/// [`MAX_ERROR_BODY_BYTES`] within `deadline`, whatever the body's length,
/// and never fails (the status is the error; the body only explains it).
pub async fn error_excerpt(response: reqwest::Response, deadline: Duration) -> String {
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            let room = (MAX_ERROR_BODY_BYTES as usize).saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_ERROR_BODY_BYTES as usize {
                break;
            }
        }
    };
    // Whatever arrived by the deadline is the excerpt.
    let _ = tokio::time::timeout(deadline, read).await;
    excerpt(&body)
}

/// At most 300 printable characters of a body.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect()
}

/// A failure while reading a body, from reqwest or from a blob stream.
pub enum BodyError {
    Http(reqwest::Error),
    Transfer(TransferError),
}

impl From<reqwest::Error> for BodyError {
    fn from(e: reqwest::Error) -> Self {
        BodyError::Http(e)
    }
}

impl From<TransferError> for BodyError {
    fn from(e: TransferError) -> Self {
        BodyError::Transfer(e)
    }
}

impl BodyError {
    fn into_transfer_error(self, registry: &str) -> TransferError {
        match self {
            BodyError::Transfer(e) => e,
            BodyError::Http(e) => TransferError::Interrupted {
                registry: registry.to_owned(),
                detail: crate::client::error_chain(&e.without_url()),
            },
        }
    }
}

/// The slowest a blob may arrive: at least `min_bytes` in every `window`.
/// A per-read timeout alone is beaten by one byte per (timeout - 1)
/// seconds; this is not. Checked as chunks arrive (silence is the read
/// timeout's job).
#[derive(Clone, Copy, Debug)]
pub struct ThroughputFloor {
    pub min_bytes: u64,
    pub window: Duration,
}

/// A running [`ThroughputFloor`] check on one stream.
#[derive(Debug)]
pub struct ThroughputWatch {
    floor: ThroughputFloor,
    window_start: Instant,
    window_bytes: u64,
}

impl ThroughputWatch {
    pub fn new(floor: ThroughputFloor) -> ThroughputWatch {
        ThroughputWatch {
            floor,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// Records `bytes` arriving now; `Err(detail)` when the last full
    /// window brought fewer than the floor.
    pub fn record(&mut self, bytes: usize) -> Result<(), String> {
        self.record_at(bytes, Instant::now())
    }

    fn record_at(&mut self, bytes: usize, now: Instant) -> Result<(), String> {
        self.window_bytes = self.window_bytes.saturating_add(bytes as u64);
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < self.floor.window {
            return Ok(());
        }
        if self.window_bytes < self.floor.min_bytes {
            return Err(format!(
                "{} bytes in {:.1} s, below the floor of {} bytes per {} s",
                self.window_bytes,
                elapsed.as_secs_f64(),
                self.floor.min_bytes,
                self.floor.window.as_secs_f64()
            ));
        }
        self.window_start = now;
        self.window_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl futures::Stream<Item = Result<Bytes, TransferError>> {
        futures::stream::iter(
            sizes
                .iter()
                .map(|n| Ok(Bytes::from(vec![b'x'; *n])))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn bodies_over_their_limit_are_refused_by_kind() {
        let limit = MAX_TOKEN_RESPONSE_BYTES as usize;
        let fits = read_stream_bounded(
            "r",
            BodyKind::TokenResponse,
            chunks(&[limit - 1, 1]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(fits.len(), limit);
        let err = read_stream_bounded(
            "r",
            BodyKind::TokenResponse,
            chunks(&[limit, 1]),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::ResponseTooLarge {
                    what: "token response",
                    limit: l,
                    ..
                } if l == MAX_TOKEN_RESPONSE_BYTES
            ),
            "{err}"
        );
        assert!(err.to_string().contains("registry r sent a token response"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_given_up_at_the_deadline() {
        let trickle = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, TransferError>(Bytes::from_static(b"x")), n + 1))
        })
        .boxed();
        let err = read_stream_bounded("r", BodyKind::Manifest, trickle, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::TooSlow { .. }), "{err}");
    }

    #[test]
    fn throughput_floor_trips_only_after_a_slow_full_window() {
        let floor = ThroughputFloor {
            min_bytes: 100,
            window: Duration::from_secs(10),
        };
        let start = Instant::now();
        let mut watch = ThroughputWatch::new(floor);
        watch.window_start = start;
        // Fast enough: 100 bytes in the first window.
        assert!(watch.record_at(60, start + Duration::from_secs(3)).is_ok());
        assert!(watch.record_at(40, start + Duration::from_secs(10)).is_ok());
        // Then slow: 10 bytes in the next full window.
        assert!(watch.record_at(5, start + Duration::from_secs(15)).is_ok());
        assert!(watch.record_at(5, start + Duration::from_secs(21)).is_err());
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        let body = format!("\u{1b}[31m{}", "e".repeat(1000));
        let text = excerpt(body.as_bytes());
        assert_eq!(text.chars().count(), 300);
        assert!(!text.contains('\u{1b}'));
    }
}
