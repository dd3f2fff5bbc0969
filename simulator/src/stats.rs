//! Counters shared between a running simulated instrument and whoever watches it.
//!
//! Tests keep an `Arc<Stats>` while the instrument runs (or after they kill the box)
//! and read, above all, the set of acknowledged message ids: every id in it must reach
//! the data center exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rapwire::agent::ErrorCode;

use crate::idset::IdSet;

/// Highest numeric [`ErrorCode`] value plus one (codes are indexed directly).
const CODES: usize = 17;

/// A message the box refused for good (not retried).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// The refused message.
    pub msg_id: u64,
    /// The box's code, by name (`malformed`, `wrong_instrument`, ...).
    pub code: String,
    /// The box's reason text.
    pub reason: String,
}

/// Live counters of one simulated instrument. All counters only grow.
#[derive(Debug, Default)]
pub struct Stats {
    sent: AtomicU64,
    resent: AtomicU64,
    acked: AtomicU64,
    duplicate_acked: AtomicU64,
    rejected: AtomicU64,
    stray_replies: AtomicU64,
    errors: [AtomicU64; CODES],
    connects: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    acked_ids: Mutex<IdSet>,
    rejections: Mutex<Vec<Rejection>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not hide the counters from the test that inspects them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    /// Messages sent for the first time.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Retransmissions (after a reconnect or a retryable error).
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }
    /// Distinct messages acknowledged (duplicates included).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    /// Acks flagged "duplicate": the box had already stored the message.
    pub fn duplicate_acked(&self) -> u64 {
        self.duplicate_acked.load(Ordering::Relaxed)
    }
    /// Messages refused for good (permanent error codes).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
    /// Replies about ids that were not outstanding, or frames that were not replies.
    pub fn stray_replies(&self) -> u64 {
        self.stray_replies.load(Ordering::Relaxed)
    }
    /// Error replies received with `code` (retryable or not).
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors.get(code as usize).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    /// All error replies received.
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
    /// Successful TCP connections, the first one included.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
    /// Connections re-established after one was lost.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    /// Failed connection attempts.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }
    /// A copy of the set of acknowledged message ids.
    pub fn acked_ids(&self) -> IdSet {
        lock(&self.acked_ids).clone()
    }
    /// Whether `msg_id` was acknowledged.
    pub fn is_acked(&self, msg_id: u64) -> bool {
        lock(&self.acked_ids).contains(msg_id)
    }
    /// The permanently refused messages, in the order the refusals arrived.
    pub fn rejections(&self) -> Vec<Rejection> {
        lock(&self.rejections).clone()
    }

    /// A consistent-enough copy of every counter, for printing or JSON.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut errors = BTreeMap::new();
        for (i, c) in self.errors.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if let (Some(code), true) = (ErrorCode::from_u16(i as u16), n > 0) {
                errors.insert(code.name().to_string(), n);
            }
        }
        let acked_ranges = lock(&self.acked_ids).ranges().count() as u64;
        StatsSnapshot {
            sent: self.sent(),
            resent: self.resent(),
            acked: self.acked(),
            duplicate_acked: self.duplicate_acked(),
            rejected: self.rejected(),
            stray_replies: self.stray_replies(),
            errors,
            connects: self.connects(),
            reconnects: self.reconnects(),
            connect_failures: self.connect_failures(),
            acked_ranges,
        }
    }

    pub(crate) fn add_sent(&self, first_time: bool) {
        if first_time {
            self.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            self.resent.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn add_ack(&self, msg_id: u64, duplicate: bool) {
        lock(&self.acked_ids).insert(msg_id);
        self.acked.fetch_add(1, Ordering::Relaxed);
        if duplicate {
            self.duplicate_acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn add_error(&self, code: ErrorCode) {
        if let Some(c) = self.errors.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn add_rejection(&self, msg_id: u64, code: ErrorCode, reason: &str) {
        lock(&self.rejections).push(Rejection { msg_id, code: code.name().to_string(), reason: reason.to_string() });
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_stray(&self) {
        self.stray_replies.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_connect(&self) {
        if self.connects.fetch_add(1, Ordering::Relaxed) > 0 {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn add_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// A plain copy of [`Stats`] counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub sent: u64,
    pub resent: u64,
    pub acked: u64,
    pub duplicate_acked: u64,
    pub rejected: u64,
    pub stray_replies: u64,
    /// Error replies by code name; codes never received are absent.
    pub errors: BTreeMap<String, u64>,
    pub connects: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    /// Number of contiguous runs in the acked id set (1 when acks had no gaps).
    pub acked_ranges: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_snapshot() {
        let s = Stats::default();
        s.add_sent(true);
        s.add_sent(true);
        s.add_sent(false);
        s.add_ack(10, false);
        s.add_ack(11, true);
        s.add_error(ErrorCode::QueueFull);
        s.add_error(ErrorCode::QueueFull);
        s.add_error(ErrorCode::ShuttingDown);
        s.add_rejection(12, ErrorCode::WrongInstrument, "port 7001 is cabled to DXI-0001");
        s.add_connect();
        s.add_connect();
        let snap = s.snapshot();
        assert_eq!((snap.sent, snap.resent, snap.acked, snap.duplicate_acked), (2, 1, 2, 1));
        assert_eq!(snap.errors.get("queue_full"), Some(&2));
        assert_eq!(snap.errors.get("shutting_down"), Some(&1));
        assert_eq!(snap.errors.len(), 2);
        assert_eq!((snap.connects, snap.reconnects, snap.rejected), (2, 1, 1));
        assert_eq!(s.errors(ErrorCode::QueueFull), 2);
        assert_eq!(s.total_errors(), 3);
        assert!(s.is_acked(11) && !s.is_acked(12));
        assert_eq!(s.acked_ids().ranges().collect::<Vec<_>>(), vec![(10, 11)]);
        assert_eq!(s.rejections()[0].code, "wrong_instrument");
    }
}
