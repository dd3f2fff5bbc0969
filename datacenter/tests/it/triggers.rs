//! Trigger rules through the running backend: simulated instrument streams against the
//! example rules (clock in the test's hand), the alert API, the trigger thread on its own
//! clock, and a real batch through the nginx front door raising an alert.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapdc::api::{self, Alert, AlertQuery, AlertState};
use rapdc::clock::{Clock, ManualClock, SystemClock};
use rapdc::rules::RuleSet;
use rapsim::StatusText;
use rapwire::batch::{BatchAck, Record, CONTENT_TYPE};
use rapwire::Kind;

use crate::frontdoor::{connect, exchange, post_batch, rig_with};
use crate::{encode, Backend, BOX1};

/// 2026-01-01 08:00:00Z.
const T0: i64 = 1_767_254_400_000;
const MIN: i64 = 60_000;

fn example_rules() -> RuleSet {
    RuleSet::load(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")]).unwrap()
}

fn alert_of<'a>(alerts: &'a [Alert], rule: &str, instrument: &str) -> Vec<&'a Alert> {
    alerts.iter().filter(|a| a.rule == rule && a.instrument == instrument).collect()
}

/// Five simulated instruments report every 30 s for 20 minutes, a box batches them; each
/// rule of the example file fires on exactly the instrument scripted for it.
#[test]
fn simulated_instrument_streams_drive_the_example_rules() {
    let clock = ManualClock::at(T0);
    let b = Backend::start_full(
        |s| s.with_clock(Arc::new(clock.clone())),
        |c| {
            c.rules = example_rules();
            c.tick_interval = Duration::from_secs(3600);
        },
    );
    let serials = ["DXI-0001", "DXI-0002", "DXI-0003", "DXI-0004", "DXI-0005"];
    let mut gens: Vec<StatusText> = serials.iter().map(|s| StatusText::new(s)).collect();
    assert!(gens[1].fix_alarm(Some("CLOT_DETECTED")));
    assert!(gens[4].fix_alarm(Some("PRESSURE_LOW")));
    let mut msg = 0u64;
    for step in 0..=40i64 {
        let t = T0 + step * 30_000;
        clock.set(t);
        if step == 10 {
            assert!(gens[0].hold("reagent_A", "8%"));
        }
        if step == 20 {
            assert!(gens[2].hold("temp", "38.9"));
        }
        let mut recs = Vec::new();
        for (i, serial) in serials.iter().enumerate() {
            // DXI-0004 falls silent after 4 minutes.
            if i == 3 && step > 8 {
                continue;
            }
            // DXI-0002: the same error at 2, 9 and 16 minutes; DXI-0005: twice only.
            let alarm = (i == 1 && [4, 18, 32].contains(&step)) || (i == 4 && [6, 24].contains(&step));
            msg += 1;
            recs.push(Record {
                instrument: (*serial).into(),
                msg_id: msg,
                timestamp_ms: t,
                kind: if alarm { Kind::Alarm } else { Kind::Status },
                priority: if alarm { 0 } else { 2 },
                payload: gens[i].next(alarm, 200),
            });
        }
        b.client.post_batch(BOX1, &encode(step as u64 + 1, 0, &recs)).unwrap();
        let st = b.client.evaluate().unwrap();
        assert_eq!(st.evaluated_report_id, st.stored_report_id);
        let open = b.client.open_alerts().unwrap();
        // Near misses along the way.
        if step == 37 {
            assert!(alert_of(&open, "instrument-silent", "DXI-0004").is_empty(), "14m30s of silence");
        }
        if step < 30 {
            assert!(alert_of(&open, "temp-out-of-range", "DXI-0003").is_empty(), "under 5 minutes at step {step}");
        }
        if step < 32 {
            assert!(alert_of(&open, "same-error-3-in-1h", "DXI-0002").is_empty(), "2 of 3 at step {step}");
        }
    }
    let open = b.client.open_alerts().unwrap();
    let mut got: Vec<(&str, &str, &str)> =
        open.iter().map(|a| (a.rule.as_str(), a.instrument.as_str(), a.key.as_str())).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("instrument-silent", "DXI-0004", ""),
            ("reagent-low", "DXI-0001", "reagent_A"),
            ("same-error-3-in-1h", "DXI-0002", "E412"),
            ("temp-out-of-range", "DXI-0003", "temp"),
        ],
        "{open:#?}"
    );
    let reagent = alert_of(&open, "reagent-low", "DXI-0001")[0];
    assert_eq!(reagent.evidence.reports[0].value.as_deref(), Some("8%"));
    assert_eq!(reagent.evidence.reports[0].timestamp_ms, T0 + 10 * 30_000);
    let errors = alert_of(&open, "same-error-3-in-1h", "DXI-0002")[0];
    let times: Vec<i64> = errors.evidence.reports.iter().map(|e| e.timestamp_ms).collect();
    assert_eq!(times, [T0 + 2 * MIN, T0 + 9 * MIN, T0 + 16 * MIN]);
    let temp = alert_of(&open, "temp-out-of-range", "DXI-0003")[0];
    assert_eq!((temp.evidence.first_ms, temp.evidence.span_ms), (Some(T0 + 10 * MIN), Some(5 * MIN)));
    let silent = alert_of(&open, "instrument-silent", "DXI-0004")[0];
    assert_eq!(silent.raised_ms, T0 + 19 * MIN, "15 minutes after its last report at 4:00");
    assert_eq!(silent.evidence.reports[0].timestamp_ms, T0 + 4 * MIN);
    // The evidence names stored reports.
    let stored = b.client.all_reports(Some("box-0001"), Some("DXI-0002")).unwrap();
    for e in &errors.evidence.reports {
        let r = stored.iter().find(|r| Some(r.id) == e.report_id).expect("evidence report is stored");
        assert_eq!(r.kind, Kind::Alarm);
        assert!(r.payload.starts_with("alarm=CLOT_DETECTED;code=E412;"), "{}", r.payload);
    }

    // Recovery: DXI-0004 reports again, the reagent is reloaded.
    clock.set(T0 + 21 * MIN);
    let recs = vec![
        Record {
            instrument: "DXI-0004".into(),
            msg_id: 10_000,
            timestamp_ms: T0 + 21 * MIN,
            kind: Kind::Status,
            priority: 2,
            payload: gens[3].next(false, 200),
        },
        {
            gens[0].release("reagent_A");
            assert!(gens[0].hold("reagent_A", "100%"));
            Record {
                instrument: "DXI-0001".into(),
                msg_id: 10_001,
                timestamp_ms: T0 + 21 * MIN,
                kind: Kind::Status,
                priority: 2,
                payload: gens[0].next(false, 200),
            }
        },
    ];
    b.client.post_batch(BOX1, &encode(1000, 0, &recs)).unwrap();
    b.client.evaluate().unwrap();
    let cleared = b.client.alerts(&AlertQuery { state: Some(AlertState::Cleared), ..Default::default() }).unwrap();
    let mut names: Vec<&str> = cleared.iter().map(|a| a.rule.as_str()).collect();
    names.sort();
    assert_eq!(names, ["instrument-silent", "reagent-low"]);
}

#[test]
fn alert_api_filters_and_refuses_bad_queries() {
    let clock = ManualClock::at(T0);
    let rules = RuleSet::parse(
        std::path::Path::new("t.toml"),
        "[[rule]]\nname = \"low\"\nkind = \"threshold\"\nfield = \"level\"\nbelow = 5\n\
         [[rule]]\nname = \"quiet\"\nkind = \"absence\"\nfor = \"1m\"\n",
    )
    .unwrap();
    // Only the explicit evaluations tick: a background tick between moving the clock and
    // posting report 4 would open (and then clear) a fifth alert, C silent.
    let b = Backend::start_full(
        |s| s.with_clock(Arc::new(clock.clone())),
        |c| {
            c.rules = rules;
            c.tick_interval = Duration::from_secs(3600);
        },
    );
    let rec = |inst: &str, id: u64, level: u32| Record {
        instrument: inst.into(),
        msg_id: id,
        timestamp_ms: T0 + id as i64,
        kind: Kind::Status,
        priority: 2,
        payload: format!("level={level}").into_bytes(),
    };
    b.client.post_batch(BOX1, &encode(1, 0, &[rec("A", 1, 1), rec("B", 2, 9), rec("C", 3, 2)])).unwrap();
    b.client.evaluate().unwrap();
    clock.set(T0 + MIN + 5);
    b.client.post_batch(BOX1, &encode(2, 0, &[rec("C", 4, 7)])).unwrap();
    let st = b.client.evaluate().unwrap();
    assert_eq!(
        st.rules.iter().map(|r| (r.name.as_str(), r.open_alerts)).collect::<Vec<_>>(),
        [("low", 1), ("quiet", 2)]
    );
    assert_eq!(st.rules[0].condition, "level below 5");
    assert_eq!(st.last_tick_ms, T0 + MIN + 5);

    let all = b.client.alerts(&AlertQuery::default()).unwrap();
    assert_eq!(all.len(), 4, "{all:#?}");
    let open = b.client.open_alerts().unwrap();
    assert_eq!(open.len(), 3);
    let q = |rule: Option<&str>, instrument: Option<&str>, state| AlertQuery {
        rule: rule.map(str::to_owned),
        instrument: instrument.map(str::to_owned),
        state,
        ..Default::default()
    };
    assert_eq!(b.client.alerts(&q(Some("quiet"), None, None)).unwrap().len(), 2);
    let c = b.client.alerts(&q(None, Some("C"), Some(AlertState::Cleared))).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].clear_reason.as_deref(), Some("level=7 in report 4 is no longer below 5"));
    assert!(b.client.alerts(&q(None, None, None).clone()).unwrap().windows(2).all(|w| w[0].id < w[1].id));
    let page =
        b.client.query_alerts(&AlertQuery { limit: Some(1), since_id: all[1].id, ..Default::default() }).unwrap();
    assert_eq!((page.alerts.len(), page.last_id), (1, all[2].id));
    let boxed = b.client.alerts(&AlertQuery { box_id: Some("box-0002".into()), ..Default::default() }).unwrap();
    assert!(boxed.is_empty());

    for (query, expect) in [("state=closed", "state \"closed\""), ("since_id=x", "since_id"), ("sort=id", "\"sort\"")] {
        let url = format!("{}{}?{query}", b.server.url(), api::ALERTS_PATH);
        match ureq::get(&url).call() {
            Err(ureq::Error::Status(400, r)) => {
                let e: api::ErrorBody = r.into_json().unwrap();
                assert!(e.error.contains(expect), "{query}: {}", e.error);
            }
            other => panic!("{query}: {other:?}"),
        }
    }
    assert_eq!(b.client.post_raw(api::ALERTS_PATH, &[], b"").unwrap().status, 405);
    assert_eq!(b.client.post_raw(api::TRIGGERS_PATH, &[], b"").unwrap().status, 405);
    // Reset forgets alerts and evaluation with the reports.
    b.client.reset().unwrap();
    assert!(b.client.alerts(&AlertQuery::default()).unwrap().is_empty());
    let st = b.client.triggers().unwrap();
    assert_eq!((st.evaluated_report_id, st.stored_report_id), (0, 0));
}

/// Without any call to `/admin/evaluate`: the trigger thread evaluates stored batches, and
/// its clock tick raises an absence although nothing arrives.
#[test]
fn the_trigger_thread_evaluates_on_arrival_and_ticks_on_its_own() {
    let rules = RuleSet::parse(
        std::path::Path::new("t.toml"),
        "[[rule]]\nname = \"low\"\nkind = \"threshold\"\nfield = \"level\"\nbelow = 5\n\
         [[rule]]\nname = \"quiet\"\nkind = \"absence\"\nfor = \"700ms\"\n",
    )
    .unwrap();
    let b = Backend::start_with(|c| {
        c.rules = rules;
        c.tick_interval = Duration::from_millis(100);
    });
    let now = SystemClock.now_ms();
    let rec = Record {
        instrument: "A".into(),
        msg_id: 1,
        timestamp_ms: now,
        kind: Kind::Status,
        priority: 2,
        payload: b"level=1".to_vec(),
    };
    let sent = Instant::now();
    b.client.post_batch(BOX1, &encode(1, 0, &[rec])).unwrap();
    let st = b.client.wait_evaluated(Duration::from_secs(10)).unwrap();
    assert_eq!(st.evaluated_report_id, 1);
    let open = b.client.open_alerts().unwrap();
    assert_eq!(open.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(), ["low"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let silent = loop {
        let open = b.client.open_alerts().unwrap();
        if let Some(a) = open.into_iter().find(|a| a.rule == "quiet") {
            break a;
        }
        assert!(Instant::now() < deadline, "no absence alert within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(sent.elapsed() >= Duration::from_millis(700));
    assert!(silent.evidence.span_ms.unwrap() >= 700);
    assert_eq!(silent.instrument, "A");
}

/// A real batch POST through nginx with the box's certificate: the alert names the box by
/// its certificate's CN, and the box cannot read alerts or trigger status through nginx.
#[test]
fn a_batch_through_the_front_door_raises_alerts_boxes_cannot_read() {
    let rules = RuleSet::parse(
        std::path::Path::new("t.toml"),
        r#"
        [[rule]]
        name = "reagent-low"
        kind = "threshold"
        field = "reagent_*"
        below = 10

        [[rule]]
        name = "same-error"
        kind = "count"
        kinds = ["alarm"]
        field = "code"
        count = 3
        within = "1h"
        "#,
    )
    .unwrap();
    let Some(rig) = rig_with(|| Backend::start_with(|c| c.rules = rules), |fd, _| fd) else { return };
    let now = SystemClock.now_ms();
    let mut recs: Vec<Record> = (0..3)
        .map(|i| Record {
            instrument: "DXI-0001".into(),
            msg_id: 100 + i,
            timestamp_ms: now - 60_000 + i as i64 * 1000,
            kind: Kind::Alarm,
            priority: 0,
            payload: b"alarm=CLOT_DETECTED;code=E412;severity=high;temp=37.0".to_vec(),
        })
        .collect();
    // A near miss beside it: 10% is not below 10.
    recs.push(Record {
        instrument: "AU-0002".into(),
        msg_id: 1,
        timestamp_ms: now,
        kind: Kind::Status,
        priority: 2,
        payload: b"reagent_A=10%;reagent_B=9%".to_vec(),
    });
    let a = post_batch(&rig, Some(&rig.box1), &[], &encode(0x77, 0, &recs)).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(serde_json::from_str::<BatchAck>(&a.body).unwrap().accepted, 4);
    let client = &rig.backend.client;
    client.wait_evaluated(Duration::from_secs(10)).unwrap();
    let open = client.open_alerts().unwrap();
    let mut got: Vec<(&str, &str, &str, &str)> =
        open.iter().map(|a| (a.rule.as_str(), a.box_id.as_str(), a.instrument.as_str(), a.key.as_str())).collect();
    got.sort();
    assert_eq!(
        got,
        [("reagent-low", "box-0001", "AU-0002", "reagent_B"), ("same-error", "box-0001", "DXI-0001", "E412")]
    );
    let stored = client.all_reports(None, None).unwrap();
    let errors = open.iter().find(|a| a.rule == "same-error").unwrap();
    let ids: Vec<u64> = errors.evidence.reports.iter().filter_map(|e| e.report_id).collect();
    let expect: Vec<u64> = stored.iter().filter(|r| r.kind == Kind::Alarm).map(|r| r.id).collect();
    assert_eq!(ids, expect);

    let before = client.requests().unwrap();
    for path in [api::ALERTS_PATH, api::TRIGGERS_PATH, api::DASHBOARD_PATH, api::EVALUATE_PATH] {
        let s = connect(rig.nginx.addr(), &rig.ca, Some(&rig.box1), |_| {}).unwrap();
        let a = exchange(s, "GET", path, &[("Content-Type", CONTENT_TYPE)], b"").unwrap();
        assert_eq!(a.status, 404, "{path}: {}", a.body);
    }
    let after = client.requests().unwrap();
    assert_eq!(after.outside_admin, before.outside_admin, "nothing reached the backend");
}
