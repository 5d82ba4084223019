//! The endpoint: mutual-TLS QUIC connections, cached per peer, carrying
//! datagrams and framed streams tagged with the authenticated sender.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use gossip_core::NodeId;
use quinn::{AsyncUdpSocket, Connection, Endpoint, VarInt};

use crate::cache::{ConnectionCache, at, peer_id};
use crate::certs::{NodeCredentials, SERVER_NAME, TrustBundle, server_name_of};
use crate::config::TransportConfig;
use crate::counters::{Counters, TransportStats, bump};
use crate::error::Error;
use crate::framing::frame_header;
use crate::inbox::Inbox;
use crate::screen::{ScreeningSocket, SealedReceiver};
use crate::sealed::SealedKeys;
use crate::shared::Inner;
use crate::tasks::{accept_loop, register};
use crate::tls::{CountingSessions, build_tls, endpoint_config};
use crate::unreachable::{self, SentLog};

/// An authenticated QUIC endpoint.
///
/// Every connection uses TLS 1.3 with mutual authentication against the
/// cluster's [`TrustBundle`]; the peer's [`NodeId`] is derived from the
/// certificate it presented and tags everything received from it.
/// Connections are dialled on demand, cached per peer and address, reused for datagrams
/// and streams, and resumed with TLS session tickets when re-dialled.
///
/// Cheap to clone; clones share the endpoint. When the last clone (and
/// the last [`Link`](crate::Link)) is dropped, the endpoint closes as
/// [`close`](Transport::close) closes it, without waiting for the peers to
/// be told; the [`Inbox`] then ends once it has handed out what arrived.
#[derive(Clone)]
pub struct Transport {
    pub(crate) inner: Arc<Inner>,
    /// Held by the application's handles only: the transport's own tasks
    /// hold `inner`, so without this a dropped transport would keep its
    /// socket, connections and tasks until the process ends.
    _open: Arc<CloseOnDrop>,
}

/// Closes the endpoint when dropped.
struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_id", &self.local_id())
            .field("local_addr", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds a UDP socket at `config.bind` and starts accepting connections.
    /// Returns the transport and the [`Inbox`] of messages received.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] if the address is taken; [`Error::Tls`] or
    /// [`Error::Certificate`] for unusable credentials.
    pub fn bind(
        config: TransportConfig,
        credentials: &NodeCredentials,
        trust: &TrustBundle,
    ) -> Result<(Transport, Inbox), Error> {
        let (socket, errors) = bind_with_error_queue(&config)?;
        let runtime = quinn::default_runtime().ok_or(Error::NoRuntime)?;
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(|source| bind_error(&config, source))?;
        Self::bind_parts(config, credentials, trust, socket, Some(errors))
    }

    /// As [`bind`](Transport::bind), with a fault-injecting socket
    /// ([`FaultySocket`](crate::FaultySocket)) configured by `faults`, and
    /// its handle.
    ///
    /// # Errors
    ///
    /// As [`bind`](Transport::bind).
    #[cfg(feature = "fault-injection")]
    pub fn bind_with_faults(
        config: TransportConfig,
        credentials: &NodeCredentials,
        trust: &TrustBundle,
        faults: crate::FaultConfig,
    ) -> Result<(Transport, Inbox, crate::FaultHandle), Error> {
        let (socket, errors) = bind_with_error_queue(&config)?;
        let (socket, handle) = crate::FaultySocket::wrap(socket, faults)
            .map_err(|source| bind_error(&config, source))?;
        let (transport, inbox) =
            Self::bind_parts(config, credentials, trust, socket, Some(errors))?;
        Ok((transport, inbox, handle))
    }

    /// As [`bind`](Transport::bind), over a socket of the caller's. The
    /// transport cannot read the error queue of a socket it did not bind,
    /// so it reports no unreachable addresses
    /// ([`Inbox::take_unreachable`] gives `None`).
    ///
    /// # Errors
    ///
    /// As [`bind`](Transport::bind).
    pub fn bind_with_socket(
        config: TransportConfig,
        credentials: &NodeCredentials,
        trust: &TrustBundle,
        socket: Arc<dyn AsyncUdpSocket>,
    ) -> Result<(Transport, Inbox), Error> {
        Self::bind_parts(config, credentials, trust, socket, None)
    }

    /// Binds over `socket`; `errors`, a second handle on the same socket
    /// when the transport bound it, is read for ICMP errors.
    fn bind_parts(
        config: TransportConfig,
        credentials: &NodeCredentials,
        trust: &TrustBundle,
        socket: Arc<dyn AsyncUdpSocket>,
        errors: Option<UdpSocket>,
    ) -> Result<(Transport, Inbox), Error> {
        let counters = Arc::new(Counters::default());
        let sessions = Arc::new(CountingSessions::new(counters.clone()));
        let tls = build_tls(&config, credentials, trust, sessions.clone())?;
        let runtime = quinn::default_runtime().ok_or(Error::NoRuntime)?;
        let (endpoint_config, cid_key) = endpoint_config(credentials);
        let sent = errors.as_ref().map(|_| Arc::new(SentLog::default()));
        let (tx, mut rx, sealed_inbox) = Inbox::new(config.receive_queue, counters.clone());
        let sealed = Arc::new(SealedKeys::new(config.idle_timeout));
        let socket = Arc::new(ScreeningSocket::new(
            socket,
            cid_key,
            counters.screened.clone(),
            sent.clone(),
            SealedReceiver {
                keys: sealed.clone(),
                inbox: sealed_inbox,
                counters: counters.sealed.clone(),
            },
        ));
        let endpoint = Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(tls.server),
            socket.clone(),
            runtime,
        )
        .map_err(|source| bind_error(&config, source))?;
        let (stop_errors, errors_stopped) = tokio::sync::oneshot::channel();
        if let (Some(errors), Some(sent)) = (errors, sent) {
            let reports =
                unreachable::watch(errors, sent, counters.unreachable.clone(), errors_stopped)
                    .map_err(|source| bind_error(&config, source))?;
            rx.set_unreachable(reports);
        }
        let inner = Arc::new(Inner {
            endpoint,
            local_id: RwLock::new(credentials.node_id()),
            config,
            client: RwLock::new(tls.client),
            connections: ConnectionCache::default(),
            sessions,
            counters,
            incoming: tx,
            socket,
            sealed,
            stop_errors: std::sync::Mutex::new(Some(stop_errors)),
        });
        tokio::spawn(accept_loop(inner.clone()));
        let open = Arc::new(CloseOnDrop(inner.clone()));
        Ok((Transport { inner, _open: open }, rx))
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        *self
            .inner
            .local_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The address the endpoint listens on.
    ///
    /// # Errors
    ///
    /// If the socket cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let udp = self.inner.connections.udp_totals();
        let sealed = &c.sealed;
        TransportStats {
            udp_datagrams_sent: udp.datagrams_sent + get(&sealed.sent),
            udp_bytes_sent: udp.bytes_sent + get(&sealed.bytes_sent),
            udp_datagrams_received: udp.datagrams_received + get(&sealed.received),
            udp_bytes_received: udp.bytes_received + get(&sealed.bytes_received),
            sealed_sent: get(&sealed.sent),
            sealed_received: get(&sealed.received),
            sealed_rejected: get(&sealed.rejected),
            sealed_replayed: get(&sealed.replayed),
            sealed_dropped: get(&sealed.dropped),
            stale_notices_sent: get(&sealed.stale_notices_sent),
            stale_notices_received: get(&sealed.stale_notices_received),
            handshakes: get(&c.handshakes),
            resumptions: get(&c.resumptions),
            refused: get(&c.refused),
            dial_failures: get(&c.dial_failures),
            live_connections: self.inner.endpoint.open_connections() as u64,
            datagrams_sent: get(&c.datagrams_sent),
            datagrams_received: get(&c.datagrams_received),
            messages_sent: get(&c.messages_sent),
            messages_received: get(&c.messages_received),
            oversize: get(&c.oversize),
            bad_frames: get(&c.bad_frames),
            datagrams_malformed: get(&c.screened.malformed),
            datagrams_unsupported_version: get(&c.screened.unsupported_version),
            datagrams_unknown_connection_id: get(&c.screened.unknown_connection_id),
            unreachable_reported: get(&c.unreachable.reported),
            unreachable_unmatched: get(&c.unreachable.unmatched),
            unreachable_dropped: get(&c.unreachable.dropped),
        }
    }

    /// Replaces the credentials and trust bundle. Connections made from now
    /// on use the new ones; established connections stay as they are, but
    /// for those of nodes the new bundle revokes, which are closed.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] or [`Error::Certificate`]; the old ones stay in force.
    pub fn reload(&self, credentials: &NodeCredentials, trust: &TrustBundle) -> Result<(), Error> {
        /// The application close code of a connection to a revoked node.
        const REVOKED_CLOSE_CODE: u32 = 4;
        let tls = build_tls(
            &self.inner.config,
            credentials,
            trust,
            self.inner.sessions.clone(),
        )?;
        self.inner.endpoint.set_server_config(Some(tls.server));
        *self.inner.client.write().unwrap_or_else(|e| e.into_inner()) = tls.client;
        *self
            .inner
            .local_id
            .write()
            .unwrap_or_else(|e| e.into_inner()) = credentials.node_id();
        // Revoked nodes lose the connections they hold; new handshakes
        // with them fail on both sides.
        for peer in self.inner.connections.peers() {
            if trust.is_revoked(&peer) {
                for conn in self.inner.connections.remove(&peer) {
                    conn.close(VarInt::from_u32(REVOKED_CLOSE_CODE), b"revoked");
                }
            }
        }
        Ok(())
    }

    /// The largest datagram the connection to `peer` carries now, if one is open.
    pub fn max_datagram_size(&self, peer: &NodeId) -> Option<usize> {
        self.cached(peer)?.max_datagram_size()
    }

    /// The peers this endpoint holds a connection to now (some may have
    /// closed since; see [`connect`](Transport::connect)).
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.inner.connections.peers()
    }

    /// The cached connection to `peer`. A closed one is found out (and
    /// evicted) by the send that fails on it, which keeps this lookup off
    /// quinn's connection lock.
    pub(crate) fn cached(&self, peer: &NodeId) -> Option<Connection> {
        self.inner.connections.get(peer)
    }

    /// A connection to the node at `addr`: the one cached for that peer at
    /// that address, or a new dial.
    /// With `expected`, the peer must prove to be that node; without it (a
    /// seed whose id is not known yet) any trusted peer will do. Concurrent
    /// dials to one address share one handshake. The cached connection is
    /// returned without checking whether it has closed since (that check
    /// takes quinn's connection lock); the sends find a closed one out,
    /// evict it and dial again once.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] and [`Error::UnexpectedPeer`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling leaves no half-registered connection; a handshake already
    /// under way completes in the background and is cached.
    pub async fn connect(
        &self,
        expected: Option<NodeId>,
        addr: SocketAddr,
    ) -> Result<(NodeId, Connection), Error> {
        if let Some(peer) = expected
            && let Some(conn) = self.inner.connections.get_at(&peer, addr)
        {
            return Ok((peer, conn));
        }
        let lock = self.inner.connections.dial_lock(addr);
        let _guard = lock.lock().await;
        if let Some(peer) = expected
            && let Some(conn) = self.inner.connections.get_at(&peer, addr)
            && conn.close_reason().is_none()
        {
            return Ok((peer, conn));
        }
        let (actual, conn) = self.dial(expected, addr).await?;
        register(&self.inner, actual, conn.clone());
        Ok((actual, conn))
    }

    /// Whether the node `expected` answers at `addr`: a handshake of its
    /// own, neither taken from the connection cache nor kept in it, closed
    /// once it completes. A node asks it of its own id to find a second
    /// process holding its key.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if nothing answers as `expected`: another node
    /// fails the handshake, and an address where nothing runs fails at the
    /// transport's idle timeout (wrap the call in a shorter one).
    pub async fn check_identity(&self, expected: NodeId, addr: SocketAddr) -> Result<(), Error> {
        let (_, conn) = self.dial(Some(expected), addr).await?;
        conn.close(VarInt::from_u32(0), b"identity checked");
        Ok(())
    }

    /// One handshake with whoever answers at `addr`, which must prove to be
    /// `expected` when given.
    async fn dial(
        &self,
        expected: Option<NodeId>,
        addr: SocketAddr,
    ) -> Result<(NodeId, Connection), Error> {
        let client = self
            .inner
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let fail = |reason: String| {
            bump(&self.inner.counters.dial_failures);
            Error::Connect { addr, reason }
        };
        let server_name =
            expected.map_or_else(|| SERVER_NAME.to_string(), |id| server_name_of(&id));
        let connecting = self
            .inner
            .endpoint
            .connect_with(client, addr, &server_name)
            .map_err(|e| fail(e.to_string()))?;
        let conn = connecting.await.map_err(|e| fail(e.to_string()))?;
        let actual = peer_id(&conn)
            .ok_or_else(|| fail("the peer presented no usable certificate".into()))?;
        if let Some(expected) = expected
            && expected != actual
        {
            conn.close(VarInt::from_u32(1), b"unexpected peer");
            return Err(Error::UnexpectedPeer {
                addr,
                expected,
                actual,
            });
        }
        bump(&self.inner.counters.handshakes);
        Ok((actual, conn))
    }

    /// Sends an unreliable datagram. It must fit the connection's current
    /// [`max_datagram_size`](Transport::max_datagram_size); larger messages
    /// go by [`send_message`](Transport::send_message). If the connection's
    /// send buffer is full, the oldest queued datagram is dropped for this one
    /// (fresh news over stale, what a failure detector wants).
    ///
    /// # Errors
    ///
    /// [`Error::DatagramTooLarge`] (nothing sent), and as
    /// [`connect`](Transport::connect).
    pub async fn send_datagram(
        &self,
        peer: Option<NodeId>,
        addr: SocketAddr,
        bytes: Bytes,
    ) -> Result<NodeId, Error> {
        self.send_datagram_inner(peer, addr, bytes, false).await
    }

    /// As [`send_datagram`](Transport::send_datagram), but waits for room in
    /// the send buffer instead of dropping older datagrams.
    ///
    /// # Errors
    ///
    /// As [`send_datagram`](Transport::send_datagram).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call has sent nothing or the whole datagram.
    pub async fn send_datagram_wait(
        &self,
        peer: Option<NodeId>,
        addr: SocketAddr,
        bytes: Bytes,
    ) -> Result<NodeId, Error> {
        self.send_datagram_inner(peer, addr, bytes, true).await
    }

    async fn send_datagram_inner(
        &self,
        peer: Option<NodeId>,
        addr: SocketAddr,
        bytes: Bytes,
        wait: bool,
    ) -> Result<NodeId, Error> {
        if let Some(peer) = peer
            && self.send_to_cached(&peer, addr, &bytes, wait)
        {
            bump(&self.inner.counters.datagrams_sent);
            return Ok(peer);
        }
        for attempt in 0..2 {
            // Past the hot path (`send_to_cached`): failures, waiting for
            // room, and dials. The dial is boxed so it does not bloat every
            // send's future.
            let cached = peer.and_then(|p| self.inner.connections.get_at(&p, addr).map(|c| (p, c)));
            let (id, conn) = match cached {
                Some(found) => found,
                None => Box::pin(self.connect(peer, addr)).await?,
            };
            let sent = if wait {
                conn.send_datagram_wait(bytes.clone()).await
            } else {
                conn.send_datagram(bytes.clone())
            };
            match self.inner.datagram_sent(id, &conn, bytes.len(), sent) {
                Err(Error::ConnectionLost { reason, .. }) if attempt == 0 => {
                    // A cached connection to a peer that restarted: dial
                    // again once.
                    tracing::debug!(peer = %id, %reason, "redialling");
                }
                result => return result.map(|()| id),
            }
        }
        Err(Error::Closed)
    }

    /// The hot path of a send by peer id: the datagram goes sealed beside
    /// the cached connection (see [`sealed`](crate::sealed)) or, when it
    /// cannot, the connection takes it while the cache is locked, with no
    /// clone of the connection (a clone and its drop are four atomic
    /// operations on lines the connection's driver also writes). `true` if
    /// it was sent; `false` leaves everything, failures included, to the
    /// general path. With `wait`, a full send buffer is a `false` too (the
    /// general path waits for room).
    fn send_to_cached(&self, peer: &NodeId, addr: SocketAddr, bytes: &Bytes, wait: bool) -> bool {
        // The sealer is taken out, so that sealing and the socket's send
        // happen with the cache unlocked.
        let sealer = self
            .inner
            .connections
            .lock()
            .get(peer)
            .and_then(|cached| at(cached, addr))
            .and_then(|cached| cached.sealer.clone());
        if self.inner.send_sealed(sealer.as_deref(), addr, bytes) {
            return true;
        }
        let connections = self.inner.connections.lock();
        let Some(conn) = connections
            .get(peer)
            .and_then(|cached| at(cached, addr))
            .map(|cached| &cached.conn)
        else {
            return false;
        };
        if !wait {
            return conn.send_datagram(bytes.clone()).is_ok();
        }
        // Polled once: ready if there was room. A pending send, dropped,
        // has sent nothing.
        let mut send = std::pin::pin!(conn.send_datagram_wait(bytes.clone()));
        matches!(
            send.as_mut().poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(Ok(()))
        )
    }

    /// Sends a message reliably, on its own stream, framed with its length.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`], [`Error::ConnectionLost`], and as
    /// [`connect`](Transport::connect).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled send may have delivered part of the
    /// message, which the receiver discards.
    pub async fn send_message(
        &self,
        peer: Option<NodeId>,
        addr: SocketAddr,
        bytes: &[u8],
    ) -> Result<NodeId, Error> {
        let header = frame_header(bytes.len(), self.inner.config.max_frame_bytes)
            .inspect_err(|_| bump(&self.inner.counters.oversize))?;
        for attempt in 0..2 {
            let (id, conn) = self.connect(peer, addr).await?;
            let sent = async {
                let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
                stream.write_all(&header).await.map_err(|e| e.to_string())?;
                stream.write_all(bytes).await.map_err(|e| e.to_string())?;
                stream.finish().map_err(|e| e.to_string())
            }
            .await;
            match sent {
                Ok(()) => {
                    bump(&self.inner.counters.messages_sent);
                    return Ok(id);
                }
                Err(reason) if attempt == 0 => {
                    tracing::debug!(peer = %id, %reason, "redialling");
                    self.inner.connections.forget(&id, &conn);
                }
                Err(reason) => return Err(Error::ConnectionLost { peer: id, reason }),
            }
        }
        Err(Error::Closed)
    }

    /// Closes the connection to `peer`, if one is open (the next send dials
    /// again, resuming the TLS session).
    pub fn disconnect(&self, peer: &NodeId) {
        for conn in self.inner.connections.remove(peer) {
            conn.close(VarInt::from_u32(0), b"disconnect");
        }
    }

    /// Closes every connection and stops accepting, then waits for the
    /// peers to be told.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the endpoint is closed before the first await.
    pub async fn close(&self) {
        self.inner.close();
        self.inner.endpoint.wait_idle().await;
    }
}

/// The error of a failed bind at `config.bind`.
fn bind_error(config: &TransportConfig, source: std::io::Error) -> Error {
    Error::Bind {
        addr: config.bind,
        source,
    }
}

/// A UDP socket bound as `config` says, and a second handle on it for
/// reading its error queue.
fn bind_with_error_queue(config: &TransportConfig) -> Result<(UdpSocket, UdpSocket), Error> {
    let socket = bind_udp(config.bind, config.socket_receive_buffer)
        .map_err(|source| bind_error(config, source))?;
    let errors = socket
        .try_clone()
        .map_err(|source| bind_error(config, source))?;
    Ok((socket, errors))
}

/// Binds a UDP socket at `addr` with a kernel receive buffer of up to
/// `receive_buffer` bytes (the kernel may grant less; that is not an error).
pub(crate) fn bind_udp(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    if let Err(err) = socket.set_recv_buffer_size(receive_buffer) {
        tracing::debug!(error = %err, "could not enlarge the UDP receive buffer");
    }
    socket.bind(&addr.into())?;
    let socket = UdpSocket::from(socket);
    if let Err(err) = unreachable::enable(&socket) {
        tracing::debug!(error = %err, "ICMP errors cannot be read: unreachable peers are found by silence alone");
    }
    Ok(socket)
}
