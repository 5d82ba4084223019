//! The transport's counters: the atomics its tasks bump, and the
//! [`TransportStats`] snapshot read from them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::screen::{ScreenCounters, SealedCounters};
use crate::unreachable::UnreachableCounters;

/// Counters, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Handshakes completed, both directions.
    pub handshakes: u64,
    /// Outgoing handshakes that resumed an earlier TLS session.
    pub resumptions: u64,
    /// Incoming handshakes refused: untrusted or expired certificate, no
    /// certificate, wrong protocol, or over the connection cap.
    pub refused: u64,
    /// Outgoing dials that failed.
    pub dial_failures: u64,
    /// Connections open now.
    pub live_connections: u64,
    /// Datagrams sent and received.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Stream messages sent.
    pub messages_sent: u64,
    /// Stream messages received.
    pub messages_received: u64,
    /// Sends refused for size.
    pub oversize: u64,
    /// Incoming stream frames refused (over the cap, truncated).
    pub bad_frames: u64,
    /// Received UDP datagrams too short to be QUIC
    /// ([`RejectedDatagram::Malformed`](crate::RejectedDatagram::Malformed)).
    pub datagrams_malformed: u64,
    /// Received UDP datagrams naming a QUIC version not spoken here
    /// ([`RejectedDatagram::UnsupportedVersion`](crate::RejectedDatagram::UnsupportedVersion)).
    pub datagrams_unsupported_version: u64,
    /// Received UDP datagrams for a connection id this endpoint never issued
    /// ([`RejectedDatagram::UnknownConnectionId`](crate::RejectedDatagram::UnknownConnectionId)).
    pub datagrams_unknown_connection_id: u64,
    /// UDP datagrams sent: every connection's (QUIC's own packets
    /// included: acknowledgements, handshakes, retransmissions) and the
    /// sealed ones.
    pub udp_datagrams_sent: u64,
    /// UDP bytes sent, QUIC's and the sealed packets' overhead included.
    pub udp_bytes_sent: u64,
    /// UDP datagrams received: every connection's and the sealed ones.
    pub udp_datagrams_received: u64,
    /// UDP bytes received, overhead included.
    pub udp_bytes_received: u64,
    /// Datagrams sent sealed beside QUIC (acknowledged by nothing) rather
    /// than in a QUIC packet; they are in `datagrams_sent` too.
    pub sealed_sent: u64,
    /// Sealed datagrams received and delivered; in `datagrams_received` too.
    pub sealed_received: u64,
    /// Received sealed packets that were malformed, named a key no
    /// connection of ours has (a peer's earlier life), or failed to
    /// authenticate.
    pub sealed_rejected: u64,
    /// Received sealed packets whose counter was seen already (a duplicate
    /// or a replay).
    pub sealed_replayed: u64,
    /// Sealed datagrams dropped because the inbox was full.
    pub sealed_dropped: u64,
    /// Notices sent to a sender of sealed packets we cannot open, telling
    /// it to send by QUIC.
    pub stale_notices_sent: u64,
    /// Such notices received for a connection of ours, which then sends
    /// by QUIC (notices naming no key of ours are in `sealed_rejected`).
    pub stale_notices_received: u64,
    /// ICMP errors saying an address does not answer, each quoting a
    /// datagram sent there, reported to the application
    /// ([`Inbox::take_unreachable`](crate::Inbox::take_unreachable)).
    pub unreachable_reported: u64,
    /// ICMP errors ignored because they quote no datagram sent lately to
    /// the address they name (forged, or very late).
    pub unreachable_unmatched: u64,
    /// Unreachable reports dropped because the application had not read
    /// the earlier ones.
    pub unreachable_dropped: u64,
}

impl TransportStats {
    /// Received UDP datagrams that could be neither a QUIC packet for this
    /// endpoint nor a sealed packet we can open, whatever the reason: the
    /// sum of the `datagrams_malformed`, `datagrams_unsupported_version`,
    /// `datagrams_unknown_connection_id` and `sealed_rejected` counters.
    pub fn datagrams_rejected(&self) -> u64 {
        self.datagrams_malformed
            + self.datagrams_unsupported_version
            + self.datagrams_unknown_connection_id
            + self.sealed_rejected
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) handshakes: AtomicU64,
    pub(crate) resumptions: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) dial_failures: AtomicU64,
    // Bumped per datagram by the sending task and by the application's
    // reading task, so each has a cache line of its own.
    pub(crate) datagrams_sent: OwnCacheLine,
    pub(crate) datagrams_received: OwnCacheLine,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) oversize: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) screened: Arc<ScreenCounters>,
    pub(crate) unreachable: Arc<UnreachableCounters>,
    pub(crate) sealed: Arc<SealedCounters>,
}

/// A counter on a cache line of its own, so that two cores bumping
/// neighbouring counters do not take the line from each other.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct OwnCacheLine(AtomicU64);

impl std::ops::Deref for OwnCacheLine {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// Adds one to `counter`.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
