//! Moving OCI images into registries, digest-exact and streaming.
//!
//! Both Lifeboat binaries push images: the operator copies registry to
//! registry, node-exporter pushes out of a node's containerd content store.
//! The engine is written once, against [`ContentSource`]: anything that can
//! hand out manifests by digest and stream blobs by digest. A registry is one
//! source ([`RegistrySource`](crate)), containerd is another (implemented in
//! node-exporter).

pub mod source;

pub use source::{BlobStream, ContentSource, Descriptor, Digest};
