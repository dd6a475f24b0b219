//! The optional validating admission webhook (Helm value
//! `admission.enabled`; docs/admission.md).
//!
//! It answers from what the operator already knows, never from a registry
//! walk: the policies and namespaces the backup controller caches, and the
//! [`Board`] every policy reconcile publishes its images' standing to.
//!
//! - `decide`: the verdict, pure and unit-tested;
//! - `review`: what an AdmissionReview asks (images, kind, owner), and the answer;
//! - `handler`: gathers the facts for one review, waits (Ensure), asks a
//!   source (Enforce), answers, counts;
//! - `certs`: the serving certificate (own CA, rotated; or cert-manager's)
//!   and the webhook configuration's `caBundle` and `namespaceSelector`;
//! - `server`: HTTPS on its own port, served by the leader only.

pub mod certs;
pub mod decide;
mod handler;
pub mod review;
mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use lifeboat_api::ImageBackupPolicy;
use tokio::sync::watch;
use tracing::{error, info};

use crate::context::Context;
use crate::controllers::backup_policy::caches::Caches;
use crate::controllers::backup_policy::interner::Interner;
use crate::controllers::backup_policy::pod_cache::CachedPod;
use decide::ImageFacts;

/// What one policy's last reconcile published.
#[derive(Clone)]
pub struct Published {
    pub target_names: Vec<String>,
    pub images: Vec<ImageFacts>,
    /// The policy's copy engine (its credentials), for Enforce's one
    /// question to a source registry.
    pub transfer: Option<registry_transfer::Transfer>,
}

/// Where the backup controller leaves what the webhook reads: its caches,
/// its store of policies, and each policy's published facts (by uid).
pub struct Board {
    published: RwLock<HashMap<String, Arc<Published>>>,
    /// Bumped on every publish: an Ensure wait wakes on it.
    changed: watch::Sender<u64>,
    caches: OnceLock<Caches>,
    policies: OnceLock<Store<ImageBackupPolicy>>,
    /// Pods an Ensure review holds back: they do not exist yet, so no
    /// cache shows them, and without them the policy would never copy a
    /// bare Pod's new image before the wait runs out.
    pending: Mutex<Vec<PendingPod>>,
    /// Wakes the policies that must discover a pending pod now; the
    /// backup controller takes the receiving end once.
    wake: mpsc::UnboundedSender<ObjectRef<ImageBackupPolicy>>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<ImageBackupPolicy>>>>,
}

/// A pod under review, held until `until`: its wait plus the time the
/// created pod takes to reach the caches, so the image never drops out of
/// discovery in between.
struct PendingPod {
    pod: Arc<CachedPod>,
    until: Instant,
}

/// How long a pending pod outlives its review's wait.
const PENDING_GRACE: Duration = Duration::from_secs(30);

impl Default for Board {
    fn default() -> Self {
        let (wake, woken) = mpsc::unbounded();
        Board {
            published: RwLock::new(HashMap::new()),
            changed: watch::channel(0).0,
            caches: OnceLock::new(),
            policies: OnceLock::new(),
            pending: Mutex::new(Vec::new()),
            wake,
            woken: Mutex::new(Some(woken)),
        }
    }
}

impl Board {
    /// Called once by the backup controller when its caches are ready.
    pub(crate) fn attach(&self, caches: Caches, policies: Store<ImageBackupPolicy>) {
        let _ = self.caches.set(caches);
        let _ = self.policies.set(policies);
    }

    pub(crate) fn caches(&self) -> Option<&Caches> {
        self.caches.get()
    }

    pub(crate) fn policies(&self) -> Vec<Arc<ImageBackupPolicy>> {
        self.policies.get().map(Store::state).unwrap_or_default()
    }

    /// A reconcile's facts about policy `uid`, replacing the last ones.
    pub(crate) fn publish(&self, uid: &str, published: Published) {
        self.published
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_owned(), Arc::new(published));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn published(&self, uid: &str) -> Option<Arc<Published>> {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    /// Forgets policies that no longer exist.
    pub(crate) fn retain(&self, live: &std::collections::HashSet<String>) {
        self.published
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|uid, _| live.contains(uid));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Holds `pod` (trimmed as the caches trim) for discovery by `policies`
    /// for `wait` plus a grace period, and wakes those policies.
    pub(crate) fn hold_pending(
        &self,
        pod: Pod,
        policies: &[ObjectRef<ImageBackupPolicy>],
        wait: Duration,
        now: Instant,
    ) {
        // Few and short-lived: their own interner is enough.
        let Some(pod) = CachedPod::new(&pod, &Interner::default()) else {
            return;
        };
        let until = now + wait + PENDING_GRACE;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|held| held.until > now && !same_pod(&held.pod, &pod));
            pending.push(PendingPod {
                pod: Arc::new(pod),
                until,
            });
        }
        for policy in policies {
            // Fails only once the controller is gone; nothing to wake then.
            let _ = self.wake.unbounded_send(policy.clone());
        }
    }

    /// The pods still held at `now` (expired ones are dropped).
    pub(crate) fn pending_pods(&self, now: Instant) -> Vec<Arc<CachedPod>> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|held| held.until > now);
        pending.iter().map(|held| held.pod.clone()).collect()
    }

    /// The policies pending pods wake; `None` after the first call.
    pub(crate) fn take_wakes(
        &self,
    ) -> Option<mpsc::UnboundedReceiver<ObjectRef<ImageBackupPolicy>>> {
        self.woken.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn same_pod(a: &CachedPod, b: &CachedPod) -> bool {
    a.namespace == b.namespace && a.name == b.name
}

/// The label the webhook's Service selects: only the leader serves (a
/// standby has no facts), so the leader puts it on its own pod. A pod that
/// loses the lease exits; a restarted container that stays a standby keeps
/// the label and refuses connections, which the API server ignores
/// (`failurePolicy: Ignore`) until the pod is replaced.
pub const SERVING_LABEL: &str = "lifeboat.dev/admission";

async fn mark_serving(context: &Context) -> Result<(), crate::error::OperatorError> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(context.client.clone(), &context.config.namespace);
    let patch = serde_json::json!({"metadata": {"labels": {SERVING_LABEL: "serving"}}});
    pods.patch(
        &context.config.identity,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// Serves the webhook and keeps its certificate and configuration current,
/// until the process ends. Does nothing without `LIFEBOAT_ADMISSION_WEBHOOK`.
pub async fn run(context: Arc<Context>) {
    let Some(config) = context.config.admission.clone() else {
        return;
    };
    info!(addr = %config.addr, webhook = %config.webhook_configuration, "admission webhook starting");
    if config.url_host.is_none()
        && let Err(e) = mark_serving(&context).await
    {
        error!(error = %e, "admission: labelling this pod as the one serving");
    }
    let resolver = Arc::new(certs::CurrentCertificate::default());
    let keeper = certs::keep_current(context.clone(), config.clone(), resolver.clone());
    let served = server::serve(context, config.addr, resolver);
    tokio::select! {
        () = keeper => error!("admission certificate keeper stopped"),
        result = served => match result {
            Ok(()) => error!("admission server stopped"),
            Err(e) => error!(error = %e, "admission server failed"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.to_owned());
        pod.metadata.namespace = Some("team".to_owned());
        pod.metadata.annotations = Some([("big".to_owned(), "x".repeat(100))].into());
        pod
    }

    #[test]
    fn a_pending_pod_is_held_trimmed_until_its_wait_and_grace_end_and_its_policies_are_woken() {
        let board = Board::default();
        let mut woken = board.take_wakes().expect("first take");
        assert!(board.take_wakes().is_none(), "the wakes are taken once");
        let start = Instant::now();
        let policy = ObjectRef::new("ensure").within("team");
        board.hold_pending(
            pod("p"),
            std::slice::from_ref(&policy),
            Duration::from_secs(8),
            start,
        );
        assert_eq!(woken.try_recv().ok(), Some(policy));
        let held = board.pending_pods(start + Duration::from_secs(37));
        assert_eq!(held.len(), 1);
        assert_eq!(&*held[0].name, "p", "kept as the pod cache keeps pods");
        assert!(
            board
                .pending_pods(start + Duration::from_secs(38))
                .is_empty()
        );
    }

    #[test]
    fn holding_the_same_pod_again_replaces_it() {
        let board = Board::default();
        let start = Instant::now();
        board.hold_pending(pod("p"), &[], Duration::from_secs(1), start);
        board.hold_pending(pod("p"), &[], Duration::from_secs(1), start);
        board.hold_pending(pod("q"), &[], Duration::from_secs(1), start);
        assert_eq!(board.pending_pods(start).len(), 2);
    }
}
