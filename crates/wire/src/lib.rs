//! Wire formats of rapbox, defined once and used by both ends.
//!
//! * [`agent`]: the framed TCP protocol between an instrument's agent and the box
//!   (documented in `docs/agent-protocol.md`).
//! * [`batch`]: the compressed batch the box POSTs to the data center, and the
//!   data center's acknowledgement.
//! * [`command`]: commands the data center queues for a box and the results the box
//!   reports (documented in `docs/commands.md`).
//! * [`requests`]: version 2 of the agent protocol, requests in both directions on an
//!   agent's connection (file offers, pulls and uploads).
//! * [`transfer`]: download manifests and the upload endpoint (`docs/transfers.md`).
//!
//! Every decoder here takes untrusted bytes: it never panics, never allocates more
//! than the declared limits, and names what was wrong in its error.

pub mod agent;
pub mod batch;
pub mod command;
pub mod requests;
pub mod transfer;
mod varint;

/// What a message is about. The kind decides how the queue treats it under pressure:
/// alarms and audit records are never dropped to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Kind {
    /// Routine instrument status.
    Status = 1,
    /// An alarm: leaves first, never dropped by the quota.
    Alarm = 2,
    /// An instrument event (run started, lid opened, ...).
    Event = 3,
    /// A quality-control result.
    QcResult = 4,
    /// A log line.
    Log = 5,
    /// An audit record produced by the box itself: never dropped.
    Audit = 6,
    /// An event produced by the box itself (link up/down, drop counts, ...).
    BoxEvent = 7,
}

impl Kind {
    /// Decodes the wire value.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Status,
            2 => Kind::Alarm,
            3 => Kind::Event,
            4 => Kind::QcResult,
            5 => Kind::Log,
            6 => Kind::Audit,
            7 => Kind::BoxEvent,
            _ => return None,
        })
    }

    /// Whether the queue may drop this kind when its byte quota is full.
    pub fn droppable(self) -> bool {
        !matches!(self, Kind::Alarm | Kind::Audit)
    }

    /// Whether an instrument may send this kind (the last two are the box's own).
    pub fn from_instrument(self) -> bool {
        !matches!(self, Kind::Audit | Kind::BoxEvent)
    }

    /// A short lowercase name, as used in logs and the data center's API.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Alarm => "alarm",
            Kind::Event => "event",
            Kind::QcResult => "qc_result",
            Kind::Log => "log",
            Kind::Audit => "audit",
            Kind::BoxEvent => "box_event",
        }
    }
}

/// Highest priority (leaves first).
pub const PRIORITY_URGENT: u8 = 0;
/// Lowest priority value accepted.
pub const PRIORITY_LOWEST: u8 = 3;
