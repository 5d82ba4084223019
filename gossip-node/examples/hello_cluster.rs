//! The smallest cluster: three nodes in one process on loopback. They join
//! through the first, one publishes a key, the others read it, and one leaves.
//!
//! `cargo run -p gossip-node --example hello_cluster`

#![allow(clippy::print_stdout, reason = "an example: its output is the point")]

use std::time::Duration;

use gossip_node::{MemberStatus, Node, NodeConfig, Preset};
use gossip_transport_quic::{ClusterCa, Validity};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A cluster CA; in production, `gossip-node certs` makes these into files.
    let ca = ClusterCa::generate("hello")?;
    let validity = Validity::for_duration(Duration::from_secs(3600));

    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let name = format!("node-{i}");
        let mut config = NodeConfig::new("hello", &name, "127.0.0.1:0".parse()?, ca.trust());
        config.credentials = Some(ca.issue(&name, validity)?);
        config.preset = Preset::Local;
        // Everyone but the first joins through the first.
        config.seeds = nodes
            .first()
            .map(|n| vec![n.addr().into()])
            .unwrap_or_default();
        let (node, _events) = Node::start(config).await?;
        node.joined().await?;
        nodes.push(node);
    }

    // Wait until the last node sees all three alive.
    loop {
        let members = nodes[2].members();
        if members
            .iter()
            .filter(|m| m.status == MemberStatus::Alive)
            .count()
            == 3
        {
            for m in members.iter() {
                println!("{:<8} {:<16} {}", m.meta.name(), m.id, m.status.as_str());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    nodes[0].set("greeting", "hello, cluster").await?;
    let owner = nodes[0].id();
    loop {
        if let Some(value) = nodes[2].get(owner, "greeting").await? {
            println!(
                "node-2 reads node-0's greeting: {}",
                String::from_utf8_lossy(&value)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    nodes[1].leave(Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for m in nodes[0].members().iter() {
        println!("{:<8} {}", m.meta.name(), m.status.as_str());
    }
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}
