//! Scripted report streams against the engine, with the data center's clock in the test's
//! hand: every rule kind fires on a matching stream and stays silent on the near-miss just
//! beside it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rapwire::batch::{Batch, Record};
use rapwire::Kind;

use super::*;
use crate::api::{Alert, AlertQuery, AlertState};
use crate::clock::ManualClock;

/// 2026-01-01 08:00:00Z.
const T0: i64 = 1_767_254_400_000;

fn at(d: Duration) -> i64 {
    T0 + d.as_millis() as i64
}

const fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

const fn m(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

struct Rig {
    store: Store,
    engine: Engine,
    clock: ManualClock,
    msg: u64,
    batch: u64,
}

impl Rig {
    fn new(rules: &str) -> Rig {
        Rig::with_store(rules, Store::open_in_memory().unwrap())
    }

    fn with_store(rules: &str, store: Store) -> Rig {
        let clock = ManualClock::at(T0);
        let store = store.with_clock(Arc::new(clock.clone()));
        let rules = RuleSet::parse(Path::new("test.toml"), rules).unwrap();
        let engine = Engine::new(rules, store.clock());
        engine.prepare(&store).unwrap();
        Rig { store, engine, clock, msg: 0, batch: 0 }
    }

    /// One batch from box-1; every record `(instrument, instrument time, kind, payload)`;
    /// the data center receives it at the newest instrument time (or later, if the clock
    /// is already later).
    fn batch(&mut self, recs: &[(&str, Duration, Kind, &str)]) {
        let newest = recs.iter().map(|r| at(r.1)).max().unwrap_or(T0);
        if newest > self.clock.now_ms() {
            self.clock.set(newest);
        }
        let records = recs
            .iter()
            .map(|(instrument, t, kind, payload)| {
                self.msg += 1;
                Record {
                    instrument: (*instrument).into(),
                    msg_id: self.msg,
                    timestamp_ms: at(*t),
                    kind: *kind,
                    priority: if *kind == Kind::Alarm { 0 } else { 2 },
                    payload: payload.as_bytes().to_vec(),
                }
            })
            .collect();
        self.batch += 1;
        self.store.ingest("box-1", &Batch { batch_id: self.batch, dropped_total: 0, records }).unwrap();
    }

    fn send(&mut self, instrument: &str, t: Duration, kind: Kind, payload: &str) -> Pass {
        self.batch(&[(instrument, t, kind, payload)]);
        self.engine.evaluate(&self.store).unwrap()
    }

    fn status(&mut self, instrument: &str, t: Duration, payload: &str) -> Pass {
        self.send(instrument, t, Kind::Status, payload)
    }

    fn tick_at(&self, t: Duration) -> Pass {
        self.clock.set(at(t));
        self.engine.tick(&self.store).unwrap()
    }

    fn alerts(&self) -> Vec<Alert> {
        self.store.alerts(&AlertQuery::default()).unwrap().alerts
    }

    fn open(&self) -> Vec<Alert> {
        self.store.alerts(&AlertQuery::open()).unwrap().alerts
    }
}

const THRESHOLD: &str = r#"
[[rule]]
name = "reagent-low"
kind = "threshold"
kinds = ["status"]
field = "reagent_*"
below = 10
clear_at = 12
"#;

#[test]
fn threshold_fires_below_and_is_silent_at_the_threshold() {
    let mut r = Rig::new(THRESHOLD);
    r.status("DXI-1", s(0), "temp=37.0;reagent_A=12%;reagent_B=40%");
    r.status("DXI-1", s(10), "temp=37.0;reagent_A=11%;reagent_B=40%");
    let p = r.status("DXI-1", s(20), "temp=37.0;reagent_A=10%;reagent_B=40%");
    assert_eq!(p, Pass { reports: 1, raised: 0, cleared: 0 });
    assert!(r.alerts().is_empty(), "10% is not below 10%");
    // An alarm saying 1% is not a status report: not selected.
    r.send("DXI-1", s(25), Kind::Alarm, "alarm=REAGENT_LOW;reagent_A=1%");
    assert!(r.alerts().is_empty());

    let p = r.status("DXI-1", s(30), "temp=37.0;reagent_A=9.5%;reagent_B=40%");
    assert_eq!(p.raised, 1);
    let open = r.open();
    assert_eq!(open.len(), 1);
    let a = &open[0];
    assert_eq!(
        (a.rule.as_str(), a.rule_kind.as_str(), a.box_id.as_str(), a.instrument.as_str()),
        ("reagent-low", "threshold", "box-1", "DXI-1")
    );
    assert_eq!(a.key, "reagent_A");
    assert_eq!(a.summary, "reagent_A=9.5% is below 10");
    assert_eq!(a.raised_ms, at(s(30)));
    let ev = &a.evidence.reports;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].field.as_deref(), ev[0].value.as_deref(), ev[0].timestamp_ms),
        (Some("reagent_A"), Some("9.5%"), at(s(30)))
    );
    assert_eq!(ev[0].report_id, Some(5));
    assert_eq!(ev[0].kind, Some(Kind::Status));

    // Lower still, and another reagent low: one alert repeated, one new (per field).
    r.status("DXI-1", s(40), "reagent_A=8%;reagent_B=5%");
    let open = r.open();
    assert_eq!(open.len(), 2);
    assert_eq!(open[0].repeats, 1);
    assert_eq!(open[0].updated_ms, at(s(40)));
    assert_eq!(open[1].key, "reagent_B");

    // Another instrument is its own unit.
    r.status("AU-7", s(41), "reagent_A=3%");
    assert_eq!(r.open().len(), 3);

    // Hysteresis: 11% is no longer below 10 but has not reached 12: still open.
    r.status("DXI-1", s(50), "reagent_A=11%;reagent_B=5%");
    assert_eq!(r.open().iter().filter(|a| a.instrument == "DXI-1").count(), 2);
    let p = r.status("DXI-1", s(60), "reagent_A=12%;reagent_B=5%");
    assert_eq!(p.cleared, 1);
    let a = r.alerts().into_iter().find(|a| a.key == "reagent_A" && a.instrument == "DXI-1").unwrap();
    assert_eq!(a.state, AlertState::Cleared);
    assert_eq!(a.cleared_ms, Some(at(s(60))));
    assert_eq!(a.clear_reason.as_deref(), Some("reagent_A=12% in report 9 reached 12"));
    assert_eq!(a.cleared_by.as_ref().and_then(|e| e.value.as_deref()), Some("12%"));

    // A late reading (older than one already evaluated) changes nothing.
    r.status("DXI-1", s(55), "reagent_A=1%;reagent_B=5%");
    assert_eq!(r.open().iter().filter(|a| a.key == "reagent_A" && a.instrument == "DXI-1").count(), 0);
    assert_eq!(r.engine.status(&r.store).unwrap().late_readings, 2);

    // Low again: a new alert, not the old one reopened.
    r.status("DXI-1", s(70), "reagent_A=7%;reagent_B=5%");
    let again: Vec<Alert> =
        r.alerts().into_iter().filter(|a| a.key == "reagent_A" && a.instrument == "DXI-1").collect();
    assert_eq!(again.len(), 2);
    assert_eq!(again[1].state, AlertState::Open);
    assert_eq!(again[1].evidence.reports[0].value.as_deref(), Some("7%"));
}

#[test]
fn threshold_on_json_payloads_and_text() {
    let mut r = Rig::new(
        r#"
        [[rule]]
        name = "door-open"
        kind = "threshold"
        field = "door"
        equals = "open"

        [[rule]]
        name = "hot"
        kind = "threshold"
        severity = "critical"
        field = "sensors.incubator"
        above = 38.5
        "#,
    );
    r.status("X-1", s(0), r#"{"door":"closed","sensors":{"incubator":38.5}}"#);
    assert!(r.alerts().is_empty(), "38.5 is not above 38.5");
    r.status("X-1", s(1), r#"{"door":"open","sensors":{"incubator":38.6}}"#);
    let open = r.open();
    assert_eq!(
        open.iter().map(|a| (a.rule.as_str(), a.severity)).collect::<Vec<_>>(),
        [("door-open", crate::rules::Severity::Warning), ("hot", crate::rules::Severity::Critical)]
    );
    // A reading that is not a number neither raises nor clears a numeric rule.
    r.status("X-1", s(2), r#"{"door":"closed","sensors":{"incubator":"n/a"}}"#);
    let open = r.open();
    assert_eq!(open.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(), ["hot"]);
}

const COUNT: &str = r#"
[[rule]]
name = "same-error"
kind = "count"
kinds = ["alarm"]
field = "code"
count = 3
within = "1h"
"#;

fn alarm(code: &str) -> String {
    format!("alarm=CLOT_DETECTED;code={code};severity=high;temp=37.0")
}

#[test]
fn count_fires_on_three_same_codes_within_an_hour_and_not_on_near_misses() {
    let mut r = Rig::new(COUNT);
    r.send("DXI-1", m(0), Kind::Alarm, &alarm("E201"));
    r.send("DXI-1", m(30), Kind::Alarm, &alarm("E201"));
    assert!(r.alerts().is_empty(), "2 of 3");
    // A third error, but another code.
    r.send("DXI-1", m(35), Kind::Alarm, &alarm("E305"));
    assert!(r.alerts().is_empty(), "not the same code");
    // Status reports carrying the code do not count (kinds = alarm).
    r.status("DXI-1", m(36), "code=E201");
    assert!(r.alerts().is_empty());
    // The third E201 one second too late for the first: 3 in 1h 0m 1s.
    r.send("DXI-1", m(60) + s(1), Kind::Alarm, &alarm("E201"));
    assert!(r.alerts().is_empty(), "3 within 1h0m1s is not 3 within 1h");
    // Another one: 30m, 60m1s, 70m are within the hour.
    let p = r.send("DXI-1", m(70), Kind::Alarm, &alarm("E201"));
    assert_eq!(p.raised, 1);
    let a = &r.open()[0];
    assert_eq!((a.key.as_str(), a.summary.as_str()), ("E201", "code=E201 3 times within 1h"));
    let times: Vec<i64> = a.evidence.reports.iter().map(|e| e.timestamp_ms).collect();
    assert_eq!(times, [at(m(30)), at(m(60) + s(1)), at(m(70))]);
    assert_eq!(a.evidence.reports.iter().map(|e| e.report_id.unwrap()).collect::<Vec<_>>(), [2, 5, 6]);
    assert!(a.evidence.reports.iter().all(|e| e.value.as_deref() == Some("E201")));
    assert_eq!((a.evidence.matched, a.evidence.span_ms), (3, Some(m(40).as_millis() as i64)));

    // More of the same while open: repeats, no second alert.
    r.send("DXI-1", m(75), Kind::Alarm, &alarm("E201"));
    assert_eq!(r.alerts().len(), 1);
    assert_eq!(r.open()[0].repeats, 1);
    // It clears once an hour passes on the data center's clock without another E201.
    r.tick_at(m(75) + m(59) + s(59));
    assert_eq!(r.open().len(), 1);
    let p = r.tick_at(m(75) + m(60));
    assert_eq!(p.cleared, 1);
    let a = &r.alerts()[0];
    assert_eq!(a.clear_reason.as_deref(), Some("no matching report for 1h"));
    // After clearing, three more are needed.
    r.send("DXI-1", m(140), Kind::Alarm, &alarm("E201"));
    r.send("DXI-1", m(141), Kind::Alarm, &alarm("E201"));
    assert_eq!(r.alerts().len(), 1);
    r.send("DXI-1", m(142), Kind::Alarm, &alarm("E201"));
    assert_eq!(r.alerts().len(), 2);
}

#[test]
fn count_window_is_inclusive_and_counts_a_backlog_out_of_order() {
    let mut r = Rig::new(COUNT);
    // Exactly one hour from first to third.
    r.send("A-1", m(0), Kind::Alarm, &alarm("E9"));
    r.send("A-1", m(20), Kind::Alarm, &alarm("E9"));
    r.send("A-1", m(60), Kind::Alarm, &alarm("E9"));
    assert_eq!(r.open().len(), 1, "3 within exactly 1h");
    // A backlog delivered after an outage, newest first in one batch, judged by instrument time.
    r.batch(&[
        ("B-2", m(50), Kind::Alarm, &alarm("E7")),
        ("B-2", m(40), Kind::Alarm, &alarm("E7")),
        ("B-2", m(10), Kind::Alarm, &alarm("E7")),
    ]);
    r.engine.evaluate(&r.store).unwrap();
    let b: Vec<Alert> = r.open().into_iter().filter(|a| a.instrument == "B-2").collect();
    assert_eq!(b.len(), 1);
    let times: Vec<i64> = b[0].evidence.reports.iter().map(|e| e.timestamp_ms).collect();
    assert_eq!(times, [at(m(10)), at(m(40)), at(m(50))]);
    // A count rule without a field counts every selected report.
    let mut r =
        Rig::new("[[rule]]\nname = \"alarms\"\nkind = \"count\"\nkinds = [\"alarm\"]\ncount = 2\nwithin = \"10m\"\n");
    r.send("A-1", m(0), Kind::Alarm, &alarm("E1"));
    r.send("A-1", m(11), Kind::Alarm, &alarm("E2"));
    assert!(r.alerts().is_empty());
    r.send("A-1", m(12), Kind::Alarm, "anything");
    assert_eq!(r.open()[0].summary, "report 2 times within 10m");
}

const DURATION: &str = r#"
[[rule]]
name = "temp-out-of-range"
kind = "duration"
kinds = ["status"]
field = "temp"
outside = [36.0, 38.0]
for = "5m"
"#;

#[test]
fn duration_fires_after_five_minutes_out_of_range_and_not_after_4m59s() {
    let mut r = Rig::new(DURATION);
    // Near miss: out of range from 1m00s to 5m59s (4m59s), back in range at 6m00s.
    r.status("DXI-1", s(0), "temp=37.2");
    let mut t = s(60);
    while t <= s(359) {
        r.status("DXI-1", t, "temp=38.4");
        t += s(13);
    }
    r.status("DXI-1", s(359), "temp=38.6");
    assert!(r.alerts().is_empty(), "4m59s out of range");
    r.status("DXI-1", s(360), "temp=37.9");
    assert!(r.alerts().is_empty());

    // Out of range from 7m00s; a reading that is not a number does not break the run.
    r.status("DXI-1", m(7), "temp=35.5");
    r.status("DXI-1", m(9), "temp=ERR");
    r.status("DXI-1", m(11), "temp=35.8");
    assert!(r.alerts().is_empty());
    let p = r.status("DXI-1", m(12), "temp=35.9");
    assert_eq!(p.raised, 1, "5m00s out of range");
    let a = &r.open()[0];
    assert_eq!((a.key.as_str(), a.summary.as_str()), ("temp", "temp outside [36, 38] for 5m"));
    let ev = &a.evidence;
    assert_eq!(
        ev.reports.iter().map(|e| (e.timestamp_ms, e.value.as_deref())).collect::<Vec<_>>(),
        [(at(m(7)), Some("35.5")), (at(m(12)), Some("35.9"))]
    );
    assert_eq!((ev.matched, ev.span_ms, ev.first_ms, ev.last_ms), (3, Some(300_000), Some(at(m(7))), Some(at(m(12)))));
    assert!(ev.detail.contains("values 35.5 to 35.9"), "{}", ev.detail);

    r.status("DXI-1", m(13), "temp=35.0");
    assert_eq!(r.open()[0].repeats, 1);
    let p = r.status("DXI-1", m(14), "temp=36.0");
    assert_eq!(p.cleared, 1, "36.0 is inside [36, 38]");
    assert_eq!(r.alerts()[0].clear_reason.as_deref(), Some("temp=36.0 in report 33 is no longer outside [36, 38]"));
}

const ABSENCE: &str = r#"
[[rule]]
name = "silent"
kind = "absence"
for = "15m"
"#;

#[test]
fn absence_fires_on_the_clock_after_15_minutes_and_not_after_a_report_at_14m59s() {
    let mut r = Rig::new(ABSENCE);
    r.status("DXI-1", s(0), "temp=37");
    r.status("AU-2", s(0), "temp=37");
    r.status("DXI-1", m(14) + s(59), "temp=37");
    // 15 minutes after the start: AU-2 has been silent for 15m, DXI-1 only for 1s.
    r.tick_at(m(14) + s(59));
    assert!(r.alerts().is_empty(), "14m59s of silence");
    let p = r.tick_at(m(15));
    assert_eq!(p.raised, 1);
    let a = &r.open()[0];
    assert_eq!((a.instrument.as_str(), a.summary.as_str(), a.key.as_str()), ("AU-2", "no report for 15m", ""));
    assert_eq!(a.evidence.reports[0].report_id, Some(2));
    assert_eq!(a.evidence.span_ms, Some(900_000));
    // Ticks while it stays silent do not raise it again.
    r.tick_at(m(20));
    assert_eq!(r.alerts().len(), 1);
    // DXI-1 reported at 14m59s: silent at 29m58s, alert at 29m59s.
    r.tick_at(m(29) + s(58));
    assert_eq!(r.alerts().len(), 1);
    r.tick_at(m(29) + s(59));
    let dxi: Vec<Alert> = r.open().into_iter().filter(|a| a.instrument == "DXI-1").collect();
    assert_eq!(dxi.len(), 1);
    assert_eq!(dxi[0].evidence.reports[0].report_id, Some(3));
    // A report clears it; the next tick does not raise it again.
    let p = r.status("AU-2", m(31), "temp=37");
    assert_eq!(p.cleared, 1);
    r.tick_at(m(31));
    let au: Vec<Alert> = r.alerts().into_iter().filter(|a| a.instrument == "AU-2").collect();
    assert_eq!(au.len(), 1);
    assert_eq!(au[0].state, AlertState::Cleared);
    assert_eq!(au[0].clear_reason.as_deref(), Some("report 4 arrived"));
    // The box's own records are not an instrument.
    r.batch(&[("", m(31), Kind::BoxEvent, "uplink up")]);
    r.tick_at(m(50));
    assert!(r.open().iter().all(|a| !a.instrument.is_empty()));
}

#[test]
fn absence_watches_instruments_that_reported_before_the_rule_existed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dc.sqlite");
    {
        let mut r = Rig::with_store("", Store::open(&path).unwrap());
        r.status("OLD-1", s(0), "temp=37");
        r.engine.evaluate(&r.store).unwrap();
    }
    let r = Rig::with_store(ABSENCE, Store::open(&path).unwrap());
    r.tick_at(m(14));
    assert!(r.alerts().is_empty());
    r.tick_at(m(15));
    let a = &r.open()[0];
    assert_eq!(a.instrument, "OLD-1");
    assert_eq!(a.evidence.reports[0].report_id, None, "known from the counters only");
    assert_eq!(a.evidence.reports[0].received_ms, T0);
}

#[test]
fn state_survives_a_restart_and_unevaluated_reports_are_evaluated_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dc.sqlite");
    {
        let mut r = Rig::with_store(COUNT, Store::open(&path).unwrap());
        r.send("DXI-1", m(0), Kind::Alarm, &alarm("E1"));
        // Stored (and acknowledged) but the process dies before evaluating it.
        r.batch(&[("DXI-1", m(1), Kind::Alarm, &alarm("E1"))]);
        assert_eq!(r.store.trigger_progress().unwrap().evaluated_report_id, 1);
    }
    let mut r = Rig::with_store(COUNT, Store::open(&path).unwrap());
    r.msg = 2;
    r.batch = 2;
    assert!(r.alerts().is_empty());
    let p = r.send("DXI-1", m(2), Kind::Alarm, &alarm("E1"));
    assert_eq!((p.reports, p.raised), (2, 1), "the report left over and the new one");
    assert_eq!(r.open()[0].evidence.reports.len(), 3);
    // Evaluating again finds nothing new.
    assert_eq!(r.engine.evaluate(&r.store).unwrap(), Pass::default());
    // A redelivered report (same message id, new batch) is stored once and evaluated once.
    let rec = Record {
        instrument: "DXI-1".into(),
        msg_id: 3,
        timestamp_ms: at(m(2)),
        kind: Kind::Alarm,
        priority: 0,
        payload: alarm("E1").into_bytes(),
    };
    r.store.ingest("box-1", &Batch { batch_id: 99, dropped_total: 0, records: vec![rec] }).unwrap();
    assert_eq!(r.engine.evaluate(&r.store).unwrap().reports, 0);
    assert_eq!(r.open()[0].repeats, 0);
}

#[test]
fn a_changed_or_removed_rule_clears_its_alerts_and_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dc.sqlite");
    let both = format!("{THRESHOLD}\n{DURATION}");
    {
        let mut r = Rig::with_store(&both, Store::open(&path).unwrap());
        r.status("DXI-1", m(0), "reagent_A=5%;temp=39");
        r.status("DXI-1", m(4), "reagent_A=5%;temp=39");
        assert_eq!(r.open().len(), 1);
    }
    // Same rules: the open alert and the duration run go on.
    {
        let mut r = Rig::with_store(&both, Store::open(&path).unwrap());
        r.msg = 2;
        r.batch = 2;
        r.status("DXI-1", m(5), "reagent_A=5%;temp=39");
        assert_eq!(r.open().len(), 2, "the run begun before the restart completed");
    }
    // The threshold changes, the duration rule goes.
    let changed = THRESHOLD.replace("below = 10", "below = 6").replace("clear_at = 12", "clear_at = 7");
    let mut r = Rig::with_store(&changed, Store::open(&path).unwrap());
    r.msg = 3;
    r.batch = 3;
    let all = r.alerts();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|a| a.state == AlertState::Cleared));
    let reasons: Vec<&str> = all.iter().filter_map(|a| a.clear_reason.as_deref()).collect();
    assert_eq!(reasons, ["rule changed", "rule no longer loaded"]);
    r.status("DXI-1", m(6), "reagent_A=5%;temp=39");
    assert_eq!(r.open().len(), 1, "the changed rule raises anew");
    assert_eq!(r.open()[0].summary, "reagent_A=5% is below 6");
}

#[test]
fn without_rules_nothing_is_written_and_rules_loaded_later_start_after_the_newest_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dc.sqlite");
    {
        let mut r = Rig::with_store("", Store::open(&path).unwrap());
        assert_eq!(r.status("DXI-1", s(0), "reagent_A=1%"), Pass::default());
        r.status("DXI-1", s(1), "reagent_A=1%");
        assert_eq!(r.tick_at(m(60)), Pass::default());
        let st = r.engine.status(&r.store).unwrap();
        assert_eq!((st.evaluated_report_id, st.stored_report_id, st.last_tick_ms), (2, 2, 0));
        assert!(st.rules.is_empty());
        assert_eq!(r.store.trigger_progress().unwrap().evaluated_report_id, 0, "the cursor was not written");
    }
    let mut r = Rig::with_store(THRESHOLD, Store::open(&path).unwrap());
    r.msg = 2;
    r.batch = 2;
    assert_eq!(r.store.trigger_progress().unwrap().evaluated_report_id, 2);
    let p = r.status("DXI-1", s(2), "reagent_A=2%");
    assert_eq!((p.reports, p.raised), (1, 1), "only the report stored after the rules were loaded");
    assert_eq!(r.open()[0].evidence.reports[0].report_id, Some(3));
}

#[test]
fn many_reports_are_evaluated_page_by_page() {
    let mut r = Rig::new(THRESHOLD);
    let n = (PAGE as usize) * 2 + 17;
    let recs: Vec<(String, Duration, Kind, String)> = (0..n)
        .map(|i| {
            (
                format!("I-{}", i % 7),
                Duration::from_millis(i as u64 * 10),
                Kind::Status,
                format!("reagent_A={}%", if i == n - 1 { 3 } else { 50 }),
            )
        })
        .collect();
    let refs: Vec<(&str, Duration, Kind, &str)> =
        recs.iter().map(|(a, b, c, d)| (a.as_str(), *b, *c, d.as_str())).collect();
    r.batch(&refs);
    let p = r.engine.evaluate(&r.store).unwrap();
    assert_eq!((p.reports, p.raised), (n as u64, 1));
    let st = r.engine.status(&r.store).unwrap();
    assert_eq!(st.evaluated_report_id, n as u64);
    assert_eq!(st.rules[0].open_alerts, 1);
}
