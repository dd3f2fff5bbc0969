//! Measurements, not timed tests: ignored by default. Run in release:
//!
//! ```text
//! cargo test -j1 -p rapdc --release --test it -- --ignored --nocapture throughput
//! ```
//!
//! Records look like routine status: 200-byte payloads from 8 instruments, 10,000 records
//! per batch, stored in a file database (WAL, synchronous=FULL).

use std::time::Instant;

use rapdc::rules::RuleSet;
use rapdc::triggers::Engine;
use rapdc::Store;
use rapwire::batch::{self, Batch, Record};
use rapwire::Kind;

use crate::{encode, Backend, BOX1};

const PER_BATCH: u64 = 10_000;
const BATCHES: u64 = 50;

fn status_records(batch: u64) -> Vec<Record> {
    (0..PER_BATCH)
        .map(|i| {
            let n = batch * PER_BATCH + i;
            let mut payload =
                format!("status seq={n} temp=37.{} reagent={}% door=closed lamp=ok ", n % 10, 90 - n % 50).into_bytes();
            payload.resize(200, b'.');
            Record {
                instrument: format!("SN-{:04}", n % 8),
                msg_id: n / 8,
                timestamp_ms: 1_700_000_000_000 + n as i64,
                kind: Kind::Status,
                priority: 2,
                payload,
            }
        })
        .collect()
}

#[test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
fn throughput_store_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dc.sqlite")).unwrap();
    let batches: Vec<Batch> =
        (0..BATCHES).map(|b| Batch { batch_id: b, dropped_total: 0, records: status_records(b) }).collect();
    let start = Instant::now();
    for b in &batches {
        assert_eq!(store.ingest("box-0001", b).unwrap().ack.accepted, PER_BATCH);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = (BATCHES * PER_BATCH) as f64;
    println!("store ingest: {} records in {secs:.2} s = {:.0} records/s", n, n / secs);
    // Re-delivery of everything in new batches (all duplicates).
    let start = Instant::now();
    for b in &batches {
        let again = Batch { batch_id: b.batch_id + 1_000_000, ..b.clone() };
        assert_eq!(store.ingest("box-0001", &again).unwrap().ack.duplicates, PER_BATCH);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("store duplicates: {} records in {secs:.2} s = {:.0} records/s", n, n / secs);
}

#[test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
fn throughput_http_post() {
    let b = Backend::start();
    let bodies: Vec<Vec<u8>> = (0..BATCHES).map(|i| encode(i, 0, &status_records(i))).collect();
    let wire: usize = bodies.iter().map(Vec::len).sum();
    let start = Instant::now();
    for body in &bodies {
        assert_eq!(b.client.post_batch(BOX1, body).unwrap().accepted, PER_BATCH);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = (BATCHES * PER_BATCH) as f64;
    println!(
        "HTTP POST (decode + store): {} records in {secs:.2} s = {:.0} records/s, {:.1} compressed bytes/record",
        n,
        n / secs,
        wire as f64 / n
    );
    let start = Instant::now();
    for body in &bodies {
        batch::decode(body).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("decode alone: {:.0} records/s", n / secs);
}

#[test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
fn throughput_trigger_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dc.sqlite")).unwrap();
    // Rules first: they apply to the reports stored after they were loaded.
    let rules = RuleSet::load(&[std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")]).unwrap();
    let engine = Engine::new(rules, store.clock());
    engine.prepare(&store).unwrap();
    for b in 0..BATCHES {
        store.ingest("box-0001", &Batch { batch_id: b, dropped_total: 0, records: status_records(b) }).unwrap();
    }
    let start = Instant::now();
    let pass = engine.evaluate(&store).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(pass.reports, BATCHES * PER_BATCH);
    println!(
        "trigger evaluation (datacenter/rules/example.toml, {} rules): {} reports in {secs:.2} s = {:.0} reports/s, {} alerts raised",
        engine.rules().len(),
        pass.reports,
        pass.reports as f64 / secs,
        pass.raised
    );
}
