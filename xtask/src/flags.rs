//! Command-line flags of `cargo xtask`.

use clap::{Parser, Subcommand};

/// The workspace's chores.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// The first thing to run: five agents on loopback converge, one is
    /// killed and detected, a key spreads, and everything is cleaned up.
    Demo,
    /// Real agents in network namespaces under scripted faults (loss,
    /// partition, heal, crash and restart, one-way partition), checked after
    /// each step through their admin APIs. Needs root; without it, says so
    /// and exits cleanly.
    Chaos {
        /// Agents, one per namespace (at least 8).
        #[arg(long, default_value_t = 8)]
        nodes: usize,
    },
    /// Everything CI checks: fmt, clippy (warnings denied), the tests, the doc
    /// tests, rustdoc (warnings denied), tidy, and every fuzz target for a
    /// few seconds.
    Ci,
    /// Structural checks: the sans-IO crates depend on no runtime, socket or
    /// entropy crate; every crate takes the workspace lints; every top-level
    /// folder is a crate.
    Tidy,
    /// Runs a measurement scenario and prints its figures, e.g.
    /// `cargo xtask sim reconcile --entries 10000,100000 --diffs 0,1,10 --json`.
    /// Scenarios: `reconcile` (one anti-entropy sync between two replicas);
    /// `detect`, `disseminate`, `load`, `bootstrap`, `partition`, `falsepos`, `weighted`, `memory`
    /// (whole simulated clusters); `sweep` (the fault tier over many seeds).
    Sim {
        /// The scenario.
        scenario: String,
        /// Arguments for the scenario (`cargo xtask sim reconcile -- --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Runs the fuzz targets in `fuzz/` (cargo-fuzz, installed if missing,
    /// on the stable toolchain) and prints executions and coverage, e.g.
    /// `cargo xtask fuzz swim_machine --seconds 600`. Targets: frame_swim,
    /// frame_sync, transport_frames, node_stream, swim_machine, sync_session.
    Fuzz {
        /// One target; all of them when omitted.
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Runs the criterion benches (`cargo bench --workspace`); extra arguments
    /// are passed on, e.g. `cargo xtask bench -- merge`. `cargo xtask bench
    /// cluster --nodes N [--json] [--window S] [--warmup S]` instead runs N
    /// in-process nodes on loopback and prints join, detection, key spread
    /// and steady-state cost figures.
    Bench {
        /// Arguments for `cargo bench`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}
