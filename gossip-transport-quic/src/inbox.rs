//! Where the application reads what peers sent.
//!
//! Datagrams are read from the connections by the [`Inbox`] itself, in the
//! application's task: a reader task between quinn and the application
//! would cost a second wake-up and a second busy task per datagram burst,
//! which on a small machine was a third of the small-datagram throughput.
//! Stream messages need a task per stream to reassemble their frames, so
//! those come through a bounded queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gossip_core::NodeId;
use quinn::Connection;
use tokio::sync::mpsc;

use crate::counters::Counters;
use crate::received::{Channel, Received, clock};
use crate::unreachable::UnreachableReports;

/// Most datagrams taken from one connection before the others get a turn.
pub(crate) const MAX_BATCH: usize = 64;

/// The transport's end: connections to read datagrams from, and the stream
/// readers' queue.
#[derive(Debug, Clone)]
pub(crate) struct InboxSender {
    connections: mpsc::UnboundedSender<(NodeId, Connection)>,
    messages: mpsc::Sender<Received>,
}

/// The application has dropped its [`Inbox`].
#[derive(Debug)]
pub(crate) struct InboxClosed;

impl InboxSender {
    /// Starts reading `conn`'s datagrams, tagged as from `peer`; the inbox
    /// stops by itself when the connection closes.
    pub(crate) fn watch(&self, peer: NodeId, conn: Connection) {
        // A dropped inbox reads nothing: nothing is lost by ignoring that.
        let _ = self.connections.send((peer, conn));
    }

    /// Queues a stream message, waiting for room.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call has queued nothing.
    pub(crate) async fn send_message(&self, received: Received) -> Result<(), InboxClosed> {
        self.messages.send(received).await.map_err(|_| InboxClosed)
    }
}

/// One connection's wait for its next datagram.
type DatagramRead = Pin<Box<dyn Future<Output = (NodeId, Connection, Option<Bytes>)> + Send>>;

fn next_datagram(peer: NodeId, conn: Connection) -> DatagramRead {
    Box::pin(async move {
        let read = conn.read_datagram().await.ok();
        (peer, conn, read)
    })
}

/// A datagram `conn` has ready now, without waiting for one.
fn ready_datagram(conn: &Connection) -> Option<Bytes> {
    let mut read = std::pin::pin!(conn.read_datagram());
    match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(bytes)) => Some(bytes),
        // A closed connection is found out by the next read that waits.
        Poll::Ready(Err(_)) | Poll::Pending => None,
    }
}

/// Messages received from every peer, tagged with their authenticated
/// sender; each peer's datagrams in the order they arrived.
///
/// Datagrams wait in their connection's receive buffer
/// ([`TransportConfig::datagram_buffer_bytes`](crate::TransportConfig::datagram_buffer_bytes),
/// past which quinn drops the oldest) until read here. Stream messages
/// queue here, at most
/// [`TransportConfig::receive_queue`](crate::TransportConfig::receive_queue)
/// of them; past that the streams are held back by flow control.
pub struct Inbox {
    connections: mpsc::UnboundedReceiver<(NodeId, Connection)>,
    messages: mpsc::Receiver<Received>,
    /// Sealed datagrams, opened by the socket.
    sealed: mpsc::Receiver<Received>,
    /// Every connection not being drained, waiting for its next datagram.
    datagrams: FuturesUnordered<DatagramRead>,
    /// The connection whose ready datagrams are being handed out.
    draining: Option<Draining>,
    /// Whether the stream messages are polled before the datagrams next
    /// time; it flips with each message handed out, so that neither kind
    /// starves the other.
    messages_first: bool,
    /// Whether the sealed datagrams are polled before the connections'
    /// next time; flips likewise.
    sealed_first: bool,
    /// Datagrams handed out, published to `counters`.
    datagrams_received: u64,
    counters: Arc<Counters>,
    unreachable: Option<UnreachableReports>,
}

/// A connection that had a datagram ready, read straight from quinn until
/// it has no more or has had its batch.
struct Draining {
    from: NodeId,
    addr: std::net::SocketAddr,
    conn: Connection,
    /// Datagrams it may still hand out before the others get a turn.
    left: usize,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("waiting_connections", &self.datagrams.len())
            .field("draining", &self.draining.as_ref().map(|d| d.from))
            .finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox whose stream-message queue, and whose queue of sealed
    /// datagrams, each hold at most `capacity` messages (at least one);
    /// with the sender of the sealed datagrams' queue, for the socket.
    pub(crate) fn new(
        capacity: usize,
        counters: Arc<Counters>,
    ) -> (InboxSender, Inbox, mpsc::Sender<Received>) {
        let capacity = capacity.clamp(1, usize::MAX >> 3);
        let (connections_tx, connections) = mpsc::unbounded_channel();
        let (messages_tx, messages) = mpsc::channel(capacity);
        let (sealed_tx, sealed) = mpsc::channel(capacity);
        (
            InboxSender {
                connections: connections_tx,
                messages: messages_tx,
            },
            Inbox {
                connections,
                messages,
                sealed,
                datagrams: FuturesUnordered::new(),
                draining: None,
                messages_first: false,
                sealed_first: false,
                datagrams_received: 0,
                counters,
                unreachable: None,
            },
            sealed_tx,
        )
    }

    pub(crate) fn set_unreachable(&mut self, reports: UnreachableReports) {
        self.unreachable = Some(reports);
    }

    /// The reports of addresses the network said do not answer (ICMP port,
    /// host or network unreachable, each quoting a datagram sent there), to
    /// be read beside the messages. `None` once taken, or when the transport
    /// did not bind its socket itself
    /// ([`Transport::bind_with_socket`](crate::Transport::bind_with_socket))
    /// and so cannot read its errors.
    pub fn take_unreachable(&mut self) -> Option<UnreachableReports> {
        self.unreachable.take()
    }

    /// The next message, waiting for one; `None` once the transport has
    /// closed and everything received was read.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a cancelled call loses no message (usable in `select!`).
    pub async fn recv(&mut self) -> Option<Received> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message if one has arrived.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`](mpsc::error::TryRecvError::Empty) if none has;
    /// [`TryRecvError::Disconnected`](mpsc::error::TryRecvError::Disconnected)
    /// once the transport has closed and everything received was read.
    pub fn try_recv(&mut self) -> Result<Received, mpsc::error::TryRecvError> {
        match self.poll_recv(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Some(received)) => Ok(received),
            Poll::Ready(None) => Err(mpsc::error::TryRecvError::Disconnected),
            Poll::Pending => Err(mpsc::error::TryRecvError::Empty),
        }
    }

    /// Polls for the next message, registering `cx` to be woken when one
    /// arrives.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        if let Some(received) = self.next_drained() {
            return Poll::Ready(Some(received));
        }
        // New connections first: their datagrams are read once watched.
        let mut transport_open = true;
        loop {
            match self.connections.poll_recv(cx) {
                Poll::Ready(Some((peer, conn))) => {
                    self.datagrams.push(next_datagram(peer, conn));
                }
                Poll::Ready(None) => {
                    transport_open = false;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let mut messages_closed = false;
        if self.messages_first {
            match self.messages.poll_recv(cx) {
                Poll::Ready(Some(received)) => {
                    self.messages_first = false;
                    return Poll::Ready(Some(received));
                }
                Poll::Ready(None) => messages_closed = true,
                Poll::Pending => {}
            }
        }
        // Sealed datagrams and the connections' datagrams take turns too.
        let sealed_first = self.sealed_first;
        if sealed_first && let Some(received) = self.next_sealed(cx) {
            return Poll::Ready(Some(received));
        }
        let datagrams_idle = loop {
            match self.datagrams.poll_next_unpin(cx) {
                Poll::Ready(Some((from, conn, Some(first)))) => {
                    self.count_datagram();
                    let received = Received {
                        from,
                        addr: conn.remote_address(),
                        channel: Channel::Datagram,
                        bytes: first,
                        arrived: clock(),
                    };
                    self.draining = Some(Draining {
                        from,
                        addr: received.addr,
                        conn,
                        left: MAX_BATCH - 1,
                    });
                    self.messages_first = true;
                    self.sealed_first = true;
                    return Poll::Ready(Some(received));
                }
                // A closed connection is dropped; the others are polled.
                Poll::Ready(Some((_, _, None))) => {}
                Poll::Ready(None) => break true,
                Poll::Pending => break false,
            }
        };
        if !sealed_first && let Some(received) = self.next_sealed(cx) {
            return Poll::Ready(Some(received));
        }
        if !self.messages_first {
            match self.messages.poll_recv(cx) {
                Poll::Ready(Some(received)) => return Poll::Ready(Some(received)),
                Poll::Ready(None) => messages_closed = true,
                Poll::Pending => {}
            }
        }
        if !transport_open && messages_closed && datagrams_idle {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// The next sealed datagram, if one was opened.
    fn next_sealed(&mut self, cx: &mut Context<'_>) -> Option<Received> {
        let Poll::Ready(Some(received)) = self.sealed.poll_recv(cx) else {
            return None;
        };
        self.count_datagram();
        self.messages_first = true;
        self.sealed_first = false;
        Some(received)
    }

    /// Counts a datagram handed out. The inbox is the counter's only
    /// writer, so a plain store of its own count does, where an atomic
    /// increment would cost a locked instruction per datagram.
    fn count_datagram(&mut self) {
        self.datagrams_received += 1;
        self.counters
            .datagrams_received
            .store(self.datagrams_received, Ordering::Relaxed);
    }

    /// The next datagram of the connection being drained, if it has one
    /// ready and its batch is not used up; otherwise the connection goes
    /// back to waiting.
    fn next_drained(&mut self) -> Option<Received> {
        let draining = self.draining.as_mut()?;
        if draining.left > 0
            && let Some(bytes) = ready_datagram(&draining.conn)
        {
            draining.left -= 1;
            let received = Received {
                from: draining.from,
                addr: draining.addr,
                channel: Channel::Datagram,
                bytes,
                arrived: clock(),
            };
            self.count_datagram();
            return Some(received);
        }
        let done = self.draining.take()?;
        self.datagrams.push(next_datagram(done.from, done.conn));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn message(n: u8) -> Received {
        Received {
            from: NodeId::from_bytes([n; 32]),
            addr: "127.0.0.1:1".parse().expect("addr"),
            channel: Channel::Stream,
            bytes: Bytes::from(vec![n]),
            arrived: clock(),
        }
    }

    #[tokio::test]
    async fn stream_messages_come_out_in_order_and_end_when_the_transport_does() {
        let (tx, mut inbox, _) = Inbox::new(16, Arc::default());
        for n in 0..6 {
            tx.send_message(message(n)).await.expect("open");
        }
        for n in 0..6 {
            assert_eq!(inbox.recv().await.expect("queued").bytes[..], [n]);
        }
        assert!(matches!(
            inbox.try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        ));
        drop(tx);
        assert!(inbox.recv().await.is_none());
        assert!(matches!(
            inbox.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn a_full_inbox_holds_stream_readers_back_until_messages_are_read() {
        let (tx, mut inbox, _) = Inbox::new(4, Arc::default());
        for n in 0..4 {
            tx.send_message(message(n)).await.expect("open");
        }
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_message(message(4)).await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished(), "a full inbox takes no more");
        assert_eq!(inbox.recv().await.expect("queued").bytes[..], [0]);
        let unblocked = tokio::time::timeout(Duration::from_secs(10), blocked).await;
        assert!(unblocked.expect("room was made").expect("reader"), "queued");
        for n in 1..5 {
            assert_eq!(inbox.try_recv().expect("queued").bytes[..], [n]);
        }
    }

    #[tokio::test]
    async fn a_dropped_inbox_releases_waiting_readers() {
        let (tx, inbox, _) = Inbox::new(1, Arc::default());
        tx.send_message(message(0)).await.expect("open");
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_message(message(1)).await.is_err() }
        });
        tokio::task::yield_now().await;
        drop(inbox);
        assert!(
            blocked.await.expect("reader"),
            "the reader hears of the close"
        );
    }
}
