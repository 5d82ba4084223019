//! `cargo xtask tidy`: structural checks of the workspace. Also runs as a
//! `#[test]`, so a plain `cargo test` enforces it.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The crates that must stay sans-IO (ARCHITECTURE.md, invariants 1 to 3).
/// Those not written yet are skipped.
const SANS_IO_CRATES: &[&str] = &[
    "gossip-core",
    "gossip-swim",
    "gossip-antientropy",
    "gossip-member",
    "gossip-sim",
];

/// Crates a sans-IO crate may not depend on, even indirectly, with the reason.
const BANNED_IN_SANS_IO: &[(&str, &str)] = &[
    ("tokio", "an async runtime"),
    ("tokio-util", "an async runtime"),
    ("async-std", "an async runtime"),
    ("smol", "an async runtime"),
    ("async-io", "an async runtime"),
    ("async-executor", "an async runtime"),
    ("futures-executor", "an async runtime"),
    ("mio", "sockets"),
    ("socket2", "sockets"),
    ("quinn", "sockets (QUIC)"),
    ("quinn-proto", "QUIC"),
    ("quinn-udp", "sockets"),
    ("rustls", "TLS belongs to the transport"),
    ("getrandom", "OS entropy: randomness must be a seeded input"),
];

/// Top-level folders that are not crates.
const NOT_CRATES: &[&str] = &["target", "fuzz"];

pub(crate) fn run(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    let members = workspace_members(root)?;
    check_top_level_folders(root, &members, &mut problems)?;
    for member in &members {
        check_manifest(root, member, &mut problems)?;
        check_no_ignored_tests(&root.join(member), &mut problems)?;
    }
    for krate in SANS_IO_CRATES.iter().filter(|c| members.contains(**c)) {
        check_sans_io(root, krate, &mut problems)?;
    }
    if members.contains("gossip-transport-quic") {
        check_transport_uses_only_identity(root, &mut problems)?;
    }
    if problems.is_empty() {
        eprintln!("tidy: ok ({} crates checked)", members.len());
        Ok(())
    } else {
        for problem in &problems {
            eprintln!("tidy: {problem}");
        }
        bail!("tidy found {} problem(s)", problems.len())
    }
}

/// The `members` of the root manifest.
pub(crate) fn workspace_members(root: &Path) -> Result<BTreeSet<String>> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    let start = manifest
        .find("members = [")
        .context("the root Cargo.toml has no `members = [` list")?;
    let list = &manifest[start + "members = [".len()..];
    let end = list.find(']').context("unterminated members list")?;
    Ok(list[..end]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect())
}

fn check_top_level_folders(
    root: &Path,
    members: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Result<()> {
    for entry in fs::read_dir(root).context("listing the workspace root")? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir()
            || name.starts_with('.')
            || NOT_CRATES.contains(&name.as_str())
        {
            continue;
        }
        if !members.contains(&name) {
            problems.push(format!("top-level folder `{name}` is not a workspace member: the top-level folders are exactly the crates"));
        }
    }
    Ok(())
}

fn check_manifest(root: &Path, member: &str, problems: &mut Vec<String>) -> Result<()> {
    let path = root.join(member).join("Cargo.toml");
    let manifest =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if !manifest.contains("[lints]\nworkspace = true") {
        problems.push(format!(
            "{member}/Cargo.toml does not take the workspace lints (`[lints] workspace = true`)"
        ));
    }
    for field in ["edition", "rust-version", "license"] {
        if !manifest.contains(&format!("{field}.workspace = true")) {
            problems.push(format!(
                "{member}/Cargo.toml must take `{field}` from [workspace.package]"
            ));
        }
    }
    Ok(())
}

fn check_no_ignored_tests(dir: &Path, problems: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            check_no_ignored_tests(&path, problems)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path)?;
            // Built from parts so this file does not trip its own check.
            let needle = concat!("#[", "ignore");
            if text.contains(needle) {
                problems.push(format!(
                    "{} has an ignored test: fix it or delete it",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

fn check_sans_io(root: &Path, krate: &str, problems: &mut Vec<String>) -> Result<()> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "tree", "--locked", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .context("running cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let deps: BTreeSet<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for (banned, why) in BANNED_IN_SANS_IO {
        if deps.contains(banned) {
            problems.push(format!("sans-IO crate {krate} depends on {banned} ({why}); see `cargo tree -p {krate} -i {banned}`"));
        }
    }
    Ok(())
}

/// The transport may use gossip-core's identity (`NodeId`, `NodeKey`) and nothing else of ours
/// (ARCHITECTURE.md): it moves authenticated bytes and knows no protocol.
fn check_transport_uses_only_identity(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    let manifest = fs::read_to_string(root.join("gossip-transport-quic/Cargo.toml"))?;
    for line in manifest.lines() {
        let name = line.split(['.', ' ', '=']).next().unwrap_or_default();
        if name.starts_with("gossip-") && name != "gossip-core" && name != "gossip-transport-quic" {
            problems.push(format!(
                "gossip-transport-quic depends on {name}; it may use only gossip-core's identity (NodeId, NodeKey)"
            ));
        }
    }
    let mut stack = vec![root.join("gossip-transport-quic/src")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = fs::read_to_string(&path)?;
            for (n, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find("gossip_core::") {
                    let after = &rest[at + "gossip_core::".len()..];
                    let identity = ["NodeId", "NodeKey", "{NodeId, NodeKey}"];
                    if !identity.iter().any(|name| after.starts_with(name)) {
                        problems.push(format!(
                            "{}:{}: the transport uses gossip_core beyond a node's identity (NodeId, NodeKey)",
                            path.display(),
                            n + 1
                        ));
                    }
                    rest = after;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tidy() {
        super::run(&crate::project_root()).unwrap();
    }
}
