//! A UDP socket that injects faults into what it sends: seeded loss, delay,
//! reordering, duplication and partitions by peer address. The kernels this
//! project runs on have no netem, so real-socket tests get a bad network here.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::{Rng, SeedableRng};

/// What to do to outgoing datagrams.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FaultConfig {
    /// Seed of the fault PRNG: the same seed makes the same decisions.
    pub seed: u64,
    /// Probability of dropping a datagram.
    pub loss: f64,
    /// Probability of sending a datagram twice.
    pub duplicate: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// Extra random delay, uniform in `0..jitter`; with it, datagrams reorder.
    pub jitter: Duration,
}

impl FaultConfig {
    /// No faults, seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        FaultConfig {
            seed,
            loss: 0.0,
            duplicate: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct FaultState {
    config: FaultConfig,
    rng: rand_chacha::ChaCha8Rng,
    blocked: BTreeSet<SocketAddr>,
    dropped: u64,
    duplicated: u64,
}

/// Changes the faults of a [`FaultySocket`] while it runs.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    state: Arc<Mutex<FaultState>>,
}

impl FaultHandle {
    fn with<T>(&self, f: impl FnOnce(&mut FaultState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the fault configuration (the PRNG keeps its stream).
    pub fn set(&self, config: FaultConfig) {
        self.with(|s| s.config = config);
    }

    /// Drops everything sent to `peer` until [`heal`](FaultHandle::heal):
    /// one direction of a partition.
    pub fn partition(&self, peer: SocketAddr) {
        self.with(|s| s.blocked.insert(peer));
    }

    /// Ends the partition towards `peer`.
    pub fn heal(&self, peer: SocketAddr) {
        self.with(|s| s.blocked.remove(&peer));
    }

    /// Datagrams dropped so far (loss and partitions).
    pub fn dropped(&self) -> u64 {
        self.with(|s| s.dropped)
    }

    /// Datagrams sent twice so far.
    pub fn duplicated(&self) -> u64 {
        self.with(|s| s.duplicated)
    }
}

/// Wraps a socket, applying a [`FaultConfig`] to every datagram sent.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    state: Arc<Mutex<FaultState>>,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket").finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Binds a UDP socket at `addr` and wraps it. Must be called within a
    /// tokio runtime (delayed datagrams are sent from tasks).
    ///
    /// # Errors
    ///
    /// If the socket cannot be bound.
    pub fn bind(
        addr: SocketAddr,
        config: FaultConfig,
    ) -> io::Result<(Arc<dyn AsyncUdpSocket>, FaultHandle)> {
        let socket = crate::transport::bind_udp(
            addr,
            crate::TransportConfig::new(addr).socket_receive_buffer,
        )?;
        Self::wrap(socket, config)
    }

    /// Wraps a bound socket.
    ///
    /// # Errors
    ///
    /// If no tokio runtime is running.
    pub fn wrap(
        socket: std::net::UdpSocket,
        config: FaultConfig,
    ) -> io::Result<(Arc<dyn AsyncUdpSocket>, FaultHandle)> {
        let runtime =
            quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime"))?;
        let inner = runtime.wrap_udp_socket(socket)?;
        let state = Arc::new(Mutex::new(FaultState {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(config.seed),
            config,
            blocked: BTreeSet::new(),
            dropped: 0,
            duplicated: 0,
        }));
        let handle = FaultHandle {
            state: state.clone(),
        };
        Ok((Arc::new(FaultySocket { inner, state }), handle))
    }
}

/// What to do with one datagram.
struct Decision {
    drop: bool,
    copies: usize,
    delay: Duration,
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let decision = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let FaultState {
                config,
                rng,
                blocked,
                ..
            } = &mut *state;
            let drop = blocked.contains(&transmit.destination) || rng.random::<f64>() < config.loss;
            let copies = if rng.random::<f64>() < config.duplicate {
                2
            } else {
                1
            };
            let jitter = config.jitter.mul_f64(rng.random::<f64>());
            let decision = Decision {
                drop,
                copies,
                delay: config.delay + jitter,
            };
            if drop {
                state.dropped += 1;
            } else if copies > 1 {
                state.duplicated += 1;
            }
            decision
        };
        if decision.drop {
            // Lost on the wire: the sender believes it went.
            return Ok(());
        }
        if decision.delay.is_zero() {
            for _ in 0..decision.copies {
                self.inner.try_send(transmit)?;
            }
            return Ok(());
        }
        let inner = self.inner.clone();
        let (destination, ecn, src_ip, segment_size) = (
            transmit.destination,
            transmit.ecn,
            transmit.src_ip,
            transmit.segment_size,
        );
        let contents = transmit.contents.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(decision.delay).await;
            let transmit = Transmit {
                destination,
                ecn,
                contents: &contents,
                segment_size,
                src_ip,
            };
            for _ in 0..decision.copies {
                // A full socket buffer at this point is one more loss.
                let _ = inner.try_send(&transmit);
            }
        });
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    // One datagram per send, so each gets its own fate.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
