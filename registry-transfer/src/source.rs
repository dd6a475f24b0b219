//! The contract between the copy engine and where bytes come from.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

use crate::reference::RepositoryRef;
use crate::referrers::{ListedReferrer, TaggedArtifact};

/// Content digests are the project-wide type, validated on construction.
pub use lifeboat_reference::Digest;

/// What the OCI spec calls a descriptor: enough to fetch and verify content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A blob's bytes as they arrive. The engine hashes them on the way.
pub type BlobStream<E> = Pin<Box<dyn Stream<Item = Result<Bytes, E>> + Send>>;

/// Anything the engine can copy from: a registry repository, or a node's
/// containerd content store.
///
/// Implementations return bytes exactly as stored; they do not verify
/// digests (the engine does, once, while streaming to the target).
pub trait ContentSource: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Resolves the reference this source was opened for (a tag or digest)
    /// to the descriptor of its top-level manifest or index.
    fn resolve(&self) -> impl Future<Output = Result<Descriptor, Self::Error>> + Send;

    /// The raw bytes of a manifest or index, exactly as stored, plus its
    /// media type.
    fn fetch_manifest(
        &self,
        digest: &Digest,
    ) -> impl Future<Output = Result<(Bytes, String), Self::Error>> + Send;

    /// Opens a blob (layer or config) for streaming.
    fn open_blob(
        &self,
        descriptor: &Descriptor,
    ) -> impl Future<Output = Result<BlobStream<Self::Error>, Self::Error>> + Send;

    /// Whether the source holds this blob at all; node caches may have
    /// discarded compressed layers. Registries answer by HEAD.
    fn has_blob(
        &self,
        descriptor: &Descriptor,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    // Everything below has a default, so implementations only add what
    // they can do better.

    /// Opens a blob for streaming from byte `offset` on, to resume an
    /// interrupted upload. The default reads from the start and drops the
    /// first `offset` bytes; sources that can seek should override it.
    fn open_blob_at(
        &self,
        descriptor: &Descriptor,
        offset: u64,
    ) -> impl Future<Output = Result<BlobStream<Self::Error>, Self::Error>> + Send {
        async move {
            let stream = self.open_blob(descriptor).await?;
            Ok(skip_prefix(stream, offset))
        }
    }

    /// The digest of the top-level manifest when it is known without asking
    /// anyone (the source was opened by digest). Lets the engine answer a
    /// warm copy with a single request to the target.
    fn known_digest(&self) -> Option<Digest> {
        None
    }

    /// The registry repository this source reads from, if it is one: blobs
    /// are then mounted instead of copied when the target is the same
    /// registry.
    fn mount_origin(&self) -> Option<RepositoryRef> {
        None
    }

    /// The registry host this source talks to, if any, so that the engine's
    /// per-registry concurrency limit covers source requests too.
    fn concurrency_key(&self) -> Option<String> {
        None
    }

    /// The OCI 1.1 referrers of `subject` (manifests whose `subject` is
    /// it), as listed by the source: its referrers API, or the referrers
    /// tag schema where it has none. The default: none (a node's content
    /// store holds no signatures).
    fn referrers(
        &self,
        subject: &Digest,
    ) -> impl Future<Output = Result<Vec<ListedReferrer>, Self::Error>> + Send {
        let _ = subject;
        async { Ok(Vec::new()) }
    }

    /// The tag-scheme artifacts of `subject` (cosign's
    /// `sha256-<hex>.sig`, `.att`, `.sbom`), with the manifest each tag
    /// points to. The default: none.
    fn tagged_artifacts(
        &self,
        subject: &Digest,
    ) -> impl Future<Output = Result<Vec<TaggedArtifact>, Self::Error>> + Send {
        let _ = subject;
        async { Ok(Vec::new()) }
    }

    /// How the engine should treat one of this source's errors.
    fn classify_error(error: &Self::Error) -> SourceErrorKind {
        let _ = error;
        SourceErrorKind::Other
    }
}

/// What kind of failure a [`ContentSource`] error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// The content does not exist there: reported as `SourceNotFound`.
    NotFound,
    /// Trying again may work: the engine retries with backoff.
    Transient,
    /// Anything else: reported as `SourceUnavailable`, not retried.
    Other,
}

/// Drops the first `offset` bytes of a stream.
pub fn skip_prefix<E: Send + 'static>(stream: BlobStream<E>, offset: u64) -> BlobStream<E> {
    if offset == 0 {
        return stream;
    }
    let skipped =
        futures::stream::unfold((stream, offset), |(mut stream, mut to_skip)| async move {
            use futures::StreamExt as _;
            loop {
                match stream.next().await? {
                    Ok(mut chunk) => {
                        if to_skip >= chunk.len() as u64 {
                            to_skip -= chunk.len() as u64;
                            continue;
                        }
                        let rest = chunk.split_off(to_skip as usize);
                        return Some((Ok(rest), (stream, 0)));
                    }
                    Err(e) => return Some((Err(e), (stream, to_skip))),
                }
            }
        });
    Box::pin(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[tokio::test]
    async fn skip_prefix_drops_exactly_the_offset() {
        let chunks = [&b"abc"[..], b"defg", b"h"];
        for offset in 0..=8u64 {
            let items = chunks.map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)));
            let stream: BlobStream<std::io::Error> = Box::pin(futures::stream::iter(items));
            let rest: Vec<u8> = skip_prefix(stream, offset)
                .map(|c| c.unwrap().to_vec())
                .concat()
                .await;
            assert_eq!(
                rest,
                b"abcdefgh"[offset as usize..].to_vec(),
                "offset {offset}"
            );
        }
    }
}
