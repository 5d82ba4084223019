//! In-process clusters on loopback for the node's tests.

#![allow(dead_code, reason = "each test file uses a different subset")]

pub(crate) mod attack;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gossip_node::{MemberStatus, Node, NodeConfig, NodeId, Preset};
use gossip_transport_quic::{ClusterCa, NodeCredentials, Validity};

pub(crate) const CLUSTER: &str = "node-tests";

pub(crate) fn validity() -> Validity {
    Validity::for_duration(Duration::from_secs(3600))
}

pub(crate) struct Cluster {
    pub(crate) ca: ClusterCa,
    pub(crate) nodes: Vec<Node>,
    pub(crate) credentials: Vec<NodeCredentials>,
}

/// A configuration for node `name` on an ephemeral loopback port.
pub(crate) fn config(ca: &ClusterCa, name: &str, seeds: Vec<SocketAddr>) -> NodeConfig {
    let mut config = NodeConfig::new(
        CLUSTER,
        name,
        "127.0.0.1:0".parse().expect("addr"),
        ca.trust(),
    );
    config.preset = Preset::Local;
    config.expected_members = 8;
    config.seeds = seeds.into_iter().map(Into::into).collect();
    config.sync_interval = Duration::from_secs(5);
    config
}

impl Cluster {
    /// `n` nodes; every node but the first joins through node 0. With
    /// `data_root`, node `i` keeps its data in `data_root/node-i`.
    pub(crate) async fn start(n: usize, data_root: Option<PathBuf>) -> Cluster {
        let ca = ClusterCa::generate(CLUSTER).expect("CA");
        let mut cluster = Cluster {
            ca,
            nodes: Vec::new(),
            credentials: Vec::new(),
        };
        for i in 0..n {
            let credentials = cluster
                .ca
                .issue(&format!("node-{i}"), validity())
                .expect("credentials");
            let seeds = cluster
                .nodes
                .first()
                .map(|n| vec![n.addr()])
                .unwrap_or_default();
            let mut config = config(&cluster.ca, &format!("node-{i}"), seeds);
            config.credentials = Some(credentials.clone());
            config.data_dir = data_root
                .as_ref()
                .map(|root| root.join(format!("node-{i}")));
            let (node, _events) = Node::start(config).await.expect("node starts");
            cluster.nodes.push(node);
            cluster.credentials.push(credentials);
        }
        cluster
    }

    /// As [`start`](Cluster::start), then waits until every node sees all
    /// `n` alive. Returns the cluster and the nodes' ids.
    pub(crate) async fn converged(n: usize, data_root: Option<PathBuf>) -> (Cluster, Vec<NodeId>) {
        let cluster = Cluster::start(n, data_root).await;
        let ids = cluster.ids();
        for node in &cluster.nodes {
            eventually(Duration::from_secs(30), "every node sees all alive", || {
                sees_alive(node, &ids)
            })
            .await;
        }
        (cluster, ids)
    }

    pub(crate) fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(Node::id).collect()
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How `node` sees `subject`.
pub(crate) async fn status_of(node: &Node, subject: NodeId) -> Option<MemberStatus> {
    let members = node.members();
    members.iter().find(|m| m.id == subject).map(|m| m.status)
}

/// Whether `node` sees exactly `expected` alive, and nothing else.
pub(crate) async fn sees_alive(node: &Node, expected: &[NodeId]) -> bool {
    let members = node.members();
    members.len() == expected.len()
        && expected.iter().all(|id| {
            members
                .iter()
                .any(|m| m.id == *id && m.status == MemberStatus::Alive)
        })
}
