//! A small blocking client of the backend's loopback API, for tests, the demo and scripts.
//!
//! Plain HTTP to the backend (never through the front door): the query and admin paths
//! are only served there. [`Client::post_batch`] sends a batch as if nginx had verified
//! the given subject, for tests of the backend alone.

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rapwire::batch::{self, BatchAck};
use serde::de::DeserializeOwned;

use crate::api::{
    self, Alert, AlertPage, AlertQuery, ErrorBody, FaultSpec, Health, Report, ReportPage, ReportQuery, RequestCounts,
    Stats, TriggerStatus, CLIENT_SUBJECT_HEADER, CLIENT_VERIFY_HEADER, MAX_ALERT_LIMIT, MAX_REPORT_LIMIT,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer (connection refused, timeout, ...).
    #[error("{url}: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The backend answered with an error status.
    #[error("{url}: HTTP {status}: {error}")]
    Status {
        /// The URL called.
        url: String,
        /// The status.
        status: u16,
        /// The `error` of the JSON answer (or the raw body).
        error: String,
    },
    /// The answer was not the JSON expected.
    #[error("{url}: bad answer: {source}")]
    Decode {
        /// The URL called.
        url: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl ClientError {
    /// The HTTP status, when the backend answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Any answer, error statuses included (see [`Client::post_raw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, when present.
    pub retry_after: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The `error` of a JSON error body.
    pub fn error(&self) -> Option<String> {
        serde_json::from_slice::<ErrorBody>(&self.body).ok().map(|e| e.error)
    }
}

/// Client of one backend.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the backend at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: impl Into<String>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .build();
        Client { base: base_url.into().trim_end_matches('/').to_owned(), agent }
    }

    /// A client of the backend listening on `addr`.
    pub fn for_addr(addr: SocketAddr) -> Client {
        Client::new(format!("http://{addr}"))
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish<T: DeserializeOwned>(url: &str, r: Result<ureq::Response, ureq::Error>) -> Result<T, ClientError> {
        match r {
            Ok(resp) => resp.into_json().map_err(|source| ClientError::Decode { url: url.to_owned(), source }),
            Err(ureq::Error::Status(status, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let error = serde_json::from_str::<ErrorBody>(&body).map_or(body, |e| e.error);
                Err(ClientError::Status { url: url.to_owned(), status, error })
            }
            Err(ureq::Error::Transport(t)) => {
                Err(ClientError::Transport { url: url.to_owned(), reason: t.to_string() })
            }
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        Client::finish(&url, self.agent.get(&url).call())
    }

    fn post_json<B: serde::Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = self.url(path);
        Client::finish(&url, self.agent.post(&url).send_json(body))
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.get(api::HEALTH_PATH)
    }

    /// Polls `/healthz` until the backend answers or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Health, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.health() {
                Ok(h) => return Ok(h),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `GET /api/v1/stats`.
    pub fn stats(&self) -> Result<Stats, ClientError> {
        self.get(api::STATS_PATH)
    }

    /// One page (up to 1000) of reports after `since_id`, optionally of one box and/or
    /// instrument.
    pub fn reports(
        &self,
        box_id: Option<&str>,
        instrument: Option<&str>,
        since_id: u64,
    ) -> Result<ReportPage, ClientError> {
        self.query_reports(&ReportQuery {
            box_id: box_id.map(str::to_owned),
            instrument: instrument.map(str::to_owned),
            since_id,
            limit: None,
        })
    }

    /// `GET /api/v1/reports` with every parameter.
    pub fn query_reports(&self, q: &ReportQuery) -> Result<ReportPage, ClientError> {
        let url = self.url(api::REPORTS_PATH);
        let mut req = self.agent.get(&url).query("since_id", &q.since_id.to_string());
        if let Some(b) = &q.box_id {
            req = req.query("box", b);
        }
        if let Some(i) = &q.instrument {
            req = req.query("instrument", i);
        }
        if let Some(l) = q.limit {
            req = req.query("limit", &l.to_string());
        }
        Client::finish(&url, req.call())
    }

    /// Every stored report (of one box and/or instrument), paging through the API.
    pub fn all_reports(&self, box_id: Option<&str>, instrument: Option<&str>) -> Result<Vec<Report>, ClientError> {
        let mut out = Vec::new();
        let mut q = ReportQuery {
            box_id: box_id.map(str::to_owned),
            instrument: instrument.map(str::to_owned),
            since_id: 0,
            limit: Some(MAX_REPORT_LIMIT),
        };
        loop {
            let page = self.query_reports(&q)?;
            if page.reports.is_empty() {
                return Ok(out);
            }
            q.since_id = page.last_id;
            out.extend(page.reports);
        }
    }

    /// `GET /api/v1/alerts` with every parameter.
    pub fn query_alerts(&self, q: &AlertQuery) -> Result<AlertPage, ClientError> {
        let url = self.url(api::ALERTS_PATH);
        let mut req = self.agent.get(&url).query("since_id", &q.since_id.to_string());
        if let Some(s) = q.state {
            req = req.query("state", s.name());
        }
        for (k, v) in [("box", &q.box_id), ("instrument", &q.instrument), ("rule", &q.rule)] {
            if let Some(v) = v {
                req = req.query(k, v);
            }
        }
        if let Some(l) = q.limit {
            req = req.query("limit", &l.to_string());
        }
        Client::finish(&url, req.call())
    }

    /// Every alert `q` selects (its `since_id` and `limit` aside), paging through the API.
    pub fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>, ClientError> {
        let mut q = AlertQuery { since_id: 0, limit: Some(MAX_ALERT_LIMIT), ..q.clone() };
        let mut out = Vec::new();
        loop {
            let page = self.query_alerts(&q)?;
            if page.alerts.is_empty() {
                return Ok(out);
            }
            q.since_id = page.last_id;
            out.extend(page.alerts);
        }
    }

    /// Every open alert.
    pub fn open_alerts(&self) -> Result<Vec<Alert>, ClientError> {
        self.alerts(&AlertQuery::open())
    }

    /// `GET /api/v1/triggers`.
    pub fn triggers(&self) -> Result<TriggerStatus, ClientError> {
        self.get(api::TRIGGERS_PATH)
    }

    /// `POST /admin/evaluate`: evaluates every stored report and runs a clock tick now.
    pub fn evaluate(&self) -> Result<TriggerStatus, ClientError> {
        let url = self.url(api::EVALUATE_PATH);
        Client::finish(&url, self.agent.post(&url).call())
    }

    /// Polls `/api/v1/triggers` until every stored report is evaluated (or `timeout`).
    pub fn wait_evaluated(&self, timeout: Duration) -> Result<TriggerStatus, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.triggers()?;
            if s.evaluated_report_id >= s.stored_report_id || Instant::now() >= deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `POST /admin/fault`: the next `spec.count` batch uploads answer `spec.status`.
    pub fn fault(&self, spec: FaultSpec) -> Result<(), ClientError> {
        self.post_json::<_, api::Done>(api::FAULT_PATH, &spec).map(drop)
    }

    /// `POST /admin/reset`: empties the store, disarms faults and zeroes the request counters.
    pub fn reset(&self) -> Result<(), ClientError> {
        let url = self.url(api::RESET_PATH);
        Client::finish::<api::Done>(&url, self.agent.post(&url).call()).map(drop)
    }

    /// `GET /admin/requests`.
    pub fn requests(&self) -> Result<RequestCounts, ClientError> {
        self.get(api::REQUESTS_PATH)
    }

    /// `POST /admin/commands`: queues a command for a box; returns it as queued.
    pub fn queue_command(
        &self,
        q: &crate::commands::QueueCommand,
    ) -> Result<crate::commands::CommandRecord, ClientError> {
        self.post_json(crate::channel::ADMIN_COMMANDS_PATH, q)
    }

    /// `GET /admin/commands?id=`: one command with its results.
    pub fn command(&self, id: &str) -> Result<crate::commands::CommandRecord, ClientError> {
        let url = self.url(crate::channel::ADMIN_COMMANDS_PATH);
        let list: crate::commands::CommandList = Client::finish(&url, self.agent.get(&url).query("id", id).call())?;
        list.commands.into_iter().next().ok_or_else(|| ClientError::Status {
            url,
            status: 404,
            error: format!("no command {id}"),
        })
    }

    /// `GET /admin/commands[?box=]`: every command (of one box), oldest first.
    pub fn commands(&self, box_id: Option<&str>) -> Result<crate::commands::CommandList, ClientError> {
        let url = self.url(crate::channel::ADMIN_COMMANDS_PATH);
        let mut req = self.agent.get(&url);
        if let Some(b) = box_id {
            req = req.query("box", b);
        }
        Client::finish(&url, req.call())
    }

    /// Polls a command until `pred` holds or `timeout` passes (then the last record is returned
    /// in the error).
    pub fn wait_command(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&crate::commands::CommandRecord) -> bool,
    ) -> Result<crate::commands::CommandRecord, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.command(id)?;
            if pred(&c) {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Status {
                    url: self.url(crate::channel::ADMIN_COMMANDS_PATH),
                    status: 408,
                    error: format!(
                        "timed out after {timeout:?} waiting on command {id}: {}",
                        serde_json::to_string(&c).unwrap_or_default()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `POST /admin/commands/redeliver?id=`: hands the command to the box again.
    pub fn redeliver_command(&self, id: &str) -> Result<crate::commands::CommandRecord, ClientError> {
        let url = self.url(crate::channel::ADMIN_REDELIVER_PATH);
        Client::finish(&url, self.agent.post(&url).query("id", id).call())
    }

    /// `POST /admin/commands/fault`: the next `spec.count` exchanges answer `spec.status`.
    pub fn exchange_fault(&self, spec: FaultSpec) -> Result<(), ClientError> {
        self.post_json::<_, api::Done>(crate::channel::ADMIN_EXCHANGE_FAULT_PATH, &spec).map(drop)
    }

    /// `POST /admin/downloads`: stores download content (`as_name`: under that name instead
    /// of its SHA-256, a testing aid for tampered content).
    pub fn put_download(
        &self,
        content: &[u8],
        as_name: Option<&str>,
    ) -> Result<crate::transfers::DownloadInfo, ClientError> {
        let url = self.url(crate::channel::ADMIN_DOWNLOADS_PATH);
        let mut req = self.agent.post(&url);
        if let Some(n) = as_name {
            req = req.query("as", n);
        }
        Client::finish(&url, req.send_bytes(content))
    }

    /// `GET /admin/downloads`: stored content and every range served.
    pub fn downloads(&self) -> Result<crate::transfers::DownloadList, ClientError> {
        self.get(crate::channel::ADMIN_DOWNLOADS_PATH)
    }

    /// `POST /admin/transfers/rate`: throttles download answers and upload chunks (0: unlimited).
    pub fn set_transfer_rate(&self, bytes_per_s: u64) -> Result<(), ClientError> {
        self.post_json::<_, api::Done>(crate::channel::ADMIN_RATE_PATH, &crate::channel::Rate { bytes_per_s }).map(drop)
    }

    /// `GET /admin/uploads[?box=]`.
    pub fn uploads(&self, box_id: Option<&str>) -> Result<crate::transfers::UploadList, ClientError> {
        let url = self.url(crate::channel::ADMIN_UPLOADS_PATH);
        let mut req = self.agent.get(&url);
        if let Some(b) = box_id {
            req = req.query("box", b);
        }
        Client::finish(&url, req.call())
    }

    /// `GET /admin/uploads/content`: the bytes of a complete upload.
    pub fn upload_content(&self, box_id: &str, id: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url(crate::channel::ADMIN_UPLOAD_CONTENT_PATH);
        match self.agent.get(&url).query("box", box_id).query("id", id).call() {
            Ok(r) => {
                let mut out = Vec::new();
                r.into_reader()
                    .take(crate::transfers::MAX_CONTENT_BYTES as u64)
                    .read_to_end(&mut out)
                    .map_err(|source| ClientError::Decode { url, source })?;
                Ok(out)
            }
            Err(e) => Client::finish::<serde_json::Value>(&url, Err(e)).map(|_| Vec::new()),
        }
    }

    /// POSTs a batch body as if the front door had verified `subject` (e.g.
    /// `CN=box-0001,O=rapbox`).
    pub fn post_batch(&self, subject: &str, body: &[u8]) -> Result<BatchAck, ClientError> {
        let url = self.url(api::BATCHES_PATH);
        let r = self
            .agent
            .post(&url)
            .set("Content-Type", batch::CONTENT_TYPE)
            .set(CLIENT_VERIFY_HEADER, "SUCCESS")
            .set(CLIENT_SUBJECT_HEADER, subject)
            .send_bytes(body);
        Client::finish(&url, r)
    }

    /// POSTs `body` to `path` with exactly the given headers and returns whatever came back,
    /// error statuses included (for tests of refusals).
    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<RawResponse, ClientError> {
        let url = self.url(path);
        let mut req = self.agent.post(&url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let resp = match req.send_bytes(body) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Transport { url, reason: t.to_string() });
            }
        };
        let status = resp.status();
        let retry_after = resp.header("Retry-After").map(str::to_owned);
        let mut body = Vec::new();
        resp.into_reader()
            .take(64 * 1024 * 1024)
            .read_to_end(&mut body)
            .map_err(|source| ClientError::Decode { url, source })?;
        Ok(RawResponse { status, retry_after, body })
    }
}
