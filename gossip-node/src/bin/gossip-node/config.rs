//! The agent's configuration: a TOML file, then environment variables, then
//! flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gossip_node::{PeerSelection, Seed};
use serde::Deserialize;

/// The file's contents. Every key is optional; unknown keys are errors (a
/// misspelled key must not be silently ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) cluster: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) bind: Option<SocketAddr>,
    pub(crate) advertise: Option<SocketAddr>,
    pub(crate) seeds: Option<Vec<Seed>>,
    pub(crate) preset: Option<String>,
    pub(crate) expected_members: Option<usize>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) gossip: Option<Tuning>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) admin: Option<AdminConfig>,
    pub(crate) log: Option<LogConfig>,
    pub(crate) keys: Option<std::collections::BTreeMap<String, String>>,
}

/// The protocol's settings, each replacing the preset's: the file's
/// `[gossip]` table, and flags and variables of the same names.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tuning {
    /// Time between probes (e.g. 1s).
    #[arg(long, env = "GOSSIP_PROBE_INTERVAL", hide_env_values = true, value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub(crate) probe_interval: Option<Duration>,
    /// How long a probe waits for its ack before asking others (e.g. 500ms).
    #[arg(long, env = "GOSSIP_PROBE_TIMEOUT", hide_env_values = true, value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub(crate) probe_timeout: Option<Duration>,
    /// Shortest time between two pushes of news, the gossip interval (e.g. 50ms).
    #[arg(long, env = "GOSSIP_PUSH_INTERVAL", hide_env_values = true, value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub(crate) push_interval: Option<Duration>,
    /// Members each push of news goes to (F).
    #[arg(long, env = "GOSSIP_FANOUT", hide_env_values = true)]
    pub(crate) fanout: Option<usize>,
    /// Members asked to probe when a direct ack is late (k).
    #[arg(long, env = "GOSSIP_INDIRECT_PROBES", hide_env_values = true)]
    pub(crate) indirect_probes: Option<usize>,
    /// Suspicion timeout multiplier.
    #[arg(long, env = "GOSSIP_SUSPICION_MULT", hide_env_values = true)]
    pub(crate) suspicion_mult: Option<u32>,
    /// How long a silent member may stall before it can be declared dead (e.g. 6s).
    #[arg(long, env = "GOSSIP_STALL_PATIENCE", hide_env_values = true, value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub(crate) stall_patience: Option<Duration>,
    /// The anti-entropy backstop's interval (e.g. 30s).
    #[arg(long, env = "GOSSIP_SYNC_INTERVAL", hide_env_values = true, value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub(crate) sync_interval: Option<Duration>,
    /// How push targets are chosen: round-robin, random or weighted.
    #[arg(long, env = "GOSSIP_PEER_SELECTION", hide_env_values = true)]
    pub(crate) peer_selection: Option<String>,
    /// With weighted selection, the share of pushes to other zones (0 to 1).
    #[arg(long, env = "GOSSIP_CROSS_ZONE_SHARE", hide_env_values = true)]
    pub(crate) cross_zone_share: Option<f64>,
    /// Quiet traffic allowed per member, IP bytes per second, before a warning.
    #[arg(long, env = "GOSSIP_TRAFFIC_BUDGET", hide_env_values = true)]
    pub(crate) traffic_budget: Option<u64>,
    /// Most members connected to ahead of need after the join (0: none).
    #[arg(long, env = "GOSSIP_CONNECT_AHEAD", hide_env_values = true)]
    pub(crate) connect_ahead: Option<usize>,
}

impl Tuning {
    /// Each setting of `self`, or else of `under`.
    fn over(self, under: Tuning) -> Tuning {
        Tuning {
            probe_interval: self.probe_interval.or(under.probe_interval),
            probe_timeout: self.probe_timeout.or(under.probe_timeout),
            push_interval: self.push_interval.or(under.push_interval),
            fanout: self.fanout.or(under.fanout),
            indirect_probes: self.indirect_probes.or(under.indirect_probes),
            suspicion_mult: self.suspicion_mult.or(under.suspicion_mult),
            stall_patience: self.stall_patience.or(under.stall_patience),
            sync_interval: self.sync_interval.or(under.sync_interval),
            peer_selection: self.peer_selection.or(under.peer_selection),
            cross_zone_share: self.cross_zone_share.or(under.cross_zone_share),
            traffic_budget: self.traffic_budget.or(under.traffic_budget),
            connect_ahead: self.connect_ahead.or(under.connect_ahead),
        }
    }

    /// Writes these settings into `config`.
    pub(crate) fn apply(&self, config: &mut gossip_node::NodeConfig) -> Result<()> {
        config.probe_interval = self.probe_interval;
        config.probe_timeout = self.probe_timeout;
        config.push_interval = self.push_interval;
        config.gossip_fanout = self.fanout;
        config.indirect_probes = self.indirect_probes;
        config.suspicion_mult = self.suspicion_mult;
        config.stall_patience = self.stall_patience;
        if let Some(interval) = self.sync_interval {
            config.sync_interval = interval;
        }
        if let Some(budget) = self.traffic_budget {
            config.traffic_budget = budget;
        }
        if let Some(connect_ahead) = self.connect_ahead {
            config.connect_ahead = connect_ahead;
        }
        let share = self.cross_zone_share;
        config.peer_selection = match self.peer_selection.as_deref().unwrap_or("round-robin") {
            "round-robin" => PeerSelection::RoundRobin,
            "random" => PeerSelection::Random,
            "weighted" => PeerSelection::Weighted {
                cross_zone_share: share.unwrap_or(0.2),
            },
            other => bail!("unknown peer_selection `{other}`: use round-robin, random or weighted"),
        };
        if share.is_some() && !matches!(config.peer_selection, PeerSelection::Weighted { .. }) {
            bail!("cross_zone_share is set but peer_selection is not `weighted`");
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) revoked: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminConfig {
    pub(crate) bind: Option<SocketAddr>,
    pub(crate) token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogConfig {
    pub(crate) format: Option<String>,
    pub(crate) level: Option<String>,
}

impl FileConfig {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        toml::from_str(&text).map_err(|err| {
            anyhow::anyhow!(
                "config file {}: {}\nsee gossip-node/examples/agent.toml for every key, commented",
                path.display(),
                err.to_string().trim_end()
            )
        })
    }
}

/// Settings given as flags or environment variables (clap reads both; a flag
/// wins over its variable).
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct Overrides {
    /// The cluster's name.
    #[arg(long, env = "GOSSIP_CLUSTER", hide_env_values = true)]
    pub(crate) cluster: Option<String>,
    /// This node's name.
    #[arg(long, env = "GOSSIP_NAME", hide_env_values = true)]
    pub(crate) name: Option<String>,
    /// UDP address to gossip on.
    #[arg(long, env = "GOSSIP_BIND", hide_env_values = true)]
    pub(crate) bind: Option<SocketAddr>,
    /// Address peers use to reach this node.
    #[arg(long, env = "GOSSIP_ADVERTISE", hide_env_values = true)]
    pub(crate) advertise: Option<SocketAddr>,
    /// Members to join through, comma-separated: ip:port, host:port (DNS) or
    /// srv:NAME (DNS SRV records), resolved again while the agent runs.
    #[arg(
        long = "seed",
        env = "GOSSIP_SEEDS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub(crate) seeds: Vec<Seed>,
    /// Protocol timings: lan, wan or local.
    #[arg(long, env = "GOSSIP_PRESET", hide_env_values = true)]
    pub(crate) preset: Option<String>,
    /// Where identity and incarnation persist.
    #[arg(long, env = "GOSSIP_DATA_DIR", hide_env_values = true)]
    pub(crate) data_dir: Option<PathBuf>,
    /// The cluster CA certificate (PEM).
    #[arg(long, env = "GOSSIP_TLS_CA", hide_env_values = true)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long, env = "GOSSIP_TLS_CERT", hide_env_values = true)]
    pub(crate) tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "GOSSIP_TLS_KEY", hide_env_values = true)]
    pub(crate) tls_key: Option<PathBuf>,
    /// A file of revoked node ids, one per line; read again on SIGHUP.
    #[arg(long, env = "GOSSIP_TLS_REVOKED", hide_env_values = true)]
    pub(crate) tls_revoked: Option<PathBuf>,
    /// Address of the HTTP admin API.
    #[arg(long, env = "GOSSIP_ADMIN", hide_env_values = true)]
    pub(crate) admin: Option<SocketAddr>,
    /// Bearer token the admin API requires on every request; required
    /// when the API is bound off loopback.
    #[arg(long, env = "GOSSIP_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// Log format: human or json.
    #[arg(long, env = "GOSSIP_LOG_FORMAT", hide_env_values = true)]
    pub(crate) log_format: Option<String>,
    /// Log level or filter, e.g. info or gossip_node=debug.
    #[arg(long, env = "GOSSIP_LOG", hide_env_values = true)]
    pub(crate) log_level: Option<String>,
    #[command(flatten)]
    pub(crate) tuning: Tuning,
}

/// The admin API's default address: loopback only.
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:7947";

/// Everything the agent runs with, after precedence is applied.
#[derive(Debug)]
pub(crate) struct AgentConfig {
    pub(crate) cluster: String,
    pub(crate) name: String,
    pub(crate) bind: SocketAddr,
    pub(crate) advertise: Option<SocketAddr>,
    pub(crate) seeds: Vec<Seed>,
    pub(crate) preset: gossip_node::Preset,
    pub(crate) expected_members: usize,
    pub(crate) tuning: Tuning,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) ca: PathBuf,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) revoked: Option<PathBuf>,
    pub(crate) admin: SocketAddr,
    pub(crate) admin_token: Option<String>,
    pub(crate) json_logs: bool,
    pub(crate) log_level: String,
    pub(crate) keys: Vec<(String, String)>,
}

impl AgentConfig {
    /// Flags and environment over the file over defaults. Relative paths in
    /// the file are relative to the file's folder.
    pub(crate) fn resolve(file: FileConfig, base: &Path, over: Overrides) -> Result<Self> {
        let relative = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let tls = file.tls.unwrap_or_default();
        let admin = file.admin.unwrap_or_default();
        let log = file.log.unwrap_or_default();
        let preset = match over.preset.or(file.preset).as_deref().unwrap_or("lan") {
            "lan" => gossip_node::Preset::Lan,
            "wan" => gossip_node::Preset::Wan,
            "local" => gossip_node::Preset::Local,
            other => bail!("unknown preset `{other}`: use lan, wan or local"),
        };
        let json_logs = match over.log_format.or(log.format).as_deref().unwrap_or("human") {
            "human" => false,
            "json" => true,
            other => bail!("unknown log format `{other}`: use human or json"),
        };
        let name = over
            .name
            .or(file.name)
            .context("no node name: set `name` in the config file, GOSSIP_NAME or --name")?;
        let ca = over.tls_ca.or(tls.ca.map(relative)).context(
            "no CA certificate: set `tls.ca` (make one with `gossip-node certs init-ca`)",
        )?;
        let admin_bind = over
            .admin
            .or(admin.bind)
            .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("a valid address"));
        let admin_token = over.admin_token.or(admin.token);
        if admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            bail!(
                "the admin token is empty: set `admin.token` (or GOSSIP_ADMIN_TOKEN) to a secret, or leave it out"
            );
        }
        if admin_token.is_none() && !admin_bind.ip().is_loopback() {
            bail!(
                "the admin API would listen on {admin_bind}, off loopback, without authentication: set `admin.token` (or GOSSIP_ADMIN_TOKEN) to a secret that clients send as `Authorization: Bearer`, or bind it to 127.0.0.1"
            );
        }
        let seeds = if over.seeds.is_empty() {
            file.seeds.unwrap_or_default()
        } else {
            over.seeds
        };
        Ok(AgentConfig {
            cluster: over
                .cluster
                .or(file.cluster)
                .unwrap_or_else(|| "default".to_string()),
            name,
            bind: over
                .bind
                .or(file.bind)
                .unwrap_or_else(|| "0.0.0.0:7946".parse().expect("a valid address")),
            advertise: over.advertise.or(file.advertise),
            seeds,
            preset,
            expected_members: file.expected_members.unwrap_or(64),
            tuning: over.tuning.over(file.gossip.unwrap_or_default()),
            data_dir: over.data_dir.or(file.data_dir.map(relative)),
            ca,
            cert: over.tls_cert.or(tls.cert.map(relative)),
            key: over.tls_key.or(tls.key.map(relative)),
            revoked: over.tls_revoked.or(tls.revoked.map(relative)),
            admin: admin_bind,
            admin_token,
            json_logs,
            log_level: over
                .log_level
                .or(log.level)
                .unwrap_or_else(|| "info".to_string()),
            keys: file.keys.unwrap_or_default().into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml: &str, over: Overrides) -> Result<AgentConfig> {
        let file: FileConfig = toml::from_str(toml)?;
        AgentConfig::resolve(file, Path::new("/etc/gossip"), over)
    }

    const BASE: &str = "name = \"n1\"\n[tls]\nca = \"ca.crt\"\n";

    #[test]
    fn gossip_settings_come_from_the_file_and_flags_win() -> Result<()> {
        let toml = format!(
            "{BASE}[gossip]\nprobe_interval = \"2s\"\nprobe_timeout = \"400ms\"\npush_interval = \"100ms\"\nfanout = 4\nindirect_probes = 2\nsuspicion_mult = 5\nstall_patience = \"8s\"\nsync_interval = \"1m\"\npeer_selection = \"weighted\"\ncross_zone_share = 0.3\ntraffic_budget = 900\nconnect_ahead = 32\n"
        );
        let mut over = Overrides::default();
        over.tuning.fanout = Some(2);
        let config = resolve(&toml, over)?;
        let trust = gossip_transport_quic::ClusterCa::generate("t")?.trust();
        let mut node = gossip_node::NodeConfig::new("c", "n1", "127.0.0.1:0".parse()?, trust);
        config.tuning.apply(&mut node)?;
        assert_eq!(node.probe_interval, Some(Duration::from_secs(2)));
        assert_eq!(node.probe_timeout, Some(Duration::from_millis(400)));
        assert_eq!(node.push_interval, Some(Duration::from_millis(100)));
        assert_eq!(node.gossip_fanout, Some(2), "the flag wins over the file");
        assert_eq!(node.indirect_probes, Some(2));
        assert_eq!(node.suspicion_mult, Some(5));
        assert_eq!(node.stall_patience, Some(Duration::from_secs(8)));
        assert_eq!(node.sync_interval, Duration::from_secs(60));
        assert_eq!(
            node.peer_selection,
            PeerSelection::Weighted {
                cross_zone_share: 0.3
            }
        );
        assert_eq!(node.traffic_budget, 900);
        assert_eq!(node.connect_ahead, 32);
        Ok(())
    }

    #[test]
    fn unknown_or_inconsistent_gossip_settings_are_refused() -> Result<()> {
        let typo = format!("{BASE}[gossip]\nfan_out = 3\n");
        assert!(resolve(&typo, Overrides::default()).is_err());
        let trust = gossip_transport_quic::ClusterCa::generate("t")?.trust();
        let mut node = gossip_node::NodeConfig::new("c", "n1", "127.0.0.1:0".parse()?, trust);
        let selection = format!("{BASE}[gossip]\npeer_selection = \"nearest\"\n");
        let err = resolve(&selection, Overrides::default())?
            .tuning
            .apply(&mut node)
            .expect_err("refused");
        assert!(
            err.to_string().contains("round-robin, random or weighted"),
            "{err}"
        );
        let share = format!("{BASE}[gossip]\ncross_zone_share = 0.5\n");
        let err = resolve(&share, Overrides::default())?
            .tuning
            .apply(&mut node)
            .expect_err("refused");
        assert!(err.to_string().contains("weighted"), "{err}");
        Ok(())
    }
}
