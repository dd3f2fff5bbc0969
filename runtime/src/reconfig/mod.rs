//! Run-time reconfiguration: the one place in rapd that applies a new configuration,
//! whoever asks for it (`rapctl config apply`, the local configuration pages, the data
//! center's `configure` command, tests).
//!
//! A proposal is a whole document or a set of [`keys`]. It becomes a document, and that
//! document goes through [`Config::parse`] — exactly what a file read at start goes
//! through — then through the checks a start makes before it changes anything (the
//! interfaces exist, `iptables-restore --test` takes the policy, the uplink's identity
//! files load). A refused proposal changes nothing; the refusal names the key.
//!
//! An accepted one is written down first ([`files`]: the configuration in force becomes
//! `rapd.toml.previous`, a pending record is written, then the new `rapd.toml`), then the
//! parts it changes are moved to it ([`live`]; [`plan`] says which parts, and whether it
//! takes a restart of rapd, which then happens through systemd). If a part cannot be moved,
//! everything goes back to the configuration in force and the files are restored.
//!
//! Then the trial: unless the data center acknowledges a batch within
//! `reconfig.rollback_after_s` (of the configuration in force before the apply), rapd
//! applies the previous configuration again — automatically, across restarts of rapd
//! (the deadline is kept on CLOCK_BOOTTIME with the boot's id; after a reboot the trial
//! starts afresh), and the same way if rapd cannot even start with the new one. Every
//! outcome is an audit record (`config.applied`, `config.refused`, `config.apply_failed`,
//! `config.confirmed`, `config.rolled_back`, `config.rollback_failed`,
//! `config.trial_resumed`, `config.interrupted`, `config.superseded`) and is answered to whoever asked. See
//! `docs/configuration.md`.

pub mod command;
pub mod files;
pub mod keys;
pub mod live;
pub mod plan;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::audit::{self, Event, Outcome};
use crate::config::{Config, ConfigError};
use crate::{exit, firewall, ports, tls, uplink};

use files::{ConfigFiles, Pending, PendingState, Recovered};
use keys::Change;
use live::Live;
use plan::Plan;

/// What is proposed.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposal {
    /// A whole configuration document (TOML).
    Document(String),
    /// Changes to the configuration in force (see [`keys`]).
    Keys(Vec<Change>),
}

/// The `config_apply` request's arguments (also what the data center's `configure`
/// command carries): a `document` or `keys`, not both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    /// Key path → value; `null` removes the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<serde_json::Map<String, serde_json::Value>>,
    /// Validate and say what would change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Roll back unless the data center acknowledges a batch in time (default true; only a
    /// technician at the box may turn it off, e.g. while the data center is not reachable yet).
    #[serde(default = "yes")]
    pub rollback: bool,
    /// Who the requester acts for (a web-page user), recorded beside the verified actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

fn yes() -> bool {
    true
}

impl ApplyArgs {
    /// The proposal, or why the arguments are not one.
    pub fn proposal(&self) -> Result<Proposal, Problem> {
        match (&self.document, &self.keys) {
            (Some(d), None) => Ok(Proposal::Document(d.clone())),
            (None, Some(k)) => keys::from_json(k).map(Proposal::Keys).map_err(Problem::from),
            (Some(_), Some(_)) => Err(Problem::general("give either a document or keys, not both")),
            (None, None) => Err(Problem::general("give a document or keys")),
        }
    }
}

/// One reason for a refusal: the key (when there is one) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    fn general(m: &str) -> Problem {
        Problem { key: None, message: m.into() }
    }
}

impl From<keys::KeyError> for Problem {
    fn from(e: keys::KeyError) -> Problem {
        Problem { key: Some(e.key.clone()), message: e.to_string() }
    }
}

impl From<&ConfigError> for Problem {
    fn from(e: &ConfigError) -> Problem {
        let key = match e {
            ConfigError::Invalid { key, .. } => Some(key.clone()),
            ConfigError::Parse { message, .. } => parse_error_key(message),
            ConfigError::Read { .. } => None,
        };
        Problem { key, message: e.to_string() }
    }
}

/// The key a TOML parse error names (`unknown field `x``: not a full path, but the name).
fn parse_error_key(message: &str) -> Option<String> {
    let i = message.find("unknown field `")? + "unknown field `".len();
    message[i..].split('`').next().map(str::to_owned)
}

/// How an apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// Dry run: the proposal is valid (nothing was changed).
    Valid,
    /// Applied (live, or rapd is restarting to apply it).
    Applied,
    /// The proposal is the configuration in force.
    Unchanged,
    /// Invalid, or a check before applying failed: nothing was changed.
    Refused,
    /// A part could not be moved to it: everything went back to the configuration in force.
    Failed,
}

/// The trial of an applied configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The apply's id.
    pub id: String,
    pub actor: String,
    pub applied_ms: u64,
    /// The data center must acknowledge a batch within this many seconds of the apply.
    pub rollback_after_s: u64,
    /// Seconds left, as of the answer.
    pub remaining_s: u64,
    pub restart: bool,
}

/// The answer to an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub outcome: ApplyOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why it was refused or failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Problem>,
    /// The key paths whose values change.
    #[serde(default)]
    pub changed_keys: Vec<String>,
    /// The running parts that change (see [`plan`]).
    #[serde(default)]
    pub plan: Plan,
    /// rapd restarts to apply it.
    #[serde(default)]
    pub restart: bool,
    /// The trial that follows (None: no rollback is armed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
    /// One line for people.
    pub message: String,
}

impl ApplyReport {
    fn refused(errors: Vec<Problem>) -> ApplyReport {
        let message = match errors.first() {
            Some(e) => format!("refused, nothing was changed: {}", e.message),
            None => "refused, nothing was changed".into(),
        };
        ApplyReport {
            outcome: ApplyOutcome::Refused,
            id: None,
            errors,
            changed_keys: Vec::new(),
            plan: Plan::default(),
            restart: false,
            trial: None,
            message,
        }
    }
}

/// One past event of the reconfiguration, for `config show` (newest last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time_ms: u64,
    /// `applied`, `refused`, `apply_failed`, `confirmed`, `rolled_back`, `rollback_failed`,
    /// `interrupted`, `superseded`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub actor: String,
    /// Who applied the configuration the event is about (for `confirmed`, `rolled_back`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<String>,
    pub message: String,
}

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialEnd {
    /// The data center acknowledged a batch (or an exchange) this long after the apply.
    Confirmed { after_ms: u64 },
    /// The previous configuration was applied again.
    RolledBack { reason: String },
    /// Another configuration was applied during the trial (and is on trial now).
    Superseded { by: String },
    /// The trial ended otherwise (an apply cut short by a crash, a hand edit, ...).
    Ended { reason: String },
}

/// Told how a trial ended.
pub type TrialWaiter = Box<dyn FnOnce(&TrialEnd) + Send>;

/// The answer to `config_show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowReport {
    /// The configuration path rapd was started with.
    pub path: PathBuf,
    /// The file it really is (symbolic links resolved).
    pub file: PathBuf,
    pub sha256: String,
    /// The document in force, proxy credentials hidden (`***`), as `rapctl status` hides them.
    pub document: String,
    /// The configuration a rollback returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PathBuf>,
    /// The trial under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
    /// The sections only a restart of rapd changes.
    pub restart_sections: Vec<String>,
    /// Recent events, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// The sections whose change needs a restart of rapd (see [`plan`]).
pub const RESTART_SECTIONS: [&str; 7] = ["queue", "fips", "control", "audit", "log.target", "commands", "transfers"];

const HISTORY: usize = 16;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    if openssl::rand::rand_bytes(&mut b).is_err() {
        return format!("{:016x}", now_ms());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------- restart

static RESTART: OnceLock<String> = OnceLock::new();
static READY: AtomicBool = AtomicBool::new(false);

/// Asks the daemon to stop cleanly and start again (SIGTERM to itself; the daemon's
/// signal loop sees [`restart_requested`]).
pub fn request_restart(reason: &str) {
    let _ = RESTART.set(reason.to_owned());
    log::warn!("restarting rapd: {reason}");
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
}

/// Why rapd is stopping to restart, if it is.
pub fn restart_requested() -> Option<&'static str> {
    RESTART.get().map(String::as_str)
}

/// Tells the module that rapd is up (a failure to start after this is not the new
/// configuration's fault).
pub fn mark_ready() {
    READY.store(true, Ordering::SeqCst);
}

/// After a clean stop for a restart: under systemd (`NOTIFY_SOCKET` set) the exit code
/// [`exit::RESTART`] lets `Restart=always` start rapd again; otherwise rapd executes itself
/// again with the same arguments (same pid). Returns only when that fails.
pub fn restart_process() -> i32 {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        log::info!("exiting for systemd to start rapd again");
        return exit::RESTART;
    }
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    log::info!("starting rapd again (exec)");
    let e = std::process::Command::new("/proc/self/exe").args(&args).exec();
    log::error!("cannot execute rapd again: {e}");
    eprintln!("rapd: cannot execute rapd again: {e}");
    exit::RESTART
}

/// rapd could not start with the configuration `config_path` (exit `code`, `reason`): if that
/// configuration is on trial, the previous one is written back (the next start records
/// the rollback) and true is returned: the caller restarts.
pub fn rollback_after_failed_start(config_path: &Path, code: i32, reason: &str) -> bool {
    if READY.load(Ordering::SeqCst) {
        return false;
    }
    let files = ConfigFiles::beside(config_path);
    let Ok(Some(p)) = files.read_pending() else { return false };
    let Ok(current) = files.read_current() else { return false };
    if p.state != PendingState::Unconfirmed || current != p.new_document {
        return false;
    }
    let prev = p.previous_document.clone();
    let why = format!("rapd could not start with it: {reason} (exit code {code})");
    let rb = Pending { state: PendingState::RollingBack, reason: Some(why.clone()), recorded: false, ..p };
    if let Err(e) = files.write_pending(&rb).and_then(|()| files::write_atomic(&files.current, prev.as_bytes())) {
        log::error!("reconfig: cannot roll back: {e}");
        return false;
    }
    log::error!("reconfig: configuration {} rolled back: {why}", rb.id);
    eprintln!("rapd: configuration {} rolled back: {why}", rb.id);
    true
}

// ---------------------------------------------------------------- the reconfigurer

struct State {
    /// The configuration in force and its text.
    current: Config,
    text: String,
    /// The trial under way, with the configuration it rolls back to.
    trial: Option<(Pending, Config, String)>,
    /// Acknowledged batches when the trial began; one more confirms it.
    baseline: u64,
}

/// The one place that applies configurations.
pub struct Reconfigurer {
    files: ConfigFiles,
    /// The path configurations are validated as (errors name it).
    path: PathBuf,
    live: Arc<Live>,
    state: Mutex<State>,
    history: Mutex<VecDeque<HistoryEntry>>,
    /// A snapshot for `config_show`, so that it never waits for an apply.
    show: Mutex<Option<Trial>>,
    /// Who waits for the end of a trial, by apply id.
    waiters: Mutex<Vec<(String, TrialWaiter)>>,
    /// Recent ends of trials: (apply id, who applied it, how it ended).
    ends: Mutex<VecDeque<(String, String, TrialEnd)>>,
}

impl Reconfigurer {
    /// Takes over the configuration in force (`cfg`, `text`) and what recovery found.
    pub fn new(cfg: Config, text: String, live: Arc<Live>, recovered: &Recovered) -> Arc<Reconfigurer> {
        let files = ConfigFiles::beside(&cfg.path);
        let mut trial = None;
        if let Recovered::Unconfirmed(p) = recovered {
            match Config::parse(&cfg.path, &p.previous_document) {
                Ok(pc) => {
                    let left = p.remaining();
                    let mut p = p.clone();
                    if p.boot_id != files::boot_id() {
                        p.boot_id = files::boot_id();
                        p.deadline_boot_ms = files::boot_ms() + left.as_millis() as u64;
                        if let Err(e) = files.write_pending(&p) {
                            log::error!("reconfig: {e}");
                        }
                    }
                    log::warn!(
                        "reconfig: configuration {} is on trial: rolled back in {} s unless the data center acknowledges a batch",
                        p.id,
                        left.as_secs()
                    );
                    let pt = p.previous_document.clone();
                    trial = Some((p, pc, pt));
                }
                Err(e) => {
                    log::error!("reconfig: configuration {} is on trial but the one to roll back to is not valid ({e}): the trial ends", p.id);
                    let _ = files.clear_pending();
                }
            }
        }
        // A crash in the middle of an apply may have left addresses of the other configuration.
        let others: Vec<&String> = match recovered {
            Recovered::Unconfirmed(p) => vec![&p.previous_document],
            Recovered::Interrupted(p) | Recovered::RolledBack(p) => vec![&p.new_document],
            Recovered::Superseded(p) => vec![&p.previous_document, &p.new_document],
            Recovered::Nothing | Recovered::Unreadable(_) => Vec::new(),
        };
        for t in others {
            if let Ok(o) = Config::parse(&cfg.path, t) {
                if let Err(e) = live.release_stale(&o, &cfg) {
                    log::error!("reconfig: addresses left by an interrupted apply: {e}");
                }
            }
        }
        let r = Arc::new(Reconfigurer {
            path: cfg.path.clone(),
            files,
            live,
            state: Mutex::new(State { current: cfg, text, trial, baseline: 0 }),
            history: Mutex::new(VecDeque::new()),
            show: Mutex::new(None),
            waiters: Mutex::new(Vec::new()),
            ends: Mutex::new(VecDeque::new()),
        });
        r.refresh_show(&lock(&r.state));
        r
    }

    fn refresh_show(&self, st: &State) {
        *lock(&self.show) = st.trial.as_ref().map(|(p, _, _)| trial_view(p));
    }

    fn remember(&self, event: &str, id: Option<&str>, actor: &str, message: &str) {
        self.remember_for(event, id, actor, None, message);
    }

    fn remember_for(&self, event: &str, id: Option<&str>, actor: &str, applied_by: Option<&str>, message: &str) {
        let mut h = lock(&self.history);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(HistoryEntry {
            time_ms: now_ms(),
            event: event.into(),
            id: id.map(str::to_owned),
            actor: actor.into(),
            applied_by: applied_by.map(str::to_owned),
            message: message.into(),
        });
    }

    /// Records how the trial of `id` (applied by `applied_by`) ended and tells its waiters.
    fn end_trial(&self, id: &str, applied_by: &str, end: TrialEnd) {
        {
            let mut e = lock(&self.ends);
            if e.len() == HISTORY {
                e.pop_front();
            }
            e.push_back((id.to_owned(), applied_by.to_owned(), end.clone()));
        }
        let mine: Vec<TrialWaiter> = {
            let mut w = lock(&self.waiters);
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *w).into_iter().partition(|(i, _)| i == id);
            *w = rest;
            mine.into_iter().map(|(_, f)| f).collect()
        };
        for f in mine {
            f(&end);
        }
    }

    /// Calls `f` when the trial of the apply `id` ends (at once when it has ended already;
    /// with [`TrialEnd::Ended`] when rapd knows of no such trial).
    pub fn when_trial_ends(&self, id: &str, f: TrialWaiter) {
        let st = lock(&self.state);
        if st.trial.as_ref().is_some_and(|(p, _, _)| p.id == id) {
            lock(&self.waiters).push((id.to_owned(), f));
            return;
        }
        drop(st);
        let end = lock(&self.ends).iter().rev().find(|(i, _, _)| i == id).map(|(_, _, e)| e.clone());
        f(&end.unwrap_or_else(|| TrialEnd::Ended { reason: format!("rapd knows of no trial of configuration {id}") }));
    }

    /// The apply that `applied_by` made most recently and what became of it: its id and, when
    /// its trial is over, how it ended (`None`: still on trial). `None` when rapd knows none.
    pub fn apply_of(&self, applied_by: &str) -> Option<(String, Option<TrialEnd>)> {
        let st = lock(&self.state);
        if let Some((p, _, _)) = st.trial.as_ref().filter(|(p, _, _)| p.actor == applied_by) {
            return Some((p.id.clone(), None));
        }
        drop(st);
        lock(&self.ends).iter().rev().find(|(_, a, _)| a == applied_by).map(|(i, _, e)| (i.clone(), Some(e.clone())))
    }

    /// Records what recovery found at start (after the audit log is open).
    pub fn record_recovery(&self, recovered: &Recovered) {
        let target = self.files.current.display().to_string();
        let (event, p, outcome, message) = match recovered {
            Recovered::Nothing => return,
            Recovered::Unconfirmed(p) => {
                let m = format!("on trial after a restart, {} s left", p.remaining().as_secs());
                self.remember_for("trial_resumed", Some(&p.id), "rapd", Some(&p.actor), &m);
                log::info!("reconfig: configuration {}: {m}", p.id);
                audit::record(Event::new("config.trial_resumed").target(&target).detail(serde_json::json!({
                    "id": p.id,
                    "applied_by": p.actor,
                    "remaining_s": p.remaining().as_secs(),
                    "restart": p.restart,
                    "sha256": p.new_sha256,
                })));
                return;
            }
            Recovered::Interrupted(p) => (
                "config.interrupted",
                p,
                Outcome::Failure,
                "the apply was cut short before the new configuration took effect: the previous one is in force"
                    .to_string(),
            ),
            Recovered::RolledBack(p) => {
                let m = format!("rolled back: {}", p.reason.as_deref().unwrap_or("the trial ended"));
                self.remember_for("rolled_back", Some(&p.id), "rapd", Some(&p.actor), &m);
                self.end_trial(&p.id, &p.actor, TrialEnd::RolledBack { reason: m.clone() });
                if p.recorded {
                    return;
                }
                ("config.rolled_back", p, Outcome::Success, m)
            }
            Recovered::Superseded(p) => (
                "config.superseded",
                p,
                Outcome::Success,
                "the configuration file was changed by hand during the trial: the file stays, the trial ends"
                    .to_string(),
            ),
            Recovered::Unreadable(m) => {
                audit::record(
                    Event::new("config.rollback_failed")
                        .target(&target)
                        .outcome(Outcome::Failure)
                        .detail(serde_json::json!({ "error": m })),
                );
                self.remember("rollback_failed", None, "rapd", m);
                return;
            }
        };
        if event != "config.rolled_back" {
            self.remember_for(event.trim_start_matches("config."), Some(&p.id), "rapd", Some(&p.actor), &message);
            self.end_trial(&p.id, &p.actor, TrialEnd::Ended { reason: message.clone() });
        }
        audit::record(Event::new(event).target(&target).outcome(outcome).detail(serde_json::json!({
            "id": p.id,
            "applied_by": p.actor,
            "reason": message,
            "sha256": p.new_sha256,
            "previous_sha256": p.previous_sha256,
        })));
    }

    /// The configuration in force now (waits while an apply is in progress).
    pub fn current(&self) -> Config {
        lock(&self.state).current.clone()
    }

    /// The configuration in force, the trial, recent events.
    pub fn show(&self) -> ShowReport {
        let (document, sha) = match self.files.read_current() {
            Ok(t) => {
                let s = files::sha256(&t);
                (t, s)
            }
            Err(e) => (String::new(), e.to_string()),
        };
        let mut trial = lock(&self.show).clone();
        if let (Some(t), Ok(Some(p))) = (trial.as_mut(), self.files.read_pending()) {
            t.remaining_s = p.remaining().as_secs();
        }
        ShowReport {
            path: self.path.clone(),
            file: self.files.current.clone(),
            sha256: sha,
            document: keys::redact_proxy(&document),
            previous: self.files.previous.exists().then(|| self.files.previous.clone()),
            trial,
            restart_sections: RESTART_SECTIONS.iter().map(|s| s.to_string()).collect(),
            history: lock(&self.history).iter().cloned().collect(),
        }
    }

    /// Validates, checks and (unless a dry run) applies `args` for `actor`.
    pub fn apply(&self, args: &ApplyArgs, actor: &str) -> ApplyReport {
        let target = self.files.current.display().to_string();
        let refuse = |errors: Vec<Problem>, what: serde_json::Value| {
            let r = ApplyReport::refused(errors);
            if !args.dry_run {
                audit::record(
                    Event::new("config.refused").actor(actor).target(&target).outcome(Outcome::Denied).detail(
                        serde_json::json!({
                            "proposal": what,
                            "errors": r.errors,
                            "on_behalf_of": args.on_behalf_of,
                        }),
                    ),
                );
                self.remember("refused", None, actor, &r.message);
            }
            log::warn!("reconfig: {} by {actor}: {}", if args.dry_run { "check" } else { "apply" }, r.message);
            r
        };
        let proposal = match args.proposal() {
            Ok(p) => p,
            Err(e) => return refuse(vec![e], serde_json::Value::Null),
        };
        let what = match &proposal {
            Proposal::Document(d) => serde_json::json!({ "document_sha256": files::sha256(d) }),
            Proposal::Keys(k) => serde_json::json!({ "keys": redact_keys(&keys::to_json(k)) }),
        };
        let mut st = lock(&self.state);
        let text = match &proposal {
            Proposal::Document(d) => d.clone(),
            Proposal::Keys(k) => match keys::apply(&st.text, k) {
                Ok(t) => t,
                Err(e) => return refuse(vec![e.into()], what),
            },
        };
        let new = match Config::parse(&self.path, &text) {
            Ok(c) => c,
            Err(e) => return refuse(vec![Problem::from(&e)], what),
        };
        let plan = plan::plan(&st.current, &new);
        if let Err(errors) = preflight(&st.current, &new, &plan) {
            return refuse(errors, what);
        }
        let changed_keys = keys::changed_keys(&st.text, &text);
        let base = ApplyReport {
            outcome: ApplyOutcome::Valid,
            id: None,
            errors: Vec::new(),
            changed_keys: changed_keys.clone(),
            restart: !plan.restart.is_empty(),
            plan: plan.clone(),
            trial: None,
            message: String::new(),
        };
        if text == st.text {
            let message = "unchanged: this is the configuration in force".to_string();
            if !args.dry_run {
                audit::record(
                    Event::new("config.applied")
                        .actor(actor)
                        .target(&target)
                        .detail(serde_json::json!({ "unchanged": true, "proposal": what })),
                );
            }
            return ApplyReport { outcome: ApplyOutcome::Unchanged, message, ..base };
        }
        if args.dry_run {
            let message = format!(
                "valid; applying it changes {} ({})",
                if changed_keys.is_empty() { "no value".to_string() } else { changed_keys.join(", ") },
                if plan.restart.is_empty() { format!("live: {}", plan.summary()) } else { plan.summary() }
            );
            return ApplyReport { message, ..base };
        }

        // Written down first: previous, pending, then the new configuration.
        let id = new_id();
        let (known_good_cfg, known_good_text) = match &st.trial {
            Some((_, c, t)) => (c.clone(), t.clone()),
            None => (st.current.clone(), st.text.clone()),
        };
        let trial_s = known_good_cfg.reconfig.rollback_after.as_secs();
        let pending = Pending {
            id: id.clone(),
            state: PendingState::Unconfirmed,
            actor: actor.into(),
            applied_ms: now_ms(),
            boot_id: files::boot_id(),
            deadline_boot_ms: files::boot_ms() + trial_s * 1000,
            rollback_after_s: trial_s,
            previous_sha256: files::sha256(&known_good_text),
            new_sha256: files::sha256(&text),
            previous_document: known_good_text.clone(),
            new_document: text.clone(),
            restart: !plan.restart.is_empty(),
            reason: None,
            recorded: false,
        };
        let earlier = st.trial.as_ref().map(|(p, _, _)| p.clone());
        let earlier_previous = self.files.read_previous().ok().flatten();
        let written = (|| {
            if st.trial.is_none() {
                files::write_atomic(&self.files.previous, st.text.as_bytes())?;
            }
            if args.rollback {
                self.files.write_pending(&pending)?;
            } else {
                self.files.clear_pending()?;
            }
            files::write_atomic(&self.files.current, text.as_bytes())
        })();
        let restore_files = |st: &State| {
            let r = files::write_atomic(&self.files.current, st.text.as_bytes())
                .and_then(|()| match &earlier {
                    Some(p) => self.files.write_pending(p),
                    None => self.files.clear_pending(),
                })
                .and_then(|()| match &earlier_previous {
                    Some(t) => files::write_atomic(&self.files.previous, t.as_bytes()),
                    None => files::remove_durably(&self.files.previous),
                });
            if let Err(e) = r {
                log::error!("reconfig: cannot restore the configuration files: {e}");
            }
        };
        if let Err(e) = written {
            restore_files(&st);
            let msg = format!("cannot write the configuration: {e}");
            audit::record(
                Event::new("config.apply_failed")
                    .actor(actor)
                    .target(&target)
                    .outcome(Outcome::Failure)
                    .detail(serde_json::json!({ "id": id, "error": msg, "proposal": what })),
            );
            self.remember("apply_failed", Some(&id), actor, &msg);
            return ApplyReport {
                outcome: ApplyOutcome::Failed,
                id: Some(id),
                errors: vec![Problem { key: None, message: msg.clone() }],
                message: format!("failed, nothing was changed: {msg}"),
                ..base
            };
        }
        log::info!("reconfig: apply {id}: files written");
        let trial = args.rollback.then(|| trial_view(&pending));
        let applied = |how: &str| {
            audit::record(Event::new("config.applied").actor(actor).target(&target).detail(serde_json::json!({
                "id": id,
                "changed_keys": changed_keys,
                "parts": plan.summary(),
                "how": how,
                "rollback_after_s": args.rollback.then_some(trial_s),
                "sha256": pending.new_sha256,
                "previous_sha256": files::sha256(&st.text),
                "proposal": what,
                "on_behalf_of": args.on_behalf_of,
            })));
        };
        let trial_note = if args.rollback {
            format!("; rolled back unless the data center acknowledges a batch within {trial_s} s")
        } else {
            "; no rollback armed".to_string()
        };

        if !plan.restart.is_empty() {
            applied("restart");
            let m = format!("applied; rapd restarts to apply {}{trial_note}", plan.restart.join(", "));
            self.remember("applied", Some(&id), actor, &m);
            *lock(&self.show) = trial.clone();
            request_restart(&format!("configuration {id} changes {}", plan.restart.join(", ")));
            return ApplyReport { outcome: ApplyOutcome::Applied, id: Some(id), trial, message: m, ..base };
        }

        let from = st.current.clone();
        if let Err(f) = self.live.transition(&from, &new, &plan, &id) {
            let live::Failed { error: e, undo: back } = *f;
            let key = match &e {
                live::LiveError::Listen(l) => {
                    new.instruments.iter().position(|i| i.serial == l.serial).map(|n| format!("instrument[{n}].listen"))
                }
                other => other.key(),
            };
            restore_files(&st);
            let mut msg = e.to_string();
            if let Some(b) = &back {
                msg = format!("{msg}; moving back also failed ({b}): rapd restarts with the configuration in force");
            }
            audit::record(
                Event::new("config.apply_failed")
                    .actor(actor)
                    .target(&target)
                    .outcome(Outcome::Failure)
                    .detail(serde_json::json!({ "id": id, "error": msg, "key": key, "proposal": what })),
            );
            self.remember("apply_failed", Some(&id), actor, &msg);
            if back.is_some() {
                request_restart(&format!("configuration {id} could not be undone live"));
            }
            return ApplyReport {
                outcome: ApplyOutcome::Failed,
                id: Some(id),
                errors: vec![Problem { key, message: msg.clone() }],
                message: format!("failed; the configuration in force was put back: {msg}"),
                ..base
            };
        }
        applied("live");
        log::info!("reconfig: apply {id}: done");
        let m = format!("applied live ({}){trial_note}", plan.summary());
        log::info!("reconfig: configuration {id} by {actor}: {m}");
        self.remember("applied", Some(&id), actor, &m);
        st.current = new;
        st.text = text;
        if let Some(e) = &earlier {
            self.end_trial(&e.id, &e.actor, TrialEnd::Superseded { by: id.clone() });
        }
        if args.rollback {
            st.trial = Some((pending, known_good_cfg, known_good_text));
            st.baseline = self.live.batches_acknowledged();
        } else {
            st.trial = None;
        }
        self.refresh_show(&st);
        ApplyReport { outcome: ApplyOutcome::Applied, id: Some(id), trial, message: m, ..base }
    }

    /// Starts the thread that confirms or rolls back the trial.
    pub fn spawn_watch(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new().name("reconfig".into()).stack_size(256 * 1024).spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                uplink::sleep_unless_stopped(&stop, Duration::from_millis(200));
                if stop.load(Ordering::SeqCst) || restart_requested().is_some() {
                    continue;
                }
                me.tick();
            }
        })
    }

    /// One look at the trial.
    fn tick(&self) {
        let mut st = lock(&self.state);
        let Some((p, _, _)) = &st.trial else { return };
        let p = p.clone();
        if self.live.batches_acknowledged() > st.baseline {
            let after = now_ms().saturating_sub(p.applied_ms);
            if let Err(e) = self.files.clear_pending() {
                log::error!("reconfig: confirming configuration {}: {e}", p.id);
                return;
            }
            let m = format!(
                "confirmed: the data center acknowledged a batch {:.1} s after the apply",
                after as f64 / 1000.0
            );
            log::info!("reconfig: configuration {} {m}", p.id);
            audit::record(
                Event::new("config.confirmed")
                    .target(&self.files.current.display().to_string())
                    .detail(serde_json::json!({ "id": p.id, "applied_by": p.actor, "after_ms": after })),
            );
            self.remember_for("confirmed", Some(&p.id), "rapd", Some(&p.actor), &m);
            st.trial = None;
            self.refresh_show(&st);
            drop(st);
            self.end_trial(&p.id, &p.actor, TrialEnd::Confirmed { after_ms: after });
            return;
        }
        if p.remaining().is_zero() {
            let reason = format!("the data center acknowledged no batch within {} s", p.rollback_after_s);
            self.roll_back(&mut st, &reason);
        }
    }

    /// Applies the configuration the trial returns to.
    fn roll_back(&self, st: &mut State, reason: &str) {
        let Some((p, prev_cfg, prev_text)) = st.trial.take() else { return };
        let target = self.files.current.display().to_string();
        log::error!("reconfig: configuration {}: {reason}; rolling back", p.id);
        let plan = plan::plan(&st.current, &prev_cfg);
        let rb = Pending { state: PendingState::RollingBack, reason: Some(reason.into()), recorded: true, ..p.clone() };
        let record = |ok: bool, how: &str, note: Option<String>| {
            audit::record(
                Event::new(if ok { "config.rolled_back" } else { "config.rollback_failed" })
                    .target(&target)
                    .outcome(if ok { Outcome::Success } else { Outcome::Failure })
                    .detail(serde_json::json!({
                        "id": p.id,
                        "applied_by": p.actor,
                        "reason": reason,
                        "how": how,
                        "note": note,
                        "restored_sha256": p.previous_sha256,
                    })),
            );
        };
        if let Err(e) =
            self.files.write_pending(&rb).and_then(|()| files::write_atomic(&self.files.current, prev_text.as_bytes()))
        {
            let msg = format!("cannot write the previous configuration back: {e}");
            log::error!("reconfig: {msg}");
            record(false, "none", Some(msg.clone()));
            self.remember_for("rollback_failed", Some(&p.id), "rapd", Some(&p.actor), &msg);
            st.trial = Some((p, prev_cfg, prev_text));
            return;
        }
        let m = format!("rolled back: {reason}");
        let end = TrialEnd::RolledBack { reason: m.clone() };
        if !plan.restart.is_empty() {
            record(true, "restart", None);
            self.remember_for("rolled_back", Some(&p.id), "rapd", Some(&p.actor), &m);
            self.refresh_show(st);
            self.end_trial(&p.id, &p.actor, end);
            request_restart(&format!("rollback of configuration {}", p.id));
            return;
        }
        match self.live.transition(&st.current, &prev_cfg, &plan, &format!("{} (rollback)", p.id)) {
            Ok(()) => {
                if let Err(e) = self.files.clear_pending() {
                    log::error!("reconfig: {e}");
                }
                record(true, "live", None);
                log::warn!("reconfig: configuration {} {m}", p.id);
                self.remember_for("rolled_back", Some(&p.id), "rapd", Some(&p.actor), &m);
                st.current = prev_cfg;
                st.text = prev_text;
                self.refresh_show(st);
                self.end_trial(&p.id, &p.actor, end);
            }
            Err(f) => {
                // The file is the previous one: a start sets everything up from it.
                let note = format!("the live rollback failed ({}): through a restart", f.error);
                record(true, "restart", Some(note.clone()));
                self.remember_for("rolled_back", Some(&p.id), "rapd", Some(&p.actor), &format!("{m} ({note})"));
                self.refresh_show(st);
                self.end_trial(&p.id, &p.actor, end);
                request_restart(&format!("rollback of configuration {}", p.id));
            }
        }
    }
}

fn trial_view(p: &Pending) -> Trial {
    Trial {
        id: p.id.clone(),
        actor: p.actor.clone(),
        applied_ms: p.applied_ms,
        rollback_after_s: p.rollback_after_s,
        remaining_s: p.remaining().as_secs(),
        restart: p.restart,
    }
}

/// Proxy credentials never reach the audit trail.
fn redact_keys(m: &serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    serde_json::Value::Object(
        m.iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) if k.ends_with("proxy") => {
                        serde_json::Value::String(uplink::redact(s))
                    }
                    other => other.clone(),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

/// The checks a start makes before it changes anything, for the parts that change.
fn preflight(old: &Config, new: &Config, plan: &Plan) -> Result<(), Vec<Problem>> {
    let mut errors = Vec::new();
    let links = ports::plan(new);
    if plan.links && !links.is_empty() {
        if let Err(e) = ports::check_interfaces(&links) {
            let key = match &e {
                ports::PortsError::UnknownInterface { key, .. } | ports::PortsError::Netlink { key, .. } => {
                    Some(key.clone())
                }
                ports::PortsError::Socket(_) => None,
            };
            errors.push(Problem { key, message: e.to_string() });
        }
    }
    if plan.firewall && new.firewall.enabled && errors.is_empty() {
        if let Err(e) = firewall::live::test(&firewall::policy(new), &firewall::Tools::system()) {
            let key = match &e {
                firewall::FirewallError::UnknownInterface { key, .. } => key.clone(),
                _ => "firewall".into(),
            };
            errors.push(Problem { key: Some(key), message: format!("firewall: {e}") });
        }
    }
    if old.uplink != new.uplink {
        if let Err(e) = uplink::agent(&new.uplink) {
            let key = match &e {
                tls::TlsSetupError::Missing { what, .. } | tls::TlsSetupError::Bad { what, .. } => match *what {
                    "CA certificate" => "uplink.ca",
                    "box certificate" => "uplink.cert",
                    "box key" => "uplink.key",
                    "proxy" => "uplink.proxy",
                    _ => "uplink",
                },
                tls::TlsSetupError::Openssl(_) => "uplink",
            };
            errors.push(Problem { key: Some(key.into()), message: format!("key `{key}`: {e}") });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        assert_eq!(
            parse_error_key("TOML parse error at line 3, column 1 | unknown field `qouta_bytes`, expected one of"),
            Some("qouta_bytes".into())
        );
        assert_eq!(parse_error_key("invalid type"), None);
    }

    #[test]
    fn apply_args_need_one_proposal() {
        let a: ApplyArgs = serde_json::from_str(r#"{"keys": {"uplink.proxy": "http://10.0.0.9:3128"}}"#).unwrap();
        assert!(a.rollback && !a.dry_run);
        assert!(matches!(a.proposal(), Ok(Proposal::Keys(k)) if k.len() == 1));
        let a: ApplyArgs = serde_json::from_str(r#"{"document": "x", "keys": {}}"#).unwrap();
        assert_eq!(a.proposal().unwrap_err().message, "give either a document or keys, not both");
        let a: ApplyArgs = serde_json::from_str(r#"{"dry_run": true}"#).unwrap();
        assert_eq!(a.proposal().unwrap_err().message, "give a document or keys");
    }

    #[test]
    fn proxy_credentials_are_redacted_in_records() {
        let mut m = serde_json::Map::new();
        m.insert("uplink.proxy".into(), serde_json::json!("http://u:secret@10.0.0.9:3128"));
        let v = redact_keys(&m).to_string();
        assert!(!v.contains("secret") && v.contains("***@"), "{v}");
    }
}
