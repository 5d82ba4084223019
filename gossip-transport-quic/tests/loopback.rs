//! Real endpoints on loopback: datagrams and streams between authenticated
//! nodes, refusals of untrusted and expired certificates, size errors,
//! restarts, session resumption, transfers over a lossy socket, and sealed
//! datagrams (sent sealed, drawing no acknowledgement; duplicates and
//! forgeries counted and never delivered).

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use gossip_core::NodeId;
use gossip_transport_quic::{
    Channel, ClusterCa, Error, Inbox, NodeCredentials, Received, Transport, TransportConfig,
    Validity,
};
#[cfg(feature = "fault-injection")]
use gossip_transport_quic::{FaultConfig, FaultySocket};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn day() -> Validity {
    Validity::for_duration(Duration::from_secs(86_400))
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn bind(ca: &ClusterCa, creds: &NodeCredentials) -> (Transport, Inbox, SocketAddr) {
    let (transport, inbox) =
        Transport::bind(TransportConfig::new(loopback()), creds, &ca.trust()).unwrap();
    let addr = transport.local_addr().unwrap();
    (transport, inbox, addr)
}

async fn next(inbox: &mut Inbox) -> Received {
    timeout(WAIT, inbox.recv())
        .await
        .expect("nothing received in time")
        .expect("inbox closed")
}

#[tokio::test]
async fn datagrams_and_streams_flow_between_three_nodes_tagged_with_the_true_sender() {
    let ca = ClusterCa::generate("three").unwrap();
    let creds: Vec<NodeCredentials> = (0..3)
        .map(|n| ca.issue(&format!("n{n}"), day()).unwrap())
        .collect();
    let mut nodes: Vec<_> = creds.iter().map(|c| bind(&ca, c)).collect();
    for from in 0..3 {
        for to in 0..3 {
            if from == to {
                continue;
            }
            let (addr, expected) = (nodes[to].2, creds[to].node_id());
            let transport = nodes[from].0.clone();
            let id = transport
                .send_datagram(Some(expected), addr, format!("dgram {from}->{to}").into())
                .await
                .unwrap();
            assert_eq!(id, expected);
            transport
                .send_message(
                    Some(expected),
                    addr,
                    format!("stream {from}->{to}").as_bytes(),
                )
                .await
                .unwrap();
        }
    }
    for (to, node) in nodes.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..4 {
            let received = next(&mut node.1).await;
            let from = creds
                .iter()
                .position(|c| c.node_id() == received.from)
                .expect("sender is a known node");
            let kind = if received.channel == Channel::Datagram {
                "dgram"
            } else {
                "stream"
            };
            assert_eq!(
                received.bytes,
                format!("{kind} {from}->{to}").as_bytes(),
                "the tag matches the true sender"
            );
            got.push((from, received.channel));
        }
        assert_eq!(got.len(), 4);
    }
    // One handshake per pair that spoke: the second message reused the connection.
    let handshakes: u64 = nodes.iter().map(|n| n.0.stats().handshakes).sum();
    assert!(
        handshakes <= 12,
        "{handshakes} handshakes for 6 directed pairs"
    );
    // The screen of received datagrams passed every genuine one.
    for (transport, _, _) in &nodes {
        assert_eq!(
            transport.stats().datagrams_rejected(),
            0,
            "{:?}",
            transport.stats()
        );
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_never_heard() {
    let ca = ClusterCa::generate("ours").unwrap();
    let other = ClusterCa::generate("theirs").unwrap();
    let (server, mut inbox, addr) = bind(&ca, &ca.issue("server", day()).unwrap());
    let intruder_creds = other.issue("intruder", day()).unwrap();
    // The intruder trusts our CA, so only our side can refuse it.
    let mut trust_pem = ca.cert_pem().to_string();
    trust_pem.push_str(other.cert_pem());
    let trust = gossip_transport_quic::TrustBundle::from_pem(&trust_pem).unwrap();
    let (intruder, _, _) =
        Transport::bind(TransportConfig::new(loopback()), &intruder_creds, &trust)
            .map(|(t, r)| (t, r, ()))
            .unwrap();
    // In TLS 1.3 the client finishes its side of the handshake before the
    // server judges its certificate, so the dial may appear to succeed; the
    // server refuses and closes, and its application never hears a word.
    for _ in 0..2 {
        let _ = intruder.send_datagram(None, addr, "let me in".into()).await;
        let _ = intruder.send_message(None, addr, b"let me in").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        inbox.try_recv().is_err(),
        "the application heard from an untrusted peer"
    );
    assert!(server.stats().refused >= 1, "{:?}", server.stats());
    assert_eq!(server.stats().live_connections, 0);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = ClusterCa::generate("expiry").unwrap();
    let (server, mut inbox, addr) = bind(&ca, &ca.issue("server", day()).unwrap());
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let expired = ca
        .issue(
            "expired",
            Validity {
                not_before: long_ago,
                not_after: long_ago + Duration::from_secs(3600),
            },
        )
        .unwrap();
    let (client, _, _) = bind(&ca, &expired);
    let _ = client.send_datagram(None, addr, "stale".into()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(inbox.try_recv().is_err());
    assert!(server.stats().refused >= 1);
}

#[tokio::test]
async fn an_oversized_datagram_is_an_error_the_caller_sees() {
    let ca = ClusterCa::generate("size").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, _, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (_b, mut inbox, b_addr) = bind(&ca, &b_creds);
    a.send_datagram(Some(b_creds.node_id()), b_addr, "small".into())
        .await
        .unwrap();
    next(&mut inbox).await;
    let max = a.max_datagram_size(&b_creds.node_id()).unwrap();
    assert!(max >= 1000, "usable datagram size {max}");
    let big = vec![0u8; max + 1];
    match a
        .send_datagram(Some(b_creds.node_id()), b_addr, big.clone().into())
        .await
    {
        Err(Error::DatagramTooLarge { len, max: limit }) => {
            assert_eq!((len, limit), (max + 1, max))
        }
        other => panic!("expected DatagramTooLarge, got {other:?}"),
    }
    assert_eq!(a.stats().oversize, 1);
    // The same bytes go through as a stream message.
    a.send_message(Some(b_creds.node_id()), b_addr, &big)
        .await
        .unwrap();
    assert_eq!(next(&mut inbox).await.bytes.len(), max + 1);
}

#[test]
fn a_restarted_peer_is_reached_again() {
    let ca = ClusterCa::generate("restart").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let a_runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, _a_inbox) = a_runtime
        .block_on(async {
            Transport::bind(
                TransportConfig::new(loopback()),
                &ca.issue("a", day()).unwrap(),
                &ca.trust(),
            )
        })
        .unwrap();

    // B lives in its own runtime, so dropping the runtime kills it without a
    // goodbye, as a crash would.
    let b_runtime = tokio::runtime::Runtime::new().unwrap();
    let (b, mut b_inbox) = b_runtime
        .block_on(async {
            Transport::bind(TransportConfig::new(loopback()), &b_creds, &ca.trust())
        })
        .unwrap();
    let b_addr = b.local_addr().unwrap();
    let mut link = a_runtime.block_on(async {
        a.send_datagram(Some(b_creds.node_id()), b_addr, "before".into())
            .await
            .unwrap();
        a.link(b_creds.node_id(), b_addr).await.unwrap()
    });
    b_runtime.block_on(async { assert_eq!(next(&mut b_inbox).await.bytes, "before") });
    // The runtime goes first: dropping the last handle would close the
    // endpoint and tell A, where a crash tells nobody.
    b_runtime.shutdown_timeout(Duration::from_secs(2));
    drop(b);
    drop(b_inbox);

    let b_runtime = tokio::runtime::Runtime::new().unwrap();
    let mut config = TransportConfig::new(b_addr);
    config.bind = b_addr;
    let (_b2, mut b2_inbox) = b_runtime
        .block_on(async { Transport::bind(config, &b_creds, &ca.trust()) })
        .unwrap();
    let reached = a_runtime.block_on(async {
        // Keep sending until the new B hears one: the old connection is reset
        // by the restarted node and the next send redials.
        for _ in 0..50 {
            let _ = a
                .send_datagram(Some(b_creds.node_id()), b_addr, "after".into())
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _guard = b_runtime.enter();
            if let Ok(received) = b2_inbox.try_recv() {
                return Some(received);
            }
        }
        None
    });
    let received =
        reached.unwrap_or_else(|| panic!("the restarted peer was never reached: {:?}", a.stats()));
    assert_eq!(received.bytes, "after");
    assert_eq!(received.from, a.local_id());

    // A link made before the restart still holds the old connection: the
    // send that finds it lost says so, and a later one reaches the new B.
    let (lost, reached) = a_runtime.block_on(async {
        let mut lost = 0;
        for _ in 0..50 {
            if let Err(e) = link.send_datagram("by link".into()).await {
                assert!(matches!(e, Error::ConnectionLost { .. }), "{e}");
                lost += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _guard = b_runtime.enter();
            while let Ok(received) = b2_inbox.try_recv() {
                if received.bytes == "by link" {
                    return (lost, true);
                }
            }
        }
        (lost, false)
    });
    assert!(
        reached,
        "the link never reached the restarted peer: {:?} {:?}",
        a.stats(),
        _b2.stats()
    );
    assert!(
        lost <= 1,
        "only the first send finds the old connection lost"
    );
    assert_eq!(link.peer(), b_creds.node_id());
}

#[tokio::test]
async fn dropping_every_handle_closes_the_transport_and_tells_the_peer() {
    let ca = ClusterCa::generate("drop").unwrap();
    let a_creds = ca.issue("a", day()).unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, mut a_inbox, _) = bind(&ca, &a_creds);
    let (b, mut b_inbox, b_addr) = bind(&ca, &b_creds);
    let mut link = a.link(b_creds.node_id(), b_addr).await.unwrap();
    a.send_message(Some(b_creds.node_id()), b_addr, b"hello")
        .await
        .unwrap();
    assert_eq!(next(&mut b_inbox).await.bytes, "hello");
    assert_eq!(b.connected_peers(), [a_creds.node_id()]);

    // A link is a handle too: the transport stays open while one lives.
    drop(a);
    link.send_datagram("still open".into()).await.unwrap();
    assert_eq!(next(&mut b_inbox).await.bytes, "still open");
    drop(link);

    // A's inbox ends: nothing of A's outlives its handles.
    let ended = timeout(WAIT, a_inbox.recv())
        .await
        .expect("A's inbox never ended");
    assert!(ended.is_none(), "A's inbox handed out {ended:?}");
    // B hears the close at once (no idle timeout), and forgets A.
    timeout(WAIT, async {
        while !b.connected_peers().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("B still holds A's connection: {:?}", b.stats()));
}

/// Sends one datagram from `a` to `b` (dialling if need be) and waits for it.
async fn round_trip(
    a: &Transport,
    b: &NodeCredentials,
    b_addr: SocketAddr,
    b_inbox: &mut Inbox,
    round: u32,
) {
    a.send_datagram(Some(b.node_id()), b_addr, format!("round {round}").into())
        .await
        .unwrap();
    next(b_inbox).await;
}

#[tokio::test]
async fn udp_totals_only_grow_when_connections_close_and_are_replaced() {
    let ca = ClusterCa::generate("totals").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, _, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (_b, mut inbox, b_addr) = bind(&ca, &b_creds);
    let mut last = a.stats();
    for round in 0..3 {
        round_trip(&a, &b_creds, b_addr, &mut inbox, round).await;
        let sent = a.stats();
        assert!(
            sent.udp_bytes_sent > last.udp_bytes_sent
                && sent.udp_datagrams_sent > last.udp_datagrams_sent
                && sent.udp_bytes_received > last.udp_bytes_received,
            "round {round}: a new connection's traffic adds to the totals: {last:?} -> {sent:?}"
        );
        // Closed by us: its traffic stays counted.
        a.disconnect(&b_creds.node_id());
        let closed = a.stats();
        assert!(
            closed.udp_bytes_sent >= sent.udp_bytes_sent
                && closed.udp_datagrams_sent >= sent.udp_datagrams_sent
                && closed.udp_bytes_received >= sent.udp_bytes_received
                && closed.udp_datagrams_received >= sent.udp_datagrams_received,
            "round {round}: a closed connection's traffic stays in the totals: {sent:?} -> {closed:?}"
        );
        last = closed;
    }
}

#[tokio::test]
async fn redialling_a_peer_resumes_the_tls_session() {
    let ca = ClusterCa::generate("resume").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, _, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (_b, mut inbox, b_addr) = bind(&ca, &b_creds);
    for round in 0..3 {
        round_trip(&a, &b_creds, b_addr, &mut inbox, round).await;
        // Session tickets follow the handshake; a real connection lives
        // long enough to receive them.
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.disconnect(&b_creds.node_id());
    }
    let stats = a.stats();
    assert_eq!(stats.handshakes, 3);
    assert!(stats.resumptions >= 1, "{stats:?}");
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_stream_transfer_completes_under_twenty_percent_loss() {
    let ca = ClusterCa::generate("lossy").unwrap();
    let (a_creds, b_creds) = (ca.issue("a", day()).unwrap(), ca.issue("b", day()).unwrap());
    let mut faults = FaultConfig::new(7);
    faults.loss = 0.2;
    let (socket, handle) = FaultySocket::bind(loopback(), faults.clone()).unwrap();
    let (a, _a_inbox) = Transport::bind_with_socket(
        TransportConfig::new(loopback()),
        &a_creds,
        &ca.trust(),
        socket,
    )
    .unwrap();
    let (socket, _b_handle) = FaultySocket::bind(loopback(), faults).unwrap();
    let b_addr = socket.local_addr().unwrap();
    let (b, mut inbox) =
        Transport::bind_with_socket(TransportConfig::new(b_addr), &b_creds, &ca.trust(), socket)
            .unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = false;
    for _ in 0..5 {
        // The handshake itself may need retries at 20% loss.
        if timeout(
            Duration::from_secs(20),
            a.send_message(Some(b_creds.node_id()), b_addr, &payload),
        )
        .await
        .is_ok_and(|r| r.is_ok())
        {
            sent = true;
            break;
        }
    }
    assert!(sent, "could not send under loss");
    let received = timeout(Duration::from_secs(60), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.bytes.as_ref(), &payload[..]);
    assert_eq!(received.from, a.local_id());
    assert!(
        handle.dropped() > 10,
        "the fault socket dropped only {}",
        handle.dropped()
    );
    for transport in [&a, &b] {
        assert_eq!(
            transport.stats().datagrams_rejected(),
            0,
            "{:?}",
            transport.stats()
        );
    }
}

#[tokio::test]
async fn reloaded_credentials_are_used_for_new_connections() {
    let ca = ClusterCa::generate("reload").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, _, _) = bind(&ca, &ca.issue("a-old", day()).unwrap());
    let (_b, mut inbox, b_addr) = bind(&ca, &b_creds);
    a.send_datagram(Some(b_creds.node_id()), b_addr, "old".into())
        .await
        .unwrap();
    let old_id: NodeId = next(&mut inbox).await.from;
    let renewed = ca.issue("a-new", day()).unwrap();
    a.reload(&renewed, &ca.trust()).unwrap();
    a.disconnect(&b_creds.node_id());
    a.send_datagram(Some(b_creds.node_id()), b_addr, "new".into())
        .await
        .unwrap();
    let received = next(&mut inbox).await;
    assert_eq!(received.from, renewed.node_id());
    assert_ne!(received.from, old_id);
}

#[tokio::test]
async fn concurrent_sends_to_a_new_peer_share_one_handshake() {
    let ca = ClusterCa::generate("coalesce").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, _, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (_b, mut inbox, b_addr) = bind(&ca, &b_creds);
    let sends: Vec<_> = (0..16)
        .map(|n| {
            let a = a.clone();
            let peer = b_creds.node_id();
            tokio::spawn(async move {
                a.send_datagram(Some(peer), b_addr, format!("{n}").into())
                    .await
            })
        })
        .collect();
    for send in sends {
        send.await.unwrap().unwrap();
    }
    for _ in 0..16 {
        next(&mut inbox).await;
    }
    assert_eq!(a.stats().handshakes, 1, "{:?}", a.stats());
}

/// Two endpoints holding one node's key, at two addresses: whichever dialled
/// this node last, a send to the node at an address reaches that address,
/// and `check_identity` tells which addresses answer as the node.
#[tokio::test]
async fn a_send_to_a_node_at_an_address_never_reaches_its_key_elsewhere() {
    let ca = ClusterCa::generate("twice").unwrap();
    let twin_creds = ca.issue("twin", day()).unwrap();
    let twin = twin_creds.node_id();
    let (a, mut a_inbox, a_addr) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (first, mut first_inbox, first_addr) = bind(&ca, &twin_creds);
    let (second, mut second_inbox, second_addr) = bind(&ca, &twin_creds);

    a.send_datagram(Some(twin), first_addr, "to the first".into())
        .await
        .unwrap();
    assert_eq!(&next(&mut first_inbox).await.bytes[..], b"to the first");
    // The second process dials `a`, as a copy of the first would.
    second
        .send_datagram(None, a_addr, "from the second".into())
        .await
        .unwrap();
    let heard = next(&mut a_inbox).await;
    assert_eq!((heard.from, heard.addr), (twin, second_addr));
    // Sends to the first still reach the first, and answers to the second
    // the second.
    a.send_datagram(Some(twin), first_addr, "still the first".into())
        .await
        .unwrap();
    a.send_message(Some(twin), second_addr, b"to the second")
        .await
        .unwrap();
    assert_eq!(&next(&mut first_inbox).await.bytes[..], b"still the first");
    assert_eq!(&next(&mut second_inbox).await.bytes[..], b"to the second");

    // Either process finds the other holding its key; nothing answers as it
    // at an address where nothing runs.
    first.check_identity(twin, second_addr).await.unwrap();
    second.check_identity(twin, first_addr).await.unwrap();
    let nothing = std::net::UdpSocket::bind(loopback()).unwrap();
    let nothing_addr = nothing.local_addr().unwrap();
    drop(nothing);
    let checked = timeout(
        Duration::from_secs(3),
        first.check_identity(twin, nothing_addr),
    )
    .await;
    assert!(!matches!(checked, Ok(Ok(()))), "{checked:?}");
    // And `a` is no one's twin: it fails the handshake.
    let err = first.check_identity(twin, a_addr).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn a_revoked_node_loses_its_connections_and_is_refused_both_ways() {
    let ca = ClusterCa::generate("revoke").unwrap();
    let (a_creds, b_creds) = (ca.issue("a", day()).unwrap(), ca.issue("b", day()).unwrap());
    let (a, mut a_inbox, a_addr) = bind(&ca, &a_creds);
    let (b, _b_inbox, b_addr) = bind(&ca, &b_creds);
    b.send_datagram(Some(a_creds.node_id()), a_addr, "before".into())
        .await
        .unwrap();
    assert_eq!(next(&mut a_inbox).await.from, b_creds.node_id());

    // a revokes b: the connection b holds closes, and neither side can
    // make a new one.
    let revoked = ca.trust().with_revoked([b_creds.node_id()]);
    a.reload(&a_creds, &revoked).unwrap();
    assert!(a.connected_peers().is_empty());
    for _ in 0..2 {
        let _ = b
            .send_datagram(Some(a_creds.node_id()), a_addr, "after".into())
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        a_inbox.try_recv().is_err(),
        "the application heard from a revoked node"
    );
    let dial = a
        .send_datagram(Some(b_creds.node_id()), b_addr, "to b".into())
        .await;
    assert!(dial.is_err(), "a dialled a node it revoked");
    assert!(a.stats().refused >= 1, "{:?}", a.stats());
}

/// A peer whose process is gone (its socket closed without a word, as a
/// killed process leaves it) is reported unreachable by the ICMP port
/// unreachable its host answers with; a peer that is merely silent (its
/// socket open, nothing answered) is not.
#[cfg(all(feature = "fault-injection", target_os = "linux"))]
#[tokio::test]
async fn a_closed_port_is_reported_unreachable_and_a_silent_one_is_not() {
    let ca = ClusterCa::generate("unreachable").unwrap();
    let creds: Vec<NodeCredentials> = (0..3)
        .map(|n| ca.issue(&format!("n{n}"), day()).unwrap())
        .collect();
    let (a, mut a_inbox) =
        Transport::bind(TransportConfig::new(loopback()), &creds[0], &ca.trust()).unwrap();
    let mut reports = a_inbox
        .take_unreachable()
        .expect("a bound socket's errors are read");
    let mut peers = Vec::new();
    for creds in &creds[1..] {
        let (peer, inbox, faults) = Transport::bind_with_faults(
            TransportConfig::new(loopback()),
            creds,
            &ca.trust(),
            FaultConfig::new(1),
        )
        .unwrap();
        let addr = peer.local_addr().unwrap();
        a.send_datagram(Some(creds.node_id()), addr, "hello".into())
            .await
            .unwrap();
        peers.push((peer, inbox, faults, addr));
    }
    // Both fall silent; the first also closes its socket, unheard.
    let mut silent = FaultConfig::new(2);
    silent.loss = 1.0;
    for (_, _, faults, _) in &peers {
        faults.set(silent.clone());
    }
    let (crashed, silent_peer) = (peers.remove(0), peers.remove(0));
    let crashed_addr = crashed.3;
    drop(crashed);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut found = None;
    while found.is_none() && tokio::time::Instant::now() < deadline {
        for (creds, addr) in [(&creds[1], crashed_addr), (&creds[2], silent_peer.3)] {
            let _ = a
                .send_datagram(Some(creds.node_id()), addr, "ping".into())
                .await;
        }
        if let Ok(Some(report)) = timeout(Duration::from_millis(100), reports.recv()).await {
            found = Some(report);
        }
    }
    let report = found.expect("no unreachable report for the closed port");
    assert_eq!(report.addr, crashed_addr);
    assert_eq!(report.kind, gossip_transport_quic::UnreachableKind::Port);
    while let Ok(Some(report)) = timeout(Duration::from_millis(300), reports.recv()).await {
        assert_eq!(report.addr, crashed_addr, "the silent peer reported");
    }
    let stats = a.stats();
    assert!(stats.unreachable_reported >= 1, "{stats:?}");
    assert_eq!(stats.unreachable_unmatched, 0, "{stats:?}");
}

/// An ICMP port unreachable forged by someone who has not seen our traffic
/// (here a raw socket on the same host, as root) names a live peer's
/// address but cannot quote a datagram we sent there: it is counted as
/// unmatched and reported to no one.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_forged_icmp_unreachable_quoting_nothing_we_sent_is_ignored_and_counted() {
    let raw = match socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV4),
    ) {
        Ok(raw) => raw,
        Err(err) => {
            eprintln!("skipped: forging ICMP needs a raw socket (root or CAP_NET_RAW): {err}");
            return;
        }
    };
    let ca = ClusterCa::generate("forged-icmp").unwrap();
    let (a_creds, b_creds) = (ca.issue("a", day()).unwrap(), ca.issue("b", day()).unwrap());
    let (a, mut a_inbox, a_addr) = bind(&ca, &a_creds);
    let (_b, _b_inbox, b_addr) = bind(&ca, &b_creds);
    let mut reports = a_inbox.take_unreachable().expect("errors are read");
    a.send_datagram(Some(b_creds.node_id()), b_addr, "hello".into())
        .await
        .unwrap();
    raw.send_to(
        &forged_port_unreachable(a_addr, b_addr, &[0x5a; 16]),
        &SocketAddr::from(([127, 0, 0, 1], 0)).into(),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.stats().unreachable_unmatched == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = a.stats();
    assert_eq!(stats.unreachable_unmatched, 1, "{stats:?}");
    assert_eq!(stats.unreachable_reported, 0, "{stats:?}");
    assert!(
        timeout(Duration::from_millis(200), reports.recv())
            .await
            .is_err(),
        "a forged error was reported"
    );
    // The connection to the live peer is untouched.
    a.send_datagram(Some(b_creds.node_id()), b_addr, "still here".into())
        .await
        .unwrap();
}

/// An ICMP destination unreachable (port) as `b`'s host would send `a`,
/// quoting a UDP datagram from `a` to `b` whose payload starts with `quoted`.
#[cfg(target_os = "linux")]
fn forged_port_unreachable(a: SocketAddr, b: SocketAddr, quoted: &[u8]) -> Vec<u8> {
    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
    let (SocketAddr::V4(a), SocketAddr::V4(b)) = (a, b) else {
        panic!("IPv4 only");
    };
    let udp_len = 8 + quoted.len() as u16;
    let mut inner = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    inner[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    inner.extend_from_slice(&a.ip().octets());
    inner.extend_from_slice(&b.ip().octets());
    let sum = checksum(&inner);
    inner[10..12].copy_from_slice(&sum.to_be_bytes());
    inner.extend_from_slice(&a.port().to_be_bytes());
    inner.extend_from_slice(&b.port().to_be_bytes());
    inner.extend_from_slice(&udp_len.to_be_bytes());
    inner.extend_from_slice(&[0, 0]);
    inner.extend_from_slice(quoted);
    // Type 3 (destination unreachable), code 3 (port), checksum, unused.
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&inner);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
}

/// Nothing more arrives within a short while.
async fn quiet(inbox: &mut Inbox) -> bool {
    timeout(Duration::from_millis(300), inbox.recv())
        .await
        .is_err()
}

/// B, and a first datagram from `a` to it (which dials, and goes by QUIC).
async fn dialled_by(a: &Transport, ca: &ClusterCa) -> (Transport, Inbox, SocketAddr, NodeId) {
    let b_creds = ca.issue("b", day()).unwrap();
    let (b, mut b_inbox, b_addr) = bind(ca, &b_creds);
    let b_id = b_creds.node_id();
    a.send_datagram(Some(b_id), b_addr, "dial".into())
        .await
        .unwrap();
    next(&mut b_inbox).await;
    (b, b_inbox, b_addr, b_id)
}

#[tokio::test]
async fn small_datagrams_go_sealed_and_draw_no_acknowledgement() {
    let ca = ClusterCa::generate("sealed").unwrap();
    let (a, _a_inbox, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (b, mut b_inbox, b_addr, b_id) = dialled_by(&a, &ca).await;
    // Let the handshake's and path probing's packets settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = a.stats();
    for n in 0..40u32 {
        a.send_datagram(Some(b_id), b_addr, n.to_be_bytes().to_vec().into())
            .await
            .unwrap();
        let received = next(&mut b_inbox).await;
        assert_eq!(received.from, a.local_id(), "tagged with the true sender");
        assert_eq!(received.bytes[..], n.to_be_bytes());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let after = a.stats();
    assert_eq!(after.sealed_sent - before.sealed_sent, 40, "{after:?}");
    assert_eq!(b.stats().sealed_received, 40, "{:?}", b.stats());
    // QUIC datagrams 30 ms apart would each draw an ACK-only packet (its
    // delay is 25 ms); sealed ones draw none.
    let acknowledgements = after.udp_datagrams_received - before.udp_datagrams_received;
    assert!(
        acknowledgements <= 4,
        "{acknowledgements} packets came back for 40 sealed datagrams"
    );
    assert_eq!(after.udp_datagrams_sent - before.udp_datagrams_sent, 40);
}

#[tokio::test]
async fn a_message_left_waiting_in_the_inbox_carries_when_it_arrived() {
    let ca = ClusterCa::generate("arrival").unwrap();
    let (a, _a_inbox, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (b, mut b_inbox, b_addr, b_id) = dialled_by(&a, &ca).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.send_datagram(Some(b_id), b_addr, "sealed".into())
        .await
        .unwrap();
    a.send_message(Some(b_id), b_addr, b"stream").await.unwrap();
    // B's reader is busy for a second: both wait in its inbox, stamped with
    // when they came off the wire, not with when they are read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    #[allow(
        clippy::disallowed_methods,
        reason = "the stamps are the transport's clock readings"
    )]
    let reading = std::time::Instant::now();
    for _ in 0..2 {
        let received = next(&mut b_inbox).await;
        assert!(
            received.arrived < reading,
            "a {:?} message is stamped with when it was read",
            received.channel
        );
    }
    assert_eq!(b.stats().sealed_received, 1, "{:?}", b.stats());
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_duplicated_sealed_datagram_is_delivered_once_and_the_replay_counted() {
    let ca = ClusterCa::generate("replay").unwrap();
    let mut faults = FaultConfig::new(7);
    faults.duplicate = 1.0;
    let (a, _a_inbox, _handle) = Transport::bind_with_faults(
        TransportConfig::new(loopback()),
        &ca.issue("a", day()).unwrap(),
        &ca.trust(),
        faults,
    )
    .unwrap();
    let (b, mut b_inbox, b_addr, b_id) = dialled_by(&a, &ca).await;
    let replayed_before = b.stats().sealed_replayed;
    for n in 0..20u8 {
        a.send_datagram(Some(b_id), b_addr, vec![n].into())
            .await
            .unwrap();
        assert_eq!(next(&mut b_inbox).await.bytes[..], [n]);
    }
    assert!(quiet(&mut b_inbox).await, "a duplicate was delivered");
    let stats = b.stats();
    assert_eq!(stats.sealed_received, 20, "{stats:?}");
    assert_eq!(stats.sealed_replayed - replayed_before, 20, "{stats:?}");
}

#[tokio::test]
async fn forged_sealed_packets_are_counted_answered_with_a_notice_and_never_delivered() {
    let ca = ClusterCa::generate("forged").unwrap();
    let (a, _a_inbox, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (b, mut b_inbox, b_addr, b_id) = dialled_by(&a, &ca).await;

    // An attacker without the connection's keys: sealed-looking packets
    // under made-up key ids, a short one, and one of another first byte.
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut forged = vec![0x01, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1];
    forged.extend_from_slice(&[0x55; 40]);
    for n in 0..10u8 {
        forged[4] = n;
        attacker.send_to(&forged, b_addr).await.unwrap();
    }
    attacker.send_to(&[0x01, 1, 2], b_addr).await.unwrap();
    attacker.send_to(&[0x3f; 60], b_addr).await.unwrap();
    // Packets under unknown key ids wait a moment for a connection to
    // register them, then are given up as the next packet arrives, and the
    // notices go to the attacker's address, naming its own key ids.
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.send_datagram(Some(b_id), b_addr, "after".into())
        .await
        .unwrap();
    assert_eq!(next(&mut b_inbox).await.bytes, "after");
    let mut notice = [0u8; 16];
    let (len, _) = timeout(WAIT, attacker.recv_from(&mut notice))
        .await
        .expect("a notice came back")
        .unwrap();
    assert_eq!(len, 5, "a notice is a byte and a key id");
    assert_eq!(notice[..4], [0x02, 0xde, 0xad, 0xbe]);

    assert!(quiet(&mut b_inbox).await, "a forgery was delivered");
    let stats = b.stats();
    assert_eq!(stats.sealed_rejected, 10, "{stats:?}");
    assert_eq!(stats.stale_notices_sent, 10, "{stats:?}");
    assert_eq!(stats.datagrams_malformed, 1, "the cut-short one: {stats:?}");
    assert_eq!(stats.datagrams_rejected(), 12, "and the other: {stats:?}");
    // A's datagrams went sealed throughout and arrived.
    assert!(a.stats().sealed_sent >= 1);
    assert_eq!(a.stats().stale_notices_received, 0);
}

/// What one connection costs on the wire, both ends' UDP bytes and
/// datagrams, from the dial to a second after one datagram went through
/// (path MTU probes start once the handshake completes).
async fn connection_cost(discover_path_mtu: bool) -> (u64, u64) {
    let ca = ClusterCa::generate("mtu").unwrap();
    let (a_creds, b_creds) = (ca.issue("a", day()).unwrap(), ca.issue("b", day()).unwrap());
    let config = || {
        let mut config = TransportConfig::new(loopback());
        config.discover_path_mtu = discover_path_mtu;
        config
    };
    let (a, _a_inbox) = Transport::bind(config(), &a_creds, &ca.trust()).unwrap();
    let (b, mut b_inbox) = Transport::bind(config(), &b_creds, &ca.trust()).unwrap();
    let b_addr = b.local_addr().unwrap();
    round_trip(&a, &b_creds, b_addr, &mut b_inbox, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sa, sb) = (a.stats(), b.stats());
    (
        sa.udp_bytes_sent + sb.udp_bytes_sent,
        sa.udp_datagrams_sent + sb.udp_datagrams_sent,
    )
}

#[tokio::test]
async fn without_path_mtu_discovery_a_connection_costs_less_than_half_the_bytes() {
    let (plain_bytes, plain_packets) = connection_cost(false).await;
    let (probing_bytes, probing_packets) = connection_cost(true).await;
    eprintln!(
        "connection cost: {plain_bytes} B in {plain_packets} datagrams without path MTU discovery, {probing_bytes} B in {probing_packets} with it"
    );
    assert!(
        plain_bytes * 2 < probing_bytes,
        "{plain_bytes} B without discovery against {probing_bytes} B with it"
    );
}

#[tokio::test]
async fn a_burst_of_datagrams_goes_mostly_by_quic_and_all_arrive() {
    let ca = ClusterCa::generate("burst").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, _a_inbox, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (_b, mut b_inbox, b_addr) = bind(&ca, &b_creds);
    // Connected, and sealing: one datagram first.
    round_trip(&a, &b_creds, b_addr, &mut b_inbox, 0).await;
    for n in 0..500u32 {
        a.send_datagram_wait(
            Some(b_creds.node_id()),
            b_addr,
            n.to_be_bytes().to_vec().into(),
        )
        .await
        .unwrap();
    }
    for _ in 0..500 {
        next(&mut b_inbox).await;
    }
    let sealed = a.stats().sealed_sent;
    // At most 64 sealed in each 100 ms slot the burst touched.
    assert!(
        sealed <= 1 + 64 * 3,
        "{sealed} of 501 datagrams went sealed"
    );
}
