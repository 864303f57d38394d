//! Which offset of each partition may be stored: the finalizer pattern of vector's Kafka
//! source. A message is *in flight* from the moment it is read until every output derived
//! from it is durable (produced and acknowledged by the broker, or committed to the tables);
//! the offset stored for a partition is the first one still in flight (or one past the last
//! read when none is), so a restart resumes at the oldest unfinished message and nothing after
//! a gap is ever marked consumed.
//!
//! Outputs finish out of order (a small scene overtakes a large one); the position only moves
//! over a contiguous run of finished offsets.

use std::collections::{BTreeSet, HashMap};

/// A topic partition.
pub type TopicPartition = (String, i32);

/// In-flight offsets per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset read.
    next: i64,
    /// The position last handed out for storing (so the same one is not stored twice).
    stored: Option<i64>,
    /// Revoked in a rebalance: completions for it are ignored and nothing is stored.
    revoked: bool,
}

impl OffsetTracker {
    /// A message at `offset` of `partition` was read.
    pub fn begin(&mut self, partition: &TopicPartition, offset: i64) {
        let state = self.partitions.entry(partition.clone()).or_default();
        if state.revoked {
            // Assigned again after a revocation: start afresh.
            *state = Partition::default();
        }
        // The first offset read is where the group's committed position already is: storing
        // it again would change nothing.
        state.stored.get_or_insert(offset);
        state.in_flight.insert(offset);
        state.next = state.next.max(offset + 1);
    }

    /// Every output of the message at `offset` is durable. Returns the offset to store for
    /// the partition when the stored position moves (the next message to read after a
    /// restart), `None` when an older message is still in flight or the partition was revoked.
    pub fn finish(&mut self, partition: &TopicPartition, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(partition)?;
        if state.revoked || !state.in_flight.remove(&offset) {
            return None;
        }
        let position = state.in_flight.first().copied().unwrap_or(state.next);
        if state.stored.is_some_and(|stored| stored >= position) {
            return None;
        }
        state.stored = Some(position);
        Some(position)
    }

    /// Messages in flight over all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.partitions.values().filter(|p| !p.revoked).map(|p| p.in_flight.len()).sum()
    }

    /// The partition was taken away in a rebalance: its in-flight messages will be read again
    /// by its new owner, so their completions must not move the stored position any more.
    pub fn revoke(&mut self, partition: &TopicPartition) {
        if let Some(state) = self.partitions.get_mut(partition) {
            state.revoked = true;
            state.in_flight.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> TopicPartition {
        ("tiles".to_owned(), 3)
    }

    #[test]
    fn the_position_moves_only_over_a_contiguous_run_of_finished_offsets() {
        let mut t = OffsetTracker::default();
        for offset in 10..14 {
            t.begin(&p(), offset);
        }
        assert_eq!(t.finish(&p(), 11), None, "10 is still in flight");
        assert_eq!(t.finish(&p(), 12), None);
        assert_eq!(t.finish(&p(), 10), Some(13), "10, 11, 12 done: resume at 13");
        assert_eq!(t.total_in_flight(), 1);
        assert_eq!(t.finish(&p(), 13), Some(14), "all done: resume after the last read");
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn a_duplicate_or_unknown_completion_changes_nothing() {
        let mut t = OffsetTracker::default();
        t.begin(&p(), 0);
        t.begin(&p(), 1);
        assert_eq!(t.finish(&p(), 0), Some(1));
        assert_eq!(t.finish(&p(), 0), None, "finished twice");
        assert_eq!(t.finish(&p(), 7), None, "never read");
        assert_eq!(t.finish(&("other".to_owned(), 0), 0), None);
        assert_eq!(t.finish(&p(), 1), Some(2));
    }

    #[test]
    fn completions_after_a_revocation_store_nothing_and_a_new_assignment_starts_afresh() {
        let mut t = OffsetTracker::default();
        t.begin(&p(), 5);
        t.begin(&p(), 6);
        t.revoke(&p());
        assert_eq!(t.finish(&p(), 5), None);
        assert_eq!(t.total_in_flight(), 0);
        t.begin(&p(), 6);
        assert_eq!(t.finish(&p(), 6), Some(7));
    }
}
