//! A hostile peer against a running node: a transport holding a valid
//! certificate of the cluster, which crafts its own frames and sync
//! messages, and the checks that the victim refused, counted, and changed
//! nothing.

use std::net::SocketAddr;
use std::time::Duration;

use gossip_antientropy::{Part, RootDigest, ShortDigest, SyncMessage};
use gossip_core::{
    ClusterId, Delta, Incarnation, Limits, Member, MemberMeta, MemberStatus, NodeId, PackedRumors,
    Rumor, RumorQueue, encode_frame,
};
use gossip_member::Role;
use gossip_node::{Metrics, Node, stream};
use gossip_swim::Message;
use gossip_transport_quic::{NodeCredentials, Transport, TransportConfig};

use super::{Cluster, eventually, validity};

pub(crate) const LIMIT: Duration = Duration::from_secs(20);

/// Everything the victim holds that input could change: its member records
/// and every owner's keys, serialized.
pub(crate) async fn state_bytes(node: &Node) -> Vec<u8> {
    let mut members = node.members().to_vec();
    members.sort_by_key(|m| m.id);
    let mut out = serde_json::to_vec(&members).expect("members serialize");
    for member in &members {
        for (key, value) in node.keys(member.id).await.expect("keys") {
            out.extend_from_slice(key.as_str().as_bytes());
            out.push(0);
            out.extend_from_slice(&value);
            out.push(0);
        }
    }
    out
}

pub(crate) async fn metrics(node: &Node) -> Metrics {
    node.metrics().await.expect("metrics")
}

/// A SWIM frame for `cluster` with `body` and `rumors`, as a member would
/// send it (`version` is the wire version byte).
pub(crate) fn frame(
    cluster: ClusterId,
    version: u8,
    body: &Message,
    rumors: Vec<Rumor>,
) -> Vec<u8> {
    let limits = Limits::default();
    let mut queue = RumorQueue::new(4, limits.clone());
    for rumor in rumors {
        queue.push(rumor).expect("rumor queues");
    }
    let packed = queue.pack(60_000, 8);
    let mut out = Vec::new();
    encode_frame(cluster, body, &packed, &limits, &mut out).expect("frame encodes");
    out[0] = version;
    out
}

pub(crate) fn record(id: NodeId, incarnation: u64, status: MemberStatus) -> Member {
    let mut member = Member::new(id, MemberMeta::new("forged", [])).with_status(status);
    member.incarnation = Incarnation::new(incarnation);
    member
}

/// A converged cluster of `nodes` nodes with a key on each (node 0 is the
/// victim), and an authenticated outsider: a transport with a certificate
/// from the cluster's CA, which is not in the membership (answering no
/// probes, it would be found dead, and the victim's state would change
/// under the test).
pub(crate) struct Setup {
    pub(crate) cluster: Cluster,
    pub(crate) victim_addr: SocketAddr,
    pub(crate) victim_id: NodeId,
    pub(crate) attacker: Transport,
    pub(crate) attacker_credentials: NodeCredentials,
    pub(crate) cluster_id: ClusterId,
}

pub(crate) async fn setup(nodes: usize) -> Setup {
    let (cluster, ids) = Cluster::converged(nodes, None).await;
    for (n, node) in cluster.nodes.iter().enumerate() {
        let role = ["victim", "witness", "third"]
            .get(n)
            .copied()
            .unwrap_or("member");
        node.set("role", role).await.expect("set");
    }
    for node in &cluster.nodes {
        for owner in &cluster.nodes {
            eventually(LIMIT, "the keys spread", || async {
                node.get(owner.id(), "role").await.ok().flatten().is_some()
            })
            .await;
        }
    }
    let attacker_credentials = cluster.ca.issue("outsider", validity()).expect("creds");
    let (attacker, _inbox) = Transport::bind(
        TransportConfig::new("127.0.0.1:0".parse().expect("addr")),
        &attacker_credentials,
        &cluster.ca.trust(),
    )
    .expect("attacker binds");
    // The inbox is dropped: the victim's answers are of no interest.
    let cluster_id = ClusterId::from_name(super::CLUSTER);
    Setup {
        victim_addr: cluster.nodes[0].addr(),
        victim_id: ids[0],
        cluster,
        attacker,
        attacker_credentials,
        cluster_id,
    }
}

/// Runs `attack`, then waits until `counted` says the victim counted it,
/// and checks the victim's state did not change.
pub(crate) async fn refused<A, F>(setup: &Setup, what: &str, attack: A, counted: F)
where
    A: std::future::Future<Output = ()>,
    F: Fn(&Metrics, &Metrics) -> bool,
{
    let victim = &setup.cluster.nodes[0];
    let before_state = state_bytes(victim).await;
    let before = metrics(victim).await;
    attack.await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let after = metrics(victim).await;
        if counted(&before, &after) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: no counter moved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        state_bytes(victim).await,
        before_state,
        "{what}: the victim's state changed"
    );
    eprintln!("refused and counted: {what}");
}

impl Setup {
    /// Sends `bytes` to the victim as a datagram.
    pub(crate) async fn datagram(&self, bytes: Vec<u8>) {
        self.attacker
            .send_datagram(Some(self.victim_id), self.victim_addr, bytes.into())
            .await
            .expect("an authenticated peer can send");
    }

    /// Sends `bytes` to the victim as a stream message.
    pub(crate) async fn message(&self, bytes: Vec<u8>) {
        self.attacker
            .send_message(Some(self.victim_id), self.victim_addr, &bytes)
            .await
            .expect("an authenticated peer can send");
    }

    /// A gossip frame carrying `rumors`, as a member pushes news.
    pub(crate) fn gossip(&self, rumors: Vec<Rumor>) -> Vec<u8> {
        frame(
            self.cluster_id,
            gossip_core::WIRE_VERSION,
            &Message::Gossip { state_digest: None },
            rumors,
        )
    }

    /// Opens a sync session with the victim as its initiator (a root that
    /// differs from the victim's), then sends `part` as the initiator's
    /// next turn: the victim takes what a part pushes whether it asked or
    /// not.
    pub(crate) async fn sync_part(&self, session: u64, part: Part) {
        let root = SyncMessage::Root(RootDigest {
            digest: ShortDigest([0xee; 16]),
            leaves: 1,
        });
        for message in [root, SyncMessage::Part(part)] {
            let mut bytes = Vec::new();
            encode_frame(
                self.cluster_id,
                &message,
                &PackedRumors::empty(),
                &Limits::default(),
                &mut bytes,
            )
            .expect("a sync message encodes");
            self.message(stream::encode_sync(Role::Initiator, session, &[bytes]))
                .await;
            // The victim answers the root before it reads the part.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A part that pushes `members` and `delta` and asks for nothing.
pub(crate) fn pushing(members: Vec<Member>, delta: Delta) -> Part {
    Part {
        nodes: Vec::new(),
        members,
        delta,
        wants: Vec::new(),
        member_wants: Vec::new(),
        end_of_turn: true,
    }
}
