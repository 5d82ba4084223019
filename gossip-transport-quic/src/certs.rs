//! Cluster CA, node certificates, and the node id a certificate implies.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use gossip_core::{NodeId, NodeKey};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// The DNS name every node certificate carries, asked for when dialling a
/// node whose id is not known yet (a seed).
pub const SERVER_NAME: &str = "gossip-node";

/// The DNS name that only `node`'s certificate carries (its id's first 128
/// bits in hex, under [`SERVER_NAME`]). Dialling a known node asks for it, so
/// a peer holding another node's certificate fails inside the handshake, and
/// TLS session tickets are kept per node.
pub fn server_name_of(node: &NodeId) -> String {
    let hex = format!("{node:#}");
    format!("n{}.{SERVER_NAME}", &hex[..32])
}

/// The node id a certificate implies: its Ed25519 public key.
///
/// # Errors
///
/// [`Error::Certificate`] if the certificate does not parse or its key is
/// not Ed25519 (a node signs its claims with the key of its certificate).
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| Error::Certificate(format!("unparsable certificate: {e}")))?;
    let spki = parsed.subject_public_key_info();
    let key = ed25519_dalek::VerifyingKey::from_public_key_der(spki.as_ref()).map_err(|_| {
        Error::Certificate(
            "the certificate's key is not Ed25519: node certificates must carry Ed25519 keys \
             (issue them with `gossip-node certs`)"
                .into(),
        )
    })?;
    Ok(NodeId::from_bytes(key.to_bytes()))
}

fn rcgen_error(err: rcgen::Error) -> Error {
    Error::Certificate(err.to_string())
}

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From now (less an hour, for clock skew) for `duration`.
    pub fn for_duration(duration: Duration) -> Self {
        #[allow(
            clippy::disallowed_methods,
            reason = "certificates are dated by the wall clock"
        )]
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + duration,
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A cluster's certificate authority: it signs node certificates, and its
/// certificate is the trust bundle every node checks peers against.
pub struct ClusterCa {
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA named after the cluster, valid for ten years.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if key generation or signing fails.
    pub fn generate(cluster_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster_name} cluster CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Validity::for_duration(Duration::from_secs(10 * 365 * 24 * 3600)).apply(&mut params);
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads a CA from its certificate and private key in PEM.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if either does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_error)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("CA certificate: {e}")))?;
        Ok(ClusterCa {
            key,
            cert_der,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate in PEM: the cluster's trust bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key in PEM. Keep it off the nodes.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The trust bundle holding this CA.
    pub fn trust(&self) -> TrustBundle {
        TrustBundle {
            roots: vec![self.cert_der.clone()],
            revoked: Arc::default(),
        }
    }

    /// Issues a certificate and key for a node called `name`.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if key generation or signing fails.
    pub fn issue(&self, name: &str, validity: Validity) -> Result<NodeCredentials, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(rcgen_error)?;
        let raw = <[u8; 32]>::try_from(rcgen::PublicKeyData::der_bytes(&key))
            .map_err(|_| Error::Certificate("an Ed25519 public key is 32 bytes".into()))?;
        let node = NodeId::from_bytes(raw);
        let names = vec![SERVER_NAME.to_string(), server_name_of(&node)];
        let mut params = CertificateParams::new(names).map_err(rcgen_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity.apply(&mut params);
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_error)?;
        NodeCredentials::from_pem(&cert.pem(), &key.serialize_pem())
    }
}

/// A node's certificate chain and private key, the id they imply, and the
/// key it signs its claims with (the same key).
#[derive(Debug)]
pub struct NodeCredentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    node_id: NodeId,
    node_key: NodeKey,
}

impl Clone for NodeCredentials {
    fn clone(&self) -> Self {
        NodeCredentials {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            node_id: self.node_id,
            node_key: self.node_key.clone(),
        }
    }
}

impl NodeCredentials {
    /// From a certificate chain (leaf first) and private key, in PEM.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if either does not parse, the chain is empty,
    /// the key is not Ed25519, or it is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Certificate(format!("node certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("node key: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| Error::Certificate("no certificate in the PEM".into()))?;
        let node_id = node_id_of(leaf)?;
        let signing =
            ed25519_dalek::SigningKey::from_pkcs8_der(key.secret_der()).map_err(|_| {
                Error::Certificate("the node key is not an Ed25519 key in PKCS#8".into())
            })?;
        let node_key = NodeKey::from_secret_bytes(&signing.to_bytes());
        if node_key.id() != node_id {
            return Err(Error::Certificate(
                "the node key does not belong to the certificate".into(),
            ));
        }
        Ok(NodeCredentials {
            chain,
            key,
            node_id,
            node_key,
        })
    }

    /// Loads the certificate and key from PEM files.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a file cannot be read, [`Error::Certificate`] if it
    /// does not parse.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, Error> {
        let cert = fs::read_to_string(cert_path).map_err(|e| Error::io(cert_path, e))?;
        let key = fs::read_to_string(key_path).map_err(|e| Error::io(key_path, e))?;
        Self::from_pem(&cert, &key)
    }

    /// Saves the certificate and key as PEM files; the key file is readable by
    /// its owner only.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a file cannot be written.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), Error> {
        let (cert, key) = self.to_pem();
        fs::write(cert_path, cert).map_err(|e| Error::io(cert_path, e))?;
        write_private(key_path, &key)
    }

    /// The certificate chain and the key, in PEM.
    pub fn to_pem(&self) -> (String, String) {
        let cert = self
            .chain
            .iter()
            .map(|c| pem("CERTIFICATE", c.as_ref()))
            .collect();
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        (cert, pem(label, self.key.secret_der()))
    }

    /// The node id the certificate implies.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The key the node signs its claims with: its certificate's.
    pub fn node_key(&self) -> &NodeKey {
        &self.node_key
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// Reads a list of revoked node ids: one full hex id per line; blank lines
/// and text after `#` are ignored.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be read, [`Error::Certificate`] naming
/// the first line that is not an id.
pub fn load_revoked(path: &Path) -> Result<BTreeSet<NodeId>, Error> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_revoked(&text)
        .map_err(|(line, err)| Error::Certificate(format!("{} line {line}: {err}", path.display())))
}

/// Parses the text of a revocation list (see [`load_revoked`]); on error,
/// the line number and why.
pub fn parse_revoked(text: &str) -> Result<BTreeSet<NodeId>, (usize, String)> {
    let mut ids = BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or_default().trim();
        if id.is_empty() {
            continue;
        }
        let id = id
            .parse::<NodeId>()
            .map_err(|e| (index + 1, e.to_string()))?;
        ids.insert(id);
    }
    Ok(ids)
}

/// Writes a file that only its owner may read.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), Error> {
    let contents = contents.as_ref();
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.write_all(contents).map_err(|e| Error::io(path, e))
    }
    #[cfg(not(unix))]
    {
        fs::write(path, contents).map_err(|e| Error::io(path, e))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

/// The certificates a node trusts (peers must chain to one of them), and
/// the nodes it no longer trusts although they do: revoked ids, whose
/// handshakes are refused both ways.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    revoked: Arc<BTreeSet<NodeId>>,
}

impl TrustBundle {
    /// From one or more CA certificates in PEM.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if the PEM holds no certificate or does not parse.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Certificate(format!("trust bundle: {e}")))?;
        if roots.is_empty() {
            return Err(Error::Certificate(
                "the trust bundle holds no certificate".into(),
            ));
        }
        Ok(TrustBundle {
            roots,
            revoked: Arc::default(),
        })
    }

    /// This bundle, refusing the nodes in `revoked` whatever their
    /// certificates.
    pub fn with_revoked(self, revoked: impl IntoIterator<Item = NodeId>) -> Self {
        TrustBundle {
            revoked: Arc::new(revoked.into_iter().collect()),
            ..self
        }
    }

    /// The revoked ids.
    pub fn revoked(&self) -> &BTreeSet<NodeId> {
        &self.revoked
    }

    /// Whether `node` is revoked.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.revoked.contains(node)
    }

    pub(crate) fn revoked_shared(&self) -> Arc<BTreeSet<NodeId>> {
        Arc::clone(&self.revoked)
    }

    /// Loads a trust bundle from a PEM file.
    ///
    /// # Errors
    ///
    /// As [`from_pem`](TrustBundle::from_pem), and [`Error::Io`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let pem = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_pem(&pem)
    }

    /// Checks that `credentials` chain to this bundle and are valid now, as
    /// a peer will check them in the handshake: a node can learn at start,
    /// with a clear message, that its certificate belongs to another cluster.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] naming why the chain is refused.
    pub fn verify(&self, credentials: &NodeCredentials) -> Result<(), Error> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(self.root_store()?),
            provider,
        )
        .build()
        .map_err(|e| Error::Certificate(e.to_string()))?;
        let chain = credentials.chain();
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| Error::Certificate("no certificate".into()))?;
        rustls::server::danger::ClientCertVerifier::verify_client_cert(
            verifier.as_ref(),
            leaf,
            intermediates,
            rustls::pki_types::UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| Error::Certificate(e.to_string()))
    }

    pub(crate) fn root_store(&self) -> Result<rustls::RootCertStore, Error> {
        let mut store = rustls::RootCertStore::empty();
        for root in &self.roots {
            store
                .add(root.clone())
                .map_err(|e| Error::Certificate(format!("trust bundle: {e}")))?;
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_round_trip_through_pem_and_keep_their_id() {
        let ca = ClusterCa::generate("test").unwrap();
        let node = ca
            .issue("n1", Validity::for_duration(Duration::from_secs(3600)))
            .unwrap();
        let (cert, key) = node.to_pem();
        let again = NodeCredentials::from_pem(&cert, &key).unwrap();
        assert_eq!(again.node_id(), node.node_id());
        assert!(server_name_of(&node.node_id()).len() <= 63 + 1 + SERVER_NAME.len());
        let ca_again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let other = ca_again
            .issue("n2", Validity::for_duration(Duration::from_secs(3600)))
            .unwrap();
        assert_ne!(other.node_id(), node.node_id());
        assert!(TrustBundle::from_pem(ca.cert_pem()).is_ok());
        assert!(ca.trust().verify(&node).is_ok());
        let foreign = ClusterCa::generate("test").unwrap();
        let err = foreign.trust().verify(&node).unwrap_err();
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        assert!(TrustBundle::from_pem("").is_err());
    }

    #[test]
    fn a_node_certificate_without_an_ed25519_key_is_refused_with_the_fix() {
        // As nodes were issued before their ids became their keys: ECDSA.
        let ca = ClusterCa::generate("old").unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        let issuer = Issuer::from_ca_cert_der(&ca.cert_der, &ca.key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let err = NodeCredentials::from_pem(&cert.pem(), &key.serialize_pem()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("not Ed25519"), "{message}");
        assert!(message.contains("gossip-node certs"), "{message}");
    }

    #[test]
    fn a_revocation_list_names_full_ids_and_says_which_line_is_wrong() {
        let id = NodeId::from_bytes([0xab; 32]);
        let text = format!("# revoked 2026-12-03\n\n{id:#}  # lost laptop\n");
        assert_eq!(parse_revoked(&text).unwrap(), BTreeSet::from([id]));
        let err = parse_revoked("# ok\nabc\n").unwrap_err();
        assert_eq!(err.0, 2);
    }
}
