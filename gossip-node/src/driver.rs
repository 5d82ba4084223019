//! The one task per node that owns the state machines: it selects over
//! transport input, the earliest deadline and handle commands, feeds one input,
//! then drains every output.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gossip_antientropy::{Session, SyncConfig, SyncState};
use gossip_core::{Entry, GossipRng, Key, Member, MemberStatus, NodeId, Timestamp};
use gossip_swim::{Event, StateDigest, Swim, Transmit};
use gossip_transport_quic::{Channel, Error as TransportError, Inbox, Received, Transport};
use rand::Rng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, debug_span, info, trace, warn};

use crate::data_dir::{DataDir, StoredKeys};
use crate::error::Error;
use crate::event::NodeEvent;
use crate::metrics::{DriverCounters, MemberCounts, Metrics, SyncCounters};
use crate::stream::{self, Role, StreamMessage};

/// How long a send may take to dial before it is given up: SWIM has moved
/// on by then, and a sync session times out on its own.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Sessions peers may run with this node at once; more are refused.
const MAX_RESPONDING: usize = 64;
/// How often deleted keys past their grace period are collected.
const COLLECT_EVERY: Duration = Duration::from_secs(60);
/// After joining, a node syncs again with the member that let it in this
/// often: a cluster in a join storm keeps changing after the first table,
/// and the news of later joiners may not find a new member (few peers are
/// connected to it yet). A sync between equal replicas costs one exchange.
const JOIN_RESYNC: Duration = Duration::from_millis(150);
/// At most this many follow-up syncs...
const JOIN_RESYNCS: u32 = 10;
/// ... ending sooner once this many in a row brought nothing new.
const JOIN_QUIET_RESYNCS: u32 = 2;
/// How long a leaving node keeps its connections open after its last send,
/// so that what quinn still holds goes out before the close.
const LINGER: Duration = Duration::from_millis(100);

/// Counts a send task as in flight while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a handle asks of the driver.
pub(crate) enum Command {
    Members(oneshot::Sender<Vec<Member>>),
    Set {
        key: Key,
        value: Bytes,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Delete {
        key: String,
        reply: oneshot::Sender<Result<Option<u64>, Error>>,
    },
    Get {
        owner: NodeId,
        key: String,
        reply: oneshot::Sender<Option<Bytes>>,
    },
    Keys {
        owner: NodeId,
        reply: oneshot::Sender<Vec<(Key, Bytes)>>,
    },
    Metrics(oneshot::Sender<Metrics>),
    Leave(oneshot::Sender<()>),
    Shutdown,
}

/// A sync session under way, with the id that tells its messages apart from
/// an earlier session's with the same peer.
struct Running {
    id: u64,
    session: Session,
    addr: SocketAddr,
}

/// The follow-up syncs of a node that has just joined.
#[derive(Debug, Clone, Copy)]
struct CatchUp {
    /// The member that let this node in.
    via: NodeId,
    /// When to sync with it next, once the current sync has ended.
    next: Option<Timestamp>,
    /// Follow-up syncs left.
    left: u32,
    /// Syncs in a row that brought nothing new.
    quiet: u32,
}

/// A send of a sync message that failed, reported back by its task.
struct SendFailed {
    peer: NodeId,
    id: u64,
    role: Role,
}

pub(crate) struct Driver {
    swim: Swim,
    state: SyncState,
    sync_config: SyncConfig,
    transport: Transport,
    inbox: Inbox,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NodeEvent>,
    epoch: Instant,
    rng: GossipRng,
    data_dir: Option<DataDir>,
    sync_interval: Duration,
    sync_cooldown: Duration,
    max_concurrent_syncs: usize,
    tombstone_grace: Duration,
    persisted_incarnation: u64,
    initiated: BTreeMap<NodeId, Running>,
    responding: BTreeMap<NodeId, Running>,
    wanted: BTreeSet<NodeId>,
    last_sync: BTreeMap<NodeId, Timestamp>,
    next_backstop: Timestamp,
    next_collect: Timestamp,
    /// Follow-up syncs after joining.
    joining: Option<CatchUp>,
    sync_counters: SyncCounters,
    counters: DriverCounters,
    leave_waiters: Vec<oneshot::Sender<()>>,
    stopping: bool,
    /// Set once the leave announcement is out: the node lingers before closing.
    left: bool,
    /// Send tasks not yet finished.
    sends_in_flight: Arc<AtomicUsize>,
    failures_tx: mpsc::UnboundedSender<SendFailed>,
    failures_rx: mpsc::UnboundedReceiver<SendFailed>,
    send_errors: Arc<AtomicU64>,
}

/// What the driver is built from; see `Node::start`.
pub(crate) struct Parts {
    pub(crate) swim: Swim,
    pub(crate) state: SyncState,
    pub(crate) sync_config: SyncConfig,
    pub(crate) transport: Transport,
    pub(crate) inbox: Inbox,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) epoch: Instant,
    pub(crate) rng: GossipRng,
    pub(crate) data_dir: Option<DataDir>,
    pub(crate) config: crate::NodeConfig,
    pub(crate) persisted_incarnation: u64,
}

impl Driver {
    pub(crate) fn new(parts: Parts) -> Self {
        let (failures_tx, failures_rx) = mpsc::unbounded_channel();
        let now = Timestamp::from_duration(parts.epoch.elapsed());
        Driver {
            swim: parts.swim,
            state: parts.state,
            sync_config: parts.sync_config,
            transport: parts.transport,
            inbox: parts.inbox,
            commands: parts.commands,
            events: parts.events,
            epoch: parts.epoch,
            rng: parts.rng,
            data_dir: parts.data_dir,
            sync_interval: parts.config.sync_interval,
            sync_cooldown: parts.config.sync_cooldown,
            max_concurrent_syncs: parts.config.max_concurrent_syncs.max(1),
            tombstone_grace: parts.config.tombstone_grace,
            persisted_incarnation: parts.persisted_incarnation,
            initiated: BTreeMap::new(),
            responding: BTreeMap::new(),
            wanted: BTreeSet::new(),
            last_sync: BTreeMap::new(),
            next_backstop: now + parts.config.sync_interval,
            next_collect: now + COLLECT_EVERY,
            joining: None,
            sync_counters: SyncCounters::default(),
            counters: DriverCounters::default(),
            leave_waiters: Vec::new(),
            stopping: false,
            left: false,
            sends_in_flight: Arc::default(),
            failures_tx,
            failures_rx,
            send_errors: Default::default(),
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_duration(self.epoch.elapsed())
    }

    fn local_id(&self) -> NodeId {
        self.swim.local_id()
    }

    /// The earliest deadline of any machine.
    fn deadline(&self) -> Timestamp {
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

    /// Runs until shut down, the handles are all dropped, or a leave completes.
    pub(crate) async fn run(mut self) {
        self.drain();
        while !self.stopping {
            let deadline = self
                .epoch
                .checked_add(self.deadline().since_epoch())
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                Some(failed) = self.failures_rx.recv() => self.handle_send_failure(failed),
                received = self.inbox.recv() => match received {
                    Some(received) => self.handle_received(received),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => self.handle_timeout(),
            }
            self.drain();
        }
        if self.left {
            // The leave announcement may still be in send tasks or in
            // quinn's buffers: let it go out before closing the connections.
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.sends_in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(LINGER).await;
        }
        // Tell peers the connections are closing, but do not wait long for
        // their acknowledgement.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.transport.close()).await;
        for waiter in self.leave_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    // ----- inputs -----

    fn handle_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Members(reply) => {
                let _ = reply.send(self.swim.members().iter().cloned().collect());
            }
            Command::Set { key, value, reply } => {
                let result = self.write(now, key, Some(value));
                let _ = reply.send(result.map(|v| v.unwrap_or_default()));
            }
            Command::Delete { key, reply } => {
                let _ = reply.send(self.write(now, Key::from(key.as_str()), None));
            }
            Command::Get { owner, key, reply } => {
                let _ = reply.send(self.state.kv().get(&owner, &key).cloned());
            }
            Command::Keys { owner, reply } => {
                let keys = self
                    .state
                    .kv()
                    .node(&owner)
                    .map(|node| node.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                let _ = reply.send(keys);
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Command::Leave(reply) => {
                self.leave_waiters.push(reply);
                self.swim.leave(now);
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    /// A write of the local node's own key (`None` deletes it): stored,
    /// announced as the new state version, and pushed as a rumor.
    fn write(
        &mut self,
        now: Timestamp,
        key: Key,
        value: Option<Bytes>,
    ) -> Result<Option<u64>, Error> {
        let version = match &value {
            Some(value) => Some(self.state.set(key.clone(), value.clone())?),
            None => self.state.delete(now, key.as_str())?,
        };
        if let Some(version) = version {
            let local = self.local_id();
            self.publish(NodeEvent::KeyChanged {
                owner: local,
                key: key.clone(),
                value: value.clone(),
            });
            self.swim.set_state_version(now, version);
            let entry = Entry {
                key,
                value,
                version,
            };
            if let Err(err) = self.swim.broadcast_state(now, local, entry) {
                // Too large to ride a probe: anti-entropy carries it instead.
                debug!(error = %err, "write not broadcast");
            }
            self.store_keys();
        }
        Ok(version)
    }

    /// Persists the node's own keys, so a restart keeps them. The write
    /// already took effect in memory; a failure to persist it is logged.
    fn store_keys(&self) {
        let Some(dir) = &self.data_dir else { return };
        let local = self.state.kv().local();
        let stored = StoredKeys {
            max_version: local.max_version(),
            keys: local.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        if let Err(err) = dir.store_keys(&stored) {
            warn!(error = %err, "cannot persist the node's keys; a restart will lose the latest writes");
        }
    }

    fn handle_received(&mut self, received: Received) {
        let now = self.now();
        trace!(from = %received.from, bytes = received.bytes.len(), channel = ?received.channel, "received");
        match received.channel {
            Channel::Datagram => {
                self.handle_swim(now, received.from, received.addr, &received.bytes)
            }
            Channel::Stream => match stream::decode(&received.bytes) {
                Ok(StreamMessage::Swim(frame)) => {
                    self.handle_swim(now, received.from, received.addr, frame);
                }
                Ok(StreamMessage::Sync { role, id, parts }) => {
                    self.handle_sync(now, received.from, received.addr, role, id, parts);
                }
                Err(err) => {
                    self.counters.stream_decode_errors += 1;
                    debug!(from = %received.from, error = %err, "undecodable stream message");
                }
            },
        }
    }

    fn handle_swim(&mut self, now: Timestamp, from: NodeId, addr: SocketAddr, frame: &[u8]) {
        // The machine counts every refusal by kind.
        if let Err(err) = self.swim.handle_datagram(now, from, addr, frame) {
            debug!(%from, error = %err, "refused a SWIM frame");
        }
    }

    /// Sync messages: `role` is the sender's role in the session.
    fn handle_sync(
        &mut self,
        now: Timestamp,
        from: NodeId,
        addr: SocketAddr,
        role: Role,
        id: u64,
        parts: Vec<&[u8]>,
    ) {
        let our_role = role.peer();
        let sessions = match our_role {
            Role::Initiator => &mut self.initiated,
            Role::Responder => &mut self.responding,
        };
        let current = sessions.get(&from).map(|r| r.id);
        if current != Some(id) {
            if our_role == Role::Initiator {
                // An answer to a session this node no longer runs.
                return;
            }
            if current.is_none() && sessions.len() >= MAX_RESPONDING {
                debug!(%from, "refused a sync: too many at once");
                return;
            }
            // A new session from this peer replaces its earlier one.
            self.sync_counters.responded += 1;
            let session = Session::respond(self.sync_config.clone(), from, now);
            sessions.insert(from, Running { id, session, addr });
        }
        let Some(running) = sessions.get_mut(&from) else {
            return;
        };
        let span = debug_span!("sync", peer = %from, role = ?our_role, id);
        let _entered = span.enter();
        for part in parts {
            self.sync_counters.bytes_received += part.len() as u64;
            // A failed session is over; flush_session counts it.
            if let Err(err) = running.session.handle_bytes(now, &mut self.state, part) {
                debug!(%from, error = %err, "sync failed");
                break;
            }
        }
        let changes = running.session.take_changes();
        for change in changes {
            self.publish(NodeEvent::KeyChanged {
                owner: change.owner,
                key: change.key,
                value: change.value,
            });
        }
        self.adopt_synced_members(now, from);
        self.flush_session(from, our_role);
    }

    /// The sessions in which this node plays `role`.
    fn sessions(&mut self, role: Role) -> &mut BTreeMap<NodeId, Running> {
        match role {
            Role::Initiator => &mut self.initiated,
            Role::Responder => &mut self.responding,
        }
    }

    fn handle_send_failure(&mut self, failed: SendFailed) {
        let sessions = self.sessions(failed.role);
        if sessions
            .get(&failed.peer)
            .is_some_and(|r| r.id == failed.id)
        {
            sessions.remove(&failed.peer);
            self.count_session_end(failed.role, false);
        }
    }

    fn handle_timeout(&mut self) {
        let now = self.now();
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
            self.flush_session(peer, role);
        }
        if now >= self.next_backstop {
            self.next_backstop = now + self.sync_interval;
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
            // most to a node that has just joined.
            catch_up.next = None;
            let via = catch_up.via;
            self.start_sync(now, via);
        }
        if now >= self.next_collect {
            self.next_collect = now + COLLECT_EVERY;
            let collected = self.state.collect_tombstones(now, self.tombstone_grace);
            if collected > 0 {
                debug!(collected, "collected tombstones");
            }
        }
    }

    // ----- outputs -----

    /// Drains every machine's output until none has more.
    fn drain(&mut self) {
        let now = self.now();
        loop {
            while let Some(transmit) = self.swim.poll_transmit() {
                self.send_swim(transmit);
            }
            let mut any = false;
            while let Some(event) = self.swim.poll_event() {
                any = true;
                self.handle_swim_event(now, event);
            }
            if !any {
                break;
            }
        }
        self.keep_local_record();
        self.start_wanted_syncs(now);
        let root = self.state.root();
        let mut digest = [0u8; 8];
        digest.copy_from_slice(&root.digest.0[..8]);
        self.swim.set_state_digest(Some(StateDigest(digest)));
    }

    fn handle_swim_event(&mut self, now: Timestamp, event: Event) {
        match &event {
            Event::Joined(member)
            | Event::Updated(member)
            | Event::Recovered(member)
            | Event::Rejoined(member)
            | Event::Suspected { member, .. }
            | Event::Failed { member, .. }
            | Event::Left(member) => {
                if let Err(err) = self.state.merge_member(member.clone()) {
                    debug!(member = %member.id, error = %err, "member not replicated");
                }
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
                let recent = self
                    .last_sync
                    .get(peer)
                    .is_some_and(|at| now.saturating_duration_since(*at) < self.sync_cooldown);
                if !recent {
                    self.wanted.insert(*peer);
                }
            }
            Event::JoinCompleted { via } => {
                info!(%via, "joined the cluster");
                self.wanted.insert(*via);
                self.joining = Some(CatchUp {
                    via: *via,
                    next: None,
                    left: JOIN_RESYNCS,
                    quiet: 0,
                });
            }
            Event::Refuted {
                incarnation,
                accused_by,
            } => {
                warn!(%accused_by, incarnation = incarnation.get(), "refuted an accusation of this node");
            }
            Event::LeaveCompleted => {
                info!("left the cluster");
                self.left = true;
                self.stopping = true;
            }
            _ => {}
        }
        match &event {
            Event::Suspected { member, by, .. } => info!(member = %member.id, %by, "suspected"),
            Event::Failed { member, provenance } => {
                info!(member = %member.id, declared_by = %provenance.declared_by, "failed");
            }
            Event::Joined(member) => debug!(member = %member.id, "joined"),
            Event::Left(member) => info!(member = %member.id, "left"),
            _ => {}
        }
        if let Some(event) = NodeEvent::from_swim(&event) {
            self.publish(event);
        }
    }

    fn known_version(&self, owner: &NodeId) -> u64 {
        self.state.kv().node(owner).map_or(0, |n| n.max_version())
    }

    fn publish(&self, event: NodeEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    /// Keeps the replicated copy of the local record equal to SWIM's, and
    /// the incarnation on disk at least as high as the one in use.
    fn keep_local_record(&mut self) {
        // Runs after every input: compare in place, clone only on a change.
        let local = self.swim.members().local();
        if self.state.member(&local.id) != Some(local) {
            let _ = self.state.merge_member(local.clone());
        }
        let incarnation = self.swim.members().local().incarnation;
        if incarnation.get() > self.persisted_incarnation
            && let Some(dir) = &self.data_dir
        {
            match dir.store_incarnation(incarnation) {
                Ok(()) => self.persisted_incarnation = incarnation.get(),
                Err(err) => warn!(error = %err, "could not store the incarnation"),
            }
        }
    }

    /// Hands SWIM the member records a sync brought that it does not hold,
    /// as claims relayed by `peer`.
    fn adopt_synced_members(&mut self, now: Timestamp, peer: NodeId) {
        let members = self.swim.members();
        let news: Vec<Member> = self
            .state
            .members()
            .filter(|record| members.get(&record.id) != Some(record))
            .cloned()
            .collect();
        if !news.is_empty() {
            self.swim.merge_records(now, peer, news);
        }
    }

    /// A random alive member this node already has a connection to, other
    /// than `not`: where a push goes instead of a member that would cost a
    /// handshake.
    fn connected_member(&mut self, not: Option<NodeId>) -> Option<(NodeId, SocketAddr)> {
        let members = self.swim.members();
        let candidates: Vec<(NodeId, SocketAddr)> = self
            .transport
            .connected_peers()
            .into_iter()
            .filter(|id| Some(*id) != not)
            .filter_map(|id| {
                let member = members.get(&id)?;
                let addr = member.meta.addrs().first()?;
                (member.status == MemberStatus::Alive).then_some((id, *addr))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.random_range(0..candidates.len())])
    }

    fn send_swim(&mut self, mut transmit: Transmit) {
        // A push to a member not yet connected would cost a handshake; during
        // a join storm, pushes to fresh random members would connect nearly
        // every pair. Any connected live member will do.
        if transmit.push
            && transmit
                .to
                .is_some_and(|to| self.transport.max_datagram_size(&to).is_none())
            && let Some((id, addr)) = self.connected_member(transmit.to)
        {
            transmit.to = Some(id);
            transmit.addr = addr;
        }
        trace!(to = %transmit.addr, bytes = transmit.payload.len(), push = transmit.push, "sending");
        let transport = self.transport.clone();
        let errors = self.send_errors.clone();
        let payload = Bytes::from(transmit.payload);
        let in_flight = InFlight::new(&self.sends_in_flight);
        // Every send is its own task: a dial to a dead peer must not hold up
        // the driver. A send on a cached connection completes at once.
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let sent = tokio::time::timeout(
                SEND_TIMEOUT,
                transport.send_datagram(transmit.to, transmit.addr, payload.clone()),
            )
            .await;
            let result = match sent {
                Ok(Err(TransportError::DatagramTooLarge { .. })) => {
                    let framed = stream::encode_swim(&payload);
                    tokio::time::timeout(
                        SEND_TIMEOUT,
                        transport.send_message(transmit.to, transmit.addr, &framed),
                    )
                    .await
                    .map(|r| r.map(|_| ()))
                }
                other => other.map(|r| r.map(|_| ())),
            };
            if !matches!(result, Ok(Ok(()))) {
                errors.fetch_add(1, Ordering::Relaxed);
                debug!(to = %transmit.addr, "SWIM send failed");
            }
        });
    }

    fn start_wanted_syncs(&mut self, now: Timestamp) {
        while self.initiated.len() < self.max_concurrent_syncs {
            let Some(peer) = self.wanted.pop_first() else {
                break;
            };
            self.start_sync(now, peer);
        }
    }

    /// Starts a sync with `peer`, unless one is under way or it is gone.
    fn start_sync(&mut self, now: Timestamp, peer: NodeId) {
        if peer == self.local_id() || self.initiated.contains_key(&peer) {
            return;
        }
        let Some(member) = self.swim.members().get(&peer) else {
            return;
        };
        if member.status.is_departed() || member.status == MemberStatus::Dead {
            return;
        }
        let Some(addr) = member.meta.addrs().first().copied() else {
            return;
        };
        let id = self.rng.random();
        let session = Session::initiate(self.sync_config.clone(), peer, &self.state, now);
        self.initiated.insert(peer, Running { id, session, addr });
        self.last_sync.insert(peer, now);
        self.sync_counters.initiated += 1;
        debug!(%peer, id, "sync started");
        self.flush_session(peer, Role::Initiator);
    }

    /// Sends what a session has to say, and ends it if it is over.
    fn flush_session(&mut self, peer: NodeId, role: Role) {
        let sessions = self.sessions(role);
        let Some(running) = sessions.get_mut(&peer) else {
            return;
        };
        let mut parts = Vec::new();
        while let Some(part) = running.session.poll_transmit() {
            parts.push(part);
        }
        let (id, addr) = (running.id, running.addr);
        let finished = running
            .session
            .is_finished()
            .then(|| running.session.error().is_none());
        if let Some(clean) = finished {
            let stats = running.session.stats().clone();
            debug!(
                %peer,
                role = ?role,
                clean,
                error = ?running.session.error(),
                bytes_sent = stats.bytes_sent,
                bytes_received = stats.bytes_received,
                entries_received = stats.entries_received,
                "sync ended"
            );
            sessions.remove(&peer);
            self.sync_counters.entries_received += stats.entries_received;
            self.count_session_end(role, clean);
            if role == Role::Initiator {
                let now = self.now();
                self.last_sync.insert(peer, now);
                if let Some(catch_up) = &mut self.joining
                    && catch_up.via == peer
                {
                    let news = stats.members_received + stats.entries_received > 0;
                    catch_up.quiet = if news { 0 } else { catch_up.quiet + 1 };
                    if catch_up.left == 0 || catch_up.quiet >= JOIN_QUIET_RESYNCS {
                        self.joining = None;
                    } else {
                        catch_up.left -= 1;
                        catch_up.next = Some(now + JOIN_RESYNC);
                    }
                }
            }
        }
        if parts.is_empty() {
            return;
        }
        let message = stream::encode_sync(role, id, &parts);
        self.sync_counters.bytes_sent += message.len() as u64;
        let transport = self.transport.clone();
        let failures = self.failures_tx.clone();
        let in_flight = InFlight::new(&self.sends_in_flight);
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let sent = tokio::time::timeout(
                SEND_TIMEOUT,
                transport.send_message(Some(peer), addr, &message),
            )
            .await;
            if !matches!(sent, Ok(Ok(_))) {
                debug!(%peer, "sync message not sent");
                let _ = failures.send(SendFailed { peer, id, role });
            }
        });
    }

    fn count_session_end(&mut self, role: Role, clean: bool) {
        let c = &mut self.sync_counters;
        match (role, clean) {
            (Role::Initiator, true) => c.initiated_completed += 1,
            (Role::Initiator, false) => c.initiated_failed += 1,
            (Role::Responder, true) => c.responded_completed += 1,
            (Role::Responder, false) => c.responded_failed += 1,
        }
    }

    fn metrics(&self) -> Metrics {
        let members = self.swim.members();
        let count = |status| members.count(status) as u64;
        let mut counters = self.counters;
        counters.send_errors = self.send_errors.load(Ordering::Relaxed);
        Metrics {
            members: MemberCounts {
                alive: count(MemberStatus::Alive),
                suspect: count(MemberStatus::Suspect),
                dead: count(MemberStatus::Dead),
                left: count(MemberStatus::Left),
            },
            local_health: self.swim.local_health(),
            incarnation: members.local().incarnation.get(),
            swim: self.swim.stats().clone(),
            sync: self.sync_counters,
            transport: self.transport.stats(),
            driver: counters,
            kv_keys: self.state.kv().local().len() as u64,
            kv_owners: self.state.kv().owners().count() as u64,
        }
    }
}
