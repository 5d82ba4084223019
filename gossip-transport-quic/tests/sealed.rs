//! Sealed datagrams through the real transport: small datagrams between
//! connected peers go sealed beside QUIC and draw no acknowledgement;
//! duplicates and forgeries are counted and never delivered.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::net::SocketAddr;
use std::time::Duration;

use gossip_transport_quic::{
    ClusterCa, Inbox, NodeCredentials, Received, Transport, TransportConfig, Validity,
};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn day() -> Validity {
    Validity::for_duration(Duration::from_secs(86_400))
}

fn config() -> TransportConfig {
    TransportConfig::new("127.0.0.1:0".parse().unwrap())
}

fn bind(ca: &ClusterCa, creds: &NodeCredentials) -> (Transport, Inbox, SocketAddr) {
    let (transport, inbox) = Transport::bind(config(), creds, &ca.trust()).unwrap();
    let addr = transport.local_addr().unwrap();
    (transport, inbox, addr)
}

async fn next(inbox: &mut Inbox) -> Received {
    timeout(WAIT, inbox.recv())
        .await
        .expect("nothing received in time")
        .expect("inbox closed")
}

/// Nothing more arrives within a short while.
async fn quiet(inbox: &mut Inbox) -> bool {
    timeout(Duration::from_millis(300), inbox.recv())
        .await
        .is_err()
}

#[tokio::test]
async fn small_datagrams_go_sealed_and_draw_no_acknowledgement() {
    let ca = ClusterCa::generate("sealed").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, _a_inbox, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (b, mut b_inbox, b_addr) = bind(&ca, &b_creds);
    let b_id = b_creds.node_id();
    // The first datagram dials and goes by QUIC; let the handshake's and
    // path probing's packets settle.
    a.send_datagram(Some(b_id), b_addr, "dial".into())
        .await
        .unwrap();
    next(&mut b_inbox).await;
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

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_duplicated_sealed_datagram_is_delivered_once_and_the_replay_counted() {
    use gossip_transport_quic::FaultConfig;
    let ca = ClusterCa::generate("replay").unwrap();
    let b_creds = ca.issue("b", day()).unwrap();
    let mut faults = FaultConfig::new(7);
    faults.duplicate = 1.0;
    let (a, _a_inbox, _handle) = Transport::bind_with_faults(
        config(),
        &ca.issue("a", day()).unwrap(),
        &ca.trust(),
        faults,
    )
    .unwrap();
    let (b, mut b_inbox, b_addr) = bind(&ca, &b_creds);
    let b_id = b_creds.node_id();
    a.send_datagram(Some(b_id), b_addr, "dial".into())
        .await
        .unwrap();
    next(&mut b_inbox).await;
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
    let b_creds = ca.issue("b", day()).unwrap();
    let (a, _a_inbox, _) = bind(&ca, &ca.issue("a", day()).unwrap());
    let (b, mut b_inbox, b_addr) = bind(&ca, &b_creds);
    let b_id = b_creds.node_id();
    a.send_datagram(Some(b_id), b_addr, "dial".into())
        .await
        .unwrap();
    next(&mut b_inbox).await;

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
