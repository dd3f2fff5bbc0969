//! rapbox's runtime: the `rapd` daemon and the `rapctl` console tool are thin binaries
//! over this library.
//!
//! Data flows one way — instrument agent → [`ingest`] → [`queue`] → [`uplink`] → data
//! center — and every resource has one owner: only the queue touches the database,
//! only the uplink talks to the data center. Commands flow back: the uplink hands what the
//! data center sends to the [`commands`] dispatcher, which runs each once and reports. [`control`] answers questions about all
//! of it on a local Unix socket. [`fips`] decides whether any of it may start.
//! [`reconfig`] applies a new configuration while rapd runs.

pub mod agents;
pub mod audit;
pub mod certs;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod fips;
pub mod firewall;
pub mod ingest;
pub mod logging;
pub mod logins;
pub mod memory;
pub mod peer;
pub mod ports;
pub mod queue;
pub mod reconfig;
pub mod sessions;
pub mod syslog_conf;
pub mod tls;
pub mod transfers;
pub mod uplink;
pub mod uplink_settings;

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
    /// Stopped cleanly to start again with a new configuration (systemd's `Restart=always`
    /// starts it; without systemd rapd executes itself again instead of exiting).
    pub const RESTART: i32 = 6;
}
