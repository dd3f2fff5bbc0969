//! The backend's HTTP server: routing, the batch endpoint, the query API and the admin
//! (test) endpoints, on a loopback listener served by a small pool of worker threads.
//!
//! Blocking I/O throughout (`tiny_http`, which reads requests on its own connection threads
//! and hands complete request heads to our workers). The store serializes writes, so a few
//! workers suffice; more only help queries overlap an ingest.
//!
//! Who may call what:
//! * `POST /api/v1/lines` (plain newline-separated lines, stored durably and counted per box;
//!   the syslog-ng reference of the benchmark) requires the same identity;
//! * `POST /api/v1/batches` is the box's endpoint: it requires the identity the front door
//!   vouches for ([`crate::identity`]), else 403.
//! * The query API (`/api/v1/reports`, `/api/v1/stats`, `/api/v1/alerts`,
//!   `/api/v1/triggers`), `/healthz` and `/admin/*` are for tests and operators on this
//!   machine: the front door does not expose them (it answers 404), and the listener is
//!   loopback only.
//! * `GET /dashboard` is the staff dashboard (HTML, [`crate::dashboard`]): it requires the
//!   `X-Staff-User` header that only the front door's staff listener sets, after HTTP Basic
//!   authentication against its password file; else 403.
//!
//! A trigger thread evaluates the rules ([`crate::triggers`]) on the reports of every stored
//! batch, and runs a clock tick every `tick_interval`.
//!
//! Every answer but the dashboard is JSON; every error is `{"error": "..."}`
//! ([`crate::api::ErrorBody`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rapwire::batch::{self, BatchAck};
use rapwire::command::BatchAnswer;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use crate::api::{
    self, AlertQuery, AlertState, Done, ErrorBody, FaultSpec, Health, LinesAck, ReportQuery, RequestCounts,
    ADMIN_PREFIX, CLIENT_SUBJECT_HEADER, CLIENT_VERIFY_HEADER, STAFF_USER_HEADER,
};
use crate::channel::Channel;
use crate::commands::CommandStore;
use crate::identity;
use crate::rules::RuleSet;
use crate::store::{Store, StoreError};
use crate::triggers::Engine;

/// Default limit on a (compressed) batch body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Default number of worker threads.
pub const DEFAULT_WORKERS: usize = 4;
/// Default interval of the trigger engine's clock tick.
pub const DEFAULT_TICK: Duration = Duration::from_secs(5);
/// Limit on an admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;
/// Distinct paths counted by name; further ones are counted under [`OTHER_PATHS`].
const MAX_COUNTED_PATHS: usize = 1024;
/// Where requests are counted once 1024 distinct paths have been seen.
pub const OTHER_PATHS: &str = "(other)";

/// How to run the backend.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Loopback address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Worker threads answering requests.
    pub workers: usize,
    /// Largest batch body accepted (larger: 413).
    pub max_body_bytes: usize,
    /// Trigger rules (none by default).
    pub rules: RuleSet,
    /// How often the trigger engine's clock tick runs (absence, count clearing).
    pub tick_interval: Duration,
}

impl ServerConfig {
    /// Defaults for everything but the address.
    pub fn new(listen: SocketAddr) -> Self {
        ServerConfig {
            listen,
            workers: DEFAULT_WORKERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            rules: RuleSet::default(),
            tick_interval: DEFAULT_TICK,
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The backend trusts identity headers, so it must never be reachable from elsewhere.
    #[error("refusing to listen on {0}: the backend binds loopback addresses only (nginx is the front door)")]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// No worker thread could be started.
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The trigger engine could not reconcile its stored state with the rules.
    #[error("trigger engine: {0}")]
    Triggers(#[source] StoreError),
    /// The command queue could not be opened.
    #[error(transparent)]
    Commands(#[from] crate::commands::CommandError),
    /// The file store could not be opened.
    #[error(transparent)]
    Files(#[from] crate::transfers::FileError),
}

/// A running backend. Dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    state: Arc<State>,
    workers: Vec<JoinHandle<()>>,
    triggers: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds, starts the workers and returns at once.
    pub fn start(config: ServerConfig, store: Store) -> Result<Server, ServerError> {
        if !config.listen.ip().is_loopback() {
            return Err(ServerError::NotLoopback(config.listen));
        }
        let http = tiny_http::Server::http(config.listen)
            .map_err(|e| ServerError::Bind { addr: config.listen, reason: e.to_string() })?;
        let addr = http.server_addr().to_ip().unwrap_or(config.listen);
        let http = Arc::new(http);
        let engine = Engine::new(config.rules, store.clock());
        engine.prepare(&store).map_err(ServerError::Triggers)?;
        let commands = if store.path() == std::path::Path::new(":memory:") {
            CommandStore::open_in_memory()?
        } else {
            CommandStore::open(store.path())?
        };
        let files = crate::transfers::FileStore::open(store.path())?;
        let state = Arc::new(State {
            channel: Channel::new(commands, files),
            store,
            max_body: config.max_body_bytes,
            fault: Mutex::new(None),
            requests: Mutex::new(BTreeMap::new()),
            lines: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
            engine,
            wake: Mutex::new(true),
            wake_cv: Condvar::new(),
        });
        let mut server = Server { addr, http, state, workers: Vec::new(), triggers: None };
        let (state, tick) = (server.state.clone(), config.tick_interval.max(Duration::from_millis(10)));
        server.triggers = Some(
            std::thread::Builder::new()
                .name("rapdc-triggers".into())
                .spawn(move || trigger_loop(&state, tick))
                .map_err(ServerError::Thread)?,
        );
        for i in 0..config.workers.max(1) {
            let (http, state) = (server.http.clone(), server.state.clone());
            let handle = std::thread::Builder::new()
                .name(format!("rapdc-http-{i}"))
                .spawn(move || worker(&http, &state))
                .map_err(ServerError::Thread)?;
            server.workers.push(handle);
        }
        log::info!("rapdc backend listening on http://{addr}, database {}", server.state.store.path().display());
        Ok(server)
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for [`crate::client::Client::new`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lines received on `POST /api/v1/lines`, per box (certificate CN), since start.
    pub fn line_counts(&self) -> BTreeMap<String, u64> {
        lock(&self.state.lines).clone()
    }

    /// The store behind the server.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The trigger engine.
    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// The command channel (command queue) behind the server.
    pub fn channel(&self) -> &Channel {
        &self.state.channel
    }

    /// Blocks until every worker has ended (they end only through [`Server::shutdown`] or
    /// a panic).
    pub fn wait(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// Stops accepting, lets in-flight requests finish and joins the workers.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        {
            let _wake = lock(&self.state.wake);
            self.state.wake_cv.notify_all();
        }
        if let Some(t) = self.triggers.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).field("workers", &self.workers.len()).finish_non_exhaustive()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the workers share.
#[derive(Debug)]
struct State {
    store: Store,
    channel: Channel,
    max_body: usize,
    fault: Mutex<Option<FaultSpec>>,
    requests: Mutex<BTreeMap<String, u64>>,
    lines: Mutex<BTreeMap<String, u64>>,
    stopping: AtomicBool,
    engine: Engine,
    /// Set when reports were stored that the trigger thread has not evaluated yet.
    wake: Mutex<bool>,
    wake_cv: Condvar,
}

impl State {
    /// Wakes the trigger thread: new reports are stored.
    fn wake_triggers(&self) {
        *lock(&self.wake) = true;
        self.wake_cv.notify_one();
    }
}

/// The trigger thread: evaluates when woken, and runs a clock tick every `tick`.
fn trigger_loop(state: &State, tick: Duration) {
    let mut next_tick = Instant::now();
    loop {
        let woken = {
            let mut pending = lock(&state.wake);
            loop {
                if state.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let wait = next_tick.saturating_duration_since(Instant::now());
                if *pending || wait.is_zero() {
                    break;
                }
                pending = state.wake_cv.wait_timeout(pending, wait).unwrap_or_else(|e| e.into_inner()).0;
            }
            std::mem::take(&mut *pending)
        };
        let result = if Instant::now() >= next_tick {
            next_tick = Instant::now() + tick;
            state.engine.tick(&state.store)
        } else if woken {
            state.engine.evaluate(&state.store)
        } else {
            continue;
        };
        match result {
            Ok(p) if p.raised + p.cleared > 0 => {
                log::debug!("triggers: {} reports, {} raised, {} cleared", p.reports, p.raised, p.cleared)
            }
            Ok(_) => {}
            Err(e) => log::error!("trigger evaluation failed (retried on the next tick): {e}"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(http: &tiny_http::Server, state: &State) {
    while !state.stopping.load(Ordering::SeqCst) {
        match http.recv() {
            Ok(req) => handle(req, state),
            // recv() fails when unblocked for shutdown (or the listener broke).
            Err(e) => {
                if !state.stopping.load(Ordering::SeqCst) {
                    log::error!("http receive failed: {e}");
                }
                return;
            }
        }
    }
}

/// An answer to send.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) retry_after_s: Option<u64>,
    pub(crate) allow: Option<&'static str>,
    pub(crate) content_type: &'static str,
    pub(crate) headers: Vec<(&'static str, &'static str)>,
    /// A body streamed from a reader instead of `body` (file content).
    pub(crate) stream: Option<Stream>,
}

/// A streamed answer body, with its own headers.
pub(crate) struct Stream {
    pub(crate) reader: Box<dyn Read + Send>,
    pub(crate) len: u64,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        // Serializing our own plain structs cannot fail.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Reply {
            status,
            body,
            retry_after_s: None,
            allow: None,
            content_type: "application/json",
            headers: Vec::new(),
            stream: None,
        }
    }

    /// A page of the dashboard: no scripts, no framing, not cached.
    fn html(body: String) -> Reply {
        Reply {
            status: 200,
            body: body.into_bytes(),
            retry_after_s: None,
            allow: None,
            content_type: "text/html; charset=utf-8",
            headers: vec![
                ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
                ("X-Content-Type-Options", "nosniff"),
                ("Cache-Control", "no-store"),
                ("Referrer-Policy", "no-referrer"),
            ],
            stream: None,
        }
    }

    pub(crate) fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, &ErrorBody { error: message.into() })
    }

    pub(crate) fn method_not_allowed(path: &str, allow: &'static str) -> Reply {
        let mut r = Reply::error(405, format!("{path} accepts {allow} only"));
        r.allow = Some(allow);
        r
    }
}

impl From<StoreError> for Reply {
    fn from(e: StoreError) -> Reply {
        log::error!("store: {e}");
        Reply::error(500, format!("store: {e}"))
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn handle(mut req: Request, state: &State) {
    let url = req.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    count_request(state, path);
    let reply = route(&mut req, state, path, query);
    log::debug!("{} {} -> {}", req.method(), url, reply.status);
    if let Some(s) = reply.stream {
        let headers = s.headers.iter().filter_map(|(k, v)| header(k, v)).collect();
        // A known length always goes out as Content-Length (tiny_http would switch to chunked
        // encoding above 32 KiB): the box checks a file's size before reading it.
        let resp = Response::new(reply.status.into(), headers, s.reader, Some(s.len as usize), None)
            .with_chunked_threshold(usize::MAX);
        if let Err(e) = req.respond(resp) {
            log::debug!("{path}: streaming the answer failed: {e}");
        }
        return;
    }
    let mut resp = Response::from_data(reply.body).with_status_code(reply.status);
    if let Some(h) = header("Content-Type", reply.content_type) {
        resp.add_header(h);
    }
    for (k, v) in reply.headers {
        if let Some(h) = header(k, v) {
            resp.add_header(h);
        }
    }
    if let Some(h) = reply.retry_after_s.and_then(|s| header("Retry-After", &s.to_string())) {
        resp.add_header(h);
    }
    if let Some(h) = reply.allow.and_then(|a| header("Allow", a)) {
        resp.add_header(h);
    }
    if let Err(e) = req.respond(resp) {
        log::debug!("{path}: answering failed: {e}");
    }
}

fn count_request(state: &State, path: &str) {
    let mut counts = lock(&state.requests);
    if let Some(n) = counts.get_mut(path) {
        *n += 1;
    } else if counts.len() < MAX_COUNTED_PATHS {
        counts.insert(path.to_owned(), 1);
    } else {
        *counts.entry(OTHER_PATHS.to_owned()).or_default() += 1;
    }
}

fn route(req: &mut Request, state: &State, path: &str, query: &str) -> Reply {
    if let Some(r) = state.channel.route(req, path, query) {
        return r;
    }
    let allow = match path {
        api::BATCHES_PATH | api::LINES_PATH | api::FAULT_PATH | api::RESET_PATH | api::EVALUATE_PATH => "POST",
        api::REPORTS_PATH
        | api::STATS_PATH
        | api::HEALTH_PATH
        | api::REQUESTS_PATH
        | api::ALERTS_PATH
        | api::TRIGGERS_PATH
        | api::DASHBOARD_PATH => "GET",
        _ => return Reply::error(404, format!("no such path: {path}")),
    };
    let method_ok = match req.method() {
        Method::Post => allow == "POST",
        Method::Get => allow == "GET",
        _ => false,
    };
    if !method_ok {
        let mut r = Reply::error(405, format!("{path} accepts {allow} only"));
        r.allow = Some(allow);
        return r;
    }
    match path {
        api::BATCHES_PATH => post_batch(req, state),
        api::LINES_PATH => post_lines(req, state),
        api::REPORTS_PATH => match parse_report_query(query) {
            Ok(q) => state.store.reports(&q).map_or_else(Reply::from, |p| Reply::json(200, &p)),
            Err(e) => Reply::error(400, e),
        },
        api::STATS_PATH => state.store.stats().map_or_else(Reply::from, |s| Reply::json(200, &s)),
        api::HEALTH_PATH => {
            Reply::json(200, &Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
        }
        api::FAULT_PATH => arm_fault(req, state),
        api::RESET_PATH => {
            if let Err(e) = state.store.reset() {
                return e.into();
            }
            *lock(&state.fault) = None;
            lock(&state.requests).clear();
            log::info!("store reset");
            Reply::json(200, &Done { ok: true })
        }
        api::ALERTS_PATH => match parse_alert_query(query) {
            Ok(q) => state.store.alerts(&q).map_or_else(Reply::from, |p| Reply::json(200, &p)),
            Err(e) => Reply::error(400, e),
        },
        api::TRIGGERS_PATH => state.engine.status(&state.store).map_or_else(Reply::from, |s| Reply::json(200, &s)),
        api::EVALUATE_PATH => match state.engine.tick(&state.store) {
            Ok(_) => state.engine.status(&state.store).map_or_else(Reply::from, |s| Reply::json(200, &s)),
            Err(e) => e.into(),
        },
        api::DASHBOARD_PATH => dashboard(req, state),
        api::REQUESTS_PATH => {
            let by_path = lock(&state.requests).clone();
            let outside_admin = by_path.iter().filter(|(p, _)| !p.starts_with(ADMIN_PREFIX)).map(|(_, n)| n).sum();
            Reply::json(200, &RequestCounts { by_path, outside_admin })
        }
        _ => Reply::error(404, format!("no such path: {path}")),
    }
}

/// The single value of a header, or an error if it is repeated.
fn single_header<'a>(req: &'a Request, name: &'static str) -> Result<Option<&'a str>, String> {
    let mut values = req.headers().iter().filter(|h| h.field.equiv(name));
    let first = values.next().map(|h| h.value.as_str());
    if values.next().is_some() {
        return Err(format!("header {name} repeated"));
    }
    Ok(first)
}

/// Why a request body was not read.
pub(crate) enum BodyError {
    /// Larger than the limit (declared or actual).
    TooLarge,
    /// The connection failed while reading.
    Io(std::io::Error),
}

/// Reads the body, refusing more than `limit` bytes (before reading, when the length is
/// declared).
pub(crate) fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, BodyError> {
    if req.body_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(req.body_length().unwrap_or(0).min(limit));
    req.as_reader().take(limit as u64 + 1).read_to_end(&mut body).map_err(BodyError::Io)?;
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(body)
}

fn post_batch(req: &mut Request, state: &State) -> Reply {
    let verify = match single_header(req, CLIENT_VERIFY_HEADER) {
        Ok(v) => v,
        Err(e) => return Reply::error(403, e),
    };
    let subject = match single_header(req, CLIENT_SUBJECT_HEADER) {
        Ok(v) => v,
        Err(e) => return Reply::error(403, e),
    };
    let who = match identity::from_headers(verify, subject) {
        Ok(who) => who,
        Err(e) => {
            log::warn!("batch refused: {e}");
            return Reply::error(403, e.to_string());
        }
    };

    {
        let mut fault = lock(&state.fault);
        if let Some(f) = fault.as_mut().filter(|f| f.count > 0) {
            f.count -= 1;
            let mut r = Reply::error(f.status, format!("injected fault: status {}", f.status));
            r.retry_after_s = f.retry_after_s;
            if f.count == 0 {
                *fault = None;
            }
            log::info!("box {}: batch answered with injected fault {}", who.box_id, r.status);
            return r;
        }
    }

    let content_type = single_header(req, "Content-Type").ok().flatten().unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case(batch::CONTENT_TYPE) {
        return Reply::error(415, format!("content type must be {}, not {content_type:?}", batch::CONTENT_TYPE));
    }
    let body = match read_body(req, state.max_body) {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            log::warn!("box {}: batch body larger than {} bytes", who.box_id, state.max_body);
            return Reply::error(413, format!("batch body larger than {} bytes", state.max_body));
        }
        Err(BodyError::Io(e)) => return Reply::error(400, format!("reading the body failed: {e}")),
    };
    let batch = match batch::decode(&body) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("box {}: malformed batch ({} bytes): {e}", who.box_id, body.len());
            return Reply::error(400, format!("malformed batch: {e}"));
        }
    };
    match single_header(req, batch::BATCH_ID_HEADER) {
        Ok(None) => {}
        Ok(Some(h)) if u64::from_str_radix(h.trim(), 16) == Ok(batch.batch_id) => {}
        Ok(Some(h)) => {
            return Reply::error(
                400,
                format!("{} {h:?} does not match the body's batch id {:016x}", batch::BATCH_ID_HEADER, batch.batch_id),
            )
        }
        Err(e) => return Reply::error(400, e),
    }
    match state.store.ingest(&who.box_id, &batch) {
        Ok(done) => {
            if !done.repeated && done.ack.accepted > 0 {
                state.wake_triggers();
            }
            let BatchAck { batch_id, accepted, duplicates } = done.ack;
            log::info!(
                "box {}: batch {batch_id:016x}{}: {accepted} accepted, {duplicates} duplicates, dropped_total {}",
                who.box_id,
                if done.repeated { " (repeated)" } else { "" },
                batch.dropped_total
            );
            let commands = state.channel.commands_for(&who.box_id);
            Reply::json(200, &BatchAnswer { ack: done.ack, commands })
        }
        Err(e) => e.into(),
    }
}

/// The box identity the front door vouches for, or the 403 to answer.
pub(crate) fn box_identity(req: &Request) -> Result<identity::Identity, Reply> {
    let verify = single_header(req, CLIENT_VERIFY_HEADER).map_err(|e| Reply::error(403, e))?;
    let subject = single_header(req, CLIENT_SUBJECT_HEADER).map_err(|e| Reply::error(403, e))?;
    identity::from_headers(verify, subject).map_err(|e| Reply::error(403, e.to_string()))
}

/// `POST /api/v1/lines`: counts the non-empty lines of the body for the box.
fn post_lines(req: &mut Request, state: &State) -> Reply {
    let who = match box_identity(req) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let body = match read_body(req, state.max_body) {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Reply::error(413, format!("body larger than {} bytes", state.max_body)),
        Err(BodyError::Io(e)) => return Reply::error(400, format!("reading the body failed: {e}")),
    };
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').filter(|l| !l.is_empty() && *l != b"\r").collect();
    // Stored like reports (one durable transaction) before the answer, so that the
    // benchmark's reference peer is measured against the same work as a box.
    let n = match state.store.store_lines(&who.box_id, &lines) {
        Ok(n) => n,
        Err(e) => return Reply::error(500, format!("storing lines failed: {e}")),
    };
    *lock(&state.lines).entry(who.box_id).or_default() += n;
    Reply::json(200, &LinesAck { lines: n })
}

fn arm_fault(req: &mut Request, state: &State) -> Reply {
    let body = match read_body(req, MAX_ADMIN_BODY) {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Reply::error(413, "fault body too large"),
        Err(BodyError::Io(e)) => return Reply::error(400, format!("reading the body failed: {e}")),
    };
    let spec: FaultSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return Reply::error(400, format!("bad fault JSON: {e}")),
    };
    if !(400..=599).contains(&spec.status) {
        return Reply::error(400, format!("fault status {} is not an error status (400-599)", spec.status));
    }
    log::info!("fault armed: {spec:?}");
    *lock(&state.fault) = (spec.count > 0).then_some(spec);
    Reply::json(200, &Done { ok: true })
}

/// `GET /dashboard`: only for a staff user the front door authenticated.
fn dashboard(req: &Request, state: &State) -> Reply {
    let user = match single_header(req, STAFF_USER_HEADER) {
        Ok(Some(u)) if !u.trim().is_empty() => u.trim().to_owned(),
        Ok(_) => {
            return Reply::error(
                403,
                format!("no {STAFF_USER_HEADER} header: the dashboard is served through the staff listener"),
            )
        }
        Err(e) => return Reply::error(403, e),
    };
    match crate::dashboard::render(&state.store, &state.engine, &user) {
        Ok(page) => Reply::html(page),
        Err(e) => e.into(),
    }
}

fn parse_alert_query(query: &str) -> Result<AlertQuery, String> {
    let mut q = AlertQuery::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "state" => {
                q.state = match &*v {
                    "open" => Some(AlertState::Open),
                    "cleared" => Some(AlertState::Cleared),
                    "all" => None,
                    _ => return Err(format!("state {v:?} is not open, cleared or all")),
                }
            }
            "box" => q.box_id = Some(v.into_owned()),
            "instrument" => q.instrument = Some(v.into_owned()),
            "rule" => q.rule = Some(v.into_owned()),
            "since_id" => q.since_id = v.parse().map_err(|_| format!("since_id {v:?} is not a number"))?,
            "limit" => q.limit = Some(v.parse().map_err(|_| format!("limit {v:?} is not a number"))?),
            other => {
                return Err(format!(
                    "unknown query parameter {other:?} (state, box, instrument, rule, since_id, limit)"
                ))
            }
        }
    }
    Ok(q)
}

fn parse_report_query(query: &str) -> Result<ReportQuery, String> {
    let mut q = ReportQuery::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "box" => q.box_id = Some(v.into_owned()),
            "instrument" => q.instrument = Some(v.into_owned()),
            "since_id" => q.since_id = v.parse().map_err(|_| format!("since_id {v:?} is not a number"))?,
            "limit" => q.limit = Some(v.parse().map_err(|_| format!("limit {v:?} is not a number"))?),
            other => return Err(format!("unknown query parameter {other:?} (box, instrument, since_id, limit)")),
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_query_parsing() {
        let q = parse_report_query("box=box-0001&instrument=A%201&since_id=5&limit=10").unwrap();
        assert_eq!(
            q,
            ReportQuery {
                box_id: Some("box-0001".into()),
                instrument: Some("A 1".into()),
                since_id: 5,
                limit: Some(10)
            }
        );
        assert_eq!(parse_report_query("").unwrap(), ReportQuery::default());
        assert!(parse_report_query("since_id=x").unwrap_err().contains("since_id"));
        assert!(parse_report_query("boxx=1").unwrap_err().contains("boxx"));
    }

    #[test]
    fn alert_query_parsing() {
        let q = parse_alert_query("state=open&box=b&instrument=A%201&rule=r&since_id=3&limit=7").unwrap();
        assert_eq!(
            q,
            AlertQuery {
                state: Some(AlertState::Open),
                box_id: Some("b".into()),
                instrument: Some("A 1".into()),
                rule: Some("r".into()),
                since_id: 3,
                limit: Some(7)
            }
        );
        assert_eq!(parse_alert_query("state=all").unwrap().state, None);
        assert_eq!(parse_alert_query("state=cleared").unwrap().state, Some(AlertState::Cleared));
        assert!(parse_alert_query("state=closed").unwrap_err().contains("closed"));
        assert!(parse_alert_query("limit=x").unwrap_err().contains("limit"));
        assert!(parse_alert_query("severity=high").unwrap_err().contains("severity"));
    }

    #[test]
    fn refuses_non_loopback() {
        let err = Server::start(ServerConfig::new("0.0.0.0:0".parse().unwrap()), Store::open_in_memory().unwrap())
            .unwrap_err();
        assert!(matches!(err, ServerError::NotLoopback(_)), "{err}");
    }
}
