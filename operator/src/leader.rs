//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles at a time.
//!
//! The decision is pure ([`decide`]); the loop around it reads the Lease,
//! writes it back with the `resourceVersion` it read (optimistic concurrency:
//! of two replicas racing for an expired lease, the API server lets one win),
//! and reports leadership through a watch channel.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;
use lifeboat_api::time::{from_k8s_time, to_k8s_time};
use tokio::sync::watch;
use tracing::{info, warn};

/// What the lease says, reduced to what the decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub renewed: Option<DateTime<Utc>>,
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds a valid lease: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a valid lease until the given time.
    Follow {
        holder: String,
        until: DateTime<Utc>,
    },
}

/// Decides what a replica called `me` should do with the lease at `now`.
pub fn decide(lease: &LeaseView, me: &str, now: DateTime<Utc>) -> LeaseDecision {
    match (&lease.holder, lease.renewed) {
        (Some(holder), _) if holder == me => LeaseDecision::Renew,
        (Some(holder), Some(renewed)) if !holder.is_empty() => {
            let until = renewed
                + chrono::Duration::from_std(lease.duration).unwrap_or(chrono::Duration::zero());
            if now < until {
                LeaseDecision::Follow {
                    holder: holder.clone(),
                    until,
                }
            } else {
                LeaseDecision::Acquire
            }
        }
        _ => LeaseDecision::Acquire,
    }
}

/// Lease times are `MicroTime`; the conversions live in the API crate for `Time`.
fn micro(time: DateTime<Utc>) -> MicroTime {
    MicroTime(to_k8s_time(time).0)
}

fn view(lease: &Lease) -> LeaseView {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity,
        renewed: spec.renew_time.map(|t| from_k8s_time(&Time(t.0))),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64),
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew_every: Duration,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str) -> Self {
        LeaderElector {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    /// Runs forever: tries to take or renew the lease every few seconds and
    /// publishes whether this replica leads. A leader that cannot renew
    /// before its lease ends steps down (publishes `false`).
    pub async fn run(self, leading: watch::Sender<bool>) {
        let mut last_renewal: Option<DateTime<Utc>> = None;
        loop {
            let now = Utc::now();
            match self.try_lead(now).await {
                Ok(true) => {
                    last_renewal = Some(now);
                    if !*leading.borrow() {
                        info!(identity = %self.identity, lease = %self.name, "became leader");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        warn!(identity = %self.identity, "lost leadership to another replica");
                    }
                    leading.send_replace(false);
                }
                Err(error) => {
                    warn!(%error, "could not read or write the leader lease");
                    let expired = last_renewal.is_none_or(|renewed| {
                        Utc::now() - renewed
                            >= chrono::Duration::from_std(self.duration)
                                .unwrap_or(chrono::Duration::zero())
                    });
                    if expired && *leading.borrow() {
                        warn!("lease expired without renewal: stepping down");
                        leading.send_replace(false);
                    }
                }
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// One round: returns whether we hold the lease afterwards.
    async fn try_lead(&self, now: DateTime<Utc>) -> Result<bool, kube::Error> {
        let existing = self.api.get_opt(&self.name).await?;
        let current = existing.as_ref().map(view).unwrap_or(LeaseView {
            holder: None,
            renewed: None,
            duration: self.duration,
        });
        let transitions = existing
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        let acquire_time = existing
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.acquire_time.clone());
        let (acquire_time, transitions) = match decide(&current, &self.identity, now) {
            LeaseDecision::Follow { .. } => return Ok(false),
            LeaseDecision::Renew => (acquire_time.unwrap_or(micro(now)), transitions),
            LeaseDecision::Acquire => (micro(now), transitions + 1),
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                // Carrying the version we read makes the write fail with 409
                // if another replica wrote in between.
                resource_version: existing
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration.as_secs() as i32),
                acquire_time: Some(acquire_time),
                renew_time: Some(micro(now)),
                lease_transitions: Some(transitions),
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
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>) -> LeaseView {
        LeaseView {
            holder: holder.map(str::to_owned),
            renewed: renewed.map(at),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn an_empty_lease_is_acquired() {
        assert_eq!(
            decide(&lease(None, None), "a", at(0)),
            LeaseDecision::Acquire
        );
        assert_eq!(
            decide(&lease(Some(""), Some(0)), "a", at(0)),
            LeaseDecision::Acquire
        );
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_expired() {
        assert_eq!(
            decide(&lease(Some("a"), Some(0)), "a", at(5)),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(&lease(Some("a"), Some(0)), "a", at(500)),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn another_replicas_valid_lease_is_respected_until_it_expires() {
        assert_eq!(
            decide(&lease(Some("b"), Some(0)), "a", at(14)),
            LeaseDecision::Follow {
                holder: "b".into(),
                until: at(15)
            }
        );
        assert_eq!(
            decide(&lease(Some("b"), Some(0)), "a", at(15)),
            LeaseDecision::Acquire
        );
    }

    #[test]
    fn a_lease_held_without_renew_time_is_taken() {
        assert_eq!(
            decide(&lease(Some("b"), None), "a", at(0)),
            LeaseDecision::Acquire
        );
    }
}
