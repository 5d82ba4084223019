//! TLS and QUIC set-up: mutual TLS 1.3 against the trust bundle, the
//! resumption cache that counts its tickets, and the keys derived from the
//! node's private key that survive a restart.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, VarInt};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use std::collections::BTreeSet;

use gossip_core::NodeId;
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use crate::certs::{NodeCredentials, TrustBundle, node_id_of};
use crate::config::{ALPN, TransportConfig};
use crate::counters::{Counters, bump};
use crate::error::Error;
use crate::screen::QUIC_VERSIONS;

/// A TLS session cache that counts the tickets it hands out for resumption.
#[derive(Debug)]
pub(crate) struct CountingSessions {
    inner: ClientSessionMemoryCache,
    counters: Arc<Counters>,
}

impl CountingSessions {
    /// A cache of up to 1,024 sessions, counting resumptions in `counters`.
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        CountingSessions {
            inner: ClientSessionMemoryCache::new(1024),
            counters,
        }
    }
}

impl ClientSessionStore for CountingSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        if ticket.is_some() {
            bump(&self.counters.resumptions);
        }
        ticket
    }
}

/// The two sides' quinn configurations.
/// Refuses a certificate whose node is revoked.
fn refuse_revoked(
    cert: &CertificateDer<'_>,
    revoked: &BTreeSet<NodeId>,
) -> Result<(), rustls::Error> {
    match node_id_of(cert) {
        Ok(id) if revoked.contains(&id) => Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked,
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        )),
    }
}

/// The WebPKI check of a client's certificate, then a refusal of revoked
/// nodes.
#[derive(Debug)]
struct RevokingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<BTreeSet<NodeId>>,
}

impl ClientCertVerifier for RevokingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        refuse_revoked(end_entity, &self.revoked)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The WebPKI check of a server's certificate, then a refusal of revoked
/// nodes.
#[derive(Debug)]
struct RevokingServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: Arc<BTreeSet<NodeId>>,
}

impl ServerCertVerifier for RevokingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        refuse_revoked(end_entity, &self.revoked)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub(crate) struct Tls {
    pub(crate) server: quinn::ServerConfig,
    pub(crate) client: quinn::ClientConfig,
}

/// The key behind QUIC stateless resets, derived from the node's private key
/// so that it survives a restart: a node that comes back can reset the
/// connections its earlier life left open at its peers, which then redial at
/// once instead of sending into the void until their idle timeout.
struct ResetKey([u8; 32]);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        for (out, byte) in signature_out.iter_mut().zip(mac.as_bytes()) {
            *out = *byte;
        }
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // blake3::Hash compares in constant time.
        let expected = blake3::keyed_hash(&self.0, data);
        let given = <[u8; 32]>::try_from(signature).map_err(|_| quinn::crypto::CryptoError)?;
        if expected == blake3::Hash::from_bytes(given) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// Mutual TLS 1.3 against `trust` with `credentials`, for both sides.
pub(crate) fn build_tls(
    config: &TransportConfig,
    credentials: &NodeCredentials,
    trust: &TrustBundle,
    sessions: Arc<CountingSessions>,
) -> Result<Tls, Error> {
    let tls_error = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(trust.root_store()?);

    let mut transport = quinn::TransportConfig::default();
    let idle = IdleTimeout::try_from(config.idle_timeout).map_err(|e| tls_error(&e))?;
    transport
        .max_idle_timeout(Some(idle))
        .initial_rtt(config.initial_rtt)
        .keep_alive_interval(None)
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(config.max_streams_per_peer))
        .datagram_receive_buffer_size(Some(config.datagram_buffer_bytes))
        .datagram_send_buffer_size(config.datagram_buffer_bytes);
    if !config.discover_path_mtu {
        transport.mtu_discovery_config(None);
    }
    let transport = Arc::new(transport);

    // Client certificates are required and must chain to the trust bundle;
    // rustls refuses anything else inside the handshake, before we see it.
    let revoked = trust.revoked_shared();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| tls_error(&e))?;
    let verifier = Arc::new(RevokingClientVerifier {
        inner: verifier,
        revoked: revoked.clone(),
    });
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(credentials.chain(), credentials.key())
        .map_err(|e| tls_error(&e))?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT off: replayable early data has no place in a membership protocol.
    server_tls.max_early_data_size = 0;
    let server_crypto = QuicServerConfig::try_from(server_tls).map_err(|e| tls_error(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| tls_error(&e))?;
    let server_verifier = Arc::new(RevokingServerVerifier {
        inner: server_verifier,
        revoked,
    });
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&e))?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_auth_cert(credentials.chain(), credentials.key())
        .map_err(|e| tls_error(&e))?;
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    client_tls.enable_early_data = false;
    client_tls.resumption = Resumption::store(sessions);
    let client_crypto = QuicClientConfig::try_from(client_tls).map_err(|e| tls_error(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok(Tls { server, client })
}

/// The quinn server and client configurations a [`Transport`](crate::Transport) uses (mutual
/// TLS 1.3 against `trust`, ALPN [`ALPN`], 0-RTT off, no keep-alive), for
/// callers that drive quinn themselves, and for measuring this crate
/// against plain quinn.
///
/// # Errors
///
/// [`Error::Tls`] or [`Error::Certificate`] for unusable credentials.
pub fn quinn_configs(
    config: &TransportConfig,
    credentials: &NodeCredentials,
    trust: &TrustBundle,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), Error> {
    let sessions = Arc::new(CountingSessions::new(Arc::new(Counters::default())));
    let tls = build_tls(config, credentials, trust, sessions)?;
    Ok((tls.server, tls.client))
}

/// The endpoint's configuration, with the stateless-reset key and the
/// connection-id key derived from the node's private key; returns the
/// connection-id key too, which the packet screen checks ids with.
pub(crate) fn endpoint_config(credentials: &NodeCredentials) -> (EndpointConfig, u64) {
    let secret = credentials.key();
    let reset_key = ResetKey(blake3::derive_key(
        "gossip-transport-quic stateless reset key v1",
        secret.secret_der(),
    ));
    // Connection ids are validated by a keyed hash; the key, too, must
    // survive a restart, or the restarted node drops its earlier life's
    // packets as invalid instead of resetting those connections.
    let cid_key = blake3::derive_key(
        "gossip-transport-quic connection id key v1",
        secret.secret_der(),
    );
    let cid_key = u64::from_le_bytes(cid_key[..8].try_into().unwrap_or_default());
    let mut config = EndpointConfig::new(Arc::new(reset_key));
    config
        .cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        })
        .supported_versions(QUIC_VERSIONS.to_vec())
        // QUIC's fixed bit always set, and required: a packet with it clear
        // is a sealed datagram (see `sealed`), never QUIC.
        .grease_quic_bit(false);
    (config, cid_key)
}
