//! The SWIM state machine: [`Swim`], its inputs and outputs, and the
//! dispatch of its one timer table. The protocol's parts live in the
//! submodules, each an `impl Swim` block beside the state it owns.

mod dissemination;
mod identity;
mod lifecycle;
mod probe;
mod suspicion;
mod timer;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gossip_core::{
    Entry, GossipRng, Incarnation, Member, MemberMeta, Membership, MembershipEvent, NodeId,
    NodeKey, OutputQueue, Placement, ProbeOrder, Rumor, RumorQueue, Timestamp, decode_frame,
};
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::error::Error;
use crate::event::{Event, Transmit};
use crate::lifeguard::Awareness;
use crate::message::{JoinRefusal, Message, StateDigest, TargetTag};
use crate::stats::Stats;
use dissemination::Checked;
use lifecycle::{Joining, Leaving};
use probe::{Forward, Probe, RoundTrip};
use suspicion::Suspicions;
use timer::{Timer, Timers};

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
/// use gossip_core::{ClusterId, Incarnation, MemberMeta, MemberStatus, NodeKey, Timestamp};
/// use gossip_swim::{Config, Swim};
///
/// let config = Config::lan(ClusterId::from_name("doc"), 2);
/// let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
/// let mut nodes: Vec<Swim> = [1u8, 2].iter().map(|&n| {
///     let key = NodeKey::from_secret_bytes(&[n; 32]);
///     let meta = MemberMeta::new(format!("n{n}"), [addr(7000 + u16::from(n))]);
///     let mut config = config.clone();
///     config.rng_seed = u64::from(n);
///     Swim::new(config, key, meta, Incarnation::ZERO, Timestamp::ZERO)
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
    /// This node's latest probes (sequence number, when the ack is due)
    /// until the ack is handled or something that arrived after it was due
    /// is (see [`Swim::handle_late_datagram`]); the oldest first.
    probes_unheard: VecDeque<(u32, Timestamp)>,
    /// How late the latest datagram was handled: from its arrival to its
    /// handling (see [`Swim::handle_late_datagram`]).
    input_lag: Duration,
    /// Until when this node, back from a stall, declares no death: it
    /// missed what the cluster said while it was away.
    back_from_stall_until: Option<Timestamp>,
    members: Membership,
    rumors: RumorQueue,
    order: ProbeOrder,
    awareness: Awareness,
    next_seq: u32,
    probe: Option<Probe>,
    forwards: BTreeMap<u32, Forward>,
    suspicions: Suspicions,
    timers: Timers,
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
    /// When each member's address conflict (this node's own included) was
    /// last reported; at most one entry per member in the table.
    conflicts_reported: BTreeMap<NodeId, Timestamp>,
    /// When refused claims from each sender were last reported.
    refusals_reported: BTreeMap<NodeId, Timestamp>,
    /// The tag of pings meant for this node at its own address, kept so a
    /// received ping costs no hash; `None` without an address.
    own_tag: Option<TargetTag>,
    /// Where members (this node included) said they sit, for weighted peer
    /// selection; members absent here sit at [`Placement::DEFAULT`].
    placements: BTreeMap<NodeId, Placement>,
    /// Round trips measured to live members, for their probe timeouts.
    round_trips: BTreeMap<NodeId, RoundTrip>,
    /// Members the network said are unreachable (an ICMP error for a
    /// datagram sent to them), since when; dropped when one speaks again
    /// or stops being held suspect.
    unreachable: BTreeMap<NodeId, Timestamp>,
}

impl Swim {
    /// A machine for the holder of `key`, alive at `incarnation` (0 for a new
    /// node; one more than the last persisted value for a restarted one).
    /// Everything it says of itself is signed with `key`.
    /// Probing starts after a random part of the first probe interval, so
    /// nodes started together do not probe in lockstep.
    pub fn new(
        config: Config,
        key: NodeKey,
        meta: MemberMeta,
        incarnation: Incarnation,
        now: Timestamp,
    ) -> Self {
        let local = key.id();
        let own_tag = meta.addr().map(|addr| TargetTag::of(&local, addr));
        let mut record = Member::new(local, meta);
        record.incarnation = incarnation;
        let mut rng = GossipRng::seed_from_u64(config.rng_seed);
        let interval_nanos = u64::try_from(config.probe_interval.as_nanos()).unwrap_or(u64::MAX);
        let first_probe = now + Duration::from_nanos(rng.random_range(0..interval_nanos.max(1)));
        let mut timers = Timers::default();
        timers.set(first_probe, Timer::Probe);
        timers.set(now + config.reconnect_interval, Timer::Reconnect);
        if let Some(every) = config.push_pull_interval {
            timers.set(now + every, Timer::PushPull);
        }
        timers.set(now + config.reconnect_interval, Timer::Collect);
        Swim {
            rng,
            now,
            members: Membership::new(key, config.cluster, record, config.limits.clone()),
            rumors: RumorQueue::new(config.retransmit_mult, config.limits.clone()),
            order: ProbeOrder::default(),
            awareness: Awareness::new(config.awareness_max),
            next_seq: 0,
            probes_unheard: VecDeque::new(),
            input_lag: Duration::ZERO,
            back_from_stall_until: None,
            probe: None,
            forwards: BTreeMap::new(),
            suspicions: Suspicions::default(),
            timers,
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
            conflicts_reported: BTreeMap::new(),
            refusals_reported: BTreeMap::new(),
            own_tag,
            placements: BTreeMap::new(),
            round_trips: BTreeMap::new(),
            unreachable: BTreeMap::new(),
            config,
        }
    }

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
        self.timers.next_deadline()
    }

    /// Joins a cluster through `seeds`: asks each for its membership, and
    /// keeps asking, with backoff from `join_retry_initial` to
    /// `join_retry_max`, until one answers.
    ///
    /// The seeds stay in use after the join. Every `reconnect_interval`, a
    /// node exchanges tables with one seed at whose address it holds no live
    /// member, with probability `seeds / (live + dead members)` (Cassandra's
    /// rule: the cluster as a whole contacts about one seed per seed and
    /// interval), and with every seed when it is alone. Two halves of a
    /// partition that outlasted `departed_horizon`, and so forgot each other,
    /// merge again through them once the network heals. In a cluster where
    /// every seed is a live member this sends nothing.
    pub fn join(&mut self, now: Timestamp, seeds: Vec<SocketAddr>) {
        self.advance(now);
        self.seeds = seeds;
        self.joining = Some(Joining {
            delay: self.config.join_retry_initial,
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
        self.queue_rumor(Rumor::Member { member: record });
        self.timers.cancel(Timer::Probe);
        self.probe = None;
        let deadline = self.now + self.config.leave_timeout;
        self.leaving = Some(Leaving {
            deadline,
            completed: false,
        });
        self.timers.set(deadline, Timer::Leave);
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
        self.own_tag = record
            .meta
            .addr()
            .map(|addr| TargetTag::of(&record.id, addr));
        self.queue_rumor(Rumor::Member { member: record });
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
        self.queue_rumor(Rumor::Member { member: record });
        self.flush();
    }

    /// Spreads one of the local node's key/value writes, signed, by
    /// piggybacking in the data lane. Receivers check the signature before
    /// reporting it ([`Event::StateRumor`]).
    ///
    /// # Errors
    ///
    /// [`Error::Core`] if the write is over a cap.
    pub fn broadcast_state(&mut self, now: Timestamp, entry: Entry) -> Result<(), Error> {
        self.advance(now);
        let rumor = Rumor::state(self.members.key(), self.config.cluster, entry);
        self.rumors.push(rumor)?;
        self.fresh_news = true;
        self.flush();
        Ok(())
    }

    /// Revokes `id` (the operator's word, for a node whose key is no longer
    /// trusted): its record leaves the table and the probe rotation, rumors
    /// about it or by it are dropped, and no claim by or about it is taken
    /// until [`reinstate`](Swim::reinstate). Emits [`Event::Removed`] if it
    /// was held. The local node cannot be revoked.
    pub fn revoke(&mut self, now: Timestamp, id: NodeId) {
        self.advance(now);
        let held_live = self
            .members
            .get(&id)
            .is_some_and(|m| !m.status.is_departed());
        if id == self.local_id() {
            return;
        }
        let removed = self.members.revoke(id);
        self.rumors.forget(&id);
        self.placements.remove(&id);
        self.suspicions.remove(&id);
        if self.probe.as_ref().is_some_and(|p| p.target() == id) {
            self.probe = None;
        }
        if held_live {
            self.order.remove(&id);
        }
        if removed {
            self.events.push(Event::Removed(id));
        }
    }

    /// Takes claims by and about `id` again, after its revocation was lifted.
    pub fn reinstate(&mut self, id: &NodeId) {
        self.members.reinstate(id);
    }

    /// Replaces the seeds (for a driver that resolves them again, as DNS
    /// names can point elsewhere over time). The next join attempt, and the
    /// contacts described under [`join`](Swim::join), use these.
    /// A joining node that is given a seed it did not have tries again at
    /// once rather than at the end of its backoff.
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        let new_seed = seeds.iter().any(|seed| !self.seeds.contains(seed));
        self.seeds = seeds;
        if new_seed && self.joining.is_some() {
            self.retry_join_soon();
        }
    }

    /// The seeds in use.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// Records where `id` (this node included) says it sits: its zone and
    /// weight, for [`PeerSelection::Weighted`](crate::PeerSelection::Weighted).
    /// [`Placement::DEFAULT`] forgets what was recorded. Forgotten also when
    /// the member is removed or revoked.
    pub fn set_placement(&mut self, id: NodeId, placement: Placement) {
        if placement == Placement::DEFAULT {
            self.placements.remove(&id);
        } else {
            self.placements.insert(id, placement);
        }
    }

    /// Where `id` sits, as recorded by [`set_placement`](Swim::set_placement).
    pub fn placement(&self, id: &NodeId) -> &Placement {
        self.placements.get(id).unwrap_or(&Placement::DEFAULT)
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
    /// as its push-pull table: each is taken only if its signatures verify.
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

    /// As [`merge_records`](Swim::merge_records), for records whose
    /// signatures a verifying table already checked (the sync's state, in
    /// the composed member): they are **not** checked again. Every other
    /// rule applies.
    pub fn merge_verified_records(
        &mut self,
        now: Timestamp,
        from: NodeId,
        records: impl IntoIterator<Item = Member>,
    ) {
        self.advance(now);
        for record in records {
            self.apply_claim(from, record, Checked::Already);
        }
        self.flush_excluding(&[from]);
    }

    /// Fills the table with `records` (for example from a snapshot, or a
    /// simulation that starts from a converged cluster), as if each member
    /// had announced itself, without queueing rumors or pushing gossip: the
    /// records are not news to anyone. Emits a [`Event::Joined`] for each new
    /// member. Records about the local node and records refused by the
    /// table's rules are skipped.
    ///
    /// The records are taken **without verifying their signatures**
    /// ([`Membership::apply_verified`]): pass only records this node held before
    /// or that a verifying table holds. Network input goes through
    /// [`handle_datagram`](Swim::handle_datagram) and
    /// [`merge_records`](Swim::merge_records).
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
            if let Ok(Some(MembershipEvent::Changed(change))) =
                self.members.apply_verified(self.now, record)
            {
                self.update_rotation(change.before.as_ref(), &change.after);
                self.events.push(Event::Joined(change.after));
            }
        }
    }

    /// Feeds a datagram that the transport received from the authenticated
    /// peer `from` at `from_addr`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`], [`Error::Misdirected`]:
    /// the datagram is dropped, counted, and nothing else changes. Rumors in
    /// an accepted frame that break a rule (a claim its maker did not sign,
    /// for one) are refused one by one and counted in [`Stats::refused`];
    /// the rest of the frame still counts.
    pub fn handle_datagram(
        &mut self,
        now: Timestamp,
        from: NodeId,
        from_addr: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.handle_late_datagram(now, now, from, from_addr, bytes)
    }

    /// As [`handle_datagram`](Swim::handle_datagram), for a datagram that
    /// arrived at `arrived` and is handled only now (it waited in a queue
    /// before the machine). A suspect's deadline that comes while the ack
    /// of a probe this node sent is overdue and nothing that arrived after
    /// it was due has been handled, or while the latest datagram was handled
    /// more than half the suspect's probe timeout late, waits for the input
    /// to catch up (for up to the stall patience): the suspect's answer to
    /// its last call may be in it. A driver that hands datagrams over the
    /// moment they arrive calls `handle_datagram`.
    ///
    /// # Errors
    ///
    /// As [`handle_datagram`](Swim::handle_datagram).
    pub fn handle_late_datagram(
        &mut self,
        now: Timestamp,
        arrived: Timestamp,
        from: NodeId,
        from_addr: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.advance(now);
        self.input_lag = now.saturating_duration_since(arrived);
        if !self.probes_unheard.is_empty() {
            self.probes_unheard.retain(|(_, due)| *due > arrived);
        }
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
            && Some(*target) != self.own_tag
        {
            self.stats.misdirected += 1;
            return Err(Error::Misdirected {
                from,
                target: *target,
            });
        }
        if !self.unreachable.is_empty() {
            self.unreachable.remove(&from);
        }
        self.suspicions.heard_from(&from);
        let elsewhere = self.speaks_from_elsewhere(&from, from_addr);
        for rumor in frame.rumors {
            if elsewhere && matches!(rumor, Rumor::State { .. }) {
                self.stats.state_refused_elsewhere += 1;
                continue;
            }
            self.handle_rumor(from, rumor);
        }
        // A member that talks to us but that we have never heard of (its
        // announcement ran out of retransmits before reaching us): ask for
        // its table, which starts with its own record.
        let stranger = self.members.get(&from).is_none()
            && !matches!(
                frame.body,
                Message::PushPull { .. } | Message::JoinRefused { .. }
            );
        self.handle_message(from, from_addr, frame.body);
        if stranger && self.leaving.is_none() {
            self.send_table(Some(from), from_addr, false);
        }
        self.remind_suspect(from, Some(from_addr));
        // Whatever news this datagram brought, its sender already has.
        self.flush_excluding(&[from]);
        Ok(())
    }

    /// How late the latest datagram was handled: from its arrival to its
    /// handling, as the driver told it to
    /// [`handle_late_datagram`](Swim::handle_late_datagram) (zero through
    /// [`handle_datagram`](Swim::handle_datagram)). A lag of a good part of
    /// a probe timeout means this node hears the others late: the driver's
    /// queue is long, or its process starved.
    pub fn input_lag(&self) -> Duration {
        self.input_lag
    }

    /// The network says `addr` does not answer: an ICMP port, host or
    /// network unreachable came back for a datagram this node sent there
    /// (the transport matches the error against what it sent). If a live
    /// member is held at `addr`, this starts suspecting it at once (or
    /// confirms the suspicion held), and the evidence stands until the
    /// member speaks again. With the evidence and another member's
    /// suspicion, the suspicion runs out after `unreachable_suspicion`
    /// (see [`Config::unreachable_suspicion`]); the suspect can still refute.
    /// An address no live member holds is counted and ignored.
    pub fn handle_unreachable(&mut self, now: Timestamp, addr: SocketAddr) {
        self.advance(now);
        let local = self.local_id();
        let found = self
            .members
            .others()
            .find(|m| !m.status.is_departed() && m.meta.addr() == Some(addr))
            .map(|m| (m.id, m.status));
        let Some((id, status)) = found.filter(|(id, _)| *id != local) else {
            self.stats.unreachable_ignored += 1;
            return;
        };
        self.stats.unreachable_reports += 1;
        self.unreachable.entry(id).or_insert(self.now);
        match status {
            gossip_core::MemberStatus::Alive if self.leaving.is_none() => {
                self.stats.suspicions_raised += 1;
                if let Ok(Some(MembershipEvent::Changed(change))) =
                    self.members
                        .accuse(self.now, id, gossip_core::MemberStatus::Suspect)
                {
                    self.on_change(change);
                }
            }
            gossip_core::MemberStatus::Suspect => {
                if let Some(claim) = self
                    .members
                    .accusation(id, gossip_core::MemberStatus::Suspect)
                {
                    self.note_confirmation(local, &claim);
                }
            }
            _ => {}
        }
        self.hasten_if_unreachable(id);
        self.flush();
    }

    /// Runs every timer due at `now`. Calling it early, late or twice is
    /// harmless: timers that are not due, or whose probe or suspicion has
    /// moved on, do nothing.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let behind = self
            .timers
            .next_deadline()
            .map(|due| now.saturating_duration_since(due));
        self.advance(now);
        // Timers a probe period or more behind: this node was stalled.
        if let Some(behind) = behind.filter(|b| *b >= self.config.probe_interval) {
            self.back_from_stall(behind);
        }
        while let Some(timer) = self.timers.pop_due(self.now) {
            self.fire(timer);
        }
        self.flush();
    }

    /// Clamps time so it never goes back.
    pub(super) fn advance(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
    }

    pub(super) fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    pub(super) fn address_of(&self, id: &NodeId) -> Option<SocketAddr> {
        self.members.get(id)?.meta.addr()
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
                    self.apply_claim(from, claim, Checked::No);
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
            } => self.forward_probe(from, from_addr, seq, target, target_addr),
            Message::Nack { seq } => self.handle_nack(from, seq),
            Message::JoinRefused { reason } => {
                if self.joining.is_some() {
                    self.stats.joins_refused += 1;
                    if let JoinRefusal::IdentityInUse { incarnation, .. } = reason {
                        // Whatever holds this identity there, this life is
                        // to win once that address is known gone, which
                        // takes a failure detection, not a backoff's worth:
                        // ask again at the first retry's pace.
                        self.refute(incarnation, from);
                        self.retry_join_soon();
                    }
                    self.events.push(Event::JoinRefused { by: from, reason });
                }
            }
            Message::Gossip { state_digest } => self.compare_digest(from, from_addr, state_digest),
            Message::PushPull { reply, members } => {
                let sender_addr = members.iter().find(|m| m.id == from).map(|m| m.meta.addr());
                self.apply_records(from, members);
                if !reply {
                    let refusal = sender_addr.and_then(|addr| {
                        self.identity_in_use(from, addr)
                            .or_else(|| self.table_full(from))
                    });
                    match refusal {
                        Some(reason) => self.refuse_joiner(from, from_addr, reason),
                        None => self.send_table(Some(from), from_addr, true),
                    }
                } else if self.joining.take().is_some() {
                    self.timers.cancel(Timer::JoinRetry);
                    self.events.push(Event::JoinCompleted { via: from });
                }
            }
        }
    }

    /// Runs one timer that is due.
    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::ProbeTimeout { seq } => self.probe_overdue(seq),
            Timer::ProbeEnd { seq } => self.probe_ended(seq),
            Timer::Forward { seq } => self.forward_timed_out(seq),
            Timer::Suspicion { subject, token } => self.suspicion_expired(subject, token),
            Timer::LastCall { subject, token } => self.last_call(subject, token),
            Timer::Check { subject, seq } => self.check_overdue(subject, seq),
            Timer::Push => {
                self.push_waiting = false;
                if self.fresh_news {
                    self.push_news(&[]);
                }
            }
            Timer::Probe => self.probe_tick(),
            Timer::JoinRetry => self.attempt_join(),
            Timer::Reconnect => {
                self.timers
                    .set(self.now + self.config.reconnect_interval, Timer::Reconnect);
                self.reconnect();
            }
            Timer::PushPull => {
                if let Some(every) = self.config.push_pull_interval {
                    self.timers.set(self.now + every, Timer::PushPull);
                }
                self.push_pull_with_random_member();
            }
            Timer::Collect => {
                self.timers
                    .set(self.now + self.config.reconnect_interval, Timer::Collect);
                self.collect_departed();
            }
            // Checked by `flush` after every input.
            Timer::Leave => {}
        }
    }
}
