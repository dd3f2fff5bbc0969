//! rapdc: the reference data center of rapbox.
//!
//! Boxes reach it through an nginx front door that terminates mutual TLS and passes the
//! verified certificate subject to a synchronous backend on loopback, which stores the
//! reports of every batch exactly once in SQLite and acknowledges each batch idempotently.
//! Trigger rules are evaluated on the stored reports and raise alerts; staff see boxes,
//! instruments and alerts on a dashboard served through the front door's staff listener.
//!
//! ```text
//! box ──HTTPS, mTLS──▶ nginx (frontdoor) ──HTTP, X-Client-Subject──▶ backend (http) ──▶ store (SQLite)
//!                                                                        ▲
//!                              tests, operators ──client (loopback)──────┘
//! ```
//!
//! Modules, one concern each:
//! * [`api`]: the JSON types and paths of the HTTP API, shared by server and client;
//! * [`identity`]: the box identity (certificate CN) from the front door's headers;
//! * [`store`]: the only code that touches the database;
//! * [`http`]: the backend: routing, the batch endpoint, query and admin endpoints;
//! * [`frontdoor`]: the nginx configuration and a runner for tests;
//! * [`client`]: a blocking client of the backend;
//! * [`clock`]: server time, injectable for tests;
//! * [`fields`]: values inside report payloads;
//! * [`rules`]: the trigger rule files, loaded and validated;
//! * [`triggers`]: the engine that evaluates rules on stored reports and raises alerts;
//! * [`dashboard`]: the staff dashboard page;
//! * [`commands`]: the command queue (tables of its own) and [`channel`], its HTTP side:
//!   commands leave in batch acknowledgements and exchange answers, results come back in
//!   exchanges (`docs/commands.md`);
//! * [`transfers`]: download content served with `Range` and uploads received in chunks
//!   (`docs/transfers.md`).
//!
//! The batch format and its acknowledgement are `rapwire::batch`, shared with the box.

pub mod api;
pub mod channel;
pub mod client;
pub mod clock;
pub mod commands;
pub mod dashboard;
pub mod fields;
pub mod frontdoor;
pub mod http;
pub mod identity;
pub mod rules;
pub mod signing;
pub mod store;
pub mod transfers;
pub mod triggers;

pub use client::Client;
pub use frontdoor::FrontDoor;
pub use http::{Server, ServerConfig};
pub use store::Store;
