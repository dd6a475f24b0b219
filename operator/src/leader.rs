//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas at most one works at a time, with the semantics of
//! client-go's `tools/leaderelection`:
//!
//! - three durations, `lease > renew deadline > retry period`: a candidate
//!   tries every retry period; a leader that has not renewed within the renew
//!   deadline stops leading, which is before any other replica may take the
//!   lease (one lease duration after it *saw* the last renewal);
//! - expiry is judged by when this replica last observed the record change,
//!   on its monotonic clock, never by comparing the holder's `renewTime`
//!   with the local wall clock (skewed clocks cannot cause early takeovers);
//! - every round has a timeout (kube's client has no read timeout), so a hung
//!   Lease request cannot keep a stale leader working;
//! - writes carry the `resourceVersion` read (of two replicas racing for an
//!   expired lease, the API server lets one win).
//!
//! Leadership is published through [`Leadership`]: a deadline, not a flag, so
//! [`Leadership::is_leading_now`] is false the moment the renew deadline
//! passes even if the election task has not run since (a paused process
//! resumed by SIGCONT). The operator's API client refuses writes when it is
//! false ([`WriteFence`]); `main` exits when leadership ends and Kubernetes
//! restarts the container as a candidate.
//!
//! The decisions are pure ([`observe`], [`decide`], [`Leadership`]'s clock
//! arithmetic) and unit-tested; [`LeaderElector::run`] is the thin IO loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The three durations of an election, checked by [`ElectionTiming::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTiming {
    /// How long others wait after seeing the record change before taking it.
    pub lease_duration: Duration,
    /// How long a leader keeps working without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try and leaders renew.
    pub retry_period: Duration,
}

impl ElectionTiming {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    pub const DEFAULT: ElectionTiming = ElectionTiming {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    /// Checks `lease > renew deadline > 1.2 × retry period` (the jitter a
    /// candidate adds must not push a renewal past the deadline) and that
    /// the lease is whole seconds (what the Lease can carry).
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, String> {
        if lease_duration <= renew_deadline {
            return Err(format!(
                "lease duration {lease_duration:?} must be longer than the renew deadline {renew_deadline:?}"
            ));
        }
        if renew_deadline <= retry_period.mul_f64(JITTER + 1.0) {
            return Err(format!(
                "renew deadline {renew_deadline:?} must be longer than 1.2 × the retry period {retry_period:?}"
            ));
        }
        if retry_period.is_zero() || lease_duration.subsec_nanos() != 0 {
            return Err("the retry period must be positive and the lease whole seconds".into());
        }
        Ok(ElectionTiming {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// Candidates wait up to this fraction of the retry period more, so that
/// replicas started together do not collide every round.
const JITTER: f64 = 0.2;

/// The fields of a Lease whose change proves its holder alive. Opaque: the
/// times are compared for equality, never with the local clock.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub lease_seconds: Option<i32>,
    pub acquire_time: Option<MicroTime>,
    pub renew_time: Option<MicroTime>,
    pub transitions: i32,
}

impl LeaseRecord {
    fn of(lease: &Lease) -> LeaseRecord {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            lease_seconds: spec.lease_duration_seconds,
            acquire_time: spec.acquire_time,
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// The lease duration the holder asked for (at least one second; the
    /// replica's own when the record has none).
    fn duration(&self, fallback: Duration) -> Duration {
        match self.lease_seconds {
            Some(seconds) => Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1)),
            None => fallback,
        }
    }
}

/// A record and when this replica first saw it as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub record: LeaseRecord,
    pub seen_at: Instant,
}

/// The new observation after reading `record` at `now`: an unchanged record
/// keeps the time it was first seen, a changed one starts a new wait.
pub fn observe(previous: Option<&Observation>, record: LeaseRecord, now: Instant) -> Observation {
    match previous {
        Some(previous) if previous.record == record => previous.clone(),
        _ => Observation {
            record,
            seen_at: now,
        },
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds a live lease: take it (one more transition).
    Acquire,
    /// We hold it: renew it (same acquire time and transitions).
    Renew,
    /// Another replica holds it; it may be taken after `expires_in` unless
    /// the record changes meanwhile.
    Follow {
        holder: String,
        expires_in: Duration,
    },
}

/// What a replica called `me` does with the lease it observed, at `now`.
pub fn decide(
    observed: &Observation,
    me: &str,
    now: Instant,
    own_duration: Duration,
) -> LeaseDecision {
    let Some(holder) = &observed.record.holder else {
        return LeaseDecision::Acquire;
    };
    if holder == me {
        return LeaseDecision::Renew;
    }
    let expires_at = observed
        .seen_at
        .checked_add(observed.record.duration(own_duration));
    match expires_at.and_then(|at| at.checked_duration_since(now)) {
        Some(left) if !left.is_zero() => LeaseDecision::Follow {
            holder: holder.clone(),
            expires_in: left,
        },
        // Unrepresentable expiry (an absurd duration in the record) counts
        // as live: never take a lease on arithmetic overflow.
        None if expires_at.is_none() => LeaseDecision::Follow {
            holder: holder.clone(),
            expires_in: own_duration,
        },
        _ => LeaseDecision::Acquire,
    }
}

/// Whether this replica may work, shared by the election loop (which extends
/// it), the API client's write fence and `main`.
#[derive(Clone, Debug)]
pub struct Leadership {
    state: Arc<Mutex<LeadershipState>>,
    changes: watch::Sender<bool>,
}

#[derive(Clone, Copy, Debug)]
enum LeadershipState {
    /// Leader election is off: this replica always works.
    Unconditional,
    /// Works until the deadline (`None`: not leading), in the lease term
    /// (`leaseTransitions`) it holds.
    Until(Option<Instant>, i32),
}

impl Leadership {
    /// A replica that leads without election (single replica).
    pub fn unconditional() -> Leadership {
        Leadership {
            state: Arc::new(Mutex::new(LeadershipState::Unconditional)),
            changes: watch::Sender::new(true),
        }
    }

    /// A candidate that does not lead yet.
    pub fn candidate() -> Leadership {
        Leadership {
            state: Arc::new(Mutex::new(LeadershipState::Until(None, 0))),
            changes: watch::Sender::new(false),
        }
    }

    /// Whether this replica may write at `now`.
    pub fn is_leading_at(&self, now: Instant) -> bool {
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            LeadershipState::Unconditional => true,
            LeadershipState::Until(deadline, _) => deadline.is_some_and(|d| now < d),
        }
    }

    /// The lease term this replica leads in (`leaseTransitions` when it took
    /// the lease; 0 without election).
    pub fn term(&self) -> i32 {
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            LeadershipState::Unconditional => 0,
            LeadershipState::Until(_, term) => term,
        }
    }

    /// Whether this replica may write now.
    pub fn is_leading_now(&self) -> bool {
        self.is_leading_at(Instant::now())
    }

    /// A renewal whose round started at `started` keeps this replica leading
    /// until `started + renew deadline`: the record was written after
    /// `started`, so no other replica can take it before `started + lease`.
    fn renewed(&self, started: Instant, timing: &ElectionTiming, term: i32) {
        let deadline = started.checked_add(timing.renew_deadline);
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) =
            LeadershipState::Until(deadline, term);
        self.changes.send_replace(deadline.is_some());
    }

    /// Stops leading, at once.
    pub fn revoke(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let LeadershipState::Until(deadline, _) = &mut *state {
            *deadline = None;
        }
        drop(state);
        self.changes.send_replace(false);
    }

    fn deadline(&self) -> Option<Instant> {
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            LeadershipState::Unconditional => None,
            LeadershipState::Until(deadline, _) => deadline,
        }
    }

    /// Resolves once this replica leads.
    pub async fn acquired(&self) {
        let mut changes = self.changes.subscribe();
        // Only fails when the sender is gone, which `self` prevents.
        let _ = changes.wait_for(|leading| *leading).await;
    }

    /// Resolves once this replica stopped leading (after it led).
    pub async fn lost(&self) {
        let mut changes = self.changes.subscribe();
        let _ = changes.wait_for(|leading| !*leading).await;
    }
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error("lease request: {0}")]
    Kube(#[from] kube::Error),
    #[error("lease request did not finish within {0:?}")]
    Timeout(Duration),
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: ElectionTiming,
    observed: Option<Observation>,
    /// The `resourceVersion` of the record observed, for the next write.
    resource_version: Option<String>,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: ElectionTiming) -> Self {
        LeaderElector {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: None,
            resource_version: None,
        }
    }

    /// Campaigns until this replica leads, then renews until it cannot
    /// within the renew deadline or sees another holder; returns after
    /// revoking `leadership` (the caller exits: Kubernetes restarts the
    /// container as a fresh candidate, with no controller state left over).
    pub async fn run(mut self, leadership: Leadership) {
        // Candidate: try every retry period (jittered) until a round wins.
        loop {
            let started = Instant::now();
            match self.round_within(started, self.timing.renew_deadline).await {
                Ok(true) => {
                    leadership.renewed(started, &self.timing, self.term());
                    info!(
                        identity = %self.identity, lease = %self.name,
                        term = self.term(), "became leader"
                    );
                    break;
                }
                Ok(false) => {}
                Err(error) => warn!(%error, "could not read or write the leader lease"),
            }
            tokio::time::sleep(jittered(self.timing.retry_period, started)).await;
        }
        // Leader: renew every retry period; stop at the renew deadline.
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let started = Instant::now();
            let Some(left) = leadership
                .deadline()
                .and_then(|d| d.checked_duration_since(started))
                .filter(|left| !left.is_zero())
            else {
                warn!(
                    identity = %self.identity, term = self.term(),
                    "renew deadline passed without a renewal: stopping work"
                );
                break;
            };
            match self.round_within(started, left).await {
                Ok(true) => leadership.renewed(started, &self.timing, self.term()),
                Ok(false) => {
                    warn!(
                        identity = %self.identity,
                        holder = ?self.observed.as_ref().and_then(|o| o.record.holder.clone()),
                        "another replica holds the lease: stopping work"
                    );
                    break;
                }
                Err(error) => warn!(%error, "could not renew the leader lease"),
            }
        }
        leadership.revoke();
    }

    /// The lease's transition count as last observed: this replica's term.
    fn term(&self) -> i32 {
        self.observed.as_ref().map_or(0, |o| o.record.transitions)
    }

    async fn round_within(
        &mut self,
        started: Instant,
        limit: Duration,
    ) -> Result<bool, RoundError> {
        match tokio::time::timeout(limit, self.round(started)).await {
            Ok(result) => result,
            Err(_) => Err(RoundError::Timeout(limit)),
        }
    }

    /// One round: reads the lease, decides, writes; returns whether this
    /// replica holds it afterwards.
    async fn round(&mut self, started: Instant) -> Result<bool, RoundError> {
        let existing = self.api.get_opt(&self.name).await?;
        let record = existing.as_ref().map(LeaseRecord::of).unwrap_or_default();
        self.resource_version = existing
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        let observed = observe(self.observed.as_ref(), record, Instant::now());
        let decision = decide(
            &observed,
            &self.identity,
            Instant::now(),
            self.timing.lease_duration,
        );
        self.observed = Some(observed.clone());
        let now = MicroTime(Timestamp::now());
        let (acquire_time, transitions) = match decision {
            LeaseDecision::Follow { .. } => return Ok(false),
            LeaseDecision::Renew => (
                observed.record.acquire_time.clone().unwrap_or(now.clone()),
                observed.record.transitions,
            ),
            LeaseDecision::Acquire if existing.is_none() => (now.clone(), 0),
            LeaseDecision::Acquire => (now.clone(), observed.record.transitions.saturating_add(1)),
        };
        let record = LeaseRecord {
            holder: Some(self.identity.clone()),
            lease_seconds: Some(self.timing.lease_seconds()),
            acquire_time: Some(acquire_time),
            renew_time: Some(now),
            transitions,
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                // Carrying the version we read makes the write fail with 409
                // if another replica wrote in between.
                resource_version: self.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: record.holder.clone(),
                lease_duration_seconds: record.lease_seconds,
                acquire_time: record.acquire_time.clone(),
                renew_time: record.renew_time.clone(),
                lease_transitions: Some(record.transitions),
                ..LeaseSpec::default()
            }),
        };
        let result = if existing.is_some() {
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
        } else {
            self.api.create(&PostParams::default(), &lease).await
        };
        match result {
            Ok(_) => {
                self.observed = Some(Observation {
                    record,
                    seen_at: started,
                });
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

/// The lease as this replica gives it up on a clean shutdown: no holder and
/// a one-second duration, so a successor takes it at its next round instead
/// of waiting out the whole lease (client-go's `ReleaseOnCancel`). Acquire
/// time and transitions stay: the term count goes on. `None` when the
/// lease is not ours (another replica took it; nothing to give up).
pub fn released(lease: &Lease, identity: &str) -> Option<Lease> {
    if LeaseRecord::of(lease).holder.as_deref() != Some(identity) {
        return None;
    }
    let mut released = lease.clone();
    let spec = released.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    Some(released)
}

/// Gives the lease up if this replica still holds it; the write carries the
/// version read, so a replica that took it meanwhile keeps it (409). Called
/// after the controllers stopped and leadership was revoked: no write of
/// this replica can follow.
pub async fn release(api: &Api<Lease>, name: &str, identity: &str) -> Result<bool, kube::Error> {
    let Some(lease) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let Some(released) = released(&lease, identity) else {
        return Ok(false);
    };
    match api.replace(name, &PostParams::default(), &released).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// `period` plus up to [`JITTER`] of it, varied by the sub-second part of
/// when the round started (no random source needed for this).
fn jittered(period: Duration, started: Instant) -> Duration {
    let nanos = started.elapsed().subsec_nanos() ^ Instant::now().elapsed().subsec_nanos();
    let fraction = f64::from(nanos % 1000) / 1000.0;
    period.mul_f64(1.0 + JITTER * fraction)
}

/// A tower layer for the operator's API client that refuses every write
/// (any method but GET, HEAD, OPTIONS) while this replica does not lead:
/// reads keep the caches warm, but a replica that lost the lease (or was
/// paused past its renew deadline) cannot change anything, even in the
/// moment before `main` notices and exits.
#[derive(Clone)]
pub struct WriteFenceLayer {
    pub leadership: Leadership,
}

impl<S> tower::Layer<S> for WriteFenceLayer {
    type Service = WriteFence<S>;
    fn layer(&self, inner: S) -> WriteFence<S> {
        WriteFence {
            inner,
            leadership: self.leadership.clone(),
        }
    }
}

#[derive(Clone)]
pub struct WriteFence<S> {
    inner: S,
    leadership: Leadership,
}

/// The error a fenced write fails with.
#[derive(Debug, thiserror::Error)]
#[error("not the leader: refused a {method} while this replica does not hold the lease")]
pub struct NotLeading {
    method: http::Method,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a request changes anything on the API server.
pub fn is_write(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

impl<S, B> tower::Service<http::Request<B>> for WriteFence<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if is_write(request.method()) && !self.leadership.is_leading_now() {
            let method = request.method().clone();
            warn!(%method, uri = %request.uri(), "refused a write: this replica does not lead");
            return Box::pin(std::future::ready(Err(
                Box::new(NotLeading { method }) as BoxError
            )));
        }
        // One line per write, with the term it was allowed in (debug level):
        // what the partition e2e test reads to show that no two replicas
        // wrote in the same term.
        debug!(
            method = %request.method(), path = request.uri().path(),
            term = self.leadership.term(), "write sent"
        );
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn record(holder: Option<&str>, renew_secs: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            lease_seconds: Some(15),
            acquire_time: None,
            renew_time: Timestamp::from_second(1_800_000_000 + renew_secs)
                .ok()
                .map(MicroTime),
            transitions: 3,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn timing_must_order_lease_deadline_and_retry() {
        assert!(ElectionTiming::new(secs(15), secs(10), secs(2)).is_ok());
        assert_eq!(
            ElectionTiming::new(secs(15), secs(10), secs(2)),
            Ok(ElectionTiming::DEFAULT)
        );
        assert!(ElectionTiming::new(secs(10), secs(10), secs(2)).is_err());
        assert!(ElectionTiming::new(secs(15), secs(20), secs(2)).is_err());
        // 1.2 × 9 s > 10 s: a jittered retry could miss the deadline.
        assert!(ElectionTiming::new(secs(15), secs(10), secs(9)).is_err());
        assert!(ElectionTiming::new(Duration::from_millis(15_500), secs(10), secs(2)).is_err());
    }

    #[test]
    fn an_empty_lease_is_acquired_and_our_own_renewed() {
        let now = Instant::now();
        let empty = observe(None, record(None, 0), now);
        assert_eq!(decide(&empty, "a", now, LEASE), LeaseDecision::Acquire);
        let ours = observe(None, record(Some("a"), 0), now);
        assert_eq!(
            decide(&ours, "a", now + secs(500), LEASE),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn another_holder_is_followed_until_a_lease_after_the_last_change_seen() {
        let t0 = Instant::now();
        let first = observe(None, record(Some("b"), 0), t0);
        assert_eq!(
            decide(&first, "a", t0 + secs(14), LEASE),
            LeaseDecision::Follow {
                holder: "b".into(),
                expires_in: secs(1)
            }
        );
        // The same record read again does not restart the wait...
        let same = observe(Some(&first), record(Some("b"), 0), t0 + secs(10));
        assert_eq!(same.seen_at, t0);
        assert_eq!(
            decide(&same, "a", t0 + secs(15), LEASE),
            LeaseDecision::Acquire
        );
        // ...a renewal does.
        let renewed = observe(Some(&first), record(Some("b"), 12), t0 + secs(12));
        assert_eq!(renewed.seen_at, t0 + secs(12));
        assert_eq!(
            decide(&renewed, "a", t0 + secs(26), LEASE),
            LeaseDecision::Follow {
                holder: "b".into(),
                expires_in: secs(1)
            }
        );
    }

    #[test]
    fn skewed_clocks_do_not_matter_only_observed_changes_do() {
        let t0 = Instant::now();
        // The holder's clock is an hour behind ours: its renewTime looks
        // long expired, but we just saw it change, so it is live.
        let behind = observe(None, record(Some("b"), -3600), t0);
        assert!(matches!(
            decide(&behind, "a", t0 + secs(1), LEASE),
            LeaseDecision::Follow { .. }
        ));
        // The holder's clock is an hour ahead: its renewTime looks fresh,
        // but the record has not changed for a lease duration: it is dead.
        let ahead = observe(None, record(Some("b"), 3600), t0);
        let still = observe(Some(&ahead), record(Some("b"), 3600), t0 + secs(15));
        assert_eq!(
            decide(&still, "a", t0 + secs(15), LEASE),
            LeaseDecision::Acquire
        );
    }

    #[test]
    fn the_holders_lease_duration_counts_and_absurd_ones_never_expire() {
        let t0 = Instant::now();
        let mut long = record(Some("b"), 0);
        long.lease_seconds = Some(60);
        let seen = observe(None, long, t0);
        assert!(matches!(
            decide(&seen, "a", t0 + secs(30), LEASE),
            LeaseDecision::Follow { .. }
        ));
        let mut absurd = record(Some("b"), 0);
        absurd.lease_seconds = Some(i32::MAX);
        let seen = observe(None, absurd, t0);
        assert!(matches!(
            decide(&seen, "a", t0 + secs(100_000), LEASE),
            LeaseDecision::Follow { .. }
        ));
    }

    fn lease_held_by(holder: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("lifeboat-operator".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_released_lease_has_no_holder_and_is_taken_at_once_by_the_next_candidate() {
        let Some(lease) = released(&lease_held_by(Some("me")), "me") else {
            panic!("our own lease is released")
        };
        let spec = lease.spec.clone().unwrap_or_default();
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3), "the term count goes on");
        assert_eq!(lease.metadata.resource_version.as_deref(), Some("42"));
        let seen = observe(None, LeaseRecord::of(&lease), Instant::now());
        assert_eq!(
            decide(&seen, "successor", Instant::now(), secs(15)),
            LeaseDecision::Acquire
        );
    }

    #[test]
    fn another_replicas_lease_or_nobodys_is_never_released() {
        assert_eq!(released(&lease_held_by(Some("other")), "me"), None);
        assert_eq!(released(&lease_held_by(None), "me"), None);
    }

    #[test]
    fn a_leader_stops_at_the_renew_deadline_before_anyone_may_take_over() {
        let timing = ElectionTiming::DEFAULT;
        let leadership = Leadership::candidate();
        let t0 = Instant::now();
        assert!(!leadership.is_leading_at(t0));
        // Renewed in a round that started at t0: leads until t0 + 10 s.
        leadership.renewed(t0, &timing, 4);
        assert!(leadership.is_leading_at(t0 + secs(9)));
        assert!(!leadership.is_leading_at(t0 + timing.renew_deadline));
        // Another replica saw the renewal no earlier than t0, so it may
        // take the lease at t0 + 15 s at the earliest: after we stopped.
        let other = observe(None, record(Some("a"), 0), t0);
        assert!(matches!(
            decide(&other, "b", t0 + timing.renew_deadline, LEASE),
            LeaseDecision::Follow { .. }
        ));
        assert_eq!(
            decide(&other, "b", t0 + timing.lease_duration, LEASE),
            LeaseDecision::Acquire
        );
        leadership.renewed(t0 + secs(2), &timing, 4);
        assert_eq!(leadership.term(), 4);
        assert!(leadership.is_leading_at(t0 + secs(11)));
        leadership.revoke();
        assert!(!leadership.is_leading_at(t0 + secs(3)));
        assert!(Leadership::unconditional().is_leading_at(t0 + secs(1_000_000)));
    }

    #[tokio::test]
    async fn the_write_fence_refuses_writes_but_not_reads_when_not_leading() {
        use tower::{Layer as _, ServiceExt as _};
        let leadership = Leadership::candidate();
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>("sent")
        });
        let fence = WriteFenceLayer {
            leadership: leadership.clone(),
        }
        .layer(inner);
        let request = |method: http::Method| {
            http::Request::builder()
                .method(method)
                .uri("/apis/lifeboat.dev/v1alpha1/x")
                .body(())
                .unwrap()
        };
        let read = fence.clone().oneshot(request(http::Method::GET)).await;
        assert_eq!(read.unwrap(), "sent");
        let write = fence.clone().oneshot(request(http::Method::PATCH)).await;
        assert!(write.unwrap_err().to_string().contains("not the leader"));
        leadership.renewed(Instant::now(), &ElectionTiming::DEFAULT, 1);
        let write = fence.clone().oneshot(request(http::Method::POST)).await;
        assert_eq!(write.unwrap(), "sent");
    }
}
