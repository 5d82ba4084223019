//! Evidence from the network that a peer's address does not answer: the
//! ICMP errors (port, host or network unreachable) that the kernel queues on
//! the socket when `IP_RECVERR` / `IPV6_RECVERR` are on (Linux only).
//!
//! A crashed process leaves its host up: the host's kernel answers every
//! datagram to the closed port with an ICMP port unreachable. That is the
//! fastest evidence of a crash there is, but ICMP is unauthenticated, so an
//! error counts only if it quotes the first bytes of a datagram this
//! endpoint sent to that address lately: a QUIC packet's destination
//! connection id and encrypted packet number, which an off-path forger has
//! not seen. What the evidence is worth is the membership layer's call.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

/// An address that the network says does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    /// The address a datagram of ours was sent to.
    pub addr: SocketAddr,
    /// What answered instead.
    pub kind: UnreachableKind,
}

/// What the ICMP error said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnreachableKind {
    /// The host is up and nothing listens on the port: the process is gone.
    Port,
    /// A router or the host's own stack says the host or its network cannot
    /// be reached.
    Host,
}

/// How many bytes of a sent datagram an ICMP error must quote: the QUIC
/// header byte, the 8-byte connection id and encrypted bytes after it.
const QUOTED: usize = 16;

/// Sends remembered, to match the errors against.
const SENT_REMEMBERED: usize = 512;

/// The first bytes of the datagrams sent lately, by address.
#[derive(Debug, Default)]
pub(crate) struct SentLog {
    recent: Mutex<VecDeque<(SocketAddr, [u8; QUOTED])>>,
}

impl SentLog {
    /// Records a datagram (or a batch of `segment`-byte datagrams) sent to `to`.
    pub(crate) fn record(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for datagram in contents.chunks(segment.unwrap_or(contents.len()).max(1)) {
            let Some(prefix) = datagram.get(..QUOTED) else {
                continue;
            };
            if recent.len() == SENT_REMEMBERED {
                recent.pop_front();
            }
            let mut bytes = [0; QUOTED];
            bytes.copy_from_slice(prefix);
            recent.push_back((to, bytes));
        }
    }

    /// Whether `quoted`, the start of a datagram an ICMP error returned,
    /// is the start of one sent to `to` lately.
    pub(crate) fn sent(&self, to: SocketAddr, quoted: &[u8]) -> bool {
        let Some(prefix) = quoted.get(..QUOTED) else {
            return false;
        };
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .rev()
            .any(|(addr, bytes)| *addr == to && bytes.as_slice() == prefix)
    }
}

/// Turns on the queueing of ICMP errors on `socket`. Elsewhere than on
/// Linux, does nothing.
///
/// # Errors
///
/// If the kernel refuses the option.
pub(crate) fn enable(socket: &UdpSocket) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt};
        if socket.local_addr()?.is_ipv6() {
            setsockopt(socket, sockopt::Ipv6RecvErr, &true)?;
            // IPv4-mapped peers' errors come as IPv4 errors; a socket bound
            // to an IPv6 address alone may refuse this, which is fine.
            let _ = setsockopt(socket, sockopt::Ipv4RecvErr, &true);
        } else {
            setsockopt(socket, sockopt::Ipv4RecvErr, &true)?;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
    Ok(())
}

/// One queued error: the address our datagram went to, the ICMP error's
/// meaning (`None` for errors that say nothing of the peer, such as a
/// datagram too large), and how many bytes of our datagram it quotes in
/// `quoted`.
#[cfg(target_os = "linux")]
pub(crate) struct QueuedError {
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) kind: Option<UnreachableKind>,
    pub(crate) quoted_len: usize,
}

/// A buffer for the control messages of one queued error: the error and
/// its offender, and beside them whatever else quinn asked the socket for
/// (packet info, ECN, GRO segments), which the kernel adds to errors too.
#[cfg(target_os = "linux")]
pub(crate) fn control_buffer() -> Vec<u8> {
    vec![0; 512]
}

/// Reads one error from `socket`'s error queue without waiting, with
/// `control` from [`control_buffer`]; `WouldBlock` once the queue is empty.
#[cfg(target_os = "linux")]
pub(crate) fn read_error(
    socket: &impl std::os::fd::AsRawFd,
    quoted: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<QueuedError> {
    use std::io::IoSliceMut;

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};

    const ICMP_DEST_UNREACH: u8 = 3;
    const ICMP_PORT_UNREACH: u8 = 3;
    const ICMP6_DST_UNREACH: u8 = 1;
    const ICMP6_PORT_UNREACH: u8 = 4;

    let mut iov = [IoSliceMut::new(quoted)];
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )?;
    let addr = message.address.and_then(|address| {
        if let Some(v4) = address.as_sockaddr_in() {
            Some(SocketAddr::from((v4.ip(), v4.port())))
        } else {
            address
                .as_sockaddr_in6()
                .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
        }
    });
    let mut kind = None;
    for control in message.cmsgs()? {
        kind = match control {
            ControlMessageOwned::Ipv4RecvErr(err, _) if err.ee_type == ICMP_DEST_UNREACH => {
                Some(if err.ee_code == ICMP_PORT_UNREACH {
                    UnreachableKind::Port
                } else {
                    UnreachableKind::Host
                })
            }
            ControlMessageOwned::Ipv6RecvErr(err, _) if err.ee_type == ICMP6_DST_UNREACH => {
                Some(if err.ee_code == ICMP6_PORT_UNREACH {
                    UnreachableKind::Port
                } else {
                    UnreachableKind::Host
                })
            }
            _ => kind,
        };
    }
    Ok(QueuedError {
        addr,
        kind,
        quoted_len: message.bytes,
    })
}

/// Errors read from the socket's error queue, by what became of them.
#[derive(Debug, Default)]
pub(crate) struct UnreachableCounters {
    /// Reported: an unreachable error quoting a datagram sent there.
    pub(crate) reported: AtomicU64,
    /// Refused: quoting nothing this endpoint sent there lately.
    pub(crate) unmatched: AtomicU64,
    /// Dropped because the application was not reading its reports.
    pub(crate) dropped: AtomicU64,
}

/// Reports of unreachable addresses queued for the application, at most.
const REPORTS_QUEUED: usize = 256;

/// The addresses the network said do not answer, as the transport reads
/// them from its socket (see [`Inbox::take_unreachable`](crate::Inbox::take_unreachable)).
#[derive(Debug)]
pub struct UnreachableReports(mpsc::Receiver<Unreachable>);

impl UnreachableReports {
    /// The next report, waiting for one; `None` once the transport is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a cancelled call loses no report.
    pub async fn recv(&mut self) -> Option<Unreachable> {
        self.0.recv().await
    }
}

/// Starts reading `socket`'s error queue (a second handle on the
/// transport's socket): each error that quotes a datagram in `sent` goes to
/// the returned reports. The reader stops, and lets go of the socket, when
/// `closed` resolves, so the port closes with the transport.
///
/// # Errors
///
/// If the socket cannot be registered with the runtime.
pub(crate) fn watch(
    socket: UdpSocket,
    sent: Arc<SentLog>,
    counters: Arc<UnreachableCounters>,
    closed: oneshot::Receiver<()>,
) -> std::io::Result<UnreachableReports> {
    let (tx, rx) = mpsc::channel(REPORTS_QUEUED);
    #[cfg(target_os = "linux")]
    {
        use tokio::io::Interest;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        tokio::spawn(async move {
            let mut closed = closed;
            let mut quoted = [0u8; 64];
            let mut control = control_buffer();
            loop {
                tokio::select! {
                    _ = &mut closed => return,
                    ready = socket.ready(Interest::ERROR) => if ready.is_err() {
                        return;
                    },
                }
                // Until the queue is empty: the last read's `WouldBlock`
                // clears the readiness.
                loop {
                    let read = socket.try_io(Interest::ERROR, || {
                        read_error(&socket, &mut quoted, &mut control)
                    });
                    match read {
                        Ok(error) => {
                            let quote = quoted.get(..error.quoted_len).unwrap_or(&quoted);
                            let (Some(addr), Some(kind)) = (error.addr, error.kind) else {
                                continue;
                            };
                            if !sent.sent(addr, quote) {
                                counters.unmatched.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%addr, "ICMP error quoting nothing sent there: ignored");
                                continue;
                            }
                            counters.reported.fetch_add(1, Ordering::Relaxed);
                            if tx.try_send(Unreachable { addr, kind }).is_err() {
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
        });
    }
    #[cfg(not(target_os = "linux"))]
    drop((socket, sent, counters, closed, tx));
    Ok(UnreachableReports(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_quoting_a_datagram_sent_there_count() {
        let log = SentLog::default();
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let sent: Vec<u8> = (0u8..40).collect();
        log.record(peer, &sent, None);
        assert!(log.sent(peer, &sent[..QUOTED]));
        assert!(log.sent(peer, &sent), "a longer quote of the same datagram");
        assert!(!log.sent(other, &sent), "sent to another address");
        assert!(!log.sent(peer, &sent[..QUOTED - 1]), "too short a quote");
        let mut forged = sent.clone();
        forged[QUOTED - 1] ^= 1;
        assert!(!log.sent(peer, &forged), "one byte off");
    }

    #[test]
    fn each_segment_of_a_batch_is_remembered_and_old_sends_are_forgotten() {
        let log = SentLog::default();
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let batch: Vec<u8> = (0u8..=99).collect();
        log.record(peer, &batch, Some(50));
        assert!(log.sent(peer, &batch[50..]));
        for i in 0..SENT_REMEMBERED {
            log.record(peer, &[i as u8 ^ 0xff; QUOTED], None);
        }
        assert!(!log.sent(peer, &batch[..QUOTED]));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod linux_tests {
    use super::*;

    #[test]
    fn a_datagram_to_a_closed_port_queues_a_port_unreachable() {
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(&socket).unwrap();
        let datagram = [7u8; 40];
        socket.send_to(&datagram, closed_addr).unwrap();
        let mut quoted = [0u8; 64];
        let mut error = None;
        for _ in 0..100 {
            match read_error(&socket, &mut quoted, &mut control_buffer()) {
                Ok(e) => {
                    error = Some(e);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        let error = error.expect("an error was queued");
        assert_eq!(error.addr, Some(closed_addr));
        assert_eq!(error.kind, Some(UnreachableKind::Port));
        assert_eq!(&quoted[..error.quoted_len], &datagram[..]);
    }
}
