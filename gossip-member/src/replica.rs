//! The composition itself: [`Replica`] and the types it speaks in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{
    ClusterId, Entry, Error as CoreError, GossipRng, Key, KvChange, KvStore, Limits, Member,
    MemberStatus, NodeId, OutputQueue, Placement, Refusals, Timestamp,
};
use gossip_swim::{Event, StateDigest, Swim, Transmit};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use gossip_antientropy::{Error, Session, SessionStats, SyncConfig, SyncState};

/// How often deleted keys past their grace period are collected.
const COLLECT_EVERY: Duration = Duration::from_secs(60);
/// Sessions peers may run with this replica at once; more are refused.
const MAX_RESPONDING: usize = 64;
/// After joining, a replica syncs again with the member that let it in this
/// often: the news of later joiners may not find a new member (few peers
/// talk to it yet). A sync between equal replicas costs one exchange.
const JOIN_RESYNC: Duration = Duration::from_millis(150);
/// At most this many follow-up syncs...
const JOIN_RESYNCS: u32 = 10;
/// ... ending sooner once this many in a row brought nothing new.
const JOIN_QUIET_RESYNCS: u32 = 2;

/// How a [`Replica`] syncs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplicaConfig {
    /// Each session's settings.
    pub sync: SyncConfig,
    /// The backstop: a sync with a random live member this often, whatever
    /// the probes say. Default 30 s.
    pub sync_interval: Duration,
    /// A peer whose probe showed a different state digest is not synced with
    /// again sooner than this after the last sync with it. Default 1 s.
    pub sync_cooldown: Duration,
    /// Syncs this replica runs at once as initiator. Default 4.
    pub max_concurrent_syncs: usize,
    /// How long a deleted key's tombstone is kept before collection.
    /// Default 1 hour: longer than any partition the cluster should heal
    /// from without the key coming back.
    pub tombstone_grace: Duration,
    /// Seed of the replica's own choices (session ids, backstop peers).
    pub rng_seed: u64,
    /// The key in which each node publishes its zone (or rack), read for
    /// [`PeerSelection::Weighted`](gossip_swim::PeerSelection::Weighted).
    /// Default `zone`.
    pub zone_key: Key,
    /// The key in which each node publishes its weight for weighted peer
    /// selection, a decimal integer (0 is never chosen; a value that does
    /// not parse counts as 1). Default `weight`.
    pub weight_key: Key,
}

impl ReplicaConfig {
    /// The defaults for `cluster`.
    pub fn new(cluster: ClusterId) -> Self {
        ReplicaConfig {
            sync: SyncConfig::new(cluster),
            sync_interval: Duration::from_secs(30),
            sync_cooldown: Duration::from_secs(1),
            max_concurrent_syncs: 4,
            tombstone_grace: Duration::from_secs(3600),
            rng_seed: 0,
            zone_key: Key::from("zone"),
            weight_key: Key::from("weight"),
        }
    }
}

/// A side of a sync session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The side that started the session.
    Initiator,
    /// The side that answered.
    Responder,
}

impl Role {
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }
}

/// A turn of a sync session to send to `peer` over a reliable stream, whole
/// and in order. The receiver passes `role`, `id` and `parts` to its
/// [`Replica::handle_sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTransmit {
    /// To whom.
    pub peer: NodeId,
    /// Where.
    pub addr: SocketAddr,
    /// This replica's role in the session.
    pub role: Role,
    /// The session, as numbered by its initiator.
    pub id: u64,
    /// The session's messages.
    pub parts: Vec<Vec<u8>>,
}

/// What a [`Replica`] reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReplicaEvent {
    /// SWIM's news, after the replica has acted on it.
    Swim(Event),
    /// A key changed: written here, or brought by a sync.
    KeyChanged(KvChange),
    /// A sync session ended.
    SyncEnded {
        /// With whom.
        peer: NodeId,
        /// This replica's role in it.
        role: Role,
        /// Why it failed, if it did.
        error: Option<Error>,
        /// What it moved.
        stats: SessionStats,
    },
}

/// Counters of a replica's syncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStats {
    /// Sessions this replica started.
    pub initiated: u64,
    /// ... of which ended cleanly.
    pub initiated_completed: u64,
    /// ... of which failed (timed out, refused, peer unreachable).
    pub initiated_failed: u64,
    /// Sessions peers started with this replica.
    pub responded: u64,
    /// ... of which ended cleanly.
    pub responded_completed: u64,
    /// ... of which failed.
    pub responded_failed: u64,
    /// Sessions refused because too many were running.
    pub refused: u64,
    /// Sync messages dropped because their sender spoke from another
    /// address than the one its identity is held at, after a conflict (see
    /// [`Swim::speaks_from_elsewhere`]).
    pub refused_elsewhere: u64,
    /// Bytes of sync messages sent.
    pub bytes_sent: u64,
    /// Bytes of sync messages received.
    pub bytes_received: u64,
    /// Key/value writes received.
    pub entries_received: u64,
    /// Member records and key/value writes that sync sessions refused, by
    /// reason (not signed by their makers, not the state an owner signed,
    /// revoked, ...). Each but a revoked node's also failed its session.
    pub claims_refused: Refusals,
}

/// A node's own keys, as a restarted replica starts from them: a restart
/// that keeps them (the reference node writes them to its data directory)
/// loses none, and its new writes rank above the earlier life's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKeys {
    /// The highest version the node's keys reached: the next life starts
    /// above it, so peers replace what they hold of the earlier life.
    pub max_version: u64,
    /// The live keys.
    pub keys: Vec<(Key, Bytes)>,
}

/// A sync session under way, with the id that tells its messages apart from
/// an earlier session's with the same peer.
#[derive(Debug)]
struct Running {
    id: u64,
    session: Session,
    addr: SocketAddr,
}

/// The follow-up syncs of a replica that has just joined.
#[derive(Debug, Clone, Copy)]
struct CatchUp {
    /// The member that let this replica in.
    via: NodeId,
    /// When to sync with it next, once the current sync has ended.
    next: Option<Timestamp>,
    /// Follow-up syncs left.
    left: u32,
    /// Syncs in a row that brought nothing new.
    quiet: u32,
}

/// One member of a cluster: SWIM and the Merkle sync, composed.
#[derive(Debug)]
pub struct Replica {
    swim: Swim,
    state: SyncState,
    config: ReplicaConfig,
    rng: GossipRng,
    initiated: BTreeMap<NodeId, Running>,
    responding: BTreeMap<NodeId, Running>,
    wanted: BTreeSet<NodeId>,
    last_sync: BTreeMap<NodeId, Timestamp>,
    next_backstop: Timestamp,
    next_collect: Timestamp,
    joining: Option<CatchUp>,
    stats: SyncStats,
    syncs: OutputQueue<SyncTransmit>,
    events: OutputQueue<ReplicaEvent>,
}

impl Replica {
    /// A replica of `swim`'s member, starting from the node's own `keys`
    /// (empty for a first start).
    ///
    /// # Errors
    ///
    /// A stored key the limits refuse.
    pub fn new(
        config: ReplicaConfig,
        mut swim: Swim,
        keys: StoredKeys,
        now: Timestamp,
    ) -> Result<Self, CoreError> {
        let limits: Limits = swim.config().limits.clone();
        let local = swim.members().local().clone();
        let key = swim.members().key().clone();
        let kv = KvStore::starting_at(key, swim.config().cluster, limits.clone(), keys.max_version);
        let mut state = SyncState::from_parts(kv, [local], limits);
        for (key, value) in keys.keys {
            let version = state.set(key, value)?;
            swim.set_state_version(now, version);
        }
        let mut replica = Replica {
            swim,
            state,
            rng: GossipRng::seed_from_u64(config.rng_seed),
            initiated: BTreeMap::new(),
            responding: BTreeMap::new(),
            wanted: BTreeSet::new(),
            last_sync: BTreeMap::new(),
            next_backstop: now + config.sync_interval,
            next_collect: now + COLLECT_EVERY,
            joining: None,
            stats: SyncStats::default(),
            syncs: OutputQueue::default(),
            events: OutputQueue::default(),
            config,
        };
        replica.update_placement(replica.swim.local_id());
        replica.settle(now);
        Ok(replica)
    }

    /// The SWIM machine.
    pub fn swim(&self) -> &Swim {
        &self.swim
    }

    /// Runs `command` on the SWIM machine, then acts on what it reported.
    pub fn with_swim<R>(&mut self, now: Timestamp, command: impl FnOnce(&mut Swim) -> R) -> R {
        let result = command(&mut self.swim);
        self.settle(now);
        result
    }

    /// The replicated state: member records and every node's keys.
    pub fn state(&self) -> &SyncState {
        &self.state
    }

    /// The sync counters.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    /// The settings.
    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// The node's own keys, as a restart should get them back.
    pub fn stored_keys(&self) -> StoredKeys {
        let local = self.state.kv().local();
        StoredKeys {
            max_version: local.max_version(),
            keys: local.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    // ----- commands -----

    /// Joins through `seeds`.
    pub fn join(&mut self, now: Timestamp, seeds: Vec<SocketAddr>) {
        self.with_swim(now, |swim| swim.join(now, seeds));
    }

    /// Announces a graceful leave; [`Event::LeaveCompleted`] says when it is out.
    pub fn leave(&mut self, now: Timestamp) {
        self.with_swim(now, |swim| swim.leave(now));
    }

    /// Sets one of the node's own keys: stored, announced as the new state
    /// version on probes, and pushed as a rumor. Returns its version.
    ///
    /// # Errors
    ///
    /// A key or value over the limits, or a node over its key cap.
    pub fn set(
        &mut self,
        now: Timestamp,
        key: impl Into<Key>,
        value: impl Into<Bytes>,
    ) -> Result<u64, CoreError> {
        let (key, value) = (key.into(), value.into());
        let version = self.state.set(key.clone(), value.clone())?;
        self.announce_write(now, key, Some(value), version);
        Ok(version)
    }

    /// Deletes one of the node's own keys (a tombstone that travels like a
    /// write). Returns the tombstone's version, or `None` if there was no
    /// such key.
    ///
    /// # Errors
    ///
    /// A key over the limits.
    pub fn delete(&mut self, now: Timestamp, key: &str) -> Result<Option<u64>, CoreError> {
        let version = self.state.delete(now, key)?;
        if let Some(version) = version {
            self.announce_write(now, Key::from(key), None, version);
        }
        Ok(version)
    }

    fn announce_write(&mut self, now: Timestamp, key: Key, value: Option<Bytes>, version: u64) {
        let owner = self.swim.local_id();
        self.key_changed(KvChange {
            owner,
            key: key.clone(),
            value: value.clone(),
        });
        let entry = Entry {
            key,
            value,
            version,
        };
        // The write itself first, so that it rides the push that goes out at
        // once; the raised version follows within SWIM's push interval. Too
        // large to ride a probe, it is left to anti-entropy.
        let _ = self.swim.broadcast_state(now, entry);
        self.swim.set_state_version(now, version);
        self.settle(now);
    }

    /// Revokes `id`, the operator's word for a node whose key is no longer
    /// trusted: SWIM drops its record and rumors ([`Swim::revoke`]), the
    /// replicated state forgets its record and writes, sync sessions with it
    /// end, and nothing by or about it is taken until
    /// [`reinstate`](Replica::reinstate).
    pub fn revoke(&mut self, now: Timestamp, id: NodeId) {
        if id == self.swim.local_id() {
            return;
        }
        self.swim.revoke(now, id);
        self.state.revoke(id);
        self.wanted.remove(&id);
        for role in [Role::Initiator, Role::Responder] {
            if self.sessions(role).remove(&id).is_some() {
                self.count_session_end(role, false);
            }
        }
        self.settle(now);
    }

    /// Takes records and writes of `id` again, after its revocation was
    /// lifted.
    pub fn reinstate(&mut self, id: &NodeId) {
        self.swim.reinstate(id);
        self.state.reinstate(id);
    }

    // ----- inputs -----

    /// A SWIM frame from `from` (the authenticated sender) at `addr`.
    ///
    /// # Errors
    ///
    /// The frame was refused; the machine has counted it and nothing changed.
    pub fn handle_datagram(
        &mut self,
        now: Timestamp,
        from: NodeId,
        addr: SocketAddr,
        frame: &[u8],
    ) -> Result<(), gossip_swim::Error> {
        let result = self.swim.handle_datagram(now, from, addr, frame);
        self.settle(now);
        result
    }

    /// A SWIM frame that arrived at `arrived` and is handled only now; see
    /// [`Swim::handle_late_datagram`](gossip_swim::Swim::handle_late_datagram).
    ///
    /// # Errors
    ///
    /// As [`handle_datagram`](Replica::handle_datagram).
    pub fn handle_late_datagram(
        &mut self,
        now: Timestamp,
        arrived: Timestamp,
        from: NodeId,
        addr: SocketAddr,
        frame: &[u8],
    ) -> Result<(), gossip_swim::Error> {
        let result = self
            .swim
            .handle_late_datagram(now, arrived, from, addr, frame);
        self.settle(now);
        result
    }

    /// A turn of a sync session from `from` at `addr`: `role` is the
    /// sender's role, `id` the session. A turn of a session this replica no
    /// longer runs is ignored; a new session from a peer replaces its
    /// earlier one.
    pub fn handle_sync<'a>(
        &mut self,
        now: Timestamp,
        from: NodeId,
        addr: SocketAddr,
        role: Role,
        id: u64,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) {
        if self.swim.speaks_from_elsewhere(&from, addr) {
            self.stats.refused_elsewhere += 1;
            return;
        }
        let our_role = role.peer();
        let sessions = match our_role {
            Role::Initiator => &mut self.initiated,
            Role::Responder => &mut self.responding,
        };
        let current = sessions.get(&from).map(|r| r.id);
        if current != Some(id) {
            if our_role == Role::Initiator {
                return;
            }
            if current.is_none() && sessions.len() >= MAX_RESPONDING {
                self.stats.refused += 1;
                // Said, so that the initiator need not wait out its timeout.
                self.syncs.push(SyncTransmit {
                    peer: from,
                    addr,
                    role: our_role,
                    id,
                    parts: vec![Session::refusal(&self.config.sync)],
                });
                return;
            }
            self.stats.responded += 1;
            let session = Session::respond(self.config.sync.clone(), from, now);
            sessions.insert(from, Running { id, session, addr });
        }
        let Some(running) = sessions.get_mut(&from) else {
            return;
        };
        for part in parts {
            self.stats.bytes_received += part.len() as u64;
            // A failed session is over; flush_session reports it.
            if running
                .session
                .handle_bytes(now, &mut self.state, part)
                .is_err()
            {
                break;
            }
        }
        let key_changes = running.session.take_changes();
        let changed = running.session.take_member_changes();
        for change in key_changes {
            self.key_changed(change);
        }
        self.adopt_synced_members(now, from, &changed);
        self.flush_session(now, from, our_role);
        self.settle(now);
    }

    /// A turn for `peer` in session `id` could not be sent: the session is over.
    pub fn sync_send_failed(&mut self, peer: NodeId, role: Role, id: u64) {
        let sessions = self.sessions(role);
        if sessions.get(&peer).is_some_and(|r| r.id == id) {
            sessions.remove(&peer);
            self.count_session_end(role, false);
        }
    }

    /// Time has reached `now`; a call before [`Replica::poll_timeout`] does nothing.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.swim.handle_timeout(now);
        let expired: Vec<(NodeId, Role)> = self
            .initiated
            .iter_mut()
            .map(|(peer, r)| (peer, r, Role::Initiator))
            .chain(
                self.responding
                    .iter_mut()
                    .map(|(peer, r)| (peer, r, Role::Responder)),
            )
            .filter_map(|(peer, running, role)| {
                running.session.handle_timeout(now);
                running.session.is_finished().then_some((*peer, role))
            })
            .collect();
        for (peer, role) in expired {
            self.flush_session(now, peer, role);
        }
        if now >= self.next_backstop {
            self.next_backstop = now + self.config.sync_interval;
            let alive: Vec<NodeId> = self
                .swim
                .members()
                .others()
                .filter(|m| m.status == MemberStatus::Alive)
                .map(|m| m.id)
                .collect();
            if !alive.is_empty() {
                let peer = alive[self.rng.random_range(0..alive.len())];
                self.wanted.insert(peer);
            }
        }
        if let Some(catch_up) = &mut self.joining
            && catch_up.next.is_some_and(|at| now >= at)
        {
            // Not queued behind other syncs: catching up is what matters
            // most to a replica that has just joined.
            catch_up.next = None;
            let via = catch_up.via;
            self.start_sync(now, via);
        }
        if now >= self.next_collect {
            self.next_collect = now + COLLECT_EVERY;
            self.state
                .collect_tombstones(now, self.config.tombstone_grace);
        }
        self.settle(now);
    }

    // ----- outputs -----

    /// The next SWIM datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.swim.poll_transmit()
    }

    /// The next sync turn to send.
    pub fn poll_sync(&mut self) -> Option<SyncTransmit> {
        self.syncs.pop()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ReplicaEvent> {
        self.events.pop()
    }

    /// When [`Replica::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Timestamp {
        let mut earliest = self.next_backstop.min(self.next_collect);
        if let Some(at) = self.joining.as_ref().and_then(|c| c.next) {
            earliest = earliest.min(at);
        }
        let sessions = self.initiated.values().chain(self.responding.values());
        for at in self
            .swim
            .poll_timeout()
            .into_iter()
            .chain(sessions.filter_map(|r| r.session.poll_timeout()))
        {
            earliest = earliest.min(at);
        }
        earliest
    }

    // ----- the glue -----

    /// Reports a key change, and tells SWIM where its owner sits when the
    /// change is to its zone or weight.
    fn key_changed(&mut self, change: KvChange) {
        if change.key == self.config.zone_key || change.key == self.config.weight_key {
            self.update_placement(change.owner);
        }
        self.events.push(ReplicaEvent::KeyChanged(change));
    }

    /// Reads `owner`'s zone and weight keys into SWIM's placements.
    fn update_placement(&mut self, owner: NodeId) {
        let kv = self.state.kv();
        let zone = kv
            .get(&owner, self.config.zone_key.as_str())
            .map(|zone| String::from_utf8_lossy(zone).as_ref().into());
        let weight = kv
            .get(&owner, self.config.weight_key.as_str())
            .and_then(|weight| std::str::from_utf8(weight).ok()?.trim().parse().ok())
            .unwrap_or(1);
        self.swim.set_placement(owner, Placement { zone, weight });
    }

    /// Acts on everything SWIM reported, then starts the syncs now wanted
    /// and puts the current root on the next probes.
    fn settle(&mut self, now: Timestamp) {
        while let Some(event) = self.swim.poll_event() {
            self.handle_swim_event(now, &event);
            self.events.push(ReplicaEvent::Swim(event));
        }
        // Runs after every input: compare in place, clone only on a change.
        let local = self.swim.members().local();
        if self.state.member(&local.id) != Some(local) {
            let _ = self.state.merge_member(local.clone());
        }
        self.start_wanted_syncs(now);
        let root = self.state.root();
        let mut digest = [0u8; 8];
        digest.copy_from_slice(&root.digest.0[..8]);
        self.swim.set_state_digest(Some(StateDigest(digest)));
    }

    fn handle_swim_event(&mut self, now: Timestamp, event: &Event) {
        match event {
            Event::Joined(member)
            | Event::Updated(member)
            | Event::Recovered(member)
            | Event::Rejoined(member)
            | Event::Suspected { member, .. }
            | Event::Failed { member, .. }
            | Event::Left(member) => {
                // A record the limits refuse stays out of the replicated
                // state; SWIM still has it. SWIM's own allocation is shared
                // when the event's record is still the one in its table.
                let shared = match self.swim.members().get_shared(&member.id) {
                    Some(shared) if **shared == *member => Arc::clone(shared),
                    _ => Arc::new(member.clone()),
                };
                // Verified by SWIM's table, which the event reports.
                let _ = self.state.merge_verified_member(shared);
                if member.status == MemberStatus::Alive
                    && member.state_version > self.known_version(&member.id)
                {
                    self.wanted.insert(member.id);
                }
            }
            Event::Removed(id) => self.state.forget(id),
            Event::StateRumor { owner, entry, from }
                if entry.version > self.known_version(owner) =>
            {
                self.wanted.insert(*from);
            }
            Event::StateDigestDiffers { peer, .. } => {
                let recent = self.last_sync.get(peer).is_some_and(|at| {
                    now.saturating_duration_since(*at) < self.config.sync_cooldown
                });
                if !recent {
                    self.wanted.insert(*peer);
                }
            }
            Event::JoinCompleted { via } => {
                self.wanted.insert(*via);
                self.joining = Some(CatchUp {
                    via: *via,
                    next: None,
                    left: JOIN_RESYNCS,
                    quiet: 0,
                });
            }
            _ => {}
        }
    }

    fn known_version(&self, owner: &NodeId) -> u64 {
        self.state.kv().node(owner).map_or(0, |n| n.max_version())
    }

    /// Hands SWIM the member records a sync with `peer` just changed, where
    /// SWIM does not hold them, as claims relayed by `peer`.
    fn adopt_synced_members(&mut self, now: Timestamp, peer: NodeId, changed: &[NodeId]) {
        let members = self.swim.members();
        let news: Vec<Member> = changed
            .iter()
            .filter_map(|id| self.state.member(id))
            .filter(|record| members.get(&record.id) != Some(*record))
            .cloned()
            .collect();
        if !news.is_empty() {
            // The sync's state verified them as it took them.
            self.swim.merge_verified_records(now, peer, news);
        }
        // What SWIM would not hold (the departure of a member it already
        // collected) leaves the sync's state too: the two tables hold the
        // same members, and no ghost is passed back and forth.
        for id in changed {
            if self.swim.members().get(id).is_none() {
                self.state.forget(id);
            }
        }
    }

    /// The sessions in which this replica plays `role`.
    fn sessions(&mut self, role: Role) -> &mut BTreeMap<NodeId, Running> {
        match role {
            Role::Initiator => &mut self.initiated,
            Role::Responder => &mut self.responding,
        }
    }

    fn start_wanted_syncs(&mut self, now: Timestamp) {
        while self.initiated.len() < self.config.max_concurrent_syncs.max(1) {
            let Some(peer) = self.wanted.pop_first() else {
                break;
            };
            self.start_sync(now, peer);
        }
    }

    /// Starts a sync with `peer`, unless one is under way or it is gone.
    fn start_sync(&mut self, now: Timestamp, peer: NodeId) {
        if peer == self.swim.local_id() || self.initiated.contains_key(&peer) {
            return;
        }
        let Some(member) = self.swim.members().get(&peer) else {
            return;
        };
        if member.status.is_departed() || member.status == MemberStatus::Dead {
            return;
        }
        let Some(addr) = member.meta.addr() else {
            return;
        };
        let id = self.rng.random();
        let session = Session::initiate(self.config.sync.clone(), peer, &self.state, now);
        self.initiated.insert(peer, Running { id, session, addr });
        self.last_sync.insert(peer, now);
        self.stats.initiated += 1;
        self.flush_session(now, peer, Role::Initiator);
    }

    /// Queues what a session has to say, and ends it if it is over.
    fn flush_session(&mut self, now: Timestamp, peer: NodeId, role: Role) {
        let sessions = self.sessions(role);
        let Some(running) = sessions.get_mut(&peer) else {
            return;
        };
        let mut parts = Vec::new();
        while let Some(part) = running.session.poll_transmit() {
            parts.push(part);
        }
        let (id, addr) = (running.id, running.addr);
        if running.session.is_finished() {
            let error = running.session.error().cloned();
            let stats = running.session.stats().clone();
            sessions.remove(&peer);
            self.stats.entries_received += stats.entries_received;
            self.stats.claims_refused += stats.refused;
            self.count_session_end(role, error.is_none());
            if role == Role::Initiator {
                self.last_sync.insert(peer, now);
                self.schedule_catch_up(now, peer, &stats);
            }
            self.events.push(ReplicaEvent::SyncEnded {
                peer,
                role,
                error,
                stats,
            });
        }
        if parts.is_empty() {
            return;
        }
        self.stats.bytes_sent += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        self.syncs.push(SyncTransmit {
            peer,
            addr,
            role,
            id,
            parts,
        });
    }

    /// After a sync with the member that let this replica in: another one
    /// soon, unless enough in a row brought nothing new.
    fn schedule_catch_up(&mut self, now: Timestamp, peer: NodeId, stats: &SessionStats) {
        let Some(catch_up) = &mut self.joining else {
            return;
        };
        if catch_up.via != peer {
            return;
        }
        let news = stats.members_received + stats.entries_received > 0;
        catch_up.quiet = if news { 0 } else { catch_up.quiet + 1 };
        if catch_up.left == 0 || catch_up.quiet >= JOIN_QUIET_RESYNCS {
            self.joining = None;
        } else {
            catch_up.left -= 1;
            catch_up.next = Some(now + JOIN_RESYNC);
        }
    }

    fn count_session_end(&mut self, role: Role, clean: bool) {
        let s = &mut self.stats;
        match (role, clean) {
            (Role::Initiator, true) => s.initiated_completed += 1,
            (Role::Initiator, false) => s.initiated_failed += 1,
            (Role::Responder, true) => s.responded_completed += 1,
            (Role::Responder, false) => s.responded_failed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_core::{Incarnation, MemberMeta};
    use gossip_swim::Config;

    /// A distinct key for each short name.
    fn key(name: &str) -> gossip_core::NodeKey {
        let mut secret = [0u8; 32];
        secret[..name.len()].copy_from_slice(name.as_bytes());
        gossip_core::NodeKey::from_secret_bytes(&secret)
    }

    fn replica(name: &str, cluster: ClusterId) -> (NodeId, SocketAddr, Replica) {
        let key = key(name);
        let id = key.id();
        let addr = SocketAddr::from(([10, 0, 0, 1], 7946));
        let meta = MemberMeta::new(name, [addr]);
        let swim = Swim::new(
            Config::lan(cluster, 128),
            key,
            meta,
            Incarnation::ZERO,
            Timestamp::ZERO,
        );
        let replica = Replica::new(
            ReplicaConfig::new(cluster),
            swim,
            StoredKeys::default(),
            Timestamp::ZERO,
        )
        .expect("no stored keys");
        (id, addr, replica)
    }

    #[test]
    fn a_responder_at_its_session_cap_refuses_and_the_initiator_ends_at_once() {
        let cluster = ClusterId::from_name("busy");
        let (responder_id, _, mut responder) = replica("responder", cluster);
        let now = Timestamp::ZERO;
        // A root that differs from the responder's, so each session stays
        // open waiting for the initiator's next turn.
        let (_, _, mut initiator) = replica("initiator", cluster);
        initiator.set(now, "k", "v").expect("a key");
        let config = ReplicaConfig::new(cluster).sync;
        let root = |session: &mut Session| session.poll_transmit().expect("the root");
        for n in 0..MAX_RESPONDING {
            let peer = key(&format!("peer {n}")).id();
            let mut session =
                Session::initiate(config.clone(), responder_id, initiator.state(), now);
            let addr = SocketAddr::from(([10, 0, 1, 1], 7946));
            responder.handle_sync(
                now,
                peer,
                addr,
                Role::Initiator,
                1,
                [root(&mut session).as_slice()],
            );
        }
        while responder.poll_sync().is_some() {}
        assert_eq!(responder.stats().refused, 0);

        let (late_id, late_addr, _) = replica("late", cluster);
        let mut late = Session::initiate(config, responder_id, initiator.state(), now);
        responder.handle_sync(
            now,
            late_id,
            late_addr,
            Role::Initiator,
            7,
            [root(&mut late).as_slice()],
        );
        assert_eq!(responder.stats().refused, 1);
        let answer = responder.poll_sync().expect("the refusal is sent");
        assert_eq!(
            (answer.peer, answer.role, answer.id),
            (late_id, Role::Responder, 7)
        );
        let mut state = initiator.state().clone();
        for part in &answer.parts {
            assert_eq!(late.handle_bytes(now, &mut state, part), Err(Error::Busy));
        }
        assert!(late.is_finished());
        assert_eq!(late.error(), Some(&Error::Busy));
    }
}
