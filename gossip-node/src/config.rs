//! What a node is started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{ClusterId, Key};
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
    /// Addresses of members to join through. Empty for the first node.
    pub seeds: Vec<SocketAddr>,
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
    /// Replaces the preset's suspicion multiplier (4 for `Lan`, 6 for `Wan`,
    /// 3 for `Local`): a suspect is declared dead no sooner than
    /// `mult * log10(members) * probe interval` after the suspicion, so at
    /// 64 members and the LAN preset, 4 gives 7.2 s and 2 gives 3.6 s.
    /// Lower declares crashed members dead sooner, and also members that
    /// are alive but stall (a long pause, an overloaded host) for about that
    /// long. `None` (the default) keeps the preset's.
    pub suspicion_mult: Option<u32>,
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
    /// when no probe has shown a difference (the backstop). Default 30 s.
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
    /// Keys this node publishes from the start: they ride its first
    /// announcement, so no member ever sees it without them. They replace
    /// keys of the same name kept in `data_dir`. Default none.
    pub initial_keys: Vec<(Key, Bytes)>,
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
            suspicion_mult: None,
            data_dir: None,
            sync_interval: Duration::from_secs(30),
            max_concurrent_syncs: 4,
            sync_cooldown: Duration::from_secs(1),
            tombstone_grace: Duration::from_secs(3600),
            rng_seed: None,
            event_buffer: 4096,
            initial_keys: Vec::new(),
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
    /// push-pull backstop off (the node's Merkle sync replaces it) and the
    /// suspicion multiplier, if one is given.
    pub fn swim_config(&self) -> gossip_swim::Config {
        let cluster = self.cluster_id();
        let mut config = match self.preset {
            Preset::Lan => gossip_swim::Config::lan(cluster, self.expected_members),
            Preset::Wan => gossip_swim::Config::wan(cluster, self.expected_members),
            Preset::Local => gossip_swim::Config::local(cluster, self.expected_members),
        };
        config.push_pull_interval = None;
        if let Some(mult) = self.suspicion_mult {
            config.suspicion_mult = mult;
        }
        config
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
        assert_eq!(preset.suspicion_mult, 4);
        assert_eq!(preset.push_pull_interval, None);
        config.suspicion_mult = Some(2);
        let mut tuned = config.swim_config();
        assert_eq!(tuned.suspicion_mult, 2);
        tuned.suspicion_mult = 4;
        assert_eq!(tuned, preset);
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
