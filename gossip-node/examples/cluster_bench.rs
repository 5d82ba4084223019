//! The cluster benchmark behind `cargo xtask bench cluster --nodes N --json`:
//! N in-process nodes on loopback with the LAN preset, all joining through
//! node 0. Prints one JSON object (or a table without `--json`):
//!
//! * `join_all_ms`: from the first start until every node sees all N alive;
//! * steady state over `--window` seconds, after a warm-up long enough for
//!   every node to have probed every other once (so each pair has its
//!   connection): `bytes_per_node_s` and `packets_per_node_s` (UDP, sent,
//!   QUIC's own packets and encryption included), `cpu_ms_per_node_s`
//!   (process CPU over N), `handshakes_per_node_s`;
//! * `kv_all_ms`: a key set on node 1 until every other node holds it;
//! * two failures, each an object with `complete_ms`, `first_suspect_ms`, `first_dead_ms`,
//!   `all_dead_ms` (every survivor) and `false_deaths` (any other member
//!   declared dead meanwhile, which should be 0):
//!   * `process_crash`: node N/2 killed as `kill -9` kills a process, its
//!     host still up: its port closes without a packet of goodbye, and the
//!     host answers what is sent there with ICMP port unreachable. The node
//!     falls silent at once; its port closes once its transport has let go
//!     of the socket (`complete_ms` later: the figures count from the
//!     silence, so they are upper bounds for a real kill, whose port closes
//!     with the process);
//!   * `host_loss`: node N/2 + 1 falls silent with its port still bound, as
//!     a host that lost power or its network: nothing answers at all;
//! * `stalls`: times a node found its timers a probe period late over the
//!   whole run (the process starved: such a node announces itself alive
//!   and holds back its own declarations for a while).
//!
//! `--suspicion-mult M` replaces the preset's suspicion multiplier, to see
//! what a faster, less patient detector gives. `--skip-traffic` skips the
//! steady-state window (and its warm-up), for detection runs;
//! `--join-only` stops after the join and reports `join_all_ms`. `--loss P`
//! drops that share of every node's outgoing datagrams, from the start
//! (the join included). `--ip-counters` also reports `ip_bytes_per_node_s`
//! and `ip_packets_per_node_s` over the window from the loopback
//! interface's counters, which count whole IP packets (headers and QUIC's
//! acknowledgements included): meaningful only in a network namespace of
//! the bench's own, where `cargo xtask bench cluster` runs it as root.
//!
//! Run with `--features fault-injection` (the crash needs it), in release.

#![allow(
    clippy::print_stdout,
    reason = "a measurement tool: its output is the point"
)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gossip_node::{MemberStatus, Node, NodeConfig, NodeEvent, NodeId, Preset};
use gossip_transport_quic::{ClusterCa, Validity};
use tokio::time::Instant;

struct Args {
    nodes: usize,
    json: bool,
    window: u64,
    warmup: Option<u64>,
    suspicion_mult: Option<u32>,
    skip_traffic: bool,
    loss: f64,
    ip_counters: bool,
    join_only: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        nodes: 16,
        json: false,
        window: 10,
        warmup: None,
        suspicion_mult: None,
        skip_traffic: false,
        loss: 0.0,
        ip_counters: false,
        join_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match flag.as_str() {
            "--nodes" => args.nodes = number("--nodes") as usize,
            "--window" => args.window = number("--window"),
            "--warmup" => args.warmup = Some(number("--warmup")),
            "--suspicion-mult" => {
                args.suspicion_mult = Some(number("--suspicion-mult") as u32);
            }
            "--json" => args.json = true,
            "--skip-traffic" => args.skip_traffic = true,
            "--ip-counters" => args.ip_counters = true,
            "--join-only" => args.join_only = true,
            "--loss" => {
                args.loss = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|p| (0.0..1.0).contains(p))
                    .expect("--loss takes a share from 0 to 1");
            }
            other => panic!(
                "unknown flag {other}; flags: --nodes N, --window SECONDS, --warmup SECONDS, --suspicion-mult M, --skip-traffic, --join-only, --loss P, --ip-counters, --json"
            ),
        }
    }
    assert!(args.nodes >= 3, "--nodes must be at least 3");
    args
}

/// What every node's event stream has shown, with times since the start.
#[derive(Default)]
struct Seen {
    /// Per node: the members it believes alive (itself excluded).
    alive: Vec<BTreeSet<NodeId>>,
    /// Per node: when its alive set first reached N - 1.
    complete_at: Vec<Option<Duration>>,
    /// Per node: when it first heard of another member.
    first_contact_at: Vec<Option<Duration>>,
    key_at: Vec<Option<Duration>>,
    /// The failures so far, the current one last.
    failures: Vec<Failure>,
}

/// One failure and what every node saw of it.
struct Failure {
    victim: NodeId,
    suspected_at: Vec<Option<Duration>>,
    dead_at: Vec<Option<Duration>>,
    /// Deaths of other members while this failure was current.
    false_deaths: u64,
    /// The highest local health score of a node as it suspected the victim.
    worst_health: u32,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn watch(
    i: usize,
    n: usize,
    mut events: tokio::sync::broadcast::Receiver<NodeEvent>,
    seen: Arc<Mutex<Seen>>,
    start: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let at = start.elapsed();
            let mut seen = seen.lock().expect("lock");
            match &event {
                NodeEvent::Joined(m)
                | NodeEvent::Updated(m)
                | NodeEvent::Recovered(m)
                | NodeEvent::Rejoined(m)
                    if m.status == MemberStatus::Alive =>
                {
                    seen.alive[i].insert(m.id);
                    seen.first_contact_at[i].get_or_insert(at);
                }
                NodeEvent::Suspected {
                    member,
                    local_health,
                    ..
                } => {
                    if let Some(f) = seen.failures.iter_mut().find(|f| f.victim == member.id) {
                        f.suspected_at[i].get_or_insert(at);
                        f.worst_health = f.worst_health.max(*local_health);
                    }
                }
                NodeEvent::Failed { member, .. } => {
                    seen.alive[i].remove(&member.id);
                    match seen.failures.iter_mut().find(|f| f.victim == member.id) {
                        Some(f) => {
                            f.dead_at[i].get_or_insert(at);
                        }
                        None => {
                            if let Some(current) = seen.failures.last_mut() {
                                current.false_deaths += 1;
                            }
                        }
                    }
                }
                NodeEvent::Left(m) => {
                    seen.alive[i].remove(&m.id);
                }
                NodeEvent::KeyChanged { key, .. } if key.as_str() == "bench" => {
                    seen.key_at[i].get_or_insert(at);
                }
                _ => {}
            }
            if seen.alive[i].len() + 1 >= n && seen.complete_at[i].is_none() {
                seen.complete_at[i] = Some(at);
            }
        }
    })
}

/// Waits until `done` holds of `seen`, or `limit` passes.
async fn wait_for(seen: &Arc<Mutex<Seen>>, limit: Duration, done: impl Fn(&Seen) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done(&seen.lock().expect("lock")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

struct Totals {
    dial_failures: u64,
    send_errors: u64,
    syncs: u64,
    swim_bytes: u64,
    bytes: u64,
    packets: u64,
    handshakes: u64,
    stalls: u64,
    cpu: Duration,
}

async fn totals(nodes: &[Node]) -> Totals {
    let mut totals = Totals {
        dial_failures: 0,
        send_errors: 0,
        syncs: 0,
        swim_bytes: 0,
        bytes: 0,
        packets: 0,
        handshakes: 0,
        stalls: 0,
        cpu: cpu_time::ProcessTime::now().as_duration(),
    };
    for node in nodes {
        if let Ok(metrics) = node.metrics().await {
            totals.syncs += metrics.sync.initiated;
            totals.dial_failures += metrics.transport.dial_failures;
            totals.send_errors += metrics.driver.send_errors;
            totals.swim_bytes += metrics.swim.bytes_out;
            totals.bytes += metrics.transport.udp_bytes_sent;
            totals.packets += metrics.transport.udp_datagrams_sent;
            totals.handshakes += metrics.transport.handshakes;
            totals.stalls += metrics.swim.stalls;
        }
    }
    totals
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let n = args.nodes;
    let ca = ClusterCa::generate("bench").expect("CA");
    let validity = Validity::for_duration(Duration::from_secs(86_400));
    let credentials: Vec<_> = (0..n)
        .map(|i| ca.issue(&format!("node-{i}"), validity).expect("issue"))
        .collect();
    let seen = Arc::new(Mutex::new(Seen {
        alive: vec![BTreeSet::new(); n],
        complete_at: vec![None; n],
        first_contact_at: vec![None; n],
        key_at: vec![None; n],
        ..Seen::default()
    }));

    let start = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut seed_addr = None;
    let mut suspicion_mult = 0;
    for (i, credentials) in credentials.into_iter().enumerate() {
        let mut config = NodeConfig::new(
            "bench",
            format!("node-{i}"),
            "127.0.0.1:0".parse().expect("addr"),
            ca.trust(),
        );
        config.preset = Preset::Lan;
        config.expected_members = n;
        config.credentials = Some(credentials);
        config.seeds = seed_addr.into_iter().map(Into::into).collect();
        config.rng_seed = Some(i as u64 + 1);
        config.suspicion_mult = args.suspicion_mult;
        config.faults.seed = i as u64 + 1;
        config.faults.loss = args.loss;
        suspicion_mult = config.swim_config().suspicion_mult;
        // The events from the first: a subscription made after the start
        // may miss the first members found.
        let (node, events) = Node::start(config).await.expect("node starts");
        seed_addr.get_or_insert(node.addr());
        watch(i, n, events, seen.clone(), start);
        nodes.push(node);
    }
    let started = start.elapsed();
    let joined = wait_for(&seen, Duration::from_secs(120), |s| {
        s.complete_at.iter().all(Option::is_some)
    })
    .await;
    if !joined {
        // Say who lacks what, by the events and by the node's own table.
        let incomplete: Vec<(usize, usize)> = {
            let seen = seen.lock().expect("lock");
            let alive = seen.alive.iter().map(BTreeSet::len);
            alive.enumerate().filter(|(_, a)| a + 1 < n).collect()
        };
        for (i, by_events) in incomplete {
            let members = nodes[i].members();
            let statuses: Vec<String> = members
                .iter()
                .map(|m| {
                    format!(
                        "{}:{}@{}",
                        m.meta.name(),
                        m.status.as_str(),
                        m.incarnation.get()
                    )
                })
                .collect();
            eprintln!("node {i}: {by_events} alive by its events; its table: {statuses:?}");
        }
        panic!("the cluster did not converge in 120 s");
    }
    // How the join went, on stderr: where the time and the handshakes went.
    let sorted = |times: &[Option<Duration>]| {
        let mut times: Vec<Duration> = times.iter().flatten().copied().collect();
        times.sort();
        times
    };
    let (complete, first_contact) = {
        let seen = seen.lock().expect("lock");

        (sorted(&seen.complete_at), sorted(&seen.first_contact_at))
    };
    let at_join = totals(&nodes).await;
    eprintln!(
        "join: nodes started in {} ms; first contact median {} ms, last {} ms; everyone complete median {} ms, 90% {} ms, last {} ms; {} handshakes ({} dial failures, {} send errors), {} ms of CPU",
        ms(started),
        ms(first_contact[first_contact.len() / 2]),
        ms(first_contact[first_contact.len() - 1]),
        ms(complete[complete.len() / 2]),
        ms(complete[complete.len() * 9 / 10]),
        ms(complete[complete.len() - 1]),
        at_join.handshakes,
        at_join.dial_failures,
        at_join.send_errors,
        at_join.cpu.as_millis()
    );
    let join_all = seen
        .lock()
        .expect("lock")
        .complete_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default();

    if args.join_only {
        if args.json {
            println!(
                "{{\"nodes\":{n},\"join_all_ms\":{},\"loss\":{}}}",
                ms(join_all),
                args.loss
            );
        } else {
            println!("nodes                 {n}");
            println!("join_all_ms           {}", ms(join_all));
            println!("loss                  {}", args.loss);
        }
        return;
    }

    // Warm up until every node has probed every other (one round of the
    // shuffled round-robin), then measure the steady state.
    let warmup = if args.skip_traffic {
        0
    } else {
        args.warmup.unwrap_or(n as u64 + 5)
    };
    let window = if args.skip_traffic { 0 } else { args.window };
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let ip_before = ip_counters(args.ip_counters);
    let before = totals(&nodes).await;
    tokio::time::sleep(Duration::from_secs(window)).await;
    let after = totals(&nodes).await;
    let ip_after = ip_counters(args.ip_counters);
    let per_node_s =
        |a: u64, b: u64| (b.saturating_sub(a)) as f64 / n as f64 / window.max(1) as f64;
    // Without a window there is no steady state to report.
    let traffic = |figure: f64, digits: usize| {
        if window == 0 {
            "null".to_string()
        } else {
            format!("{figure:.digits$}")
        }
    };
    let (ip_bytes, ip_packets) = match (ip_before, ip_after) {
        (Some(b), Some(a)) if window > 0 => (
            format!("{:.1}", per_node_s(b.0, a.0)),
            format!("{:.2}", per_node_s(b.1, a.1)),
        ),
        _ => ("null".to_string(), "null".to_string()),
    };
    let bytes = per_node_s(before.bytes, after.bytes);
    let packets = per_node_s(before.packets, after.packets);
    let handshakes = per_node_s(before.handshakes, after.handshakes);
    let syncs = per_node_s(before.syncs, after.syncs);
    let swim_bytes = per_node_s(before.swim_bytes, after.swim_bytes);
    let cpu_ms = (after.cpu.saturating_sub(before.cpu)).as_secs_f64() * 1e3
        / n as f64
        / window.max(1) as f64;

    // A key set on node 1 reaching everyone.
    let kv_start = start.elapsed();
    nodes[1].set("bench", "value").await.expect("set");
    let spread = wait_for(&seen, Duration::from_secs(60), |s| {
        s.key_at.iter().all(Option::is_some)
    })
    .await;
    let kv_all = seen
        .lock()
        .expect("lock")
        .key_at
        .iter()
        .flatten()
        .max()
        .map(|at| at.saturating_sub(kv_start));

    // Node N/2's process killed, its host up; then node N/2 + 1's host lost.
    let mut gone = BTreeSet::new();
    let killed = n / 2;
    let node = nodes.remove(killed);
    let process_crash = fail(&seen, start, killed, &mut gone, node.id(), async {
        node.kill().await;
    })
    .await;
    // `nodes` no longer holds the killed node: the lost one is one place
    // earlier than its number.
    let lost = n / 2 + 1;
    let lost_node = &nodes[lost - 1];
    let host_loss = fail(&seen, start, lost, &mut gone, lost_node.id(), async {
        lost_node.crash().await;
    })
    .await;
    let stalls = totals(&nodes).await.stalls;

    if args.json {
        println!(
            "{{\"nodes\":{n},\"join_all_ms\":{},\"process_crash\":{},\"host_loss\":{},\"kv_all_ms\":{},\"bytes_per_node_s\":{},\"packets_per_node_s\":{},\"cpu_ms_per_node_s\":{},\"handshakes_per_node_s\":{},\"syncs_per_node_s\":{},\"swim_bytes_per_node_s\":{},\"ip_bytes_per_node_s\":{},\"ip_packets_per_node_s\":{},\"loss\":{},\"window_s\":{},\"warmup_s\":{},\"suspicion_mult\":{},\"stalls\":{}}}",
            ms(join_all),
            process_crash.json(),
            host_loss.json(),
            opt(if spread { kv_all } else { None }),
            traffic(bytes, 1),
            traffic(packets, 2),
            traffic(cpu_ms, 2),
            traffic(handshakes, 3),
            traffic(syncs, 3),
            traffic(swim_bytes, 1),
            ip_bytes,
            ip_packets,
            args.loss,
            window,
            warmup,
            suspicion_mult,
            stalls,
        );
    } else {
        println!("nodes                 {n}");
        println!("join_all_ms           {}", ms(join_all));
        println!("process_crash         {}", process_crash.json());
        println!("host_loss             {}", host_loss.json());
        println!("kv_all_ms             {}", opt(kv_all));
        println!("bytes_per_node_s      {}", traffic(bytes, 1));
        println!("packets_per_node_s    {}", traffic(packets, 2));
        println!("cpu_ms_per_node_s     {}", traffic(cpu_ms, 2));
        println!("handshakes_per_node_s {}", traffic(handshakes, 3));
        println!("syncs_per_node_s      {}", traffic(syncs, 3));
        println!("swim_bytes_per_node_s {}", traffic(swim_bytes, 1));
        println!("ip_bytes_per_node_s   {ip_bytes}");
        println!("ip_packets_per_node_s {ip_packets}");
        println!("loss                  {}", args.loss);
        println!("suspicion_mult        {suspicion_mult}");
        println!("stalls                {stalls}");
    }
}

/// The loopback interface's transmitted bytes and packets (whole IP
/// packets: loopback adds no link header), if asked for and readable.
fn ip_counters(wanted: bool) -> Option<(u64, u64)> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/lo/statistics/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    wanted
        .then(|| Some((read("tx_bytes")?, read("tx_packets")?)))
        .flatten()
}

fn opt(d: Option<Duration>) -> String {
    d.map_or("null".to_string(), |d| ms(d).to_string())
}

/// What the survivors saw of one failure, in ms from the moment it
/// happened.
struct Detection {
    /// How long the failure took to be complete (a killed node's port
    /// closed) after it began, the moment the figures count from.
    complete: Duration,
    first_suspect: Option<Duration>,
    first_dead: Option<Duration>,
    all_dead: Option<Duration>,
    false_deaths: u64,
}

impl Detection {
    fn json(&self) -> String {
        format!(
            "{{\"complete_ms\":{},\"first_suspect_ms\":{},\"first_dead_ms\":{},\"all_dead_ms\":{},\"false_deaths\":{}}}",
            ms(self.complete),
            opt(self.first_suspect),
            opt(self.first_dead),
            opt(self.all_dead),
            self.false_deaths
        )
    }
}

/// Makes node `victim` fail by `failure` and waits (up to 60 s) until
/// every node that is neither it nor `gone` holds it dead.
async fn fail(
    seen: &Arc<Mutex<Seen>>,
    start: Instant,
    victim: usize,
    gone: &mut BTreeSet<usize>,
    victim_id: NodeId,
    failure: impl std::future::Future<Output = ()>,
) -> Detection {
    let n = seen.lock().expect("lock").alive.len();
    seen.lock().expect("lock").failures.push(Failure {
        victim: victim_id,
        suspected_at: vec![None; n],
        dead_at: vec![None; n],
        false_deaths: 0,
        worst_health: 0,
    });
    // From the moment the failure starts: the node falls silent at once;
    // a killed one's port closes a little later, as the transport lets go.
    let failed_at = start.elapsed();
    failure.await;
    let complete = start.elapsed().saturating_sub(failed_at);
    gone.insert(victim);
    let survivors: Vec<usize> = (0..n).filter(|i| !gone.contains(i)).collect();
    let detected = wait_for(seen, Duration::from_secs(60), |s| {
        let failure = s.failures.last().expect("a failure");
        survivors.iter().all(|&i| failure.dead_at[i].is_some())
    })
    .await;
    let seen = seen.lock().expect("lock");
    let failure = seen.failures.last().expect("a failure");
    eprintln!(
        "failure {}: complete {} ms after it began; worst local health of a suspecter {}",
        seen.failures.len(),
        ms(complete),
        failure.worst_health
    );
    let since = |times: &Vec<Option<Duration>>, pick_max: bool| {
        let times = survivors
            .iter()
            .filter_map(|&i| times[i])
            .map(|t| t.saturating_sub(failed_at));
        if pick_max { times.max() } else { times.min() }
    };
    Detection {
        complete,
        first_suspect: since(&failure.suspected_at, false),
        first_dead: since(&failure.dead_at, false),
        all_dead: detected.then(|| since(&failure.dead_at, true)).flatten(),
        false_deaths: failure.false_deaths,
    }
}
