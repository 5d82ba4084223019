//! Measures one anti-entropy sync between two in-process replicas that hold
//! `entries` key/value writes and differ in `diffs` of them.
//!
//! ```text
//! cargo xtask sim reconcile --entries 10000,100000 --diffs 0,1,10,100 [--json]
//! ```
//!
//! Prints one JSON object per case with `--json`, else a table.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a measurement tool"
)]

use std::collections::BTreeSet;

use gossip_antientropy::{Session, SyncConfig, SyncState};
use gossip_core::{
    ClusterId, Delta, GossipRng, KvStore, Limits, Member, MemberMeta, NodeKey, Timestamp,
    encoded_len,
};
use rand::{Rng, SeedableRng};

struct Args {
    entries: Vec<usize>,
    diffs: Vec<usize>,
    keys_per_owner: usize,
    value_bytes: usize,
    seed: u64,
    json: bool,
}

fn parse_list(value: &str) -> Vec<usize> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {v}"))
        })
        .collect()
}

fn parse_args() -> Args {
    let mut args = Args {
        entries: vec![10_000],
        diffs: vec![0, 1, 10, 100, 1000],
        keys_per_owner: 1000,
        value_bytes: 24,
        seed: 1,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--entries" => args.entries = parse_list(&value()),
            "--diffs" => args.diffs = parse_list(&value()),
            "--keys-per-owner" => args.keys_per_owner = value().parse().unwrap(),
            "--value-bytes" => args.value_bytes = value().parse().unwrap(),
            "--seed" => args.seed = value().parse().unwrap(),
            "--json" => args.json = true,
            "--help" | "-h" => {
                println!(
                    "reconcile [--entries N,..] [--diffs D,..] [--keys-per-owner K] [--value-bytes B] [--seed S] [--json]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (try --help)"),
        }
    }
    args
}

const CLUSTER: ClusterId = ClusterId::from_bytes([7; 8]);

fn owner_key(n: usize) -> NodeKey {
    NodeKey::from_secret_bytes(blake3::hash(format!("owner-{n}").as_bytes()).as_bytes())
}

/// Every owner's full state, as one delta from nothing.
fn full_delta(owners: &[KvStore]) -> Delta {
    Delta {
        owners: owners
            .iter()
            .filter_map(|o| o.owner_delta(&o.local_id(), 0, 0, usize::MAX))
            .collect(),
    }
}

struct Case {
    entries: usize,
    diffs: usize,
    owners: usize,
    round_trips: u32,
    messages: u64,
    bytes_total: u64,
    entry_bytes: u64,
    full_state_bytes: u64,
    cpu_ms: f64,
    converged: bool,
}

fn run_case(args: &Args, entries: usize, diffs: usize) -> Case {
    let mut rng = GossipRng::seed_from_u64(args.seed ^ (entries as u64) << 20 ^ diffs as u64);
    let owner_count = entries.div_ceil(args.keys_per_owner).max(1);
    let mut limits = Limits::default();
    limits.max_keys_per_node = limits.max_keys_per_node.max(args.keys_per_owner);
    limits.max_members = limits.max_members.max(owner_count + 2);
    let mut owners: Vec<KvStore> = (0..owner_count)
        .map(|n| KvStore::new(owner_key(n), CLUSTER, limits.clone()))
        .collect();
    let value = vec![7u8; args.value_bytes];
    for i in 0..entries {
        let owner = i / args.keys_per_owner;
        owners[owner]
            .set(format!("key-{}", i % args.keys_per_owner), value.clone())
            .unwrap();
    }

    let replica_key = |n: u8| NodeKey::from_secret_bytes(&[n; 32]);
    let members: Vec<Member> = (0..owner_count)
        .map(|n| {
            let key = owner_key(n);
            let mut record = Member::new(key.id(), MemberMeta::new("member", []));
            record.sign(&key, CLUSTER);
            record
        })
        .collect();
    let full = full_delta(&owners);
    let full_state_bytes =
        (encoded_len(&full) + members.iter().map(encoded_len).sum::<usize>()) as u64;
    let replica = |n: u8| {
        let meta = MemberMeta::new(format!("replica-{n}"), []);
        SyncState::new(replica_key(n), CLUSTER, meta, limits.clone())
    };
    let (mut a, mut b) = (replica(1), replica(2));
    for replica in [&mut a, &mut b] {
        replica.apply_delta(full.clone()).unwrap();
        for member in &members {
            replica.merge_member(member.clone()).unwrap();
        }
    }
    assert_eq!(a.root(), b.root(), "replicas start equal");

    // `diffs` distinct writes reach replica a only.
    let mut touched = BTreeSet::new();
    while touched.len() < diffs.min(entries) {
        touched.insert(rng.random_range(0..entries));
    }
    let mut entry_bytes = 0u64;
    let mut changed_owners = BTreeSet::new();
    for &i in &touched {
        let owner = i / args.keys_per_owner;
        let key = format!("key-{}", i % args.keys_per_owner);
        let fresh: Vec<u8> = (0..args.value_bytes).map(|_| rng.random()).collect();
        let version = owners[owner].set(key.as_str(), fresh.clone()).unwrap();
        entry_bytes += encoded_len(&gossip_core::Entry {
            key: key.into(),
            value: Some(fresh.into()),
            version,
        }) as u64;
        changed_owners.insert(owner);
    }
    for &owner in &changed_owners {
        let store = &owners[owner];
        let node = a.kv().node(&store.local_id()).unwrap();
        let delta = store
            .owner_delta(
                &store.local_id(),
                node.max_version(),
                node.floor(),
                usize::MAX,
            )
            .unwrap();
        a.apply_delta(Delta {
            owners: vec![delta],
        })
        .unwrap();
    }

    let config = SyncConfig::new(CLUSTER);
    let now = Timestamp::ZERO;
    let start = cpu_time::ProcessTime::now();
    let mut initiator = Session::initiate(config.clone(), b.local_id(), &a, now);
    let mut responder = Session::respond(config, a.local_id(), now);
    while !(initiator.is_finished() && responder.is_finished()) {
        let mut moved = false;
        while let Some(bytes) = initiator.poll_transmit() {
            responder.handle_bytes(now, &mut b, &bytes).unwrap();
            moved = true;
        }
        while let Some(bytes) = responder.poll_transmit() {
            initiator.handle_bytes(now, &mut a, &bytes).unwrap();
            moved = true;
        }
        assert!(moved, "session stalled");
    }
    let cpu_ms = start.elapsed().as_secs_f64() * 1000.0;
    let (i, r) = (initiator.stats(), responder.stats());
    Case {
        entries,
        diffs: touched.len(),
        owners: owner_count,
        round_trips: (i.turns_sent + r.turns_sent).div_ceil(2),
        messages: i.messages_sent + r.messages_sent,
        bytes_total: i.bytes_sent + r.bytes_sent,
        entry_bytes,
        full_state_bytes,
        cpu_ms,
        converged: a.root() == b.root() && a.diff(&b).is_empty(),
    }
}

fn main() {
    let args = parse_args();
    if !args.json {
        println!(
            "{:>9} {:>6} {:>7} {:>11} {:>8} {:>11} {:>14} {:>17} {:>16} {:>9} {:>9}",
            "entries",
            "diffs",
            "owners",
            "round_trips",
            "messages",
            "bytes_total",
            "bytes_per_diff",
            "overhead_per_diff",
            "full_state_bytes",
            "cpu_ms",
            "converged"
        );
    }
    for &entries in &args.entries {
        for &diffs in &args.diffs {
            let case = run_case(&args, entries, diffs);
            let per_diff = |bytes: u64| {
                if case.diffs == 0 {
                    0.0
                } else {
                    bytes as f64 / case.diffs as f64
                }
            };
            let bytes_per_diff = per_diff(case.bytes_total);
            let overhead_per_diff = per_diff(case.bytes_total.saturating_sub(case.entry_bytes));
            let bound = (case.entries.max(2) as f64).log(16.0).ceil() as u32 + 2;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "entries": case.entries,
                        "diffs": case.diffs,
                        "owners": case.owners,
                        "keys_per_owner": args.keys_per_owner,
                        "value_bytes": args.value_bytes,
                        "round_trips": case.round_trips,
                        "round_trip_bound": bound,
                        "messages": case.messages,
                        "bytes_total": case.bytes_total,
                        "entry_bytes": case.entry_bytes,
                        "bytes_per_diff": bytes_per_diff,
                        "overhead_bytes_per_diff": overhead_per_diff,
                        "full_state_bytes": case.full_state_bytes,
                        "cpu_ms": case.cpu_ms,
                        "converged": case.converged,
                        "seed": args.seed,
                    })
                );
            } else {
                println!(
                    "{:>9} {:>6} {:>7} {:>11} {:>8} {:>11} {:>14.1} {:>17.1} {:>16} {:>9.2} {:>9}",
                    case.entries,
                    case.diffs,
                    case.owners,
                    case.round_trips,
                    case.messages,
                    case.bytes_total,
                    bytes_per_diff,
                    overhead_per_diff,
                    case.full_state_bytes,
                    case.cpu_ms,
                    case.converged
                );
            }
        }
    }
}
