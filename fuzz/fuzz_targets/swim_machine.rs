//! Three real SWIM machines exchanging their own datagrams, with the input
//! choosing the order, losses, duplicates, corruptions, forged datagrams,
//! the passage of time and local operations. After every step each machine
//! must still hold its invariants, and everything a machine sends must
//! decode.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use arbitrary::Arbitrary;
use gossip_core::{Incarnation, MemberMeta, MemberStatus, Timestamp, decode_frame};
use gossip_fuzz::{cluster, flip_byte, node_addr, node_id, node_key, push_bounded, swim_config};
use gossip_swim::{Message, Swim, Transmit};
use libfuzzer_sys::fuzz_target;

const NODES: u8 = 3;
/// Datagrams in flight per sender; older ones are lost.
const IN_FLIGHT: usize = 64;
const MAX_OPS: usize = 400;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The oldest datagram from `from` arrives (twice if `duplicate`).
    Deliver { from: u8, duplicate: bool },
    /// It arrives with one byte changed.
    Corrupt { from: u8, at: u16, xor: u8 },
    /// It arrives cut short.
    Truncate { from: u8, keep: u16 },
    /// It is lost.
    Lose { from: u8 },
    /// Bytes from an authenticated peer (one of the nodes or a stranger).
    Forge { to: u8, from: u8, bytes: Vec<u8> },
    /// Time passes and timers run.
    Advance { millis: u16 },
    /// A node changes its metadata.
    Rename { node: u8, name: String },
    /// A node announces a new state version.
    StateVersion { node: u8, version: u64 },
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
    nodes: Vec<Swim>,
    outbox: Vec<VecDeque<Transmit>>,
    incarnations: Vec<Incarnation>,
    left: Vec<bool>,
}

impl World {
    fn new(seed: u64) -> Self {
        let now = Timestamp::from_millis(1_000_000);
        let mut nodes: Vec<Swim> = (0..NODES)
            .map(|n| {
                let meta = MemberMeta::new(format!("node-{n}"), [node_addr(n)]);
                let config = swim_config(seed.wrapping_add(u64::from(n)));
                Swim::new(config, node_key(n), meta, Incarnation::ZERO, now)
            })
            .collect();
        for node in nodes.iter_mut().skip(1) {
            node.join(now, vec![node_addr(0)]);
        }
        let mut world = World {
            now,
            nodes,
            outbox: (0..NODES).map(|_| VecDeque::new()).collect(),
            incarnations: vec![Incarnation::ZERO; usize::from(NODES)],
            left: vec![false; usize::from(NODES)],
        };
        world.collect();
        world
    }

    /// Drains every machine's transmits and events, checking that what it
    /// sends decodes.
    fn collect(&mut self) {
        for (n, node) in self.nodes.iter_mut().enumerate() {
            while let Some(transmit) = node.poll_transmit() {
                decode_frame::<Message>(&transmit.payload, cluster(), &node.config().limits)
                    .expect("a machine's own datagram decodes");
                push_bounded(&mut self.outbox[n], transmit, IN_FLIGHT);
            }
            while node.poll_event().is_some() {}
        }
    }

    fn check(&self) {
        for (n, node) in self.nodes.iter().enumerate() {
            let local = node.members().local();
            assert!(
                local.incarnation >= self.incarnations[n],
                "node {n}'s incarnation went back"
            );
            if self.left[n] {
                assert_eq!(local.status, MemberStatus::Left, "node {n} left");
            } else {
                assert_eq!(local.status, MemberStatus::Alive, "node {n} is alive");
            }
            let limits = &node.config().limits;
            assert!(node.members().len() <= limits.max_members);
            assert!(node.queued_rumors() <= limits.max_queued_rumors);
        }
    }

    fn record_incarnations(&mut self) {
        for (n, node) in self.nodes.iter().enumerate() {
            self.incarnations[n] = node.members().local().incarnation;
        }
    }

    /// The receiving node's index for a datagram, if it goes to one.
    fn receiver(transmit: &Transmit) -> Option<usize> {
        (0..NODES)
            .find(|&n| node_addr(n) == transmit.addr)
            .map(usize::from)
    }

    fn deliver(&mut self, from: u8, edit: impl FnOnce(&mut Vec<u8>), copies: usize) {
        let from = from % NODES;
        let Some(mut transmit) = self.outbox[usize::from(from)].pop_front() else {
            return;
        };
        let Some(to) = Self::receiver(&transmit) else {
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

    fn step(&mut self, op: Op) {
        match op {
            Op::Deliver { from, duplicate } => {
                self.deliver(from, |_| {}, if duplicate { 2 } else { 1 });
            }
            Op::Corrupt { from, at, xor } => {
                self.deliver(from, |bytes| flip_byte(bytes, at, xor), 1)
            }
            Op::Truncate { from, keep } => {
                self.deliver(from, |bytes| bytes.truncate(usize::from(keep)), 1);
            }
            Op::Lose { from } => {
                self.outbox[usize::from(from % NODES)].pop_front();
            }
            Op::Forge { to, from, bytes } => {
                let to = usize::from(to % NODES);
                // Senders past the cluster are strangers with valid certificates.
                let _ = self.nodes[to].handle_datagram(
                    self.now,
                    node_id(from),
                    node_addr(from),
                    &bytes,
                );
            }
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(millis));
                for node in &mut self.nodes {
                    node.handle_timeout(self.now);
                    assert!(
                        node.poll_timeout().is_none_or(|at| at > self.now),
                        "every timer due was run"
                    );
                }
            }
            Op::Rename { node, name } => {
                let n = node % NODES;
                let meta = MemberMeta::new(name, [node_addr(n)]);
                let _ = self.nodes[usize::from(n)].update_meta(self.now, meta);
            }
            Op::StateVersion { node, version } => {
                self.nodes[usize::from(node % NODES)].set_state_version(self.now, version);
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
