//! How many copies a route (source registry → target registry) may run at
//! once, learned from how its copies end: additive increase,
//! multiplicative decrease (AIMD), as TCP learns a window. Pure: the queue
//! in `super` feeds each ended copy in and reads the limit back.
//!
//! A route starts wide, at its ceiling (the operator's
//! `LIFEBOAT_COPIES_PER_ROUTE`): healthy registries answer small copies in
//! milliseconds, and a narrow start would hold a first backup of hundreds
//! of images to a fraction of what they can take. It backs off
//!
//! - by half when copies end pushed back: the registry kept answering 429
//!   or 5xx, went away, was too slow or ran past the copy deadline (the
//!   engine already retried each request with backoff, so this is a
//!   registry that stays unhappy);
//! - by a fifth when copies get slower: the recent average time of a copy
//!   (fast moving average) above twice the long-run average (slow moving
//!   average): the queue is filling the registry faster than it answers.
//!
//! At most one decrease per window (as many completions as the limit was
//! at the last decrease):
//! the copies that were running together when the registry pushed back all
//! end with the same news, and halving for each would collapse the limit
//! to 1 on one burst. Every copy that ends well adds `1 / window`, so a
//! window of good copies widens the route by about one.

use std::time::Duration;

/// How a copy ended, as far as its route's load goes (the queue's
/// classifier says it from the copy's result; the time is the queue's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Copied,
    PushedBack,
    Neither,
}

/// How an ended copy counts for its route's limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Ended {
    /// Copied (or found up to date), in this time.
    Done(Duration),
    /// The registry pushed back: 429s, 5xx, unreachable, too slow, deadline.
    PushedBack,
    /// Failed for a reason that says nothing about load (not found,
    /// denied, an invalid manifest): counted, no change.
    Neither,
}

impl Ended {
    pub(crate) fn of(verdict: Verdict, ran: Duration) -> Ended {
        match verdict {
            Verdict::Copied => Ended::Done(ran),
            Verdict::PushedBack => Ended::PushedBack,
            Verdict::Neither => Ended::Neither,
        }
    }
}

/// Fast and slow moving averages of copy times, weights per copy.
const FAST_WEIGHT: f64 = 0.3;
const SLOW_WEIGHT: f64 = 0.05;
/// Copies seen before the averages are trusted to mean "slower".
const WARM_UP: u32 = 16;
/// The recent average above this times the long-run one is congestion.
const SLOWER_FACTOR: f64 = 2.0;
const PUSHBACK_DECREASE: f64 = 0.5;
const SLOWER_DECREASE: f64 = 0.8;

/// One route's learned limit.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RouteLimit {
    window: f64,
    ceiling: usize,
    /// Completions since the last decrease, and how many copies could be
    /// running then: those end with the same news and count once.
    since_decrease: usize,
    in_flight_at_decrease: usize,
    fast: f64,
    slow: f64,
    samples: u32,
}

impl RouteLimit {
    /// A route that may run up to `ceiling` copies, starting there.
    pub(crate) fn new(ceiling: usize) -> RouteLimit {
        let ceiling = ceiling.max(1);
        RouteLimit {
            window: ceiling as f64,
            ceiling,
            since_decrease: 0,
            in_flight_at_decrease: 0,
            fast: 0.0,
            slow: 0.0,
            samples: 0,
        }
    }

    /// Copies the route may run now: at least 1, at most the ceiling.
    pub(crate) fn limit(&self) -> usize {
        // The window stays within [1, ceiling], so the cast is exact.
        (self.window.floor() as usize).clamp(1, self.ceiling)
    }

    /// Learns from one ended copy.
    pub(crate) fn record(&mut self, ended: Ended) {
        self.since_decrease = self.since_decrease.saturating_add(1);
        match ended {
            Ended::Neither => {}
            Ended::PushedBack => self.decrease(PUSHBACK_DECREASE),
            Ended::Done(ran) => {
                let seconds = ran.as_secs_f64();
                if self.samples == 0 {
                    (self.fast, self.slow) = (seconds, seconds);
                } else {
                    self.fast += FAST_WEIGHT * (seconds - self.fast);
                    self.slow += SLOW_WEIGHT * (seconds - self.slow);
                }
                self.samples = self.samples.saturating_add(1);
                if self.samples >= WARM_UP && self.fast > SLOWER_FACTOR * self.slow {
                    self.decrease(SLOWER_DECREASE);
                } else {
                    self.window = (self.window + 1.0 / self.window).min(self.ceiling as f64);
                }
            }
        }
    }

    fn decrease(&mut self, factor: f64) {
        if self.since_decrease <= self.in_flight_at_decrease {
            return;
        }
        self.in_flight_at_decrease = self.limit();
        self.window = (self.window * factor).max(1.0);
        self.since_decrease = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Ended = Ended::Done(Duration::from_millis(50));

    #[test]
    fn a_route_starts_at_its_ceiling_and_stays_there_while_copies_go_well() {
        let mut route = RouteLimit::new(16);
        assert_eq!(route.limit(), 16);
        for _ in 0..1000 {
            route.record(QUICK);
        }
        assert_eq!(route.limit(), 16);
        assert_eq!(RouteLimit::new(0).limit(), 1, "a ceiling of 0 is read as 1");
    }

    #[test]
    fn pushback_halves_once_per_window_then_good_copies_widen_by_one_per_window() {
        let mut route = RouteLimit::new(16);
        // The 16 copies that ran together all end pushed back: one halving.
        for _ in 0..16 {
            route.record(Ended::PushedBack);
        }
        assert_eq!(route.limit(), 8);
        // Pushback that goes on halves again, window after window, down to 1.
        for _ in 0..100 {
            route.record(Ended::PushedBack);
        }
        assert_eq!(route.limit(), 1);
        // Each good copy adds 1 / window: about one per window (1 -> 2 after
        // one copy, 2 -> 2.5 -> 2.9 -> 3.24 after three more).
        route.record(QUICK);
        assert_eq!(route.limit(), 2);
        route.record(QUICK);
        route.record(QUICK);
        assert_eq!(route.limit(), 2);
        route.record(QUICK);
        assert_eq!(route.limit(), 3);
        for _ in 0..500 {
            route.record(QUICK);
        }
        assert_eq!(route.limit(), 16, "back at the ceiling, never above");
    }

    #[test]
    fn copies_getting_slower_narrow_the_route_and_failures_of_other_kinds_do_not() {
        let mut route = RouteLimit::new(16);
        for _ in 0..40 {
            route.record(QUICK);
        }
        for _ in 0..50 {
            route.record(Ended::Neither);
        }
        assert_eq!(
            route.limit(),
            16,
            "not found or denied says nothing of load"
        );
        // Copies now take 10 times as long: the recent average passes twice
        // the long-run one within a few copies, and the route narrows.
        for _ in 0..5 {
            route.record(Ended::Done(Duration::from_millis(500)));
        }
        assert!(route.limit() < 16, "{route:?}");
        // If that is the new normal, the long-run average catches up and
        // the route widens again.
        for _ in 0..400 {
            route.record(Ended::Done(Duration::from_millis(500)));
        }
        assert_eq!(route.limit(), 16, "{route:?}");
    }

    #[test]
    fn a_few_slow_copies_before_the_averages_are_trusted_change_nothing() {
        let mut route = RouteLimit::new(8);
        route.record(QUICK);
        for _ in 0..(WARM_UP - 2) {
            route.record(Ended::Done(Duration::from_secs(5)));
        }
        assert_eq!(route.limit(), 8);
    }
}
