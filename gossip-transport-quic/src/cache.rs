//! The connection cache: one connection per peer and address; dials to one
//! address coalesced; and the UDP traffic of every connection it ever held.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gossip_core::NodeId;
use quinn::Connection;
use rustc_hash::FxHashMap;

use crate::certs::node_id_of;
use crate::sealed::Sealer;

/// UDP traffic, as quinn counts it per connection (QUIC's own packets
/// included: acknowledgements, handshakes, retransmissions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UdpTotals {
    pub(crate) datagrams_sent: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) datagrams_received: u64,
    pub(crate) bytes_received: u64,
}

impl UdpTotals {
    fn of(conn: &Connection) -> Self {
        let stats = conn.stats();
        UdpTotals {
            datagrams_sent: stats.udp_tx.datagrams,
            bytes_sent: stats.udp_tx.bytes,
            datagrams_received: stats.udp_rx.datagrams,
            bytes_received: stats.udp_rx.bytes,
        }
    }

    fn add(&mut self, other: UdpTotals) {
        self.datagrams_sent += other.datagrams_sent;
        self.bytes_sent += other.bytes_sent;
        self.datagrams_received += other.datagrams_received;
        self.bytes_received += other.bytes_received;
    }
}

/// What connections that left the cache had sent and received, so that the
/// totals only grow.
#[derive(Debug, Default)]
struct Retired {
    datagrams_sent: AtomicU64,
    bytes_sent: AtomicU64,
    datagrams_received: AtomicU64,
    bytes_received: AtomicU64,
}

/// A cached connection and the address it reaches, read once when it was
/// cached (reading it from the connection takes the connection's lock).
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) conn: Connection,
    pub(crate) addr: SocketAddr,
    /// Seals datagrams sent beside the connection, if it exported keys.
    pub(crate) sealer: Option<Arc<Sealer>>,
}

/// The cached connections: per peer's authenticated id, one per address.
///
/// Two processes can hold one id (a copied key, or a restart elsewhere
/// before the earlier life is gone), and a peer behind NAT dials from
/// another address than the one it is reached at: a send to an id at an
/// address goes on a connection to that address, never on one that reaches
/// another process holding the id.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCache {
    // Node ids are uniformly random and authenticated: a fast hash is safe.
    // Most peers have one entry; the endpoint's connection cap bounds all.
    connections: Mutex<FxHashMap<NodeId, Vec<Cached>>>,
    dials: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    retired: Retired,
}

impl ConnectionCache {
    /// The cache, locked: for the send path, which hands a datagram to the
    /// cached connection without cloning it out.
    pub(crate) fn lock(&self) -> MutexGuard<'_, FxHashMap<NodeId, Vec<Cached>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to `peer` at any address, if one is cached (it may have
    /// closed since).
    pub(crate) fn get(&self, peer: &NodeId) -> Option<Connection> {
        self.lock()
            .get(peer)
            .and_then(|cached| cached.first())
            .map(|cached| cached.conn.clone())
    }

    /// The connection to `peer` at `addr`, if one is cached.
    pub(crate) fn get_at(&self, peer: &NodeId, addr: SocketAddr) -> Option<Connection> {
        self.cached_at(peer, addr).map(|cached| cached.conn)
    }

    /// The connection to `peer` at `addr` and its sealer, if one is cached.
    pub(crate) fn cached_at(&self, peer: &NodeId, addr: SocketAddr) -> Option<Cached> {
        self.lock()
            .get(peer)
            .and_then(|cached| at(cached, addr))
            .cloned()
    }

    /// The peers with a cached connection.
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        self.lock().keys().copied().collect()
    }

    /// The lock that makes concurrent dials to `addr` share one handshake.
    pub(crate) fn dial_lock(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut dials = self.dials.lock().unwrap_or_else(|e| e.into_inner());
        dials.entry(addr).or_default().clone()
    }

    /// Caches `conn` as the connection to `peer` at its remote address; one
    /// it replaces there (the peer restarted, or dialled as this node did)
    /// is retired.
    pub(crate) fn insert(&self, peer: NodeId, conn: Connection, sealer: Option<Arc<Sealer>>) {
        let addr = conn.remote_address();
        let new = Cached { conn, addr, sealer };
        let mut connections = self.lock();
        let cached = connections.entry(peer).or_default();
        match cached.iter_mut().find(|c| c.addr == addr) {
            Some(slot) => {
                let old = std::mem::replace(slot, new);
                self.retire(&old.conn);
            }
            None => cached.push(new),
        }
    }

    /// Removes every connection to `peer` and returns them.
    pub(crate) fn remove(&self, peer: &NodeId) -> Vec<Connection> {
        let mut connections = self.lock();
        let removed: Vec<Connection> = connections
            .remove(peer)
            .unwrap_or_default()
            .into_iter()
            .map(|cached| cached.conn)
            .collect();
        for conn in &removed {
            self.retire(conn);
        }
        removed
    }

    /// Removes `conn` if it is still cached (a newer one stays).
    pub(crate) fn forget(&self, peer: &NodeId, conn: &Connection) {
        let mut connections = self.lock();
        let Some(cached) = connections.get_mut(peer) else {
            return;
        };
        if let Some(i) = cached
            .iter()
            .position(|c| c.conn.stable_id() == conn.stable_id())
        {
            let gone = cached.swap_remove(i);
            if cached.is_empty() {
                connections.remove(peer);
            }
            self.retire(&gone.conn);
        }
    }

    /// Every connection's UDP traffic: the cached ones' so far, and the
    /// retired ones' up to the moment they left the cache. Read under the
    /// cache's lock, as connections are retired, so a later reading is
    /// never below an earlier one.
    pub(crate) fn udp_totals(&self) -> UdpTotals {
        let connections = self.lock();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let r = &self.retired;
        let mut totals = UdpTotals {
            datagrams_sent: get(&r.datagrams_sent),
            bytes_sent: get(&r.bytes_sent),
            datagrams_received: get(&r.datagrams_received),
            bytes_received: get(&r.bytes_received),
        };
        for cached in connections.values().flatten() {
            totals.add(UdpTotals::of(&cached.conn));
        }
        totals
    }

    /// Adds what `conn` sent and received to the retired totals; called
    /// with the cache locked, as it leaves the cache.
    fn retire(&self, conn: &Connection) {
        let t = UdpTotals::of(conn);
        let r = &self.retired;
        r.datagrams_sent
            .fetch_add(t.datagrams_sent, Ordering::Relaxed);
        r.bytes_sent.fetch_add(t.bytes_sent, Ordering::Relaxed);
        r.datagrams_received
            .fetch_add(t.datagrams_received, Ordering::Relaxed);
        r.bytes_received
            .fetch_add(t.bytes_received, Ordering::Relaxed);
    }
}

/// The entry of `cached` that reaches `addr`.
pub(crate) fn at(cached: &[Cached], addr: SocketAddr) -> Option<&Cached> {
    cached.iter().find(|c| c.addr == addr)
}

/// The node id the peer's certificate proves.
pub(crate) fn peer_id(conn: &Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    node_id_of(chain.first()?).ok()
}
