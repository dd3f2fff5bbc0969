//! The box's own events, sent upstream through the queue like any report: today the
//! link of each port (`up`, `down`, `missing`) when rapd starts and whenever it changes.
//!
//! Each event is one `Kind::BoxEvent` record under the instrument's serial (`""` for the
//! uplink), priority 1, with a small JSON payload:
//!
//! ```json
//! {"event":"link","interface":"eth1","link":"down","changes":3,"at_start":false}
//! ```
//!
//! The record's timestamp is when rapd saw the change. Ids come from the box's half of
//! the id space ([`rapwire::BOX_ID_BASE`] and up; instruments' ids are below it, so an
//! event never collides with a report in the `(instrument, msg_id)` key). They are
//! allocated in blocks from a counter kept beside the queue (`box-events.seq`, written
//! and fsynced before an id of a new block is used) and never below the clock
//! (`BOX_ID_BASE + ms since the epoch × 4096`), so neither a restart nor a lost counter
//! file with a sane clock reuses an id — a reused id would be taken for a duplicate and
//! the event lost.
//!
//! One thread submits the events in order and waits for each to be stored; when the
//! queue refuses one (full of alarms and audit records, or a storage failure) it is
//! retried with a growing pause. At most [`BACKLOG`] events wait; beyond that new ones
//! are dropped with a warning (a port flapping faster than the queue stores).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rapwire::agent::Reply;
use rapwire::{Kind, BOX_ID_BASE};

use crate::ports::{LinkEvents, LinkStatus, LogEvents};
use crate::queue::{Incoming, Queue};

/// Events waiting to be stored, at most.
pub const BACKLOG: usize = 256;
/// Ids reserved per write of the counter file.
const BLOCK: u64 = 64;
/// The priority of box events (below alarms and audit records, above routine reports).
const PRIORITY: u8 = 1;

/// The counter file for a queue at `queue_path`: `box-events.seq` in the same directory.
pub fn seq_path(queue_path: &Path) -> PathBuf {
    queue_path.with_file_name("box-events.seq")
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Hands out ids of the box's half of the id space, never one given out before.
#[derive(Debug)]
pub struct IdAllocator {
    path: PathBuf,
    next: u64,
    /// Ids below this are covered by the counter file.
    reserved: u64,
}

impl IdAllocator {
    /// Continues after what the counter file at `path` has reserved (a missing file: from
    /// the clock's floor; an unreadable one is an error naming it).
    pub fn open(path: &Path) -> io::Result<IdAllocator> {
        let stored = match std::fs::read_to_string(path) {
            Ok(s) => Some(s.trim().parse::<u64>().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a counter ({e})", path.display()))
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        let next = stored.unwrap_or(0).max(BOX_ID_BASE);
        Ok(IdAllocator { path: path.to_path_buf(), next, reserved: next })
    }

    /// The next id. Reserving a new block writes the counter file first; when that fails
    /// the id is still given (from the clock's floor) and the error returned beside it.
    pub fn next_id(&mut self) -> (u64, Option<io::Error>) {
        let floor = BOX_ID_BASE | ((now_ms().max(0) as u64) << 12);
        let id = self.next.max(floor);
        let mut err = None;
        if id >= self.reserved {
            let reserved = id + BLOCK;
            match write_durably(&self.path, &format!("{reserved}\n")) {
                Ok(()) => self.reserved = reserved,
                Err(e) => err = Some(io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))),
            }
        }
        self.next = id + 1;
        (id, err)
    }
}

/// Writes `text` to `path` through a temporary file, fsynced, renamed, directory fsynced.
fn write_durably(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One event before it has an id.
#[derive(Debug, Clone)]
struct Pending {
    instrument: Arc<str>,
    timestamp_ms: i64,
    payload: Vec<u8>,
}

/// The payload of a link event.
pub fn link_payload(l: &LinkStatus, at_start: bool) -> Vec<u8> {
    serde_json::json!({
        "event": "link",
        "interface": l.interface,
        "link": l.link,
        "changes": l.changes,
        "at_start": at_start,
    })
    .to_string()
    .into_bytes()
}

/// The sender of box events; cheap to clone. Also the [`LinkEvents`] hook of the ports.
#[derive(Debug, Clone)]
pub struct BoxEvents {
    tx: SyncSender<Pending>,
    /// The last failure (counter file, refused event), for the log only once per run of failures.
    last_error: Arc<Mutex<Option<String>>>,
}

/// The thread that stores the events; ends when `stop` is set (after submitting what is
/// waiting, if the queue still takes it) or when the queue stops.
pub struct EventSender {
    handle: JoinHandle<()>,
}

impl EventSender {
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

impl BoxEvents {
    /// Starts the sender thread for `queue`, ids from the counter file at `seq`.
    pub fn start(queue: Queue, seq: &Path, stop: Arc<AtomicBool>) -> io::Result<(BoxEvents, EventSender)> {
        let ids = IdAllocator::open(seq)?;
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let last_error = Arc::new(Mutex::new(None));
        let le = last_error.clone();
        let handle = std::thread::Builder::new()
            .name("box-events".into())
            .stack_size(256 * 1024)
            .spawn(move || send_loop(queue, ids, rx, stop, le))?;
        Ok((BoxEvents { tx, last_error }, EventSender { handle }))
    }

    /// Queues the link event of `l` (the state at start, or a change).
    pub fn link(&self, l: &LinkStatus, at_start: bool) {
        let p = Pending {
            instrument: Arc::from(l.serial.as_deref().unwrap_or("")),
            timestamp_ms: i64::try_from(l.since_ms).unwrap_or(i64::MAX),
            payload: link_payload(l, at_start),
        };
        match self.tx.try_send(p) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                log::warn!("box event dropped ({BACKLOG} waiting for the queue): {} is {}", l.interface, l.link)
            }
            Err(TrySendError::Disconnected(_)) => {
                log::warn!("box event not sent (rapd is stopping): {} is {}", l.interface, l.link)
            }
        }
    }

    /// The last failure to store an event, until the next success.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl LinkEvents for BoxEvents {
    fn link_changed(&self, l: &LinkStatus) {
        LogEvents.link_changed(l);
        self.link(l, false);
    }
    fn link_at_start(&self, l: &LinkStatus) {
        self.link(l, true);
    }
}

fn note(last_error: &Mutex<Option<String>>, e: Option<String>) {
    let mut g = last_error.lock().unwrap_or_else(|p| p.into_inner());
    match (&e, g.as_ref()) {
        (Some(new), old) if old != Some(new) => log::error!("box events: {new}"),
        (None, Some(_)) => log::info!("box events: stored again"),
        _ => {}
    }
    *g = e;
}

fn send_loop(
    queue: Queue,
    mut ids: IdAllocator,
    rx: Receiver<Pending>,
    stop: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    loop {
        let p = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let (msg_id, err) = ids.next_id();
        if let Some(e) = err {
            note(&last_error, Some(format!("event counter not saved (ids may repeat after a restart): {e}")));
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            let (tx, reply) = mpsc::channel();
            let msg = Incoming {
                instrument: p.instrument.clone(),
                msg_id,
                timestamp_ms: p.timestamp_ms,
                kind: Kind::BoxEvent,
                priority: PRIORITY,
                payload: p.payload.clone(),
            };
            if queue.submit(msg, tx).is_err() {
                return; // the queue has stopped
            }
            let refused = match reply.recv_timeout(Duration::from_secs(30)) {
                Ok(Reply::Ack { .. }) => None,
                Ok(Reply::Error { reason, .. }) => Some(reason),
                Err(RecvTimeoutError::Timeout) => Some("the queue did not answer within 30 s".into()),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            match refused {
                None => {
                    if last_error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        note(&last_error, None);
                    }
                    break;
                }
                Some(reason) if stop.load(Ordering::SeqCst) => {
                    log::warn!("box event {msg_id} not stored, rapd is stopping: {reason}");
                    break;
                }
                Some(reason) => {
                    note(&last_error, Some(format!("event {msg_id} not stored yet, retrying: {reason}")));
                    crate::uplink::sleep_unless_stopped(&stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rapbox-events-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn ids_are_in_the_box_half_and_never_repeat_across_restarts() {
        let d = dir("ids");
        let seq = d.join("box-events.seq");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut a = IdAllocator::open(&seq).unwrap();
            for _ in 0..(BLOCK + 5) {
                let (id, err) = a.next_id();
                assert!(err.is_none(), "{err:?}");
                seen.push(id);
            }
        }
        assert!(seen.iter().all(|id| *id >= BOX_ID_BASE));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids increase across restarts");
        // Never below the clock: a lost counter file does not start over.
        std::fs::remove_file(&seq).unwrap();
        let before = BOX_ID_BASE | ((now_ms() as u64) << 12);
        let (id, _) = IdAllocator::open(&seq).unwrap().next_id();
        assert!(id >= before);
        // A counter file that is not a number is an error naming it.
        std::fs::write(&seq, "garbage\n").unwrap();
        let e = IdAllocator::open(&seq).unwrap_err().to_string();
        assert!(e.contains("box-events.seq: not a counter"), "{e}");
    }

    #[test]
    fn an_unwritable_counter_still_gives_ids_and_says_why() {
        let mut a = IdAllocator::open(Path::new("/nonexistent-rapbox-dir/box-events.seq")).unwrap();
        let (id1, e1) = a.next_id();
        let (id2, _) = a.next_id();
        assert!(id1 >= BOX_ID_BASE && id2 > id1);
        assert!(e1.unwrap().to_string().contains("/nonexistent-rapbox-dir/box-events.seq"));
    }

    #[test]
    fn link_events_are_stored_in_the_queue_under_the_serial() {
        let d = dir("queue");
        let qpath = d.join("queue.db");
        let (queue, writer) = Queue::open(&qpath, 10 << 20, Duration::from_secs(3600)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, sender) = BoxEvents::start(queue.clone(), &seq_path(&qpath), stop.clone()).unwrap();
        let mut l = LinkStatus {
            interface: "eth1".into(),
            serial: Some("DXI-0001".into()),
            link: "up",
            address: Some("10.10.1.1/24".into()),
            changes: 0,
            since_ms: 1_700_000_000_000,
        };
        ev.link(&l, true);
        l.link = "down";
        l.changes = 1;
        l.since_ms += 5;
        ev.link_changed(&l);
        let uplink = LinkStatus { interface: "eth0".into(), serial: None, ..l.clone() };
        ev.link(&uplink, false);

        let end = std::time::Instant::now() + Duration::from_secs(10);
        let rows = loop {
            let rows = queue.next_batch(&Default::default(), 100, 1 << 20).unwrap();
            if rows.len() == 3 || std::time::Instant::now() > end {
                break rows;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(rows.iter().all(|r| r.kind == Kind::BoxEvent && r.msg_id >= BOX_ID_BASE && r.priority == PRIORITY));
        let mut rows = rows;
        rows.sort_by_key(|r| r.msg_id);
        assert_eq!(&*rows[0].instrument, "DXI-0001");
        assert_eq!(rows[0].timestamp_ms, 1_700_000_000_000);
        let p: serde_json::Value = serde_json::from_slice(&rows[0].payload).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"event": "link", "interface": "eth1", "link": "up", "changes": 0, "at_start": true})
        );
        let p: serde_json::Value = serde_json::from_slice(&rows[1].payload).unwrap();
        assert_eq!((p["link"].as_str(), p["at_start"].as_bool()), (Some("down"), Some(false)));
        assert_eq!(&*rows[2].instrument, "", "the uplink's events are the box's own");
        assert!(seq_path(&qpath).is_file());

        stop.store(true, Ordering::SeqCst);
        sender.join();
        queue.shutdown();
        drop(queue);
        writer.join();
    }
}
