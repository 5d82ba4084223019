//! What the transport's handles and its own tasks share.

use std::sync::{Arc, RwLock};

use gossip_core::NodeId;
use quinn::{Connection, Endpoint};

use crate::cache::ConnectionCache;
use crate::config::TransportConfig;
use crate::counters::{Counters, bump};
use crate::error::Error;
use crate::inbox::InboxSender;
use crate::screen::ScreeningSocket;
use crate::sealed::{SealedKeys, Sealer};
use crate::tls::CountingSessions;

/// What the transport's handles and its own tasks share.
pub(crate) struct Inner {
    pub(crate) endpoint: Endpoint,
    pub(crate) local_id: RwLock<NodeId>,
    pub(crate) config: TransportConfig,
    pub(crate) client: RwLock<quinn::ClientConfig>,
    pub(crate) connections: ConnectionCache,
    pub(crate) sessions: Arc<CountingSessions>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) incoming: InboxSender,
    /// The endpoint's socket, for sealed datagrams.
    pub(crate) socket: Arc<ScreeningSocket>,
    /// Every live connection's sealed keys.
    pub(crate) sealed: Arc<SealedKeys>,
    /// Stops the reader of the socket's error queue, which holds a second
    /// handle on the socket; taken on close.
    pub(crate) stop_errors: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Inner {
    /// Closes every connection with the code and reason peers see on a
    /// close of ours, stops accepting, and lets go of the socket's second
    /// handle, so the port closes once quinn lets go of the first.
    pub(crate) fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"closing");
        let stop = self
            .stop_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(stop);
    }

    /// Sends `bytes` to `addr` sealed with `sealer`; `false` if it must go
    /// by QUIC instead (no sealer, too large, the peer cannot open ours, a
    /// QUIC datagram due to keep the connection from idling, or a full
    /// socket).
    pub(crate) fn send_sealed(
        &self,
        sealer: Option<&Sealer>,
        addr: std::net::SocketAddr,
        bytes: &[u8],
    ) -> bool {
        let Some(packet) = sealer.and_then(|sealer| sealer.seal(bytes)) else {
            return false;
        };
        if !self.socket.send_raw(addr, &packet) {
            return false;
        }
        let counters = &self.counters.sealed;
        bump(&counters.sent);
        counters
            .bytes_sent
            .fetch_add(packet.len() as u64, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Counts a datagram send's outcome and turns a failure into our error; a
    /// lost connection is forgotten, so the next send dials again.
    pub(crate) fn datagram_sent(
        &self,
        peer: NodeId,
        conn: &Connection,
        len: usize,
        sent: Result<(), quinn::SendDatagramError>,
    ) -> Result<(), Error> {
        match sent {
            Ok(()) => {
                bump(&self.counters.datagrams_sent);
                Ok(())
            }
            Err(quinn::SendDatagramError::TooLarge) => {
                bump(&self.counters.oversize);
                let max = conn.max_datagram_size().unwrap_or(0);
                Err(Error::DatagramTooLarge { len, max })
            }
            Err(e) => {
                self.connections.forget(&peer, conn);
                Err(Error::ConnectionLost {
                    peer,
                    reason: e.to_string(),
                })
            }
        }
    }
}
