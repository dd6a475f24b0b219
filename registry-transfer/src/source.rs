//! The contract between the copy engine and where bytes come from.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// A content digest such as `sha256:3f1c...`, validated on construction.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `algorithm:hex`. Only sha256 (64 lower-case hex digits) and
    /// sha512 (128) are accepted: the registry and containerd use nothing else.
    pub fn parse(s: &str) -> Option<Digest> {
        let (algorithm, hex) = s.split_once(':')?;
        let expected_len = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return None,
        };
        let valid = hex.len() == expected_len
            && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Digest(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or_default()
    }

    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or_default()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

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
    fn has_blob(&self, descriptor: &Descriptor)
    -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_accepts_sha256_and_rejects_garbage() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&ok).map(|d| d.hex().len()), Some(64));
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse("sha256:abc").is_none());
        assert!(Digest::parse(&format!("md5:{}", "a".repeat(32))).is_none());
        assert!(Digest::parse("nocolon").is_none());
    }
}
