//! Bounds on concurrent registry operations: one global, one per registry.
//!
//! A streamed blob copy talks to two registries at once (GET on the source,
//! upload to the target). Acquiring those permits one after the other would
//! deadlock once every permit of a registry is held by copies waiting for
//! the other side, so an operation takes all the permits it needs in one
//! call, always in the same order (global first, then registries sorted by
//! name). Tokio's semaphores are fair, so nobody starves either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Limiter {
    global: Arc<Semaphore>,
    per_registry_limit: usize,
    per_registry: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held for the duration of one operation; dropping it releases everything.
#[derive(Debug)]
pub struct Permits {
    _held: Vec<OwnedSemaphorePermit>,
}

impl Limiter {
    pub fn new(global: usize, per_registry: usize) -> Limiter {
        Limiter {
            global: Arc::new(Semaphore::new(global.max(1))),
            per_registry_limit: per_registry.max(1),
            per_registry: Mutex::new(HashMap::new()),
        }
    }

    fn registry_semaphore(&self, registry: &str) -> Arc<Semaphore> {
        // A poisoned lock only means another thread panicked while inserting;
        // the map itself is still consistent.
        let mut map = self.per_registry.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(registry.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_registry_limit)))
            .clone()
    }

    /// One global permit plus one per distinct registry in `registries`.
    pub async fn acquire(&self, registries: &[&str]) -> Permits {
        let mut keys: Vec<&str> = registries.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let mut held = Vec::with_capacity(keys.len() + 1);
        // The semaphores are never closed, so acquire cannot fail.
        if let Ok(permit) = self.global.clone().acquire_owned().await {
            held.push(permit);
        }
        for key in keys {
            if let Ok(permit) = self.registry_semaphore(key).acquire_owned().await {
                held.push(permit);
            }
        }
        Permits { _held: held }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn bounds_per_registry_and_does_not_deadlock_on_shared_registries() {
        let limiter = Arc::new(Limiter::new(8, 2));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (limiter, in_flight, peak) = (limiter.clone(), in_flight.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                // Alternate the order the caller names the registries in.
                let keys = if i % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
                let _permits = limiter.acquire(&keys).await;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        let all = futures::future::join_all(tasks);
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
