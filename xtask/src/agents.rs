//! What the commands that run real agents share: building the binary,
//! making certificates, reading an agent's view, and waiting.

#![allow(
    clippy::disallowed_methods,
    reason = "real processes are waited for by the wall clock"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Builds the reference agent (debug) and returns its path.
pub(crate) fn build_binary(root: &Path) -> Result<PathBuf> {
    crate::run(
        "cargo",
        &[
            "build",
            "--quiet",
            "--package",
            "gossip-node",
            "--bin",
            "gossip-node",
        ],
        &[],
    )?;
    Ok(root.join("target/debug/gossip-node"))
}

/// Runs `command`, failing with its stderr if it fails; returns its stdout.
pub(crate) fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?}: {}",
            command,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes a cluster CA for `cluster` and a certificate per name, in `certs`.
pub(crate) fn make_certs(bin: &Path, certs: &Path, cluster: &str, names: &[String]) -> Result<()> {
    let certs = certs.to_str().context("a UTF-8 temporary path")?;
    output(Command::new(bin).args(["certs", "init-ca", "--cluster", cluster, "--dir", certs]))?;
    for name in names {
        output(Command::new(bin).args([
            "certs", "issue", "--ca-dir", certs, "--name", name, "--out", certs,
        ]))?;
    }
    Ok(())
}

/// Reads `gossip-node members --json` output: name -> status.
pub(crate) fn parse_view(json: &str) -> BTreeMap<String, String> {
    let Ok(members) = serde_json::from_str::<Vec<serde_json::Value>>(json) else {
        return BTreeMap::new();
    };
    members
        .iter()
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_string(),
                m["status"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Polls `check` every 100 ms until it holds or `limit` passes; returns how
/// long it took.
pub(crate) fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
