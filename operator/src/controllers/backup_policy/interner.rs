//! One shared copy of each string the caches hold many times: image
//! references, digests, namespaces, owner names, node names, label keys and
//! values. 20,000 pods typically run a few thousand images on a few hundred
//! nodes; interned, each pod holds pointers instead of its own copies.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A set of shared strings. Strings nothing else holds any more are
/// dropped when the set has doubled since the last sweep, so the cost of
/// sweeping is amortised over the insertions and the set stays within
/// twice the strings in use.
#[derive(Debug, Default)]
pub struct Interner {
    inner: Mutex<Strings>,
}

#[derive(Debug, Default)]
struct Strings {
    set: HashSet<Arc<str>>,
    /// The size at which the next insertion sweeps first.
    sweep_at: usize,
}

/// The smallest set that is ever swept.
const MIN_SWEEP: usize = 1024;

impl Interner {
    /// The shared copy of `value`.
    pub fn intern(&self, value: &str) -> Arc<str> {
        let mut strings = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = strings.set.get(value) {
            return Arc::clone(found);
        }
        if strings.set.len() >= strings.sweep_at.max(MIN_SWEEP) {
            strings.set.retain(|s| Arc::strong_count(s) > 1);
            strings.sweep_at = strings.set.len().saturating_mul(2);
        }
        let shared: Arc<str> = Arc::from(value);
        strings.set.insert(Arc::clone(&shared));
        shared
    }

    /// How many strings the set holds (some may be unused until the next sweep).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation() {
        let interner = Interner::default();
        let a = interner.intern("registry.local/web:1.0");
        let b = interner.intern(&String::from("registry.local/web:1.0"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = interner.intern("registry.local/web:1.1");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(&*c, "registry.local/web:1.1");
        assert_eq!(interner.len(), 2);
    }

    #[test]
    fn strings_no_one_holds_are_swept_as_the_set_grows() {
        let interner = Interner::default();
        let kept: Vec<Arc<str>> = (0..10)
            .map(|i| interner.intern(&format!("kept-{i}")))
            .collect();
        for i in 0..10 * MIN_SWEEP {
            drop(interner.intern(&format!("gone-{i}")));
        }
        // Never more than twice what is in use (or the minimum) plus one.
        assert!(interner.len() <= 2 * MIN_SWEEP + 1, "{}", interner.len());
        for (i, s) in kept.iter().enumerate() {
            assert!(Arc::ptr_eq(s, &interner.intern(&format!("kept-{i}"))));
        }
    }
}
