//! Five-node clusters on loopback: convergence, key/value spread, crash,
//! graceful leave, restart and a foreign CA.

mod common;

use std::time::Duration;

use common::{Cluster, config, eventually, sees_alive, status_of, validity};
use gossip_node::{MemberStatus, Node, NodeEvent};
use gossip_transport_quic::ClusterCa;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_and_a_key_set_on_one_reaches_all() {
    let (cluster, _) = Cluster::converged(5, None).await;
    let owner = &cluster.nodes[2];
    let mut events = cluster.nodes[4].subscribe();
    owner.set("role", "cache").await.expect("set");
    for node in &cluster.nodes {
        eventually(LIMIT, "the key reaches every node", || async {
            node.get(owner.id(), "role").await.ok().flatten().as_deref() == Some(&b"cache"[..])
        })
        .await;
    }
    // Subscribers hear of it as a key change.
    let heard = tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(NodeEvent::KeyChanged {
                owner: o,
                key,
                value,
            }) = events.recv().await
                && o == owner.id()
                && key.as_str() == "role"
            {
                return value;
            }
        }
    })
    .await
    .expect("key change event");
    assert_eq!(heard.as_deref(), Some(&b"cache"[..]));

    owner.delete("role").await.expect("delete");
    for node in &cluster.nodes {
        eventually(LIMIT, "the delete reaches every node", || async {
            node.get(owner.id(), "role").await.ok().flatten().is_none()
        })
        .await;
    }
    let metrics = owner.metrics().await.expect("metrics");
    assert_eq!(metrics.members.alive, 5);
    assert!(
        metrics
            .to_prometheus()
            .contains("gossip_members{status=\"alive\"} 5")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_declared_dead_by_every_survivor_and_no_one_else_dies() {
    let (cluster, ids) = Cluster::converged(5, None).await;
    let mut watchers: Vec<_> = cluster.nodes[..4].iter().map(Node::subscribe).collect();
    let victim = ids[4];
    cluster.nodes[4].crash().await;
    for node in &cluster.nodes[..4] {
        eventually(
            LIMIT,
            "every survivor declares the crashed node dead",
            || async { status_of(node, victim).await == Some(MemberStatus::Dead) },
        )
        .await;
    }
    for (i, watcher) in watchers.iter_mut().enumerate() {
        let mut suspected = false;
        while let Ok(event) = watcher.try_recv() {
            match event {
                NodeEvent::Suspected { member, .. } if member.id == victim => suspected = true,
                NodeEvent::Failed { member, .. } => {
                    assert_eq!(member.id, victim, "node {i} saw a false death");
                }
                _ => {}
            }
        }
        assert!(suspected, "node {i} declared death without a suspicion");
    }
}

/// The sum over `nodes` of SWIM's count of unreachable reports taken as
/// evidence, and of suspicions they cut short.
async fn unreachable_evidence(nodes: &[Node]) -> (u64, u64) {
    let mut sums = (0, 0);
    for node in nodes {
        let swim = node.metrics().await.expect("metrics").swim;
        sums.0 += swim.unreachable_reports;
        sums.1 += swim.suspicions_hastened;
    }
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_is_found_by_its_hosts_icmp_and_a_lost_host_by_silence() {
    let (mut cluster, ids) = Cluster::converged(6, None).await;
    let killed = cluster.nodes.remove(5);
    killed.kill().await;
    for node in &cluster.nodes {
        eventually(
            LIMIT,
            "every survivor declares the killed node dead",
            || async { status_of(node, ids[5]).await == Some(MemberStatus::Dead) },
        )
        .await;
    }
    let (reports, hastened) = unreachable_evidence(&cluster.nodes).await;
    assert!(
        reports > 0,
        "no ICMP port unreachable was taken as evidence"
    );
    assert!(hastened > 0, "no suspicion was cut short by the evidence");

    // A lost host answers nothing: no evidence, only the patience.
    let survivors = &cluster.nodes[..4];
    let (reports_before, _) = unreachable_evidence(survivors).await;
    cluster.nodes[4].crash().await;
    for node in survivors {
        eventually(
            LIMIT,
            "every survivor declares the lost host dead",
            || async { status_of(node, ids[4]).await == Some(MemberStatus::Dead) },
        )
        .await;
    }
    let (reports_after, _) = unreachable_evidence(survivors).await;
    assert_eq!(reports_after, reports_before, "evidence from a silent host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_is_seen_as_left_not_failed() {
    let (cluster, ids) = Cluster::converged(5, None).await;
    let mut watchers: Vec<_> = cluster.nodes[..4].iter().map(Node::subscribe).collect();
    cluster.nodes[4]
        .leave(Duration::from_secs(10))
        .await
        .expect("leave completes");
    assert!(
        cluster.nodes[4].metrics().await.is_err(),
        "the node stopped"
    );
    for node in &cluster.nodes[..4] {
        eventually(LIMIT, "every survivor sees the node as left", || async {
            status_of(node, ids[4]).await == Some(MemberStatus::Left)
        })
        .await;
    }
    // Long enough for a missed leave to be detected as a failure. (A node
    // that probes the leaver before the news reaches it may suspect it for a
    // moment; the departure overrides the suspicion, and nobody declares a
    // death.)
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (i, watcher) in watchers.iter_mut().enumerate() {
        while let Ok(event) = watcher.try_recv() {
            assert!(
                !matches!(event, NodeEvent::Failed { .. }),
                "node {i}: {event:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_with_the_same_id_a_higher_incarnation_and_no_ghost() {
    let data = tempfile::tempdir().expect("temporary directory");
    let (mut cluster, ids) = Cluster::converged(5, Some(data.path().to_path_buf())).await;
    cluster.nodes[4].shutdown().await;
    // Restart from the data directory alone, on another port.
    let mut restarted = config(&cluster.ca, "node-4", vec![cluster.nodes[0].addr()]);
    restarted.data_dir = Some(data.path().join("node-4"));
    let (node, _events) = Node::start(restarted).await.expect("restart");
    assert_eq!(node.id(), ids[4], "same identity");
    cluster.nodes[4] = node;
    for node in &cluster.nodes {
        eventually(LIMIT, "every node sees the same five alive", || async {
            sees_alive(node, &ids).await
                && node
                    .members()
                    .iter()
                    .any(|m| m.id == ids[4] && m.incarnation.get() >= 1)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_restarts_with_its_keys_and_every_peer_keeps_them() {
    let data = tempfile::tempdir().expect("temporary directory");
    let (mut cluster, ids) = Cluster::converged(4, Some(data.path().to_path_buf())).await;
    let owner = ids[3];
    cluster.nodes[3].set("role", "cache").await.expect("set");
    cluster.nodes[3].set("gone", "soon").await.expect("set");
    cluster.nodes[3].delete("gone").await.expect("delete");
    for node in &cluster.nodes[..3] {
        eventually(LIMIT, "the key reaches every node", || async {
            node.get(owner, "role").await.ok().flatten().is_some()
        })
        .await;
    }
    cluster.nodes[3].crash().await;
    let mut restarted = config(&cluster.ca, "node-3", vec![cluster.nodes[0].addr()]);
    restarted.data_dir = Some(data.path().join("node-3"));
    let (node, _events) = Node::start(restarted).await.expect("restart");
    assert_eq!(node.id(), owner, "same identity");
    assert_eq!(
        node.get(owner, "role").await.expect("get").as_deref(),
        Some(&b"cache"[..]),
        "the restarted node kept its key"
    );
    cluster.nodes[3] = node;
    for node in &cluster.nodes {
        eventually(LIMIT, "every node sees all alive", || {
            sees_alive(node, &ids)
        })
        .await;
    }
    // Long enough for the new life's state to replace the old everywhere.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &cluster.nodes {
        eventually(
            LIMIT,
            "every node holds the key, not the deleted one",
            || async {
                node.keys(owner).await.is_ok_and(|keys| {
                    keys.len() == 1
                        && keys[0].0.as_str() == "role"
                        && keys[0].1.as_ref() == b"cache"
                })
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_foreign_ca_cannot_join_and_the_cluster_is_unchanged() {
    let (cluster, ids) = Cluster::converged(5, None).await;
    let foreign_ca = ClusterCa::generate(common::CLUSTER).expect("CA");
    let mut intruder = config(&foreign_ca, "intruder", vec![cluster.nodes[0].addr()]);
    intruder.credentials = Some(foreign_ca.issue("intruder", validity()).expect("issue"));
    let (intruder, _events) = Node::start(intruder).await.expect("starts alone");
    tokio::time::sleep(Duration::from_secs(5)).await;
    for node in &cluster.nodes {
        assert!(sees_alive(node, &ids).await, "the cluster changed");
    }
    let alone = intruder.members();
    assert_eq!(alone.len(), 1, "the intruder saw {alone:?}");
    let refused = cluster.nodes[0]
        .metrics()
        .await
        .expect("metrics")
        .transport
        .refused;
    assert!(refused > 0, "node 0 never refused a handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_completes_with_an_event_and_the_initial_keys_ride_the_first_announcement() {
    let (cluster, _) = Cluster::converged(2, None).await;
    let seed = &cluster.nodes[0];
    let mut seed_events = seed.subscribe();
    let mut joiner = config(&cluster.ca, "joiner", vec![seed.addr()]);
    let credentials = cluster.ca.issue("joiner", validity()).expect("issue");
    let joiner_id = credentials.node_id();
    joiner.credentials = Some(credentials);
    joiner.initial_keys = vec![("role".into(), "cache".into())];
    let (joiner, mut events) = Node::start(joiner).await.expect("starts");
    tokio::time::timeout(LIMIT, joiner.joined())
        .await
        .expect("joined in time")
        .expect("the node runs");
    // The stream returned by start holds the join from the first event.
    let via = tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(NodeEvent::JoinCompleted { via }) = events.recv().await {
                return via;
            }
        }
    })
    .await
    .expect("a JoinCompleted event");
    assert_eq!(via, seed.id());
    // The first record the seed hears of the joiner already announces its
    // keys (a state version past 0), and the keys follow.
    let first = tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(NodeEvent::Joined(member)) = seed_events.recv().await
                && member.id == joiner_id
            {
                return member;
            }
        }
    })
    .await
    .expect("the seed hears of the joiner");
    assert!(
        first.state_version >= 1,
        "the first announcement carries no keys: {first:?}"
    );
    eventually(LIMIT, "the initial key reaches the seed", || async {
        seed.get(joiner_id, "role").await.ok().flatten().as_deref() == Some(&b"cache"[..])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_alone_joins_at_run_time() {
    let (cluster, mut ids) = Cluster::converged(3, None).await;
    let mut loner = config(&cluster.ca, "loner", Vec::new());
    let credentials = cluster.ca.issue("loner", validity()).expect("issue");
    ids.push(credentials.node_id());
    loner.credentials = Some(credentials);
    let (loner, _events) = Node::start(loner).await.expect("starts");
    // Without seeds it founds its own cluster, joined at once.
    tokio::time::timeout(Duration::from_secs(1), loner.joined())
        .await
        .expect("a founder counts as joined")
        .expect("the node runs");
    assert_eq!(loner.members().len(), 1);
    assert!(
        matches!(
            loner.join(vec![loner.addr().into()]).await,
            Err(gossip_node::Error::Config(_))
        ),
        "joining through itself alone is refused"
    );
    loner
        .join(vec![cluster.nodes[1].addr().into()])
        .await
        .expect("the join starts");
    tokio::time::timeout(LIMIT, loner.joined())
        .await
        .expect("joined in time")
        .expect("the node runs");
    for node in cluster.nodes.iter().chain([&loner]) {
        eventually(LIMIT, "every node sees all four alive", || async {
            sees_alive(node, &ids).await
        })
        .await;
    }
}

/// The ring follows the members' ring states: a joining node owns nothing
/// until it says it is normal, and a crashed node's tokens leave the ring
/// once it is declared dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_follows_ring_states_and_deaths() {
    use gossip_node::{RingState, RingStatus};
    let (cluster, ids) = Cluster::converged(4, None).await;
    let state = |status, tokens: &[u64]| RingState {
        status,
        load: 1_000,
        tokens: tokens.to_vec(),
    };
    for (i, node) in cluster.nodes.iter().enumerate() {
        let status = if i == 3 {
            RingStatus::Joining
        } else {
            RingStatus::Normal
        };
        let tokens = [i as u64 * 100, i as u64 * 100 + 50];
        node.set_ring_state(&state(status, &tokens))
            .await
            .expect("set");
    }
    let observer = &cluster.nodes[0];
    eventually(LIMIT, "three owners of two tokens each", || async {
        observer.ring().await.expect("ring").len() == 6
    })
    .await;
    let ring = observer.ring().await.expect("ring");
    assert_eq!(ring.owner(120), Some(ids[1]));
    assert_eq!(ring.owner(301), Some(ids[0]), "node 3 is still joining");
    cluster.nodes[3]
        .set_ring_state(&state(RingStatus::Normal, &[300, 350]))
        .await
        .expect("set");
    eventually(LIMIT, "node 3 owns its ranges once normal", || async {
        observer.ring().await.expect("ring").owner(301) == Some(ids[3])
    })
    .await;
    cluster.nodes[1].crash().await;
    eventually(
        LIMIT,
        "the crashed node's tokens leave the ring",
        || async {
            let ring = observer.ring().await.expect("ring");
            ring.len() == 6 && ring.owner(120) == Some(ids[2])
        },
    )
    .await;
}

/// A node whose seeds are names keeps resolving them, yet stops like any
/// other once its last handle is dropped: its port is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_resolving_seed_names_stops_when_its_handles_are_dropped() {
    let ca = ClusterCa::generate("drop").expect("CA");
    let mut config = config(&ca, "named", Vec::new());
    config.credentials = Some(ca.issue("named", validity()).expect("cert"));
    // A name that resolves, where no member runs.
    config.seeds = vec!["localhost:9".parse().expect("a seed")];
    let (node, events) = Node::start(config).await.expect("starts");
    let addr = node.addr();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop((node, events));
    eventually(LIMIT, "the node's port is released", || async {
        std::net::UdpSocket::bind(addr).is_ok()
    })
    .await;
}

/// Six nodes probing only every 20 s (so SWIM's own probes open almost no
/// connection): how many connections each holds 9 s after all see all
/// alive.
async fn connections_after_the_join(connect_ahead: usize) -> Vec<u64> {
    let ca = ClusterCa::generate("ahead").expect("CA");
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..6 {
        let seeds = nodes.first().map(|n| vec![n.addr()]).unwrap_or_default();
        let mut config = config(&ca, &format!("node-{i}"), seeds);
        config.credentials = Some(
            ca.issue(&format!("node-{i}"), validity())
                .expect("credentials"),
        );
        config.probe_interval = Some(Duration::from_secs(20));
        config.sync_interval = Duration::from_secs(600);
        config.connect_ahead = connect_ahead;
        nodes.push(Node::start(config).await.expect("node starts").0);
    }
    let ids: Vec<_> = nodes.iter().map(Node::id).collect();
    for node in &nodes {
        eventually(LIMIT, "every node sees all alive", || {
            sees_alive(node, &ids)
        })
        .await;
    }
    // Connecting ahead starts 5 s after each node's join.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut held = Vec::new();
    for node in &nodes {
        held.push(
            node.metrics()
                .await
                .expect("metrics")
                .transport
                .live_connections,
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_connect_to_every_peer_ahead_of_need_after_the_join() {
    let ahead = connections_after_the_join(256).await;
    assert!(
        ahead.iter().all(|&held| held >= 5),
        "connections held with connecting ahead: {ahead:?}"
    );
    // Without it, a quiet joiner holds only what the join and gossip opened.
    let on_demand = connections_after_the_join(0).await;
    assert!(
        on_demand.iter().any(|&held| held < 5),
        "connections held without connecting ahead: {on_demand:?}"
    );
}
