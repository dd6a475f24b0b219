//! Lifeboat's Kubernetes API, group `lifeboat.dev`, version `v1alpha1`:
//! the `ImageBackupPolicy` and `ImageRestore` custom resources, their
//! validation, and the pure logic both controllers share (image
//! references, schedules, conditions, target repository mapping).

pub mod backup_policy;
pub mod conditions;
pub mod crd;
pub mod docs;
pub mod error;
pub mod patterns;
/// Image references and digests: the `lifeboat-reference` crate, re-exported
/// so `lifeboat_api::reference::…` and `lifeboat_api::ImageReference` keep
/// working.
pub mod reference {
    pub use lifeboat_reference::*;
}
pub mod restore;
pub mod schedule;
pub mod schema;
pub mod template;
pub mod time;
pub mod validation;

pub use backup_policy::{ImageBackupPolicy, ImageBackupPolicySpec, ImageBackupPolicyStatus};
pub use error::{Error, Result};
pub use reference::{Digest, ImageReference};
pub use restore::{ImageRestore, ImageRestoreSpec, ImageRestoreStatus};
pub use schedule::{Schedule, ScheduleDecision, due_run};

/// The API group.
pub const GROUP: &str = "lifeboat.dev";
/// The API version.
pub const VERSION: &str = "v1alpha1";
/// Category both kinds belong to (`kubectl get lifeboat`).
pub const CATEGORY: &str = "lifeboat";
