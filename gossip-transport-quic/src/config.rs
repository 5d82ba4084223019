//! The transport's settings.

use std::net::SocketAddr;
use std::time::Duration;

/// The ALPN protocol id: our protocol and its version.
pub const ALPN: &[u8] = b"gossip/1";

/// Settings of a [`Transport`](crate::Transport).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Where to listen.
    pub bind: SocketAddr,
    /// A connection with no QUIC traffic for this long is closed (no
    /// keep-alive packets are sent while idle). Sealed datagrams do not
    /// count as QUIC traffic, so the dialling end sends one datagram in a
    /// third of this by QUIC. Default 30 minutes: far longer than SWIM
    /// takes to come back to any member of a few hundred, and a QUIC
    /// datagram (and its acknowledgement) per connection every 10 minutes.
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
    /// The round trip a connection assumes before it has measured one,
    /// which sets how soon a lost handshake packet is sent again (about
    /// three times this). Default 333 ms (RFC 9002's), right for any
    /// network; on a LAN a tenth of it recovers a lost handshake packet in
    /// 100 ms instead of a second.
    pub initial_rtt: Duration,
    /// Whether a connection probes its path for packets larger than QUIC's
    /// 1,200-byte minimum. Default off: gossip's datagrams fit the minimum,
    /// and the probes (up to 1,452 bytes, several per connection, repeated
    /// every 10 minutes) more than double what a handshake costs on the
    /// wire. On lets large syncs use fewer, larger packets.
    pub discover_path_mtu: bool,
}

impl TransportConfig {
    /// Defaults, listening on `bind`.
    pub fn new(bind: SocketAddr) -> Self {
        TransportConfig {
            bind,
            idle_timeout: Duration::from_secs(1800),
            max_connections: 1024,
            max_streams_per_peer: 32,
            max_frame_bytes: 16 << 20,
            datagram_buffer_bytes: 1 << 20,
            receive_queue: 8192,
            socket_receive_buffer: 4 << 20,
            initial_rtt: Duration::from_millis(333),
            discover_path_mtu: false,
        }
    }
}
