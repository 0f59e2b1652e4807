//! rustls server configuration: TLS 1.3, a client certificate required, no CA. The handshake
//! proves the client holds the key in its certificate; whether that key is pinned is decided per
//! call against the trust store (so an unpinned client gets a gRPC UNAUTHENTICATED, not a reset).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::credential::keys::DaemonKeys;
use crate::credential::tls::HandshakeSignatures;
use crate::daemon::DaemonError;

/// Requires a client certificate and checks the handshake signature with its key; trusts no CA.
#[derive(Debug)]
struct ProofOfPossession {
    signatures: HandshakeSignatures,
}

impl ClientCertVerifier for ProofOfPossession {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Identity is the key, not a chain: only require that the certificate parses.
        crate::credential::keys::spki_sha256(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

use crate::credential::tls::provider;

/// Server config for the remote operator port: the daemon's certificate, no client
/// certificate asked for (operators prove themselves with their keys, per action).
pub fn remote_server_config(keys: &DaemonKeys) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![keys.tls_cert.clone()], keys.tls_key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Server config of the approval page: HTTP/1.1 over TLS 1.2 or 1.3 (browsers), with the
/// daemon's certificate or the configured one (any CA's; its key file must be private).
pub fn web_server_config(
    keys: &DaemonKeys,
    certificate: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<ServerConfig, DaemonError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (chain, key) = match certificate {
        None => (vec![keys.tls_cert.clone()], keys.tls_key.clone_key()),
        Some((cert_path, key_path)) => {
            let bad = |what: &std::path::Path, e: String| {
                DaemonError::Web(format!("{}: {e}", what.display()))
            };
            crate::base::fsperm::check_private(key_path)
                .map_err(|e| bad(key_path, e.to_string()))?;
            let chain = CertificateDer::pem_file_iter(cert_path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(cert_path, e.to_string()))?;
            if chain.is_empty() {
                return Err(bad(cert_path, "no certificate in the file".to_owned()));
            }
            let key =
                PrivateKeyDer::from_pem_file(key_path).map_err(|e| bad(key_path, e.to_string()))?;
            (chain, key)
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| DaemonError::Web(format!("the page's certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Server config for the daemon's certificate, requiring client certificates.
pub fn server_config(keys: &DaemonKeys) -> Result<ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(ProofOfPossession {
        signatures: HandshakeSignatures::of(&provider),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![keys.tls_cert.clone()], keys.tls_key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
