//! The handle users hold.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{GossipRng, Incarnation, Key, Member, MemberMeta, NodeId, Timestamp};
use gossip_member::{Replica, StoredKeys};
use gossip_swim::Swim;
use gossip_transport_quic::{NodeCredentials, Transport, TransportConfig, TrustBundle};
use rand::SeedableRng;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::data_dir::DataDir;
use crate::driver::{Command, Driver, JoinState, Parts, apply_revocations, snapshot};
use crate::error::Error;
use crate::event::{NodeEvent, NodeEvents};
use crate::metrics::Metrics;
use crate::seeds::{self, Seed};
use gossip_core::{RingState, RingView};

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
/// let (node, mut events) = Node::start(config).await?;
/// node.set("role", "cache").await?;
/// node.joined().await?;
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
    /// The membership, as the driver last published it.
    members: Arc<RwLock<Arc<[Member]>>>,
    /// Where the node's latest join stands.
    joined: watch::Sender<JoinState>,
    #[cfg(feature = "fault-injection")]
    transport: Transport,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    /// The configuration's risks, from [`NodeConfig::warnings`].
    warnings: Arc<[String]>,
    #[cfg(feature = "fault-injection")]
    faults: gossip_transport_quic::FaultHandle,
}

impl Node {
    /// Starts a node: checks the configuration, restores identity,
    /// incarnation and keys from the data directory, binds the transport,
    /// and joins through the seeds (retrying with backoff until one
    /// answers). Returns the node and its event stream, subscribed before
    /// the node ran, so it holds every event from the first. Returns once
    /// the node is listening; [`joined`](Node::joined) waits for the join.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::UnspecifiedAdvertise`], [`Error::Config`],
    /// [`Error::NoCredentials`], [`Error::IdentityMismatch`],
    /// [`Error::DataDir`], [`Error::StoredState`], [`Error::Refused`] (an
    /// initial key over a cap), and [`Error::Transport`] (for example the
    /// port is in use).
    ///
    /// # Cancel safety
    ///
    /// Cancelling before it returns leaves nothing running.
    pub async fn start(config: NodeConfig) -> Result<(Node, NodeEvents), Error> {
        config.validate()?;
        let data_dir = config.data_dir.clone().map(DataDir::open).transpose()?;
        let identity = Identity::restore(&config, data_dir.as_ref())?;
        let bound = bind_transport(&config, &identity.credentials)?;
        let advertise = config.advertise.unwrap_or(bound.addr);
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(Error::UnspecifiedAdvertise(advertise));
        }
        let id = identity.credentials.node_id();
        let rng_seed = config.rng_seed.unwrap_or_else(|| default_rng_seed(&id));
        let now = Timestamp::ZERO;
        let mut replica = build_replica(&config, &identity, advertise, rng_seed, now)?;
        apply_revocations(&mut replica, now, config.trust.revoked());
        let own_addrs = [advertise, bound.addr];
        // A node whose seeds are names waits for one to answer, even if
        // none resolves yet; one given only its own address founds the
        // cluster.
        let join_through = seeds::join_addresses(&config.seeds, &own_addrs).await;
        let joined = watch::Sender::new(if join_through.is_some() {
            JoinState::Joining
        } else {
            JoinState::Joined
        });
        if let Some(addrs) = join_through {
            replica.join(now, addrs);
        }
        let seed_list = watch::Sender::new(config.seeds.clone());
        let members = Arc::new(RwLock::new(snapshot(&replica)));

        let (commands_tx, commands) = mpsc::channel(256);
        let (events, first_subscriber) = broadcast::channel(config.event_buffer.max(16));
        let driver = Driver::new(Parts {
            replica,
            transport: bound.transport.clone(),
            credentials: identity.credentials.clone(),
            inbox: bound.inbox,
            commands,
            events: events.clone(),
            members: members.clone(),
            joined: joined.clone(),
            epoch: Instant::now(),
            rng: GossipRng::seed_from_u64(rng_seed.rotate_left(29)),
            data_dir,
            persisted_incarnation: identity.incarnation.get(),
            seeds: seed_list.clone(),
            own_addrs,
            connect_ahead: config.connect_ahead,
        });
        tokio::spawn(seeds::keep_resolving(
            seed_list.subscribe(),
            joined.subscribe(),
            commands_tx.downgrade(),
        ));
        let warnings: Arc<[String]> = config.warnings().into();
        let span = tracing::info_span!("node", id = %id);
        for warning in warnings.iter() {
            span.in_scope(|| tracing::warn!("{warning}"));
        }
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        let node = Node {
            id,
            addr: advertise,
            commands: commands_tx,
            events,
            members,
            joined,
            #[cfg(feature = "fault-injection")]
            transport: bound.transport,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
            warnings,
            #[cfg(feature = "fault-injection")]
            faults: bound.faults,
        };
        Ok((node, first_subscriber))
    }

    /// This node's id (the hash of its certificate's public key).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The risks of the configuration the node was started with, each a
    /// sentence naming the fix ([`NodeConfig::warnings`]); logged at start.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The address this node advertises to others.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A stream of cluster events from now on (the stream [`start`](Node::start)
    /// returns holds them from the very start). A subscriber that falls more
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

    /// Every member this node knows of, itself included, with its status:
    /// a snapshot the node republishes after every change, read without
    /// waiting on the node (cheap enough to call on every lookup). After
    /// the node stops, the last snapshot.
    pub fn members(&self) -> Arc<[Member]> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Joins the cluster through `seeds` (more of them, or again after
    /// being cut off): asks each for its membership and keeps asking, with
    /// backoff, until one answers. Names among the seeds are resolved now
    /// and again later, and these seeds replace the configured ones. Returns
    /// once the join has begun; [`joined`](Node::joined) waits for it to
    /// complete.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `seeds` names no address but this node's own
    /// and no name resolves; [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call has started the join or not.
    pub async fn join(&self, seeds: Vec<Seed>) -> Result<(), Error> {
        let Some(addrs) = seeds::join_addresses(&seeds, &[self.addr]).await else {
            return Err(Error::Config(
                "no seed to join through: give the address of another member".into(),
            ));
        };
        self.joined.send_replace(JoinState::Joining);
        self.ask(|reply| Command::Join {
            seeds,
            addrs,
            reply,
        })
        .await
    }

    /// Waits until the node's latest join has completed: a seed answered
    /// with its membership ([`NodeEvent::JoinCompleted`]). A node started
    /// without seeds founds its cluster and counts as joined at once.
    ///
    /// # Errors
    ///
    /// [`Error::IdentityInUse`] if another process answered as this node
    /// while it joined (the node has stopped); [`Error::Stopped`] if the
    /// node stops first for another reason.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub async fn joined(&self) -> Result<(), Error> {
        let mut joined = self.joined.subscribe();
        let state = joined
            .wait_for(|state| *state != JoinState::Joining)
            .await
            .map(|state| *state);
        match state {
            Ok(JoinState::Joined) => Ok(()),
            Ok(JoinState::IdentityInUse(addr)) => Err(Error::IdentityInUse { id: self.id, addr }),
            Ok(JoinState::Joining) | Err(_) => Err(Error::Stopped),
        }
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

    /// Publishes this node's place in the token ring (status, load, tokens)
    /// under [`RING_KEY`](gossip_core::RING_KEY), where every member's
    /// [`ring`](Node::ring) reads it. Returns the node's new state version.
    ///
    /// # Errors
    ///
    /// As [`set`](Node::set).
    ///
    /// # Cancel safety
    ///
    /// As [`set`](Node::set).
    pub async fn set_ring_state(&self, state: &RingState) -> Result<u64, Error> {
        self.set(gossip_core::RING_KEY, state.to_string()).await
    }

    /// The token ring as this node sees it now: the tokens of every member
    /// it holds alive or suspect whose ring state owns ranges (see
    /// [`RingView`]). It follows joins, leaves and deaths as the membership
    /// does.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn ring(&self) -> Result<RingView, Error> {
        self.ask(|reply| Command::Ring { reply }).await
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

    /// Replaces the trust bundle (the cluster's CA certificates and the
    /// revoked ids) without a restart. Revoked nodes lose their
    /// connections, their handshakes are refused both ways, their records
    /// and writes are dropped, and no claim by or about them is taken or
    /// passed on; ids no longer revoked are taken again.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] if the bundle is unusable (the old one stays in
    /// force); [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the reload happens whole or not at all.
    pub async fn reload_trust(&self, trust: TrustBundle) -> Result<(), Error> {
        self.ask(|reply| Command::ReloadTrust { trust, reply })
            .await?
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
    /// Returns once the node's task is gone, so its data directory is free
    /// for a restart. Its port stays bound while this handle lives, and
    /// whatever reaches it is dropped: to its peers this is a lost host,
    /// which answers nothing at all. [`kill`](Node::kill) closes the port
    /// as well, as a killed process leaves it.
    #[cfg(feature = "fault-injection")]
    pub async fn crash(&self) {
        let mut silent = gossip_transport_quic::FaultConfig::new(0);
        silent.loss = 1.0;
        self.faults.set(silent);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        // Release the port; the close frames are dropped like everything else.
        let transport = self.transport.clone();
        tokio::spawn(async move { transport.close().await });
    }

    /// Kills the node, for tests and benchmarks, as `kill -9` kills a
    /// process: it stops without a word, like [`crash`](Node::crash), and
    /// its port closes, so its host answers datagrams sent there with ICMP
    /// port unreachable. Returns once the port is free, or after 5 s if a
    /// clone of this handle still holds it.
    #[cfg(feature = "fault-injection")]
    pub async fn kill(self) {
        self.crash().await;
        let addr = self.addr;
        drop(self);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if std::net::UdpSocket::bind(addr).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!(%addr, "the killed node's port is still bound after 5 s");
    }
}

/// Who the node is and where its earlier life left off.
struct Identity {
    credentials: NodeCredentials,
    incarnation: Incarnation,
    stored: StoredKeys,
}

impl Identity {
    /// The credentials (configured, or kept in the data directory), the
    /// incarnation to start at (one past the earlier life's, which is stored
    /// at once) and the keys the earlier life kept.
    fn restore(config: &NodeConfig, data_dir: Option<&DataDir>) -> Result<Identity, Error> {
        let Some(dir) = data_dir else {
            return Ok(Identity {
                credentials: config.credentials.clone().ok_or(Error::NoCredentials)?,
                incarnation: Incarnation::ZERO,
                stored: StoredKeys::default(),
            });
        };
        let credentials = dir.credentials(config.credentials.clone())?;
        // One more than the earlier life reached, so this life's record
        // wins over anything peers remember of it.
        let incarnation = match dir.last_incarnation()? {
            Some(last) => last.next().map_err(|source| Error::StoredState {
                path: dir.path().to_path_buf(),
                source,
            })?,
            None => Incarnation::ZERO,
        };
        dir.store_incarnation(incarnation)?;
        let stored = dir.last_keys()?.unwrap_or_default();
        Ok(Identity {
            credentials,
            incarnation,
            stored,
        })
    }
}

/// The bound transport, and the address it listens on.
struct Bound {
    transport: Transport,
    inbox: gossip_transport_quic::Inbox,
    addr: SocketAddr,
    #[cfg(feature = "fault-injection")]
    faults: gossip_transport_quic::FaultHandle,
}

/// Binds the transport at `config.bind` (over the fault-injecting socket
/// with the `fault-injection` feature, so tests can silence the node).
fn bind_transport(config: &NodeConfig, credentials: &NodeCredentials) -> Result<Bound, Error> {
    let mut transport_config = TransportConfig::new(config.bind);
    transport_config.initial_rtt = config.preset.initial_rtt();
    let bind_error = |source| gossip_transport_quic::Error::Bind {
        addr: config.bind,
        source,
    };
    #[cfg(feature = "fault-injection")]
    let (transport, inbox, faults) = Transport::bind_with_faults(
        transport_config,
        credentials,
        &config.trust,
        config.faults.clone(),
    )?;
    #[cfg(not(feature = "fault-injection"))]
    let (transport, inbox) = Transport::bind(transport_config, credentials, &config.trust)?;
    let addr = transport.local_addr().map_err(bind_error)?;
    Ok(Bound {
        transport,
        inbox,
        addr,
        #[cfg(feature = "fault-injection")]
        faults,
    })
}

/// The node's sans-IO member: SWIM and the sync, with the keys kept from
/// the earlier life and then the configured initial keys, so that the
/// first announcement carries them all.
fn build_replica(
    config: &NodeConfig,
    identity: &Identity,
    advertise: SocketAddr,
    rng_seed: u64,
    now: Timestamp,
) -> Result<Replica, Error> {
    let key = identity.credentials.node_key().clone();
    let mut swim_config = config.swim_config();
    swim_config.rng_seed = rng_seed;
    let meta = MemberMeta::new(&config.name, [advertise]);
    let mut swim = Swim::new(swim_config, key, meta, identity.incarnation, now);
    swim.set_max_datagram_bytes(SWIM_DATAGRAM_BYTES);
    let mut replica_config = config.replica_config();
    replica_config.rng_seed = rng_seed.rotate_left(17);
    let path = || config.data_dir.clone().unwrap_or_default();
    let mut replica =
        Replica::new(replica_config, swim, identity.stored.clone(), now).map_err(|source| {
            Error::StoredState {
                path: path(),
                source,
            }
        })?;
    for (key, value) in &config.initial_keys {
        replica.set(now, key.clone(), value.clone())?;
    }
    Ok(replica)
}

/// A PRNG seed that differs between nodes and between runs.
fn default_rng_seed(id: &NodeId) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&id.as_bytes()[..8]);
    u64::from_le_bytes(word) ^ wall_clock_nanos()
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
