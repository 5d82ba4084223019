//! The endpoint: mutual-TLS QUIC connections, cached per peer, carrying
//! datagrams and framed streams tagged with the authenticated sender.

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use gossip_core::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AsyncUdpSocket, Connection, Endpoint, EndpointConfig, IdleTimeout, VarInt};
use rustc_hash::FxHashMap;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;

use crate::certs::{NodeCredentials, SERVER_NAME, TrustBundle, node_id_of, server_name_of};
use crate::error::Error;
use crate::framing::{FrameDecoder, frame_header};
use crate::inbox::{Inbox, InboxSender};
use crate::screen::{QUIC_VERSIONS, ScreenCounters, ScreeningSocket};

/// The ALPN protocol id: our protocol and its version.
pub const ALPN: &[u8] = b"gossip/1";

/// Settings of a [`Transport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Where to listen.
    pub bind: SocketAddr,
    /// A connection with no traffic for this long is closed (no keep-alive
    /// packets are sent while idle). Default 10 minutes: longer than SWIM
    /// takes to come back to any member of a few hundred.
    pub idle_timeout: Duration,
    /// Most live connections. Default 1,024; past it, new peers are refused.
    pub max_connections: usize,
    /// Most concurrent incoming streams per peer. Default 32.
    pub max_streams_per_peer: u32,
    /// Largest message on a stream. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Datagrams buffered per connection before the oldest are dropped.
    /// Default 1 MiB.
    pub datagram_buffer_bytes: usize,
    /// Received messages queued for the application. Default 8,192.
    pub receive_queue: usize,
    /// The UDP socket's kernel receive buffer, in bytes. Default 4 MiB: a
    /// seed that a hundred nodes dial at once receives their handshakes in
    /// one burst, and the kernel's usual 208 KiB overflows (each lost
    /// handshake packet then costs a 1 s retransmission timeout, then 2 s).
    /// The kernel caps it at `net.core.rmem_max`.
    pub socket_receive_buffer: usize,
}

impl TransportConfig {
    /// Defaults, listening on `bind`.
    pub fn new(bind: SocketAddr) -> Self {
        TransportConfig {
            bind,
            idle_timeout: Duration::from_secs(600),
            max_connections: 1024,
            max_streams_per_peer: 32,
            max_frame_bytes: 16 << 20,
            datagram_buffer_bytes: 1 << 20,
            receive_queue: 8192,
            socket_receive_buffer: 4 << 20,
        }
    }
}

/// How a message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An unreliable datagram.
    Datagram,
    /// A framed message on a stream.
    Stream,
}

/// A message from an authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender, as its certificate proves.
    pub from: NodeId,
    /// The sender's address.
    pub addr: SocketAddr,
    /// How it arrived.
    pub channel: Channel,
    /// The message.
    pub bytes: Bytes,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Handshakes completed, both directions.
    pub handshakes: u64,
    /// Outgoing handshakes that resumed an earlier TLS session.
    pub resumptions: u64,
    /// Incoming handshakes refused: untrusted or expired certificate, no
    /// certificate, wrong protocol, or over the connection cap.
    pub refused: u64,
    /// Outgoing dials that failed.
    pub dial_failures: u64,
    /// Connections open now.
    pub live_connections: u64,
    /// Datagrams sent and received.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Stream messages sent.
    pub messages_sent: u64,
    /// Stream messages received.
    pub messages_received: u64,
    /// Sends refused for size.
    pub oversize: u64,
    /// Incoming stream frames refused (over the cap, truncated).
    pub bad_frames: u64,
    /// Received UDP datagrams too short to be QUIC
    /// ([`RejectedDatagram::Malformed`](crate::RejectedDatagram::Malformed)).
    pub datagrams_malformed: u64,
    /// Received UDP datagrams naming a QUIC version not spoken here
    /// ([`RejectedDatagram::UnsupportedVersion`](crate::RejectedDatagram::UnsupportedVersion)).
    pub datagrams_unsupported_version: u64,
    /// Received UDP datagrams for a connection id this endpoint never issued
    /// ([`RejectedDatagram::UnknownConnectionId`](crate::RejectedDatagram::UnknownConnectionId)).
    pub datagrams_unknown_connection_id: u64,
    /// UDP datagrams sent on the connections cached now (QUIC's own
    /// packets included: acknowledgements, handshakes, retransmissions).
    /// A connection's count leaves the sum when it closes.
    pub udp_datagrams_sent: u64,
    /// UDP bytes sent on the connections cached now, QUIC overhead included.
    pub udp_bytes_sent: u64,
    /// UDP datagrams received on the connections cached now.
    pub udp_datagrams_received: u64,
    /// UDP bytes received on the connections cached now.
    pub udp_bytes_received: u64,
}

impl TransportStats {
    /// Received UDP datagrams that could be no QUIC packet for this
    /// endpoint, whatever the reason: the sum of the `datagrams_malformed`,
    /// `datagrams_unsupported_version` and `datagrams_unknown_connection_id`
    /// counters.
    pub fn datagrams_rejected(&self) -> u64 {
        self.datagrams_malformed
            + self.datagrams_unsupported_version
            + self.datagrams_unknown_connection_id
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    handshakes: AtomicU64,
    resumptions: AtomicU64,
    refused: AtomicU64,
    dial_failures: AtomicU64,
    // Bumped per datagram by the sending task and by the application's
    // reading task, so each has a cache line of its own.
    datagrams_sent: OwnCacheLine,
    pub(crate) datagrams_received: OwnCacheLine,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    oversize: AtomicU64,
    bad_frames: AtomicU64,
    screened: Arc<ScreenCounters>,
}

/// A counter on a cache line of its own, so that two cores bumping
/// neighbouring counters do not take the line from each other.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct OwnCacheLine(AtomicU64);

impl std::ops::Deref for OwnCacheLine {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A TLS session cache that counts the tickets it hands out for resumption.
#[derive(Debug)]
struct CountingSessions {
    inner: ClientSessionMemoryCache,
    counters: Arc<Counters>,
}

impl ClientSessionStore for CountingSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        if ticket.is_some() {
            bump(&self.counters.resumptions);
        }
        ticket
    }
}

struct Tls {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
}

/// The key behind QUIC stateless resets, derived from the node's private key
/// so that it survives a restart: a node that comes back can reset the
/// connections its earlier life left open at its peers, which then redial at
/// once instead of sending into the void until their idle timeout.
struct ResetKey([u8; 32]);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        for (out, byte) in signature_out.iter_mut().zip(mac.as_bytes()) {
            *out = *byte;
        }
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // blake3::Hash compares in constant time.
        let expected = blake3::keyed_hash(&self.0, data);
        let given = <[u8; 32]>::try_from(signature).map_err(|_| quinn::crypto::CryptoError)?;
        if expected == blake3::Hash::from_bytes(given) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

fn build_tls(
    config: &TransportConfig,
    credentials: &NodeCredentials,
    trust: &TrustBundle,
    sessions: Arc<CountingSessions>,
) -> Result<Tls, Error> {
    let tls_error = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(trust.root_store()?);

    let mut transport = quinn::TransportConfig::default();
    let idle = IdleTimeout::try_from(config.idle_timeout).map_err(|e| tls_error(&e))?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(None)
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(config.max_streams_per_peer))
        .datagram_receive_buffer_size(Some(config.datagram_buffer_bytes))
        .datagram_send_buffer_size(config.datagram_buffer_bytes);
    let transport = Arc::new(transport);

    // Client certificates are required and must chain to the trust bundle;
    // rustls refuses anything else inside the handshake, before we see it.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| tls_error(&e))?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(credentials.chain(), credentials.key())
        .map_err(|e| tls_error(&e))?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT off: replayable early data has no place in a membership protocol.
    server_tls.max_early_data_size = 0;
    let server_crypto = QuicServerConfig::try_from(server_tls).map_err(|e| tls_error(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());

    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(credentials.chain(), credentials.key())
        .map_err(|e| tls_error(&e))?;
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    client_tls.enable_early_data = false;
    client_tls.resumption = Resumption::store(sessions);
    let client_crypto = QuicClientConfig::try_from(client_tls).map_err(|e| tls_error(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok(Tls { server, client })
}

/// The quinn server and client configurations a [`Transport`] uses (mutual
/// TLS 1.3 against `trust`, ALPN [`ALPN`], 0-RTT off, no keep-alive), for
/// callers that drive quinn themselves, and for measuring this crate
/// against plain quinn.
///
/// # Errors
///
/// [`Error::Tls`] or [`Error::Certificate`] for unusable credentials.
pub fn quinn_configs(
    config: &TransportConfig,
    credentials: &NodeCredentials,
    trust: &TrustBundle,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), Error> {
    let sessions = Arc::new(CountingSessions {
        inner: ClientSessionMemoryCache::new(1024),
        counters: Arc::new(Counters::default()),
    });
    let tls = build_tls(config, credentials, trust, sessions)?;
    Ok((tls.server, tls.client))
}

struct Inner {
    endpoint: Endpoint,
    local_id: RwLock<NodeId>,
    config: TransportConfig,
    client: RwLock<quinn::ClientConfig>,
    // Node ids are uniformly random and authenticated: a fast hash is safe.
    connections: Mutex<FxHashMap<NodeId, Connection>>,
    dials: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    sessions: Arc<CountingSessions>,
    counters: Arc<Counters>,
    incoming: InboxSender,
}

/// An authenticated QUIC endpoint.
///
/// Every connection uses TLS 1.3 with mutual authentication against the
/// cluster's [`TrustBundle`]; the peer's [`NodeId`] is derived from the
/// certificate it presented and tags everything received from it.
/// Connections are dialled on demand, cached per peer, reused for datagrams
/// and streams, and resumed with TLS session tickets when re-dialled.
///
/// Cheap to clone; clones share the endpoint. When the last clone (and
/// the last [`Link`]) is dropped, the endpoint closes as
/// [`close`](Transport::close) closes it, without waiting for the peers to
/// be told; the [`Inbox`] then ends once it has handed out what arrived.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    /// Held by the application's handles only: the transport's own tasks
    /// hold `inner`, so without this a dropped transport would keep its
    /// socket, connections and tasks until the process ends.
    _open: Arc<CloseOnDrop>,
}

/// Closes the endpoint when dropped.
struct CloseOnDrop(Endpoint);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        close_endpoint(&self.0);
    }
}

/// Closes every connection with the code and reason peers see on a close
/// of ours, and stops accepting.
fn close_endpoint(endpoint: &Endpoint) {
    endpoint.close(VarInt::from_u32(0), b"closing");
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_id", &self.local_id())
            .field("local_addr", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds a UDP socket at `config.bind` and starts accepting connections.
    /// Returns the transport and the [`Inbox`] of messages received.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] if the address is taken; [`Error::Tls`] or
    /// [`Error::Certificate`] for unusable credentials.
    pub fn bind(
        config: TransportConfig,
        credentials: &NodeCredentials,
        trust: &TrustBundle,
    ) -> Result<(Transport, Inbox), Error> {
        let bind_error = |source| Error::Bind {
            addr: config.bind,
            source,
        };
        let socket = bind_udp(config.bind, config.socket_receive_buffer).map_err(bind_error)?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| Error::Tls("no async runtime".into()))?;
        let socket = runtime.wrap_udp_socket(socket).map_err(bind_error)?;
        Self::bind_with_socket(config, credentials, trust, socket)
    }

    /// As [`bind`](Transport::bind), over a socket of the caller's (for
    /// example a fault-injecting one).
    ///
    /// # Errors
    ///
    /// As [`bind`](Transport::bind).
    pub fn bind_with_socket(
        config: TransportConfig,
        credentials: &NodeCredentials,
        trust: &TrustBundle,
        socket: Arc<dyn AsyncUdpSocket>,
    ) -> Result<(Transport, Inbox), Error> {
        let counters = Arc::new(Counters::default());
        let sessions = Arc::new(CountingSessions {
            inner: ClientSessionMemoryCache::new(1024),
            counters: counters.clone(),
        });
        let tls = build_tls(&config, credentials, trust, sessions.clone())?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| Error::Tls("no async runtime".into()))?;
        let secret = credentials.key();
        let reset_key = ResetKey(blake3::derive_key(
            "gossip-transport-quic stateless reset key v1",
            secret.secret_der(),
        ));
        // Connection ids are validated by a keyed hash; the key, too, must
        // survive a restart, or the restarted node drops its earlier life's
        // packets as invalid instead of resetting those connections.
        let cid_key = blake3::derive_key(
            "gossip-transport-quic connection id key v1",
            secret.secret_der(),
        );
        let cid_key = u64::from_le_bytes(cid_key[..8].try_into().unwrap_or_default());
        let mut endpoint_config = EndpointConfig::new(Arc::new(reset_key));
        endpoint_config
            .cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            })
            .supported_versions(QUIC_VERSIONS.to_vec());
        let socket = Arc::new(ScreeningSocket::new(
            socket,
            cid_key,
            counters.screened.clone(),
        ));
        let endpoint =
            Endpoint::new_with_abstract_socket(endpoint_config, Some(tls.server), socket, runtime)
                .map_err(|source| Error::Bind {
                    addr: config.bind,
                    source,
                })?;
        let (tx, rx) = Inbox::new(config.receive_queue, counters.clone());
        let inner = Arc::new(Inner {
            endpoint,
            local_id: RwLock::new(credentials.node_id()),
            config,
            client: RwLock::new(tls.client),
            connections: Mutex::new(FxHashMap::default()),
            dials: Mutex::new(HashMap::new()),
            sessions,
            counters,
            incoming: tx,
        });
        tokio::spawn(accept_loop(inner.clone()));
        let open = Arc::new(CloseOnDrop(inner.endpoint.clone()));
        Ok((Transport { inner, _open: open }, rx))
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        *self
            .inner
            .local_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The address the endpoint listens on.
    ///
    /// # Errors
    ///
    /// If the socket cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let connections: Vec<Connection> = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut udp = (0, 0, 0, 0);
        for conn in connections {
            let stats = conn.stats();
            udp.0 += stats.udp_tx.datagrams;
            udp.1 += stats.udp_tx.bytes;
            udp.2 += stats.udp_rx.datagrams;
            udp.3 += stats.udp_rx.bytes;
        }
        TransportStats {
            udp_datagrams_sent: udp.0,
            udp_bytes_sent: udp.1,
            udp_datagrams_received: udp.2,
            udp_bytes_received: udp.3,
            handshakes: get(&c.handshakes),
            resumptions: get(&c.resumptions),
            refused: get(&c.refused),
            dial_failures: get(&c.dial_failures),
            live_connections: self.inner.endpoint.open_connections() as u64,
            datagrams_sent: get(&c.datagrams_sent),
            datagrams_received: get(&c.datagrams_received),
            messages_sent: get(&c.messages_sent),
            messages_received: get(&c.messages_received),
            oversize: get(&c.oversize),
            bad_frames: get(&c.bad_frames),
            datagrams_malformed: get(&c.screened.malformed),
            datagrams_unsupported_version: get(&c.screened.unsupported_version),
            datagrams_unknown_connection_id: get(&c.screened.unknown_connection_id),
        }
    }

    /// Replaces the credentials and trust bundle. Connections made from now
    /// on use the new ones; established connections stay as they are.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] or [`Error::Certificate`]; the old ones stay in force.
    pub fn reload(&self, credentials: &NodeCredentials, trust: &TrustBundle) -> Result<(), Error> {
        let tls = build_tls(
            &self.inner.config,
            credentials,
            trust,
            self.inner.sessions.clone(),
        )?;
        self.inner.endpoint.set_server_config(Some(tls.server));
        *self.inner.client.write().unwrap_or_else(|e| e.into_inner()) = tls.client;
        *self
            .inner
            .local_id
            .write()
            .unwrap_or_else(|e| e.into_inner()) = credentials.node_id();
        Ok(())
    }

    /// The largest datagram the connection to `peer` carries now, if one is open.
    pub fn max_datagram_size(&self, peer: &NodeId) -> Option<usize> {
        self.cached(peer)?.max_datagram_size()
    }

    /// A [`Link`] to the node `peer` at `addr`, dialling it if no connection
    /// is open: for many datagrams to one peer, without the connection
    /// lookup each [`send_datagram`](Transport::send_datagram) makes.
    ///
    /// # Errors
    ///
    /// As [`connect`](Transport::connect).
    pub async fn link(&self, peer: NodeId, addr: SocketAddr) -> Result<Link, Error> {
        let (_, conn) = self.connect(Some(peer), addr).await?;
        Ok(Link {
            transport: self.clone(),
            peer,
            addr,
            conn: Some(conn),
        })
    }

    /// The peers this endpoint holds a connection to now (some may have
    /// closed since; see [`connect`](Transport::connect)).
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// The cached connection to `peer`. A closed one is found out (and
    /// evicted) by the send that fails on it, which keeps this lookup off
    /// quinn's connection lock.
    fn cached(&self, peer: &NodeId) -> Option<Connection> {
        let connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        connections.get(peer).cloned()
    }

    /// A connection to the node at `addr`: the cached one, or a new dial.
    /// With `expected`, the peer must prove to be that node; without it (a
    /// seed whose id is not known yet) any trusted peer will do. Concurrent
    /// dials to one address share one handshake. The cached connection is
    /// returned without checking whether it has closed since (that check
    /// takes quinn's connection lock); the sends find a closed one out,
    /// evict it and dial again once.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] and [`Error::UnexpectedPeer`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling leaves no half-registered connection; a handshake already
    /// under way completes in the background and is cached.
    pub async fn connect(
        &self,
        expected: Option<NodeId>,
        addr: SocketAddr,
    ) -> Result<(NodeId, Connection), Error> {
        if let Some(peer) = expected
            && let Some(conn) = self.cached(&peer)
        {
            return Ok((peer, conn));
        }
        let lock = {
            let mut dials = self.inner.dials.lock().unwrap_or_else(|e| e.into_inner());
            dials.entry(addr).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(peer) = expected
            && let Some(conn) = self.cached(&peer)
            && conn.close_reason().is_none()
        {
            return Ok((peer, conn));
        }
        let client = self
            .inner
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let fail = |reason: String| {
            bump(&self.inner.counters.dial_failures);
            Error::Connect { addr, reason }
        };
        let server_name =
            expected.map_or_else(|| SERVER_NAME.to_string(), |id| server_name_of(&id));
        let connecting = self
            .inner
            .endpoint
            .connect_with(client, addr, &server_name)
            .map_err(|e| fail(e.to_string()))?;
        let conn = connecting.await.map_err(|e| fail(e.to_string()))?;
        let actual = peer_id(&conn)
            .ok_or_else(|| fail("the peer presented no usable certificate".into()))?;
        if let Some(expected) = expected
            && expected != actual
        {
            conn.close(VarInt::from_u32(1), b"unexpected peer");
            return Err(Error::UnexpectedPeer {
                addr,
                expected,
                actual,
            });
        }
        bump(&self.inner.counters.handshakes);
        register(&self.inner, actual, conn.clone());
        Ok((actual, conn))
    }

    /// Sends an unreliable datagram. It must fit the connection's current
    /// [`max_datagram_size`](Transport::max_datagram_size); larger messages
    /// go by [`send_message`](Transport::send_message). If the connection's
    /// send buffer is full, the oldest queued datagram is dropped for this one
    /// (fresh news over stale, what a failure detector wants).
    ///
    /// # Errors
    ///
    /// [`Error::DatagramTooLarge`] (nothing sent), and as
    /// [`connect`](Transport::connect).
    pub async fn send_datagram(
        &self,
        peer: Option<NodeId>,
        addr: SocketAddr,
        bytes: Bytes,
    ) -> Result<NodeId, Error> {
        self.send_datagram_inner(peer, addr, bytes, false).await
    }

    /// As [`send_datagram`](Transport::send_datagram), but waits for room in
    /// the send buffer instead of dropping older datagrams.
    ///
    /// # Errors
    ///
    /// As [`send_datagram`](Transport::send_datagram).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call has sent nothing or the whole datagram.
    pub async fn send_datagram_wait(
        &self,
        peer: Option<NodeId>,
        addr: SocketAddr,
        bytes: Bytes,
    ) -> Result<NodeId, Error> {
        self.send_datagram_inner(peer, addr, bytes, true).await
    }

    async fn send_datagram_inner(
        &self,
        peer: Option<NodeId>,
        addr: SocketAddr,
        bytes: Bytes,
        wait: bool,
    ) -> Result<NodeId, Error> {
        if let Some(peer) = peer
            && self.send_to_cached(&peer, &bytes, wait)
        {
            bump(&self.inner.counters.datagrams_sent);
            return Ok(peer);
        }
        for attempt in 0..2 {
            // Past the hot path (`send_to_cached`): failures, waiting for
            // room, and dials. The dial is boxed so it does not bloat every
            // send's future.
            let cached = peer.and_then(|p| self.cached(&p).map(|c| (p, c)));
            let (id, conn) = match cached {
                Some(found) => found,
                None => Box::pin(self.connect(peer, addr)).await?,
            };
            let sent = if wait {
                conn.send_datagram_wait(bytes.clone()).await
            } else {
                conn.send_datagram(bytes.clone())
            };
            match datagram_sent(&self.inner, id, &conn, bytes.len(), sent) {
                Err(Error::ConnectionLost { reason, .. }) if attempt == 0 => {
                    // A cached connection to a peer that restarted: dial
                    // again once.
                    tracing::debug!(peer = %id, %reason, "redialling");
                }
                result => return result.map(|()| id),
            }
        }
        Err(Error::Closed)
    }

    /// The hot path of a send by peer id: the cached connection takes the
    /// datagram while the cache is locked, with no clone of the connection
    /// (a clone and its drop are four atomic operations on lines the
    /// connection's driver also writes: a fifth or more of the throughput of
    /// 100-byte datagrams in the transport bench). `true` if it was sent; `false` leaves everything, failures
    /// included, to the general path. With `wait`, a full send buffer is a
    /// `false` too (the general path waits for room).
    fn send_to_cached(&self, peer: &NodeId, bytes: &Bytes, wait: bool) -> bool {
        let connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(conn) = connections.get(peer) else {
            return false;
        };
        if !wait {
            return conn.send_datagram(bytes.clone()).is_ok();
        }
        // Polled once: ready if there was room. A pending send, dropped,
        // has sent nothing.
        let mut send = std::pin::pin!(conn.send_datagram_wait(bytes.clone()));
        matches!(
            send.as_mut().poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(Ok(()))
        )
    }

    /// Sends a message reliably, on its own stream, framed with its length.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`], [`Error::ConnectionLost`], and as
    /// [`connect`](Transport::connect).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled send may have delivered part of the
    /// message, which the receiver discards.
    pub async fn send_message(
        &self,
        peer: Option<NodeId>,
        addr: SocketAddr,
        bytes: &[u8],
    ) -> Result<NodeId, Error> {
        let header = frame_header(bytes.len(), self.inner.config.max_frame_bytes)
            .inspect_err(|_| bump(&self.inner.counters.oversize))?;
        for attempt in 0..2 {
            let (id, conn) = self.connect(peer, addr).await?;
            let sent = async {
                let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
                stream.write_all(&header).await.map_err(|e| e.to_string())?;
                stream.write_all(bytes).await.map_err(|e| e.to_string())?;
                stream.finish().map_err(|e| e.to_string())
            }
            .await;
            match sent {
                Ok(()) => {
                    bump(&self.inner.counters.messages_sent);
                    return Ok(id);
                }
                Err(reason) if attempt == 0 => {
                    tracing::debug!(peer = %id, %reason, "redialling");
                    forget(&self.inner, &id, &conn);
                }
                Err(reason) => return Err(Error::ConnectionLost { peer: id, reason }),
            }
        }
        Err(Error::Closed)
    }

    /// Closes the connection to `peer`, if one is open (the next send dials
    /// again, resuming the TLS session).
    pub fn disconnect(&self, peer: &NodeId) {
        let conn = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        if let Some(conn) = conn {
            conn.close(VarInt::from_u32(0), b"disconnect");
        }
    }

    /// Closes every connection and stops accepting, then waits for the
    /// peers to be told.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the endpoint is closed before the first await.
    pub async fn close(&self) {
        close_endpoint(&self.inner.endpoint);
        self.inner.endpoint.wait_idle().await;
    }
}

/// Counts a datagram send's outcome and turns a failure into our error; a
/// lost connection is forgotten, so the next send dials again.
fn datagram_sent(
    inner: &Inner,
    peer: NodeId,
    conn: &Connection,
    len: usize,
    sent: Result<(), quinn::SendDatagramError>,
) -> Result<(), Error> {
    match sent {
        Ok(()) => {
            bump(&inner.counters.datagrams_sent);
            Ok(())
        }
        Err(quinn::SendDatagramError::TooLarge) => {
            bump(&inner.counters.oversize);
            let max = conn.max_datagram_size().unwrap_or(0);
            Err(Error::DatagramTooLarge { len, max })
        }
        Err(e) => {
            forget(inner, &peer, conn);
            Err(Error::ConnectionLost {
                peer,
                reason: e.to_string(),
            })
        }
    }
}

/// A sender of datagrams to one peer that holds the peer's connection, from
/// [`Transport::link`]. [`Transport::send_datagram`] finds the connection
/// by the peer's id for every datagram; a link skips that, which counts
/// when one peer gets a stream of small datagrams.
///
/// A send that finds the connection lost fails with
/// [`Error::ConnectionLost`], and that datagram is lost (datagrams are
/// unreliable anyway); the next send dials again.
#[derive(Debug)]
pub struct Link {
    transport: Transport,
    peer: NodeId,
    addr: SocketAddr,
    /// `None` after a loss, until the next send dials.
    conn: Option<Connection>,
}

impl Link {
    /// The peer this link sends to.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The largest datagram the connection carries now; `None` if it is lost.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.conn.as_ref()?.max_datagram_size()
    }

    /// Sends a datagram; if the send buffer is full the oldest queued one
    /// is dropped for it, as [`Transport::send_datagram`] does.
    ///
    /// # Errors
    ///
    /// [`Error::DatagramTooLarge`], [`Error::ConnectionLost`], and as
    /// [`Transport::connect`] when dialling again.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: only a new dial awaits, and it completes in the
    /// background.
    pub async fn send_datagram(&mut self, bytes: Bytes) -> Result<(), Error> {
        if self.conn.is_none() {
            self.redial().await?;
        }
        let conn = self.conn.as_ref().ok_or(Error::Closed)?;
        let len = bytes.len();
        let sent = conn.send_datagram(bytes);
        self.sent(len, sent)
    }

    /// As [`send_datagram`](Link::send_datagram), but waits for room in the
    /// send buffer instead of dropping older datagrams.
    ///
    /// # Errors
    ///
    /// As [`send_datagram`](Link::send_datagram).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call has sent nothing or the whole datagram.
    pub async fn send_datagram_wait(&mut self, bytes: Bytes) -> Result<(), Error> {
        if self.conn.is_none() {
            self.redial().await?;
        }
        let conn = self.conn.as_ref().ok_or(Error::Closed)?;
        let len = bytes.len();
        let sent = conn.send_datagram_wait(bytes).await;
        self.sent(len, sent)
    }

    /// Dials the peer again after a loss. Boxed and kept out of line, so
    /// that the futures of connected sends, the common case, stay small.
    #[cold]
    fn redial(&mut self) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>> {
        Box::pin(async move {
            let (_, conn) = self.transport.connect(Some(self.peer), self.addr).await?;
            self.conn = Some(conn);
            Ok(())
        })
    }

    #[inline]
    fn sent(
        &mut self,
        len: usize,
        sent: Result<(), quinn::SendDatagramError>,
    ) -> Result<(), Error> {
        match sent {
            Ok(()) => {
                bump(&self.transport.inner.counters.datagrams_sent);
                Ok(())
            }
            Err(err) => self.not_sent(len, err),
        }
    }

    #[cold]
    fn not_sent(&mut self, len: usize, err: quinn::SendDatagramError) -> Result<(), Error> {
        let Some(conn) = &self.conn else {
            return Err(Error::Closed);
        };
        let result = datagram_sent(&self.transport.inner, self.peer, conn, len, Err(err));
        if matches!(result, Err(Error::ConnectionLost { .. })) {
            self.conn = None;
        }
        result
    }
}

/// Binds a UDP socket at `addr` with a kernel receive buffer of up to
/// `receive_buffer` bytes (the kernel may grant less; that is not an error).
pub(crate) fn bind_udp(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    if let Err(err) = socket.set_recv_buffer_size(receive_buffer) {
        tracing::debug!(error = %err, "could not enlarge the UDP receive buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn peer_id(conn: &Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    node_id_of(chain.first()?).ok()
}

fn forget(inner: &Inner, peer: &NodeId, conn: &Connection) {
    let mut connections = inner.connections.lock().unwrap_or_else(|e| e.into_inner());
    if connections
        .get(peer)
        .is_some_and(|c| c.stable_id() == conn.stable_id())
    {
        connections.remove(peer);
    }
}

/// Caches a new connection and starts reading from it.
fn register(inner: &Arc<Inner>, peer: NodeId, conn: Connection) {
    inner
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer, conn.clone());
    inner.incoming.watch(peer, conn.clone());
    tokio::spawn(read_streams(inner.clone(), peer, conn));
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        if inner.endpoint.open_connections() >= inner.config.max_connections {
            bump(&inner.counters.refused);
            incoming.refuse();
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            // A certificate that does not chain to the trust bundle (or has
            // expired) fails here, inside the handshake.
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    bump(&inner.counters.refused);
                    tracing::debug!(error = %e, "refused a handshake");
                    return;
                }
            };
            match peer_id(&conn) {
                Some(peer) => {
                    bump(&inner.counters.handshakes);
                    register(&inner, peer, conn);
                }
                None => {
                    bump(&inner.counters.refused);
                    conn.close(VarInt::from_u32(2), b"no certificate");
                }
            }
        });
    }
}

/// Reads `conn`'s streams, a task each, until the connection closes.
async fn read_streams(inner: Arc<Inner>, peer: NodeId, conn: Connection) {
    let addr = conn.remote_address();
    while let Ok(mut stream) = conn.accept_uni().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(inner.config.max_frame_bytes);
            loop {
                let chunk = match stream.read_chunk(decoder.wanted(), true).await {
                    Ok(Some(chunk)) => chunk.bytes,
                    Ok(None) => {
                        if decoder.finish().is_err() {
                            bump(&inner.counters.bad_frames);
                        }
                        return;
                    }
                    Err(_) => {
                        bump(&inner.counters.bad_frames);
                        return;
                    }
                };
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    let frame = match decoder.push(rest) {
                        Ok((frame, after)) => {
                            rest = after;
                            frame
                        }
                        Err(_) => {
                            bump(&inner.counters.bad_frames);
                            let _ = stream.stop(VarInt::from_u32(3));
                            return;
                        }
                    };
                    let Some(body) = frame else { continue };
                    bump(&inner.counters.messages_received);
                    let received = Received {
                        from: peer,
                        addr,
                        channel: Channel::Stream,
                        bytes: Bytes::from(body),
                    };
                    if inner.incoming.send_message(received).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // The connection has closed: the next send to this peer dials again.
    forget(&inner, &peer, &conn);
}
