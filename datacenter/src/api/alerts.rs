//! JSON types of the trigger and alert API (`/api/v1/alerts`, `/api/v1/triggers`,
//! `/admin/evaluate`) and the staff dashboard's paths.

use rapwire::Kind;
use serde::{Deserialize, Serialize};

pub use crate::rules::Severity;

/// Path of the alert query.
pub const ALERTS_PATH: &str = "/api/v1/alerts";
/// Path of the trigger engine's status.
pub const TRIGGERS_PATH: &str = "/api/v1/triggers";
/// Path that evaluates pending reports and runs a clock tick now (admin only).
pub const EVALUATE_PATH: &str = "/admin/evaluate";
/// Path of the staff dashboard (HTML).
pub const DASHBOARD_PATH: &str = "/dashboard";
/// Header set by the front door's staff listener: the authenticated staff user name.
pub const STAFF_USER_HEADER: &str = "X-Staff-User";

/// Default number of alerts in one page.
pub const DEFAULT_ALERT_LIMIT: u32 = 500;
/// Largest alert page a client may ask for.
pub const MAX_ALERT_LIMIT: u32 = 10_000;
/// Most reports an alert's evidence lists (the count of all matching reports is kept).
pub const MAX_EVIDENCE_REPORTS: usize = 20;

/// Whether an alert is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds (or has not been seen to end).
    Open,
    /// The condition ended; the alert is kept as history.
    Cleared,
}

impl AlertState {
    /// `open` or `cleared`.
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Cleared => "cleared",
        }
    }
}

/// One report that is part of an alert's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceReport {
    /// The stored report's id (`None` when known only from the counters, e.g. an
    /// instrument that fell silent before the rule existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_id: Option<u64>,
    /// The instrument's message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<u64>,
    /// Instrument time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Data center time of arrival, milliseconds since the Unix epoch.
    pub received_ms: i64,
    /// The report's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// The payload field the rule read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Its value, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// What matched when an alert was raised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// In words: `reagent_A=8% is below 10`.
    pub detail: String,
    /// Matching reports, oldest first by instrument time (at most
    /// [`MAX_EVIDENCE_REPORTS`]; for a duration the first and the last of the run; for an
    /// absence the last report received).
    pub reports: Vec<EvidenceReport>,
    /// How many reports matched in all.
    pub matched: u64,
    /// Instrument time of the first matching report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ms: Option<i64>,
    /// Instrument time of the last matching report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<i64>,
    /// The span that made the rule fire: the count's window, the duration held, or the
    /// silence, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_ms: Option<i64>,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Increases in the order alerts were raised.
    pub id: u64,
    /// The rule's name.
    pub rule: String,
    /// `threshold`, `count`, `duration` or `absence`.
    pub rule_kind: String,
    /// The rule's severity.
    pub severity: Severity,
    /// Box identity.
    #[serde(rename = "box")]
    pub box_id: String,
    /// Instrument serial.
    pub instrument: String,
    /// What the alert is about within the instrument: the field (threshold, duration), the
    /// repeated value (count with `same_value`), or "".
    pub key: String,
    /// One line for people: `reagent_A=8% is below 10`.
    pub summary: String,
    /// Open or cleared.
    pub state: AlertState,
    /// Data center time the alert was raised.
    pub raised_ms: i64,
    /// Data center time the condition last matched again (= `raised_ms` until it does).
    pub updated_ms: i64,
    /// Matching reports seen after the alert was raised, while it was open.
    pub repeats: u64,
    /// Data center time it cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_ms: Option<i64>,
    /// Why it cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_reason: Option<String>,
    /// The report that cleared it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<EvidenceReport>,
    /// What matched.
    pub evidence: Evidence,
}

/// What an alert query selects (`GET /api/v1/alerts?state=&box=&instrument=&rule=&since_id=&limit=`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertQuery {
    /// Only open or only cleared alerts (both when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AlertState>,
    /// Only this box.
    #[serde(rename = "box", default, skip_serializing_if = "Option::is_none")]
    pub box_id: Option<String>,
    /// Only this instrument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrument: Option<String>,
    /// Only this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Only alerts with a larger id.
    #[serde(default)]
    pub since_id: u64,
    /// At most this many ([`DEFAULT_ALERT_LIMIT`] when absent, capped at [`MAX_ALERT_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl AlertQuery {
    /// Open alerts only.
    pub fn open() -> AlertQuery {
        AlertQuery { state: Some(AlertState::Open), ..Default::default() }
    }

    /// The page size asked for, after defaults and the cap.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_ALERT_LIMIT).clamp(1, MAX_ALERT_LIMIT)
    }
}

/// One page of alerts, ascending by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertPage {
    /// The alerts.
    pub alerts: Vec<Alert>,
    /// Id of the last alert in the page, or the `since_id` asked for.
    pub last_id: u64,
}

/// A loaded rule, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// Name.
    pub name: String,
    /// `threshold`, `count`, `duration` or `absence`.
    pub kind: String,
    /// Severity of its alerts.
    pub severity: Severity,
    /// The rule's description.
    pub description: String,
    /// The condition in words (`reagent_* below 10`).
    pub condition: String,
    /// Its alerts open now.
    pub open_alerts: u64,
}

/// `GET /api/v1/triggers` (and the answer of `POST /admin/evaluate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerStatus {
    /// The rules in force, in file order.
    pub rules: Vec<RuleInfo>,
    /// Reports up to this id have been evaluated.
    pub evaluated_report_id: u64,
    /// The newest stored report id (evaluation has caught up when both are equal).
    pub stored_report_id: u64,
    /// Data center time of the last clock tick (absence checks, count clearing); 0 before the first.
    pub last_tick_ms: i64,
    /// Readings ignored since start because the instrument had already sent a newer one
    /// (threshold and duration rules follow the newest reading).
    pub late_readings: u64,
}
