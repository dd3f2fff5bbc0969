//! The vendor's side of download manifests: build a manifest for a file and sign it with the
//! vendor signing key (`rapdc sign-manifest`, `docs/transfers.md`).
//!
//! The signature is over the manifest's exact bytes with SHA-256, as
//! `openssl dgst -sha256 -sign vendor.key -out m.sig manifest.json` makes it (ECDSA: DER;
//! RSA: PKCS#1 v1.5), so either this tool or that command may sign.

use std::path::Path;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use rapwire::transfer::{base64, Category, DownloadArgs, Manifest, MANIFEST_FORMAT};

/// Why a manifest could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("signing key {path}: {message}")]
    Key { path: String, message: String },
    #[error("manifest: {0}")]
    Manifest(String),
}

/// Loads a PEM private key (PKCS#8 or traditional).
pub fn load_key(path: &Path) -> Result<PKey<Private>, SignError> {
    let pem = std::fs::read(path).map_err(|source| SignError::Io { path: path.display().to_string(), source })?;
    PKey::private_key_from_pem(&pem).map_err(|e| SignError::Key {
        path: path.display().to_string(),
        message: format!("not a PEM private key: {e}"),
    })
}

/// The manifest of `content` for `targets`.
pub fn manifest_for(content: &[u8], name: &str, category: Category, targets: &[String], description: &str) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT.into(),
        name: name.into(),
        category,
        size: content.len() as u64,
        sha256: crate::transfers::sha256_hex(content),
        targets: targets.to_vec(),
        description: description.into(),
    }
}

/// Signs `manifest_bytes` (SHA-256; ECDSA DER or RSA PKCS#1 v1.5).
pub fn sign_bytes(key: &PKey<Private>, manifest_bytes: &[u8]) -> Result<Vec<u8>, SignError> {
    let err = |e: openssl::error::ErrorStack| SignError::Key { path: "(in memory)".into(), message: e.to_string() };
    let mut s = Signer::new(MessageDigest::sha256(), key).map_err(err)?;
    s.update(manifest_bytes).map_err(err)?;
    s.sign_to_vec().map_err(err)
}

/// The `download` command's arguments for `manifest`, signed with `key`.
pub fn download_args(key: &PKey<Private>, manifest: &Manifest) -> Result<DownloadArgs, SignError> {
    manifest.check().map_err(SignError::Manifest)?;
    let bytes = manifest.to_bytes();
    let sig = sign_bytes(key, &bytes)?;
    Ok(DownloadArgs { manifest: String::from_utf8_lossy(&bytes).into_owned(), signature: base64::encode(&sig) })
}

#[cfg(test)]
mod tests {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::sign::Verifier;

    use super::*;

    #[test]
    fn signed_args_verify_over_the_exact_bytes() {
        let key =
            PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
                .unwrap();
        let m = manifest_for(b"reagent data", "lot-1.dat", Category::Reagent, &["I-1".into()], "lot 1");
        assert_eq!(m.size, 12);
        let args = download_args(&key, &m).unwrap();
        let sig = base64::decode(&args.signature).unwrap();
        let mut v = Verifier::new(MessageDigest::sha256(), &key).unwrap();
        v.update(args.manifest.as_bytes()).unwrap();
        assert!(v.verify(&sig).unwrap());
        assert_eq!(Manifest::parse(args.manifest.as_bytes()).unwrap(), m);
        let mut bad = m.clone();
        bad.name = "../x".into();
        assert!(download_args(&key, &bad).is_err());
    }
}
