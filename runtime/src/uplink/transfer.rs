//! The uplink's second connection, for large transfers (`docs/transfers.md`): download
//! content fetched with HTTP `Range`, upload chunks sent with their offset.
//!
//! Its own HTTP agent (so that a 50 MB transfer never stands between a batch of alarms and
//! the data center), built by [`super::agent`]: the same TLS connector (FIPS provider, only
//! the service CA, box certificate), the same proxy and timeouts. Only the transfer engine
//! (`crate::transfers`) uses it; nothing else opens a connection to the data center.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use rapwire::transfer::{self, header, UploadStatus};

use crate::config::UplinkConfig;
use crate::tls::TlsSetupError;

/// Why a transfer request failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The box is not provisioned (or its TLS files are bad): nothing was sent.
    #[error(transparent)]
    Setup(#[from] TlsSetupError),
    /// No answer, or the connection broke mid-transfer: try again later.
    #[error("{0}")]
    Network(String),
    /// The data center has no such content (404): trying again will not help.
    #[error("the data center has no content {0}")]
    NotFound(String),
    /// The data center's file is not the size the manifest promised.
    #[error("the data center serves {served} bytes, the manifest says {expected}")]
    SizeMismatch { served: u64, expected: u64 },
    /// The data center has another offset for this upload (it answered how much it has).
    #[error("the data center has {} bytes of this upload", .0.received)]
    Conflict(UploadStatus),
    /// The data center checked the whole upload and its SHA-256 did not match; it discarded it.
    #[error("the data center refused the upload: {0}")]
    HashMismatch(String),
    /// Any other error answer.
    #[error("data center answered HTTP {code}: {text}")]
    Status { code: u16, text: String },
}

impl LinkError {
    /// Whether waiting and trying again may help.
    pub fn transient(&self) -> bool {
        match self {
            LinkError::Network(_) | LinkError::Setup(_) => true,
            LinkError::Status { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            _ => false,
        }
    }
}

/// What an upload chunk carries besides its bytes.
#[derive(Debug, Clone)]
pub struct UploadMeta {
    pub instrument: String,
    pub name: String,
    pub category: String,
    pub size: u64,
    pub sha256: String,
}

/// The transfer connection; cheap to share.
pub struct TransferLink {
    cfg: UplinkConfig,
    agent: Mutex<Option<ureq::Agent>>,
}

impl std::fmt::Debug for TransferLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferLink").field("url", &self.cfg.url.as_str()).finish()
    }
}

/// Bytes read from the network per write to the sink.
const READ_BUF: usize = 64 * 1024;

fn transport(t: &ureq::Transport) -> String {
    let mut message = t.to_string();
    if let Some(src) = std::error::Error::source(t) {
        let s = src.to_string();
        if !message.contains(&s) {
            message = format!("{message}: {s}");
        }
    }
    message
}

fn status_error(code: u16, r: ureq::Response) -> LinkError {
    let mut text = String::new();
    let _ = r.into_reader().take(1024).read_to_string(&mut text);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or(text);
    LinkError::Status { code, text }
}

impl TransferLink {
    /// A link for the uplink configured by `cfg` (the HTTP agent is built on first use, so
    /// an unprovisioned box can start).
    pub fn new(cfg: &UplinkConfig) -> TransferLink {
        TransferLink { cfg: cfg.clone(), agent: Mutex::new(None) }
    }

    fn agent(&self) -> Result<ureq::Agent, LinkError> {
        let mut a = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = &*a {
            return Ok(a.clone());
        }
        let built = super::agent(&self.cfg)?;
        *a = Some(built.clone());
        Ok(built)
    }

    fn url(&self, path: &str) -> Result<url::Url, LinkError> {
        self.cfg.url.join(path).map_err(|e| LinkError::Network(format!("bad transfer URL {path}: {e}")))
    }

    /// Fetches the content with SHA-256 `sha256` from byte `from` on, handing it to `sink`
    /// in order; never more than `expected - from` bytes. Returns the bytes handed over
    /// (the caller compares with what it expected: a short answer is a broken connection).
    pub fn fetch(
        &self,
        sha256: &str,
        from: u64,
        expected: u64,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, LinkError> {
        let url = self.url(&format!("{}{sha256}", transfer::DOWNLOADS_PATH))?;
        let mut req = self.agent()?.request_url("GET", &url);
        if from > 0 {
            req = req.set("Range", &format!("bytes={from}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(404, _)) => return Err(LinkError::NotFound(sha256.into())),
            Err(ureq::Error::Status(416, r)) => {
                let served = r
                    .header("Content-Range")
                    .and_then(|v| v.rsplit('/').next())
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                return Err(LinkError::SizeMismatch { served, expected });
            }
            Err(ureq::Error::Status(code, r)) => return Err(status_error(code, r)),
            Err(ureq::Error::Transport(t)) => return Err(LinkError::Network(transport(&t))),
        };
        // 206: `Content-Range: bytes from-end/total`; 200: the whole file (a proxy may drop
        // the Range header): the first `from` bytes are skipped.
        let (total, mut skip) = if resp.status() == 206 {
            let total = resp
                .header("Content-Range")
                .and_then(|v| v.rsplit('/').next())
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| LinkError::Network("206 answer without a usable Content-Range".into()))?;
            let start = resp
                .header("Content-Range")
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if start != Some(from) {
                return Err(LinkError::Network(format!("asked for bytes from {from}, got a range from {start:?}")));
            }
            (total, 0)
        } else {
            let len = resp.header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
            (len.unwrap_or(expected), from)
        };
        if total != expected {
            return Err(LinkError::SizeMismatch { served: total, expected });
        }
        let mut rd = resp.into_reader();
        let mut buf = vec![0u8; READ_BUF];
        let mut handed = 0u64;
        loop {
            let n = match rd.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(LinkError::Network(format!("content {sha256} broke off after {handed} bytes: {e}")))
                }
            };
            let mut chunk = &buf[..n];
            if skip > 0 {
                let s = skip.min(chunk.len() as u64) as usize;
                chunk = &chunk[s..];
                skip -= s as u64;
            }
            if chunk.is_empty() {
                continue;
            }
            if from + handed + chunk.len() as u64 > expected {
                return Err(LinkError::SizeMismatch { served: from + handed + chunk.len() as u64, expected });
            }
            sink(chunk).map_err(|e| LinkError::Network(format!("storing content {sha256}: {e}")))?;
            handed += chunk.len() as u64;
        }
        Ok(handed)
    }

    /// How much of upload `id` the data center has (nothing when it never heard of it).
    pub fn upload_status(&self, id: &str) -> Result<UploadStatus, LinkError> {
        let url = self.url(&format!("{}{id}", transfer::UPLOADS_PATH))?;
        match self.agent()?.request_url("GET", &url).call() {
            Ok(r) => read_status(r),
            Err(ureq::Error::Status(404, _)) => Ok(UploadStatus { received: 0, complete: false }),
            Err(ureq::Error::Status(code, r)) => Err(status_error(code, r)),
            Err(ureq::Error::Transport(t)) => Err(LinkError::Network(transport(&t))),
        }
    }

    /// Sends `data` as the bytes of upload `id` from `offset`; returns what the data
    /// center has afterwards.
    pub fn upload_chunk(
        &self,
        id: &str,
        meta: &UploadMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<UploadStatus, LinkError> {
        let url = self.url(&format!("{}{id}", transfer::UPLOADS_PATH))?;
        let resp = self
            .agent()?
            .request_url("POST", &url)
            .set("Content-Type", "application/octet-stream")
            .set(header::OFFSET, &offset.to_string())
            .set(header::SIZE, &meta.size.to_string())
            .set(header::SHA256, &meta.sha256)
            .set(header::NAME, &meta.name)
            .set(header::CATEGORY, &meta.category)
            .set(header::INSTRUMENT, &meta.instrument)
            .send_bytes(data);
        match resp {
            Ok(r) => read_status(r),
            Err(ureq::Error::Status(409, r)) => Err(match read_status(r) {
                Ok(st) => LinkError::Conflict(st),
                Err(e) => e,
            }),
            Err(ureq::Error::Status(422, r)) => Err(match status_error(422, r) {
                LinkError::Status { text, .. } => LinkError::HashMismatch(text),
                e => e,
            }),
            Err(ureq::Error::Status(code, r)) => Err(status_error(code, r)),
            Err(ureq::Error::Transport(t)) => Err(LinkError::Network(transport(&t))),
        }
    }

    /// The read timeout of the connection (transfers wait this long for bytes).
    pub fn io_timeout(&self) -> Duration {
        self.cfg.io_timeout
    }
}

fn read_status(r: ureq::Response) -> Result<UploadStatus, LinkError> {
    let mut text = String::new();
    r.into_reader()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| LinkError::Network(format!("reading the upload status: {e}")))?;
    serde_json::from_str(&text).map_err(|e| LinkError::Network(format!("upload status is not valid JSON: {e}: {text}")))
}
