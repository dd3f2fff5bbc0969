//! The simulated agent's file side: version 2 of the agent protocol on a connection of its
//! own (the reporting [`crate::Instrument`] keeps speaking version 1 on its own).
//!
//! A [`FileAgent`] says HELLO with the downloads and uploads capabilities, then
//!
//! * answers the box's OFFERs: accepts (or declines, when told to), pulls the file with READs
//!   (a window of them in flight) into `dir/.<name>.part`, checks size and SHA-256, stores it
//!   as `dir/<name>` and reports RECEIVED (`stored`, or `failed` on a mismatch);
//! * offers the files queued with [`RunningFileAgent::upload`]: UPLOAD, CHUNKs from the offset
//!   the box names (a window in flight), UPLOAD_END; after a reconnect it offers the same file
//!   again and continues where the box is.
//!
//! It reconnects with backoff whenever the connection ends. What it stored and how its
//! uploads went can be asked at any time ([`RunningFileAgent::files`],
//! [`RunningFileAgent::uploads`]).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::hash::{Hasher, MessageDigest};
use rapwire::agent::{self, ErrorCode, Frame};
use rapwire::requests::{cap, Message, ReceivedStatus, MAX_CHUNK};
use rapwire::transfer::{hex, Category};

use crate::SimError;

/// READs or CHUNKs in flight at once.
pub const DEFAULT_FILE_WINDOW: usize = 8;
/// The agent repeats HELLO this often to keep an idle connection open.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// A file the agent stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredFile {
    pub name: String,
    pub category: &'static str,
    pub size: u64,
    /// SHA-256 of the stored bytes (checked against the offer before storing).
    pub sha256: String,
    pub path: PathBuf,
}

/// An upload and how it went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UploadState {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// The box's upload id, once it named one.
    pub upload: Option<u64>,
    /// Bytes the box acknowledged.
    pub acked: u64,
    /// Offsets above 0 at which the box asked to continue (resumed uploads).
    pub resumed_at: Vec<u64>,
    /// The box stored it (UPLOAD_END answered OK).
    pub done: bool,
    /// The last refusal, e.g. `quota_exceeded: ...`.
    pub error: Option<String>,
    /// The box refused it for good (the agent stops offering it).
    pub given_up: bool,
}

/// An offer the agent saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OfferSeen {
    pub transfer: u64,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub category: &'static str,
    /// `stored`, `declined`, `failed: ...` once it ended.
    pub outcome: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    files: Vec<StoredFile>,
    uploads: Vec<UploadState>,
    queued: VecDeque<(usize, PathBuf, Category)>,
    offers: Vec<OfferSeen>,
    sessions: u64,
    last_error: Option<String>,
}

/// Configuration of the file side of one simulated instrument.
#[derive(Debug, Clone)]
pub struct FileAgent {
    /// The box port the instrument is cabled to.
    pub addr: SocketAddr,
    pub serial: String,
    /// Where pulled files are stored.
    pub dir: PathBuf,
    /// Decline every offer with this reason.
    pub decline: Option<String>,
    /// READs / CHUNKs in flight.
    pub window: usize,
    /// Bytes per READ / CHUNK (at most the box's `max_chunk`).
    pub chunk: usize,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub stop: Arc<AtomicBool>,
}

impl FileAgent {
    pub fn new(addr: SocketAddr, serial: impl Into<String>, dir: impl Into<PathBuf>) -> FileAgent {
        FileAgent {
            addr,
            serial: serial.into(),
            dir: dir.into(),
            decline: None,
            window: DEFAULT_FILE_WINDOW,
            chunk: MAX_CHUNK,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs it on a thread of its own (which inherits the caller's network namespace).
    pub fn spawn(self) -> Result<RunningFileAgent, SimError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| SimError::Io {
            addr: self.addr,
            op: "creating the file directory",
            source,
        })?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (s2, stop) = (shared.clone(), self.stop.clone());
        let serial = self.serial.clone();
        let handle = thread::Builder::new()
            .name(format!("rapsim-files-{serial}"))
            .spawn(move || run(&self, &s2))
            .map_err(|source| SimError::Spawn { serial: serial.clone(), source })?;
        Ok(RunningFileAgent { serial, shared, stop, handle })
    }
}

/// A running file agent.
#[derive(Debug)]
pub struct RunningFileAgent {
    serial: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunningFileAgent {
    pub fn serial(&self) -> &str {
        &self.serial
    }
    /// The files it stored, in order.
    pub fn files(&self) -> Vec<StoredFile> {
        lock(&self.shared).files.clone()
    }
    /// Every offer it saw.
    pub fn offers(&self) -> Vec<OfferSeen> {
        lock(&self.shared).offers.clone()
    }
    /// Queues `path` for upload; returns its index in [`RunningFileAgent::uploads`].
    pub fn upload(&self, path: &Path, category: Category) -> Result<usize, String> {
        let (size, sha) = hash_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut s = lock(&self.shared);
        let i = s.uploads.len();
        s.uploads.push(UploadState {
            name,
            size,
            sha256: sha,
            upload: None,
            acked: 0,
            resumed_at: Vec::new(),
            done: false,
            error: None,
            given_up: false,
        });
        s.queued.push_back((i, path.to_owned(), category));
        Ok(i)
    }
    /// Every upload and how it went.
    pub fn uploads(&self) -> Vec<UploadState> {
        lock(&self.shared).uploads.clone()
    }
    /// Sessions (HELLO answered) so far.
    pub fn sessions(&self) -> u64 {
        lock(&self.shared).sessions
    }
    /// The last connection or protocol error.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared).last_error.clone()
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    pub fn join(self) {
        self.stop();
        let _ = self.handle.join();
    }
}

/// Size and SHA-256 of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let f = File::open(path)?;
    let mut h = Hasher::new(MessageDigest::sha256()).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read_at(&mut buf, size)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]).map_err(std::io::Error::other)?;
        size += n as u64;
    }
    Ok((size, hex(&h.finish().map_err(std::io::Error::other)?)))
}

/// The files in a file agent's directory (what it has, also after a restart of the test).
pub fn inventory(dir: &Path) -> std::io::Result<Vec<(String, u64, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let (size, sha) = hash_file(&e.path())?;
        out.push((name, size, sha));
    }
    out.sort();
    Ok(out)
}

fn run(cfg: &FileAgent, shared: &Arc<Mutex<Shared>>) {
    let mut backoff = cfg.backoff_min;
    while !cfg.stop.load(Ordering::SeqCst) {
        match TcpStream::connect_timeout(&cfg.addr, cfg.connect_timeout) {
            Ok(s) => {
                let why = Conn::new(cfg, shared, s).and_then(|mut c| c.serve());
                if let Err(e) = why {
                    lock(shared).last_error = Some(e.clone());
                    if !cfg.stop.load(Ordering::SeqCst) {
                        log_line(cfg, &format!("connection ended: {e}"));
                    }
                } else {
                    backoff = cfg.backoff_min;
                }
            }
            Err(e) => lock(shared).last_error = Some(format!("connect {}: {e}", cfg.addr)),
        }
        let end = Instant::now() + backoff;
        while Instant::now() < end && !cfg.stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(20));
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

fn log_line(cfg: &FileAgent, s: &str) {
    if std::env::var_os("RAPSIM_FILES_LOG").is_some() {
        eprintln!("rapsim files {}: {s}", cfg.serial);
    }
}

/// A file being pulled.
struct Pull {
    transfer: u64,
    name: String,
    size: u64,
    sha256: String,
    category: Category,
    file: File,
    tmp: PathBuf,
    next: u64,
    written: u64,
    /// READ req id → offset, in order.
    inflight: BTreeMap<u64, u64>,
}

/// An upload being sent.
struct Push {
    index: usize,
    path: PathBuf,
    category: Category,
    file: File,
    size: u64,
    upload: Option<u64>,
    next: u64,
    inflight: BTreeMap<u64, u64>,
    end_req: Option<u64>,
    offer_req: u64,
}

struct Conn<'a> {
    cfg: &'a FileAgent,
    shared: &'a Arc<Mutex<Shared>>,
    stream: TcpStream,
    rx: Receiver<Result<Message, String>>,
    next_req: u64,
    chunk: usize,
    offers: VecDeque<Message>,
    pull: Option<Pull>,
    /// RECEIVED req ids waiting for OK.
    received_reqs: Vec<u64>,
    push: Option<Push>,
    last_hello: Instant,
}

impl<'a> Conn<'a> {
    fn new(cfg: &'a FileAgent, shared: &'a Arc<Mutex<Shared>>, stream: TcpStream) -> Result<Conn<'a>, String> {
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(cfg.io_timeout)).map_err(|e| e.to_string())?;
        let rd = stream.try_clone().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("rapsim-files-rd-{}", cfg.serial))
            .spawn(move || {
                let mut r = BufReader::with_capacity(128 * 1024, rd);
                let mut body = Vec::new();
                loop {
                    let m = match agent::read_body(&mut r, &mut body) {
                        Ok(()) => match agent::decode(&body) {
                            Ok(Frame::Request(m)) => Ok(m),
                            Ok(other) => Err(format!("unexpected version-1 frame {other:?}")),
                            Err(e) => Err(format!("undecodable frame: {e}")),
                        },
                        Err(e) => {
                            let _ = tx.send(Err(format!("reading: {e}")));
                            return;
                        }
                    };
                    if tx.send(m).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            cfg,
            shared,
            stream,
            rx,
            next_req: 0,
            chunk: cfg.chunk.min(MAX_CHUNK),
            offers: VecDeque::new(),
            pull: None,
            received_reqs: Vec::new(),
            push: None,
            last_hello: Instant::now(),
        })
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    fn send(&mut self, m: &Message) -> Result<(), String> {
        (&self.stream).write_all(&m.to_frame()).map_err(|e| format!("writing {}: {e}", m.name()))
    }

    fn hello(&mut self) -> Result<(), String> {
        let req = self.req();
        self.send(&Message::Hello {
            req,
            max_version: rapwire::requests::VERSION,
            capabilities: cap::DOWNLOADS | cap::UPLOADS,
            software: concat!("rapsim ", env!("CARGO_PKG_VERSION")).into(),
        })?;
        self.last_hello = Instant::now();
        Ok(())
    }

    fn serve(&mut self) -> Result<(), String> {
        self.hello()?;
        let deadline = Instant::now() + self.cfg.io_timeout;
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Message::Welcome { max_chunk, capabilities, .. })) => {
                    self.chunk = self.chunk.min(max_chunk as usize).max(1);
                    if capabilities & cap::DOWNLOADS == 0 {
                        return Err("the box did not grant the downloads capability".into());
                    }
                    lock(self.shared).sessions += 1;
                    break;
                }
                Ok(Ok(Message::Refused { reason, .. })) => return Err(format!("HELLO refused: {reason}")),
                Ok(Ok(other)) => self.offers.push_back(other),
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => return Err("no WELCOME".into()),
            }
        }
        let res = self.session();
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(p) = self.pull.take() {
            let _ = std::fs::remove_file(&p.tmp);
        }
        res
    }

    fn session(&mut self) -> Result<(), String> {
        while !self.cfg.stop.load(Ordering::SeqCst) {
            self.pump()?;
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(m)) => self.on_message(m)?,
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err("reader ended".into()),
            }
            if self.last_hello.elapsed() >= KEEPALIVE {
                self.hello()?;
            }
        }
        Ok(())
    }

    /// Starts what can start and fills the windows.
    fn pump(&mut self) -> Result<(), String> {
        if self.pull.is_none() {
            if let Some(Message::Offer { req, transfer, size, sha256, category, name }) = self.offers.pop_front() {
                self.on_offer(req, transfer, size, sha256, category, name)?;
            }
        }
        let window = self.cfg.window.max(1);
        let chunk = self.chunk as u64;
        if let Some(p) = self.pull.as_mut() {
            let mut reads = Vec::new();
            while p.inflight.len() < window && p.next < p.size {
                self.next_req += 1;
                let req = self.next_req;
                let len = chunk.min(p.size - p.next) as u32;
                p.inflight.insert(req, p.next);
                reads.push(Message::Read { req, transfer: p.transfer, offset: p.next, length: len });
                p.next += u64::from(len);
            }
            for r in reads {
                self.send(&r)?;
            }
            if self.pull.as_ref().is_some_and(|p| p.size == 0 && p.inflight.is_empty()) {
                self.finish_pull()?;
            }
        }
        if self.push.is_none() {
            let next = lock(self.shared).queued.pop_front();
            if let Some((index, path, category)) = next {
                self.start_push(index, path, category)?;
            }
        }
        let mut chunks = Vec::new();
        if let Some(p) = self.push.as_mut() {
            if let Some(upload) = p.upload {
                while p.inflight.len() < window && p.next < p.size {
                    let n = chunk.min(p.size - p.next) as usize;
                    let mut data = vec![0u8; n];
                    p.file
                        .read_exact_at(&mut data, p.next)
                        .map_err(|e| format!("reading {}: {e}", p.path.display()))?;
                    self.next_req += 1;
                    let req = self.next_req;
                    p.inflight.insert(req, p.next);
                    chunks.push(Message::Chunk { req, upload, offset: p.next, data });
                    p.next += n as u64;
                }
                if p.next == p.size && p.inflight.is_empty() && p.end_req.is_none() {
                    self.next_req += 1;
                    let req = self.next_req;
                    p.end_req = Some(req);
                    chunks.push(Message::UploadEnd { req, upload });
                }
            }
        }
        for c in chunks {
            self.send(&c)?;
        }
        Ok(())
    }

    fn on_offer(
        &mut self,
        req: u64,
        transfer: u64,
        size: u64,
        sha: [u8; 32],
        category: Category,
        name: String,
    ) -> Result<(), String> {
        lock(self.shared).offers.push(OfferSeen {
            transfer,
            name: name.clone(),
            size,
            sha256: hex(&sha),
            category: category.name(),
            outcome: None,
        });
        if let Some(reason) = self.cfg.decline.clone() {
            self.set_offer_outcome(transfer, "declined");
            return self.send(&Message::Refused { req, code: ErrorCode::Declined, reason });
        }
        let tmp = self.cfg.dir.join(format!(".{name}.part"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&tmp)
            .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        self.send(&Message::Ok { req })?;
        self.pull = Some(Pull {
            transfer,
            name,
            size,
            sha256: hex(&sha),
            category,
            file,
            tmp,
            next: 0,
            written: 0,
            inflight: BTreeMap::new(),
        });
        Ok(())
    }

    fn set_offer_outcome(&self, transfer: u64, outcome: &str) {
        if let Some(o) = lock(self.shared).offers.iter_mut().rev().find(|o| o.transfer == transfer) {
            o.outcome = Some(outcome.into());
        }
    }

    fn finish_pull(&mut self) -> Result<(), String> {
        let Some(p) = self.pull.take() else { return Ok(()) };
        let _ = p.file.sync_all();
        let (size, sha) = hash_file(&p.tmp).map_err(|e| e.to_string())?;
        let req = self.req();
        if size != p.size || sha != p.sha256 {
            let _ = std::fs::remove_file(&p.tmp);
            let reason =
                format!("received {size} bytes with SHA-256 {sha}, the offer said {} bytes, {}", p.size, p.sha256);
            self.set_offer_outcome(p.transfer, &format!("failed: {reason}"));
            self.received_reqs.push(req);
            return self.send(&Message::Received { req, transfer: p.transfer, status: ReceivedStatus::Failed, reason });
        }
        let dest = self.cfg.dir.join(&p.name);
        std::fs::rename(&p.tmp, &dest).map_err(|e| format!("storing {}: {e}", dest.display()))?;
        log_line(self.cfg, &format!("stored {} ({size} bytes)", p.name));
        {
            let mut s = lock(self.shared);
            s.files.push(StoredFile {
                name: p.name.clone(),
                category: p.category.name(),
                size,
                sha256: sha,
                path: dest,
            });
        }
        self.set_offer_outcome(p.transfer, "stored");
        self.received_reqs.push(req);
        self.send(&Message::Received {
            req,
            transfer: p.transfer,
            status: ReceivedStatus::Stored,
            reason: String::new(),
        })
    }

    fn start_push(&mut self, index: usize, path: PathBuf, category: Category) -> Result<(), String> {
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (size, sha_hex, name) = {
            let s = lock(self.shared);
            let u = &s.uploads[index];
            (u.size, u.sha256.clone(), u.name.clone())
        };
        let sha = rapwire::transfer::sha256_bytes(&sha_hex).ok_or("bad sha")?;
        let req = self.req();
        self.push = Some(Push {
            index,
            path,
            category,
            file,
            size,
            upload: None,
            next: 0,
            inflight: BTreeMap::new(),
            end_req: None,
            offer_req: req,
        });
        self.send(&Message::Upload { req, size, sha256: sha, category, name })
    }

    /// Puts the current upload back at the front of the queue (offered again later).
    fn requeue_push(&mut self) {
        if let Some(p) = self.push.take() {
            lock(self.shared).queued.push_front((p.index, p.path, p.category));
        }
    }

    fn on_message(&mut self, m: Message) -> Result<(), String> {
        match m {
            Message::Offer { .. } => self.offers.push_back(m),
            Message::Data { req, offset, data } => {
                let Some(p) = self.pull.as_mut() else { return Ok(()) };
                match p.inflight.remove(&req) {
                    Some(o) if o == offset && o == p.written => {
                        p.file.write_all_at(&data, offset).map_err(|e| format!("writing {}: {e}", p.tmp.display()))?;
                        p.written += data.len() as u64;
                        if data.is_empty() && p.written < p.size {
                            return Err(format!("empty DATA at {offset} of {}", p.size));
                        }
                    }
                    other => return Err(format!("DATA {req} at {offset} does not match the READ ({other:?})")),
                }
                if p.written == p.size && p.inflight.is_empty() {
                    self.finish_pull()?;
                }
            }
            Message::UploadReady { req, upload, offset } => {
                let Some(p) = self.push.as_mut().filter(|p| p.offer_req == req) else { return Ok(()) };
                p.upload = Some(upload);
                p.next = offset.min(p.size);
                let mut s = lock(self.shared);
                let u = &mut s.uploads[p.index];
                u.upload = Some(upload);
                u.acked = offset;
                if offset > 0 {
                    u.resumed_at.push(offset);
                }
            }
            Message::Ok { req } => {
                self.received_reqs.retain(|r| *r != req);
                if let Some(p) = self.push.as_mut() {
                    if let Some(off) = p.inflight.remove(&req) {
                        let end = (off + self.chunk as u64).min(p.size);
                        let mut s = lock(self.shared);
                        let u = &mut s.uploads[p.index];
                        u.acked = u.acked.max(end);
                    } else if p.end_req == Some(req) {
                        let index = p.index;
                        self.push = None;
                        let mut s = lock(self.shared);
                        s.uploads[index].done = true;
                        s.uploads[index].error = None;
                    }
                }
            }
            Message::Refused { req, code, reason } => self.on_refused(req, code, reason)?,
            other => return Err(format!("unexpected {} from the box", other.name())),
        }
        Ok(())
    }

    fn on_refused(&mut self, req: u64, code: ErrorCode, reason: String) -> Result<(), String> {
        if let Some(p) = self.pull.as_ref() {
            if p.inflight.contains_key(&req) {
                return Err(format!("READ refused ({}): {reason}", code.name()));
            }
        }
        let Some(p) = self.push.as_ref() else {
            return Err(format!("request {req} refused ({}): {reason}", code.name()));
        };
        let index = p.index;
        let ours = p.offer_req == req || p.inflight.contains_key(&req) || p.end_req == Some(req);
        if !ours {
            return Err(format!("request {req} refused ({}): {reason}", code.name()));
        }
        {
            let mut s = lock(self.shared);
            s.uploads[index].error = Some(format!("{}: {reason}", code.name()));
        }
        match code {
            // Refused for good: too large, no room, nothing to negotiate.
            ErrorCode::QuotaExceeded | ErrorCode::NotNegotiated | ErrorCode::Malformed => {
                lock(self.shared).uploads[index].given_up = true;
                self.push = None;
                Ok(())
            }
            // The box discarded it (hash) or lost track (offset): offer it again from scratch.
            _ => {
                self.requeue_push();
                Err(format!("upload refused ({}): {reason}; offering it again", code.name()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_lists_stored_files_with_hashes() {
        let dir = std::env::temp_dir().join(format!("rapsim-inv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.dat"), b"abc").unwrap();
        std::fs::write(dir.join(".b.part"), b"partial").unwrap();
        let inv = inventory(&dir).unwrap();
        assert_eq!(
            inv,
            vec![("a.dat".into(), 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into())]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
