//! Hostile input against a running node: bytes from an authenticated peer
//! (a holder of a cluster certificate that is not a member) and from
//! unauthenticated ones. Every case must be refused with a typed error and a
//! counter, nothing may panic, and the victim's membership and key/value
//! state must be byte-identical before and after.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::attack::{LIMIT, frame, metrics, record, refused, setup};
use common::{eventually, validity};
use gossip_core::{ClusterId, Incarnation, MemberStatus, NodeId, Refusal, Rumor, WIRE_VERSION};
use gossip_node::stream;
use gossip_swim::{Message, TargetTag};
use gossip_transport_quic::{
    ClusterCa, Error as TransportError, NodeCredentials, Transport, TransportConfig, Validity,
    frame_header, quinn_configs,
};

/// Deterministic filler bytes (blake3's output stream of `seed`).
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// A quinn client endpoint speaking the cluster's TLS with `credentials`,
/// for the cases our own transport would never send.
fn raw_client(credentials: &NodeCredentials, ca: &ClusterCa) -> quinn::Endpoint {
    let config = TransportConfig::new("127.0.0.1:0".parse().expect("addr"));
    let (_, client) = quinn_configs(&config, credentials, &ca.trust()).expect("configs");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(client);
    endpoint
}

/// A quinn client endpoint with a valid certificate that offers another
/// protocol version (ALPN `alpn`) in its handshake.
fn client_speaking(alpn: &[u8], credentials: &NodeCredentials, ca: &ClusterCa) -> quinn::Endpoint {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_pem, key_pem) = credentials.to_pem();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(ca_cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

async fn raw_connect(endpoint: &quinn::Endpoint, to: SocketAddr) -> Option<quinn::Connection> {
    endpoint
        .connect(to, gossip_transport_quic::SERVER_NAME)
        .ok()?
        .await
        .ok()
}

/// Sends `bytes` raw on a new stream and finishes it.
async fn raw_stream(conn: &quinn::Connection, bytes: &[u8]) {
    let mut stream = conn.open_uni().await.expect("stream opens");
    stream.write_all(bytes).await.expect("stream write");
    stream.finish().expect("stream finishes");
    let _ = stream.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_from_an_authenticated_peer_is_refused_counted_and_changes_nothing() {
    let setup = setup(2).await;
    let (victim, addr, cluster) = (setup.victim_id, setup.victim_addr, setup.cluster_id);
    let witness = setup.cluster.nodes[1].id();
    let attacker = &setup.attacker;
    let datagram = |bytes: Vec<u8>| async move {
        attacker
            .send_datagram(Some(victim), addr, bytes.into())
            .await
            .expect("an authenticated peer can send");
    };
    let message = |bytes: Vec<u8>| async move {
        attacker
            .send_message(Some(victim), addr, &bytes)
            .await
            .expect("an authenticated peer can send");
    };
    let ping = Message::Ping {
        seq: 1,
        target: TargetTag::of(&victim, addr),
        suspicion: None,
        state_digest: None,
    };

    refused(
        &setup,
        "random bytes as a datagram",
        datagram(noise("random datagram", 700)),
        |b, a| a.swim.decode_errors > b.swim.decode_errors,
    )
    .await;
    refused(
        &setup,
        "random bytes as a stream message",
        message([&[9u8][..], &noise("random stream", 5000)].concat()),
        |b, a| a.driver.stream_decode_errors > b.driver.stream_decode_errors,
    )
    .await;
    let whole = frame(cluster, WIRE_VERSION, &ping, Vec::new());
    refused(
        &setup,
        "a truncated frame",
        datagram(whole[..whole.len() - 3].to_vec()),
        |b, a| a.swim.decode_errors > b.swim.decode_errors,
    )
    .await;
    refused(
        &setup,
        "an oversized SWIM frame (on a stream)",
        message(stream::encode_swim(
            &[&whole[..], &noise("padding", 200_000)[..]].concat(),
        )),
        |b, a| a.swim.oversized > b.swim.oversized,
    )
    .await;
    refused(
        &setup,
        "a foreign cluster id",
        datagram(frame(
            ClusterId::from_name("elsewhere"),
            WIRE_VERSION,
            &ping,
            Vec::new(),
        )),
        |b, a| a.swim.foreign_cluster > b.swim.foreign_cluster,
    )
    .await;
    refused(
        &setup,
        "an unknown wire version",
        datagram(frame(cluster, 99, &ping, Vec::new())),
        |b, a| a.swim.bad_version > b.swim.bad_version,
    )
    .await;
    // Frames name no sender: the only identity is the certificate's. What
    // is left to claim is another node's place: a probe meant for another
    // node, and claims only their subjects may make (which carry their
    // subjects' signatures; `tests/hostile.rs` tries every forgery).
    refused(
        &setup,
        "a probe addressed to another node",
        datagram(frame(
            cluster,
            WIRE_VERSION,
            &Message::Ping {
                seq: 2,
                target: TargetTag::of(&witness, setup.cluster.nodes[1].addr()),
                suspicion: None,
                state_digest: None,
            },
            Vec::new(),
        )),
        |b, a| a.swim.misdirected > b.swim.misdirected,
    )
    .await;
    let members = setup.cluster.nodes[0].members();
    let known = |id: NodeId| {
        members
            .iter()
            .find(|m| m.id == id)
            .expect("known member")
            .incarnation
            .get()
    };
    // Claims only a node itself may make (a new incarnation, a leave),
    // unsigned.
    refused(
        &setup,
        "unsigned claims only their subjects may make",
        datagram(frame(
            cluster,
            WIRE_VERSION,
            &Message::Gossip { state_digest: None },
            vec![
                Rumor::Member {
                    member: record(victim, known(victim), MemberStatus::Left),
                },
                Rumor::Member {
                    member: record(witness, known(witness) + 1, MemberStatus::Alive),
                },
            ],
        )),
        |b, a| a.swim.refused.total() >= b.swim.refused.total() + 2,
    )
    .await;
    refused(
        &setup,
        "accusations at the maximum incarnation",
        datagram(frame(
            cluster,
            WIRE_VERSION,
            &Message::Gossip { state_digest: None },
            vec![
                Rumor::Member {
                    member: record(victim, Incarnation::MAX.get(), MemberStatus::Suspect),
                },
                Rumor::Member {
                    member: record(witness, Incarnation::MAX.get(), MemberStatus::Dead),
                },
            ],
        )),
        |b, a| {
            a.swim.refused.get(Refusal::Implausible) >= b.swim.refused.get(Refusal::Implausible) + 2
        },
    )
    .await;

    // Below the node's framing: the transport's own stream frames.
    let raw = raw_client(&setup.attacker_credentials, &setup.cluster.ca);
    let conn = raw_connect(&raw, addr)
        .await
        .expect("an authenticated peer connects");
    refused(
        &setup,
        "a stream frame cut short",
        async {
            let mut bytes = frame_header(1000, 1 << 20).expect("header").to_vec();
            bytes.extend_from_slice(&noise("cut", 100));
            raw_stream(&conn, &bytes).await;
        },
        |b, a| a.transport.bad_frames > b.transport.bad_frames,
    )
    .await;
    refused(
        &setup,
        "a stream frame header claiming 4 GiB",
        raw_stream(&conn, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        |b, a| a.transport.bad_frames > b.transport.bad_frames,
    )
    .await;
    conn.close(0u32.into(), b"done");
    refused(
        &setup,
        "an unknown protocol version in the handshake (ALPN gossip/99)",
        async {
            let endpoint =
                client_speaking(b"gossip/99", &setup.attacker_credentials, &setup.cluster.ca);
            assert!(raw_connect(&endpoint, addr).await.is_none());
        },
        |b, a| a.transport.refused > b.transport.refused,
    )
    .await;

    // The victim still serves its cluster.
    let witness_node = &setup.cluster.nodes[1];
    witness_node.set("after", "attack").await.expect("set");
    eventually(LIMIT, "the victim still hears its cluster", || async {
        setup.cluster.nodes[0]
            .get(witness, "after")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_are_refused_in_the_handshake_and_change_nothing() {
    let setup = setup(2).await;
    let addr = setup.victim_addr;
    let victim = setup.victim_id;
    let bind = || TransportConfig::new("127.0.0.1:0".parse().expect("addr"));

    let stranger_ca = ClusterCa::generate("another-cluster").expect("CA");
    let foreign = stranger_ca.issue("intruder", validity()).expect("creds");
    refused(
        &setup,
        "a certificate from another CA",
        async {
            let (intruder, _inbox) =
                Transport::bind(bind(), &foreign, &stranger_ca.trust()).expect("binds");
            let sent = intruder
                .send_datagram(None, addr, b"hello"[..].into())
                .await;
            assert!(
                matches!(sent, Err(TransportError::Connect { .. })),
                "{sent:?}"
            );
        },
        |b, a| a.transport.refused > b.transport.refused,
    )
    .await;

    #[allow(
        clippy::disallowed_methods,
        reason = "certificates are dated by the wall clock"
    )]
    let now = SystemTime::now();
    let expired = setup
        .cluster
        .ca
        .issue(
            "expired",
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        )
        .expect("creds");
    refused(
        &setup,
        "an expired certificate",
        async {
            let endpoint = raw_client(&expired, &setup.cluster.ca);
            // In TLS 1.3 the client finishes before the server has checked
            // its certificate: the server's refusal arrives as a close.
            if let Some(conn) = raw_connect(&endpoint, addr).await {
                let closed = tokio::time::timeout(LIMIT, conn.closed()).await;
                assert!(closed.is_ok(), "the server closes the connection");
            }
        },
        |b, a| a.transport.refused > b.transport.refused,
    )
    .await;

    const NOISE: u64 = 50;
    const CUT_SHORT: u64 = 4;
    refused(
        &setup,
        "random bytes, cut-short packets and QUIC v2 on the UDP port, from no one",
        async {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("udp");
            for i in 0..NOISE as usize {
                let bytes = noise(&format!("udp {i}"), 40 + i * 25);
                socket.send_to(&bytes, addr).await.expect("udp send");
            }
            for len in 0..CUT_SHORT as usize {
                let bytes = noise(&format!("short {len}"), len);
                socket.send_to(&bytes, addr).await.expect("udp send");
            }
            // A QUIC version 2 (RFC 9369) Initial, padded to the minimum.
            let mut v2 = vec![0xc0];
            v2.extend_from_slice(&0x6b33_43cf_u32.to_be_bytes());
            v2.resize(1200, 0);
            socket.send_to(&v2, addr).await.expect("udp send");
            tokio::time::sleep(Duration::from_millis(300)).await;
        },
        // Each datagram is screened out and counted under its reason; quinn
        // drops them all (or answers the QUIC v2 one with the versions it
        // speaks) before any state exists, so no handshake or connection
        // comes of them.
        |b, a| {
            let (b, a) = (&b.transport, &a.transport);
            a.datagrams_rejected() == b.datagrams_rejected() + NOISE + CUT_SHORT + 1
                && a.datagrams_malformed == b.datagrams_malformed + CUT_SHORT
                && a.datagrams_unsupported_version > b.datagrams_unsupported_version
                && a.datagrams_unknown_connection_id > b.datagrams_unknown_connection_id
                && a.handshakes == b.handshakes
                && a.live_connections <= b.live_connections
        },
    )
    .await;
    let screened = metrics(&setup.cluster.nodes[0]).await.transport;
    eprintln!(
        "  UDP datagrams rejected: {} malformed, {} of an unsupported QUIC version, {} for an unknown connection id",
        screened.datagrams_malformed,
        screened.datagrams_unsupported_version,
        screened.datagrams_unknown_connection_id
    );

    const FLOOD: u64 = 100;
    refused(
        &setup,
        "a flood of connection attempts with untrusted certificates",
        async {
            let endpoint = raw_client(&foreign, &stranger_ca);
            let endpoint = Arc::new(endpoint);
            let attempts: Vec<_> = (0..FLOOD)
                .map(|_| {
                    let endpoint = endpoint.clone();
                    tokio::spawn(async move { raw_connect(&endpoint, addr).await.is_none() })
                })
                .collect();
            for attempt in attempts {
                assert!(attempt.await.expect("attempt"), "a flooder got in");
            }
        },
        |b, a| a.transport.refused >= b.transport.refused + FLOOD,
    )
    .await;

    // None of it reached the node's protocol layers, and the node still
    // serves its cluster.
    let after = metrics(&setup.cluster.nodes[0]).await;
    assert_eq!(after.swim.decode_errors, 0);
    assert_eq!(after.driver.stream_decode_errors, 0);
    let witness = &setup.cluster.nodes[1];
    witness.set("after", "flood").await.expect("set");
    eventually(LIMIT, "the victim still hears its cluster", || async {
        setup.cluster.nodes[0]
            .get(witness.id(), "after")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    assert!(
        common::sees_alive(&setup.cluster.nodes[1], &[victim, witness.id()]).await,
        "the witness still sees the victim alive"
    );
}
