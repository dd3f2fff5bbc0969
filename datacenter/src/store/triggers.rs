//! The trigger engine's tables: alerts, evaluation state, the evaluation cursor and the
//! fingerprints of the rules the state belongs to.
//!
//! These tables have their own schema version (row `triggers` of `component_versions`), so
//! that they evolve independently of the report tables' `user_version`.
//!
//! * `alerts`: every alert ever raised; at most one open alert per `(rule, box, instrument,
//!   key)`, enforced by a partial unique index. Evidence is JSON ([`crate::api::Evidence`]).
//! * `trigger_state`: per `(rule, box, instrument, key)` the engine's state as JSON (opaque
//!   here; [`crate::triggers`] owns its shape).
//! * `trigger_progress`: the id of the last report evaluated and the time of the last
//!   clock tick. The engine writes state, alerts and progress in one transaction
//!   ([`Store::trigger_tx`]): a report is evaluated exactly once, also across a crash.
//! * `trigger_rules`: the fingerprint of each rule the state was built with.
//!
//! A database that already holds reports when these tables are created starts evaluating
//! after its newest report: rules apply to reports stored after they were first loaded.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{report_from_row, Op, Store, StoreError, REPORT_COLUMNS};
use crate::api::{Alert, AlertPage, AlertQuery, AlertState, Evidence, EvidenceReport, Report, Severity};

/// Version of the trigger tables, in `component_versions`.
pub const TRIGGERS_SCHEMA_VERSION: i64 = 1;

const TRIGGERS_V1: &str = "
CREATE TABLE alerts (
    id           INTEGER PRIMARY KEY,
    rule         TEXT NOT NULL,
    rule_kind    TEXT NOT NULL,
    severity     TEXT NOT NULL,
    box          TEXT NOT NULL,
    instrument   TEXT NOT NULL,
    key          TEXT NOT NULL,
    summary      TEXT NOT NULL,
    evidence     TEXT NOT NULL,
    raised_ms    INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    repeats      INTEGER NOT NULL DEFAULT 0,
    cleared_ms   INTEGER,
    clear_reason TEXT,
    cleared_by   TEXT
);
CREATE UNIQUE INDEX alerts_one_open ON alerts (rule, box, instrument, key) WHERE cleared_ms IS NULL;

CREATE TABLE trigger_state (
    rule       TEXT NOT NULL,
    box        TEXT NOT NULL,
    instrument TEXT NOT NULL,
    key        TEXT NOT NULL,
    state      TEXT NOT NULL,
    PRIMARY KEY (rule, box, instrument, key)
) WITHOUT ROWID;

CREATE TABLE trigger_rules (
    rule        TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE trigger_progress (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    evaluated_report_id INTEGER NOT NULL,
    last_tick_ms        INTEGER NOT NULL
);
";

/// Creates or upgrades the trigger tables (called by [`Store`] when it opens).
pub(super) fn migrate(path: &Path, conn: &mut Connection) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_owned(), source };
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS component_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL);",
    )
    .map_err(open_err)?;
    let version: i64 = conn
        .query_row("SELECT version FROM component_versions WHERE component = 'triggers'", [], |r| r.get(0))
        .optional()
        .map_err(open_err)?
        .unwrap_or(0);
    if version > TRIGGERS_SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { path: path.to_owned(), found: version, known: TRIGGERS_SCHEMA_VERSION });
    }
    if version < 1 {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(open_err)?;
        tx.execute_batch(TRIGGERS_V1).map_err(open_err)?;
        tx.execute(
            "INSERT INTO trigger_progress (id, evaluated_report_id, last_tick_ms)
             SELECT 1, COALESCE(MAX(id), 0), 0 FROM reports",
            [],
        )
        .map_err(open_err)?;
        tx.execute("INSERT OR REPLACE INTO component_versions (component, version) VALUES ('triggers', 1)", [])
            .map_err(open_err)?;
        tx.commit().map_err(open_err)?;
    }
    Ok(())
}

/// Empties the trigger tables in the store's reset transaction (report ids restart, so
/// evaluation does too). Rule fingerprints stay: the rules have not changed.
pub(super) fn reset(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "DELETE FROM alerts; DELETE FROM trigger_state;
         UPDATE trigger_progress SET evaluated_report_id = 0, last_tick_ms = 0;",
    )
    .op("reset trigger tables")
}

/// A new alert for [`TriggerTx::raise`].
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    /// Rule name.
    pub rule: &'a str,
    /// Rule kind name.
    pub rule_kind: &'a str,
    /// Severity.
    pub severity: Severity,
    /// Box.
    pub box_id: &'a str,
    /// Instrument.
    pub instrument: &'a str,
    /// Field or value within the instrument.
    pub key: &'a str,
    /// One line.
    pub summary: String,
    /// What matched.
    pub evidence: Evidence,
    /// Data center time.
    pub now_ms: i64,
}

/// The trigger engine's view of one transaction ([`Store::trigger_tx`]).
#[derive(Debug)]
pub struct TriggerTx<'a> {
    tx: Transaction<'a>,
}

/// A source of reports of one kind, as the counters know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Box.
    pub box_id: String,
    /// Instrument serial.
    pub instrument: String,
    /// Report kind (wire value).
    pub kind: u8,
    /// Data center time of the latest report of this kind.
    pub last_received_ms: i64,
    /// Largest instrument time seen for this kind.
    pub last_timestamp_ms: i64,
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Our own plain structs always serialize.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

impl TriggerTx<'_> {
    /// `(evaluated_report_id, last_tick_ms)`.
    pub fn progress(&self) -> Result<(u64, i64), StoreError> {
        self.tx
            .prepare_cached("SELECT evaluated_report_id, last_tick_ms FROM trigger_progress WHERE id = 1")
            .op("prepare progress")?
            .query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)))
            .op("read progress")
    }

    /// Records that reports up to `id` are evaluated.
    pub fn set_evaluated(&self, id: u64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE trigger_progress SET evaluated_report_id = ?1 WHERE id = 1")
            .op("prepare cursor")?
            .execute(params![id as i64])
            .op("move cursor")
            .map(drop)
    }

    /// Records the time of a clock tick.
    pub fn set_last_tick(&self, ms: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE trigger_progress SET last_tick_ms = ?1 WHERE id = 1")
            .op("prepare tick")?
            .execute(params![ms])
            .op("record tick")
            .map(drop)
    }

    /// The newest stored report id (0 when none).
    pub fn max_report_id(&self) -> Result<u64, StoreError> {
        max_report_id(&self.tx)
    }

    /// Up to `limit` reports after `id`, in arrival order.
    pub fn reports_after(&self, id: u64, limit: u32) -> Result<Vec<Report>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(&format!("SELECT {REPORT_COLUMNS} FROM reports WHERE id > ?1 ORDER BY id LIMIT ?2"))
            .op("prepare pending reports")?;
        let mut rows = stmt.query(params![id as i64, limit]).op("query pending reports")?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().op("read pending report")? {
            out.push(report_from_row(r)?);
        }
        Ok(out)
    }

    /// The states of one rule for one instrument: `(key, json)`.
    pub fn states(&self, rule: &str, box_id: &str, instrument: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT key, state FROM trigger_state WHERE rule = ?1 AND box = ?2 AND instrument = ?3")
            .op("prepare state lookup")?;
        let rows =
            stmt.query_map(params![rule, box_id, instrument], |r| Ok((r.get(0)?, r.get(1)?))).op("query state")?;
        rows.map(|r| r.op("read state")).collect()
    }

    /// Every state of one rule: `(box, instrument, key, json)`.
    pub fn rule_states(&self, rule: &str) -> Result<Vec<(String, String, String, String)>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT box, instrument, key, state FROM trigger_state WHERE rule = ?1")
            .op("prepare rule states")?;
        let rows = stmt
            .query_map(params![rule], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .op("query rule states")?;
        rows.map(|r| r.op("read rule state")).collect()
    }

    /// Stores one state.
    pub fn put_state(
        &self,
        rule: &str,
        box_id: &str,
        instrument: &str,
        key: &str,
        json: &str,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO trigger_state (rule, box, instrument, key, state) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (rule, box, instrument, key) DO UPDATE SET state = excluded.state",
            )
            .op("prepare state write")?
            .execute(params![rule, box_id, instrument, key, json])
            .op("write state")
            .map(drop)
    }

    /// The id of the open alert of one unit, if any.
    pub fn open_alert_id(
        &self,
        rule: &str,
        box_id: &str,
        instrument: &str,
        key: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.tx
            .prepare_cached(
                "SELECT id FROM alerts WHERE rule = ?1 AND box = ?2 AND instrument = ?3 AND key = ?4 AND cleared_ms IS NULL",
            )
            .op("prepare open alert lookup")?
            .query_row(params![rule, box_id, instrument, key], |r| r.get::<_, i64>(0))
            .optional()
            .op("look up open alert")
            .map(|id| id.map(|i| i as u64))
    }

    /// Raises an alert and returns its id; when the unit already has an open alert (which
    /// the engine's state should have known), that one counts a repeat instead.
    pub fn raise(&self, a: &NewAlert<'_>) -> Result<u64, StoreError> {
        if let Some(id) = self.open_alert_id(a.rule, a.box_id, a.instrument, a.key)? {
            self.repeat(id, a.now_ms)?;
            return Ok(id);
        }
        self.tx
            .prepare_cached(
                "INSERT INTO alerts (rule, rule_kind, severity, box, instrument, key, summary, evidence, raised_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
            )
            .op("prepare alert insert")?
            .execute(params![
                a.rule,
                a.rule_kind,
                a.severity.name(),
                a.box_id,
                a.instrument,
                a.key,
                a.summary,
                to_json(&a.evidence),
                a.now_ms
            ])
            .op("insert alert")?;
        Ok(self.tx.last_insert_rowid() as u64)
    }

    /// Counts one more match of an open alert.
    pub fn repeat(&self, id: u64, now_ms: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE alerts SET repeats = repeats + 1, updated_ms = ?2 WHERE id = ?1 AND cleared_ms IS NULL",
            )
            .op("prepare alert repeat")?
            .execute(params![id as i64, now_ms])
            .op("count alert repeat")
            .map(drop)
    }

    /// Clears an open alert.
    pub fn clear(&self, id: u64, now_ms: i64, reason: &str, by: Option<&EvidenceReport>) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE alerts SET cleared_ms = ?2, clear_reason = ?3, cleared_by = ?4 WHERE id = ?1 AND cleared_ms IS NULL",
            )
            .op("prepare alert clear")?
            .execute(params![id as i64, now_ms, reason, by.map(to_json)])
            .op("clear alert")
            .map(drop)
    }

    /// The open alerts of one rule: `(id, box, instrument, key)`.
    pub fn open_alerts_of_rule(&self, rule: &str) -> Result<Vec<(u64, String, String, String)>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT id, box, instrument, key FROM alerts WHERE rule = ?1 AND cleared_ms IS NULL ORDER BY id",
            )
            .op("prepare open alerts of rule")?;
        let rows = stmt
            .query_map(params![rule], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?)))
            .op("query open alerts of rule")?;
        rows.map(|r| r.op("read open alert")).collect()
    }

    /// Every `(box, instrument, kind)` that ever reported, with its latest arrival time.
    pub fn sources(&self) -> Result<Vec<Source>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT box, instrument, kind, last_received_ms, last_timestamp_ms FROM instrument_kinds ORDER BY box, instrument",
            )
            .op("prepare sources")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Source {
                    box_id: r.get(0)?,
                    instrument: r.get(1)?,
                    kind: r.get::<_, i64>(2)? as u8,
                    last_received_ms: r.get(3)?,
                    last_timestamp_ms: r.get(4)?,
                })
            })
            .op("query sources")?;
        rows.map(|r| r.op("read source")).collect()
    }

    /// The fingerprint each rule's state was built with.
    pub fn rule_fingerprints(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let mut stmt =
            self.tx.prepare_cached("SELECT rule, fingerprint FROM trigger_rules").op("prepare fingerprints")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).op("query fingerprints")?;
        rows.map(|r| r.op("read fingerprint")).collect()
    }

    /// Records the fingerprint of a rule.
    pub fn set_rule_fingerprint(&self, rule: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO trigger_rules (rule, fingerprint) VALUES (?1, ?2)
                 ON CONFLICT (rule) DO UPDATE SET fingerprint = excluded.fingerprint",
            )
            .op("prepare fingerprint write")?
            .execute(params![rule, fingerprint])
            .op("write fingerprint")
            .map(drop)
    }

    /// Drops the state and the fingerprint of a rule (its alerts stay, as history).
    pub fn forget_rule(&self, rule: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM trigger_state WHERE rule = ?1", params![rule]).op("drop rule state")?;
        self.tx.execute("DELETE FROM trigger_rules WHERE rule = ?1", params![rule]).op("drop rule fingerprint")?;
        Ok(())
    }
}

fn max_report_id(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT COALESCE(MAX(id), 0) FROM reports")
        .op("prepare max report id")?
        .query_row([], |r| r.get::<_, i64>(0))
        .op("read max report id")
        .map(|v| v as u64)
}

const ALERT_COLUMNS: &str =
    "id, rule, rule_kind, severity, box, instrument, key, summary, evidence, raised_ms, updated_ms,
     repeats, cleared_ms, clear_reason, cleared_by";

fn alert_from_row(r: &rusqlite::Row<'_>) -> Result<Alert, StoreError> {
    let read = |e| StoreError::Sqlite { op: "read alert", source: e };
    let id = r.get::<_, i64>(0).map_err(read)? as u64;
    let bad = |what: &str, e: String| StoreError::BadAlert { id, why: format!("{what}: {e}") };
    let severity: String = r.get(3).map_err(read)?;
    let severity = serde_json::from_value::<Severity>(serde_json::Value::String(severity.clone()))
        .map_err(|e| bad("severity", format!("{severity:?}: {e}")))?;
    let evidence: String = r.get(8).map_err(read)?;
    let evidence: Evidence = serde_json::from_str(&evidence).map_err(|e| bad("evidence", e.to_string()))?;
    let cleared_ms: Option<i64> = r.get(12).map_err(read)?;
    let cleared_by: Option<String> = r.get(14).map_err(read)?;
    let cleared_by = cleared_by
        .map(|s| serde_json::from_str::<EvidenceReport>(&s))
        .transpose()
        .map_err(|e| bad("cleared_by", e.to_string()))?;
    Ok(Alert {
        id,
        rule: r.get(1).map_err(read)?,
        rule_kind: r.get(2).map_err(read)?,
        severity,
        box_id: r.get(4).map_err(read)?,
        instrument: r.get(5).map_err(read)?,
        key: r.get(6).map_err(read)?,
        summary: r.get(7).map_err(read)?,
        state: if cleared_ms.is_some() { AlertState::Cleared } else { AlertState::Open },
        raised_ms: r.get(9).map_err(read)?,
        updated_ms: r.get(10).map_err(read)?,
        repeats: r.get::<_, i64>(11).map_err(read)? as u64,
        cleared_ms,
        clear_reason: r.get(13).map_err(read)?,
        cleared_by,
        evidence,
    })
}

/// Where the trigger engine stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TriggerProgress {
    /// Reports up to this id are evaluated.
    pub evaluated_report_id: u64,
    /// The newest stored report.
    pub stored_report_id: u64,
    /// The last clock tick (0 before the first).
    pub last_tick_ms: i64,
}

impl Store {
    /// Runs `f` in one immediate transaction over the trigger tables and commits when it
    /// returns `Ok` (rolls back otherwise). Ingest waits meanwhile: keep `f` short.
    pub fn trigger_tx<R>(&self, f: impl FnOnce(&TriggerTx<'_>) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).op("begin trigger transaction")?;
        let t = TriggerTx { tx };
        let r = f(&t)?;
        t.tx.commit().op("commit trigger transaction")?;
        Ok(r)
    }

    /// Alerts after `q.since_id`, ascending, filtered.
    pub fn alerts(&self, q: &AlertQuery) -> Result<AlertPage, StoreError> {
        let conn = self.conn();
        let state = q.state.map(AlertState::name);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts
                 WHERE id > ?1
                   AND (?2 IS NULL OR (?2 = 'open') = (cleared_ms IS NULL))
                   AND (?3 IS NULL OR box = ?3) AND (?4 IS NULL OR instrument = ?4) AND (?5 IS NULL OR rule = ?5)
                 ORDER BY id LIMIT ?6"
            ))
            .op("prepare alert query")?;
        let since = i64::try_from(q.since_id).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query(params![since, state, q.box_id, q.instrument, q.rule, q.effective_limit()])
            .op("query alerts")?;
        let mut alerts = Vec::new();
        while let Some(r) = rows.next().op("read alert")? {
            alerts.push(alert_from_row(r)?);
        }
        let last_id = alerts.last().map_or(q.since_id, |a| a.id);
        Ok(AlertPage { alerts, last_id })
    }

    /// The most recently cleared alerts, newest first.
    pub fn recently_cleared_alerts(&self, limit: u32) -> Result<Vec<Alert>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE cleared_ms IS NOT NULL ORDER BY cleared_ms DESC, id DESC LIMIT ?1"
            ))
            .op("prepare cleared alerts")?;
        let mut rows = stmt.query(params![limit]).op("query cleared alerts")?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().op("read alert")? {
            out.push(alert_from_row(r)?);
        }
        Ok(out)
    }

    /// Open alerts per rule.
    pub fn open_alert_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT rule, COUNT(*) FROM alerts WHERE cleared_ms IS NULL GROUP BY rule")
            .op("prepare open alert counts")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))).op("query open alert counts")?;
        rows.map(|r| r.op("read open alert count")).collect()
    }

    /// Where the trigger engine stands.
    pub fn trigger_progress(&self) -> Result<TriggerProgress, StoreError> {
        let conn = self.conn();
        let (evaluated, last_tick) = conn
            .prepare_cached("SELECT evaluated_report_id, last_tick_ms FROM trigger_progress WHERE id = 1")
            .op("prepare progress")?
            .query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)))
            .op("read progress")?;
        Ok(TriggerProgress {
            evaluated_report_id: evaluated,
            stored_report_id: max_report_id(&conn)?,
            last_tick_ms: last_tick,
        })
    }
}

#[cfg(test)]
mod tests {
    use rapwire::batch::{Batch, Record};
    use rapwire::Kind;

    use super::*;

    fn new_alert(key: &str) -> NewAlert<'_> {
        NewAlert {
            rule: "r",
            rule_kind: "threshold",
            severity: Severity::Critical,
            box_id: "box-1",
            instrument: "A-1",
            key,
            summary: "s".into(),
            evidence: Evidence { detail: "d".into(), matched: 1, ..Default::default() },
            now_ms: 10,
        }
    }

    #[test]
    fn one_open_alert_per_unit() {
        let s = Store::open_in_memory().unwrap();
        let (a, b) = s.trigger_tx(|t| Ok((t.raise(&new_alert("x"))?, t.raise(&new_alert("x"))?))).unwrap();
        assert_eq!(a, b, "a second raise of an open unit is a repeat");
        let c = s.trigger_tx(|t| t.raise(&new_alert("y"))).unwrap();
        assert_ne!(a, c);
        s.trigger_tx(|t| t.clear(a, 20, "gone", None)).unwrap();
        let d = s.trigger_tx(|t| t.raise(&new_alert("x"))).unwrap();
        assert!(d > c, "after clearing, a new alert");
        let all = s.alerts(&AlertQuery::default()).unwrap().alerts;
        assert_eq!(all.len(), 3);
        assert_eq!((all[0].state, all[0].repeats, all[0].cleared_ms), (AlertState::Cleared, 1, Some(20)));
        assert_eq!(all[0].severity, Severity::Critical);
        let open = s.alerts(&AlertQuery::open()).unwrap().alerts;
        assert_eq!(open.iter().map(|a| a.id).collect::<Vec<_>>(), vec![c, d]);
        let cleared = s.alerts(&AlertQuery { state: Some(AlertState::Cleared), ..Default::default() }).unwrap();
        assert_eq!(cleared.alerts.len(), 1);
        assert_eq!(s.open_alert_counts().unwrap().get("r"), Some(&2));
        let other = s.alerts(&AlertQuery { rule: Some("nope".into()), ..Default::default() }).unwrap();
        assert!(other.alerts.is_empty());
        assert_eq!(s.recently_cleared_alerts(5).unwrap()[0].id, a);
    }

    #[test]
    fn existing_reports_are_not_evaluated_and_reset_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let rec = |id| Record {
            instrument: "A-1".into(),
            msg_id: id,
            timestamp_ms: 1,
            kind: Kind::Status,
            priority: 2,
            payload: b"temp=1".to_vec(),
        };
        {
            let s = Store::open(&path).unwrap();
            s.ingest("b", &Batch { batch_id: 1, dropped_total: 0, records: vec![rec(1), rec(2)] }).unwrap();
            // Pretend the trigger tables came later.
            let conn = s.conn();
            conn.execute_batch(
                "DROP TABLE alerts; DROP TABLE trigger_state; DROP TABLE trigger_rules; DROP TABLE trigger_progress;
                 DELETE FROM component_versions;",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.trigger_progress().unwrap(),
            TriggerProgress { evaluated_report_id: 2, stored_report_id: 2, last_tick_ms: 0 }
        );
        s.trigger_tx(|t| t.raise(&new_alert("x")).map(drop)).unwrap();
        s.reset().unwrap();
        assert_eq!(s.trigger_progress().unwrap(), TriggerProgress::default());
        assert!(s.alerts(&AlertQuery::default()).unwrap().alerts.is_empty());
    }

    #[test]
    fn newer_trigger_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        drop(Store::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE component_versions SET version = 7 WHERE component = 'triggers'", [])
            .unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 7, known: 1, .. }), "{err}");
    }

    #[test]
    fn failed_transaction_changes_nothing() {
        let s = Store::open_in_memory().unwrap();
        let r: Result<(), StoreError> = s.trigger_tx(|t| {
            t.raise(&new_alert("x"))?;
            t.set_evaluated(99)?;
            Err(StoreError::BadAlert { id: 0, why: "test".into() })
        });
        assert!(r.is_err());
        assert!(s.alerts(&AlertQuery::default()).unwrap().alerts.is_empty());
        assert_eq!(s.trigger_progress().unwrap().evaluated_report_id, 0);
    }
}
