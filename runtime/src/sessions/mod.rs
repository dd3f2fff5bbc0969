//! Remote management sessions (`docs/sessions.md`): the data center asks, the person at
//! the instrument decides, and only then does rapd open an outbound OpenVPN tunnel and
//! the firewall rules that let the technician reach that one instrument's remote-desktop
//! port and the box's SSH server, for the approved time only.
//!
//! ```text
//! session command ─▶ asking ──SESSION_APPROVE (who, minutes ≤ max)──▶ connecting ──CONNECTED──▶ up
//!                      │ SESSION_DECLINE, no answer in time,                │ timeout, exit   │ time over, SESSION_REVOKE,
//!                      │ agent gone, session_close                          ▼                 │ session_close, tunnel drop,
//!                      ▼                                                 torn down ◀──────────┘ rapd stopping
//!                   refused (nothing was started)
//! ```
//!
//! Torn down means: OpenVPN stopped (through its management interface, killed after a
//! grace period), its tun device gone, the session's rules deleted in one transaction,
//! the agent told (SESSION_END). Every step is an audit record (shipped upstream with the
//! urgent priority of all audit records). One session at a time.

pub mod config;
pub mod openvpn;
pub mod rules;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rapwire::agent::ErrorCode;
use rapwire::command::{code, Command};
use rapwire::requests::{cap, Message, MAX_WHO};
use serde::{Deserialize, Serialize};

use crate::agents::{Agents, Answer, RequestHandler, SessionInfo};
use crate::audit::{self, Event, Outcome};
use crate::commands::{Completion, Handler, Verdict};
use crate::config::{Config, InstrumentConfig, Proxy};
use crate::firewall::{overlay, Tools};
use config::SessionsConfig;
use openvpn::{Client, Notice};

/// The command kind that asks for a session.
pub const KIND: &str = "session";
/// The command kind that closes one.
pub const CLOSE_KIND: &str = "session_close";
/// How long OpenVPN has to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Longest reason text of a `session` command (the requester: [`MAX_WHO`]).
const MAX_TEXT: usize = 200;

/// Arguments of a `session` command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// Who asks (shown at the instrument), e.g. the service engineer's name.
    #[serde(default)]
    pub requester: String,
    /// Why (shown at the instrument).
    #[serde(default)]
    pub reason: String,
    /// Longest session asked for, in minutes (default and upper bound: `sessions.max_minutes`).
    #[serde(default)]
    pub max_minutes: Option<u16>,
}

/// Arguments of a `session_close` command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseArgs {
    /// The id of the `session` command that opened it.
    pub session: String,
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Asking,
    Connecting,
    Up,
    Ending,
}

enum Ev {
    Approved { who: String, duration_s: u32 },
    Declined { reason: String },
    AgentGone,
    Revoked { reason: String },
    Closed { by: String },
    Vpn(Notice),
    Stop,
}

struct Active {
    id: String,
    no: u64,
    serial: String,
    phase: Phase,
    max_s: u32,
    ask_deadline: Instant,
    tx: Sender<Ev>,
}

/// The session in progress, for the status.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    pub id: String,
    pub session: u64,
    pub instrument: String,
    pub phase: Phase,
}

struct Inner {
    cfg: SessionsConfig,
    instruments: Vec<InstrumentConfig>,
    uplink_if: String,
    proxy: Option<Proxy>,
    openssl_conf: std::path::PathBuf,
    tools: Tools,
    agents: Arc<Agents>,
    current: Mutex<Option<Active>>,
    /// The last session that ended: (number, instrument, why), to tell a late answer why.
    last: Mutex<Option<(u64, String, String)>>,
    next_no: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    stopping: AtomicBool,
    /// The configuration in force (a run-time reconfiguration may change the proxy, the
    /// uplink interface or the instrument ports); without it, the one rapd started with.
    source: std::sync::RwLock<Option<ConfigSource>>,
}

/// Where the engine reads the configuration in force.
pub type ConfigSource = Box<dyn Fn() -> Config + Send + Sync>;

/// What a session is opened with, read from the configuration in force at the approval.
struct Current {
    instruments: Vec<InstrumentConfig>,
    uplink_if: String,
    proxy: Option<Proxy>,
}

/// The session engine; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Agent-supplied text for records: printable ASCII.
fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(max).collect::<String>().trim().to_owned()
}

fn record(action: &str, target: &str, outcome: Outcome, detail: serde_json::Value) {
    audit::record(Event::new(action).target(target).outcome(outcome).detail(detail));
}

/// Whether the interface exists (in rapd's network namespace).
pub fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

impl Sessions {
    /// The engine for `cfg` (`cfg.sessions.enabled` must be set for it to be registered).
    /// Stops an OpenVPN a previous run left.
    pub fn new(cfg: &Config, agents: Arc<Agents>, tools: Tools) -> Sessions {
        openvpn::clean_up(&cfg.sessions.run_dir);
        Sessions {
            inner: Arc::new(Inner {
                cfg: cfg.sessions.clone(),
                instruments: cfg.instruments.clone(),
                uplink_if: cfg.network.uplink.as_ref().map(|u| u.interface.clone()).unwrap_or_default(),
                proxy: cfg.uplink.proxy.clone(),
                openssl_conf: cfg.fips.openssl_conf.clone(),
                tools,
                agents,
                current: Mutex::new(None),
                last: Mutex::new(None),
                next_no: AtomicU64::new(now_ms()),
                thread: Mutex::new(None),
                stopping: AtomicBool::new(false),
                source: std::sync::RwLock::new(None),
            }),
        }
    }

    /// Reads the configuration in force from `f` from now on (the reconfigurer's).
    pub fn set_config_source(&self, f: ConfigSource) {
        *self.inner.source.write().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    fn current(&self) -> Current {
        let i = &self.inner;
        match i.source.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(f) => {
                let c = f();
                Current {
                    uplink_if: c.network.uplink.as_ref().map(|u| u.interface.clone()).unwrap_or_default(),
                    proxy: c.uplink.proxy.clone(),
                    instruments: c.instruments,
                }
            }
            None => {
                Current { instruments: i.instruments.clone(), uplink_if: i.uplink_if.clone(), proxy: i.proxy.clone() }
            }
        }
    }

    /// The session in progress.
    pub fn status(&self) -> Option<SessionStatus> {
        lock(&self.inner.current).as_ref().map(|a| SessionStatus {
            id: a.id.clone(),
            session: a.no,
            instrument: a.serial.clone(),
            phase: a.phase,
        })
    }

    /// rapd is stopping: a session in progress is torn down (waits for it, at most 10 s).
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Some(a) = lock(&self.inner.current).as_ref() {
            let _ = a.tx.send(Ev::Stop);
        }
        let t = lock(&self.inner.thread).take();
        if let Some(t) = t {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::error!("session: teardown did not finish within 10 s of the stop");
            }
        }
    }

    /// The handler of the `session` kind.
    pub fn kind(&self) -> Arc<dyn Handler> {
        Arc::new(SessionKind(self.clone()))
    }

    /// The handler of the `session_close` kind.
    pub fn close_kind(&self) -> Arc<dyn Handler> {
        Arc::new(CloseKind(self.clone()))
    }

    /// The handler of the agents' session frames.
    pub fn agent_handler(&self) -> Arc<dyn RequestHandler> {
        Arc::new(AgentSide(self.clone()))
    }

    fn start(&self, cmd: &Command, done: Completion) -> Verdict {
        let inner = &self.inner;
        let args: SessionArgs =
            match serde_json::from_value(if cmd.args.is_null() { serde_json::json!({}) } else { cmd.args.clone() }) {
                Ok(a) => a,
                Err(e) => return Verdict::malformed(format!("session arguments: {e}")),
            };
        if args.requester.len() > MAX_WHO || args.reason.len() > MAX_TEXT {
            return Verdict::malformed(format!(
                "requester is at most {MAX_WHO} bytes and reason at most {MAX_TEXT} (got {} and {})",
                args.requester.len(),
                args.reason.len()
            ));
        }
        let max_minutes = match args.max_minutes {
            None => inner.cfg.max_minutes,
            Some(m) if (1..=inner.cfg.max_minutes).contains(&m) => m,
            Some(m) => {
                return Verdict::malformed(format!(
                    "max_minutes {m} is not 1 to {} (sessions.max_minutes of this box)",
                    inner.cfg.max_minutes
                ))
            }
        };
        let [serial] = cmd.target.as_slice() else {
            return Verdict::refused(code::BAD_TARGET, "a session is with exactly one instrument: give one target");
        };
        let now = self.current();
        let Some(port) = now.instruments.iter().find(|i| &i.serial == serial).and_then(|i| i.port.as_ref()) else {
            return Verdict::refused(code::BAD_TARGET, format!("instrument {serial} has no port of its own"));
        };
        if port.remote_desktop_port.is_none() {
            return Verdict::refused(
                code::BAD_TARGET,
                format!("instrument {serial} has no remote_desktop_port in this box's configuration"),
            );
        }
        if inner.stopping.load(Ordering::SeqCst) {
            return Verdict::refused(code::BUSY, "rapd is stopping");
        }
        let Some(agent) = inner.agents.sessions(serial, cap::SESSIONS).last().copied() else {
            record(
                "session.refused",
                &cmd.id,
                Outcome::Denied,
                serde_json::json!({ "instrument": serial, "code": "no_agent" }),
            );
            return Verdict::failed(
                "no_agent",
                format!("no agent of {serial} that answers session requests is connected: nothing was started"),
            );
        };
        let (tx, rx) = mpsc::channel();
        let no = inner.next_no.fetch_add(1, Ordering::SeqCst);
        {
            let mut cur = lock(&inner.current);
            if let Some(a) = cur.as_ref() {
                return Verdict::refused(code::BUSY, format!("session {} with {} is in progress", a.id, a.serial));
            }
            *cur = Some(Active {
                id: cmd.id.clone(),
                no,
                serial: serial.clone(),
                phase: Phase::Asking,
                max_s: u32::from(max_minutes) * 60,
                ask_deadline: Instant::now() + inner.cfg.answer_within,
                tx: tx.clone(),
            });
        }
        record(
            "session.requested",
            &cmd.id,
            Outcome::Success,
            serde_json::json!({
                "instrument": serial, "session": no, "requester": args.requester, "reason": args.reason,
                "max_minutes": max_minutes, "answer_within_s": inner.cfg.answer_within.as_secs(),
            }),
        );
        let answer_within_s = inner.cfg.answer_within.as_secs().min(u16::MAX as u64) as u16;
        let (requester, reason) = (args.requester.clone(), args.reason.clone());
        let tx2 = tx.clone();
        let (id2, serial2) = (cmd.id.clone(), serial.clone());
        let sent = inner.agents.request(
            agent,
            move |req| Message::SessionAsk {
                req,
                session: no,
                max_s: u32::from(max_minutes) * 60,
                answer_within_s,
                requester,
                reason,
            },
            Box::new(move |a| match a {
                Answer::Ok => record(
                    "session.asked",
                    &id2,
                    Outcome::Success,
                    serde_json::json!({ "instrument": serial2, "session": no }),
                ),
                Answer::Refused { code, reason } => {
                    let _ = tx2.send(Ev::Declined {
                        reason: format!("the agent refused the request ({}): {reason}", code.name()),
                    });
                }
                Answer::Closed => {
                    let _ = tx2.send(Ev::AgentGone);
                }
            }),
        );
        if let Err(e) = sent {
            *lock(&inner.current) = None;
            return Verdict::failed("no_agent", format!("asking {serial}'s agent: {e}; nothing was started"));
        }
        let me = self.clone();
        let cmd2 = cmd.clone();
        let spawned = std::thread::Builder::new().name("session".into()).spawn(move || me.drive(&cmd2, no, rx, done));
        match spawned {
            Ok(h) => {
                *lock(&inner.thread) = Some(h);
                Verdict::Running {
                    detail: serde_json::json!({ "phase": "asking", "instrument": serial, "session": no }),
                }
            }
            Err(e) => {
                *lock(&inner.current) = None;
                Verdict::failed("internal", format!("cannot start the session thread: {e}"))
            }
        }
    }

    fn set_phase(&self, p: Phase) {
        if let Some(a) = lock(&self.inner.current).as_mut() {
            a.phase = p;
        }
    }

    /// Ends the session's existence in the engine, remembering why (for late answers).
    fn forget(&self, no: u64, serial: &str, why: &str) {
        *lock(&self.inner.current) = None;
        *lock(&self.inner.last) = Some((no, serial.to_owned(), why.to_owned()));
    }

    fn tell_agent(&self, serial: &str, no: u64, reason: &str) {
        for s in self.inner.agents.sessions(serial, cap::SESSIONS) {
            let reason = reason.to_owned();
            let _ = self.inner.agents.request(
                s,
                move |req| Message::SessionEnd { req, session: no, reason },
                Box::new(|_| {}),
            );
        }
    }

    /// The session's thread: from the ask to the end.
    fn drive(&self, cmd: &Command, no: u64, rx: Receiver<Ev>, done: Completion) {
        let serial = cmd.target[0].clone();
        let id = cmd.id.as_str();
        let deadline = Instant::now() + self.inner.cfg.answer_within;
        // ---- asking ----
        let (who, duration_s) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match rx.recv_timeout(left) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let why =
                        format!("no answer from the instrument within {} s", self.inner.cfg.answer_within.as_secs());
                    self.forget(no, &serial, "unanswered");
                    record(
                        "session.not_approved",
                        id,
                        Outcome::Denied,
                        serde_json::json!({ "instrument": serial, "session": no, "code": "expired", "reason": why }),
                    );
                    self.tell_agent(&serial, no, "no answer in time: the request has expired");
                    return done.finish(Verdict::refused("not_approved", why));
                }
            };
            let (code_, why) = match ev {
                Ev::Approved { who, duration_s } => break (who, duration_s),
                Ev::Declined { reason } => ("declined", format!("declined at the instrument: {reason}")),
                Ev::AgentGone => ("agent_gone", "the agent disconnected before answering".to_owned()),
                Ev::Closed { by } => ("closed", format!("closed by {by} before it was approved")),
                Ev::Stop => ("stopping", "rapd stopped before it was approved".to_owned()),
                Ev::Revoked { .. } | Ev::Vpn(_) => continue,
            };
            self.forget(no, &serial, code_);
            record(
                "session.not_approved",
                id,
                Outcome::Denied,
                serde_json::json!({ "instrument": serial, "session": no, "code": code_, "reason": why }),
            );
            if code_ != "declined" && code_ != "agent_gone" {
                self.tell_agent(&serial, no, &why);
            }
            return done.finish(Verdict::refused(code_, why));
        };
        // ---- approved: rules, then the tunnel ----
        let approved_at = Instant::now();
        let end_at = approved_at + Duration::from_secs(u64::from(duration_s));
        let base =
            serde_json::json!({ "instrument": serial, "session": no, "approved_by": who, "duration_s": duration_s });
        let detail = |extra: serde_json::Value| {
            let mut d = base.clone();
            if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
                d.extend(e.clone());
            }
            d
        };
        done.progress_now(detail(serde_json::json!({ "phase": "connecting" })));
        let inner = &self.inner;
        let now = self.current();
        let Some(port) = now.instruments.iter().find(|i| i.serial == serial).and_then(|i| i.port.clone()) else {
            self.forget(no, &serial, "failed");
            return done.finish(Verdict::failed("bad_target", "the instrument's port is gone"));
        };
        let plan = rules::Plan {
            session: id,
            serial: &serial,
            tun: &inner.cfg.interface,
            uplink: &now.uplink_if,
            port: &port,
            remote_desktop_port: port.remote_desktop_port.unwrap_or_default(),
            endpoint_ip: inner.cfg.endpoint_ip(),
            endpoint_port: inner.cfg.port,
            via_proxy: now.proxy.is_some(),
            ssh_port: inner.cfg.ssh_port,
        };
        let ov = rules::overlay(&plan);
        let nrules = ov.rules.len();
        if let Err(e) = overlay::install(ov, &inner.tools) {
            let why = format!("the session's firewall rules could not be added: {e}");
            self.forget(no, &serial, "failed");
            record(
                "session.failed",
                id,
                Outcome::Failure,
                detail(serde_json::json!({ "code": "firewall", "reason": why })),
            );
            self.tell_agent(&serial, no, "the box could not open the session");
            return done.finish(Verdict::Failed {
                code: "firewall".into(),
                reason: why,
                detail: detail(serde_json::json!({})),
            });
        }
        record("session.rules_added", id, Outcome::Success, detail(serde_json::json!({ "rules": nrules })));
        let (vtx, vrx) = mpsc::channel::<Notice>();
        let tx = lock(&inner.current).as_ref().map(|a| a.tx.clone());
        if let Some(tx) = tx {
            let _ = std::thread::Builder::new().name("session-vpn".into()).spawn(move || {
                for n in vrx {
                    if tx.send(Ev::Vpn(n)).is_err() {
                        return;
                    }
                }
            });
        }
        let mut client = match Client::start(&inner.cfg, now.proxy.as_ref(), &inner.openssl_conf, vtx) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("OpenVPN could not be started: {e}");
                let removed = overlay::remove(&inner.tools);
                self.forget(no, &serial, "failed");
                record(
                    "session.failed",
                    id,
                    Outcome::Failure,
                    detail(serde_json::json!({ "code": "tunnel", "reason": why, "rules_removed": removed.is_ok() })),
                );
                self.tell_agent(&serial, no, "the box could not open the session");
                return done.finish(Verdict::Failed {
                    code: "tunnel".into(),
                    reason: why,
                    detail: detail(serde_json::json!({})),
                });
            }
        };
        record(
            "session.connecting",
            id,
            Outcome::Success,
            detail(serde_json::json!({
                "pid": client.pid(), "endpoint": format!("{}:{}", inner.cfg.endpoint, inner.cfg.port),
                "proxy": now.proxy.as_ref().map(|p| format!("{:?}", p.kind)),
            })),
        );
        // ---- connecting, then up ----
        let connect_deadline = approved_at + inner.cfg.connect_timeout;
        let mut up_at: Option<Instant> = None;
        let mut tunnel_ip = String::new();
        let (code_, why): (&str, String) = loop {
            let now = Instant::now();
            let until = if up_at.is_some() { end_at } else { connect_deadline.min(end_at) };
            if now >= until {
                break if up_at.is_some() {
                    ("expired", format!("the approved {duration_s} s are over"))
                } else {
                    (
                        "tunnel_timeout",
                        format!("the tunnel was not up within {} s", inner.cfg.connect_timeout.as_secs()),
                    )
                };
            }
            if let Some(st) = client.exited() {
                break ("tunnel_dropped", format!("OpenVPN exited ({st})"));
            }
            let ev = match rx.recv_timeout(until.saturating_duration_since(now).min(Duration::from_millis(500))) {
                Ok(ev) => ev,
                Err(_) => continue,
            };
            match ev {
                Ev::Vpn(Notice::State { name, local, remote }) => match name.as_str() {
                    "CONNECTED" if up_at.is_none() => {
                        up_at = Some(Instant::now());
                        tunnel_ip = local.clone();
                        self.set_phase(Phase::Up);
                        let ms = approved_at.elapsed().as_millis() as u64;
                        log::info!("session {id}: tunnel up in {ms} ms after the approval ({local} ↔ {remote})");
                        record(
                            "session.tunnel_up",
                            id,
                            Outcome::Success,
                            detail(serde_json::json!({
                                "tunnel_address": local, "server": remote, "ms_after_approval": ms,
                                "interface": inner.cfg.interface,
                            })),
                        );
                        done.progress_now(detail(serde_json::json!({
                            "phase": "up", "tunnel_address": local, "ms_after_approval": ms,
                        })));
                    }
                    "RECONNECTING" | "EXITING" if up_at.is_some() => {
                        break ("tunnel_dropped", format!("the tunnel dropped (OpenVPN {name})"));
                    }
                    _ => log::info!("session {id}: OpenVPN {name}"),
                },
                Ev::Vpn(Notice::Gone) => break ("tunnel_dropped", "OpenVPN's management interface closed".to_owned()),
                Ev::Revoked { reason } => break ("revoked", format!("revoked at the instrument: {reason}")),
                Ev::Closed { by } => break ("closed", format!("closed by {by}")),
                Ev::Stop => break ("stopping", "rapd is stopping".to_owned()),
                Ev::Approved { .. } | Ev::Declined { .. } | Ev::AgentGone => {}
            }
        };
        // ---- teardown ----
        self.set_phase(Phase::Ending);
        let t0 = Instant::now();
        let stopped = client.stop(STOP_GRACE);
        drop(client);
        let removed = overlay::remove(&inner.tools);
        let tun_gone = {
            let deadline = Instant::now() + Duration::from_secs(2);
            while interface_exists(&inner.cfg.interface) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            !interface_exists(&inner.cfg.interface)
        };
        let teardown_ms = t0.elapsed().as_millis() as u64;
        let clean = removed.is_ok() && tun_gone;
        let ended = detail(serde_json::json!({
            "code": code_, "reason": why, "openvpn": stopped, "tun_gone": tun_gone,
            "rules_removed": removed.as_ref().map_err(|e| e.to_string()),
            "tunnel_address": tunnel_ip,
            "up_s": up_at.map(|u| u.elapsed().as_secs()),
            "teardown_ms": teardown_ms,
        }));
        log::info!("session {id} ended ({code_}: {why}); torn down in {teardown_ms} ms");
        record("session.ended", id, if clean { Outcome::Success } else { Outcome::Failure }, ended.clone());
        self.forget(no, &serial, code_);
        self.tell_agent(&serial, no, &why);
        let verdict = match (up_at, clean) {
            (Some(_), true) if code_ != "tunnel_dropped" => Verdict::Succeeded { detail: ended },
            _ => Verdict::Failed { code: code_.into(), reason: why, detail: ended },
        };
        done.finish(verdict);
    }

    /// An agent's answer about session `no`; `Ok(tx)` when it may be delivered.
    fn answering(
        &self,
        info: &SessionInfo,
        no: u64,
        phases: &[Phase],
    ) -> Result<(Sender<Ev>, String, u32), (ErrorCode, String)> {
        let cur = lock(&self.inner.current);
        match cur.as_ref() {
            Some(a) if a.no == no && *a.serial == *info.serial => {
                if !phases.contains(&a.phase) {
                    return Err((
                        ErrorCode::UnknownSession,
                        format!("session {no} is {:?}: this answer does not apply", a.phase).to_lowercase(),
                    ));
                }
                if a.phase == Phase::Asking && Instant::now() >= a.ask_deadline {
                    return Err((ErrorCode::Expired, format!("session {no}: the time to answer is over")));
                }
                Ok((a.tx.clone(), a.id.clone(), a.max_s))
            }
            _ => {
                drop(cur);
                match lock(&self.inner.last).as_ref() {
                    Some((n, s, why)) if *n == no && **s == *info.serial && why == "unanswered" => {
                        Err((ErrorCode::Expired, format!("session {no}: the time to answer is over")))
                    }
                    Some((n, s, why)) if *n == no && **s == *info.serial => {
                        Err((ErrorCode::UnknownSession, format!("session {no} has ended ({why})")))
                    }
                    _ => Err((
                        ErrorCode::UnknownSession,
                        format!("no session {no} waits for an answer from {}", info.serial),
                    )),
                }
            }
        }
    }
}

fn refuse(req: u64, frame: &str, info: &SessionInfo, no: u64, code: ErrorCode, reason: String) -> Message {
    log::warn!("session {no}: {frame} from {} refused: {reason}", info.serial);
    audit::record(
        Event::new("session.answer_refused")
            .actor(&format!("instrument:{}", info.serial))
            .target(&no.to_string())
            .outcome(Outcome::Denied)
            .detail(serde_json::json!({ "frame": frame, "code": code.name(), "reason": reason, "session": no })),
    );
    Message::Refused { req, code, reason }
}

struct AgentSide(Sessions);

impl RequestHandler for AgentSide {
    fn handle(&self, info: &SessionInfo, msg: &Message) -> Option<Message> {
        let s = &self.0;
        let (req, frame, no) = match msg {
            Message::SessionApprove { req, session, .. } => (*req, "SESSION_APPROVE", *session),
            Message::SessionDecline { req, session, .. } => (*req, "SESSION_DECLINE", *session),
            Message::SessionRevoke { req, session, .. } => (*req, "SESSION_REVOKE", *session),
            _ => return None,
        };
        if info.capabilities & cap::SESSIONS == 0 {
            return Some(refuse(
                req,
                frame,
                info,
                no,
                ErrorCode::NotNegotiated,
                "HELLO did not ask for sessions".into(),
            ));
        }
        let phases: &[Phase] = match msg {
            Message::SessionRevoke { .. } => &[Phase::Connecting, Phase::Up],
            _ => &[Phase::Asking],
        };
        let (tx, id, max) = match s.answering(info, no, phases) {
            Ok(x) => x,
            Err((code, reason)) => return Some(refuse(req, frame, info, no, code, reason)),
        };
        let actor = format!("instrument:{}", info.serial);
        let ev = match msg {
            Message::SessionApprove { duration_s, who, .. } => {
                let w = printable(who, MAX_WHO);
                if w.is_empty() || w.len() != who.trim().len() {
                    return Some(refuse(
                        req,
                        frame,
                        info,
                        no,
                        ErrorCode::Malformed,
                        format!("`who` must name the approving person in printable ASCII (got {who:?})"),
                    ));
                }
                if *duration_s == 0 || *duration_s > max {
                    return Some(refuse(
                        req,
                        frame,
                        info,
                        no,
                        ErrorCode::Malformed,
                        format!("{duration_s} s is not 1 to {max} s (the longest session this request allows)"),
                    ));
                }
                s.set_phase(Phase::Connecting);
                audit::record(Event::new("session.approved").actor(&actor).target(&id).detail(serde_json::json!({
                    "session": no, "approved_by": w, "duration_s": duration_s,
                })));
                Ev::Approved { who: w, duration_s: *duration_s }
            }
            Message::SessionDecline { reason, .. } => {
                let r = printable(reason, 256);
                audit::record(
                    Event::new("session.declined")
                        .actor(&actor)
                        .target(&id)
                        .outcome(Outcome::Denied)
                        .detail(serde_json::json!({ "session": no, "reason": r })),
                );
                s.set_phase(Phase::Ending);
                Ev::Declined { reason: r }
            }
            Message::SessionRevoke { reason, .. } => {
                let r = printable(reason, 256);
                audit::record(
                    Event::new("session.revoked")
                        .actor(&actor)
                        .target(&id)
                        .detail(serde_json::json!({ "session": no, "reason": r })),
                );
                Ev::Revoked { reason: r }
            }
            _ => return None,
        };
        let _ = tx.send(ev);
        Some(Message::Ok { req })
    }
}

struct SessionKind(Sessions);

impl Handler for SessionKind {
    fn run(&self, cmd: &Command, done: Completion) -> Verdict {
        self.0.start(cmd, done)
    }

    fn resume(&self, cmd: &Command, _done: Completion) -> Verdict {
        // The tunnel died with the previous rapd (parent-death signal, and the pid file's
        // OpenVPN is stopped at start); the policy applied at start has no session rules.
        record(
            "session.ended",
            &cmd.id,
            Outcome::Failure,
            serde_json::json!({ "instrument": cmd.target, "code": "interrupted", "reason": "rapd restarted during the session" }),
        );
        Verdict::failed(
            "interrupted",
            "rapd restarted during the session; it is not resumed (a new one needs a new approval)",
        )
    }
}

struct CloseKind(Sessions);

impl Handler for CloseKind {
    fn run(&self, cmd: &Command, _done: Completion) -> Verdict {
        let args: CloseArgs = match serde_json::from_value(cmd.args.clone()) {
            Ok(a) => a,
            Err(e) => return Verdict::malformed(format!("session_close arguments: {e}")),
        };
        let cur = lock(&self.0.inner.current);
        match cur.as_ref() {
            Some(a) if a.id == args.session => {
                record("session.close_requested", &a.id, Outcome::Success, serde_json::json!({ "by": cmd.id }));
                let _ = a.tx.send(Ev::Closed { by: format!("the data center (command {})", cmd.id) });
                Verdict::Succeeded { detail: serde_json::json!({ "session": a.id, "phase": a.phase }) }
            }
            _ => Verdict::refused("unknown_session", format!("no session {} is in progress", args.session)),
        }
    }
}
