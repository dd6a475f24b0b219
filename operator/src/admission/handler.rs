//! One admission review: gather the facts (which policies select the
//! object and each image, what they published), decide (`decide::verdict`),
//! and in the two modes that need more, wait for the backup (Ensure) or ask
//! the image's source once (Enforce). Every answer admits unless Enforce
//! found an image that exists nowhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::ObjectRef;
use lifeboat_api::backup_policy::{AdmissionMode, WorkloadKind};
use lifeboat_api::patterns::ImageMatcher;
use lifeboat_api::{ImageBackupPolicy, ImageReference};
use opentelemetry::KeyValue;
use tracing::{debug, warn};

use super::decide::{self, Asked, Covering, ImageQuestion, SourceAnswer, Verdict};
use super::review::{self, Admitted};
use super::{Board, Published};
use crate::context::Context;
use crate::controllers::backup_policy::caches::Caches;
use crate::controllers::backup_policy::discovery::{Scope, Selection};

/// How long Enforce waits for a source registry's answer.
const SOURCE_QUESTION_TIMEOUT: Duration = Duration::from_secs(2);

/// The JSON answer to a review's JSON body.
pub(crate) async fn answer(context: &Context, body: &[u8]) -> Vec<u8> {
    let started = Instant::now();
    let review: Result<AdmissionReview<DynamicObject>, _> = serde_json::from_slice(body);
    let request: Option<AdmissionRequest<DynamicObject>> =
        review.ok().and_then(|r| r.try_into().ok());
    let Some(request) = request else {
        count(context, None, "invalid", started);
        return serialize(AdmissionResponse::invalid("not an AdmissionReview").into_review());
    };
    let response = AdmissionResponse::from(&request);
    let admitted = request.object.as_ref().and_then(|object| {
        review::admitted(
            &request.kind.kind,
            request.namespace.as_deref().unwrap_or_default(),
            object,
        )
    });
    let Some(admitted) = admitted.filter(|a| !a.images.is_empty()) else {
        count(context, None, "allowed", started);
        return serialize(response.into_review());
    };
    // A pod that may have to wait is handed to its policies' discovery
    // (it is in no cache yet): its images are copied while it waits.
    let pod = (admitted.kind == WorkloadKind::Pod)
        .then(|| request.object.as_ref().and_then(as_pod))
        .flatten();
    let (verdict, waited) = judge(context, &admitted, pod).await;
    let mut response = response;
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings.clone());
    }
    if let Some(denial) = &verdict.denial {
        response = response.deny(denial);
    }
    debug!(namespace = %admitted.namespace, kind = admitted.kind.as_str(), verdict = verdict.label(waited), "admission review");
    count(context, verdict.mode, verdict.label(waited), started);
    serialize(response.into_review())
}

fn as_pod(object: &DynamicObject) -> Option<Pod> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .ok()
}

fn serialize(review: AdmissionReview<DynamicObject>) -> Vec<u8> {
    serde_json::to_vec(&review).unwrap_or_default()
}

fn count(context: &Context, mode: Option<AdmissionMode>, verdict: &'static str, started: Instant) {
    let mode = mode.map_or("none", AdmissionMode::as_str);
    let metrics = &context.metrics;
    metrics.admissions.add(
        1,
        &[
            KeyValue::new("mode", mode),
            KeyValue::new("verdict", verdict),
        ],
    );
    metrics.admission_duration.record(
        started.elapsed().as_secs_f64(),
        &[KeyValue::new("mode", mode)],
    );
}

/// The verdict, after the Ensure wait if one was needed (and whether it ran out).
async fn judge(context: &Context, admitted: &Admitted, pod: Option<Pod>) -> (Verdict, bool) {
    let board = &context.admission;
    // Before the first look: a publish after it must wake the wait.
    let mut changes = board.subscribe();
    let covering = covering_policies(context, admitted).await;
    let mut sources: HashMap<String, SourceAnswer> = HashMap::new();
    let mut verdict = evaluate(board, admitted, &covering, &sources, None);
    if !verdict.ask_source.is_empty() {
        for image in verdict.ask_source.clone() {
            let answer = ask_source(board, &covering, &image).await;
            sources.insert(image, answer);
        }
        verdict = evaluate(board, admitted, &covering, &sources, None);
    }
    if verdict.wait_for.is_empty() || verdict.denial.is_some() {
        return (verdict, false);
    }
    let wait = context
        .config
        .admission
        .as_ref()
        .map_or(Duration::from_secs(8), |c| c.ensure_wait);
    if let Some(pod) = pod {
        let waiting: Vec<ObjectRef<ImageBackupPolicy>> = covering
            .iter()
            .filter(|s| s.mode >= AdmissionMode::Ensure)
            .map(|s| s.key.clone())
            .collect();
        board.hold_pending(pod, &waiting, wait, Instant::now());
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {
                verdict = evaluate(board, admitted, &covering, &sources, None);
                if verdict.wait_for.is_empty() {
                    return (verdict, false);
                }
            }
            // The wait ran out (or the board went away): admit with a warning.
            Ok(Err(_)) | Err(_) => {
                let verdict = evaluate(board, admitted, &covering, &sources, Some(wait.as_secs()));
                return (verdict, true);
            }
        }
    }
}

/// A policy that selects the object, and which of its images.
struct Selecting {
    policy: String,
    key: ObjectRef<ImageBackupPolicy>,
    uid: String,
    mode: AdmissionMode,
    /// Indexes into `admitted.images`.
    images: Vec<usize>,
}

/// The policies that select the admitted object, each with the images it
/// selects (the same rules discovery applies).
async fn covering_policies(context: &Context, admitted: &Admitted) -> Vec<Selecting> {
    let board = &context.admission;
    let caches = board.caches();
    let (kind, labels) = match workload_of(admitted, caches) {
        Owner::Known(kind, labels) => (kind, labels),
        Owner::NotCached(kind) => owner_from_api(context, admitted, kind).await,
    };
    let namespace_labels: HashMap<String, BTreeMap<String, String>> = caches
        .and_then(|c| {
            c.namespaces
                .get(&ObjectRef::new(&admitted.namespace))
                .map(|ns| (admitted.namespace.clone(), ns.labels().clone()))
        })
        .into_iter()
        .collect();
    let references: Vec<Option<ImageReference>> = admitted
        .images
        .iter()
        .map(|i| ImageReference::parse(i).ok())
        .collect();
    let mut selecting = Vec::new();
    for policy in board.policies() {
        let Some(found) = policy_selects(
            context,
            &policy,
            admitted,
            kind,
            &labels,
            &namespace_labels,
            &references,
        ) else {
            continue;
        };
        selecting.push(found);
    }
    selecting
}

fn policy_selects(
    context: &Context,
    policy: &ImageBackupPolicy,
    admitted: &Admitted,
    kind: WorkloadKind,
    labels: &BTreeMap<String, String>,
    namespace_labels: &HashMap<String, BTreeMap<String, String>>,
    references: &[Option<ImageReference>],
) -> Option<Selecting> {
    let selector = policy.spec.effective_selector();
    let matcher = ImageMatcher::compile(selector.images.as_ref()).ok()?;
    let policy_namespace = policy.namespace().unwrap_or_default();
    let scope = Scope::for_policy(&policy_namespace, &context.config.namespace, selector);
    let selection = Selection::new(&scope, &matcher, namespace_labels.clone()).ok()?;
    if !selection.namespace(&admitted.namespace) {
        return None;
    }
    let images: Vec<usize> = references
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.as_ref()
                .is_some_and(|r| selection.selects(&admitted.namespace, kind, Some(labels), r))
        })
        .map(|(index, _)| index)
        .collect();
    (!images.is_empty()).then(|| Selecting {
        policy: format!("{policy_namespace}/{}", policy.name_any()),
        key: ObjectRef::from_obj(policy),
        uid: policy.uid().unwrap_or_default(),
        mode: policy.spec.admission_mode(),
        images,
    })
}

/// The verdict from the board as it is now.
fn evaluate(
    board: &Board,
    admitted: &Admitted,
    selecting: &[Selecting],
    sources: &HashMap<String, SourceAnswer>,
    waited_out: Option<u64>,
) -> Verdict {
    let empty = Arc::new(Published {
        target_names: Vec::new(),
        images: Vec::new(),
        transfer: None,
    });
    let published: Vec<Arc<Published>> = selecting
        .iter()
        .map(|s| board.published(&s.uid).unwrap_or_else(|| empty.clone()))
        .collect();
    let questions: Vec<ImageQuestion<'_>> = admitted
        .images
        .iter()
        .enumerate()
        .filter_map(|(index, image)| {
            let reference = ImageReference::parse(image).ok()?;
            let covering = selecting
                .iter()
                .zip(&published)
                .filter(|(s, _)| s.images.contains(&index))
                .map(|(s, p)| Covering {
                    policy: s.policy.clone(),
                    mode: s.mode,
                    target_names: &p.target_names,
                    facts: &p.images,
                })
                .collect();
            Some(ImageQuestion {
                image: image.clone(),
                reference,
                covering,
                source: sources.get(image).cloned(),
            })
        })
        .collect();
    decide::verdict(
        Asked {
            namespace: &admitted.namespace,
            is_pod: admitted.kind == WorkloadKind::Pod,
            waited_out,
        },
        &questions,
    )
}

/// Enforce's one question: does the source registry hold the image? Asked
/// with the credentials of the first selecting policy that has an engine.
async fn ask_source(board: &Board, selecting: &[Selecting], image: &str) -> SourceAnswer {
    let Ok(reference) = ImageReference::parse(image) else {
        return SourceAnswer::Unknown("unparsable reference".into());
    };
    let transfer = selecting
        .iter()
        .filter_map(|s| board.published(&s.uid))
        .find_map(|p| p.transfer.clone());
    let Some(transfer) = transfer else {
        return SourceAnswer::Unknown("the policy has not been reconciled yet".into());
    };
    match tokio::time::timeout(
        SOURCE_QUESTION_TIMEOUT,
        transfer.manifest_digest(&reference),
    )
    .await
    {
        Ok(Ok(Some(_))) => SourceAnswer::Present,
        Ok(Ok(None)) => SourceAnswer::Absent,
        Ok(Err(e)) => {
            warn!(image, error = %e, "admission: asking the source registry");
            SourceAnswer::Unknown(e.reason().to_owned())
        }
        Err(_) => SourceAnswer::Unknown(format!(
            "no answer within {} s",
            SOURCE_QUESTION_TIMEOUT.as_secs()
        )),
    }
}

fn key<K: kube::Resource<DynamicType = ()>>(name: &str, namespace: &str) -> ObjectRef<K> {
    ObjectRef::new(name).within(namespace)
}

/// Whose kind and labels select a pod: known from the caches, or an owner
/// the caches have not seen yet (a ReplicaSet created a moment ago).
enum Owner {
    Known(WorkloadKind, BTreeMap<String, String>),
    NotCached(WorkloadKind),
}

fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String)> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

/// The kind and labels policies select the object by: a pod owned by a
/// workload is selected by its top-level owner's (as discovery does),
/// looked up in the controller's caches.
fn workload_of(admitted: &Admitted, caches: Option<&Caches>) -> Owner {
    let own = Owner::Known(admitted.kind, admitted.labels.clone());
    if admitted.kind != WorkloadKind::Pod {
        return own;
    }
    let (Some((owner_kind, owner_name)), Some(caches)) = (&admitted.owner, caches) else {
        return own;
    };
    let namespace = admitted.namespace.as_str();
    match owner_kind.as_str() {
        "ReplicaSet" => match caches.replica_sets.get(&key(owner_name, namespace)) {
            None => Owner::NotCached(WorkloadKind::ReplicaSet),
            Some(rs) => match controller_of(&rs.metadata) {
                Some((kind, name)) if kind == "Deployment" => {
                    match caches.deployments.get(&key(&name, namespace)) {
                        Some(d) => Owner::Known(WorkloadKind::Deployment, d.labels().clone()),
                        None => Owner::NotCached(WorkloadKind::Deployment),
                    }
                }
                _ => Owner::Known(WorkloadKind::ReplicaSet, rs.labels().clone()),
            },
        },
        "Job" => match caches.jobs.get(&key(owner_name, namespace)) {
            None => Owner::NotCached(WorkloadKind::Job),
            Some(job) => match controller_of(&job.metadata) {
                Some((kind, name)) if kind == "CronJob" => {
                    match caches.cron_jobs.get(&key(&name, namespace)) {
                        Some(c) => Owner::Known(WorkloadKind::CronJob, c.labels().clone()),
                        None => Owner::NotCached(WorkloadKind::CronJob),
                    }
                }
                _ => Owner::Known(WorkloadKind::Job, job.labels().clone()),
            },
        },
        "StatefulSet" => caches
            .stateful_sets
            .get(&key(owner_name, namespace))
            .map_or(Owner::NotCached(WorkloadKind::StatefulSet), |s| {
                Owner::Known(WorkloadKind::StatefulSet, s.labels().clone())
            }),
        "DaemonSet" => caches
            .daemon_sets
            .get(&key(owner_name, namespace))
            .map_or(Owner::NotCached(WorkloadKind::DaemonSet), |d| {
                Owner::Known(WorkloadKind::DaemonSet, d.labels().clone())
            }),
        _ => own,
    }
}

/// One object by name through a list (the operator may list and watch
/// workloads, not get them).
async fn list_one<K>(context: &Context, namespace: &str, name: &str) -> Option<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: kube::Api<K> = kube::Api::namespaced(context.client.clone(), namespace);
    let params = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
    api.list(&params).await.ok()?.items.into_iter().next()
}

/// The owner the caches have not seen yet, read from the API server (a
/// pod a new ReplicaSet creates is often admitted before the watch brings
/// that ReplicaSet); the pod's own labels if even that fails.
async fn owner_from_api(
    context: &Context,
    admitted: &Admitted,
    kind: WorkloadKind,
) -> (WorkloadKind, BTreeMap<String, String>) {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let namespace = admitted.namespace.as_str();
    let fallback = (kind, admitted.labels.clone());
    let Some((owner_kind, owner_name)) = &admitted.owner else {
        return fallback;
    };
    let top = match owner_kind.as_str() {
        "ReplicaSet" => list_one::<ReplicaSet>(context, namespace, owner_name)
            .await
            .map(|rs| {
                (
                    controller_of(&rs.metadata),
                    WorkloadKind::ReplicaSet,
                    rs.labels().clone(),
                )
            }),
        "Job" => list_one::<Job>(context, namespace, owner_name)
            .await
            .map(|job| {
                (
                    controller_of(&job.metadata),
                    WorkloadKind::Job,
                    job.labels().clone(),
                )
            }),
        _ => None,
    };
    let Some((controller, own_kind, own_labels)) = top else {
        return fallback;
    };
    match controller {
        Some((k, name)) if k == "Deployment" => list_one::<Deployment>(context, namespace, &name)
            .await
            .map_or(fallback, |d| (WorkloadKind::Deployment, d.labels().clone())),
        Some((k, name)) if k == "CronJob" => list_one::<CronJob>(context, namespace, &name)
            .await
            .map_or(fallback, |c| (WorkloadKind::CronJob, c.labels().clone())),
        _ => (own_kind, own_labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::test_api::scripted;

    fn context(namespace_policies: &[(&str, serde_json::Value)]) -> (Arc<Context>, Vec<String>) {
        let (client, _server) = scripted(vec![]);
        let mut config = crate::config::OperatorConfig::from_lookup(|_| None).unwrap();
        config.admission = crate::config::AdmissionConfig::from_lookup(
            &|k: &str| (k == "LIFEBOAT_ADMISSION_WEBHOOK").then(|| "w".to_owned()),
            &|_: &str, default: u64| Ok(default),
        )
        .unwrap();
        let metrics = crate::telemetry::Metrics::new().unwrap();
        let context = Arc::new(Context::new(client, config, metrics));
        let (store, mut writer) = kube::runtime::reflector::store::<ImageBackupPolicy>();
        let mut uids = Vec::new();
        for (index, (namespace, spec)) in namespace_policies.iter().enumerate() {
            let uid = format!("uid-{index}");
            let policy: ImageBackupPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageBackupPolicy",
                "metadata": {"name": format!("p{index}"), "namespace": namespace, "uid": uid},
                "spec": spec,
            }))
            .unwrap();
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(policy));
            uids.push(uid);
        }
        let caches = Caches::empty();
        context.admission.attach(caches, store);
        (context, uids)
    }

    fn review(namespace: &str, image: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "req-1",
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                "namespace": namespace, "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "object": {
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": namespace},
                    "spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}},
                },
            },
        }))
        .unwrap()
    }

    async fn answered(context: &Context, body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(&answer(context, body).await).unwrap()
    }

    /// The whole path the API server takes: a review in, the same uid out,
    /// allowed, with the warning in `response.warnings`.
    #[tokio::test]
    async fn an_uncovered_image_is_allowed_with_a_warning_for_the_same_request() {
        let (context, _) = context(&[]);
        let response = answered(&context, &review("shop", "reg.local/web:1")).await;
        assert_eq!(response["kind"], "AdmissionReview");
        assert_eq!(response["response"]["uid"], "req-1");
        assert_eq!(response["response"]["allowed"], true);
        let warnings = response["response"]["warnings"].as_array().unwrap();
        assert!(
            warnings[0].as_str().unwrap().contains("not protected"),
            "{response}"
        );
    }

    /// A policy's published facts reach a request from its namespace: a
    /// missing image with its backup is named, and a request from another
    /// namespace the same (cluster) policy covers hears nothing of it.
    #[tokio::test]
    async fn published_facts_reach_only_their_own_namespace() {
        let target = serde_json::json!([{"name": "backup", "registry": "backup.local"}]);
        let (context, uids) = context(&[(
            "lifeboat-system",
            serde_json::json!({"targets": target, "selector": {"includedNamespaces": ["shop", "other"]}}),
        )]);
        let reference =
            ImageReference::parse(&format!("reg.local/web:1@sha256:{}", "a".repeat(64))).unwrap();
        context.admission.publish(
            &uids[0],
            Published {
                target_names: vec!["backup".into()],
                images: vec![decide::ImageFacts {
                    reference,
                    verified_targets: vec!["backup".into()],
                    missing: true,
                    outage: None,
                    nodes: vec![],
                    namespaces: ["shop".to_owned()].into(),
                }],
                transfer: None,
            },
        );
        let shop = answered(&context, &review("shop", "reg.local/web:1")).await;
        let said = shop["response"]["warnings"].to_string();
        assert!(said.contains("gone from its source registry"), "{said}");
        assert!(
            said.contains("backup (policy lifeboat-system/p0)"),
            "{said}"
        );
        let other = answered(&context, &review("other", "reg.local/web:1")).await;
        let said = other["response"]["warnings"].to_string();
        assert!(!said.contains("gone"), "{said}");
        assert!(said.contains("not backed up yet"), "{said}");
        assert_eq!(other["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn garbage_is_answered_invalid_not_dropped() {
        let (context, _) = context(&[]);
        let response = answered(&context, b"{\"kind\": \"nonsense\"}").await;
        assert_eq!(response["response"]["allowed"], false, "{response}");
    }
}
