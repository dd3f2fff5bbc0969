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

use crate::audit::{self, Event, Outcome, Verification};
use crate::certs::CertInfo;
use crate::fips::FipsState;
use crate::ingest::PortStatus;
use crate::peer::Peer;
use crate::queue::QueueStats;
use crate::reconfig::{ApplyArgs, ApplyReport, ShowReport};
use crate::uplink::probe::UplinkTest;
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
    /// Test the way to the data center step by step (`rapctl uplink test`); audited.
    /// `web_user`: the person logged into the configuration pages (believed only from
    /// the pages' server, see `peer`).
    UplinkTest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        web_user: Option<String>,
    },
    /// The provisioned CA and box certificates (`rapctl certs`).
    Certificates,
    /// A configuration-pages event (`web.login`, `web.logout`, …): accepted only from the
    /// pages' server, recorded with the actor `web:<user>`.
    WebEvent {
        action: String,
        user: String,
        outcome: Outcome,
        #[serde(default)]
        detail: serde_json::Value,
    },
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
    /// The answer to [`Request::UplinkTest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink_test: Option<UplinkTest>,
    /// The answer to [`Request::Certificates`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Vec<CertInfo>>,
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
            uplink_test: None,
            certificates: None,
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
    /// Runs the uplink test (see `uplink::probe`).
    fn uplink_test(&self) -> Result<UplinkTest, String> {
        Err("this rapd has no uplink".into())
    }
    /// The provisioned certificates (see `certs`).
    fn certificates(&self) -> Result<Vec<CertInfo>, String> {
        Err("this rapd has no uplink".into())
    }
    /// rapd's configuration file (for checks of changed settings).
    fn config_path(&self) -> Option<PathBuf> {
        None
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

/// Makes sure the socket belongs to `group`, so that its members may connect: nothing to
/// do when it was created with that group (rapd.service's primary group), else a chown
/// (rapd must be a member and allowed the system call).
pub fn set_group(path: &Path, group: &str) -> Result<(), ControlError> {
    let err = |m: String| ControlError::Io { path: path.into(), source: std::io::Error::other(m) };
    let c = std::ffi::CString::new(group).map_err(|_| err(format!("group `{group}` is not a name")))?;
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r fills `gr` with pointers into `buf`; only gr_gid is read.
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(err(format!("[control] group `{group}` does not exist")));
    }
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(path).map(|m| m.gid() == gr.gr_gid).unwrap_or(false) {
        return Ok(());
    }
    std::os::unix::fs::chown(path, None, Some(gr.gr_gid))
        .map_err(|e| err(format!("cannot give the socket to group `{group}` (is rapd a member?): {e}")))
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

fn handle(s: UnixStream, src: &dyn Source) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&s, 64 * 1024)).read_line(&mut line)?;
    let peer = Peer::of(&s)?;
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
        Ok(Request::UplinkTest { web_user }) => {
            let actor = peer.actor(web_user.as_deref());
            match src.uplink_test() {
                Ok(t) => {
                    let failed = t.steps.iter().find(|s| s.state == crate::uplink::probe::StepState::Failed);
                    audit::record(
                        Event::new("uplink.test")
                            .actor(&actor)
                            .target(&t.url)
                            .outcome(if t.passed { Outcome::Success } else { Outcome::Failure })
                            .detail(serde_json::json!({
                                "pid": peer.pid,
                                "failed_step": failed.map(|s| s.step.clone()),
                                "error": failed.map(|s| s.detail.clone()),
                            })),
                    );
                    Response { uplink_test: Some(t), ..Response::ok() }
                }
                Err(e) => Response::error(e),
            }
        }
        Ok(Request::Certificates) => match src.certificates() {
            Ok(c) => Response { certificates: Some(c), ..Response::ok() },
            Err(e) => Response::error(e),
        },
        Ok(Request::WebEvent { action, user, outcome, detail }) => {
            if !peer.is_web() {
                Response::error(format!(
                    "web_event is accepted only from the configuration pages' server (account {}), not from {}",
                    crate::peer::WEB_ACCOUNT,
                    peer.user
                ))
            } else if !action.starts_with("web.") || action.len() > 64 || !action.bytes().all(|c| c.is_ascii_graphic())
            {
                Response::error(format!("web_event: action `{action}` must be web.<verb>"))
            } else {
                // A failed login names what was typed, which may not be an account.
                let actor =
                    if crate::peer::valid_user(&user) { format!("web:{user}") } else { "web:invalid user name".into() };
                match audit::record(Event::new(&action).actor(&actor).target("pages").outcome(outcome).detail(detail)) {
                    Some(_) => Response::ok(),
                    None => Response::error("the audit log could not record the event".into()),
                }
            }
        }
        Ok(Request::ConfigShow) => match src.config_show() {
            Ok(r) => Response { config_show: Some(r), ..Response::ok() },
            Err(e) => Response::error(e),
        },
        // The pages apply for the technician logged into them: actor `web:<user>`.
        Ok(Request::ConfigApply(args)) => match src.config_apply(&args, &peer.actor(args.on_behalf_of.as_deref())) {
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
    request_with_timeout(path, req, Duration::from_secs(10))
}

/// Like [`request`], waiting up to `timeout` for the answer (the uplink test takes longer).
pub fn request_with_timeout(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
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
