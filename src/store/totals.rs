//! ListJobs totals without a COUNT over the whole history on every call.
//!
//! `Store::list_jobs` counts the matching jobs exactly, but at most
//! `exact_up_to + 1` of them (an index range scan of bounded length). When
//! more match, the total is the full count of that filter kept here, one per
//! filter, per process:
//!
//! - missing, or older than `max_age`: the call counts in full and keeps the
//!   result (one such count per filter at a time; others wait for it);
//! - older than `refresh_after`: the kept count is served and one background
//!   recount of that filter starts (at most one in flight per filter, and at
//!   most `REFRESH_CONCURRENCY` per process);
//! - otherwise it is served as it is.
//!
//! A count's age runs from the moment its query started, so a served total is
//! never older than `max_age`. At most `capacity` filters are kept; the one
//! used least recently makes room for a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use std::hash::Hash;

/// Background recounts that may run at once in one process, so a burst of
/// stale filters cannot take the database's connections.
const REFRESH_CONCURRENCY: usize = 2;

/// How ListJobs totals are counted; `Default` is what the service uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalPolicy {
    /// Up to this many matching jobs the total is counted exactly on every call.
    pub exact_up_to: u64,
    /// A kept count older than this is recounted in the background while it
    /// is still served.
    pub refresh_after: Duration,
    /// A kept count older than this is never served: the call recounts.
    pub max_age: Duration,
    /// Filters whose count is kept.
    pub capacity: usize,
}

impl Default for TotalPolicy {
    fn default() -> Self {
        TotalPolicy {
            exact_up_to: 1_000,
            refresh_after: Duration::from_secs(15),
            max_age: Duration::from_secs(30),
            capacity: 1_024,
        }
    }
}

/// A full count and when its query started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counted {
    pub value: u64,
    pub at: Instant,
}

struct Slot {
    count: Option<Counted>,
    /// A background recount of this filter is in flight.
    refreshing: bool,
    /// Held while a caller counts this filter in full.
    gate: Arc<tokio::sync::Mutex<()>>,
    used: Instant,
}

/// What a call does about a total above `exact_up_to`.
pub(super) enum Plan {
    /// Answer with this count.
    Serve(u64),
    /// Answer with this count, and recount in the background.
    ServeAndRefresh(u64),
    /// Count in full, holding this gate; `fresh` first, in case the call that
    /// held it before just did.
    Count(Arc<tokio::sync::Mutex<()>>),
}

pub(super) struct Totals<K> {
    policy: TotalPolicy,
    slots: Mutex<HashMap<K, Slot>>,
    refreshes: Arc<Semaphore>,
}

impl<K: Eq + Hash + Clone> Totals<K> {
    pub fn new(policy: TotalPolicy) -> Totals<K> {
        Totals {
            policy,
            slots: Mutex::new(HashMap::new()),
            refreshes: Arc::new(Semaphore::new(REFRESH_CONCURRENCY)),
        }
    }

    pub fn policy(&self) -> &TotalPolicy {
        &self.policy
    }

    pub fn refresh_permits(&self) -> Arc<Semaphore> {
        self.refreshes.clone()
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<K, Slot>> {
        // The map stays consistent across a panic: every change is one step.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `filter`, made (with room for it) when missing.
    fn slot<'a>(&self, slots: &'a mut HashMap<K, Slot>, filter: &K, now: Instant) -> &'a mut Slot {
        if !slots.contains_key(filter) {
            self.make_room(slots);
        }
        slots.entry(filter.clone()).or_insert_with(|| Slot {
            count: None,
            refreshing: false,
            gate: Arc::default(),
            used: now,
        })
    }

    pub fn plan(&self, filter: &K, now: Instant) -> Plan {
        let mut slots = self.slots();
        let slot = self.slot(&mut slots, filter, now);
        slot.used = now;
        match slot.count {
            Some(c) if now.saturating_duration_since(c.at) < self.policy.max_age => {
                if now.saturating_duration_since(c.at) >= self.policy.refresh_after
                    && !slot.refreshing
                {
                    slot.refreshing = true;
                    Plan::ServeAndRefresh(c.value)
                } else {
                    Plan::Serve(c.value)
                }
            }
            _ => Plan::Count(slot.gate.clone()),
        }
    }

    /// The kept count of `filter` when it may still be served.
    pub fn fresh(&self, filter: &K, now: Instant) -> Option<u64> {
        let slots = self.slots();
        let c = slots.get(filter)?.count?;
        (now.saturating_duration_since(c.at) < self.policy.max_age).then_some(c.value)
    }

    /// Keeps a full count, unless a newer one is kept already.
    pub fn record(&self, filter: &K, counted: Counted) {
        let mut slots = self.slots();
        let slot = self.slot(&mut slots, filter, counted.at);
        if slot.count.is_none_or(|kept| kept.at <= counted.at) {
            slot.count = Some(counted);
        }
    }

    /// Ends a background recount of `filter` (keeping its count, if it got one).
    pub fn refreshed(&self, filter: &K, counted: Option<Counted>) {
        let mut slots = self.slots();
        // A filter evicted meanwhile stays out: the map does not grow here.
        if let Some(slot) = slots.get_mut(filter) {
            slot.refreshing = false;
            if let Some(counted) = counted {
                if slot.count.is_none_or(|kept| kept.at <= counted.at) {
                    slot.count = Some(counted);
                }
            }
        }
    }

    fn make_room(&self, slots: &mut HashMap<K, Slot>) {
        while slots.len() >= self.policy.capacity.max(1) {
            let Some(oldest) = slots
                .iter()
                .min_by_key(|(_, slot)| slot.used)
                .map(|(filter, _)| filter.clone())
            else {
                return;
            };
            slots.remove(&oldest);
        }
    }
}

/// Clears a filter's in-flight mark however its background recount ends
/// (panic and runtime shutdown included), so a later call can start another.
pub(super) struct RefreshMark<K: Eq + Hash + Clone> {
    pub totals: Arc<Totals<K>>,
    pub filter: K,
    pub counted: Option<Counted>,
}

impl<K: Eq + Hash + Clone> Drop for RefreshMark<K> {
    fn drop(&mut self) {
        self.totals.refreshed(&self.filter, self.counted.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ListFilter;

    fn policy() -> TotalPolicy {
        TotalPolicy {
            exact_up_to: 10,
            refresh_after: Duration::from_secs(15),
            max_age: Duration::from_secs(30),
            capacity: 2,
        }
    }

    fn playbook(name: &str) -> ListFilter {
        ListFilter {
            playbook: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_count_is_served_then_refreshed_once_then_expires() {
        let totals = Totals::new(policy());
        let t0 = Instant::now();
        let all = ListFilter::default();
        assert!(matches!(totals.plan(&all, t0), Plan::Count(_)));
        totals.record(&all, Counted { value: 50, at: t0 });
        let at = |s| t0 + Duration::from_secs(s);
        assert!(matches!(totals.plan(&all, at(14)), Plan::Serve(50)));
        assert!(matches!(
            totals.plan(&all, at(16)),
            Plan::ServeAndRefresh(50)
        ));
        // One recount in flight per filter.
        assert!(matches!(totals.plan(&all, at(17)), Plan::Serve(50)));
        assert_eq!(totals.fresh(&all, at(29)), Some(50));
        assert_eq!(totals.fresh(&all, at(30)), None);
        assert!(matches!(totals.plan(&all, at(30)), Plan::Count(_)));
        totals.refreshed(
            &all,
            Some(Counted {
                value: 60,
                at: at(16),
            }),
        );
        assert!(matches!(totals.plan(&all, at(30)), Plan::Serve(60)));
        // An older count never replaces a newer one.
        totals.record(&all, Counted { value: 55, at: t0 });
        assert_eq!(totals.fresh(&all, at(30)), Some(60));
    }

    #[test]
    fn the_filter_used_least_recently_makes_room() {
        let totals = Totals::new(policy());
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        for (name, when) in [("a.yml", 0), ("b.yml", 1)] {
            totals.record(
                &playbook(name),
                Counted {
                    value: 20,
                    at: at(when),
                },
            );
        }
        assert!(matches!(
            totals.plan(&playbook("a.yml"), at(2)),
            Plan::Serve(20)
        ));
        assert!(matches!(
            totals.plan(&playbook("c.yml"), at(3)),
            Plan::Count(_)
        ));
        assert_eq!(totals.fresh(&playbook("a.yml"), at(3)), Some(20));
        assert_eq!(totals.fresh(&playbook("b.yml"), at(3)), None, "evicted");
        assert_eq!(totals.slots().len(), 2);
        // A recount that ends after its filter was evicted does not bring it back.
        totals.refreshed(
            &playbook("b.yml"),
            Some(Counted {
                value: 9,
                at: at(3),
            }),
        );
        assert_eq!(totals.slots().len(), 2);
    }
}
