//! Counters.

use gossip_core::Refusals;

/// Counters of what the machine has seen and done, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams handed to the machine.
    pub datagrams_in: u64,
    /// Datagrams the machine produced.
    pub datagrams_out: u64,
    /// Bytes handed to the machine.
    pub bytes_in: u64,
    /// Bytes the machine produced.
    pub bytes_out: u64,
    /// Datagrams that did not decode, of every kind below and others.
    pub decode_errors: u64,
    /// ... of which belonged to another cluster.
    pub foreign_cluster: u64,
    /// ... of which spoke another wire version.
    pub bad_version: u64,
    /// ... of which were over the size cap.
    pub oversized: u64,
    /// Pings meant for another node.
    pub misdirected: u64,
    /// Claims refused, by reason: not signed by their maker, older than
    /// held, implausible, by or about a revoked node, over a cap.
    pub refused: Refusals,
    /// Accusations of this node it could not refute: its incarnation is at
    /// the top of the range, and it must rejoin under a new identity.
    pub refutations_failed: u64,
    /// Probes sent.
    pub probes: u64,
    /// Probes that fell back to indirect probing.
    pub indirect_probes: u64,
    /// Fallback probes sent over a reliable channel after a direct ack was
    /// overdue.
    pub fallback_probes: u64,
    /// Nacks received for our indirect probes.
    pub nacks_received: u64,
    /// Nacks sent for others' indirect probes.
    pub nacks_sent: u64,
    /// Members this node suspected after a failed probe or an unreachable
    /// report.
    pub suspicions_raised: u64,
    /// Probes concluded before the end of their period because every
    /// helper asked had nacked, or all but one of at least three.
    pub probes_concluded_early: u64,
    /// Unreachable reports ([`Swim::handle_unreachable`](crate::Swim::handle_unreachable))
    /// for the address of a live member.
    pub unreachable_reports: u64,
    /// Unreachable reports for an address no live member holds.
    pub unreachable_ignored: u64,
    /// Suspicions whose timeout was cut to `unreachable_suspicion`: this
    /// node's own unreachable evidence and another member's suspicion.
    pub suspicions_hastened: u64,
    /// Check pings sent to a member on first hearing another's suspicion
    /// of it.
    pub suspect_checks: u64,
    /// Check pings not sent because this probe interval's were spent (a
    /// mass event: many suspicions at once).
    pub suspect_checks_skipped: u64,
    /// Check pings sent again, after one went unanswered and drew no ICMP
    /// error (they are in `suspect_checks` too).
    pub suspect_rechecks: u64,
    /// Suspicions whose deadline came with no recent last call of the
    /// suspect (this node was stalled through it): the suspect was called
    /// then, and declared dead a probe timeout later if still suspect.
    pub late_calls: u64,
    /// Suspicions whose deadline came while the ack of one of this node's
    /// probes was overdue and nothing that arrived after it was due had been
    /// handled (its input lags or has stopped), or while it was back from a
    /// stall: the declaration waited, for at most the stall patience.
    pub declarations_awaiting_input: u64,
    /// Times this node found its timers a probe period or more behind (it
    /// was stalled); once in the cluster, it announced itself alive.
    pub stalls: u64,
    /// Failed probes that raised no suspicion because no helper answered,
    /// not even with a nack: the fault was likely this node's (Lifeguard's
    /// local health on, below the top of its scale).
    pub inconclusive_probes: u64,
    /// Failed probes that accused no one because their target announced a
    /// newer incarnation after the ping went out: the silence was its
    /// earlier life's.
    pub probes_outlived: u64,
    /// Members this node declared dead after a suspicion timed out.
    pub deaths_declared: u64,
    /// Times this node refuted an accusation.
    pub refutations: u64,
    /// Pings sent out of turn to a suspect that spoke to this node, carrying
    /// the suspicion so that its refutation comes back on the ack.
    pub suspect_reminders: u64,
    /// Immediate pushes of fresh rumors.
    pub gossip_pushes: u64,
    /// Pings whose state digest differed from the local one.
    pub state_digest_mismatches: u64,
    /// Joins this node refused (its table full, or the joiner's identity
    /// live at another address), each answered with the reason.
    pub joiners_refused: u64,
    /// Join attempts of this node that a seed refused.
    pub joins_refused: u64,
    /// Claims refused because they would have moved a live member to
    /// another address.
    pub address_conflicts: u64,
    /// Live records of this node heard at another address than its own.
    pub claims_elsewhere: u64,
    /// Key/value writes refused because their sender spoke from another
    /// address than the one its identity is held at, after a conflict.
    pub state_refused_elsewhere: u64,
}
