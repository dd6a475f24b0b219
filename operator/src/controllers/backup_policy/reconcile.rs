//! One reconcile of one ImageBackupPolicy, a pipeline read top to bottom:
//!
//! 1. gather the facts (`facts`: spec, discovery, credentials);
//! 2. decide what to do (`decide::plan`, pure);
//! 3. act on it (`act`: source checks, copies or the dry-run plan,
//!    retention);
//! 4. decide the new status (`decide::evaluation`, `status`, pure);
//! 5. tell (`events`: Events and metrics);
//! 6. write the status, once, through the one writer
//!    (`controllers::WrittenStatuses`).
//!
//! A problem found in step 1 skips to its own status and event. The only
//! other status write is the progress a run shows while it copies (in
//! `act`, through the same writer).

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use lifeboat_api::conditions::{find_condition, types};
use lifeboat_api::{ImageBackupPolicy, ImageBackupPolicyStatus};
use tracing::{debug, info, warn};

use super::BackupController;
use super::facts::{self, Problem};
use super::memory::PolicyMemory;
use super::status::{blocked_status, evaluated_status, stalled_status, whole_seconds};
use super::{act, decide, events};
use crate::error::OperatorError;

/// How soon a policy looks again when its automatic restore waited for the
/// status that names the lost images to be written.
const RESTORE_LINK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a policy whose run is still copying refreshes its status.
const RUNNING_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) async fn reconcile(
    policy: Arc<ImageBackupPolicy>,
    controller: Arc<BackupController>,
) -> Result<Action, OperatorError> {
    // By uid: a policy deleted and created again under the same name is a
    // new policy and must not inherit what the old one verified or saw.
    let key = policy.uid().unwrap_or_else(|| {
        format!(
            "{}/{}",
            policy.namespace().unwrap_or_default(),
            policy.name_any()
        )
    });
    events::reconciled(&controller);
    let mut memory = {
        let mut all = controller.memory.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(&key).unwrap_or_default()
    };
    let result = reconcile_with(&policy, &controller, &mut memory).await;
    controller.forget_deleted_policies();
    controller
        .memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, memory);
    result
}

async fn reconcile_with(
    policy: &ImageBackupPolicy,
    controller: &BackupController,
    memory: &mut PolicyMemory,
) -> Result<Action, OperatorError> {
    let context = &controller.context;
    let api: Api<ImageBackupPolicy> = Api::namespaced(
        context.client.clone(),
        &policy.namespace().unwrap_or_default(),
    );
    let previous = controller.written.newest(
        policy.metadata.uid.as_deref().unwrap_or_default(),
        policy.status.as_ref(),
    );
    let now = whole_seconds(Utc::now());

    // 1. Gather the facts.
    let facts = match facts::gather(controller, policy, &previous, memory, now).await? {
        Ok(facts) => facts,
        Err(problem) => {
            return settle_problem(controller, &api, policy, &previous, memory, &problem).await;
        }
    };

    // 2. Decide what to do.
    let check_interval =
        TimeDelta::from_std(context.config.source_check_interval).unwrap_or(TimeDelta::minutes(5));
    let plan = decide::plan(
        policy,
        &facts.valid,
        &facts.inventory,
        &previous,
        now,
        check_interval,
    );
    memory.take_in(&plan, &facts.inventory);

    // 3. Act.
    let acted = act::act(controller, &api, policy, &facts, &plan, &previous, memory).await?;

    // 4. Decide the new status, built on what the server holds (the
    // progress status, if a run wrote one).
    let evaluation = decide::evaluation(
        &plan,
        &facts.scope,
        &facts.inventory,
        memory,
        &acted,
        &previous,
    );
    let mut status = evaluated_status(&acted.known_status, &evaluation);
    // What the admission webhook answers from (nothing reads it without one).
    if context.config.admission.is_some() {
        context.admission.publish(
            policy.metadata.uid.as_deref().unwrap_or_default(),
            super::published::published(
                &facts.inventory,
                &evaluation.images,
                &plan.target_names,
                facts.transfer.clone(),
            ),
        );
    }
    // Automatic restores act on the new status (the images it reports
    // missing) and report back into it.
    let restore_deferred = match super::restore_link::link(
        &context.client,
        policy,
        &acted.known_status,
        &mut status,
        &facts.inventory,
    )
    .await
    {
        Ok(deferred) => deferred,
        Err(e) => {
            warn!(policy = %policy.name_any(), error = %e, "automatic restore not linked");
            false
        }
    };

    // 5. Tell.
    events::losses(controller, policy, &facts.inventory, memory).await;
    events::image_metrics(controller, policy, &evaluation);

    // 6. Write the status, once.
    controller
        .written
        .write(&api, policy, &acted.known_status, &status)
        .await?;
    let ready = find_condition(&status.conditions, types::READY).map(|c| c.status.clone());
    debug!(policy = %policy.name_any(), images = facts.inventory.images.len(), ?ready, "reconciled");
    if acted.running.is_some() {
        // Copies are queued or running: the queue wakes the policy when
        // they end; until then the status's "waiting" message is kept fresh.
        return Ok(Action::requeue(RUNNING_REFRESH));
    }
    if restore_deferred {
        // The status naming the lost images is on the server now: create
        // their automatic restore at once.
        return Ok(Action::requeue(RESTORE_LINK_RETRY));
    }
    Ok(Action::requeue(decide::requeue_after(
        plan.run.wake_at,
        now,
        context.config.source_check_interval,
        evaluation.images.iter().any(|i| i.outage.is_some()),
    )))
}

/// A problem found while gathering the facts: its status (Stalled for a
/// spec that cannot work, Ready=False for one that may fix itself), one
/// Warning event, and when to look again.
async fn settle_problem(
    controller: &BackupController,
    api: &Api<ImageBackupPolicy>,
    policy: &ImageBackupPolicy,
    previous: &ImageBackupPolicyStatus,
    memory: &mut PolicyMemory,
    problem: &Problem,
) -> Result<Action, OperatorError> {
    let generation = policy.metadata.generation.unwrap_or(0);
    let now = whole_seconds(Utc::now());
    let status = match problem.kind {
        facts::ProblemKind::InvalidSpec => {
            stalled_status(previous, generation, now, problem.reason, &problem.message)
        }
        facts::ProblemKind::Blocked => {
            blocked_status(previous, generation, now, problem.reason, &problem.message)
        }
    };
    controller
        .written
        .write(api, policy, previous, &status)
        .await?;
    events::problem(controller, policy, memory, problem).await;
    info!(
        policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default(),
        reason = problem.reason, message = %problem.message, "policy cannot be backed up now"
    );
    Ok(problem
        .kind
        .retry_after()
        .map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    use crate::controllers::test_api::{expect, expect_event, scripted, status_error};
    use lifeboat_api::conditions::reasons;

    const STATUS_PATH: &str =
        "/apis/lifeboat.dev/v1alpha1/namespaces/shop/imagebackuppolicies/web/status";

    fn policy(spec: serde_json::Value) -> Arc<ImageBackupPolicy> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageBackupPolicy",
                "metadata": {"name": "web", "namespace": "shop", "uid": "uid-1", "generation": 2},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> Option<&'a serde_json::Value> {
        status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
    }

    /// A target's Secret that does not exist (yet): Ready=False with
    /// CredentialsNotFound, a Warning event, a retry soon; not Stalled (the
    /// Secret may still be created).
    #[tokio::test]
    async fn a_missing_secret_blocks_the_policy_with_its_reason_and_a_retry() {
        let policy = policy(serde_json::json!({"targets": [{
            "name": "backup", "registry": "backup.example", "secretRef": {"name": "push"},
        }]}));
        let (client, server) = scripted(vec![
            expect(
                http::Method::GET,
                "/api/v1/namespaces/shop/secrets/push",
                404,
                status_error(404, "NotFound", "secrets \"push\" not found"),
            ),
            expect(
                http::Method::PATCH,
                STATUS_PATH,
                200,
                serde_json::to_value(&*policy).unwrap(),
            ),
            expect_event("shop"),
        ]);
        let controller = Arc::new(BackupController::for_tests(client));

        let action = reconcile(policy.clone(), controller.clone()).await.unwrap();

        let received = server.finish().await;
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
        let status = &received[1].body["status"];
        assert_eq!(status["observedGeneration"], 2);
        let ready = condition(status, types::READY).unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "CredentialsNotFound");
        assert!(condition(status, types::STALLED).is_none());
        let event = &received[2].body;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "CredentialsNotFound");
        assert!(
            event["note"].as_str().unwrap().contains("shop/push"),
            "{event}"
        );
    }

    /// `value` with every RFC 3339 timestamp replaced by a placeholder.
    fn without_timestamps(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {
                serde_json::Value::String("<time>".into())
            }
            serde_json::Value::Array(items) => items.iter().map(without_timestamps).collect(),
            serde_json::Value::Object(fields) => fields
                .iter()
                .map(|(k, v)| (k.clone(), without_timestamps(v)))
                .collect(),
            other => other.clone(),
        }
    }

    /// A status write the API server refuses (409) fails the reconcile (the
    /// controller retries it) and is not taken as written: the next
    /// reconcile writes the same status again.
    #[tokio::test]
    async fn a_conflicting_status_write_is_retried_by_the_next_reconcile() {
        let policy = policy(serde_json::json!({"targets": [{
            "name": "backup", "registry": "backup.example",
        }]}));
        let (client, server) = scripted(vec![
            expect(
                http::Method::PATCH,
                STATUS_PATH,
                409,
                status_error(409, "Conflict", "the object has been modified"),
            ),
            expect(
                http::Method::PATCH,
                STATUS_PATH,
                200,
                serde_json::to_value(&*policy).unwrap(),
            ),
        ]);
        let controller = Arc::new(BackupController::for_tests(client));

        let refused = reconcile(policy.clone(), controller.clone()).await;
        assert!(
            matches!(&refused, Err(e) if e.reason() == "KubernetesApiError"),
            "{refused:?}"
        );
        let again = reconcile(policy.clone(), controller.clone()).await;
        assert!(again.is_ok(), "{again:?}");

        let received = server.finish().await;
        // Timestamps are the reconcile's own clock: the two writes may
        // straddle a second on a busy machine.
        assert_eq!(
            without_timestamps(&received[0].body),
            without_timestamps(&received[1].body),
            "the same status, written again"
        );
        let status = &received[1].body["status"];
        let ready = condition(status, types::READY).unwrap();
        // Nothing selected yet: every (zero) image protected.
        assert_eq!(ready["reason"], reasons::PROTECTED);
        assert_eq!(
            controller.written.newest("uid-1", None).observed_generation,
            2
        );
    }
}
