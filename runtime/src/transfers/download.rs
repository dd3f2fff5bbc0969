//! Downloads: the `download` command kind, the fetcher (data center → box, resumable), and
//! the offers to the target instruments' agents (box → instrument).
//!
//! Phases of a download (`downloads/<command>.json`):
//!
//! ```text
//! fetching ──size and SHA-256 match──▶ verified ──every target answered──▶ done
//!    │ ▲ (outage, restart: resumed with Range from the .part's length)
//!    └─┴─ size or hash wrong, 404, lifetime over ─────────────────────────▶ done (failed)
//! ```
//!
//! Only a `verified` file is ever offered or read by an agent: it is the `.data` file, which
//! exists only after its SHA-256 matched the signed manifest (and is hashed again after every
//! restart before it is offered again).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rapwire::agent::ErrorCode;
use rapwire::command::{code, Command};
use rapwire::requests::{cap, Message, ReceivedStatus, MAX_CHUNK};
use rapwire::transfer::{self, base64, DownloadArgs, Manifest};
use serde::{Deserialize, Serialize};

use super::{
    now_ms, sha256_file, signing, sync_dir, write_state, Backoff, Inner, TransferError, Transfers, SYNC_EVERY,
};
use crate::agents::{Answer, SessionInfo};
use crate::audit::{self, Event};
use crate::commands::{Completion, Handler, Verdict};
use crate::uplink::transfer::LinkError;

/// Offers of one file to one instrument that may fail before it is given up.
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Fetching,
    Verified,
    Done,
}

/// Where one target instrument stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Target {
    /// Not yet stored by the instrument (`attempts` failed pulls so far).
    Waiting {
        attempts: u32,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        last_error: String,
    },
    Delivered {
        at_ms: i64,
    },
    Declined {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// How the command ended (kept so that a restart reports the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Final {
    pub succeeded: bool,
    pub code: String,
    pub reason: String,
    pub detail: serde_json::Value,
}

/// The persisted state of one download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadRecord {
    pub command: String,
    /// The id agents know it by (OFFER, READ, RECEIVED).
    pub transfer: u64,
    pub manifest: Manifest,
    /// The key that signed the manifest.
    pub signer: String,
    pub targets: BTreeMap<String, Target>,
    pub phase: Phase,
    pub expires_ms: i64,
    pub created_ms: i64,
    /// Offsets at which an interrupted fetch was resumed with a Range request.
    #[serde(default)]
    pub resumed_from: Vec<u64>,
    /// Fetches started again from zero (after a hash mismatch of a resumed fetch).
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Final>,
}

/// A download in memory.
pub struct Download {
    pub(crate) rec: DownloadRecord,
    completion: Option<Completion>,
    /// Bytes in the `.part` file (or the size once verified).
    fetched: u64,
    /// The `.data` file was hashed in this run of rapd.
    checked: bool,
    last_error: Option<String>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Outstanding offers: target serial → agent session.
    offers: HashMap<String, u64>,
}

/// One download, for the status.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadStatus {
    pub command: String,
    pub name: String,
    pub category: &'static str,
    pub size: u64,
    pub sha256: String,
    pub fetched: u64,
    pub phase: Phase,
    pub targets: BTreeMap<String, Target>,
    pub resumed_from: Vec<u64>,
    pub last_error: Option<String>,
}

impl Download {
    pub(crate) fn is_done(&self) -> bool {
        self.rec.phase == Phase::Done
    }

    /// Bytes of it already on the partition.
    pub(crate) fn on_disk(&self) -> u64 {
        if self.is_done() {
            0
        } else {
            self.fetched
        }
    }

    pub(crate) fn status(&self) -> DownloadStatus {
        DownloadStatus {
            command: self.rec.command.clone(),
            name: self.rec.manifest.name.clone(),
            category: self.rec.manifest.category.name(),
            size: self.rec.manifest.size,
            sha256: self.rec.manifest.sha256.clone(),
            fetched: self.fetched,
            phase: self.rec.phase,
            targets: self.rec.targets.clone(),
            resumed_from: self.rec.resumed_from.clone(),
            last_error: self.last_error.clone(),
        }
    }

    fn progress(&self) -> serde_json::Value {
        serde_json::json!({
            "phase": self.rec.phase,
            "name": self.rec.manifest.name,
            "size": self.rec.manifest.size,
            "fetched": self.fetched,
            "targets": self.rec.targets,
            "resumed_from": self.rec.resumed_from,
            "last_error": self.last_error,
        })
    }
}

fn paths(inner: &Inner, command: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = inner.downloads_dir();
    (d.join(format!("{command}.json")), d.join(format!("{command}.part")), d.join(format!("{command}.data")))
}

fn save(inner: &Inner, rec: &DownloadRecord) {
    if let Err(e) = write_state(&paths(inner, &rec.command).0, rec) {
        log::error!("download {}: state not saved: {e}", rec.command);
    }
}

/// Loads every download a previous run left (finished ones are forgotten after 31 days).
pub(crate) fn load_all(inner: &Inner) -> Result<BTreeMap<String, Download>, TransferError> {
    let dir = inner.downloads_dir();
    let mut out = BTreeMap::new();
    let rd = std::fs::read_dir(&dir).map_err(|source| TransferError { path: dir.clone(), source })?;
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let rec: DownloadRecord = match std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            Some(r) => r,
            None => {
                log::error!("download state {} is unreadable; left in place", p.display());
                continue;
            }
        };
        let (_, part, data) = paths(inner, &rec.command);
        if rec.phase == Phase::Done {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&data);
            if now_ms() - rec.created_ms > rapwire::command::MAX_LIFETIME_MS + 24 * 3600 * 1000 {
                let _ = std::fs::remove_file(&p);
                continue;
            }
        }
        let fetched = match rec.phase {
            Phase::Fetching => std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0),
            Phase::Verified => rec.manifest.size,
            Phase::Done => 0,
        };
        if rec.phase == Phase::Verified && !data.exists() {
            log::error!("download {}: verified file {} is missing: fetching again", rec.command, data.display());
        }
        let mut d = Download {
            fetched,
            completion: None,
            checked: false,
            last_error: None,
            retry_at: None,
            backoff: Backoff::new(&inner.cfg),
            offers: HashMap::new(),
            rec,
        };
        if d.rec.phase == Phase::Verified && !data.exists() {
            d.rec.phase = Phase::Fetching;
            d.fetched = 0;
        }
        if d.rec.phase != Phase::Done {
            log::info!(
                "download {} ({}): {:?}, {} of {} bytes on disk",
                d.rec.command,
                d.rec.manifest.name,
                d.rec.phase,
                d.fetched,
                d.rec.manifest.size
            );
        }
        out.insert(d.rec.command.clone(), d);
    }
    Ok(out)
}

/// The `download` command kind.
pub struct DownloadKind {
    transfers: Transfers,
}

impl DownloadKind {
    pub fn new(transfers: Transfers) -> DownloadKind {
        DownloadKind { transfers }
    }
}

fn verdict_of(f: &Final) -> Verdict {
    if f.succeeded {
        Verdict::Succeeded { detail: f.detail.clone() }
    } else {
        Verdict::Failed { code: f.code.clone(), reason: f.reason.clone(), detail: f.detail.clone() }
    }
}

impl Handler for DownloadKind {
    fn run(&self, cmd: &Command, done: Completion) -> Verdict {
        let inner = &self.transfers.inner;
        let args: DownloadArgs = match serde_json::from_value(cmd.args.clone()) {
            Ok(a) => a,
            Err(e) => return Verdict::malformed(format!("download arguments: {e}")),
        };
        if args.manifest.len() > transfer::MAX_MANIFEST_BYTES {
            return Verdict::malformed(format!(
                "manifest is {} bytes, more than {}",
                args.manifest.len(),
                transfer::MAX_MANIFEST_BYTES
            ));
        }
        if args.signature.len() > transfer::MAX_SIGNATURE_BYTES {
            return Verdict::malformed("signature is longer than 2048 characters");
        }
        let sig = match base64::decode(&args.signature) {
            Ok(s) => s,
            Err(e) => return Verdict::malformed(format!("signature is not base64: {e}")),
        };
        // The signature first: nothing of an unsigned manifest is believed.
        let signer = match signing::verify(&inner.keys, args.manifest.as_bytes(), &sig) {
            Ok(k) => format!("{} {}", k.kind, k.path.display()),
            Err(e) => {
                let mut reason = e;
                if !inner.key_errors.is_empty() {
                    reason = format!("{reason}; keys not loaded: {}", inner.key_errors.join("; "));
                }
                audit::record(
                    Event::new("transfer.signature_refused")
                        .target(&cmd.id)
                        .outcome(audit::Outcome::Denied)
                        .detail(serde_json::json!({ "reason": reason })),
                );
                return Verdict::refused(code::BAD_SIGNATURE, reason);
            }
        };
        let manifest = match Manifest::parse(args.manifest.as_bytes()) {
            Ok(m) => m,
            Err(e) => return Verdict::malformed(e),
        };
        let targets: Vec<String> = if cmd.target.is_empty() {
            manifest.targets.iter().filter(|t| inner.instruments.contains(*t)).cloned().collect()
        } else {
            if let Some(t) = cmd.target.iter().find(|t| !manifest.targets.contains(t)) {
                return Verdict::refused(
                    code::BAD_TARGET,
                    format!(
                        "instrument `{t}` is not among the signed manifest's targets ({})",
                        manifest.targets.join(", ")
                    ),
                );
            }
            cmd.target.clone()
        };
        if targets.is_empty() {
            return Verdict::refused(
                code::BAD_TARGET,
                format!("none of the manifest's targets ({}) is cabled to this box", manifest.targets.join(", ")),
            );
        }
        let mut st = inner.lock();
        if let Err(e) = inner.fits(&st, manifest.size) {
            return Verdict::refused(code::QUOTA, format!("{} ({} bytes): {e}", manifest.name, manifest.size));
        }
        let rec = DownloadRecord {
            command: cmd.id.clone(),
            transfer: loop {
                let t = random_u64();
                if t != 0 && !st.downloads.values().any(|d| d.rec.transfer == t) {
                    break t;
                }
            },
            targets: targets
                .iter()
                .map(|t| (t.clone(), Target::Waiting { attempts: 0, last_error: String::new() }))
                .collect(),
            manifest,
            signer,
            phase: Phase::Fetching,
            expires_ms: cmd.expires_ms,
            created_ms: now_ms(),
            resumed_from: Vec::new(),
            restarts: 0,
            verdict: None,
        };
        let (_, part, data) = paths(inner, &cmd.id);
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&data);
        if let Err(e) = write_state(&paths(inner, &cmd.id).0, &rec) {
            return Verdict::failed("storage", e.to_string());
        }
        log::info!(
            "download {}: {} ({}, {} bytes, signed by {}) for {}",
            cmd.id,
            rec.manifest.name,
            rec.manifest.category.name(),
            rec.manifest.size,
            rec.signer,
            targets.join(", ")
        );
        let d = Download {
            fetched: 0,
            completion: Some(done),
            checked: false,
            last_error: None,
            retry_at: None,
            backoff: Backoff::new(&inner.cfg),
            offers: HashMap::new(),
            rec,
        };
        let detail = d.progress();
        st.downloads.insert(cmd.id.clone(), d);
        drop(st);
        inner.wake.notify_all();
        Verdict::Running { detail }
    }

    fn resume(&self, cmd: &Command, done: Completion) -> Verdict {
        let inner = &self.transfers.inner;
        let mut st = inner.lock();
        match st.downloads.get_mut(&cmd.id) {
            Some(d) => match &d.rec.verdict {
                Some(f) => verdict_of(f),
                None => {
                    d.completion = Some(done);
                    let detail = d.progress();
                    drop(st);
                    inner.wake.notify_all();
                    Verdict::Running { detail }
                }
            },
            None => {
                Verdict::failed("interrupted", "rapd restarted before the download was stored; it is not run again")
            }
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = openssl::rand::rand_bytes(&mut b);
    u64::from_le_bytes(b) ^ now_ms() as u64
}

/// Ends download `id` with `f` (state saved first, then files removed, then the command's
/// result). Call without the state lock held.
fn conclude(inner: &Inner, id: &str, f: Final) {
    let (completion, rec) = {
        let mut st = inner.lock();
        let Some(d) = st.downloads.get_mut(id) else { return };
        if d.rec.phase == Phase::Done {
            return;
        }
        d.rec.phase = Phase::Done;
        d.rec.verdict = Some(f.clone());
        d.fetched = 0;
        d.offers.clear();
        save(inner, &d.rec);
        (d.completion.clone(), d.rec.clone())
    };
    let (_, part, data) = paths(inner, id);
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(data);
    log::info!(
        "download {id} ({}): {}{}",
        rec.manifest.name,
        if f.succeeded { "succeeded" } else { "failed" },
        if f.reason.is_empty() { String::new() } else { format!(": {}", f.reason) }
    );
    match completion {
        Some(c) => c.finish(verdict_of(&f)),
        None => log::warn!("download {id} ended while its command was not attached (reported when it resumes)"),
    }
}

fn fail(code: &str, reason: String, detail: serde_json::Value) -> Final {
    Final { succeeded: false, code: code.into(), reason, detail }
}

/// The fetcher thread: one download at a time, oldest first.
pub(crate) fn fetcher(inner: Arc<Inner>) {
    while !inner.stopped() {
        let now = Instant::now();
        let next = {
            let st = inner.lock();
            // A download left by a previous run waits until the dispatcher resumes its command.
            st.downloads
                .values()
                .filter(|d| {
                    d.rec.phase == Phase::Fetching && d.completion.is_some() && d.retry_at.is_none_or(|t| t <= now)
                })
                .min_by_key(|d| d.rec.created_ms)
                .map(|d| d.rec.clone())
        };
        let Some(rec) = next else {
            inner.nap(Duration::from_millis(500));
            continue;
        };
        if now_ms() > rec.expires_ms {
            let reason = format!("the command's lifetime ended before {} could be fetched", rec.manifest.name);
            conclude(&inner, &rec.command, fail("expired", reason, serde_json::Value::Null));
            continue;
        }
        fetch_one(&inner, rec);
    }
}

fn set_error(inner: &Inner, id: &str, e: &str, retry: bool) {
    let mut st = inner.lock();
    if let Some(d) = st.downloads.get_mut(id) {
        d.last_error = Some(e.to_owned());
        if retry {
            let wait = d.backoff.fail();
            d.retry_at = Some(Instant::now() + wait);
            log::warn!("download {id}: {e}; trying again in {} ms", wait.as_millis());
        }
        if let Some(c) = &d.completion {
            c.progress(d.progress());
        }
    }
}

fn fetch_one(inner: &Arc<Inner>, rec: DownloadRecord) {
    let id = rec.command.clone();
    let (_, part, data) = paths(inner, &id);
    let size = rec.manifest.size;
    let mut f = match OpenOptions::new().create(true).append(true).read(true).open(&part) {
        Ok(f) => f,
        Err(e) => return set_error(inner, &id, &format!("opening {}: {e}", part.display()), true),
    };
    let mut have = f.metadata().map(|m| m.len()).unwrap_or(0);
    if have > size {
        log::warn!("download {id}: {} holds {have} bytes, more than {size}: starting again", part.display());
        let _ = f.set_len(0);
        have = 0;
    }
    if have < size {
        if have > 0 {
            log::info!("download {id}: resuming {} at byte {have} of {size}", rec.manifest.name);
            let mut st = inner.lock();
            if let Some(d) = st.downloads.get_mut(&id) {
                d.rec.resumed_from.push(have);
                save(inner, &d.rec);
            }
        }
        let mut written = have;
        let mut unsynced = 0u64;
        let mut last_report = written;
        let inner2 = inner.clone();
        let mut sink = |chunk: &[u8]| -> std::io::Result<()> {
            if inner2.stopped() {
                return Err(std::io::Error::other("rapd is stopping"));
            }
            f.write_all(chunk)?;
            written += chunk.len() as u64;
            unsynced += chunk.len() as u64;
            if unsynced >= SYNC_EVERY {
                f.sync_data()?;
                unsynced = 0;
            }
            if written - last_report >= 1024 * 1024 || written == size {
                last_report = written;
                let mut st = inner2.lock();
                if let Some(d) = st.downloads.get_mut(&id) {
                    d.fetched = written;
                    if let Some(c) = &d.completion {
                        c.progress(d.progress());
                    }
                }
            }
            Ok(())
        };
        let res = inner.link.fetch(&rec.manifest.sha256, have, size, &mut sink);
        let _ = f.sync_data();
        {
            let mut st = inner.lock();
            if let Some(d) = st.downloads.get_mut(&id) {
                d.fetched = written;
            }
        }
        match res {
            Ok(_) if written == size => {}
            Ok(_) => {
                return set_error(inner, &id, &format!("the connection ended after {written} of {size} bytes"), true)
            }
            Err(LinkError::NotFound(_)) => {
                let reason = format!("the data center has no content with SHA-256 {}", rec.manifest.sha256);
                audit_refused(&rec, &reason);
                return conclude(inner, &id, fail("not_found", reason, serde_json::Value::Null));
            }
            Err(LinkError::SizeMismatch { served, expected }) => {
                let reason = format!(
                    "{} is {served} bytes at the data center, the signed manifest says {expected}: not offered",
                    rec.manifest.name
                );
                audit_refused(&rec, &reason);
                return conclude(inner, &id, fail("size_mismatch", reason, serde_json::Value::Null));
            }
            Err(e) if e.transient() || inner.stopped() => return set_error(inner, &id, &e.to_string(), true),
            Err(e) => {
                let reason = format!("fetching {}: {e}", rec.manifest.name);
                audit_refused(&rec, &reason);
                return conclude(inner, &id, fail("fetch_refused", reason, serde_json::Value::Null));
            }
        }
    }
    drop(f);
    // All bytes are here: size and SHA-256 before it may be offered.
    let got = match sha256_file(&part) {
        Ok(h) => h,
        Err(e) => return set_error(inner, &id, &e.to_string(), true),
    };
    let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if got != rec.manifest.sha256 || len != size {
        let resumed = !rec.resumed_from.is_empty();
        if resumed && rec.restarts == 0 {
            log::warn!(
                "download {id}: SHA-256 of the resumed file is {got}, expected {}: fetching again from the start",
                rec.manifest.sha256
            );
            let _ = std::fs::remove_file(&part);
            let mut st = inner.lock();
            if let Some(d) = st.downloads.get_mut(&id) {
                d.rec.restarts += 1;
                d.fetched = 0;
                save(inner, &d.rec);
            }
            return;
        }
        let reason = format!(
            "SHA-256 of the {len} bytes fetched is {got}, the signed manifest says {}: {} is not offered",
            rec.manifest.sha256, rec.manifest.name
        );
        audit_refused(&rec, &reason);
        return conclude(inner, &id, fail("hash_mismatch", reason, serde_json::json!({ "sha256": got })));
    }
    if let Err(e) = std::fs::rename(&part, &data)
        .map_err(|source| TransferError { path: data.clone(), source })
        .and_then(|()| sync_dir(&data))
    {
        return set_error(inner, &id, &e.to_string(), true);
    }
    let mut st = inner.lock();
    if let Some(d) = st.downloads.get_mut(&id) {
        d.rec.phase = Phase::Verified;
        d.fetched = size;
        d.checked = true;
        d.last_error = None;
        d.backoff.reset();
        save(inner, &d.rec);
        if let Some(c) = &d.completion {
            c.progress(d.progress());
        }
    }
    drop(st);
    log::info!("download {id}: {} verified ({size} bytes, SHA-256 {got})", rec.manifest.name);
    audit::record(Event::new("transfer.download_verified").target(&id).detail(serde_json::json!({
        "name": rec.manifest.name,
        "category": rec.manifest.category.name(),
        "size": size,
        "sha256": got,
        "signer": rec.signer,
        "resumed_from": rec.resumed_from,
    })));
    inner.wake.notify_all();
}

fn audit_refused(rec: &DownloadRecord, reason: &str) {
    audit::record(
        Event::new("transfer.download_refused")
            .target(&rec.command)
            .outcome(audit::Outcome::Failure)
            .detail(serde_json::json!({ "name": rec.manifest.name, "sha256": rec.manifest.sha256, "reason": reason })),
    );
}

/// Whether every target answered; the final result if so.
fn final_of(rec: &DownloadRecord) -> Option<Final> {
    if rec.targets.values().any(|t| matches!(t, Target::Waiting { .. })) {
        return None;
    }
    let delivered: Vec<&String> =
        rec.targets.iter().filter(|(_, t)| matches!(t, Target::Delivered { .. })).map(|(s, _)| s).collect();
    let detail = serde_json::json!({
        "name": rec.manifest.name,
        "size": rec.manifest.size,
        "sha256": rec.manifest.sha256,
        "targets": rec.targets,
        "resumed_from": rec.resumed_from,
    });
    if delivered.len() == rec.targets.len() {
        return Some(Final { succeeded: true, code: String::new(), reason: String::new(), detail });
    }
    let why: Vec<String> = rec
        .targets
        .iter()
        .filter_map(|(s, t)| match t {
            Target::Declined { reason } => Some(format!("{s} declined it: {reason}")),
            Target::Failed { reason } => Some(format!("{s} could not store it: {reason}")),
            _ => None,
        })
        .collect();
    let code =
        if rec.targets.values().any(|t| matches!(t, Target::Failed { .. })) { "not_delivered" } else { "declined" };
    Some(Final { succeeded: false, code: code.into(), reason: why.join("; "), detail })
}

/// The offer loop: offers verified files to the target agents and ends what is complete.
pub(crate) fn offerer(inner: Arc<Inner>) {
    let mut seen_generation = u64::MAX;
    let mut last_full = Instant::now() - Duration::from_secs(10);
    while !inner.stopped() {
        let generation = inner.agents.generation();
        if generation == seen_generation && last_full.elapsed() < Duration::from_millis(500) {
            inner.nap(Duration::from_millis(100));
            continue;
        }
        seen_generation = generation;
        last_full = Instant::now();
        offer_round(&inner);
        inner.nap(Duration::from_millis(100));
    }
}

fn offer_round(inner: &Arc<Inner>) {
    let now = now_ms();
    let mut to_check = Vec::new();
    let mut to_offer = Vec::new();
    let mut to_end = Vec::new();
    {
        let mut st = inner.lock();
        for d in st.downloads.values_mut() {
            if d.rec.phase != Phase::Verified || d.completion.is_none() {
                continue;
            }
            if let Some(f) = final_of(&d.rec) {
                to_end.push((d.rec.command.clone(), f));
                continue;
            }
            if now > d.rec.expires_ms {
                let missing: Vec<&String> =
                    d.rec.targets.iter().filter(|(_, t)| matches!(t, Target::Waiting { .. })).map(|(s, _)| s).collect();
                let reason = format!(
                    "the command's lifetime ended before {} stored {}",
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    d.rec.manifest.name
                );
                to_end.push((
                    d.rec.command.clone(),
                    fail("not_delivered", reason, serde_json::json!({ "targets": d.rec.targets })),
                ));
                continue;
            }
            if !d.checked {
                to_check.push(d.rec.command.clone());
                continue;
            }
            d.offers.retain(|_, session| inner.agents.is_open(*session));
            for (serial, t) in &d.rec.targets {
                if !matches!(t, Target::Waiting { .. }) || d.offers.contains_key(serial) {
                    continue;
                }
                if let Some(session) = inner.agents.sessions(serial, cap::DOWNLOADS).first() {
                    d.offers.insert(serial.clone(), *session);
                    to_offer.push((d.rec.clone(), serial.clone(), *session));
                }
            }
        }
    }
    for (id, f) in to_end {
        conclude(inner, &id, f);
    }
    for id in to_check {
        // After a restart: the file on disk is hashed again before it is offered.
        let (_, _, data) = paths(inner, &id);
        let want = inner.lock().downloads.get(&id).map(|d| d.rec.manifest.sha256.clone());
        let ok = match (sha256_file(&data), want) {
            (Ok(h), Some(w)) => h == w,
            _ => false,
        };
        let mut st = inner.lock();
        if let Some(d) = st.downloads.get_mut(&id) {
            if ok {
                d.checked = true;
            } else {
                log::error!(
                    "download {id}: the stored file {} no longer matches its SHA-256: fetching again",
                    data.display()
                );
                let _ = std::fs::remove_file(&data);
                d.rec.phase = Phase::Fetching;
                d.fetched = 0;
                save(inner, &d.rec);
            }
        }
    }
    for (rec, serial, session) in to_offer {
        let Some(sha) = transfer::sha256_bytes(&rec.manifest.sha256) else { continue };
        let weak: Weak<Inner> = Arc::downgrade(inner);
        let (id, s2) = (rec.command.clone(), serial.clone());
        let sent = inner.agents.request(
            session,
            |req| Message::Offer {
                req,
                transfer: rec.transfer,
                size: rec.manifest.size,
                sha256: sha,
                category: rec.manifest.category,
                name: rec.manifest.name.clone(),
            },
            Box::new(move |answer| {
                if let Some(inner) = weak.upgrade() {
                    offer_answered(&inner, &id, &s2, session, answer);
                }
            }),
        );
        match sent {
            Ok(()) => log::info!(
                "download {}: {} offered to {serial} (agent session {session})",
                rec.command,
                rec.manifest.name
            ),
            Err(e) => {
                log::warn!("download {}: offer to {serial}: {e}", rec.command);
                if let Some(d) = inner.lock().downloads.get_mut(&rec.command) {
                    d.offers.remove(&serial);
                }
            }
        }
    }
}

fn offer_answered(inner: &Inner, id: &str, serial: &str, session: u64, answer: Answer) {
    let mut st = inner.lock();
    let Some(d) = st.downloads.get_mut(id) else { return };
    match answer {
        Answer::Ok => log::info!("download {id}: {serial} accepted the offer; it pulls the file"),
        Answer::Closed => {
            if d.offers.get(serial) == Some(&session) {
                d.offers.remove(serial);
            }
        }
        Answer::Refused { code, reason } => {
            d.offers.remove(serial);
            let t = d
                .rec
                .targets
                .entry(serial.to_owned())
                .or_insert(Target::Waiting { attempts: 0, last_error: String::new() });
            if code == ErrorCode::Declined {
                *t = Target::Declined { reason: reason.clone() };
                log::info!("download {id}: {serial} declined the offer: {reason}");
            } else {
                bump(t, format!("offer refused ({}): {reason}", code.name()));
            }
            save(inner, &d.rec);
            drop(st);
            inner.wake.notify_all();
        }
    }
}

/// One more failed attempt on a waiting target; the last one makes it failed.
fn bump(t: &mut Target, error: String) {
    if let Target::Waiting { attempts, .. } = t {
        let n = *attempts + 1;
        *t = if n >= MAX_ATTEMPTS {
            Target::Failed { reason: error }
        } else {
            Target::Waiting { attempts: n, last_error: error }
        };
    }
}

/// READ and RECEIVED from agents.
pub(crate) fn handle(inner: &Inner, session: &SessionInfo, msg: &Message) -> Option<Message> {
    match msg {
        Message::Read { req, transfer, offset, length } => {
            Some(read(inner, session, *req, *transfer, *offset, *length))
        }
        Message::Received { req, transfer, status, reason } => {
            Some(received(inner, session, *req, *transfer, *status, reason))
        }
        _ => None,
    }
}

fn refused(req: u64, code: ErrorCode, reason: String) -> Message {
    Message::Refused { req, code, reason }
}

fn read(inner: &Inner, session: &SessionInfo, req: u64, transfer: u64, offset: u64, length: u32) -> Message {
    if session.capabilities & cap::DOWNLOADS == 0 {
        return refused(req, ErrorCode::NotNegotiated, "READ needs the downloads capability (HELLO)".into());
    }
    let found = {
        let st = inner.lock();
        st.downloads
            .values()
            .find(|d| {
                d.rec.transfer == transfer
                    && d.rec.phase == Phase::Verified
                    && d.checked
                    && d.rec.targets.contains_key(&*session.serial)
            })
            .map(|d| (d.rec.command.clone(), d.rec.manifest.size))
    };
    let Some((id, size)) = found else {
        return refused(
            req,
            ErrorCode::UnknownTransfer,
            format!("no verified file {transfer} for instrument {}", session.serial),
        );
    };
    if offset > size {
        return refused(req, ErrorCode::BadOffset, format!("offset {offset} is beyond the file's {size} bytes"));
    }
    if length as usize > MAX_CHUNK {
        return refused(
            req,
            ErrorCode::Malformed,
            format!("READ of {length} bytes, more than the {MAX_CHUNK} allowed"),
        );
    }
    let n = (length as u64).min(size - offset) as usize;
    let (_, _, data) = paths(inner, &id);
    let mut buf = vec![0u8; n];
    match File::open(&data).and_then(|f| f.read_exact_at(&mut buf, offset)) {
        Ok(()) => Message::Data { req, offset, data: buf },
        Err(e) => refused(req, ErrorCode::StorageFailure, format!("reading {}: {e}", data.display())),
    }
}

fn received(
    inner: &Inner,
    session: &SessionInfo,
    req: u64,
    transfer: u64,
    status: ReceivedStatus,
    reason: &str,
) -> Message {
    let mut st = inner.lock();
    let Some(d) = st.downloads.values_mut().find(|d| d.rec.transfer == transfer) else {
        return refused(req, ErrorCode::UnknownTransfer, format!("no file {transfer}"));
    };
    let serial = session.serial.to_string();
    let Some(t) = d.rec.targets.get_mut(&serial) else {
        return refused(req, ErrorCode::UnknownTransfer, format!("file {transfer} is not for instrument {serial}"));
    };
    if !matches!(t, Target::Waiting { .. }) {
        return Message::Ok { req };
    }
    let id = d.rec.command.clone();
    let name = d.rec.manifest.name.clone();
    match status {
        ReceivedStatus::Stored => {
            *t = Target::Delivered { at_ms: now_ms() };
            log::info!("download {id}: {serial} stored {name}");
        }
        ReceivedStatus::Declined => {
            *t = Target::Declined { reason: reason.to_owned() };
            log::info!("download {id}: {serial} declined {name}: {reason}");
        }
        ReceivedStatus::Failed => {
            bump(t, format!("the instrument could not store it: {reason}"));
            log::warn!("download {id}: {serial} could not store {name}: {reason}");
        }
    }
    let delivered = matches!(t, Target::Delivered { .. });
    d.offers.remove(&serial);
    save(inner, &d.rec);
    if let Some(c) = &d.completion {
        c.progress(d.progress());
    }
    drop(st);
    if delivered {
        audit::record(
            Event::new("transfer.download_delivered")
                .target(&id)
                .detail(serde_json::json!({ "name": name, "instrument": serial })),
        );
    }
    inner.wake.notify_all();
    Message::Ok { req }
}
