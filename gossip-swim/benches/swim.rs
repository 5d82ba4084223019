//! The SWIM machine's hot paths: a steady ping/ack exchange with piggybacked
//! rumors (decode, merge, reply, encode), and a probe tick with 10,000 members.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure should stop the bench loudly"
)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gossip_core::{
    ClusterId, Incarnation, Limits, Member, MemberMeta, NodeId, NodeKey, Rumor, RumorQueue,
    Timestamp, decode_frame, encode_frame,
};
use gossip_swim::{Config, Message, StateDigest, Swim, TargetTag};

fn key(n: u32) -> NodeKey {
    NodeKey::from_secret_bytes(blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn id(n: u32) -> NodeId {
    key(n).id()
}

fn addr(n: u32) -> SocketAddr {
    SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 7946))
}

/// Member `n`'s own signed record.
fn member(n: u32) -> Member {
    let mut record = Member::new(id(n), MemberMeta::new(format!("node-{n}"), [addr(n)]));
    record.sign(&key(n), config().cluster);
    record
}

fn config() -> Config {
    let mut config = Config::lan(ClusterId::from_name("bench"), 10_000);
    config.push_pull_interval = None;
    config
}

fn frame(message: Message, rumors: &[Rumor]) -> Vec<u8> {
    let limits = Limits::default();
    let mut queue = RumorQueue::new(1_000_000, limits.clone());
    for rumor in rumors {
        queue.push(rumor.clone()).unwrap();
    }
    let packed = queue.pack(1200, 100);
    let mut bytes = Vec::new();
    encode_frame(config().cluster, &message, &packed, &limits, &mut bytes).unwrap();
    bytes
}

/// A machine for node 0 that knows members `1..=n`.
fn machine_with(n: u32) -> Swim {
    let mut swim = Swim::new(
        config(),
        key(0),
        MemberMeta::new("node-0", [addr(0)]),
        Incarnation::ZERO,
        Timestamp::ZERO,
    );
    let now = Timestamp::ZERO;
    let mut batch = Vec::new();
    for m in 1..=n {
        batch.push(member(m));
        if batch.len() == 12 || m == n {
            let members = std::mem::take(&mut batch);
            let sender = members[0].id;
            let first = u32::try_from(m as usize + 1 - members.len()).unwrap();
            let bytes = frame(
                Message::PushPull {
                    reply: true,
                    members,
                },
                &[],
            );
            swim.handle_datagram(now, sender, addr(first), &bytes)
                .unwrap();
        }
    }
    while swim.poll_transmit().is_some() {}
    while swim.poll_event().is_some() {}
    assert_eq!(swim.members().live_count() as u32, n + 1);
    swim
}

fn bench_ping_ack(c: &mut Criterion) {
    let mut swim = machine_with(64);
    // Steady state: the piggybacked rumors are news already held (a member's
    // alive record, a suspicion refuted since), the common case for rumors
    // heard again.
    let rumors: Vec<Rumor> = (2..5)
        .map(|n| Rumor::Member { member: member(n) })
        .collect();
    let ping = frame(
        Message::Ping {
            seq: 7,
            target: TargetTag::of(&id(0), addr(0)),
            suspicion: None,
            state_digest: Some(StateDigest([3; 8])),
        },
        &rumors,
    );
    let ack = frame(Message::Ack { seq: 7 }, &rumors);
    eprintln!("ping with 3 rumors: {} bytes", ping.len());
    let mut now = Timestamp::ZERO;

    let mut group = c.benchmark_group("swim");
    group.throughput(Throughput::Elements(1));
    group.bench_function("handle_ping_3_rumors_and_reply", |b| {
        b.iter(|| {
            now += Duration::from_micros(1);
            swim.handle_datagram(now, id(1), addr(1), black_box(&ping))
                .unwrap();
            while let Some(t) = swim.poll_transmit() {
                black_box(t);
            }
        })
    });
    group.bench_function("handle_ack_3_rumors", |b| {
        b.iter(|| {
            now += Duration::from_micros(1);
            swim.handle_datagram(now, id(1), addr(1), black_box(&ack))
                .unwrap();
            while let Some(t) = swim.poll_transmit() {
                black_box(t);
            }
        })
    });
    group.finish();
}

/// One probe period of node 0 in a healthy 10,001-member cluster: the timed
/// part is `handle_timeout` (the probe tick, and the periodic reconnect and
/// collection work when due) and draining its datagrams; answering the probe
/// with an ack, as the target would, is not timed.
fn bench_timeout(c: &mut Criterion) {
    let mut swim = machine_with(10_000);
    let interval = swim.config().probe_interval;
    let mut now = Timestamp::ZERO;
    // One probe period; returns the time spent in the machine. The target
    // answers every probe, as a healthy member would (not timed).
    let period = |swim: &mut Swim, now: &mut Timestamp| -> Duration {
        *now += interval;
        #[allow(clippy::disallowed_methods, reason = "a bench measures wall time")]
        let start = std::time::Instant::now();
        swim.handle_timeout(*now);
        let sent: Vec<_> = std::iter::from_fn(|| swim.poll_transmit()).collect();
        let timed = start.elapsed();
        for ping in sent {
            let frame =
                decode_frame::<Message>(&ping.payload, swim.config().cluster, &Limits::default())
                    .unwrap();
            if let (Message::Ping { seq, .. }, Some(target)) = (frame.body, ping.to) {
                let ack = frame_of(Message::Ack { seq });
                swim.handle_datagram(*now, target, ping.addr, &ack).unwrap();
            }
        }
        while swim.poll_transmit().is_some() {}
        while swim.poll_event().is_some() {}
        timed
    };
    // Steady state: run until the 10,000 join announcements have been
    // gossiped their full retransmit budget.
    let mut warmup = 0;
    while swim.queued_rumors() > 0 {
        period(&mut swim, &mut now);
        warmup += 1;
    }
    eprintln!("steady after {warmup} probe periods");

    let mut group = c.benchmark_group("swim");
    group.bench_function("handle_timeout_probe_period_10000_members", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| period(&mut swim, &mut now)).sum())
    });
    group.finish();
    assert_eq!(
        swim.members().count(gossip_core::MemberStatus::Alive),
        10_001,
        "the cluster stayed healthy"
    );
}

fn frame_of(message: Message) -> Vec<u8> {
    frame(message, &[])
}

criterion_group!(benches, bench_ping_ack, bench_timeout);
criterion_main!(benches);
