//! The person at the instrument: an agent that answers remote-session requests
//! (protocol version 2, sessions capability; `docs/agent-protocol.md`, "Remote sessions").
//!
//! It connects to the box, says HELLO with the sessions capability, records every
//! SESSION_ASK and SESSION_END, and answers asks by its [`Decision`]: approve (who, seconds,
//! after a delay), decline, or leave them unanswered. The test (or `rapsim consent`) can also
//! send SESSION_APPROVE / DECLINE / REVOKE itself, with any fields, and read the box's answer.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rapwire::agent::{self, ErrorCode, Frame};
use rapwire::requests::{cap, Message};

use crate::SimError;

/// How the person answers a SESSION_ASK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// SESSION_APPROVE after `after`.
    Approve { who: String, duration_s: u32, after: Duration },
    /// SESSION_DECLINE with this reason.
    Decline(String),
    /// No answer (the request expires at the box).
    Ignore,
}

/// A SESSION_ASK as the instrument saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskSeen {
    pub session: u64,
    pub max_s: u32,
    pub answer_within_s: u16,
    pub requester: String,
    pub reason: String,
}

/// The box's answer to one of the agent's session frames.
pub type Reply = Result<(), (ErrorCode, String)>;

#[derive(Default)]
struct Shared {
    asks: Vec<AskSeen>,
    ends: Vec<(u64, String)>,
    /// Answers to the agent's own requests: frame name, session, answer.
    answers: Vec<(String, u64, Reply)>,
    pending: HashMap<u64, (String, u64)>,
    replies: HashMap<u64, Reply>,
    welcomed: bool,
    closed: Option<String>,
}

/// A consent agent to start.
#[derive(Debug, Clone)]
pub struct ConsentAgent {
    pub addr: SocketAddr,
    pub serial: String,
    pub decision: Decision,
}

impl ConsentAgent {
    pub fn new(addr: SocketAddr, serial: impl Into<String>, decision: Decision) -> ConsentAgent {
        ConsentAgent { addr, serial: serial.into(), decision }
    }

    /// Connects, says HELLO and waits for WELCOME (10 s).
    pub fn spawn(self) -> Result<RunningConsent, SimError> {
        let io = |op| {
            let addr = self.addr;
            move |source| SimError::Io { addr, op, source }
        };
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(io("connect"))?;
        stream.set_nodelay(true).map_err(io("nodelay"))?;
        let rd = stream.try_clone().map_err(io("clone"))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let run = RunningConsent {
            serial: self.serial.clone(),
            decision: Arc::new(Mutex::new(self.decision.clone())),
            writer: Arc::new(Mutex::new(stream)),
            shared: shared.clone(),
            next_req: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            reader: None,
        };
        let me = run.handle();
        let reader = thread::Builder::new()
            .name(format!("rapsim-consent-{}", self.serial))
            .spawn(move || me.read(rd))
            .map_err(|source| SimError::Spawn { serial: self.serial.clone(), source })?;
        let run = RunningConsent { reader: Some(reader), ..run };
        let req = run.req();
        run.write(&Message::Hello {
            req,
            max_version: rapwire::requests::VERSION,
            capabilities: cap::SESSIONS,
            software: "rapsim consent".into(),
        })
        .map_err(io("HELLO"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !run.lock().welcomed {
            if Instant::now() > deadline || run.lock().closed.is_some() {
                let why = run.lock().closed.clone().unwrap_or_else(|| "no WELCOME within 10 s".into());
                return Err(SimError::Config { serial: self.serial, what: why });
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(run)
    }
}

/// A connected consent agent.
#[derive(Debug)]
pub struct RunningConsent {
    serial: String,
    decision: Arc<Mutex<Decision>>,
    writer: Arc<Mutex<TcpStream>>,
    shared: Arc<Mutex<Shared>>,
    next_req: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("asks", &self.asks.len()).finish_non_exhaustive()
    }
}

impl RunningConsent {
    fn handle(&self) -> RunningConsent {
        RunningConsent {
            serial: self.serial.clone(),
            decision: self.decision.clone(),
            writer: self.writer.clone(),
            shared: self.shared.clone(),
            next_req: self.next_req.clone(),
            stop: self.stop.clone(),
            reader: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn write(&self, m: &Message) -> std::io::Result<()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).write_all(&m.to_frame())
    }

    /// The serial it answers for.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Changes how later asks are answered.
    pub fn set_decision(&self, d: Decision) {
        *self.decision.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// Every SESSION_ASK so far.
    pub fn asks(&self) -> Vec<AskSeen> {
        self.lock().asks.clone()
    }

    /// Every SESSION_END so far: session and reason.
    pub fn ends(&self) -> Vec<(u64, String)> {
        self.lock().ends.clone()
    }

    /// The box's answers to this agent's session frames so far.
    pub fn answers(&self) -> Vec<(String, u64, Reply)> {
        self.lock().answers.clone()
    }

    /// Waits for the `n`-th SESSION_ASK (1-based).
    pub fn wait_ask(&self, n: usize, timeout: Duration) -> Option<AskSeen> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.lock().asks.get(n - 1) {
                return Some(a.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the SESSION_END of `session`; returns its reason.
    pub fn wait_end(&self, session: u64, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, r)) = self.lock().ends.iter().find(|(s, _)| *s == session) {
                return Some(r.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a session frame built by `make(req)` and waits (5 s) for the box's answer.
    pub fn send(&self, make: impl FnOnce(u64) -> Message) -> Reply {
        let req = self.req();
        let m = make(req);
        let session = match &m {
            Message::SessionApprove { session, .. }
            | Message::SessionDecline { session, .. }
            | Message::SessionRevoke { session, .. } => *session,
            _ => 0,
        };
        self.lock().pending.insert(req, (m.name().to_owned(), session));
        if let Err(e) = self.write(&m) {
            return Err((ErrorCode::ShuttingDown, format!("writing {}: {e}", m.name())));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self.lock().replies.remove(&req) {
                return r;
            }
            if Instant::now() > deadline {
                return Err((ErrorCode::Timeout, format!("no answer to {} within 5 s", m.name())));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SESSION_APPROVE.
    pub fn approve(&self, session: u64, who: &str, duration_s: u32) -> Reply {
        self.send(|req| Message::SessionApprove { req, session, duration_s, who: who.into() })
    }

    /// SESSION_DECLINE.
    pub fn decline(&self, session: u64, reason: &str) -> Reply {
        self.send(|req| Message::SessionDecline { req, session, reason: reason.into() })
    }

    /// SESSION_REVOKE.
    pub fn revoke(&self, session: u64, reason: &str) -> Reply {
        self.send(|req| Message::SessionRevoke { req, session, reason: reason.into() })
    }

    /// Closes the connection.
    pub fn close(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.writer.lock().unwrap_or_else(|p| p.into_inner()).shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    fn read(&self, rd: TcpStream) {
        let mut r = BufReader::new(rd);
        let mut body = Vec::new();
        loop {
            if let Err(e) = agent::read_body(&mut r, &mut body) {
                self.lock().closed = Some(format!("reading: {e}"));
                return;
            }
            let m = match agent::decode(&body) {
                Ok(Frame::Request(m)) => m,
                Ok(_) => continue,
                Err(e) => {
                    self.lock().closed = Some(format!("undecodable frame: {e}"));
                    return;
                }
            };
            match m {
                Message::Welcome { .. } => self.lock().welcomed = true,
                Message::SessionAsk { req, session, max_s, answer_within_s, requester, reason } => {
                    self.lock().asks.push(AskSeen { session, max_s, answer_within_s, requester, reason });
                    let _ = self.write(&Message::Ok { req });
                    let d = self.decision.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let me = self.handle();
                    // Answered from another thread: this one must go on reading the box's answer.
                    let _ = thread::Builder::new().name("rapsim-consent-answer".into()).spawn(move || match d {
                        Decision::Approve { who, duration_s, after } => {
                            thread::sleep(after);
                            let r = me.approve(session, &who, duration_s);
                            me.lock().answers.push(("SESSION_APPROVE".into(), session, r));
                        }
                        Decision::Decline(why) => {
                            let r = me.decline(session, &why);
                            me.lock().answers.push(("SESSION_DECLINE".into(), session, r));
                        }
                        Decision::Ignore => {}
                    });
                }
                Message::SessionEnd { req, session, reason } => {
                    self.lock().ends.push((session, reason));
                    let _ = self.write(&Message::Ok { req });
                }
                Message::Ok { req } => {
                    let mut s = self.lock();
                    if s.pending.remove(&req).is_some() {
                        s.replies.insert(req, Ok(()));
                    }
                }
                Message::Refused { req, code, reason } => {
                    let mut s = self.lock();
                    if s.pending.remove(&req).is_some() {
                        s.replies.insert(req, Err((code, reason)));
                    }
                }
                other => {
                    let _ = self.write(&Message::Refused {
                        req: other.req(),
                        code: ErrorCode::UnknownFrameType,
                        reason: format!("a consent agent does not serve {}", other.name()),
                    });
                }
            }
        }
    }
}
