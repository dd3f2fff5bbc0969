//! The dispatcher: executes the commands the data center sends, each id once, and keeps
//! their results until the data center has recorded them (`docs/commands.md`).
//!
//! The uplink hands it the commands it finds in answers ([`CommandLink::deliver`]) and asks
//! it for results to report ([`CommandLink::results`], [`CommandLink::recorded`]); nothing
//! else here talks to the data center. Per command, in this order:
//!
//! 1. undecodable → refused `malformed` (reported by id when it has one; audited);
//! 2. an id seen before → not run again; its stored result is reported again;
//! 3. lifetime over (box clock) → refused `expired`;
//! 4. a kind without a handler → refused `unknown_kind`;
//! 5. a target that is not an instrument of this box → refused `bad_target`;
//! 6. stored (`pending`), then run by its [`Handler`] on a thread of its own once fewer than
//!    `max_running` commands run (stored `running` first). The handler's [`Verdict`] is the
//!    result, or `Running`: it reports `accepted` and finishes later through its
//!    [`Completion`] (downloads do; also after a restart, through [`Handler::resume`]).
//!
//! Every refusal and every executed command is audited (`command.refused`,
//! `command.accepted`, `command.executed`). Results are retried until recorded: they stay in
//! the database (`reported = 0`) across outages and restarts.
//!
//! To add a command kind: implement [`Handler`] and register it with
//! [`Dispatcher::register`] before [`Dispatcher::start`] (see `docs/commands.md`).

pub mod status;
pub mod store;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rapwire::command::{self, code, Command, CommandResult, Outcome, Recorded};
use serde::Serialize;

use crate::audit::{self, Event};
pub use store::StoreError;
use store::{State, Store};

/// How often finished rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Progress of a running command is reported at most this often.
const PROGRESS_EVERY_MS: i64 = 5_000;

/// What a handler decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Done, and it worked.
    Succeeded { detail: serde_json::Value },
    /// Run, and it did not work.
    Failed { code: String, reason: String, detail: serde_json::Value },
    /// Not run (bad arguments, bad signature, quota, ...): `code` from [`rapwire::command::code`].
    Refused { code: String, reason: String },
    /// Started; the handler finishes it later with [`Completion::finish`].
    Running { detail: serde_json::Value },
}

impl Verdict {
    /// A success without detail.
    pub fn ok() -> Verdict {
        Verdict::Succeeded { detail: serde_json::Value::Null }
    }
    /// A failure with a code and a reason.
    pub fn failed(code: &str, reason: impl Into<String>) -> Verdict {
        Verdict::Failed { code: code.into(), reason: reason.into(), detail: serde_json::Value::Null }
    }
    /// A refusal with a code and a reason.
    pub fn refused(code: &str, reason: impl Into<String>) -> Verdict {
        Verdict::Refused { code: code.into(), reason: reason.into() }
    }
    /// A refusal for arguments that are not what the kind needs.
    pub fn malformed(reason: impl Into<String>) -> Verdict {
        Verdict::refused(code::MALFORMED, reason)
    }
}

/// One command kind.
pub trait Handler: Send + Sync {
    /// Runs `cmd` (on a thread of its own; it may take as long as it needs). The envelope
    /// is checked and its targets are instruments of this box; the arguments are the
    /// handler's to check (refuse with [`Verdict::malformed`]).
    fn run(&self, cmd: &Command, done: Completion) -> Verdict;

    /// rapd restarted while `cmd` was running. The default does not run it again and
    /// reports it failed; a handler that can continue (a download) returns `Running`.
    fn resume(&self, cmd: &Command, done: Completion) -> Verdict {
        let _ = (cmd, done);
        Verdict::failed("interrupted", "rapd restarted while the command was running; it is not run again")
    }
}

/// How a running command reports progress and its end.
#[derive(Clone)]
pub struct Completion {
    inner: Arc<Inner>,
    cmd: Arc<Command>,
    last_progress_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion").field("id", &self.cmd.id).finish()
    }
}

impl Completion {
    /// The command's id.
    pub fn id(&self) -> &str {
        &self.cmd.id
    }

    /// The command.
    pub fn command(&self) -> &Command {
        &self.cmd
    }

    /// Updates the detail of the `accepted` result (reported at most every 5 s).
    pub fn progress(&self, detail: serde_json::Value) {
        let now = now_ms();
        let last = self.last_progress_ms.load(Ordering::Relaxed) as i64;
        if now - last < PROGRESS_EVERY_MS {
            return;
        }
        self.last_progress_ms.store(now as u64, Ordering::Relaxed);
        let mut r = CommandResult::new(&self.cmd.id, Outcome::Accepted, now);
        r.detail = detail;
        self.inner.store_result(&r);
    }

    /// Updates the detail of the `accepted` result now, whatever the rate limit (a change of
    /// phase the data center must see, e.g. a remote session's tunnel up).
    pub fn progress_now(&self, detail: serde_json::Value) {
        let now = now_ms();
        self.last_progress_ms.store(now as u64, Ordering::Relaxed);
        let mut r = CommandResult::new(&self.cmd.id, Outcome::Accepted, now);
        r.detail = detail;
        self.inner.store_result(&r);
    }

    /// Ends the command. Only the first final result counts; `Running` only updates the detail.
    pub fn finish(&self, verdict: Verdict) {
        self.inner.conclude(&self.cmd, verdict);
    }
}

/// The uplink's side of the dispatcher: what it calls with what it got from the data
/// center, and what it asks before it reports.
pub trait CommandLink: Send + Sync {
    /// Commands found in an answer (batch acknowledgement or exchange).
    fn deliver(&self, commands: Vec<serde_json::Value>);
    /// How many results wait for the data center.
    fn unreported(&self) -> usize;
    /// Up to `max` results to report, oldest first.
    fn results(&self, max: usize) -> Vec<CommandResult>;
    /// The data center recorded these.
    fn recorded(&self, recorded: &[Recorded]);
}

/// The dispatcher's part of rapd's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandsStatus {
    pub path: PathBuf,
    /// Kinds this box executes.
    pub kinds: Vec<String>,
    /// Commands received since rapd started (redeliveries included).
    pub received: u64,
    /// Commands executed (handler run to a final result) since rapd started.
    pub executed: u64,
    /// Commands refused since rapd started.
    pub refused: u64,
    /// Redeliveries of commands already known (not run again).
    pub redelivered: u64,
    /// Stored and waiting for a slot.
    pub pending: u64,
    /// Running now.
    pub running: u64,
    /// Results the data center has not recorded yet.
    pub unreported: usize,
    /// The last failure of the command database, until the next success.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    executed: AtomicU64,
    refused: AtomicU64,
    redelivered: AtomicU64,
}

struct Inner {
    store: Mutex<Store>,
    handlers: RwLock<HashMap<String, Arc<dyn Handler>>>,
    instruments: HashSet<String>,
    max_running: usize,
    running: AtomicUsize,
    unreported: AtomicUsize,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    tx: Mutex<Option<Sender<Msg>>>,
    /// The results last handed to the uplink, by id: `recorded` marks exactly these.
    sent: Mutex<HashMap<String, CommandResult>>,
}

enum Msg {
    Deliver(Vec<serde_json::Value>),
    Wake,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// The dispatcher thread; joins on [`DispatcherThread::join`].
pub struct DispatcherThread {
    handle: JoinHandle<()>,
}

impl DispatcherThread {
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

impl Dispatcher {
    /// Opens the dispatcher's database; `instruments` are the serials cabled to this box.
    pub fn open(path: &Path, instruments: &[String], max_running: usize) -> Result<Dispatcher, StoreError> {
        let store = Store::open(path)?;
        let unreported = store.unreported_count()?;
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                handlers: RwLock::new(HashMap::new()),
                instruments: instruments.iter().cloned().collect(),
                max_running: max_running.max(1),
                running: AtomicUsize::new(0),
                unreported: AtomicUsize::new(unreported),
                counters: Counters::default(),
                last_error: Mutex::new(None),
                tx: Mutex::new(None),
                sent: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Makes `handler` execute commands of `kind` (replacing an earlier one).
    pub fn register(&self, kind: &str, handler: Arc<dyn Handler>) {
        self.inner.handlers.write().unwrap_or_else(|p| p.into_inner()).insert(kind.to_owned(), handler);
    }

    /// Resumes what a previous run left (running commands through their handler's `resume`,
    /// pending ones normally) and starts the dispatcher thread; returns when `stop` is set.
    pub fn start(&self, stop: Arc<AtomicBool>) -> std::io::Result<DispatcherThread> {
        let (tx, rx) = mpsc::channel();
        *lock(&self.inner.tx) = Some(tx);
        let inner = self.inner.clone();
        let handle = std::thread::Builder::new().name("dispatcher".into()).spawn(move || run(inner, rx, stop))?;
        Ok(DispatcherThread { handle })
    }

    /// The status section.
    pub fn status(&self) -> CommandsStatus {
        let i = &self.inner;
        let (pending, running) = match lock(&i.store).counts() {
            Ok((_, p, r)) => (p, r),
            Err(_) => (0, i.running.load(Ordering::Relaxed) as u64),
        };
        let mut kinds: Vec<String> = i.handlers.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        kinds.sort();
        CommandsStatus {
            path: lock(&i.store).path().to_owned(),
            kinds,
            received: i.counters.received.load(Ordering::Relaxed),
            executed: i.counters.executed.load(Ordering::Relaxed),
            refused: i.counters.refused.load(Ordering::Relaxed),
            redelivered: i.counters.redelivered.load(Ordering::Relaxed),
            pending,
            running,
            unreported: i.unreported.load(Ordering::Relaxed),
            last_error: lock(&i.last_error).clone(),
        }
    }
}

impl CommandLink for Dispatcher {
    fn deliver(&self, commands: Vec<serde_json::Value>) {
        if commands.is_empty() {
            return;
        }
        match lock(&self.inner.tx).as_ref() {
            Some(tx) => {
                let _ = tx.send(Msg::Deliver(commands));
            }
            None => log::warn!(
                "{} commands arrived before the dispatcher started; the data center sends them again",
                commands.len()
            ),
        }
    }

    fn unreported(&self) -> usize {
        self.inner.unreported.load(Ordering::Relaxed)
    }

    fn results(&self, max: usize) -> Vec<CommandResult> {
        let st = lock(&self.inner.store);
        match st.unreported(max) {
            Ok(r) => {
                let mut sent = lock(&self.inner.sent);
                for x in &r {
                    sent.insert(x.id.clone(), x.clone());
                }
                r
            }
            Err(e) => {
                drop(st);
                self.inner.note_error(&e);
                Vec::new()
            }
        }
    }

    fn recorded(&self, recorded: &[Recorded]) {
        let st = lock(&self.inner.store);
        let mut sent = lock(&self.inner.sent);
        for r in recorded {
            // Only the result that was sent: a progress update stored meanwhile is reported next.
            let res = match sent.remove(&r.id) {
                Some(x) if x.outcome == r.outcome => st.mark_reported_exact(&x),
                _ => st.mark_reported(&r.id, r.outcome),
            };
            if let Err(e) = res {
                log::error!("{e}");
            }
        }
        if let Ok(n) = st.unreported_count() {
            self.inner.unreported.store(n, Ordering::Relaxed);
        }
    }
}

impl Inner {
    fn wake(&self) {
        if let Some(tx) = lock(&self.tx).as_ref() {
            let _ = tx.send(Msg::Wake);
        }
    }

    fn note_error(&self, e: &StoreError) {
        log::error!("{e}");
        *lock(&self.last_error) = Some(e.to_string());
    }

    fn handler(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.read().unwrap_or_else(|p| p.into_inner()).get(kind).cloned()
    }

    /// Stores a result (final or progress) for reporting.
    fn store_result(&self, r: &CommandResult) -> bool {
        let st = lock(&self.store);
        let res = st.set_result(r).and_then(|changed| st.unreported_count().map(|n| (changed, n)));
        drop(st);
        match res {
            Ok((changed, n)) => {
                self.unreported.store(n, Ordering::Relaxed);
                *lock(&self.last_error) = None;
                changed
            }
            Err(e) => {
                self.note_error(&e);
                false
            }
        }
    }

    /// Records the verdict of a run (or resume) of `cmd`: result and audit.
    fn conclude(&self, cmd: &Command, verdict: Verdict) {
        let now = now_ms();
        let (result, event) = match verdict {
            Verdict::Running { detail } => {
                let mut r = CommandResult::new(&cmd.id, Outcome::Accepted, now);
                r.detail = detail;
                if !self.store_result(&r) {
                    return;
                }
                audit::record(Event::new("command.accepted").target(&cmd.id).detail(serde_json::json!({
                    "kind": cmd.kind, "target": cmd.target,
                })));
                return;
            }
            Verdict::Succeeded { detail } => {
                let mut r = CommandResult::new(&cmd.id, Outcome::Succeeded, now);
                r.detail = detail;
                (r, Event::new("command.executed").outcome(audit::Outcome::Success))
            }
            Verdict::Failed { code, reason, detail } => {
                let mut r = CommandResult::new(&cmd.id, Outcome::Failed, now);
                r.code = code;
                r.reason = command::cut(&reason, command::MAX_REASON).to_owned();
                r.detail = detail;
                (r, Event::new("command.executed").outcome(audit::Outcome::Failure))
            }
            Verdict::Refused { code, reason } => (
                CommandResult::refused(&cmd.id, &code, &reason, now),
                Event::new("command.refused").outcome(audit::Outcome::Denied),
            ),
        };
        if !self.store_result(&result) {
            log::warn!("command {}: a second final result ({}) ignored", cmd.id, result.outcome.name());
            return;
        }
        if result.outcome == Outcome::Refused {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.executed.fetch_add(1, Ordering::Relaxed);
        }
        log::info!(
            "command {} ({}) {}{}",
            cmd.id,
            cmd.kind,
            result.outcome.name(),
            if result.reason.is_empty() { String::new() } else { format!(": {}", result.reason) }
        );
        audit::record(event.target(&cmd.id).detail(serde_json::json!({
            "kind": cmd.kind,
            "target": cmd.target,
            "result": result.outcome.name(),
            "code": result.code,
            "reason": result.reason,
        })));
    }

    /// Refuses a command that could not be decoded.
    fn refuse_undecodable(&self, m: &command::Malformed, raw: &serde_json::Value) {
        let now = now_ms();
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        log::warn!("command refused as malformed: {}", m.reason);
        audit::record(
            Event::new("command.refused").target(m.id.as_deref().unwrap_or("")).outcome(audit::Outcome::Denied).detail(
                serde_json::json!({
                    "code": code::MALFORMED,
                    "reason": m.reason,
                    "command": command::cut(&raw.to_string(), 2048),
                }),
            ),
        );
        let Some(id) = &m.id else {
            log::error!("a malformed command without a readable id cannot be answered: {}", m.reason);
            return;
        };
        let r = CommandResult::refused(id, code::MALFORMED, &m.reason, now);
        let st = lock(&self.store);
        let known = matches!(st.get(id), Ok(Some(_)));
        let res = if known { st.report_again(id) } else { st.insert_refused(&r, now) };
        let count = st.unreported_count();
        drop(st);
        match res.and(count) {
            Ok(n) => self.unreported.store(n, Ordering::Relaxed),
            Err(e) => self.note_error(&e),
        }
    }
}

/// What the dispatcher thread does with one delivered value; returns a command to start.
fn admit(inner: &Arc<Inner>, raw: serde_json::Value) -> Option<Command> {
    inner.counters.received.fetch_add(1, Ordering::Relaxed);
    let cmd = match Command::from_value(&raw) {
        Ok(c) => c,
        Err(m) => {
            inner.refuse_undecodable(&m, &raw);
            return None;
        }
    };
    let now = now_ms();
    {
        let st = lock(&inner.store);
        match st.get(&cmd.id) {
            Ok(Some(row)) => {
                inner.counters.redelivered.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "command {} delivered again: not run again ({}); its result is reported again",
                    cmd.id,
                    row.result.as_ref().map_or("no result yet", |r| r.outcome.name())
                );
                if let Err(e) = st.report_again(&cmd.id) {
                    drop(st);
                    inner.note_error(&e);
                    return None;
                }
                if let Ok(n) = st.unreported_count() {
                    inner.unreported.store(n, Ordering::Relaxed);
                }
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                // Without the database the box cannot promise "once": leave it to a redelivery.
                drop(st);
                inner.note_error(&e);
                return None;
            }
        }
        if let Err(e) = st.insert(&cmd, State::Pending, now) {
            drop(st);
            inner.note_error(&e);
            return None;
        }
    }
    if cmd.expired_at(now) {
        let reason = format!(
            "lifetime ended at {} (box clock {}), {} ms ago",
            audit::chain::format_time(cmd.expires_ms),
            audit::chain::format_time(now),
            now - cmd.expires_ms
        );
        inner.conclude(&cmd, Verdict::refused(code::EXPIRED, reason));
        return None;
    }
    if inner.handler(&cmd.kind).is_none() {
        let mut kinds: Vec<String> = inner.handlers.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        kinds.sort();
        let reason = format!("this box does not know command kind `{}` (it knows {})", cmd.kind, kinds.join(", "));
        inner.conclude(&cmd, Verdict::refused(code::UNKNOWN_KIND, reason));
        return None;
    }
    if let Some(t) = cmd.target.iter().find(|t| !inner.instruments.contains(*t)) {
        let mut known: Vec<&String> = inner.instruments.iter().collect();
        known.sort();
        let reason = format!(
            "instrument `{t}` is not cabled to this box (its instruments: {})",
            known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
        inner.conclude(&cmd, Verdict::refused(code::BAD_TARGET, reason));
        return None;
    }
    Some(cmd)
}

/// Starts `cmd`'s handler on its own thread (`resume`: after a restart).
fn launch(inner: &Arc<Inner>, cmd: Command, resume: bool) {
    let Some(handler) = inner.handler(&cmd.kind) else {
        inner.conclude(&cmd, Verdict::refused(code::UNKNOWN_KIND, format!("no handler for `{}` any more", cmd.kind)));
        return;
    };
    if let Err(e) = lock(&inner.store).set_state(&cmd.id, State::Running) {
        inner.note_error(&e);
        return;
    }
    inner.running.fetch_add(1, Ordering::SeqCst);
    let cmd = Arc::new(cmd);
    let done = Completion { inner: inner.clone(), cmd: cmd.clone(), last_progress_ms: Arc::new(AtomicU64::new(0)) };
    let name = format!("cmd-{}", cmd.kind);
    let inner2 = inner.clone();
    // The slot is held while the handler's `run` runs; a command it leaves `Running` (a
    // download waiting for its instrument) no longer takes one.
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let verdict = if resume { handler.resume(&cmd, done.clone()) } else { handler.run(&cmd, done) };
        inner2.conclude(&cmd, verdict);
        inner2.running.fetch_sub(1, Ordering::SeqCst);
        inner2.wake();
    });
    if let Err(e) = spawned {
        inner.running.fetch_sub(1, Ordering::SeqCst);
        log::error!("cannot start a thread for a command: {e}");
    }
}

fn run(inner: Arc<Inner>, rx: Receiver<Msg>, stop: Arc<AtomicBool>) {
    let mut waiting: VecDeque<Command> = VecDeque::new();
    // What the previous run left.
    {
        let st = lock(&inner.store);
        let running = st.in_state(State::Running).unwrap_or_default();
        let pending = st.in_state(State::Pending).unwrap_or_default();
        if let Ok(n) = st.prune(now_ms()) {
            if n > 0 {
                log::info!("commands: {n} finished commands forgotten (lifetime long over)");
            }
        }
        drop(st);
        for c in running {
            log::info!("command {} ({}) was running when rapd stopped: resuming through its handler", c.id, c.kind);
            launch(&inner, c, true);
        }
        waiting.extend(pending);
    }
    let mut last_prune = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        while inner.running.load(Ordering::SeqCst) < inner.max_running {
            match waiting.pop_front() {
                Some(c) if c.expired_at(now_ms()) => inner
                    .conclude(&c, Verdict::refused(code::EXPIRED, "lifetime ended while it waited for a free slot")),
                Some(c) => launch(&inner, c, false),
                None => break,
            }
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Msg::Deliver(values)) => {
                for v in values {
                    if let Some(c) = admit(&inner, v) {
                        waiting.push_back(c);
                    }
                }
            }
            Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            let _ = lock(&inner.store).prune(now_ms());
        }
    }
    *lock(&inner.tx) = None;
}

#[cfg(test)]
mod tests;
