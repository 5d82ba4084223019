//! The agent's configuration: a TOML file, then environment variables, then
//! flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
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
    pub(crate) seeds: Option<Vec<SocketAddr>>,
    pub(crate) preset: Option<String>,
    pub(crate) expected_members: Option<usize>,
    pub(crate) suspicion_mult: Option<u32>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) admin: Option<AdminConfig>,
    pub(crate) log: Option<LogConfig>,
    pub(crate) keys: Option<std::collections::BTreeMap<String, String>>,
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
    /// Members to join through, comma-separated.
    #[arg(
        long = "seed",
        env = "GOSSIP_SEEDS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub(crate) seeds: Vec<SocketAddr>,
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
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) preset: gossip_node::Preset,
    pub(crate) expected_members: usize,
    pub(crate) suspicion_mult: Option<u32>,
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
            suspicion_mult: file.suspicion_mult,
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
