//! A first-in first-out queue of a state machine's outputs.

use std::collections::VecDeque;

/// Capacity an [`OutputQueue`] keeps once drained.
const RETAINED: usize = 64;

/// A first-in first-out queue of a state machine's outputs (events,
/// datagrams to send) that gives a burst's memory back once drained.
///
/// A join of thousands of members or a restored table queues thousands of
/// outputs at once. A plain `VecDeque` keeps that capacity for good, which
/// in a simulation of thousands of nodes is more memory than their member
/// tables.
///
/// ```
/// use gossip_core::OutputQueue;
/// let mut queue = OutputQueue::default();
/// queue.push(1);
/// queue.push(2);
/// assert_eq!(queue.len(), 2);
/// assert_eq!(queue.pop(), Some(1));
/// assert_eq!(queue.pop(), Some(2));
/// assert_eq!(queue.pop(), None);
/// ```
#[derive(Debug, Clone)]
pub struct OutputQueue<T> {
    items: VecDeque<T>,
}

impl<T> Default for OutputQueue<T> {
    fn default() -> Self {
        OutputQueue {
            items: VecDeque::new(),
        }
    }
}

impl<T> OutputQueue<T> {
    /// Queues `item` last.
    pub fn push(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// The first item; once the queue is empty, memory beyond a small
    /// reserve is released.
    pub fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front();
        if item.is_none() && self.items.capacity() > RETAINED {
            self.items.shrink_to(RETAINED);
        }
        item
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// `true` if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The queued items, first first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Items the queue has room for without allocating.
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_burst_gives_its_memory_back_and_order_is_kept() {
        let mut queue = OutputQueue::default();
        for i in 0..10_000 {
            queue.push(i);
        }
        assert!(queue.capacity() >= 10_000);
        for i in 0..10_000 {
            assert_eq!(queue.pop(), Some(i));
        }
        assert_eq!(queue.pop(), None);
        assert!(queue.capacity() <= RETAINED, "{}", queue.capacity());
        assert!(queue.is_empty());
    }
}
