//! The controllers, one per custom resource.

pub mod backup_policy;

use std::sync::Arc;

use crate::context::Context;

/// Runs every controller until the process ends.
pub async fn run(context: Arc<Context>) {
    backup_policy::run(context).await;
}
