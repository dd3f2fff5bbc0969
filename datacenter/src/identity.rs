//! Who is calling: the box identity that the front door vouches for.
//!
//! nginx verifies the client certificate and passes two headers to the backend:
//! `X-Client-Verify` (`$ssl_client_verify`, must be `SUCCESS`) and `X-Client-Subject`
//! (`$ssl_client_s_dn`, RFC 2253 form, most specific RDN first, e.g.
//! `CN=box-0001,O=rapbox`). The box identity is the subject's common name. The backend
//! listens on loopback only, so these headers can only come from the front door (or from a
//! test on the same machine).

use crate::api::{CLIENT_SUBJECT_HEADER, CLIENT_VERIFY_HEADER};

/// Longest box identity accepted (the CN's upper bound in RFC 5280).
pub const MAX_BOX_ID_LEN: usize = 64;

/// A caller the front door verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The certificate's common name: the box identity.
    pub box_id: String,
    /// The full subject DN as the front door passed it.
    pub subject: String,
}

/// Why a request carries no usable identity (answered with 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No `X-Client-Verify` header: the request did not come through the front door.
    #[error("no {CLIENT_VERIFY_HEADER} header: client certificate not verified by the front door")]
    NoVerify,
    /// The front door did not verify the certificate.
    #[error("client certificate not verified: {CLIENT_VERIFY_HEADER} is {0:?}")]
    NotVerified(String),
    /// No subject header, or an empty one.
    #[error("no {CLIENT_SUBJECT_HEADER} header")]
    NoSubject,
    /// The subject is not an RFC 2253 distinguished name.
    #[error("subject {subject:?} is not an RFC 2253 name: {why}")]
    Malformed {
        /// The header value.
        subject: String,
        /// What was wrong.
        why: &'static str,
    },
    /// The subject has no CN.
    #[error("subject {0:?} has no CN")]
    NoCommonName(String),
    /// The CN is not usable as a box identity.
    #[error("subject CN {0:?} is not a valid box identity (1-{MAX_BOX_ID_LEN} printable characters)")]
    BadCommonName(String),
}

/// The identity carried by the front door's headers.
pub fn from_headers(verify: Option<&str>, subject: Option<&str>) -> Result<Identity, IdentityError> {
    let verify = verify.ok_or(IdentityError::NoVerify)?;
    if verify != "SUCCESS" {
        return Err(IdentityError::NotVerified(verify.to_owned()));
    }
    let subject = subject.map(str::trim).filter(|s| !s.is_empty()).ok_or(IdentityError::NoSubject)?;
    let box_id = common_name(subject)?;
    Ok(Identity { box_id, subject: subject.to_owned() })
}

/// The first (most specific) CN of an RFC 2253 distinguished name, unescaped.
pub fn common_name(dn: &str) -> Result<String, IdentityError> {
    let malformed = |why| IdentityError::Malformed { subject: dn.to_owned(), why };
    for (attr, value) in parse_rfc2253(dn).map_err(malformed)? {
        if attr.eq_ignore_ascii_case("CN") || attr == "2.5.4.3" {
            let cn = String::from_utf8(value).map_err(|_| malformed("CN is not UTF-8"))?;
            let ok = !cn.is_empty() && cn.chars().count() <= MAX_BOX_ID_LEN && !cn.chars().any(char::is_control);
            return if ok { Ok(cn) } else { Err(IdentityError::BadCommonName(cn)) };
        }
    }
    Err(IdentityError::NoCommonName(dn.to_owned()))
}

/// Splits a DN into (attribute type, raw value bytes) pairs in string order; multi-valued
/// RDNs (`+`) are flattened.
fn parse_rfc2253(dn: &str) -> Result<Vec<(String, Vec<u8>)>, &'static str> {
    let b = dn.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        // Attribute type up to '='.
        let start = i;
        while i < b.len() && b[i] != b'=' {
            if matches!(b[i], b',' | b'+' | b';' | b'\\') {
                return Err("attribute type without '='");
            }
            i += 1;
        }
        if i == b.len() {
            return Err("attribute type without '='");
        }
        let attr = dn[start..i].trim();
        if attr.is_empty() {
            return Err("empty attribute type");
        }
        i += 1;
        // Value up to an unescaped separator.
        let mut value = Vec::new();
        if b.get(i) == Some(&b'#') {
            return Err("hex-encoded (#) values are not supported");
        }
        while i < b.len() && !matches!(b[i], b',' | b'+' | b';') {
            if b[i] == b'\\' {
                let next = *b.get(i + 1).ok_or("dangling escape")?;
                if next.is_ascii_hexdigit() {
                    let hi = hex(next).ok_or("bad hex escape")?;
                    let lo = b.get(i + 2).copied().and_then(hex).ok_or("bad hex escape")?;
                    value.push((hi << 4) | lo);
                    i += 3;
                } else if matches!(next, b',' | b'=' | b'+' | b'<' | b'>' | b'#' | b';' | b'\\' | b'"' | b' ') {
                    value.push(next);
                    i += 2;
                } else {
                    return Err("bad escape");
                }
            } else if b[i] == b'"' {
                return Err("unescaped quote");
            } else {
                value.push(b[i]);
                i += 1;
            }
        }
        out.push((attr.to_owned(), value));
        if i == b.len() {
            return Ok(out);
        }
        i += 1;
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_subject() {
        let id = from_headers(Some("SUCCESS"), Some("CN=box-0001,O=rapbox")).unwrap();
        assert_eq!(id.box_id, "box-0001");
        assert_eq!(id.subject, "CN=box-0001,O=rapbox");
    }

    #[test]
    fn cn_anywhere_and_first_wins() {
        assert_eq!(common_name("O=rapbox,CN=box-7").unwrap(), "box-7");
        assert_eq!(common_name("CN=a,CN=b").unwrap(), "a");
        assert_eq!(common_name("cn=lower").unwrap(), "lower");
        assert_eq!(common_name("2.5.4.3=oid,O=x").unwrap(), "oid");
        assert_eq!(common_name("OU=lab+CN=multi,O=x").unwrap(), "multi");
    }

    #[test]
    fn escapes() {
        assert_eq!(common_name(r"CN=a\,b\+c\\d,O=x").unwrap(), r"a,b+c\d");
        assert_eq!(common_name(r"CN=Gr\C3\BC\C3\9Fe,O=x").unwrap(), "Grüße");
        assert!(matches!(common_name(r"CN=a\q"), Err(IdentityError::Malformed { .. })));
        assert!(matches!(common_name(r"CN=a\"), Err(IdentityError::Malformed { .. })));
        assert!(matches!(common_name(r"CN=#0403"), Err(IdentityError::Malformed { .. })));
    }

    #[test]
    fn refusals() {
        assert_eq!(from_headers(None, Some("CN=x")), Err(IdentityError::NoVerify));
        assert_eq!(
            from_headers(Some("FAILED:certificate has expired"), Some("CN=x")),
            Err(IdentityError::NotVerified("FAILED:certificate has expired".into()))
        );
        assert_eq!(from_headers(Some("NONE"), None), Err(IdentityError::NotVerified("NONE".into())));
        assert_eq!(from_headers(Some("SUCCESS"), None), Err(IdentityError::NoSubject));
        assert_eq!(from_headers(Some("SUCCESS"), Some("")), Err(IdentityError::NoSubject));
        assert!(matches!(from_headers(Some("SUCCESS"), Some("O=rapbox")), Err(IdentityError::NoCommonName(_))));
        assert!(matches!(from_headers(Some("SUCCESS"), Some("garbage")), Err(IdentityError::Malformed { .. })));
        assert!(matches!(from_headers(Some("SUCCESS"), Some("CN=,O=x")), Err(IdentityError::BadCommonName(_))));
        assert!(matches!(common_name(r"CN=a\0Ab"), Err(IdentityError::BadCommonName(_))));
        let long = format!("CN={}", "x".repeat(MAX_BOX_ID_LEN + 1));
        assert!(matches!(common_name(&long), Err(IdentityError::BadCommonName(_))));
    }
}
