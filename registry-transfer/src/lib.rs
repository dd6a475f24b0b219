//! Moving OCI images into registries, digest-exact and streaming.
//!
//! Both Lifeboat binaries push images: the operator copies registry to
//! registry, node-exporter pushes out of a node's containerd content store.
//! The engine ([`Transfer`]) is written once, against [`ContentSource`]:
//! anything that can hand out manifests by digest and stream blobs by
//! digest. A registry is one source ([`RegistrySource`]), containerd is
//! another (implemented in node-exporter).
//!
//! ```no_run
//! # async fn example() -> Result<(), registry_transfer::TransferError> {
//! use registry_transfer::*;
//! install_crypto_provider();
//! let engine = Transfer::new(TransferConfig::default(), RegistrySettings::new());
//! let source = reference::parse_image("docker.io/library/nginx:1.27")?;
//! let target = RepositoryRef::parse("backup.example/mirror/nginx")?;
//! let report = engine.copy_image(&source, &CopyRequest::new(target)).await?;
//! println!("{} at {}", report.tag, report.digest);
//! # Ok(()) }
//! ```

// Tests may panic on what they did not expect; production code may not.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod auth;
pub mod bounded;
mod client;
pub mod credentials;
mod engine;
pub mod error;
mod limits;
mod maintenance;
pub mod manifest;
pub mod reference;
pub mod referrers;
mod registry_source;
pub mod retry;
pub mod source;
pub mod splice;
mod tls;
mod upload;

/// Internal parsers of remote input, public only for the fuzz targets
/// (`registry-transfer/fuzz`). Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::auth::{Challenge, MAX_TOKEN_LIFETIME, parse_challenge};

    /// A token service's JSON answer, as the client reads it: the token
    /// and how long it is reused.
    pub fn token_from_json(json: &[u8]) -> Option<(String, std::time::Duration)> {
        serde_json::from_slice::<crate::auth::TokenResponse>(json)
            .ok()?
            .into_token()
    }
}

pub use bounded::ThroughputFloor;
pub use client::RegistrySettings;
pub use credentials::{Credentials, DockerConfig, Secret};
pub use engine::{
    CopyDeadline, CopyReport, CopyRequest, TagDecision, Transfer, TransferConfig, tag_decision,
};
pub use error::TransferError;
pub use maintenance::{DeletedReferrers, ManifestSummary, config_created, plan_referrer_deletions};
pub use manifest::Platform;
pub use reference::{ImageReference, RepositoryRef, deterministic_tag};
pub use referrers::{ReferrerCopy, ReferrerScheme, ReferrersPolicy};
pub use registry_source::RegistrySource;
pub use retry::RetryPolicy;
pub use source::{BlobStream, ContentSource, Descriptor, Digest, SourceErrorKind};
pub use tls::install_crypto_provider;
