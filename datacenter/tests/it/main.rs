//! Integration tests of rapdc, one binary (`cargo test -p rapdc --test it`):
//! * `backend`: the backend over real HTTP on an ephemeral loopback port;
//! * `frontdoor`: real nginx with the rendered config in front of a backend, mutual TLS
//!   with a throwaway PKI (skipped, with a printed reason, when nginx is not installed);
//! * `triggers`: rules on scripted and simulated report streams through the backend, and a
//!   real batch through the nginx front door raising an alert;
//! * `dashboard`: the staff dashboard through the front door's staff listener, in headless
//!   Chromium (screenshot in `target/screenshots/`);
//! * `throughput`: ignored measurements (`-- --ignored --nocapture`).
//!
//! A real peer that is not installed (nginx, chromium) skips its tests with a printed
//! reason, except under CI (`CI` set), where it fails them: CI installs every peer.

mod backend;
mod dashboard;
mod frontdoor;
mod pki;
mod throughput;
mod triggers;

use rapdc::{Client, Server, ServerConfig, Store};
use rapwire::batch::{Encoder, Record};
use rapwire::Kind;

/// A backend on an ephemeral loopback port with its database in a fresh directory.
pub struct Backend {
    pub server: Server,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl Backend {
    pub fn start() -> Backend {
        Backend::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Backend {
        Backend::start_full(|s| s, tweak)
    }

    /// A backend whose store and configuration the caller adjusts (a clock, rules).
    pub fn start_full(store: impl FnOnce(Store) -> Store, tweak: impl FnOnce(&mut ServerConfig)) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = store(Store::open(&dir.path().join("dc.sqlite")).unwrap());
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
        tweak(&mut config);
        let server = Server::start(config, store).unwrap();
        let client = Client::new(server.url());
        Backend { server, client, dir }
    }
}

/// Reports that a real peer is missing: a skip locally, a failure under CI.
pub fn missing(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("missing under CI: {what}");
    }
    eprintln!("SKIPPED: no {what}");
}

pub const BOX1: &str = "CN=box-0001,O=rapbox";
pub const BOX2: &str = "CN=box-0002,O=rapbox";

/// `n` records: instruments A-1 and B-2 alternating, every tenth an alarm.
pub fn records(first_id: u64, n: u64) -> Vec<Record> {
    (first_id..first_id + n)
        .map(|i| Record {
            instrument: if i % 2 == 0 { "A-1".into() } else { "B-2".into() },
            msg_id: i,
            timestamp_ms: 1_700_000_000_000 + i as i64 * 100,
            kind: if i % 10 == 0 { Kind::Alarm } else { Kind::Status },
            priority: if i % 10 == 0 { 0 } else { 2 },
            payload: format!("temp=37.{} reagent={}% door=closed seq={i}", i % 10, 90 - i % 50).into_bytes(),
        })
        .collect()
}

pub fn encode(batch_id: u64, dropped_total: u64, recs: &[Record]) -> Vec<u8> {
    let mut e = Encoder::new(batch_id, dropped_total);
    for r in recs {
        e.push(&r.instrument, r.msg_id, r.timestamp_ms, r.kind, r.priority, &r.payload);
    }
    e.finish()
}
