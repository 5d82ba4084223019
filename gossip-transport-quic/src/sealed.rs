//! Sealed datagrams: small datagrams sent beside QUIC on the same socket,
//! each sealed (ChaCha20-Poly1305) with keys the connection's TLS session
//! exports, so they are exactly as authenticated as the connection's own
//! datagrams, and cost no acknowledgement.
//!
//! Why: a QUIC datagram is ack-eliciting, so a SWIM probe answered by an ack
//! costs three packets, the third an ACK-only one for the answer. Sealed
//! datagrams are acknowledged by nothing (SWIM's ack is the acknowledgement
//! that matters), so a probe costs two.
//!
//! A sealed packet is `SEALED | key id (4) | counter (4, big-endian) |
//! ciphertext | tag (16)`. Its first byte has QUIC's fixed bit (`0x40`)
//! clear; our endpoints neither grease that bit nor accept it greased, so no
//! QUIC packet of ours is ever taken for a sealed one. Each connection
//! exports two keys and two key ids, one per direction; the nonce is the
//! counter, which never repeats under one key; a window of the last 64
//! counters turns replays away. A receiver that cannot open a packet (its
//! key id is unknown, as after a restart, or it fails to authenticate) may
//! answer with a `STALE | key id` notice, and the sender then sends that
//! connection's datagrams by QUIC, whose stateless reset finds the restart
//! out. A notice is not authenticated: a forged one only moves one
//! connection's datagrams back onto QUIC.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gossip_core::NodeId;
use quinn::Connection;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustc_hash::FxHashMap;

use crate::received::clock;

/// First byte of a sealed datagram (QUIC's fixed bit clear).
pub(crate) const SEALED: u8 = 0x01;
/// First byte of a notice that a key id is unknown to its receiver.
pub(crate) const STALE: u8 = 0x02;

/// Whether a received datagram starting with `first` is a sealed-channel
/// packet, not (possibly) QUIC: its first byte is one of ours, which have
/// QUIC's fixed bit (`0x40`) clear. Other datagrams with the bit clear go
/// on to quinn, which drops them.
pub(crate) fn is_sealed(first: u8) -> bool {
    first == SEALED || first == STALE
}

const KEY_ID_LEN: usize = 4;
const COUNTER_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + COUNTER_LEN;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// A stale notice: its byte and the key id it names.
pub(crate) const STALE_LEN: usize = 1 + KEY_ID_LEN;

/// Largest payload sealed: below the datagram size QUIC allows on any path
/// (1,200 bytes less its packet overhead), so that which way a datagram
/// goes never decides whether it is too large. Larger ones go by QUIC,
/// which knows the path's size.
pub(crate) const MAX_SEALED_PAYLOAD: usize = 1100;

/// Most stale notices sent per second: a notice is smaller than the packet
/// that draws it, and this bounds what a flood of forgeries draws.
const STALE_NOTICES_PER_SECOND: u64 = 100;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-gossip-sealed-datagrams-v1";

/// A key id: which key opens a sealed packet.
pub(crate) type KeyId = [u8; KEY_ID_LEN];

/// Why a received sealed packet was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Too short, or a first byte that is neither sealed nor a notice.
    Malformed,
    /// No connection of ours has this key id.
    UnknownKey,
    /// The tag did not authenticate the packet under its key.
    Forged,
    /// A counter seen already, or too old for the window.
    Replayed,
}

/// The sending half of a connection's sealed channel.
#[derive(Debug)]
pub(crate) struct Sealer {
    id: KeyId,
    /// Where the peer is reached: a stale notice counts only from there.
    addr: SocketAddr,
    key: LessSafeKey,
    next: AtomicU64,
    /// Set by a stale notice (the peer cannot open our packets), or when
    /// the connection closed.
    stale: AtomicBool,
    /// Whether this end dialled the connection; the dialling end keeps the
    /// QUIC connection from idling out (see [`Sealer::next_counter`]).
    dialled: bool,
    created: Instant,
    /// Milliseconds after `created` of the last datagram sent by QUIC.
    last_quic_ms: AtomicU64,
    /// How often the dialling end sends a datagram by QUIC.
    refresh: Duration,
    /// The slot of [`BURST_SLOT`] the last sealed packets went in, and how
    /// many went in it.
    slot: AtomicU64,
    sealed_in_slot: AtomicU64,
}

/// Past [`MAX_SEALED_PER_SLOT`] sealed packets in one slot of this length,
/// datagrams to the peer go by QUIC until the next slot: a burst is what
/// QUIC carries better (several datagrams to a packet, sent in batches, one
/// acknowledgement for many), and sparse traffic, where an acknowledgement
/// per datagram would double the packets, is what sealing is for.
const BURST_SLOT: Duration = Duration::from_millis(100);
const MAX_SEALED_PER_SLOT: u64 = 64;

impl Sealer {
    /// The counter for the next sealed packet, or `None` if this datagram
    /// must go by QUIC: the peer said it cannot open ours, the counters are
    /// used up, this is a burst (see [`BURST_SLOT`]), or (at the dialling
    /// end) no datagram went by QUIC for a
    /// third of the idle timeout, and QUIC's idle timer, which sealed
    /// packets do not reset, needs one.
    fn next_counter(&self) -> Option<u32> {
        if self.stale.load(Ordering::Relaxed) {
            return None;
        }
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        let slot = now / u64::try_from(BURST_SLOT.as_millis()).unwrap_or(1);
        if self.slot.swap(slot, Ordering::Relaxed) != slot {
            self.sealed_in_slot.store(0, Ordering::Relaxed);
        }
        if self.sealed_in_slot.fetch_add(1, Ordering::Relaxed) >= MAX_SEALED_PER_SLOT {
            return None;
        }
        if self.dialled {
            let last = self.last_quic_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= u64::try_from(self.refresh.as_millis()).unwrap_or(0) {
                self.last_quic_ms.store(now, Ordering::Relaxed);
                return None;
            }
        }
        u32::try_from(self.next.fetch_add(1, Ordering::Relaxed)).ok()
    }

    /// `payload` sealed into a packet, or `None` if it must go by QUIC.
    pub(crate) fn seal(&self, payload: &[u8]) -> Option<Vec<u8>> {
        if payload.len() > MAX_SEALED_PAYLOAD {
            return None;
        }
        let counter = self.next_counter()?;
        let mut packet = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        packet.push(SEALED);
        packet.extend_from_slice(&self.id);
        packet.extend_from_slice(&counter.to_be_bytes());
        packet.extend_from_slice(payload);
        let (header, body) = packet.split_at_mut(HEADER_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
            .ok()?;
        packet.extend_from_slice(tag.as_ref());
        Some(packet)
    }
}

/// The receiving half of a connection's sealed channel.
#[derive(Debug)]
struct Opener {
    peer: NodeId,
    addr: SocketAddr,
    key: LessSafeKey,
    window: Mutex<ReplayWindow>,
}

/// The counters of the last 64 packets accepted under one key.
#[derive(Debug, Default)]
struct ReplayWindow {
    /// The highest counter accepted, if any.
    highest: Option<u32>,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `counter` is new (not checked against the tag).
    fn is_fresh(&self, counter: u32) -> bool {
        match self.highest {
            None => true,
            Some(highest) if counter > highest => true,
            Some(highest) => {
                let age = highest - counter;
                age < 64 && self.seen & (1 << age) == 0
            }
        }
    }

    /// Marks `counter`, which [`is_fresh`](ReplayWindow::is_fresh) passed
    /// and the tag authenticated, as seen.
    fn accept(&mut self, counter: u32) {
        match self.highest {
            Some(highest) if counter <= highest => self.seen |= 1 << (highest - counter),
            Some(highest) => {
                let shift = counter - highest;
                self.seen = if shift >= 64 { 0 } else { self.seen << shift } | 1;
                self.highest = Some(counter);
            }
            None => {
                self.seen = 1;
                self.highest = Some(counter);
            }
        }
    }
}

/// A received sealed packet, opened.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) from: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) bytes: Bytes,
    /// The sealed packet's length on the wire.
    pub(crate) wire_len: usize,
}

/// A sealed packet under a key id no connection has yet: the acceptor of a
/// connection registers its keys a moment after the dialler can first use
/// them, so such a packet waits briefly for its key.
#[derive(Debug)]
struct Held {
    at: Instant,
    from: SocketAddr,
    packet: Vec<u8>,
}

/// How long a packet waits for its key before it counts as unopenable.
const HOLD: Duration = Duration::from_millis(250);
/// Most packets waiting for their keys; past it the oldest is given up.
const MAX_HELD: usize = 64;

/// What a received sealed-channel packet asks of the socket.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// A datagram for the application.
    Datagram(Opened),
    /// Under a key id not registered yet: held for its key a moment.
    Held,
    /// A stale notice for a key we seal with, from the address we send it
    /// to, was taken: nothing to deliver.
    Notice,
    /// Not delivered; `notify` holds a stale notice to send back, if one is
    /// due.
    Rejected {
        error: OpenError,
        notify: Option<[u8; STALE_LEN]>,
    },
}

/// Every live connection's sealed keys, by key id: what the socket opens
/// received packets with, and what stale notices are matched against.
#[derive(Debug)]
pub(crate) struct SealedKeys {
    openers: Mutex<FxHashMap<KeyId, Arc<Opener>>>,
    sealers: Mutex<FxHashMap<KeyId, Arc<Sealer>>>,
    refresh: Duration,
    started: Instant,
    /// The second (after `started`) of the last stale notice, and how many
    /// were sent in it.
    notices: Mutex<(u64, u64)>,
    held: Mutex<std::collections::VecDeque<Held>>,
}

/// The key ids a connection registered, to be removed when it closes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registered {
    send: KeyId,
    receive: KeyId,
}

impl SealedKeys {
    /// Keys for connections whose idle timeout is `idle_timeout`.
    pub(crate) fn new(idle_timeout: Duration) -> Self {
        SealedKeys {
            openers: Mutex::default(),
            sealers: Mutex::default(),
            refresh: idle_timeout / 3,
            started: clock(),
            notices: Mutex::default(),
            held: Mutex::default(),
        }
    }

    /// Derives `conn`'s sealed keys and registers them, with the packets
    /// held for them, opened. `None` (the connection's datagrams go by
    /// QUIC) if the TLS session exports no keys or a key id is taken
    /// already (a one-in-four-billion chance).
    pub(crate) fn register(
        &self,
        peer: NodeId,
        conn: &Connection,
    ) -> Option<(Registered, Arc<Sealer>, Vec<Opened>)> {
        let mut material = [0u8; 2 * KEY_LEN + 2 * KEY_ID_LEN];
        conn.export_keying_material(&mut material, EXPORTER_LABEL, &[])
            .ok()?;
        let (keys, ids) = material.split_at(2 * KEY_LEN);
        let (dialler_key, acceptor_key) = keys.split_at(KEY_LEN);
        let (dialler_id, acceptor_id) = ids.split_at(KEY_ID_LEN);
        let dialled = conn.side() == quinn_proto::Side::Client;
        // Each end seals with the key of its own role and opens with the other.
        let ((send_key, send_id), (receive_key, receive_id)) = if dialled {
            ((dialler_key, dialler_id), (acceptor_key, acceptor_id))
        } else {
            ((acceptor_key, acceptor_id), (dialler_key, dialler_id))
        };
        let key = |bytes: &[u8]| {
            UnboundKey::new(&CHACHA20_POLY1305, bytes)
                .ok()
                .map(LessSafeKey::new)
        };
        let send_id: KeyId = send_id.try_into().ok()?;
        let receive_id: KeyId = receive_id.try_into().ok()?;
        let addr = conn.remote_address();
        let sealer = Arc::new(Sealer {
            id: send_id,
            addr,
            key: key(send_key)?,
            next: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            dialled,
            created: clock(),
            last_quic_ms: AtomicU64::new(0),
            refresh: self.refresh,
            slot: AtomicU64::new(0),
            sealed_in_slot: AtomicU64::new(0),
        });
        let opener = Arc::new(Opener {
            peer,
            addr,
            key: key(receive_key)?,
            window: Mutex::default(),
        });
        let mut openers = lock(&self.openers);
        let mut sealers = lock(&self.sealers);
        if openers.contains_key(&receive_id) || sealers.contains_key(&send_id) {
            return None;
        }
        openers.insert(receive_id, opener.clone());
        sealers.insert(send_id, sealer.clone());
        drop((openers, sealers));
        let mut opened = Vec::new();
        lock(&self.held).retain(|held| {
            if key_id(&held.packet) != Some(receive_id) {
                return true;
            }
            if let Ok(done) = open_with(&opener, &held.packet) {
                opened.push(done);
            }
            false
        });
        Some((
            Registered {
                send: send_id,
                receive: receive_id,
            },
            sealer,
            opened,
        ))
    }

    /// Stale notices for the packets that waited for their keys in vain
    /// (each counts as unopenable), to be sent to where they came from.
    pub(crate) fn given_up(&self) -> Vec<(SocketAddr, Option<[u8; STALE_LEN]>)> {
        let mut held = lock(&self.held);
        let mut given_up = Vec::new();
        while held
            .front()
            .is_some_and(|h| h.at.elapsed() >= HOLD || held.len() > MAX_HELD)
        {
            if let Some(h) = held.pop_front() {
                given_up.push((h.from, h.packet));
            }
        }
        drop(held);
        given_up
            .into_iter()
            .map(|(from, packet)| (from, self.notice_for(&packet)))
            .collect()
    }

    /// Forgets a closed connection's keys; a holder of its sealer (a
    /// [`Link`](crate::Link)) sends by QUIC from now on, and so finds the
    /// connection closed.
    pub(crate) fn unregister(&self, registered: Registered) {
        lock(&self.openers).remove(&registered.receive);
        if let Some(sealer) = lock(&self.sealers).remove(&registered.send) {
            sealer.stale.store(true, Ordering::Relaxed);
        }
    }

    /// Opens a received packet whose first byte has QUIC's fixed bit clear,
    /// from `from`.
    pub(crate) fn receive(&self, packet: &[u8], from: SocketAddr) -> Arrival {
        match packet.first() {
            Some(&SEALED) => self.open(packet, from),
            Some(&STALE) if self.take_notice(packet, from) => Arrival::Notice,
            Some(&STALE) => Arrival::Rejected {
                error: OpenError::UnknownKey,
                notify: None,
            },
            _ => Arrival::Rejected {
                error: OpenError::Malformed,
                notify: None,
            },
        }
    }

    fn open(&self, packet: &[u8], from: SocketAddr) -> Arrival {
        let rejected = |error| {
            let notify = matches!(error, OpenError::UnknownKey | OpenError::Forged)
                .then(|| self.notice_for(packet))
                .flatten();
            Arrival::Rejected { error, notify }
        };
        if packet.len() < HEADER_LEN + TAG_LEN {
            return Arrival::Rejected {
                error: OpenError::Malformed,
                notify: None,
            };
        }
        let Some(id) = key_id(packet) else {
            return rejected(OpenError::Malformed);
        };
        let Some(opener) = lock(&self.openers).get(&id).cloned() else {
            lock(&self.held).push_back(Held {
                at: clock(),
                from,
                packet: packet.to_vec(),
            });
            return Arrival::Held;
        };
        match open_with(&opener, packet) {
            Ok(opened) => Arrival::Datagram(opened),
            Err(error) => rejected(error),
        }
    }

    /// A stale notice for the key id `packet` names, unless this second's
    /// notices are used up.
    fn notice_for(&self, packet: &[u8]) -> Option<[u8; STALE_LEN]> {
        let id = key_id(packet)?;
        let second = self.started.elapsed().as_secs();
        let mut notices = lock(&self.notices);
        if notices.0 != second {
            *notices = (second, 0);
        }
        if notices.1 >= STALE_NOTICES_PER_SECOND {
            return None;
        }
        notices.1 += 1;
        let mut notice = [STALE; STALE_LEN];
        notice[1..].copy_from_slice(&id);
        Some(notice)
    }

    /// Takes a stale notice: if it names a key we seal with, for the
    /// address it came from, that connection's datagrams go by QUIC from
    /// now on. `false` if it names no such key.
    fn take_notice(&self, packet: &[u8], from: SocketAddr) -> bool {
        let Some(id) = key_id(packet) else {
            return false;
        };
        match lock(&self.sealers).get(&id) {
            Some(sealer) if sealer.addr == from => {
                tracing::debug!(%from, "peer cannot open our sealed datagrams: sending by QUIC");
                sealer.stale.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }
}

/// Opens `packet` (at least a header and a tag long) with `opener`.
fn open_with(opener: &Opener, packet: &[u8]) -> Result<Opened, OpenError> {
    let (header, body) = packet
        .split_at_checked(HEADER_LEN)
        .ok_or(OpenError::Malformed)?;
    let counter = header
        .get(1 + KEY_ID_LEN..HEADER_LEN)
        .and_then(|c| <[u8; COUNTER_LEN]>::try_from(c).ok())
        .map(u32::from_be_bytes)
        .ok_or(OpenError::Malformed)?;
    if !lock(&opener.window).is_fresh(counter) {
        return Err(OpenError::Replayed);
    }
    let mut body = body.to_vec();
    let len = opener
        .key
        .open_in_place(nonce(counter), Aad::from(header), &mut body)
        .map_err(|_| OpenError::Forged)?
        .len();
    // Checked again under the lock: a duplicate may have been opened
    // meanwhile.
    let mut window = lock(&opener.window);
    if !window.is_fresh(counter) {
        return Err(OpenError::Replayed);
    }
    window.accept(counter);
    drop(window);
    body.truncate(len);
    Ok(Opened {
        from: opener.peer,
        addr: opener.addr,
        bytes: Bytes::from(body),
        wire_len: packet.len(),
    })
}

/// The key id in the header of a sealed packet or a notice.
fn key_id(packet: &[u8]) -> Option<KeyId> {
    packet.get(1..1 + KEY_ID_LEN)?.try_into().ok()
}

/// The nonce of the packet with `counter`: unique per key, as every key
/// seals in one direction only and counters never repeat.
fn nonce(counter: u32) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - COUNTER_LEN..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_window_takes_each_counter_once_and_nothing_older_than_64() {
        let mut window = ReplayWindow::default();
        for counter in [5, 3, 9, 4, 70] {
            assert!(window.is_fresh(counter), "counter {counter} is new");
            window.accept(counter);
            assert!(!window.is_fresh(counter), "counter {counter} seen");
        }
        assert!(!window.is_fresh(5), "70 - 5 is past the window");
        assert!(window.is_fresh(69) && window.is_fresh(7 + 64));
        window.accept(200);
        assert!(!window.is_fresh(70) && window.is_fresh(199));
    }
}
