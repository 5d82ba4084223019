//! A consistent-hash ring built from the members' ring state, the way
//! Cassandra places data with gossip: every node publishes its status in
//! the ring, its load and the positions it owns ([`RingState`]), and every
//! node's [`Node::ring`] is the same ring, following joins and deaths.
//!
//! `cargo run -p gossip-node --example hash_ring`
//!
//! Four nodes start; a fifth joins and takes over part of the ring; then one
//! stops without leaving, is detected as failed, and its ranges fall to its
//! successors. Each step prints every node's share of 10,000 sample keys.

#![allow(clippy::print_stdout, reason = "an example: its output is the point")]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gossip_node::{Node, NodeConfig, NodeEvent, NodeId, Preset, RING_KEY, RingState, RingStatus};
use gossip_transport_quic::{ClusterCa, Validity};

/// Ring positions per node.
const TOKENS: u64 = 16;

/// A position on the ring: the first 8 bytes of blake3, as Cassandra's
/// partitioner uses a 64-bit hash.
fn position(bytes: &[u8]) -> u64 {
    let hash = blake3::hash(bytes);
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// This node's ring state: normal, with its tokens.
fn ring_state_of(id: NodeId) -> RingState {
    RingState {
        status: RingStatus::Normal,
        load: 0,
        tokens: (0..TOKENS)
            .map(|i| position(format!("{id:#}/{i}").as_bytes()))
            .collect(),
    }
}

async fn print_shares(title: &str, node: &Node) -> Result<(), gossip_node::Error> {
    let ring = node.ring().await?;
    let mut shares: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..10_000 {
        let owner = ring.owner(position(format!("key-{i}").as_bytes()));
        if let Some(member) = ring.members().iter().find(|m| Some(m.id) == owner) {
            *shares.entry(member.name.clone()).or_default() += 1;
        }
    }
    println!("{title}");
    for (name, keys) in shares {
        println!("  {name:<8} {:>5.1}%", f64::from(keys) / 100.0);
    }
    Ok(())
}

async fn start(
    ca: &ClusterCa,
    i: usize,
    seed: Option<&Node>,
) -> Result<Node, Box<dyn std::error::Error>> {
    let name = format!("node-{i}");
    let mut config = NodeConfig::new("ring", &name, "127.0.0.1:0".parse()?, ca.trust());
    let credentials = ca.issue(&name, Validity::for_duration(Duration::from_secs(3600)))?;
    // Published with the node's first announcement: no member sees the node
    // without its tokens.
    let state = ring_state_of(credentials.node_id());
    config.initial_keys = vec![(RING_KEY.into(), state.to_string().into())];
    config.credentials = Some(credentials);
    config.preset = Preset::Local;
    config.seeds = seed.map(|s| vec![s.addr().into()]).unwrap_or_default();
    let (node, _events) = Node::start(config).await?;
    Ok(node)
}

/// Waits until `node`'s ring holds the tokens of exactly `owners` members.
async fn settle(node: &Node, owners: usize) -> Result<(), gossip_node::Error> {
    let mut events = node.subscribe();
    loop {
        if node.ring().await?.len() == owners * TOKENS as usize {
            return Ok(());
        }
        // Look again on the events that change the ring.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while let Ok(event) = events.recv().await {
                if matches!(
                    event,
                    NodeEvent::Joined(_)
                        | NodeEvent::Failed { .. }
                        | NodeEvent::Left(_)
                        | NodeEvent::KeyChanged { .. }
                ) {
                    break;
                }
            }
        })
        .await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca = ClusterCa::generate("ring")?;
    let mut nodes: HashMap<usize, Node> = HashMap::new();
    let first = start(&ca, 0, None).await?;
    for i in 1..4 {
        nodes.insert(i, start(&ca, i, Some(&first)).await?);
    }
    nodes.insert(0, first);
    let observer = nodes[&0].clone();

    settle(&observer, 4).await?;
    print_shares("four nodes:", &observer).await?;

    nodes.insert(4, start(&ca, 4, Some(&observer)).await?);
    settle(&observer, 5).await?;
    print_shares("node-4 joined and took its share:", &observer).await?;

    println!("node-2 stops without leaving; waiting for the cluster to declare it failed...");
    if let Some(node) = nodes.remove(&2) {
        node.shutdown().await;
    }
    settle(&observer, 4).await?;
    print_shares(
        "node-2 failed; its ranges went to their successors:",
        &observer,
    )
    .await?;

    for node in nodes.values() {
        node.shutdown().await;
    }
    Ok(())
}
