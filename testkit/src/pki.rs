//! A throw-away test PKI (ECDSA P-256, SHA-256), generated with the `openssl` crate.
//!
//! [`Pki::generate`] writes into a directory a CA, a data-center server certificate,
//! a box (client) certificate with `CN=<box id>`, and the negative set the uplink
//! tests need: an unrelated CA and a server certificate it signed, an expired and a
//! not-yet-valid server certificate, one for the wrong host, and a client certificate
//! from an unknown CA. Keys are unencrypted PKCS#8 PEM (what rapd and nginx read).
//!
//! [`verify`] checks a certificate the way `openssl verify` does (chain to the given
//! CA only, validity period, optionally host name or IP), so tests can assert the
//! exact reason a certificate is refused.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509Name, X509NameBuilder, X509StoreContext, X509};

/// Why the PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// An OpenSSL operation failed.
    #[error("{what}: {source}")]
    Openssl {
        what: String,
        #[source]
        source: ErrorStack,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn ossl(what: impl Into<String>) -> impl FnOnce(ErrorStack) -> PkiError {
    let what = what.into();
    move |source| PkiError::Openssl { what, source }
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (unencrypted PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

/// What to put in the PKI.
#[derive(Debug, Clone)]
pub struct PkiSpec {
    /// DNS names of the data-center server certificate (e.g. `dc.rapbox.test`).
    pub server_dns: Vec<String>,
    /// IP SANs of the server certificate (e.g. `127.0.0.5`).
    pub server_ips: Vec<IpAddr>,
    /// The box id: CN of the client certificate.
    pub box_id: String,
    /// DNS name of the wrong-host certificate (must not match anything tested).
    pub wrong_dns: String,
    /// IP SAN of the wrong-host certificate (a documentation address, never contacted).
    pub wrong_ip: IpAddr,
}

impl PkiSpec {
    /// A server certificate for `dns` names and `ips`, and a client certificate for `box_id`.
    pub fn new(dns: &[&str], ips: &[IpAddr], box_id: &str) -> PkiSpec {
        PkiSpec {
            server_dns: dns.iter().map(|s| s.to_string()).collect(),
            server_ips: ips.to_vec(),
            box_id: box_id.to_string(),
            wrong_dns: "wrong-host.invalid".to_string(),
            wrong_ip: IpAddr::from([192, 0, 2, 1]),
        }
    }
}

/// The files of a generated PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Where the files are.
    pub dir: PathBuf,
    /// The test CA (the only trust anchor the box is configured with).
    pub ca: CertKey,
    /// Data-center server certificate, signed by `ca`, for the spec's names and IPs.
    pub server: CertKey,
    /// Box client certificate, `CN=<box id>`, signed by `ca`.
    pub client: CertKey,
    /// The box id in `client`'s CN.
    pub box_id: String,
    /// An unrelated CA.
    pub other_ca: CertKey,
    /// A server certificate for the right names, signed by `other_ca`.
    pub other_ca_server: CertKey,
    /// Signed by `ca`, right names, notAfter in the past.
    pub expired_server: CertKey,
    /// Signed by `ca`, right names, notBefore in the future.
    pub not_yet_valid_server: CertKey,
    /// Signed by `ca`, valid, but for `wrong_dns` / `wrong_ip` only.
    pub wrong_host_server: CertKey,
    /// A client certificate with the box's CN, signed by `other_ca`.
    pub unknown_ca_client: CertKey,
}

/// What kind of end-entity certificate to issue.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Subject CN.
    pub cn: String,
    /// serverAuth (with SANs) or clientAuth.
    pub server: bool,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Validity, in seconds relative to now (negative = past).
    pub not_before: i64,
    pub not_after: i64,
}

const DAY: i64 = 86_400;

impl Profile {
    /// A server certificate valid from an hour ago for ten years.
    pub fn server(cn: &str, dns: &[String], ips: &[IpAddr]) -> Profile {
        Profile {
            cn: cn.to_string(),
            server: true,
            dns: dns.to_vec(),
            ips: ips.to_vec(),
            not_before: -3600,
            not_after: 3650 * DAY,
        }
    }

    /// A client certificate valid from an hour ago for ten years.
    pub fn client(cn: &str) -> Profile {
        Profile {
            cn: cn.to_string(),
            server: false,
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: -3600,
            not_after: 3650 * DAY,
        }
    }

    /// The same profile with another validity window (seconds relative to now).
    pub fn valid(self, not_before: i64, not_after: i64) -> Profile {
        Profile { not_before, not_after, ..self }
    }
}

struct Ca {
    cert: X509,
    key: PKey<Private>,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn new_key() -> Result<PKey<Private>, PkiError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(ossl("P-256 group"))?;
    let ec = EcKey::generate(&group).map_err(ossl("generating a P-256 key"))?;
    PKey::from_ec_key(ec).map_err(ossl("wrapping the key"))
}

fn name(cn: &str) -> Result<X509Name, PkiError> {
    let mut b = X509NameBuilder::new().map_err(ossl("name"))?;
    b.append_entry_by_nid(Nid::ORGANIZATIONNAME, "rapbox test").map_err(ossl("name O"))?;
    b.append_entry_by_nid(Nid::COMMONNAME, cn).map_err(ossl(format!("name CN={cn}")))?;
    Ok(b.build())
}

fn time(offset: i64) -> Result<Asn1Time, PkiError> {
    Asn1Time::from_unix((now() + offset) as _).map_err(ossl("validity time"))
}

fn new_ca(cn: &str) -> Result<Ca, PkiError> {
    let key = new_key()?;
    let what = format!("CA {cn}");
    let e = |source| PkiError::Openssl { what: what.clone(), source };
    let mut b = X509::builder().map_err(e)?;
    b.set_version(2).map_err(e)?;
    let serial = serial().map_err(e)?;
    b.set_serial_number(&serial).map_err(e)?;
    let n = name(cn)?;
    b.set_subject_name(&n).map_err(e)?;
    b.set_issuer_name(&n).map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    let (nb, na) = (time(-DAY)?, time(3650 * DAY)?);
    b.set_not_before(&nb).map_err(e)?;
    b.set_not_after(&na).map_err(e)?;
    b.append_extension(BasicConstraints::new().critical().ca().build().map_err(e)?).map_err(e)?;
    b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().map_err(e)?).map_err(e)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None)).map_err(e)?;
    b.append_extension(ski).map_err(e)?;
    b.sign(&key, MessageDigest::sha256()).map_err(e)?;
    Ok(Ca { cert: b.build(), key })
}

fn serial() -> Result<openssl::asn1::Asn1Integer, ErrorStack> {
    let mut bn = BigNum::new()?;
    bn.rand(120, MsbOption::MAYBE_ZERO, false)?;
    bn.to_asn1_integer()
}

fn issue_with(ca: &Ca, p: &Profile) -> Result<(X509, PKey<Private>), PkiError> {
    let key = new_key()?;
    let what = format!("certificate CN={}", p.cn);
    let e = |source| PkiError::Openssl { what: what.clone(), source };
    let mut b = X509::builder().map_err(e)?;
    b.set_version(2).map_err(e)?;
    let (sn, subject) = (serial().map_err(e)?, name(&p.cn)?);
    b.set_serial_number(&sn).map_err(e)?;
    b.set_subject_name(&subject).map_err(e)?;
    b.set_issuer_name(ca.cert.subject_name()).map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    let (nb, na) = (time(p.not_before)?, time(p.not_after)?);
    b.set_not_before(&nb).map_err(e)?;
    b.set_not_after(&na).map_err(e)?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(e)?).map_err(e)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build().map_err(e)?).map_err(e)?;
    let eku = if p.server {
        ExtendedKeyUsage::new().server_auth().build()
    } else {
        ExtendedKeyUsage::new().client_auth().build()
    };
    b.append_extension(eku.map_err(e)?).map_err(e)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&ca.cert), None)).map_err(e)?;
    b.append_extension(ski).map_err(e)?;
    let aki = AuthorityKeyIdentifier::new().keyid(true).build(&b.x509v3_context(Some(&ca.cert), None)).map_err(e)?;
    b.append_extension(aki).map_err(e)?;
    if !p.dns.is_empty() || !p.ips.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for d in &p.dns {
            san.dns(d);
        }
        for ip in &p.ips {
            san.ip(&ip.to_string());
        }
        let san = san.build(&b.x509v3_context(Some(&ca.cert), None)).map_err(e)?;
        b.append_extension(san).map_err(e)?;
    }
    b.sign(&ca.key, MessageDigest::sha256()).map_err(e)?;
    Ok((b.build(), key))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)
}

fn save(dir: &Path, stem: &str, cert: &X509, key: &PKey<Private>) -> Result<CertKey, PkiError> {
    let ck = CertKey { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
    write(&ck.cert, &cert.to_pem().map_err(ossl(format!("encoding {stem}.pem")))?, 0o644)?;
    let key_pem = key.private_key_to_pem_pkcs8().map_err(ossl(format!("encoding {stem}.key")))?;
    write(&ck.key, &key_pem, 0o600)?;
    Ok(ck)
}

fn load_ca(ca: &CertKey) -> Result<Ca, PkiError> {
    let read = |p: &Path| fs::read(p).map_err(|source| PkiError::Io { path: p.to_path_buf(), source });
    let cert = X509::from_pem(&read(&ca.cert)?).map_err(ossl(format!("reading {}", ca.cert.display())))?;
    let key = PKey::private_key_from_pem(&read(&ca.key)?).map_err(ossl(format!("reading {}", ca.key.display())))?;
    Ok(Ca { cert, key })
}

impl Pki {
    /// Generates the whole PKI into `dir` (created if missing; files overwritten).
    pub fn generate(dir: &Path, spec: &PkiSpec) -> Result<Pki, PkiError> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })?;
        let ca = new_ca("rapbox test CA")?;
        let other = new_ca("unrelated test CA")?;
        let cn =
            spec.server_dns.first().cloned().unwrap_or_else(|| {
                spec.server_ips.first().map_or_else(|| "data-center".to_string(), |ip| ip.to_string())
            });
        let server = Profile::server(&cn, &spec.server_dns, &spec.server_ips);
        let issue = |issuer: &Ca, stem: &str, p: &Profile| -> Result<CertKey, PkiError> {
            let (c, k) = issue_with(issuer, p)?;
            save(dir, stem, &c, &k)
        };
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca: save(dir, "ca", &ca.cert, &ca.key)?,
            server: issue(&ca, "server", &server)?,
            client: issue(&ca, "client", &Profile::client(&spec.box_id))?,
            box_id: spec.box_id.clone(),
            other_ca: save(dir, "other-ca", &other.cert, &other.key)?,
            other_ca_server: issue(&other, "other-ca-server", &server)?,
            expired_server: issue(&ca, "expired-server", &server.clone().valid(-30 * DAY, -DAY))?,
            not_yet_valid_server: issue(&ca, "not-yet-valid-server", &server.clone().valid(30 * DAY, 60 * DAY))?,
            wrong_host_server: issue(
                &ca,
                "wrong-host-server",
                &Profile::server(&spec.wrong_dns, std::slice::from_ref(&spec.wrong_dns), &[spec.wrong_ip]),
            )?,
            unknown_ca_client: issue(&other, "unknown-ca-client", &Profile::client(&spec.box_id))?,
        };
        Ok(pki)
    }

    /// Issues one more certificate from this PKI's CA into `<dir>/<stem>.{pem,key}`.
    pub fn issue(&self, stem: &str, profile: &Profile) -> Result<CertKey, PkiError> {
        let ca = load_ca(&self.ca)?;
        let (c, k) = issue_with(&ca, profile)?;
        save(&self.dir, stem, &c, &k)
    }
}

/// Why [`verify`] refused a certificate: OpenSSL's verify code and its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate verify error {code}: {text}")]
pub struct VerifyFailure {
    /// `X509_V_ERR_*` (e.g. 10 expired, 9 not yet valid, 20 unknown issuer, 62 host mismatch).
    pub code: i32,
    pub text: String,
}

/// `X509_V_ERR_CERT_NOT_YET_VALID`.
pub const V_ERR_NOT_YET_VALID: i32 = 9;
/// `X509_V_ERR_CERT_HAS_EXPIRED`.
pub const V_ERR_EXPIRED: i32 = 10;
/// `X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY`: not signed by a trusted CA.
pub const V_ERR_UNKNOWN_ISSUER: i32 = 20;
/// `X509_V_ERR_HOSTNAME_MISMATCH`.
pub const V_ERR_HOSTNAME_MISMATCH: i32 = 62;
/// `X509_V_ERR_IP_ADDRESS_MISMATCH`.
pub const V_ERR_IP_MISMATCH: i32 = 64;

/// What [`verify`] checks besides the chain and the validity period.
#[derive(Debug, Clone, Default)]
pub struct Expect<'a> {
    /// The host name the certificate must be valid for.
    pub host: Option<&'a str>,
    /// The IP address the certificate must be valid for.
    pub ip: Option<IpAddr>,
}

/// Verifies `cert` against `ca` alone (as `openssl verify -CAfile ca cert` would, plus
/// `-verify_hostname` / `-verify_ip` when given).
pub fn verify(ca: &Path, cert: &Path, expect: &Expect<'_>) -> Result<(), PkiOrVerify> {
    let read = |p: &Path| fs::read(p).map_err(|source| PkiError::Io { path: p.to_path_buf(), source });
    let ca = X509::from_pem(&read(ca)?).map_err(ossl(format!("reading {}", ca.display())))?;
    let cert = X509::from_pem(&read(cert)?).map_err(ossl(format!("reading {}", cert.display())))?;
    let mut store = X509StoreBuilder::new().map_err(ossl("store"))?;
    store.add_cert(ca).map_err(ossl("adding the CA"))?;
    let mut param = X509VerifyParam::new().map_err(ossl("verify params"))?;
    if let Some(h) = expect.host {
        param.set_host(h).map_err(ossl("setting the host"))?;
    }
    if let Some(ip) = expect.ip {
        param.set_ip(ip).map_err(ossl("setting the IP"))?;
    }
    store.set_param(&param).map_err(ossl("setting verify params"))?;
    let store = store.build();
    let chain = Stack::new().map_err(ossl("chain"))?;
    let mut ctx = X509StoreContext::new().map_err(ossl("store context"))?;
    let result = ctx
        .init(&store, &cert, &chain, |c| Ok(c.verify_cert()?.then_some(()).ok_or_else(|| c.error())))
        .map_err(ossl("verifying"))?;
    result.map_err(|e| PkiOrVerify::Verify(VerifyFailure { code: e.as_raw(), text: e.error_string().to_string() }))
}

/// [`verify`]'s error: the check could not run, or the certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum PkiOrVerify {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Verify(VerifyFailure),
}

impl PkiOrVerify {
    /// The verify code when the certificate was refused.
    pub fn code(&self) -> Option<i32> {
        match self {
            PkiOrVerify::Verify(v) => Some(v.code),
            PkiOrVerify::Pki(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(name: &str) -> (crate::TestDir, Pki) {
        let dir = crate::TestDir::new(&format!("testkit/pki/{name}")).unwrap();
        let spec = PkiSpec::new(&["dc.rapbox.test"], &["127.0.0.5".parse().unwrap()], "BOX-0001");
        let pki = Pki::generate(dir.path(), &spec).unwrap();
        (dir, pki)
    }

    fn code(ca: &Path, cert: &Path, e: Expect<'_>) -> Option<i32> {
        match verify(ca, cert, &e) {
            Ok(()) => None,
            Err(err) => Some(err.code().unwrap_or_else(|| panic!("verify could not run: {err}"))),
        }
    }

    #[test]
    fn chain_and_names_verify() {
        let (_dir, p) = pki("chain");
        let host = Expect { host: Some("dc.rapbox.test"), ip: None };
        let ip = Expect { host: None, ip: Some("127.0.0.5".parse().unwrap()) };
        assert_eq!(code(&p.ca.cert, &p.server.cert, host.clone()), None);
        assert_eq!(code(&p.ca.cert, &p.server.cert, ip.clone()), None);
        assert_eq!(code(&p.ca.cert, &p.client.cert, Expect::default()), None);
        assert_eq!(code(&p.other_ca.cert, &p.other_ca_server.cert, host.clone()), None);
    }

    #[test]
    fn negative_set_fails_for_the_intended_reason() {
        let (_dir, p) = pki("negative");
        let host = || Expect { host: Some("dc.rapbox.test"), ip: None };
        let ip = || Expect { host: None, ip: Some("127.0.0.5".parse().unwrap()) };
        assert_eq!(code(&p.ca.cert, &p.expired_server.cert, host()), Some(V_ERR_EXPIRED));
        assert_eq!(code(&p.ca.cert, &p.not_yet_valid_server.cert, host()), Some(V_ERR_NOT_YET_VALID));
        assert_eq!(code(&p.ca.cert, &p.other_ca_server.cert, host()), Some(V_ERR_UNKNOWN_ISSUER));
        assert_eq!(code(&p.ca.cert, &p.unknown_ca_client.cert, Expect::default()), Some(V_ERR_UNKNOWN_ISSUER));
        assert_eq!(code(&p.ca.cert, &p.wrong_host_server.cert, host()), Some(V_ERR_HOSTNAME_MISMATCH));
        assert_eq!(code(&p.ca.cert, &p.wrong_host_server.cert, ip()), Some(V_ERR_IP_MISMATCH));
        // The wrong-host certificate is otherwise fine.
        assert_eq!(code(&p.ca.cert, &p.wrong_host_server.cert, Expect::default()), None);
    }

    #[test]
    fn files_are_what_rapd_and_nginx_expect() {
        let (_dir, p) = pki("files");
        let key_pem = fs::read_to_string(&p.client.key).unwrap();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "not PKCS#8: {key_pem}");
        let key = PKey::private_key_from_pem(key_pem.as_bytes()).unwrap();
        let cert = X509::from_pem(&fs::read(&p.client.cert).unwrap()).unwrap();
        assert!(cert.public_key().unwrap().public_eq(&key));
        let cn = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next().unwrap();
        assert_eq!(cn.data().to_string().unwrap(), "BOX-0001");
        assert_eq!(cert.signature_algorithm().object().nid(), Nid::ECDSA_WITH_SHA256);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&p.server.key).unwrap().permissions().mode() & 0o777, 0o600);
        let extra = p.issue("second-dc", &Profile::server("dc2", &["dc2.rapbox.test".into()], &[])).unwrap();
        let e = Expect { host: Some("dc2.rapbox.test"), ip: None };
        assert_eq!(code(&p.ca.cert, &extra.cert, e), None);
    }
}
