//! The audit trail: an append-only file of hash-chained records (see [`chain`] for the
//! format), written by one owner and shipped to the data center through the queue.
//!
//! * [`AuditLog::open`] walks the existing file, continues its chain and records what it
//!   found wrong (a partial last line left by a crash is cut off and its bytes recorded; a
//!   broken link stays in place, is recorded and keeps showing in `rapctl audit verify`).
//! * [`AuditLog::record`] appends one line and fsyncs it, then updates the state file
//!   beside the log (`<log>.state`: last seq and line hash, and the shipped mark), all
//!   under one mutex: records are rare, their order is the chain's.
//! * [`AuditLog::start_shipping`] submits every record to the queue as `Kind::Audit`,
//!   instrument "" (the box), `msg_id` = seq, priority 0, payload = the line. The queue
//!   never evicts audit records; when it refuses one (full of alarms and audit records)
//!   the record stays in the file and is submitted again later, in order. The shipped
//!   mark survives restarts.
//! * Other modules call [`record`] (the process-wide log installed by rapd with
//!   [`install`]); without one it only logs.

pub mod chain;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rapwire::agent::Reply;
use rapwire::Kind;
use serde::Serialize;

pub use chain::{state_path, tail, verify, Outcome, Record, State, Verification, VerifyError, GENESIS};

use crate::firewall;
use crate::queue::{Incoming, Queue};

/// Records kept in memory for shipping; beyond this the shipper reads them from the file.
const PENDING_MAX: usize = 1024;
/// Bytes of a partial last line kept in the record that reports its removal.
const PARTIAL_KEPT: usize = 4096;

/// An audit failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("audit log {path}: SHA-256 unavailable from OpenSSL: {source}")]
    Digest { path: PathBuf, source: openssl::error::ErrorStack },
}

/// What happened, before it is chained.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Who did it: `rapd` for the daemon's own actions, `console:<user>` for a technician, ...
    pub actor: String,
    /// What was done, `area.verb`: `rapd.start`, `config.loaded`, `firewall.drift_repaired`.
    pub action: String,
    /// What it was done to (a path, a user, `netfilter`); may be empty.
    pub target: String,
    pub outcome: Outcome,
    /// Anything else worth keeping, as JSON.
    pub detail: serde_json::Value,
}

impl Event {
    /// A successful action of rapd with no target and no detail.
    pub fn new(action: &str) -> Event {
        Event {
            actor: "rapd".into(),
            action: action.into(),
            target: String::new(),
            outcome: Outcome::Success,
            detail: serde_json::Value::Null,
        }
    }
    pub fn actor(mut self, actor: &str) -> Event {
        self.actor = actor.into();
        self
    }
    pub fn target(mut self, target: &str) -> Event {
        self.target = target.into();
        self
    }
    pub fn outcome(mut self, outcome: Outcome) -> Event {
        self.outcome = outcome;
        self
    }
    pub fn detail(mut self, detail: serde_json::Value) -> Event {
        self.detail = detail;
        self
    }
}

/// The audit part of rapd's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditStatus {
    pub path: PathBuf,
    /// The last record written.
    pub last_seq: u64,
    /// Every record up to this one is in the queue (then the uplink's to deliver).
    pub shipped_seq: u64,
    /// The last failure to write a record or to ship one, until the next success.
    pub last_error: Option<String>,
}

struct Writer {
    file: File,
    /// File size after the last complete record (a failed append is cut back to it).
    len: u64,
    /// The next record's seq and prev.
    next_seq: u64,
    prev: String,
    shipped: u64,
    /// Records written but not yet in the queue, oldest first: (seq, time ms, line).
    pending: VecDeque<(u64, i64, Vec<u8>)>,
    /// `pending` is incomplete: read what is unshipped from the file.
    reload: bool,
    /// Set by [`Shipper::finish`]: ship what is pending until then, then stop.
    finish_by: Option<Instant>,
    last_error: Option<String>,
}

struct Inner {
    path: PathBuf,
    state_path: PathBuf,
    w: Mutex<Writer>,
    /// Signalled when a record is written or shipping must finish.
    wake: Condvar,
}

/// The audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.inner.path).finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl AuditLog {
    /// Opens (creating) the log at `path` and continues its chain. Returns the log and the
    /// result of verifying the file as it was found; any problem found is recorded.
    pub fn open(path: &Path) -> Result<(AuditLog, Verification), AuditError> {
        let io = |source| AuditError::Io { path: path.into(), source };
        let digest = |source| AuditError::Digest { path: path.into(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let sp = state_path(path);
        let state: Option<State> = match std::fs::read(&sp) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::error!(
                        "audit: {}: not a state file ({e}); the end of the log cannot be checked",
                        sp.display()
                    );
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(AuditError::Io { path: sp.clone(), source }),
        };
        let found = verify(path).map_err(|e| match e {
            VerifyError::Read { path, source } => AuditError::Io { path, source },
            VerifyError::Digest(source) => digest(source),
        })?;
        let file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path).map_err(io)?;
        let mut bytes = std::fs::read(path).map_err(io)?;

        // A last line without its newline was never confirmed to anyone (a crash during the
        // write): cut it off so the chain can go on, and record what it held.
        let mut removed: Option<Vec<u8>> = None;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            removed = Some(bytes.split_off(complete));
            file.set_len(complete as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let prev = match lines.last() {
            Some(l) => chain::sha256_hex(l).map_err(digest)?,
            None => GENESIS.to_string(),
        };
        let max_seq = lines.iter().filter_map(|l| serde_json::from_slice::<Record>(l).ok().map(|r| r.seq)).max();
        // Never reuse a seq, not even one cut off the end: it is the record's id upstream.
        let last = max_seq.unwrap_or(0).max(state.as_ref().map_or(0, |s| s.seq));
        let shipped = state.as_ref().map_or(0, |s| s.shipped);
        let w = Writer {
            file,
            len: bytes.len() as u64,
            next_seq: last + 1,
            prev,
            shipped,
            pending: VecDeque::new(),
            reload: true,
            finish_by: None,
            last_error: None,
        };
        let log = AuditLog {
            inner: Arc::new(Inner { path: path.into(), state_path: sp, w: Mutex::new(w), wake: Condvar::new() }),
        };

        if let Some(tail) = removed {
            let kept = &tail[..tail.len().min(PARTIAL_KEPT)];
            log.record(
                Event::new("audit.partial_record_removed")
                    .target(&path.display().to_string())
                    .outcome(Outcome::Failure)
                    .detail(serde_json::json!({
                        "bytes": tail.len(),
                        "content": String::from_utf8_lossy(kept),
                        "reason": "the last line had no newline (a write interrupted by a crash, or an edit)",
                    })),
            )?;
        }
        let now = verify(path).map_err(|e| match e {
            VerifyError::Read { path, source } => AuditError::Io { path, source },
            VerifyError::Digest(source) => digest(source),
        })?;
        if let Some(err) = &now.error {
            log::error!("audit: {}: {err}", path.display());
            log.record(
                Event::new("audit.verify")
                    .target(&path.display().to_string())
                    .outcome(Outcome::Failure)
                    .detail(serde_json::json!({ "error": err, "line": now.line })),
            )?;
        }
        Ok((log, found))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.inner.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record, fsynced; returns its seq.
    pub fn record(&self, ev: Event) -> Result<u64, AuditError> {
        let path = &self.inner.path;
        let mut w = self.lock();
        let res = self.append(&mut w, &ev);
        match &res {
            Ok(seq) => {
                w.last_error = None;
                log::info!(
                    "audit #{seq}: {} {} {}{}",
                    ev.actor,
                    ev.action,
                    ev.outcome.as_str(),
                    if ev.target.is_empty() { String::new() } else { format!(" ({})", ev.target) }
                );
            }
            Err(e) => {
                w.last_error = Some(e.to_string());
                log::error!("audit: NOT recorded in {}: {} {} {}: {e}", path.display(), ev.actor, ev.action, ev.detail);
            }
        }
        drop(w);
        self.inner.wake.notify_all();
        res
    }

    fn append(&self, w: &mut Writer, ev: &Event) -> Result<u64, AuditError> {
        let path = &self.inner.path;
        let io = |source| AuditError::Io { path: path.clone(), source };
        let digest = |source| AuditError::Digest { path: path.clone(), source };
        let seq = w.next_seq;
        let time_ms = now_ms();
        let line = chain::build_line(
            seq,
            &chain::format_time(time_ms),
            &ev.actor,
            &ev.action,
            &ev.target,
            ev.outcome,
            &ev.detail,
            &w.prev,
        )
        .map_err(digest)?;
        let line_hash = chain::sha256_hex(&line).map_err(digest)?;
        let mut buf = line.clone();
        buf.push(b'\n');
        if let Err(e) = w.file.write_all(&buf).and_then(|()| w.file.sync_data()) {
            // Leave no partial line behind: the next record must start on its own line.
            let _ = w.file.set_len(w.len);
            return Err(io(e));
        }
        w.len += buf.len() as u64;
        w.next_seq = seq + 1;
        w.prev = line_hash;
        if !w.reload && w.pending.len() < PENDING_MAX {
            w.pending.push_back((seq, time_ms, line));
        } else {
            w.reload = true;
        }
        if let Err(e) = self.save_state(w) {
            // The record itself is on disk; the state file catches up with the next one.
            log::warn!("audit: {e}");
        }
        Ok(seq)
    }

    fn save_state(&self, w: &Writer) -> Result<(), AuditError> {
        let sp = &self.inner.state_path;
        let io = |source| AuditError::Io { path: sp.clone(), source };
        let st = State { seq: w.next_seq - 1, hash: w.prev.clone(), shipped: w.shipped };
        let mut tmp = sp.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        let mut text = serde_json::to_vec(&st).unwrap_or_default();
        text.push(b'\n');
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, sp).map_err(io)?;
        if let Some(dir) = sp.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    /// Verifies the file as it is now (no record is being written meanwhile).
    pub fn verify(&self) -> Result<Verification, VerifyError> {
        let _w = self.lock();
        verify(&self.inner.path)
    }

    /// The last `n` records.
    pub fn tail(&self, n: usize) -> Result<Vec<serde_json::Value>, VerifyError> {
        let _w = self.lock();
        tail(&self.inner.path, n)
    }

    /// Figures for the status interface.
    pub fn status(&self) -> AuditStatus {
        let w = self.lock();
        AuditStatus {
            path: self.inner.path.clone(),
            last_seq: w.next_seq - 1,
            shipped_seq: w.shipped,
            last_error: w.last_error.clone(),
        }
    }

    /// Starts the thread that hands every unshipped record to `queue`.
    pub fn start_shipping(&self, queue: Queue) -> std::io::Result<Shipper> {
        let log = self.clone();
        let handle = std::thread::Builder::new()
            .name("audit-ship".into())
            .stack_size(256 * 1024)
            .spawn(move || log.ship(queue))?;
        Ok(Shipper { log: self.clone(), handle: Some(handle) })
    }

    /// Reads the unshipped records from the file into `pending` (up to [`PENDING_MAX`]).
    fn reload(&self, w: &mut Writer) {
        let bytes = match std::fs::read(&self.inner.path) {
            Ok(b) => b,
            Err(e) => {
                w.last_error = Some(format!("audit log {}: {e}", self.inner.path.display()));
                return;
            }
        };
        w.pending.clear();
        let mut more = false;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(r) = serde_json::from_slice::<Record>(line) else { continue };
            if r.seq <= w.shipped || w.pending.back().is_some_and(|p| p.0 >= r.seq) {
                continue;
            }
            if w.pending.len() == PENDING_MAX {
                more = true;
                break;
            }
            w.pending.push_back((r.seq, chain::parse_time(&r.time).unwrap_or_else(now_ms), line.to_vec()));
        }
        w.reload = more;
    }

    fn ship(&self, queue: Queue) {
        let mut backoff = Duration::from_millis(500);
        let mut refused = false;
        loop {
            let (seq, time_ms, line) = {
                let mut w = self.lock();
                loop {
                    if w.reload && w.pending.is_empty() {
                        self.reload(&mut w);
                    }
                    if let Some(p) = w.pending.front() {
                        break p.clone();
                    }
                    if w.finish_by.is_some() {
                        return;
                    }
                    w = self
                        .inner
                        .wake
                        .wait_timeout(w, Duration::from_secs(1))
                        .map(|r| r.0)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            };
            if self.lock().finish_by.is_some_and(|t| Instant::now() >= t) {
                return;
            }
            let (tx, rx) = mpsc::channel();
            let msg = Incoming {
                instrument: Arc::from(""),
                msg_id: seq,
                timestamp_ms: time_ms,
                kind: Kind::Audit,
                priority: rapwire::PRIORITY_URGENT,
                payload: line,
            };
            if queue.submit(msg, tx).is_err() {
                return; // the queue has stopped
            }
            let reason = match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Reply::Ack { .. }) => None,
                Ok(Reply::Error { reason, .. }) => Some(reason),
                Err(mpsc::RecvTimeoutError::Timeout) => Some("the queue did not answer within 30 s".into()),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut w = self.lock();
            match reason {
                None => {
                    if w.pending.front().is_some_and(|p| p.0 == seq) {
                        w.pending.pop_front();
                    }
                    w.shipped = w.shipped.max(seq);
                    if let Err(e) = self.save_state(&w) {
                        log::warn!("audit: {e}");
                    }
                    if refused {
                        log::info!("audit: the queue takes audit records again (record {seq} queued)");
                        w.last_error = None;
                    }
                    refused = false;
                    backoff = Duration::from_millis(500);
                }
                Some(reason) => {
                    if !refused {
                        log::warn!("audit: record {seq} not queued, kept in the audit log and retried: {reason}");
                    }
                    refused = true;
                    w.last_error = Some(format!("record {seq} not queued yet: {reason}"));
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && w.finish_by.is_none() {
                        let left = until.saturating_duration_since(Instant::now());
                        w = self.inner.wake.wait_timeout(w, left).map(|r| r.0).unwrap_or_else(|p| p.into_inner().0);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// The running shipper.
pub struct Shipper {
    log: AuditLog,
    handle: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Ships what is pending for at most `grace`, then stops (the rest goes after the next
    /// start: the shipped mark is on disk).
    pub fn finish(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        if let Some(h) = self.handle.take() {
            self.log.lock().finish_by = Some(Instant::now() + grace);
            self.log.inner.wake.notify_all();
            let _ = h.join();
            self.log.lock().finish_by = None;
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// Makes every digest of this process come from the FIPS provider (`fips=yes` becomes the
/// default property) and tells whether SHA-256 is then available. rapd's FIPS gate proves
/// this state; this is for recording the gate's own refusal.
pub fn force_fips_digests() -> bool {
    // SAFETY: sets a property of OpenSSL's default library context; no pointer is kept.
    let set = unsafe { openssl_sys::EVP_default_properties_enable_fips(std::ptr::null_mut(), 1) } == 1;
    set && chain::sha256_hex(b"abc").is_ok()
}

static GLOBAL: OnceLock<AuditLog> = OnceLock::new();

/// Makes `log` the process's audit log for [`record`]. Only the first call takes effect.
pub fn install(log: AuditLog) {
    let _ = GLOBAL.set(log);
}

/// The installed audit log, if any.
pub fn installed() -> Option<&'static AuditLog> {
    GLOBAL.get()
}

/// Records `ev` in the process's audit log; returns its seq. Failures are logged (and shown
/// in the status); without an installed log the event is only logged.
pub fn record(ev: Event) -> Option<u64> {
    match GLOBAL.get() {
        Some(l) => l.record(ev).ok(),
        None => {
            log::warn!(
                "audit (no audit log): {} {} {} {} {}",
                ev.actor,
                ev.action,
                ev.target,
                ev.outcome.as_str(),
                ev.detail
            );
            None
        }
    }
}

/// Firewall events become records (and keep their `audit:` log line).
impl firewall::Audit for AuditLog {
    fn firewall(&self, event: &firewall::AuditEvent) {
        firewall::LogAudit.firewall(event);
        let ev = match event {
            firewall::AuditEvent::Applied { rules } => {
                Event::new("firewall.applied").target("netfilter").detail(serde_json::json!({ "rules": rules }))
            }
            firewall::AuditEvent::DriftRepaired { changes } => Event::new("firewall.drift_repaired")
                .target("netfilter")
                .detail(serde_json::json!({ "changes": changes })),
            firewall::AuditEvent::RepairFailed { changes, error } => Event::new("firewall.drift_not_repaired")
                .target("netfilter")
                .outcome(Outcome::Failure)
                .detail(serde_json::json!({ "changes": changes, "error": error })),
        };
        let _ = self.record(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{ranges_of, Cursor};
    use rapwire::agent::ErrorCode;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rapbox-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("audit.log")
    }

    fn lines(p: &Path) -> Vec<Record> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn records_chain_across_reopen_and_state_follows() {
        let p = tmp("reopen");
        let (log, found) = AuditLog::open(&p).unwrap();
        assert!(found.intact && found.records == 0, "{found:?}");
        assert_eq!(log.record(Event::new("rapd.start")).unwrap(), 1);
        assert_eq!(log.record(Event::new("config.loaded").target("/etc/rapbox/rapd.toml")).unwrap(), 2);
        drop(log);
        let (log, found) = AuditLog::open(&p).unwrap();
        assert!(found.intact && found.records == 2, "{found:?}");
        assert_eq!(found.end_checked_against, Some(state_path(&p)));
        assert_eq!(log.record(Event::new("rapd.stop")).unwrap(), 3);
        let v = verify(&p).unwrap();
        assert!(v.intact, "{v:?}");
        let st: State = serde_json::from_slice(&std::fs::read(state_path(&p)).unwrap()).unwrap();
        assert_eq!((st.seq, st.shipped), (3, 0));
        assert_eq!(Some(st.hash), v.last_hash);
        let recs = lines(&p);
        assert_eq!(
            recs.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
            ["rapd.start", "config.loaded", "rapd.stop"]
        );
        assert_eq!(recs[1].target, "/etc/rapbox/rapd.toml");
        let st = log.status();
        assert_eq!((st.last_seq, st.shipped_seq), (3, 0));
    }

    #[test]
    fn a_partial_last_line_is_cut_off_and_recorded() {
        let p = tmp("partial");
        let (log, _) = AuditLog::open(&p).unwrap();
        log.record(Event::new("rapd.start")).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":2,\"ti").unwrap();
        assert_eq!(verify(&p).unwrap().error.as_deref(), Some("file ends with a partial record"));
        let (log, found) = AuditLog::open(&p).unwrap();
        assert_eq!(found.error.as_deref(), Some("file ends with a partial record"));
        let v = verify(&p).unwrap();
        assert!(v.intact, "{v:?}");
        let recs = lines(&p);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].action, "audit.partial_record_removed");
        assert_eq!(recs[1].detail["content"], "{\"seq\":2,\"ti");
        assert_eq!(log.status().last_seq, 2);
    }

    #[test]
    fn a_broken_chain_is_recorded_and_stays_visible() {
        let p = tmp("broken");
        let (log, _) = AuditLog::open(&p).unwrap();
        for _ in 0..5 {
            log.record(Event::new("test.event")).unwrap();
        }
        drop(log);
        // Record 3 deleted by hand.
        let text = std::fs::read_to_string(&p).unwrap();
        let kept: Vec<&str> = text.lines().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| l).collect();
        std::fs::write(&p, kept.join("\n") + "\n").unwrap();
        let (log, found) = AuditLog::open(&p).unwrap();
        assert_eq!(found.error.as_deref(), Some("sequence gap after record 2"));
        let recs = lines(&p);
        let last = recs.last().unwrap();
        assert_eq!((last.seq, last.action.as_str(), last.outcome), (6, "audit.verify", Outcome::Failure));
        assert_eq!(last.detail["error"], "sequence gap after record 2");
        log.record(Event::new("test.event")).unwrap();
        assert_eq!(verify(&p).unwrap().error.as_deref(), Some("sequence gap after record 2"));

        // The end cut off: seqs are not reused, and the cut shows.
        let p = tmp("cut");
        let (log, _) = AuditLog::open(&p).unwrap();
        for _ in 0..4 {
            log.record(Event::new("test.event")).unwrap();
        }
        drop(log);
        let text = std::fs::read_to_string(&p).unwrap();
        let kept: Vec<&str> = text.lines().take(2).collect();
        std::fs::write(&p, kept.join("\n") + "\n").unwrap();
        let (_log, found) = AuditLog::open(&p).unwrap();
        assert!(found.error.unwrap().starts_with("file ends after record 2, but the box wrote up to record 4 ("));
        assert_eq!(lines(&p).last().unwrap().seq, 5);
        assert_eq!(verify(&p).unwrap().error.as_deref(), Some("sequence gap after record 2"));
    }

    #[test]
    fn firewall_events_become_records() {
        let p = tmp("firewall");
        let (log, _) = AuditLog::open(&p).unwrap();
        let hook: &dyn firewall::Audit = &log;
        hook.firewall(&firewall::AuditEvent::Applied { rules: 12 });
        hook.firewall(&firewall::AuditEvent::DriftRepaired {
            changes: vec!["ipv4 filter/INPUT: rule added: -A INPUT -j ACCEPT".into()],
        });
        hook.firewall(&firewall::AuditEvent::RepairFailed {
            changes: vec!["x".into()],
            error: "iptables-restore failed".into(),
        });
        let recs = lines(&p);
        assert_eq!(recs[0].action, "firewall.applied");
        assert_eq!(recs[0].detail["rules"], 12);
        assert_eq!(recs[1].action, "firewall.drift_repaired");
        assert_eq!(recs[1].target, "netfilter");
        assert_eq!(recs[1].detail["changes"][0], "ipv4 filter/INPUT: rule added: -A INPUT -j ACCEPT");
        assert_eq!((recs[2].action.as_str(), recs[2].outcome), ("firewall.drift_not_repaired", Outcome::Failure));
        assert!(verify(&p).unwrap().intact);
    }

    fn alarm(id: u64, size: usize) -> Incoming {
        Incoming {
            instrument: Arc::from("INST-1"),
            msg_id: id,
            timestamp_ms: 0,
            kind: Kind::Alarm,
            priority: 0,
            payload: vec![b'a'; size],
        }
    }

    /// The queue full of alarms refuses audit records: they stay in the file and go in, in
    /// order, once there is room; the shipped mark survives a restart.
    #[test]
    fn shipping_waits_out_a_full_queue_and_resumes_after_restart() {
        let p = tmp("ship");
        let qp = p.with_file_name("queue.db");
        let (q, qw) = Queue::open(&qp, 1 << 20, Duration::from_secs(3600)).unwrap();
        // Alarms until not even a small one fits.
        let mut n = 0;
        for size in [10_000, 100, 0] {
            loop {
                let (tx, rx) = mpsc::channel();
                q.submit(alarm(n, size), tx).unwrap();
                n += 1;
                if let Reply::Error { code, .. } = rx.recv().unwrap() {
                    assert_eq!(code, ErrorCode::QueueFull);
                    break;
                }
            }
        }
        let (log, _) = AuditLog::open(&p).unwrap();
        let shipper = log.start_shipping(q.clone()).unwrap();
        log.record(Event::new("one")).unwrap();
        log.record(Event::new("two")).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let st = log.status();
        assert_eq!((st.last_seq, st.shipped_seq), (2, 0));
        assert!(st.last_error.unwrap().starts_with("record 1 not queued yet: queue full:"));

        // Room again: the alarms are delivered.
        let batch = q.next_batch(&Cursor::default(), 100_000, 64 << 20).unwrap();
        q.complete(ranges_of(&batch)).unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while log.status().shipped_seq < 2 {
            assert!(Instant::now() < end, "{:?}", log.status());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(log.status().last_error, None);
        shipper.finish(Duration::from_secs(1));
        let rows = q.next_batch(&Cursor::default(), 100, 1 << 20).unwrap();
        let audit: Vec<_> = rows.iter().filter(|r| r.kind == Kind::Audit).collect();
        assert_eq!(
            audit.iter().map(|r| (r.msg_id, r.priority, &*r.instrument)).collect::<Vec<_>>(),
            [(1, 0, ""), (2, 0, "")]
        );
        assert_eq!(audit[0].payload, std::fs::read_to_string(&p).unwrap().lines().next().unwrap().as_bytes());

        // Written while not shipping; shipped after a reopen, without resending 1 and 2.
        log.record(Event::new("three")).unwrap();
        drop(log);
        let (log, _) = AuditLog::open(&p).unwrap();
        assert_eq!(log.status().shipped_seq, 2);
        let shipper = log.start_shipping(q.clone()).unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while log.status().shipped_seq < 3 {
            assert!(Instant::now() < end, "{:?}", log.status());
            std::thread::sleep(Duration::from_millis(50));
        }
        shipper.finish(Duration::from_secs(1));
        let rows = q.next_batch(&Cursor::default(), 100, 1 << 20).unwrap();
        let ids: Vec<u64> = rows.iter().filter(|r| r.kind == Kind::Audit).map(|r| r.msg_id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(q.stats().duplicates_total, 0);
        q.shutdown();
        drop(q);
        qw.join();
    }
}
