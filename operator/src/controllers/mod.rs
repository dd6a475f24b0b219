//! The controllers, one per custom resource, and the plumbing both share:
//!
//! - [`WrittenStatuses`]: the status this process last wrote per object
//!   (by uid), and [`WrittenStatuses::write`], the one status writer
//!   (compare with what the server holds, server-side apply, remember).
//!   Each controller reads an object's newest status from it
//!   ([`WrittenStatuses::newest`]) instead of trusting a watch cache that
//!   may lag behind its own last write. Both controllers write their
//!   status through it, once per reconcile.
//! - [`publish`]: Events, bounded, never a reconcile error;
//! - `after_error` and `log_outcome`: what happens after a reconcile.

pub(crate) mod backup_policy;
mod image_restore;
pub mod lenient_watch;
pub mod object_names;
#[cfg(test)]
pub(crate) mod test_api;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use kube::runtime::controller::{self, Action};
use tracing::{error, warn};

use crate::context::Context;
use crate::error::OperatorError;

/// Kubernetes `Time` has second precision on the wire: both controllers
/// stamp and compare times like it, so a status read back equals the one
/// written.
pub(crate) fn whole_seconds(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(time.timestamp(), 0).unwrap_or(time)
}

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

/// The status this process last wrote for each object, keyed by uid.
///
/// The operator is the only writer of its objects' status, so what it last
/// wrote is never older than the watch cache, which can lag behind a write:
/// a reconcile that decided from the cache's older status would undo facts
/// already written (a finished run's `LastBackupSucceeded`) or repeat Events
/// and metrics. Keyed by uid, so an object deleted and created again under
/// the same name starts from its own (empty) status.
pub(crate) struct WrittenStatuses<S> {
    by_uid: Mutex<HashMap<String, S>>,
}

impl<S> Default for WrittenStatuses<S> {
    fn default() -> Self {
        WrittenStatuses {
            by_uid: Mutex::new(HashMap::new()),
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

impl<S: Clone + PartialEq + serde::Serialize> WrittenStatuses<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, S>> {
        // A panic while holding the lock cannot leave a half-written map
        // (every change is one insert or retain): keep using it.
        self.by_uid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest status of the object with this uid: the one last written,
    /// else `cached` (the watch cache's, `None` when it has none yet).
    pub(crate) fn newest(&self, uid: &str, cached: Option<&S>) -> S
    where
        S: Default,
    {
        match self.lock().get(uid) {
            Some(written) => written.clone(),
            None => cached.cloned().unwrap_or_default(),
        }
    }

    /// Notes a status the API server accepted for this uid.
    pub(crate) fn wrote(&self, uid: &str, status: S) {
        self.lock().insert(uid.to_owned(), status);
    }

    /// Forgets one object (deleted).
    pub(crate) fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Forgets every object whose uid `live` does not hold.
    pub(crate) fn retain_live(&self, live: &std::collections::HashSet<String>) {
        self.lock().retain(|uid, _| live.contains(uid));
    }

    /// The one status writer: writes `status` by server-side apply unless
    /// it equals `known` (what the server holds, as far as this process
    /// knows: [`WrittenStatuses::newest`] or an earlier return of this
    /// call), then remembers it. Returns whether it wrote. A failed write
    /// is not remembered, so the next reconcile writes again.
    pub(crate) async fn write<K>(
        &self,
        api: &kube::Api<K>,
        object: &K,
        known: &S,
        status: &S,
    ) -> Result<bool, OperatorError>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        if known == status {
            return Ok(false);
        }
        let meta = object.meta();
        let name = meta.name.as_deref().unwrap_or_default();
        apply_status(api, name, status).await?;
        self.wrote(meta.uid.as_deref().unwrap_or_default(), status.clone());
        Ok(true)
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

    #[test]
    fn the_status_last_written_wins_over_a_lagging_cache_for_the_same_uid_only() {
        let written: WrittenStatuses<Option<i64>> = WrittenStatuses::default();
        let cached = Some(1);
        assert_eq!(written.newest("uid-1", Some(&cached)), Some(1));
        assert_eq!(written.newest("uid-1", None), None, "no cache: default");
        written.wrote("uid-1", Some(2));
        assert_eq!(written.newest("uid-1", Some(&cached)), Some(2));
        // An object deleted and created again under the same name is new.
        assert_eq!(written.newest("uid-2", Some(&cached)), Some(1));
        written.forget("uid-1");
        assert_eq!(written.newest("uid-1", Some(&cached)), Some(1));
    }

    #[test]
    fn only_live_objects_are_remembered() {
        let written: WrittenStatuses<Option<i64>> = WrittenStatuses::default();
        written.wrote("gone", Some(1));
        written.wrote("live", Some(2));
        written.retain_live(&["live".to_owned()].into());
        assert_eq!(written.newest("gone", None), None);
        assert_eq!(written.newest("live", None), Some(2));
    }

    fn policy() -> lifeboat_api::ImageBackupPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageBackupPolicy",
            "metadata": {"name": "web", "namespace": "shop", "uid": "uid-1"},
            "spec": {"targets": [{"name": "backup", "registry": "backup.example"}]},
        }))
        .unwrap()
    }

    /// A refused write (409) is an error and is not remembered, so the next
    /// reconcile writes again; an accepted one is remembered, and the same
    /// status is not written twice.
    #[tokio::test]
    async fn the_writer_remembers_only_what_the_server_accepted() {
        use lifeboat_api::ImageBackupPolicyStatus;
        use test_api::{expect, scripted, status_error};
        let path = "/apis/lifeboat.dev/v1alpha1/namespaces/shop/imagebackuppolicies/web/status";
        let policy = policy();
        let status = ImageBackupPolicyStatus {
            observed_generation: 3,
            ..ImageBackupPolicyStatus::default()
        };
        let (client, server) = scripted(vec![
            expect(
                http::Method::PATCH,
                path,
                409,
                status_error(409, "Conflict", "the object has been modified"),
            ),
            expect(
                http::Method::PATCH,
                path,
                200,
                serde_json::to_value(&policy).unwrap(),
            ),
        ]);
        let api: kube::Api<lifeboat_api::ImageBackupPolicy> = kube::Api::namespaced(client, "shop");
        let written: WrittenStatuses<ImageBackupPolicyStatus> = WrittenStatuses::default();
        let known = written.newest("uid-1", None);

        let refused = written.write(&api, &policy, &known, &status).await;
        assert!(
            matches!(&refused, Err(OperatorError::Kube(kube::Error::Api(e))) if e.code == 409),
            "{refused:?}"
        );
        assert_eq!(
            written.newest("uid-1", None),
            known,
            "a refused write is not remembered"
        );

        assert!(written.write(&api, &policy, &known, &status).await.unwrap());
        let newest = written.newest("uid-1", None);
        assert_eq!(newest, status);
        assert!(
            !written
                .write(&api, &policy, &newest, &status)
                .await
                .unwrap(),
            "unchanged: no request"
        );

        let received = server.finish().await;
        assert_eq!(received.len(), 2);
        let sent = &received[1];
        assert_eq!(sent.content_type, "application/apply-patch+yaml");
        assert!(
            sent.query.contains("fieldManager=lifeboat-operator"),
            "{}",
            sent.query
        );
        assert!(sent.query.contains("force=true"), "{}", sent.query);
        assert_eq!(sent.body["kind"], "ImageBackupPolicy");
        assert_eq!(sent.body["status"]["observedGeneration"], 3);
    }
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
