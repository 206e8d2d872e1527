//! TLS to PostgreSQL with libpq's meaning of `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`, in both the URL and the keyword/value form of a
//! connection string. tokio-postgres knows only `disable`, `prefer` and
//! `require` and no certificate files, so these keywords are taken out of
//! the string here and turned into a rustls client configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connection-string keywords handled here rather than by tokio-postgres.
const TLS_KEYWORDS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// The `sslrootcert` value that means the operating system's trust store
/// (libpq 16 and later).
const SYSTEM_ROOTS: &str = "system";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    BadMode(String),
    #[error("sslmode={mode} needs a CA to verify the server against: set sslrootcert=<PEM file> (or sslrootcert=system for the operating system's trust store)")]
    NoRootCert { mode: SslMode },
    #[error("sslrootcert=system verifies the host name too, so it needs sslmode=verify-full, not {mode}")]
    SystemRootsNeedVerifyFull { mode: SslMode },
    #[error("sslcert and sslkey go together: {missing} is missing")]
    HalfClientCert { missing: &'static str },
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("sslrootcert=system: no usable certificate in the operating system's trust store")]
    NoSystemRoots,
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// libpq's `sslmode`, strongest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, TlsError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(TlsError::BadMode(other.to_owned())),
        })
    }

    /// What tokio-postgres negotiates: every mode from `require` up refuses
    /// a server that does not speak TLS, never falling back to plaintext.
    pub(super) fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// The TLS keywords of one connection string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: Option<SslMode>,
    pub root_cert: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    /// The mode in force. Without `sslmode` the connection is plaintext:
    /// libpq's own default, `prefer`, would encrypt without authenticating
    /// the server and fall back to plaintext silently, and a ledger's
    /// operator should say which of those they want. `sslrootcert=system`
    /// alone means `verify-full`, as in libpq.
    pub fn mode(&self) -> SslMode {
        match (self.mode, self.root_cert.as_deref()) {
            (Some(mode), _) => mode,
            (None, Some(SYSTEM_ROOTS)) => SslMode::VerifyFull,
            (None, _) => SslMode::Disable,
        }
    }

    /// The connector for these options; with `disable` it is never used.
    pub fn connector(&self) -> Result<MakeRustlsConnect, TlsError> {
        // ring, as reqwest uses: it builds with a C compiler alone, no
        // cmake, on a fresh machine.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mode = self.mode();
        let roots = self.roots(mode)?;
        let builder = match (mode, roots) {
            (SslMode::Disable, _) => {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(
                        // Never reached: tokio-postgres does not start TLS.
                        Unauthenticated(provider),
                    ))
            }
            // libpq: with a CA file, prefer and require check the chain too.
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
                let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|error| rustls::Error::General(error.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
            }
            (SslMode::Prefer | SslMode::Require, None) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unauthenticated(provider))),
            (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(TlsError::NoRootCert { mode })
            }
        };
        let mut config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(read_certs(cert, "sslcert")?, read_key(key)?)?
            }
            (Some(_), None) => return Err(TlsError::HalfClientCert { missing: "sslkey" }),
            (None, Some(_)) => return Err(TlsError::HalfClientCert { missing: "sslcert" }),
        };
        // PostgreSQL 17's direct TLS negotiation requires this ALPN; older
        // servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }

    /// The trust anchors the mode verifies against, if any: `sslrootcert`,
    /// else libpq's default `~/.postgresql/root.crt` for the verify modes.
    fn roots(&self, mode: SslMode) -> Result<Option<RootCertStore>, TlsError> {
        let path = match self.root_cert.as_deref() {
            Some(SYSTEM_ROOTS) => {
                if mode != SslMode::VerifyFull {
                    return Err(TlsError::SystemRootsNeedVerifyFull { mode });
                }
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if roots.is_empty() {
                    return Err(TlsError::NoSystemRoots);
                }
                return Ok(Some(roots));
            }
            Some(path) => PathBuf::from(path),
            None if mode >= SslMode::VerifyCa => {
                match std::env::var_os("HOME")
                    .map(|home| Path::new(&home).join(".postgresql/root.crt"))
                    .filter(|path| path.is_file())
                {
                    Some(path) => path,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        if mode == SslMode::Disable {
            return Ok(None);
        }
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&path, "sslrootcert")? {
            roots.add(cert).map_err(|error| TlsError::File {
                what: "sslrootcert",
                path: path.clone(),
                reason: error.to_string(),
            })?;
        }
        Ok(Some(roots))
    }
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| fail(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(error.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::File {
        what: "sslkey",
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

/// `prefer` and `require` without a CA: encrypted, server not
/// authenticated (libpq's meaning). The handshake's signatures are still
/// checked, so the session is bound to the key the server presented.
#[derive(Debug)]
struct Unauthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked before the name, so a name error means the
        // chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Takes the TLS keywords out of `url` (either form), returning the rest
/// for tokio-postgres and the options. A string this cannot tokenise is
/// returned whole, for tokio-postgres to report.
pub fn split(url: &str) -> Result<(String, TlsOptions), TlsError> {
    let mut options = TlsOptions::default();
    let mut take = |key: &str, value: String| -> Result<(), TlsError> {
        match key {
            "sslmode" => options.mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => options.root_cert = Some(value),
            "sslcert" => options.cert = Some(value.into()),
            _ => options.key = Some(value.into()),
        }
        Ok(())
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), options));
        };
        let mut kept = Vec::new();
        for param in query.split('&') {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            if TLS_KEYWORDS.contains(&key) {
                let value = percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned();
                take(key, value)?;
            } else {
                kept.push(param);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let Some(pairs) = keyword_pairs(url) else {
            return Ok((url.to_owned(), options));
        };
        let mut kept = Vec::new();
        for (key, value, raw) in pairs {
            if TLS_KEYWORDS.contains(&key) {
                take(key, value)?;
            } else {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    Ok((rest, options))
}

/// libpq's keyword/value syntax: `key = value` pairs separated by
/// whitespace, values optionally single-quoted, `\` escaping the next
/// character. Each pair as (key, unescaped value, original text).
fn keyword_pairs(text: &str) -> Option<Vec<(&str, String, &str)>> {
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut pairs = Vec::new();
    let skip_space = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    };
    loop {
        at = skip_space(at);
        if at == bytes.len() {
            return Some(pairs);
        }
        let start = at;
        while at < bytes.len() && bytes[at] != b'=' && !bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let key = &text[start..at];
        at = skip_space(at);
        if bytes.get(at) != Some(&b'=') || key.is_empty() {
            return None;
        }
        at = skip_space(at + 1);
        let mut value = String::new();
        let quoted = bytes.get(at) == Some(&b'\'');
        if quoted {
            at += 1;
        }
        loop {
            let c = text[at..].chars().next();
            match c {
                None if quoted => return None,
                None => break,
                Some('\'') if quoted => {
                    at += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some('\\') => {
                    let escaped = text[at + 1..].chars().next()?;
                    value.push(escaped);
                    at += 1 + escaped.len_utf8();
                }
                Some(c) => {
                    value.push(c);
                    at += c.len_utf8();
                }
            }
        }
        pairs.push((key, value, &text[start..at]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_taken_out_of_both_forms() {
        let (rest, options) = split(
            "host=db port = 5432 sslmode=verify-full sslrootcert='/etc/a b/ca.pem' password='x\\'y'",
        )
        .expect("splits");
        assert_eq!(rest, "host=db port = 5432 password='x\\'y'");
        assert_eq!(options.mode, Some(SslMode::VerifyFull));
        assert_eq!(options.root_cert.as_deref(), Some("/etc/a b/ca.pem"));

        let (rest, options) = split(
            "postgres://u:p@db:5432/ledger?application_name=x&sslmode=verify-ca&sslrootcert=%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
        )
        .expect("splits");
        assert_eq!(rest, "postgres://u:p@db:5432/ledger?application_name=x");
        assert_eq!(options.mode(), SslMode::VerifyCa);
        assert_eq!(options.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(options.cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(options.key.as_deref(), Some(Path::new("/k.pem")));

        let (rest, options) = split("postgresql://db/ledger?sslmode=require").expect("splits");
        assert_eq!(rest, "postgresql://db/ledger");
        assert_eq!(options.mode(), SslMode::Require);
    }

    #[test]
    fn modes_default_as_documented() {
        assert_eq!(split("host=db").expect("splits").1.mode(), SslMode::Disable);
        assert_eq!(
            split("host=db sslrootcert=system")
                .expect("splits")
                .1
                .mode(),
            SslMode::VerifyFull
        );
        let error = split("host=db sslmode=allow").expect_err("allow is not offered");
        assert!(error.to_string().contains("\"allow\""), "{error}");
    }

    #[test]
    fn verify_modes_without_a_ca_are_refused_with_the_fix() {
        let options = TlsOptions {
            mode: Some(SslMode::VerifyFull),
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        let error = options.connector().err().expect("missing file refused");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
        let options = TlsOptions {
            mode: Some(SslMode::Require),
            root_cert: Some("system".into()),
            ..TlsOptions::default()
        };
        let error = options.connector().err().expect("weak mode refused");
        assert!(error.to_string().contains("verify-full"), "{error}");
        let options = TlsOptions {
            mode: Some(SslMode::Require),
            cert: Some("/c.pem".into()),
            ..TlsOptions::default()
        };
        let error = options.connector().err().expect("half a client cert");
        assert!(error.to_string().contains("sslkey"), "{error}");
    }
}
