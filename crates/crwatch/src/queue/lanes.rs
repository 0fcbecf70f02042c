//! The items of a work queue that are ready to be handed out, by priority, and the aging rule
//! that decides which one goes next.
//!
//! One FIFO lane per priority, highest priority first. Every item gets a sequence number when
//! it becomes ready; each lane is kept sorted by it, so the front of a lane is its longest
//! waiting item and the oldest ready item of the whole queue is the oldest lane front.
//!
//! A raised item (re-added with a higher priority while queued) keeps its sequence number and
//! is inserted into its new lane at that position; its slot in the old lane is left behind and
//! recognised as stale when it reaches the front (the caller compares the slot with the item's
//! entry), so a raise costs no search-and-remove in a long lane. Stale slots are bounded by
//! the raises (a raise only goes up, so an item leaves at most one per lane) and all dropped
//! whenever nothing is ready.
//!
//! The default-priority case is one lane used like the plain `VecDeque` it was before
//! priorities: push back, pop front, no allocation once the deque has grown.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// An item waiting in a lane.
pub(super) struct Slot<T> {
    pub(super) item: T,
    /// Position in the order of becoming ready; unique per time an item becomes ready.
    pub(super) seq: u64,
    /// When it became ready, for aging.
    pub(super) ready: Instant,
}

struct Lane<T> {
    priority: i32,
    slots: VecDeque<Slot<T>>,
    /// The front slot is known to be live, so `purge_fronts` need not look it up. Only a
    /// raise of the front item makes a live front stale.
    front_live: bool,
}

impl<T> Lane<T> {
    fn new(priority: i32) -> Self {
        Self {
            priority,
            slots: VecDeque::new(),
            front_live: false,
        }
    }
}

/// Lanes beyond this many are dropped when empty, so a queue fed ever new priorities keeps a
/// bounded set; below it an emptied lane stays (without its memory, see `shrink`) so that a
/// priority used now and then does not allocate a lane each time.
const KEPT_LANES: usize = 8;

/// The ready items of a queue.
pub(super) struct Lanes<T> {
    /// Sorted by priority, highest first. The default-priority lane always exists.
    lanes: Vec<Lane<T>>,
    next_seq: u64,
    /// The last hand-out served the oldest aged item ahead of higher priorities; the next one
    /// goes by priority again (see `choose`).
    aged_turn_taken: bool,
}

/// Which lane the next item comes from.
#[derive(Clone, Copy)]
pub(super) struct Choice {
    lane: usize,
    /// Served by age ahead of a higher priority.
    aged: bool,
}

impl<T> Lanes<T> {
    pub(super) fn new() -> Self {
        Self {
            lanes: vec![Lane::new(0)],
            next_seq: 0,
            aged_turn_taken: false,
        }
    }

    /// A fresh sequence number; pushing with it must follow under the same lock, so that every
    /// lane stays sorted.
    pub(super) fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Appends an item that just became ready with `seq` from [`take_seq`](Self::take_seq).
    pub(super) fn push(&mut self, priority: i32, item: T, seq: u64, ready: Instant) {
        let lane = self.lane_mut(priority);
        if lane.slots.is_empty() {
            lane.front_live = true;
        }
        lane.slots.push_back(Slot { item, seq, ready });
    }

    /// Files a raised item into the lane of its new priority, at the place of its old sequence
    /// number (it keeps its place in time). `old_priority` is where its previous slot is, which
    /// becomes stale.
    pub(super) fn raise(&mut self, old_priority: i32, new_priority: i32, item: T, seq: u64) {
        // The ready time travels with the item; the old slot is still there (only popping
        // removes slots), found by binary search since lanes are sorted.
        let ready = self
            .lanes
            .iter_mut()
            .find(|l| l.priority == old_priority)
            .and_then(|lane| {
                let at = lane.slots.partition_point(|s| s.seq < seq);
                if at == 0 {
                    lane.front_live = false;
                }
                lane.slots.get(at).filter(|s| s.seq == seq).map(|s| s.ready)
            })
            .unwrap_or_else(Instant::now);
        let lane = self.lane_mut(new_priority);
        // Raised items have usually waited longer than most of their new lane, so this is
        // near the front, where `VecDeque::insert` moves the few items before it.
        let at = lane.slots.partition_point(|s| s.seq < seq);
        if at == 0 {
            lane.front_live = true;
        }
        lane.slots.insert(at, Slot { item, seq, ready });
    }

    /// Whether more than one lane holds slots: only then does [`choose`](Self::choose) compare
    /// lanes, which needs live fronts (see [`purge_fronts`](Self::purge_fronts)). A queue that
    /// once had an initial list at low priority keeps that lane, empty, and stays on the cheap
    /// path.
    pub(super) fn several(&self) -> bool {
        self.lanes.iter().filter(|l| !l.slots.is_empty()).nth(1).is_some()
    }

    /// Drops the stale slots at the front of every lane, so that [`choose`](Self::choose)
    /// compares the items that are really next in each lane. Looks up only fronts not known
    /// to be live: in steady state the one behind the last item handed out.
    pub(super) fn purge_fronts(&mut self, mut is_live: impl FnMut(&Slot<T>, i32) -> bool) {
        for lane in &mut self.lanes {
            if lane.front_live {
                continue;
            }
            while lane.slots.front().is_some_and(|s| !is_live(s, lane.priority)) {
                lane.slots.pop_front();
            }
            lane.front_live = !lane.slots.is_empty();
        }
    }

    /// Picks the lane of the next item: the highest priority's, except that while the oldest
    /// ready item has waited `max_wait` or more, every other hand-out goes to it (oldest first).
    /// `None` when no slot is left at all. With [`several`](Self::several) lanes, the fronts
    /// must have been purged.
    pub(super) fn choose(&self, now: Instant, max_wait: Duration) -> Option<Choice> {
        if let [only] = self.lanes.as_slice() {
            return (!only.slots.is_empty()).then_some(Choice { lane: 0, aged: false });
        }
        let mut highest = None;
        let mut oldest: Option<(usize, &Slot<T>)> = None;
        for (i, lane) in self.lanes.iter().enumerate() {
            let Some(front) = lane.slots.front() else {
                continue;
            };
            highest.get_or_insert(i);
            if oldest.is_none_or(|(_, o)| front.seq < o.seq) {
                oldest = Some((i, front));
            }
        }
        let highest = highest?;
        match oldest {
            Some((lane, front))
                if lane != highest
                    && !self.aged_turn_taken
                    && now.saturating_duration_since(front.ready) >= max_wait =>
            {
                Some(Choice { lane, aged: true })
            }
            _ => Some(Choice {
                lane: highest,
                aged: false,
            }),
        }
    }

    /// Takes the front slot of the chosen lane, with the lane's priority. The caller checks
    /// whether it is stale and, if not, calls [`took`](Self::took).
    pub(super) fn pop(&mut self, choice: Choice) -> Option<(Slot<T>, i32)> {
        let lane = self.lanes.get_mut(choice.lane)?;
        let slot = lane.slots.pop_front()?;
        lane.front_live = false;
        let priority = lane.priority;
        shrink(&mut lane.slots);
        if lane.slots.is_empty() && priority != 0 && self.lanes.len() > KEPT_LANES {
            self.lanes.remove(choice.lane);
        }
        Some((slot, priority))
    }

    /// Records that a live item was handed out as chosen.
    pub(super) fn took(&mut self, choice: Choice) {
        self.aged_turn_taken = choice.aged;
    }

    /// Drops every slot: all of them are stale when nothing is ready, or the queue shut down.
    pub(super) fn clear(&mut self) {
        for lane in &mut self.lanes {
            lane.slots.clear();
            lane.front_live = false;
            shrink(&mut lane.slots);
        }
        self.aged_turn_taken = false;
    }

    /// Slots held, stale ones included, and allocated capacity, for leak tests.
    pub(super) fn sizes(&self) -> (usize, usize) {
        self.lanes.iter().fold((0, 0), |(len, cap), l| {
            (len + l.slots.len(), cap + l.slots.capacity())
        })
    }

    fn lane_mut(&mut self, priority: i32) -> &mut Lane<T> {
        let at = match self.lanes.iter().position(|l| l.priority <= priority) {
            Some(at) if self.lanes[at].priority == priority => at,
            _ => {
                if self.lanes.len() >= KEPT_LANES {
                    self.lanes.retain(|l| l.priority == 0 || !l.slots.is_empty());
                }
                let at = self.lanes.partition_point(|l| l.priority > priority);
                self.lanes.insert(at, Lane::new(priority));
                at
            }
        };
        &mut self.lanes[at]
    }
}

/// Gives memory back once a lane has shrunk to a quarter of its capacity.
fn shrink<T>(slots: &mut VecDeque<T>) {
    if slots.capacity() > 64 && slots.len() * 4 < slots.capacity() {
        slots.shrink_to(slots.len() * 2);
    }
}
