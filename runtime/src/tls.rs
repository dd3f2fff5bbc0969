//! The uplink's TLS client: OpenSSL (FIPS provider) with the box certificate, trusting
//! only the configured CA, TLS 1.2 minimum, AES-GCM suites and NIST curves only, host
//! name verified. Plugged into ureq as its TLS connector.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::pkey::PKey;
use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;

/// TLS 1.2 suites allowed: ECDHE with AES-GCM only.
pub const TLS12_CIPHERS: &str =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256";
/// TLS 1.3 suites allowed.
pub const TLS13_SUITES: &str = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256";
/// Key-exchange groups allowed (NIST curves).
pub const GROUPS: &str = "P-256:P-384";

/// Why the TLS client could not be set up (the box is not provisioned, or files are bad).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{what} {path} is missing: the box is not provisioned")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {message}")]
    Bad { what: &'static str, path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            TlsSetupError::Missing { what, path: path.into() }
        } else {
            TlsSetupError::Bad { what, path: path.into(), message: e.to_string() }
        }
    })
}

/// Builds the connector from the provisioned files.
pub fn connector(ca: &Path, cert: &Path, key: &Path) -> Result<SslConnector, TlsSetupError> {
    let ca_pem = read("CA certificate", ca)?;
    let cert_pem = read("box certificate", cert)?;
    let key_pem = read("box key", key)?;
    let bad = |what, path: &Path, message: String| TlsSetupError::Bad { what, path: path.into(), message };

    let cas =
        X509::stack_from_pem(&ca_pem).map_err(|e| bad("CA certificate", ca, format!("not PEM certificates: {e}")))?;
    if cas.is_empty() {
        return Err(bad("CA certificate", ca, "contains no certificate".into()));
    }
    let chain = X509::stack_from_pem(&cert_pem).map_err(|e| bad("box certificate", cert, format!("not PEM: {e}")))?;
    let Some((leaf, rest)) = chain.split_first() else {
        return Err(bad("box certificate", cert, "contains no certificate".into()));
    };
    let key_text = String::from_utf8_lossy(&key_pem);
    if !key_text.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(bad("box key", key, "must be an unencrypted PKCS#8 PEM key (BEGIN PRIVATE KEY)".into()));
    }
    let pkey = PKey::private_key_from_pem(&key_pem).map_err(|e| bad("box key", key, format!("cannot load: {e}")))?;

    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    // Replace the store that SslConnector filled with the system roots: only our CA.
    let mut store = X509StoreBuilder::new()?;
    for c in cas {
        store.add_cert(c)?;
    }
    b.set_cert_store(store.build());
    b.set_verify(SslVerifyMode::PEER);
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_cipher_list(TLS12_CIPHERS)?;
    b.set_ciphersuites(TLS13_SUITES)?;
    b.set_groups_list(GROUPS)?;
    b.set_certificate(leaf)?;
    for c in rest {
        b.add_extra_chain_cert(c.clone())?;
    }
    b.set_private_key(&pkey)?;
    b.check_private_key().map_err(|e| bad("box key", key, format!("does not match the box certificate: {e}")))?;
    Ok(b.build())
}

/// ureq's TLS connector over OpenSSL.
pub struct Connector(pub Arc<SslConnector>);

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("openssl-fips-connector")
    }
}

struct Stream(SslStream<Box<dyn ureq::ReadWrite>>);

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tls-stream")
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl ureq::ReadWrite for Stream {
    fn socket(&self) -> Option<&TcpStream> {
        self.0.get_ref().socket()
    }
}

impl ureq::TlsConnector for Connector {
    fn connect(&self, dns_name: &str, io: Box<dyn ureq::ReadWrite>) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let host = dns_name.trim_start_matches('[').trim_end_matches(']');
        let cfg = self.0.configure().map_err(|e| tls_error(format!("TLS setup: {e}")))?;
        match cfg.connect(host, io) {
            Ok(s) => Ok(Box::new(Stream(s))),
            Err(HandshakeError::Failure(mid)) => {
                let verify = mid.ssl().verify_result();
                let detail = if verify.as_raw() != 0 {
                    format!("server certificate refused: {}", verify.error_string())
                } else {
                    format!("{}", mid.error())
                };
                Err(tls_error(format!("TLS handshake with {host} failed: {detail}")))
            }
            Err(HandshakeError::SetupFailure(e)) => Err(tls_error(format!("TLS setup for {host}: {e}"))),
            Err(HandshakeError::WouldBlock(_)) => Err(tls_error(format!("TLS handshake with {host} timed out"))),
        }
    }
}

fn tls_error(msg: String) -> ureq::Error {
    ureq::Error::from(io::Error::new(io::ErrorKind::ConnectionAborted, msg))
}
