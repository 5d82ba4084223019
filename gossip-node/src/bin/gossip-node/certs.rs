//! `gossip-node certs`: a cluster CA and node certificates, as files.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gossip_transport_quic::{ClusterCa, Validity, write_private};

pub(crate) const CA_CERT: &str = "ca.crt";
pub(crate) const CA_KEY: &str = "ca.key";

/// Makes a CA for `cluster` in `dir`: `ca.crt` (share it with every node) and
/// `ca.key` (readable by its owner only; keep it off the nodes).
pub(crate) fn init_ca(cluster: &str, dir: &Path, force: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if !force && (cert_path.exists() || key_path.exists()) {
        bail!(
            "{} already holds a CA; pass --force to replace it (every node certificate it issued stops being trusted)",
            dir.display()
        );
    }
    let ca = ClusterCa::generate(cluster)?;
    std::fs::write(&cert_path, ca.cert_pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(&key_path, ca.key_pem())?;
    eprintln!(
        "wrote {} and {} (keep the key safe)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Issues a certificate for node `name` from the CA in `ca_dir`, into
/// `out/<name>.crt` and `out/<name>.key`.
pub(crate) fn issue(ca_dir: &Path, name: &str, out: &Path, days: u64) -> Result<()> {
    let read = |file: &str| {
        let path = ca_dir.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; make a CA first with `gossip-node certs init-ca --dir {}`",
                path.display(),
                ca_dir.display()
            )
        })
    };
    let ca = ClusterCa::from_pem(&read(CA_CERT)?, &read(CA_KEY)?)?;
    let validity = Validity::for_duration(Duration::from_secs(days * 86_400));
    let credentials = ca.issue(name, validity)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert = out.join(format!("{name}.crt"));
    let key = out.join(format!("{name}.key"));
    credentials.save(&cert, &key)?;
    eprintln!(
        "wrote {} and {} for node {} ({})",
        cert.display(),
        key.display(),
        name,
        credentials.node_id()
    );
    Ok(())
}
