//! Choosing peers, from a seeded PRNG passed in.
//!
//! Every function takes the random number generator as an argument, so a run
//! driven by a seeded generator (such as [`GossipRng`]) replays exactly.

use rand::Rng;
use rand::seq::{IteratorRandom, SliceRandom};
use smol_str::SmolStr;

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

    /// The members in the rotation, in its current order.
    pub fn iter(&self) -> impl Iterator<Item = &NodeId> {
        self.order.iter()
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

/// Where a member sits, as it says in its own keys: the input of weighted
/// peer selection ([`choose_weighted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The member's zone (or rack, or any grouping the operator uses);
    /// `None` if it published none, which is a zone of its own.
    pub zone: Option<SmolStr>,
    /// The operator's weight: a member of weight 2 is chosen about twice as
    /// often as one of weight 1 in the same zone; weight 0 is never chosen.
    pub weight: u32,
}

impl Placement {
    /// No zone, weight 1: where a member that published nothing sits.
    pub const DEFAULT: Placement = Placement {
        zone: None,
        weight: 1,
    };
}

impl Default for Placement {
    fn default() -> Self {
        Placement::DEFAULT
    }
}

/// Up to `k` distinct members of `candidates`, none in `exclude`, chosen by
/// weight and zone: each pick goes to a member of another zone than
/// `local_zone` with probability `cross_zone_share` and to one of the same
/// zone otherwise (to the other side when one has no candidate left), and
/// within a side in proportion to the members' weights.
///
/// A node then prefers peers near it while a set share of its rounds still
/// crosses zones, so news reaches every zone. O(candidates * k).
///
/// ```
/// use rand::SeedableRng;
/// use gossip_core::{GossipRng, NodeId, Placement, choose_weighted};
/// let zone = |z: &str| Placement { zone: Some(z.into()), weight: 1 };
/// let (a, b) = (zone("a"), zone("b"));
/// let members = [(NodeId::from_bytes([1; 32]), &a), (NodeId::from_bytes([2; 32]), &b)];
/// let mut rng = GossipRng::seed_from_u64(1);
/// // No share across zones: always the member of zone a.
/// let chosen = choose_weighted(members, Some("a"), 0.0, 1, &[], &mut rng);
/// assert_eq!(chosen, vec![NodeId::from_bytes([1; 32])]);
/// ```
pub fn choose_weighted<'a>(
    candidates: impl IntoIterator<Item = (NodeId, &'a Placement)>,
    local_zone: Option<&str>,
    cross_zone_share: f64,
    k: usize,
    exclude: &[NodeId],
    rng: &mut impl Rng,
) -> Vec<NodeId> {
    // (id, weight) of the candidates in this node's zone, and elsewhere.
    let (mut near, mut far) = (Vec::new(), Vec::new());
    for (id, placement) in candidates {
        if placement.weight == 0 || exclude.contains(&id) {
            continue;
        }
        let side = if placement.zone.as_deref() == local_zone {
            &mut near
        } else {
            &mut far
        };
        side.push((id, u64::from(placement.weight)));
    }
    let mut chosen = Vec::with_capacity(k);
    while chosen.len() < k && !(near.is_empty() && far.is_empty()) {
        let cross = rng.random::<f64>() < cross_zone_share;
        let side = match (cross, near.is_empty(), far.is_empty()) {
            (true, _, false) | (false, true, _) => &mut far,
            _ => &mut near,
        };
        let total: u64 = side.iter().map(|&(_, weight)| weight).sum();
        let mut point = rng.random_range(0..total);
        let at = side
            .iter()
            .position(|&(_, weight)| {
                if point < weight {
                    true
                } else {
                    point -= weight;
                    false
                }
            })
            .unwrap_or(side.len() - 1);
        chosen.push(side.swap_remove(at).0);
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
    fn weighted_choice_keeps_the_cross_zone_share_and_the_weights() {
        let seed = 11;
        let mut rng = GossipRng::seed_from_u64(seed);
        let zone = |z: &str, weight| Placement {
            zone: Some(z.into()),
            weight,
        };
        // Five members in this node's zone (one of them of weight 3), ten
        // in two other zones.
        let placements: Vec<(NodeId, Placement)> = ids(0..15)
            .into_iter()
            .enumerate()
            .map(|(i, id)| match i {
                0 => (id, zone("a", 3)),
                1..5 => (id, zone("a", 1)),
                5..10 => (id, zone("b", 1)),
                _ => (id, zone("c", 1)),
            })
            .collect();
        let heavy = placements[0].0;
        let (mut near, mut far, mut heavy_picks, mut light_picks) = (0u32, 0u32, 0u32, 0u32);
        let rounds = 20_000;
        for _ in 0..rounds {
            let picked = choose_weighted(
                placements.iter().map(|(id, p)| (*id, p)),
                Some("a"),
                0.25,
                1,
                &[],
                &mut rng,
            );
            let id = picked[0];
            let index = placements.iter().position(|(i, _)| *i == id).unwrap();
            if index < 5 {
                near += 1;
            } else {
                far += 1;
            }
            if id == heavy {
                heavy_picks += 1;
            } else if index == 1 {
                light_picks += 1;
            }
        }
        let far_share = f64::from(far) / f64::from(rounds);
        assert!((far_share - 0.25).abs() < 0.02, "seed {seed}: {far_share}");
        // Within the zone, weight 3 of 7: 3/7 of the near picks, against 1/7.
        let ratio = f64::from(heavy_picks) / f64::from(light_picks);
        assert!((ratio - 3.0).abs() < 0.3, "seed {seed}: ratio {ratio}");
        assert_eq!(near + far, rounds);
    }

    #[test]
    fn weighted_choice_is_distinct_skips_weight_zero_and_crosses_when_alone() {
        let mut rng = GossipRng::seed_from_u64(2);
        let members = ids(0..6);
        let near = Placement {
            zone: Some("a".into()),
            weight: 1,
        };
        let far = Placement {
            zone: Some("b".into()),
            weight: 1,
        };
        let off = Placement {
            zone: Some("a".into()),
            weight: 0,
        };
        let table: Vec<(NodeId, &Placement)> = vec![
            (members[0], &near),
            (members[1], &near),
            (members[2], &far),
            (members[3], &far),
            (members[4], &off),
            (members[5], &far),
        ];
        for _ in 0..200 {
            let picked = choose_weighted(table.clone(), Some("a"), 0.0, 4, &members[..1], &mut rng);
            // No cross share, but one near member is left: the rest cross.
            assert_eq!(picked.len(), 4);
            assert!(!picked.contains(&members[0]) && !picked.contains(&members[4]));
            let distinct: BTreeSet<_> = picked.iter().collect();
            assert_eq!(distinct.len(), 4);
            assert_eq!(picked[0], members[1], "the near member first");
        }
        assert_eq!(
            choose_weighted(table, Some("a"), 0.5, 10, &[], &mut rng).len(),
            5,
            "never more than the members of nonzero weight"
        );
    }
}
