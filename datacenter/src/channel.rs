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
//!
//! Commands also leave in the answer to every batch upload ([`Channel::commands_for`]).

use std::sync::{Mutex, MutexGuard};

use rapwire::command::{self, Exchange, ExchangeAnswer};
use tiny_http::{Method, Request};

use crate::api::{Done, FaultSpec};
use crate::commands::{CommandError, CommandStore, QueueCommand};
use crate::http::{box_identity, read_body, BodyError, Reply};

/// Path of the box's exchange.
pub const EXCHANGE_PATH: &str = "/api/v1/commands";
/// Queue (POST) and list (GET) commands.
pub const ADMIN_COMMANDS_PATH: &str = "/admin/commands";
/// Put a command back in the queue.
pub const ADMIN_REDELIVER_PATH: &str = "/admin/commands/redeliver";
/// Arm a fault on the exchange endpoint.
pub const ADMIN_EXCHANGE_FAULT_PATH: &str = "/admin/commands/fault";
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// What the channel's endpoints share.
#[derive(Debug)]
pub struct Channel {
    pub commands: CommandStore,
    exchange_fault: Mutex<Option<FaultSpec>>,
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
    /// The channel over a command queue.
    pub fn new(commands: CommandStore) -> Channel {
        Channel { commands, exchange_fault: Mutex::new(None) }
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
    fn query_parameters_are_checked() {
        assert_eq!(params("box=b1", &["box", "id"]).unwrap(), vec![Some("b1".into()), None]);
        assert!(params("bx=1", &["box"]).unwrap_err().contains("bx"));
    }
}
