//! The reconciliation state machine for one pair of replicas.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use gossip_core::{
    ClusterId, Delta, Error as CoreError, HEADER_LEN, KvChange, Limits, Member, NodeId, OwnerDelta,
    OwnerDigest, PackedRumors, Refusal, Refusals, Timestamp, decode_frame, encode_frame,
    encoded_len,
};

use crate::error::Error;
use crate::message::{LeafSummary, NodeSummary, NodeView, Part, ShortDigest, SyncMessage};
use crate::state::SyncState;
use crate::tree::{FANOUT, Leaves, Prefix, View};

/// Parameters of a sync session.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SyncConfig {
    /// The cluster; messages of other clusters are refused.
    pub cluster: ClusterId,
    /// Largest message, in bytes; larger turns are split. Default 64 KiB
    /// (syncs ride streams, not datagrams).
    pub max_message_bytes: usize,
    /// A node with at most this many leaves is described by its leaves rather
    /// than its children. Default 16: below that, one level of child digests
    /// costs more than the leaves themselves.
    pub leaf_threshold: usize,
    /// Most turns a session may take: enough to descend the deepest possible
    /// tree (64 levels) and transfer, so a peer that keeps answering without
    /// converging is cut off. Default 160.
    pub max_turns: u32,
    /// A session that hears nothing for this long fails. Default 10 s.
    pub idle_timeout: Duration,
    /// Caps on decoded input.
    pub limits: Limits,
}

impl SyncConfig {
    /// Defaults for `cluster`.
    pub fn new(cluster: ClusterId) -> Self {
        let mut limits = Limits::default();
        limits.max_frame_bytes = 64 * 1024;
        SyncConfig {
            cluster,
            max_message_bytes: 64 * 1024,
            leaf_threshold: 16,
            max_turns: 160,
            idle_timeout: Duration::from_secs(10),
            limits,
        }
    }
}

/// What a session cost, for metrics and measurements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Turns this side sent.
    pub turns_sent: u32,
    /// Turns this side received.
    pub turns_received: u32,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Bytes sent, frames included.
    pub bytes_sent: u64,
    /// Bytes received, frames included.
    pub bytes_received: u64,
    /// Key/value writes sent.
    pub entries_sent: u64,
    /// Key/value writes received.
    pub entries_received: u64,
    /// Member records sent.
    pub members_sent: u64,
    /// Member records received.
    pub members_received: u64,
    /// Records and writes refused, by reason. A refusal other than of a
    /// revoked node's also ends the session with [`Error::Refused`].
    pub refused: Refusals,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The responder waits for the initiator's root.
    AwaitingRoot,
    /// Waiting for the rest of the peer's turn.
    AwaitingTurn,
    /// Finished cleanly.
    Done,
    /// Ended by an error.
    Failed,
}

/// One framed sync message; `None` if it is over the configured cap.
fn encode_message(config: &SyncConfig, message: &SyncMessage) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    encode_frame(
        config.cluster,
        message,
        &PackedRumors::empty(),
        &config.limits,
        &mut bytes,
    )
    .ok()?;
    Some(bytes)
}

/// What our next turn will carry, gathered while reading the peer's turn.
#[derive(Debug, Default)]
struct Reply {
    nodes: Vec<NodeSummary>,
    /// Owners whose writes to push, with what the peer is known to hold.
    pushes: BTreeMap<NodeId, (u64, u64)>,
    member_pushes: BTreeSet<NodeId>,
    wants: BTreeMap<NodeId, OwnerDigest>,
    member_wants: BTreeSet<NodeId>,
    /// The peer's turn asked for an answer.
    asked: bool,
}

/// One reconciliation between this replica and a peer, as a sans-IO state
/// machine with the same contract as the SWIM machine: feed it the peer's
/// messages ([`handle_bytes`](Session::handle_bytes)) and the time
/// ([`handle_timeout`](Session::handle_timeout)), and drain
/// [`poll_transmit`](Session::poll_transmit) after each.
///
/// The state is passed into every call rather than owned, so the replica can
/// change between messages; a sync that overlaps local updates may leave them
/// for the next round, but never loses or corrupts one, since every merge is
/// monotone.
///
/// The protocol, in turns (each turn one or more messages, split to
/// [`SyncConfig::max_message_bytes`]):
///
/// 1. The initiator sends its root digest.
/// 2. If the roots are equal the responder answers with an empty turn and both
///    are done: one exchange of a few dozen bytes.
/// 3. Otherwise each turn carries the sender's summaries of the nodes that
///    differ, one level further down; a node with few leaves is described by
///    its leaves.
/// 4. The side that compares leaves pushes the writes and member records the
///    other lacks and asks for those it lacks; the answer carries them.
/// 5. A turn that asks nothing ends the session.
///
/// ```
/// use gossip_antientropy::{Session, SyncConfig, SyncState};
/// use gossip_core::{ClusterId, Limits, MemberMeta, NodeKey, Timestamp};
///
/// let cluster = ClusterId::from_name("doc");
/// let config = SyncConfig::new(cluster);
/// let (a_key, b_key) = (NodeKey::from_secret_bytes(&[1; 32]), NodeKey::from_secret_bytes(&[2; 32]));
/// let (a_id, b_id) = (a_key.id(), b_key.id());
/// let mut a = SyncState::new(a_key, cluster, MemberMeta::default(), Limits::default());
/// let mut b = SyncState::new(b_key, cluster, MemberMeta::default(), Limits::default());
/// a.set("k", &b"v"[..]).unwrap();
///
/// let now = Timestamp::ZERO;
/// let mut initiator = Session::initiate(config.clone(), b_id, &a, now);
/// let mut responder = Session::respond(config, a_id, now);
/// while !(initiator.is_finished() && responder.is_finished()) {
///     while let Some(bytes) = initiator.poll_transmit() {
///         responder.handle_bytes(now, &mut b, &bytes).unwrap();
///     }
///     while let Some(bytes) = responder.poll_transmit() {
///         initiator.handle_bytes(now, &mut a, &bytes).unwrap();
///     }
/// }
/// assert_eq!(a.root(), b.root());
/// assert_eq!(b.kv().get(&a_id, "k").unwrap().as_ref(), b"v");
/// ```
#[derive(Debug)]
pub struct Session {
    config: SyncConfig,
    peer: NodeId,
    phase: Phase,
    reply: Reply,
    /// Owner deltas received in parts, waiting for their last part.
    pending: BTreeMap<NodeId, OwnerDelta>,
    outbox: VecDeque<Vec<u8>>,
    deadline: Timestamp,
    error: Option<Error>,
    stats: SessionStats,
    /// Key changes applied to the state, until the driver takes them.
    changes: Vec<KvChange>,
    member_changes: Vec<NodeId>,
}

impl Session {
    /// Starts a sync with `peer`: queues this replica's root digest.
    pub fn initiate(config: SyncConfig, peer: NodeId, state: &SyncState, now: Timestamp) -> Self {
        let mut session = Self::new(config, peer, Phase::AwaitingTurn, now);
        session.send(&SyncMessage::Root(state.root()));
        session.stats.turns_sent += 1;
        session
    }

    /// The message that refuses a sync a peer starts, for a responder
    /// already running as many sessions as it allows: the initiator's
    /// session ends at once with [`Error::Busy`].
    pub fn refusal(config: &SyncConfig) -> Vec<u8> {
        encode_message(config, &SyncMessage::Busy).unwrap_or_default()
    }

    /// Answers a sync that `peer` starts.
    pub fn respond(config: SyncConfig, peer: NodeId, now: Timestamp) -> Self {
        Self::new(config, peer, Phase::AwaitingRoot, now)
    }

    fn new(config: SyncConfig, peer: NodeId, phase: Phase, now: Timestamp) -> Self {
        Session {
            deadline: now + config.idle_timeout,
            config,
            peer,
            phase,
            reply: Reply::default(),
            pending: BTreeMap::new(),
            outbox: VecDeque::new(),
            error: None,
            stats: SessionStats::default(),
            changes: Vec::new(),
            member_changes: Vec::new(),
        }
    }

    /// The peer.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// `true` once the session is over, cleanly or not.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed) && self.outbox.is_empty()
    }

    /// The error that ended the session, if one did.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// What the session cost so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Takes the key changes this session applied to the state since the
    /// last call (for the driver's key-changed events).
    pub fn take_changes(&mut self) -> Vec<KvChange> {
        std::mem::take(&mut self.changes)
    }

    /// Takes the ids of the members whose records this session changed in
    /// the state since the last call.
    pub fn take_member_changes(&mut self) -> Vec<NodeId> {
        std::mem::take(&mut self.member_changes)
    }

    /// The next message to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// When [`handle_timeout`](Session::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        (!matches!(self.phase, Phase::Done | Phase::Failed)).then_some(self.deadline)
    }

    /// Fails the session if it has been idle past its timeout.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if now >= self.deadline && !matches!(self.phase, Phase::Done | Phase::Failed) {
            self.fail(Error::TimedOut);
        }
    }

    fn fail(&mut self, error: Error) -> Error {
        self.phase = Phase::Failed;
        self.outbox.clear();
        self.error = Some(error.clone());
        error
    }

    /// Feeds a message from the peer.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] and [`Error::Protocol`]. The session is then over;
    /// the state is as it was before this message (a message's writes are
    /// checked whole before any is applied).
    pub fn handle_bytes(
        &mut self,
        now: Timestamp,
        state: &mut SyncState,
        bytes: &[u8],
    ) -> Result<(), Error> {
        if matches!(self.phase, Phase::Done | Phase::Failed) {
            return Err(Error::Protocol("message after the session ended"));
        }
        self.stats.messages_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        self.deadline = now + self.config.idle_timeout;
        let message =
            match decode_frame::<SyncMessage>(bytes, self.config.cluster, &self.config.limits) {
                Ok(frame) => frame.body,
                Err(err) => return Err(self.fail(Error::Decode(err))),
            };
        let result = match message {
            SyncMessage::Root(root) => self.handle_root(state, root),
            SyncMessage::Part(part) => self.handle_part(state, part),
            // Only as the answer to an initiator's root.
            SyncMessage::Busy
                if self.phase == Phase::AwaitingTurn && self.stats.turns_received == 0 =>
            {
                Err(Error::Busy)
            }
            SyncMessage::Busy => Err(Error::Protocol("unexpected refusal")),
        };
        result.map_err(|err| self.fail(err))
    }

    fn handle_root(
        &mut self,
        state: &SyncState,
        root: crate::message::RootDigest,
    ) -> Result<(), Error> {
        if self.phase != Phase::AwaitingRoot {
            return Err(Error::Protocol("unexpected root"));
        }
        self.stats.turns_received += 1;
        if root == state.root() {
            self.send_turn(state);
            self.phase = Phase::Done;
            return Ok(());
        }
        self.reply.nodes.push(self.summary_at(state, Prefix::ROOT));
        self.reply.asked = true;
        self.send_turn(state);
        self.phase = Phase::AwaitingTurn;
        Ok(())
    }

    fn handle_part(&mut self, state: &mut SyncState, part: Part) -> Result<(), Error> {
        if self.phase != Phase::AwaitingTurn {
            return Err(Error::Protocol("part out of turn"));
        }
        if self.stats.turns_sent + self.stats.turns_received >= self.config.max_turns {
            return Err(Error::Protocol("too many turns"));
        }
        // Check everything that can be checked before changing anything.
        let mut merged_members = Vec::new();
        for member in &part.members {
            match state.check_member(member) {
                Ok(Some(merged)) => merged_members.push(merged),
                Ok(None) => {}
                // Revocations reach nodes at different times: a peer may
                // still hold what this node no longer takes.
                Err(CoreError::Revoked { .. }) => self.stats.refused.count(Refusal::Revoked),
                Err(err) => return Err(self.refuse(err)),
            }
        }
        for summary in &part.nodes {
            if let NodeView::Children(children) = &summary.view
                && (children.len() > FANOUT
                    || children.iter().any(|(n, _)| usize::from(*n) >= FANOUT))
            {
                return Err(Error::Protocol("bad child list"));
            }
        }
        let mut ready = self.take_complete(part.delta, state.limits())?;
        let before = ready.owners.len();
        ready.owners.retain(|d| !state.is_revoked(&d.owner));
        for _ in ready.owners.len()..before {
            self.stats.refused.count(Refusal::Revoked);
        }
        let entries: usize = ready.owners.iter().map(|d| d.entries.len()).sum();
        let changes = match state.apply_delta(ready) {
            Ok(changes) => changes,
            Err(err) => return Err(self.refuse(err)),
        };
        self.changes.extend(changes);
        self.stats.entries_received += entries as u64;
        self.stats.members_received += part.members.len() as u64;
        for merged in merged_members {
            let id = merged.id;
            // A full table refuses newcomers, which the next round retries.
            if state.hold_merged(merged) {
                self.member_changes.push(id);
            }
        }

        self.reply.asked |=
            !part.nodes.is_empty() || !part.wants.is_empty() || !part.member_wants.is_empty();
        for want in part.wants {
            self.reply
                .pushes
                .insert(want.owner, (want.max_version, want.floor));
        }
        self.reply.member_pushes.extend(part.member_wants);
        for summary in part.nodes {
            self.compare(state, summary)?;
        }

        if part.end_of_turn {
            self.stats.turns_received += 1;
            if self.reply.asked {
                let asks = self.send_turn(state);
                self.phase = if asks {
                    Phase::AwaitingTurn
                } else {
                    Phase::Done
                };
            } else {
                self.phase = Phase::Done;
            }
        }
        Ok(())
    }

    /// Counts a refusal of the peer's records or writes, which ends the
    /// session.
    fn refuse(&mut self, err: CoreError) -> Error {
        if let Some(reason) = err.refusal() {
            self.stats.refused.count(reason);
        }
        Error::Refused(err)
    }

    /// Joins split owner deltas, returning those now complete. An owner's
    /// writes are applied only whole: a replica left with part of a transfer
    /// would lack keys overwritten past the part, yet claim its version.
    fn take_complete(&mut self, delta: Delta, limits: &Limits) -> Result<Delta, Error> {
        let mut ready = Delta::default();
        for chunk in delta.owners {
            let joined = match self.pending.remove(&chunk.owner) {
                None => chunk,
                Some(mut joined) => {
                    if joined.append(chunk).is_err() {
                        return Err(Error::Protocol("split delta out of order"));
                    }
                    joined
                }
            };
            if joined.entries.len() > limits.max_keys_per_node {
                return Err(Error::Protocol("split delta longer than any owner's state"));
            }
            if joined.complete {
                ready.owners.push(joined);
            } else {
                self.pending.insert(joined.owner, joined);
            }
        }
        Ok(ready)
    }

    /// This replica's summary of the node at `prefix`.
    fn summary_at(&self, state: &SyncState, prefix: Prefix) -> NodeSummary {
        let view = match state.view(&prefix, self.config.leaf_threshold) {
            None => NodeView::Leaves(Vec::new()),
            Some(View::Children(children)) => NodeView::Children(
                children
                    .into_iter()
                    .map(|(n, d)| (n, ShortDigest::from(d)))
                    .collect(),
            ),
            Some(View::Leaves(leaves)) => NodeView::Leaves(
                leaves
                    .iter()
                    .map(|(owner, _)| state.summary(owner))
                    .collect(),
            ),
        };
        NodeSummary { prefix, view }
    }

    /// Compares the peer's summary of a node with ours, planning the reply.
    fn compare(&mut self, state: &SyncState, theirs: NodeSummary) -> Result<(), Error> {
        let prefix = theirs.prefix;
        match theirs.view {
            NodeView::Children(their_children) => {
                let ours = self.summary_at(state, prefix);
                match ours.view {
                    NodeView::Children(our_children) => {
                        for nibble in 0..FANOUT as u8 {
                            let a = our_children
                                .iter()
                                .find(|(n, _)| *n == nibble)
                                .map(|(_, d)| *d);
                            let b = their_children
                                .iter()
                                .find(|(n, _)| *n == nibble)
                                .map(|(_, d)| *d);
                            if a != b {
                                let child = prefix.child(nibble)?;
                                self.reply.nodes.push(self.summary_at(state, child));
                            }
                        }
                    }
                    // We hold few leaves here: let the peer compare them.
                    leaves @ NodeView::Leaves(_) => self.reply.nodes.push(NodeSummary {
                        prefix,
                        view: leaves,
                    }),
                }
            }
            NodeView::Leaves(their_leaves) => {
                if their_leaves.iter().any(|leaf| !prefix.covers(&leaf.owner)) {
                    return Err(Error::Protocol("leaf outside its prefix"));
                }
                let ours: Vec<LeafSummary> = state
                    .leaves_under(&prefix)
                    .iter()
                    .map(|(owner, _)| state.summary(owner))
                    .collect();
                let theirs: BTreeMap<NodeId, LeafSummary> =
                    their_leaves.into_iter().map(|l| (l.owner, l)).collect();
                for mine in &ours {
                    match theirs.get(&mine.owner) {
                        Some(their) => self.plan_leaf(mine, their),
                        None => self.plan_missing_there(mine),
                    }
                }
                for their in theirs.values() {
                    if !ours.iter().any(|m| m.owner == their.owner) {
                        self.plan_missing_here(their);
                    }
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, message: &SyncMessage) {
        // Parts are sized to fit; a frame over the cap would be a bug here,
        // and is dropped rather than sent.
        if let Some(bytes) = encode_message(&self.config, message) {
            self.stats.messages_sent += 1;
            self.stats.bytes_sent += bytes.len() as u64;
            self.outbox.push_back(bytes);
        }
    }

    /// Sends the reply gathered while reading the peer's turn, split into
    /// parts that fit a message. Returns whether it asks for an answer.
    fn send_turn(&mut self, state: &SyncState) -> bool {
        let reply = std::mem::take(&mut self.reply);
        let asks =
            !reply.nodes.is_empty() || !reply.wants.is_empty() || !reply.member_wants.is_empty();
        // Frame header, message tag, end-of-turn flag, the empty rumor
        // section, and the growth of five length prefixes.
        let room = self
            .config
            .max_message_bytes
            .saturating_sub(HEADER_LEN + 16);
        let mut parts = PartWriter::new(room);
        for node in reply.nodes {
            let len = encoded_len(&node);
            parts.make_room(len).nodes.push(node);
        }
        for want in reply.wants.into_values() {
            let len = encoded_len(&want);
            parts.make_room(len).wants.push(want);
        }
        for id in reply.member_wants {
            let len = encoded_len(&id);
            parts.make_room(len).member_wants.push(id);
        }
        for id in reply.member_pushes {
            if let Some(member) = state.member(&id) {
                let member: Member = member.clone();
                let len = encoded_len(&member);
                parts.make_room(len).members.push(member);
                self.stats.members_sent += 1;
            }
        }
        for (owner, (mut peer_max, mut peer_floor)) in reply.pushes {
            let Some(ours) = state.kv().node(&owner) else {
                continue;
            };
            let our_max = ours.max_version();
            loop {
                let delta = state
                    .kv()
                    .owner_delta(&owner, peer_max, peer_floor, parts.room_left());
                let Some(delta) = delta else {
                    if parts.current_is_empty() {
                        // Not even an empty message fits the next write:
                        // larger than any message. Skip the owner.
                        break;
                    }
                    parts.flush();
                    continue;
                };
                let (up_to, reset, floor) = (delta.up_to, delta.reset, delta.floor);
                self.stats.entries_sent += delta.entries.len() as u64;
                let len = encoded_len(&delta);
                parts.make_room(len).delta.owners.push(delta);
                if up_to >= our_max {
                    break;
                }
                // Split: continue from where this part stopped.
                peer_max = up_to;
                if reset {
                    peer_floor = floor;
                }
                parts.flush();
            }
        }
        for part in parts.finish() {
            self.send(&SyncMessage::Part(part));
        }
        self.stats.turns_sent += 1;
        asks
    }

    fn plan_leaf(&mut self, mine: &LeafSummary, their: &LeafSummary) {
        if mine.member != their.member {
            // Either may be newer; the join is idempotent, so exchange both.
            if mine.member != 0 {
                self.reply.member_pushes.insert(mine.owner);
            }
            if their.member != 0 {
                self.reply.member_wants.insert(mine.owner);
            }
        }
        let ours = (mine.max_version, mine.floor);
        let theirs = (their.max_version, their.floor);
        if ours > theirs {
            self.reply.pushes.insert(mine.owner, theirs);
        } else if theirs > ours {
            self.reply.wants.insert(
                mine.owner,
                OwnerDigest {
                    owner: mine.owner,
                    max_version: mine.max_version,
                    floor: mine.floor,
                },
            );
        }
    }

    fn plan_missing_there(&mut self, mine: &LeafSummary) {
        if mine.member != 0 {
            self.reply.member_pushes.insert(mine.owner);
        }
        if mine.max_version > 0 || mine.floor > 0 {
            self.reply.pushes.insert(mine.owner, (0, 0));
        }
    }

    fn plan_missing_here(&mut self, their: &LeafSummary) {
        if their.member != 0 {
            self.reply.member_wants.insert(their.owner);
        }
        if their.max_version > 0 || their.floor > 0 {
            self.reply.wants.insert(
                their.owner,
                OwnerDigest {
                    owner: their.owner,
                    max_version: 0,
                    floor: 0,
                },
            );
        }
    }
}

/// Fills parts up to a byte budget, starting a new one when the next item
/// would not fit.
struct PartWriter {
    room: usize,
    used: usize,
    current: Part,
    done: Vec<Part>,
}

impl PartWriter {
    fn new(room: usize) -> Self {
        PartWriter {
            room,
            used: encoded_len(&Part::default()),
            current: Part::default(),
            done: Vec::new(),
        }
    }

    fn current_is_empty(&self) -> bool {
        self.current == Part::default()
    }

    fn room_left(&self) -> usize {
        self.room.saturating_sub(self.used)
    }

    /// The part to add an item of `len` bytes to.
    fn make_room(&mut self, len: usize) -> &mut Part {
        if self.used + len > self.room && !self.current_is_empty() {
            self.flush();
        }
        self.used += len;
        &mut self.current
    }

    fn flush(&mut self) {
        self.done.push(std::mem::take(&mut self.current));
        self.used = encoded_len(&Part::default());
    }

    fn finish(mut self) -> Vec<Part> {
        self.current.end_of_turn = true;
        self.done.push(self.current);
        self.done
    }
}
