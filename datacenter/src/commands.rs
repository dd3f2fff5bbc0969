//! The command queue of the data center: commands queued for a box, handed to it in the
//! answers to its uploads and exchanges, and the results it reports (`docs/commands.md`).
//!
//! Tables of its own (`command_queue`, `command_results`) in the data center's database, on
//! a connection of its own; [`crate::store`] never touches them, and this module touches
//! nothing else. A command's life:
//!
//! ```text
//! queued ──answer──▶ delivered ──box: accepted──▶ accepted ──box: succeeded | failed──▶ (final)
//!    │                  │ (again after REDELIVER_MS                        └─ box: refused ─▶ (final)
//!    └── lifetime over ─┴── without a word from the box) ──▶ expired
//! ```
//!
//! A delivered command the box has not answered is delivered again after [`REDELIVER_MS`]
//! (the box is idempotent by id). Results are recorded durably before the answer that
//! acknowledges them; the first final result stays (a repeated one is acknowledged, kept in
//! the history and changes nothing). Results about ids this data center does not know are
//! acknowledged (so the box stops reporting them) and counted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rapwire::command::{self, CommandResult, Outcome, Recorded};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// A delivered command without any answer from the box is delivered again after this long.
pub const REDELIVER_MS: i64 = 10_000;
/// Lifetime of a command queued without one: one day.
pub const DEFAULT_LIFETIME_S: u64 = 24 * 3600;
/// Version of this module's tables (kept in `component_versions`, not `user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS component_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS command_queue (
    id                TEXT PRIMARY KEY,
    box               TEXT NOT NULL,
    kind              TEXT NOT NULL,
    body              TEXT NOT NULL,
    issued_ms         INTEGER NOT NULL,
    expires_ms        INTEGER NOT NULL,
    state             TEXT NOT NULL,
    deliveries        INTEGER NOT NULL DEFAULT 0,
    last_delivered_ms INTEGER,
    outcome_code      TEXT NOT NULL DEFAULT '',
    reason            TEXT NOT NULL DEFAULT '',
    detail            TEXT NOT NULL DEFAULT 'null',
    result_ms         INTEGER,
    content_sha256    TEXT
);
CREATE INDEX IF NOT EXISTS command_queue_box ON command_queue(box, state);
CREATE INDEX IF NOT EXISTS command_queue_content ON command_queue(box, content_sha256);
CREATE TABLE IF NOT EXISTS command_results (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    code        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS command_results_id ON command_results(id);
";

/// Why the command queue failed or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot open command queue in {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("command queue in {path} has version {found}, newer than the {known} this rapdc knows")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("command queue: {op}: {source}")]
    Sqlite { op: &'static str, source: rusqlite::Error },
    /// The request is wrong (answered with 400).
    #[error("{0}")]
    Invalid(String),
    /// The id is taken by a different command (answered with 409).
    #[error("command id {0} is already queued with different content")]
    Conflict(String),
    /// No such command (answered with 404).
    #[error("no command {0}")]
    NotFound(String),
}

trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, CommandError>;
}

impl<T> Op<T> for Result<T, rusqlite::Error> {
    fn op(self, op: &'static str) -> Result<T, CommandError> {
        self.map_err(|source| CommandError::Sqlite { op, source })
    }
}

/// `POST /admin/commands`: queue a command for a box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueCommand {
    /// The box (certificate CN).
    #[serde(rename = "box")]
    pub box_id: String,
    /// The command's id; generated when absent. Queueing the same id and content again is
    /// answered with the command as queued; different content with the same id is a 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub args: serde_json::Value,
    /// Seconds until the command expires ([`DEFAULT_LIFETIME_S`] when absent; at most 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<u64>,
    /// Testing aid: queue this JSON value as the command exactly as given (the other fields
    /// but `box` and `lifetime_s` are then ignored; the value's `id`, if it is a string, names
    /// it). The data center's own expiry comes from `lifetime_s`, so that a command whose
    /// `expires_ms` has passed can still reach the box (which must refuse it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<serde_json::Value>,
}

impl QueueCommand {
    /// A command of `kind` for `box_id` with defaults for the rest.
    pub fn new(box_id: &str, kind: &str) -> QueueCommand {
        QueueCommand {
            box_id: box_id.into(),
            id: None,
            kind: kind.into(),
            target: Vec::new(),
            args: serde_json::Value::Null,
            lifetime_s: None,
            raw: None,
        }
    }
}

/// Where a command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    Queued,
    Delivered,
    Accepted,
    Succeeded,
    Failed,
    Refused,
    /// Its lifetime ended before the box answered.
    Expired,
}

impl CommandState {
    fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Delivered => "delivered",
            CommandState::Accepted => "accepted",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::Refused => "refused",
            CommandState::Expired => "expired",
        }
    }

    fn parse(s: &str) -> CommandState {
        match s {
            "queued" => CommandState::Queued,
            "delivered" => CommandState::Delivered,
            "accepted" => CommandState::Accepted,
            "succeeded" => CommandState::Succeeded,
            "failed" => CommandState::Failed,
            "refused" => CommandState::Refused,
            _ => CommandState::Expired,
        }
    }

    fn of(o: Outcome) -> CommandState {
        match o {
            Outcome::Accepted => CommandState::Accepted,
            Outcome::Succeeded => CommandState::Succeeded,
            Outcome::Failed => CommandState::Failed,
            Outcome::Refused => CommandState::Refused,
        }
    }

    /// Whether the box has said its last word.
    pub fn is_final(self) -> bool {
        matches!(self, CommandState::Succeeded | CommandState::Failed | CommandState::Refused)
    }
}

/// One result as the box reported it, with when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEntry {
    pub outcome: Outcome,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub detail: serde_json::Value,
    /// Box clock.
    pub at_ms: i64,
    /// Data-center clock.
    pub recorded_ms: i64,
}

/// A command and everything known about it (`GET /admin/commands`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: String,
    #[serde(rename = "box")]
    pub box_id: String,
    pub kind: String,
    /// The command exactly as handed to the box.
    pub command: serde_json::Value,
    pub issued_ms: i64,
    pub expires_ms: i64,
    pub state: CommandState,
    /// How many answers carried it.
    pub deliveries: u64,
    pub last_delivered_ms: Option<i64>,
    /// Code and reason of the latest result.
    pub code: String,
    pub reason: String,
    /// Detail of the latest result.
    pub detail: serde_json::Value,
    /// Box time of the latest result.
    pub result_ms: Option<i64>,
    /// Every result reported, in the order recorded.
    pub results: Vec<ResultEntry>,
}

/// `GET /admin/commands?box=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandList {
    pub commands: Vec<CommandRecord>,
    /// Results received about commands this data center does not know (since start).
    pub unknown_results: u64,
}

/// The command queue.
#[derive(Debug)]
pub struct CommandStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Commands in `queued` or `delivered` state, all boxes: when 0, answers skip the lookup.
    open: AtomicU64,
    unknown_results: AtomicU64,
    next: AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl CommandStore {
    /// Opens the tables in the database file at `path` (the data center's, or its own).
    pub fn open(path: &Path) -> Result<CommandStore, CommandError> {
        let err = |source| CommandError::Open { path: path.into(), source };
        let conn = Connection::open(path).map_err(err)?;
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(err)?;
        CommandStore::init(path, conn)
    }

    /// A queue in memory (tests).
    pub fn open_in_memory() -> Result<CommandStore, CommandError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| CommandError::Open { path: path.clone(), source })?;
        CommandStore::init(&path, conn)
    }

    fn init(path: &Path, conn: Connection) -> Result<CommandStore, CommandError> {
        let err = |source| CommandError::Open { path: path.into(), source };
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let found: Option<i64> = conn
            .query_row("SELECT version FROM component_versions WHERE component = 'commands'", [], |r| r.get(0))
            .optional()
            .map_err(err)?;
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(CommandError::TooNew { path: path.into(), found: v, known: SCHEMA_VERSION })
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO component_versions(component, version) VALUES ('commands', ?1)",
                    params![SCHEMA_VERSION],
                )
                .map_err(err)?;
            }
        }
        let s = CommandStore {
            path: path.into(),
            conn: Mutex::new(conn),
            open: AtomicU64::new(0),
            unknown_results: AtomicU64::new(0),
            next: AtomicU64::new(0),
        };
        s.recount()?;
        Ok(s)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recount(&self) -> Result<(), CommandError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM command_queue WHERE state IN ('queued', 'delivered')", [], |r| r.get(0))
            .op("count open commands")?;
        self.open.store(n as u64, Ordering::SeqCst);
        Ok(())
    }

    fn new_id(&self) -> String {
        let mut b = [0u8; 4];
        // Uniqueness, not secrecy: the clock plus a counter suffice when urandom is unreadable.
        let rnd = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .map_or(0, |()| u32::from_le_bytes(b));
        format!("c-{}-{:08x}-{}", now_ms(), rnd, self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues a command; returns it as it will be handed to the box.
    pub fn queue(&self, q: &QueueCommand) -> Result<CommandRecord, CommandError> {
        let now = now_ms();
        if q.box_id.is_empty() || q.box_id.len() > 255 || q.box_id.chars().any(char::is_control) {
            return Err(CommandError::Invalid(format!("box {:?} is not a box identity", q.box_id)));
        }
        let lifetime_ms = q.lifetime_s.unwrap_or(DEFAULT_LIFETIME_S).saturating_mul(1000);
        if lifetime_ms == 0 || lifetime_ms > command::MAX_LIFETIME_MS as u64 {
            return Err(CommandError::Invalid(format!(
                "lifetime_s {} is outside 1..={}",
                lifetime_ms / 1000,
                command::MAX_LIFETIME_MS / 1000
            )));
        }
        let (id, kind, body, issued, expires) = match &q.raw {
            Some(raw) => {
                let id = raw.get("id").and_then(|v| v.as_str()).map_or_else(|| self.new_id(), str::to_owned);
                let kind = raw.get("kind").and_then(|v| v.as_str()).unwrap_or("").to_owned();
                (id, kind, raw.clone(), now, now + lifetime_ms as i64)
            }
            None => {
                let id = q.id.clone().unwrap_or_else(|| self.new_id());
                let c = command::Command {
                    id: id.clone(),
                    kind: q.kind.clone(),
                    issued_ms: now,
                    expires_ms: now + lifetime_ms as i64,
                    target: q.target.clone(),
                    args: q.args.clone(),
                };
                c.check().map_err(CommandError::Invalid)?;
                let body = serde_json::to_value(&c).map_err(|e| CommandError::Invalid(e.to_string()))?;
                (id, q.kind.clone(), body, now, c.expires_ms)
            }
        };
        let size = serde_json::to_vec(&body).map_or(usize::MAX, |b| b.len());
        if q.raw.is_none() && size > command::MAX_COMMAND_BYTES {
            return Err(CommandError::Invalid(format!(
                "command is {size} bytes, more than the limit of {}",
                command::MAX_COMMAND_BYTES
            )));
        }
        if id.is_empty() || id.len() > 255 {
            return Err(CommandError::Invalid(format!("command id {id:?} is empty or too long")));
        }
        let content = body
            .pointer("/args/manifest")
            .and_then(|m| m.as_str())
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .and_then(|m| m.get("sha256").and_then(|s| s.as_str()).map(str::to_ascii_lowercase));
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).op("begin queue")?;
        let existing: Option<(String, String)> = tx
            .query_row("SELECT box, body FROM command_queue WHERE id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .op("look up command id")?;
        if let Some((b, old)) = existing {
            let old: serde_json::Value = serde_json::from_str(&old).unwrap_or_default();
            let same = b == q.box_id
                && match &q.raw {
                    Some(raw) => &old == raw,
                    None => {
                        old.get("kind") == body.get("kind")
                            && old.get("target") == body.get("target")
                            && old.get("args") == body.get("args")
                    }
                };
            drop(tx);
            drop(conn);
            return if same { self.get(&id) } else { Err(CommandError::Conflict(id)) };
        }
        let text = serde_json::to_string(&body).unwrap_or_default();
        tx.execute(
            "INSERT INTO command_queue(id, box, kind, body, issued_ms, expires_ms, state, content_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7)",
            params![id, q.box_id, kind, text, issued, expires, content],
        )
        .op("insert command")?;
        tx.commit().op("commit command")?;
        drop(conn);
        self.open.fetch_add(1, Ordering::SeqCst);
        log::info!("command {id} ({kind}) queued for box {}", q.box_id);
        self.get(&id)
    }

    /// The commands to hand to `box_id` now (marked delivered), at most
    /// [`command::MAX_COMMANDS_PER_ANSWER`]. Cheap when nothing is open for any box.
    pub fn for_delivery(&self, box_id: &str) -> Result<Vec<serde_json::Value>, CommandError> {
        if self.open.load(Ordering::SeqCst) == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).op("begin delivery")?;
        let expired = tx
            .execute(
                "UPDATE command_queue SET state = 'expired' WHERE box = ?1 AND state IN ('queued', 'delivered')
                 AND expires_ms < ?2",
                params![box_id, now],
            )
            .op("expire commands")?;
        let mut out = Vec::new();
        let mut ids = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, body FROM command_queue WHERE box = ?1 AND state IN ('queued', 'delivered')
                     AND (last_delivered_ms IS NULL OR last_delivered_ms <= ?2)
                     ORDER BY issued_ms, id LIMIT ?3",
                )
                .op("prepare delivery")?;
            let mut rows = stmt
                .query(params![box_id, now - REDELIVER_MS, command::MAX_COMMANDS_PER_ANSWER as i64])
                .op("select deliverable")?;
            while let Some(r) = rows.next().op("read deliverable")? {
                let id: String = r.get(0).op("read id")?;
                let body: String = r.get(1).op("read body")?;
                out.push(serde_json::from_str(&body).unwrap_or(serde_json::Value::Null));
                ids.push(id);
            }
        }
        for id in &ids {
            tx.execute(
                "UPDATE command_queue SET state = 'delivered', deliveries = deliveries + 1, last_delivered_ms = ?2
                 WHERE id = ?1",
                params![id, now],
            )
            .op("mark delivered")?;
        }
        tx.commit().op("commit delivery")?;
        drop(conn);
        if expired > 0 {
            log::info!("box {box_id}: {expired} commands expired before the box answered");
            self.recount()?;
        }
        for id in &ids {
            log::info!("command {id} handed to box {box_id}");
        }
        Ok(out)
    }

    /// Records the results `box_id` reported; returns those now durably stored (all of
    /// them that are well formed, including repeats and results about unknown ids).
    pub fn record(&self, box_id: &str, results: &[CommandResult]) -> Result<Vec<Recorded>, CommandError> {
        let now = now_ms();
        let mut recorded = Vec::with_capacity(results.len());
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).op("begin results")?;
        for r in results {
            if let Err(e) = r.check() {
                log::warn!("box {box_id}: result refused: {e}");
                continue;
            }
            let cur: Option<(String, String)> = tx
                .query_row("SELECT box, state FROM command_queue WHERE id = ?1", params![r.id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .op("look up result's command")?;
            let detail = serde_json::to_string(&r.detail).unwrap_or_else(|_| "null".into());
            match cur {
                Some((b, state)) if b == box_id => {
                    tx.execute(
                        "INSERT INTO command_results(id, outcome, code, reason, detail, at_ms, recorded_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![r.id, r.outcome.name(), r.code, r.reason, detail, r.at_ms, now],
                    )
                    .op("insert result")?;
                    let state = CommandState::parse(&state);
                    // The first final result stays; an `accepted` never overtakes a final one.
                    if !state.is_final() {
                        tx.execute(
                            "UPDATE command_queue SET state = ?2, outcome_code = ?3, reason = ?4, detail = ?5,
                             result_ms = ?6 WHERE id = ?1",
                            params![r.id, CommandState::of(r.outcome).as_str(), r.code, r.reason, detail, r.at_ms],
                        )
                        .op("update command state")?;
                    }
                    log::info!(
                        "box {box_id}: command {} {}{}",
                        r.id,
                        r.outcome.name(),
                        if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) }
                    );
                }
                Some((b, _)) => {
                    log::warn!("box {box_id} reported a result about command {} of box {b}; ignored", r.id);
                    self.unknown_results.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    log::warn!("box {box_id} reported a result about unknown command {}; acknowledged", r.id);
                    self.unknown_results.fetch_add(1, Ordering::Relaxed);
                }
            }
            recorded.push(Recorded { id: r.id.clone(), outcome: r.outcome });
        }
        tx.commit().op("commit results")?;
        drop(conn);
        self.recount()?;
        Ok(recorded)
    }

    /// Puts a command back in the queue, as if it had never been delivered (operators: "send
    /// again"; tests: a redelivery the box must answer with its stored result).
    pub fn redeliver(&self, id: &str) -> Result<CommandRecord, CommandError> {
        let n = self
            .conn()
            .execute("UPDATE command_queue SET state = 'queued', last_delivered_ms = NULL WHERE id = ?1", params![id])
            .op("requeue command")?;
        if n == 0 {
            return Err(CommandError::NotFound(id.into()));
        }
        self.recount()?;
        self.get(id)
    }

    /// Whether some command for `box_id` downloads the content with this SHA-256.
    pub fn references_content(&self, box_id: &str, sha256: &str) -> Result<bool, CommandError> {
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM command_queue WHERE box = ?1 AND content_sha256 = ?2",
                params![box_id, sha256.to_ascii_lowercase()],
                |r| r.get(0),
            )
            .op("look up content")?;
        Ok(n > 0)
    }

    /// One command.
    pub fn get(&self, id: &str) -> Result<CommandRecord, CommandError> {
        let mut v = self.select(Some(id), None)?;
        v.pop().ok_or_else(|| CommandError::NotFound(id.into()))
    }

    /// Every command (of one box), oldest first.
    pub fn list(&self, box_id: Option<&str>) -> Result<CommandList, CommandError> {
        Ok(CommandList {
            commands: self.select(None, box_id)?,
            unknown_results: self.unknown_results.load(Ordering::Relaxed),
        })
    }

    fn select(&self, id: Option<&str>, box_id: Option<&str>) -> Result<Vec<CommandRecord>, CommandError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, box, kind, body, issued_ms, expires_ms, state, deliveries, last_delivered_ms,
                        outcome_code, reason, detail, result_ms
                 FROM command_queue WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR box = ?2)
                 ORDER BY issued_ms, id",
            )
            .op("prepare command list")?;
        let rows = stmt
            .query_map(params![id, box_id], |r| {
                let body: String = r.get(3)?;
                let detail: String = r.get(11)?;
                let state: String = r.get(6)?;
                Ok(CommandRecord {
                    id: r.get(0)?,
                    box_id: r.get(1)?,
                    kind: r.get(2)?,
                    command: serde_json::from_str(&body).unwrap_or_default(),
                    issued_ms: r.get(4)?,
                    expires_ms: r.get(5)?,
                    state: CommandState::parse(&state),
                    deliveries: r.get::<_, i64>(7)? as u64,
                    last_delivered_ms: r.get(8)?,
                    code: r.get(9)?,
                    reason: r.get(10)?,
                    detail: serde_json::from_str(&detail).unwrap_or_default(),
                    result_ms: r.get(12)?,
                    results: Vec::new(),
                })
            })
            .op("list commands")?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.op("read command")?);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT outcome, code, reason, detail, at_ms, recorded_ms FROM command_results WHERE id = ?1 ORDER BY seq",
            )
            .op("prepare results")?;
        for c in &mut out {
            let rows = stmt
                .query_map(params![c.id], |r| {
                    let outcome: String = r.get(0)?;
                    let detail: String = r.get(3)?;
                    Ok(ResultEntry {
                        outcome: serde_json::from_value(serde_json::Value::String(outcome)).unwrap_or(Outcome::Failed),
                        code: r.get(1)?,
                        reason: r.get(2)?,
                        detail: serde_json::from_str(&detail).unwrap_or_default(),
                        at_ms: r.get(4)?,
                        recorded_ms: r.get(5)?,
                    })
                })
                .op("read results")?;
            for e in rows {
                c.results.push(e.op("read result")?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn result(id: &str, outcome: Outcome) -> CommandResult {
        CommandResult::new(id, outcome, 5)
    }

    #[test]
    fn queue_deliver_record() {
        let s = CommandStore::open_in_memory().unwrap();
        assert!(s.for_delivery("box-1").unwrap().is_empty());
        let q = QueueCommand { id: Some("c-1".into()), ..QueueCommand::new("box-1", "status") };
        let c = s.queue(&q).unwrap();
        assert_eq!(c.state, CommandState::Queued);
        assert!(c.expires_ms > c.issued_ms);
        assert!(s.for_delivery("box-2").unwrap().is_empty(), "commands are per box");
        let got = s.for_delivery("box-1").unwrap();
        assert_eq!(got.len(), 1);
        let cmd = rapwire::command::Command::from_value(&got[0]).unwrap();
        assert_eq!((cmd.id.as_str(), cmd.kind.as_str()), ("c-1", "status"));
        assert!(s.for_delivery("box-1").unwrap().is_empty(), "not again before REDELIVER_MS");
        assert_eq!(s.get("c-1").unwrap().state, CommandState::Delivered);

        let rec = s.record("box-1", &[result("c-1", Outcome::Accepted)]).unwrap();
        assert_eq!(rec, vec![Recorded { id: "c-1".into(), outcome: Outcome::Accepted }]);
        assert_eq!(s.get("c-1").unwrap().state, CommandState::Accepted);
        let mut done = result("c-1", Outcome::Succeeded);
        done.detail = json!({"ok": 1});
        s.record("box-1", &[done]).unwrap();
        // A repeat (a redelivery answered again) and a stale `accepted` change nothing.
        s.record("box-1", &[result("c-1", Outcome::Failed), result("c-1", Outcome::Accepted)]).unwrap();
        let c = s.get("c-1").unwrap();
        assert_eq!(c.state, CommandState::Succeeded);
        assert_eq!(c.detail, json!({"ok": 1}));
        assert_eq!(c.results.len(), 4);
        assert_eq!(c.deliveries, 1);
    }

    #[test]
    fn same_id_same_content_is_idempotent_other_content_conflicts() {
        let s = CommandStore::open_in_memory().unwrap();
        let q = QueueCommand { id: Some("c-9".into()), ..QueueCommand::new("box-1", "status") };
        let a = s.queue(&q).unwrap();
        assert_eq!(s.queue(&q).unwrap().issued_ms, a.issued_ms);
        let other = QueueCommand { kind: "download".into(), ..q };
        assert!(matches!(s.queue(&other), Err(CommandError::Conflict(_))));
    }

    #[test]
    fn invalid_requests_are_named() {
        let s = CommandStore::open_in_memory().unwrap();
        let e = s.queue(&QueueCommand::new("box-1", "No Such Kind")).unwrap_err();
        assert!(e.to_string().contains("kind \"No Such Kind\""), "{e}");
        let e = s.queue(&QueueCommand { lifetime_s: Some(0), ..QueueCommand::new("box-1", "status") }).unwrap_err();
        assert!(e.to_string().contains("lifetime_s 0"), "{e}");
        let e = s.queue(&QueueCommand::new("", "status")).unwrap_err();
        assert!(e.to_string().contains("not a box identity"), "{e}");
    }

    #[test]
    fn unknown_and_foreign_results_are_acknowledged_and_counted() {
        let s = CommandStore::open_in_memory().unwrap();
        s.queue(&QueueCommand { id: Some("c-1".into()), ..QueueCommand::new("box-1", "status") }).unwrap();
        let rec = s.record("box-2", &[result("c-1", Outcome::Succeeded), result("c-404", Outcome::Failed)]).unwrap();
        assert_eq!(rec.len(), 2);
        assert_eq!(s.get("c-1").unwrap().state, CommandState::Queued);
        assert_eq!(s.list(None).unwrap().unknown_results, 2);
    }

    #[test]
    fn expired_commands_are_not_delivered_and_redeliver_requeues() {
        let s = CommandStore::open_in_memory().unwrap();
        let raw = json!({"id": "c-old", "kind": "status", "issued_ms": 1, "expires_ms": 2});
        s.queue(&QueueCommand { raw: Some(raw), lifetime_s: Some(1), ..QueueCommand::new("box-1", "") }).unwrap();
        s.queue(&QueueCommand {
            id: Some("c-short".into()),
            lifetime_s: Some(1),
            ..QueueCommand::new("box-2", "status")
        })
        .unwrap();
        assert_eq!(s.for_delivery("box-1").unwrap().len(), 1, "raw: the data center's expiry is lifetime_s");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(s.for_delivery("box-2").unwrap().is_empty());
        assert_eq!(s.get("c-short").unwrap().state, CommandState::Expired);

        s.queue(&QueueCommand { id: Some("c-2".into()), ..QueueCommand::new("box-1", "status") }).unwrap();
        assert_eq!(s.for_delivery("box-1").unwrap().len(), 1);
        s.record("box-1", &[result("c-2", Outcome::Succeeded)]).unwrap();
        assert!(s.for_delivery("box-1").unwrap().is_empty());
        s.redeliver("c-2").unwrap();
        assert_eq!(s.for_delivery("box-1").unwrap().len(), 1, "requeued");
        assert!(matches!(s.redeliver("nope"), Err(CommandError::NotFound(_))));
    }

    #[test]
    fn content_references_are_per_box() {
        let s = CommandStore::open_in_memory().unwrap();
        let sha = "ab".repeat(32);
        let manifest = json!({"sha256": sha.to_uppercase(), "name": "x"}).to_string();
        s.queue(&QueueCommand {
            args: json!({"manifest": manifest, "signature": "AA=="}),
            ..QueueCommand::new("box-1", "download")
        })
        .unwrap();
        assert!(s.references_content("box-1", &sha).unwrap());
        assert!(!s.references_content("box-2", &sha).unwrap());
    }

    #[test]
    fn survives_reopen_and_shares_a_file_with_the_report_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let _reports = crate::Store::open(&path).unwrap();
        {
            let s = CommandStore::open(&path).unwrap();
            s.queue(&QueueCommand { id: Some("c-1".into()), ..QueueCommand::new("box-1", "status") }).unwrap();
        }
        let s = CommandStore::open(&path).unwrap();
        assert_eq!(s.for_delivery("box-1").unwrap().len(), 1, "the open count is rebuilt at start");
        let _again = crate::Store::open(&path).unwrap();
    }
}
