//! Choosing peers, from a seeded PRNG passed in.
//!
//! Every function takes the random number generator as an argument, so a run
//! driven by a seeded generator (such as [`GossipRng`]) replays exactly.

use rand::Rng;
use rand::seq::{IteratorRandom, SliceRandom};

use crate::id::NodeId;

/// The PRNG the workspace uses wherever randomness is an input: ChaCha with 8
/// rounds, seeded from configuration. Fast, portable, and the same sequence on
/// every platform, so a seed printed by a failing test replays anywhere.
pub type GossipRng = rand_chacha::ChaCha8Rng;

/// The order in which members are probed: a shuffled round-robin (SWIM
/// section 4.3).
///
/// Each round visits every member once, in a fresh random order, so a member
/// is probed at least once every `2n - 1` probe periods while the membership
/// is stable: at worst first in one round and last in the next. New members
/// are inserted at a random point of the rest of the current round.
///
/// ```
/// use rand::SeedableRng;
/// use gossip_core::{GossipRng, NodeId, ProbeOrder};
/// let mut rng = GossipRng::seed_from_u64(7);
/// let mut order = ProbeOrder::default();
/// for n in 0..3u8 {
///     order.insert(NodeId::from_bytes([n; 32]), &mut rng);
/// }
/// let mut round: Vec<_> = (0..3).filter_map(|_| order.next(&mut rng)).collect();
/// round.sort();
/// assert_eq!(round, (0..3u8).map(|n| NodeId::from_bytes([n; 32])).collect::<Vec<_>>());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProbeOrder {
    /// Just the ids: no set beside them for membership tests, as every node
    /// keeps one of these for every member. The caller knows which members
    /// are in the rotation (the live ones in its table).
    order: Vec<NodeId>,
    position: usize,
}

impl ProbeOrder {
    /// Number of members in the rotation.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// `true` if no member is in the rotation.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// `true` if `id` is in the rotation. O(n).
    pub fn contains(&self, id: &NodeId) -> bool {
        self.order.contains(id)
    }

    /// Adds a member that is not in the rotation yet at a random point of
    /// the rest of the current round, in O(1): it takes the place of a random
    /// member still to come, which moves to the end of the round.
    ///
    /// The caller inserts each member once, when it comes into the rotation
    /// (when it joins, or comes back from the dead): nothing here checks, so
    /// that a member joining a cluster of thousands costs no scan. A member
    /// inserted twice is probed twice as often.
    pub fn insert(&mut self, id: NodeId, rng: &mut impl Rng) {
        let last = self.order.len();
        self.order.push(id);
        let at = rng.random_range(self.position..=last);
        self.order.swap(at, last);
    }

    /// Makes room for `additional` more members, and no more (a node
    /// restoring a table of thousands knows how many are coming, and holds
    /// the rotation for as long as it runs).
    pub fn reserve_exact(&mut self, additional: usize) {
        self.order.reserve_exact(additional);
    }

    /// Removes a member from the rotation, if there. O(n), for the rare
    /// departure.
    pub fn remove(&mut self, id: &NodeId) {
        if let Some(at) = self.order.iter().position(|m| m == id) {
            self.order.remove(at);
            if at < self.position {
                self.position -= 1;
            }
        }
    }

    /// Up to `k` distinct members of the rotation, chosen uniformly at random,
    /// leaving out those in `exclude`. Costs O(k + exclude), not O(members):
    /// it is called for every piece of news.
    pub fn choose_random(&self, k: usize, exclude: &[NodeId], rng: &mut impl Rng) -> Vec<NodeId> {
        let amount = (k + exclude.len()).min(self.order.len());
        let mut chosen: Vec<NodeId> = rand::seq::index::sample(rng, self.order.len(), amount)
            .into_iter()
            .filter_map(|i| self.order.get(i).copied())
            .filter(|id| !exclude.contains(id))
            .collect();
        chosen.truncate(k);
        chosen
    }

    /// Up to `k` distinct members that come next in the rotation (wrapping
    /// round to the start of the current order), leaving out those in
    /// `exclude`. O(k + exclude) when few are excluded.
    ///
    /// Pushing news to these rather than to members drawn afresh each time
    /// keeps a burst of news among a few peers that this node is about to
    /// probe anyway. The order is a random shuffle per node, so the peers
    /// that nodes push to still form a random graph (news crosses it in
    /// O(log n) hops) and it moves on by one member every probe period; over
    /// a transport where each new peer costs a handshake, a join storm then
    /// costs a handful of connections per node rather than one per member.
    pub fn upcoming(&self, k: usize, exclude: &[NodeId]) -> Vec<NodeId> {
        let len = self.order.len();
        let mut chosen = Vec::with_capacity(k);
        for step in 0..len {
            if chosen.len() == k {
                break;
            }
            let id = self.order[(self.position + step) % len];
            if !exclude.contains(&id) {
                chosen.push(id);
            }
        }
        chosen
    }

    /// The next member to probe, reshuffling at the end of each round.
    pub fn next(&mut self, rng: &mut impl Rng) -> Option<NodeId> {
        if self.order.is_empty() {
            return None;
        }
        if self.position >= self.order.len() {
            // Room left over from growth goes back once a round: every node
            // holds a rotation of every member.
            if self.order.capacity() - self.order.len() > self.order.len() / 8 {
                self.order.shrink_to_fit();
            }
            self.order.shuffle(rng);
            self.position = 0;
        }
        let id = self.order.get(self.position).copied();
        self.position += 1;
        id
    }
}

/// Up to `k` distinct members of `candidates`, chosen uniformly at random,
/// leaving out those in `exclude` (for example the local node and the probe
/// target when picking indirect probers).
pub fn choose_random<'a>(
    candidates: impl IntoIterator<Item = &'a NodeId>,
    k: usize,
    exclude: &[NodeId],
    rng: &mut impl Rng,
) -> Vec<NodeId> {
    candidates
        .into_iter()
        .filter(|id| !exclude.contains(id))
        .copied()
        .choose_multiple(rng, k)
}

/// Gossip targets for one round, chosen in Cassandra's manner so that
/// partitions heal and seeds stay current:
///
/// 1. one random live member;
/// 2. with probability `unreachable / (live + 1)`, one random unreachable
///    member, so a member wrongly believed down is soon contacted again;
/// 3. if no live member was chosen, one random seed; otherwise, if the live
///    member chosen was not a seed or fewer members are live than there are
///    seeds, one random seed with probability
///    `seeds / (live + unreachable)`, so seeds see every change early and a
///    partition that left only seeds in contact rejoins.
///
/// `exclude` (normally the local node) is never chosen. The result has no
/// duplicates.
pub fn choose_gossip_targets(
    live: &[NodeId],
    unreachable: &[NodeId],
    seeds: &[NodeId],
    exclude: &[NodeId],
    rng: &mut impl Rng,
) -> Vec<NodeId> {
    let pick = |from: &[NodeId], chosen: &[NodeId], rng: &mut dyn rand::RngCore| {
        from.iter()
            .filter(|id| !exclude.contains(id) && !chosen.contains(id))
            .choose(rng)
            .copied()
    };
    let mut chosen = Vec::with_capacity(3);
    let live_target = pick(live, &chosen, rng);
    chosen.extend(live_target);

    let live_count = live.len() as f64;
    if !unreachable.is_empty() {
        let probability = unreachable.len() as f64 / (live_count + 1.0);
        if rng.random::<f64>() < probability {
            chosen.extend(pick(unreachable, &chosen, rng));
        }
    }

    let gossip_to_seed = match live_target {
        None => true,
        Some(target) if !seeds.contains(&target) || live.len() < seeds.len() => {
            let probability = seeds.len() as f64 / (live_count + unreachable.len() as f64);
            rng.random::<f64>() <= probability
        }
        Some(_) => false,
    };
    if gossip_to_seed {
        chosen.extend(pick(seeds, &chosen, rng));
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    fn ids(range: std::ops::Range<u8>) -> Vec<NodeId> {
        range.map(|n| NodeId::from_bytes([n; 32])).collect()
    }

    #[test]
    fn upcoming_members_are_the_next_probes_wrapping_and_skipping_the_excluded() {
        let mut rng = GossipRng::seed_from_u64(3);
        let mut order = ProbeOrder::default();
        for id in ids(0..6) {
            order.insert(id, &mut rng);
        }
        let first = order.next(&mut rng).expect("a member");
        let upcoming = order.upcoming(3, &[]);
        assert_eq!(upcoming.len(), 3);
        assert!(
            !upcoming.contains(&first),
            "the member just probed is not upcoming"
        );
        let probed: Vec<NodeId> = (0..3).filter_map(|_| order.next(&mut rng)).collect();
        assert_eq!(upcoming, probed);
        // Near the end of a round it wraps to the start of the order.
        let upcoming = order.upcoming(4, &[probed[0]]);
        assert_eq!(upcoming.len(), 4);
        assert!(!upcoming.contains(&probed[0]));
        let distinct: BTreeSet<NodeId> = upcoming.iter().copied().collect();
        assert_eq!(distinct.len(), 4);
        assert_eq!(
            order.upcoming(10, &[]).len(),
            6,
            "never more than the members"
        );
    }

    #[test]
    fn every_member_is_probed_within_two_rounds() {
        for seed in 0..50u64 {
            let mut rng = GossipRng::seed_from_u64(seed);
            let members = ids(0..10);
            let mut order = ProbeOrder::default();
            for id in &members {
                order.insert(*id, &mut rng);
            }
            let mut last_seen = std::collections::HashMap::new();
            for period in 0..500usize {
                let id = order.next(&mut rng).unwrap();
                if let Some(prev) = last_seen.insert(id, period) {
                    assert!(
                        period - prev < 2 * members.len(),
                        "seed {seed}: gap {}",
                        period - prev
                    );
                }
            }
            assert_eq!(last_seen.len(), members.len(), "seed {seed}");
        }
    }

    #[test]
    fn choosing_from_the_rotation_is_distinct_and_excludes() {
        let mut rng = GossipRng::seed_from_u64(4);
        let mut order = ProbeOrder::default();
        let all = ids(0..10);
        for id in &all {
            order.insert(*id, &mut rng);
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let picked = order.choose_random(3, &all[..2], &mut rng);
            assert_eq!(picked.len(), 3);
            assert!(picked.iter().all(|id| !all[..2].contains(id)));
            assert_eq!(
                picked
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                3
            );
            seen.extend(picked);
        }
        assert_eq!(seen.len(), 8, "every eligible member gets picked");
        assert_eq!(order.choose_random(5, &[], &mut rng).len(), 5);
        assert!(
            ProbeOrder::default()
                .choose_random(3, &[], &mut rng)
                .is_empty()
        );
    }

    #[test]
    fn removal_keeps_the_round_consistent() {
        let mut rng = GossipRng::seed_from_u64(1);
        let mut order = ProbeOrder::default();
        for id in ids(0..5) {
            order.insert(id, &mut rng);
        }
        let first = order.next(&mut rng).unwrap();
        order.remove(&first);
        let rest: std::collections::BTreeSet<_> =
            (0..4).filter_map(|_| order.next(&mut rng)).collect();
        assert_eq!(rest.len(), 4);
        assert!(!rest.contains(&first));
    }

    #[test]
    fn choose_random_excludes_and_is_distinct() {
        let mut rng = GossipRng::seed_from_u64(3);
        let all = ids(0..10);
        for _ in 0..100 {
            let picked = choose_random(&all, 3, &all[..2], &mut rng);
            assert_eq!(picked.len(), 3);
            assert!(picked.iter().all(|id| !all[..2].contains(id)));
            let distinct: std::collections::BTreeSet<_> = picked.iter().collect();
            assert_eq!(distinct.len(), 3);
        }
        assert_eq!(choose_random(&all[..2], 3, &[], &mut rng).len(), 2);
    }

    #[test]
    fn gossip_targets_favour_live_members_but_reach_the_rest() {
        let mut rng = GossipRng::seed_from_u64(5);
        let live = ids(0..20);
        let unreachable = ids(20..25);
        let seeds = ids(30..32);
        let (mut to_unreachable, mut to_seed) = (0, 0);
        for _ in 0..10_000 {
            let targets = choose_gossip_targets(&live, &unreachable, &seeds, &[], &mut rng);
            assert!(live.contains(&targets[0]));
            to_unreachable += targets.iter().filter(|t| unreachable.contains(t)).count();
            to_seed += targets.iter().filter(|t| seeds.contains(t)).count();
        }
        // Expected 5/21 and 2/25 of rounds.
        assert!((2000..2800).contains(&to_unreachable), "{to_unreachable}");
        assert!((550..1050).contains(&to_seed), "{to_seed}");
    }

    #[test]
    fn gossip_targets_fall_back_to_seeds_when_alone() {
        let mut rng = GossipRng::seed_from_u64(9);
        let seeds = ids(0..2);
        let me = seeds[0];
        for _ in 0..100 {
            assert_eq!(
                choose_gossip_targets(&[], &[], &seeds, &[me], &mut rng),
                vec![seeds[1]]
            );
        }
    }
}
