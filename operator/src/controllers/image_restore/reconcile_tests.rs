//! The reconcile's read and act steps against a scripted API server: the
//! requests it makes, in order, and what it writes.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use lifeboat_api::restore::{ImageRestoreState, ImageSourceRef, RestoreSourceKind};
use lifeboat_api::{ImageReference, ImageRestore};
use lifeboat_node_protocol::ExportImage;
use serde_json::{Value, json};

use super::reconcile;
use crate::controllers::image_restore::RestoreController;
use crate::controllers::image_restore::planning::{Exportable, image_argument};
use crate::controllers::image_restore::status::{pending_image, summarize, whole_seconds};
use crate::controllers::object_names;
use crate::controllers::test_api::{Expected, expect, expect_event, scripted, status_error};

const NAMESPACE: &str = "lifeboat-system";
const UID: &str = "uid-r";
const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const JOBS: &str = "/apis/batch/v1/namespaces/lifeboat-system/jobs";
const PODS: &str = "/api/v1/namespaces/lifeboat-system/pods";
const NODES: &str = "/api/v1/nodes";
const POLICIES: &str = "/apis/lifeboat.dev/v1alpha1/namespaces/lifeboat-system/imagebackuppolicies";
const STATUS: &str =
    "/apis/lifeboat.dev/v1alpha1/namespaces/lifeboat-system/imagerestores/r/status";

fn image() -> String {
    format!("registry.example/app:1@{DIGEST}")
}

/// What node-exporter is given for the image (an in-place restore).
fn argument() -> String {
    let reference = ImageReference::parse(&image()).unwrap();
    ExportImage::to(reference.clone(), &reference).to_string()
}

fn job_on(node: &str) -> String {
    object_names::export_job_name("r", UID, node, &[argument()])
}

/// A restore (in the operator's namespace: no finalizer) whose one image
/// is being exported from `node` by Job `job`.
fn exporting(node: &str, job: &str) -> Arc<ImageRestore> {
    let mut restore: ImageRestore = serde_json::from_value(json!({
        "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageRestore",
        "metadata": {"name": "r", "namespace": NAMESPACE, "uid": UID, "generation": 1},
        "spec": {"images": [image()], "source": {"type": "NodeCache"}},
    }))
    .unwrap();
    let mut status = lifeboat_api::ImageRestoreStatus {
        images: vec![pending_image(&image(), Some(DIGEST.to_owned()))],
        ..Default::default()
    };
    let entry = &mut status.images[0];
    entry.state = ImageRestoreState::InProgress;
    entry.job_name = Some(job.to_owned());
    entry.source = Some(ImageSourceRef {
        kind: RestoreSourceKind::NodeCache,
        name: node.to_owned(),
    });
    restore.status = Some(summarize(status, 1, whole_seconds(chrono::Utc::now())));
    Arc::new(restore)
}

fn failed_job(name: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "status": {"conditions": [{
            "type": "Failed", "status": "True", "reason": "PodFailurePolicy",
            "message": "Container export for pod exited with a non-retryable exit code 3",
        }]},
    })
}

/// The pods of a Job whose node-exporter reported the image not on its node.
fn not_on_node_pods() -> Value {
    let report = json!({"v": 1, "results": [{
        "image": argument(), "status": "Failed",
        "reason": "ImageNotOnNode", "message": "containerd does not hold it",
    }]});
    export_pods("Failed", 3, &report)
}

/// The one pod of an export Job, ended in `phase` with `exit_code` and
/// `report` as its termination message.
fn export_pods(phase: &str, exit_code: i32, report: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [{
            "metadata": {"name": "p", "namespace": NAMESPACE},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "export", "image": "node-exporter", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "message": report.to_string()}},
            }]},
        }],
    })
}

/// A restore's last status write, its image's Event and its ending Event;
/// then its credentials copy is looked up, to delete it by uid: none.
fn restore_ends(restore: Value) -> [Expected; 4] {
    let secret = object_names::credentials_secret_name("r", UID);
    [
        expect(Method::PATCH, STATUS, 200, restore),
        expect_event(NAMESPACE),
        expect_event(NAMESPACE),
        expect(
            Method::GET,
            &format!("/api/v1/namespaces/{NAMESPACE}/secrets/{secret}"),
            404,
            status_error(404, "NotFound", "not found"),
        ),
    ]
}

fn ready_nodes(names: &[&str]) -> Value {
    let items: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "metadata": {"name": n},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items})
}

fn empty_list(kind: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": []})
}

fn created_job() -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "created"}})
}

/// The node a Job's pod is pinned to (its node affinity).
fn pinned_node(job: &Value) -> &str {
    job.pointer(
        "/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0",
    )
    .and_then(Value::as_str)
    .unwrap_or("")
}

/// An export that fails because the node no longer holds the image is
/// tried on the next holder (the status names the new Job before it is
/// created); when the last node that could hold it fails too, the image
/// fails as found nowhere, and the restore ends with its Events.
#[tokio::test]
async fn an_export_whose_node_lost_the_image_moves_to_the_next_holder_until_none_is_left() {
    let (a, b, c) = (job_on("node-a"), job_on("node-b"), job_on("node-c"));
    let restore = exporting("node-a", &a);
    let restore_json = serde_json::to_value(&*restore).unwrap();
    // A failed Job whose node lost the image: the nodes are listed, the
    // status names the next Job, then that Job is created.
    let moved_on = |failed: &str| {
        [
            expect(
                Method::GET,
                &format!("{JOBS}/{failed}"),
                200,
                failed_job(failed),
            ),
            expect(Method::GET, PODS, 200, not_on_node_pods()),
            expect(
                Method::GET,
                NODES,
                200,
                ready_nodes(&["node-a", "node-b", "node-c"]),
            ),
            expect(Method::PATCH, STATUS, 200, restore_json.clone()),
            expect(Method::POST, JOBS, 201, created_job()),
        ]
    };
    // 1. node-a's Job failed: node-b (which holds it) gets the next;
    // 2. node-b's failed too: node-c.
    let mut script: Vec<_> = moved_on(&a).into_iter().chain(moved_on(&b)).collect();
    script.extend([
        // 3. node-c's failed: no node is left that could hold it (nothing
        // points elsewhere: the namespace's pods and policies are read),
        // the image fails, the restore ends.
        expect(Method::GET, &format!("{JOBS}/{c}"), 200, failed_job(&c)),
        expect(Method::GET, PODS, 200, not_on_node_pods()),
        expect(
            Method::GET,
            NODES,
            200,
            ready_nodes(&["node-a", "node-b", "node-c"]),
        ),
        expect(Method::GET, PODS, 200, empty_list("PodList")),
        expect(
            Method::GET,
            POLICIES,
            200,
            empty_list("ImageBackupPolicyList"),
        ),
    ]);
    script.extend(restore_ends(restore_json));
    let (client, server) = scripted(script);
    let controller = Arc::new(RestoreController::for_tests(client));
    // node-b and node-c said they hold it (an earlier inventory).
    let held = [(
        image_argument(&ImageReference::parse(&image()).unwrap()),
        Exportable::Exact,
    )];
    controller.remember("node-b", held.clone().into());
    controller.remember("node-c", held.into());

    let first = reconcile(restore.clone(), controller.clone())
        .await
        .unwrap();
    let second = reconcile(restore.clone(), controller.clone())
        .await
        .unwrap();
    let third = reconcile(restore.clone(), controller.clone())
        .await
        .unwrap();
    drop(controller);
    let received = server.finish().await;

    assert_eq!(first, Action::requeue(Duration::from_secs(30)));
    assert_eq!(second, Action::requeue(Duration::from_secs(30)));
    assert_eq!(
        third,
        Action::await_change(),
        "a finished restore waits for a change"
    );
    for (status_write, job_create, node, job) in [(3, 4, "node-b", &b), (8, 9, "node-c", &c)] {
        let entry = &received[status_write].body["status"]["images"][0];
        assert_eq!(entry["state"], "InProgress");
        assert_eq!(
            entry["jobName"],
            job.as_str(),
            "the status names the Job first"
        );
        assert_eq!(entry["source"]["name"], node);
        let created = &received[job_create].body;
        assert_eq!(created["metadata"]["name"], job.as_str());
        assert_eq!(pinned_node(created), node);
    }
    let last = &received[15].body["status"];
    let entry = &last["images"][0];
    assert_eq!(entry["state"], "Failed");
    assert_eq!(entry["reason"], "ImageNotFound");
    let message = entry["message"].as_str().unwrap();
    assert!(
        message.contains("no node holds") && message.contains("node-a, node-b, node-c"),
        "{message}"
    );
    assert!(last["completionTime"].is_string());
    assert_eq!(received[16].body["reason"], "ImageRestoreFailed");
    assert_eq!(received[17].body["reason"], "RestoreFailed");
}

/// An export Job someone deleted is created again under its name, on its
/// node; the image is not reported done, and nothing in the status
/// changes (no write).
#[tokio::test]
async fn an_export_job_deleted_by_someone_is_created_again_not_reported_done() {
    let a = job_on("node-a");
    let restore = exporting("node-a", &a);
    let (client, server) = scripted(vec![
        expect(
            Method::GET,
            &format!("{JOBS}/{a}"),
            404,
            status_error(404, "NotFound", "jobs.batch not found"),
        ),
        expect(Method::POST, JOBS, 201, created_job()),
    ]);
    let controller = Arc::new(RestoreController::for_tests(client));

    let action = reconcile(restore.clone(), controller.clone())
        .await
        .unwrap();
    let newest = controller.latest_status(&restore);
    drop(controller);
    let received = server.finish().await;

    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let created = &received[1].body;
    assert_eq!(created["metadata"]["name"], a.as_str());
    assert_eq!(pinned_node(created), "node-a");
    assert_eq!(newest.images[0].state, ImageRestoreState::InProgress);
    assert!(newest.completion_time.is_none());
}

/// A node-exporter that writes its report in a version this operator does
/// not read is not trusted, even where the report says "Preserved": the
/// image fails with `UnsupportedNodeReportVersion`, no registry is asked.
#[tokio::test]
async fn a_report_of_an_unknown_version_fails_the_image_with_its_own_reason() {
    let a = job_on("node-a");
    let restore = exporting("node-a", &a);
    let restore_json = serde_json::to_value(&*restore).unwrap();
    let report = json!({"v": 99, "results": [{
        "image": argument(), "status": "Preserved", "digest": DIGEST, "bytes": 10,
    }]});
    let pods = export_pods("Succeeded", 0, &report);
    let complete = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": a, "namespace": NAMESPACE},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    });
    let mut script = vec![
        expect(Method::GET, &format!("{JOBS}/{a}"), 200, complete),
        expect(Method::GET, PODS, 200, pods),
    ];
    script.extend(restore_ends(restore_json));
    let (client, server) = scripted(script);
    let controller = Arc::new(RestoreController::for_tests(client));

    let action = reconcile(restore, controller.clone()).await.unwrap();
    drop(controller);
    let received = server.finish().await;

    assert_eq!(action, Action::await_change());
    let entry = &received[2].body["status"]["images"][0];
    assert_eq!(entry["state"], "Failed");
    assert_eq!(entry["reason"], "UnsupportedNodeReportVersion");
    let message = entry["message"].as_str().unwrap();
    assert!(message.contains(&a) && message.contains("99"), "{message}");
    assert_eq!(received[3].body["reason"], "ImageRestoreFailed");
    assert_eq!(received[4].body["reason"], "RestoreFailed");
}
