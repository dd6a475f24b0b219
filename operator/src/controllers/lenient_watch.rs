//! Watches a custom resource as raw objects and decodes each one on its own.
//!
//! A typed watch decodes a whole list page at once: one object the
//! operator's types cannot read (CRD/operator version skew, or a value the
//! schema allows but the types do not, such as an int32 field holding
//! 2^32) fails the list, the watcher backs off and retries forever, and the
//! controller stops reconciling every object of that kind. Here the watch is
//! of `DynamicObject`s; each is decoded separately, an undecodable one is
//! left out of the controller's store and reported on itself (condition
//! `Ready=False`/`Stalled=True` with reason `InvalidObject`, a Warning
//! Event, the `reconcile_errors` metric), and every other object keeps
//! being reconciled.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector::reflector};
use kube::{Api, Resource, ResourceExt as _};
use lifeboat_api::conditions::{ConditionStatus, new_condition, set_condition};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::context::{Context, FIELD_MANAGER};
use crate::error::OperatorError;

/// The reason undecodable objects are reported with.
pub const REASON_INVALID_OBJECT: &str = "InvalidObject";

/// Starts a lenient watch of every `K` in the cluster: the store of the
/// objects that decode, and the stream of their changes for
/// `Controller::for_stream`. Undecodable objects are reported through
/// `context` (see the module documentation).
pub(crate) fn watch<K>(
    context: Arc<Context>,
    kind: &'static str,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::all_with(context.client.clone(), &resource);
    let (reader, writer) = reflector::store::<K>();
    let lookup = reader.clone();
    let reporter = Arc::new(InvalidReporter {
        recorder: Recorder::new(context.client.clone(), context.reporter.clone()),
        resource,
        kind,
        context,
        reported: Mutex::new(HashMap::new()),
    });
    let events = watcher::watcher(api, config).filter_map(move |event| {
        let decoded = match event {
            Ok(event) => decode_event(
                event,
                |reference| lookup.get(reference),
                |object, message| reporter.clone().report(object, message),
            )
            .map(Ok),
            Err(error) => Some(Err(error)),
        };
        futures::future::ready(decoded)
    });
    let changes = reflector(writer, events).applied_objects();
    (reader, changes)
}

/// Decodes one raw watch event. An undecodable object is handed to
/// `invalid` and left out; if an earlier, decodable version of it is in the
/// store (`previous`), it is removed, so the controller never acts on a spec
/// that is no longer the object's.
pub(crate) fn decode_event<K>(
    event: Event<DynamicObject>,
    previous: impl Fn(&ObjectRef<K>) -> Option<Arc<K>>,
    mut invalid: impl FnMut(&DynamicObject, String),
) -> Option<Event<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned,
{
    let stale = |object: &DynamicObject| {
        let mut reference = ObjectRef::<K>::new(&object.name_any());
        if let Some(namespace) = object.namespace() {
            reference = reference.within(&namespace);
        }
        previous(&reference).map(|old| Event::Delete(old.as_ref().clone()))
    };
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::InitApply(object) => match decode::<K>(&object) {
            Ok(decoded) => Some(Event::InitApply(decoded)),
            Err(message) => {
                invalid(&object, message);
                None
            }
        },
        Event::Apply(object) => match decode::<K>(&object) {
            Ok(decoded) => Some(Event::Apply(decoded)),
            Err(message) => {
                invalid(&object, message);
                stale(&object)
            }
        },
        Event::Delete(object) => match decode::<K>(&object) {
            Ok(decoded) => Some(Event::Delete(decoded)),
            Err(_) => stale(&object),
        },
    }
}

fn decode<K: Resource + DeserializeOwned>(object: &DynamicObject) -> Result<K, String> {
    object.clone().try_parse::<K>().map_err(|e| e.to_string())
}

/// Reports undecodable objects, once per object generation and message.
struct InvalidReporter {
    context: Arc<Context>,
    recorder: Recorder,
    resource: ApiResource,
    kind: &'static str,
    /// uid → (generation, message) last reported.
    reported: Mutex<HashMap<String, (Option<i64>, String)>>,
}

impl InvalidReporter {
    fn report(self: Arc<Self>, object: &DynamicObject, message: String) {
        let uid = object.uid().unwrap_or_default();
        let key = (object.metadata.generation, message.clone());
        {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if reported.get(&uid) == Some(&key) {
                return;
            }
            reported.insert(uid, key);
        }
        let error = OperatorError::InvalidObject {
            kind: self.kind,
            message,
        };
        super::count_failure(&self.context.metrics, self.kind, &error);
        warn!(
            kind = self.kind, namespace = object.namespace().unwrap_or_default(),
            name = object.name_any(), error = %error,
            "cannot decode object; reporting it and reconciling the others"
        );
        let object = object.clone();
        tokio::spawn(async move {
            if let Err(e) = self.mark(&object, &error).await {
                warn!(kind = self.kind, name = object.name_any(), error = %e, "could not report an undecodable object");
            }
        });
    }

    /// Sets `Ready=False` and `Stalled=True` (reason `InvalidObject`) unless
    /// they already say so, and publishes a Warning Event.
    async fn mark(&self, object: &DynamicObject, error: &OperatorError) -> Result<(), kube::Error> {
        let message = error.to_string();
        let mut conditions: Vec<Condition> = object
            .data
            .pointer("/status/conditions")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let generation = object.metadata.generation;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let ready = new_condition(
            "Ready",
            ConditionStatus::False,
            REASON_INVALID_OBJECT,
            message.clone(),
            generation,
        );
        let stalled = new_condition(
            "Stalled",
            ConditionStatus::True,
            REASON_INVALID_OBJECT,
            message.clone(),
            generation,
        );
        let changed = set_condition(&mut conditions, ready, now.clone())
            | set_condition(&mut conditions, stalled, now);
        if !changed {
            return Ok(());
        }
        let api: Api<DynamicObject> = match object.namespace() {
            Some(namespace) => {
                Api::namespaced_with(self.context.client.clone(), &namespace, &self.resource)
            }
            None => Api::all_with(self.context.client.clone(), &self.resource),
        };
        // A merge patch of the conditions only: the rest of the status is
        // what the operator cannot read, and is left as it is.
        let patch = serde_json::json!({ "status": { "conditions": conditions } });
        api.patch_status(
            &object.name_any(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await?;
        super::publish(
            &self.recorder,
            &object.object_ref(&self.resource),
            EventType::Warning,
            REASON_INVALID_OBJECT,
            "Decode",
            message,
        )
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_api::ImageBackupPolicy;

    fn raw(name: &str, keep_last: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeboat.dev/v1alpha1",
            "kind": "ImageBackupPolicy",
            "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"), "generation": 1},
            "spec": {
                "selector": {"namespaces": ["prod"]},
                "targets": [{"name": "t", "registry": "backup.example.com"}],
                "retention": {"keepLast": keep_last}
            }
        }))
        .unwrap()
    }

    fn decodes(object: &DynamicObject) -> bool {
        decode::<ImageBackupPolicy>(object).is_ok()
    }

    #[test]
    fn decodable_objects_pass_and_undecodable_ones_are_reported_and_left_out() {
        let good = raw("good", serde_json::json!(3));
        assert!(decodes(&good), "{:?}", decode::<ImageBackupPolicy>(&good));
        // An int32 field holding 2^32: the schema's `format: int32` is not
        // enforced by the API server, the operator's i32 cannot hold it.
        let bad = raw("bad", serde_json::json!(4_294_967_296_i64));
        let mut reported = Vec::new();
        let none = |_: &ObjectRef<ImageBackupPolicy>| None;
        for event in [
            Event::InitApply(good.clone()),
            Event::InitApply(bad.clone()),
            Event::Apply(bad.clone()),
        ] {
            let decoded = decode_event(event, none, |o, m| reported.push((o.name_any(), m)));
            if let Some(Event::InitApply(policy) | Event::Apply(policy)) = &decoded {
                assert_eq!(policy.name_any(), "good");
            } else {
                assert!(decoded.is_none(), "{decoded:?}");
            }
        }
        assert_eq!(reported.len(), 2, "{reported:?}");
        assert!(reported.iter().all(|(name, _)| name == "bad"));
        assert!(reported[0].1.contains("4294967296"), "{}", reported[0].1);
    }

    #[test]
    fn an_object_that_becomes_undecodable_leaves_the_store() {
        let good = raw("p", serde_json::json!(3));
        let earlier: Arc<ImageBackupPolicy> = Arc::new(decode(&good).unwrap());
        let bad = raw("p", serde_json::json!(4_294_967_296_i64));
        let lookup = |r: &ObjectRef<ImageBackupPolicy>| {
            (r.name == "p" && r.namespace.as_deref() == Some("prod")).then(|| earlier.clone())
        };
        let mut reports = 0;
        let decoded = decode_event(Event::Apply(bad.clone()), lookup, |_, _| reports += 1);
        assert!(matches!(decoded, Some(Event::Delete(p)) if p.name_any() == "p"));
        assert_eq!(reports, 1);
        // Its deletion, undecodable too, still removes the stale copy.
        let decoded = decode_event(Event::Delete(bad), lookup, |_, _| reports += 1);
        assert!(matches!(decoded, Some(Event::Delete(_))));
        assert_eq!(reports, 1);
        assert!(matches!(
            decode_event::<ImageBackupPolicy>(Event::InitDone, |_| None, |_, _| {}),
            Some(Event::InitDone)
        ));
    }
}
