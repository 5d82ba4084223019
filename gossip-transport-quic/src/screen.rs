//! Screening of received UDP datagrams before quinn sees them, so that input
//! from no one (random bytes, another protocol, a QUIC version we do not
//! speak, a packet for a connection we never made) gets a typed reason and a
//! counter. quinn drops such datagrams itself without counting them; the
//! screen only classifies and counts, and passes every datagram on, so quinn
//! stays the one judge of what it accepts. Sealed packets (see
//! [`sealed`](crate::sealed)), which are no QUIC, are taken out first.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, HashedConnectionIdGenerator};

use crate::received::{Channel, Received, clock};
use crate::sealed::{Arrival, OpenError, Opened, STALE_LEN, SealedKeys, is_sealed};
use crate::unreachable::SentLog;

/// The QUIC versions the endpoint speaks: version 1 (RFC 9000) only. The
/// endpoint is configured with this list, and the screen judges by it.
pub(crate) const QUIC_VERSIONS: &[u32] = &[1];

/// Version 0 marks a Version Negotiation packet, a server's answer to a
/// client of ours; it is QUIC whatever versions we speak.
const VERSION_NEGOTIATION: u32 = 0;

/// Length of the connection ids this endpoint issues
/// ([`HashedConnectionIdGenerator`]'s).
const LOCAL_CID_LEN: usize = 8;

/// Why a received datagram is no QUIC packet for this endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectedDatagram {
    /// Too short to hold a QUIC header.
    #[error("not a QUIC packet: {len} bytes cannot hold a header")]
    Malformed {
        /// The datagram's length.
        len: usize,
    },
    /// A long header naming a QUIC version this endpoint does not speak.
    #[error("QUIC version {version:#010x} is not spoken here")]
    UnsupportedVersion {
        /// The version named.
        version: u32,
    },
    /// A short header whose destination connection id this endpoint never
    /// issued: random bytes, another protocol, or a stateless reset from a
    /// peer that lost its state (which quinn then recognises by its token).
    #[error("short-header packet for a connection id this endpoint never issued")]
    UnknownConnectionId,
}

/// Classifies one datagram. `Ok` means it may be QUIC for this endpoint
/// (quinn decides the rest: decryption, handshakes, certificates).
pub(crate) fn screen(
    datagram: &[u8],
    connection_ids: &HashedConnectionIdGenerator,
) -> Result<(), RejectedDatagram> {
    const LONG_HEADER: u8 = 0x80;
    let malformed = RejectedDatagram::Malformed {
        len: datagram.len(),
    };
    let Some(&first) = datagram.first() else {
        return Err(malformed);
    };
    if first & LONG_HEADER != 0 {
        let version = datagram
            .get(1..5)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
            .ok_or(malformed)?;
        if version != VERSION_NEGOTIATION && !QUIC_VERSIONS.contains(&version) {
            return Err(RejectedDatagram::UnsupportedVersion { version });
        }
        // Long-header connection ids may be chosen by the client: only the
        // handshake can tell whether they are genuine.
        return Ok(());
    }
    let cid = datagram.get(1..1 + LOCAL_CID_LEN).ok_or(malformed)?;
    connection_ids
        .validate(&ConnectionId::new(cid))
        .map_err(|_| RejectedDatagram::UnknownConnectionId)
}

/// Datagrams rejected by the screen, by reason.
#[derive(Debug, Default)]
pub(crate) struct ScreenCounters {
    pub(crate) malformed: AtomicU64,
    pub(crate) unsupported_version: AtomicU64,
    pub(crate) unknown_connection_id: AtomicU64,
}

impl ScreenCounters {
    fn count(&self, rejected: RejectedDatagram) {
        let counter = match rejected {
            RejectedDatagram::Malformed { .. } => &self.malformed,
            RejectedDatagram::UnsupportedVersion { .. } => &self.unsupported_version,
            RejectedDatagram::UnknownConnectionId => &self.unknown_connection_id,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sealed packets received and sent, and why some were not delivered.
#[derive(Debug, Default)]
pub(crate) struct SealedCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) stale_notices_sent: AtomicU64,
    pub(crate) stale_notices_received: AtomicU64,
}

/// Where the socket takes the sealed packets it receives (see
/// [`sealed`](crate::sealed)): the keys that open them, and the inbox's
/// queue for what they carry.
pub(crate) struct SealedReceiver {
    pub(crate) keys: Arc<SealedKeys>,
    pub(crate) inbox: tokio::sync::mpsc::Sender<Received>,
    pub(crate) counters: Arc<SealedCounters>,
}

/// Wraps the endpoint's socket and screens every datagram received, taking
/// sealed packets out for the inbox before quinn sees the rest; when ICMP
/// errors are read, also remembers the start of every datagram sent, for
/// the errors to be matched against.
pub(crate) struct ScreeningSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    connection_ids: HashedConnectionIdGenerator,
    counters: Arc<ScreenCounters>,
    sent: Option<Arc<SentLog>>,
    sealed: SealedReceiver,
}

impl fmt::Debug for ScreeningSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScreeningSocket").finish_non_exhaustive()
    }
}

impl ScreeningSocket {
    /// `cid_key` must be the key of the endpoint's connection id generator.
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        cid_key: u64,
        counters: Arc<ScreenCounters>,
        sent: Option<Arc<SentLog>>,
        sealed: SealedReceiver,
    ) -> Self {
        ScreeningSocket {
            inner,
            connection_ids: HashedConnectionIdGenerator::from_key(cid_key),
            counters,
            sent,
            sealed,
        }
    }

    /// Sends one datagram of ours that is no QUIC packet (a sealed packet,
    /// a stale notice); `false` if the socket would not take it now.
    pub(crate) fn send_raw(&self, destination: SocketAddr, contents: &[u8]) -> bool {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        };
        self.try_send(&transmit).is_ok()
    }

    /// Takes a received sealed-channel packet: delivers what it carries,
    /// or counts why not (answering with a stale notice when one is due).
    fn take_sealed(&self, packet: &[u8], from: SocketAddr) {
        let counters = &self.sealed.counters;
        match self.sealed.keys.receive(packet, from) {
            Arrival::Datagram(opened) => self.deliver(opened),
            Arrival::Held => {}
            Arrival::Notice => {
                counters
                    .stale_notices_received
                    .fetch_add(1, Ordering::Relaxed);
            }
            Arrival::Rejected { error, notify } => {
                match error {
                    // Too short to be anything: counted with the screen's.
                    OpenError::Malformed => self
                        .counters
                        .count(RejectedDatagram::Malformed { len: packet.len() }),
                    OpenError::Replayed => {
                        counters.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    OpenError::UnknownKey | OpenError::Forged => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tracing::debug!(%from, ?error, "sealed datagram not delivered");
                self.notify(from, notify);
            }
        }
    }

    /// Hands an opened sealed datagram to the inbox.
    pub(crate) fn deliver(&self, opened: Opened) {
        let counters = &self.sealed.counters;
        counters.received.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes_received
            .fetch_add(opened.wire_len as u64, Ordering::Relaxed);
        let received = Received {
            from: opened.from,
            addr: opened.addr,
            channel: Channel::Datagram,
            bytes: opened.bytes,
            arrived: clock(),
        };
        // A full inbox drops the newest, as a full socket buffer would.
        if self.sealed.inbox.try_send(received).is_err() {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a stale notice, if one is due, to `to`.
    fn notify(&self, to: SocketAddr, notice: Option<[u8; STALE_LEN]>) {
        if let Some(notice) = notice
            && self.send_raw(to, &notice)
        {
            self.sealed
                .counters
                .stale_notices_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the packets that waited for their keys in vain as
    /// unopenable, and answers them with stale notices.
    fn give_up_held(&self) {
        for (from, notice) in self.sealed.keys.given_up() {
            self.sealed
                .counters
                .rejected
                .fetch_add(1, Ordering::Relaxed);
            self.notify(from, notice);
        }
    }

    /// Takes the sealed packets out of `buffer` (one received datagram, or
    /// with receive offload several of one sender, `stride` bytes apart),
    /// closing the gaps they leave; returns the length that is left for
    /// quinn.
    fn take_sealed_from(&self, buffer: &mut [u8], meta: &RecvMeta) -> usize {
        let len = meta.len.min(buffer.len());
        let stride = meta.stride.max(1);
        let is_sealed = |segment: &[u8]| segment.first().is_some_and(|&first| is_sealed(first));
        if !buffer[..len].chunks(stride).any(is_sealed) {
            return len;
        }
        let mut kept = 0;
        let mut start = 0;
        while start < len {
            let end = (start + stride).min(len);
            if is_sealed(&buffer[start..end]) {
                self.take_sealed(&buffer[start..end], meta.addr);
            } else {
                buffer.copy_within(start..end, kept);
                kept += end - start;
            }
            start = end;
        }
        kept
    }

    fn screen_received(&self, buffer: &[u8], meta: &RecvMeta) {
        let judge = |datagram: &[u8]| {
            if let Err(rejected) = screen(datagram, &self.connection_ids) {
                self.counters.count(rejected);
                tracing::debug!(from = %meta.addr, %rejected, "datagram rejected");
            }
        };
        let received = buffer.get(..meta.len).unwrap_or(buffer);
        if received.is_empty() {
            return judge(received);
        }
        // With receive offload one buffer holds several datagrams of one
        // sender, `stride` bytes apart.
        received.chunks(meta.stride.max(1)).for_each(judge);
    }
}

impl AsyncUdpSocket for ScreeningSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if let Some(sent) = &self.sent {
            sent.record(
                transmit.destination,
                transmit.contents,
                transmit.segment_size,
            );
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let count = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(count)) => count,
                other => return other,
            };
            // Sealed packets are ours to take; what is left goes to quinn,
            // moved up over the datagrams that held only sealed packets.
            self.give_up_held();
            let mut kept = 0;
            for i in 0..count.min(bufs.len()).min(meta.len()) {
                let len = self.take_sealed_from(&mut bufs[i], &meta[i]);
                if len == 0 && meta[i].len != 0 {
                    // It held only sealed packets.
                    continue;
                }
                meta[i].len = len;
                if kept != i {
                    let (to, from) = bufs.split_at_mut(i);
                    to[kept][..len].copy_from_slice(&from[0][..len]);
                    meta[kept] = meta[i];
                }
                self.screen_received(&bufs[kept], &meta[kept]);
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was sealed: read on, so that quinn is woken only
            // for its own packets and the socket's waker stays registered.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const KEY: u64 = 0x5eed_cafe;

    #[test]
    fn issued_connection_ids_and_spoken_versions_pass() {
        let mut generator = HashedConnectionIdGenerator::from_key(KEY);
        let screen_with = HashedConnectionIdGenerator::from_key(KEY);
        for _ in 0..100 {
            let cid = generator.generate_cid();
            let mut short = vec![0x40];
            short.extend_from_slice(&cid);
            short.extend_from_slice(&[0; 30]);
            assert_eq!(screen(&short, &screen_with), Ok(()));
        }
        for version in [1u32, VERSION_NEGOTIATION] {
            let mut long = vec![0xc0];
            long.extend_from_slice(&version.to_be_bytes());
            long.extend_from_slice(&[0; 40]);
            assert_eq!(screen(&long, &screen_with), Ok(()));
        }
    }

    #[test]
    fn what_cannot_be_ours_is_rejected_with_its_reason() {
        let ids = HashedConnectionIdGenerator::from_key(KEY);
        assert_eq!(
            screen(&[], &ids),
            Err(RejectedDatagram::Malformed { len: 0 })
        );
        assert_eq!(
            screen(&[0xc0, 0, 0], &ids),
            Err(RejectedDatagram::Malformed { len: 3 })
        );
        assert_eq!(
            screen(&[0x40, 1, 2, 3], &ids),
            Err(RejectedDatagram::Malformed { len: 4 })
        );
        assert_eq!(
            screen(&[0xc0, 0xff, 0, 0, 0x1d, 0, 0], &ids),
            Err(RejectedDatagram::UnsupportedVersion {
                version: 0xff00_001d
            })
        );
        // Another endpoint's connection id (another key) is not ours.
        let other = HashedConnectionIdGenerator::from_key(KEY + 1).generate_cid();
        let mut short = vec![0x40];
        short.extend_from_slice(&other);
        assert_eq!(
            screen(&short, &ids),
            Err(RejectedDatagram::UnknownConnectionId)
        );
    }

    #[test]
    fn random_bytes_are_rejected() {
        let seed = 0x9e37_79b9_u64;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let ids = HashedConnectionIdGenerator::from_key(KEY);
        for round in 0..10_000 {
            let len = rng.random_range(0..1500);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            assert!(
                screen(&bytes, &ids).is_err(),
                "seed {seed:#x}, round {round}: {bytes:02x?} passed"
            );
        }
    }
}
