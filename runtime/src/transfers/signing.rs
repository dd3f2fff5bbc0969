//! Trusted vendor keys and manifest signatures, through OpenSSL (in rapd: the FIPS provider,
//! whose default properties the FIPS gate proved).
//!
//! A key is a PEM public key (`-----BEGIN PUBLIC KEY-----`): ECDSA on P-256, or RSA with at
//! least 3072 bits. A signature is over the manifest's exact bytes with SHA-256: DER ECDSA,
//! or RSA PKCS#1 v1.5 or PSS (what `openssl dgst -sha256 -sign` writes, with or without
//! `-sigopt rsa_padding_mode:pss`).

use std::path::{Path, PathBuf};

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};

/// A key that may sign manifests.
pub struct VendorKey {
    pub path: PathBuf,
    key: PKey<Public>,
    /// `ECDSA P-256` or `RSA-<bits>`.
    pub kind: String,
}

impl std::fmt::Debug for VendorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.kind)
    }
}

/// Loads the key at `path`, refusing any other type or size.
pub fn load_key(path: &Path) -> Result<VendorKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("vendor key {}: {e}", path.display()))?;
    let key = PKey::public_key_from_pem(&pem)
        .map_err(|e| format!("vendor key {}: not a PEM public key: {e}", path.display()))?;
    let kind = match key.id() {
        Id::EC => {
            let ec = key.ec_key().map_err(|e| format!("vendor key {}: {e}", path.display()))?;
            if ec.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
                return Err(format!("vendor key {}: ECDSA keys must be on P-256", path.display()));
            }
            "ECDSA P-256".to_string()
        }
        Id::RSA => {
            let bits = key.bits();
            if bits < 3072 {
                return Err(format!("vendor key {}: RSA-{bits} is too small (RSA-3072 or larger)", path.display()));
            }
            format!("RSA-{bits}")
        }
        other => {
            return Err(format!("vendor key {}: key type {other:?} is not ECDSA P-256 or RSA-3072", path.display()))
        }
    };
    Ok(VendorKey { path: path.into(), key, kind })
}

fn verify_one(k: &VendorKey, data: &[u8], sig: &[u8]) -> Result<bool, openssl::error::ErrorStack> {
    let mut v = Verifier::new(MessageDigest::sha256(), &k.key)?;
    v.update(data)?;
    if v.verify(sig)? {
        return Ok(true);
    }
    if k.key.id() == Id::RSA {
        let mut v = Verifier::new(MessageDigest::sha256(), &k.key)?;
        v.set_rsa_padding(Padding::PKCS1_PSS)?;
        // RSA_PSS_SALTLEN_AUTO: any salt length the signer chose.
        v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(-2))?;
        v.update(data)?;
        return v.verify(sig);
    }
    Ok(false)
}

/// The key that signed `data`, or why none did.
pub fn verify<'k>(keys: &'k [VendorKey], data: &[u8], sig: &[u8]) -> Result<&'k VendorKey, String> {
    if keys.is_empty() {
        return Err("no vendor signing key is configured (transfers.vendor_keys): no download is trusted".into());
    }
    for k in keys {
        match verify_one(k, data, sig) {
            Ok(true) => return Ok(k),
            Ok(false) => {}
            Err(e) => log::debug!("signature check with {}: {e}", k.path.display()),
        }
    }
    Err(format!(
        "the manifest's signature does not verify with any trusted vendor key ({})",
        keys.iter().map(|k| format!("{} {}", k.kind, k.path.display())).collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::pkey::Private;
    use openssl::rsa::Rsa;
    use openssl::sign::Signer;

    use super::*;

    fn write_pub(dir: &Path, name: &str, k: &PKey<Private>) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, k.public_key_to_pem().unwrap()).unwrap();
        p
    }

    fn sign(k: &PKey<Private>, data: &[u8], pss: bool) -> Vec<u8> {
        let mut s = Signer::new(MessageDigest::sha256(), k).unwrap();
        if pss {
            s.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
            s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).unwrap();
        }
        s.update(data).unwrap();
        s.sign_to_vec().unwrap()
    }

    #[test]
    fn keys_and_signatures() {
        let dir = std::env::temp_dir().join(format!("rapd-signing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ec = PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
            .unwrap();
        let rsa = PKey::from_rsa(Rsa::generate(3072).unwrap()).unwrap();
        let small = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let p384 =
            PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::SECP384R1).unwrap()).unwrap()).unwrap();
        let keys = vec![
            load_key(&write_pub(&dir, "ec.pem", &ec)).unwrap(),
            load_key(&write_pub(&dir, "rsa.pem", &rsa)).unwrap(),
        ];
        assert_eq!(keys[0].kind, "ECDSA P-256");
        assert_eq!(keys[1].kind, "RSA-3072");
        let e = load_key(&write_pub(&dir, "small.pem", &small)).unwrap_err();
        assert!(e.contains("RSA-2048 is too small"), "{e}");
        let e = load_key(&write_pub(&dir, "p384.pem", &p384)).unwrap_err();
        assert!(e.contains("must be on P-256"), "{e}");
        let e = load_key(&dir.join("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");

        let data = b"{\"format\":\"rapbox-manifest-1\"}\n";
        assert_eq!(verify(&keys, data, &sign(&ec, data, false)).unwrap().kind, "ECDSA P-256");
        assert_eq!(verify(&keys, data, &sign(&rsa, data, false)).unwrap().kind, "RSA-3072");
        assert_eq!(verify(&keys, data, &sign(&rsa, data, true)).unwrap().kind, "RSA-3072");
        let e = verify(&keys, b"{\"format\":\"rapbox-manifest-2\"}\n", &sign(&ec, data, false)).unwrap_err();
        assert!(e.contains("does not verify with any trusted vendor key"), "{e}");
        assert!(verify(&keys, data, &sign(&small, data, false)).is_err());
        assert!(verify(&keys, data, b"garbage").is_err());
        assert!(verify(&[], data, &sign(&ec, data, false)).unwrap_err().contains("no vendor signing key"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
