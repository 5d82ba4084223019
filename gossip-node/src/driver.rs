//! The one task per node that owns the state machines: it selects over
//! transport input, the earliest deadline and handle commands, feeds one input,
//! then drains every output.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{
    GossipRng, Incarnation, Key, Member, MemberStatus, NodeId, RING_KEY, Refusal, RingMember,
    RingView, Timestamp,
};
use gossip_member::{Replica, ReplicaEvent, Role, SyncError, SyncTransmit};
use gossip_swim::{Event, JoinRefusal, Transmit};
use gossip_transport_quic::{
    Channel, Error as TransportError, Inbox, NodeCredentials, Received, Transport, TrustBundle,
    Unreachable, UnreachableReports,
};
use rand::Rng;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, debug_span, error, info, trace, warn};

use crate::data_dir::DataDir;
use crate::error::Error;
use crate::event::NodeEvent;
use crate::metrics::{DriverCounters, MemberCounts, Metrics};
use crate::seeds::{self, Seed};
use crate::stream::{self, StreamMessage};

/// How long a send may take to dial before it is given up: SWIM has moved
/// on by then, and a sync session times out on its own.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a check of whether this node's identity answers at another
/// address waits for the handshake; a live node answers in a round trip.
const IDENTITY_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a leaving node keeps its connections open after its last send,
/// so that what quinn still holds goes out before the close.
const LINGER: Duration = Duration::from_millis(100);
/// How long after its join a node starts connecting ahead of need, most
/// connections it opens that way at once, and how often it starts more:
/// the join's own handshakes and news go first, and a couple of handshakes
/// at a time spread the first rotation's over seconds instead of a burst.
const CONNECT_AHEAD_DELAY: Duration = Duration::from_secs(5);
const CONNECT_AHEAD_AT_ONCE: usize = 2;
const CONNECT_AHEAD_INTERVAL: Duration = Duration::from_millis(500);
/// A member connected to ahead of need is not tried again that way for
/// this long: one that does not answer (a wrong address, a partition) costs
/// a handshake's retransmissions per try, and SWIM dials it when it must.
const CONNECT_AHEAD_RETRY: Duration = Duration::from_secs(30);

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
    Join {
        seeds: Vec<Seed>,
        addrs: Vec<SocketAddr>,
        reply: oneshot::Sender<()>,
    },
    /// What the seeds' names resolve to now.
    SeedsResolved {
        seeds: Vec<Seed>,
        addrs: Vec<SocketAddr>,
    },
    Set {
        key: Key,
        value: Bytes,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Delete {
        key: String,
        reply: oneshot::Sender<Result<Option<u64>, Error>>,
    },
    Ring {
        reply: oneshot::Sender<RingView>,
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
    ReloadTrust {
        trust: TrustBundle,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Leave(oneshot::Sender<()>),
    Shutdown,
}

/// How often refused syncs from one peer are logged.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Brings the replica's revocations to `revoked`: revokes the ids newly in
/// it, takes back those no longer in it.
pub(crate) fn apply_revocations(replica: &mut Replica, now: Timestamp, revoked: &BTreeSet<NodeId>) {
    let held: Vec<NodeId> = replica.swim().members().revoked().copied().collect();
    for id in held.iter().filter(|id| !revoked.contains(id)) {
        replica.reinstate(id);
    }
    for id in revoked.iter().filter(|id| !held.contains(id)) {
        replica.revoke(now, *id);
    }
}

/// The membership as the replica holds it, for the handles to read.
pub(crate) fn snapshot(replica: &Replica) -> Arc<[Member]> {
    replica.swim().members().iter().cloned().collect()
}

/// An address for a log line: a member may advertise none.
fn shown(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "none".to_string(), |addr| addr.to_string())
}

/// Where the node's latest join stands, for [`Node::joined`](crate::Node::joined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinState {
    Joining,
    Joined,
    /// Another process answered as this node while it joined: it stopped.
    IdentityInUse(SocketAddr),
}

/// A check of whether this node's identity answers at `addr`.
struct IdentityChecked {
    addr: SocketAddr,
    incarnation: Incarnation,
    answered: bool,
}

/// A send of a sync message that failed, reported back by its task.
struct SendFailed {
    peer: NodeId,
    id: u64,
    role: Role,
}

pub(crate) struct Driver {
    replica: Replica,
    transport: Transport,
    /// The node's certificate and key, for a reload of the trust bundle.
    credentials: NodeCredentials,
    inbox: Inbox,
    /// ICMP errors the transport read for addresses we sent to.
    unreachable: Option<UnreachableReports>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NodeEvent>,
    /// The membership the handles read, and whether it changed since it was
    /// last published.
    members: Arc<RwLock<Arc<[Member]>>>,
    members_changed: bool,
    joined: watch::Sender<JoinState>,
    /// Whether the node has been part of a cluster since it started: a
    /// second instance found before then stops it.
    ever_joined: bool,
    epoch: Instant,
    /// The driver's own choices (where a push goes instead).
    rng: GossipRng,
    data_dir: Option<DataDir>,
    persisted_incarnation: u64,
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
    /// Addresses being checked for a second process holding this node's key.
    identity_checks: BTreeSet<SocketAddr>,
    checked_tx: mpsc::UnboundedSender<IdentityChecked>,
    checked_rx: mpsc::UnboundedReceiver<IdentityChecked>,
    /// When a refused sync from each peer was last logged.
    sync_refusals_logged: BTreeMap<NodeId, Instant>,
    /// The seeds as configured, which the resolving task watches.
    seeds: watch::Sender<Vec<Seed>>,
    /// This node's own addresses (bound and advertised), never a seed.
    own_addrs: [SocketAddr; 2],
    /// Most members connected to ahead of need (`NodeConfig::connect_ahead`).
    connect_ahead: usize,
    /// Connections being opened ahead of need.
    connecting_ahead: Arc<AtomicUsize>,
    /// When each member was last dialled ahead of need.
    tried_ahead: BTreeMap<NodeId, Instant>,
    /// When the next connections ahead of need are opened.
    next_connect_ahead: Instant,
}

/// What the driver is built from; see `Node::start`.
pub(crate) struct Parts {
    pub(crate) replica: Replica,
    pub(crate) transport: Transport,
    pub(crate) credentials: NodeCredentials,
    pub(crate) inbox: Inbox,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) members: Arc<RwLock<Arc<[Member]>>>,
    pub(crate) joined: watch::Sender<JoinState>,
    pub(crate) epoch: Instant,
    pub(crate) rng: GossipRng,
    pub(crate) data_dir: Option<DataDir>,
    pub(crate) persisted_incarnation: u64,
    pub(crate) seeds: watch::Sender<Vec<Seed>>,
    pub(crate) own_addrs: [SocketAddr; 2],
    pub(crate) connect_ahead: usize,
}

impl Driver {
    pub(crate) fn new(parts: Parts) -> Self {
        let (failures_tx, failures_rx) = mpsc::unbounded_channel();
        let (checked_tx, checked_rx) = mpsc::unbounded_channel();
        let ever_joined = *parts.joined.borrow() == JoinState::Joined;
        let mut parts = parts;
        let unreachable = parts.inbox.take_unreachable();
        Driver {
            replica: parts.replica,
            transport: parts.transport,
            credentials: parts.credentials,
            unreachable,
            inbox: parts.inbox,
            commands: parts.commands,
            events: parts.events,
            members: parts.members,
            members_changed: false,
            ever_joined,
            joined: parts.joined,
            epoch: parts.epoch,
            rng: parts.rng,
            data_dir: parts.data_dir,
            persisted_incarnation: parts.persisted_incarnation,
            counters: DriverCounters::default(),
            leave_waiters: Vec::new(),
            stopping: false,
            left: false,
            sends_in_flight: Arc::default(),
            failures_tx,
            failures_rx,
            send_errors: Default::default(),
            identity_checks: BTreeSet::new(),
            checked_tx,
            checked_rx,
            sync_refusals_logged: BTreeMap::new(),
            seeds: parts.seeds,
            own_addrs: parts.own_addrs,
            connect_ahead: parts.connect_ahead,
            connecting_ahead: Arc::default(),
            tried_ahead: BTreeMap::new(),
            next_connect_ahead: parts.epoch,
        }
    }

    /// The token ring of the members this node holds, from their ring
    /// states.
    fn ring(&self) -> RingView {
        let kv = self.replica.state().kv();
        RingView::new(self.replica.swim().members().iter().map(|member| {
            let state = kv
                .get(&member.id, RING_KEY)
                .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok());
            RingMember {
                id: member.id,
                name: member.meta.name().to_string(),
                member_status: member.status,
                state,
            }
        }))
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_duration(self.epoch.elapsed())
    }

    /// Runs until shut down, the handles are all dropped, or a leave completes.
    pub(crate) async fn run(mut self) {
        self.drain();
        while !self.stopping {
            let deadline = self
                .epoch
                .checked_add(self.replica.poll_timeout().since_epoch())
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                Some(failed) = self.failures_rx.recv() => {
                    self.replica.sync_send_failed(failed.peer, failed.role, failed.id);
                }
                Some(checked) = self.checked_rx.recv() => self.identity_checked(checked),
                received = self.inbox.recv() => match received {
                    Some(received) => self.handle_received(received),
                    None => break,
                },
                Some(report) = next_unreachable(&mut self.unreachable) => {
                    self.handle_unreachable(report);
                }
                () = tokio::time::sleep_until(deadline) => {
                    let now = self.now();
                    self.replica.handle_timeout(now);
                }
                () = tokio::time::sleep_until(self.next_connect_ahead),
                    if self.connect_ahead > 0 && !self.left =>
                {
                    self.next_connect_ahead = Instant::now() + CONNECT_AHEAD_INTERVAL;
                    self.connect_ahead();
                }
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

    /// The network says an address we sent to does not answer: evidence
    /// for SWIM, which judges what it is worth.
    fn handle_unreachable(&mut self, report: Unreachable) {
        tracing::debug!(addr = %report.addr, kind = ?report.kind, "unreachable");
        let now = self.now();
        self.replica
            .with_swim(now, |swim| swim.handle_unreachable(now, report.addr));
    }

    fn handle_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Join {
                seeds,
                addrs,
                reply,
            } => {
                self.seeds.send_replace(seeds);
                let addrs = seeds::other_than(addrs, &self.own_addrs);
                self.replica.join(now, addrs);
                let _ = reply.send(());
            }
            Command::SeedsResolved { seeds, addrs } => {
                if *self.seeds.borrow() == seeds {
                    let addrs = seeds::other_than(addrs, &self.own_addrs);
                    if addrs != self.replica.swim().seeds() {
                        debug!(?addrs, "the seeds resolve to other addresses");
                        self.replica.with_swim(now, |swim| swim.set_seeds(addrs));
                    }
                }
            }
            Command::Set { key, value, reply } => {
                let result = self.replica.set(now, key, value).map_err(Error::from);
                if result.is_ok() {
                    self.store_keys();
                    self.members_changed = true;
                }
                let _ = reply.send(result);
            }
            Command::Delete { key, reply } => {
                let result = self.replica.delete(now, &key).map_err(Error::from);
                if matches!(result, Ok(Some(_))) {
                    self.store_keys();
                    self.members_changed = true;
                }
                let _ = reply.send(result);
            }
            Command::Ring { reply } => {
                let _ = reply.send(self.ring());
            }
            Command::Get { owner, key, reply } => {
                let _ = reply.send(self.replica.state().kv().get(&owner, &key).cloned());
            }
            Command::Keys { owner, reply } => {
                let keys = self
                    .replica
                    .state()
                    .kv()
                    .node(&owner)
                    .map(|node| node.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                let _ = reply.send(keys);
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Command::ReloadTrust { trust, reply } => {
                let result = self
                    .transport
                    .reload(&self.credentials, &trust)
                    .map_err(Error::Transport);
                if result.is_ok() {
                    apply_revocations(&mut self.replica, now, trust.revoked());
                    self.members_changed = true;
                }
                let _ = reply.send(result);
            }
            Command::Leave(reply) => {
                self.leave_waiters.push(reply);
                self.replica.leave(now);
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    /// Persists the node's own keys, so a restart keeps them. The write
    /// already took effect in memory; a failure to persist it is logged.
    fn store_keys(&self) {
        let Some(dir) = &self.data_dir else { return };
        if let Err(err) = dir.store_keys(&self.replica.stored_keys()) {
            warn!(error = %err, "cannot persist the node's keys; a restart will lose the latest writes");
        }
    }

    fn handle_received(&mut self, received: Received) {
        let now = self.now();
        // The wait between the transport and this task is the input lag the
        // machine weighs before it declares a death.
        let arrived = Instant::from_std(received.arrived);
        let arrived = Timestamp::from_duration(arrived.saturating_duration_since(self.epoch));
        trace!(from = %received.from, bytes = received.bytes.len(), channel = ?received.channel, "received");
        match received.channel {
            Channel::Datagram => {
                self.handle_swim(now, arrived, received.from, received.addr, &received.bytes)
            }
            Channel::Stream => match stream::decode(&received.bytes) {
                Ok(StreamMessage::Swim(frame)) => {
                    self.handle_swim(now, arrived, received.from, received.addr, frame);
                }
                Ok(StreamMessage::Sync { role, id, parts }) => {
                    let span = debug_span!("sync", peer = %received.from, role = ?role.peer(), id);
                    let _entered = span.enter();
                    self.replica
                        .handle_sync(now, received.from, received.addr, role, id, parts);
                }
                Err(err) => {
                    self.counters.stream_decode_errors += 1;
                    debug!(from = %received.from, error = %err, "undecodable stream message");
                }
            },
        }
    }

    fn handle_swim(
        &mut self,
        now: Timestamp,
        arrived: Timestamp,
        from: NodeId,
        addr: SocketAddr,
        frame: &[u8],
    ) {
        // The machine counts every refusal by kind.
        if let Err(err) = self
            .replica
            .handle_late_datagram(now, arrived, from, addr, frame)
        {
            debug!(%from, error = %err, "refused a SWIM frame");
        }
    }

    // ----- outputs -----

    /// Sends and publishes everything the replica has to give.
    fn drain(&mut self) {
        let transmits: Vec<Transmit> =
            std::iter::from_fn(|| self.replica.poll_transmit()).collect();
        let mut pushed: Vec<NodeId> = transmits
            .iter()
            .filter(|t| t.push)
            .filter_map(|t| t.to)
            .collect();
        for transmit in transmits {
            self.send_swim(transmit, &mut pushed);
        }
        while let Some(transmit) = self.replica.poll_sync() {
            self.send_sync(transmit);
        }
        while let Some(event) = self.replica.poll_event() {
            self.handle_event(event);
        }
        self.keep_incarnation();
        if self.members_changed {
            self.members_changed = false;
            let snapshot = snapshot(&self.replica);
            *self.members.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
        }
    }

    fn handle_event(&mut self, event: ReplicaEvent) {
        match event {
            ReplicaEvent::Swim(event) => self.handle_swim_event(&event),
            ReplicaEvent::KeyChanged(change) => self.publish(NodeEvent::KeyChanged {
                owner: change.owner,
                key: change.key,
                value: change.value,
            }),
            ReplicaEvent::SyncEnded {
                peer,
                role,
                error,
                stats,
            } => {
                debug!(
                    %peer,
                    role = ?role,
                    clean = error.is_none(),
                    error = ?error,
                    bytes_sent = stats.bytes_sent,
                    bytes_received = stats.bytes_received,
                    entries_received = stats.entries_received,
                    "sync ended"
                );
                if let Some(SyncError::Refused(refused)) = &error
                    && let Some(reason) = refused.refusal()
                {
                    self.sync_refused(peer, reason, refused);
                }
            }
            _ => {}
        }
    }

    fn handle_swim_event(&mut self, event: &Event) {
        // Every event but these changes a member's record.
        self.members_changed |= !matches!(
            event,
            Event::StateRumor { .. } | Event::StateDigestDiffers { .. } | Event::LeaveCompleted
        );
        match event {
            Event::JoinCompleted { via } => {
                info!(%via, "joined the cluster");
                self.joined.send_replace(JoinState::Joined);
                self.ever_joined = true;
                self.next_connect_ahead = Instant::now() + CONNECT_AHEAD_DELAY;
            }
            Event::JoinRefused {
                by,
                reason: reason @ JoinRefusal::IdentityInUse { addr, incarnation },
            } => {
                warn!(%by, %reason, "a seed refused this node's join; checking whether this node's identity answers there");
                self.check_identity(*addr, *incarnation);
            }
            Event::JoinRefused { by, reason } => {
                error!(%by, %reason, "a seed refused this node's join; retrying with backoff (raise the cluster's member cap, or wait for departed members to be forgotten)");
            }
            Event::ClaimedElsewhere { addr, incarnation } => {
                self.check_identity(*addr, *incarnation);
            }
            Event::AddressConflict {
                member,
                held,
                claimed,
                origin,
            } => {
                error!(
                    %member,
                    held = %shown(*held),
                    claimed = %shown(*claimed),
                    claimed_by = %origin,
                    "one identity at two addresses: kept the member where it is held and refused the claim; if both answer, another process holds that member's key (was a data directory or certificate copied?)"
                );
            }
            Event::ClaimRefused {
                from,
                subject,
                reason: Refusal::Stale,
                error,
            } => {
                debug!(%from, %subject, %error, "refused a stale claim (a late rumor, or a replay)")
            }
            Event::ClaimRefused {
                from,
                subject,
                reason,
                error,
            } => {
                warn!(%from, %subject, %reason, %error, "refused a claim a member passed on; nothing of it was applied")
            }
            Event::JoinerRefused {
                member,
                addr,
                reason,
            } => {
                warn!(%member, %addr, %reason, "refused a joiner, and told it why");
            }
            Event::BackFromStall {
                behind,
                incarnation,
            } => {
                warn!(
                    behind_ms = behind.as_millis(),
                    incarnation = incarnation.get(),
                    "this node was stalled (its timers ran late); announced itself alive"
                );
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
            Event::Suspected { member, by, .. } => info!(member = %member.id, %by, "suspected"),
            Event::Failed { member, provenance } => {
                info!(member = %member.id, declared_by = %provenance.declared_by, "failed");
            }
            Event::Joined(member) => debug!(member = %member.id, "joined"),
            Event::Left(member) => info!(member = %member.id, "left"),
            _ => {}
        }
        if let Some(event) = NodeEvent::from_swim(event) {
            self.publish(event);
        }
    }

    /// A sync `peer` started or answered carried records or writes that were
    /// refused, which ended it: logged at most once per peer per interval,
    /// and published.
    fn sync_refused(&mut self, peer: NodeId, reason: Refusal, error: &gossip_core::Error) {
        let now = Instant::now();
        let due = self
            .sync_refusals_logged
            .get(&peer)
            .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_INTERVAL);
        if due {
            self.sync_refusals_logged
                .retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
            self.sync_refusals_logged.insert(peer, now);
            warn!(%peer, %reason, %error, "refused a sync whose records or writes were not as their makers signed them; nothing of it was applied");
        }
        self.publish(NodeEvent::ClaimRefused { from: peer, reason });
    }

    /// Finds out whether a process answers as this node at `addr`, where a
    /// live record of it was heard of; the answer comes back to
    /// [`identity_checked`](Driver::identity_checked).
    fn check_identity(&mut self, addr: SocketAddr, incarnation: Incarnation) {
        let own = self.replica.swim().members().local().meta.addr();
        if own == Some(addr) || !self.identity_checks.insert(addr) {
            return;
        }
        let transport = self.transport.clone();
        let id = self.replica.swim().local_id();
        let checked = self.checked_tx.clone();
        tokio::spawn(async move {
            let answered = matches!(
                tokio::time::timeout(IDENTITY_CHECK_TIMEOUT, transport.check_identity(id, addr))
                    .await,
                Ok(Ok(()))
            );
            let _ = checked.send(IdentityChecked {
                addr,
                incarnation,
                answered,
            });
        });
    }

    fn identity_checked(&mut self, checked: IdentityChecked) {
        let IdentityChecked {
            addr,
            incarnation,
            answered,
        } = checked;
        self.identity_checks.remove(&addr);
        let own = self.replica.swim().members().local().meta.addr();
        if !answered {
            info!(
                elsewhere = %addr,
                incarnation = incarnation.get(),
                "peers still hold an earlier life of this node at another address; it does not answer, and this life takes its place once peers find it gone"
            );
            return;
        }
        self.counters.identity_answers_elsewhere += 1;
        error!(
            elsewhere = %addr,
            here = %shown(own),
            "another process holds this node's identity and answers at {addr}: stop one of them (was a data directory or certificate copied?); the cluster keeps whichever address it held first"
        );
        self.publish(NodeEvent::IdentityInUse { addr });
        if *self.joined.borrow() == JoinState::Joining {
            self.joined.send_replace(JoinState::IdentityInUse(addr));
            if !self.ever_joined {
                error!(elsewhere = %addr, "stopping: this node will not start as a second instance of its identity");
                self.stopping = true;
            }
        }
    }

    fn publish(&self, event: NodeEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    /// Keeps the incarnation on disk at least as high as the one in use.
    fn keep_incarnation(&mut self) {
        let incarnation = self.replica.swim().members().local().incarnation;
        if incarnation.get() > self.persisted_incarnation
            && let Some(dir) = &self.data_dir
        {
            match dir.store_incarnation(incarnation) {
                Ok(()) => self.persisted_incarnation = incarnation.get(),
                Err(err) => warn!(error = %err, "could not store the incarnation"),
            }
        }
    }

    /// Opens connections to a few live members this node has none with and
    /// is the dialling end for, while it holds fewer than `connect_ahead`:
    /// the handshakes of the first probe rotation then happen within
    /// seconds after the join, not spread over the rotation (a minute at 64
    /// members).
    fn connect_ahead(&mut self) {
        if *self.joined.borrow() != JoinState::Joined {
            return;
        }
        // A set: the scan below looks up every member in it.
        let connected: BTreeSet<NodeId> = self.transport.connected_peers().into_iter().collect();
        let room = self.connect_ahead.saturating_sub(connected.len()).min(
            CONNECT_AHEAD_AT_ONCE.saturating_sub(self.connecting_ahead.load(Ordering::Relaxed)),
        );
        if room == 0 {
            return;
        }
        let now = Instant::now();
        self.tried_ahead
            .retain(|_, tried| now.saturating_duration_since(*tried) < CONNECT_AHEAD_RETRY);
        let members = self.replica.swim().members();
        let local = members.local_id();
        let mut wanted: Vec<(NodeId, SocketAddr)> = members
            .iter()
            .filter(|member| {
                member.status == MemberStatus::Alive
                    && member.id != local
                    && dials_first(&local, &member.id)
                    && !connected.contains(&member.id)
                    && !self.tried_ahead.contains_key(&member.id)
            })
            .filter_map(|member| Some((member.id, member.meta.addr()?)))
            .collect();
        for _ in 0..room.min(wanted.len()) {
            let (peer, addr) = wanted.swap_remove(self.rng.random_range(0..wanted.len()));
            self.tried_ahead.insert(peer, now);
            let transport = self.transport.clone();
            let in_flight = InFlight::new(&self.connecting_ahead);
            self.counters.connects_ahead += 1;
            tokio::spawn(async move {
                let _in_flight = in_flight;
                let connected =
                    tokio::time::timeout(SEND_TIMEOUT, transport.connect(Some(peer), addr)).await;
                if !matches!(connected, Ok(Ok(_))) {
                    debug!(%peer, %addr, "no connection ahead of need");
                }
            });
        }
    }

    /// A random alive member this node already has a connection to, none in
    /// `exclude`: where a push goes instead of a member that would cost a
    /// handshake.
    fn connected_member(&mut self, exclude: &[NodeId]) -> Option<(NodeId, SocketAddr)> {
        let members = self.replica.swim().members();
        // A connection under this node's own id is another process holding
        // its key, never a member to push to.
        let local = members.local_id();
        let candidates: Vec<(NodeId, SocketAddr)> = self
            .transport
            .connected_peers()
            .into_iter()
            .filter(|id| *id != local && !exclude.contains(id))
            .filter_map(|id| {
                let member = members.get(&id)?;
                let addr = member.meta.addr()?;
                (member.status == MemberStatus::Alive).then_some((id, addr))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.random_range(0..candidates.len())])
    }

    /// Sends one SWIM frame. `pushed` holds the members this round's pushes
    /// go to, so a push moved off an unconnected member lands on a member
    /// no other push of the round reaches: F pushes, F distinct peers.
    fn send_swim(&mut self, mut transmit: Transmit, pushed: &mut Vec<NodeId>) {
        // A push to a member not yet connected would cost a handshake; during
        // a join storm, pushes to fresh random members would connect nearly
        // every pair. Any other connected live member will do.
        if transmit.push
            && transmit
                .to
                .is_some_and(|to| self.transport.max_datagram_size(&to).is_none())
            && let Some((id, addr)) = self.connected_member(pushed)
        {
            transmit.to = Some(id);
            transmit.addr = addr;
            pushed.push(id);
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
            let on_stream = || async {
                let framed = stream::encode_swim(&payload);
                tokio::time::timeout(
                    SEND_TIMEOUT,
                    transport.send_message(transmit.to, transmit.addr, &framed),
                )
                .await
                .map(|r| r.map(|_| ()))
            };
            // A fallback probe or its answer, and a suspect's last call,
            // go on a stream, which retransmits what the network loses; so
            // does a frame too large for a datagram.
            let result = if transmit.reliable {
                on_stream().await
            } else {
                let sent = tokio::time::timeout(
                    SEND_TIMEOUT,
                    transport.send_datagram(transmit.to, transmit.addr, payload.clone()),
                )
                .await;
                match sent {
                    Ok(Err(TransportError::DatagramTooLarge { .. })) => on_stream().await,
                    other => other.map(|r| r.map(|_| ())),
                }
            };
            if !matches!(result, Ok(Ok(()))) {
                errors.fetch_add(1, Ordering::Relaxed);
                debug!(to = %transmit.addr, "SWIM send failed");
            }
        });
    }

    /// Sends a sync turn on a stream of its own task; a failure ends the
    /// session.
    fn send_sync(&mut self, transmit: SyncTransmit) {
        let SyncTransmit {
            peer,
            addr,
            role,
            id,
            parts,
        } = transmit;
        let message = stream::encode_sync(role, id, &parts);
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

    fn metrics(&self) -> Metrics {
        let members = self.replica.swim().members();
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
            local_health: self.replica.swim().local_health(),
            input_lag_ms: self.replica.swim().input_lag().as_millis() as u64,
            incarnation: members.local().incarnation.get(),
            swim: self.replica.swim().stats().clone(),
            sync: self.replica.stats(),
            transport: self.transport.stats(),
            driver: counters,
            kv_keys: self.replica.state().kv().local().len() as u64,
            kv_owners: self.replica.state().kv().owners().count() as u64,
        }
    }
}

/// Whether `local` is the end of its pair with `peer` that opens their
/// connection ahead of need: one end of each pair dials, and each node
/// dials about half of its peers.
fn dials_first(local: &NodeId, peer: &NodeId) -> bool {
    let (low, high) = if local < peer {
        (local, peer)
    } else {
        (peer, local)
    };
    // Ids are hashes: the parity of a byte of each is a fair coin per pair.
    let low_dials = (low.as_bytes()[0] ^ high.as_bytes()[0]) & 1 == 0;
    low_dials == (local == low)
}

/// The next unreachable report; never, without a reader of them.
async fn next_unreachable(reports: &mut Option<UnreachableReports>) -> Option<Unreachable> {
    match reports {
        Some(reports) => reports.recv().await,
        None => std::future::pending().await,
    }
}
