//! The local control interface: one Unix socket answering `rapctl`, the web pages and
//! the tests alike. Each connection sends one JSON request line and reads one JSON
//! response line. Nobody needs to scrape log lines to learn the box's state.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::Verification;
use crate::fips::FipsState;
use crate::ingest::PortStatus;
use crate::queue::QueueStats;
use crate::reconfig::{ApplyArgs, ApplyReport, ShowReport};
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
    /// The configuration in force, the trial of an applied one, recent events (`rapctl config show`).
    ConfigShow,
    /// Validate and apply (or with `dry_run` only validate) a document or keys
    /// (`rapctl config apply|check`; see `crate::reconfig`).
    ConfigApply(ApplyArgs),
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
    /// The answer to [`Request::ConfigShow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_show: Option<ShowReport>,
    /// The answer to [`Request::ConfigApply`] (a refusal is `ok` with outcome `refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_apply: Option<ApplyReport>,
}

impl Response {
    fn error(message: String) -> Response {
        Response { ok: false, error: Some(message), ..Response::ok() }
    }
    fn ok() -> Response {
        Response {
            ok: true,
            error: None,
            status: None,
            audit_verify: None,
            audit_records: None,
            config_show: None,
            config_apply: None,
        }
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
    /// The configuration in force and its trial.
    fn config_show(&self) -> Result<ShowReport, String> {
        Err("this rapd cannot be reconfigured".into())
    }
    /// Applies a configuration for `actor` (who is on the other end of the socket).
    fn config_apply(&self, _args: &ApplyArgs, _actor: &str) -> Result<ApplyReport, String> {
        Err("this rapd cannot be reconfigured".into())
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

/// Serves requests until `stop` is set; then waits (up to 10 s) for the answers still
/// being made, so that a request that stops rapd (a configuration that needs a restart)
/// is still answered.
pub fn serve(listener: UnixListener, src: Arc<dyn Source>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let src = src.clone();
                active.fetch_add(1, Ordering::SeqCst);
                let a = active.clone();
                let spawned =
                    std::thread::Builder::new().name("control".into()).stack_size(256 * 1024).spawn(move || {
                        if let Err(e) = handle(s, &*src) {
                            log::debug!("control: {e}");
                        }
                        a.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                log::warn!("control: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while active.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Who is on the other end of the socket: `local:<user>` (from the kernel's peer credentials).
fn peer_actor(s: &UnixStream) -> String {
    match nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(c) => {
            let uid = nix::unistd::Uid::from_raw(c.uid());
            match nix::unistd::User::from_uid(uid) {
                Ok(Some(u)) => format!("local:{}", u.name),
                _ => format!("local:uid {}", c.uid()),
            }
        }
        Err(e) => format!("local:unknown ({e})"),
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
        Ok(Request::ConfigShow) => match src.config_show() {
            Ok(r) => Response { config_show: Some(r), ..Response::ok() },
            Err(e) => Response::error(e),
        },
        Ok(Request::ConfigApply(args)) => match src.config_apply(&args, &peer_actor(&s)) {
            Ok(r) => Response { config_apply: Some(r), ..Response::ok() },
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
    request_timeout(path, req, Duration::from_secs(10))
}

/// [`request`], waiting up to `timeout` for the answer (an apply may wait for the
/// uplink's batch in flight).
pub fn request_timeout(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io { path: path.into(), source };
    let s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line =
        serde_json::to_vec(req).map_err(|e| ControlError::Protocol { path: path.into(), message: e.to_string() })?;
    line.push(b'\n');
    (&s).write_all(&line).map_err(io)?;
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).map_err(io)?;
    serde_json::from_str(&resp).map_err(|e| ControlError::Protocol { path: path.into(), message: e.to_string() })
}
