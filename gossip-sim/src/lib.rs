//! Deterministic simulation of whole gossip clusters.
//!
//! [`Sim`] runs many nodes, each the real [`gossip_swim::Swim`] machine, on
//! a virtual clock and a seeded network ([`NetConfig`]: latency, loss,
//! duplication; partitions, pauses, crashes and restarts as commands). No
//! threads, no sockets, no wall clock: the same seed gives the same run, bit
//! for bit ([`Sim::trace_hash`]), and a failing run replays from its seed.
//!
//! [`scenarios`] measures detection time, dissemination time and
//! steady-state load; `cargo xtask sim detect|disseminate|load` prints them.
//!
//! ```
//! use std::time::Duration;
//! use gossip_core::{ClusterId, MemberStatus};
//! use gossip_sim::{NetConfig, Sim};
//! use gossip_swim::Config;
//!
//! let mut sim = Sim::new(8, Config::lan(ClusterId::from_name("doc"), 8), NetConfig::default(), 42);
//! sim.converge_instantly();
//! sim.crash(3);
//! sim.run_for(Duration::from_secs(60));
//! assert!((0..8).filter(|&i| i != 3).all(|i| sim.view(i, 3) == Some(MemberStatus::Dead)));
//! ```

#![forbid(unsafe_code)]

pub mod scenarios;
mod sim;

pub use sim::{NetConfig, Seen, Sim, Traffic, addr_of, id_of, key_of};
