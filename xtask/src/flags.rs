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
    /// Everything CI checks: fmt, clippy (warnings denied), the tests, the doc
    /// tests, rustdoc (warnings denied) and tidy.
    Ci,
    /// Structural checks: the sans-IO crates depend on no runtime, socket or
    /// entropy crate; every crate takes the workspace lints; every top-level
    /// folder is a crate.
    Tidy,
    /// Runs the criterion benches (`cargo bench --workspace`); extra arguments
    /// are passed on, e.g. `cargo xtask bench -- merge`.
    Bench {
        /// Arguments for `cargo bench`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}
