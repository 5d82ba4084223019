//! `cargo xtask <command>`: the workspace's chores, in Rust so they run the
//! same everywhere. `cargo xtask --help` lists the commands.

mod agents;
mod chaos;
mod demo;
mod deploy;
mod flags;
mod fuzz;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;

use flags::{Cli, Cmd};

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    std::env::set_current_dir(&root)
        .with_context(|| format!("cannot enter the workspace root {}", root.display()))?;
    match cli.command {
        Cmd::Ci => ci(),
        Cmd::Demo => demo::run(&root),
        Cmd::Chaos { nodes } => chaos::run(&root, nodes),
        Cmd::Tidy => tidy::run(&root),
        Cmd::Bench { args } => bench(&args),
        Cmd::Sim { scenario, args } => sim(&scenario, &args),
        Cmd::Fuzz { target, seconds } => fuzz::run(&root, target.as_deref(), seconds),
    }
}

/// The workspace root: the parent of this crate's folder.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

/// Runs `program args...`, echoing it, and fails if it fails.
pub(crate) fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    eprintln!("$ {} {}", program, args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `true` if `cargo <sub> --version` works.
fn has_cargo_subcommand(sub: &str) -> bool {
    Command::new("cargo")
        .args([sub, "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Seconds each fuzz target runs in CI.
const CI_FUZZ_SECONDS: u64 = 10;

/// Every check CI runs, in order, stopping at the first failure. Features
/// are all on, so feature-gated code (the transport's fault injection) is
/// checked and tested too.
fn ci() -> Result<()> {
    run("cargo", &["fmt", "--all", "--", "--check"], &[])?;
    run(
        "cargo",
        &["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"],
        &[],
    )?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    if has_cargo_subcommand("nextest") {
        run(
            "cargo",
            &[
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--locked",
                "--no-fail-fast",
            ],
            &[],
        )?;
    } else {
        eprintln!("cargo-nextest not found: running the tests with cargo test instead");
        run(
            "cargo",
            &[
                "test",
                "--workspace",
                "--all-features",
                "--locked",
                "--lib",
                "--bins",
                "--tests",
            ],
            &[],
        )?;
    }
    // nextest does not run doc tests: they are README and API examples, so they
    // run here.
    run(
        "cargo",
        &["test", "--workspace", "--all-features", "--locked", "--doc"],
        &[],
    )?;
    run(
        "cargo",
        &[
            "doc",
            "--workspace",
            "--all-features",
            "--no-deps",
            "--locked",
        ],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    tidy::run(&project_root())?;
    deploy::check(&project_root())?;
    each_crate_alone(&project_root())?;
    // Every fuzz target builds and runs briefly: long runs are
    // `cargo xtask fuzz --seconds 600`.
    fuzz::run(&project_root(), None, CI_FUZZ_SECONDS)?;
    eprintln!("cargo xtask ci: all checks passed");
    Ok(())
}

/// Every crate as a user who takes only that crate runs its tests: `cargo
/// test -p NAME` with default features, so no test depends on a feature
/// that only another crate of the workspace turns on. Every crate's tests
/// are built that way; those of a crate with features of its own, whose
/// default test set differs from the all-features run above, are run too.
fn each_crate_alone(root: &Path) -> Result<()> {
    for krate in tidy::workspace_members(root)? {
        let manifest = std::fs::read_to_string(root.join(&krate).join("Cargo.toml"))
            .with_context(|| format!("reading {krate}/Cargo.toml"))?;
        let has_features = manifest.lines().any(|line| line.trim() == "[features]");
        let mut args = vec!["test", "-p", krate.as_str(), "--locked"];
        if !has_features {
            args.push("--no-run");
        }
        run("cargo", &args, &[])?;
    }
    Ok(())
}

/// Runs a measurement scenario in release mode.
fn sim(scenario: &str, args: &[String]) -> Result<()> {
    let (package, example) = match scenario {
        "reconcile" => ("gossip-antientropy", "reconcile"),
        "detect" | "disseminate" | "load" | "bootstrap" | "partition" | "falsepos" | "restart"
        | "weighted" | "memory" | "sweep" => ("gossip-sim", "scenarios"),
        other => bail!(
            "unknown scenario `{other}`; known: reconcile, detect, disseminate, load, bootstrap, partition, falsepos, restart, weighted, memory, sweep"
        ),
    };
    let mut all = vec![
        "run",
        "--release",
        "--quiet",
        "--package",
        package,
        "--example",
        example,
        "--",
    ];
    if package == "gossip-sim" {
        all.push(scenario);
    }
    all.extend(args.iter().map(String::as_str));
    run("cargo", &all, &[])
}

/// Runs the criterion benches; extra arguments go to `cargo bench`.
/// `bench cluster ...` runs the in-process cluster measurement instead: as
/// root, in a network namespace of its own, whose loopback counters give
/// the IP-level cost (`--ip-counters`); otherwise it says why not and
/// reports the payload figures only.
fn bench(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("cluster") {
        run(
            "cargo",
            &[
                "build",
                "--release",
                "--quiet",
                "--package",
                "gossip-node",
                "--features",
                "fault-injection",
                "--example",
                "cluster_bench",
            ],
            &[],
        )?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| PathBuf::from("target"), PathBuf::from);
        let bench = target.join("release/examples/cluster_bench");
        let bench = bench.to_str().context("a UTF-8 target path")?;
        let mut bench_args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        return match BenchNamespace::create() {
            Ok(namespace) => {
                eprintln!(
                    "bench: in network namespace {} (IP-level counters from its loopback)",
                    namespace.0
                );
                bench_args.push("--ip-counters");
                let mut all = vec!["netns", "exec", &namespace.0, bench];
                all.extend(bench_args);
                run("ip", &all, &[])
            }
            Err(why) => {
                eprintln!("bench: no IP-level counters: {why}; payload figures only");
                run(bench, &bench_args, &[])
            }
        };
    }
    let mut all = vec!["bench", "--workspace"];
    all.extend(args.iter().map(String::as_str));
    run("cargo", &all, &[])
}

/// A network namespace with only its loopback up, removed on drop.
struct BenchNamespace(String);

impl BenchNamespace {
    fn create() -> Result<BenchNamespace, String> {
        let uid = agents::output(Command::new("id").arg("-u")).unwrap_or_default();
        if uid.trim() != "0" {
            return Err("a network namespace of its own needs root".into());
        }
        let name = format!("gossip-bench-{}", std::process::id());
        agents::output(Command::new("ip").args(["netns", "add", &name]))
            .map_err(|e| format!("`ip netns add` failed ({e})"))?;
        let namespace = BenchNamespace(name);
        agents::output(Command::new("ip").args([
            "netns",
            "exec",
            &namespace.0,
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ]))
        .map_err(|e| format!("cannot bring its loopback up ({e})"))?;
        Ok(namespace)
    }
}

impl Drop for BenchNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}
