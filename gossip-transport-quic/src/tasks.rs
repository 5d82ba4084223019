//! The transport's own tasks: accepting connections, and reading each
//! connection's streams into the inbox.

use std::sync::Arc;

use bytes::Bytes;
use gossip_core::NodeId;
use quinn::{Connection, VarInt};

use crate::cache::peer_id;
use crate::counters::bump;
use crate::framing::FrameDecoder;
use crate::received::{Channel, Received, clock};
use crate::sealed::Registered;
use crate::shared::Inner;

/// Caches a new connection with its sealed keys and starts reading from it.
pub(crate) fn register(inner: &Arc<Inner>, peer: NodeId, conn: Connection) {
    let (registered, sealer) = match inner.sealed.register(peer, &conn) {
        Some((registered, sealer, held)) => {
            for opened in held {
                inner.socket.deliver(opened);
            }
            (Some(registered), Some(sealer))
        }
        None => (None, None),
    };
    inner.connections.insert(peer, conn.clone(), sealer);
    inner.incoming.watch(peer, conn.clone());
    tokio::spawn(read_streams(inner.clone(), peer, conn, registered));
}

pub(crate) async fn accept_loop(inner: Arc<Inner>) {
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
async fn read_streams(
    inner: Arc<Inner>,
    peer: NodeId,
    conn: Connection,
    sealed: Option<Registered>,
) {
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
                        arrived: clock(),
                    };
                    if inner.incoming.send_message(received).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // The connection has closed: the next send to this peer dials again,
    // and its sealed keys open nothing more.
    inner.connections.forget(&peer, &conn);
    if let Some(registered) = sealed {
        inner.sealed.unregister(registered);
    }
}
