//! The HTTP side of the command channel (`docs/commands.md`): the box's exchange endpoint and
//! the operators' admin endpoints, routed here from [`crate::http`].
//!
//! | method and path | who | body | answer |
//! | --- | --- | --- | --- |
//! | `POST /api/v1/commands` | box | [`Exchange`] | [`ExchangeAnswer`] |
//! | `POST /admin/commands` | loopback | [`QueueCommand`] | [`CommandRecord`] |
//! | `GET /admin/commands?box=&id=` | loopback | | [`CommandList`] |
//! | `POST /admin/commands/redeliver?id=` | loopback | | [`CommandRecord`] |
//! | `POST /admin/commands/fault` | loopback | [`FaultSpec`] (applies to exchanges) | `Done` |
//! | `GET /api/v1/downloads/<sha256>` (`Range: bytes=N-`) | box | | the content (200 / 206), only content a command for this box names |
//! | `GET /api/v1/uploads/<id>` | box | | `UploadStatus` (404: unknown) |
//! | `POST /api/v1/uploads/<id>` (headers `X-Rapbox-*`) | box | chunk | `UploadStatus`; 409 (with the status) when the offset is not what the store has; 422 SHA-256 mismatch |
//! | `POST /admin/downloads[?as=<sha256>]` | loopback | content | [`DownloadInfo`] |
//! | `GET /admin/downloads` | loopback | | [`DownloadList`] (with every range served) |
//! | `POST /admin/transfers/rate` | loopback | `{"bytes_per_s": N}` | `Done` |
//! | `GET /admin/uploads[?box=]` | loopback | | [`UploadList`] |
//! | `GET /admin/uploads/content?box=&id=` | loopback | | the bytes of a complete upload |
//!
//! Commands also leave in the answer to every batch upload ([`Channel::commands_for`]).

use std::sync::{Mutex, MutexGuard};

use rapwire::command::{self, Exchange, ExchangeAnswer};
use rapwire::transfer::{self as wt, header};
use serde::{Deserialize, Serialize};
use tiny_http::{Method, Request};

use crate::api::{Done, FaultSpec};
use crate::commands::{CommandError, CommandStore, QueueCommand};
use crate::http::{box_identity, read_body, BodyError, Reply, Stream};
use crate::transfers::{ChunkMeta, FileError, FileStore};

/// Path of the box's exchange.
pub const EXCHANGE_PATH: &str = "/api/v1/commands";
/// Queue (POST) and list (GET) commands.
pub const ADMIN_COMMANDS_PATH: &str = "/admin/commands";
/// Put a command back in the queue.
pub const ADMIN_REDELIVER_PATH: &str = "/admin/commands/redeliver";
/// Arm a fault on the exchange endpoint.
pub const ADMIN_EXCHANGE_FAULT_PATH: &str = "/admin/commands/fault";
/// Download content of a box (prefix; the SHA-256 follows).
pub const DOWNLOADS_PREFIX: &str = "/api/v1/downloads/";
/// Upload chunks and status of a box (prefix; the upload id follows).
pub const UPLOADS_PREFIX: &str = "/api/v1/uploads/";
/// Store (POST) and list (GET) download content.
pub const ADMIN_DOWNLOADS_PATH: &str = "/admin/downloads";
/// Throttle transfers.
pub const ADMIN_RATE_PATH: &str = "/admin/transfers/rate";
/// List uploads.
pub const ADMIN_UPLOADS_PATH: &str = "/admin/uploads";
/// The content of an upload.
pub const ADMIN_UPLOAD_CONTENT_PATH: &str = "/admin/uploads/content";
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// `POST /admin/transfers/rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Bytes per second for download answers and upload chunks; 0: unlimited.
    pub bytes_per_s: u64,
}

/// What the channel's endpoints share.
#[derive(Debug)]
pub struct Channel {
    pub commands: CommandStore,
    pub files: FileStore,
    exchange_fault: Mutex<Option<FaultSpec>>,
}

impl From<FileError> for Reply {
    fn from(e: FileError) -> Reply {
        match &e {
            FileError::Invalid(_) => Reply::error(400, e.to_string()),
            FileError::NotFound(_) => Reply::error(404, e.to_string()),
            FileError::Reused(_) => Reply::error(409, e.to_string()),
            FileError::Offset { received, .. } => {
                #[derive(Serialize)]
                struct Conflict {
                    error: String,
                    received: u64,
                    complete: bool,
                }
                Reply::json(409, &Conflict { error: e.to_string(), received: *received, complete: false })
            }
            FileError::Hash { .. } => Reply::error(422, e.to_string()),
            _ => {
                log::error!("{e}");
                Reply::error(500, e.to_string())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl From<CommandError> for Reply {
    fn from(e: CommandError) -> Reply {
        let status = match e {
            CommandError::Invalid(_) => 400,
            CommandError::Conflict(_) => 409,
            CommandError::NotFound(_) => 404,
            _ => {
                log::error!("{e}");
                500
            }
        };
        Reply::error(status, e.to_string())
    }
}

impl Channel {
    /// The channel over a command queue and a file store.
    pub fn new(commands: CommandStore, files: FileStore) -> Channel {
        Channel { commands, files, exchange_fault: Mutex::new(None) }
    }

    /// Commands to put into the answer to a batch upload of `box_id` (none when the lookup
    /// fails: a batch is never refused because of the command queue).
    pub fn commands_for(&self, box_id: &str) -> Vec<serde_json::Value> {
        self.commands.for_delivery(box_id).unwrap_or_else(|e| {
            log::error!("box {box_id}: commands not handed out with the batch ack: {e}");
            Vec::new()
        })
    }

    /// Answers the request if its path belongs to the channel.
    pub(crate) fn route(&self, req: &mut Request, path: &str, query: &str) -> Option<Reply> {
        if let Some(r) = self.route_files(req, path, query) {
            return Some(r);
        }
        let (allow, method) = match path {
            EXCHANGE_PATH | ADMIN_REDELIVER_PATH | ADMIN_EXCHANGE_FAULT_PATH => ("POST", Method::Post),
            ADMIN_COMMANDS_PATH => ("GET, POST", Method::Get),
            _ => return None,
        };
        let ok = *req.method() == method || (path == ADMIN_COMMANDS_PATH && *req.method() == Method::Post);
        if !ok {
            return Some(Reply::method_not_allowed(path, allow));
        }
        Some(match (path, req.method()) {
            (EXCHANGE_PATH, _) => self.exchange(req),
            (ADMIN_COMMANDS_PATH, Method::Post) => self.queue(req),
            (ADMIN_COMMANDS_PATH, _) => match params(query, &["box", "id"]) {
                Ok(p) => match p[1].as_deref() {
                    Some(id) => self.commands.get(id).map_or_else(Reply::from, |c| {
                        Reply::json(200, &crate::commands::CommandList { commands: vec![c], unknown_results: 0 })
                    }),
                    None => self.commands.list(p[0].as_deref()).map_or_else(Reply::from, |l| Reply::json(200, &l)),
                },
                Err(e) => Reply::error(400, e),
            },
            (ADMIN_REDELIVER_PATH, _) => match params(query, &["id"]) {
                Ok(p) => match &p[0] {
                    Some(id) => self.commands.redeliver(id).map_or_else(Reply::from, |c| Reply::json(200, &c)),
                    None => Reply::error(400, "id is required"),
                },
                Err(e) => Reply::error(400, e),
            },
            _ => self.arm_fault(req),
        })
    }

    fn exchange(&self, req: &mut Request) -> Reply {
        let who = match box_identity(req) {
            Ok(w) => w,
            Err(r) => return r,
        };
        {
            let mut fault = lock(&self.exchange_fault);
            if let Some(f) = fault.as_mut().filter(|f| f.count > 0) {
                f.count -= 1;
                let mut r = Reply::error(f.status, format!("injected fault: status {}", f.status));
                r.retry_after_s = f.retry_after_s;
                log::info!("box {}: exchange answered with injected fault {}", who.box_id, f.status);
                if f.count == 0 {
                    *fault = None;
                }
                return r;
            }
        }
        let body = match read_body(req, command::MAX_EXCHANGE_BYTES) {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Reply::error(413, format!("exchange larger than {} bytes", command::MAX_EXCHANGE_BYTES))
            }
            Err(BodyError::Io(e)) => return Reply::error(400, format!("reading the body failed: {e}")),
        };
        let ex: Exchange = match serde_json::from_slice(&body) {
            Ok(x) => x,
            Err(e) => return Reply::error(400, format!("malformed exchange: {e}")),
        };
        if ex.results.len() > command::MAX_RESULTS_PER_EXCHANGE {
            return Reply::error(
                400,
                format!("{} results, more than {} per exchange", ex.results.len(), command::MAX_RESULTS_PER_EXCHANGE),
            );
        }
        let recorded = match self.commands.record(&who.box_id, &ex.results) {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        let commands = match self.commands.for_delivery(&who.box_id) {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        Reply::json(200, &ExchangeAnswer { commands, recorded })
    }

    fn queue(&self, req: &mut Request) -> Reply {
        let body = match read_body(req, MAX_ADMIN_BODY) {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return Reply::error(413, "command larger than 1 MiB"),
            Err(BodyError::Io(e)) => return Reply::error(400, format!("reading the body failed: {e}")),
        };
        let q: QueueCommand = match serde_json::from_slice(&body) {
            Ok(q) => q,
            Err(e) => return Reply::error(400, format!("bad command JSON: {e}")),
        };
        self.commands.queue(&q).map_or_else(Reply::from, |c| Reply::json(200, &c))
    }

    fn arm_fault(&self, req: &mut Request) -> Reply {
        let body = match read_body(req, MAX_ADMIN_BODY) {
            Ok(b) => b,
            Err(_) => return Reply::error(400, "cannot read the fault"),
        };
        let spec: FaultSpec = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => return Reply::error(400, format!("bad fault JSON: {e}")),
        };
        if !(400..=599).contains(&spec.status) {
            return Reply::error(400, format!("fault status {} is not an error status (400-599)", spec.status));
        }
        *lock(&self.exchange_fault) = (spec.count > 0).then_some(spec);
        Reply::json(200, &Done { ok: true })
    }
}

impl Channel {
    fn route_files(&self, req: &mut Request, path: &str, query: &str) -> Option<Reply> {
        let m = req.method().clone();
        if let Some(sha) = path.strip_prefix(DOWNLOADS_PREFIX) {
            return Some(if m == Method::Get {
                self.download(req, sha)
            } else {
                Reply::method_not_allowed(path, "GET")
            });
        }
        if let Some(id) = path.strip_prefix(UPLOADS_PREFIX) {
            return Some(match m {
                Method::Get => match box_identity(req) {
                    Ok(who) => {
                        self.files.upload_status(&who.box_id, id).map_or_else(Reply::from, |s| Reply::json(200, &s))
                    }
                    Err(r) => r,
                },
                Method::Post => self.chunk(req, id),
                _ => Reply::method_not_allowed(path, "GET, POST"),
            });
        }
        Some(match (path, m) {
            (ADMIN_DOWNLOADS_PATH, Method::Post) => {
                let body = match read_body(req, crate::transfers::MAX_CONTENT_BYTES) {
                    Ok(b) => b,
                    Err(BodyError::TooLarge) => return Some(Reply::error(413, "content larger than 512 MiB")),
                    Err(BodyError::Io(e)) => return Some(Reply::error(400, format!("reading the body failed: {e}"))),
                };
                match params(query, &["as"]) {
                    Ok(p) => self
                        .files
                        .put_download(&body, p[0].as_deref())
                        .map_or_else(Reply::from, |i| Reply::json(200, &i)),
                    Err(e) => Reply::error(400, e),
                }
            }
            (ADMIN_DOWNLOADS_PATH, Method::Get) => {
                self.files.downloads().map_or_else(Reply::from, |l| Reply::json(200, &l))
            }
            (ADMIN_RATE_PATH, Method::Post) => {
                match read_body(req, MAX_ADMIN_BODY).ok().and_then(|b| serde_json::from_slice::<Rate>(&b).ok()) {
                    Some(r) => {
                        self.files.set_rate(r.bytes_per_s);
                        log::info!("transfers throttled to {} bytes/s (0: unlimited)", r.bytes_per_s);
                        Reply::json(200, &Done { ok: true })
                    }
                    None => Reply::error(400, "expected {\"bytes_per_s\": N}"),
                }
            }
            (ADMIN_UPLOADS_PATH, Method::Get) => match params(query, &["box"]) {
                Ok(p) => self.files.uploads(p[0].as_deref()).map_or_else(Reply::from, |l| Reply::json(200, &l)),
                Err(e) => Reply::error(400, e),
            },
            (ADMIN_UPLOAD_CONTENT_PATH, Method::Get) => match params(query, &["box", "id"]) {
                Ok(p) => match (&p[0], &p[1]) {
                    (Some(b), Some(id)) => match self.files.upload_content(b, id) {
                        Ok(bytes) => {
                            let len = bytes.len() as u64;
                            Reply {
                                stream: Some(Stream {
                                    reader: Box::new(std::io::Cursor::new(bytes)),
                                    len,
                                    headers: vec![("Content-Type", "application/octet-stream".into())],
                                }),
                                ..Reply::json(200, &Done { ok: true })
                            }
                        }
                        Err(e) => e.into(),
                    },
                    _ => Reply::error(400, "box and id are required"),
                },
                Err(e) => Reply::error(400, e),
            },
            (ADMIN_DOWNLOADS_PATH | ADMIN_RATE_PATH | ADMIN_UPLOADS_PATH | ADMIN_UPLOAD_CONTENT_PATH, _) => {
                Reply::method_not_allowed(path, if path == ADMIN_DOWNLOADS_PATH { "GET, POST" } else { "GET" })
            }
            _ => return None,
        })
    }

    fn download(&self, req: &Request, sha: &str) -> Reply {
        let who = match box_identity(req) {
            Ok(w) => w,
            Err(r) => return r,
        };
        match self.commands.references_content(&who.box_id, sha) {
            Ok(true) => {}
            Ok(false) => return Reply::error(404, format!("no download {sha} for box {}", who.box_id)),
            Err(e) => return e.into(),
        }
        let range = req.headers().iter().find(|h| h.field.equiv("Range")).map(|h| h.value.as_str().to_owned());
        let (from, to) = match range.as_deref().map(parse_range) {
            None => (None, None),
            Some(Ok((f, t))) => (Some(f), t),
            Some(Err(e)) => return Reply::error(416, e),
        };
        let (status, reader, len, total) = match self.files.open_download(&who.box_id, sha, from) {
            Ok(x) => x,
            Err(FileError::Invalid(e)) => {
                // 416 names the content's real size (RFC 9110 15.5.17).
                let total = self.files.download_size(sha).unwrap_or(0);
                let body = serde_json::to_vec(&crate::api::ErrorBody { error: e }).unwrap_or_default();
                let len = body.len() as u64;
                return Reply {
                    stream: Some(Stream {
                        reader: Box::new(std::io::Cursor::new(body)),
                        len,
                        headers: vec![
                            ("Content-Type", "application/json".into()),
                            ("Content-Range", format!("bytes */{total}")),
                        ],
                    }),
                    ..Reply::json(416, &Done { ok: false })
                };
            }
            Err(e) => return e.into(),
        };
        let start = from.unwrap_or(0);
        let (reader, len): (Box<dyn std::io::Read + Send>, u64) = match to {
            Some(t) if t + 1 < total => {
                let n = (t + 1).saturating_sub(start).min(len);
                (Box::new(std::io::Read::take(reader, n)), n)
            }
            _ => (reader, len),
        };
        let mut headers =
            vec![("Content-Type", "application/octet-stream".to_string()), ("Accept-Ranges", "bytes".into())];
        if status == 206 {
            headers.push(("Content-Range", format!("bytes {start}-{}/{total}", start + len - 1)));
        }
        log::info!("box {}: download {sha} from byte {start} ({len} of {total} bytes)", who.box_id);
        Reply { stream: Some(Stream { reader, len, headers }), ..Reply::json(status, &Done { ok: true }) }
    }

    fn chunk(&self, req: &mut Request, id: &str) -> Reply {
        let who = match box_identity(req) {
            Ok(w) => w,
            Err(r) => return r,
        };
        let get = |name: &'static str| {
            req.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str().to_owned())
        };
        let num = |name: &'static str| get(name).and_then(|v| v.trim().parse::<u64>().ok());
        let (Some(offset), Some(size), Some(sha256), Some(name), Some(category)) =
            (num(header::OFFSET), num(header::SIZE), get(header::SHA256), get(header::NAME), get(header::CATEGORY))
        else {
            return Reply::error(400, "an upload chunk needs X-Rapbox-Offset, -Size, -Sha256, -Name and -Category");
        };
        let meta =
            ChunkMeta { offset, size, sha256, name, category, instrument: get(header::INSTRUMENT).unwrap_or_default() };
        let body = match read_body(req, wt::MAX_CHUNK_BYTES) {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Reply::error(413, format!("chunk larger than {} bytes", wt::MAX_CHUNK_BYTES))
            }
            Err(BodyError::Io(e)) => return Reply::error(400, format!("reading the chunk failed: {e}")),
        };
        match self.files.upload_chunk(&who.box_id, id, &meta, &body) {
            Ok(st) => Reply::json(200, &st),
            Err(e) => e.into(),
        }
    }
}

/// `bytes=N-` or `bytes=N-M`.
fn parse_range(v: &str) -> Result<(u64, Option<u64>), String> {
    let r = v.trim().strip_prefix("bytes=").ok_or_else(|| format!("range {v:?} is not bytes=N-"))?;
    let (a, b) = r.split_once('-').ok_or_else(|| format!("range {v:?} is not bytes=N-"))?;
    let from = a.trim().parse::<u64>().map_err(|_| format!("range {v:?} has no start"))?;
    let to = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse::<u64>().map_err(|_| format!("range {v:?} has a bad end"))?)
    };
    if to.is_some_and(|t| t < from) {
        return Err(format!("range {v:?} ends before it starts"));
    }
    Ok((from, to))
}

/// The values of the named query parameters (in that order); any other parameter is an error.
fn params(query: &str, names: &[&str]) -> Result<Vec<Option<String>>, String> {
    let mut out = vec![None; names.len()];
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match names.iter().position(|n| *n == k) {
            Some(i) => out[i] = Some(v.into_owned()),
            None => return Err(format!("unknown query parameter {k:?} ({})", names.join(", "))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=100-").unwrap(), (100, None));
        assert_eq!(parse_range("bytes=0-9").unwrap(), (0, Some(9)));
        assert!(
            parse_range("bytes=9-1").is_err() && parse_range("items=1-").is_err() && parse_range("bytes=-5").is_err()
        );
    }

    #[test]
    fn query_parameters_are_checked() {
        assert_eq!(params("box=b1", &["box", "id"]).unwrap(), vec![Some("b1".into()), None]);
        assert!(params("bx=1", &["box"]).unwrap_err().contains("bx"));
    }
}
