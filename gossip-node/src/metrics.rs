//! The node's metrics, with Prometheus-style names. This table is the one
//! place they are documented; [`Metrics::to_prometheus`] renders them in the
//! Prometheus text format.
//!
//! | name | type | what |
//! |---|---|---|
//! | `gossip_members` | gauge | members by `status` (alive, suspect, dead, left), this node included |
//! | `gossip_local_health` | gauge | Lifeguard's local health score: 0 is healthy; higher means this node is slow to answer and stretches its timeouts |
//! | `gossip_input_lag_milliseconds` | gauge | how late the latest SWIM frame was handled, from the transport taking it off the wire to the failure detector handling it: a lag near the probe timeout means this node hears the others late (an overloaded process), and it holds back declaring deaths meanwhile |
//! | `gossip_incarnation` | gauge | this node's incarnation |
//! | `gossip_probes_total` | counter | probes sent |
//! | `gossip_indirect_probes_total` | counter | probes that fell back to asking others |
//! | `gossip_fallback_probes_total` | counter | probes that also pinged their target over a stream (a reliable channel) once the direct ack was overdue |
//! | `gossip_suspicions_total` | counter | members this node suspected after a failed probe or an unreachable report |
//! | `gossip_suspect_checks_total` | counter | check pings sent to a member on first hearing another member's suspicion of it, and again (up to three times) while it stays silent |
//! | `gossip_unreachable_total` | counter | ICMP errors saying a peer's address does not answer, by `outcome`: `evidence` (for a live member's address: taken as evidence its process is gone), `no_member` (for no live member's address), `unmatched` (quoting no datagram sent there lately: forged or very late, ignored), `dropped` (not read in time) |
//! | `gossip_suspicions_hastened_total` | counter | suspicions cut to `unreachable_suspicion`: this node's own unreachable evidence and another member's suspicion |
//! | `gossip_probes_inconclusive_total` | counter | failed probes that raised no suspicion because no helper answered, not even with a nack (this node is likely the slow one) |
//! | `gossip_probes_outlived_total` | counter | failed probes that accused no one because their target announced a newer incarnation after the ping went out |
//! | `gossip_deaths_declared_total` | counter | members this node declared dead |
//! | `gossip_refutations_total` | counter | accusations of this node that it refuted |
//! | `gossip_stalls_total` | counter | times this node found its timers a probe period or more behind (a pause, a starved process, a suspended host) and announced itself alive |
//! | `gossip_suspect_reminders_total` | counter | pings sent out of turn to a suspect, carrying the suspicion: when the suspect spoke to this node, and as a last call before its suspicion runs out |
//! | `gossip_gossip_pushes_total` | counter | immediate pushes of fresh news |
//! | `gossip_swim_datagrams_total` | counter | SWIM frames, by `direction` (in, out) |
//! | `gossip_swim_bytes_total` | counter | SWIM frame bytes, by `direction`, before encryption |
//! | `gossip_decode_errors_total` | counter | frames or messages that did not decode, by `layer` (swim, stream) |
//! | `gossip_refusals_total` | counter | input refused, by `reason`: for claims (member records, accusations, key/value writes; by rumor, table or sync) `bad_signature` (not signed by its subject, or for an accusation its accuser), `stale` (older than the one held: a late rumor or a replay), `implausible` (an incarnation or version jump over the cap), `revoked` (by or about a revoked node), `inconsistent` (writes that do not make the state their owner signed), `over_limit`; and `misdirected` (probe for another node), `state_elsewhere` (a key/value write whose sender spoke from another address than the one its identity is held at, after a conflict), `foreign_cluster`, `tls` (handshake refused: untrusted or expired certificate), and for UDP datagrams that are no QUIC packet for this node: `udp_malformed` (too short for a header), `udp_quic_version` (a QUIC version not spoken here), `udp_unknown_connection` (a connection id this node never issued: noise, or a restarted peer's stateless reset); for sealed datagrams: `sealed_unopened` (a key no connection of this node has, as a peer's earlier life used, or a forgery), `sealed_replayed` (a counter seen already: a duplicate or a replay) |
//! | `gossip_join_refusals_total` | counter | joins refused (a member table full, or the joiner's identity alive at another address), by `side`: `by_this_node` (a joiner this node turned away, and told why) and `of_this_node` (this node's join attempts a seed turned away) |
//! | `gossip_identity_conflicts_total` | counter | one identity seen at two addresses, by `kind`: `member_moved` (a claim that would have moved a live member to another address, refused), `this_node_elsewhere` (a live record of this node at another address: an earlier life, or a second process), `this_node_answers_elsewhere` (a second process answered at that address as this node) |
//! | `gossip_syncs_total` | counter | anti-entropy sessions, by `role` (initiator, responder) and `outcome` (started, completed, failed; and for responders `refused`, when too many ran at once); and sync messages of either role dropped (`role="any"`, `outcome="refused_elsewhere"`) because their sender spoke from another address than the one its identity is held at, after a conflict |
//! | `gossip_sync_bytes_total` | counter | anti-entropy bytes, by `direction` |
//! | `gossip_sync_entries_received_total` | counter | key/value writes received by anti-entropy |
//! | `gossip_state_digest_mismatches_total` | counter | probes whose state digest differed from this node's |
//! | `gossip_kv_keys` | gauge | this node's own keys |
//! | `gossip_kv_owners` | gauge | nodes whose keys this node replicates |
//! | `gossip_quic_handshakes_total` | counter | QUIC handshakes completed, both directions |
//! | `gossip_quic_dial_failures_total` | counter | outgoing dials that failed |
//! | `gossip_quic_connections` | gauge | open QUIC connections |
//! | `gossip_quic_udp_datagrams_total` | counter | UDP datagrams of this node's QUIC connections (closed ones included; QUIC's own packets included) and sealed datagrams, by `direction` |
//! | `gossip_quic_udp_bytes_total` | counter | UDP bytes of this node's QUIC connections (closed ones included) and sealed datagrams, by `direction` |
//! | `gossip_sealed_datagrams_total` | counter | datagrams sent and received sealed beside QUIC with the connection's exported keys (no acknowledgement packet), by `direction` |
//! | `gossip_send_errors_total` | counter | sends that failed (peer unreachable, connection lost) |
//! | `gossip_connects_ahead_total` | counter | connections opened to members ahead of need, after the join |

use std::fmt::Write;

pub use gossip_member::SyncStats;
use gossip_swim::Stats as SwimStats;
use gossip_transport_quic::TransportStats;

/// Members by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberCounts {
    /// Alive, this node included.
    pub alive: u64,
    /// Suspected.
    pub suspect: u64,
    /// Declared dead.
    pub dead: u64,
    /// Left on purpose.
    pub left: u64,
}

/// Counters of the node's own glue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverCounters {
    /// Sends that failed.
    pub send_errors: u64,
    /// Stream messages that did not decode.
    pub stream_decode_errors: u64,
    /// Checks that found a second process answering as this node at
    /// another address.
    pub identity_answers_elsewhere: u64,
    /// Connections opened ahead of need (`NodeConfig::connect_ahead`).
    pub connects_ahead: u64,
}

/// A snapshot of every metric of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Members by status.
    pub members: MemberCounts,
    /// The local health score.
    pub local_health: u32,
    /// How late the latest SWIM frame was handled, in milliseconds.
    pub input_lag_ms: u64,
    /// This node's incarnation.
    pub incarnation: u64,
    /// The failure detector's counters.
    pub swim: SwimStats,
    /// Anti-entropy counters.
    pub sync: SyncStats,
    /// The transport's counters.
    pub transport: TransportStats,
    /// The node's own glue.
    pub driver: DriverCounters,
    /// This node's own keys.
    pub kv_keys: u64,
    /// Nodes whose keys this node replicates.
    pub kv_owners: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, &'static str)>, u64)>,
}

fn one(name: &'static str, help: &'static str, kind: Kind, value: u64) -> Family {
    Family {
        name,
        help,
        kind,
        samples: vec![(Vec::new(), value)],
    }
}

fn by(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> Family {
    Family {
        name,
        help,
        kind,
        samples: values
            .iter()
            .map(|(value, n)| (vec![(label, *value)], *n))
            .collect(),
    }
}

impl Metrics {
    fn families(&self) -> Vec<Family> {
        use Kind::{Counter, Gauge};
        let s = &self.swim;
        let t = &self.transport;
        let y = &self.sync;
        let m = &self.members;
        let in_out = |i: u64, o: u64| [("in", i), ("out", o)];
        // Claims refused by SWIM (rumors, tables) and by sync sessions.
        let mut claims = s.refused;
        claims += y.claims_refused;
        let mut refusals: Vec<(&'static str, u64)> =
            claims.iter().map(|(r, n)| (r.as_str(), n)).collect();
        let syncs = [
            ("initiator", "started", y.initiated),
            ("initiator", "completed", y.initiated_completed),
            ("initiator", "failed", y.initiated_failed),
            ("responder", "started", y.responded),
            ("responder", "completed", y.responded_completed),
            ("responder", "failed", y.responded_failed),
            ("responder", "refused", y.refused),
            ("any", "refused_elsewhere", y.refused_elsewhere),
        ];
        vec![
            by(
                "gossip_members",
                "Members by status, this node included.",
                Gauge,
                "status",
                &[
                    ("alive", m.alive),
                    ("suspect", m.suspect),
                    ("dead", m.dead),
                    ("left", m.left),
                ],
            ),
            one(
                "gossip_local_health",
                "Lifeguard local health score (0 is healthy).",
                Gauge,
                u64::from(self.local_health),
            ),
            one(
                "gossip_input_lag_milliseconds",
                "How late the latest SWIM frame was handled, in milliseconds.",
                Gauge,
                self.input_lag_ms,
            ),
            one(
                "gossip_incarnation",
                "This node's incarnation.",
                Gauge,
                self.incarnation,
            ),
            one("gossip_probes_total", "Probes sent.", Counter, s.probes),
            one(
                "gossip_indirect_probes_total",
                "Probes that fell back to indirect probing.",
                Counter,
                s.indirect_probes,
            ),
            one(
                "gossip_fallback_probes_total",
                "Probes that also pinged their target over a stream.",
                Counter,
                s.fallback_probes,
            ),
            one(
                "gossip_suspicions_total",
                "Members suspected after a failed probe.",
                Counter,
                s.suspicions_raised,
            ),
            one(
                "gossip_suspect_checks_total",
                "Check pings sent on first hearing another member's suspicion, and again while unanswered.",
                Counter,
                s.suspect_checks,
            ),
            by(
                "gossip_unreachable_total",
                "ICMP errors saying a peer's address does not answer, by outcome.",
                Counter,
                "outcome",
                &[
                    ("evidence", s.unreachable_reports),
                    ("no_member", s.unreachable_ignored),
                    ("unmatched", t.unreachable_unmatched),
                    ("dropped", t.unreachable_dropped),
                ],
            ),
            one(
                "gossip_suspicions_hastened_total",
                "Suspicions cut short by unreachable evidence and another member's suspicion.",
                Counter,
                s.suspicions_hastened,
            ),
            one(
                "gossip_probes_inconclusive_total",
                "Failed probes that raised no suspicion because no helper answered.",
                Counter,
                s.inconclusive_probes,
            ),
            one(
                "gossip_probes_outlived_total",
                "Failed probes that accused no one because their target announced a newer incarnation after the ping.",
                Counter,
                s.probes_outlived,
            ),
            one(
                "gossip_deaths_declared_total",
                "Members this node declared dead.",
                Counter,
                s.deaths_declared,
            ),
            one(
                "gossip_refutations_total",
                "Accusations of this node that it refuted.",
                Counter,
                s.refutations,
            ),
            one(
                "gossip_stalls_total",
                "Times this node found its timers a probe period or more behind and announced itself alive.",
                Counter,
                s.stalls,
            ),
            one(
                "gossip_suspect_reminders_total",
                "Pings sent out of turn to a suspect, carrying the suspicion.",
                Counter,
                s.suspect_reminders,
            ),
            one(
                "gossip_gossip_pushes_total",
                "Immediate pushes of fresh news.",
                Counter,
                s.gossip_pushes,
            ),
            by(
                "gossip_swim_datagrams_total",
                "SWIM frames by direction.",
                Counter,
                "direction",
                &in_out(s.datagrams_in, s.datagrams_out),
            ),
            by(
                "gossip_swim_bytes_total",
                "SWIM frame bytes by direction, before encryption.",
                Counter,
                "direction",
                &in_out(s.bytes_in, s.bytes_out),
            ),
            by(
                "gossip_decode_errors_total",
                "Frames or messages that did not decode, by layer.",
                Counter,
                "layer",
                &[
                    ("swim", s.decode_errors),
                    ("stream", self.driver.stream_decode_errors),
                ],
            ),
            by(
                "gossip_refusals_total",
                "Input refused, by reason.",
                Counter,
                "reason",
                {
                    refusals.extend([
                        ("misdirected", s.misdirected),
                        ("state_elsewhere", s.state_refused_elsewhere),
                        ("foreign_cluster", s.foreign_cluster),
                        ("tls", t.refused),
                        ("udp_malformed", t.datagrams_malformed),
                        ("udp_quic_version", t.datagrams_unsupported_version),
                        ("udp_unknown_connection", t.datagrams_unknown_connection_id),
                        ("sealed_unopened", t.sealed_rejected),
                        ("sealed_replayed", t.sealed_replayed),
                    ]);
                    &refusals
                },
            ),
            by(
                "gossip_join_refusals_total",
                "Joins refused (a table full, or the identity alive elsewhere), by side.",
                Counter,
                "side",
                &[
                    ("by_this_node", s.joiners_refused),
                    ("of_this_node", s.joins_refused),
                ],
            ),
            by(
                "gossip_identity_conflicts_total",
                "One identity seen at two addresses, by kind.",
                Counter,
                "kind",
                &[
                    ("member_moved", s.address_conflicts),
                    ("this_node_elsewhere", s.claims_elsewhere),
                    (
                        "this_node_answers_elsewhere",
                        self.driver.identity_answers_elsewhere,
                    ),
                ],
            ),
            Family {
                name: "gossip_syncs_total",
                help: "Anti-entropy sessions by role and outcome.",
                kind: Counter,
                samples: syncs
                    .iter()
                    .map(|(role, outcome, n)| (vec![("role", *role), ("outcome", *outcome)], *n))
                    .collect(),
            },
            by(
                "gossip_sync_bytes_total",
                "Anti-entropy bytes by direction.",
                Counter,
                "direction",
                &in_out(y.bytes_received, y.bytes_sent),
            ),
            one(
                "gossip_sync_entries_received_total",
                "Key/value writes received by anti-entropy.",
                Counter,
                y.entries_received,
            ),
            one(
                "gossip_state_digest_mismatches_total",
                "Probes whose state digest differed from this node's.",
                Counter,
                s.state_digest_mismatches,
            ),
            one(
                "gossip_kv_keys",
                "This node's own keys.",
                Gauge,
                self.kv_keys,
            ),
            one(
                "gossip_kv_owners",
                "Nodes whose keys this node replicates.",
                Gauge,
                self.kv_owners,
            ),
            one(
                "gossip_quic_handshakes_total",
                "QUIC handshakes completed, both directions.",
                Counter,
                t.handshakes,
            ),
            one(
                "gossip_quic_dial_failures_total",
                "Outgoing dials that failed.",
                Counter,
                t.dial_failures,
            ),
            one(
                "gossip_quic_connections",
                "Open QUIC connections.",
                Gauge,
                t.live_connections,
            ),
            by(
                "gossip_quic_udp_datagrams_total",
                "UDP datagrams of this node's QUIC connections (closed ones included) and sealed datagrams, by direction.",
                Counter,
                "direction",
                &in_out(t.udp_datagrams_received, t.udp_datagrams_sent),
            ),
            by(
                "gossip_quic_udp_bytes_total",
                "UDP bytes of this node's QUIC connections (closed ones included) and sealed datagrams, by direction.",
                Counter,
                "direction",
                &in_out(t.udp_bytes_received, t.udp_bytes_sent),
            ),
            by(
                "gossip_sealed_datagrams_total",
                "Datagrams sent and received sealed beside QUIC (no acknowledgement packet), by direction.",
                Counter,
                "direction",
                &in_out(t.sealed_received, t.sealed_sent),
            ),
            one(
                "gossip_send_errors_total",
                "Sends that failed.",
                Counter,
                self.driver.send_errors,
            ),
            one(
                "gossip_connects_ahead_total",
                "Connections opened to members ahead of need, after the join.",
                Counter,
                self.driver.connects_ahead,
            ),
        ]
    }

    /// The metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for family in self.families() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {kind}", family.name);
            for (labels, value) in family.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{} {value}", family.name);
                } else {
                    let labels: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                    let _ = writeln!(out, "{}{{{}}} {value}", family.name, labels.join(","));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented_in_the_module_table() {
        let source = include_str!("metrics.rs");
        let table: String = source
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .collect();
        let metrics = Metrics::default();
        for family in metrics.families() {
            assert!(
                table.contains(&format!("`{}`", family.name)),
                "{} is not in the table",
                family.name
            );
        }
    }

    #[test]
    fn the_text_format_has_help_type_and_labelled_samples() {
        let mut metrics = Metrics::default();
        metrics.members.alive = 5;
        metrics.swim.probes = 12;
        let text = metrics.to_prometheus();
        assert!(text.contains("# TYPE gossip_members gauge\n"));
        assert!(text.contains("gossip_members{status=\"alive\"} 5\n"));
        assert!(text.contains("gossip_probes_total 12\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            value.parse::<f64>().expect("a number");
        }
    }
}
