//! Files of the reference data center (`docs/transfers.md`): download content served to
//! boxes (content-addressed by SHA-256, with HTTP `Range`), and uploads received from boxes
//! in chunks (resumable, SHA-256 checked when complete).
//!
//! Content lives in a directory beside the database (`<db>.files/downloads/<sha256>`,
//! `<db>.files/uploads/<box>/<id>.{part,data}`); the uploads' metadata is in a table of its
//! own (`box_uploads`, on a connection of its own). For tests it records which byte ranges it
//! served to whom and can throttle transfers to a rate, so that a transfer can be cut in the
//! middle.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::hash::{Hasher, MessageDigest};
use rapwire::transfer::{self, Category, UploadStatus};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Largest download content accepted by `POST /admin/downloads`.
pub const MAX_CONTENT_BYTES: usize = 512 * 1024 * 1024;

/// Why a file operation failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("file store: {op}: {source}")]
    Sqlite { op: &'static str, source: rusqlite::Error },
    /// The request is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// No such file (404).
    #[error("{0}")]
    NotFound(String),
    /// The chunk does not continue the upload (409; the answer says what the store has).
    #[error("upload {id}: chunk at {offset}, the data center has {received} bytes")]
    Offset { id: String, offset: u64, received: u64 },
    /// The upload id is taken by another file (409).
    #[error("upload {0} is another file (name, size or SHA-256 differ)")]
    Reused(String),
    /// The whole upload's SHA-256 is wrong (422); the bytes were discarded.
    #[error("upload {id}: SHA-256 of the {size} bytes is {got}, the box said {want}; discarded")]
    Hash { id: String, size: u64, got: String, want: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io { path: path.into(), source }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn sha256_hex_of(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Hasher::new(MessageDigest::sha256()).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]).map_err(std::io::Error::other)?;
    }
    Ok(transfer::hex(&h.finish().map_err(std::io::Error::other)?))
}

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    sha256_hex_of(data).unwrap_or_default()
}

/// One download content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadInfo {
    /// The name it is served under (its SHA-256, unless stored `as` another for a test).
    pub sha256: String,
    pub size: u64,
}

/// One answer to a download request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    #[serde(rename = "box")]
    pub box_id: String,
    pub sha256: String,
    /// First byte of the answer (the `Range` asked for).
    pub from: u64,
    /// Bytes the box read of the answer (fewer than asked when it was cut).
    pub bytes: u64,
    pub status: u16,
}

/// `GET /admin/downloads`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadList {
    pub downloads: Vec<DownloadInfo>,
    /// Every answer to a box's download request since start, in order.
    pub served: Vec<Served>,
}

/// One upload from a box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    #[serde(rename = "box")]
    pub box_id: String,
    pub id: String,
    pub instrument: String,
    pub name: String,
    pub category: String,
    pub size: u64,
    pub sha256: String,
    /// Bytes received from the start, without gaps.
    pub received: u64,
    /// All bytes received and the SHA-256 matched.
    pub complete: bool,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
    /// Chunks stored.
    pub chunks: u64,
    /// What the store had each time the box asked (a box asks when it starts sending; a
    /// value above 0 is a resumed upload).
    pub status_answers: Vec<u64>,
    /// Whole-file SHA-256 refusals.
    pub hash_refusals: u64,
}

/// `GET /admin/uploads?box=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadList {
    pub uploads: Vec<UploadRecord>,
}

/// What an upload chunk says about its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMeta {
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
    pub name: String,
    pub category: String,
    pub instrument: String,
}

/// The file store.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    temporary: bool,
    conn: Mutex<Connection>,
    /// Transfer rate limit in bytes per second (0: none).
    rate: Arc<AtomicU64>,
    served: Arc<Mutex<Vec<Served>>>,
    /// Serialises chunk writes (uploads are rare; one at a time keeps offsets simple).
    write: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS component_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
INSERT OR IGNORE INTO component_versions(component, version) VALUES ('transfers', 1);
CREATE TABLE IF NOT EXISTS box_uploads (
    box TEXT NOT NULL, id TEXT NOT NULL, instrument TEXT NOT NULL, name TEXT NOT NULL, category TEXT NOT NULL,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, received INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL, completed_ms INTEGER,
    chunks INTEGER NOT NULL DEFAULT 0, status_answers TEXT NOT NULL DEFAULT '[]',
    hash_refusals INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (box, id)
) WITHOUT ROWID;
";

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl FileStore {
    /// The store beside the database `db` (`<db>.files`), or in a temporary directory
    /// (removed when dropped) for an in-memory database.
    pub fn open(db: &Path) -> Result<FileStore, FileError> {
        let sq = |op| move |source| FileError::Sqlite { op, source };
        let (dir, temporary, conn) = if db == Path::new(":memory:") {
            let dir = std::env::temp_dir().join(format!(
                "rapdc-files-{}-{}",
                std::process::id(),
                TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            (dir, true, Connection::open_in_memory().map_err(sq("open"))?)
        } else {
            let mut d = db.as_os_str().to_owned();
            d.push(".files");
            (PathBuf::from(d), false, Connection::open(db).map_err(sq("open"))?)
        };
        conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;").map_err(sq("configure"))?;
        conn.execute_batch(SCHEMA).map_err(sq("create tables"))?;
        for sub in ["downloads", "uploads"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(FileStore {
            dir,
            temporary,
            conn: Mutex::new(conn),
            rate: Arc::new(AtomicU64::new(0)),
            served: Arc::new(Mutex::new(Vec::new())),
            write: Mutex::new(()),
        })
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Limits download answers and upload chunks to `bytes_per_s` (0: no limit).
    pub fn set_rate(&self, bytes_per_s: u64) {
        self.rate.store(bytes_per_s, Ordering::SeqCst);
    }

    fn download_path(&self, name: &str) -> PathBuf {
        self.dir.join("downloads").join(name)
    }

    /// Stores download content under its SHA-256 (or under `as_name`, a testing aid: content
    /// that does not match the name it is served under).
    pub fn put_download(&self, data: &[u8], as_name: Option<&str>) -> Result<DownloadInfo, FileError> {
        let sha = match as_name {
            Some(n) if transfer::valid_sha256(n) => n.to_owned(),
            Some(n) => return Err(FileError::Invalid(format!("`as` {n:?} is not 64 lowercase hex digits"))),
            None => sha256_hex(data),
        };
        let p = self.download_path(&sha);
        let tmp = p.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(data).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))?;
        log::info!("download content {sha} stored ({} bytes)", data.len());
        Ok(DownloadInfo { sha256: sha, size: data.len() as u64 })
    }

    /// The size of content `sha256`, if stored.
    pub fn download_size(&self, sha256: &str) -> Option<u64> {
        if !transfer::valid_sha256(sha256) {
            return None;
        }
        std::fs::metadata(self.download_path(sha256)).ok().map(|m| m.len())
    }

    /// Every stored content and every answer served.
    pub fn downloads(&self) -> Result<DownloadList, FileError> {
        let dir = self.dir.join("downloads");
        let mut downloads = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if transfer::valid_sha256(&name) {
                downloads.push(DownloadInfo { sha256: name, size: e.metadata().map(|m| m.len()).unwrap_or(0) });
            }
        }
        downloads.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(DownloadList { downloads, served: lock(&self.served).clone() })
    }

    /// Opens content `sha256` for `box_id` from byte `from`: (status, reader, length, total).
    pub fn open_download(
        &self,
        box_id: &str,
        sha256: &str,
        from: Option<u64>,
    ) -> Result<(u16, Box<dyn Read + Send>, u64, u64), FileError> {
        if !transfer::valid_sha256(sha256) {
            return Err(FileError::NotFound(format!("{sha256:?} is not a content SHA-256")));
        }
        let p = self.download_path(sha256);
        let mut f = File::open(&p).map_err(|_| FileError::NotFound(format!("no content {sha256}")))?;
        let total = f.metadata().map_err(io(&p))?.len();
        let start = from.unwrap_or(0);
        if start > total || (from.is_some() && start == total && total > 0) {
            return Err(FileError::Invalid(format!("range from {start} is beyond the {total} bytes")));
        }
        f.seek(SeekFrom::Start(start)).map_err(io(&p))?;
        let status = if from.is_some() { 206 } else { 200 };
        let reader = Throttled {
            inner: f,
            rate: self.rate.clone(),
            started: Instant::now(),
            read: 0,
            record: Some((
                self.served.clone(),
                Served { box_id: box_id.into(), sha256: sha256.into(), from: start, bytes: 0, status },
            )),
        };
        Ok((status, Box::new(reader), total - start, total))
    }

    fn upload_dir(&self, box_id: &str) -> PathBuf {
        // Box ids are certificate CNs: keep them out of path syntax.
        let safe: String =
            box_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
        self.dir.join("uploads").join(safe)
    }

    fn get_upload(conn: &Connection, box_id: &str, id: &str) -> Result<Option<UploadRecord>, FileError> {
        conn.query_row(
            "SELECT box, id, instrument, name, category, size, sha256, received, complete, created_ms, completed_ms,
                    chunks, status_answers, hash_refusals
             FROM box_uploads WHERE box = ?1 AND id = ?2",
            params![box_id, id],
            row_to_upload,
        )
        .optional()
        .map_err(|source| FileError::Sqlite { op: "look up upload", source })
    }

    /// What the store has of upload `id` of `box_id` (and records that the box asked).
    pub fn upload_status(&self, box_id: &str, id: &str) -> Result<UploadStatus, FileError> {
        let conn = lock(&self.conn);
        let Some(u) = FileStore::get_upload(&conn, box_id, id)? else {
            return Err(FileError::NotFound(format!("no upload {id} of box {box_id}")));
        };
        let mut answers = u.status_answers.clone();
        answers.push(u.received);
        conn.execute(
            "UPDATE box_uploads SET status_answers = ?3 WHERE box = ?1 AND id = ?2",
            params![box_id, id, serde_json::to_string(&answers).unwrap_or_default()],
        )
        .map_err(|source| FileError::Sqlite { op: "record status answer", source })?;
        Ok(UploadStatus { received: u.received, complete: u.complete })
    }

    /// Stores one chunk of upload `id`; at the last byte the whole file's SHA-256 is checked.
    pub fn upload_chunk(
        &self,
        box_id: &str,
        id: &str,
        meta: &ChunkMeta,
        data: &[u8],
    ) -> Result<UploadStatus, FileError> {
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FileError::Invalid(format!("upload id {id:?} is not 16 hex digits")));
        }
        if !transfer::valid_name(&meta.name)
            || !transfer::valid_sha256(&meta.sha256)
            || Category::parse(&meta.category).is_none()
        {
            return Err(FileError::Invalid(format!(
                "upload {id}: name {:?}, SHA-256 {:?} or category {:?} is not valid",
                meta.name, meta.sha256, meta.category
            )));
        }
        if meta.size == 0 || meta.size > transfer::MAX_FILE_BYTES {
            return Err(FileError::Invalid(format!(
                "upload {id}: size {} is not 1..={}",
                meta.size,
                transfer::MAX_FILE_BYTES
            )));
        }
        let _w = lock(&self.write);
        let dir = self.upload_dir(box_id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let part = dir.join(format!("{id}.part"));
        let data_path = dir.join(format!("{id}.data"));
        let existing = FileStore::get_upload(&lock(&self.conn), box_id, id)?;
        let u = match existing {
            Some(u) => {
                if u.name != meta.name || u.size != meta.size || u.sha256 != meta.sha256 {
                    return Err(FileError::Reused(id.into()));
                }
                u
            }
            None => {
                lock(&self.conn)
                    .execute(
                        "INSERT INTO box_uploads(box, id, instrument, name, category, size, sha256, created_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![
                            box_id,
                            id,
                            meta.instrument,
                            meta.name,
                            meta.category,
                            meta.size as i64,
                            meta.sha256,
                            now_ms()
                        ],
                    )
                    .map_err(|source| FileError::Sqlite { op: "insert upload", source })?;
                let _ = std::fs::remove_file(&part);
                log::info!(
                    "box {box_id}: upload {id} ({} from {}, {} bytes) started",
                    meta.name,
                    meta.instrument,
                    meta.size
                );
                FileStore::get_upload(&lock(&self.conn), box_id, id)?
                    .ok_or_else(|| FileError::NotFound(format!("upload {id} vanished")))?
            }
        };
        if u.complete {
            return Ok(UploadStatus { received: u.size, complete: true });
        }
        if meta.offset != u.received {
            return Err(FileError::Offset { id: id.into(), offset: meta.offset, received: u.received });
        }
        if meta.offset + data.len() as u64 > u.size {
            return Err(FileError::Invalid(format!("upload {id}: chunk ends beyond its {} bytes", u.size)));
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&part).map_err(io(&part))?;
        let have = f.metadata().map_err(io(&part))?.len();
        if have != u.received {
            // A chunk written but not recorded (crash): cut back to what is recorded.
            f.set_len(u.received).map_err(io(&part))?;
        }
        f.write_all(data).and_then(|()| f.sync_data()).map_err(io(&part))?;
        throttle(self.rate.load(Ordering::SeqCst), data.len() as u64);
        let received = u.received + data.len() as u64;
        let mut complete = false;
        if received == u.size {
            let got = File::open(&part).and_then(sha256_hex_of).map_err(io(&part))?;
            if got != u.sha256 {
                let _ = std::fs::remove_file(&part);
                lock(&self.conn)
                    .execute(
                        "UPDATE box_uploads SET received = 0, hash_refusals = hash_refusals + 1 WHERE box = ?1 AND id = ?2",
                        params![box_id, id],
                    )
                    .map_err(|source| FileError::Sqlite { op: "reset upload", source })?;
                log::warn!("box {box_id}: upload {id}: SHA-256 mismatch ({got}, expected {}); discarded", u.sha256);
                return Err(FileError::Hash { id: id.into(), size: u.size, got, want: u.sha256 });
            }
            std::fs::rename(&part, &data_path).map_err(io(&data_path))?;
            complete = true;
            log::info!("box {box_id}: upload {id} ({}) complete, SHA-256 {got}", u.name);
        }
        lock(&self.conn)
            .execute(
                "UPDATE box_uploads SET received = ?3, complete = ?4, chunks = chunks + 1,
                 completed_ms = CASE WHEN ?4 = 1 THEN ?5 ELSE completed_ms END WHERE box = ?1 AND id = ?2",
                params![box_id, id, received as i64, complete as i64, now_ms()],
            )
            .map_err(|source| FileError::Sqlite { op: "update upload", source })?;
        Ok(UploadStatus { received, complete })
    }

    /// Every upload (of one box).
    pub fn uploads(&self, box_id: Option<&str>) -> Result<UploadList, FileError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare(
                "SELECT box, id, instrument, name, category, size, sha256, received, complete, created_ms, completed_ms,
                        chunks, status_answers, hash_refusals
                 FROM box_uploads WHERE (?1 IS NULL OR box = ?1) ORDER BY created_ms, id",
            )
            .map_err(|source| FileError::Sqlite { op: "prepare uploads", source })?;
        let rows = stmt
            .query_map(params![box_id], row_to_upload)
            .map_err(|source| FileError::Sqlite { op: "list uploads", source })?;
        let mut uploads = Vec::new();
        for r in rows {
            uploads.push(r.map_err(|source| FileError::Sqlite { op: "read upload", source })?);
        }
        Ok(UploadList { uploads })
    }

    /// The content of a complete upload.
    pub fn upload_content(&self, box_id: &str, id: &str) -> Result<Vec<u8>, FileError> {
        let u = FileStore::get_upload(&lock(&self.conn), box_id, id)?
            .filter(|u| u.complete)
            .ok_or_else(|| FileError::NotFound(format!("no complete upload {id} of box {box_id}")))?;
        let p = self.upload_dir(box_id).join(format!("{}.data", u.id));
        std::fs::read(&p).map_err(io(&p))
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn row_to_upload(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadRecord> {
    let answers: String = r.get(12)?;
    Ok(UploadRecord {
        box_id: r.get(0)?,
        id: r.get(1)?,
        instrument: r.get(2)?,
        name: r.get(3)?,
        category: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        sha256: r.get(6)?,
        received: r.get::<_, i64>(7)? as u64,
        complete: r.get::<_, i64>(8)? != 0,
        created_ms: r.get(9)?,
        completed_ms: r.get(10)?,
        chunks: r.get::<_, i64>(11)? as u64,
        status_answers: serde_json::from_str(&answers).unwrap_or_default(),
        hash_refusals: r.get::<_, i64>(13)? as u64,
    })
}

/// Sleeps as long as `bytes` take at `rate` bytes per second.
fn throttle(rate: u64, bytes: u64) {
    if rate > 0 {
        std::thread::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64));
    }
}

/// Download content, read at most at the configured rate; records what was read when dropped.
struct Throttled {
    inner: File,
    rate: Arc<AtomicU64>,
    started: Instant,
    read: u64,
    record: Option<(Arc<Mutex<Vec<Served>>>, Served)>,
}

impl Read for Throttled {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rate = self.rate.load(Ordering::SeqCst);
        let cap = if rate > 0 { buf.len().min(16 * 1024) } else { buf.len() };
        let buf = &mut buf[..cap];
        if rate > 0 {
            let due = Duration::from_secs_f64(self.read as f64 / rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Drop for Throttled {
    fn drop(&mut self) {
        if let Some((served, mut s)) = self.record.take() {
            s.bytes = self.read;
            lock(&served).push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(offset: u64, data: &[u8], sha: &str) -> ChunkMeta {
        ChunkMeta {
            offset,
            size: data.len() as u64,
            sha256: sha.into(),
            name: "logs.tgz".into(),
            category: "log_bundle".into(),
            instrument: "I-1".into(),
        }
    }

    #[test]
    fn uploads_resume_and_check_the_hash() {
        let fs = FileStore::open(Path::new(":memory:")).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let sha = sha256_hex(&data);
        let id = "00000000000000aa";
        assert!(matches!(fs.upload_status("b1", id), Err(FileError::NotFound(_))));
        let st = fs.upload_chunk("b1", id, &meta(0, &data, &sha), &data[..4000]).unwrap();
        assert_eq!(st, UploadStatus { received: 4000, complete: false });
        // A chunk that skips ahead or repeats is refused with what the store has.
        let e =
            fs.upload_chunk("b1", id, &ChunkMeta { offset: 6000, ..meta(0, &data, &sha) }, &data[6000..]).unwrap_err();
        assert!(matches!(e, FileError::Offset { received: 4000, .. }), "{e}");
        assert_eq!(fs.upload_status("b1", id).unwrap().received, 4000);
        let st = fs.upload_chunk("b1", id, &ChunkMeta { offset: 4000, ..meta(0, &data, &sha) }, &data[4000..]).unwrap();
        assert!(st.complete);
        assert_eq!(fs.upload_content("b1", id).unwrap(), data);
        let u = &fs.uploads(Some("b1")).unwrap().uploads[0];
        assert_eq!((u.chunks, u.status_answers.clone(), u.complete), (2, vec![4000], true));
        assert!(fs.uploads(Some("b2")).unwrap().uploads.is_empty());
        // Same id, other file.
        let e = fs.upload_chunk("b1", id, &meta(0, b"other", &sha), b"other").unwrap_err();
        assert!(matches!(e, FileError::Reused(_)), "{e}");
    }

    #[test]
    fn a_wrong_hash_is_refused_and_discarded() {
        let fs = FileStore::open(Path::new(":memory:")).unwrap();
        let data = b"hello world".to_vec();
        let wrong = sha256_hex(b"something else");
        let id = "00000000000000bb";
        let e = fs.upload_chunk("b1", id, &meta(0, &data, &wrong), &data).unwrap_err();
        assert!(matches!(e, FileError::Hash { .. }), "{e}");
        let u = &fs.uploads(None).unwrap().uploads[0];
        assert_eq!((u.received, u.hash_refusals, u.complete), (0, 1, false));
    }

    #[test]
    fn downloads_serve_ranges_and_record_them() {
        let fs = FileStore::open(Path::new(":memory:")).unwrap();
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 7) as u8).collect();
        let info = fs.put_download(&data, None).unwrap();
        assert_eq!(info.sha256, sha256_hex(&data));
        let (status, mut r, len, total) = fs.open_download("b1", &info.sha256, Some(60_000)).unwrap();
        assert_eq!((status, len, total), (206, 10_000, 70_000));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        drop(r);
        assert_eq!(got, &data[60_000..]);
        let list = fs.downloads().unwrap();
        assert_eq!(list.downloads, vec![info.clone()]);
        assert_eq!(list.served[0].from, 60_000);
        assert_eq!(list.served[0].bytes, 10_000);
        assert!(fs.open_download("b1", &info.sha256, Some(70_001)).is_err());
        assert!(matches!(fs.open_download("b1", &"0".repeat(64), None), Err(FileError::NotFound(_))));
        let tampered = fs.put_download(b"not what the hash says", Some(&"1".repeat(64))).unwrap();
        assert_eq!(tampered.sha256, "1".repeat(64));
    }
}
