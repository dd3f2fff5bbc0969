//! Uploads: an agent offers a file (UPLOAD, CHUNK…, UPLOAD_END), the box stores it and sends
//! it to the data center in chunks (`docs/transfers.md`).
//!
//! Phases (`uploads/<id>.json`, bytes in `uploads/<id>.data`):
//!
//! ```text
//! receiving ──UPLOAD_END, SHA-256 matches──▶ stored ──data center: complete──▶ (deleted)
//!     │  (the agent re-offers the same name, size and SHA-256 after a reconnect or a
//!     │   restart and continues from what the box has)
//!     └── SHA-256 does not match: discarded, the agent is told `hash_mismatch`
//! ```
//!
//! A stored upload is sent by the uploader thread: it asks the data center how much it has,
//! then sends chunks from there; after an outage or a restart it asks again. The agent was
//! told OK only once the file was on the partition, fsynced, with the right SHA-256: from
//! then on the box keeps it until the data center confirmed the whole file's SHA-256.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapwire::agent::ErrorCode;
use rapwire::requests::{cap, Message};
use rapwire::transfer::{hex, Category};
use serde::{Deserialize, Serialize};

use super::{now_ms, sha256_file, sync_dir, write_state, Backoff, Inner, TransferError, SYNC_EVERY};
use crate::agents::SessionInfo;
use crate::audit::{self, Event};
use crate::uplink::transfer::{LinkError, UploadMeta};

/// Times the data center may refuse a whole upload's SHA-256 before the box stops sending it.
const MAX_DC_RESTARTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpPhase {
    Receiving,
    Stored,
    /// The data center refused its SHA-256 too often; kept for a technician.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub id: u64,
    pub instrument: String,
    pub name: String,
    pub category: Category,
    pub size: u64,
    pub sha256: String,
    pub phase: UpPhase,
    pub created_ms: i64,
    #[serde(default)]
    pub stored_ms: Option<i64>,
    /// Whole-file refusals by the data center so far.
    #[serde(default)]
    pub dc_restarts: u32,
}

pub struct Upload {
    pub(crate) rec: UploadRecord,
    /// Bytes in the data file.
    pub(crate) received: u64,
    unsynced: u64,
    file: Option<File>,
    /// What the data center has, as last heard.
    sent: u64,
    last_error: Option<String>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

/// One upload, for the status.
#[derive(Debug, Clone, Serialize)]
pub struct UploadStatusView {
    pub id: String,
    pub instrument: String,
    pub name: String,
    pub category: &'static str,
    pub size: u64,
    pub sha256: String,
    pub phase: UpPhase,
    /// Bytes the box has.
    pub received: u64,
    /// Bytes the data center has (as last heard).
    pub sent: u64,
    pub last_error: Option<String>,
}

impl Upload {
    pub(crate) fn is_done(&self) -> bool {
        false
    }

    fn hex_id(&self) -> String {
        format!("{:016x}", self.rec.id)
    }

    pub(crate) fn status(&self) -> UploadStatusView {
        UploadStatusView {
            id: self.hex_id(),
            instrument: self.rec.instrument.clone(),
            name: self.rec.name.clone(),
            category: self.rec.category.name(),
            size: self.rec.size,
            sha256: self.rec.sha256.clone(),
            phase: self.rec.phase,
            received: self.received,
            sent: self.sent,
            last_error: self.last_error.clone(),
        }
    }
}

fn paths(inner: &Inner, id: u64) -> (PathBuf, PathBuf) {
    let d = inner.uploads_dir();
    (d.join(format!("{id:016x}.json")), d.join(format!("{id:016x}.data")))
}

fn save(inner: &Inner, rec: &UploadRecord) {
    if let Err(e) = write_state(&paths(inner, rec.id).0, rec) {
        log::error!("upload {:016x}: state not saved: {e}", rec.id);
    }
}

/// Loads every upload a previous run left.
pub(crate) fn load_all(inner: &Inner) -> Result<BTreeMap<u64, Upload>, TransferError> {
    let dir = inner.uploads_dir();
    let mut out = BTreeMap::new();
    let rd = std::fs::read_dir(&dir).map_err(|source| TransferError { path: dir.clone(), source })?;
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Some(rec) = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<UploadRecord>(&b).ok()) else {
            log::error!("upload state {} is unreadable; left in place", p.display());
            continue;
        };
        let (_, data) = paths(inner, rec.id);
        let received = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
        if rec.phase == UpPhase::Stored && received != rec.size {
            log::error!(
                "upload {:016x}: stored file {} has {received} of {} bytes; it is lost",
                rec.id,
                data.display(),
                rec.size
            );
            audit::record(Event::new("transfer.upload_lost").target(&format!("{:016x}", rec.id)).outcome(audit::Outcome::Failure).detail(
                serde_json::json!({ "name": rec.name, "instrument": rec.instrument, "size": rec.size, "on_disk": received }),
            ));
            let _ = std::fs::remove_file(&data);
            let _ = std::fs::remove_file(&p);
            continue;
        }
        log::info!(
            "upload {:016x} ({} from {}): {:?}, {received} of {} bytes",
            rec.id,
            rec.name,
            rec.instrument,
            rec.phase,
            rec.size
        );
        out.insert(
            rec.id,
            Upload {
                received,
                unsynced: 0,
                file: None,
                sent: 0,
                last_error: None,
                retry_at: None,
                backoff: Backoff::new(&inner.cfg),
                rec,
            },
        );
    }
    Ok(out)
}

fn refused(req: u64, code: ErrorCode, reason: String) -> Message {
    log::warn!("upload request {req} refused: {reason}");
    Message::Refused { req, code, reason }
}

/// UPLOAD, CHUNK and UPLOAD_END from agents.
pub(crate) fn handle(inner: &Inner, session: &SessionInfo, msg: &Message) -> Option<Message> {
    let req = msg.req();
    let needs_cap = matches!(msg, Message::Upload { .. } | Message::Chunk { .. } | Message::UploadEnd { .. });
    if !needs_cap {
        return None;
    }
    if session.capabilities & cap::UPLOADS == 0 {
        return Some(refused(
            req,
            ErrorCode::NotNegotiated,
            format!("{} needs the uploads capability (HELLO)", msg.name()),
        ));
    }
    Some(match msg {
        Message::Upload { size, sha256, category, name, .. } => {
            offer(inner, session, req, *size, &hex(sha256), *category, name)
        }
        Message::Chunk { upload, offset, data, .. } => chunk(inner, session, req, *upload, *offset, data),
        Message::UploadEnd { upload, .. } => end(inner, session, req, *upload),
        _ => return None,
    })
}

fn offer(
    inner: &Inner,
    session: &SessionInfo,
    req: u64,
    size: u64,
    sha: &str,
    category: Category,
    name: &str,
) -> Message {
    let serial = session.serial.to_string();
    if size == 0 {
        return refused(req, ErrorCode::Malformed, "an upload must have at least one byte".into());
    }
    if size > inner.cfg.max_upload_bytes {
        return refused(
            req,
            ErrorCode::QuotaExceeded,
            format!("{name} is {size} bytes; this box takes uploads of at most {} bytes", inner.cfg.max_upload_bytes),
        );
    }
    let mut st = inner.lock();
    // The same file offered again (reconnect, restart of either side): continue it.
    if let Some(u) = st
        .uploads
        .values_mut()
        .find(|u| u.rec.instrument == serial && u.rec.name == name && u.rec.size == size && u.rec.sha256 == sha)
    {
        let offset = match u.rec.phase {
            UpPhase::Receiving => {
                if let Some(f) = &u.file {
                    let _ = f.sync_data();
                    u.unsynced = 0;
                }
                u.received
            }
            UpPhase::Stored | UpPhase::Failed => size,
        };
        log::info!("upload {:016x}: {name} from {serial} offered again: continuing at byte {offset}", u.rec.id);
        return Message::UploadReady { req, upload: u.rec.id, offset };
    }
    if let Err(e) = inner.fits(&st, size) {
        return refused(req, ErrorCode::QuotaExceeded, format!("{name} ({size} bytes): {e}"));
    }
    let id = loop {
        let mut b = [0u8; 8];
        let _ = openssl::rand::rand_bytes(&mut b);
        let id = u64::from_le_bytes(b) ^ now_ms() as u64;
        if id != 0 && !st.uploads.contains_key(&id) {
            break id;
        }
    };
    let rec = UploadRecord {
        id,
        instrument: serial.clone(),
        name: name.into(),
        category,
        size,
        sha256: sha.into(),
        phase: UpPhase::Receiving,
        created_ms: now_ms(),
        stored_ms: None,
        dc_restarts: 0,
    };
    let (state, data) = paths(inner, id);
    let file = match OpenOptions::new().create(true).truncate(true).write(true).read(true).open(&data) {
        Ok(f) => f,
        Err(e) => return refused(req, ErrorCode::StorageFailure, format!("creating {}: {e}", data.display())),
    };
    if let Err(e) = write_state(&state, &rec) {
        let _ = std::fs::remove_file(&data);
        return refused(req, ErrorCode::StorageFailure, e.to_string());
    }
    log::info!("upload {id:016x}: {name} ({}, {size} bytes) offered by {serial}", category.name());
    st.uploads.insert(
        id,
        Upload {
            rec,
            received: 0,
            unsynced: 0,
            file: Some(file),
            sent: 0,
            last_error: None,
            retry_at: None,
            backoff: Backoff::new(&inner.cfg),
        },
    );
    Message::UploadReady { req, upload: id, offset: 0 }
}

fn chunk(inner: &Inner, session: &SessionInfo, req: u64, id: u64, offset: u64, data: &[u8]) -> Message {
    let mut st = inner.lock();
    let Some(u) = st.uploads.get_mut(&id).filter(|u| *u.rec.instrument == *session.serial) else {
        return refused(
            req,
            ErrorCode::UnknownTransfer,
            format!("no upload {id:016x} of instrument {}", session.serial),
        );
    };
    if u.rec.phase != UpPhase::Receiving {
        return refused(req, ErrorCode::BadOffset, format!("upload {id:016x} is complete: send UPLOAD_END"));
    }
    if offset != u.received {
        return refused(
            req,
            ErrorCode::BadOffset,
            format!("upload {id:016x}: chunk at {offset}, the box has {} bytes", u.received),
        );
    }
    if offset + data.len() as u64 > u.rec.size {
        return refused(
            req,
            ErrorCode::BadOffset,
            format!("chunk ends at {}, beyond the offered {} bytes", offset + data.len() as u64, u.rec.size),
        );
    }
    if u.file.is_none() {
        let (_, path) = paths(inner, id);
        match OpenOptions::new().append(true).read(true).open(&path) {
            Ok(f) => u.file = Some(f),
            Err(e) => return refused(req, ErrorCode::StorageFailure, format!("opening {}: {e}", path.display())),
        }
    }
    let Some(f) = u.file.as_mut() else {
        return refused(req, ErrorCode::StorageFailure, "no file".into());
    };
    if let Err(e) = f.write_all(data) {
        // Cut back to what was there so that the offset stays true.
        let _ = f.set_len(u.received);
        return refused(req, ErrorCode::StorageFailure, format!("upload {id:016x}: writing: {e}"));
    }
    u.received += data.len() as u64;
    u.unsynced += data.len() as u64;
    if u.unsynced >= SYNC_EVERY {
        let _ = f.sync_data();
        u.unsynced = 0;
    }
    Message::Ok { req }
}

fn end(inner: &Inner, session: &SessionInfo, req: u64, id: u64) -> Message {
    let (path, want, name, size) = {
        let mut st = inner.lock();
        let Some(u) = st.uploads.get_mut(&id).filter(|u| *u.rec.instrument == *session.serial) else {
            return refused(
                req,
                ErrorCode::UnknownTransfer,
                format!("no upload {id:016x} of instrument {}", session.serial),
            );
        };
        if u.rec.phase != UpPhase::Receiving {
            return Message::Ok { req };
        }
        if u.received != u.rec.size {
            return refused(
                req,
                ErrorCode::BadOffset,
                format!("upload {id:016x}: {} of {} bytes received", u.received, u.rec.size),
            );
        }
        if let Some(f) = u.file.take() {
            if let Err(e) = f.sync_all() {
                return refused(req, ErrorCode::StorageFailure, format!("upload {id:016x}: fsync: {e}"));
            }
        }
        (paths(inner, id).1, u.rec.sha256.clone(), u.rec.name.clone(), u.rec.size)
    };
    let got = match sha256_file(&path) {
        Ok(h) => h,
        Err(e) => return refused(req, ErrorCode::StorageFailure, e.to_string()),
    };
    let mut st = inner.lock();
    let Some(u) = st.uploads.get_mut(&id) else {
        return refused(req, ErrorCode::UnknownTransfer, format!("upload {id:016x} vanished"));
    };
    if got != want {
        let reason =
            format!("SHA-256 of the {size} bytes received is {got}, the offer said {want}: discarded, offer it again");
        let (state, data) = paths(inner, id);
        let _ = std::fs::remove_file(data);
        let _ = std::fs::remove_file(state);
        st.uploads.remove(&id);
        return refused(req, ErrorCode::HashMismatch, reason);
    }
    u.rec.phase = UpPhase::Stored;
    u.rec.stored_ms = Some(now_ms());
    save(inner, &u.rec);
    let _ = sync_dir(&path);
    let instrument = u.rec.instrument.clone();
    let category = u.rec.category.name();
    drop(st);
    log::info!("upload {id:016x}: {name} from {instrument} stored ({size} bytes, SHA-256 {got})");
    audit::record(Event::new("transfer.upload_received").target(&format!("{id:016x}")).detail(serde_json::json!({
        "name": name, "instrument": instrument, "category": category, "size": size, "sha256": got,
    })));
    inner.wake.notify_all();
    Message::Ok { req }
}

/// The uploader thread: one stored upload at a time, oldest first.
pub(crate) fn uploader(inner: Arc<Inner>) {
    while !inner.stopped() {
        let now = Instant::now();
        let next = {
            let st = inner.lock();
            st.uploads
                .values()
                .filter(|u| u.rec.phase == UpPhase::Stored && u.retry_at.is_none_or(|t| t <= now))
                .min_by_key(|u| u.rec.created_ms)
                .map(|u| u.rec.clone())
        };
        match next {
            Some(rec) => send_one(&inner, rec),
            None => inner.nap(Duration::from_millis(500)),
        }
    }
}

fn set_error(inner: &Inner, id: u64, e: &str) {
    let mut st = inner.lock();
    if let Some(u) = st.uploads.get_mut(&id) {
        let wait = u.backoff.fail();
        u.retry_at = Some(Instant::now() + wait);
        u.last_error = Some(e.to_owned());
        log::warn!("upload {id:016x}: {e}; trying again in {} ms", wait.as_millis());
    }
}

fn set_sent(inner: &Inner, id: u64, sent: u64) {
    if let Some(u) = inner.lock().uploads.get_mut(&id) {
        u.sent = sent;
    }
}

fn send_one(inner: &Arc<Inner>, rec: UploadRecord) {
    let id = rec.id;
    let hid = format!("{id:016x}");
    let meta = UploadMeta {
        instrument: rec.instrument.clone(),
        name: rec.name.clone(),
        category: rec.category.name().into(),
        size: rec.size,
        sha256: rec.sha256.clone(),
    };
    let (_, path) = paths(inner, id);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => return set_error(inner, id, &format!("opening {}: {e}", path.display())),
    };
    let mut offset = match inner.link.upload_status(&hid) {
        Ok(st) if st.complete => return delivered(inner, &rec),
        Ok(st) => st.received,
        Err(e) => return set_error(inner, id, &e.to_string()),
    };
    if offset > 0 {
        log::info!("upload {hid}: the data center has {offset} of {} bytes: continuing there", rec.size);
    }
    set_sent(inner, id, offset);
    let mut buf = vec![0u8; inner.cfg.upload_chunk_bytes];
    while !inner.stopped() {
        if offset > rec.size {
            offset = 0;
        }
        let n = ((rec.size - offset) as usize).min(buf.len());
        if let Err(e) = file.read_exact_at(&mut buf[..n], offset) {
            return set_error(inner, id, &format!("reading {}: {e}", path.display()));
        }
        match inner.link.upload_chunk(&hid, &meta, offset, &buf[..n]) {
            Ok(st) if st.complete => return delivered(inner, &rec),
            Ok(st) => {
                offset = st.received;
                set_sent(inner, id, offset);
                if let Some(u) = inner.lock().uploads.get_mut(&id) {
                    u.backoff.reset();
                    u.last_error = None;
                }
            }
            Err(LinkError::Conflict(st)) => {
                log::info!("upload {hid}: the data center has {} bytes: continuing there", st.received);
                offset = st.received;
            }
            Err(LinkError::HashMismatch(why)) => {
                let mut st = inner.lock();
                let Some(u) = st.uploads.get_mut(&id) else { return };
                u.rec.dc_restarts += 1;
                if u.rec.dc_restarts >= MAX_DC_RESTARTS {
                    u.rec.phase = UpPhase::Failed;
                    u.last_error = Some(why.clone());
                    save(inner, &u.rec);
                    drop(st);
                    log::error!(
                        "upload {hid}: the data center refused the whole file {MAX_DC_RESTARTS} times: {why}; kept"
                    );
                    audit::record(
                        Event::new("transfer.upload_refused").target(&hid).outcome(audit::Outcome::Failure).detail(
                            serde_json::json!({ "name": rec.name, "instrument": rec.instrument, "reason": why }),
                        ),
                    );
                    return;
                }
                save(inner, &u.rec);
                drop(st);
                log::warn!(
                    "upload {hid}: the data center refused the whole file ({why}): sending it again from the start"
                );
                offset = 0;
            }
            Err(e) => return set_error(inner, id, &e.to_string()),
        }
    }
}

fn delivered(inner: &Inner, rec: &UploadRecord) {
    let hid = format!("{:016x}", rec.id);
    log::info!("upload {hid}: {} delivered to the data center ({} bytes, SHA-256 {})", rec.name, rec.size, rec.sha256);
    audit::record(Event::new("transfer.upload_delivered").target(&hid).detail(serde_json::json!({
        "name": rec.name, "instrument": rec.instrument, "size": rec.size, "sha256": rec.sha256,
    })));
    let (state, data) = paths(inner, rec.id);
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(&data);
    let _ = sync_dir(&state);
    let mut st = inner.lock();
    st.uploads.remove(&rec.id);
    st.uploads_delivered += 1;
}
