//! TLS client configuration for crwatch's outgoing connections (the HTTP source, the
//! forwarder's webhook and MQTT sinks): ring, the system's CA certificates and/or a CA file,
//! or, when asked, no certificate verification (handshake signatures are still checked); an
//! optional client certificate and an optional name to verify the server's certificate
//! against. One place, so every client trusts the same things.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
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
    /// The name to verify the server's certificate against is no DNS name or IP address.
    #[error("{0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    /// The client certificate or its key could not be read.
    #[error("reading {path}: {reason}")]
    ClientCert {
        /// The certificate or key file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The client certificate and key do not belong together (or the key is unusable).
    #[error("the client certificate and key do not fit together: {0}")]
    ClientKey(String),
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
    ClientTls {
        ca_file,
        system_roots,
        insecure,
        alpn: &[b"h2", b"http/1.1"],
        ..ClientTls::default()
    }
    .build()
}

/// What a TLS client trusts and presents, for protocols other than HTTPS too.
///
/// ```
/// use crwatch::tls::ClientTls;
/// // An MQTT broker's own CA instead of the system's, its certificate checked for another name.
/// let err = ClientTls {
///     ca_file: Some(std::path::Path::new("/nonexistent/ca.pem")),
///     server_name: Some("broker.internal"),
///     ..ClientTls::default()
/// }
/// .build()
/// .unwrap_err();
/// assert!(err.to_string().starts_with("reading CA file /nonexistent/ca.pem"));
/// let tls = ClientTls { insecure: true, ..ClientTls::default() }.build().unwrap();
/// assert!(tls.alpn_protocols.is_empty());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTls<'a> {
    /// PEM CA certificates to trust.
    pub ca_file: Option<&'a Path>,
    /// Trust the system's CA certificates too (`SSL_CERT_FILE`, `SSL_CERT_DIR` honoured).
    pub system_roots: bool,
    /// Verify no certificate (handshake signatures are still checked). Testing only.
    pub insecure: bool,
    /// Verify the server's certificate for this name instead of the host dialled.
    pub server_name: Option<&'a str>,
    /// A client certificate (PEM chain) and its key (PEM), for servers that ask for one.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// ALPN protocols to offer (none by default).
    pub alpn: &'a [&'a [u8]],
}

impl ClientTls<'_> {
    /// The rustls client configuration (ring).
    pub fn build(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
        } else {
            let roots = self.roots()?;
            match self.server_name {
                Some(name) => {
                    let name = ServerName::try_from(name.to_string())
                        .map_err(|_| TlsError::ServerName(name.to_string()))?;
                    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(NamedVerifier {
                            inner: verifier,
                            name,
                        }))
                }
                // No roots at all only when neither a CA file nor the system's were asked for
                // (a plain-HTTP client that never verifies anything).
                None => builder.with_root_certificates(roots),
            }
        };
        let mut tls = match self.client_cert {
            Some((cert, key)) => {
                let unreadable = |path: &Path, e: &dyn std::fmt::Display| TlsError::ClientCert {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                };
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| unreadable(cert, &e))?;
                if certs.is_empty() {
                    return Err(unreadable(cert, &"no PEM certificates in it"));
                }
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable(key, &e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| TlsError::ClientKey(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        Ok(tls)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = self.ca_file {
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
        if self.system_roots {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!("skipping system CA certificates: {error}");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
        Ok(roots)
    }
}

/// Verifies the certificate against a configured name instead of the host dialled.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
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
