//! TLS certificates for the admission webhook: a self-signed certificate authority and a serving
//! certificate it signs, as PEM files in a directory (`tls.crt`, `tls.key`, `ca.crt`, the key
//! names of a `kubernetes.io/tls` Secret, so the same directory layout works when the Secret is
//! mounted into the Pod).
//!
//! This is for development and for clusters without cert-manager: [`generate`] makes a fresh CA
//! and a certificate for the webhook Service's DNS names plus the loopback names, and
//! [`load_or_generate`] keeps using what a directory already holds. The CA's private key is
//! never written anywhere: once the serving certificate is signed it is not needed, and a key
//! that does not exist cannot leak. Rotating means generating a new pair and a new `caBundle`
//! (`database-operator certs`, then `database-operator webhook-config`).
//!
//! ```
//! use database_operator::certs;
//!
//! let dir = std::env::temp_dir().join(format!("certs-doc-{}", std::process::id()));
//! let first = certs::load_or_generate(&dir, &["database-operator-webhook.database-operator.svc".into()])
//!     .unwrap();
//! let again = certs::load_or_generate(&dir, &[]).unwrap();
//! assert_eq!(first.cert_pem, again.cert_pem, "the second call loads what the first wrote");
//! assert!(again.ca_pem.as_deref().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::jiff::{Timestamp, ToSpan, tz::TimeZone};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The serving certificate's file name (the `tls.crt` key of a `kubernetes.io/tls` Secret).
pub const CERT_FILE: &str = "tls.crt";
/// The serving certificate's private key file name (`tls.key`).
pub const KEY_FILE: &str = "tls.key";
/// The CA certificate's file name (`ca.crt`, as cert-manager writes it): what goes into the
/// webhook configurations' `caBundle`.
pub const CA_FILE: &str = "ca.crt";

/// The names every generated certificate covers besides the ones asked for, so the webhook can
/// be run and called on the developer's machine.
pub const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// How long generated certificates are valid, in years.
pub const VALIDITY_YEARS: i64 = 10;

/// A serving certificate with its key, and the CA that signed it, PEM encoded.
///
/// `Debug` never prints the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Certs {
    /// The CA certificate, when known: a directory mounted from a Secret without `ca.crt` has
    /// none, which is enough to serve but not to write a `caBundle`.
    pub ca_pem: Option<String>,
    /// The serving certificate (possibly followed by intermediates).
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Generating, reading or writing certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to generate (an unusable DNS name, for one).
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// `reading`, `writing`, ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The PEM data cannot be used for serving TLS.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which data (a path, or "certificate").
        what: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// A new self-signed CA and a serving certificate signed by it for `dns_names` and
/// [`LOOPBACK_NAMES`]. Names that parse as IP addresses become IP address entries.
///
/// Both certificates are valid from yesterday (some clock skew between machines is normal) for
/// [`VALIDITY_YEARS`] years; the serving certificate is marked for server authentication only.
///
/// ```
/// let certs = database_operator::certs::generate(&["db-webhook.ops.svc".to_string()]).unwrap();
/// assert!(certs.key_pem.contains("PRIVATE KEY"));
/// assert!(certs.server_config().is_ok());
/// ```
pub fn generate(dns_names: &[String]) -> Result<Certs, CertError> {
    let ((y0, m0, d0), (y1, m1, d1)) = validity()?;
    let not_before = rcgen::date_time_ymd(y0, m0, d0);
    let not_after = rcgen::date_time_ymd(y1, m1, d1);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "database-operator webhook CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut names: Vec<String> = Vec::new();
    for name in dns_names
        .iter()
        .map(String::as_str)
        .chain(LOOPBACK_NAMES.iter().copied())
    {
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let common_name = names.first().cloned().unwrap_or_else(|| "localhost".into());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(Certs {
        ca_pem: Some(ca.pem()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A date as rcgen's `(year, month, day)`.
type Ymd = (i32, u8, u8);

/// Yesterday (UTC), and [`VALIDITY_YEARS`] later.
fn validity() -> Result<(Ymd, Ymd), CertError> {
    let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
    let invalid = |e: k8s_openapi::jiff::Error| CertError::Invalid {
        what: "certificate validity".into(),
        reason: e.to_string(),
    };
    let start = today.yesterday().map_err(invalid)?;
    let end = start.checked_add(VALIDITY_YEARS.years()).map_err(invalid)?;
    // jiff's months and days are 1..=12 and 1..=31: the casts cannot truncate.
    let ymd = |d: k8s_openapi::jiff::civil::Date| (i32::from(d.year()), d.month() as u8, d.day() as u8);
    Ok((ymd(start), ymd(end)))
}

/// The DNS names a Service is reached by inside the cluster: `name.namespace.svc` (what the
/// API server uses for `clientConfig.service`), `name.namespace.svc.cluster.local`,
/// `name.namespace` and `name`.
///
/// ```
/// let names = database_operator::certs::service_dns_names("database-operator", "database-operator-webhook");
/// assert_eq!(names[0], "database-operator-webhook.database-operator.svc");
/// ```
pub fn service_dns_names(namespace: &str, name: &str) -> Vec<String> {
    vec![
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
        format!("{name}.{namespace}"),
        name.to_string(),
    ]
}

impl Certs {
    /// Read `tls.crt`, `tls.key` and, when present, `ca.crt` from `dir`, and check that the
    /// certificate and key belong together.
    pub fn load(dir: &Path) -> Result<Certs, CertError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|source| CertError::Io {
                action: "reading",
                path,
                source,
            })
        };
        let ca_pem = match read(CA_FILE) {
            Ok(pem) => Some(pem),
            Err(CertError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let certs = Certs {
            ca_pem,
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
        };
        certs.server_config().map_err(|e| match e {
            CertError::Invalid { reason, .. } => CertError::Invalid {
                what: format!(
                    "{} and {}",
                    dir.join(CERT_FILE).display(),
                    dir.join(KEY_FILE).display()
                ),
                reason,
            },
            other => other,
        })?;
        Ok(certs)
    }

    /// Write the files into `dir` (created if missing): `tls.key` readable by the owner only,
    /// each file replaced atomically so a reader never sees half a file.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
            action: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(ca) = &self.ca_pem {
            write_file(&dir.join(CA_FILE), ca, false)?;
        }
        write_file(&dir.join(CERT_FILE), &self.cert_pem, false)?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, true)
    }

    /// The CA certificate base64-encoded, as `clientConfig.caBundle` wants it; `None` when the
    /// CA is not known.
    ///
    /// ```
    /// let certs = database_operator::certs::generate(&[]).unwrap();
    /// assert!(certs.ca_bundle().unwrap().starts_with("LS0tLS1CRUdJTi")); // "-----BEGIN"
    /// ```
    pub fn ca_bundle(&self) -> Option<String> {
        use base64::Engine as _;
        self.ca_pem
            .as_deref()
            .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem))
    }

    /// A rustls server configuration serving this certificate, offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let invalid = |reason: String| CertError::Invalid {
            what: "certificate".into(),
            reason,
        };
        let chain = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("unreadable PEM: {e}")))?;
        if chain.is_empty() {
            return Err(invalid("no CERTIFICATE block in the PEM data".into()));
        }
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|e| invalid(format!("unreadable private key PEM: {e}")))?
            .ok_or_else(|| invalid("no PRIVATE KEY block in the key PEM data".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(format!("certificate and key do not fit together: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Load the certificates in `dir`, or, when it holds neither `tls.crt` nor `tls.key`, generate
/// new ones for `dns_names` (see [`generate`]) and write them there.
///
/// A directory with only one of the two is an error rather than silently overwritten: it is
/// most likely a mounted Secret missing a key.
pub fn load_or_generate(dir: &Path, dns_names: &[String]) -> Result<Certs, CertError> {
    let cert = dir.join(CERT_FILE).exists();
    let key = dir.join(KEY_FILE).exists();
    match (cert, key) {
        (true, true) => Certs::load(dir),
        (false, false) => {
            let certs = generate(dns_names)?;
            certs.write(dir)?;
            tracing::info!(dir = %dir.display(), "generated a self-signed webhook certificate");
            Ok(certs)
        }
        (true, false) | (false, true) => Err(CertError::Invalid {
            what: dir.display().to_string(),
            reason: format!(
                "holds only one of {CERT_FILE} and {KEY_FILE}; add the other, or remove both to \
                 generate a new pair"
            ),
        }),
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Io { action, path, source }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    {
        use std::io::Write as _;
        let mut file = options.open(&tmp).map_err(io_err("writing", &tmp))?;
        file.write_all(contents.as_bytes())
            .map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("writing", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_serve_and_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let certs = generate(&["hook.ns.svc".into(), "10.0.0.1".into()]).unwrap();
        assert!(certs.server_config().is_ok());
        certs.write(dir.path()).unwrap();
        assert_eq!(Certs::load(dir.path()).unwrap(), certs);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the key is private");
        }
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
    }

    #[test]
    fn load_or_generate_keeps_existing_files_and_refuses_half_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path(), &[]).unwrap();
        let second = load_or_generate(dir.path(), &["other.name".into()]).unwrap();
        assert_eq!(first, second);

        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let err = load_or_generate(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("holds only one of tls.crt and tls.key"), "{err}");
    }

    #[test]
    fn a_directory_without_ca_crt_serves_but_has_no_bundle() {
        let dir = tempfile::tempdir().unwrap();
        generate(&[]).unwrap().write(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_FILE)).unwrap();
        let certs = Certs::load(dir.path()).unwrap();
        assert_eq!(certs.ca_pem, None);
        assert_eq!(certs.ca_bundle(), None);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut certs = generate(&[]).unwrap();
        certs.key_pem = generate(&[]).unwrap().key_pem;
        certs.write(dir.path()).unwrap();
        let err = Certs::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("do not fit together"), "{err}");
        assert!(err.contains("tls.crt"), "{err}");
    }

    #[test]
    fn debug_hides_the_key() {
        let certs = generate(&[]).unwrap();
        assert!(!format!("{certs:?}").contains("PRIVATE KEY"));
    }
}
