//! rapbox's runtime: the `rapd` daemon and the `rapctl` console tool are thin binaries
//! over this library.
//!
//! Data flows one way — instrument agent → [`ingest`] → [`queue`] → [`uplink`] → data
//! center — and every resource has one owner: only the queue touches the database,
//! only the uplink talks to the data center. [`control`] answers questions about all
//! of it on a local Unix socket. [`fips`] decides whether any of it may start.

pub mod audit;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fips;
pub mod firewall;
pub mod ingest;
pub mod logging;
pub mod memory;
pub mod ports;
pub mod queue;
pub mod tls;
pub mod uplink;

/// Process exit codes of `rapd` (also documented in `docs/operations.md`).
pub mod exit {
    /// Clean shutdown after SIGTERM/SIGINT.
    pub const OK: i32 = 0;
    /// An unexpected runtime failure.
    pub const FAILURE: i32 = 1;
    /// Bad command line or configuration.
    pub const CONFIG: i32 = 2;
    /// The FIPS gate refused: no network I/O was attempted.
    pub const FIPS: i32 = 3;
    /// The queue database cannot be opened, migrated or is corrupt.
    pub const QUEUE: i32 = 4;
    /// An instrument port or the control socket cannot be bound.
    pub const LISTEN: i32 = 5;
}
