//! A long uplink outage with the byte quota reached, time-compressed: simulated
//! instruments → real rapd (FIPS mode) → real nginx mTLS front door → rapdc.
//!
//! Scaling: a day of reports is a number of messages, not a duration. Each instrument
//! reports `RAPBOX_OUTAGE_RATE` messages per second of simulated time (default 1, a busy
//! analyzer: status, results and events together), 1 in 100 of them an alarm; the outage
//! lasts `RAPBOX_OUTAGE_HOURS` simulated hours (CI default 2; the documented full run is
//! 24), so each instrument sends rate × hours × 3600 messages — sent as fast as rapd
//! acknowledges them, which compresses the outage into seconds. Nothing in the queue
//! depends on wall time while the uplink is down (eviction is by priority and age
//! order, the delivered-id memory only grows on delivery), so the queue ends in the
//! state a real day would leave; what compression does not reproduce is the number of
//! reconnection attempts (bounded by the backoff, here at most 1 s apart).
//!
//! Afterwards: every acknowledged alarm is delivered exactly once, every acknowledged
//! routine message is either delivered exactly once or counted as dropped, and the
//! data center's dropped_total equals rapd's. The drain rate after recovery is printed
//! (docs/reliability.md records the full run, built with `--release`).
//!
//! Full scale:
//! `RAPBOX_OUTAGE_HOURS=24 RAPBOX_OUTAGE_QUOTA_MIB=32 cargo test --release -p rapbox --test outage -- --nocapture`

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::rapd::{audit_queued, depth, Rapd};
use common::{instrument_addr, World, BOX_ID};
use rapsim::Instrument;
use rapwire::Kind;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

struct Sent {
    serial: String,
    alarms: BTreeSet<u64>,
    routine: BTreeSet<u64>,
}

/// Runs one instrument per address until `per` messages each are acknowledged; splits
/// the acknowledged ids into alarms and routine by the instrument's own alarm pattern.
fn ingest(instruments: &[(String, std::net::SocketAddr)], per: u64, first_id: u64) -> Vec<Sent> {
    let runs: Vec<_> = instruments
        .iter()
        .map(|(s, a)| {
            let i = Instrument {
                count: Some(per),
                alarm_every: 100,
                first_id,
                drain_timeout: Duration::from_secs(60),
                ..Instrument::new(*a, s.clone())
            };
            let pattern = i.clone();
            (pattern, i.spawn().expect("simulator"))
        })
        .collect();
    runs.into_iter()
        .map(|(pattern, r)| {
            let stats = r.stats().clone();
            let sum = r.join().expect("instrument run");
            assert_eq!(sum.stats.acked, per, "{}: every message is acknowledged: {:?}", sum.serial, sum.stats);
            assert_eq!(sum.stats.rejected, 0, "{}: {:?}", sum.serial, sum.stats);
            let (alarms, routine) = stats.acked_ids().iter().partition(|id| pattern.is_alarm(id - first_id));
            Sent { serial: sum.serial, alarms, routine }
        })
        .collect()
}

#[test]
fn day_long_outage_with_quota_reached_delivers_every_alarm_and_counts_every_drop() {
    let hours = env_u64("RAPBOX_OUTAGE_HOURS", 2);
    let rate = env_u64("RAPBOX_OUTAGE_RATE", 1);
    let n_inst = env_u64("RAPBOX_OUTAGE_INSTRUMENTS", 4);
    let quota_mib = env_u64("RAPBOX_OUTAGE_QUOTA_MIB", 4);
    let per_outage = rate * hours * 3600;
    let per_before = rate * 600;

    let mut w = World::new("outage");
    w.start_nginx();
    let instruments: Vec<(String, std::net::SocketAddr)> =
        (0..n_inst).map(|i| (format!("OUT-{i:04}"), instrument_addr())).collect();
    let mut spec = w.rapd_spec();
    spec.instruments = instruments.clone();
    spec.quota_bytes = quota_mib << 20;
    let rapd = Rapd::start(&spec);

    // Ten minutes of normal operation: delivered as it arrives.
    let before = ingest(&instruments, per_before, 1);
    rapd.wait_status("delivery before the outage", Duration::from_secs(60), |s| depth(s) == 0);
    let sent_before = rapd.status().uplink["records_sent"].as_u64().unwrap();

    // The uplink goes down; a day (or `hours`) of reports arrives.
    w.stop_nginx();
    let t = Instant::now();
    let during = ingest(&instruments, per_outage, 1_000_000_000);
    let ingest_s = t.elapsed().as_secs_f64();
    let st = rapd.status();
    let dropped = st.queue["dropped_total"].as_u64().unwrap();
    let backlog = depth(&st);
    let total = n_inst * per_outage;
    eprintln!(
        "outage: {n_inst} instruments × {rate}/s × {hours} h = {total} messages acknowledged in {ingest_s:.1} s \
         ({:.0}× compressed); quota {quota_mib} MiB: {backlog} queued ({} bytes), {dropped} routine dropped; \
         uplink attempts {}",
        (hours * 3600) as f64 / ingest_s,
        st.queue["bytes"],
        st.uplink["consecutive_failures"]
    );
    assert!(dropped > 0, "the quota was reached: {st:?}");
    assert!(st.queue["bytes"].as_u64().unwrap() <= quota_mib << 20, "the queue stays within its quota");
    assert_eq!(st.uplink["records_sent"].as_u64().unwrap(), sent_before, "nothing left during the outage");
    assert_eq!(st.queue["refused_full_total"], 0, "no message was refused: alarms fit in the quota");

    // The uplink comes back: the backlog drains.
    let t = Instant::now();
    w.start_nginx();
    let st = rapd.wait_status("the backlog to drain", Duration::from_secs(600), |s| depth(s) == 0);
    let drain_s = t.elapsed().as_secs_f64();
    let drained = st.uplink["records_sent"].as_u64().unwrap() - sent_before;
    eprintln!(
        "recovery: {drained} records drained in {drain_s:.2} s = {:.0} records/s (from nginx start to depth 0)",
        drained as f64 / drain_s
    );

    // What the data center holds.
    let reports = w.client.all_reports(Some(BOX_ID), None).expect("reports");
    let mut at_dc: HashMap<&str, (BTreeSet<u64>, BTreeSet<u64>)> = HashMap::new();
    let mut keys = BTreeSet::new();
    for r in reports.iter().filter(|r| !r.instrument.is_empty()) {
        assert!(keys.insert((r.instrument.clone(), r.msg_id)), "stored twice: {} {}", r.instrument, r.msg_id);
        assert_eq!(r.deliveries, 1, "{} {} delivered {} times", r.instrument, r.msg_id, r.deliveries);
        let e = at_dc.entry(r.instrument.as_str()).or_default();
        if r.kind == Kind::Alarm {
            e.0.insert(r.msg_id);
        } else {
            e.1.insert(r.msg_id);
        }
    }
    // The drain itself, by the data center's receive times of the backlog (without the
    // up to one backoff interval before rapd's first attempt after nginx came up).
    let backlog_rx: Vec<i64> = reports
        .iter()
        .filter(|r| !r.instrument.is_empty() && r.msg_id >= 1_000_000_000)
        .map(|r| r.received_ms)
        .collect();
    let (first, last) = (backlog_rx.iter().min().copied().unwrap_or(0), backlog_rx.iter().max().copied().unwrap_or(0));
    eprintln!(
        "drain at the data center: {} backlog records received over {:.2} s = {:.0} records/s",
        backlog_rx.len(),
        (last - first) as f64 / 1000.0,
        backlog_rx.len() as f64 / ((last - first).max(1) as f64 / 1000.0)
    );
    let mut lost_routine = 0u64;
    let mut alarms_total = 0usize;
    for (b, d) in before.iter().zip(&during) {
        let (alarms, routine) = at_dc.remove(b.serial.as_str()).unwrap_or_default();
        let acked_alarms: BTreeSet<u64> = b.alarms.union(&d.alarms).copied().collect();
        assert_eq!(alarms, acked_alarms, "{}: every acknowledged alarm is delivered, and nothing else", b.serial);
        alarms_total += alarms.len();
        let acked_routine: BTreeSet<u64> = b.routine.union(&d.routine).copied().collect();
        let unknown: Vec<_> = routine.difference(&acked_routine).take(5).collect();
        assert!(unknown.is_empty(), "{}: delivered but never acknowledged: {unknown:?}", b.serial);
        assert!(b.routine.is_subset(&routine), "{}: routine messages from before the outage were delivered", b.serial);
        lost_routine += (acked_routine.len() - routine.len()) as u64;
    }
    assert!(at_dc.is_empty(), "reports from unknown instruments: {:?}", at_dc.keys());
    let dc_dropped = w.client.stats().expect("dc stats").for_box(BOX_ID).expect("box stats").dropped_total;
    let final_dropped = rapd.status().queue["dropped_total"].as_u64().unwrap();
    assert_eq!(final_dropped, dropped, "nothing was dropped after ingest stopped");
    assert_eq!(lost_routine, final_dropped, "every acknowledged routine message not delivered is counted as dropped");
    assert_eq!(dc_dropped, final_dropped, "the data center's dropped_total equals rapd's");
    eprintln!(
        "delivered: {alarms_total} alarms (all), {} routine; {final_dropped} routine dropped and reported; \
         {} audit records",
        keys.len() - alarms_total,
        audit_queued(&rapd.status())
    );
}
