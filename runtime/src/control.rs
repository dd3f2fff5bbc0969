//! The local control interface: one Unix socket answering `rapctl`, the web pages and
//! the tests alike. Each connection sends one JSON request line and reads one JSON
//! response line. Nobody needs to scrape log lines to learn the box's state.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::Verification;
use crate::fips::FipsState;
use crate::ingest::PortStatus;
use crate::queue::QueueStats;
use crate::uplink::UplinkStatus;

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The whole status.
    Status,
    /// Walk the audit log's hash chain (`rapctl audit verify`).
    AuditVerify,
    /// The last `n` audit records, oldest first (`rapctl audit log -n N`).
    AuditTail { n: usize },
}

/// Most audit records one [`Request::AuditTail`] returns.
pub const MAX_AUDIT_TAIL: usize = 10_000;

/// The whole status of the box.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_s: u64,
    pub fips: serde_json::Value,
    pub queue: serde_json::Value,
    pub uplink: serde_json::Value,
    pub ports: serde_json::Value,
    /// The firewall: `{"enabled": false}` unless rapd manages it.
    #[serde(default)]
    pub firewall: serde_json::Value,
    /// The links rapd manages (uplink and instrument ports), each `up`, `down` or `missing`.
    #[serde(default)]
    pub links: serde_json::Value,
    /// The audit log: path, last seq, shipped seq, last error (see `audit::AuditStatus`).
    #[serde(default)]
    pub audit: serde_json::Value,
    /// The command dispatcher (see `commands::CommandsStatus`).
    #[serde(default)]
    pub commands: serde_json::Value,
    /// Downloads, uploads and agent sessions (see `transfers::TransfersStatus`).
    #[serde(default)]
    pub transfers: serde_json::Value,
}

/// A response line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The answer to [`Request::AuditVerify`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_verify: Option<Verification>,
    /// The answer to [`Request::AuditTail`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_records: Option<Vec<serde_json::Value>>,
}

impl Response {
    fn error(message: String) -> Response {
        Response { ok: false, error: Some(message), status: None, audit_verify: None, audit_records: None }
    }
    fn ok() -> Response {
        Response { ok: true, error: None, status: None, audit_verify: None, audit_records: None }
    }
}

/// What the daemon exposes to the control interface.
pub trait Source: Send + Sync {
    fn fips(&self) -> FipsState;
    fn queue(&self) -> QueueStats;
    fn uplink(&self) -> UplinkStatus;
    fn ports(&self) -> Vec<PortStatus>;
    fn uptime(&self) -> Duration;
    /// The firewall's status (see `firewall::FirewallStatus`).
    fn firewall(&self) -> serde_json::Value {
        serde_json::json!({ "enabled": false })
    }
    /// The managed links (see `ports::LinkStatus`).
    fn links(&self) -> serde_json::Value {
        serde_json::Value::Array(Vec::new())
    }
    /// The audit log's status (see `audit::AuditStatus`).
    fn audit(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The command dispatcher's status (see `commands::CommandsStatus`).
    fn commands(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Downloads, uploads and agent sessions (see `transfers::TransfersStatus`).
    fn transfers(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Verifies the audit log.
    fn audit_verify(&self) -> Result<Verification, String> {
        Err("this rapd keeps no audit log".into())
    }
    /// The last `n` audit records.
    fn audit_tail(&self, _n: usize) -> Result<Vec<serde_json::Value>, String> {
        Err("this rapd keeps no audit log".into())
    }
}

/// Why the control socket could not be served or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("control socket {path}: bad response: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// Binds the socket (replacing a stale one) with mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io { path: path.into(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let l = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    l.set_nonblocking(true).map_err(io)?;
    Ok(l)
}

/// Serves requests until `stop` is set.
pub fn serve(listener: UnixListener, src: Arc<dyn Source>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let src = src.clone();
                let _ = std::thread::Builder::new().name("control".into()).stack_size(256 * 1024).spawn(move || {
                    if let Err(e) = handle(s, &*src) {
                        log::debug!("control: {e}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                log::warn!("control: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn handle(s: UnixStream, src: &dyn Source) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&s, 64 * 1024)).read_line(&mut line)?;
    let resp = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => Response { status: Some(status(src)), ..Response::ok() },
        Ok(Request::AuditVerify) => match src.audit_verify() {
            Ok(v) => Response { audit_verify: Some(v), ..Response::ok() },
            Err(e) => Response::error(e),
        },
        Ok(Request::AuditTail { n }) => match src.audit_tail(n.min(MAX_AUDIT_TAIL)) {
            Ok(r) => Response { audit_records: Some(r), ..Response::ok() },
            Err(e) => Response::error(e),
        },
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    (&s).write_all(&out)
}

/// The whole status, as `rapctl status` shows it.
pub fn status(src: &dyn Source) -> Status {
    let v = |x: serde_json::Result<serde_json::Value>| x.unwrap_or(serde_json::Value::Null);
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: src.uptime().as_secs(),
        fips: v(serde_json::to_value(src.fips())),
        queue: v(serde_json::to_value(src.queue())),
        uplink: v(serde_json::to_value(src.uplink())),
        ports: v(serde_json::to_value(src.ports())),
        firewall: src.firewall(),
        links: src.links(),
        audit: src.audit(),
        commands: src.commands(),
        transfers: src.transfers(),
    }
}

/// Sends one request and returns the response (used by rapctl and tests).
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io { path: path.into(), source };
    let s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut line =
        serde_json::to_vec(req).map_err(|e| ControlError::Protocol { path: path.into(), message: e.to_string() })?;
    line.push(b'\n');
    (&s).write_all(&line).map_err(io)?;
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).map_err(io)?;
    serde_json::from_str(&resp).map_err(|e| ControlError::Protocol { path: path.into(), message: e.to_string() })
}
