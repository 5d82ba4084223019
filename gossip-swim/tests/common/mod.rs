//! A deterministic in-memory network for scenario tests: several machines,
//! a message router with fixed latency and per-link blocking, and manual time.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::Duration;

use gossip_core::{
    ClusterId, Incarnation, Limits, MemberMeta, MemberStatus, NodeId, NodeKey, PackedRumors, Rumor,
    RumorQueue, Timestamp, encode_frame,
};
use gossip_swim::{Config, Event, Message, Swim};

pub(crate) const BASE_PORT: u16 = 20_000;

/// Encodes a frame for `cluster` as `sender` would, carrying `rumors`.
pub(crate) fn frame_for(
    cluster: ClusterId,
    sender: usize,
    message: Message,
    rumors: Vec<Rumor>,
) -> Vec<u8> {
    let limits = Limits::default();
    let mut queue = RumorQueue::new(4, limits.clone());
    for rumor in rumors {
        queue.push(rumor).expect("the rumor fits the limits");
    }
    let packed = if queue.is_empty() {
        PackedRumors::empty()
    } else {
        queue.pack(1200, 3)
    };
    let mut bytes = Vec::new();
    let _ = sender; // frames name no sender: the driver authenticates it
    encode_frame(cluster, &message, &packed, &limits, &mut bytes).expect("the frame encodes");
    bytes
}

pub(crate) fn cluster_id() -> ClusterId {
    ClusterId::from_name("swim-tests")
}

/// Node `i`'s signing key.
pub(crate) fn node_key(i: usize) -> NodeKey {
    NodeKey::from_secret_bytes(blake3::hash(format!("node-{i}").as_bytes()).as_bytes())
}

pub(crate) fn node_id(i: usize) -> NodeId {
    node_key(i).id()
}

pub(crate) fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], BASE_PORT + i as u16))
}

/// The test's seed: `GOSSIP_TEST_SEED` if set, else `default`.
pub(crate) fn seed(default: u64) -> u64 {
    std::env::var("GOSSIP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Prints the seed if the test panics while this is alive.
pub(crate) struct SeedGuard(pub(crate) u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "failing seed: {0} (replay with GOSSIP_TEST_SEED={0})",
                self.0
            );
        }
    }
}

/// (delivery, order, to, from, frame, sent over a reliable channel, when it
/// arrived if a slowed receiver holds it back)
type InFlight = Reverse<(
    Timestamp,
    u64,
    usize,
    usize,
    Vec<u8>,
    bool,
    Option<Timestamp>,
)>;

pub(crate) struct Net {
    pub(crate) nodes: Vec<Option<Swim>>,
    /// Each node's identity: `node_id(i)`, but for a second instance of
    /// another node's identity.
    pub(crate) ids: Vec<NodeId>,
    /// The key each node signs with (a node started as another holds its key).
    keys: Vec<NodeKey>,
    pub(crate) now: Timestamp,
    pub(crate) latency: Duration,
    /// Directed links (from, to) whose datagrams are dropped.
    pub(crate) blocked: BTreeSet<(usize, usize)>,
    /// Links that lose every datagram but pass reliable frames (a stream
    /// retransmits until through).
    pub(crate) lossy: BTreeSet<(usize, usize)>,
    /// Every event, by node: (when, event).
    pub(crate) events: Vec<Vec<(Timestamp, Event)>>,
    /// Datagrams each node's machine refused, with the error text.
    pub(crate) refused: Vec<Vec<String>>,
    pub(crate) seed: u64,
    /// Crashed nodes whose host still answers: a datagram to one draws an
    /// ICMP port unreachable back to its sender.
    pub(crate) closed_ports: BTreeSet<usize>,
    /// Stalled nodes, until when: what reaches them waits, and their
    /// timers do not fire.
    pub(crate) stalled_until: Vec<Option<Timestamp>>,
    /// Slowed nodes: until when, and how late what arrives is handled
    /// (their timers keep time).
    slowed: Vec<Option<(Timestamp, Duration)>>,
    /// When the last datagram a slow spell held back is handled, by node:
    /// what arrives before then waits behind it (input is one queue).
    queued_until: Vec<Timestamp>,
    /// Each first node's configuration; nodes started later take the first's.
    configs: Vec<Config>,
    in_flight: BinaryHeap<InFlight>,
    sent: u64,
    _guard: SeedGuard,
}

impl Net {
    /// `n` nodes with `config` (each seeded from `seed`); every node but the
    /// first joins through node 0.
    pub(crate) fn new(n: usize, config: Config, seed: u64) -> Self {
        Self::with_configs(n, seed, |_| config.clone())
    }

    /// `n` nodes, node `i` with `config_of(i)`; every node but the first
    /// joins through node 0.
    pub(crate) fn with_configs(n: usize, seed: u64, config_of: impl Fn(usize) -> Config) -> Self {
        let mut net = Net {
            nodes: Vec::new(),
            ids: (0..n).map(node_id).collect(),
            keys: (0..n).map(node_key).collect(),
            now: Timestamp::ZERO,
            latency: Duration::from_millis(1),
            blocked: BTreeSet::new(),
            lossy: BTreeSet::new(),
            events: vec![Vec::new(); n],
            refused: vec![Vec::new(); n],
            seed,
            closed_ports: BTreeSet::new(),
            stalled_until: vec![None; n],
            slowed: vec![None; n],
            queued_until: vec![Timestamp::ZERO; n],
            configs: (0..n).map(config_of).collect(),
            in_flight: BinaryHeap::new(),
            sent: 0,
            _guard: SeedGuard(seed),
        };
        for i in 0..n {
            let node = net.make_node(i, Incarnation::ZERO);
            net.nodes.push(Some(node));
        }
        for i in 1..n {
            let now = net.now;
            net.node(i).join(now, vec![addr(0)]);
            net.drain(i);
        }
        net
    }

    pub(crate) fn lan(n: usize, seed: u64) -> Self {
        Self::new(n, Config::lan(cluster_id(), n), seed)
    }

    fn make_node(&self, i: usize, incarnation: Incarnation) -> Swim {
        let mut config = self.configs.get(i).unwrap_or(&self.configs[0]).clone();
        config.rng_seed = self.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let meta = MemberMeta::new(format!("node-{i}"), [addr(i)]);
        Swim::new(config, self.keys[i].clone(), meta, incarnation, self.now)
    }

    /// Starts a new node at the next address with `of`'s identity, at
    /// incarnation 0, and has it join through `via`: a second process with
    /// `of`'s key, or a new life of `of` elsewhere. Returns its index.
    pub(crate) fn start_as(&mut self, of: usize, via: usize) -> usize {
        let i = self.nodes.len();
        self.ids.push(node_id(of));
        self.keys.push(node_key(of));
        self.events.push(Vec::new());
        self.refused.push(Vec::new());
        self.stalled_until.push(None);
        self.slowed.push(None);
        self.queued_until.push(Timestamp::ZERO);
        let node = self.make_node(i, Incarnation::ZERO);
        self.nodes.push(Some(node));
        let now = self.now;
        self.node(i).join(now, vec![addr(via)]);
        self.drain(i);
        i
    }

    pub(crate) fn node(&mut self, i: usize) -> &mut Swim {
        self.nodes[i].as_mut().expect("node is running")
    }

    pub(crate) fn get(&self, i: usize) -> &Swim {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some())
    }

    /// Collects a node's outputs: datagrams into the network, events into the log.
    pub(crate) fn drain(&mut self, i: usize) {
        let now = self.now;
        let latency = self.latency;
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        while let Some(t) = node.poll_transmit() {
            let to = usize::from(t.addr.port() - BASE_PORT);
            self.sent += 1;
            self.in_flight.push(Reverse((
                now + latency,
                self.sent,
                to,
                i,
                t.payload,
                t.reliable,
                None,
            )));
        }
        while let Some(event) = node.poll_event() {
            self.events[i].push((now, event));
        }
    }

    /// Crashes node `i`: it stops without a word, and datagrams to it vanish.
    pub(crate) fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Crashes node `i`'s process but not its host: datagrams to it draw an
    /// ICMP port unreachable, reported to their sender.
    pub(crate) fn crash_process(&mut self, i: usize) {
        self.nodes[i] = None;
        self.closed_ports.insert(i);
    }

    /// Closes the port of node `i`, crashed: from now on datagrams to it
    /// draw an ICMP port unreachable (a crashed process that held its port
    /// for a while).
    pub(crate) fn close_port(&mut self, i: usize) {
        self.closed_ports.insert(i);
    }

    /// Stalls node `i` for `duration` (a pause, `SIGSTOP`): it handles
    /// nothing meanwhile, and what reached it waits for the end.
    pub(crate) fn stall(&mut self, i: usize, duration: Duration) {
        self.stalled_until[i] = Some(self.now + duration);
    }

    /// Slows node `i` for `duration`: what arrives meanwhile is handled
    /// `delay` late, while its timers keep time (a process starved of CPU,
    /// or a long queue before its socket); what arrives after waits behind
    /// it.
    pub(crate) fn slow_down(&mut self, i: usize, delay: Duration, duration: Duration) {
        self.slowed[i] = Some((self.now + duration, delay));
    }

    fn is_stalled(&self, i: usize) -> bool {
        self.stalled_until[i].is_some_and(|until| until > self.now)
    }

    /// Restarts node `i` at `incarnation` and has it join through `via`.
    pub(crate) fn restart(&mut self, i: usize, incarnation: Incarnation, via: usize) {
        let node = self.make_node(i, incarnation);
        self.nodes[i] = Some(node);
        let now = self.now;
        self.node(i).join(now, vec![addr(via)]);
        self.drain(i);
    }

    /// Blocks both directions between `a` and `b`.
    pub(crate) fn cut(&mut self, a: usize, b: usize) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
    }

    /// Cuts every link between `left` and `right`, both ways.
    pub(crate) fn split(&mut self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.cut(a, b);
            }
        }
    }

    /// Advances to the next delivery or deadline and handles it. Returns
    /// `false` if nothing is left to happen.
    pub(crate) fn step(&mut self) -> bool {
        let next_delivery = self.in_flight.peek().map(|Reverse((at, ..))| *at);
        let next_timeout = self
            .running()
            .filter_map(|i| {
                let due = self.get(i).poll_timeout()?;
                Some(self.stalled_until[i].map_or(due, |until| due.max(until)))
            })
            .min();
        let Some(next) = [next_delivery, next_timeout].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(Reverse((at, ..))) = self.in_flight.peek() {
            if *at > self.now {
                break;
            }
            let Some(Reverse((_, order, to, from, payload, reliable, held_since))) =
                self.in_flight.pop()
            else {
                break;
            };
            if self.blocked.contains(&(from, to)) || (!reliable && self.lossy.contains(&(from, to)))
            {
                continue;
            }
            if self.nodes[to].is_none() {
                if !reliable && self.closed_ports.contains(&to) && self.nodes[from].is_some() {
                    let now = self.now;
                    self.node(from).handle_unreachable(now, addr(to));
                    self.drain(from);
                }
                continue;
            }
            if let Some(until) = self.stalled_until[to].filter(|until| *until > self.now) {
                self.in_flight
                    .push(Reverse((until, order, to, from, payload, reliable, None)));
                continue;
            }
            let delay = match self.slowed[to] {
                Some((until, delay)) if until > self.now => delay,
                _ => Duration::ZERO,
            }
            .max(self.queued_until[to].saturating_duration_since(self.now));
            if held_since.is_none() && !delay.is_zero() {
                let arrived = Some(self.now);
                self.queued_until[to] = self.queued_until[to].max(self.now + delay);
                self.in_flight.push(Reverse((
                    self.now + delay,
                    order,
                    to,
                    from,
                    payload,
                    reliable,
                    arrived,
                )));
                continue;
            }
            let now = self.now;
            let sender = self.ids[from];
            let arrived = held_since.unwrap_or(now);
            if let Err(err) =
                self.node(to)
                    .handle_late_datagram(now, arrived, sender, addr(from), &payload)
            {
                self.refused[to].push(err.to_string());
            }
            self.drain(to);
        }
        for i in 0..self.nodes.len() {
            let now = self.now;
            if self.is_stalled(i) {
                continue;
            }
            if let Some(node) = self.nodes[i].as_mut()
                && node.poll_timeout().is_some_and(|t| t <= now)
            {
                node.handle_timeout(now);
                self.drain(i);
            }
        }
        true
    }

    pub(crate) fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            let next_delivery = self.in_flight.peek().map(|Reverse((at, ..))| *at);
            let next_timeout = self
                .running()
                .filter_map(|i| {
                    let due = self.get(i).poll_timeout()?;
                    Some(self.stalled_until[i].map_or(due, |until| due.max(until)))
                })
                .min();
            let next = [next_delivery, next_timeout].into_iter().flatten().min();
            if next.is_none_or(|t| t > end) {
                self.now = end;
                break;
            }
            self.step();
        }
    }

    /// Runs until `done` holds or `limit` of simulated time passes; returns
    /// the simulated time it took, or `None` on timeout.
    pub(crate) fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Net) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let end = start + limit;
        while !done(self) {
            if self.now >= end || !self.step() {
                return None;
            }
        }
        Some(self.now.saturating_duration_since(start))
    }

    /// Runs until every running node other than `victim` holds it dead;
    /// the time it took.
    pub(crate) fn run_until_dead_everywhere(
        &mut self,
        victim: usize,
        limit: Duration,
    ) -> Option<Duration> {
        let survivors: Vec<usize> = self.running().filter(|&i| i != victim).collect();
        self.run_until(limit, |net| {
            survivors
                .iter()
                .all(|&i| net.view(i, victim) == Some(MemberStatus::Dead))
        })
    }

    /// What node `observer` believes of node `subject`.
    pub(crate) fn view(&self, observer: usize, subject: usize) -> Option<MemberStatus> {
        self.nodes[observer]
            .as_ref()?
            .members()
            .get(&self.ids[subject])
            .map(|m| m.status)
    }

    /// `true` if every running node sees every running node alive.
    pub(crate) fn converged(&self) -> bool {
        let running: Vec<usize> = self.running().collect();
        running.iter().all(|&o| {
            running
                .iter()
                .all(|&s| self.view(o, s) == Some(MemberStatus::Alive))
        })
    }
}
