//! Protocol parameters and their presets.

use std::time::Duration;

use gossip_core::{ClusterId, Limits};

/// How the members a push goes to are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum PeerSelection {
    /// Drawn uniformly at random from the live members for every push.
    Random,
    /// The members next in this node's probe rotation (a shuffled
    /// round-robin, so a burst of news stays among a few peers about to be
    /// probed anyway); urgent news (a suspicion, a death, a leave, a
    /// refutation) is pushed to members drawn at random. The default.
    #[default]
    RoundRobin,
    /// Drawn by zone and weight, from what each member publishes of itself
    /// ([`Swim::set_placement`](crate::Swim::set_placement); the composed
    /// member reads its `zone` and `weight` keys): each push target is in
    /// another zone with probability `cross_zone_share` and in this node's
    /// zone otherwise, and within a zone members are drawn in proportion to
    /// their weight (see [`gossip_core::choose_weighted`]).
    Weighted {
        /// Share of push targets outside this node's zone, from 0 to 1.
        /// Lower keeps more traffic inside a zone and makes news slower to
        /// cross zones.
        cross_zone_share: f64,
    },
}

/// A setting [`Config::validate`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{setting}` {problem}")]
pub struct InvalidConfig {
    /// The setting's name.
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Every knob of the SWIM machine, with memberlist's values as defaults.
///
/// Start from a preset ([`Config::lan`], [`Config::wan`], [`Config::local`])
/// and change what you need:
///
/// ```
/// use std::time::Duration;
/// use gossip_core::ClusterId;
/// use gossip_swim::Config;
/// let mut config = Config::lan(ClusterId::from_name("prod"), 64);
/// config.probe_interval = Duration::from_millis(500);
/// assert_eq!(config.indirect_probes, 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The cluster this node belongs to; frames of other clusters are refused.
    pub cluster: ClusterId,
    /// Time between probes of successive members. Default 1 s (memberlist
    /// `ProbeInterval`). Shorter detects faster and costs more packets.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking others to probe.
    /// Default 500 ms (memberlist `ProbeTimeout`); set it above the network's
    /// 99th-percentile round trip.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly after a direct probe times out.
    /// Default 3 (memberlist `IndirectChecks`). More survives more packet
    /// loss, at the cost of more packets per failed probe.
    pub indirect_probes: usize,
    /// The suspicion timeout's base: a suspect is declared dead no sooner than
    /// `suspicion_mult * max(1, log10(n)) * probe_interval`, nor sooner than
    /// `stall_patience`. Default 3 in the LAN preset (memberlist's
    /// `SuspicionMult` is 4), which with `stall_patience` gives 6 s up to
    /// 100 members and grows with `log10(n)` beyond (9 s at 1,000).
    pub suspicion_mult: u32,
    /// The patience rule: a member that is silent for up to this long (a
    /// pause, an overloaded host, a stopped process) is never declared dead
    /// for its silence. A suspicion starts only after the member has gone
    /// silent, and its timeout is never shorter than this, so a death is
    /// declared at least this long after the member last answered. Only
    /// evidence that the process is gone, not silence, goes faster (see
    /// `unreachable_suspicion`). Default 6 s (WAN 30 s, local 3 s).
    pub stall_patience: Duration,
    /// The suspicion timeout when the network says the suspect's process is
    /// gone: this node got an ICMP port or host unreachable for a datagram
    /// it sent to the suspect's address ([`Swim::handle_unreachable`](crate::Swim::handle_unreachable)),
    /// heard nothing from it since, and at least one other member suspects
    /// it too. The suspect still has this long to refute; a stalled process
    /// keeps its port open and draws no such error, so the patience rule
    /// still holds for it. Default 1 s (WAN 5 s): ten times a LAN round
    /// trip and more, time for the suspect's refutation to come back.
    pub unreachable_suspicion: Duration,
    /// Probe timeouts per member from measured round trips: `max(2 * srtt,
    /// srtt + 4 * rttvar)`, bounded between half and four times
    /// `probe_timeout` (and stretched by local health), so a fast pair does
    /// not wait for a timeout sized for the slowest link and a slow link is
    /// not suspected for being slow. The indirect probes get the time they
    /// get after a configured timeout (the rest of `probe_interval`, and at
    /// least `probe_timeout`), so a shorter timeout concludes the probe
    /// sooner and a longer one stretches its period. Default on.
    pub adaptive_probe_timeout: bool,
    /// Lifeguard's dynamic suspicion: the timeout starts at this multiple of
    /// the minimum and shrinks with independent confirmations. Default 6
    /// (memberlist `SuspicionMaxTimeoutMult`); 1 turns the dynamic timeout off.
    pub suspicion_max_mult: u32,
    /// Independent confirmations that bring the suspicion timeout down to its
    /// minimum. Default 2 (Lifeguard's `K`; memberlist uses
    /// `indirect_probes - 2` = 1). More confirmations make false deaths rarer
    /// and true deaths slower to declare.
    pub suspicion_confirmations: u32,
    /// Lifeguard's local health multiplier: probe interval and timeout are
    /// scaled by `score + 1`, the score ranging over `0..awareness_max`.
    /// Default 8 (memberlist `AwarenessMaxMultiplier`); 1 turns it off.
    pub awareness_max: u32,
    /// Lifeguard's buddy system: a probe of a suspect carries the suspicion,
    /// so the suspect can refute at once. Default on.
    pub buddy_system: bool,
    /// When a direct probe's ack is overdue, also ping the target once over
    /// a reliable channel ([`Transmit::reliable`](crate::Transmit::reliable),
    /// which the driver sends on a stream), besides asking others to probe
    /// it. A lost datagram alone then does not make a live member suspect.
    /// Default on (memberlist's TCP fallback ping, on by default there too).
    pub fallback_probe: bool,
    /// Retransmit multiplier: each rumor is sent `retransmit_mult *
    /// ceil(log10(n + 1))` times. Default 4 (memberlist `RetransmitMult`).
    pub retransmit_mult: u32,
    /// Members a fresh rumor is pushed to at once (F), besides riding on
    /// probes. Default 3 (memberlist `GossipNodes`, which memberlist sends
    /// every 200 ms whether or not there is news). News reaches n members in
    /// about `log_F(n)` pushes, so 1 is slow and fragile; each more costs a
    /// datagram per push. 0 leaves rumors to probes only.
    pub gossip_fanout: usize,
    /// How the `gossip_fanout` members of a push are chosen. Default
    /// [`PeerSelection::RoundRobin`].
    pub peer_selection: PeerSelection,
    /// Shortest time between two pushes: news that arrives sooner after a
    /// push waits for the end of this interval and goes out in one round.
    /// This bounds a node's pushes to `gossip_fanout` per interval however
    /// fast news comes in (in a join storm every datagram brings some), while
    /// news in a quiet cluster still goes out at once. Default 50 ms (WAN
    /// 250 ms, local 20 ms).
    pub push_interval: Duration,
    /// Largest datagram the machine writes, in bytes, until the driver says
    /// otherwise with [`Swim::set_max_datagram_bytes`](crate::Swim::set_max_datagram_bytes).
    /// Default 1,200 (the QUIC minimum path MTU less headers).
    pub max_datagram_bytes: usize,
    /// First delay between join attempts; doubles up to `join_retry_max`.
    /// Default 1 s.
    pub join_retry_initial: Duration,
    /// Longest delay between join attempts. Default 30 s.
    pub join_retry_max: Duration,
    /// How often a node re-contacts one recently dead member, and perhaps a
    /// seed it is not in contact with, so partitions of any length heal by
    /// themselves. Default 10 s. (memberlist has no such schedule, which is
    /// its issue #222.) See [`Swim::join`](crate::Swim::join) for the seeds.
    pub reconnect_interval: Duration,
    /// How often to exchange whole membership tables with one random member,
    /// repairing whatever rumors missed. Default 30 s (memberlist
    /// `PushPullInterval`). `None` turns it off, for a driver that runs its
    /// own anti-entropy. Each exchange costs about 60 bytes per member.
    pub push_pull_interval: Option<Duration>,
    /// How long dead and departed members are remembered (to heal partitions
    /// and to stop stale rumors resurrecting them). Default 1 hour.
    pub departed_horizon: Duration,
    /// Longest a graceful leave waits for its announcement to be sent its
    /// retransmit budget. Default 5 s.
    pub leave_timeout: Duration,
    /// Seed of the machine's PRNG. Give every node its own; a simulation
    /// derives them from one master seed.
    pub rng_seed: u64,
    /// Caps on input and state.
    pub limits: Limits,
}

impl Config {
    /// memberlist's `DefaultLANConfig`: a local network, round trips well
    /// under 100 ms. The member table holds up to four times
    /// `expected_members`, and never fewer than [`Limits`]' default (100,000):
    /// a cluster larger than planned is never turned away silently.
    pub fn lan(cluster: ClusterId, expected_members: usize) -> Self {
        let mut limits = Limits::default();
        limits.max_members = expected_members.saturating_mul(4).max(limits.max_members);
        Config {
            cluster,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 3,
            suspicion_mult: 3,
            stall_patience: Duration::from_secs(6),
            unreachable_suspicion: Duration::from_secs(1),
            adaptive_probe_timeout: true,
            suspicion_max_mult: 6,
            suspicion_confirmations: 2,
            awareness_max: 8,
            buddy_system: true,
            fallback_probe: true,
            retransmit_mult: 4,
            gossip_fanout: 3,
            peer_selection: PeerSelection::RoundRobin,
            push_interval: Duration::from_millis(50),
            max_datagram_bytes: 1200,
            join_retry_initial: Duration::from_secs(1),
            join_retry_max: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(10),
            push_pull_interval: Some(Duration::from_secs(30)),
            departed_horizon: Duration::from_secs(3600),
            leave_timeout: Duration::from_secs(5),
            rng_seed: 0,
            limits,
        }
    }

    /// memberlist's `DefaultWANConfig`: round trips up to a few hundred ms.
    /// Probe interval 5 s, probe timeout 3 s, suspicion multiplier 6, fanout 4.
    pub fn wan(cluster: ClusterId, expected_members: usize) -> Self {
        Config {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            suspicion_mult: 6,
            stall_patience: Duration::from_secs(30),
            unreachable_suspicion: Duration::from_secs(5),
            gossip_fanout: 4,
            push_interval: Duration::from_millis(250),
            reconnect_interval: Duration::from_secs(30),
            push_pull_interval: Some(Duration::from_secs(60)),
            leave_timeout: Duration::from_secs(15),
            ..Self::lan(cluster, expected_members)
        }
    }

    /// memberlist's `DefaultLocalConfig`: one host or a rack, loopback-fast.
    /// Probe timeout 200 ms, suspicion multiplier 3, stall patience 3 s,
    /// retransmit multiplier 2.
    pub fn local(cluster: ClusterId, expected_members: usize) -> Self {
        Config {
            probe_timeout: Duration::from_millis(200),
            suspicion_mult: 3,
            stall_patience: Duration::from_secs(3),
            retransmit_mult: 2,
            push_interval: Duration::from_millis(20),
            reconnect_interval: Duration::from_secs(5),
            leave_timeout: Duration::from_secs(3),
            ..Self::lan(cluster, expected_members)
        }
    }

    /// Refuses settings the machine cannot run with: a zero interval or
    /// timeout, a probe timeout not shorter than the probe interval, a
    /// suspicion multiplier of 0, a cross-zone share outside `0..=1`.
    ///
    /// # Errors
    ///
    /// The first setting that is impossible, and why.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let refuse = |setting, problem: &str| {
            Err(InvalidConfig {
                setting,
                problem: problem.to_string(),
            })
        };
        let zero = Duration::ZERO;
        if self.probe_interval == zero {
            return refuse("probe_interval", "is 0; probes would never stop");
        }
        if self.probe_timeout == zero || self.probe_timeout >= self.probe_interval {
            return refuse(
                "probe_timeout",
                &format!(
                    "is {:?}; it must be above 0 and shorter than probe_interval ({:?}), which holds the timeout and the indirect probes",
                    self.probe_timeout, self.probe_interval
                ),
            );
        }
        if self.push_interval == zero {
            return refuse(
                "push_interval",
                "is 0; every datagram bringing news would set off a push",
            );
        }
        if self.suspicion_mult == 0 {
            return refuse(
                "suspicion_mult",
                "is 0, which would declare every suspect dead at once; use 1 or more (the presets use 3 to 6)",
            );
        }
        if self.unreachable_suspicion == zero {
            return refuse(
                "unreachable_suspicion",
                "is 0, which would leave a suspect no time to refute",
            );
        }
        if self.reconnect_interval == zero {
            return refuse("reconnect_interval", "is 0");
        }
        if let PeerSelection::Weighted { cross_zone_share } = self.peer_selection
            && !(0.0..=1.0).contains(&cross_zone_share)
        {
            return refuse(
                "cross_zone_share",
                &format!("is {cross_zone_share}; it is a share of rounds, from 0 to 1"),
            );
        }
        Ok(())
    }

    /// This configuration with the three Lifeguard extensions turned off
    /// (plain SWIM with suspicion), for comparisons.
    pub fn without_lifeguard(self) -> Self {
        Config {
            awareness_max: 1,
            suspicion_max_mult: 1,
            buddy_system: false,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presets_are_valid_and_impossible_settings_are_named() {
        let cluster = ClusterId::from_name("validate");
        for preset in [
            Config::lan(cluster, 64),
            Config::wan(cluster, 64),
            Config::local(cluster, 64),
        ] {
            assert_eq!(preset.validate(), Ok(()));
        }
        let refused = |change: fn(&mut Config)| {
            let mut config = Config::lan(cluster, 64);
            change(&mut config);
            config.validate().expect_err("refused").setting
        };
        assert_eq!(
            refused(|c| c.probe_interval = Duration::ZERO),
            "probe_interval"
        );
        assert_eq!(
            refused(|c| c.probe_timeout = c.probe_interval),
            "probe_timeout"
        );
        assert_eq!(
            refused(|c| c.push_interval = Duration::ZERO),
            "push_interval"
        );
        assert_eq!(refused(|c| c.suspicion_mult = 0), "suspicion_mult");
        assert_eq!(
            refused(|c| {
                c.peer_selection = PeerSelection::Weighted {
                    cross_zone_share: 1.5,
                }
            }),
            "cross_zone_share"
        );
    }
}
