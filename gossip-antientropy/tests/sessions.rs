//! Scenario tests: large transfers split across messages, a replica away for
//! longer than the tombstone horizon, and hostile input.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::time::Duration;

use common::{cluster, content, deliver, owner_id, owner_store, replica, run_session, sync_config};
use gossip_antientropy::{
    Error, NodeSummary, NodeView, Part, Prefix, Session, SyncMessage, SyncState,
};
use gossip_core::{
    ClusterId, Delta, Entry, Key, KvStore, Limits, OwnerDelta, PackedRumors, Timestamp,
    encode_frame,
};

fn owner_with(keys: usize, value_len: usize) -> KvStore {
    let mut owner = owner_store(0);
    for k in 0..keys {
        owner
            .set(format!("key-{k}"), vec![k as u8; value_len])
            .unwrap();
    }
    owner
}

#[test]
fn a_large_owner_is_transferred_in_parts_and_applied_whole() {
    let owner = owner_with(800, 100);
    let mut a = replica(1);
    let mut b = replica(2);
    deliver(&owner, &mut a);
    let run = run_session(&mut a, &mut b, &sync_config(2048), |a, b| {
        // Mid-transfer, b holds none of the owner's writes or all of them.
        let held = b.kv().node(&owner_id(0)).map_or(0, |n| n.len());
        assert!(
            held == 0 || held == 800,
            "b applied part of a transfer: {held} keys"
        );
        assert!(a.kv().node(&owner_id(0)).is_some());
    });
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(
        run.initiator.messages_sent + run.responder.messages_sent > 30,
        "expected the transfer to be split"
    );
    assert_eq!(content(&a), content(&b));
    assert_eq!(a.root(), b.root());
}

#[test]
fn a_replica_away_past_the_tombstone_horizon_is_caught_up_without_resurrection() {
    let mut owner = owner_with(20, 8);
    let mut fresh = replica(1);
    let mut away = replica(2);
    deliver(&owner, &mut away);
    // While `away` is gone, the owner deletes half its keys, collects the
    // tombstones after the grace period, and writes more.
    let mut now = Timestamp::ZERO;
    for k in 0..10 {
        owner.delete(now, &format!("key-{k}")).unwrap();
    }
    now += Duration::from_secs(3600);
    assert_eq!(owner.collect_tombstones(now, Duration::from_secs(60)), 10);
    owner.set("new", &b"value"[..]).unwrap();
    deliver(&owner, &mut fresh);
    assert_eq!(fresh.kv().node(&owner_id(0)).unwrap().tombstones(), 0);

    let run = run_session(&mut fresh, &mut away, &sync_config(64 * 1024), |_, _| {});
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert_eq!(content(&fresh), content(&away));
    let node = away.kv().node(&owner_id(0)).unwrap();
    for k in 0..10 {
        assert!(node.get(&format!("key-{k}")).is_none(), "key-{k} came back");
    }
    assert_eq!(node.get("new").unwrap().as_ref(), b"value");
}

fn frame(message: &SyncMessage, cluster: ClusterId) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut limits = Limits::default();
    limits.max_frame_bytes = 1 << 20;
    encode_frame(
        cluster,
        message,
        &PackedRumors::empty(),
        &limits,
        &mut bytes,
    )
    .unwrap();
    bytes
}

/// A responder that has seen the initiator's root and is waiting for a turn.
fn waiting_responder(state: &mut SyncState) -> Session {
    let mut other = replica(9);
    other.set("x", &b"y"[..]).unwrap();
    let now = Timestamp::ZERO;
    let mut responder = Session::respond(sync_config(64 * 1024), other.local_id(), now);
    responder
        .handle_bytes(
            now,
            state,
            &frame(&SyncMessage::Root(other.root()), cluster()),
        )
        .unwrap();
    while responder.poll_transmit().is_some() {}
    responder
}

#[test]
fn hostile_input_ends_the_session_with_a_typed_error_and_changes_nothing() {
    let owner = owner_with(5, 4);
    let entry = |key: &str, version| Entry {
        key: Key::from(key),
        value: Some(gossip_core::Bytes::from_static(b"v")),
        version,
    };
    let split = |up_to, entries, complete| OwnerDelta {
        owner: owner_id(7),
        reset: false,
        floor: 0,
        up_to,
        complete,
        entries,
        commitment: gossip_core::Commitment::default(),
        signature: gossip_core::Signature::NONE,
    };
    let bad_cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", vec![0xde; 40]),
        (
            "truncated",
            frame(&SyncMessage::Root(replica(3).root()), cluster())[..6].to_vec(),
        ),
        (
            "foreign cluster",
            frame(
                &SyncMessage::Part(Part::default()),
                ClusterId::from_name("other"),
            ),
        ),
        ("oversized", {
            let mut f = frame(&SyncMessage::Part(Part::default()), cluster());
            f.resize(70 * 1024, 0);
            f
        }),
        (
            "root out of turn",
            frame(&SyncMessage::Root(replica(3).root()), cluster()),
        ),
        (
            "bad child list",
            frame(
                &SyncMessage::Part(Part {
                    nodes: vec![NodeSummary {
                        prefix: Prefix::ROOT,
                        view: NodeView::Children(vec![(
                            99,
                            gossip_antientropy::ShortDigest([0; 16]),
                        )]),
                    }],
                    end_of_turn: true,
                    ..Part::default()
                }),
                cluster(),
            ),
        ),
        (
            "inconsistent delta",
            frame(
                &SyncMessage::Part(Part {
                    delta: Delta {
                        owners: vec![split(5, vec![entry("a", 3), entry("b", 2)], true)],
                    },
                    end_of_turn: true,
                    ..Part::default()
                }),
                cluster(),
            ),
        ),
        ("split delta out of order", {
            let first = SyncMessage::Part(Part {
                delta: Delta {
                    owners: vec![split(4, vec![entry("a", 4)], false)],
                },
                ..Part::default()
            });
            let second = SyncMessage::Part(Part {
                delta: Delta {
                    owners: vec![split(6, vec![entry("b", 2)], true)],
                },
                end_of_turn: true,
                ..Part::default()
            });
            let mut both = frame(&first, cluster());
            both.extend(frame(&second, cluster()));
            both
        }),
    ];
    for (what, bytes) in bad_cases {
        let mut state = replica(1);
        deliver(&owner, &mut state);
        let before = (content(&state), state.root());
        let mut session = waiting_responder(&mut state);
        let before_session = (content(&state), state.root());
        assert_eq!(before, before_session);
        // The two-message case: feed the first (accepted, buffered) then the second.
        let result = if what == "split delta out of order" {
            let cut = frame(
                &SyncMessage::Part(Part {
                    delta: Delta {
                        owners: vec![split(4, vec![entry("a", 4)], false)],
                    },
                    ..Part::default()
                }),
                cluster(),
            )
            .len();
            session
                .handle_bytes(Timestamp::ZERO, &mut state, &bytes[..cut])
                .unwrap();
            session.handle_bytes(Timestamp::ZERO, &mut state, &bytes[cut..])
        } else {
            session.handle_bytes(Timestamp::ZERO, &mut state, &bytes)
        };
        let err = result.expect_err(what);
        match what {
            "garbage" | "truncated" | "foreign cluster" | "oversized" => {
                assert!(matches!(err, Error::Decode(_)), "{what}: {err}")
            }
            "inconsistent delta" => assert!(
                matches!(
                    err,
                    Error::Refused(gossip_core::Error::InconsistentDelta { .. })
                ),
                "{what}: {err}"
            ),
            _ => assert!(matches!(err, Error::Protocol(_)), "{what}: {err}"),
        }
        assert!(session.is_finished(), "{what}: session still open");
        assert_eq!(
            (content(&state), state.root()),
            before,
            "{what} changed the state"
        );
        assert!(
            session
                .handle_bytes(
                    Timestamp::ZERO,
                    &mut state,
                    &frame(&SyncMessage::Part(Part::default()), cluster())
                )
                .is_err()
        );
    }
}

#[test]
fn a_peer_that_keeps_lying_about_hashes_is_cut_off() {
    let mut state = replica(1);
    let mut session = waiting_responder(&mut state);
    // Every turn claims the root's children all differ and never converges.
    let lie = SyncMessage::Part(Part {
        nodes: vec![NodeSummary {
            prefix: Prefix::ROOT,
            view: NodeView::Children(
                (0..16)
                    .map(|n| (n, gossip_antientropy::ShortDigest([n; 16])))
                    .collect(),
            ),
        }],
        end_of_turn: true,
        ..Part::default()
    });
    let bytes = frame(&lie, cluster());
    let mut turns = 0;
    let err = loop {
        turns += 1;
        match session.handle_bytes(Timestamp::ZERO, &mut state, &bytes) {
            Ok(()) => while session.poll_transmit().is_some() {},
            Err(err) => break err,
        }
        assert!(turns < 1000, "never cut off");
    };
    assert_eq!(err, Error::Protocol("too many turns"));
}

#[test]
fn an_idle_session_times_out() {
    let mut state = replica(1);
    let mut session = waiting_responder(&mut state);
    let deadline = session.poll_timeout().unwrap();
    session.handle_timeout(deadline);
    assert_eq!(session.error(), Some(&Error::TimedOut));
    assert!(session.is_finished());
}

#[test]
fn round_trips_follow_the_tree_depth_not_the_cluster() {
    // 5,000 owners of one key each: a tree several levels deep.
    let owners: Vec<KvStore> = (0..5000)
        .map(|n| {
            let mut owner = owner_store(n);
            owner.set("k", &b"v"[..]).unwrap();
            owner
        })
        .collect();
    let mut a = replica(1);
    let mut b = replica(2);
    for owner in &owners {
        deliver(owner, &mut a);
        deliver(owner, &mut b);
    }
    // The replicas still differ in each other's member record.
    run_session(&mut a, &mut b, &sync_config(64 * 1024), |_, _| {});
    let equal = run_session(&mut a, &mut b, &sync_config(64 * 1024), |_, _| {});
    assert_eq!(equal.round_trips(), 1);
    assert!(
        equal.bytes() <= 64,
        "{} bytes for equal replicas",
        equal.bytes()
    );

    let mut changed = owners;
    for owner in changed.iter_mut().step_by(500) {
        owner.set("k", &b"w"[..]).unwrap();
        deliver(owner, &mut a);
    }
    let run = run_session(&mut a, &mut b, &sync_config(64 * 1024), |_, _| {});
    // ceil(log16 5000) + 2 = 6.
    assert!(run.round_trips() <= 6, "{} round trips", run.round_trips());
    assert!(
        run.bytes() < 10 * 3000,
        "{} bytes for 10 differences",
        run.bytes()
    );
    assert_eq!(content(&a), content(&b));
}
