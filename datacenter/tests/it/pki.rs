//! A throwaway PKI for the front-door tests: a CA, a server certificate for
//! `localhost`/127.0.0.1 and box certificates, all P-256, written as PEM files.

use std::fs;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509};

/// A certificate and its key.
pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
}

/// PEM files of one certificate.
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn p256_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

enum Role {
    Ca,
    Server,
    Client,
}

fn issue(cn: &str, role: Role, issuer: Option<&Issued>) -> Issued {
    let key = p256_key();
    let mut name = X509NameBuilder::new().unwrap();
    // Most general first, as `openssl req -subj /O=rapbox/CN=...` does; nginx prints it
    // reversed (RFC 2253): CN=...,O=rapbox.
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "rapbox").unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();

    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(127, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |i| i.cert.subject_name())).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap()).unwrap();
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(issuer.map(|i| &*i.cert), None)).unwrap();
    b.append_extension(ski).unwrap();
    match role {
        Role::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().pathlen(1).build().unwrap()).unwrap();
            b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
        }
        Role::Server => {
            b.append_extension(BasicConstraints::new().critical().build().unwrap()).unwrap();
            b.append_extension(KeyUsage::new().critical().digital_signature().build().unwrap()).unwrap();
            b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap()).unwrap();
            let san = SubjectAlternativeName::new()
                .dns("localhost")
                .ip("127.0.0.1")
                .build(&b.x509v3_context(issuer.map(|i| &*i.cert), None))
                .unwrap();
            b.append_extension(san).unwrap();
        }
        Role::Client => {
            b.append_extension(BasicConstraints::new().critical().build().unwrap()).unwrap();
            b.append_extension(KeyUsage::new().critical().digital_signature().build().unwrap()).unwrap();
            b.append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap()).unwrap();
        }
    }
    if let Some(i) = issuer {
        let aki = AuthorityKeyIdentifier::new().keyid(true).build(&b.x509v3_context(Some(&i.cert), None)).unwrap();
        b.append_extension(aki).unwrap();
    }
    let signer = issuer.map_or(&key, |i| &i.key);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    Issued { cert: b.build(), key }
}

/// A CA that can issue server and box certificates.
pub struct Ca {
    pub issued: Issued,
    pub cert_file: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let issued = issue(name, Role::Ca, None);
        let cert_file = dir.join(format!("{name}.crt"));
        fs::write(&cert_file, issued.cert.to_pem().unwrap()).unwrap();
        Ca { issued, cert_file }
    }

    fn write(dir: &Path, stem: &str, i: &Issued) -> Files {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        fs::write(&cert, i.cert.to_pem().unwrap()).unwrap();
        fs::write(&key, i.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        Files { cert, key }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, dir: &Path) -> Files {
        Ca::write(dir, "server", &issue("localhost", Role::Server, Some(&self.issued)))
    }

    /// A box (client) certificate with subject `CN=<cn>,O=rapbox`.
    pub fn client(&self, dir: &Path, cn: &str) -> Files {
        Ca::write(dir, cn, &issue(cn, Role::Client, Some(&self.issued)))
    }
}
