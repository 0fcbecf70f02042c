//! A bound on live things (xDS streams, MCP HTTP sessions): a [`Slot`] is one place among at
//! most `max`, taken when one starts and given back when its guard drops.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the live places of one kind.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slots(Arc<AtomicUsize>);

/// One live place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slots {
    /// A place, or `None` when `max` are taken.
    pub(crate) fn take(&self, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.0.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_freed() {
        let slots = Slots::default();
        let taken: Vec<_> = (0..3).map(|_| slots.take(3).expect("a free place")).collect();
        assert!(slots.take(3).is_none(), "all places taken");
        drop(taken);
        assert!(slots.take(3).is_some(), "places freed");
    }
}
