//! The dispatcher's memory: one SQLite file (`commands.db` beside the queue; only the
//! dispatcher opens it), `synchronous=FULL`, one row per command id ever received.
//!
//! A row is written before its command starts (so a redelivery after a crash is recognised
//! and the command is not run a second time) and holds the command's latest result until
//! the data center has recorded it (`reported`). Rows are kept until the command's lifetime
//! is well over (a command cannot be delivered after it expired, and one that is would be
//! refused as expired anyway).

use std::path::{Path, PathBuf};

use rapwire::command::{Command, CommandResult, Outcome};
use rusqlite::{params, Connection, OptionalExtension};

/// Rows of finished and reported commands are deleted this long after their expiry.
pub const KEEP_AFTER_EXPIRY_MS: i64 = 24 * 3600 * 1000;
const SCHEMA_VERSION: i64 = 1;

/// A failure of the dispatcher's database, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("command database {path}: {op}: {source}")]
    Sqlite { path: PathBuf, op: &'static str, source: rusqlite::Error },
    #[error("command database {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("command database {path}: schema version {found} is newer than this rapd understands ({SCHEMA_VERSION})")]
    FutureSchema { path: PathBuf, found: i64 },
}

/// Where a command is in its life on the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Received and stored; waiting for a free slot.
    Pending,
    /// Its handler was started (after a restart: its handler decides what happens).
    Running,
    /// It has its final result.
    Done,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Done => "done",
        }
    }
    fn parse(s: &str) -> State {
        match s {
            "pending" => State::Pending,
            "running" => State::Running,
            _ => State::Done,
        }
    }
}

/// One row.
#[derive(Debug, Clone)]
pub struct Row {
    /// The command (absent for a malformed one that was refused by id).
    pub command: Option<Command>,
    pub state: State,
    pub result: Option<CommandResult>,
    pub reported: bool,
}

pub struct Store {
    path: PathBuf,
    conn: Connection,
}

impl Store {
    /// Opens (creating) the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let e = |op| move |source| StoreError::Sqlite { path: path.into(), op, source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.into(), source })?;
        }
        let conn = Connection::open(path).map_err(e("open"))?;
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(e("journal mode"))?;
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS commands(
                 id TEXT PRIMARY KEY,
                 kind TEXT NOT NULL,
                 body TEXT,
                 received_ms INTEGER NOT NULL,
                 expires_ms INTEGER NOT NULL,
                 state TEXT NOT NULL,
                 result TEXT,
                 reported INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX IF NOT EXISTS commands_unreported ON commands(reported) WHERE reported = 0;",
        )
        .map_err(e("create tables"))?;
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(e("user_version"))?;
        if v > SCHEMA_VERSION {
            return Err(StoreError::FutureSchema { path: path.into(), found: v });
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(e("user_version"))?;
        Ok(Store { path: path.into(), conn })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite { path: self.path.clone(), op, source }
    }

    /// The row of `id`, if it was ever received.
    pub fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        self.conn
            .query_row("SELECT body, state, result, reported FROM commands WHERE id = ?1", params![id], |r| {
                Ok((r.get::<_, Option<String>>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get(3)?))
            })
            .optional()
            .map_err(self.err("look up command"))
            .map(|o| {
                o.map(|(body, state, result, reported): (_, _, _, i64)| Row {
                    command: body.and_then(|b| serde_json::from_str(&b).ok()),
                    state: State::parse(&state),
                    result: result.and_then(|r| serde_json::from_str(&r).ok()),
                    reported: reported != 0,
                })
            })
    }

    /// Stores a new command in `state`.
    pub fn insert(&self, cmd: &Command, state: State, now_ms: i64) -> Result<(), StoreError> {
        let body = serde_json::to_string(cmd).unwrap_or_default();
        self.conn
            .execute(
                "INSERT INTO commands(id, kind, body, received_ms, expires_ms, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![cmd.id, cmd.kind, body, now_ms, cmd.expires_ms, state.as_str()],
            )
            .map_err(self.err("insert command"))
            .map(drop)
    }

    /// Stores a refusal of a command that could not be decoded (only its id is known).
    pub fn insert_refused(&self, result: &CommandResult, now_ms: i64) -> Result<(), StoreError> {
        let text = serde_json::to_string(result).unwrap_or_default();
        self.conn
            .execute(
                "INSERT INTO commands(id, kind, body, received_ms, expires_ms, state, result, reported)
                 VALUES (?1, '', NULL, ?2, ?2, 'done', ?3, 0)
                 ON CONFLICT(id) DO UPDATE SET result = excluded.result, state = 'done', reported = 0",
                params![result.id, now_ms, text],
            )
            .map_err(self.err("insert refusal"))
            .map(drop)
    }

    pub fn set_state(&self, id: &str, state: State) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE commands SET state = ?2 WHERE id = ?1", params![id, state.as_str()])
            .map_err(self.err("update state"))
            .map(drop)
    }

    /// Stores `result` as the command's latest (unreported) result; a final result also ends
    /// the command. A final result is never replaced (returns false then).
    pub fn set_result(&self, result: &CommandResult) -> Result<bool, StoreError> {
        let text = serde_json::to_string(result).unwrap_or_default();
        let state = if result.outcome.is_final() { State::Done } else { State::Running };
        let n = self
            .conn
            .execute(
                "UPDATE commands SET result = ?2, state = ?3, reported = 0 WHERE id = ?1 AND state != 'done'",
                params![result.id, text, state.as_str()],
            )
            .map_err(self.err("store result"))?;
        Ok(n == 1)
    }

    /// Marks the stored result of `id` for reporting again (a redelivered command).
    pub fn report_again(&self, id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE commands SET reported = 0 WHERE id = ?1 AND result IS NOT NULL", params![id])
            .map_err(self.err("report again"))
            .map(drop)
    }

    /// Results the data center has not recorded yet, oldest command first.
    pub fn unreported(&self, max: usize) -> Result<Vec<CommandResult>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT result FROM commands WHERE reported = 0 AND result IS NOT NULL ORDER BY received_ms, id LIMIT ?1",
            )
            .map_err(self.err("prepare unreported"))?;
        let rows =
            stmt.query_map(params![max as i64], |r| r.get::<_, String>(0)).map_err(self.err("select unreported"))?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(res) = serde_json::from_str(&r.map_err(self.err("read unreported"))?) {
                out.push(res);
            }
        }
        Ok(out)
    }

    /// How many results wait for the data center.
    pub fn unreported_count(&self) -> Result<usize, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM commands WHERE reported = 0 AND result IS NOT NULL", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(self.err("count unreported"))
    }

    /// The data center recorded `outcome` for `id`: stop reporting it, unless a newer
    /// result replaced it meanwhile.
    pub fn mark_reported(&self, id: &str, outcome: Outcome) -> Result<(), StoreError> {
        let name = format!("\"outcome\":\"{}\"", outcome.name());
        self.conn
            .execute("UPDATE commands SET reported = 1 WHERE id = ?1 AND instr(result, ?2) > 0", params![id, name])
            .map_err(self.err("mark reported"))
            .map(drop)
    }

    /// Marks `result` reported if it is still the stored result of its command (a newer
    /// progress update stored while `result` was on its way stays unreported).
    pub fn mark_reported_exact(&self, result: &CommandResult) -> Result<(), StoreError> {
        let text = serde_json::to_string(result).unwrap_or_default();
        self.conn
            .execute("UPDATE commands SET reported = 1 WHERE id = ?1 AND result = ?2", params![result.id, text])
            .map_err(self.err("mark reported"))
            .map(drop)
    }

    /// Commands in `state`, oldest first.
    pub fn in_state(&self, state: State) -> Result<Vec<Command>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM commands WHERE state = ?1 AND body IS NOT NULL ORDER BY received_ms, id")
            .map_err(self.err("prepare state query"))?;
        let rows =
            stmt.query_map(params![state.as_str()], |r| r.get::<_, String>(0)).map_err(self.err("state query"))?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(c) = serde_json::from_str(&r.map_err(self.err("read command"))?) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Counts per state and the total ever received (kept rows).
    pub fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.conn
            .query_row("SELECT COUNT(*), SUM(state = 'pending'), SUM(state = 'running') FROM commands", [], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                    r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                ))
            })
            .map_err(self.err("count commands"))
    }

    /// Deletes finished, reported rows whose lifetime ended long ago; returns how many.
    pub fn prune(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM commands WHERE state = 'done' AND reported = 1 AND expires_ms < ?1",
                params![now_ms - KEEP_AFTER_EXPIRY_MS],
            )
            .map_err(self.err("prune"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(id: &str) -> Command {
        Command {
            id: id.into(),
            kind: "status".into(),
            issued_ms: 1,
            expires_ms: 1000,
            target: vec![],
            args: serde_json::Value::Null,
        }
    }

    #[test]
    fn lifecycle_and_reporting() {
        let dir = std::env::temp_dir().join(format!("rapd-cmdstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir.join("commands.db")).unwrap();
        s.insert(&cmd("a"), State::Running, 10).unwrap();
        assert!(s.get("b").unwrap().is_none());
        assert_eq!(s.get("a").unwrap().unwrap().state, State::Running);
        assert!(s.set_result(&CommandResult::new("a", Outcome::Accepted, 11)).unwrap());
        assert_eq!(s.unreported_count().unwrap(), 1);
        assert!(s.set_result(&CommandResult::new("a", Outcome::Succeeded, 12)).unwrap());
        // The accepted result was recorded after the final one replaced it: still unreported.
        s.mark_reported("a", Outcome::Accepted).unwrap();
        assert_eq!(s.unreported(10).unwrap()[0].outcome, Outcome::Succeeded);
        s.mark_reported("a", Outcome::Succeeded).unwrap();
        assert_eq!(s.unreported_count().unwrap(), 0);
        assert!(!s.set_result(&CommandResult::new("a", Outcome::Failed, 13)).unwrap(), "final results stay");
        s.report_again("a").unwrap();
        assert_eq!(s.unreported(10).unwrap()[0].outcome, Outcome::Succeeded);
        s.mark_reported("a", Outcome::Succeeded).unwrap();
        assert_eq!(s.prune(1000).unwrap(), 0);
        assert_eq!(s.prune(1001 + KEEP_AFTER_EXPIRY_MS).unwrap(), 1);

        // A progress update stored while the previous one was on its way is reported next.
        s.insert(&cmd("p"), State::Running, 20).unwrap();
        let mut first = CommandResult::new("p", Outcome::Accepted, 21);
        first.detail = serde_json::json!({ "phase": "connecting" });
        s.set_result(&first).unwrap();
        let sent = s.unreported(10).unwrap().remove(0);
        let mut second = CommandResult::new("p", Outcome::Accepted, 22);
        second.detail = serde_json::json!({ "phase": "up" });
        s.set_result(&second).unwrap();
        s.mark_reported_exact(&sent).unwrap();
        assert_eq!(s.unreported(10).unwrap(), vec![second.clone()]);
        s.mark_reported_exact(&second).unwrap();
        assert_eq!(s.unreported_count().unwrap(), 0);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
