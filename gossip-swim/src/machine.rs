//! The SWIM state machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gossip_core::{
    Entry, GossipRng, HEADER_LEN, Incarnation, Member, MemberChange, MemberMeta, MemberStatus,
    Membership, MembershipEvent, NodeId, OutputQueue, PackedRumors, ProbeOrder, Rumor, RumorQueue,
    Timestamp, Transition, choose_random, decode_frame, encode_frame, encoded_len,
};
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::error::Error;
use crate::event::{Event, Provenance, Transmit};
use crate::lifeguard::{Awareness, Suspicion, suspicion_bounds};
use crate::message::{Message, StateDigest, TargetTag};
use crate::stats::Stats;

/// A helper nacks after this fraction of the probe timeout without an ack
/// from the target, so that the nack is back before the requester's probe
/// ends (it asked one probe timeout into the period).
const NACK_AFTER: f64 = 0.8;

/// Timers that belong to one probe, forward or suspicion. Each carries what
/// identifies its owner, so a timer whose owner has moved on is a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The direct ack of probe `seq` is overdue: probe indirectly.
    ProbeTimeout { seq: u32 },
    /// Probe `seq`'s period is over: conclude it.
    ProbeEnd { seq: u32 },
    /// The target of our forwarded probe `seq` did not answer: nack.
    Forward { seq: u32 },
    /// A suspicion may have run out.
    Suspicion { subject: NodeId, token: u64 },
    /// A suspicion runs out in one probe timeout: ping the suspect once more.
    LastCall { subject: NodeId, token: u64 },
    /// The push interval is over: push the news that waited for it.
    Push,
}

/// The probe in flight.
#[derive(Debug, Clone)]
struct Probe {
    seq: u32,
    target: NodeId,
    acked: bool,
    /// Helpers asked to probe indirectly, and whether each nacked.
    helpers: Vec<(NodeId, bool)>,
}

/// A probe we make on someone else's behalf.
#[derive(Debug, Clone)]
struct Forward {
    requester: NodeId,
    requester_addr: SocketAddr,
    requester_seq: u32,
    target: NodeId,
}

#[derive(Debug, Clone)]
struct Joining {
    delay: Duration,
    next_attempt: Timestamp,
}

#[derive(Debug, Clone, Copy)]
struct Leaving {
    deadline: Timestamp,
    completed: bool,
}

/// SWIM failure detection with the Lifeguard extensions, as a sans-IO state
/// machine.
///
/// The machine never reads a clock, opens a socket or spawns a task. Its
/// driver feeds it inputs, each with the current time, and after every input
/// drains its outputs:
///
/// * inputs: [`handle_datagram`](Swim::handle_datagram) (bytes from an
///   authenticated peer), [`handle_timeout`](Swim::handle_timeout), and the
///   commands [`join`](Swim::join), [`leave`](Swim::leave),
///   [`update_meta`](Swim::update_meta),
///   [`set_state_version`](Swim::set_state_version),
///   [`broadcast_state`](Swim::broadcast_state);
/// * outputs: [`poll_transmit`](Swim::poll_transmit),
///   [`poll_event`](Swim::poll_event), [`poll_timeout`](Swim::poll_timeout).
///
/// # Example
///
/// A driver loop for two machines wired together in memory:
///
/// ```
/// use std::net::SocketAddr;
/// use gossip_core::{ClusterId, Incarnation, MemberMeta, MemberStatus, NodeId, Timestamp};
/// use gossip_swim::{Config, Swim};
///
/// let config = Config::lan(ClusterId::from_name("doc"), 2);
/// let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
/// let mut nodes: Vec<Swim> = [1u8, 2].iter().map(|&n| {
///     let id = NodeId::from_public_key(&[n]);
///     let meta = MemberMeta::new(format!("n{n}"), [addr(7000 + u16::from(n))]);
///     let mut config = config.clone();
///     config.rng_seed = u64::from(n);
///     Swim::new(config, id, meta, Incarnation::ZERO, Timestamp::ZERO)
/// }).collect();
///
/// let mut now = Timestamp::ZERO;
/// nodes[1].join(now, vec![addr(7001)]);
/// for _ in 0..50 {
///     // Deliver every datagram, then move time to the earliest deadline.
///     for i in 0..2 {
///         while let Some(t) = nodes[i].poll_transmit() {
///             let to = usize::from(t.addr.port() - 7001);
///             let (from, from_addr) = (nodes[i].local_id(), addr(7001 + i as u16));
///             nodes[to].handle_datagram(now, from, from_addr, &t.payload).unwrap();
///         }
///         while nodes[i].poll_event().is_some() {}
///     }
///     now = nodes.iter().filter_map(|n| n.poll_timeout()).min().unwrap();
///     for node in &mut nodes { node.handle_timeout(now); }
/// }
/// assert_eq!(nodes[0].members().count(MemberStatus::Alive), 2);
/// ```
#[derive(Debug, Clone)]
pub struct Swim {
    config: Config,
    rng: GossipRng,
    now: Timestamp,
    members: Membership,
    rumors: RumorQueue,
    order: ProbeOrder,
    awareness: Awareness,
    next_seq: u32,
    next_token: u64,
    probe: Option<Probe>,
    forwards: BTreeMap<u32, Forward>,
    suspicions: BTreeMap<NodeId, Suspicion>,
    timers: BTreeSet<(Timestamp, Timer)>,
    next_probe: Option<Timestamp>,
    next_reconnect: Timestamp,
    next_sync: Option<Timestamp>,
    next_collect: Timestamp,
    seeds: Vec<SocketAddr>,
    joining: Option<Joining>,
    leaving: Option<Leaving>,
    fresh_news: bool,
    /// Whether the fresh news includes a suspicion, death, departure or
    /// refutation.
    urgent_news: bool,
    /// When news was last pushed.
    last_push: Option<Timestamp>,
    /// Whether news waits for a `Timer::Push`.
    push_waiting: bool,
    state_digest: Option<StateDigest>,
    max_datagram: usize,
    transmits: OutputQueue<Transmit>,
    events: OutputQueue<Event>,
    stats: Stats,
}

impl Swim {
    /// A machine for the node `local`, alive at `incarnation` (0 for a new
    /// node; one more than the last persisted value for a restarted one).
    /// Probing starts after a random part of the first probe interval, so
    /// nodes started together do not probe in lockstep.
    pub fn new(
        config: Config,
        local: NodeId,
        meta: MemberMeta,
        incarnation: Incarnation,
        now: Timestamp,
    ) -> Self {
        let mut record = Member::new(local, meta);
        record.incarnation = incarnation;
        let mut rng = GossipRng::seed_from_u64(config.rng_seed);
        let interval_nanos = u64::try_from(config.probe_interval.as_nanos()).unwrap_or(u64::MAX);
        let first_probe = now + Duration::from_nanos(rng.random_range(0..interval_nanos.max(1)));
        Swim {
            rng,
            now,
            members: Membership::new(record, config.limits.clone()),
            rumors: RumorQueue::new(config.retransmit_mult, config.limits.clone()),
            order: ProbeOrder::default(),
            awareness: Awareness::new(config.awareness_max),
            next_seq: 0,
            next_token: 0,
            probe: None,
            forwards: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            timers: BTreeSet::new(),
            next_probe: Some(first_probe),
            next_reconnect: now + config.reconnect_interval,
            next_sync: config.sync_interval.map(|every| now + every),
            next_collect: now + config.reconnect_interval,
            seeds: Vec::new(),
            joining: None,
            leaving: None,
            fresh_news: false,
            urgent_news: false,
            last_push: None,
            push_waiting: false,
            state_digest: None,
            max_datagram: config.max_datagram_bytes,
            transmits: OutputQueue::default(),
            events: OutputQueue::default(),
            stats: Stats::default(),
            config,
        }
    }

    // ----- accessors -----

    /// The local node's id.
    pub fn local_id(&self) -> NodeId {
        self.members.local_id()
    }

    /// The membership table as this node sees it.
    pub fn members(&self) -> &Membership {
        &self.members
    }

    /// The local health score (Lifeguard): 0 is healthy, up to
    /// `awareness_max - 1`.
    pub fn local_health(&self) -> u32 {
        self.awareness.score()
    }

    /// The probe interval in force: the configured one scaled by local health.
    pub fn probe_interval(&self) -> Duration {
        self.awareness.scale(self.config.probe_interval)
    }

    /// Counters, for metrics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Rumors waiting to be piggybacked.
    pub fn queued_rumors(&self) -> usize {
        self.rumors.len()
    }

    /// Tells the machine how large a datagram the path takes now (for QUIC,
    /// the connection's current maximum datagram size).
    pub fn set_max_datagram_bytes(&mut self, bytes: usize) {
        self.max_datagram = bytes;
    }

    // ----- outputs -----

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// When [`handle_timeout`](Swim::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let mut earliest = self.next_reconnect.min(self.next_collect);
        for candidate in [
            self.next_probe,
            self.next_sync,
            self.timers.first().map(|(at, _)| *at),
            self.joining.as_ref().map(|j| j.next_attempt),
            self.leaving.filter(|l| !l.completed).map(|l| l.deadline),
        ]
        .into_iter()
        .flatten()
        {
            earliest = earliest.min(candidate);
        }
        Some(earliest)
    }

    // ----- commands -----

    /// Joins a cluster through `seeds`: asks each for its membership, and
    /// keeps asking, with backoff from `join_retry_initial` to
    /// `join_retry_max`, until one answers. The seeds are also re-contacted
    /// whenever this node finds itself alone.
    pub fn join(&mut self, now: Timestamp, seeds: Vec<SocketAddr>) {
        self.advance(now);
        self.seeds = seeds;
        self.joining = Some(Joining {
            delay: self.config.join_retry_initial,
            next_attempt: self.now,
        });
        self.attempt_join();
        self.flush();
    }

    /// Leaves the cluster gracefully: announces `Left`, stops probing, and
    /// keeps answering until the announcement has been sent its retransmit
    /// budget or `leave_timeout` passes; then emits
    /// [`Event::LeaveCompleted`].
    pub fn leave(&mut self, now: Timestamp) {
        self.advance(now);
        if self.leaving.is_some() {
            return;
        }
        let record = self.members.leave().clone();
        let origin = record.id;
        self.queue_rumor(Rumor::Member {
            member: record,
            origin,
        });
        self.next_probe = None;
        self.probe = None;
        self.leaving = Some(Leaving {
            deadline: self.now + self.config.leave_timeout,
            completed: false,
        });
        self.flush();
    }

    /// Replaces the local name and addresses, raising the incarnation so the
    /// change wins everywhere.
    ///
    /// # Errors
    ///
    /// [`Error::Core`] for metadata over a cap or an exhausted incarnation;
    /// nothing changes then.
    pub fn update_meta(&mut self, now: Timestamp, meta: MemberMeta) -> Result<(), Error> {
        self.advance(now);
        let record = self.members.set_local_meta(meta)?.clone();
        self.queue_rumor(Rumor::Member {
            member: record,
            origin: self.local_id(),
        });
        self.flush();
        Ok(())
    }

    /// Announces that the local key/value state reached `version`.
    pub fn set_state_version(&mut self, now: Timestamp, version: u64) {
        self.advance(now);
        if version <= self.members.local().state_version {
            return;
        }
        self.members.set_local_state_version(version);
        let record = self.members.local().clone();
        self.queue_rumor(Rumor::Member {
            member: record,
            origin: self.local_id(),
        });
        self.flush();
    }

    /// Spreads a key/value write (the local node's, or news heard from a
    /// peer) by piggybacking, in the data lane.
    ///
    /// # Errors
    ///
    /// [`Error::Core`] if the write is over a cap.
    pub fn broadcast_state(
        &mut self,
        now: Timestamp,
        owner: NodeId,
        entry: Entry,
    ) -> Result<(), Error> {
        self.advance(now);
        self.rumors.push(Rumor::State { owner, entry })?;
        self.fresh_news = true;
        self.flush();
        Ok(())
    }

    /// Sets the digest of the driver's replicated state that rides every ping
    /// from now on (`None`, the default, sends none). A node that receives a
    /// ping whose digest differs from its own emits
    /// [`Event::StateDigestDiffers`], so the two can reconcile only when
    /// their states differ.
    pub fn set_state_digest(&mut self, digest: Option<StateDigest>) {
        self.state_digest = digest;
    }

    /// Merges member records that the authenticated peer `from` passed on by
    /// another path (for example an anti-entropy sync), under the same rules
    /// as its push-pull table: `from` speaks for itself, alive and left
    /// records of others are relayed self-claims, accusations are its own.
    /// Changes are events and rumors as if gossiped.
    pub fn merge_records(
        &mut self,
        now: Timestamp,
        from: NodeId,
        records: impl IntoIterator<Item = Member>,
    ) {
        self.advance(now);
        self.apply_records(from, records);
        self.flush_excluding(&[from]);
    }

    /// Fills the table with `records` (for example from a snapshot, or a
    /// simulation that starts from a converged cluster), as if each member
    /// had announced itself, without queueing rumors or pushing gossip: the
    /// records are not news to anyone. Emits a [`Event::Joined`] for each new
    /// member. Records about the local node and records refused by the
    /// table's rules are skipped.
    ///
    /// Records passed as `Arc<Member>` are held, not copied, so tables
    /// restored from one set of records share them.
    pub fn restore_members(
        &mut self,
        now: Timestamp,
        records: impl IntoIterator<Item = impl Into<Arc<Member>>>,
    ) {
        self.advance(now);
        let records = records.into_iter();
        self.order.reserve_exact(records.size_hint().0);
        for record in records {
            let record: Arc<Member> = record.into();
            if record.id == self.local_id() {
                continue;
            }
            let origin = record.id;
            if let Ok(Some(MembershipEvent::Changed(change))) =
                self.members.apply_shared(self.now, record, origin)
            {
                self.update_rotation(change.before.as_ref(), &change.after);
                self.events.push(Event::Joined(change.after));
            }
        }
    }

    // ----- inputs -----

    /// Feeds a datagram that the transport received from the authenticated
    /// peer `from` at `from_addr`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`], [`Error::Misdirected`]:
    /// the datagram is dropped, counted, and nothing else changes. Rumors in
    /// an accepted frame that break a rule are refused one by one and counted
    /// in [`Stats::rejected_claims`]; the rest of the frame still counts.
    pub fn handle_datagram(
        &mut self,
        now: Timestamp,
        from: NodeId,
        from_addr: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.advance(now);
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let frame = match decode_frame::<Message>(bytes, self.config.cluster, &self.config.limits) {
            Ok(frame) => frame,
            Err(source) => {
                self.stats.decode_errors += 1;
                match source {
                    gossip_core::Error::ForeignCluster { .. } => self.stats.foreign_cluster += 1,
                    gossip_core::Error::UnsupportedVersion { .. } => self.stats.bad_version += 1,
                    gossip_core::Error::FrameTooLarge { .. } => self.stats.oversized += 1,
                    _ => {}
                }
                return Err(Error::Decode { from, source });
            }
        };
        if let Message::Ping { target, .. } | Message::ReliablePing { target, .. } = &frame.body
            && *target != TargetTag::of(&self.local_id())
        {
            self.stats.misdirected += 1;
            return Err(Error::Misdirected {
                from,
                target: *target,
            });
        }
        for rumor in frame.rumors {
            self.handle_rumor(from, rumor);
        }
        // A member that talks to us but that we have never heard of (its
        // announcement ran out of retransmits before reaching us): ask for
        // its table, which starts with its own record.
        let stranger =
            self.members.get(&from).is_none() && !matches!(frame.body, Message::Sync { .. });
        self.handle_message(from, from_addr, frame.body);
        if stranger && self.leaving.is_none() {
            self.send_table(Some(from), from_addr, false);
        }
        self.remind_suspect(from, Some(from_addr));
        // Whatever news this datagram brought, its sender already has.
        self.flush_excluding(&[from]);
        Ok(())
    }

    /// Runs every timer due at `now`. Calling it early, late or twice is
    /// harmless: timers that are not due, or whose probe or suspicion has
    /// moved on, do nothing.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.advance(now);
        while let Some(&(at, timer)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.pop_first();
            self.fire(timer);
        }
        if self.next_probe.is_some_and(|at| at <= self.now) {
            self.probe_tick();
        }
        if self
            .joining
            .as_ref()
            .is_some_and(|j| j.next_attempt <= self.now)
        {
            self.attempt_join();
        }
        if self.next_reconnect <= self.now {
            self.next_reconnect = self.now + self.config.reconnect_interval;
            self.reconnect();
        }
        if self.next_sync.is_some_and(|at| at <= self.now) {
            self.next_sync = self.config.sync_interval.map(|every| self.now + every);
            self.sync_with_random_member();
        }
        if self.next_collect <= self.now {
            self.next_collect = self.now + self.config.reconnect_interval;
            self.collect_departed();
        }
        self.flush();
    }

    // ----- internals -----

    /// Clamps time so it never goes back.
    fn advance(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
    }

    fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    fn schedule(&mut self, at: Timestamp, timer: Timer) {
        self.timers.insert((at, timer));
    }

    fn address_of(&self, id: &NodeId) -> Option<SocketAddr> {
        self.members.get(id)?.meta.addrs().first().copied()
    }

    fn queue_rumor(&mut self, rumor: Rumor) {
        // Suspicions, deaths, departures and refutations (any alive record
        // past incarnation 0) race a timer somewhere; joins and state do not.
        let urgent = matches!(&rumor, Rumor::Member { member, .. }
            if member.status != MemberStatus::Alive || member.incarnation > Incarnation::ZERO);
        self.urgent_news |= urgent;
        match self.rumors.push(rumor) {
            Ok(_) => self.fresh_news = true,
            // Only our own oversized records can fail here; they were
            // validated when set, so this is unreachable in practice.
            Err(_) => self.stats.rejected_claims += 1,
        }
    }

    /// Encodes and queues one datagram, filling the room left with rumors.
    fn send(&mut self, to: Option<NodeId>, addr: SocketAddr, message: Message, with_rumors: bool) {
        self.send_on(to, addr, message, with_rumors, false);
    }

    /// As [`send`](Swim::send), over a reliable channel if `reliable`.
    fn send_on(
        &mut self,
        to: Option<NodeId>,
        addr: SocketAddr,
        message: Message,
        with_rumors: bool,
        reliable: bool,
    ) {
        let rumors = if with_rumors {
            let room = self
                .max_datagram
                .saturating_sub(HEADER_LEN + encoded_len(&message));
            self.rumors.pack(room, self.members.live_count())
        } else {
            PackedRumors::empty()
        };
        let mut payload = Vec::with_capacity(self.max_datagram);
        // The only failure is a frame over the configured cap, which our own
        // sizing prevents; such a frame is dropped rather than sent.
        if encode_frame(
            self.config.cluster,
            &message,
            &rumors,
            &self.config.limits,
            &mut payload,
        )
        .is_ok()
        {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += payload.len() as u64;
            let push = matches!(message, Message::Gossip { .. });
            self.transmits.push(Transmit {
                to,
                addr,
                payload,
                push,
                reliable,
            });
        }
    }

    /// Work left at the end of every input: push fresh rumors, finish a leave.
    fn flush(&mut self) {
        self.flush_excluding(&[]);
    }

    /// As [`flush`](Swim::flush), pushing to no one in `exclude`.
    fn flush_excluding(&mut self, exclude: &[NodeId]) {
        if self.fresh_news && !self.push_waiting {
            match self.last_push.map(|at| at + self.config.push_interval) {
                Some(next) if next > self.now => {
                    self.push_waiting = true;
                    self.schedule(next, Timer::Push);
                }
                _ => self.push_news(exclude),
            }
        }
        self.finish_leave();
    }

    /// Pushes the queued rumors to `gossip_fanout` members, none in `exclude`.
    fn push_news(&mut self, exclude: &[NodeId]) {
        if self.config.gossip_fanout > 0 {
            // Urgent news goes to members drawn afresh, so every push reaches
            // new nodes. Other news goes to the members next in the probe
            // rotation: random per node, few at a time, about to be probed
            // anyway (see `ProbeOrder::upcoming`), so a join storm does not
            // make every node contact every other at once. Both cost
            // O(fanout), not O(n), per piece of news.
            let fanout = self.config.gossip_fanout;
            let targets = if self.urgent_news {
                self.order.choose_random(fanout, exclude, &mut self.rng)
            } else {
                self.order.upcoming(fanout, exclude)
            };
            for target in targets {
                if self.rumors.is_empty() {
                    break;
                }
                if let Some(addr) = self.address_of(&target) {
                    self.stats.gossip_pushes += 1;
                    self.last_push = Some(self.now);
                    self.send(
                        Some(target),
                        addr,
                        Message::Gossip {
                            state_digest: self.state_digest,
                        },
                        true,
                    );
                }
            }
        }
        self.fresh_news = false;
        self.urgent_news = false;
    }

    /// A leave is complete once its announcement is out, or at its deadline.
    fn finish_leave(&mut self) {
        if let Some(leaving) = &mut self.leaving
            && !leaving.completed
        {
            let local = self.members.local_id();
            let announcing = self
                .rumors
                .iter()
                .any(|r| matches!(r, Rumor::Member { member, .. } if member.id == local));
            if !announcing || self.now >= leaving.deadline {
                leaving.completed = true;
                self.events.push(Event::LeaveCompleted);
            }
        }
    }

    fn handle_rumor(&mut self, from: NodeId, rumor: Rumor) {
        match rumor {
            Rumor::Member { member, origin } => self.apply_claim(member, origin),
            Rumor::State { owner, entry } => {
                self.events.push(Event::StateRumor { owner, entry, from })
            }
            _ => {}
        }
    }

    /// Merges one membership claim, turning the outcome into events, rumors
    /// and suspicion bookkeeping.
    fn apply_claim(&mut self, claim: Member, origin: NodeId) {
        let local = self.members.local();
        if claim.id == local.id
            && matches!(claim.status, MemberStatus::Suspect | MemberStatus::Dead)
            && claim.incarnation < local.incarnation
            && self.leaving.is_none()
        {
            // An accusation we have already refuted: its sender missed the
            // refutation (lost, or out of retransmits). Say it again, so it
            // rides on our answer, before that sender's timer runs out.
            let record = local.clone();
            let own = record.id;
            if let Ok(gossip_core::Pushed::Queued) = self.rumors.push(Rumor::Member {
                member: record,
                origin: own,
            }) {
                self.fresh_news = true;
            }
            return;
        }
        let claim = self.unseen_suspicion(claim);
        self.note_confirmation(&claim, origin);
        match self.members.apply(self.now, claim, origin) {
            Ok(None) => {}
            Ok(Some(MembershipEvent::Changed(change))) => self.on_change(change),
            Ok(Some(MembershipEvent::AccusedSelf { claim, origin })) => self.refute(claim, origin),
            Ok(Some(_)) => {}
            Err(_) => self.stats.rejected_claims += 1,
        }
    }

    /// A death claimed of a member that this node has not suspected for
    /// long (it holds the member alive at the same incarnation, or its
    /// suspicion began less than half the minimum suspicion timeout ago)
    /// counts here as a suspicion: the accused has not yet had its chance to
    /// refute where this node can see it. That happens when a partition
    /// heals: each side declared the other dead, and those claims reach
    /// members that were in touch with the accused all along. The accused
    /// refutes in time if it is alive; if it is not, this node's own
    /// suspicion ends in its death. After a real crash the suspicion arrives
    /// well before the death, and the death is taken at once.
    fn unseen_suspicion(&self, claim: Member) -> Member {
        if claim.status != MemberStatus::Dead {
            return claim;
        }
        let Some(current) = self.members.get(&claim.id) else {
            return claim;
        };
        let fresh = match current.status {
            MemberStatus::Alive => true,
            MemberStatus::Suspect => self
                .suspicions
                .get(&claim.id)
                .is_some_and(|s| self.now.saturating_duration_since(s.started) < s.min / 2),
            _ => false,
        };
        if fresh && current.incarnation == claim.incarnation {
            claim.with_status(MemberStatus::Suspect)
        } else {
            claim
        }
    }

    /// A suspicion already held, heard again from another accuser (or
    /// confirmed by a failed probe of our own), counts as an independent
    /// confirmation: the deadline comes closer, and the confirmation is passed
    /// on so others can count it too. At most `suspicion_confirmations` are
    /// counted and relayed, which bounds the traffic.
    fn note_confirmation(&mut self, claim: &Member, origin: NodeId) {
        if claim.status != MemberStatus::Suspect {
            return;
        }
        let k = self.config.suspicion_confirmations;
        let Some(suspicion) = self.suspicions.get_mut(&claim.id) else {
            return;
        };
        if suspicion.incarnation != claim.incarnation || suspicion.accuser == origin {
            return;
        }
        if u32::try_from(suspicion.confirmers.len()).unwrap_or(u32::MAX) >= k
            || !suspicion.confirmers.insert(origin)
        {
            return;
        }
        self.next_token += 1;
        suspicion.token = self.next_token;
        let (deadline, token) = (suspicion.deadline(k).max(self.now), suspicion.token);
        self.schedule_suspicion(claim.id, deadline, token);
        if let Some(record) = self.members.get(&claim.id) {
            let member = record.clone();
            self.queue_rumor(Rumor::Member { member, origin });
        }
    }

    fn on_change(&mut self, change: MemberChange) {
        let transition = change.transition();
        self.update_rotation(change.before.as_ref(), &change.after);
        let MemberChange { after, origin, .. } = change;
        let id = after.id;

        // Suspicion bookkeeping first, so events can report it.
        let ended = if after.status == MemberStatus::Suspect {
            let fresh = self
                .suspicions
                .get(&id)
                .is_none_or(|s| s.incarnation != after.incarnation);
            if fresh {
                self.start_suspicion(id, after.incarnation, origin);
            }
            None
        } else {
            self.suspicions.remove(&id)
        };

        if after.status.is_departed() && self.probe.as_ref().is_some_and(|p| p.target == id) {
            self.probe = None;
        }

        let event = match transition {
            Transition::Joined => Event::Joined(after.clone()),
            Transition::Suspected => Event::Suspected {
                member: after.clone(),
                by: origin,
                local_health: self.awareness.score(),
            },
            Transition::Recovered => Event::Recovered(after.clone()),
            Transition::Failed => Event::Failed {
                member: after.clone(),
                provenance: Provenance {
                    declared_by: origin,
                    suspected_by: ended.as_ref().map(|s| s.accuser),
                    confirmations: ended
                        .as_ref()
                        .map_or(0, |s| u32::try_from(s.confirmers.len()).unwrap_or(u32::MAX)),
                    local_health: self.awareness.score(),
                },
            },
            Transition::Left => Event::Left(after.clone()),
            Transition::Rejoined => Event::Rejoined(after.clone()),
            _ => Event::Updated(after.clone()),
        };
        self.events.push(event);
        self.queue_rumor(Rumor::Member {
            member: after,
            origin,
        });
    }

    /// Puts a member that comes into the cluster (new, or back from the
    /// dead) into the probe rotation, and takes one that departs out of it.
    fn update_rotation(&mut self, before: Option<&Member>, after: &Member) {
        let was_live = before.is_some_and(|b| !b.status.is_departed());
        let is_live = !after.status.is_departed();
        if after.id != self.local_id() {
            match (was_live, is_live) {
                (false, true) => self.order.insert(after.id, &mut self.rng),
                (true, false) => self.order.remove(&after.id),
                _ => {}
            }
        }
        debug_assert_eq!(
            self.order.len(),
            self.members.count(MemberStatus::Alive) + self.members.count(MemberStatus::Suspect)
                - usize::from(!self.members.local().status.is_departed()),
            "the rotation holds exactly the live members other than this one"
        );
    }

    fn start_suspicion(&mut self, id: NodeId, incarnation: Incarnation, accuser: NodeId) {
        let (min, max) = suspicion_bounds(
            self.members.live_count(),
            self.config.suspicion_mult,
            self.config.suspicion_max_mult,
            self.config.probe_interval,
        );
        self.next_token += 1;
        let suspicion = Suspicion {
            incarnation,
            started: self.now,
            accuser,
            confirmers: BTreeSet::new(),
            min,
            max,
            token: self.next_token,
            reminded: None,
        };
        let (deadline, token) = (
            suspicion.deadline(self.config.suspicion_confirmations),
            suspicion.token,
        );
        self.suspicions.insert(id, suspicion);
        self.schedule_suspicion(id, deadline, token);
    }

    /// Sets a suspicion's deadline, and its last call one probe timeout
    /// before: a suspect that is alive but whose refutation this node
    /// missed (lost, or out of retransmits before it came here) answers the
    /// last call's ping with its refutation on the ack, in time. A dead one
    /// does not, and dies on time.
    fn schedule_suspicion(&mut self, subject: NodeId, deadline: Timestamp, token: u64) {
        self.schedule(deadline, Timer::Suspicion { subject, token });
        if self.config.buddy_system {
            let ahead = self.awareness.scale(self.config.probe_timeout);
            let last_call = self.now.max(deadline.saturating_sub(ahead));
            self.schedule(last_call, Timer::LastCall { subject, token });
        }
    }

    /// Lifeguard's buddy system between probes: pings the suspect `subject`
    /// out of turn with the suspicion, so that its ack brings back its
    /// refutation, if it made one that this node missed. The ack's sequence
    /// number matches no probe and is ignored.
    ///
    /// With `heard_at`, the suspect has just spoken to this node from that
    /// address, so it is up: waiting for the next scheduled probe of it can
    /// take longer than the suspicion lasts (a slow node probes each member
    /// once per `members x stretched interval`). Those pings go at most once
    /// per probe interval per suspect. Without it, this is the last call
    /// before the suspicion runs out.
    fn remind_suspect(&mut self, subject: NodeId, heard_at: Option<SocketAddr>) {
        if !self.config.buddy_system || self.leaving.is_some() {
            return;
        }
        let Some(record) = self
            .members
            .get(&subject)
            .filter(|r| r.status == MemberStatus::Suspect)
            .cloned()
        else {
            return;
        };
        let Some(addr) = heard_at.or_else(|| record.meta.addrs().first().copied()) else {
            return;
        };
        let (now, interval) = (self.now, self.config.probe_interval);
        let Some(suspicion) = self.suspicions.get_mut(&subject) else {
            return;
        };
        if heard_at.is_some()
            && suspicion
                .reminded
                .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        suspicion.reminded = Some(now);
        self.stats.suspect_reminders += 1;
        let ping = Message::Ping {
            seq: self.next_seq(),
            target: TargetTag::of(&subject),
            suspicion: Some(record),
            state_digest: self.state_digest,
        };
        self.send(Some(subject), addr, ping, true);
    }

    /// Someone claims something about us that overrides our record: raise
    /// our incarnation past it and say so.
    fn refute(&mut self, claim: Member, accuser: NodeId) {
        if self.leaving.is_some() {
            return;
        }
        match self.members.refute(claim.incarnation) {
            Ok(record) => {
                let record = record.clone();
                self.stats.refutations += 1;
                // Lifeguard: being suspected is a hint that we are the slow one.
                self.awareness.apply(1);
                self.events.push(Event::Refuted {
                    incarnation: record.incarnation,
                    accused_by: accuser,
                });
                let origin = record.id;
                self.queue_rumor(Rumor::Member {
                    member: record,
                    origin,
                });
            }
            Err(_) => self.stats.rejected_claims += 1,
        }
    }

    /// Applies a table of records that `from` sent: the sender speaks for
    /// itself; for others, alive and left records are relayed self-claims and
    /// accusations are the sender's own.
    fn apply_records(&mut self, from: NodeId, records: impl IntoIterator<Item = Member>) {
        for record in records {
            let origin = if record.id == from
                || matches!(record.status, MemberStatus::Alive | MemberStatus::Left)
            {
                record.id
            } else {
                from
            };
            self.apply_claim(record, origin);
        }
    }

    /// Reports a peer whose state digest differs from the local one.
    fn compare_digest(&mut self, from: NodeId, addr: SocketAddr, theirs: Option<StateDigest>) {
        if let (Some(theirs), Some(ours)) = (theirs, self.state_digest)
            && theirs != ours
        {
            self.stats.state_digest_mismatches += 1;
            self.events
                .push(Event::StateDigestDiffers { peer: from, addr });
        }
    }

    fn handle_message(&mut self, from: NodeId, from_addr: SocketAddr, message: Message) {
        match message {
            Message::Ping {
                seq,
                suspicion,
                state_digest,
                ..
            } => {
                if let Some(claim) = suspicion {
                    // The buddy system: the prober suspects us; refute now.
                    self.apply_claim(claim, from);
                }
                self.compare_digest(from, from_addr, state_digest);
                self.send(Some(from), from_addr, Message::Ack { seq }, true);
            }
            Message::ReliablePing { seq, .. } => {
                // Answered the way it came, so that the answer survives the
                // loss the ping was sent to get past.
                self.send_on(Some(from), from_addr, Message::Ack { seq }, true, true);
            }
            Message::Ack { seq } => self.handle_ack(from, seq),
            Message::PingReq {
                seq,
                target,
                target_addr,
            } => {
                let our_seq = self.next_seq();
                self.forwards.insert(
                    our_seq,
                    Forward {
                        requester: from,
                        requester_addr: from_addr,
                        requester_seq: seq,
                        target,
                    },
                );
                // The nack must reach the requester before its probe ends:
                // it asked us one probe timeout into a period of two.
                let at = self.now + self.config.probe_timeout.mul_f64(NACK_AFTER);
                self.schedule(at, Timer::Forward { seq: our_seq });
                let ping = Message::Ping {
                    seq: our_seq,
                    target: TargetTag::of(&target),
                    suspicion: None,
                    state_digest: self.state_digest,
                };
                self.send(Some(target), target_addr, ping, true);
            }
            Message::Nack { seq } => {
                if let Some(probe) = &mut self.probe
                    && probe.seq == seq
                    && let Some(helper) = probe.helpers.iter_mut().find(|(id, _)| *id == from)
                    && !helper.1
                {
                    helper.1 = true;
                    self.stats.nacks_received += 1;
                }
            }
            Message::Gossip { state_digest } => self.compare_digest(from, from_addr, state_digest),
            Message::Sync { reply, members } => {
                self.apply_records(from, members);
                if !reply {
                    self.send_table(Some(from), from_addr, true);
                } else if self.joining.take().is_some() {
                    self.events.push(Event::JoinCompleted { via: from });
                }
            }
        }
    }

    fn handle_ack(&mut self, from: NodeId, seq: u32) {
        if let Some(forward) = self.forwards.get(&seq)
            && forward.target == from
        {
            let Some(forward) = self.forwards.remove(&seq) else {
                return;
            };
            let ack = Message::Ack {
                seq: forward.requester_seq,
            };
            self.send(Some(forward.requester), forward.requester_addr, ack, true);
            return;
        }
        if let Some(probe) = &mut self.probe
            && probe.seq == seq
            && (probe.target == from || probe.helpers.iter().any(|(id, _)| *id == from))
        {
            probe.acked = true;
        }
    }

    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::ProbeTimeout { seq } => {
                self.probe_indirectly(seq);
                self.probe_reliably(seq);
            }
            Timer::ProbeEnd { seq } => {
                if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
                    self.conclude_probe();
                }
            }
            Timer::Forward { seq } => {
                if let Some(forward) = self.forwards.remove(&seq) {
                    self.stats.nacks_sent += 1;
                    let nack = Message::Nack {
                        seq: forward.requester_seq,
                    };
                    self.send(Some(forward.requester), forward.requester_addr, nack, true);
                }
            }
            Timer::Suspicion { subject, token } => self.suspicion_expired(subject, token),
            Timer::Push => {
                self.push_waiting = false;
                if self.fresh_news {
                    self.push_news(&[]);
                }
            }
            Timer::LastCall { subject, token } => {
                if self
                    .suspicions
                    .get(&subject)
                    .is_some_and(|s| s.token == token)
                {
                    self.remind_suspect(subject, None);
                }
            }
        }
    }

    fn probe_tick(&mut self) {
        if self.leaving.is_some() {
            self.next_probe = None;
            return;
        }
        if self.probe.is_some() {
            self.conclude_probe();
        }
        let interval = self.probe_interval();
        self.next_probe = Some(self.now + interval);
        let Some(target) = self.order.next(&mut self.rng) else {
            return;
        };
        let Some(record) = self.members.get(&target) else {
            return;
        };
        let suspicion = (self.config.buddy_system && record.status == MemberStatus::Suspect)
            .then(|| record.clone());
        let Some(addr) = record.meta.addrs().first().copied() else {
            return;
        };
        let seq = self.next_seq();
        self.probe = Some(Probe {
            seq,
            target,
            acked: false,
            helpers: Vec::new(),
        });
        self.stats.probes += 1;
        let timeout = self.awareness.scale(self.config.probe_timeout);
        self.schedule(self.now + timeout, Timer::ProbeTimeout { seq });
        self.schedule(self.now + interval, Timer::ProbeEnd { seq });
        self.send(
            Some(target),
            addr,
            Message::Ping {
                seq,
                target: TargetTag::of(&target),
                suspicion,
                state_digest: self.state_digest,
            },
            true,
        );
    }

    fn probe_indirectly(&mut self, seq: u32) {
        let Some(probe) = &self.probe else { return };
        if probe.seq != seq || probe.acked {
            return;
        }
        let target = probe.target;
        let Some(target_addr) = self.address_of(&target) else {
            return;
        };
        let helpers =
            self.order
                .choose_random(self.config.indirect_probes, &[target], &mut self.rng);
        if let Some(probe) = &mut self.probe {
            probe.helpers = helpers.iter().map(|id| (*id, false)).collect();
        }
        self.stats.indirect_probes += 1;
        for helper in helpers {
            if let Some(addr) = self.address_of(&helper) {
                let request = Message::PingReq {
                    seq,
                    target,
                    target_addr,
                };
                self.send(Some(helper), addr, request, true);
            }
        }
    }

    /// The fallback probe: once the direct ack is overdue, one ping over a
    /// reliable channel, whose ack counts as the direct one would.
    fn probe_reliably(&mut self, seq: u32) {
        let Some(probe) = &self.probe else { return };
        if !self.config.fallback_probe || probe.seq != seq || probe.acked {
            return;
        }
        let target = probe.target;
        let Some(addr) = self.address_of(&target) else {
            return;
        };
        self.stats.fallback_probes += 1;
        let ping = Message::ReliablePing {
            seq,
            target: TargetTag::of(&target),
        };
        self.send_on(Some(target), addr, ping, true, true);
    }

    /// The probe's period is over: adjust local health, and suspect the
    /// target if nobody vouched for it.
    fn conclude_probe(&mut self) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            self.awareness.apply(-1);
            return;
        }
        // Lifeguard: helpers that did not even nack suggest the problem is
        // ours; with no helpers, any failed probe counts against us.
        let missing_nacks = probe.helpers.iter().filter(|(_, nacked)| !nacked).count();
        let delta = if probe.helpers.is_empty() {
            1
        } else {
            missing_nacks
        };
        self.awareness
            .apply(i64::try_from(delta).unwrap_or(i64::MAX));
        if self.config.awareness_max > 1
            && !probe.helpers.is_empty()
            && missing_nacks == probe.helpers.len()
            && !self.awareness.is_at_max()
        {
            // Not one helper answered, not even to say the target is silent:
            // this node is likely slow, and its probe tells nothing of the
            // target, which the others (whose helpers nack) still find if
            // it is dead. A node that stays cut off reaches the top of the
            // health scale within a few probes and suspects again.
            self.stats.inconclusive_probes += 1;
            return;
        }

        let Some(record) = self.members.get(&probe.target) else {
            return;
        };
        match record.status {
            MemberStatus::Alive => {
                self.stats.suspicions_raised += 1;
                if let Ok(Some(MembershipEvent::Changed(change))) =
                    self.members
                        .accuse(self.now, probe.target, MemberStatus::Suspect)
                {
                    self.on_change(change);
                }
            }
            // Our own failed probe of a suspect confirms the suspicion.
            MemberStatus::Suspect => {
                let claim = record.clone();
                let local = self.local_id();
                self.note_confirmation(&claim, local);
            }
            _ => {}
        }
    }

    fn suspicion_expired(&mut self, subject: NodeId, token: u64) {
        let Some(suspicion) = self.suspicions.get(&subject) else {
            return;
        };
        if suspicion.token != token {
            return;
        }
        let still_suspect = self.members.get(&subject).is_some_and(|m| {
            m.status == MemberStatus::Suspect && m.incarnation == suspicion.incarnation
        });
        if !still_suspect {
            self.suspicions.remove(&subject);
            return;
        }
        self.stats.deaths_declared += 1;
        if let Ok(Some(MembershipEvent::Changed(change))) =
            self.members.accuse(self.now, subject, MemberStatus::Dead)
        {
            self.on_change(change);
        }
    }

    /// Sends this node's whole table, its own record first, in as many
    /// datagrams as it takes.
    fn send_table(&mut self, to: Option<NodeId>, addr: SocketAddr, reply: bool) {
        let records: Vec<Member> = self.members.iter().cloned().collect();
        let empty = Message::Sync {
            reply,
            members: Vec::new(),
        };
        // Two bytes of slack for the record count and one for the empty
        // rumor section.
        let room = self
            .max_datagram
            .saturating_sub(HEADER_LEN + encoded_len(&empty) + 3);
        let mut chunk = Vec::new();
        let mut used = 0;
        for record in records {
            let len = encoded_len(&record);
            if !chunk.is_empty() && used + len > room {
                let members = std::mem::take(&mut chunk);
                self.send(to, addr, Message::Sync { reply, members }, false);
                used = 0;
            }
            used += len;
            chunk.push(record);
        }
        self.send(
            to,
            addr,
            Message::Sync {
                reply,
                members: chunk,
            },
            false,
        );
    }

    fn attempt_join(&mut self) {
        let Some(joining) = &mut self.joining else {
            return;
        };
        joining.next_attempt = self.now + joining.delay;
        joining.delay = (joining.delay * 2).min(self.config.join_retry_max);
        for seed in self.seeds.clone() {
            self.send_table(None, seed, false);
        }
    }

    /// The slow schedule that heals partitions: re-contact one random
    /// recently dead member, and the seeds if no one else is left.
    fn reconnect(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        let dead: Vec<NodeId> = self
            .members
            .departed()
            .filter(|m| m.status == MemberStatus::Dead)
            .map(|m| m.id)
            .collect();
        if let Some(&target) = choose_random(&dead, 1, &[], &mut self.rng).first()
            && let Some(addr) = self.address_of(&target)
        {
            self.send_table(Some(target), addr, false);
        }
        if self.members.live_count() <= 1 && self.joining.is_none() {
            for seed in self.seeds.clone() {
                self.send_table(None, seed, false);
            }
        }
    }

    /// The backstop push-pull: exchange whole tables with one random live
    /// member, so whatever rumors missed is repaired.
    fn sync_with_random_member(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        if let Some(&peer) = self.order.choose_random(1, &[], &mut self.rng).first()
            && let Some(addr) = self.address_of(&peer)
        {
            self.send_table(Some(peer), addr, false);
        }
    }

    fn collect_departed(&mut self) {
        for id in self
            .members
            .collect_departed(self.now, self.config.departed_horizon)
        {
            // Departed members left the rotation when they departed.
            self.suspicions.remove(&id);
            self.events.push(Event::Removed(id));
        }
    }
}
