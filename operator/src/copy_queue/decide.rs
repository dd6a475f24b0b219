//! Which queued copy starts next, and why the others wait. Pure: the
//! runtime in `super` keeps the queue and asks these functions.
//!
//! A copy holds one of `total` slots, and counts against its namespace
//! (the policy's) and its route: the registry it reads from and the one it
//! writes to. Capping routes, not single registries, is what keeps one
//! slow registry from stalling others: a copy from a healthy source to a
//! trickling target is slow because of the target, and counting it
//! against the shared source too would let the trickle block every policy
//! reading from that source (and the other way round for a slow source
//! and a shared backup registry). The engine's own per-registry request
//! limit keeps each registry from being flooded.
//!
//! A route's limit is learned (`super::adaptive`): it starts at
//! `per_route` and narrows when its registries push back. A namespace's
//! share, `per_namespace`, is guaranteed rather than a ceiling: a
//! namespace past it may still start copies while at least `per_namespace`
//! slots stay free for the others, so one policy's first backup of a
//! thousand images uses the idle slots, and another namespace's new image
//! still finds a slot at once.

use std::collections::{BTreeMap, HashMap};

/// How many copies may run at once: in all, per route, per namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) total: usize,
    /// A route's ceiling, and its limit until it has learned another.
    pub(crate) per_route: usize,
    /// Each namespace's guaranteed share (see the module documentation).
    pub(crate) per_namespace: usize,
    /// Learned limits of routes (at most `per_route`); a route not listed
    /// may run `per_route`.
    pub(crate) route_limits: BTreeMap<String, usize>,
}

impl Caps {
    /// Copies `route` may run now.
    pub(crate) fn route_limit(&self, route: &str) -> usize {
        self.route_limits
            .get(route)
            .copied()
            .unwrap_or(self.per_route)
            .clamp(1, self.per_route.max(1))
    }
}

/// What the decision knows of one copy, queued or running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot<'a> {
    pub(crate) namespace: &'a str,
    /// `source registry -> target registry`.
    pub(crate) route: &'a str,
}

/// The running copies, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) total: usize,
    pub(crate) per_route: HashMap<String, usize>,
    pub(crate) per_namespace: HashMap<String, usize>,
}

impl Load {
    pub(crate) fn of<'a>(running: impl IntoIterator<Item = Slot<'a>>) -> Load {
        let mut load = Load::default();
        for slot in running {
            load.add(slot);
        }
        load
    }

    pub(crate) fn add(&mut self, slot: Slot<'_>) {
        self.total = self.total.saturating_add(1);
        *self.per_route.entry(slot.route.to_owned()).or_default() += 1;
        *self
            .per_namespace
            .entry(slot.namespace.to_owned())
            .or_default() += 1;
    }

    fn route(&self, route: &str) -> usize {
        self.per_route.get(route).copied().unwrap_or(0)
    }

    fn namespace(&self, namespace: &str) -> usize {
        self.per_namespace.get(namespace).copied().unwrap_or(0)
    }
}

/// Why a queued copy cannot start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// Every slot is taken.
    AllSlots { running: usize },
    /// Its route has as many copies running as it may.
    Route { route: String, running: usize },
    /// Its namespace has as many copies running as it may.
    Namespace { namespace: String, running: usize },
}

/// Whether `slot` may start given what runs: `None` if it may.
pub(crate) fn blocked(slot: Slot<'_>, load: &Load, caps: &Caps) -> Option<Blocked> {
    if load.total >= caps.total.max(1) {
        return Some(Blocked::AllSlots {
            running: load.total,
        });
    }
    let route = load.route(slot.route);
    if route >= caps.route_limit(slot.route) {
        return Some(Blocked::Route {
            route: slot.route.to_owned(),
            running: route,
        });
    }
    let namespace = load.namespace(slot.namespace);
    let share = caps.per_namespace.max(1);
    // Past its share, a namespace may use slots nobody else could claim:
    // it leaves `share` of them free.
    let free_after = caps
        .total
        .max(1)
        .saturating_sub(load.total.saturating_add(1));
    if namespace >= share && free_after < share {
        return Some(Blocked::Namespace {
            namespace: slot.namespace.to_owned(),
            running: namespace,
        });
    }
    None
}

/// The queued copy (index into `queued`, oldest first) to start next: of
/// those not [`blocked`], the one whose namespace runs the fewest copies
/// (so a namespace with 500 images takes turns with one that has 1), the
/// oldest among equals. `None` when nothing may start.
pub(crate) fn next_to_start(queued: &[Slot<'_>], load: &Load, caps: &Caps) -> Option<usize> {
    queued
        .iter()
        .enumerate()
        .filter(|(_, slot)| blocked(**slot, load, caps).is_none())
        .min_by_key(|(index, slot)| (load.namespace(slot.namespace), *index))
        .map(|(index, _)| index)
}

/// Every copy that starts now, in order: [`next_to_start`] again and again,
/// each start counted in the load.
pub(crate) fn starts(queued: &[Slot<'_>], load: &Load, caps: &Caps) -> Vec<usize> {
    let mut load = load.clone();
    let mut remaining: Vec<(usize, Slot<'_>)> = queued.iter().copied().enumerate().collect();
    let mut started = Vec::new();
    loop {
        let slots: Vec<Slot<'_>> = remaining.iter().map(|(_, slot)| *slot).collect();
        let Some(position) = next_to_start(&slots, &load, caps) else {
            return started;
        };
        let (index, slot) = remaining.remove(position);
        load.add(slot);
        started.push(index);
    }
}

/// Why the queued copy at `index` waits, in words for a status: what
/// blocks it and how many copies are ahead of it on the same route.
pub(crate) fn waiting_message(
    queued: &[Slot<'_>],
    index: usize,
    load: &Load,
    caps: &Caps,
) -> String {
    let Some(slot) = queued.get(index) else {
        return String::new();
    };
    let ahead_on_route = queued
        .iter()
        .take(index)
        .filter(|other| other.route == slot.route)
        .count();
    match blocked(*slot, load, caps) {
        Some(Blocked::Route { route, running }) => format!(
            "queued behind {} copies on {route} (at most {} at once per route)",
            running.saturating_add(ahead_on_route),
            caps.route_limit(slot.route)
        ),
        Some(Blocked::Namespace { namespace, running }) => format!(
            "queued behind {running} copies of namespace {namespace} ({} at once per namespace while others wait)",
            caps.per_namespace
        ),
        Some(Blocked::AllSlots { running }) => format!(
            "queued: all {running} copy slots are busy ({ahead_on_route} more ahead on {})",
            slot.route
        ),
        None => "starting".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        total: 8,
        per_route: 4,
        per_namespace: 4,
        route_limits: BTreeMap::new(),
    };

    fn slot<'a>(namespace: &'a str, route: &'a str) -> Slot<'a> {
        Slot { namespace, route }
    }

    const SLOW: &str = "src:5000 -> trickle:9000";
    const HEALTHY: &str = "src:5000 -> backup:5002";

    #[test]
    fn a_slow_route_holds_at_most_its_cap_and_others_start_past_it() {
        // Four copies to the trickling registry run (and never end).
        let load = Load::of(vec![slot("a", SLOW); 4]);
        // More of them queued first, then another tenant's copy.
        let queued = [slot("a2", SLOW), slot("a2", SLOW), slot("b", HEALTHY)];
        assert_eq!(next_to_start(&queued, &load, &CAPS), Some(2));
        assert_eq!(starts(&queued, &load, &CAPS), vec![2]);
        assert_eq!(
            blocked(queued[0], &load, &CAPS),
            Some(Blocked::Route {
                route: SLOW.into(),
                running: 4
            })
        );
    }

    #[test]
    fn a_namespace_with_many_images_takes_turns_with_a_small_one() {
        let load = Load::default();
        let mut queued = vec![slot("big", HEALTHY); 500];
        queued.push(slot("small", "src:5000 -> other:5003"));
        let started = starts(&queued, &load, &CAPS);
        // The big namespace gets its cap, the small one starts at once.
        assert_eq!(started.len(), 5, "{started:?}");
        assert!(started.contains(&500), "{started:?}");
        assert_eq!(started.iter().filter(|i| **i < 500).count(), 4);
    }

    #[test]
    fn the_least_busy_namespace_goes_first_then_the_oldest() {
        let load = Load::of([slot("a", HEALTHY)]);
        let queued = [
            slot("a", "r1 -> t"),
            slot("b", "r2 -> t"),
            slot("c", "r3 -> t"),
        ];
        assert_eq!(next_to_start(&queued, &load, &CAPS), Some(1));
        assert_eq!(starts(&queued, &load, &CAPS), vec![1, 2, 0]);
    }

    #[test]
    fn nothing_starts_when_every_slot_is_taken() {
        let caps = Caps { total: 2, ..CAPS };
        let load = Load::of([slot("a", "x -> y"), slot("b", "z -> y")]);
        let queued = [slot("c", HEALTHY)];
        assert_eq!(next_to_start(&queued, &load, &caps), None);
        assert_eq!(
            blocked(queued[0], &load, &caps),
            Some(Blocked::AllSlots { running: 2 })
        );
        // A cap of 0 is read as 1: a queue that never starts anything is a
        // misconfiguration, not a policy.
        let zero = Caps {
            total: 0,
            per_route: 0,
            per_namespace: 0,
            route_limits: BTreeMap::new(),
        };
        assert_eq!(next_to_start(&queued, &Load::default(), &zero), Some(0));
    }

    #[test]
    fn the_waiting_message_names_what_blocks_and_how_many_are_ahead() {
        let load = Load::of(vec![slot("a", SLOW); 4]);
        let queued = [slot("a", SLOW), slot("b", SLOW), slot("b", HEALTHY)];
        assert_eq!(
            waiting_message(&queued, 1, &load, &CAPS),
            format!("queued behind 5 copies on {SLOW} (at most 4 at once per route)")
        );
        let busy = Load::of(vec![slot("n", HEALTHY); 4]);
        assert_eq!(
            waiting_message(&[slot("n", "q -> r")], 0, &busy, &CAPS),
            "queued behind 4 copies of namespace n (4 at once per namespace while others wait)"
        );
        assert_eq!(waiting_message(&queued, 2, &load, &CAPS), "starting");
        assert_eq!(waiting_message(&queued, 9, &load, &CAPS), "");
    }

    #[test]
    fn a_namespace_alone_uses_the_idle_slots_but_leaves_a_share_free() {
        let caps = Caps {
            total: 16,
            per_route: 32,
            per_namespace: 4,
            route_limits: BTreeMap::new(),
        };
        let queued = vec![slot("big", HEALTHY); 1000];
        let started = starts(&queued, &Load::default(), &caps);
        assert_eq!(started.len(), 12, "16 slots, 4 kept free for others");
        // Another namespace's copy then starts at once, up to its share.
        let load = Load::of(vec![slot("big", HEALTHY); 12]);
        let mut queued = vec![slot("big", HEALTHY); 100];
        queued.extend(vec![slot("small", HEALTHY); 5]);
        let started = starts(&queued, &load, &caps);
        assert_eq!(started, vec![100, 101, 102, 103], "{started:?}");
    }

    #[test]
    fn a_learned_route_limit_holds_below_the_ceiling() {
        let mut caps = Caps {
            total: 64,
            per_route: 16,
            per_namespace: 4,
            route_limits: BTreeMap::new(),
        };
        caps.route_limits.insert(SLOW.to_owned(), 2);
        let queued = vec![slot("a", SLOW); 10];
        assert_eq!(starts(&queued, &Load::default(), &caps).len(), 2);
        assert_eq!(
            waiting_message(&queued, 0, &Load::of(vec![slot("a", SLOW); 2]), &caps),
            format!("queued behind 2 copies on {SLOW} (at most 2 at once per route)")
        );
        let queued = vec![slot("a", HEALTHY); 40];
        assert_eq!(starts(&queued, &Load::default(), &caps).len(), 16);
        // A learned limit above the ceiling (the ceiling lowered since) is capped.
        caps.route_limits.insert(HEALTHY.to_owned(), 99);
        assert_eq!(caps.route_limit(HEALTHY), 16);
    }
}
