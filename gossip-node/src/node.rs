//! The handle users hold.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{GossipRng, Incarnation, Key, Member, MemberMeta, NodeId, Timestamp};
use gossip_member::{Replica, StoredKeys};
use gossip_swim::Swim;
use gossip_transport_quic::{Transport, TransportConfig};
use rand::SeedableRng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::data_dir::DataDir;
use crate::driver::{Command, Driver, Parts};
use crate::error::Error;
use crate::event::NodeEvent;
use crate::metrics::Metrics;

/// Largest SWIM frame sent as a datagram. QUIC's datagrams on a path that
/// has not discovered a larger MTU hold a little over 1,150 bytes; a frame
/// that is larger anyway goes on a stream.
const SWIM_DATAGRAM_BYTES: usize = 1100;

/// A running member of a cluster. Cloning the handle is cheap; the node runs
/// until [`shutdown`](Node::shutdown), [`leave`](Node::leave), or until every
/// handle is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use gossip_node::{Node, NodeConfig, NodeEvent};
/// use gossip_transport_quic::{ClusterCa, Validity};
///
/// let ca = ClusterCa::generate("demo")?;
/// let mut config = NodeConfig::new("demo", "node-1", "127.0.0.1:7946".parse()?, ca.trust());
/// config.credentials = Some(ca.issue("node-1", Validity::for_duration(std::time::Duration::from_secs(86_400)))?);
/// config.seeds = vec!["127.0.0.1:7947".parse()?];
/// let node = Node::start(config).await?;
/// node.set("role", "cache").await?;
/// let mut events = node.subscribe();
/// while let Ok(event) = events.recv().await {
///     if let NodeEvent::Failed { member, provenance } = event {
///         println!("{} failed, declared by {}", member.meta.name(), provenance.declared_by);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Node {
    id: NodeId,
    addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    #[cfg(feature = "fault-injection")]
    transport: Transport,
    task: std::sync::Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    #[cfg(feature = "fault-injection")]
    faults: gossip_transport_quic::FaultHandle,
}

impl Node {
    /// Starts a node: binds the transport, restores identity and
    /// incarnation from the data directory, and joins through the seeds
    /// (retrying with backoff until one answers). Returns once the node is
    /// listening; joining goes on in the background ([`NodeEvent::Joined`]
    /// reports each member found).
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::UnspecifiedAdvertise`], [`Error::Config`],
    /// [`Error::NoCredentials`], [`Error::IdentityMismatch`],
    /// [`Error::DataDir`], and [`Error::Transport`] (for example the port is
    /// in use).
    ///
    /// # Cancel safety
    ///
    /// Cancelling before it returns leaves nothing running.
    pub async fn start(config: NodeConfig) -> Result<Node, Error> {
        Self::start_subscribed(config).await.map(|(node, _)| node)
    }

    /// As [`start`](Node::start), with a subscription made before the node
    /// runs, so it sees every event from the first: a subscription made
    /// after `start` returns may miss the first members found.
    ///
    /// # Errors
    ///
    /// As [`start`](Node::start).
    ///
    /// # Cancel safety
    ///
    /// As [`start`](Node::start).
    pub async fn start_subscribed(
        config: NodeConfig,
    ) -> Result<(Node, broadcast::Receiver<NodeEvent>), Error> {
        if config.name.is_empty() {
            return Err(Error::Config(
                "`name` is empty; give the node a name".into(),
            ));
        }
        if config.suspicion_mult == Some(0) {
            return Err(Error::Config(
                "`suspicion_mult` is 0, which would declare every suspect dead at once; use 1 or more (the presets use 3 or 4)".into(),
            ));
        }
        let data_dir = config.data_dir.clone().map(DataDir::open).transpose()?;
        let credentials = match &data_dir {
            Some(dir) => dir.credentials(config.credentials.clone())?,
            None => config.credentials.clone().ok_or(Error::NoCredentials)?,
        };
        let incarnation = match &data_dir {
            Some(dir) => match dir.last_incarnation()? {
                // One more than the earlier life reached, so this life's
                // record wins over anything peers remember of it.
                Some(last) => last.next()?,
                None => Incarnation::ZERO,
            },
            None => Incarnation::ZERO,
        };
        if let Some(dir) = &data_dir {
            dir.store_incarnation(incarnation)?;
        }

        let transport_config = TransportConfig::new(config.bind);
        #[cfg(feature = "fault-injection")]
        let (transport, inbox, faults) = {
            let (socket, faults) = gossip_transport_quic::FaultySocket::bind(
                config.bind,
                gossip_transport_quic::FaultConfig::new(0),
            )
            .map_err(|source| gossip_transport_quic::Error::Bind {
                addr: config.bind,
                source,
            })?;
            let (transport, inbox) =
                Transport::bind_with_socket(transport_config, &credentials, &config.trust, socket)?;
            (transport, inbox, faults)
        };
        #[cfg(not(feature = "fault-injection"))]
        let (transport, inbox) = Transport::bind(transport_config, &credentials, &config.trust)?;

        let bound =
            transport
                .local_addr()
                .map_err(|source| gossip_transport_quic::Error::Bind {
                    addr: config.bind,
                    source,
                })?;
        let advertise = config.advertise.unwrap_or(bound);
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(Error::UnspecifiedAdvertise(advertise));
        }

        let id = credentials.node_id();
        let epoch = Instant::now();
        let now = Timestamp::ZERO;
        let seed = config.rng_seed.unwrap_or_else(|| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&id.as_bytes()[..8]);
            u64::from_le_bytes(word) ^ wall_clock_nanos()
        });
        let mut swim_config = config.swim_config();
        swim_config.rng_seed = seed;
        let meta = MemberMeta::new(&config.name, [advertise]);
        let mut swim = Swim::new(swim_config, id, meta, incarnation, now);
        swim.set_max_datagram_bytes(SWIM_DATAGRAM_BYTES);
        let seeds: Vec<SocketAddr> = config
            .seeds
            .iter()
            .copied()
            .filter(|seed| *seed != advertise && *seed != bound)
            .collect();
        if !seeds.is_empty() {
            swim.join(now, seeds);
        }
        let stored = match &data_dir {
            Some(dir) => dir.last_keys()?.unwrap_or_default(),
            None => StoredKeys::default(),
        };
        let mut replica_config = config.replica_config();
        replica_config.rng_seed = seed.rotate_left(17);
        let replica = Replica::new(replica_config, swim, stored, now)?;

        let (commands_tx, commands) = mpsc::channel(256);
        let (events, first_subscriber) = broadcast::channel(config.event_buffer.max(16));
        let driver = Driver::new(Parts {
            replica,
            transport: transport.clone(),
            inbox,
            commands,
            events: events.clone(),
            epoch,
            rng: GossipRng::seed_from_u64(seed.rotate_left(29)),
            data_dir,
            persisted_incarnation: incarnation.get(),
        });
        let span = tracing::info_span!("node", id = %id);
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        let node = Node {
            id,
            addr: advertise,
            commands: commands_tx,
            events,
            #[cfg(feature = "fault-injection")]
            transport,
            task: std::sync::Arc::new(std::sync::Mutex::new(Some(task))),
            #[cfg(feature = "fault-injection")]
            faults,
        };
        Ok((node, first_subscriber))
    }

    /// This node's id (the hash of its certificate's public key).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address this node advertises to others.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A stream of cluster events from now on (to see them from the very
    /// start, use [`start_subscribed`](Node::start_subscribed)). A subscriber that falls more
    /// than `event_buffer` events behind misses the oldest and is told how
    /// many (`RecvError::Lagged`); [`members`](Node::members) then gives the
    /// current picture.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// Every member this node knows of, itself included, with its status.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the node has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        self.ask(Command::Members).await
    }

    /// Sets one of this node's own keys; it reaches every member by gossip
    /// and anti-entropy. Returns the node's new state version.
    ///
    /// # Errors
    ///
    /// [`Error::Refused`] for a key or value over its cap or too many keys;
    /// [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled call may or may not have written.
    pub async fn set(&self, key: impl Into<Key>, value: impl Into<Bytes>) -> Result<u64, Error> {
        let (key, value) = (key.into(), value.into());
        self.ask(|reply| Command::Set { key, value, reply }).await?
    }

    /// Deletes one of this node's own keys. Returns the new state version,
    /// or `None` if there was no such key.
    ///
    /// # Errors
    ///
    /// As [`set`](Node::set).
    ///
    /// # Cancel safety
    ///
    /// As [`set`](Node::set).
    pub async fn delete(&self, key: &str) -> Result<Option<u64>, Error> {
        let key = key.to_string();
        self.ask(|reply| Command::Delete { key, reply }).await?
    }

    /// A key of any node, as this node's replica holds it now.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn get(&self, owner: NodeId, key: &str) -> Result<Option<Bytes>, Error> {
        let key = key.to_string();
        self.ask(|reply| Command::Get { owner, key, reply }).await
    }

    /// Every live key of a node, as this node's replica holds them now.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn keys(&self, owner: NodeId) -> Result<Vec<(Key, Bytes)>, Error> {
        self.ask(|reply| Command::Keys { owner, reply }).await
    }

    /// A snapshot of the node's metrics (see [`crate::metrics`] for names).
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn metrics(&self) -> Result<Metrics, Error> {
        self.ask(Command::Metrics).await
    }

    /// Leaves the cluster gracefully: announces the departure, keeps
    /// answering until the announcement has spread (or the protocol's leave
    /// timeout), then stops. Peers see this node as left, not failed. If
    /// that takes longer than `timeout`, the node stops anyway.
    ///
    /// # Errors
    ///
    /// [`Error::LeaveTimedOut`] (the node has stopped all the same);
    /// [`Error::Stopped`] if it had stopped already.
    ///
    /// # Cancel safety
    ///
    /// Cancelling after the leave has begun does not stop it: the node still
    /// leaves and stops.
    pub async fn leave(&self, timeout: Duration) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Leave(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(timeout, done).await {
            Ok(_) => {
                self.join_task().await;
                Ok(())
            }
            Err(_) => {
                self.shutdown().await;
                Err(Error::LeaveTimedOut)
            }
        }
    }

    /// Stops the node without announcing a departure (peers will detect it
    /// as failed unless it restarts first), and waits until it has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the node stops whether or not the call is awaited to the end.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        self.join_task().await;
    }

    async fn join_task(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Crashes the node, for tests and benchmarks: from this moment it
    /// sends nothing at all (no goodbye, not even QUIC's), and it stops.
    #[cfg(feature = "fault-injection")]
    pub fn crash(&self) {
        let mut silent = gossip_transport_quic::FaultConfig::new(0);
        silent.loss = 1.0;
        self.faults.set(silent);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        // Release the port; the close frames are dropped like everything else.
        let transport = self.transport.clone();
        tokio::spawn(async move { transport.close().await });
    }
}

/// Nanoseconds of the wall clock, to vary the default PRNG seed between runs.
#[allow(
    clippy::disallowed_methods,
    reason = "IO crate: the default seed varies between runs on purpose"
)]
fn wall_clock_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
