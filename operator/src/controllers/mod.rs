//! The controllers, one per custom resource.

pub mod backup_policy;
pub mod image_restore;
pub mod object_names;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::{self, Action};
use tracing::warn;

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
    context.metrics.reconcile_errors.add(
        1,
        &[
            opentelemetry::KeyValue::new("kind", kind),
            opentelemetry::KeyValue::new("reason", error.metric_label()),
        ],
    );
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

/// Delete parameters for an object the operator owns: only the object of
/// that uid goes (a namesake created since, by anyone, is left alone), and
/// its dependents with it (background propagation; a Job's default would
/// orphan its pods).
pub(crate) fn delete_exactly(uid: Option<String>) -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        preconditions: uid.map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..kube::api::DeleteParams::default()
    }
}

#[cfg(test)]
mod delete_tests {
    #[test]
    fn owned_deletes_carry_the_uid() {
        let params = super::delete_exactly(Some("u-1".into()));
        let uid = params.preconditions.and_then(|p| p.uid);
        assert_eq!(uid.as_deref(), Some("u-1"));
        assert_eq!(
            params.propagation_policy,
            Some(kube::api::PropagationPolicy::Background)
        );
    }
}
