//! node-exporter: pushes images out of a node's containerd content store
//! into a registry, through the shared `registry-transfer` engine.
//!
//! The binary is run by the Lifeboat operator as a per-node Job when a
//! registry has lost an image that some node still holds. It talks to
//! containerd over its gRPC socket (namespace `k8s.io`), streams blobs from
//! the content store, and reports one machine-readable result per image in
//! the container's termination message.

pub mod cli;
pub mod containerd;
pub mod error;
pub mod export;
pub mod image;
pub mod import;
pub mod inventory;
pub mod oci;
pub mod push;
pub mod rebuild;
pub mod reference;
pub mod registry;
pub mod relay;
pub mod rendezvous;
pub mod report;
pub mod serve;
pub mod socket;
pub mod source;

pub use error::Error;
pub use source::ContainerdSource;
