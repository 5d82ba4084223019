//! The queue between the connections' reader tasks and the application.
//!
//! A reader hands over every datagram its connection has ready as one batch:
//! one channel operation and one wake-up for many small datagrams, which is
//! most of what a queue hop costs beside reading quinn directly. A semaphore
//! keeps the bound in messages, not batches.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use crate::transport::Received;

/// Most messages in one batch.
pub(crate) const MAX_BATCH: usize = 64;

/// The readers' end of the queue.
#[derive(Debug, Clone)]
pub(crate) struct InboxSender {
    batches: mpsc::UnboundedSender<Vec<Received>>,
    room: Arc<Semaphore>,
    capacity: usize,
}

/// The application has dropped its [`Inbox`].
#[derive(Debug)]
pub(crate) struct InboxClosed;

impl InboxSender {
    /// Most messages a reader may put in one batch.
    pub(crate) fn batch_limit(&self) -> usize {
        MAX_BATCH.min(self.capacity)
    }

    /// Queues `batch`, waiting for room: one permit per message, which the
    /// inbox gives back as it hands the messages out. A batch longer than
    /// the whole queue (readers keep to [`batch_limit`](InboxSender::batch_limit))
    /// goes in parts.
    ///
    /// # Cancel safety
    ///
    /// Cancelling drops what is not queued yet; a batch within the limit is
    /// queued whole or not at all.
    pub(crate) async fn send(&self, mut batch: Vec<Received>) -> Result<(), InboxClosed> {
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(self.capacity));
            let count = u32::try_from(batch.len()).map_err(|_| InboxClosed)?;
            let permits = self
                .room
                .acquire_many(count)
                .await
                .map_err(|_| InboxClosed)?;
            self.batches.send(batch).map_err(|_| InboxClosed)?;
            permits.forget();
            batch = rest;
        }
        Ok(())
    }
}

/// Messages received from every peer, tagged with their authenticated sender;
/// each peer's datagrams in the order they were read. Holds at most
/// [`TransportConfig::receive_queue`](crate::TransportConfig::receive_queue)
/// messages; past that the connections' readers wait (datagrams then queue
/// in quinn, which drops the oldest when its buffer is full; streams are
/// held back by flow control).
#[derive(Debug)]
pub struct Inbox {
    batches: mpsc::UnboundedReceiver<Vec<Received>>,
    room: Arc<Semaphore>,
    ready: std::vec::IntoIter<Received>,
    /// Messages in the batch `ready` came from: their room is given back
    /// at once when the last is handed out (one lock a batch, not one a
    /// message).
    batch_len: usize,
}

impl Inbox {
    /// A queue of at most `capacity` messages (at least one).
    pub(crate) fn new(capacity: usize) -> (InboxSender, Inbox) {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(capacity));
        (
            InboxSender {
                batches: tx,
                room: room.clone(),
                capacity,
            },
            Inbox {
                batches: rx,
                room,
                ready: Vec::new().into_iter(),
                batch_len: 0,
            },
        )
    }

    /// The next message, waiting for one; `None` once the transport has
    /// closed and everything queued was read.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a cancelled call loses no message (usable in `select!`).
    pub async fn recv(&mut self) -> Option<Received> {
        if let Some(received) = self.take_ready() {
            return Some(received);
        }
        let batch = self.batches.recv().await?;
        self.start(batch);
        self.take_ready()
    }

    /// The next message if one is queued now.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`](mpsc::error::TryRecvError::Empty) if none is;
    /// [`TryRecvError::Disconnected`](mpsc::error::TryRecvError::Disconnected)
    /// once the transport has closed and everything queued was read.
    pub fn try_recv(&mut self) -> Result<Received, mpsc::error::TryRecvError> {
        if let Some(received) = self.take_ready() {
            return Ok(received);
        }
        let batch = self.batches.try_recv()?;
        self.start(batch);
        self.take_ready().ok_or(mpsc::error::TryRecvError::Empty)
    }

    fn start(&mut self, batch: Vec<Received>) {
        self.batch_len = batch.len();
        self.ready = batch.into_iter();
    }

    fn take_ready(&mut self) -> Option<Received> {
        let received = self.ready.next()?;
        if self.ready.len() == 0 {
            self.room.add_permits(self.batch_len);
        }
        Some(received)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Readers waiting for room learn that no one will read.
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Channel;
    use bytes::Bytes;
    use gossip_core::NodeId;
    use std::time::Duration;

    fn message(n: u8) -> Received {
        Received {
            from: NodeId::from_bytes([n; 32]),
            addr: "127.0.0.1:1".parse().expect("addr"),
            channel: Channel::Datagram,
            bytes: Bytes::from(vec![n]),
        }
    }

    #[tokio::test]
    async fn batches_come_out_one_message_at_a_time_in_order() {
        let (tx, mut inbox) = Inbox::new(16);
        tx.send((0..5).map(message).collect()).await.expect("open");
        tx.send(vec![message(5)]).await.expect("open");
        for n in 0..6 {
            assert_eq!(inbox.recv().await.expect("queued").bytes[..], [n]);
        }
        assert!(matches!(
            inbox.try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        ));
        drop(tx);
        assert!(inbox.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_full_inbox_holds_readers_back_until_messages_are_read() {
        let (tx, mut inbox) = Inbox::new(4);
        assert_eq!(tx.batch_limit(), 4);
        tx.send((0..4).map(message).collect()).await.expect("open");
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(vec![message(4), message(5)]).await.is_ok() }
        });
        // A batch's room comes back when its last message is handed out.
        for n in 0..4 {
            tokio::task::yield_now().await;
            assert!(!blocked.is_finished(), "a full inbox takes no more");
            assert_eq!(inbox.recv().await.expect("queued").bytes[..], [n]);
        }
        let unblocked = tokio::time::timeout(Duration::from_secs(10), blocked).await;
        assert!(unblocked.expect("room was made").expect("reader"), "queued");
        for n in 4..6 {
            assert_eq!(inbox.try_recv().expect("queued").bytes[..], [n]);
        }
    }

    #[tokio::test]
    async fn a_batch_longer_than_the_queue_goes_in_parts_and_keeps_the_bound() {
        let (tx, mut inbox) = Inbox::new(2);
        let sender =
            tokio::spawn(async move { tx.send((0..5).map(message).collect()).await.is_ok() });
        for n in 0..5 {
            let received = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await;
            assert_eq!(received.expect("in time").expect("queued").bytes[..], [n]);
            // Never more room than the capacity, however the batch came.
            assert!(inbox.room.available_permits() <= 2);
        }
        assert!(sender.await.expect("sender"));
    }

    #[tokio::test]
    async fn a_dropped_inbox_releases_waiting_readers() {
        let (tx, inbox) = Inbox::new(1);
        tx.send(vec![message(0)]).await.expect("open");
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(vec![message(1)]).await.is_err() }
        });
        tokio::task::yield_now().await;
        drop(inbox);
        assert!(
            blocked.await.expect("reader"),
            "the reader hears of the close"
        );
    }
}
