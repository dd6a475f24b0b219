//! The copy queue: image copies run here, outside the reconciles that
//! asked for them, with fair shares per namespace and per route (source
//! registry → target registry) so that one slow or dead registry, or one
//! namespace with hundreds of images, delays only the policies that use
//! it. A reconcile enqueues its due copies and returns; the queue wakes
//! the policy (through the channel [`CopyQueue::new`] returns) when its
//! last queued copy has finished, and the next reconcile takes the
//! results. Each copy's overall deadline is the engine's
//! (`registry_transfer::CopyDeadline`, set from the operator's config).
//!
//! The decisions (which copy starts next, why one waits) are pure, in
//! [`decide`], and so is how many copies a route may run ([`adaptive`]:
//! learned from how its copies end); this module only keeps the state and
//! runs the copies.

pub(crate) mod adaptive;
pub(crate) mod decide;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use tokio::sync::Notify;

pub(crate) use adaptive::Verdict;
use adaptive::{Ended, RouteLimit};
pub(crate) use decide::Caps;
use decide::{Load, Slot};

use crate::telemetry::Metrics;

/// The object a copy is for (its reconcile is woken when copies end).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// Results are kept by uid: a policy deleted and created again under
    /// the same name does not get the old one's.
    pub(crate) uid: String,
}

/// One copy to run.
pub(crate) struct Job<O> {
    pub(crate) owner: Owner,
    /// Unique within the owner (e.g. `target/image`): a copy already
    /// queued or running under this key is not queued again.
    pub(crate) key: String,
    pub(crate) source_registry: String,
    pub(crate) target_registry: String,
    /// The copy; not polled until it starts.
    pub(crate) work: BoxFuture<'static, O>,
}

/// A copy that ended.
pub(crate) struct Finished<O> {
    pub(crate) key: String,
    pub(crate) output: O,
    /// Time spent queued, then running.
    pub(crate) waited: Duration,
    pub(crate) ran: Duration,
}

struct Queued<O> {
    job: Job<O>,
    route: String,
    enqueued: Instant,
}

struct Running {
    owner: Owner,
    key: String,
    route: String,
    abort: tokio::task::AbortHandle,
}

struct State<O> {
    /// Oldest first.
    queued: Vec<Queued<O>>,
    running: Vec<Running>,
    /// By owner uid, until its reconcile takes them.
    finished: HashMap<String, Vec<Finished<O>>>,
    /// Routes whose depth was published, to publish their return to 0.
    routes_seen: BTreeSet<String>,
    /// Each route's learned limit (created at its first ended copy).
    limits: HashMap<String, RouteLimit>,
}

/// See the module documentation.
pub(crate) struct CopyQueue<O> {
    state: Mutex<State<O>>,
    caps: Caps,
    /// How an ended copy counts for its route's limit.
    classify: fn(&O) -> Verdict,
    changed: Notify,
    wake: mpsc::UnboundedSender<Owner>,
    metrics: Metrics,
}

fn route_of(source: &str, target: &str) -> String {
    format!("{source} -> {target}")
}

impl<O: Send + 'static> CopyQueue<O> {
    /// A queue and the stream of owners to reconcile when their copies
    /// have ended. Nothing runs until [`CopyQueue::run`] is spawned.
    pub(crate) fn new(
        caps: Caps,
        classify: fn(&O) -> Verdict,
        metrics: Metrics,
    ) -> (Arc<CopyQueue<O>>, mpsc::UnboundedReceiver<Owner>) {
        let (wake, woken) = mpsc::unbounded();
        let queue = CopyQueue {
            state: Mutex::new(State {
                queued: Vec::new(),
                running: Vec::new(),
                finished: HashMap::new(),
                routes_seen: BTreeSet::new(),
                limits: HashMap::new(),
            }),
            caps,
            classify,
            changed: Notify::new(),
            wake,
            metrics,
        };
        (Arc::new(queue), woken)
    }

    /// The caps with each route's learned limit.
    fn caps_now(&self, state: &State<O>) -> Caps {
        let mut caps = self.caps.clone();
        caps.route_limits = state
            .limits
            .iter()
            .map(|(route, limit)| (route.clone(), limit.limit()))
            .collect();
        caps
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<O>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a copy; `false` (and the job dropped) when the owner has one
    /// under the same key queued or running already.
    pub(crate) fn enqueue(&self, job: Job<O>) -> bool {
        {
            let mut state = self.lock();
            let same = |owner: &Owner, key: &str| owner.uid == job.owner.uid && key == job.key;
            if state.queued.iter().any(|q| same(&q.job.owner, &q.job.key))
                || state.running.iter().any(|r| same(&r.owner, &r.key))
            {
                return false;
            }
            let route = route_of(&job.source_registry, &job.target_registry);
            state.queued.push(Queued {
                job,
                route,
                enqueued: Instant::now(),
            });
            self.publish_depth(&mut state);
        }
        self.changed.notify_one();
        true
    }

    /// The keys of the owner's copies queued or running.
    pub(crate) fn pending(&self, uid: &str) -> HashSet<String> {
        let state = self.lock();
        let queued = state
            .queued
            .iter()
            .filter(|q| q.job.owner.uid == uid)
            .map(|q| q.job.key.clone());
        let running = state
            .running
            .iter()
            .filter(|r| r.owner.uid == uid)
            .map(|r| r.key.clone());
        queued.chain(running).collect()
    }

    /// Takes the owner's ended copies.
    pub(crate) fn take_finished(&self, uid: &str) -> Vec<Finished<O>> {
        self.lock().finished.remove(uid).unwrap_or_default()
    }

    /// Why the owner's queued copies wait (for its status): how many wait,
    /// and what holds the first of them. `None` when none waits.
    pub(crate) fn waiting(&self, uid: &str) -> Option<String> {
        let state = self.lock();
        let slots: Vec<Slot<'_>> = state.queued.iter().map(slot_of).collect();
        let load = Load::of(state.running.iter().map(|r| Slot {
            namespace: &r.owner.namespace,
            route: &r.route,
        }));
        let mine: Vec<usize> = state
            .queued
            .iter()
            .enumerate()
            .filter(|(_, q)| q.job.owner.uid == uid)
            .map(|(i, _)| i)
            .collect();
        let first = *mine.first()?;
        let why = decide::waiting_message(&slots, first, &load, &self.caps_now(&state));
        Some(format!("{} copies waiting: {why}", mine.len()))
    }

    /// Drops the queued copies and results of owners not in `live`, and
    /// cancels their running copies.
    pub(crate) fn forget_except(&self, live: &HashSet<String>) {
        let mut state = self.lock();
        state.queued.retain(|q| live.contains(&q.job.owner.uid));
        for running in &state.running {
            if !live.contains(&running.owner.uid) {
                running.abort.abort();
            }
        }
        state.running.retain(|r| live.contains(&r.owner.uid));
        state.finished.retain(|uid, _| live.contains(uid));
        self.publish_depth(&mut state);
        drop(state);
        self.changed.notify_one();
    }

    /// Starts queued copies whenever a slot frees or a copy is queued;
    /// runs until the process ends.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            self.start_what_may_start();
            self.changed.notified().await;
        }
    }

    fn start_what_may_start(self: &Arc<Self>) {
        let mut state = self.lock();
        let starting = {
            let slots: Vec<Slot<'_>> = state.queued.iter().map(slot_of).collect();
            let load = Load::of(state.running.iter().map(|r| Slot {
                namespace: &r.owner.namespace,
                route: &r.route,
            }));
            decide::starts(&slots, &load, &self.caps_now(&state))
        };
        if starting.is_empty() {
            return;
        }
        let chosen: HashSet<usize> = starting.iter().copied().collect();
        let mut kept = Vec::with_capacity(state.queued.len());
        let mut started = Vec::new();
        for (index, queued) in std::mem::take(&mut state.queued).into_iter().enumerate() {
            if chosen.contains(&index) {
                started.push(queued);
            } else {
                kept.push(queued);
            }
        }
        state.queued = kept;
        for queued in started {
            let Queued {
                job,
                route,
                enqueued,
            } = queued;
            let Job {
                owner, key, work, ..
            } = job;
            let queue = Arc::clone(self);
            let (task_owner, task_key) = (owner.clone(), key.clone());
            let waited = enqueued.elapsed();
            let handle = tokio::spawn(async move {
                let started = Instant::now();
                let output = work.await;
                queue.finish(
                    task_owner,
                    Finished {
                        key: task_key,
                        output,
                        waited,
                        ran: started.elapsed(),
                    },
                );
            });
            state.running.push(Running {
                owner,
                key,
                route,
                abort: handle.abort_handle(),
            });
        }
        self.publish_depth(&mut state);
    }

    fn finish(&self, owner: Owner, finished: Finished<O>) {
        let last_of_owner = {
            let mut state = self.lock();
            let ended = Ended::of((self.classify)(&finished.output), finished.ran);
            let route = state
                .running
                .iter()
                .find(|r| r.owner.uid == owner.uid && r.key == finished.key)
                .map(|r| r.route.clone());
            if let Some(route) = route {
                let ceiling = self.caps.per_route;
                let limit = state
                    .limits
                    .entry(route.clone())
                    .or_insert_with(|| RouteLimit::new(ceiling));
                let before = limit.limit();
                limit.record(ended);
                if limit.limit() < before {
                    tracing::info!(%route, limit = limit.limit(), before, outcome = ?ended, "copy route narrowed");
                }
            }
            state
                .running
                .retain(|r| !(r.owner.uid == owner.uid && r.key == finished.key));
            state
                .finished
                .entry(owner.uid.clone())
                .or_default()
                .push(finished);
            self.publish_depth(&mut state);
            !state.queued.iter().any(|q| q.job.owner.uid == owner.uid)
                && !state.running.iter().any(|r| r.owner.uid == owner.uid)
        };
        if last_of_owner {
            // The receiver is the controller; gone only at shutdown.
            let _ = self.wake.unbounded_send(owner);
        }
        self.changed.notify_one();
    }

    /// Counts a copy cancelled at its deadline (by route).
    pub(crate) fn count_deadline_cancel(&self, source: &str, target: &str) {
        self.metrics.copies_cancelled.add(
            1,
            &[
                KeyValue::new("route", route_of(source, target)),
                KeyValue::new("reason", "CopyDeadlineExceeded"),
            ],
        );
    }

    /// `lifeboat_copy_queue_depth{route, state}`: queued and running per
    /// route (0 published once for a route that emptied).
    fn publish_depth(&self, state: &mut State<O>) {
        let mut depth: HashMap<&str, (u64, u64)> = HashMap::new();
        for queued in &state.queued {
            depth.entry(&queued.route).or_default().0 += 1;
        }
        for running in &state.running {
            depth.entry(&running.route).or_default().1 += 1;
        }
        let routes: BTreeSet<String> = depth.keys().map(|r| (*r).to_owned()).collect();
        for route in state.routes_seen.iter().chain(routes.iter()) {
            let (queued, running) = depth.get(route.as_str()).copied().unwrap_or((0, 0));
            for (value, which) in [(queued, "queued"), (running, "running")] {
                self.metrics.copy_queue_depth.record(
                    value,
                    &[
                        KeyValue::new("route", route.clone()),
                        KeyValue::new("state", which),
                    ],
                );
            }
        }
        state.routes_seen = routes;
    }
}

fn slot_of<O>(queued: &Queued<O>) -> Slot<'_> {
    Slot {
        namespace: &queued.job.owner.namespace,
        route: &queued.route,
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn owner(namespace: &str) -> Owner {
        Owner {
            namespace: namespace.into(),
            name: "policy".into(),
            uid: format!("uid-{namespace}"),
        }
    }

    fn job(
        namespace: &str,
        key: &str,
        target: &str,
        work: BoxFuture<'static, &'static str>,
    ) -> Job<&'static str> {
        Job {
            owner: owner(namespace),
            key: key.into(),
            source_registry: "src:5000".into(),
            target_registry: target.into(),
            work,
        }
    }

    /// A copy to a registry that never answers holds its route's slots;
    /// another namespace's copy to a healthy registry starts and ends at
    /// once, and its owner is woken.
    #[tokio::test]
    async fn a_stuck_route_does_not_delay_another_policy() {
        let metrics = Metrics::new().unwrap();
        let caps = Caps {
            total: 3,
            per_route: 2,
            per_namespace: 2,
            route_limits: Default::default(),
        };
        let (queue, mut woken) = CopyQueue::new(caps, |_| Verdict::Copied, metrics);
        tokio::spawn(queue.clone().run());
        for i in 0..3 {
            let never: BoxFuture<'static, &str> = Box::pin(futures::future::pending());
            assert!(queue.enqueue(job("slow", &format!("img{i}"), "trickle:9000", never)));
        }
        let again: BoxFuture<'static, &str> = Box::pin(futures::future::pending());
        assert!(
            !queue.enqueue(job("slow", "img0", "trickle:9000", again)),
            "already queued"
        );
        let quick: BoxFuture<'static, &str> = Box::pin(async { "copied" });
        assert!(queue.enqueue(job("fast", "web", "backup:5002", quick)));

        let who = tokio::time::timeout(Duration::from_secs(5), woken.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(who, owner("fast"));
        let finished = queue.take_finished("uid-fast");
        assert_eq!(finished.len(), 1);
        assert_eq!(
            (finished[0].key.as_str(), finished[0].output),
            ("web", "copied")
        );
        assert!(queue.pending("uid-fast").is_empty());
        assert_eq!(queue.pending("uid-slow").len(), 3);
        assert_eq!(
            queue.waiting("uid-slow").unwrap(),
            "1 copies waiting: queued behind 2 copies on src:5000 -> trickle:9000 (at most 2 at once per route)"
        );
        assert_eq!(queue.waiting("uid-fast"), None);

        // A deleted policy's copies are dropped, running ones cancelled.
        queue.forget_except(&HashSet::from(["uid-fast".to_owned()]));
        assert!(queue.pending("uid-slow").is_empty());
    }

    /// Copies of one owner all end before it is woken once.
    #[tokio::test]
    async fn the_owner_is_woken_when_its_last_copy_ends() {
        let (queue, mut woken) = CopyQueue::new(
            Caps {
                total: 1,
                per_route: 1,
                per_namespace: 1,
                route_limits: Default::default(),
            },
            |_| Verdict::Copied,
            Metrics::new().unwrap(),
        );
        tokio::spawn(queue.clone().run());
        for key in ["a", "b", "c"] {
            let work: BoxFuture<'static, &str> = Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                "done"
            });
            queue.enqueue(job("ns", key, "backup:5002", work));
        }
        let who = tokio::time::timeout(Duration::from_secs(5), woken.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(who, owner("ns"));
        let mut keys: Vec<String> = queue
            .take_finished("uid-ns")
            .into_iter()
            .map(|f| f.key)
            .collect();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), woken.next())
                .await
                .is_err(),
            "woken once"
        );
    }
}
