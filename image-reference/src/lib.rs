//! Container image references: parsing and normalisation.
//!
//! Follows the grammar of the CNCF distribution project's `reference`
//! package and Docker's normalisation rules, written out by hand so that it
//! is small, never panics on any input, and explains exactly what is wrong:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ registry "/" ] path-component *( "/" path-component )
//! registry   := host [ ":" port ]          host: DNS name, "localhost" or "[IPv6]"
//! path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" encoded       (sha256 or sha512, lowercase hex)
//! ```
//!
//! Normalisation: a first path component is a registry only if it contains
//! `.` or `:`, is `localhost`, or contains an upper-case letter (Docker's
//! rule); otherwise the registry is `docker.io`. `index.docker.io` and
//! `registry-1.docker.io` become `docker.io`, a one-component Docker Hub
//! repository gets `library/`, and a reference without tag or digest gets
//! the tag `latest`.

//!
//! This crate is the one parser every Lifeboat crate uses: the API crate
//! re-exports it, the registry engine copies [`ImageReference`]s, and
//! node-exporter receives them on its command line. A reference is parsed
//! once where it enters (a pod's status, a custom resource's spec, a
//! command line) and passed on as a value. It depends on serde and
//! thiserror only, so node-exporter and the engine stay free of kube.

mod digest;
mod error;
mod reference;

pub use digest::Digest;
pub use error::{INVALID_IMAGE_REFERENCE, ReferenceError, Result};
pub use reference::{
    DEFAULT_TAG, DOCKER_HUB, DOCKER_HUB_API_HOST, ImageReference, NAME_MAX_LENGTH,
    REFERENCE_MAX_LENGTH, TAG_MAX_LENGTH, api_host, check_registry, check_repository, check_tag,
    parse_repository_name,
};
