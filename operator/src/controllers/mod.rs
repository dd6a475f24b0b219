//! The controllers, one per custom resource.

pub mod backup_policy;
pub mod image_restore;

use std::sync::Arc;

use crate::context::Context;

/// Runs every controller, side by side, until the process ends (or the
/// first of them stops).
pub async fn run(context: Arc<Context>) {
    tokio::select! {
        _ = backup_policy::run(context.clone()) => {}
        _ = image_restore::run(context) => {}
    }
}
