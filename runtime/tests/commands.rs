//! The command channel end to end on loopback: rapdc queues commands, real rapd (FIPS mode)
//! fetches them through the real nginx mTLS front door (in batch acknowledgements and by
//! polling), executes each once and reports its result until the data center recorded it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::rapd::{Rapd, Spec};
use common::{instrument_addr, wait_for, World, BOX_ID};
use rapbox::control::{self, Request};
use rapdc::api::FaultSpec;
use rapdc::commands::{CommandRecord, CommandState, QueueCommand};
use rapsim::Instrument;
use rapwire::command::Outcome;
use serde_json::{json, Value};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn spec(w: &World, poll_s: u64) -> Spec {
    let mut s = w.rapd_spec();
    s.instruments = vec![("INST-C1".to_string(), instrument_addr())];
    s.extra = format!("[commands]\npoll_interval_s = {poll_s}\n");
    s
}

fn queue(w: &World, q: QueueCommand) -> CommandRecord {
    w.client.queue_command(&q).expect("queue command")
}

fn cmd(id: &str, kind: &str) -> QueueCommand {
    QueueCommand { id: Some(id.into()), ..QueueCommand::new(BOX_ID, kind) }
}

fn wait_final(w: &World, id: &str, secs: u64) -> CommandRecord {
    w.client.wait_command(id, Duration::from_secs(secs), |c| c.state.is_final()).expect("command result")
}

/// The audit records rapd wrote about command `id`, as (action, outcome).
fn audited(rapd: &Rapd, id: &str) -> Vec<(String, String)> {
    let r = control::request(&rapd.spec.socket(), &Request::AuditTail { n: 10_000 }).expect("audit tail");
    r.audit_records
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["target"] == id && a["action"].as_str().is_some_and(|x| x.starts_with("command.")))
        .map(|a| (a["action"].as_str().unwrap_or("").to_owned(), a["outcome"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// A `status` command: executed once, its result (the box's status) recorded by the data
/// center; redeliveries, also after a restart, are answered with the stored result and never
/// run again.
#[test]
fn status_command_runs_once_and_redeliveries_are_answered_from_the_stored_result() {
    let mut w = World::new("cmd_status");
    w.start_nginx();
    let mut rapd = Rapd::start(&spec(&w, 1));
    queue(&w, cmd("c-status-1", "status"));
    let c = wait_final(&w, "c-status-1", 30);
    assert_eq!(c.state, CommandState::Succeeded, "{c:?}");
    assert_eq!(c.detail["fips"]["passed"], true, "the result carries the box's status: {}", c.detail);
    assert!(c.detail["commands"]["kinds"].as_array().unwrap().contains(&json!("status")), "{}", c.detail);
    assert_eq!(audited(&rapd, "c-status-1"), vec![("command.executed".to_string(), "success".to_string())]);

    let reported = |w: &World| w.client.command("c-status-1").unwrap().results.len();
    let before = reported(&w);
    w.client.redeliver_command("c-status-1").unwrap();
    wait_for("the redelivered command's result reported again", Duration::from_secs(30), || {
        (reported(&w) > before).then_some(())
    });
    let st = rapd.status();
    assert_eq!(st.commands["redelivered"], 1, "{}", st.commands);
    assert_eq!(st.commands["executed"], 1, "{}", st.commands);

    rapd.stop();
    let rapd = Rapd::start(&rapd.spec.clone());
    let before = reported(&w);
    w.client.redeliver_command("c-status-1").unwrap();
    wait_for("the result reported again after a restart", Duration::from_secs(30), || {
        (reported(&w) > before).then_some(())
    });
    let c = w.client.command("c-status-1").unwrap();
    assert_eq!(c.state, CommandState::Succeeded);
    assert!(c.results.iter().all(|r| r.outcome == Outcome::Succeeded), "{:?}", c.results);
    assert_eq!(rapd.status().commands["executed"], 0, "not run again after the restart");
    assert_eq!(
        audited(&rapd, "c-status-1"),
        vec![("command.executed".to_string(), "success".to_string())],
        "one execution in the audit trail"
    );
}

/// Expired, unknown, malformed, bad-target commands and bad arguments: each refused with a
/// result that says why, each refusal audited as denied.
#[test]
fn bad_commands_are_refused_with_a_reason_and_audited() {
    let mut w = World::new("cmd_refused");
    w.start_nginx();
    let rapd = Rapd::start(&spec(&w, 1));
    let now = now_ms();
    queue(
        &w,
        QueueCommand {
            raw: Some(
                json!({"id": "c-expired", "kind": "status", "issued_ms": now - 60_000, "expires_ms": now - 1000}),
            ),
            ..QueueCommand::new(BOX_ID, "")
        },
    );
    queue(&w, cmd("c-unknown", "make_coffee"));
    queue(
        &w,
        QueueCommand {
            raw: Some(json!({"id": "c-malformed", "kind": "status", "issued_ms": now})),
            ..QueueCommand::new(BOX_ID, "")
        },
    );
    queue(&w, QueueCommand { target: vec!["NOT-HERE".into()], ..cmd("c-target", "status") });
    queue(&w, QueueCommand { args: json!({"verbose": true}), ..cmd("c-args", "status") });

    let cases = [
        ("c-expired", "expired", "lifetime ended at"),
        ("c-unknown", "unknown_kind", "this box does not know command kind `make_coffee`"),
        ("c-malformed", "malformed", "missing field `expires_ms`"),
        ("c-target", "bad_target", "instrument `NOT-HERE` is not cabled to this box (its instruments: INST-C1)"),
        ("c-args", "malformed", "`status` takes no arguments"),
    ];
    for (id, code, reason) in cases {
        let c = wait_final(&w, id, 30);
        assert_eq!(c.state, CommandState::Refused, "{id}: {c:?}");
        assert_eq!(c.code, code, "{id}");
        assert!(c.reason.contains(reason), "{id}: reason {:?} does not contain {reason:?}", c.reason);
        assert_eq!(audited(&rapd, id), vec![("command.refused".to_string(), "denied".to_string())], "{id}");
    }
    assert_eq!(rapd.status().commands["refused"], 5);
}

/// Results are kept and retried until the data center records them: through refused
/// exchanges and a data center that is down; and while instruments keep the uplink busy,
/// commands arrive in the batch acknowledgements, with no polling.
#[test]
fn results_are_retried_until_recorded_and_commands_ride_on_batch_acks() {
    let mut w = World::new("cmd_retry");
    w.start_nginx();
    // A poll interval longer than the test: commands can only arrive with batch acks.
    let s = spec(&w, 3600);
    let addr = s.instruments[0].1;
    let rapd = Rapd::start(&s);
    wait_for("the start-up poll", Duration::from_secs(30), || (rapd.status().uplink["exchanges"] == 1).then_some(()));

    let inst = Instrument { rate: 200, count: Some(3000), ..Instrument::new(addr, "INST-C1") }.spawn().unwrap();
    w.client.exchange_fault(FaultSpec { status: 503, retry_after_s: None, count: 3 }).unwrap();
    queue(&w, cmd("c-busy", "status"));
    let c = wait_final(&w, "c-busy", 60);
    assert_eq!(c.state, CommandState::Succeeded, "{c:?}");
    assert_eq!(c.deliveries, 1);
    let st = rapd.status();
    assert!(st.uplink["commands_received"].as_u64().unwrap() >= 1, "{}", st.uplink);
    let failed_exchanges = w.client.requests().unwrap().get("/api/v1/commands");
    assert!(failed_exchanges >= 4, "three refused exchanges, then the one that recorded: {failed_exchanges}");
    inst.join().unwrap();

    // The data center goes away; a command queued meanwhile reaches the box once it is back,
    // and so does its result.
    w.stop_nginx();
    queue(&w, cmd("c-outage", "status"));
    std::thread::sleep(Duration::from_secs(2));
    w.start_nginx();
    let inst = Instrument { rate: 100, count: Some(500), first_id: 1_000_000, ..Instrument::new(addr, "INST-C1") }
        .spawn()
        .unwrap();
    let c = wait_final(&w, "c-outage", 60);
    assert_eq!(c.state, CommandState::Succeeded);
    inst.join().unwrap();
    wait_for("no result left unreported", Duration::from_secs(30), || {
        (rapd.status().commands["unreported"] == 0).then_some(())
    });
    let v: Value = rapd.status().commands;
    assert_eq!(v["executed"], 2, "{v}");
}
