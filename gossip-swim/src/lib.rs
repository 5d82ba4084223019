//! SWIM failure detection with the Lifeguard extensions, as a sans-IO state
//! machine.
//!
//! [`Swim`] detects failed members of a cluster the way SWIM does (Das,
//! Gupta and Motivala, 2002): each protocol period it probes one member, in a
//! shuffled round-robin; a probe that gets no ack is retried through `k`
//! other members; a member nobody can reach becomes *suspect*, and *dead*
//! unless it refutes before the suspicion times out. News rides on the
//! probes and acks themselves (infection-style dissemination), and fresh news
//! is also pushed at once to a few members.
//!
//! The three Lifeguard extensions (Dadgar, Phillips and Currey, 2018) make it
//! far less likely to accuse a healthy node that is merely slow, or to be
//! misled by a node that is itself slow:
//!
//! * **local health multiplier**: missed acks and nacks raise a score that
//!   stretches this node's own probe interval and timeout;
//! * **dynamic suspicion timeout**: starts long and shrinks with each
//!   independent confirmation;
//! * **buddy system**: a probe of a suspect carries the suspicion, so the
//!   suspect can refute at once.
//!
//! # The sans-IO contract
//!
//! The machine never reads a clock, opens a socket, spawns or locks. Time is
//! passed in as [`Timestamp`](gossip_core::Timestamp) and randomness comes
//! from [`Config::rng_seed`]. After any input
//! ([`handle_datagram`](Swim::handle_datagram),
//! [`handle_timeout`](Swim::handle_timeout) or a command), the driver drains
//! [`poll_transmit`](Swim::poll_transmit) and
//! [`poll_event`](Swim::poll_event) until they return `None`, and sleeps until
//! [`poll_timeout`](Swim::poll_timeout). See [`Swim`] for a complete loop.
//!
//! # Identity
//!
//! `from`, given with each datagram, is the sender the transport
//! authenticated: frames name no sender, so there is none to forge. Past
//! the first hop, a claim is believed only if its maker signed it: a
//! member's record of itself (incarnation, alive or left, addresses) and its
//! writes carry its signature, an accusation its accuser's
//! ([`gossip_core::Member::verify`]). A relay can pass claims on, never
//! make or change one. Refused claims are counted by reason
//! ([`Stats::refused`]) and reported ([`Event::ClaimRefused`]).
//! Accusations record their accuser, and [`Event::Failed`] carries the
//! [`Provenance`] of a death.

#![forbid(unsafe_code)]

mod config;
mod error;
mod event;
mod lifeguard;
mod machine;
mod message;
mod stats;

pub use config::{Config, InvalidConfig, PeerSelection};
pub use error::Error;
pub use event::{Event, Provenance, Transmit};
pub use machine::Swim;
pub use message::{JoinRefusal, Message, StateDigest, TargetTag};
pub use stats::Stats;
