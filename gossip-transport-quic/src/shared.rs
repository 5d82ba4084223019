//! What the transport's handles and its own tasks share.

use std::sync::{Arc, RwLock};

use gossip_core::NodeId;
use quinn::{Connection, Endpoint};

use crate::cache::ConnectionCache;
use crate::config::TransportConfig;
use crate::counters::{Counters, bump};
use crate::error::Error;
use crate::inbox::InboxSender;
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
}

impl Inner {
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
