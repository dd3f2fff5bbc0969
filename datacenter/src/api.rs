//! JSON types of the data center's HTTP API, shared by the server ([`crate::http`]) and the
//! client ([`crate::client`]) so the two cannot drift.
//!
//! The batch acknowledgement itself is [`rapwire::batch::BatchAck`]: it is part of the wire
//! contract with the box and lives with the batch format.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `POST /api/v1/batches` | rapwire batch | [`rapwire::batch::BatchAck`] |
//! | `POST /api/v1/lines` | newline-separated text lines | [`LinesAck`] |
//! | `GET /api/v1/reports?box=&instrument=&since_id=&limit=` | | [`ReportPage`] |
//! | `GET /api/v1/stats` | | [`Stats`] |
//! | `GET /healthz` | | [`Health`] |
//! | `POST /admin/fault` | [`FaultSpec`] | [`Done`] |
//! | `POST /admin/reset` | | [`Done`] |
//! | `GET /admin/requests` | | [`RequestCounts`] |
//! | `GET /api/v1/alerts?state=&box=&instrument=&rule=&since_id=&limit=` | | [`AlertPage`] |
//! | `GET /api/v1/triggers` | | [`TriggerStatus`] |
//! | `POST /admin/evaluate` | | [`TriggerStatus`] |
//! | `GET /dashboard` (staff, through the front door's staff listener) | | HTML |
//!
//! Every error is [`ErrorBody`].

use std::collections::BTreeMap;

use rapwire::Kind;
use serde::{Deserialize, Serialize};

pub mod alerts;
pub use alerts::*;

/// Path of the batch upload.
pub const BATCHES_PATH: &str = "/api/v1/batches";
/// Path of the plain-lines upload (the syslog-ng reference of the benchmark posts here):
/// lines are counted per box, nothing else is kept.
pub const LINES_PATH: &str = "/api/v1/lines";
/// Path of the report query.
pub const REPORTS_PATH: &str = "/api/v1/reports";
/// Path of the statistics.
pub const STATS_PATH: &str = "/api/v1/stats";
/// Path of the liveness check.
pub const HEALTH_PATH: &str = "/healthz";
/// Path that arms a fault (admin only, never exposed by the front door).
pub const FAULT_PATH: &str = "/admin/fault";
/// Path that empties the store (admin only).
pub const RESET_PATH: &str = "/admin/reset";
/// Path of the per-path request counters (admin only).
pub const REQUESTS_PATH: &str = "/admin/requests";

/// Prefix of the paths that the front door never exposes.
pub const ADMIN_PREFIX: &str = "/admin/";

/// Header set by the front door: `SUCCESS` when the client certificate was verified.
pub const CLIENT_VERIFY_HEADER: &str = "X-Client-Verify";
/// Header set by the front door: the verified subject DN in RFC 2253 form.
pub const CLIENT_SUBJECT_HEADER: &str = "X-Client-Subject";

/// Default number of reports in one page.
pub const DEFAULT_REPORT_LIMIT: u32 = 1000;
/// Largest page a client may ask for.
pub const MAX_REPORT_LIMIT: u32 = 100_000;

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, in words.
    pub error: String,
}

/// One stored report, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Server-side sequence number: increases in arrival order (restarts after a reset).
    pub id: u64,
    /// Box identity (the CN of its certificate).
    #[serde(rename = "box")]
    pub box_id: String,
    /// Instrument serial ("" for the box's own records).
    pub instrument: String,
    /// The instrument's message id.
    pub msg_id: u64,
    /// Instrument timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// What the report is.
    pub kind: Kind,
    /// 0 (urgent) to 3.
    pub priority: u8,
    /// The payload as text (invalid UTF-8 replaced).
    pub payload: String,
    /// Server time of the first delivery, milliseconds since the Unix epoch.
    pub received_ms: i64,
    /// Batch that first delivered it.
    pub batch_id: u64,
    /// How many times it was delivered (1 unless the box re-sent it in another batch).
    pub deliveries: u64,
}

/// One page of reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportPage {
    /// Reports with `id > since_id`, ascending.
    pub reports: Vec<Report>,
    /// Id of the last report in this page, or the `since_id` asked for when the page is
    /// empty: pass it as the next `since_id`.
    pub last_id: u64,
}

/// What a report query selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportQuery {
    /// Only this box.
    #[serde(rename = "box", default, skip_serializing_if = "Option::is_none")]
    pub box_id: Option<String>,
    /// Only this instrument serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrument: Option<String>,
    /// Only reports with a larger id.
    #[serde(default)]
    pub since_id: u64,
    /// At most this many ([`DEFAULT_REPORT_LIMIT`] when absent, capped at [`MAX_REPORT_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl ReportQuery {
    /// The page size this query asks for, after defaults and the cap.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_REPORT_LIMIT).clamp(1, MAX_REPORT_LIMIT)
    }
}

/// Answer of `POST /api/v1/lines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinesAck {
    /// Non-empty lines counted from this request.
    pub lines: u64,
}

/// Per-box counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxStats {
    /// Box identity (certificate CN).
    #[serde(rename = "box")]
    pub box_id: String,
    /// Distinct batches stored.
    pub batches: u64,
    /// Batches that repeated an already acknowledged batch id (answered with the first ack).
    pub repeated_batches: u64,
    /// Records stored (each counted once).
    pub records: u64,
    /// Records delivered again in a later batch (not stored twice).
    pub duplicates: u64,
    /// The `dropped_total` of the latest batch received from the box.
    pub dropped_total: u64,
    /// Server time of the latest new batch, milliseconds since the Unix epoch.
    pub last_batch_ms: i64,
}

/// Per-instrument counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrumentStats {
    /// Box the instrument is attached to.
    #[serde(rename = "box")]
    pub box_id: String,
    /// Instrument serial ("" for the box's own records).
    pub instrument: String,
    /// Reports stored.
    pub count: u64,
    /// Reports stored per kind name (`status`, `alarm`, ...).
    pub kinds: BTreeMap<String, u64>,
    /// Server time of the latest report, milliseconds since the Unix epoch.
    pub last_received_ms: i64,
    /// Largest instrument timestamp seen, milliseconds since the Unix epoch.
    pub last_timestamp_ms: i64,
}

/// `GET /api/v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Sorted by box.
    pub boxes: Vec<BoxStats>,
    /// Sorted by box, then instrument.
    pub instruments: Vec<InstrumentStats>,
}

impl Stats {
    /// The counters of one box, if it ever sent a batch.
    pub fn for_box(&self, box_id: &str) -> Option<&BoxStats> {
        self.boxes.iter().find(|b| b.box_id == box_id)
    }

    /// The counters of one instrument of one box.
    pub fn for_instrument(&self, box_id: &str, instrument: &str) -> Option<&InstrumentStats> {
        self.instruments.iter().find(|i| i.box_id == box_id && i.instrument == instrument)
    }
}

/// `POST /admin/fault`: the next `count` batch uploads are answered with `status`
/// (and `Retry-After` when given) and store nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// HTTP status to answer, 400..=599.
    pub status: u16,
    /// Value of the `Retry-After` header, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// How many batch uploads to answer this way (0 disarms).
    pub count: u32,
}

/// `GET /admin/requests`: every request the backend received, by path (query string
/// stripped), since start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Requests per path.
    pub by_path: BTreeMap<String, u64>,
    /// Requests on paths outside `/admin/` (what a box or the front door could have sent).
    pub outside_admin: u64,
}

impl RequestCounts {
    /// Requests received on one path.
    pub fn get(&self, path: &str) -> u64 {
        self.by_path.get(path).copied().unwrap_or(0)
    }
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` when the backend answers.
    pub status: String,
    /// Version of rapdc.
    pub version: String,
}

/// Answer of the admin commands that return nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_spec_json() {
        let f: FaultSpec = serde_json::from_str(r#"{"status":503,"retry_after_s":2,"count":3}"#).unwrap();
        assert_eq!(f, FaultSpec { status: 503, retry_after_s: Some(2), count: 3 });
        let f: FaultSpec = serde_json::from_str(r#"{"status":500,"count":1}"#).unwrap();
        assert_eq!(f.retry_after_s, None);
    }

    #[test]
    fn report_uses_box_and_kind_names() {
        let r = Report {
            id: 1,
            box_id: "box-0001".into(),
            instrument: "A-1".into(),
            msg_id: 7,
            timestamp_ms: 5,
            kind: Kind::QcResult,
            priority: 2,
            payload: "x".into(),
            received_ms: 9,
            batch_id: 3,
            deliveries: 1,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["box"], "box-0001");
        assert_eq!(v["kind"], "qc_result");
    }

    #[test]
    fn limit_defaults_and_caps() {
        assert_eq!(ReportQuery::default().effective_limit(), DEFAULT_REPORT_LIMIT);
        let q = ReportQuery { limit: Some(u32::MAX), ..Default::default() };
        assert_eq!(q.effective_limit(), MAX_REPORT_LIMIT);
        let q = ReportQuery { limit: Some(0), ..Default::default() };
        assert_eq!(q.effective_limit(), 1);
    }
}
