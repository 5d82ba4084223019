//! Transport throughput beside plain quinn, in one run, on loopback:
//! 100- and 1,000-byte datagrams per second one way, mutual-TLS handshakes
//! per second, single-stream throughput, and memory per idle connection.
//!
//! `cargo bench -p gossip-transport-quic --bench transport [-- WORD]`
//! prints a table (only the rows whose name holds WORD, if given). Each
//! measure runs in rounds that pair one run of each side, each run in a
//! fresh process of this binary, in alternating order; the table gives each
//! side's median, the median of the rounds' ratios, and the middle half of
//! those ratios, which shows how far the machine's noise moves them. The
//! memory per idle connection is measured in a fresh process too, where no
//! memory freed by earlier measures can hide the connections' own.
//! The plain-quinn baseline uses the same TLS configuration
//! ([`quinn_configs`]) without this crate's layer: no connection cache, no
//! identity tagging, no inbox. Our datagrams go through a `Link`, which
//! holds the connection as the baseline does, and once more through
//! `send_datagram_wait`, which looks the connection up per datagram.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::disallowed_methods,
    reason = "a benchmark: it reads the clock and prints"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gossip_transport_quic::{
    ClusterCa, NodeCredentials, SERVER_NAME, Transport, TransportConfig, Validity, quinn_configs,
};

const WINDOW: Duration = Duration::from_secs(1);

/// Rounds of each measurement, alternating plain quinn and ours.
const ROUNDS: usize = 15;

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Pki {
    ca: ClusterCa,
    a: NodeCredentials,
    b: NodeCredentials,
}

fn pki() -> Pki {
    let ca = ClusterCa::generate("bench").unwrap();
    let day = Validity::for_duration(Duration::from_secs(86_400));
    Pki {
        a: ca.issue("a", day).unwrap(),
        b: ca.issue("b", day).unwrap(),
        ca,
    }
}

fn config() -> TransportConfig {
    let mut config = TransportConfig::new(loopback());
    config.datagram_buffer_bytes = 8 << 20;
    config.max_frame_bytes = 64 << 20;
    config
}

/// Two plain quinn endpoints with our TLS configuration, connected.
async fn plain_pair(
    pki: &Pki,
) -> (
    quinn::Endpoint,
    quinn::Endpoint,
    quinn::Connection,
    quinn::Connection,
) {
    let (server_config, _) = quinn_configs(&config(), &pki.b, &pki.ca.trust()).unwrap();
    let (_, client_config) = quinn_configs(&config(), &pki.a, &pki.ca.trust()).unwrap();
    let server = quinn::Endpoint::server(server_config, loopback()).unwrap();
    let mut client = quinn::Endpoint::client(loopback()).unwrap();
    client.set_default_client_config(client_config);
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.unwrap().await.unwrap() }
    });
    let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
    let server_conn = accept.await.unwrap();
    (server, client, conn, server_conn)
}

async fn plain_datagrams(pki: &Pki, size: usize) -> f64 {
    let (_s, _c, conn, server_conn) = plain_pair(pki).await;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        while server_conn.read_datagram().await.is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let payload = Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    while start.elapsed() < WINDOW {
        for _ in 0..64 {
            let _ = conn.send_datagram_wait(payload.clone()).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rate = received.load(Ordering::Relaxed) as f64 / WINDOW.as_secs_f64();
    reader.abort();
    rate
}

/// How our side sends its datagrams.
#[derive(Clone, Copy, PartialEq)]
enum SendPath {
    /// Through a [`Link`](gossip_transport_quic::Link), which holds the
    /// connection as the baseline does.
    Link,
    /// Through [`Transport::send_datagram_wait`], which finds the
    /// connection by the peer's id for every datagram.
    PeerId,
}

async fn our_datagrams(pki: &Pki, size: usize, path: SendPath) -> f64 {
    let (a, _a_inbox) = Transport::bind(config(), &pki.a, &pki.ca.trust()).unwrap();
    let (b, mut b_inbox) = Transport::bind(config(), &pki.b, &pki.ca.trust()).unwrap();
    let b_addr = b.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        while b_inbox.recv().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let payload = Bytes::from(vec![7u8; size]);
    let peer = pki.b.node_id();
    let mut link = a.link(peer, b_addr).await.unwrap();
    link.send_datagram(payload.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    received.store(0, Ordering::Relaxed);
    let start = Instant::now();
    // Paced like the baseline: wait for room in the send buffer. One loop
    // per path, so ours carries no per-datagram branch the baseline lacks.
    match path {
        SendPath::Link => {
            while start.elapsed() < WINDOW {
                for _ in 0..64 {
                    let _ = link.send_datagram_wait(payload.clone()).await;
                }
            }
        }
        SendPath::PeerId => {
            while start.elapsed() < WINDOW {
                for _ in 0..64 {
                    let _ = a
                        .send_datagram_wait(Some(peer), b_addr, payload.clone())
                        .await;
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rate = received.load(Ordering::Relaxed) as f64 / WINDOW.as_secs_f64();
    reader.abort();
    rate
}

async fn plain_handshakes(pki: &Pki, count: u32) -> f64 {
    let (server, client, conn, _) = plain_pair(pki).await;
    conn.close(0u32.into(), b"");
    let addr = server.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    let start = Instant::now();
    for _ in 0..count {
        let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        conn.close(0u32.into(), b"");
    }
    let rate = f64::from(count) / start.elapsed().as_secs_f64();
    acceptor.abort();
    rate
}

async fn our_handshakes(pki: &Pki, count: u32) -> (f64, u64) {
    let (a, _a_inbox) = Transport::bind(config(), &pki.a, &pki.ca.trust()).unwrap();
    let (b, _b_inbox) = Transport::bind(config(), &pki.b, &pki.ca.trust()).unwrap();
    let b_addr = b.local_addr().unwrap();
    let peer = Some(pki.b.node_id());
    let start = Instant::now();
    for _ in 0..count {
        a.connect(peer, b_addr).await.unwrap();
        a.disconnect(&pki.b.node_id());
    }
    let rate = f64::from(count) / start.elapsed().as_secs_f64();
    (rate, a.stats().resumptions)
}

async fn plain_stream(pki: &Pki, bytes: usize) -> f64 {
    let (_s, _c, conn, server_conn) = plain_pair(pki).await;
    let reader = tokio::spawn(async move {
        let mut stream = server_conn.accept_uni().await.unwrap();
        let mut total = 0usize;
        while let Some(chunk) = stream.read_chunk(usize::MAX, true).await.unwrap() {
            total += chunk.bytes.len();
        }
        total
    });
    let chunk = vec![1u8; 1 << 20];
    let start = Instant::now();
    let mut stream = conn.open_uni().await.unwrap();
    for _ in 0..bytes / chunk.len() {
        stream.write_all(&chunk).await.unwrap();
    }
    stream.finish().unwrap();
    let total = reader.await.unwrap();
    assert_eq!(total, bytes);
    total as f64 / start.elapsed().as_secs_f64() / f64::from(1 << 20)
}

async fn our_stream(pki: &Pki, bytes: usize) -> f64 {
    let (a, _a_inbox) = Transport::bind(config(), &pki.a, &pki.ca.trust()).unwrap();
    let (b, mut b_inbox) = Transport::bind(config(), &pki.b, &pki.ca.trust()).unwrap();
    let b_addr = b.local_addr().unwrap();
    let peer = Some(pki.b.node_id());
    a.connect(peer, b_addr).await.unwrap();
    let message = vec![1u8; 32 << 20];
    let count = bytes / message.len();
    let start = Instant::now();
    let sender = tokio::spawn({
        let a = a.clone();
        async move {
            for _ in 0..count {
                a.send_message(peer, b_addr, &message).await.unwrap();
            }
        }
    });
    let mut total = 0;
    for _ in 0..count {
        total += b_inbox.recv().await.unwrap().bytes.len();
    }
    sender.await.unwrap();
    assert_eq!(total, bytes);
    total as f64 / start.elapsed().as_secs_f64() / f64::from(1 << 20)
}

/// Resident memory of this process, in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Memory held per idle connection (both ends), with our TLS configuration.
async fn idle_connection_memory(pki: &Pki, count: usize) -> Option<f64> {
    let (server, client, first, _) = plain_pair(pki).await;
    let addr = server.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = server.accept().await {
            if let Ok(conn) = incoming.await {
                held.push(conn);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib()?;
    let mut conns = vec![first];
    for _ in 0..count {
        conns.push(client.connect(addr, SERVER_NAME).unwrap().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib()?;
    acceptor.abort();
    Some((after.saturating_sub(before)) as f64 / count as f64)
}

/// The measures, under the names their rows print.
const MEASURES: [(&str, Measure); 5] = [
    (
        "100-byte datagrams/s one way",
        Measure::Datagrams {
            size: 100,
            path: SendPath::Link,
        },
    ),
    (
        "1000-byte datagrams/s one way",
        Measure::Datagrams {
            size: 1000,
            path: SendPath::Link,
        },
    ),
    (
        "100-byte datagrams/s, by peer id",
        Measure::Datagrams {
            size: 100,
            path: SendPath::PeerId,
        },
    ),
    ("mutual-TLS handshakes/s", Measure::Handshakes),
    ("single-stream MiB/s", Measure::Stream),
];

#[derive(Clone, Copy)]
enum Measure {
    Datagrams { size: usize, path: SendPath },
    Handshakes,
    Stream,
}

/// Handshakes per round.
const HANDSHAKES: u32 = 200;

/// Bytes sent on the stream per round.
const STREAM_BYTES: usize = 256 << 20;

/// Set in a child process: the side it measures (`plain` or `ours`) and the
/// index of its measure in [`MEASURES`].
const SIDE_VAR: &str = "TRANSPORT_BENCH_SIDE";
const MEASURE_VAR: &str = "TRANSPORT_BENCH_MEASURE";

/// In a child process: runs one round of one measure on one side and
/// prints its figure, then the TLS sessions it resumed.
fn run_child(side: &str, measure: Measure) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (figure, resumed) = runtime.block_on(async {
        let pki = pki();
        match (side, measure) {
            ("plain", Measure::Datagrams { size, .. }) => (plain_datagrams(&pki, size).await, 0),
            ("plain", Measure::Handshakes) => (plain_handshakes(&pki, HANDSHAKES).await, 0),
            ("plain", Measure::Stream) => (plain_stream(&pki, STREAM_BYTES).await, 0),
            ("ours", Measure::Datagrams { size, path }) => {
                (our_datagrams(&pki, size, path).await, 0)
            }
            ("ours", Measure::Handshakes) => our_handshakes(&pki, HANDSHAKES).await,
            ("ours", Measure::Stream) => (our_stream(&pki, STREAM_BYTES).await, 0),
            (side, _) => panic!("{SIDE_VAR} is {side:?}, neither plain nor ours"),
        }
    });
    println!("{figure} {resumed}");
}

/// One round of measure `index` on `side`, in a process of its own: a side
/// measured in a process where the other had run came out lower than in
/// one of its own, and fresh processes also vary the memory layout each
/// side gets, where a single process would fix one for the whole run.
fn round_in_child(side: &str, index: usize) -> (f64, u64) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env(SIDE_VAR, side)
        .env(MEASURE_VAR, index.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the {side} side's round failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut words = stdout.split_whitespace();
    let mut next = || words.next().unwrap();
    (next().parse().unwrap(), next().parse().unwrap())
}

/// One measure's rounds: plain quinn's and ours, paired round by round.
struct Rounds {
    plain: Vec<f64>,
    ours: Vec<f64>,
    /// TLS sessions our side resumed, over all rounds.
    resumed: u64,
}

/// Runs `ROUNDS` rounds of measure `index`, each side in a process of its
/// own. Who goes first alternates, so that neither side always goes
/// second, and each round's pair ran within seconds of each other, so
/// their ratio is little moved by the machine's load drifting over the
/// run.
fn rounds(index: usize) -> Rounds {
    let mut rounds = Rounds {
        plain: Vec::with_capacity(ROUNDS),
        ours: Vec::with_capacity(ROUNDS),
        resumed: 0,
    };
    let ours = |rounds: &mut Rounds| {
        let (figure, resumed) = round_in_child("ours", index);
        rounds.ours.push(figure);
        rounds.resumed += resumed;
    };
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            rounds.plain.push(round_in_child("plain", index).0);
            ours(&mut rounds);
        } else {
            ours(&mut rounds);
            rounds.plain.push(round_in_child("plain", index).0);
        }
    }
    rounds
}

impl Rounds {
    /// A table row: the medians of each side, then the median of the
    /// rounds' ratios and the middle half of them, the figure to judge the
    /// overhead by.
    fn print(mut self, name: &str) {
        let mut ratios: Vec<f64> = (self.plain.iter().zip(&self.ours))
            .map(|(plain, ours)| ours / plain * 100.0)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let quarter = ratios.len() / 4;
        let (low, high) = (ratios[quarter], ratios[ratios.len() - 1 - quarter]);
        println!(
            "{name:<34} {:>14.0} {:>14.0} {:>8.1}% {:>6.1}-{:.1}%",
            median(&mut self.plain),
            median(&mut self.ours),
            median(&mut ratios),
            low,
            high
        );
    }
}

fn main() {
    if let (Ok(side), Ok(index)) = (std::env::var(SIDE_VAR), std::env::var(MEASURE_VAR)) {
        let index: usize = index.parse().unwrap();
        run_child(&side, MEASURES[index].1);
        return;
    }
    // `cargo bench --bench transport -- WORD` runs the measures whose name
    // holds WORD (cargo passes `--bench` too, which is not a word).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|w| name.contains(w.as_str()));
    println!(
        "{:<34} {:>14} {:>14} {:>9} {:>12}",
        "measure (medians of rounds)", "plain quinn", "gossip", "ours/plain", "middle half"
    );
    for (index, (name, measure)) in MEASURES.iter().enumerate() {
        if !wanted(name) {
            continue;
        }
        let rounds = rounds(index);
        let resumed = rounds.resumed;
        rounds.print(name);
        if matches!(measure, Measure::Handshakes) {
            println!(
                "  (of our {} handshakes, {resumed} resumed a TLS session)",
                HANDSHAKES as usize * ROUNDS
            );
        }
    }
    if wanted("memory per idle connection") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        if let Some(kib) = runtime.block_on(async { idle_connection_memory(&pki(), 1000).await }) {
            println!("memory per idle connection (both ends): {kib:.1} KiB");
        }
    }
}
