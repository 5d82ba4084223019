//! Two replicas in an anti-entropy session, with the input choosing writes
//! on either side, the order and fate of messages (lost, duplicated,
//! corrupted, cut short), forged messages and the passage of time. A
//! refused message leaves the replica exactly as it was; a session that ran
//! clean to its end leaves both replicas equal.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use arbitrary::Arbitrary;
use gossip_antientropy::{Session, SyncMessage, SyncState};
use gossip_core::{MemberStatus, Timestamp, decode_frame};
use gossip_fuzz::{flip_byte, node_id, signed_record, snapshot, sync_config, sync_state};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 300;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A replica writes one of its own keys.
    Set { side: bool, key: u8, value: Vec<u8> },
    /// A replica deletes one.
    Delete { side: bool, key: u8 },
    /// A replica hears of a member.
    Member {
        side: bool,
        subject: u8,
        incarnation: u8,
        status: u8,
    },
    /// The next message from one side arrives (twice if `duplicate`).
    Deliver { side: bool, duplicate: bool },
    /// It arrives with one byte changed.
    Corrupt { side: bool, at: u16, xor: u8 },
    /// It arrives cut short.
    Truncate { side: bool, keep: u16 },
    /// It is lost.
    Lose { side: bool },
    /// A forged message reaches one side.
    Forge { side: bool, bytes: Vec<u8> },
    /// Time passes.
    Advance { millis: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Writes made before the session starts.
    before: Vec<Op>,
    /// Everything after.
    during: Vec<Op>,
}

struct World {
    now: Timestamp,
    states: [SyncState; 2],
    sessions: [Session; 2],
    queues: [VecDeque<Vec<u8>>; 2],
    /// Whether anything but a clean delivery happened since the session began.
    disturbed: bool,
}

fn side(b: bool) -> usize {
    usize::from(b)
}

impl World {
    fn new() -> Self {
        let now = Timestamp::from_millis(1_000_000);
        let states = [0u8, 1].map(sync_state);
        let sessions = [
            Session::respond(sync_config(), node_id(1), now),
            Session::respond(sync_config(), node_id(0), now),
        ];
        World {
            now,
            states,
            sessions,
            queues: [VecDeque::new(), VecDeque::new()],
            disturbed: false,
        }
    }

    fn start(&mut self) {
        self.sessions[0] = Session::initiate(sync_config(), node_id(1), &self.states[0], self.now);
        self.sessions[1] = Session::respond(sync_config(), node_id(0), self.now);
        self.collect();
    }

    fn collect(&mut self) {
        let config = sync_config();
        for (n, session) in self.sessions.iter_mut().enumerate() {
            while let Some(bytes) = session.poll_transmit() {
                decode_frame::<SyncMessage>(&bytes, config.cluster, &config.limits)
                    .expect("a session's own message decodes");
                assert!(bytes.len() <= config.max_message_bytes);
                self.queues[n].push_back(bytes);
            }
            session.take_changes();
        }
    }

    /// Hands `bytes` to side `to`; a refused message must change nothing.
    fn receive(&mut self, to: usize, bytes: &[u8]) {
        let before = snapshot(&self.states[to]);
        let root = self.states[to].root();
        if self.sessions[to]
            .handle_bytes(self.now, &mut self.states[to], bytes)
            .is_err()
        {
            assert_eq!(
                self.states[to].root(),
                root,
                "a refused message changed the root"
            );
            assert!(
                snapshot(&self.states[to]) == before,
                "a refused message changed the state"
            );
        }
    }

    fn deliver(&mut self, from: usize, edit: impl FnOnce(&mut Vec<u8>), copies: usize) {
        let Some(mut bytes) = self.queues[from].pop_front() else {
            return;
        };
        edit(&mut bytes);
        for _ in 0..copies {
            self.receive(1 - from, &bytes);
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Set {
                side: s,
                key,
                value,
            } => {
                self.disturbed = true;
                let _ = self.states[side(s)].set(format!("k{}", key % 16), value);
            }
            Op::Delete { side: s, key } => {
                self.disturbed = true;
                let _ = self.states[side(s)].delete(self.now, &format!("k{}", key % 16));
            }
            Op::Member {
                side: s,
                subject,
                incarnation,
                status,
            } => {
                self.disturbed = true;
                let status = match status % 4 {
                    0 => MemberStatus::Alive,
                    1 => MemberStatus::Suspect,
                    2 => MemberStatus::Dead,
                    _ => MemberStatus::Left,
                };
                let record = signed_record(2 + subject % 8, u64::from(incarnation), status);
                let _ = self.states[side(s)].merge_member(record);
            }
            Op::Deliver { side: s, duplicate } => {
                self.disturbed |= duplicate;
                self.deliver(side(s), |_| {}, if duplicate { 2 } else { 1 });
            }
            Op::Corrupt { side: s, at, xor } => {
                self.disturbed = true;
                self.deliver(side(s), |bytes| flip_byte(bytes, at, xor), 1);
            }
            Op::Truncate { side: s, keep } => {
                self.disturbed = true;
                self.deliver(side(s), |bytes| bytes.truncate(usize::from(keep)), 1);
            }
            Op::Lose { side: s } => {
                self.disturbed = true;
                self.queues[side(s)].pop_front();
            }
            Op::Forge { side: s, bytes } => {
                self.disturbed = true;
                self.receive(side(s), &bytes);
            }
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(millis));
                for (n, session) in self.sessions.iter_mut().enumerate() {
                    if session.poll_timeout().is_some_and(|at| at <= self.now) {
                        session.handle_timeout(self.now);
                        self.disturbed |= session.error().is_some() && n < 2;
                    }
                }
            }
        }
    }

    /// Runs the session to its end with clean deliveries only.
    fn finish_cleanly(&mut self) {
        for _ in 0..10_000 {
            if self.queues.iter().all(VecDeque::is_empty) {
                break;
            }
            for from in 0..2 {
                self.deliver(from, |_| {}, 1);
            }
            self.collect();
        }
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new();
    for op in input.before.into_iter().take(MAX_OPS) {
        world.step(op);
    }
    world.disturbed = false;
    world.start();
    for op in input.during.into_iter().take(MAX_OPS) {
        world.step(op);
        world.collect();
    }
    world.finish_cleanly();
    let finished = world
        .sessions
        .iter()
        .all(|s| s.is_finished() && s.error().is_none());
    if !world.disturbed && finished {
        assert_eq!(
            world.states[0].root(),
            world.states[1].root(),
            "a clean session left the replicas different"
        );
    }
});
