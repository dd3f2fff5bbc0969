//! Read-only queries for the staff dashboard ([`crate::dashboard`]): the newest report of
//! every instrument, the most recent reports, and the command queue's open commands.
//!
//! The command queue's tables (`command_queue`) belong to the command channel; the
//! dashboard only reads them, and renders "no command queue" when the database has none.

use rusqlite::{params, OptionalExtension};

use super::{report_from_row, Op, Store, StoreError, REPORT_COLUMNS};
use crate::api::Report;

/// One command as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    /// Command id.
    pub id: String,
    /// Box it is queued for.
    pub box_id: String,
    /// Command kind (`download`, `upload`, `configure`, `session...`).
    pub kind: String,
    /// `queued`, `delivered`, `accepted`, `succeeded`, `failed`, `refused`, `expired`.
    pub state: String,
    /// Data center time it was queued.
    pub issued_ms: i64,
    /// Data center time it expires.
    pub expires_ms: i64,
    /// How many answers carried it to the box.
    pub deliveries: u64,
    /// Reason given with the latest result ("" when none).
    pub reason: String,
}

/// Commands still in progress: `queued`, `delivered`, `accepted`.
const OPEN_STATES: &str = "('queued', 'delivered', 'accepted')";

impl Store {
    /// The newest report (highest message id) of every instrument, by box and instrument.
    pub fn latest_reports(&self) -> Result<Vec<Report>, StoreError> {
        let conn = self.conn();
        let mut sources =
            conn.prepare_cached("SELECT id FROM sources ORDER BY box, instrument").op("prepare instrument list")?;
        let ids = sources
            .query_map([], |r| r.get::<_, i64>(0))
            .op("query instrument list")?
            .collect::<Result<Vec<_>, _>>()
            .op("read instrument list")?;
        // One index lookup per instrument on UNIQUE(source, msg_id).
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports WHERE source = ?1 ORDER BY msg_id DESC LIMIT 1"
            ))
            .op("prepare latest report")?;
        let mut out = Vec::new();
        for id in ids {
            let mut rows = stmt.query(params![id]).op("query latest report")?;
            if let Some(r) = rows.next().op("read latest report")? {
                out.push(report_from_row(r)?);
            }
        }
        Ok(out)
    }

    /// The `limit` most recently stored reports, newest first.
    pub fn recent_reports(&self, limit: u32) -> Result<Vec<Report>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {REPORT_COLUMNS} FROM reports ORDER BY id DESC LIMIT ?1"))
            .op("prepare recent reports")?;
        let mut rows = stmt.query(params![limit]).op("query recent reports")?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().op("read recent report")? {
            out.push(report_from_row(r)?);
        }
        Ok(out)
    }

    /// Commands of the command queue, newest first: those still in progress, then up to
    /// `finished` that have ended. `None` when this database has no command queue.
    pub fn dashboard_commands(&self, finished: u32) -> Result<Option<Vec<CommandRow>>, StoreError> {
        let conn = self.conn();
        let present = conn
            .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'command_queue'", [], |_| Ok(()))
            .optional()
            .op("look for the command queue")?;
        if present.is_none() {
            return Ok(None);
        }
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT id, box, kind, state, issued_ms, expires_ms, deliveries, reason FROM (
                     SELECT *, 0 AS part FROM command_queue WHERE state IN {OPEN_STATES}
                     UNION ALL
                     SELECT * FROM (SELECT *, 1 AS part FROM command_queue WHERE state NOT IN {OPEN_STATES}
                                    ORDER BY issued_ms DESC LIMIT ?1))
                 ORDER BY part, issued_ms DESC, id"
            ))
            .op("prepare command list")?;
        let rows = stmt
            .query_map(params![finished], |r| {
                Ok(CommandRow {
                    id: r.get(0)?,
                    box_id: r.get(1)?,
                    kind: r.get(2)?,
                    state: r.get(3)?,
                    issued_ms: r.get(4)?,
                    expires_ms: r.get(5)?,
                    deliveries: r.get::<_, i64>(6)? as u64,
                    reason: r.get(7)?,
                })
            })
            .op("query command list")?;
        rows.map(|r| r.op("read command")).collect::<Result<Vec<_>, _>>().map(Some)
    }
}
