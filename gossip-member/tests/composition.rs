//! The composition's own schedule, on a perfect in-memory network: the
//! catch-up syncs after a join, the cooldown after a differing digest, and
//! the periodic backstop.

use std::net::SocketAddr;
use std::time::Duration;

use gossip_core::{
    ClusterId, Incarnation, Limits, MemberMeta, NodeId, NodeKey, PackedRumors, Timestamp,
    encode_frame,
};
use gossip_member::{Replica, ReplicaConfig, ReplicaEvent, Role, StoredKeys};
use gossip_swim::{Config, Message, StateDigest, Swim, TargetTag};

const CLUSTER: &str = "composition";

/// Replicas wired together: whatever one sends, the addressed one receives
/// at once, from the authenticated sender.
struct Net {
    ids: Vec<NodeId>,
    addrs: Vec<SocketAddr>,
    nodes: Vec<Replica>,
    now: Timestamp,
    /// Every sync session that ended, as `(when, who, peer, role, news)`,
    /// where news counts the member records and writes it brought.
    ended: Vec<(Timestamp, usize, NodeId, Role, u64)>,
}

impl Net {
    fn new(n: u8, rng_seed: u64) -> Net {
        let cluster = ClusterId::from_name(CLUSTER);
        let mut net = Net {
            ids: Vec::new(),
            addrs: Vec::new(),
            nodes: Vec::new(),
            now: Timestamp::ZERO,
            ended: Vec::new(),
        };
        for i in 0..n {
            let key = NodeKey::from_secret_bytes(&[i + 1; 32]);
            let id = key.id();
            let addr = SocketAddr::from(([10, 0, 0, i + 1], 7946));
            let mut swim_config = Config::lan(cluster, usize::from(n));
            swim_config.rng_seed = rng_seed + u64::from(i);
            let meta = MemberMeta::new(format!("n{i}"), [addr]);
            let swim = Swim::new(swim_config, key, meta, Incarnation::ZERO, Timestamp::ZERO);
            let mut config = ReplicaConfig::new(cluster);
            config.rng_seed = rng_seed + 100 + u64::from(i);
            let replica = Replica::new(config, swim, StoredKeys::default(), Timestamp::ZERO)
                .expect("no stored keys");
            net.ids.push(id);
            net.addrs.push(addr);
            net.nodes.push(replica);
        }
        net
    }

    fn index_of(&self, addr: SocketAddr) -> usize {
        self.addrs
            .iter()
            .position(|a| *a == addr)
            .expect("sent to a node of the net")
    }

    /// Delivers everything in flight, until nobody has more to say.
    fn deliver(&mut self) {
        loop {
            let mut quiet = true;
            for from in 0..self.nodes.len() {
                while let Some(datagram) = self.nodes[from].poll_transmit() {
                    quiet = false;
                    let to = self.index_of(datagram.addr);
                    let (id, addr) = (self.ids[from], self.addrs[from]);
                    let _ = self.nodes[to].handle_datagram(self.now, id, addr, &datagram.payload);
                }
                while let Some(turn) = self.nodes[from].poll_sync() {
                    quiet = false;
                    let to = self.index_of(turn.addr);
                    let (id, addr) = (self.ids[from], self.addrs[from]);
                    let parts = turn.parts.iter().map(Vec::as_slice);
                    self.nodes[to].handle_sync(self.now, id, addr, turn.role, turn.id, parts);
                }
                while let Some(event) = self.nodes[from].poll_event() {
                    if let ReplicaEvent::SyncEnded {
                        peer, role, stats, ..
                    } = event
                    {
                        let news = stats.members_received + stats.entries_received;
                        self.ended.push((self.now, from, peer, role, news));
                    }
                }
            }
            if quiet {
                return;
            }
        }
    }

    /// Runs every deadline up to `until`, delivering after each.
    fn run_until(&mut self, until: Timestamp) {
        self.deliver();
        loop {
            let next = self
                .nodes
                .iter()
                .map(Replica::poll_timeout)
                .min()
                .expect("a net has nodes");
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            for node in &mut self.nodes {
                if node.poll_timeout() <= self.now {
                    node.handle_timeout(self.now);
                }
            }
            self.deliver();
        }
    }

    /// The syncs node `who` initiated with `peer` that ended, in order.
    fn initiated(&self, who: usize, peer: usize) -> Vec<(Timestamp, u64)> {
        self.ended
            .iter()
            .filter(|(_, w, p, role, _)| {
                *w == who && *p == self.ids[peer] && *role == Role::Initiator
            })
            .map(|(at, _, _, _, news)| (*at, *news))
            .collect()
    }

    /// A ping from `from` to `to` whose state digest is `digest`.
    fn ping(&mut self, from: usize, to: usize, digest: [u8; 8]) {
        let cluster = ClusterId::from_name(CLUSTER);
        let ping = Message::Ping {
            seq: 9_999,
            target: TargetTag::of(&self.ids[to], self.addrs[to]),
            suspicion: None,
            state_digest: Some(StateDigest(digest)),
        };
        let mut frame = Vec::new();
        encode_frame(
            cluster,
            &ping,
            &PackedRumors::empty(),
            &Limits::default(),
            &mut frame,
        )
        .expect("a small frame");
        let (id, addr) = (self.ids[from], self.addrs[from]);
        self.nodes[to]
            .handle_datagram(self.now, id, addr, &frame)
            .expect("a well-formed ping");
        self.deliver();
    }
}

fn at(secs: f64) -> Timestamp {
    Timestamp::ZERO + Duration::from_secs_f64(secs)
}

/// After a join, the joiner syncs again with the member that let it in,
/// every 150 ms, until two syncs in a row bring nothing; then it stops.
#[test]
fn a_joiner_catches_up_with_its_seed_until_two_syncs_bring_nothing() {
    for rng_seed in 0..5 {
        let mut net = Net::new(2, rng_seed);
        // The seed holds keys the joiner must fetch.
        for k in 0..20 {
            net.nodes[0]
                .set(Timestamp::ZERO, format!("k{k}"), "v")
                .expect("a small key");
        }
        let seed_addr = net.addrs[0];
        net.nodes[1].join(Timestamp::ZERO, vec![seed_addr]);
        // Well before the 30 s backstop.
        net.run_until(at(10.0));
        let syncs = net.initiated(1, 0);
        assert!(
            syncs.len() >= 3,
            "rng_seed {rng_seed}: a first sync and two quiet ones at least: {syncs:?}"
        );
        assert!(
            syncs[0].1 > 0,
            "rng_seed {rng_seed}: the first sync brings the seed's state: {syncs:?}"
        );
        let quiet_at_end = syncs.iter().rev().take_while(|s| s.1 == 0).count();
        assert_eq!(
            quiet_at_end, 2,
            "rng_seed {rng_seed}: it stops after two quiet syncs in a row: {syncs:?}"
        );
        for pair in syncs.windows(2) {
            let gap = pair[1].0.saturating_duration_since(pair[0].0);
            assert_eq!(
                gap,
                Duration::from_millis(150),
                "rng_seed {rng_seed}: catch-up syncs follow each other by 150 ms: {syncs:?}"
            );
        }
        let key = net.nodes[1].state().kv().get(&net.ids[0], "k19");
        assert_eq!(key.map(|v| &v[..]), Some(&b"v"[..]), "rng_seed {rng_seed}");
    }
}

/// A peer whose ping shows a different digest is synced with, but not again
/// within the cooldown (1 s by default) of the last sync with it.
#[test]
fn a_differing_digest_starts_a_sync_at_most_once_per_cooldown() {
    let mut net = Net::new(2, 11);
    let seed_addr = net.addrs[0];
    net.nodes[1].join(Timestamp::ZERO, vec![seed_addr]);
    net.run_until(at(5.0));
    let before = net.initiated(0, 1).len();

    // Node 1 pings node 0 with a digest that differs from node 0's.
    net.ping(1, 0, [0xAA; 8]);
    let first = net.initiated(0, 1);
    assert_eq!(
        first.len(),
        before + 1,
        "the differing digest starts a sync"
    );
    let started = first.last().expect("a sync").0;

    // Within the cooldown: nothing.
    net.run_until(started + Duration::from_millis(500));
    net.ping(1, 0, [0xAA; 8]);
    assert_eq!(net.initiated(0, 1).len(), before + 1, "within the cooldown");

    // Past it: a sync again.
    net.run_until(started + Duration::from_millis(1_001));
    net.ping(1, 0, [0xAA; 8]);
    assert_eq!(net.initiated(0, 1).len(), before + 2, "past the cooldown");
}

/// With nothing to repair, each replica still syncs with one random live
/// member every `sync_interval` (30 s by default), and only then.
#[test]
fn the_backstop_syncs_once_per_interval_and_only_then() {
    let mut net = Net::new(3, 21);
    for i in 1..3 {
        let seed_addr = net.addrs[0];
        net.nodes[i].join(Timestamp::ZERO, vec![seed_addr]);
    }
    // Past the join's catch-up, before the first backstop.
    net.run_until(at(29.0));
    let count = |net: &Net, who: usize| {
        net.ended
            .iter()
            .filter(|(_, w, _, role, _)| *w == who && *role == Role::Initiator)
            .count()
    };
    let mut since_last: Vec<usize> = (0..3).map(|i| count(&net, i)).collect();
    for interval in 1..=5u32 {
        let due = at(30.0 * f64::from(interval));
        net.run_until(due.saturating_sub(Duration::from_millis(1)));
        let before: Vec<usize> = (0..3).map(|i| count(&net, i)).collect();
        assert_eq!(
            since_last, before,
            "no sync between backstops (before backstop {interval})"
        );
        net.run_until(due + Duration::from_millis(100));
        let after: Vec<usize> = (0..3).map(|i| count(&net, i)).collect();
        for i in 0..3 {
            assert_eq!(
                after[i],
                before[i] + 1,
                "node {i} syncs once at backstop {interval}: {before:?} -> {after:?}"
            );
        }
        since_last = after;
    }
}

/// The zone and weight a node publishes in its keys reach SWIM's placements
/// everywhere, its own included, for weighted peer selection.
#[test]
fn zone_and_weight_keys_become_placements_everywhere() {
    let mut net = Net::new(3, 7);
    net.nodes[0]
        .set(Timestamp::ZERO, "zone", "eu-west-1a")
        .expect("a small key");
    net.nodes[0]
        .set(Timestamp::ZERO, "weight", "3")
        .expect("a small key");
    let seed_addr = net.addrs[0];
    for joiner in 1..3 {
        net.nodes[joiner].join(Timestamp::ZERO, vec![seed_addr]);
    }
    net.run_until(at(5.0));
    for observer in 0..3 {
        let placement = net.nodes[observer].swim().placement(&net.ids[0]);
        assert_eq!(
            placement.zone.as_deref(),
            Some("eu-west-1a"),
            "node {observer}"
        );
        assert_eq!(placement.weight, 3, "node {observer}");
        assert_eq!(net.nodes[observer].swim().placement(&net.ids[2]).zone, None);
    }
    // A deleted zone key puts the node back in no zone.
    net.nodes[0].delete(net.now, "zone").expect("a small key");
    net.run_until(at(10.0));
    for observer in 0..3 {
        let placement = net.nodes[observer].swim().placement(&net.ids[0]);
        assert_eq!(placement.zone, None, "node {observer}");
        assert_eq!(placement.weight, 3, "node {observer}");
    }
}
