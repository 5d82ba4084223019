//! [`Link`]: datagrams to one peer without a lookup per datagram.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use gossip_core::NodeId;
use quinn::Connection;

use crate::counters::bump;
use crate::error::Error;
use crate::sealed::Sealer;
use crate::transport::Transport;

/// A sender of datagrams to one peer that holds the peer's connection, from
/// [`Transport::link`]. [`Transport::send_datagram`] finds the connection
/// by the peer's id for every datagram; a link skips that, which counts
/// when one peer gets a stream of small datagrams.
///
/// A send that finds the connection lost fails with
/// [`Error::ConnectionLost`], and that datagram is lost (datagrams are
/// unreliable anyway); the next send dials again.
#[derive(Debug)]
pub struct Link {
    transport: Transport,
    peer: NodeId,
    addr: SocketAddr,
    /// `None` after a loss, until the next send dials.
    conn: Option<Connection>,
    /// Seals datagrams sent beside `conn`, if it exported keys.
    sealer: Option<Arc<Sealer>>,
}

impl Transport {
    /// A [`Link`] to the node `peer` at `addr`, dialling it if no connection
    /// is open: for many datagrams to one peer, without the connection
    /// lookup each [`send_datagram`](Transport::send_datagram) makes.
    ///
    /// # Errors
    ///
    /// As [`connect`](Transport::connect).
    pub async fn link(&self, peer: NodeId, addr: SocketAddr) -> Result<Link, Error> {
        let (_, conn) = self.connect(Some(peer), addr).await?;
        let sealer = self.sealer_of(&peer, addr, &conn);
        Ok(Link {
            transport: self.clone(),
            peer,
            addr,
            conn: Some(conn),
            sealer,
        })
    }

    /// The sealer cached beside `conn`, the connection to `peer` at `addr`.
    fn sealer_of(&self, peer: &NodeId, addr: SocketAddr, conn: &Connection) -> Option<Arc<Sealer>> {
        let cached = self.inner.connections.cached_at(peer, addr)?;
        (cached.conn.stable_id() == conn.stable_id())
            .then_some(cached.sealer)
            .flatten()
    }
}

impl Link {
    /// The peer this link sends to.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The largest datagram the connection carries now; `None` if it is lost.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.conn.as_ref()?.max_datagram_size()
    }

    /// Sends a datagram; if the send buffer is full the oldest queued one
    /// is dropped for it, as [`Transport::send_datagram`] does.
    ///
    /// # Errors
    ///
    /// [`Error::DatagramTooLarge`], [`Error::ConnectionLost`], and as
    /// [`Transport::connect`] when dialling again.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: only a new dial awaits, and it completes in the
    /// background.
    pub async fn send_datagram(&mut self, bytes: Bytes) -> Result<(), Error> {
        if self.conn.is_none() {
            self.redial().await?;
        }
        if self.send_sealed(&bytes) {
            return Ok(());
        }
        let conn = self.conn.as_ref().ok_or(Error::Closed)?;
        let len = bytes.len();
        let sent = conn.send_datagram(bytes);
        self.sent(len, sent)
    }

    /// As [`send_datagram`](Link::send_datagram), but waits for room in the
    /// send buffer instead of dropping older datagrams.
    ///
    /// # Errors
    ///
    /// As [`send_datagram`](Link::send_datagram).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call has sent nothing or the whole datagram.
    pub async fn send_datagram_wait(&mut self, bytes: Bytes) -> Result<(), Error> {
        if self.conn.is_none() {
            self.redial().await?;
        }
        if self.send_sealed(&bytes) {
            return Ok(());
        }
        let conn = self.conn.as_ref().ok_or(Error::Closed)?;
        let len = bytes.len();
        let sent = conn.send_datagram_wait(bytes).await;
        self.sent(len, sent)
    }

    /// Dials the peer again after a loss. Boxed and kept out of line, so
    /// that the futures of connected sends, the common case, stay small.
    #[cold]
    fn redial(&mut self) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>> {
        Box::pin(async move {
            let (_, conn) = self.transport.connect(Some(self.peer), self.addr).await?;
            self.sealer = self.transport.sealer_of(&self.peer, self.addr, &conn);
            self.conn = Some(conn);
            Ok(())
        })
    }

    /// Sends `bytes` sealed beside the connection; `false` if it must go
    /// by QUIC.
    fn send_sealed(&self, bytes: &[u8]) -> bool {
        let inner = &self.transport.inner;
        let sent = inner.send_sealed(self.sealer.as_deref(), self.addr, bytes);
        if sent {
            bump(&inner.counters.datagrams_sent);
        }
        sent
    }

    #[inline]
    fn sent(
        &mut self,
        len: usize,
        sent: Result<(), quinn::SendDatagramError>,
    ) -> Result<(), Error> {
        match sent {
            Ok(()) => {
                bump(&self.transport.inner.counters.datagrams_sent);
                Ok(())
            }
            Err(err) => self.not_sent(len, err),
        }
    }

    #[cold]
    fn not_sent(&mut self, len: usize, err: quinn::SendDatagramError) -> Result<(), Error> {
        let Some(conn) = &self.conn else {
            return Err(Error::Closed);
        };
        let result = self
            .transport
            .inner
            .datagram_sent(self.peer, conn, len, Err(err));
        if matches!(result, Err(Error::ConnectionLost { .. })) {
            self.conn = None;
            self.sealer = None;
        }
        result
    }
}
