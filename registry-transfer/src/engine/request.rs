//! What to copy where, what a copy did, and what to do about the tag.

use super::*;

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
