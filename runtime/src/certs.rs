//! `rapctl certs`: the provisioned CA and box certificates as a technician needs to see
//! them — subject, issuer, validity, days left, and whether the box key matches its
//! certificate. rapd reads the files (they are root:rapd 0640; technicians cannot), so
//! this is answered over the control socket.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::pkey::PKey;
use openssl::x509::X509;
use serde::{Deserialize, Serialize};

use crate::config::UplinkConfig;
use crate::uplink::probe::name;

/// Days before expiry from which a certificate is reported as expiring soon.
pub const EXPIRING_DAYS: i64 = 30;

/// One certificate (the first one of its file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertInfo {
    /// `ca` or `box`.
    pub role: String,
    pub path: String,
    /// `valid`, `expiring` (fewer than [`EXPIRING_DAYS`] days left), `expired`,
    /// `not_yet_valid`, `missing`, `unreadable`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Whole days until `not_after` (negative once expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    /// Certificates in the file (a CA bundle or a chain may hold several).
    pub count: usize,
    /// Box certificate only: whether the provisioned key belongs to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_matches: Option<bool>,
    /// Why the file could not be read, or what is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CertInfo {
    fn bare(role: &str, path: &Path, state: &str, error: Option<String>) -> CertInfo {
        CertInfo {
            role: role.into(),
            path: path.display().to_string(),
            state: state.into(),
            subject: None,
            issuer: None,
            not_before: None,
            not_after: None,
            days_left: None,
            count: 0,
            key_matches: None,
            error,
        }
    }

    /// Whether this certificate can be used today.
    pub fn usable(&self) -> bool {
        matches!(self.state.as_str(), "valid" | "expiring") && self.key_matches != Some(false)
    }
}

/// The CA and box certificates of the uplink configuration.
pub fn inspect(cfg: &UplinkConfig) -> Vec<CertInfo> {
    let mut ca = one("ca", &cfg.ca);
    ca.key_matches = None;
    let mut bx = one("box", &cfg.cert);
    if bx.count > 0 {
        bx.key_matches = Some(key_matches(&cfg.cert, &cfg.key));
        if bx.key_matches == Some(false) {
            bx.error = Some(format!("the key {} does not belong to this certificate", cfg.key.display()));
        }
    }
    vec![ca, bx]
}

fn key_matches(cert: &Path, key: &Path) -> bool {
    let (Ok(c), Ok(k)) = (std::fs::read(cert), std::fs::read(key)) else {
        return false;
    };
    let (Ok(c), Ok(k)) = (X509::from_pem(&c), PKey::private_key_from_pem(&k)) else {
        return false;
    };
    c.public_key().map(|p| p.public_eq(&k)).unwrap_or(false)
}

fn one(role: &str, path: &Path) -> CertInfo {
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return CertInfo::bare(
                role,
                path,
                "missing",
                Some("the file does not exist: the box is not provisioned".into()),
            )
        }
        Err(e) => return CertInfo::bare(role, path, "unreadable", Some(e.to_string())),
    };
    let certs = match X509::stack_from_pem(&pem) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => return CertInfo::bare(role, path, "unreadable", Some("no PEM certificate in the file".into())),
        Err(e) => return CertInfo::bare(role, path, "unreadable", Some(format!("not PEM certificates: {e}"))),
    };
    let c = &certs[0];
    let now = Asn1Time::days_from_now(0).ok();
    let days_left = now.as_ref().and_then(|n| n.diff(c.not_after()).ok()).map(|d| {
        // diff gives whole days and the remaining seconds (same sign).
        d.days as i64
    });
    let started = now.as_ref().and_then(|n| n.compare(c.not_before()).ok()).map(|o| o != std::cmp::Ordering::Less);
    let expired = now.as_ref().and_then(|n| n.compare(c.not_after()).ok()).map(|o| o != std::cmp::Ordering::Less);
    let state = match (started, expired, days_left) {
        (Some(false), _, _) => "not_yet_valid",
        (_, Some(true), _) => "expired",
        (_, _, Some(d)) if d < EXPIRING_DAYS => "expiring",
        _ => "valid",
    };
    CertInfo {
        role: role.into(),
        path: path.display().to_string(),
        state: state.into(),
        subject: Some(name(c.subject_name())),
        issuer: Some(name(c.issuer_name())),
        not_before: Some(c.not_before().to_string()),
        not_after: Some(c.not_after().to_string()),
        days_left,
        count: certs.len(),
        key_matches: None,
        error: None,
    }
}
