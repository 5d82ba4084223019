//! Three `gossip_member::Replica`s, SWIM and the Merkle sync composed as the
//! node runs them, exchanging their own datagrams and sync turns, with the
//! input choosing the order, losses, duplicates, corruptions, forged
//! datagrams and sync parts, the passage of time, key writes and deletes,
//! and leaves. After every step each replica must keep its incarnation,
//! stay alive until it leaves and keep exactly its own writes; time must
//! leave no timer due; every datagram it sends must decode.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use arbitrary::Arbitrary;
use gossip_core::{Incarnation, MemberMeta, MemberStatus, Timestamp, decode_frame};
use gossip_fuzz::{cluster, flip_byte, node_addr, node_id, node_key, push_bounded, swim_config};
use gossip_member::{Replica, ReplicaConfig, Role, StoredKeys, SyncTransmit};
use gossip_swim::{Message, Swim, Transmit};
use libfuzzer_sys::fuzz_target;

const NODES: u8 = 3;
/// Messages in flight per sender and kind; older ones are lost.
const IN_FLIGHT: usize = 64;
const MAX_OPS: usize = 300;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The oldest datagram from `from` arrives (twice if `duplicate`).
    Datagram { from: u8, duplicate: bool },
    /// The oldest sync turn from `from` arrives.
    Turn { from: u8 },
    /// The oldest sync turn from `from` arrives with one byte changed.
    CorruptTurn { from: u8, at: u16, xor: u8 },
    /// The oldest datagram from `from` arrives with one byte changed.
    CorruptDatagram { from: u8, at: u16, xor: u8 },
    /// The oldest message of each kind from `from` is lost.
    Lose { from: u8 },
    /// Bytes from an authenticated peer (one of the nodes or a stranger), as
    /// a datagram.
    ForgeDatagram { to: u8, from: u8, bytes: Vec<u8> },
    /// Bytes from an authenticated peer as a sync turn.
    ForgeTurn {
        to: u8,
        from: u8,
        initiator: bool,
        id: u64,
        parts: Vec<Vec<u8>>,
    },
    /// Time passes and timers run.
    Advance { millis: u16 },
    /// A node writes one of its keys.
    Set { node: u8, key: u8, value: Vec<u8> },
    /// A node deletes one of its keys.
    Delete { node: u8, key: u8 },
    /// A node leaves.
    Leave { node: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    ops: Vec<Op>,
}

struct World {
    now: Timestamp,
    nodes: Vec<Replica>,
    datagrams: Vec<VecDeque<Transmit>>,
    turns: Vec<VecDeque<SyncTransmit>>,
    incarnations: Vec<Incarnation>,
    left: Vec<bool>,
    /// Each node's own keys, as it wrote them.
    keys: Vec<BTreeMap<String, Vec<u8>>>,
}

impl World {
    fn new(seed: u64) -> Self {
        let now = Timestamp::from_millis(1_000_000);
        let mut nodes: Vec<Replica> = (0..NODES)
            .map(|n| {
                let meta = MemberMeta::new(format!("node-{n}"), [node_addr(n)]);
                let config = swim_config(seed.wrapping_add(u64::from(n)));
                let swim = Swim::new(config, node_key(n), meta, Incarnation::ZERO, now);
                let mut replica_config = ReplicaConfig::new(cluster());
                replica_config.rng_seed = seed.rotate_left(17).wrapping_add(u64::from(n));
                Replica::new(replica_config, swim, StoredKeys::default(), now)
                    .expect("no stored keys")
            })
            .collect();
        for node in nodes.iter_mut().skip(1) {
            node.join(now, vec![node_addr(0)]);
        }
        let mut world = World {
            now,
            nodes,
            datagrams: (0..NODES).map(|_| VecDeque::new()).collect(),
            turns: (0..NODES).map(|_| VecDeque::new()).collect(),
            incarnations: vec![Incarnation::ZERO; usize::from(NODES)],
            left: vec![false; usize::from(NODES)],
            keys: vec![BTreeMap::new(); usize::from(NODES)],
        };
        world.collect();
        world
    }

    /// Drains every replica's outputs, checking that its datagrams decode.
    fn collect(&mut self) {
        for (n, node) in self.nodes.iter_mut().enumerate() {
            while let Some(transmit) = node.poll_transmit() {
                let limits = &node.swim().config().limits;
                decode_frame::<Message>(&transmit.payload, cluster(), limits)
                    .expect("a replica's own datagram decodes");
                push_bounded(&mut self.datagrams[n], transmit, IN_FLIGHT);
            }
            while let Some(turn) = node.poll_sync() {
                push_bounded(&mut self.turns[n], turn, IN_FLIGHT);
            }
            while node.poll_event().is_some() {}
        }
    }

    fn check(&self) {
        for (n, node) in self.nodes.iter().enumerate() {
            let local = node.swim().members().local();
            assert!(
                local.incarnation >= self.incarnations[n],
                "node {n}'s incarnation went back"
            );
            let expected = if self.left[n] {
                MemberStatus::Left
            } else {
                MemberStatus::Alive
            };
            assert_eq!(local.status, expected, "node {n}'s own status");
            let own = node.state().kv().local();
            let held: BTreeMap<String, Vec<u8>> = own
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect();
            assert_eq!(held, self.keys[n], "node {n} keeps exactly its own writes");
        }
    }

    fn record_incarnations(&mut self) {
        for (n, node) in self.nodes.iter().enumerate() {
            self.incarnations[n] = node.swim().members().local().incarnation;
        }
    }

    fn receiver(addr: std::net::SocketAddr) -> Option<usize> {
        (0..NODES).find(|&n| node_addr(n) == addr).map(usize::from)
    }

    fn datagram(&mut self, from: u8, edit: impl FnOnce(&mut Vec<u8>), copies: usize) {
        let from = from % NODES;
        let Some(mut transmit) = self.datagrams[usize::from(from)].pop_front() else {
            return;
        };
        let Some(to) = Self::receiver(transmit.addr) else {
            return;
        };
        edit(&mut transmit.payload);
        for _ in 0..copies {
            let _ = self.nodes[to].handle_datagram(
                self.now,
                node_id(from),
                node_addr(from),
                &transmit.payload,
            );
        }
    }

    fn turn(&mut self, from: u8, edit: impl FnOnce(&mut Vec<Vec<u8>>)) {
        let from = from % NODES;
        let Some(mut turn) = self.turns[usize::from(from)].pop_front() else {
            return;
        };
        let Some(to) = Self::receiver(turn.addr) else {
            return;
        };
        edit(&mut turn.parts);
        let parts = turn.parts.iter().map(Vec::as_slice);
        self.nodes[to].handle_sync(
            self.now,
            node_id(from),
            node_addr(from),
            turn.role,
            turn.id,
            parts,
        );
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Datagram { from, duplicate } => {
                self.datagram(from, |_| {}, if duplicate { 2 } else { 1 });
            }
            Op::Turn { from } => self.turn(from, |_| {}),
            Op::CorruptTurn { from, at, xor } => self.turn(from, |parts| {
                if let Some(part) = parts.iter_mut().find(|p| !p.is_empty()) {
                    flip_byte(part, at, xor);
                }
            }),
            Op::CorruptDatagram { from, at, xor } => {
                self.datagram(from, |bytes| flip_byte(bytes, at, xor), 1);
            }
            Op::Lose { from } => {
                let from = usize::from(from % NODES);
                self.datagrams[from].pop_front();
                self.turns[from].pop_front();
            }
            Op::ForgeDatagram { to, from, bytes } => {
                let to = usize::from(to % NODES);
                let _ = self.nodes[to].handle_datagram(
                    self.now,
                    node_id(from),
                    node_addr(from),
                    &bytes,
                );
            }
            Op::ForgeTurn {
                to,
                from,
                initiator,
                id,
                parts,
            } => {
                let to = usize::from(to % NODES);
                let role = if initiator {
                    Role::Initiator
                } else {
                    Role::Responder
                };
                let parts = parts.iter().map(Vec::as_slice);
                self.nodes[to].handle_sync(
                    self.now,
                    node_id(from),
                    node_addr(from),
                    role,
                    id,
                    parts,
                );
            }
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(millis));
                for node in &mut self.nodes {
                    // What one timer's work makes due at once (a last call
                    // the sync's news brings forward) runs on the next call,
                    // as a driver calls again at once.
                    for _ in 0..16 {
                        if node.poll_timeout() > self.now {
                            break;
                        }
                        node.handle_timeout(self.now);
                    }
                    assert!(node.poll_timeout() > self.now, "every timer due was run");
                }
            }
            Op::Set { node, key, value } => {
                let n = usize::from(node % NODES);
                let key = format!("k{}", key % 8);
                if self.nodes[n]
                    .set(self.now, key.as_str(), value.clone())
                    .is_ok()
                {
                    self.keys[n].insert(key, value);
                }
            }
            Op::Delete { node, key } => {
                let n = usize::from(node % NODES);
                let key = format!("k{}", key % 8);
                if let Ok(Some(_)) = self.nodes[n].delete(self.now, &key) {
                    self.keys[n].remove(&key);
                }
            }
            Op::Leave { node } => {
                let n = usize::from(node % NODES);
                self.nodes[n].leave(self.now);
                self.left[n] = true;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(input.seed);
    world.check();
    for op in input.ops.into_iter().take(MAX_OPS) {
        world.step(op);
        world.collect();
        world.check();
        world.record_incarnations();
    }
});
