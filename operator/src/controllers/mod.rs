//! The controllers, one per custom resource.

use std::sync::Arc;

use crate::context::Context;

/// Runs every controller until the process ends.
pub async fn run(context: Arc<Context>) {
    let _ = context;
    std::future::pending::<()>().await
}
