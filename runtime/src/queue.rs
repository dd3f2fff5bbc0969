//! The durable queue: the only owner of the SQLite database on the data partition.
//!
//! One writer thread owns the write connection. Ingest threads hand it messages over a
//! bounded channel; it takes everything that is waiting (group commit), stores it in
//! one transaction with `synchronous=FULL` in WAL mode, and only after the commit has
//! returned does it send each message's acknowledgement back. Deletions after the data
//! center's acknowledgement go through the same thread. The uplink reads batches on a
//! separate read-only connection (WAL readers never block the writer).
//!
//! Ordering: batches leave by priority (0 first), then arrival. Quota: when the queued
//! bytes would exceed the quota, droppable messages are evicted, least important
//! priority first and oldest first, and counted; alarms and audit records are never
//! evicted, and when only they remain a new message is refused with `QueueFull`.
//! Dedup: `(instrument, msg_id)` is unique while queued, and remembered after delivery
//! for the retention period, so a resend is acked again but stored once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rapwire::agent::{ErrorCode, Reply};
use rapwire::Kind;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

/// Bytes charged per row on top of the payload (keys, timestamps, index entries).
pub const ROW_OVERHEAD: u64 = 64;
/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 3;
const WRITE_CHANNEL: usize = 2 * 1024;
const MAX_GROUP: usize = 2 * 1024;

/// Forward migrations, applied in order; index i brings the schema from version i to i+1.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the queue itself.
    "CREATE TABLE instruments(id INTEGER PRIMARY KEY, serial TEXT NOT NULL UNIQUE);
     CREATE TABLE messages(
         seq INTEGER PRIMARY KEY,
         instrument INTEGER NOT NULL REFERENCES instruments(id),
         msg_id INTEGER NOT NULL,
         ts INTEGER NOT NULL,
         received INTEGER NOT NULL,
         kind INTEGER NOT NULL,
         priority INTEGER NOT NULL,
         size INTEGER NOT NULL,
         payload BLOB NOT NULL);
     CREATE UNIQUE INDEX messages_key ON messages(instrument, msg_id);
     CREATE INDEX messages_drain ON messages(priority, seq);
     CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    // 1 -> 2: remember delivered ids so that a late resend is not stored again.
    "CREATE TABLE delivered(instrument INTEGER NOT NULL, msg_id INTEGER NOT NULL, at INTEGER NOT NULL,
         PRIMARY KEY(instrument, msg_id)) WITHOUT ROWID;
     CREATE INDEX delivered_at ON delivered(at);",
    // 2 -> 3: strictly increasing seq (AUTOINCREMENT: a seq is never reused, so batches can be
    // read with per-priority cursors and deleted by range), delivered ids kept as ranges.
    "CREATE TABLE messages_v3(
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         instrument INTEGER NOT NULL REFERENCES instruments(id),
         msg_id INTEGER NOT NULL,
         ts INTEGER NOT NULL,
         received INTEGER NOT NULL,
         kind INTEGER NOT NULL,
         priority INTEGER NOT NULL,
         size INTEGER NOT NULL,
         payload BLOB NOT NULL);
     INSERT INTO messages_v3 SELECT seq, instrument, msg_id, ts, received, kind, priority, size, payload FROM messages;
     DROP TABLE messages;
     ALTER TABLE messages_v3 RENAME TO messages;
     CREATE UNIQUE INDEX messages_key ON messages(instrument, msg_id);
     CREATE INDEX messages_drain ON messages(priority, seq);
     CREATE TABLE delivered_ranges(instrument INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
         at INTEGER NOT NULL);
     CREATE INDEX delivered_ranges_key ON delivered_ranges(instrument, first);
     CREATE INDEX delivered_ranges_at ON delivered_ranges(at);
     INSERT INTO delivered_ranges SELECT instrument, msg_id, msg_id, at FROM delivered;
     DROP TABLE delivered;",
];

/// A queue failure, naming the database.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("queue database {path}: schema version {found} is newer than this rapd understands ({SCHEMA_VERSION})")]
    FutureSchema { path: PathBuf, found: i64 },
    #[error("queue database {path}: integrity check failed: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("queue directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("the queue writer has stopped")]
    Stopped,
}

/// A message accepted from an instrument (or produced by the box), not yet stored.
#[derive(Debug)]
pub struct Incoming {
    pub instrument: Arc<str>,
    pub msg_id: u64,
    pub timestamp_ms: i64,
    pub kind: Kind,
    pub priority: u8,
    pub payload: Vec<u8>,
}

/// Where the writer sends the outcome of an [`Incoming`].
pub type ReplyTo = Sender<Reply>;

/// One stored message as read for the uplink.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: i64,
    pub instrument: Arc<str>,
    pub msg_id: u64,
    pub timestamp_ms: i64,
    pub received_ms: i64,
    pub kind: Kind,
    pub priority: u8,
    pub payload: Vec<u8>,
}

/// One stored message, borrowed from the database while a batch is read.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub seq: i64,
    pub instrument: &'a str,
    pub msg_id: u64,
    pub timestamp_ms: i64,
    pub received_ms: i64,
    pub kind: Kind,
    pub priority: u8,
    pub payload: &'a [u8],
}

/// The rows of one priority that a batch carried: every queued row of that priority with
/// `first <= seq <= last` (seqs only grow, so nothing arrives inside a range later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub priority: u8,
    pub first: i64,
    pub last: i64,
}

/// Per priority, the highest seq already handed to the data center; the next batch starts
/// above it. Rows whose deletion is still being committed are thereby never sent twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor(pub [i64; 4]);

impl Cursor {
    /// Moves past the rows of `ranges`.
    pub fn advance(&mut self, ranges: &[SeqRange]) {
        for r in ranges {
            let c = &mut self.0[r.priority as usize];
            *c = (*c).max(r.last);
        }
    }
}

/// The seq ranges of a batch read by [`Queue::next_batch`] (sorted by priority, then seq).
pub fn ranges_of(rows: &[Row]) -> Vec<SeqRange> {
    let mut out: Vec<SeqRange> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(last) if last.priority == r.priority => last.last = r.seq,
            _ => out.push(SeqRange { priority: r.priority, first: r.seq, last: r.seq }),
        }
    }
    out
}

/// Queue figures for the status interface.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    pub depth_by_priority: [u64; 4],
    pub depth: u64,
    pub bytes: u64,
    pub quota_bytes: u64,
    pub dropped_total: u64,
    pub refused_full_total: u64,
    pub stored_total: u64,
    pub duplicates_total: u64,
    pub oldest_received_ms: Option<i64>,
}

enum Cmd {
    Insert(Incoming, ReplyTo),
    /// Delete delivered rows; answer when committed.
    Complete(Vec<SeqRange>, Sender<Result<(), String>>),
}

struct Shared {
    stats: Mutex<QueueStats>,
    /// Signalled after each commit that stored something.
    pending: (Mutex<u64>, Condvar),
    heartbeat_ms: AtomicU64,
    stop: AtomicBool,
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Cmd>,
    shared: Arc<Shared>,
    reader: Arc<Mutex<Reader>>,
    path: PathBuf,
}

struct Reader {
    conn: Connection,
    serials: HashMap<i64, Arc<str>>,
}

/// Owns the writer thread; joins it on [`QueueWriter::join`].
pub struct QueueWriter {
    handle: Option<JoinHandle<()>>,
}

impl QueueWriter {
    /// Waits for the writer to finish (after [`Queue::shutdown`] and all senders dropped).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn sq(path: &Path) -> impl Fn(rusqlite::Error) -> QueueError + '_ {
    move |source| QueueError::Sqlite { path: path.into(), source }
}

/// Opens (creating and migrating as needed) the database for writing.
pub fn open_write(path: &Path) -> Result<Connection, QueueError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Dir { path: dir.into(), source })?;
    }
    let conn = Connection::open(path).map_err(sq(path))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sq(path))?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(sq(path))?;
    conn.pragma_update(None, "foreign_keys", "OFF").map_err(sq(path))?;
    conn.pragma_update(None, "wal_autocheckpoint", 4000).map_err(sq(path))?;
    // 1 MiB of page cache: inserts append, so the hot pages are few.
    conn.pragma_update(None, "cache_size", -1024).map_err(sq(path))?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sq(path))?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Applies forward migrations up to [`SCHEMA_VERSION`].
pub fn migrate(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sq(path))?;
    if version > SCHEMA_VERSION {
        return Err(QueueError::FutureSchema { path: path.into(), found: version });
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction().map_err(sq(path))?;
        tx.execute_batch(sql).map_err(sq(path))?;
        tx.pragma_update(None, "user_version", v as i64 + 1).map_err(sq(path))?;
        tx.commit().map_err(sq(path))?;
    }
    Ok(())
}

/// Runs SQLite's integrity check.
pub fn integrity_check(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let res: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(sq(path))?;
    if res == "ok" {
        Ok(())
    } else {
        Err(QueueError::Corrupt { path: path.into(), detail: res })
    }
}

impl Queue {
    /// Opens the queue at `path` and starts its writer thread.
    pub fn open(path: &Path, quota_bytes: u64, dedup_retention: Duration) -> Result<(Queue, QueueWriter), QueueError> {
        let conn = open_write(path)?;
        integrity_check(&conn, path)?;
        let mut stats = QueueStats { quota_bytes, ..Default::default() };
        {
            let mut st = conn
                .prepare("SELECT priority, COUNT(*), COALESCE(SUM(size),0) FROM messages GROUP BY priority")
                .map_err(sq(path))?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
                .map_err(sq(path))?;
            for row in rows {
                let (p, n, b) = row.map_err(sq(path))?;
                stats.depth_by_priority[p.clamp(0, 3) as usize] += n as u64;
                stats.depth += n as u64;
                stats.bytes += b as u64;
            }
            stats.dropped_total = counter(&conn, "dropped_total").map_err(sq(path))?;
            stats.refused_full_total = counter(&conn, "refused_full_total").map_err(sq(path))?;
        }
        let rconn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(sq(path))?;
        rconn.busy_timeout(Duration::from_secs(10)).map_err(sq(path))?;
        rconn.pragma_update(None, "cache_size", -256).map_err(sq(path))?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(stats),
            pending: (Mutex::new(0), Condvar::new()),
            heartbeat_ms: AtomicU64::new(now_ms() as u64),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::sync_channel(WRITE_CHANNEL);
        let writer = Writer::new(conn, path.into(), quota_bytes, dedup_retention, shared.clone()).map_err(sq(path))?;
        let handle = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| QueueError::Dir { path: path.into(), source })?;
        let q = Queue {
            tx,
            shared,
            reader: Arc::new(Mutex::new(Reader { conn: rconn, serials: HashMap::new() })),
            path: path.into(),
        };
        Ok((q, QueueWriter { handle: Some(handle) }))
    }

    /// Hands a message to the writer; the outcome arrives on `reply`. Blocks while the
    /// writer's channel is full (back-pressure from the disk).
    pub fn submit(&self, msg: Incoming, reply: ReplyTo) -> Result<(), QueueError> {
        self.tx.send(Cmd::Insert(msg, reply)).map_err(|_| QueueError::Stopped)
    }

    /// Deletes delivered rows (after the data center acknowledged them); returns once committed.
    pub fn complete(&self, ranges: Vec<SeqRange>) -> Result<(), QueueError> {
        let rx = self.complete_async(ranges)?;
        self.wait_completed(&rx)
    }

    /// Like [`Queue::complete`] but returns at once; the receiver reports the commit.
    pub fn complete_async(&self, ranges: Vec<SeqRange>) -> Result<Receiver<Result<(), String>>, QueueError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Cmd::Complete(ranges, tx)).map_err(|_| QueueError::Stopped)?;
        Ok(rx)
    }

    /// Waits for a [`Queue::complete_async`] to be committed.
    pub fn wait_completed(&self, rx: &Receiver<Result<(), String>>) -> Result<(), QueueError> {
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(QueueError::Corrupt { path: self.path.clone(), detail: msg }),
            Err(_) => Err(QueueError::Stopped),
        }
    }

    /// Routine messages dropped by the quota since the queue was created.
    pub fn dropped_total(&self) -> u64 {
        self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()).dropped_total
    }

    /// Reads the next batch after `cursor`: by priority, then arrival; bounded by count and bytes.
    pub fn next_batch(&self, cursor: &Cursor, max_records: usize, max_bytes: usize) -> Result<Vec<Row>, QueueError> {
        let mut out = Vec::new();
        self.read_batch(cursor, max_records, max_bytes, |r| {
            out.push(Row {
                seq: r.seq,
                instrument: Arc::from(r.instrument),
                msg_id: r.msg_id,
                timestamp_ms: r.timestamp_ms,
                received_ms: r.received_ms,
                kind: r.kind,
                priority: r.priority,
                payload: r.payload.to_vec(),
            })
        })?;
        Ok(out)
    }

    /// Like [`Queue::next_batch`], but hands each row to `f` straight from SQLite's buffers
    /// (no copy of the batch is kept) and returns the batch's seq ranges.
    pub fn read_batch(
        &self,
        cursor: &Cursor,
        max_records: usize,
        max_bytes: usize,
        mut f: impl FnMut(RowRef<'_>),
    ) -> Result<Vec<SeqRange>, QueueError> {
        let mut rd = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let Reader { conn, serials } = &mut *rd;
        let path = &self.path;
        let mut ranges: Vec<SeqRange> = Vec::new();
        let (mut count, mut bytes) = (0usize, 0usize);
        let tx = conn.unchecked_transaction().map_err(sq(path))?;
        'priorities: for priority in 0..4u8 {
            if count >= max_records {
                break;
            }
            let mut st = tx
                .prepare_cached(
                    "SELECT seq, instrument, msg_id, ts, received, kind, payload
                     FROM messages WHERE priority=?1 AND seq>?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(sq(path))?;
            let mut rows = st
                .query(params![priority, cursor.0[priority as usize], (max_records - count) as i64])
                .map_err(sq(path))?;
            while let Some(r) = rows.next().map_err(sq(path))? {
                let payload = r.get_ref(6).and_then(|v| v.as_blob().map_err(Into::into)).map_err(sq(path))?;
                if count > 0 && bytes + payload.len() > max_bytes {
                    break 'priorities;
                }
                bytes += payload.len() + 32;
                count += 1;
                let seq: i64 = r.get(0).map_err(sq(path))?;
                match ranges.last_mut() {
                    Some(last) if last.priority == priority => last.last = seq,
                    _ => ranges.push(SeqRange { priority, first: seq, last: seq }),
                }
                let iid: i64 = r.get(1).map_err(sq(path))?;
                if let std::collections::hash_map::Entry::Vacant(slot) = serials.entry(iid) {
                    let s: String = tx
                        .query_row("SELECT serial FROM instruments WHERE id=?1", [iid], |r| r.get(0))
                        .map_err(sq(path))?;
                    slot.insert(s.into());
                }
                let kind_raw: i64 = r.get(5).map_err(sq(path))?;
                f(RowRef {
                    seq,
                    instrument: serials.get(&iid).map(|s| &**s).unwrap_or(""),
                    msg_id: r.get::<_, i64>(2).map_err(sq(path))? as u64,
                    timestamp_ms: r.get(3).map_err(sq(path))?,
                    received_ms: r.get(4).map_err(sq(path))?,
                    kind: Kind::from_u8(kind_raw as u8).unwrap_or(Kind::Status),
                    priority,
                    payload,
                });
            }
        }
        tx.finish().map_err(sq(path))?;
        Ok(ranges)
    }

    /// Blocks until something was committed since `seen`, or `timeout`; returns the new count.
    pub fn wait_for_new(&self, seen: u64, timeout: Duration) -> u64 {
        let (m, cv) = &self.shared.pending;
        let g = m.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = cv.wait_timeout_while(g, timeout, |n| *n == seen).unwrap_or_else(|p| p.into_inner());
        *g
    }

    /// The commit counter that [`Queue::wait_for_new`] compares against.
    pub fn generation(&self) -> u64 {
        *self.shared.pending.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes [`Queue::wait_for_new`] callers (used at shutdown).
    pub fn wake(&self) {
        let (m, cv) = &self.shared.pending;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        cv.notify_all();
    }

    /// Current figures, including the age of the oldest message.
    pub fn stats(&self) -> QueueStats {
        let mut s = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if s.depth > 0 {
            let rd = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            s.oldest_received_ms =
                rd.conn.query_row("SELECT received FROM messages ORDER BY seq LIMIT 1", [], |r| r.get(0)).ok();
        }
        s
    }

    /// Milliseconds since the Unix epoch at which the writer last proved it was alive.
    pub fn heartbeat_ms(&self) -> u64 {
        self.shared.heartbeat_ms.load(Ordering::Relaxed)
    }

    /// Asks the writer to finish once its channel is drained.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
    }
}

fn counter(conn: &Connection, name: &str) -> rusqlite::Result<u64> {
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name=?1", [name], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    quota: u64,
    retention_ms: i64,
    shared: Arc<Shared>,
    instruments: HashMap<Arc<str>, i64>,
    /// Per instrument, the highest message id ever delivered: ids above it cannot be in
    /// `delivered_ranges`, so the common case (increasing ids) needs no lookup there.
    max_delivered: HashMap<i64, i64>,
    last_prune: Instant,
}

/// The outcome of one insert inside a group.
enum Outcome {
    Stored,
    Duplicate,
    Refused(ErrorCode, String),
}

impl Writer {
    fn new(
        conn: Connection,
        path: PathBuf,
        quota: u64,
        retention: Duration,
        shared: Arc<Shared>,
    ) -> rusqlite::Result<Self> {
        let mut instruments = HashMap::new();
        {
            let mut st = conn.prepare("SELECT id, serial FROM instruments")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, s) = row?;
                instruments.insert(Arc::from(s), id);
            }
        }
        let mut max_delivered = HashMap::new();
        {
            let mut st = conn.prepare("SELECT instrument, MAX(last) FROM delivered_ranges GROUP BY instrument")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (iid, max) = row?;
                max_delivered.insert(iid, max);
            }
        }
        Ok(Writer {
            conn,
            path,
            quota,
            retention_ms: retention.as_millis() as i64,
            shared,
            instruments,
            max_delivered,
            last_prune: Instant::now(),
        })
    }

    fn run(mut self, rx: Receiver<Cmd>) {
        let mut group: Vec<Cmd> = Vec::with_capacity(MAX_GROUP);
        loop {
            self.shared.heartbeat_ms.store(now_ms() as u64, Ordering::Relaxed);
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(cmd) => group.push(cmd),
                Err(RecvTimeoutError::Timeout) => {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    self.maybe_prune();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit_group(&mut group);
        }
        // Drain what is left so that no sender waits forever.
        while let Ok(cmd) = rx.try_recv() {
            group.push(cmd);
        }
        if !group.is_empty() {
            self.commit_group(&mut group);
        }
        log::info!("queue writer stopped");
    }

    fn commit_group(&mut self, group: &mut Vec<Cmd>) {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(group.len());
        let stats_before = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut stats = stats_before.clone();
        let mut max_delivered = self.max_delivered.clone();
        let mut stored_any = false;
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            for cmd in group.iter() {
                match cmd {
                    Cmd::Insert(m, _) => {
                        let o = insert_one(&tx, &mut self.instruments, &max_delivered, self.quota, &mut stats, m)?;
                        stored_any |= matches!(o, Outcome::Stored);
                        outcomes.push(o);
                    }
                    Cmd::Complete(ranges, _) => {
                        delete_delivered(&tx, &mut stats, &mut max_delivered, ranges)?;
                        outcomes.push(Outcome::Stored);
                    }
                }
            }
            set_counter(&tx, "dropped_total", stats.dropped_total)?;
            set_counter(&tx, "refused_full_total", stats.refused_full_total)?;
            tx.commit()
        })();
        match result {
            Ok(()) => {
                *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
                self.max_delivered = max_delivered;
                for (cmd, outcome) in group.drain(..).zip(outcomes) {
                    match cmd {
                        Cmd::Insert(m, reply) => {
                            let r = match outcome {
                                Outcome::Stored => Reply::Ack { msg_id: m.msg_id, duplicate: false },
                                Outcome::Duplicate => Reply::Ack { msg_id: m.msg_id, duplicate: true },
                                Outcome::Refused(code, reason) => Reply::Error { msg_id: m.msg_id, code, reason },
                            };
                            let _ = reply.send(r);
                        }
                        Cmd::Complete(_, done) => {
                            let _ = done.send(Ok(()));
                        }
                    }
                }
                if stored_any {
                    self.wake();
                }
            }
            Err(e) => {
                // Nothing of the group is stored: every sender learns it and keeps its data.
                let (code, reason) = storage_error(&self.path, &e);
                log::error!("queue commit failed ({} commands): {reason}", group.len());
                for cmd in group.drain(..) {
                    match cmd {
                        Cmd::Insert(m, reply) => {
                            let _ = reply.send(Reply::Error { msg_id: m.msg_id, code, reason: reason.clone() });
                        }
                        Cmd::Complete(_, done) => {
                            let _ = done.send(Err(reason.clone()));
                        }
                    }
                }
                // Instrument ids assigned in the failed transaction may not exist.
                self.instruments.clear();
                if let Ok(mut st) = self.conn.prepare("SELECT id, serial FROM instruments") {
                    if let Ok(rows) = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))) {
                        for (id, s) in rows.flatten() {
                            self.instruments.insert(Arc::from(s), id);
                        }
                    }
                }
            }
        }
    }

    fn wake(&self) {
        let (m, cv) = &self.shared.pending;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        cv.notify_all();
    }

    fn maybe_prune(&mut self) {
        if self.last_prune.elapsed() < Duration::from_secs(60) {
            return;
        }
        self.last_prune = Instant::now();
        let cutoff = now_ms() - self.retention_ms;
        if let Err(e) = self.conn.execute("DELETE FROM delivered_ranges WHERE at < ?1", [cutoff]) {
            log::warn!("pruning delivered ids in {}: {e}", self.path.display());
        }
    }
}

fn storage_error(path: &Path, e: &rusqlite::Error) -> (ErrorCode, String) {
    let what = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => "the data partition is full".to_string(),
        _ => e.to_string(),
    };
    (ErrorCode::StorageFailure, format!("not stored: queue {}: {what}", path.display()))
}

fn set_counter(tx: &Connection, name: &str, value: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO counters(name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
    )?
    .execute(params![name, value as i64])?;
    Ok(())
}

fn instrument_id(tx: &Connection, cache: &mut HashMap<Arc<str>, i64>, serial: &Arc<str>) -> rusqlite::Result<i64> {
    if let Some(id) = cache.get(serial) {
        return Ok(*id);
    }
    tx.prepare_cached("INSERT INTO instruments(serial) VALUES (?1) ON CONFLICT(serial) DO NOTHING")?
        .execute([&**serial])?;
    let id: i64 =
        tx.prepare_cached("SELECT id FROM instruments WHERE serial=?1")?.query_row([&**serial], |r| r.get(0))?;
    cache.insert(serial.clone(), id);
    Ok(id)
}

fn insert_one(
    tx: &Connection,
    instruments: &mut HashMap<Arc<str>, i64>,
    max_delivered: &HashMap<i64, i64>,
    quota: u64,
    stats: &mut QueueStats,
    m: &Incoming,
) -> rusqlite::Result<Outcome> {
    let iid = instrument_id(tx, instruments, &m.instrument)?;
    let id = m.msg_id as i64;
    let delivered = match max_delivered.get(&iid) {
        Some(max) if id <= *max => tx
            .prepare_cached(
                "SELECT last FROM delivered_ranges WHERE instrument=?1 AND first<=?2 ORDER BY first DESC LIMIT 1",
            )?
            .query_row(params![iid, id], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some_and(|last| last >= id),
        _ => false,
    };
    if delivered {
        stats.duplicates_total += 1;
        return Ok(Outcome::Duplicate);
    }
    // Alarms and the box's own records always leave first.
    let priority = if m.kind.droppable() { m.priority.max(1) } else { 0 };
    let size = m.payload.len() as u64 + ROW_OVERHEAD;
    // The unique key recognises a resend of a message still queued: nothing is inserted.
    let inserted = tx
        .prepare_cached(
            "INSERT INTO messages(instrument, msg_id, ts, received, kind, priority, size, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(instrument, msg_id) DO NOTHING",
        )?
        .execute(params![iid, id, m.timestamp_ms, now_ms(), m.kind as u8, priority, size as i64, m.payload])?;
    if inserted == 0 {
        stats.duplicates_total += 1;
        return Ok(Outcome::Duplicate);
    }
    let seq = tx.last_insert_rowid();
    stats.bytes += size;
    stats.depth += 1;
    stats.depth_by_priority[priority as usize] += 1;
    if stats.bytes > quota {
        // Make room by evicting droppable rows, least important priority first, oldest first.
        // Free a little more than needed so that a full queue does not evict on every insert.
        let target = stats.bytes.saturating_sub(quota) + quota / 100;
        let mut freed = 0u64;
        let mut lowest_allowed = 3u8;
        // A droppable message may only displace rows of the same or a less important priority.
        let floor = if m.kind.droppable() { priority } else { 1 };
        while freed < target && lowest_allowed >= floor {
            let mut st = tx.prepare_cached(
                "DELETE FROM messages WHERE seq IN
                   (SELECT seq FROM messages WHERE priority=?1 AND seq<>?2 ORDER BY seq LIMIT 256)
                 RETURNING size",
            )?;
            let sizes: Vec<i64> =
                st.query_map(params![lowest_allowed, seq], |r| r.get(0))?.collect::<Result<_, _>>()?;
            if sizes.is_empty() {
                if lowest_allowed == floor {
                    break;
                }
                lowest_allowed -= 1;
                continue;
            }
            let n = sizes.len() as u64;
            let bytes: u64 = sizes.iter().map(|s| *s as u64).sum();
            freed += bytes;
            stats.dropped_total += n;
            stats.depth_by_priority[lowest_allowed as usize] -= n;
            stats.depth -= n;
            stats.bytes -= bytes;
        }
        if stats.bytes > quota {
            // No room even after evicting everything it may displace: take it back out.
            tx.prepare_cached("DELETE FROM messages WHERE seq=?1")?.execute([seq])?;
            stats.bytes -= size;
            stats.depth -= 1;
            stats.depth_by_priority[priority as usize] -= 1;
            stats.refused_full_total += 1;
            let what =
                if m.kind.droppable() { "messages of equal or higher priority" } else { "alarms and audit records" };
            return Ok(Outcome::Refused(
                ErrorCode::QueueFull,
                format!("queue full: {} of {} bytes used by {what}; keep the message and retry", stats.bytes, quota),
            ));
        }
    }
    stats.stored_total += 1;
    Ok(Outcome::Stored)
}

fn delete_delivered(
    tx: &Connection,
    stats: &mut QueueStats,
    max_delivered: &mut HashMap<i64, i64>,
    ranges: &[SeqRange],
) -> rusqlite::Result<()> {
    let now = now_ms();
    let mut ids: Vec<(i64, i64)> = Vec::new();
    let mut del = tx.prepare_cached(
        "DELETE FROM messages WHERE priority=?1 AND seq BETWEEN ?2 AND ?3 RETURNING instrument, msg_id, size",
    )?;
    for r in ranges {
        // Rows may already be gone (evicted by the quota while their batch was in flight).
        let mut rows = del.query(params![r.priority, r.first, r.last])?;
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(row) = rows.next()? {
            ids.push((row.get(0)?, row.get(1)?));
            bytes += row.get::<_, i64>(2)? as u64;
            n += 1;
        }
        stats.depth -= n;
        stats.depth_by_priority[r.priority as usize] -= n;
        stats.bytes -= bytes;
    }
    // Remember the delivered ids as runs of consecutive ids per instrument.
    ids.sort_unstable();
    let mut remember =
        tx.prepare_cached("INSERT INTO delivered_ranges(instrument, first, last, at) VALUES (?1, ?2, ?3, ?4)")?;
    let mut i = 0;
    while i < ids.len() {
        let (iid, first) = ids[i];
        let mut last = first;
        i += 1;
        while i < ids.len() && ids[i].0 == iid && ids[i].1 == last.wrapping_add(1) && ids[i].1 > last {
            last = ids[i].1;
            i += 1;
        }
        remember.execute(params![iid, first, last, now])?;
        let m = max_delivered.entry(iid).or_insert(last);
        *m = (*m).max(last);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rapbox-queue-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("queue.db")
    }

    fn msg(serial: &str, id: u64, kind: Kind, len: usize) -> Incoming {
        Incoming {
            instrument: Arc::from(serial),
            msg_id: id,
            timestamp_ms: 1000 + id as i64,
            kind,
            priority: 2,
            payload: vec![b'x'; len],
        }
    }

    fn put(q: &Queue, m: Incoming) -> Reply {
        let (tx, rx) = mpsc::channel();
        q.submit(m, tx).unwrap();
        rx.recv().unwrap()
    }

    #[test]
    fn store_ack_dedup_and_drain_order() {
        let p = tmp("order");
        let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
        assert_eq!(put(&q, msg("A", 1, Kind::Status, 10)), Reply::Ack { msg_id: 1, duplicate: false });
        assert_eq!(put(&q, msg("A", 2, Kind::Status, 10)), Reply::Ack { msg_id: 2, duplicate: false });
        assert_eq!(put(&q, msg("B", 1, Kind::Alarm, 10)), Reply::Ack { msg_id: 1, duplicate: false });
        assert_eq!(put(&q, msg("A", 1, Kind::Status, 10)), Reply::Ack { msg_id: 1, duplicate: true });
        let batch = q.next_batch(&Cursor::default(), 100, 1 << 20).unwrap();
        let keys: Vec<(String, u64)> = batch.iter().map(|r| (r.instrument.to_string(), r.msg_id)).collect();
        assert_eq!(keys, vec![("B".into(), 1), ("A".into(), 1), ("A".into(), 2)]);
        q.complete(ranges_of(&batch)).unwrap();
        assert_eq!(q.stats().depth, 0);
        // A resend after delivery is acked as a duplicate and not stored again.
        assert_eq!(put(&q, msg("A", 2, Kind::Status, 10)), Reply::Ack { msg_id: 2, duplicate: true });
        assert_eq!(q.stats().depth, 0);
        q.shutdown();
        drop(q);
        w.join();
    }

    #[test]
    fn survives_reopen() {
        let p = tmp("reopen");
        {
            let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
            for i in 0..50 {
                put(&q, msg("A", i, Kind::Status, 100));
            }
            q.shutdown();
            drop(q);
            w.join();
        }
        let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
        let s = q.stats();
        assert_eq!(s.depth, 50);
        assert_eq!(s.bytes, 50 * (100 + ROW_OVERHEAD));
        assert_eq!(put(&q, msg("A", 7, Kind::Status, 100)), Reply::Ack { msg_id: 7, duplicate: true });
        q.shutdown();
        drop(q);
        w.join();
    }

    #[test]
    fn quota_drops_routine_and_refuses_alarms_when_only_alarms_remain() {
        let p = tmp("quota");
        let quota = 1 << 20;
        let (q, w) = Queue::open(&p, quota, Duration::from_secs(3600)).unwrap();
        let big = 10_000;
        // Fill with routine status.
        for i in 0..200 {
            assert!(matches!(put(&q, msg("A", i, Kind::Status, big)), Reply::Ack { .. }));
        }
        let s = q.stats();
        assert!(s.bytes <= quota);
        assert!(s.dropped_total > 0, "routine messages were dropped to stay within quota");
        // Alarms displace routine messages.
        for i in 0..200 {
            let r = put(&q, msg("B", i, Kind::Alarm, big));
            if let Reply::Error { code, reason, .. } = &r {
                assert_eq!(*code, ErrorCode::QueueFull);
                assert!(reason.starts_with("queue full:"), "{reason}");
                assert!(reason.contains("alarms and audit records"), "{reason}");
                // From now on the queue is all alarms: every further alarm is refused too.
                assert_eq!(q.stats().depth_by_priority[2], 0);
                assert!(matches!(put(&q, msg("B", 10_000, Kind::Alarm, big)), Reply::Error { .. }));
                // ...and so is routine traffic, which may not displace alarms.
                assert!(matches!(put(&q, msg("A", 10_000, Kind::Status, big)), Reply::Error { .. }));
                let s = q.stats();
                assert!(s.refused_full_total >= 3);
                q.shutdown();
                drop(q);
                w.join();
                return;
            }
        }
        panic!("alarms were never refused although they fill the quota");
    }

    #[test]
    fn migrations_run_forward_and_future_versions_are_refused() {
        let p = tmp("migrate");
        {
            // A version-1 database with data, as an earlier rapd left it.
            let c = Connection::open(&p).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute("INSERT INTO instruments(id, serial) VALUES (1, 'A')", []).unwrap();
            c.execute(
                "INSERT INTO messages(instrument,msg_id,ts,received,kind,priority,size,payload) VALUES (1,5,0,0,1,2,74,x'00')",
                [],
            )
            .unwrap();
        }
        let c = open_write(&p).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let n: i64 = c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        let d: i64 = c.query_row("SELECT COUNT(*) FROM delivered_ranges", [], |r| r.get(0)).unwrap();
        assert_eq!(d, 0);
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(c);
        let e = open_write(&p).unwrap_err().to_string();
        assert!(e.contains("schema version 4 is newer than this rapd understands (3)"), "{e}");
    }

    #[test]
    fn version_2_delivered_ids_survive_the_migration() {
        let p = tmp("migrate2");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute("INSERT INTO instruments(id, serial) VALUES (1, 'A')", []).unwrap();
            c.execute("INSERT INTO delivered(instrument, msg_id, at) VALUES (1, 9, 0)", []).unwrap();
        }
        let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
        assert_eq!(put(&q, msg("A", 9, Kind::Status, 10)), Reply::Ack { msg_id: 9, duplicate: true });
        assert_eq!(put(&q, msg("A", 8, Kind::Status, 10)), Reply::Ack { msg_id: 8, duplicate: false });
        q.shutdown();
        drop(q);
        w.join();
    }

    #[test]
    fn cursor_skips_rows_in_flight_but_not_new_alarms() {
        let p = tmp("cursor");
        let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
        for i in 1..=10 {
            put(&q, msg("A", i, Kind::Status, 10));
        }
        let mut cursor = Cursor::default();
        let first = q.next_batch(&cursor, 4, 1 << 20).unwrap();
        assert_eq!(first.iter().map(|r| r.msg_id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        cursor.advance(&ranges_of(&first));
        put(&q, msg("B", 1, Kind::Alarm, 10));
        // The first batch is acknowledged but its deletion not yet committed: not read again.
        let second = q.next_batch(&cursor, 4, 1 << 20).unwrap();
        let keys: Vec<(String, u64)> = second.iter().map(|r| (r.instrument.to_string(), r.msg_id)).collect();
        assert_eq!(keys, vec![("B".into(), 1), ("A".into(), 5), ("A".into(), 6), ("A".into(), 7)]);
        q.complete(ranges_of(&first)).unwrap();
        q.complete(ranges_of(&second)).unwrap();
        assert_eq!(q.stats().depth, 3);
        // Ids 1-7 of A are remembered as one range: resends are duplicates.
        for i in [1, 4, 7] {
            assert_eq!(put(&q, msg("A", i, Kind::Status, 10)), Reply::Ack { msg_id: i, duplicate: true });
        }
        q.shutdown();
        drop(q);
        w.join();
    }
}
