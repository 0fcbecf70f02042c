//! TLS client configuration for crwatch's outgoing HTTPS (the HTTP source, the forwarder's
//! webhook sink): ring, the system's CA certificates plus an optional CA file, or, when asked,
//! no certificate verification (handshake signatures are still checked). One place, so every
//! HTTPS client trusts the same things.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why no TLS client configuration could be built; callers word it with their setting's name.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the protocol versions (a build problem).
    #[error("configuring TLS: {0}")]
    Config(String),
    /// The CA file could not be read, or holds an unusable certificate.
    #[error("reading CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA file holds no PEM certificate.
    #[error("CA file {0} holds no PEM certificates")]
    EmptyCaFile(std::path::PathBuf),
    /// Nothing to trust: no CA file and no system certificates.
    #[error(
        "no trusted CA certificates: the system has none (see SSL_CERT_FILE, SSL_CERT_DIR) and no CA file is set"
    )]
    NoRoots,
}

/// A client configuration offering HTTP/2 and HTTP/1.1 (reqwest uses a preconfigured one as
/// is). It trusts `ca_file`, plus the system's certificates when `system_roots` (only HTTPS
/// needs them; loading takes a while and may find none in slim images); with `insecure`, it
/// verifies no certificate at all (the caller warns and rejects `insecure` with a CA file).
///
/// ```
/// let tls = crwatch::tls::client_config(None, true, false).unwrap();
/// assert_eq!(tls.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
/// let err = crwatch::tls::client_config(Some(std::path::Path::new("/nonexistent.pem")), false, false);
/// assert!(err.unwrap_err().to_string().starts_with("reading CA file /nonexistent.pem"));
/// ```
pub fn client_config(
    ca_file: Option<&Path>,
    insecure: bool,
    system_roots: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut tls = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = ca_file {
            let bad = |e: &dyn std::fmt::Display| TlsError::CaFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            };
            let mut count = 0;
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                let cert = cert.map_err(|e| bad(&e))?;
                roots.add(cert).map_err(|e| bad(&e))?;
                count += 1;
            }
            if count == 0 {
                return Err(TlsError::EmptyCaFile(path.to_path_buf()));
            }
        }
        if system_roots {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!("skipping system CA certificates: {error}");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// Accepts any certificate but still checks handshake signatures, so the connection is at least
/// bound to the key the server presented.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
