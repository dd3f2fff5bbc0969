//! Files in transit on the data partition (`docs/transfers.md`): downloads from the data
//! center to instruments, uploads from instruments to the data center. The only owner of
//! `transfers.dir` (default `/data/rapd/transfers`).
//!
//! * [`download`]: the `download` command kind. The manifest's signature is checked against
//!   the trusted vendor keys before anything else; the content is fetched over the uplink's
//!   transfer link with HTTP `Range` into `downloads/<command>.part` (resumed after an
//!   outage or a restart from what is on disk), its size and SHA-256 are checked, and only
//!   then does it become `downloads/<command>.data` and is offered to the target
//!   instruments' agents, which pull it over their port. The command succeeds when every
//!   target reported the file stored intact.
//! * [`upload`]: an agent offers a file; the box stores it in `uploads/<id>.data` (resumable
//!   across reconnects and restarts), checks its SHA-256, and sends it to the data center in
//!   chunks, resuming from what the data center says it has; the data center checks the
//!   SHA-256 of the whole file.
//!
//! Every file's size counts against `transfers.quota_bytes` from the moment it is accepted;
//! `transfers.reserve_bytes` stay free on the partition whatever the quota says. State is a
//! small JSON file per transfer, replaced atomically (write, fsync, rename, fsync the
//! directory) at every change of phase.

pub mod download;
pub mod signing;
pub mod upload;

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::hash::{Hasher, MessageDigest};
use serde::Serialize;

use crate::agents::{Agents, RequestHandler, SessionInfo};
use crate::config::TransfersConfig;
use crate::uplink::transfer::TransferLink;
use signing::VendorKey;

/// Data written between two fsyncs of a file being received.
const SYNC_EVERY: u64 = 4 * 1024 * 1024;

/// A failure of the transfer store, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("transfers {path}: {source}")]
pub struct TransferError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError { path: path.into(), source }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Writes `value` as JSON to `path` atomically and durably.
pub(crate) fn write_state<T: Serialize>(path: &Path, value: &T) -> Result<(), TransferError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&text).and_then(|()| f.sync_all()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(path)
}

/// fsyncs the directory holding `path` (after a rename or a new file).
pub(crate) fn sync_dir(path: &Path) -> Result<(), TransferError> {
    match path.parent() {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir)),
        None => Ok(()),
    }
}

/// SHA-256 of a file through OpenSSL's EVP interface (the FIPS provider in rapd).
pub(crate) fn sha256_file(path: &Path) -> Result<String, TransferError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let digest = |e: openssl::error::ErrorStack| TransferError {
        path: path.into(),
        source: std::io::Error::other(format!("SHA-256 unavailable: {e}")),
    };
    let mut h = Hasher::new(MessageDigest::sha256()).map_err(digest)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]).map_err(digest)?;
    }
    Ok(rapwire::transfer::hex(&h.finish().map_err(digest)?))
}

/// Bytes available to rapd on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `st` is plain old data filled by statvfs; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Exponential backoff with the configured bounds.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(cfg: &TransfersConfig) -> Backoff {
        Backoff { next: cfg.retry_initial, initial: cfg.retry_initial, max: cfg.retry_max }
    }
    pub(crate) fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// The transfers part of rapd's status.
#[derive(Debug, Clone, Serialize)]
pub struct TransfersStatus {
    pub dir: PathBuf,
    pub quota_bytes: u64,
    /// Bytes reserved by the files in transit (their full sizes).
    pub used_bytes: u64,
    /// Bytes free on the data partition.
    pub partition_free_bytes: Option<u64>,
    /// The trusted vendor keys (`ECDSA P-256 /path`), and the ones that could not be loaded.
    pub vendor_keys: Vec<String>,
    pub vendor_key_errors: Vec<String>,
    pub downloads: Vec<download::DownloadStatus>,
    pub uploads: Vec<upload::UploadStatusView>,
    /// Agent sessions (version-2 connections) of the instruments.
    pub agents: Vec<crate::agents::SessionStatus>,
    /// Uploads delivered to the data center since rapd started.
    pub uploads_delivered: u64,
}

pub(crate) struct State {
    pub(crate) downloads: BTreeMap<String, download::Download>,
    pub(crate) uploads: BTreeMap<u64, upload::Upload>,
    pub(crate) uploads_delivered: u64,
}

pub(crate) struct Inner {
    pub(crate) cfg: TransfersConfig,
    pub(crate) keys: Vec<VendorKey>,
    pub(crate) key_errors: Vec<String>,
    pub(crate) instruments: HashSet<String>,
    pub(crate) link: TransferLink,
    pub(crate) agents: Arc<Agents>,
    pub(crate) state: Mutex<State>,
    pub(crate) wake: Condvar,
    pub(crate) stop: AtomicBool,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn downloads_dir(&self) -> PathBuf {
        self.cfg.dir.join("downloads")
    }

    pub(crate) fn uploads_dir(&self) -> PathBuf {
        self.cfg.dir.join("uploads")
    }

    /// Bytes reserved by everything in transit.
    pub(crate) fn used(st: &State) -> u64 {
        st.downloads.values().filter(|d| !d.is_done()).map(|d| d.rec.manifest.size).sum::<u64>()
            + st.uploads.values().filter(|u| !u.is_done()).map(|u| u.rec.size).sum::<u64>()
    }

    /// Whether `size` more bytes fit: the quota, then the partition (keeping the reserve
    /// free; bytes already reserved but not yet written are counted as taken).
    pub(crate) fn fits(&self, st: &State, size: u64) -> Result<(), String> {
        let used = Inner::used(st);
        if used.saturating_add(size) > self.cfg.quota_bytes {
            return Err(format!(
                "{size} bytes do not fit the transfer quota: {} of {} bytes are free",
                self.cfg.quota_bytes.saturating_sub(used),
                self.cfg.quota_bytes
            ));
        }
        if let Some(free) = free_bytes(&self.cfg.dir) {
            let unwritten: u64 = st
                .downloads
                .values()
                .filter(|d| !d.is_done())
                .map(|d| d.rec.manifest.size.saturating_sub(d.on_disk()))
                .sum::<u64>()
                + st.uploads
                    .values()
                    .filter(|u| !u.is_done())
                    .map(|u| u.rec.size.saturating_sub(u.received))
                    .sum::<u64>();
            let avail = free.saturating_sub(self.cfg.reserve_bytes).saturating_sub(unwritten);
            if size > avail {
                return Err(format!(
                    "{size} bytes do not fit on the data partition: {free} bytes free, {} kept in reserve, {unwritten} promised to transfers in progress",
                    self.cfg.reserve_bytes
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits up to `d` for a wake-up.
    pub(crate) fn nap(&self, d: Duration) {
        let st = self.lock();
        let _ = self.wake.wait_timeout(st, d);
    }
}

/// The transfer store and engine; cheap to clone.
#[derive(Clone)]
pub struct Transfers {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers").field("dir", &self.inner.cfg.dir).finish()
    }
}

/// The engine's threads; [`TransferThreads::join`] after the stop flag is set.
pub struct TransferThreads {
    handles: Vec<JoinHandle<()>>,
    inner: Arc<Inner>,
}

impl TransferThreads {
    pub fn join(self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
        for h in self.handles {
            let _ = h.join();
        }
    }
}

impl Transfers {
    /// Opens the store (creating its directories), loads what a previous run left and the
    /// vendor keys. A key that cannot be loaded is reported in the status and in every
    /// download refusal; it does not stop rapd.
    pub fn open(
        cfg: &TransfersConfig,
        instruments: &[String],
        link: TransferLink,
        agents: Arc<Agents>,
    ) -> Result<Transfers, TransferError> {
        for d in [cfg.dir.clone(), cfg.dir.join("downloads"), cfg.dir.join("uploads")] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let (mut keys, mut key_errors) = (Vec::new(), Vec::new());
        for p in &cfg.vendor_keys {
            match signing::load_key(p) {
                Ok(k) => {
                    log::info!("transfers: trusted vendor key {} ({})", p.display(), k.kind);
                    keys.push(k);
                }
                Err(e) => {
                    log::error!("transfers: {e}");
                    key_errors.push(e);
                }
            }
        }
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            keys,
            key_errors,
            instruments: instruments.iter().cloned().collect(),
            link,
            agents,
            state: Mutex::new(State { downloads: BTreeMap::new(), uploads: BTreeMap::new(), uploads_delivered: 0 }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let downloads = download::load_all(&inner)?;
        let uploads = upload::load_all(&inner)?;
        {
            let mut st = inner.lock();
            st.downloads = downloads;
            st.uploads = uploads;
        }
        Ok(Transfers { inner })
    }

    /// Starts the fetcher, the uploader and the offer loop; they end when `stop` is set.
    pub fn start(&self, stop: Arc<AtomicBool>) -> std::io::Result<TransferThreads> {
        let mut handles = Vec::new();
        let spawn = |name: &str, f: fn(Arc<Inner>)| {
            let inner = self.inner.clone();
            std::thread::Builder::new().name(name.into()).spawn(move || f(inner))
        };
        handles.push(spawn("fetcher", download::fetcher)?);
        handles.push(spawn("offers", download::offerer)?);
        handles.push(spawn("uploader", upload::uploader)?);
        // Propagate the daemon's stop flag to the engine's own.
        let inner = self.inner.clone();
        handles.push(std::thread::Builder::new().name("transfers-stop".into()).spawn(move || {
            while !stop.load(Ordering::SeqCst) && !inner.stopped() {
                std::thread::sleep(Duration::from_millis(100));
            }
            inner.stop.store(true, Ordering::SeqCst);
            inner.wake.notify_all();
        })?);
        Ok(TransferThreads { handles, inner: self.inner.clone() })
    }

    /// The status section.
    pub fn status(&self) -> TransfersStatus {
        let i = &self.inner;
        let st = i.lock();
        TransfersStatus {
            dir: i.cfg.dir.clone(),
            quota_bytes: i.cfg.quota_bytes,
            used_bytes: Inner::used(&st),
            partition_free_bytes: free_bytes(&i.cfg.dir),
            vendor_keys: i.keys.iter().map(|k| format!("{} {}", k.kind, k.path.display())).collect(),
            vendor_key_errors: i.key_errors.clone(),
            downloads: st.downloads.values().map(download::Download::status).collect(),
            uploads: st.uploads.values().map(upload::Upload::status).collect(),
            agents: i.agents.status(),
            uploads_delivered: st.uploads_delivered,
        }
    }
}

impl RequestHandler for Transfers {
    fn handle(&self, session: &SessionInfo, msg: &rapwire::requests::Message) -> Option<rapwire::requests::Message> {
        download::handle(&self.inner, session, msg).or_else(|| upload::handle(&self.inner, session, msg))
    }
}
