//! The controllers, one per custom resource.

pub mod backup_policy;
pub mod image_restore;
pub mod lenient_watch;
pub mod object_names;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use kube::runtime::controller::{self, Action};
use tracing::{error, warn};

use crate::context::Context;
use crate::error::OperatorError;

/// Runs every controller, side by side, until the process ends (or the
/// first of them stops).
pub async fn run(context: Arc<Context>) {
    tokio::select! {
        _ = backup_policy::run(context.clone()) => {}
        _ = image_restore::run(context) => {}
    }
}

/// Runs one reconcile with its panics caught: a panic (a bug, or remote
/// input some code did not expect) becomes [`OperatorError::Panic`], which
/// the error policy logs, counts and backs off like any failure of that one
/// object, while the process and the other objects keep going. Unwind
/// safety is asserted: a reconcile shares only locks that recover from
/// poisoning (`unwrap_or_else(|p| p.into_inner())`) and caches that are
/// optimisations.
pub(crate) async fn isolate_panics<F>(
    kind: &'static str,
    name: String,
    reconcile: F,
) -> Result<Action, OperatorError>
where
    F: std::future::Future<Output = Result<Action, OperatorError>>,
{
    match std::panic::AssertUnwindSafe(reconcile).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            error!(kind, name, panic = %message, "reconcile panicked; backing off this object");
            Err(OperatorError::Panic { message })
        }
    }
}

/// The text a panic was raised with (`panic!` gives `&str` or `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Writes an object's status by server-side apply as the operator's one
/// field manager (forced: the operator owns every status field).
async fn apply_status<K, S>(api: &kube::Api<K>, name: &str, status: &S) -> Result<(), OperatorError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(crate::context::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Publishes one Event about `regarding`, its note bounded to what the
/// Events API keeps. A failed publish is logged, never a reconcile error:
/// Events are a courtesy, the status is the record.
pub(crate) async fn publish(
    recorder: &kube::runtime::events::Recorder,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    type_: kube::runtime::events::EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = kube::runtime::events::Event {
        type_,
        reason: reason.to_owned(),
        note: Some(lifeboat_api::conditions::bounded_message(note, 1024)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, regarding).await {
        warn!(reason, error = %e, "could not publish event");
    }
}

/// What both controllers do after a failed reconcile: count it by kind and
/// reason, log it, and either wait for a change of the object (an error only
/// a new spec can fix, so no hot loop) or try again after `retry`.
fn after_error(
    context: &Context,
    kind: &'static str,
    name: &str,
    error: &OperatorError,
    retry: Duration,
) -> Action {
    count_failure(&context.metrics, kind, error);
    warn!(
        kind, name, reason = error.reason(), error = %error,
        "reconcile failed; retrying"
    );
    if error.is_terminal() {
        Action::await_change()
    } else {
        Action::requeue(retry)
    }
}

/// Counts one failed reconcile (or undecodable object) by kind and reason.
pub(crate) fn count_failure(
    metrics: &crate::telemetry::Metrics,
    kind: &'static str,
    error: &OperatorError,
) {
    metrics.reconcile_errors.add(
        1,
        &[
            opentelemetry::KeyValue::new("kind", kind),
            opentelemetry::KeyValue::new("reason", error.metric_label()),
        ],
    );
}

/// Logs what the controller runtime reports about one reconcile. An object
/// deleted while it was queued is not worth a line.
fn log_outcome<T, E: std::error::Error, Q: std::error::Error>(
    kind: &'static str,
    result: Result<T, controller::Error<E, Q>>,
) -> futures::future::Ready<()> {
    match result {
        Ok(_) | Err(controller::Error::ObjectNotFound(_)) => {}
        Err(e) => warn!(kind, error = %e, "reconcile failed"),
    }
    futures::future::ready(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    /// A reconcile that panics for one object: run the way the controller
    /// runtime runs reconciles (concurrently, in the same task), the panic
    /// becomes that object's `Panic` error, the others finish, and the
    /// failure is counted with reason `panic`.
    #[tokio::test]
    async fn a_panicking_reconcile_fails_only_its_object_and_is_counted() {
        async fn reconcile(name: &str) -> Result<Action, OperatorError> {
            tokio::task::yield_now().await;
            if name == "bad" {
                let values: Vec<u64> = Vec::new();
                // An out-of-bounds index: a real panic, not a crafted error.
                return Ok(Action::requeue(Duration::from_secs(values[3])));
            }
            Ok(Action::await_change())
        }
        let metrics = crate::telemetry::Metrics::new().unwrap();
        let outcomes: Vec<(String, Result<Action, OperatorError>)> =
            futures::stream::iter(["good-1", "bad", "good-2"])
                .map(|name| async move {
                    let result =
                        isolate_panics("ImageBackupPolicy", name.to_owned(), reconcile(name)).await;
                    (name.to_owned(), result)
                })
                .buffer_unordered(3)
                .collect()
                .await;
        assert_eq!(outcomes.len(), 3);
        for (name, result) in &outcomes {
            match (name.as_str(), result) {
                ("bad", Err(OperatorError::Panic { message })) => {
                    assert!(message.contains("index out of bounds"), "{message}");
                    count_failure(&metrics, "ImageBackupPolicy", result.as_ref().unwrap_err());
                }
                ("good-1" | "good-2", Ok(action)) => assert_eq!(*action, Action::await_change()),
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("lifeboat_reconcile_errors_total{"))
            .unwrap_or_default();
        assert!(
            line.contains("kind=\"ImageBackupPolicy\"")
                && line.contains("reason=\"panic\"")
                && line.ends_with(" 1"),
            "{text}"
        );
    }
}
