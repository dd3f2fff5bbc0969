//! Version-2 agent connections: the requests that travel between the box and an
//! instrument's agent on the agent's own connection (`docs/agent-protocol.md`, "Version 2").
//!
//! Ingest owns the connections and reads their frames; every version-2 frame it reads goes
//! to [`Connection::on_frame`]. This module
//!
//! * answers HELLO with WELCOME (the version and capabilities granted) and keeps a
//!   [`Session`] per connection that said hello, listed per instrument serial;
//! * hands the agent's requests (READ, RECEIVED, UPLOAD, CHUNK, UPLOAD_END, and whatever later
//!   versions add) to the registered [`RequestHandler`]s, and writes their answers;
//! * sends the box's own requests ([`Agents::request`]: OFFER today, a remote-session request
//!   tomorrow) and routes the agent's OK / REFUSED back to the requester's callback — also
//!   when the connection ends first ([`Answer::Closed`]).
//!
//! To add an agent request type: define its frame in `crates/wire/src/requests.rs`, and either
//! implement [`RequestHandler`] (agent → box) and [`Agents::register`] it, or call
//! [`Agents::request`] (box → agent) from the module that owns the feature.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rapwire::agent::ErrorCode;
use rapwire::requests::{self, cap, Message};
use serde::Serialize;

/// The writing half of an agent connection, shared with ingest's acknowledgement writer (a
/// frame is written whole under the lock).
pub type Writer = Arc<Mutex<TcpStream>>;

/// Writes one frame.
pub fn write_frame(w: &Writer, frame: &[u8]) -> std::io::Result<()> {
    w.lock().unwrap_or_else(|p| p.into_inner()).write_all(frame)
}

/// The agent's answer to a box request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Refused {
        code: ErrorCode,
        reason: String,
    },
    /// The connection ended before the agent answered.
    Closed,
}

/// Who sent a request: enough to decide whether it may.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub serial: Arc<str>,
    /// Capabilities granted in WELCOME.
    pub capabilities: u32,
}

/// Handles some of the agents' requests.
pub trait RequestHandler: Send + Sync {
    /// The answer to `msg` from `session`, or `None` when the frame type is not this
    /// handler's. Runs on the connection's reader thread: long work delays only this agent.
    fn handle(&self, session: &SessionInfo, msg: &Message) -> Option<Message>;
}

type Callback = Box<dyn FnOnce(Answer) + Send>;

struct Session {
    info: SessionInfo,
    writer: Writer,
    software: String,
    since_ms: u64,
    next_req: u64,
    pending: HashMap<u64, Callback>,
}

/// One agent session, for the status.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    pub id: u64,
    pub serial: String,
    pub software: String,
    pub capabilities: Vec<&'static str>,
    pub since_ms: u64,
    /// Box requests waiting for the agent's answer.
    pub pending: usize,
}

/// Every agent session of the box.
pub struct Agents {
    sessions: Mutex<HashMap<u64, Session>>,
    handlers: RwLock<Vec<Arc<dyn RequestHandler>>>,
    next_session: AtomicU64,
    /// Bumped when a session starts or ends (others poll it to notice new agents).
    generation: AtomicU64,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Agent-supplied text for logs and the status: printable ASCII, at most 64 characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(requests::MAX_SOFTWARE).collect()
}

fn cap_names(c: u32) -> Vec<&'static str> {
    let mut v = Vec::new();
    if c & cap::DOWNLOADS != 0 {
        v.push("downloads");
    }
    if c & cap::UPLOADS != 0 {
        v.push("uploads");
    }
    if c & cap::SESSIONS != 0 {
        v.push("sessions");
    }
    v
}

impl Agents {
    pub fn new() -> Arc<Agents> {
        Arc::new(Agents {
            sessions: Mutex::new(HashMap::new()),
            handlers: RwLock::new(Vec::new()),
            next_session: AtomicU64::new(1),
            generation: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `handler` see every agent request.
    pub fn register(&self, handler: Arc<dyn RequestHandler>) {
        self.handlers.write().unwrap_or_else(|p| p.into_inner()).push(handler);
    }

    /// A new agent connection of instrument `serial` (ingest calls this per connection).
    pub fn connection(self: &Arc<Self>, serial: Arc<str>, writer: Writer) -> Connection {
        Connection { agents: self.clone(), serial, writer, session: None }
    }

    /// Changes whenever a session starts or ends.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The sessions of instrument `serial` that were granted every bit of `capability`.
    pub fn sessions(&self, serial: &str, capability: u32) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .lock()
            .values()
            .filter(|s| &*s.info.serial == serial && s.info.capabilities & capability == capability)
            .map(|s| s.info.id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether session `id` is still open.
    pub fn is_open(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Sends the box request `make(req_id)` to session `id`; `on_answer` gets the agent's
    /// OK / REFUSED, or `Closed` when the connection ends first. Fails when the session is
    /// gone or the frame cannot be written.
    pub fn request(&self, id: u64, make: impl FnOnce(u64) -> Message, on_answer: Callback) -> Result<(), String> {
        let (writer, frame, req) = {
            let mut sessions = self.lock();
            let s = sessions.get_mut(&id).ok_or_else(|| format!("agent session {id} has ended"))?;
            s.next_req += 1;
            let req = s.next_req;
            let frame = make(req).to_frame();
            s.pending.insert(req, on_answer);
            (s.writer.clone(), frame, req)
        };
        if let Err(e) = write_frame(&writer, &frame) {
            let cb = self.lock().get_mut(&id).and_then(|s| s.pending.remove(&req));
            if let Some(cb) = cb {
                cb(Answer::Closed);
            }
            return Err(format!("writing to agent session {id}: {e}"));
        }
        Ok(())
    }

    /// Every open session.
    pub fn status(&self) -> Vec<SessionStatus> {
        let mut v: Vec<SessionStatus> = self
            .lock()
            .values()
            .map(|s| SessionStatus {
                id: s.info.id,
                serial: s.info.serial.to_string(),
                software: s.software.clone(),
                capabilities: cap_names(s.info.capabilities),
                since_ms: s.since_ms,
                pending: s.pending.len(),
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    fn end(&self, id: u64) {
        let s = self.lock().remove(&id);
        if let Some(s) = s {
            self.generation.fetch_add(1, Ordering::SeqCst);
            log::info!("instrument {}: agent session {id} ended", s.info.serial);
            for (_, cb) in s.pending {
                cb(Answer::Closed);
            }
        }
    }
}

/// The version-2 side of one agent connection; ends its session when dropped.
pub struct Connection {
    agents: Arc<Agents>,
    serial: Arc<str>,
    writer: Writer,
    session: Option<u64>,
}

impl Connection {
    fn send(&self, m: &Message) {
        if let Err(e) = write_frame(&self.writer, &m.to_frame()) {
            log::warn!("instrument {}: cannot send {}: {e}", self.serial, m.name());
        }
    }

    /// Refuses request `req` (also for bodies that did not decode).
    pub fn refuse(&self, req: u64, code: ErrorCode, reason: String) {
        log::warn!("instrument {}: version-2 request {req} refused: {reason}", self.serial);
        self.send(&Message::Refused { req, code, reason });
    }

    /// Handles one version-2 frame the agent sent.
    pub fn on_frame(&mut self, msg: Message) {
        let req = msg.req();
        if !msg.from_agent() {
            return self.refuse(
                req,
                ErrorCode::UnknownFrameType,
                format!("{} is sent by the box, not by an agent", msg.name()),
            );
        }
        match msg {
            Message::Hello { max_version, capabilities, software, .. } => {
                if max_version < requests::VERSION {
                    return self.refuse(
                        req,
                        ErrorCode::UnsupportedVersion,
                        format!("HELLO with version {max_version}: requests need version {}", requests::VERSION),
                    );
                }
                let granted = capabilities & cap::KNOWN;
                let id = match self.session {
                    Some(id) => {
                        // A repeated HELLO (keep-alive, or new capabilities) keeps the session.
                        if let Some(s) = self.agents.lock().get_mut(&id) {
                            s.info.capabilities = granted;
                            s.software = printable(&software);
                        }
                        id
                    }
                    None => {
                        let id = self.agents.next_session.fetch_add(1, Ordering::SeqCst);
                        self.agents.lock().insert(
                            id,
                            Session {
                                info: SessionInfo { id, serial: self.serial.clone(), capabilities: granted },
                                writer: self.writer.clone(),
                                software: printable(&software),
                                since_ms: now_ms(),
                                next_req: 0,
                                pending: HashMap::new(),
                            },
                        );
                        self.session = Some(id);
                        log::info!(
                            "instrument {}: agent session {id} ({}) with {:?}",
                            self.serial,
                            printable(&software),
                            cap_names(granted)
                        );
                        id
                    }
                };
                self.send(&Message::Welcome {
                    req,
                    version: requests::VERSION,
                    capabilities: granted,
                    max_chunk: requests::MAX_CHUNK as u32,
                });
                self.agents.generation.fetch_add(1, Ordering::SeqCst);
                let _ = id;
            }
            Message::Ok { .. } | Message::Refused { .. } => {
                let Some(id) = self.session else {
                    return;
                };
                let cb = self.agents.lock().get_mut(&id).and_then(|s| s.pending.remove(&req));
                match (cb, msg) {
                    (Some(cb), Message::Ok { .. }) => cb(Answer::Ok),
                    (Some(cb), Message::Refused { code, reason, .. }) => cb(Answer::Refused { code, reason }),
                    (None, m) => log::warn!("instrument {}: {} for unknown box request {req}", self.serial, m.name()),
                    _ => {}
                }
            }
            other => {
                let Some(info) = self.session.and_then(|id| self.agents.lock().get(&id).map(|s| s.info.clone())) else {
                    return self.refuse(
                        req,
                        ErrorCode::NotNegotiated,
                        format!("{} before HELLO: say HELLO (version 2) first", other.name()),
                    );
                };
                let handlers: Vec<Arc<dyn RequestHandler>> =
                    self.agents.handlers.read().unwrap_or_else(|p| p.into_inner()).clone();
                match handlers.iter().find_map(|h| h.handle(&info, &other)) {
                    Some(answer) => self.send(&answer),
                    None => self.refuse(
                        req,
                        ErrorCode::UnknownFrameType,
                        format!("this box does not serve {}", other.name()),
                    ),
                }
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            self.agents.end(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::mpsc;

    use rapwire::agent::{self as wire, Frame};

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        (s, c)
    }

    fn read(c: &mut TcpStream) -> Message {
        let mut body = Vec::new();
        wire::read_body(c, &mut body).unwrap();
        match wire::decode(&body).unwrap() {
            Frame::Request(m) => m,
            other => panic!("{other:?}"),
        }
    }

    struct Echo;
    impl RequestHandler for Echo {
        fn handle(&self, session: &SessionInfo, msg: &Message) -> Option<Message> {
            match msg {
                Message::UploadEnd { req, upload } => Some(Message::Refused {
                    req: *req,
                    code: ErrorCode::UnknownTransfer,
                    reason: format!("{} has no upload {upload}", session.serial),
                }),
                _ => None,
            }
        }
    }

    #[test]
    fn hello_sessions_requests_and_answers() {
        let agents = Agents::new();
        agents.register(Arc::new(Echo));
        let (server, mut client) = pair();
        let mut conn = agents.connection(Arc::from("I-1"), Arc::new(Mutex::new(server)));

        conn.on_frame(Message::UploadEnd { req: 1, upload: 5 });
        assert!(matches!(read(&mut client), Message::Refused { req: 1, code: ErrorCode::NotNegotiated, .. }));
        assert!(agents.sessions("I-1", 0).is_empty());

        conn.on_frame(Message::Hello { req: 2, max_version: 2, capabilities: 0xff, software: "t\u{7}est".into() });
        assert_eq!(
            read(&mut client),
            Message::Welcome {
                req: 2,
                version: 2,
                capabilities: cap::KNOWN,
                max_chunk: rapwire::requests::MAX_CHUNK as u32
            }
        );
        let ids = agents.sessions("I-1", cap::DOWNLOADS);
        assert_eq!(ids.len(), 1);
        assert_eq!(agents.status()[0].software, "test");
        assert!(agents.sessions("I-2", 0).is_empty());

        // Agent requests go to the handlers; unknown ones are refused by name.
        conn.on_frame(Message::UploadEnd { req: 3, upload: 5 });
        assert_eq!(
            read(&mut client),
            Message::Refused { req: 3, code: ErrorCode::UnknownTransfer, reason: "I-1 has no upload 5".into() }
        );
        conn.on_frame(Message::Read { req: 4, transfer: 1, offset: 0, length: 1 });
        assert!(matches!(read(&mut client), Message::Refused { req: 4, code: ErrorCode::UnknownFrameType, .. }));
        conn.on_frame(Message::Offer {
            req: 5,
            transfer: 1,
            size: 1,
            sha256: [0; 32],
            category: rapwire::transfer::Category::Help,
            name: "a".into(),
        });
        assert!(matches!(read(&mut client), Message::Refused { req: 5, code: ErrorCode::UnknownFrameType, .. }));

        // Box requests: the answer reaches the callback; a connection that ends answers Closed.
        let (tx, rx) = mpsc::channel();
        let t2 = tx.clone();
        agents.request(ids[0], |req| Message::Ok { req }, Box::new(move |a| t2.send(a).unwrap())).unwrap();
        let sent = read(&mut client);
        conn.on_frame(Message::Refused { req: sent.req(), code: ErrorCode::Declined, reason: "no".into() });
        assert_eq!(rx.recv().unwrap(), Answer::Refused { code: ErrorCode::Declined, reason: "no".into() });
        agents.request(ids[0], |req| Message::Ok { req }, Box::new(move |a| tx.send(a).unwrap())).unwrap();
        let g = agents.generation();
        drop(conn);
        assert_eq!(rx.recv().unwrap(), Answer::Closed);
        assert!(agents.generation() > g);
        assert!(agents.request(ids[0], |req| Message::Ok { req }, Box::new(|_| {})).is_err());
    }
}
