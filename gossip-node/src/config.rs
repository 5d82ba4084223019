//! What a node is started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{ClusterId, Key};
use gossip_swim::PeerSelection;

use crate::Seed;
use gossip_transport_quic::{NodeCredentials, TrustBundle};

/// The protocol timings to start from: memberlist's three profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// A local network (round trips well under 100 ms): probe every 1 s,
    /// probe timeout 500 ms. The default.
    #[default]
    Lan,
    /// Wide-area links (round trips up to a few hundred ms): probe every 5 s,
    /// probe timeout 3 s.
    Wan,
    /// One host or a rack: probe timeout 200 ms, shorter suspicion.
    Local,
}

impl Preset {
    /// The round trip a QUIC connection assumes before it has measured
    /// one, which sets how soon a lost handshake packet is sent again
    /// (about three times this): 30 ms on a LAN, 10 ms locally, and
    /// RFC 9002's 333 ms across a WAN.
    pub fn initial_rtt(self) -> Duration {
        match self {
            Preset::Lan => Duration::from_millis(30),
            Preset::Wan => Duration::from_millis(333),
            Preset::Local => Duration::from_millis(10),
        }
    }
}

/// Everything a [`Node`](crate::Node) is started with.
///
/// ```
/// use gossip_node::{NodeConfig, Preset};
/// use gossip_transport_quic::{ClusterCa, Validity};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ca = ClusterCa::generate("prod")?;
/// let me = ca.issue("cache-1", Validity::for_duration(std::time::Duration::from_secs(86_400)))?;
/// let mut config = NodeConfig::new("prod", "cache-1", "127.0.0.1:7946".parse()?, ca.trust());
/// config.credentials = Some(me);
/// config.seeds = vec!["127.0.0.1:7947".parse()?];
/// config.preset = Preset::Lan;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The cluster's name; nodes of other clusters are refused (their frames
    /// carry another [`ClusterId`]).
    pub cluster: String,
    /// This node's name, as other members see it.
    pub name: String,
    /// Where to listen (UDP).
    pub bind: SocketAddr,
    /// The address other members should use to reach this node, if it is not
    /// `bind` (behind NAT, or when `bind` is `0.0.0.0`). It must be a
    /// concrete address: an unspecified one is refused at start.
    pub advertise: Option<SocketAddr>,
    /// Members to join through: addresses, DNS names with a port, or SRV
    /// record names ([`Seed`]). Names are resolved at start, every 2 s until
    /// the node has joined, and every minute after, so a seed list kept in
    /// DNS (a Kubernetes headless service) follows its changes. Seeds stay
    /// in use after the join: a seed the node holds no live member at is
    /// contacted now and then, so a partition of any length heals. Empty
    /// for the first node; three is a good number.
    pub seeds: Vec<Seed>,
    /// The node's certificate and key. `None` loads them from `data_dir`
    /// (which must then hold them); `Some` stores them there on first start,
    /// and must match what is there on later starts.
    pub credentials: Option<NodeCredentials>,
    /// The cluster CA(s) whose certificates are trusted.
    pub trust: TrustBundle,
    /// Protocol timings. Default [`Preset::Lan`].
    pub preset: Preset,
    /// The cluster size to plan for. The member table holds up to four times
    /// as many members and never fewer than 100,000, departed ones included
    /// until they are forgotten; a joiner past that is refused and told why
    /// ([`NodeEvent::JoinRefused`](crate::NodeEvent::JoinRefused) on its
    /// side, a warning on the refusing side). The suspicion timeout does not
    /// depend on it: it follows the number of live members. Default 64.
    pub expected_members: usize,
    /// Replaces the preset's probe interval (1 s for `Lan` and `Local`, 5 s
    /// for `Wan`): each node probes one member per interval. Shorter finds
    /// failures sooner, and every member sends a ping and an ack more often,
    /// so the cluster's quiet traffic grows in proportion (see
    /// [`warnings`](NodeConfig::warnings)). `None` keeps the preset's.
    pub probe_interval: Option<Duration>,
    /// Replaces the preset's probe timeout (500 ms `Lan`, 3 s `Wan`, 200 ms
    /// `Local`): how long a direct probe waits for its ack before others
    /// are asked to probe. Keep it above the network's 99th-percentile round
    /// trip, or slow links look like failures; it must be shorter than the
    /// probe interval. `None` keeps the preset's.
    pub probe_timeout: Option<Duration>,
    /// Replaces the preset's push interval (50 ms `Lan`, 250 ms `Wan`,
    /// 20 ms `Local`), the gossip interval: news goes out at once, then at
    /// most once per interval, to `gossip_fanout` members. Shorter spreads
    /// bursts of news sooner and lets a burst cost more datagrams per
    /// second. `None` keeps the preset's.
    pub push_interval: Option<Duration>,
    /// Replaces the preset's fanout F (3, or 4 for `Wan`): members each push
    /// of news goes to. News reaches n members in about `log_F(n)` rounds;
    /// 1 is slow and one lost datagram away from stalling, each more costs a
    /// datagram per push. 0 is refused. `None` keeps the preset's.
    pub gossip_fanout: Option<usize>,
    /// Replaces the preset's number of indirect probes k (3): members asked
    /// to probe a member whose direct ack is late. More survives more packet
    /// loss before a live member is suspected, at k datagrams (and their
    /// answers) per late ack. `None` keeps the preset's.
    pub indirect_probes: Option<usize>,
    /// Replaces the preset's suspicion multiplier (3 for `Lan`, 6 for `Wan`,
    /// 3 for `Local`): a suspect is declared dead no sooner than
    /// `mult * log10(members) * probe interval` after the suspicion, nor
    /// sooner than `stall_patience`. At the LAN preset the patience decides
    /// up to 100 members (6 s), the multiplier beyond (9 s at 1,000).
    /// `None` (the default) keeps the preset's.
    pub suspicion_mult: Option<u32>,
    /// Replaces the preset's stall patience (6 s for `Lan`, 30 s for `Wan`,
    /// 3 s for `Local`): a member silent for up to this long (a pause, an
    /// overloaded host, a stopped process) is never declared dead for its
    /// silence. A member whose process is gone while its host answers
    /// (ICMP port unreachable) is found faster than this, on that evidence.
    /// Lower finds lost hosts sooner and declares dead members that stall
    /// about that long. `None` (the default) keeps the preset's.
    pub stall_patience: Option<Duration>,
    /// How the members a push goes to are chosen: round-robin (the
    /// default), random, or weighted by the zone and weight each node
    /// publishes in its `zone` and `weight` keys.
    pub peer_selection: PeerSelection,
    /// The quiet traffic the operator allows per member, in IP bytes per
    /// second: a configuration whose estimate is above it is warned about
    /// (see [`warnings`](NodeConfig::warnings)). Default 2,000.
    pub traffic_budget: u64,
    /// Where the node keeps its identity, last incarnation and its own keys
    /// across restarts; locked while the node runs (a second process gets
    /// [`Error::DataDirLocked`](crate::Error::DataDirLocked)). `None` keeps
    /// nothing: a restarted node starts again at incarnation 0 with no keys,
    /// learns from the seed that answers its join what its earlier life
    /// reached, and rises above it, so its metadata and a graceful leave
    /// count. Restarted at another address, it is taken in once peers find
    /// the earlier address dead. A copy of the directory is this node's
    /// identity: a node started from one while this node runs stops with
    /// [`Error::IdentityInUse`](crate::Error::IdentityInUse).
    pub data_dir: Option<PathBuf>,
    /// How often the node reconciles its state with one random member even
    /// when no probe has shown a difference (the anti-entropy backstop).
    /// Shorter repairs what gossip missed sooner, at one exchange of Merkle
    /// roots (and whatever differs) per interval. Default 30 s.
    pub sync_interval: Duration,
    /// Most reconciliations this node starts at once. Default 4.
    pub max_concurrent_syncs: usize,
    /// A peer whose probe showed a different state digest is not synced with
    /// again sooner than this after the last sync with it. Default 1 s.
    pub sync_cooldown: Duration,
    /// How long a deleted key's tombstone is kept before collection. Default
    /// 1 hour.
    pub tombstone_grace: Duration,
    /// Seed of the node's PRNG (peer choice, probe order). `None` derives one
    /// from the node id and the start time.
    pub rng_seed: Option<u64>,
    /// Events buffered for slow subscribers before they start missing some.
    /// Default 4,096.
    pub event_buffer: usize,
    /// Most members this node connects to ahead of need. From 5 s after
    /// its join, a node opens connections to live members it has none
    /// with, two at a time, up to four a second (of each pair, one end
    /// dials; a member that does not answer is tried that way again after
    /// 30 s), so the handshakes of the first probe rotation are over within
    /// seconds instead of spread over it, and a probe, a push or a request
    /// to probe on another's behalf finds its connection ready. Past this
    /// many connections SWIM's own sends open the rest. 0 opens connections
    /// only when a send needs one. Default 256.
    pub connect_ahead: usize,
    /// Keys this node publishes from the start: they ride its first
    /// announcement, so no member ever sees it without them. They replace
    /// keys of the same name kept in `data_dir`. Default none.
    pub initial_keys: Vec<(Key, Bytes)>,
    /// Faults injected into every datagram the node sends from the start
    /// (loss, duplication, delay), for tests and benchmarks. Default none.
    #[cfg(feature = "fault-injection")]
    pub faults: gossip_transport_quic::FaultConfig,
}

impl NodeConfig {
    /// A configuration with defaults for everything not given.
    pub fn new(
        cluster: impl Into<String>,
        name: impl Into<String>,
        bind: SocketAddr,
        trust: TrustBundle,
    ) -> Self {
        NodeConfig {
            cluster: cluster.into(),
            name: name.into(),
            bind,
            advertise: None,
            seeds: Vec::new(),
            credentials: None,
            trust,
            preset: Preset::Lan,
            expected_members: 64,
            probe_interval: None,
            probe_timeout: None,
            push_interval: None,
            gossip_fanout: None,
            indirect_probes: None,
            suspicion_mult: None,
            stall_patience: None,
            peer_selection: PeerSelection::RoundRobin,
            traffic_budget: 2_000,
            data_dir: None,
            sync_interval: Duration::from_secs(30),
            max_concurrent_syncs: 4,
            sync_cooldown: Duration::from_secs(1),
            tombstone_grace: Duration::from_secs(3600),
            rng_seed: None,
            event_buffer: 4096,
            connect_ahead: 256,
            initial_keys: Vec::new(),
            #[cfg(feature = "fault-injection")]
            faults: gossip_transport_quic::FaultConfig::new(0),
        }
    }

    /// The cluster's id, derived from its name.
    pub fn cluster_id(&self) -> ClusterId {
        ClusterId::from_name(&self.cluster)
    }

    /// The settings of the node's replica: its sync fields, sessions idle
    /// for 5 s failing (a LAN peer that says nothing that long is gone).
    pub fn replica_config(&self) -> gossip_member::ReplicaConfig {
        let mut config = gossip_member::ReplicaConfig::new(self.cluster_id());
        config.sync.idle_timeout = Duration::from_secs(5);
        config.sync_interval = self.sync_interval;
        config.sync_cooldown = self.sync_cooldown;
        config.max_concurrent_syncs = self.max_concurrent_syncs;
        config.tombstone_grace = self.tombstone_grace;
        config
    }

    /// The SWIM configuration this node runs: the preset, with SWIM's own
    /// push-pull backstop off (the node's Merkle sync replaces it) and
    /// every setting given here in place of the preset's.
    pub fn swim_config(&self) -> gossip_swim::Config {
        let cluster = self.cluster_id();
        let mut config = match self.preset {
            Preset::Lan => gossip_swim::Config::lan(cluster, self.expected_members),
            Preset::Wan => gossip_swim::Config::wan(cluster, self.expected_members),
            Preset::Local => gossip_swim::Config::local(cluster, self.expected_members),
        };
        config.push_pull_interval = None;
        config.probe_interval = self.probe_interval.unwrap_or(config.probe_interval);
        config.probe_timeout = self.probe_timeout.unwrap_or(config.probe_timeout);
        config.push_interval = self.push_interval.unwrap_or(config.push_interval);
        config.gossip_fanout = self.gossip_fanout.unwrap_or(config.gossip_fanout);
        config.indirect_probes = self.indirect_probes.unwrap_or(config.indirect_probes);
        config.suspicion_mult = self.suspicion_mult.unwrap_or(config.suspicion_mult);
        config.stall_patience = self.stall_patience.unwrap_or(config.stall_patience);
        config.peer_selection = self.peer_selection;
        config
    }

    /// Refuses a configuration the node cannot run with, naming the
    /// setting and the fix. [`Node::start`](crate::Node::start) calls it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) for the first impossible
    /// setting.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let refuse = |message: String| Err(crate::Error::Config(message));
        if self.name.is_empty() {
            return refuse("`name` is empty; give the node a name".into());
        }
        if self.gossip_fanout == Some(0) {
            return refuse(
                "`gossip_fanout` is 0, which would leave news to ride probes only; use 2 or 3"
                    .into(),
            );
        }
        if self.expected_members == 0 {
            return refuse("`expected_members` is 0; give the cluster size to plan for".into());
        }
        if self.sync_interval.is_zero() {
            return refuse("`sync_interval` is 0; use 30s, or more for a large cluster".into());
        }
        if self.max_concurrent_syncs == 0 {
            return refuse("`max_concurrent_syncs` is 0; no sync could ever start".into());
        }
        self.swim_config()
            .validate()
            .or_else(|invalid| refuse(invalid.to_string()))
    }

    /// The risks this configuration runs that the node starts with anyway,
    /// each a sentence that names the fix; the node logs them at start and
    /// reports them in [`Node::warnings`](crate::Node::warnings) (the agent
    /// shows them in `gossip-node status`):
    ///
    /// * a fanout F of 1 (news is slow and one lost datagram from stalling);
    /// * no indirect probes (one lost ping makes a live member suspect);
    /// * exactly one seed (a node that starts while it is down cannot join,
    ///   and a partition heals only through it);
    /// * an estimated quiet traffic per member over `traffic_budget`: the
    ///   probes (a ping and an ack, about
    ///   [`PROBE_ROUND_IP_BYTES`](NodeConfig::PROBE_ROUND_IP_BYTES) with
    ///   their QUIC packets) per probe interval, and a quiet anti-entropy
    ///   round (about
    ///   [`SYNC_ROUND_IP_BYTES`](NodeConfig::SYNC_ROUND_IP_BYTES)) per sync
    ///   interval, shown for the whole cluster at `expected_members`.
    pub fn warnings(&self) -> Vec<String> {
        let swim = self.swim_config();
        let mut warnings = Vec::new();
        if swim.gossip_fanout == 1 {
            warnings.push(
                "gossip_fanout is 1: news spreads slowly and one lost datagram can stall it; use 2 or 3".to_string(),
            );
        }
        if swim.indirect_probes == 0 {
            warnings.push(
                "indirect_probes is 0: a single lost ping makes a live member suspect; use 3"
                    .to_string(),
            );
        }
        if self.seeds.len() == 1 {
            warnings.push(
                "one seed: a node that starts while it is down cannot join, and halves of a long partition merge again only through it; give three".to_string(),
            );
        }
        let per_member = self.quiet_traffic_estimate();
        if per_member > self.traffic_budget as f64 {
            warnings.push(format!(
                "probe_interval {:?} and sync_interval {:?} cost about {per_member:.0} IP bytes per member per second at rest ({:.0} for {} members), over the budget of {} (traffic_budget); lengthen the intervals or raise the budget",
                swim.probe_interval,
                self.sync_interval,
                per_member * self.expected_members as f64,
                self.expected_members,
                self.traffic_budget
            ));
        }
        warnings
    }

    /// What one probe round costs on the wire, estimated: a ping and its
    /// ack with their QUIC headers and acknowledgements, in IP bytes.
    pub const PROBE_ROUND_IP_BYTES: f64 = 250.0;

    /// What one anti-entropy round between equal replicas costs on the
    /// wire, estimated: a stream each way carrying a Merkle root, with
    /// QUIC's acknowledgements, in IP bytes.
    pub const SYNC_ROUND_IP_BYTES: f64 = 1_000.0;

    /// Estimated IP bytes per member per second of a cluster at rest.
    pub fn quiet_traffic_estimate(&self) -> f64 {
        let probe = self.swim_config().probe_interval.as_secs_f64();
        let sync = self.sync_interval.as_secs_f64();
        Self::PROBE_ROUND_IP_BYTES / probe + Self::SYNC_ROUND_IP_BYTES / sync
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_transport_quic::ClusterCa;

    fn config() -> NodeConfig {
        let ca = ClusterCa::generate("config-tests").expect("CA");
        NodeConfig::new(
            "config-tests",
            "n",
            "127.0.0.1:0".parse().expect("addr"),
            ca.trust(),
        )
    }

    #[test]
    fn the_suspicion_multiplier_replaces_the_presets_and_nothing_else() {
        let mut config = config();
        let preset = config.swim_config();
        assert_eq!(preset.suspicion_mult, 3);
        assert_eq!(preset.stall_patience, Duration::from_secs(6));
        assert_eq!(preset.push_pull_interval, None);
        config.suspicion_mult = Some(2);
        config.stall_patience = Some(Duration::from_secs(4));
        let mut tuned = config.swim_config();
        assert_eq!(tuned.suspicion_mult, 2);
        assert_eq!(tuned.stall_patience, Duration::from_secs(4));
        tuned.suspicion_mult = 3;
        tuned.stall_patience = Duration::from_secs(6);
        assert_eq!(tuned, preset);
    }

    #[test]
    fn every_setting_reaches_the_machines_in_place_of_the_presets() {
        let mut config = config();
        config.preset = Preset::Wan;
        config.probe_interval = Some(Duration::from_millis(700));
        config.probe_timeout = Some(Duration::from_millis(300));
        config.push_interval = Some(Duration::from_millis(80));
        config.gossip_fanout = Some(2);
        config.indirect_probes = Some(5);
        config.suspicion_mult = Some(3);
        config.peer_selection = PeerSelection::Weighted {
            cross_zone_share: 0.1,
        };
        config.sync_interval = Duration::from_secs(45);
        let swim = config.swim_config();
        assert_eq!(swim.probe_interval, Duration::from_millis(700));
        assert_eq!(swim.probe_timeout, Duration::from_millis(300));
        assert_eq!(swim.push_interval, Duration::from_millis(80));
        assert_eq!(swim.gossip_fanout, 2);
        assert_eq!(swim.indirect_probes, 5);
        assert_eq!(swim.suspicion_mult, 3);
        assert_eq!(
            swim.peer_selection,
            PeerSelection::Weighted {
                cross_zone_share: 0.1
            }
        );
        // What was not given stays the preset's.
        let wan = gossip_swim::Config::wan(config.cluster_id(), config.expected_members);
        assert_eq!(swim.retransmit_mult, wan.retransmit_mult);
        assert_eq!(swim.reconnect_interval, wan.reconnect_interval);
        assert_eq!(
            config.replica_config().sync_interval,
            Duration::from_secs(45)
        );
        assert_eq!(config.validate().map_err(|e| e.to_string()), Ok(()));
    }

    #[test]
    fn impossible_settings_are_refused_naming_the_setting() {
        let refused = |change: fn(&mut NodeConfig)| {
            let mut config = config();
            change(&mut config);
            match config.validate() {
                Err(crate::Error::Config(message)) => message,
                other => panic!("not refused: {other:?}"),
            }
        };
        assert!(refused(|c| c.gossip_fanout = Some(0)).contains("gossip_fanout"));
        assert!(refused(|c| c.suspicion_mult = Some(0)).contains("suspicion_mult"));
        assert!(refused(|c| c.probe_interval = Some(Duration::ZERO)).contains("probe_interval"));
        assert!(
            refused(|c| c.probe_timeout = Some(Duration::from_secs(2))).contains("probe_timeout"),
            "a timeout past the interval"
        );
        assert!(refused(|c| c.sync_interval = Duration::ZERO).contains("sync_interval"));
        assert!(refused(|c| c.name.clear()).contains("name"));
    }

    #[test]
    fn risky_settings_are_warned_about_and_the_defaults_are_not() {
        let mut config = config();
        config.seeds = vec![
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
        ];
        assert_eq!(config.warnings(), Vec::<String>::new());
        config.gossip_fanout = Some(1);
        config.seeds.truncate(1);
        config.probe_interval = Some(Duration::from_millis(100));
        config.probe_timeout = Some(Duration::from_millis(50));
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("gossip_fanout is 1"));
        assert!(warnings[1].contains("one seed"));
        assert!(warnings[2].contains("traffic_budget"), "{}", warnings[2]);
    }

    #[tokio::test]
    async fn a_zero_suspicion_multiplier_is_refused_at_start() {
        let mut config = config();
        config.suspicion_mult = Some(0);
        let err = crate::Node::start(config).await.expect_err("refused");
        assert!(
            matches!(&err, crate::Error::Config(message) if message.contains("suspicion_mult")),
            "{err}"
        );
    }
}
