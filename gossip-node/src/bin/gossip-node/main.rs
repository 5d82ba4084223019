//! `gossip-node`: the reference agent and the commands that talk to it.
//!
//! ```text
//! gossip-node agent --config agent.toml        run a node (SIGINT/SIGTERM: leave, then exit)
//! gossip-node members [--json]                 the membership table of the local agent
//! gossip-node status [--json]                  the local agent's summary
//! gossip-node kv get NODE [KEY] | set KEY VALUE | del KEY
//! gossip-node join ADDR...                     ask the local agent to join a cluster through ADDR
//! gossip-node leave                            ask the local agent to leave and exit
//! gossip-node certs init-ca --cluster NAME --dir DIR
//! gossip-node certs issue --ca-dir DIR --name NODE --out DIR
//! ```
//!
//! Configuration precedence for `agent`: flags, then environment variables
//! (`GOSSIP_*`), then the TOML file, then defaults.

#![allow(
    clippy::print_stdout,
    reason = "a command-line tool: stdout is its output"
)]

mod admin;
mod certs;
mod client;
mod config;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use gossip_node::{Node, NodeConfig, NodeEvent, Seed};
use gossip_transport_quic::{NodeCredentials, TrustBundle};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::client::Target;
use crate::config::{AgentConfig, FileConfig, Overrides};

/// Cluster membership, failure detection and state dissemination by gossip,
/// authenticated end to end over QUIC.
#[derive(Debug, Parser)]
#[command(name = "gossip-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node. SIGINT or SIGTERM makes it leave the cluster, then exit.
    Agent {
        /// The TOML configuration file (see examples/agent.toml).
        #[arg(long, short, env = "GOSSIP_CONFIG", hide_env_values = true)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Box<Overrides>,
    },
    /// Lists the members the local agent knows, like `serf members`.
    Members {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The token ring the local agent sees: each member's ring status
    /// (joining, normal, leaving, moved), load, tokens and share, from the
    /// ring state members publish in their `ring` key.
    Ring {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The local agent's summary.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reads and writes keys.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Asks the local agent to join a cluster through these members'
    /// gossip addresses, like `serf join`; waits up to 10 s for an answer.
    Join {
        /// Members of the cluster to join: ip:port, host:port or srv:NAME.
        #[arg(required = true)]
        seeds: Vec<Seed>,
        #[command(flatten)]
        target: Target,
    },
    /// Asks the local agent to leave the cluster and exit.
    Leave {
        #[command(flatten)]
        target: Target,
    },
    /// Asks the local agent to read its CA certificate and revoked ids
    /// again (as SIGHUP does): revoked nodes are cut off at once.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Makes a cluster CA and node certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// A node's key, or all its keys (NODE: a name or an id prefix).
    Get {
        node: String,
        key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sets one of the local node's keys.
    Set { key: String, value: String },
    /// Deletes one of the local node's keys.
    Del { key: String },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Makes a cluster CA: ca.crt (for every node) and ca.key (keep it safe).
    InitCa {
        /// The cluster's name.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Where to write them.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issues a node certificate: NAME.crt and NAME.key.
    Issue {
        /// The folder holding ca.crt and ca.key.
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// The node's name.
        #[arg(long)]
        name: String,
        /// Where to write them.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent { config, overrides } => run_agent(config, *overrides),
        Command::Members { target, json } => client::members(&target, json),
        Command::Status { target, json } => client::status(&target, json),
        Command::Ring { target, json } => client::ring(&target, json),
        Command::Kv { command, target } => match command {
            KvCommand::Get { node, key, json } => {
                client::kv_get(&target, &node, key.as_deref(), json)
            }
            KvCommand::Set { key, value } => client::kv_set(&target, &key, &value),
            KvCommand::Del { key } => client::kv_del(&target, &key),
        },
        Command::Join { seeds, target } => client::join(&target, &seeds),
        Command::Leave { target } => client::leave(&target),
        Command::Reload { target } => client::reload(&target),
        Command::Certs { command } => match command {
            CertsCommand::InitCa {
                cluster,
                dir,
                force,
            } => certs::init_ca(&cluster, &dir, force),
            CertsCommand::Issue {
                ca_dir,
                name,
                out,
                days,
            } => certs::issue(&ca_dir, &name, &out, days),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool, filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).with_context(|| {
        format!("bad log filter `{filter}`: try info, debug or gossip_node=debug")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn run_agent(config_path: Option<PathBuf>, overrides: Overrides) -> Result<()> {
    let (file, base) = match &config_path {
        Some(path) => (
            FileConfig::load(path)?,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (FileConfig::default(), PathBuf::from(".")),
    };
    let config = AgentConfig::resolve(file, &base, overrides)?;
    init_logging(config.json_logs, &config.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(agent(config))
}

/// Loads the certificates, with errors that name the fix.
fn credentials(config: &AgentConfig) -> Result<(TrustBundle, Option<NodeCredentials>)> {
    let trust = load_trust(&config.ca, config.revoked.as_deref())?;
    let credentials = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => {
            let credentials = NodeCredentials::load(cert, key).with_context(|| {
                format!(
                    "cannot load the node certificate {} and key {} (issue them with `gossip-node certs issue`)",
                    cert.display(),
                    key.display()
                )
            })?;
            if let Err(err) = trust.verify(&credentials) {
                bail!(
                    "the certificate {} is not trusted by the CA in {} ({err}): it was issued by another cluster's CA, or has expired; issue one from this cluster's CA with `gossip-node certs issue`",
                    cert.display(),
                    config.ca.display()
                );
            }
            Some(credentials)
        }
        (None, None) => None,
        _ => bail!("set both `tls.cert` and `tls.key`, or neither (to use those in `data_dir`)"),
    };
    Ok((trust, credentials))
}

/// The CA certificates in `ca` and, if a list is set, the ids revoked in
/// `revoked`.
pub(crate) fn load_trust(ca: &Path, revoked: Option<&Path>) -> Result<TrustBundle> {
    let trust = TrustBundle::load(ca).with_context(|| {
        format!(
            "cannot load the CA certificate {} (make one with `gossip-node certs init-ca`)",
            ca.display()
        )
    })?;
    let Some(path) = revoked else {
        return Ok(trust);
    };
    let ids = gossip_transport_quic::load_revoked(path).with_context(|| {
        format!(
            "cannot read the revoked ids in {} (one full hex node id per line, as `gossip-node members --json` shows them)",
            path.display()
        )
    })?;
    Ok(trust.with_revoked(ids))
}

/// Where the trust bundle is read from, again on SIGHUP or `POST /v1/reload`.
#[derive(Debug, Clone)]
pub(crate) struct TrustFiles {
    pub(crate) ca: PathBuf,
    pub(crate) revoked: Option<PathBuf>,
}

impl TrustFiles {
    /// Reads the files again and hands the node the bundle; returns how
    /// many ids it revokes. On error the node keeps the bundle it had.
    pub(crate) async fn reload(&self, node: &Node) -> Result<usize> {
        let trust = load_trust(&self.ca, self.revoked.as_deref())?;
        let revoked = trust.revoked().len();
        node.reload_trust(trust)
            .await
            .context("the node refused the reloaded trust bundle")?;
        info!(revoked, ca = %self.ca.display(), "reloaded the trust bundle");
        Ok(revoked)
    }
}

async fn agent(config: AgentConfig) -> Result<()> {
    let (trust, credentials) = credentials(&config)?;
    if config.advertise.is_none() && config.bind.ip().is_unspecified() {
        bail!(
            "`bind` is {} and no `advertise` address is set: peers cannot reach an unspecified address; set `advertise` (or GOSSIP_ADVERTISE) to this host's address on the cluster network",
            config.bind
        );
    }
    if let Some(advertise) = config.advertise
        && std::net::UdpSocket::bind(SocketAddr::new(advertise.ip(), 0)).is_err()
    {
        warn!(
            %advertise,
            "the advertise address is not an address of this host: fine behind NAT or a port mapping that forwards it here, otherwise peers will not reach this node; check `advertise`"
        );
    }
    let mut node_config = NodeConfig::new(&config.cluster, &config.name, config.bind, trust);
    node_config.advertise = config.advertise;
    node_config.seeds = config.seeds.clone();
    node_config.credentials = credentials;
    node_config.preset = config.preset;
    node_config.expected_members = config.expected_members;
    config.tuning.apply(&mut node_config)?;
    node_config.data_dir = config.data_dir.clone();
    node_config.initial_keys = config
        .keys
        .iter()
        .map(|(key, value)| (key.as_str().into(), value.clone().into()))
        .collect();
    let (node, _events) = Node::start(node_config).await.map_err(|err| match err {
        gossip_node::Error::Transport(gossip_transport_quic::Error::Bind { addr, source }) => {
            anyhow::anyhow!(
                "cannot listen on {addr}: {source}; is another agent running there? choose another `bind` (or GOSSIP_BIND)"
            )
        }
        other => anyhow::Error::new(other),
    })?;
    info!(id = %node.id(), addr = %node.addr(), cluster = %config.cluster, "node started");

    let leave = Arc::new(Notify::new());
    let trust_files = TrustFiles {
        ca: config.ca.clone(),
        revoked: config.revoked.clone(),
    };
    let admin = Arc::new(admin::Admin {
        node: node.clone(),
        cluster: config.cluster.clone(),
        started: tokio::time::Instant::now(),
        leave: leave.clone(),
        token: config.admin_token.clone(),
        trust_files: trust_files.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the admin API on {}; is another agent running? choose another `admin.bind` (or GOSSIP_ADMIN)",
                config.admin
            )
        })?;
    info!(admin = %config.admin, "admin API listening");
    let router = admin::router(admin);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            warn!(error = %err, "admin API stopped");
        }
    });
    tokio::spawn(watch_seeds(node.clone(), config.seeds.clone()));
    let refused = refused_to_start(node.clone());

    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::pin!(refused);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                info!("SIGINT: leaving the cluster");
                break;
            }
            _ = terminate.recv() => {
                info!("SIGTERM: leaving the cluster");
                break;
            }
            () = leave.notified() => {
                info!("asked to leave: leaving the cluster");
                break;
            }
            _ = hangup.recv() => {
                if let Err(err) = trust_files.reload(&node).await {
                    error!(error = %format!("{err:#}"), "SIGHUP: the trust bundle was not reloaded; the one in force stays");
                }
            }
            err = &mut refused => return Err(err),
        }
    }
    match node.leave(Duration::from_secs(15)).await {
        Ok(()) => info!("left the cluster"),
        Err(err) => warn!(error = %err, "leave did not complete; stopped anyway"),
    }
    Ok(())
}

/// The error, if the node stopped rather than run as a second instance of
/// its identity; pending otherwise.
async fn refused_to_start(node: Node) -> anyhow::Error {
    match node.joined().await {
        Err(err @ gossip_node::Error::IdentityInUse { .. }) => anyhow::Error::new(err),
        _ => std::future::pending().await,
    }
}

/// Warns, naming the fix, while no seed has answered.
async fn watch_seeds(node: Node, seeds: Vec<Seed>) {
    if seeds.is_empty() {
        return;
    }
    let mut events = node.subscribe();
    let joined = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(event) = events.recv().await {
            if matches!(event, NodeEvent::Joined(_)) {
                return;
            }
        }
    })
    .await;
    if joined.is_err() {
        let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
        warn!(
            seeds = %seeds.join(","),
            "no seed has answered in 10 s: check that an agent runs at each seed address, that UDP is open between the hosts, and that its certificate comes from the same CA; still trying"
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn agent_help_names_each_environment_variable_once() {
        let mut cli = Cli::command();
        let agent = cli.find_subcommand_mut("agent").expect("an agent command");
        let help = agent.render_help().to_string();
        let named: Vec<&str> = help
            .split("[env: ")
            .skip(1)
            .filter_map(|rest| rest.split(']').next())
            .collect();
        assert!(named.len() >= 10, "{help}");
        for var in &named {
            assert!(
                var.starts_with("GOSSIP_") && !var.contains('='),
                "{var} in {help}"
            );
            let mention = format!("{var}]");
            assert_eq!(
                help.matches(&mention).count(),
                1,
                "{var} named twice in {help}"
            );
        }
    }
}
