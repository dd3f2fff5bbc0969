//! Files between the data center, the box and the instruments (`docs/transfers.md`).
//!
//! * A **download** (data center → box → instrument) is described by a [`Manifest`]: a small
//!   JSON document signed by the vendor's signing key. The `download` command carries the
//!   manifest's exact bytes and the signature over them ([`DownloadArgs`]); the box checks the
//!   signature over those bytes before it parses anything else, fetches the content from
//!   [`DOWNLOADS_PATH`]`<sha256>` with HTTP `Range` requests, and offers it to the target
//!   instruments only once size and SHA-256 match.
//! * An **upload** (instrument → box → data center) is sent in chunks to
//!   [`UPLOADS_PATH`]`<upload id>`, each chunk a `POST` naming its offset; the data center
//!   answers how much it has ([`UploadStatus`]) and checks the SHA-256 when it has it all.

use serde::{Deserialize, Serialize};

/// Where the content of a download is fetched, relative to the batch URL's directory,
/// followed by the content's SHA-256 in lowercase hex.
pub const DOWNLOADS_PATH: &str = "downloads/";
/// Where an upload's chunks go, relative to the batch URL's directory, followed by the
/// upload's id (16 lowercase hex digits).
pub const UPLOADS_PATH: &str = "uploads/";
/// The `format` of a version-1 manifest.
pub const MANIFEST_FORMAT: &str = "rapbox-manifest-1";
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024;
/// Largest signature accepted (base64 text), in bytes.
pub const MAX_SIGNATURE_BYTES: usize = 2048;
/// Longest file name, in bytes.
pub const MAX_NAME: usize = 128;
/// Largest file a manifest may describe (4 GiB).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Largest upload chunk the data center accepts.
pub const MAX_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// The download command's kind.
pub const DOWNLOAD_KIND: &str = "download";

/// Headers of an upload chunk.
pub mod header {
    /// Where the chunk's bytes start in the file (decimal).
    pub const OFFSET: &str = "X-Rapbox-Offset";
    /// The whole file's size (decimal).
    pub const SIZE: &str = "X-Rapbox-Size";
    /// The whole file's SHA-256 (lowercase hex).
    pub const SHA256: &str = "X-Rapbox-Sha256";
    /// The file's name as the instrument gave it.
    pub const NAME: &str = "X-Rapbox-Name";
    /// What kind of file it is (a [`super::Category`] name).
    pub const CATEGORY: &str = "X-Rapbox-Category";
    /// The instrument it came from.
    pub const INSTRUMENT: &str = "X-Rapbox-Instrument";
}

/// What a file is, as the brochure names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Software,
    Database,
    Help,
    Reagent,
    Settings,
    Document,
    /// Uploads: a bundle of instrument logs.
    LogBundle,
    /// Uploads: a screenshot of the instrument's screen.
    Screenshot,
}

impl Category {
    /// Every category, in wire order (the agent protocol sends the name).
    pub const ALL: [Category; 8] = [
        Category::Software,
        Category::Database,
        Category::Help,
        Category::Reagent,
        Category::Settings,
        Category::Document,
        Category::LogBundle,
        Category::Screenshot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Software => "software",
            Category::Database => "database",
            Category::Help => "help",
            Category::Reagent => "reagent",
            Category::Settings => "settings",
            Category::Document => "document",
            Category::LogBundle => "log_bundle",
            Category::Screenshot => "screenshot",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// Whether `name` may name a file: 1 to [`MAX_NAME`] bytes of `A-Z a-z 0-9 . _ + -`, not
/// starting with `.` (no paths, no hidden files).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Whether `s` is a SHA-256 in lowercase hex.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a SHA-256 in hex.
pub fn sha256_bytes(s: &str) -> Option<[u8; 32]> {
    if !valid_sha256(s) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A signed description of one file for one or more instruments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The file's name on the instrument.
    pub name: String,
    pub category: Category,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Serials of the instruments the file is for.
    pub targets: Vec<String>,
    /// Free text (version, release notes reference).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl Manifest {
    /// Parses and checks the manifest's bytes (after their signature was verified).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(format!("manifest is {} bytes, more than {MAX_MANIFEST_BYTES}", bytes.len()));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid: {e}"))?;
        m.check()?;
        Ok(m)
    }

    /// Checks every field.
    pub fn check(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!("manifest format {:?} is not {MANIFEST_FORMAT:?}", self.format));
        }
        if !valid_name(&self.name) {
            return Err(format!(
                "manifest name {:?} is not 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ + - (not starting with .)",
                self.name
            ));
        }
        if self.size > MAX_FILE_BYTES {
            return Err(format!("manifest size {} is more than {MAX_FILE_BYTES}", self.size));
        }
        if !valid_sha256(&self.sha256) {
            return Err(format!("manifest sha256 {:?} is not 64 lowercase hex digits", self.sha256));
        }
        if self.targets.is_empty() || self.targets.len() > crate::command::MAX_TARGETS {
            return Err(format!(
                "manifest names {} targets (1 to {})",
                self.targets.len(),
                crate::command::MAX_TARGETS
            ));
        }
        for t in &self.targets {
            if t.is_empty() || t.len() > crate::agent::MAX_SERIAL || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("manifest target {t:?} is not an instrument serial"));
            }
        }
        Ok(())
    }

    /// The manifest as the vendor's tool writes it (pretty JSON, members in this order, a
    /// final newline). Any bytes are fine as long as the signature is over them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// Arguments of a `download` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadArgs {
    /// The manifest's exact bytes (UTF-8 JSON text), as signed.
    pub manifest: String,
    /// Base64 of the signature over `manifest`'s bytes: ECDSA P-256 (DER) or RSA-3072
    /// (PKCS#1 v1.5 or PSS), SHA-256 — what `openssl dgst -sha256 -sign` writes.
    pub signature: String,
}

/// The data center's answer about an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    /// Bytes it has, from the start of the file, without gaps.
    pub received: u64,
    /// The file is complete and its SHA-256 matched.
    pub complete: bool,
}

/// Base64 (standard alphabet, padded), for signatures.
pub mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes `data`.
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Decodes `text`; whitespace (line breaks of `openssl base64`) is skipped.
    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if clean.len() % 4 != 0 {
            return Err("base64 text length is not a multiple of 4".into());
        }
        let mut out = Vec::with_capacity(clean.len() / 4 * 3);
        for (ci, chunk) in clean.chunks(4).enumerate() {
            let last = ci == clean.len() / 4 - 1;
            let mut n = 0u32;
            let mut pad = 0;
            for (i, &c) in chunk.iter().enumerate() {
                let v = match c {
                    b'=' if last && i >= 2 => {
                        pad += 1;
                        0
                    }
                    _ if pad > 0 => return Err("base64 padding in the middle".into()),
                    _ => {
                        ALPHABET.iter().position(|&a| a == c).ok_or_else(|| format!("{:?} is not base64", c as char))?
                            as u32
                    }
                };
                n = (n << 6) | v;
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            name: "reagent-lot-4711.dat".into(),
            category: Category::Reagent,
            size: 1234,
            sha256: "ab".repeat(32),
            targets: vec!["DXI-0001".into()],
            description: String::new(),
        }
    }

    #[test]
    fn manifest_roundtrip_and_checks() {
        let m = manifest();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        let bad = |f: &dyn Fn(&mut Manifest), want: &str| {
            let mut m = manifest();
            f(&mut m);
            let e = Manifest::parse(&m.to_bytes()).unwrap_err();
            assert!(e.contains(want), "{e} does not contain {want}");
        };
        bad(&|m| m.format = "v0".into(), "format");
        bad(&|m| m.name = "../etc/passwd".into(), "manifest name");
        bad(&|m| m.name = ".hidden".into(), "manifest name");
        bad(&|m| m.sha256 = "AB".repeat(32), "sha256");
        bad(&|m| m.targets.clear(), "0 targets");
        bad(&|m| m.size = MAX_FILE_BYTES + 1, "size");
        let e = Manifest::parse(br#"{"format":"rapbox-manifest-1","extra":1}"#).unwrap_err();
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn names_and_hashes() {
        assert!(valid_name("sw-2.4.1+build7.pkg") && !valid_name("a/b") && !valid_name("") && !valid_name("a b"));
        let h = "0123456789abcdef".repeat(4);
        assert_eq!(hex(&sha256_bytes(&h).unwrap()), h);
        assert!(sha256_bytes("xyz").is_none());
        assert_eq!(Category::parse("log_bundle"), Some(Category::LogBundle));
        assert!(Category::ALL.iter().all(|c| Category::parse(c.name()) == Some(*c)));
    }

    #[test]
    fn base64_roundtrip() {
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let e = base64::encode(&data);
            assert_eq!(base64::decode(&e).unwrap(), data, "{e}");
        }
        assert_eq!(base64::encode(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw==");
        assert_eq!(base64::decode("YW55IGNh\ncm5hbCBwbGVhcw==\n").unwrap(), b"any carnal pleas");
        assert!(base64::decode("YW5").is_err() && base64::decode("Y=5=").is_err() && base64::decode("YW5*").is_err());
    }
}
