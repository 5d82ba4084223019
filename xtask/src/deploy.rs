//! Validates the Kubernetes manifests in `gossip-node/deploy/kubernetes`
//! against the API's schemas with `kubernetes-validate` (from PyPI,
//! installed into `target/tools`), or says why it cannot.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

/// The validator's version, pinned so a run is reproducible.
const VALIDATOR: &str = "kubernetes-validate==1.37.0";

pub(crate) fn check(root: &Path) -> Result<()> {
    let manifests = root.join("gossip-node/deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&manifests)
        .with_context(|| format!("reading {}", manifests.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| path.display().to_string())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no manifests in {}", manifests.display());
    }
    let venv = root.join("target/tools/kubernetes-validate");
    let validator = venv.join("bin/kubernetes-validate");
    if !validator.exists() {
        let python = Command::new("python3").arg("--version").output();
        if python.is_err() {
            eprintln!(
                "deploy: skipped: python3 is not installed, so kubernetes-validate cannot be"
            );
            return Ok(());
        }
        eprintln!("deploy: installing {VALIDATOR} into {}", venv.display());
        let venv_str = venv.to_str().context("a UTF-8 path")?;
        if run("python3", &["-m", "venv", venv_str], &[]).is_err() {
            eprintln!(
                "deploy: skipped: python3 cannot make a virtual environment (install python3-venv)"
            );
            return Ok(());
        }
        let pip = venv.join("bin/pip");
        let pip = pip.to_str().context("a UTF-8 path")?;
        if run(pip, &["install", "--quiet", VALIDATOR], &[]).is_err() {
            eprintln!("deploy: skipped: {VALIDATOR} could not be installed from PyPI");
            return Ok(());
        }
    }
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    run(validator.to_str().context("a UTF-8 path")?, &args, &[])
        .context("a Kubernetes manifest does not validate")
}
