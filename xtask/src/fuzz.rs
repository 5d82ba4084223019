//! `cargo xtask fuzz [TARGET] [--seconds S]`: runs the cargo-fuzz targets in
//! `fuzz/` on the stable toolchain and prints a table of executions and
//! coverage.
//!
//! cargo-fuzz passes `-Zsanitizer=address` and other unstable flags to rustc.
//! A stable toolchain accepts them when `RUSTC_BOOTSTRAP=1` is set, which is
//! how the targets build here without a nightly toolchain. Each target
//! starts from its checked-in seeds (`fuzz/seeds/<target>`, real encoded
//! messages) and grows a working corpus in `target/fuzz/corpus/<target>`,
//! outside the source tree; crashes land in `target/fuzz/artifacts/<target>`.

#![allow(clippy::print_stdout, reason = "the table is the command's output")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Every target, with the longest input libFuzzer may try: the decoders take
/// one message, the machine targets a sequence of operations.
pub(crate) const TARGETS: &[(&str, usize)] = &[
    ("frame_swim", 1500),
    ("frame_sync", 70_000),
    ("transport_frames", 70_000),
    ("node_stream", 70_000),
    ("swim_machine", 8192),
    ("sync_session", 8192),
    ("member_replica", 8192),
];

/// What one run of a target printed at its end.
#[derive(Debug, Default)]
struct Figures {
    runs: u64,
    seconds: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
}

impl Figures {
    /// Reads libFuzzer's last status line (`#N DONE cov: C ft: F corp: K/...`)
    /// and its `Done N runs in S second(s)` line.
    fn parse(output: &str) -> Figures {
        let mut figures = Figures::default();
        let field = |line: &str, name: &str| -> Option<u64> {
            let rest = &line[line.find(name)? + name.len()..];
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        for line in output.lines() {
            if line.starts_with('#') && line.contains("cov: ") {
                figures.coverage = field(line, "cov:").unwrap_or(figures.coverage);
                figures.features = field(line, "ft:").unwrap_or(figures.features);
                figures.corpus = field(line, "corp:").unwrap_or(figures.corpus);
            }
            if let Some(rest) = line.strip_prefix("Done ") {
                figures.runs = field(rest, "").unwrap_or(0);
                figures.seconds = field(rest, " in").unwrap_or(0);
            }
        }
        figures
    }
}

fn fuzz_dir(root: &Path) -> PathBuf {
    root.join("fuzz")
}

/// Installs cargo-fuzz when it is missing: the fuzz targets need it, and
/// nothing is assumed to have been installed by hand.
fn ensure_cargo_fuzz() -> Result<()> {
    if crate::has_cargo_subcommand("fuzz") {
        return Ok(());
    }
    eprintln!("fuzz: cargo-fuzz not found; installing it with `cargo install --locked cargo-fuzz`");
    crate::run("cargo", &["install", "--locked", "cargo-fuzz"], &[])
}

/// Builds every target (with the sanitizer), without running any.
pub(crate) fn build(root: &Path) -> Result<()> {
    ensure_cargo_fuzz()?;
    let status = Command::new("cargo")
        .args(["fuzz", "build"])
        .current_dir(fuzz_dir(root))
        .env("RUSTC_BOOTSTRAP", "1")
        .status()
        .context("cannot start cargo fuzz")?;
    if !status.success() {
        bail!("`cargo fuzz build` failed ({status})");
    }
    Ok(())
}

/// Runs `target` (or every target) for `seconds` each.
pub(crate) fn run(root: &Path, target: Option<&str>, seconds: u64) -> Result<()> {
    let targets: Vec<(&str, usize)> = match target {
        None => TARGETS.to_vec(),
        Some(name) => match TARGETS.iter().find(|(t, _)| *t == name) {
            Some(&found) => vec![found],
            None => bail!(
                "unknown fuzz target `{name}`; known: {}",
                TARGETS
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    build(root)?;
    let mut rows = Vec::new();
    for (target, max_len) in targets {
        let figures = run_one(root, target, max_len, seconds)?;
        rows.push((target, figures));
    }
    println!(
        "{:<18} {:>12} {:>8} {:>10} {:>10} {:>8}",
        "target", "executions", "exec/s", "coverage", "features", "corpus"
    );
    for (target, f) in rows {
        println!(
            "{:<18} {:>12} {:>8} {:>10} {:>10} {:>8}",
            target,
            f.runs,
            f.runs / f.seconds.max(1),
            f.coverage,
            f.features,
            f.corpus
        );
    }
    println!("(coverage: code edges reached; features: libFuzzer's finer coverage signals)");
    Ok(())
}

fn run_one(root: &Path, target: &str, max_len: usize, seconds: u64) -> Result<Figures> {
    let fuzz = fuzz_dir(root);
    let work = root.join("target/fuzz");
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus).context("creating the working corpus")?;
    std::fs::create_dir_all(&artifacts).context("creating the artifacts folder")?;
    let seeds = fuzz.join("seeds").join(target);
    let mut args: Vec<String> = vec![
        "fuzz".into(),
        "run".into(),
        target.into(),
        corpus.display().to_string(),
    ];
    if seeds.is_dir() {
        args.push(seeds.display().to_string());
    }
    args.extend([
        "--".into(),
        format!("-max_total_time={seconds}"),
        format!("-max_len={max_len}"),
        // Any single allocation over this is a bug: every decoder is capped
        // far below it.
        "-malloc_limit_mb=256".into(),
        "-rss_limit_mb=2048".into(),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".into(),
    ]);
    eprintln!("$ cargo {}", args.join(" "));
    let output = Command::new("cargo")
        .args(&args)
        .current_dir(&fuzz)
        .env("RUSTC_BOOTSTRAP", "1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .context("cannot start cargo fuzz")?;
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{log}");
        bail!(
            "fuzz target `{target}` failed; the input is in {} (replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {target} <that file>)",
            artifacts.display()
        );
    }
    let figures = Figures::parse(&log);
    eprintln!(
        "fuzz: {target}: {} executions in {} s, coverage {}",
        figures.runs, figures.seconds, figures.coverage
    );
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_output_is_read() {
        let log = "#1024\tpulse  cov: 10 ft: 20 corp: 3/30b\n\
                   #73780\tDONE   cov: 2318 ft: 7170 corp: 398/12258b lim: 110 exec/s: 2380 rss: 445Mb\n\
                   Done 73780 runs in 31 second(s)\n";
        let figures = Figures::parse(log);
        assert_eq!(figures.runs, 73_780);
        assert_eq!(figures.seconds, 31);
        assert_eq!(figures.coverage, 2318);
        assert_eq!(figures.features, 7170);
        assert_eq!(figures.corpus, 398);
    }
}
