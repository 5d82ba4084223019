//! A member's life in the cluster: joining through seeds, push-pull of
//! whole tables (to join, to heal partitions, and as an optional backstop),
//! forgetting long-departed members, and leaving.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;

use gossip_core::{
    HEADER_LEN, Member, MemberStatus, NodeId, Rumor, Timestamp, choose_random, encoded_len,
};

use super::Swim;
use super::timer::Timer;
use crate::event::Event;
use crate::message::{JoinRefusal, Message};

/// A join under way: the seeds are asked again after `delay`, which doubles
/// up to `join_retry_max`.
#[derive(Debug, Clone)]
pub(super) struct Joining {
    pub(super) delay: Duration,
}

/// A graceful leave under way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaving {
    pub(super) deadline: Timestamp,
    pub(super) completed: bool,
}

impl Swim {
    /// A leave is complete once its announcement is out, or at its deadline.
    pub(super) fn finish_leave(&mut self) {
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
                self.timers.cancel(Timer::Leave);
                self.events.push(Event::LeaveCompleted);
            }
        }
    }

    /// Sends this node's whole table, its own record first, in as many
    /// datagram-sized messages as it takes, over the reliable channel: a
    /// join whose request or answer a lossy network dropped would otherwise
    /// wait out a join retry (1 s, then 2, 4...).
    pub(super) fn send_table(&mut self, to: Option<NodeId>, addr: SocketAddr, reply: bool) {
        let records: Vec<Member> = self.members.iter().cloned().collect();
        let empty = Message::PushPull {
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
                self.send_on(to, addr, Message::PushPull { reply, members }, false, true);
                used = 0;
            }
            used += len;
            chunk.push(record);
        }
        self.send_on(
            to,
            addr,
            Message::PushPull {
                reply,
                members: chunk,
            },
            false,
            true,
        );
    }

    pub(super) fn attempt_join(&mut self) {
        let Some(joining) = &mut self.joining else {
            return;
        };
        let next_attempt = self.now + joining.delay;
        joining.delay = (joining.delay * 2).min(self.config.join_retry_max);
        self.timers.set(next_attempt, Timer::JoinRetry);
        for seed in self.seeds.clone() {
            self.send_table(None, seed, false);
        }
    }

    /// Puts the join's next attempt, and those after it, back at the first
    /// retry's delay.
    pub(super) fn retry_join_soon(&mut self) {
        if let Some(joining) = &mut self.joining {
            joining.delay = self.config.join_retry_initial;
            self.timers
                .set(self.now + self.config.join_retry_initial, Timer::JoinRetry);
        }
    }

    /// The slow schedule that heals partitions: re-contact one random
    /// recently dead member, and a seed as [`Swim::join`] describes.
    pub(super) fn reconnect(&mut self) {
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
        if self.joining.is_some() || self.seeds.is_empty() {
            return;
        }
        let live = self.members.live_count();
        if live <= 1 {
            for seed in self.seeds.clone() {
                self.send_table(None, seed, false);
            }
            return;
        }
        let chance = self.seeds.len() as f64 / (live + dead.len()) as f64;
        if self.rng.random::<f64>() < chance
            && let Some(seed) = self.seed_out_of_contact()
        {
            self.send_table(None, seed, false);
        }
    }

    /// A random seed at whose address no live member (nor this node) is
    /// held: one on the far side of a partition, or one not yet known.
    fn seed_out_of_contact(&mut self) -> Option<SocketAddr> {
        let held: BTreeSet<SocketAddr> = self
            .members
            .iter()
            .filter(|m| !m.status.is_departed())
            .filter_map(|m| m.meta.addr())
            .collect();
        let candidates: Vec<SocketAddr> = self
            .seeds
            .iter()
            .filter(|seed| !held.contains(seed))
            .copied()
            .collect();
        candidates.choose(&mut self.rng).copied()
    }

    /// The backstop push-pull: exchange whole tables with one random live
    /// member, so whatever rumors missed is repaired.
    pub(super) fn push_pull_with_random_member(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        if let Some(&peer) = self.order.choose_random(1, &[], &mut self.rng).first()
            && let Some(addr) = self.address_of(&peer)
        {
            self.send_table(Some(peer), addr, false);
        }
    }

    pub(super) fn collect_departed(&mut self) {
        for id in self
            .members
            .collect_departed(self.now, self.config.departed_horizon)
        {
            // Departed members left the rotation when they departed.
            self.suspicions.remove(&id);
            self.conflicts_reported.remove(&id);
            self.placements.remove(&id);
            self.events.push(Event::Removed(id));
        }
        self.forget_old_refusals();
    }

    /// Why `from`, which sent its table with its own record, is not in this
    /// node's table after it, if the table's cap is the reason.
    pub(super) fn table_full(&self, from: NodeId) -> Option<JoinRefusal> {
        let max_members = self.config.limits.max_members;
        (self.members.get(&from).is_none() && self.members.len() >= max_members).then_some(
            JoinRefusal::TableFull {
                max_members: max_members as u64,
            },
        )
    }

    /// Tells `joiner` why it was not taken in, instead of the table.
    pub(super) fn refuse_joiner(&mut self, joiner: NodeId, addr: SocketAddr, reason: JoinRefusal) {
        self.stats.joiners_refused += 1;
        self.events.push(Event::JoinerRefused {
            member: joiner,
            addr,
            reason,
        });
        self.send(Some(joiner), addr, Message::JoinRefused { reason }, false);
    }
}
