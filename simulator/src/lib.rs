//! rapsim: the instrument simulator.
//!
//! * [`Instrument`]: a simulated instrument agent that behaves like a real one:
//!   pipelined reports (up to `window` unacknowledged), replies read on a second
//!   thread, every message kept until the box acks it, retries with backoff on
//!   `QueueFull`/`StorageFailure`/`ShuttingDown`, reconnect and resend in id order
//!   after a disconnect. Blocking I/O, no async runtime.
//! * [`Stats`]: live counters shared through an `Arc`, including the set of acked
//!   message ids that kill tests compare with what reached the data center.
//! * [`raw`]: deliberately wrong clients for negative tests (garbage, oversized
//!   frames, slowloris, idle connection floods).
//! * [`load`]: many concurrent connections in mixed misbehaviours against one box, and
//!   a probe that measures a well-behaved instrument's ack latency meanwhile.
//! * [`StatusText`]: realistic, slowly varying status payloads.
//! * [`FileAgent`]: the agent's file side (protocol version 2 on a connection of its own):
//!   pulls the files the box offers, checks and stores them, offers uploads and resumes them.
//! * [`ConsentAgent`]: the person at the instrument who approves, declines or revokes remote
//!   sessions (protocol version 2, sessions capability).
//!
//! The frame format is [`rapwire::agent`]'s; this crate never defines its own.

mod consent;
#[cfg(test)]
mod fakebox;
mod files;
mod idset;
mod instrument;
pub mod load;
mod payload;
pub mod raw;
mod stats;

use std::net::SocketAddr;

pub use consent::{AskSeen, ConsentAgent, Decision, Reply, RunningConsent};
pub use files::{hash_file, inventory, FileAgent, OfferSeen, RunningFileAgent, StoredFile, UploadState};
pub use idset::IdSet;
pub use instrument::{
    now_ms, Instrument, RunningInstrument, Summary, DEFAULT_PAYLOAD, DEFAULT_WINDOW, STATUS_PRIORITY,
};
pub use payload::{StatusText, ALARMS, READINGS};
pub use stats::{Rejection, Stats, StatsSnapshot};

/// Why a simulated instrument (or a raw helper) failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration cannot produce valid messages.
    #[error("instrument {serial}: invalid configuration: {what}")]
    Config { serial: String, what: String },
    /// Nothing was acked or rejected for `stall_timeout`.
    #[error("instrument {serial}: no progress for {secs} s talking to {addr} ({outstanding} messages unacknowledged)")]
    Stalled { serial: String, addr: SocketAddr, outstanding: usize, secs: u64 },
    /// A socket operation failed.
    #[error("{op} ({addr}): {source}")]
    Io {
        addr: SocketAddr,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("instrument {serial}: starting a thread: {source}")]
    Spawn {
        serial: String,
        #[source]
        source: std::io::Error,
    },
    /// The instrument's thread panicked.
    #[error("instrument {serial}: thread panicked")]
    Panicked { serial: String },
}
