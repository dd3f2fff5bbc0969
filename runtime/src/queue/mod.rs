//! The durable queue: the only owner of the SQLite database on the data partition.
//!
//! One writer thread owns the write connection. Ingest threads hand it messages over a
//! bounded channel; it takes everything that is waiting (group commit), stores it in
//! one transaction with `synchronous=FULL` in WAL mode, and only after the commit has
//! returned does it send each message's acknowledgement back. Deletions after the data
//! center's acknowledgement go through the same thread. The uplink reads batches on a
//! separate read-only connection (WAL readers never block the writer).
//!
//! Storage: a group commit stores the messages of each priority as one **segment** — one
//! row holding their heads and their payloads as two blobs (see [`segment`]) — so the
//! cost per message is a copy, not a B-tree insert per row and index. Every message has
//! a seq (strictly increasing, never reused while rapd runs); a segment holds a
//! contiguous run of seqs, and the part of it still queued is the window `skip..live_end`
//! kept in the small `segment_live` row, so that delivering or evicting the front of a
//! segment rewrites a few integers, not its blobs. Ingest hands the writer the messages
//! of a connection in batches, so channel operations and wake-ups are per batch too.
//!
//! Ordering: batches leave by priority (0 first), then arrival. Quota: when the queued
//! bytes would exceed the quota, droppable messages are evicted, least important
//! priority first and oldest first, and counted; alarms and audit records are never
//! evicted, and when only they remain a new message is refused with `QueueFull`.
//! Dedup: `(instrument, msg_id)` is recognised while queued (an index in memory, rebuilt
//! at start from the segments' heads), and remembered after delivery for the
//! retention period (`delivered_ranges`), so a resend is acked again but stored once.

mod rangeset;
pub mod segment;

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

use self::rangeset::RangeSet;
use self::segment::MAX_RECORDS;

/// Bytes charged per message on top of the payload (keys, timestamps, bookkeeping).
pub const ROW_OVERHEAD: u64 = 64;
/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;
/// Commands (each up to [`MAX_SUBMIT`] messages) waiting for the writer.
const WRITE_CHANNEL: usize = 32;
/// Most messages in one [`Queue::submit_many`].
pub const MAX_SUBMIT: usize = 64;
/// Most messages in one group commit (so also in one segment).
const MAX_GROUP: usize = 2 * 1024;
/// Most payload bytes in one group commit: bounds the writer's memory.
const MAX_GROUP_BYTES: usize = 2 * 1024 * 1024;
const _: () = assert!(MAX_GROUP <= MAX_RECORDS);

/// One forward migration.
enum Migration {
    Sql(&'static str),
    Code(fn(&Connection) -> rusqlite::Result<()>),
}

/// Forward migrations, applied in order; index i brings the schema from version i to i+1.
const MIGRATIONS: &[Migration] = &[
    // 0 -> 1: the queue itself, one row per message.
    Migration::Sql(
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
    ),
    // 1 -> 2: remember delivered ids so that a late resend is not stored again.
    Migration::Sql(
        "CREATE TABLE delivered(instrument INTEGER NOT NULL, msg_id INTEGER NOT NULL, at INTEGER NOT NULL,
             PRIMARY KEY(instrument, msg_id)) WITHOUT ROWID;
         CREATE INDEX delivered_at ON delivered(at);",
    ),
    // 2 -> 3: strictly increasing seq (AUTOINCREMENT), delivered ids kept as ranges.
    Migration::Sql(
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
    ),
    // 3 -> 4: segments instead of one row per message.
    Migration::Code(migrate_to_segments),
];

const SEGMENT_SCHEMA: &str = "CREATE TABLE segments(
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         priority INTEGER NOT NULL,
         first_seq INTEGER NOT NULL,
         count INTEGER NOT NULL,
         received INTEGER NOT NULL,
         heads BLOB NOT NULL,
         payloads BLOB NOT NULL);
     CREATE INDEX segments_drain ON segments(priority, first_seq);
     CREATE TABLE segment_live(
         id INTEGER PRIMARY KEY,
         skip INTEGER NOT NULL,
         live_end INTEGER NOT NULL,
         live_count INTEGER NOT NULL,
         live_bytes INTEGER NOT NULL);";

/// 3 -> 4: every queued message moves into segments of its priority, in seq order.
fn migrate_to_segments(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SEGMENT_SCHEMA)?;
    let mut next_seq: i64 = 1;
    {
        let mut st = conn.prepare(
            "SELECT priority, instrument, msg_id, ts, received, kind, size, payload FROM messages ORDER BY priority, seq",
        )?;
        let mut rows = st.query([])?;
        let mut seg = SegmentBuilder::default();
        let mut seg_priority = -1i64;
        let mut seg_received = 0i64;
        while let Some(r) = rows.next()? {
            let priority: i64 = r.get(0)?;
            if (priority != seg_priority || seg.count >= MAX_RECORDS) && seg.count > 0 {
                next_seq = seg.insert(conn, seg_priority as u8, next_seq, seg_received)?;
            }
            if seg.count == 0 {
                seg_priority = priority;
                seg_received = r.get(4)?;
            }
            let payload = r.get_ref(7)?.as_blob()?;
            seg.push(r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?, r.get::<_, i64>(5)? as u8, payload);
            seg.bytes += r.get::<_, i64>(6)? as u64;
        }
        if seg.count > 0 {
            next_seq = seg.insert(conn, seg_priority as u8, next_seq, seg_received)?;
        }
    }
    conn.execute_batch("DROP TABLE messages;")?;
    set_counter(conn, "next_seq", next_seq as u64)
}

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

/// Where the writer sends the outcomes of a submission: one channel message per outcome,
/// or all outcomes of one submission in one channel message (so that a pipelining agent's
/// ack thread is woken once per hand-over, not once per message).
pub enum ReplyTo {
    Each(Sender<Reply>),
    Batch(Sender<Vec<Reply>>),
}

impl ReplyTo {
    fn send(&self, replies: Vec<Reply>) {
        match self {
            ReplyTo::Each(tx) => {
                for r in replies {
                    let _ = tx.send(r);
                }
            }
            ReplyTo::Batch(tx) => {
                let _ = tx.send(replies);
            }
        }
    }
}

impl From<Sender<Reply>> for ReplyTo {
    fn from(tx: Sender<Reply>) -> Self {
        ReplyTo::Each(tx)
    }
}

impl From<Sender<Vec<Reply>>> for ReplyTo {
    fn from(tx: Sender<Vec<Reply>>) -> Self {
        ReplyTo::Batch(tx)
    }
}

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

/// The messages of one priority that a batch carried: every queued message of that
/// priority with `first <= seq <= last` (seqs only grow, so nothing arrives inside a
/// range later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub priority: u8,
    pub first: i64,
    pub last: i64,
}

/// Per priority, the highest seq already handed to the data center; the next batch starts
/// above it. Messages whose deletion is still being committed are thereby never sent twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor(pub [i64; 4]);

impl Cursor {
    /// Moves past the messages of `ranges`.
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
    /// Messages of one sender; each outcome goes to the sender on its own.
    Insert(Vec<Incoming>, ReplyTo),
    /// Delete delivered messages; answer when committed.
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
    // 1 MiB of page cache: segments are appended, so the hot pages are few.
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
    for (v, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction().map_err(sq(path))?;
        match m {
            Migration::Sql(sql) => tx.execute_batch(sql),
            Migration::Code(f) => f(&tx),
        }
        .map_err(sq(path))?;
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
                .prepare(
                    "SELECT s.priority, COALESCE(SUM(l.live_count),0), COALESCE(SUM(l.live_bytes),0)
                     FROM segments s JOIN segment_live l ON l.id=s.id GROUP BY s.priority",
                )
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
        let writer =
            Writer::new(conn, path.into(), quota_bytes, dedup_retention, shared.clone()).map_err(|e| match e {
                StoreError::Sqlite(source) => QueueError::Sqlite { path: path.into(), source },
                StoreError::Damaged(detail) => QueueError::Corrupt { path: path.into(), detail },
            })?;
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
    pub fn submit(&self, msg: Incoming, reply: impl Into<ReplyTo>) -> Result<(), QueueError> {
        self.tx.send(Cmd::Insert(vec![msg], reply.into())).map_err(|_| QueueError::Stopped)
    }

    /// Like [`Queue::submit`] for several messages of one sender (at most [`MAX_SUBMIT`]
    /// are sensible; more only make the writer's groups uneven); one outcome per message
    /// arrives on `reply`, in order (all in one channel message on a [`ReplyTo::Batch`]).
    pub fn submit_many(&self, msgs: Vec<Incoming>, reply: impl Into<ReplyTo>) -> Result<(), QueueError> {
        if msgs.is_empty() {
            return Ok(());
        }
        self.tx.send(Cmd::Insert(msgs, reply.into())).map_err(|_| QueueError::Stopped)
    }

    /// Deletes delivered messages (after the data center acknowledged them); returns once committed.
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

    /// Like [`Queue::next_batch`], but hands each message to `f` straight from SQLite's
    /// buffers (no copy of the batch is kept) and returns the batch's seq ranges.
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
        let damaged = |seq: i64| QueueError::Corrupt { path: path.into(), detail: format!("segment at seq {seq}") };
        let mut ranges: Vec<SeqRange> = Vec::new();
        let (mut count, mut bytes) = (0usize, 0usize);
        let tx = conn.unchecked_transaction().map_err(sq(path))?;
        'priorities: for priority in 0..4u8 {
            if count >= max_records {
                break;
            }
            let after = cursor.0[priority as usize];
            let mut st = tx
                .prepare_cached(
                    "SELECT s.first_seq, l.skip, l.live_end, s.received, s.heads, s.payloads
                     FROM segments s JOIN segment_live l ON l.id=s.id
                     WHERE s.priority=?1 AND s.first_seq>?2 AND s.first_seq+l.live_end>?3
                     ORDER BY s.first_seq",
                )
                .map_err(sq(path))?;
            let mut rows = st.query(params![priority, after - MAX_RECORDS as i64, after + 1]).map_err(sq(path))?;
            while let Some(r) = rows.next().map_err(sq(path))? {
                let first_seq: i64 = r.get(0).map_err(sq(path))?;
                let (skip, live_end): (i64, i64) = (r.get(1).map_err(sq(path))?, r.get(2).map_err(sq(path))?);
                let received_ms: i64 = r.get(3).map_err(sq(path))?;
                let heads = r.get_ref(4).and_then(|v| v.as_blob().map_err(Into::into)).map_err(sq(path))?;
                let payloads = r.get_ref(5).and_then(|v| v.as_blob().map_err(Into::into)).map_err(sq(path))?;
                let mut recs = segment::Records::new(heads);
                for index in 0..live_end {
                    let placed = recs.next_placed().ok_or_else(|| damaged(first_seq))?;
                    let seq = first_seq + index;
                    if index < skip || seq <= after {
                        continue;
                    }
                    let rec = placed.head;
                    let payload = payloads
                        .get(placed.payload_off..placed.payload_off + rec.len)
                        .ok_or_else(|| damaged(first_seq))?;
                    if count >= max_records || (count > 0 && bytes + rec.len > max_bytes) {
                        break 'priorities;
                    }
                    bytes += rec.len + 32;
                    count += 1;
                    match ranges.last_mut() {
                        Some(last) if last.priority == priority => last.last = seq,
                        _ => ranges.push(SeqRange { priority, first: seq, last: seq }),
                    }
                    if let std::collections::hash_map::Entry::Vacant(slot) = serials.entry(rec.instrument) {
                        let s: String = tx
                            .query_row("SELECT serial FROM instruments WHERE id=?1", [rec.instrument], |r| r.get(0))
                            .map_err(sq(path))?;
                        slot.insert(s.into());
                    }
                    f(RowRef {
                        seq,
                        instrument: serials.get(&rec.instrument).map(|s| &**s).unwrap_or(""),
                        msg_id: rec.msg_id,
                        timestamp_ms: rec.timestamp_ms,
                        received_ms,
                        kind: Kind::from_u8(rec.kind).unwrap_or(Kind::Status),
                        priority,
                        payload,
                    });
                }
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
            s.oldest_received_ms = rd.conn.query_row("SELECT MIN(received) FROM segments", [], |r| r.get(0)).ok();
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

/// Why a group could not be stored.
#[derive(Debug)]
enum StoreError {
    Sqlite(rusqlite::Error),
    /// A segment's blobs do not decode.
    Damaged(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// The records of a segment being built (its buffers are reused from segment to segment).
#[derive(Default)]
struct SegmentBuilder {
    heads: Vec<u8>,
    payloads: Vec<u8>,
    count: usize,
    bytes: u64,
}

impl SegmentBuilder {
    fn push(&mut self, instrument: i64, msg_id: u64, timestamp_ms: i64, kind: u8, payload: &[u8]) {
        segment::push(&mut self.heads, &mut self.payloads, instrument, msg_id, timestamp_ms, kind, payload);
        self.count += 1;
    }

    /// Stores the segment with seqs from `first_seq` and empties the builder; returns the
    /// next free seq.
    fn insert(&mut self, conn: &Connection, priority: u8, first_seq: i64, received: i64) -> rusqlite::Result<i64> {
        let n = self.count as i64;
        insert_segment(conn, priority, first_seq, n, received, &self.heads, &self.payloads, self.bytes)?;
        self.heads.clear();
        self.payloads.clear();
        self.count = 0;
        self.bytes = 0;
        Ok(first_seq + n)
    }
}

/// Inserts one segment whose records are all queued.
#[allow(clippy::too_many_arguments)]
fn insert_segment(
    conn: &Connection,
    priority: u8,
    first_seq: i64,
    count: i64,
    received: i64,
    heads: &[u8],
    payloads: &[u8],
    bytes: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO segments(priority, first_seq, count, received, heads, payloads) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![priority, first_seq, count, received, heads, payloads])?;
    let id = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO segment_live(id, skip, live_end, live_count, live_bytes) VALUES (?1, 0, ?2, ?2, ?3)",
    )?
    .execute(params![id, count, bytes as i64])?;
    Ok(())
}

/// A message of the group being committed, waiting for its segment.
struct Pend {
    /// Index of its command in the group, and of the message in the command.
    cmd: usize,
    msg: usize,
    instrument: i64,
    msg_id: u64,
    size: u64,
}

/// The group's stored messages per priority; `front[p]` of them were evicted again by
/// later messages of the same group (they are acknowledged and counted as dropped).
#[derive(Default)]
struct GroupSegments {
    recs: [Vec<Pend>; 4],
    front: [usize; 4],
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    quota: u64,
    retention_ms: i64,
    shared: Arc<Shared>,
    instruments: HashMap<Arc<str>, i64>,
    /// Per instrument, the ids in the queue.
    queued: HashMap<i64, RangeSet>,
    /// Per instrument, the highest message id ever delivered: ids above it cannot be in
    /// `delivered_ranges`, so the common case (increasing ids) needs no lookup there.
    max_delivered: HashMap<i64, i64>,
    next_seq: i64,
    last_prune: Instant,
}

/// The outcome of one command inside a group.
enum Outcome {
    Stored,
    Duplicate,
    Refused(ErrorCode, String),
}

/// The writer's bookkeeping that a failed transaction must not change (applied on commit).
struct GroupState {
    stats: QueueStats,
    max_delivered: HashMap<i64, i64>,
    next_seq: i64,
}

impl Writer {
    fn new(
        conn: Connection,
        path: PathBuf,
        quota: u64,
        retention: Duration,
        shared: Arc<Shared>,
    ) -> Result<Self, StoreError> {
        let mut max_delivered = HashMap::new();
        {
            let mut st = conn.prepare("SELECT instrument, MAX(last) FROM delivered_ranges GROUP BY instrument")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (iid, max) = row?;
                max_delivered.insert(iid, max);
            }
        }
        let used: i64 = conn.query_row("SELECT COALESCE(MAX(first_seq+count),1) FROM segments", [], |r| r.get(0))?;
        let next_seq = used.max(counter(&conn, "next_seq")? as i64).max(1);
        let mut w = Writer {
            conn,
            path,
            quota,
            retention_ms: retention.as_millis() as i64,
            shared,
            instruments: HashMap::new(),
            queued: HashMap::new(),
            max_delivered,
            next_seq,
            last_prune: Instant::now(),
        };
        w.reload()?;
        Ok(w)
    }

    /// Reads the instrument table and rebuilds the index of queued ids from the segments'
    /// heads (at start, and after a failed commit).
    fn reload(&mut self) -> Result<(), StoreError> {
        self.instruments.clear();
        self.queued.clear();
        let mut st = self.conn.prepare("SELECT id, serial FROM instruments")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, s) = row?;
            self.instruments.insert(Arc::from(s), id);
        }
        let mut st = self.conn.prepare(
            "SELECT s.first_seq, l.skip, l.live_end, s.heads FROM segments s JOIN segment_live l ON l.id=s.id",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (first_seq, skip, end): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let heads = r.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?;
            let mut recs = segment::Records::new(heads);
            for index in 0..end {
                let Some(p) = recs.next_placed() else {
                    return Err(StoreError::Damaged(format!(
                        "the heads of the segment at seq {first_seq} do not decode"
                    )));
                };
                if index >= skip {
                    self.queued.entry(p.head.instrument).or_default().insert(p.head.msg_id);
                }
            }
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<Cmd>) {
        let mut group: Vec<Cmd> = Vec::with_capacity(WRITE_CHANNEL);
        let mut builder = SegmentBuilder::default();
        let size = |c: &Cmd| match c {
            Cmd::Insert(m, _) => (m.len(), m.iter().map(|m| m.payload.len()).sum::<usize>()),
            Cmd::Complete(..) => (1, 0),
        };
        loop {
            self.shared.heartbeat_ms.store(now_ms() as u64, Ordering::Relaxed);
            let (mut msgs, mut bytes) = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(cmd) => {
                    let n = size(&cmd);
                    group.push(cmd);
                    n
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    self.maybe_prune();
                    crate::memory::trim_heap();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            while msgs < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        let (n, b) = size(&cmd);
                        msgs += n;
                        bytes += b;
                        group.push(cmd);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit_group(&mut group, &mut builder);
        }
        // Drain what is left so that no sender waits forever.
        while let Ok(cmd) = rx.try_recv() {
            group.push(cmd);
            if group.len() >= MAX_GROUP / MAX_SUBMIT {
                self.commit_group(&mut group, &mut builder);
            }
        }
        if !group.is_empty() {
            self.commit_group(&mut group, &mut builder);
        }
        log::info!("queue writer stopped");
    }

    fn commit_group(&mut self, group: &mut Vec<Cmd>, builder: &mut SegmentBuilder) {
        let mut state = GroupState {
            stats: self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            max_delivered: self.max_delivered.clone(),
            next_seq: self.next_seq,
        };
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(MAX_GROUP);
        let result = self.store_group(group, &mut state, &mut outcomes, builder);
        match result {
            Ok(stored_any) => {
                *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = state.stats;
                self.max_delivered = state.max_delivered;
                self.next_seq = state.next_seq;
                let mut outcomes = outcomes.into_iter();
                for cmd in group.drain(..) {
                    match cmd {
                        Cmd::Insert(msgs, reply) => {
                            let replies = msgs
                                .into_iter()
                                .zip(&mut outcomes)
                                .map(|(m, outcome)| match outcome {
                                    Outcome::Stored => Reply::Ack { msg_id: m.msg_id, duplicate: false },
                                    Outcome::Duplicate => Reply::Ack { msg_id: m.msg_id, duplicate: true },
                                    Outcome::Refused(code, reason) => Reply::Error { msg_id: m.msg_id, code, reason },
                                })
                                .collect();
                            reply.send(replies);
                        }
                        Cmd::Complete(_, done) => {
                            let _ = outcomes.next();
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
                        Cmd::Insert(msgs, reply) => {
                            let replies = msgs
                                .into_iter()
                                .map(|m| Reply::Error { msg_id: m.msg_id, code, reason: reason.clone() })
                                .collect();
                            reply.send(replies);
                        }
                        Cmd::Complete(_, done) => {
                            let _ = done.send(Err(reason.clone()));
                        }
                    }
                }
                builder.heads.clear();
                builder.payloads.clear();
                builder.count = 0;
                builder.bytes = 0;
                // The in-memory index may hold what the failed transaction did not store.
                if let Err(e) = self.reload() {
                    let (_, reason) = storage_error(&self.path, &e);
                    log::error!("queue: cannot reload the index after a failed commit: {reason}");
                }
            }
        }
    }

    /// Stores one group in one transaction; true if a message was stored.
    fn store_group(
        &mut self,
        group: &[Cmd],
        st: &mut GroupState,
        outcomes: &mut Vec<Outcome>,
        builder: &mut SegmentBuilder,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let mut segs = GroupSegments::default();
        let mut ctx = Ctx {
            tx: &tx,
            instruments: &mut self.instruments,
            queued: &mut self.queued,
            quota: self.quota,
            st,
            segs: &mut segs,
        };
        for (i, cmd) in group.iter().enumerate() {
            match cmd {
                Cmd::Insert(msgs, _) => {
                    for (j, m) in msgs.iter().enumerate() {
                        let o = ctx.insert(i, j, m)?;
                        outcomes.push(o);
                    }
                }
                Cmd::Complete(ranges, _) => {
                    ctx.delete_delivered(ranges)?;
                    outcomes.push(Outcome::Stored);
                }
            }
        }
        let received = now_ms();
        let mut stored_any = false;
        for p in 0..4 {
            for chunk in segs.recs[p][segs.front[p]..].chunks(MAX_RECORDS) {
                for r in chunk {
                    let Cmd::Insert(msgs, _) = &group[r.cmd] else { continue };
                    let m = &msgs[r.msg];
                    builder.push(r.instrument, r.msg_id, m.timestamp_ms, m.kind as u8, &m.payload);
                    builder.bytes += r.size;
                }
                st.next_seq = builder.insert(&tx, p as u8, st.next_seq, received)?;
                stored_any = true;
            }
        }
        set_counter(&tx, "dropped_total", st.stats.dropped_total)?;
        set_counter(&tx, "refused_full_total", st.stats.refused_full_total)?;
        if stored_any {
            set_counter(&tx, "next_seq", st.next_seq as u64)?;
        }
        tx.commit()?;
        Ok(stored_any)
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

/// What one group's commands work on.
struct Ctx<'a> {
    tx: &'a Connection,
    instruments: &'a mut HashMap<Arc<str>, i64>,
    queued: &'a mut HashMap<i64, RangeSet>,
    quota: u64,
    st: &'a mut GroupState,
    segs: &'a mut GroupSegments,
}

/// The queued part of one stored segment, as read for a deletion or an eviction (heads
/// only: payloads are copied with SQL when a segment must be split).
struct LiveSegment {
    id: i64,
    priority: u8,
    first_seq: i64,
    skip: i64,
    live_end: i64,
    live_bytes: i64,
    heads: Vec<u8>,
}

/// One queued record of a [`LiveSegment`].
#[derive(Clone, Copy)]
struct LiveRecord {
    head_off: usize,
    payload_off: usize,
    instrument: i64,
    msg_id: u64,
    /// Quota bytes.
    size: u64,
}

impl LiveSegment {
    const COLUMNS: &'static str = "s.id, s.priority, s.first_seq, l.skip, l.live_end, l.live_bytes, s.heads
         FROM segments s JOIN segment_live l ON l.id=s.id";

    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LiveSegment> {
        Ok(LiveSegment {
            id: r.get(0)?,
            priority: r.get::<_, i64>(1)?.clamp(0, 3) as u8,
            first_seq: r.get(2)?,
            skip: r.get(3)?,
            live_end: r.get(4)?,
            live_bytes: r.get(5)?,
            heads: r.get(6)?,
        })
    }

    /// The queued records, plus the blob offsets just past the last one.
    fn records(&self) -> Result<(Vec<LiveRecord>, (usize, usize)), StoreError> {
        let damaged =
            || StoreError::Damaged(format!("the heads of the segment at seq {} do not decode", self.first_seq));
        let mut recs = segment::Records::new(&self.heads);
        let mut out = Vec::with_capacity((self.live_end - self.skip).max(0) as usize);
        for index in 0..self.live_end {
            let p = recs.next_placed().ok_or_else(damaged)?;
            if index >= self.skip {
                out.push(LiveRecord {
                    head_off: p.head_off,
                    payload_off: p.payload_off,
                    instrument: p.head.instrument,
                    msg_id: p.head.msg_id,
                    size: p.head.len as u64 + ROW_OVERHEAD,
                });
            }
        }
        Ok((out, recs.offsets()))
    }
}

/// Consecutive ids per instrument, from (instrument, msg_id) pairs in any order.
fn runs(mut ids: Vec<(i64, u64)>) -> Vec<(i64, u64, u64)> {
    ids.sort_unstable();
    let mut out: Vec<(i64, u64, u64)> = Vec::new();
    for (i, id) in ids {
        match out.last_mut() {
            Some((li, _, last)) if *li == i && last.checked_add(1) == Some(id) => *last = id,
            Some((li, _, last)) if *li == i && *last == id => {}
            _ => out.push((i, id, id)),
        }
    }
    out
}

impl Ctx<'_> {
    fn insert(&mut self, cmd: usize, msg: usize, m: &Incoming) -> Result<Outcome, StoreError> {
        let iid = instrument_id(self.tx, self.instruments, &m.instrument)?;
        let id = m.msg_id;
        if self.queued.get(&iid).is_some_and(|s| s.contains(id)) || self.delivered(iid, id)? {
            self.st.stats.duplicates_total += 1;
            return Ok(Outcome::Duplicate);
        }
        // Alarms and the box's own records always leave first.
        let priority = if m.kind.droppable() { m.priority.clamp(1, 3) } else { 0 };
        let p = priority as usize;
        let size = m.payload.len() as u64 + ROW_OVERHEAD;
        let stats = &mut self.st.stats;
        stats.bytes += size;
        stats.depth += 1;
        stats.depth_by_priority[p] += 1;
        if stats.bytes > self.quota {
            // Make room by evicting droppable messages, least important priority first,
            // oldest first; free a little more than needed so that a full queue does not
            // evict on every insert. A droppable message may only displace messages of the
            // same or a less important priority.
            let target = stats.bytes.saturating_sub(self.quota) + self.quota / 100;
            let floor = if m.kind.droppable() { priority } else { 1 };
            let mut freed = 0u64;
            let mut lowest = 3u8;
            while freed < target && lowest >= floor {
                let mut got = self.evict_stored(lowest, target - freed)?;
                if got == 0 {
                    got = self.evict_group(lowest, target - freed);
                }
                if got == 0 {
                    if lowest == floor {
                        break;
                    }
                    lowest -= 1;
                }
                freed += got;
            }
            let stats = &mut self.st.stats;
            if stats.bytes > self.quota {
                // No room even after evicting everything it may displace.
                stats.bytes -= size;
                stats.depth -= 1;
                stats.depth_by_priority[p] -= 1;
                stats.refused_full_total += 1;
                let what = if m.kind.droppable() {
                    "messages of equal or higher priority"
                } else {
                    "alarms and audit records"
                };
                return Ok(Outcome::Refused(
                    ErrorCode::QueueFull,
                    format!(
                        "queue full: {} of {} bytes used by {what}; keep the message and retry",
                        stats.bytes, self.quota
                    ),
                ));
            }
        }
        self.queued.entry(iid).or_default().insert(id);
        self.segs.recs[p].push(Pend { cmd, msg, instrument: iid, msg_id: id, size });
        self.st.stats.stored_total += 1;
        Ok(Outcome::Stored)
    }

    /// Whether `id` of instrument `iid` was delivered within the retention period.
    fn delivered(&self, iid: i64, id: u64) -> rusqlite::Result<bool> {
        let id = id as i64;
        match self.st.max_delivered.get(&iid) {
            Some(max) if id <= *max => Ok(self
                .tx
                .prepare_cached(
                    "SELECT last FROM delivered_ranges WHERE instrument=?1 AND first<=?2 ORDER BY first DESC LIMIT 1",
                )?
                .query_row(params![iid, id], |r| r.get::<_, i64>(0))
                .optional()?
                .is_some_and(|last| last >= id)),
            _ => Ok(false),
        }
    }

    /// Evicts the oldest stored messages of `priority` until `need` bytes are freed or one
    /// segment is used up; returns the bytes freed (0: none of that priority is stored).
    fn evict_stored(&mut self, priority: u8, need: u64) -> Result<u64, StoreError> {
        let seg = self
            .tx
            .prepare_cached(&format!(
                "SELECT {} WHERE s.priority=?1 ORDER BY s.first_seq LIMIT 1",
                LiveSegment::COLUMNS
            ))?
            .query_row([priority], LiveSegment::from_row)
            .optional()?;
        let Some(seg) = seg else { return Ok(0) };
        let (recs, end) = seg.records()?;
        let (mut n, mut freed) = (0usize, 0u64);
        while n < recs.len() && freed < need {
            freed += recs[n].size;
            n += 1;
        }
        self.trim(&seg, &recs, end, 0, n, freed)?;
        for (i, a, b) in runs(recs[..n].iter().map(|r| (r.instrument, r.msg_id)).collect()) {
            if let Some(s) = self.queued.get_mut(&i) {
                s.remove_range(a, b);
            }
        }
        self.st.stats.dropped_total += n as u64;
        Ok(freed)
    }

    /// Evicts the oldest messages of `priority` stored earlier in this same group.
    fn evict_group(&mut self, priority: u8, need: u64) -> u64 {
        let p = priority as usize;
        let mut freed = 0u64;
        while freed < need && self.segs.front[p] < self.segs.recs[p].len() {
            let r = &self.segs.recs[p][self.segs.front[p]];
            freed += r.size;
            if let Some(s) = self.queued.get_mut(&r.instrument) {
                s.remove_range(r.msg_id, r.msg_id);
            }
            self.segs.front[p] += 1;
            let stats = &mut self.st.stats;
            stats.bytes -= r.size;
            stats.depth -= 1;
            stats.depth_by_priority[p] -= 1;
            stats.dropped_total += 1;
        }
        freed
    }

    /// Removes the queued records `lo..hi` (indices into `recs`, the queued records of a
    /// stored segment; `end` the blob offsets past the last) whose quota bytes are
    /// `bytes`. Adjusts the depth and byte figures.
    fn trim(
        &mut self,
        seg: &LiveSegment,
        recs: &[LiveRecord],
        end: (usize, usize),
        lo: usize,
        hi: usize,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let n = (hi - lo) as i64;
        if n == 0 {
            return Ok(());
        }
        if lo == 0 && hi == recs.len() {
            self.tx.prepare_cached("DELETE FROM segments WHERE id=?1")?.execute([seg.id])?;
            self.tx.prepare_cached("DELETE FROM segment_live WHERE id=?1")?.execute([seg.id])?;
        } else if lo == 0 {
            self.tx
                .prepare_cached(
                    "UPDATE segment_live SET skip=?2, live_count=live_count-?3, live_bytes=live_bytes-?4 WHERE id=?1",
                )?
                .execute(params![seg.id, seg.skip + hi as i64, n, bytes as i64])?;
        } else if hi == recs.len() {
            self.tx
                .prepare_cached(
                    "UPDATE segment_live SET live_end=?2, live_count=live_count-?3, live_bytes=live_bytes-?4 WHERE id=?1",
                )?
                .execute(params![seg.id, seg.skip + lo as i64, n, bytes as i64])?;
        } else {
            // A hole in the middle (rare: a delivery that is not a prefix): the tail
            // becomes a segment of its own, its blobs cut out of this one's by SQL.
            let tail = &recs[hi..];
            let tail_bytes: u64 = tail.iter().map(|r| r.size).sum();
            let (h0, p0) = (tail[0].head_off as i64, tail[0].payload_off as i64);
            let (h1, p1) = (end.0 as i64, end.1 as i64);
            self.tx
                .prepare_cached(
                    "INSERT INTO segments(priority, first_seq, count, received, heads, payloads)
                     SELECT priority, ?2, ?3, received, substr(heads, ?4, ?5), substr(payloads, ?6, ?7)
                     FROM segments WHERE id=?1",
                )?
                .execute(params![
                    seg.id,
                    seg.first_seq + seg.skip + hi as i64,
                    tail.len() as i64,
                    h0 + 1,
                    h1 - h0,
                    p0 + 1,
                    p1 - p0
                ])?;
            let id = self.tx.last_insert_rowid();
            self.tx
                .prepare_cached(
                    "INSERT INTO segment_live(id, skip, live_end, live_count, live_bytes) VALUES (?1, 0, ?2, ?2, ?3)",
                )?
                .execute(params![id, tail.len() as i64, tail_bytes as i64])?;
            self.tx
                .prepare_cached("UPDATE segment_live SET live_end=?2, live_count=?3, live_bytes=?4 WHERE id=?1")?
                .execute(params![
                    seg.id,
                    seg.skip + lo as i64,
                    lo as i64,
                    seg.live_bytes - (bytes + tail_bytes) as i64
                ])?;
        }
        let stats = &mut self.st.stats;
        let p = seg.priority as usize;
        stats.depth -= n as u64;
        stats.depth_by_priority[p] -= n as u64;
        stats.bytes -= bytes;
        Ok(())
    }

    /// Deletes delivered messages and remembers their ids for the retention period.
    fn delete_delivered(&mut self, ranges: &[SeqRange]) -> Result<(), StoreError> {
        let mut ids: Vec<(i64, u64)> = Vec::new();
        for r in ranges {
            // Messages may already be gone (evicted by the quota while their batch was in flight).
            let segs: Vec<LiveSegment> = self
                .tx
                .prepare_cached(&format!(
                    "SELECT {} WHERE s.priority=?1 AND s.first_seq>?2 AND s.first_seq<=?3 AND s.first_seq+l.live_end>?4
                     ORDER BY s.first_seq",
                    LiveSegment::COLUMNS
                ))?
                .query_map(params![r.priority, r.first - MAX_RECORDS as i64, r.last, r.first], LiveSegment::from_row)?
                .collect::<Result<_, _>>()?;
            for seg in segs {
                let (recs, end) = seg.records()?;
                let base = seg.first_seq + seg.skip;
                let lo = (r.first - base).clamp(0, recs.len() as i64) as usize;
                let hi = (r.last + 1 - base).clamp(0, recs.len() as i64) as usize;
                if lo >= hi {
                    continue;
                }
                let bytes: u64 = recs[lo..hi].iter().map(|x| x.size).sum();
                ids.extend(recs[lo..hi].iter().map(|x| (x.instrument, x.msg_id)));
                self.trim(&seg, &recs, end, lo, hi, bytes)?;
            }
        }
        // Remember the delivered ids as runs of consecutive ids per instrument.
        let now = now_ms();
        let mut remember = self
            .tx
            .prepare_cached("INSERT INTO delivered_ranges(instrument, first, last, at) VALUES (?1, ?2, ?3, ?4)")?;
        for (iid, first, last) in runs(ids) {
            if let Some(s) = self.queued.get_mut(&iid) {
                s.remove_range(first, last);
                if s.is_empty() {
                    self.queued.remove(&iid);
                }
            }
            remember.execute(params![iid, first as i64, last as i64, now])?;
            let m = self.st.max_delivered.entry(iid).or_insert(last as i64);
            *m = (*m).max(last as i64);
        }
        Ok(())
    }
}

fn storage_error(path: &Path, e: &StoreError) -> (ErrorCode, String) {
    let what = match e {
        StoreError::Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
            "the data partition is full".to_string()
        }
        StoreError::Sqlite(e) => e.to_string(),
        StoreError::Damaged(d) => format!("damaged: {d}"),
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

#[cfg(test)]
mod tests;
