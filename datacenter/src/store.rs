//! The data center's report store: SQLite (WAL, `synchronous=FULL`) behind one mutex.
//!
//! Only this module touches the database. A batch is stored in one transaction:
//!
//! * a `(box, batch_id)` already in `batches` is answered with the ack it got the first
//!   time and changes nothing but the `repeated_batches` counter;
//! * otherwise every record is inserted into `reports`, which is `UNIQUE(source, msg_id)`
//!   (`source` is the integer id of the record's box and instrument in `sources`): a record
//!   the store already has is not stored again, its `deliveries` counter goes up and it
//!   counts as a duplicate;
//! * the box's latest `dropped_total` and its counters, and the per-instrument, per-kind
//!   counters are updated from totals gathered in memory (one row write per instrument and
//!   kind, not one per record).
//!
//! An acknowledgement is only returned after the commit is durable: the box deletes what we
//! acknowledged.
//!
//! Integers that are `u64` on the wire (batch and message ids) are stored bit for bit as
//! SQLite's signed 64-bit integers and converted back when read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rapwire::batch::{Batch, BatchAck};
use rapwire::Kind;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::api::{BoxStats, InstrumentStats, Report, ReportPage, ReportQuery, Stats};
use crate::clock::{self, Clock};

mod triggers;
mod views;
pub use triggers::{NewAlert, Source, TriggerProgress, TriggerTx};
pub use views::CommandRow;

/// Schema version written to `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 3;

/// Version 3: reports are unique on `(source, msg_id)`, two integers, instead of on
/// `(box, instrument, msg_id)`. Every stored record is checked against that index, and with
/// text keys the descent and its comparisons were the largest cost of storing a batch. The
/// box and instrument stay in each row, so reads need no join. The table is rebuilt with
/// its report ids kept: the trigger engine's cursor and clients' `since` point at them.
const SCHEMA_V3: &str = "
CREATE TABLE sources (
    id         INTEGER PRIMARY KEY,
    box        TEXT NOT NULL,
    instrument TEXT NOT NULL,
    UNIQUE (box, instrument)
);
INSERT INTO sources (box, instrument) SELECT DISTINCT box, instrument FROM reports ORDER BY box, instrument;
CREATE TABLE reports_v3 (
    id           INTEGER PRIMARY KEY,
    source       INTEGER NOT NULL REFERENCES sources (id),
    box          TEXT NOT NULL,
    instrument   TEXT NOT NULL,
    msg_id       INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    kind         INTEGER NOT NULL,
    priority     INTEGER NOT NULL,
    payload      BLOB NOT NULL,
    received_ms  INTEGER NOT NULL,
    batch_id     INTEGER NOT NULL,
    deliveries   INTEGER NOT NULL DEFAULT 1,
    UNIQUE (source, msg_id)
);
INSERT INTO reports_v3 (id, source, box, instrument, msg_id, timestamp_ms, kind, priority, payload,
                        received_ms, batch_id, deliveries)
    SELECT r.id, s.id, r.box, r.instrument, r.msg_id, r.timestamp_ms, r.kind, r.priority, r.payload,
           r.received_ms, r.batch_id, r.deliveries
    FROM reports r JOIN sources s ON s.box = r.box AND s.instrument = r.instrument
    ORDER BY r.id;
DROP TABLE reports;
ALTER TABLE reports_v3 RENAME TO reports;
";

/// Version 2: plain lines (the benchmark's syslog-ng reference posts them), stored with the
/// same durability as reports so that both peers are measured against the same work.
const SCHEMA_V2: &str = "
CREATE TABLE lines (
    id INTEGER PRIMARY KEY,
    box TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    line BLOB NOT NULL
);
";

const SCHEMA_V1: &str = "
CREATE TABLE boxes (
    box              TEXT PRIMARY KEY,
    batches          INTEGER NOT NULL DEFAULT 0,
    repeated_batches INTEGER NOT NULL DEFAULT 0,
    records          INTEGER NOT NULL DEFAULT 0,
    duplicates       INTEGER NOT NULL DEFAULT 0,
    dropped_total    INTEGER NOT NULL DEFAULT 0,
    last_batch_ms    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE batches (
    box           TEXT NOT NULL,
    batch_id      INTEGER NOT NULL,
    received_ms   INTEGER NOT NULL,
    record_count  INTEGER NOT NULL,
    accepted      INTEGER NOT NULL,
    duplicates    INTEGER NOT NULL,
    dropped_total INTEGER NOT NULL,
    repeats       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (box, batch_id)
) WITHOUT ROWID;

CREATE TABLE reports (
    id           INTEGER PRIMARY KEY,
    box          TEXT NOT NULL,
    instrument   TEXT NOT NULL,
    msg_id       INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    kind         INTEGER NOT NULL,
    priority     INTEGER NOT NULL,
    payload      BLOB NOT NULL,
    received_ms  INTEGER NOT NULL,
    batch_id     INTEGER NOT NULL,
    deliveries   INTEGER NOT NULL DEFAULT 1,
    UNIQUE (box, instrument, msg_id)
);

CREATE TABLE instrument_kinds (
    box               TEXT NOT NULL,
    instrument        TEXT NOT NULL,
    kind              INTEGER NOT NULL,
    count             INTEGER NOT NULL,
    last_received_ms  INTEGER NOT NULL,
    last_timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (box, instrument, kind)
) WITHOUT ROWID;
";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or configured.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database was written by a newer rapdc.
    #[error("database {path} has schema version {found}, newer than the {known} this rapdc knows")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// A statement failed.
    #[error("{op}: {source}")]
    Sqlite {
        /// What the store was doing.
        op: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A stored alert cannot be read back.
    #[error("stored alert {id} is unreadable: {why}")]
    BadAlert {
        /// Alert id.
        id: u64,
        /// What is wrong.
        why: String,
    },
    /// A stored row holds a value no writer of this store produces.
    #[error("stored report {id} has unknown kind {kind}")]
    UnknownKind {
        /// Report id.
        id: u64,
        /// The stored value.
        kind: i64,
    },
}

trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> Op<T> for Result<T, rusqlite::Error> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { op, source })
    }
}

/// What storing one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The acknowledgement to send (the first one again for a repeated batch id).
    pub ack: BatchAck,
    /// Whether the batch id had been acknowledged before (nothing was stored).
    pub repeated: bool,
}

/// The report store. Cheap to share behind an `Arc`; every call takes the one connection.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    clock: Arc<dyn Clock>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        // journal_mode answers with a row, so it is queried rather than executed.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("database {}: journal mode is {mode}, not wal", path.display());
        }
        Store::init(path, conn)
    }

    /// A store in memory (for tests): same schema, no WAL, gone when dropped.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open { path: path.clone(), source })?;
        Store::init(&path, conn)
    }

    fn init(path: &Path, mut conn: Connection) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_owned(), source };
        // FULL: an ack promises the box it may delete what it sent, so the commit must be
        // on disk first. One fsync per batch, so it costs little.
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -32768;",
        )
        .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(32);
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { path: path.to_owned(), found: version, known: SCHEMA_VERSION });
        }
        // Each step in its own transaction, so an interrupted upgrade resumes at its step.
        for (to, step) in [(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3)] {
            if version < to {
                let tx = conn.transaction().map_err(open_err)?;
                tx.execute_batch(step).map_err(open_err)?;
                tx.pragma_update(None, "user_version", to).map_err(open_err)?;
                tx.commit().map_err(open_err)?;
            }
        }
        triggers::migrate(path, &mut conn)?;
        Ok(Store { path: path.to_owned(), conn: Mutex::new(conn), clock: clock::system() })
    }

    /// The same store with `clock` as its time source (for tests: a [`crate::clock::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Store {
        self.clock = clock;
        self
    }

    /// The store's time source.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    /// Stores plain lines for `box_id` in one durable transaction; returns how many.
    pub fn store_lines(&self, box_id: &str, lines: &[&[u8]]) -> Result<u64, StoreError> {
        let now = self.clock.now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).op("begin lines transaction")?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO lines(box, received_ms, line) VALUES (?1, ?2, ?3)")
                .op("prepare line insert")?;
            for l in lines {
                insert.execute(params![box_id, now, l]).op("insert line")?;
            }
        }
        tx.commit().op("commit lines")?;
        Ok(lines.len() as u64)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled back:
        // the connection is still consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a batch from `box_id` (the certificate CN) in one transaction and returns the
    /// acknowledgement, durable when this returns.
    pub fn ingest(&self, box_id: &str, batch: &Batch) -> Result<Ingested, StoreError> {
        let now = self.clock.now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).op("begin batch transaction")?;
        let batch_key = batch.batch_id as i64;

        let earlier = tx
            .prepare_cached("SELECT accepted, duplicates, record_count FROM batches WHERE box = ?1 AND batch_id = ?2")
            .op("prepare batch lookup")?
            .query_row(params![box_id, batch_key], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .optional()
            .op("look up batch id")?;
        if let Some((accepted, duplicates, record_count)) = earlier {
            if record_count as u64 != batch.records.len() as u64 {
                log::warn!(
                    "box {box_id} repeated batch {:016x} with {} records, first sent with {record_count}",
                    batch.batch_id,
                    batch.records.len()
                );
            }
            tx.prepare_cached("UPDATE batches SET repeats = repeats + 1 WHERE box = ?1 AND batch_id = ?2")
                .op("prepare batch repeat")?
                .execute(params![box_id, batch_key])
                .op("count batch repeat")?;
            tx.prepare_cached("UPDATE boxes SET repeated_batches = repeated_batches + 1 WHERE box = ?1")
                .op("prepare box repeat")?
                .execute(params![box_id])
                .op("count box repeat")?;
            tx.commit().op("commit repeated batch")?;
            let ack = BatchAck { batch_id: batch.batch_id, accepted: accepted as u64, duplicates: duplicates as u64 };
            return Ok(Ingested { ack, repeated: true });
        }

        let (mut accepted, mut duplicates) = (0u64, 0u64);
        // One tally per instrument of the batch. Records of one instrument mostly come in
        // runs, so the last one used is tried before the map.
        let mut tallies: Vec<SourceTally<'_>> = Vec::new();
        let mut tally_of: HashMap<&str, usize> = HashMap::new();
        let mut last = usize::MAX;
        {
            let mut add_source = tx
                .prepare_cached("INSERT INTO sources (box, instrument) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
                .op("prepare source insert")?;
            let mut find_source = tx
                .prepare_cached("SELECT id FROM sources WHERE box = ?1 AND instrument = ?2")
                .op("prepare source lookup")?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO reports (source, box, instrument, msg_id, timestamp_ms, kind, priority, payload, received_ms, batch_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (source, msg_id) DO NOTHING",
                )
                .op("prepare report insert")?;
            let mut redeliver = tx
                .prepare_cached("UPDATE reports SET deliveries = deliveries + 1 WHERE source = ?1 AND msg_id = ?2")
                .op("prepare redelivery update")?;
            // What is the same for every record is bound once; SQLite keeps bindings
            // across executions of a statement.
            insert.raw_bind_parameter(2, box_id).op("bind report box")?;
            insert.raw_bind_parameter(9, now).op("bind report time")?;
            insert.raw_bind_parameter(10, batch_key).op("bind report batch")?;
            for rec in &batch.records {
                let instrument = rec.instrument.as_str();
                if tallies.get(last).is_none_or(|t| t.instrument != instrument) {
                    last = match tally_of.get(instrument) {
                        Some(&i) => i,
                        None => {
                            add_source.execute(params![box_id, instrument]).op("add source")?;
                            let id: i64 = find_source
                                .query_row(params![box_id, instrument], |r| r.get(0))
                                .op("look up source")?;
                            tallies.push(SourceTally { instrument, id, kinds: Vec::new() });
                            tally_of.insert(instrument, tallies.len() - 1);
                            tallies.len() - 1
                        }
                    };
                }
                let tally = &mut tallies[last];
                let msg_key = rec.msg_id as i64;
                insert.raw_bind_parameter(1, tally.id).op("bind report")?;
                insert.raw_bind_parameter(3, instrument).op("bind report")?;
                insert.raw_bind_parameter(4, msg_key).op("bind report")?;
                insert.raw_bind_parameter(5, rec.timestamp_ms).op("bind report")?;
                insert.raw_bind_parameter(6, rec.kind as u8).op("bind report")?;
                insert.raw_bind_parameter(7, rec.priority).op("bind report")?;
                insert.raw_bind_parameter(8, &rec.payload).op("bind report")?;
                if insert.raw_execute().op("insert report")? == 1 {
                    accepted += 1;
                    tally.count(rec.kind as u8, rec.timestamp_ms);
                } else {
                    duplicates += 1;
                    redeliver.execute(params![tally.id, msg_key]).op("count redelivery")?;
                }
            }
        }
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO instrument_kinds (box, instrument, kind, count, last_received_ms, last_timestamp_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (box, instrument, kind) DO UPDATE SET
                        count = count + excluded.count,
                        last_received_ms = excluded.last_received_ms,
                        last_timestamp_ms = max(last_timestamp_ms, excluded.last_timestamp_ms)",
                )
                .op("prepare instrument counters")?;
            for t in &tallies {
                for &(kind, count, max_ts) in &t.kinds {
                    upsert
                        .execute(params![box_id, t.instrument, kind, count, now, max_ts])
                        .op("update instrument counters")?;
                }
            }
        }
        tx.prepare_cached(
            "INSERT INTO batches (box, batch_id, received_ms, record_count, accepted, duplicates, dropped_total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .op("prepare batch insert")?
        .execute(params![
            box_id,
            batch_key,
            now,
            batch.records.len() as i64,
            accepted as i64,
            duplicates as i64,
            batch.dropped_total as i64
        ])
        .op("insert batch")?;
        tx.prepare_cached(
            "INSERT INTO boxes (box, batches, records, duplicates, dropped_total, last_batch_ms)
             VALUES (?1, 1, ?2, ?3, ?4, ?5)
             ON CONFLICT (box) DO UPDATE SET
                batches = batches + 1,
                records = records + excluded.records,
                duplicates = duplicates + excluded.duplicates,
                dropped_total = excluded.dropped_total,
                last_batch_ms = excluded.last_batch_ms",
        )
        .op("prepare box counters")?
        .execute(params![box_id, accepted as i64, duplicates as i64, batch.dropped_total as i64, now])
        .op("update box counters")?;
        tx.commit().op("commit batch")?;
        Ok(Ingested { ack: BatchAck { batch_id: batch.batch_id, accepted, duplicates }, repeated: false })
    }

    /// Reports in arrival order after `q.since_id`, filtered by box and instrument.
    pub fn reports(&self, q: &ReportQuery) -> Result<ReportPage, StoreError> {
        let conn = self.conn();
        // The unary `+` keeps SQLite on the primary key (arrival order) instead of the
        // unique index, so paging costs what the page holds.
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {REPORT_COLUMNS} FROM reports
                 WHERE id > ?1 AND (?2 IS NULL OR +box = ?2) AND (?3 IS NULL OR +instrument = ?3)
                 ORDER BY id LIMIT ?4"
            ))
            .op("prepare report query")?;
        let since = i64::try_from(q.since_id).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![since, q.box_id, q.instrument, q.effective_limit()]).op("query reports")?;
        let mut reports = Vec::new();
        while let Some(r) = rows.next().op("read report")? {
            reports.push(report_from_row(r)?);
        }
        let last_id = reports.last().map_or(q.since_id, |r| r.id);
        Ok(ReportPage { reports, last_id })
    }

    /// Counters per box and per instrument.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let conn = self.conn();
        let mut stats = Stats::default();
        let mut stmt = conn
            .prepare_cached(
                "SELECT box, batches, repeated_batches, records, duplicates, dropped_total, last_batch_ms
                 FROM boxes ORDER BY box",
            )
            .op("prepare box stats")?;
        let boxes = stmt
            .query_map([], |r| {
                Ok(BoxStats {
                    box_id: r.get(0)?,
                    batches: r.get::<_, i64>(1)? as u64,
                    repeated_batches: r.get::<_, i64>(2)? as u64,
                    records: r.get::<_, i64>(3)? as u64,
                    duplicates: r.get::<_, i64>(4)? as u64,
                    dropped_total: r.get::<_, i64>(5)? as u64,
                    last_batch_ms: r.get(6)?,
                })
            })
            .op("query box stats")?;
        for b in boxes {
            stats.boxes.push(b.op("read box stats")?);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT box, instrument, kind, count, last_received_ms, last_timestamp_ms
                 FROM instrument_kinds ORDER BY box, instrument, kind",
            )
            .op("prepare instrument stats")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .op("query instrument stats")?;
        let mut per: BTreeMap<(String, String), InstrumentStats> = BTreeMap::new();
        for row in rows {
            let (box_id, instrument, kind, count, last_rx, last_ts) = row.op("read instrument stats")?;
            let kind_name = u8::try_from(kind)
                .ok()
                .and_then(Kind::from_u8)
                .map_or_else(|| format!("kind_{kind}"), |k| k.name().to_owned());
            let e = per.entry((box_id.clone(), instrument.clone())).or_insert_with(|| InstrumentStats {
                box_id,
                instrument,
                last_timestamp_ms: i64::MIN,
                ..Default::default()
            });
            e.count += count as u64;
            *e.kinds.entry(kind_name).or_default() += count as u64;
            e.last_received_ms = e.last_received_ms.max(last_rx);
            e.last_timestamp_ms = e.last_timestamp_ms.max(last_ts);
        }
        stats.instruments = per.into_values().collect();
        Ok(stats)
    }

    /// Empties every table (report ids start again at 1).
    pub fn reset(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).op("begin reset")?;
        tx.execute_batch("DELETE FROM reports; DELETE FROM sources; DELETE FROM batches; DELETE FROM boxes; DELETE FROM instrument_kinds;")
            .op("reset")?;
        triggers::reset(&tx)?;
        tx.commit().op("commit reset")
    }
}

/// What one batch stored for one instrument.
struct SourceTally<'a> {
    instrument: &'a str,
    /// Its id in `sources`.
    id: i64,
    /// (kind, records stored, largest timestamp): a handful of kinds at most.
    kinds: Vec<(u8, i64, i64)>,
}

impl SourceTally<'_> {
    fn count(&mut self, kind: u8, timestamp_ms: i64) {
        match self.kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += 1;
                k.2 = k.2.max(timestamp_ms);
            }
            None => self.kinds.push((kind, 1, timestamp_ms)),
        }
    }
}

/// The columns [`report_from_row`] reads, in its order.
const REPORT_COLUMNS: &str =
    "id, box, instrument, msg_id, timestamp_ms, kind, priority, payload, received_ms, batch_id, deliveries";

/// A report from a row of [`REPORT_COLUMNS`].
fn report_from_row(r: &rusqlite::Row<'_>) -> Result<Report, StoreError> {
    let id = r.get::<_, i64>(0).op("read report")? as u64;
    let kind_raw: i64 = r.get(5).op("read report")?;
    let kind =
        u8::try_from(kind_raw).ok().and_then(Kind::from_u8).ok_or(StoreError::UnknownKind { id, kind: kind_raw })?;
    let payload: Vec<u8> = r.get(7).op("read report")?;
    Ok(Report {
        id,
        box_id: r.get(1).op("read report")?,
        instrument: r.get(2).op("read report")?,
        msg_id: r.get::<_, i64>(3).op("read report")? as u64,
        timestamp_ms: r.get(4).op("read report")?,
        kind,
        priority: r.get(6).op("read report")?,
        payload: String::from_utf8(payload).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        received_ms: r.get(8).op("read report")?,
        batch_id: r.get::<_, i64>(9).op("read report")? as u64,
        deliveries: r.get::<_, i64>(10).op("read report")? as u64,
    })
}

#[cfg(test)]
mod tests {
    use rapwire::batch::Record;

    use super::*;

    #[test]
    fn lines_are_stored_durably_per_box() {
        let s = Store::open_in_memory().unwrap();
        assert_eq!(s.store_lines("box-1", &[b"a".as_slice(), b"b".as_slice()]).unwrap(), 2);
        let n: i64 = s.conn().query_row("SELECT COUNT(*) FROM lines WHERE box='box-1'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
    }

    fn rec(instrument: &str, msg_id: u64, kind: Kind) -> Record {
        Record {
            instrument: instrument.into(),
            msg_id,
            timestamp_ms: 1_700_000_000_000 + msg_id as i64,
            kind,
            priority: if kind == Kind::Alarm { 0 } else { 2 },
            payload: format!("msg {msg_id}").into_bytes(),
        }
    }

    fn batch(batch_id: u64, dropped_total: u64, records: Vec<Record>) -> Batch {
        Batch { batch_id, dropped_total, records }
    }

    fn all(store: &Store) -> Vec<Report> {
        store
            .reports(&ReportQuery { limit: Some(super::super::api::MAX_REPORT_LIMIT), ..Default::default() })
            .unwrap()
            .reports
    }

    #[test]
    fn stores_a_batch_and_acks_it() {
        let s = Store::open_in_memory().unwrap();
        let b = batch(7, 0, vec![rec("A-1", 1, Kind::Status), rec("A-1", 2, Kind::Alarm), rec("B-2", 1, Kind::Status)]);
        let got = s.ingest("box-0001", &b).unwrap();
        assert_eq!(got, Ingested { ack: BatchAck { batch_id: 7, accepted: 3, duplicates: 0 }, repeated: false });
        let rows = all(&s);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(rows[1].kind, Kind::Alarm);
        assert_eq!(rows[1].payload, "msg 2");
        assert!(rows.iter().all(|r| r.deliveries == 1 && r.box_id == "box-0001" && r.batch_id == 7));
    }

    #[test]
    fn repeated_batch_id_gets_the_first_ack_and_stores_nothing() {
        let s = Store::open_in_memory().unwrap();
        let b = batch(9, 4, vec![rec("A-1", 1, Kind::Status), rec("A-1", 2, Kind::Status)]);
        let first = s.ingest("box-0001", &b).unwrap();
        // Same id, different content: still the first ack, nothing stored.
        let b2 = batch(9, 99, vec![rec("A-1", 1, Kind::Status), rec("A-1", 3, Kind::Status)]);
        let again = s.ingest("box-0001", &b2).unwrap();
        assert_eq!(again.ack, first.ack);
        assert!(again.repeated);
        assert_eq!(all(&s).len(), 2);
        let st = s.stats().unwrap();
        let bx = st.for_box("box-0001").unwrap();
        assert_eq!((bx.batches, bx.repeated_batches, bx.records, bx.duplicates, bx.dropped_total), (1, 1, 2, 0, 4));
    }

    #[test]
    fn batch_ids_are_per_box() {
        let s = Store::open_in_memory().unwrap();
        s.ingest("box-0001", &batch(1, 0, vec![rec("A-1", 1, Kind::Status)])).unwrap();
        let other = s.ingest("box-0002", &batch(1, 0, vec![rec("A-1", 1, Kind::Status)])).unwrap();
        assert_eq!(other.ack.accepted, 1);
        assert!(!other.repeated);
        assert_eq!(all(&s).len(), 2);
    }

    #[test]
    fn redelivered_records_are_counted_not_stored_twice() {
        let s = Store::open_in_memory().unwrap();
        s.ingest("box-0001", &batch(1, 0, vec![rec("A-1", 1, Kind::Status), rec("A-1", 2, Kind::Alarm)])).unwrap();
        // A new batch id carrying one old and one new record (the box lost the first ack
        // and rebuilt its batch), plus the old record a second time.
        let got = s
            .ingest(
                "box-0001",
                &batch(2, 0, vec![rec("A-1", 2, Kind::Alarm), rec("A-1", 3, Kind::Status), rec("A-1", 2, Kind::Alarm)]),
            )
            .unwrap();
        assert_eq!(got.ack, BatchAck { batch_id: 2, accepted: 1, duplicates: 2 });
        let rows = all(&s);
        assert_eq!(rows.iter().map(|r| (r.msg_id, r.deliveries)).collect::<Vec<_>>(), vec![(1, 1), (2, 3), (3, 1)]);
        assert_eq!(rows[1].batch_id, 1, "a duplicate keeps the batch that first delivered it");
        let st = s.stats().unwrap();
        let bx = st.for_box("box-0001").unwrap();
        assert_eq!((bx.batches, bx.records, bx.duplicates), (2, 3, 2));
        let inst = st.for_instrument("box-0001", "A-1").unwrap();
        assert_eq!(inst.count, 3);
        assert_eq!(inst.kinds.get("alarm"), Some(&1));
        assert_eq!(inst.kinds.get("status"), Some(&2));
    }

    #[test]
    fn same_msg_id_on_other_instrument_or_box_is_distinct() {
        let s = Store::open_in_memory().unwrap();
        s.ingest("box-0001", &batch(1, 0, vec![rec("A-1", 5, Kind::Status), rec("B-2", 5, Kind::Status)])).unwrap();
        let got = s.ingest("box-0002", &batch(1, 0, vec![rec("A-1", 5, Kind::Status)])).unwrap();
        assert_eq!(got.ack.duplicates, 0);
        assert_eq!(all(&s).len(), 3);
    }

    #[test]
    fn latest_dropped_total_is_kept_even_for_an_empty_batch() {
        let s = Store::open_in_memory().unwrap();
        s.ingest("box-0001", &batch(1, 10, vec![rec("A-1", 1, Kind::Status)])).unwrap();
        s.ingest("box-0001", &batch(2, 25, vec![])).unwrap();
        assert_eq!(s.stats().unwrap().for_box("box-0001").unwrap().dropped_total, 25);
        // A repeat of an old batch does not bring an old figure back.
        s.ingest("box-0001", &batch(1, 10, vec![rec("A-1", 1, Kind::Status)])).unwrap();
        assert_eq!(s.stats().unwrap().for_box("box-0001").unwrap().dropped_total, 25);
    }

    #[test]
    fn full_range_ids_round_trip() {
        let s = Store::open_in_memory().unwrap();
        let b = batch(u64::MAX, u64::MAX, vec![rec("A-1", u64::MAX, Kind::Status), rec("A-1", 0, Kind::Status)]);
        let got = s.ingest("box-0001", &b).unwrap();
        assert_eq!(got.ack.batch_id, u64::MAX);
        assert_eq!(s.ingest("box-0001", &b).unwrap().ack, got.ack);
        let rows = all(&s);
        assert_eq!(rows[0].msg_id, u64::MAX);
        assert_eq!(rows[0].batch_id, u64::MAX);
        assert_eq!(s.stats().unwrap().boxes[0].dropped_total, u64::MAX);
    }

    #[test]
    fn reports_page_and_filter() {
        let s = Store::open_in_memory().unwrap();
        let recs = (0..10).map(|i| rec(if i % 2 == 0 { "A-1" } else { "B-2" }, i, Kind::Status)).collect();
        s.ingest("box-0001", &batch(1, 0, recs)).unwrap();
        s.ingest("box-0002", &batch(1, 0, vec![rec("A-1", 100, Kind::Event)])).unwrap();
        let q = |box_id: Option<&str>, instrument: Option<&str>, since_id, limit| ReportQuery {
            box_id: box_id.map(str::to_owned),
            instrument: instrument.map(str::to_owned),
            since_id,
            limit,
        };
        let p = s.reports(&q(Some("box-0001"), Some("A-1"), 0, Some(3))).unwrap();
        assert_eq!(p.reports.iter().map(|r| r.msg_id).collect::<Vec<_>>(), vec![0, 2, 4]);
        let p2 = s.reports(&q(Some("box-0001"), Some("A-1"), p.last_id, None)).unwrap();
        assert_eq!(p2.reports.iter().map(|r| r.msg_id).collect::<Vec<_>>(), vec![6, 8]);
        let p3 = s.reports(&q(Some("box-0001"), Some("A-1"), p2.last_id, None)).unwrap();
        assert!(p3.reports.is_empty());
        assert_eq!(p3.last_id, p2.last_id);
        assert_eq!(s.reports(&q(None, Some("A-1"), 0, None)).unwrap().reports.len(), 6);
        assert_eq!(s.reports(&q(Some("box-0002"), None, 0, None)).unwrap().reports[0].kind, Kind::Event);
        assert!(s.reports(&q(Some("nobody"), None, 0, None)).unwrap().reports.is_empty());
    }

    #[test]
    fn instrument_stats_track_kinds_and_times() {
        let s = Store::open_in_memory().unwrap();
        let mut r = rec("A-1", 1, Kind::QcResult);
        r.timestamp_ms = 500;
        let mut r2 = rec("A-1", 2, Kind::Status);
        r2.timestamp_ms = 900;
        s.ingest("box-0001", &batch(1, 0, vec![r2, r])).unwrap();
        let st = s.stats().unwrap();
        let i = st.for_instrument("box-0001", "A-1").unwrap();
        assert_eq!(i.count, 2);
        assert_eq!(i.kinds.get("qc_result"), Some(&1));
        assert_eq!(i.last_timestamp_ms, 900);
        assert!(i.last_received_ms > 0);
    }

    #[test]
    fn reset_empties_everything() {
        let s = Store::open_in_memory().unwrap();
        s.ingest("box-0001", &batch(1, 3, vec![rec("A-1", 1, Kind::Status)])).unwrap();
        s.reset().unwrap();
        assert_eq!(s.stats().unwrap(), Stats::default());
        assert!(all(&s).is_empty());
        // The batch id is forgotten too.
        assert!(!s.ingest("box-0001", &batch(1, 3, vec![rec("A-1", 1, Kind::Status)])).unwrap().repeated);
    }

    #[test]
    fn file_store_is_wal_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        {
            let s = Store::open(&path).unwrap();
            s.ingest("box-0001", &batch(1, 0, vec![rec("A-1", 1, Kind::Status)])).unwrap();
            let mode: String = s.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, "wal");
        }
        let s = Store::open(&path).unwrap();
        assert!(s.ingest("box-0001", &batch(1, 0, vec![])).unwrap().repeated);
        assert_eq!(all(&s).len(), 1);
    }

    #[test]
    fn interleaved_instruments_are_tallied_per_instrument_and_kind() {
        let s = Store::open_in_memory().unwrap();
        let recs = vec![
            rec("A-1", 1, Kind::Status),
            rec("B-2", 1, Kind::Alarm),
            rec("A-1", 2, Kind::Alarm),
            rec("A-1", 3, Kind::Status),
            rec("B-2", 1, Kind::Alarm),
            rec("C-3", 9, Kind::Event),
            rec("B-2", 2, Kind::Status),
        ];
        let got = s.ingest("box-0001", &batch(1, 0, recs)).unwrap();
        assert_eq!(got.ack, BatchAck { batch_id: 1, accepted: 6, duplicates: 1 });
        let st = s.stats().unwrap();
        let a = st.for_instrument("box-0001", "A-1").unwrap();
        assert_eq!((a.count, a.kinds.get("status"), a.kinds.get("alarm")), (3, Some(&2), Some(&1)));
        assert_eq!(a.last_timestamp_ms, 1_700_000_000_003);
        let b = st.for_instrument("box-0001", "B-2").unwrap();
        assert_eq!((b.count, b.kinds.get("status"), b.kinds.get("alarm")), (2, Some(&1), Some(&1)));
        let c = st.for_instrument("box-0001", "C-3").unwrap();
        assert_eq!((c.count, c.kinds.get("event")), (1, Some(&1)));
        let latest = s.latest_reports().unwrap();
        assert_eq!(
            latest.iter().map(|r| (r.instrument.as_str(), r.msg_id)).collect::<Vec<_>>(),
            vec![("A-1", 3), ("B-2", 2), ("C-3", 9)]
        );
    }

    #[test]
    fn version_2_database_migrates_to_3_keeping_ids_and_uniqueness() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        {
            // A database as a version-2 rapdc left it, with a gap in the report ids.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute_batch(SCHEMA_V2).unwrap();
            c.execute_batch(
                "INSERT INTO reports (id, box, instrument, msg_id, timestamp_ms, kind, priority, payload, received_ms, batch_id, deliveries)
                 VALUES (1, 'box-0001', 'A-1', 1, 10, 1, 2, x'6f6e65', 100, 1, 1),
                        (2, 'box-0001', 'B-2', -1, 11, 2, 0, x'74776f', 100, 1, 2),
                        (7, 'box-0002', 'A-1', 1, 12, 1, 2, x'', 200, 5, 1);
                 INSERT INTO batches (box, batch_id, received_ms, record_count, accepted, duplicates, dropped_total)
                 VALUES ('box-0001', 1, 100, 2, 2, 0, 0), ('box-0002', 5, 200, 1, 1, 0, 0);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let version: i64 = s.conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let rows = all(&s);
        assert_eq!(
            rows.iter()
                .map(|r| (r.id, r.box_id.as_str(), r.instrument.as_str(), r.msg_id, r.deliveries))
                .collect::<Vec<_>>(),
            vec![(1, "box-0001", "A-1", 1, 1), (2, "box-0001", "B-2", u64::MAX, 2), (7, "box-0002", "A-1", 1, 1)]
        );
        assert_eq!(rows[1].payload, "two");
        // The migrated rows still decide what is a duplicate, per box and instrument.
        let got = s
            .ingest(
                "box-0001",
                &batch(
                    2,
                    0,
                    vec![rec("A-1", 1, Kind::Status), rec("B-2", u64::MAX, Kind::Alarm), rec("A-1", 2, Kind::Status)],
                ),
            )
            .unwrap();
        assert_eq!(got.ack, BatchAck { batch_id: 2, accepted: 1, duplicates: 2 });
        let rows = all(&s);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[3].id, 8, "new reports continue after the highest migrated id");
        assert_eq!(rows[1].deliveries, 3);
        // A repeated batch id from before the migration still gets its first ack.
        assert!(s.ingest("box-0002", &batch(5, 0, vec![])).unwrap().repeated);
        drop(s);
        // Opening again runs no migration twice.
        let s = Store::open(&path).unwrap();
        assert_eq!(all(&s).len(), 4);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }), "{err}");
    }
}
