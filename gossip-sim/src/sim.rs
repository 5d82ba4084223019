//! The engine: nodes running the real SWIM machine on a virtual clock and a
//! seeded network.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gossip_core::{
    Bytes, GossipRng, Incarnation, Key, Member, MemberMeta, MemberStatus, NodeId, NodeKey,
    Timestamp,
};
use gossip_member::{Replica, ReplicaConfig, ReplicaEvent, Role, StoredKeys};
use gossip_swim::{Config, Event, Swim};
use rand::{Rng, SeedableRng};

/// The simulated network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// Shortest one-way latency.
    pub latency_min: Duration,
    /// Longest one-way latency; latencies are uniform in between, so
    /// datagrams reorder.
    pub latency_max: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Round trips that differ between pairs: each pair of nodes gets a
    /// fixed round trip drawn uniformly from this range (from the seed and
    /// the pair), half of it added to every one-way latency between them.
    /// `None` (the default) gives every pair the same.
    pub pair_round_trip: Option<(Duration, Duration)>,
}

impl Default for NetConfig {
    /// A LAN: 0.5 to 2 ms one way, no loss, no duplication.
    fn default() -> Self {
        NetConfig {
            latency_min: Duration::from_micros(500),
            latency_max: Duration::from_millis(2),
            loss: 0.0,
            duplicate: 0.0,
            pair_round_trip: None,
        }
    }
}

/// The simulated address of node `index`: 10.x.y.z:7946.
pub fn addr_of(index: usize) -> SocketAddr {
    let [_, a, b, c] = (index as u32).to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(10, a, b, c), 7946))
}

fn index_of(addr: &SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(v4) => {
            let [_, a, b, c] = v4.ip().octets();
            Some(u32::from_be_bytes([0, a, b, c]) as usize)
        }
        SocketAddr::V6(_) => None,
    }
}

/// The signing key of node `index`, derived from the index so every run
/// has the same ids.
pub fn key_of(index: usize) -> NodeKey {
    NodeKey::from_secret_bytes(blake3::hash(format!("sim-node-{index}").as_bytes()).as_bytes())
}

/// The id of node `index`: the public half of [`key_of`], as on a real
/// cluster.
pub fn id_of(index: usize) -> NodeId {
    key_of(index).id()
}

#[derive(Debug)]
struct Node {
    replica: Option<Replica>,
    /// Whether the node's host answers for it when its process is gone
    /// (killed rather than lost).
    host_up: bool,
    /// When each sender first sent it a datagram while it was down.
    sent_while_down: BTreeMap<usize, Timestamp>,
    /// A paused node handles nothing until then (a stalled process).
    paused_until: Option<Timestamp>,
    /// A slow node handles what arrives until then only after a delay.
    slow: Option<(Timestamp, Duration)>,
    /// When the last datagram a slow spell held back is handled: what
    /// arrives before then waits behind it (a node's input is one queue).
    queued_until: Timestamp,
    /// The node's own keys as it last wrote them: what a real node keeps in
    /// its data directory, so a restart gets them back.
    stored: StoredKeys,
}

/// An event seen by one node, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// When.
    pub at: Timestamp,
    /// Which node saw it.
    pub node: usize,
    /// What.
    pub event: Event,
}

/// Traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Datagrams the nodes sent.
    pub sent: u64,
    /// Bytes the nodes sent.
    pub bytes: u64,
    /// Datagrams lost (loss, partitions, dead or paused receivers).
    pub dropped: u64,
    /// Sync turns the nodes sent (on reliable streams).
    pub sync_sent: u64,
    /// Bytes of those turns.
    pub sync_bytes: u64,
    /// Sync turns lost to partitions, dead or paused receivers.
    pub sync_dropped: u64,
}

/// What travels between two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Payload {
    /// A SWIM datagram: may be lost or duplicated.
    Datagram(Vec<u8>),
    /// A sync turn on a stream: arrives whole and once, unless the link is
    /// cut or the receiver is down (QUIC retransmits what loss takes).
    Sync {
        role: Role,
        id: u64,
        parts: Vec<Vec<u8>>,
    },
    /// An ICMP port unreachable from the host of the node a datagram went
    /// to, whose process is gone: reported to the sender.
    Unreachable {
        /// The node whose port is closed.
        of: usize,
    },
}

/// Something in flight, ordered by arrival and then by sending order.
#[derive(Debug)]
struct Flight {
    at: Timestamp,
    order: u64,
    to: usize,
    from: usize,
    payload: Payload,
    /// When it arrived, if a slow receiver held it back.
    held_since: Option<Timestamp>,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Flight {}

impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Flight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// A watermark for a member not seen: above every incarnation
/// ([`Incarnation::MAX`] is half the range).
const NO_WATERMARK: u64 = u64::MAX;

/// A cluster of SWIM machines on a virtual clock and a seeded network. The
/// same seed gives the same run, bit for bit: [`Sim::trace_hash`] digests
/// every delivery and event.
pub struct Sim {
    nodes: Vec<Node>,
    /// Node ids by index (deriving one costs a hash).
    id_list: Vec<NodeId>,
    ids: HashMap<NodeId, usize>,
    config: Config,
    replica_config: ReplicaConfig,
    rng_seed: u64,
    net: NetConfig,
    now: Timestamp,
    rng: GossipRng,
    in_flight: BinaryHeap<Reverse<Flight>>,
    timers: BinaryHeap<Reverse<(Timestamp, usize)>>,
    blocked: BTreeSet<(usize, usize)>,
    next_flight: u64,
    events: Vec<Seen>,
    traffic: Traffic,
    /// Pushes by (sender, receiver), once [`record_pushes`](Sim::record_pushes)
    /// turns counting on.
    pushes: Option<BTreeMap<(usize, usize), u64>>,
    trace: blake3::Hasher,
    /// Whether events stay out of the trace (an instant convergence's
    /// millions of joins, which are the same for equal runs anyway).
    trace_paused: bool,
    /// Highest incarnation each node has seen of each other, for the
    /// invariant that incarnations never go back.
    /// The highest incarnation each node has seen of each other, by
    /// observer and subject index: dense, since a converged cluster fills it.
    /// Incarnations are stored bare, [`NO_WATERMARK`] for none: half the
    /// size of an `Option`, and the simulation keeps one per member view.
    watermarks: Vec<Vec<u64>>,
    /// Keys whose owner's last write deleted them, by owner index.
    deleted: BTreeSet<(usize, String)>,
    /// (observer, owner, key) for every deletion an observer has seen of
    /// a key in `deleted`: that key must never come back there.
    seen_deleted: BTreeSet<(usize, usize, String)>,
    violations: Vec<String>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.nodes.len())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// `n` nodes running `config` (each with its own RNG seed derived from
    /// `rng_seed`), not yet knowing each other.
    pub fn new(n: usize, config: Config, net: NetConfig, rng_seed: u64) -> Self {
        let mut sim = Sim {
            nodes: Vec::with_capacity(n),
            id_list: (0..n).map(id_of).collect(),
            ids: (0..n).map(|i| (id_of(i), i)).collect(),
            replica_config: ReplicaConfig::new(config.cluster),
            config,
            rng_seed,
            net,
            now: Timestamp::ZERO,
            rng: GossipRng::seed_from_u64(rng_seed),
            in_flight: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            blocked: BTreeSet::new(),
            next_flight: 0,
            events: Vec::new(),
            traffic: Traffic::default(),
            pushes: None,
            trace: blake3::Hasher::new(),
            trace_paused: false,
            watermarks: vec![Vec::new(); n],
            deleted: BTreeSet::new(),
            seen_deleted: BTreeSet::new(),
            violations: Vec::new(),
        };
        for i in 0..n {
            let replica = sim.make_node(i, Incarnation::ZERO, StoredKeys::default());
            sim.nodes.push(Node {
                replica: Some(replica),
                host_up: false,
                sent_while_down: BTreeMap::new(),
                paused_until: None,
                slow: None,
                queued_until: Timestamp::ZERO,
                stored: StoredKeys::default(),
            });
            sim.after_input(i);
        }
        sim
    }

    fn make_node(&self, i: usize, incarnation: Incarnation, keys: StoredKeys) -> Replica {
        let mut config = self.config.clone();
        let rng_seed = self
            .rng_seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64);
        config.rng_seed = rng_seed;
        let mut replica_config = self.replica_config.clone();
        replica_config.rng_seed = rng_seed.rotate_left(17);
        let meta = MemberMeta::new(format!("n{i}"), [addr_of(i)]);
        let swim = Swim::new(config, key_of(i), meta, incarnation, self.now);
        // The keys were accepted once under the same limits.
        Replica::new(replica_config, swim, keys, self.now)
            .expect("stored keys were written under the same limits")
    }

    /// Every node learns every other node's record at once: a converged
    /// cluster, without replaying how it got there.
    pub fn converge_instantly(&mut self) {
        // Shared: the nodes hold one allocation of each record between them
        // until it changes, not one copy per node (10,000 nodes would hold
        // 100 million).
        let records: Vec<Arc<Member>> = (0..self.nodes.len())
            .filter_map(|i| {
                self.nodes[i]
                    .replica
                    .as_ref()
                    .map(|r| Arc::new(r.swim().members().local().clone()))
            })
            .collect();
        // The Joined events are checked but not kept: they are not news,
        // and at thousands of nodes there are millions of them.
        let kept = self.events.len();
        self.trace_paused = true;
        for i in 0..self.nodes.len() {
            let now = self.now;
            if let Some(replica) = self.nodes[i].replica.as_mut() {
                replica.with_swim(now, |swim| {
                    swim.restore_members(now, records.iter().cloned());
                });
            }
            self.after_input(i);
            self.events.truncate(kept);
        }
        self.trace_paused = false;
        self.trace
            .update(format!("{:?}|converged", self.now).as_bytes());
    }

    /// Gives every node the addresses of `seed_nodes` as its seeds, as a
    /// cluster configured with them holds them after its join.
    pub fn set_seeds(&mut self, seed_nodes: &[usize]) {
        let seeds: Vec<SocketAddr> = seed_nodes.iter().map(|&i| addr_of(i)).collect();
        for i in 0..self.nodes.len() {
            let seeds = seeds.clone();
            self.with_node(i, |swim, _| swim.set_seeds(seeds));
        }
    }

    /// Every node but `seed_node` joins through node `seed_node`.
    pub fn join_through(&mut self, seed_node: usize) {
        for i in 0..self.nodes.len() {
            if i == seed_node {
                continue;
            }
            let now = self.now;
            if let Some(replica) = self.nodes[i].replica.as_mut() {
                replica.join(now, vec![addr_of(seed_node)]);
            }
            self.after_input(i);
        }
    }

    /// Number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `true` with no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The virtual time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Node `i`'s SWIM machine, if it is running.
    pub fn node(&self, i: usize) -> Option<&Swim> {
        self.replica(i).map(Replica::swim)
    }

    /// Node `i`'s replica (SWIM and the Merkle sync), if it is running.
    pub fn replica(&self, i: usize) -> Option<&Replica> {
        self.nodes.get(i)?.replica.as_ref()
    }

    /// What node `observer` believes of node `subject`.
    pub fn view(&self, observer: usize, subject: usize) -> Option<MemberStatus> {
        let id = self.id_list.get(subject)?;
        self.node(observer)?.members().get(id).map(|m| m.status)
    }

    /// The id of node `i`.
    pub fn id(&self, i: usize) -> Option<NodeId> {
        self.id_list.get(i).copied()
    }

    /// `true` if node `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.replica.is_some())
    }

    /// Traffic so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Counts every push of news from now on, by sender and receiver.
    pub fn record_pushes(&mut self) {
        self.pushes.get_or_insert_with(BTreeMap::new);
    }

    /// The pushes counted since [`record_pushes`](Sim::record_pushes), by
    /// (sender, receiver).
    pub fn pushes(&self) -> Option<&BTreeMap<(usize, usize), u64>> {
        self.pushes.as_ref()
    }

    /// The events seen so far, in order; drained by the call.
    pub fn take_events(&mut self) -> Vec<Seen> {
        std::mem::take(&mut self.events)
    }

    /// Invariant violations seen so far (empty in a correct run).
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// A digest of every delivery and event so far: equal for equal runs.
    pub fn trace_hash(&self) -> blake3::Hash {
        self.trace.finalize()
    }

    /// Kills node `i`'s process, its host up: it stops without a word, and
    /// every datagram sent to it draws an ICMP port unreachable back to the
    /// sender ([`Swim::handle_unreachable`]).
    pub fn kill(&mut self, i: usize) {
        self.crash(i);
        if let Some(node) = self.nodes.get_mut(i) {
            node.host_up = true;
        }
    }

    /// When a datagram was first sent to node `i` after it crashed or was
    /// killed (the first chance anyone had to notice); `None` while it runs.
    pub fn first_sent_while_down(&self, i: usize) -> Option<Timestamp> {
        self.nodes.get(i)?.sent_while_down.values().min().copied()
    }

    /// When node `sender` first sent a datagram to node `i` after `i`
    /// crashed or was killed; `None` while `i` runs or if it sent none.
    pub fn first_sent_while_down_by(&self, i: usize, sender: usize) -> Option<Timestamp> {
        self.nodes.get(i)?.sent_while_down.get(&sender).copied()
    }

    /// Crashes node `i`, or loses its host: it stops without a word and
    /// nothing answers for it.
    pub fn crash(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i)
            && let Some(replica) = node.replica.take()
        {
            node.stored = replica.stored_keys();
        }
        self.trace
            .update(b"crash")
            .update(&(i as u64).to_le_bytes());
    }

    /// Restarts node `i` at `incarnation`, with the keys it had written
    /// (as a node's data directory keeps them), and has it join through `via`.
    pub fn restart(&mut self, i: usize, incarnation: Incarnation, via: usize) {
        let Some(stored) = self.nodes.get(i).map(|n| n.stored.clone()) else {
            return;
        };
        let mut replica = self.make_node(i, incarnation, stored);
        replica.join(self.now, vec![addr_of(via)]);
        if let Some(node) = self.nodes.get_mut(i) {
            node.replica = Some(replica);
            node.host_up = false;
            node.sent_while_down.clear();
            node.paused_until = None;
            node.slow = None;
            node.queued_until = Timestamp::ZERO;
        }
        self.after_input(i);
    }

    /// Restarts node `i` as a node without a data directory does: at
    /// incarnation 0 and with no keys, joining through `via`.
    pub fn restart_without_data_dir(&mut self, i: usize, via: usize) {
        if let Some(node) = self.nodes.get_mut(i) {
            node.stored = StoredKeys::default();
        }
        self.restart(i, Incarnation::ZERO, via);
    }

    /// Node `i` sets one of its own keys (nothing if it is not running or
    /// the limits refuse the write).
    pub fn set(&mut self, i: usize, key: &str, value: &[u8]) {
        let now = self.now;
        let Some(replica) = self.nodes.get_mut(i).and_then(|n| n.replica.as_mut()) else {
            return;
        };
        if replica
            .set(now, Key::from(key), Bytes::copy_from_slice(value))
            .is_ok()
        {
            // Written again: whatever was seen of its deletion no longer holds.
            self.deleted.remove(&(i, key.to_owned()));
            self.seen_deleted
                .retain(|(_, owner, k)| !(*owner == i && k == key));
        }
        self.after_input(i);
    }

    /// Node `i` deletes one of its own keys; from then on no node that has
    /// seen the deletion may see the key again (checked as an invariant).
    pub fn delete(&mut self, i: usize, key: &str) {
        let now = self.now;
        let Some(replica) = self.nodes.get_mut(i).and_then(|n| n.replica.as_mut()) else {
            return;
        };
        if let Ok(Some(_)) = replica.delete(now, key) {
            self.deleted.insert((i, key.to_owned()));
        }
        self.after_input(i);
    }

    /// `true` if every running node's Merkle root is the same: their member
    /// records and key/value state agree.
    pub fn roots_agree(&self) -> bool {
        let mut roots = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.state().root());
        let Some(first) = roots.next() else {
            return true;
        };
        roots.all(|root| root == first)
    }

    /// Deleted keys some running node still holds, as (holder, owner, key).
    pub fn deleted_keys_held(&self) -> Vec<(usize, usize, String)> {
        let mut held = Vec::new();
        for (owner, key) in &self.deleted {
            for (holder, node) in self.nodes.iter().enumerate() {
                if let Some(replica) = &node.replica
                    && replica
                        .state()
                        .kv()
                        .get(&self.id_list[*owner], key)
                        .is_some()
                {
                    held.push((holder, *owner, key.clone()));
                }
            }
        }
        held
    }

    /// Pauses node `i` for `duration`: it handles nothing meanwhile, and
    /// what arrives for it is lost (a stalled process whose socket buffer
    /// overflows).
    pub fn pause(&mut self, i: usize, duration: Duration) {
        if let Some(node) = self.nodes.get_mut(i) {
            node.paused_until = Some(self.now + duration);
        }
        self.timers.push(Reverse((self.now + duration, i)));
    }

    /// Slows node `i` down for `duration`: everything that arrives for it
    /// meanwhile is handled `delay` late, while its timers keep time (a
    /// process starved of CPU, or with a long queue before its socket: the
    /// slow message processing Lifeguard was made for). What arrives after
    /// the spell waits behind what it held back: a node's input is one
    /// queue, handled in the order it arrived.
    pub fn slow_down(&mut self, i: usize, delay: Duration, duration: Duration) {
        if let Some(node) = self.nodes.get_mut(i) {
            node.slow = Some((self.now + duration, delay));
        }
    }

    /// Drops everything from `from` to `to` (one direction of a partition).
    pub fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    /// Lets `from` reach `to` again.
    pub fn unblock(&mut self, from: usize, to: usize) {
        self.blocked.remove(&(from, to));
    }

    /// Cuts both directions between the two groups.
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
    }

    /// Lifts every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Changes the network.
    pub fn set_net(&mut self, net: NetConfig) {
        self.net = net;
    }

    /// Runs a command on node `i`'s SWIM machine at the current time, then
    /// collects its output.
    pub fn with_node(&mut self, i: usize, command: impl FnOnce(&mut Swim, Timestamp)) {
        let now = self.now;
        if let Some(replica) = self.nodes.get_mut(i).and_then(|n| n.replica.as_mut()) {
            replica.with_swim(now, |swim| command(swim, now));
        }
        self.after_input(i);
    }

    fn is_paused(&self, i: usize) -> bool {
        self.nodes[i]
            .paused_until
            .is_some_and(|until| until > self.now)
    }

    /// Collects node `i`'s datagrams and sync turns into the network and
    /// its events into the log, and schedules its next deadline.
    fn after_input(&mut self, i: usize) {
        let Some(replica) = self.nodes.get_mut(i).and_then(|n| n.replica.as_mut()) else {
            return;
        };
        let mut datagrams = Vec::new();
        while let Some(t) = replica.poll_transmit() {
            datagrams.push(t);
        }
        let mut syncs = Vec::new();
        while let Some(t) = replica.poll_sync() {
            syncs.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = replica.poll_event() {
            events.push(e);
        }
        self.timers.push(Reverse((replica.poll_timeout(), i)));
        for transmit in datagrams {
            self.traffic.sent += 1;
            self.traffic.bytes += transmit.payload.len() as u64;
            let Some(to) = self.link(i, &transmit.addr) else {
                self.traffic.dropped += 1;
                continue;
            };
            let now = self.now;
            if let Some(down) = self.nodes.get_mut(to).filter(|n| n.replica.is_none()) {
                down.sent_while_down.entry(i).or_insert(now);
            }
            if transmit.push
                && let Some(pushes) = self.pushes.as_mut()
            {
                *pushes.entry((i, to)).or_default() += 1;
            }
            if transmit.reliable {
                // A stream: every loss costs a retransmission timeout
                // instead of the message.
                let mut late = Duration::ZERO;
                while self.rng.random::<f64>() < self.net.loss {
                    late += self.retransmit_timeout();
                }
                self.send_after(i, to, Payload::Datagram(transmit.payload), late);
                continue;
            }
            if self.rng.random::<f64>() < self.net.loss {
                self.traffic.dropped += 1;
                continue;
            }
            let copies = if self.rng.random::<f64>() < self.net.duplicate {
                2
            } else {
                1
            };
            for _ in 0..copies {
                self.send(i, to, Payload::Datagram(transmit.payload.clone()));
            }
        }
        for transmit in syncs {
            self.traffic.sync_sent += 1;
            self.traffic.sync_bytes += transmit.parts.iter().map(|p| p.len() as u64).sum::<u64>();
            // A cut link loses the turn; the session then times out, as a
            // real one does when its stream stalls.
            let Some(to) = self.link(i, &transmit.addr) else {
                self.traffic.sync_dropped += 1;
                continue;
            };
            let payload = Payload::Sync {
                role: transmit.role,
                id: transmit.id,
                parts: transmit.parts,
            };
            self.send(i, to, payload);
        }
        for event in events {
            match event {
                ReplicaEvent::Swim(event) => {
                    self.check(i, &event);
                    if !self.trace_paused {
                        self.trace
                            .update(format!("{:?}|{i}|{event:?}", self.now).as_bytes());
                    }
                    self.events.push(Seen {
                        at: self.now,
                        node: i,
                        event,
                    });
                }
                ReplicaEvent::KeyChanged(change) => {
                    self.trace
                        .update(format!("{:?}|{i}|{change:?}", self.now).as_bytes());
                    self.check_key(
                        i,
                        &change.owner,
                        change.key.as_str(),
                        change.value.is_some(),
                    );
                }
                _ => {}
            }
        }
    }

    /// How long a reliable channel takes to resend what was lost: QUIC's
    /// probe timeout, about a round trip and its variation plus the peer's
    /// 25 ms of allowed acknowledgement delay.
    fn retransmit_timeout(&self) -> Duration {
        self.net.latency_max * 3 + Duration::from_millis(25)
    }

    /// The node `from` reaches at `addr`, unless there is none or the link is cut.
    fn link(&self, from: usize, addr: &SocketAddr) -> Option<usize> {
        index_of(addr)
            .filter(|to| *to < self.nodes.len())
            .filter(|to| !self.blocked.contains(&(from, *to)))
    }

    /// Puts `payload` on the wire from `from` to `to`, with a latency drawn
    /// from the network's spread (so messages reorder).
    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        self.send_after(from, to, payload, Duration::ZERO);
    }

    /// Half the fixed round trip between `a` and `b`, with
    /// [`NetConfig::pair_round_trip`]; zero without.
    fn pair_latency(&self, a: usize, b: usize) -> Duration {
        let Some((shortest, longest)) = self.net.pair_round_trip else {
            return Duration::ZERO;
        };
        let (low, high) = (a.min(b) as u64, a.max(b) as u64);
        // SplitMix64 of the pair and the run's seed: fixed for the pair.
        let mut z = self
            .rng_seed
            .wrapping_add(low.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_add(high.wrapping_mul(0xbf58_476d_1ce4_e5b9));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
        let round_trip = shortest + longest.saturating_sub(shortest).mul_f64(fraction);
        round_trip / 2
    }

    /// As [`send`](Sim::send), `late` later.
    fn send_after(&mut self, from: usize, to: usize, payload: Payload, late: Duration) {
        let spread = self.net.latency_max.saturating_sub(self.net.latency_min);
        let latency = self.net.latency_min
            + spread.mul_f64(self.rng.random::<f64>())
            + self.pair_latency(from, to);
        self.next_flight += 1;
        self.in_flight.push(Reverse(Flight {
            at: self.now + latency + late,
            order: self.next_flight,
            to,
            from,
            payload,
            held_since: None,
        }));
    }

    /// A deleted key never comes back to a node that has seen it deleted.
    fn check_key(&mut self, observer: usize, owner: &NodeId, key: &str, present: bool) {
        let Some(owner) = self.ids.get(owner).copied() else {
            return;
        };
        if !self.deleted.contains(&(owner, key.to_owned())) {
            return;
        }
        let seen = (observer, owner, key.to_owned());
        if !present {
            self.seen_deleted.insert(seen);
        } else if self.seen_deleted.contains(&seen) {
            self.violations.push(format!(
                "at {:?} node {observer} saw key {key:?} of node {owner} come back after its deletion",
                self.now
            ));
        }
    }

    fn watermark(&mut self, observer: usize, subject: &NodeId) -> Option<&mut u64> {
        let subject = *self.ids.get(subject)?;
        let row = self.watermarks.get_mut(observer)?;
        if row.len() <= subject {
            row.resize(self.ids.len(), NO_WATERMARK);
        }
        row.get_mut(subject)
    }

    /// Incarnations a node sees of another never go back.
    fn check(&mut self, observer: usize, event: &Event) {
        let member = match event {
            Event::Joined(m)
            | Event::Updated(m)
            | Event::Recovered(m)
            | Event::Left(m)
            | Event::Rejoined(m) => m,
            Event::Suspected { member, .. } | Event::Failed { member, .. } => member,
            Event::Removed(id) => {
                if let Some(mark) = self.watermark(observer, id) {
                    *mark = NO_WATERMARK;
                }
                return;
            }
            _ => return,
        };
        let Some(mark) = self.watermark(observer, &member.id) else {
            return;
        };
        let previous = std::mem::replace(mark, member.incarnation.get());
        if previous != NO_WATERMARK && member.incarnation.get() < previous {
            self.violations.push(format!(
                "at {:?} node {observer} saw {} go back from incarnation {} to {}",
                self.now,
                member.id,
                Incarnation::new(previous),
                member.incarnation
            ));
        }
    }

    /// How long a slow receiver holds `flight` back, if it does: its
    /// delay while the spell lasts, and in any case until what a spell held
    /// back has been handled (input is handled in the order it arrived).
    fn holds(&self, flight: &Flight) -> Option<Duration> {
        if flight.held_since.is_some() {
            return None;
        }
        let node = self.nodes.get(flight.to)?;
        let delay = match node.slow {
            Some((until, delay)) if until > self.now => delay,
            _ => Duration::ZERO,
        };
        let wait = delay.max(node.queued_until.saturating_duration_since(self.now));
        (!wait.is_zero()).then_some(wait)
    }

    /// The next moment anything happens, if anything will.
    /// When the next delivery or timer is due, if any.
    pub fn next_moment(&self) -> Option<Timestamp> {
        let flight = self.in_flight.peek().map(|Reverse(flight)| flight.at);
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        [flight, timer].into_iter().flatten().min()
    }

    /// Advances to the next moment and handles everything due. Returns
    /// `false` if nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_moment() else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(Reverse(flight)) = self.in_flight.peek() {
            if flight.at > self.now {
                break;
            }
            let Some(Reverse(mut flight)) = self.in_flight.pop() else {
                break;
            };
            if let Some(delay) = self.holds(&flight) {
                flight.held_since = Some(flight.at);
                flight.at = self.now + delay;
                let queue = &mut self.nodes[flight.to].queued_until;
                *queue = (*queue).max(flight.at);
                self.in_flight.push(Reverse(flight));
                continue;
            }
            let Flight {
                to,
                from,
                payload,
                held_since,
                ..
            } = flight;
            if !self.is_running(to) || self.is_paused(to) {
                match payload {
                    Payload::Datagram(_) => {
                        self.traffic.dropped += 1;
                        if self.nodes[to].host_up && self.is_running(from) {
                            self.send(to, from, Payload::Unreachable { of: to });
                        }
                    }
                    Payload::Sync { .. } => self.traffic.sync_dropped += 1,
                    Payload::Unreachable { .. } => {}
                }
                continue;
            }
            self.trace.update(&(to as u64).to_le_bytes());
            let now = self.now;
            let (from_id, from_addr) = (self.id_list[from], addr_of(from));
            let Some(replica) = self.nodes[to].replica.as_mut() else {
                continue;
            };
            match payload {
                Payload::Datagram(bytes) => {
                    self.trace.update(&bytes);
                    // Refusals are counted by the machine; the network does not care.
                    let arrived = held_since.unwrap_or(now);
                    let _ = replica.handle_late_datagram(now, arrived, from_id, from_addr, &bytes);
                }
                Payload::Unreachable { of } => {
                    self.trace.update(b"unreachable");
                    replica.with_swim(now, |swim| swim.handle_unreachable(now, addr_of(of)));
                }
                Payload::Sync { role, id, parts } => {
                    for part in &parts {
                        self.trace.update(part);
                    }
                    replica.handle_sync(
                        now,
                        from_id,
                        from_addr,
                        role,
                        id,
                        parts.iter().map(Vec::as_slice),
                    );
                }
            }
            self.after_input(to);
        }
        while let Some(Reverse((at, i))) = self.timers.peek().copied() {
            if at > self.now {
                break;
            }
            self.timers.pop();
            if !self.is_running(i) || self.is_paused(i) {
                continue;
            }
            let now = self.now;
            let Some(replica) = self.nodes[i].replica.as_mut() else {
                continue;
            };
            // Timers are lazy: a stale entry finds nothing due and is harmless.
            if replica.poll_timeout() <= now {
                replica.handle_timeout(now);
                self.after_input(i);
            }
        }
        true
    }

    /// Runs until `until` (virtual time).
    pub fn run_until(&mut self, until: Timestamp) {
        while self.next_moment().is_some_and(|t| t <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now + duration);
    }

    /// Runs until `done` holds, checking after every step, for at most
    /// `limit`; returns the virtual time it took.
    pub fn run_while(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        // A check of a whole cluster's views is costly: at most one per
        // virtual millisecond, so results are precise to the millisecond.
        const CHECK_EVERY: Duration = Duration::from_millis(1);
        let start = self.now;
        let end = start + limit;
        let mut next_check = start;
        loop {
            if self.now >= next_check {
                if done(self) {
                    return Some(self.now.saturating_duration_since(start));
                }
                next_check = self.now + CHECK_EVERY;
            }
            match self.next_moment() {
                Some(t) if t <= end => {
                    self.step();
                }
                _ => return done(self).then(|| self.now.saturating_duration_since(start)),
            }
        }
    }

    /// `ids` as node indices (for events that name members by id).
    pub fn index(&self, id: &NodeId) -> Option<usize> {
        self.ids.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_core::ClusterId;

    #[test]
    fn what_arrives_after_a_slow_spell_waits_behind_what_the_spell_held_back() {
        let config = Config::lan(ClusterId::from_name("sim"), 3);
        let mut sim = Sim::new(3, config, NetConfig::default(), 1);
        sim.converge_instantly();
        let start = sim.now();
        let ms = Duration::from_millis;
        sim.slow_down(0, ms(500), ms(100));
        // Two reports for node 0 that a live member's address does not
        // answer: one arrives in the spell (held until 550 ms), one after.
        for (order, at) in [(u64::MAX - 1, ms(50)), (u64::MAX, ms(200))] {
            sim.in_flight.push(Reverse(Flight {
                at: start + at,
                order,
                to: 0,
                from: 1,
                payload: Payload::Unreachable { of: 2 },
                held_since: None,
            }));
        }
        let handled = |sim: &Sim| sim.node(0).map(|node| node.stats().unreachable_reports);
        // A second, shorter spell begins before the first one's backlog is
        // handled: what it holds back still waits its turn.
        sim.run_until(start + ms(150));
        sim.slow_down(0, ms(100), ms(500));
        sim.run_until(start + ms(540));
        assert_eq!(
            handled(&sim),
            Some(0),
            "the later report overtook the held one"
        );
        sim.run_until(start + ms(560));
        assert_eq!(handled(&sim), Some(2));
    }
}
