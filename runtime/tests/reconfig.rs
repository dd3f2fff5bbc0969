//! Run-time reconfiguration against real peers on loopback: a real rapd (FIPS mode), the
//! real nginx mTLS front door and rapdc, tinyproxy and dante, simulated instruments
//! streaming meanwhile, and the real rapctl.
//!
//! Each test shows an outcome end to end — refused with the key named and nothing
//! changed, a proxy changed live with the traffic going through the new proxy, a
//! configuration that breaks the uplink rolled back in time (live and across restarts),
//! a `kill -9` in the middle of an apply — and that every outcome is in the audit trail.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::rapd::{depth, Rapd, Spec};
use common::{instrument_addr, wait_for, World, BOX_ID};
use rapbox::control::{self, Request};
use rapbox::reconfig::{ApplyArgs, ApplyOutcome, ApplyReport, ShowReport};
use rapsim::{Instrument, RunningInstrument};
use serde_json::{json, Value};

fn apply(spec: &Spec, args: ApplyArgs) -> ApplyReport {
    let r = control::request_with_timeout(&spec.socket(), &Request::ConfigApply(args), Duration::from_secs(120))
        .expect("control socket");
    assert!(r.ok, "{:?}", r.error);
    r.config_apply.expect("config_apply answer")
}

fn keys(v: Value) -> ApplyArgs {
    ApplyArgs { keys: Some(v.as_object().unwrap().clone()), rollback: true, ..ApplyArgs::default() }
}

fn show(spec: &Spec) -> ShowReport {
    let r = control::request(&spec.socket(), &Request::ConfigShow).expect("control socket");
    r.config_show.expect("config_show answer")
}

/// The audit records whose action starts with `config.`, oldest first.
fn config_records(spec: &Spec) -> Vec<Value> {
    let r = control::request(&spec.socket(), &Request::AuditTail { n: 10_000 }).expect("control socket");
    r.audit_records
        .expect("records")
        .into_iter()
        .filter(|r| r["action"].as_str().is_some_and(|a| a.starts_with("config.") && a != "config.loaded"))
        .collect()
}

fn actions(recs: &[Value]) -> Vec<String> {
    recs.iter().map(|r| r["action"].as_str().unwrap_or("").to_owned()).collect()
}

/// `rapctl --socket S ARGS`: (exit code, stdout, stderr).
fn rapctl(spec: &Spec, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .arg("--socket")
        .arg(spec.socket())
        .args(args)
        .output()
        .expect("rapctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_file(spec: &Spec) -> String {
    std::fs::read_to_string(spec.dir.join("rapd.toml")).unwrap()
}

/// Instruments sending without pause until stopped.
fn stream(instruments: &[(String, SocketAddr)]) -> Vec<RunningInstrument> {
    instruments
        .iter()
        .map(|(s, a)| {
            Instrument { rate: 400, alarm_every: 25, ..Instrument::new(*a, s.clone()) }.spawn().expect("simulator")
        })
        .collect()
}

/// Stops the instruments; returns each one's acknowledged ids and the whole run's stats.
fn finish(runs: Vec<RunningInstrument>) -> Vec<(String, BTreeSet<u64>, rapsim::StatsSnapshot)> {
    for r in &runs {
        r.stop();
    }
    runs.into_iter()
        .map(|r| {
            let stats = r.stats().clone();
            let serial = r.serial().to_owned();
            let sum = r.join().unwrap_or_else(|e| panic!("{serial}: {e}"));
            assert!(
                sum.unacked.is_empty(),
                "{serial}: unacknowledged at the end: {:?}",
                &sum.unacked[..sum.unacked.len().min(10)]
            );
            (serial, stats.acked_ids().iter().collect(), sum.stats)
        })
        .collect()
}

/// Every acknowledged message is in the data center exactly once, delivered once.
fn assert_exactly_once(w: &World, acked: &[(String, BTreeSet<u64>, rapsim::StatsSnapshot)]) {
    let redelivered = assert_stored_once(w, acked);
    assert_eq!(redelivered, 0, "no batch was sent twice");
}

/// Every acknowledged message is stored in the data center once; returns how many were
/// delivered more than once (a batch acknowledged by the data center whose rows a
/// `kill -9` kept from being deleted is sent again, and the data center recognises it).
fn assert_stored_once(w: &World, acked: &[(String, BTreeSet<u64>, rapsim::StatsSnapshot)]) -> usize {
    let reports: Vec<_> = w
        .client
        .all_reports(Some(BOX_ID), None)
        .expect("reports")
        .into_iter()
        .filter(|r| !r.instrument.is_empty())
        .collect();
    let mut keys = HashSet::new();
    for r in &reports {
        assert!(keys.insert((r.instrument.clone(), r.msg_id)), "stored twice: {} {}", r.instrument, r.msg_id);
    }
    for (serial, ids, _) in acked {
        let at_dc: BTreeSet<u64> = reports.iter().filter(|r| &r.instrument == serial).map(|r| r.msg_id).collect();
        let missing: Vec<_> = ids.difference(&at_dc).take(10).collect();
        assert!(missing.is_empty(), "{serial}: acknowledged but not in the data center: {missing:?}");
        assert_eq!(at_dc.len(), ids.len(), "{serial}: the data center holds exactly the acknowledged messages");
    }
    reports.iter().filter(|r| r.deliveries > 1).count()
}

fn wait_drained(rapd: &Rapd) {
    rapd.wait_status("queue drained", Duration::from_secs(90), |s| depth(s) == 0);
}

fn uplink_port(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port_or_known_default().unwrap()
}

// ---------------------------------------------------------------- tests

/// Bad proposals of every kind are refused with the key named, by the control socket and
/// by rapctl, and nothing changes: not the file, not the running parts, not ingest.
#[test]
fn bad_configurations_are_refused_with_the_key_named_and_nothing_changes() {
    let mut w = World::new("reconfig_refused");
    w.start_nginx();
    let mut spec = w.rapd_spec();
    spec.instruments = vec![("INST-A".into(), instrument_addr()), ("INST-B".into(), instrument_addr())];
    let rapd = Rapd::start(&spec);
    rapd.wait_status("a first upload", Duration::from_secs(30), |s| s.uplink["last_success_ms"].is_u64());
    let runs = stream(&spec.instruments);
    wait_for("ingest", Duration::from_secs(10), || (runs.iter().all(|r| r.stats().acked() > 50)).then_some(()));
    let before_text = config_file(&spec);
    let before = rapd.status();

    let cases: Vec<(ApplyArgs, &str, &str)> = vec![
        (
            keys(json!({"uplink.proxy": "ftp://10.0.0.9:21"})),
            "uplink.proxy",
            "key `uplink.proxy`: scheme `ftp` is not supported; use http:// (CONNECT) or socks5://",
        ),
        (
            keys(json!({"uplink.url": "http://dc.example.net/api/v1/batches"})),
            "uplink.url",
            "key `uplink.url`: scheme must be https, not `http`",
        ),
        (keys(json!({"instrument[1].serial": "INST-A"})), "instrument[1].serial", "`INST-A` is configured twice"),
        (keys(json!({"uplink.connect_timeout_ms": 5})), "uplink.connect_timeout_ms", "5 is outside 100..=600000"),
        (keys(json!({"uplink.cert": "/nonexistent/box.pem"})), "uplink.cert", "is missing"),
        (keys(json!({"uplink.prxoy": null})), "uplink.prxoy", "is not in the configuration: nothing to remove"),
        (keys(json!({"instrument[7].serial": "X"})), "instrument[7].serial", "index 7 is beyond the end"),
        (
            ApplyArgs {
                document: Some(before_text.replace("[uplink]", "[uplink]\nqouta = 1")),
                ..ApplyArgs::default()
            },
            "qouta",
            "unknown field `qouta`",
        ),
        (ApplyArgs { document: Some("[queue]\npath = 7\n".into()), ..ApplyArgs::default() }, "", "rapd.toml"),
    ];
    for (args, key, want) in &cases {
        let r = apply(&spec, ApplyArgs { rollback: true, ..args.clone() });
        assert_eq!(r.outcome, ApplyOutcome::Refused, "{args:?}: {r:?}");
        let e = &r.errors[0];
        if !key.is_empty() {
            assert_eq!(e.key.as_deref(), Some(*key), "{r:?}");
        }
        assert!(e.message.contains(want), "{args:?}: {}\nwanted: {want}", e.message);
        assert!(r.id.is_none() && r.trial.is_none());
    }
    // The validation errors are the ones a start gives: they name the configuration file.
    let r = apply(&spec, keys(json!({"uplink.url": "http://dc.example.net/api/v1/batches"})));
    assert_eq!(
        r.errors[0].message,
        format!("{}: key `uplink.url`: scheme must be https, not `http`", spec.dir.join("rapd.toml").display())
    );

    // rapctl: refused, exit 1, the key on stderr; check refuses the same way; usage errors exit 2.
    let (code, out, err) = rapctl(&spec, &["config", "apply", "uplink.proxy=ftp://10.0.0.9:21"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.starts_with("rapctl: refused, nothing was changed:\n"), "{err}");
    assert!(err.contains("key `uplink.proxy`: scheme `ftp` is not supported"), "{err}");
    let (code, _, err) = rapctl(&spec, &["config", "check", "ingest.max_connections_per_port=0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("key `ingest.max_connections_per_port`: 0 is outside 1..=64"), "{err}");
    let (code, out, _) = rapctl(&spec, &["config", "check", "--json", "uplink.proxy=socks5://"]);
    assert_eq!(code, 1);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["outcome"], "refused");
    assert_eq!(j["errors"][0]["key"], "uplink.proxy");
    let (code, _, err) = rapctl(&spec, &["config", "apply"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = rapctl(&spec, &["config", "apply", "uplink..proxy=x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a key path"), "{err}");
    // Valid, but a part cannot be moved to it (an agent address that is not the box's): the
    // parts already moved (the uplink, restarted for the new proxy) are moved back, the
    // files are restored, and the answer names the instrument.
    let proxy = rapbox_testkit::peers::Tinyproxy::start(&w.dir.subdir("tinyproxy").unwrap(), &Default::default())
        .expect("tinyproxy");
    let r = apply(
        &spec,
        keys(json!({
            "uplink.proxy": proxy.url(),
            "instrument[2]": {"serial": "INST-C", "model": "test", "listen": "192.0.2.99:7300"},
        })),
    );
    assert_eq!(r.outcome, ApplyOutcome::Failed, "{r:?}");
    assert_eq!(r.errors[0].key.as_deref(), Some("instrument[2].listen"), "{r:?}");
    assert!(r.errors[0].message.contains("instrument INST-C: cannot listen on 192.0.2.99:7300"), "{r:?}");
    assert!(r.message.starts_with("failed; the configuration in force was put back: "), "{}", r.message);
    let st = rapd.status();
    assert!(st.uplink["proxy"].is_null(), "the uplink is back on its own configuration: {:?}", st.uplink);
    let sent = st.uplink["batches_sent"].as_u64().unwrap();
    rapd.wait_status("the uplink delivering", Duration::from_secs(30), |s| {
        s.uplink["batches_sent"].as_u64().unwrap() > sent
    });

    // A valid check changes nothing either, and says what an apply would do.
    let (code, out, err) = rapctl(&spec, &["config", "check", "log.level=debug", "uplink.io_timeout_ms=6000"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("valid; applying it changes log.level, uplink.io_timeout_ms (live: uplink, log level)"),
        "{out}"
    );

    // Nothing changed: the file, the trial, the running parts; ingest went on throughout.
    assert_eq!(config_file(&spec), before_text);
    assert!(!spec.dir.join("rapd.toml.pending").exists());
    assert!(!spec.dir.join("rapd.toml.previous").exists(), "a refusal writes no file, a failed apply leaves none");
    let sh = show(&spec);
    assert!(sh.trial.is_none());
    let after = rapd.status();
    assert_eq!(after.uplink["url"], before.uplink["url"]);
    assert_eq!(after.uplink["proxy"], before.uplink["proxy"]);
    assert_eq!(after.ports.as_array().unwrap().len(), 2);
    let acked = finish(runs);
    for (serial, _, st) in &acked {
        assert_eq!(st.reconnects, 0, "{serial}: the refusals did not touch its connection: {st:?}");
    }
    wait_drained(&rapd);
    assert_exactly_once(&w, &acked);

    // Every refused apply is audited (checks are not: they change nothing), with the key;
    // so is the one that failed.
    let mut recs = config_records(&spec);
    let failed = recs.pop().unwrap();
    assert_eq!(failed["action"], "config.apply_failed", "{failed}");
    assert_eq!(failed["outcome"], "failure");
    assert_eq!(failed["detail"]["key"], "instrument[2].listen", "{failed}");
    assert_eq!(actions(&recs), vec!["config.refused"; cases.len() + 2], "{recs:#?}");
    for r in &recs {
        assert_eq!(r["outcome"], "denied");
        assert!(r["actor"].as_str().unwrap().starts_with("console:"), "{r}");
    }
    assert_eq!(recs[0]["detail"]["errors"][0]["key"], "uplink.proxy");
    assert_eq!(sh.history.iter().filter(|h| h.event == "refused").count(), cases.len() + 2);
}

/// A proxy is configured live while two instruments stream: the uplink goes through
/// tinyproxy, then through dante, then direct again; the data center confirms each,
/// nothing is lost or delivered twice, and the instruments never lose their connection.
#[test]
fn proxy_changes_are_applied_live_and_traffic_flows_through_the_new_proxy() {
    use rapbox_testkit::peers::{Dante, DanteConfig, Tinyproxy, TinyproxyConfig};
    let mut w = World::new("reconfig_proxy");
    w.start_nginx();
    let mut spec = w.rapd_spec();
    spec.instruments = vec![("INST-A".into(), instrument_addr()), ("INST-B".into(), instrument_addr())];
    let rapd = Rapd::start(&spec);
    rapd.wait_status("a first upload", Duration::from_secs(30), |s| s.uplink["last_success_ms"].is_u64());
    let tiny = Tinyproxy::start(
        &w.dir.subdir("tinyproxy").unwrap(),
        &TinyproxyConfig { basic_auth: Some(("rapbox".into(), "pr0xy-pass".into())), ..Default::default() },
    )
    .expect("tinyproxy");
    let dante = Dante::start(&w.dir.subdir("dante").unwrap(), &DanteConfig::default()).expect("dante");
    let dc = format!("{}:{}", w.dc_addr.ip(), uplink_port(&w.url()));
    let runs = stream(&spec.instruments);
    wait_for("ingest", Duration::from_secs(10), || (runs.iter().all(|r| r.stats().acked() > 100)).then_some(()));

    // Through tinyproxy (with credentials), with rapctl --wait: exit 0 once confirmed.
    let t0 = Instant::now();
    let (code, out, err) = rapctl(&spec, &["config", "apply", "--wait", &format!("uplink.proxy={}", tiny.url())]);
    assert_eq!(code, 0, "{out}{err}\n{}", rapd.log_text());
    println!("tinyproxy applied and confirmed in {:.2} s", t0.elapsed().as_secs_f64());
    assert!(
        out.starts_with(
            "applied live (uplink); rolled back unless the data center acknowledges a batch within 300 s\n"
        ),
        "{out}"
    );
    assert!(out.contains("  changes  uplink.proxy\n"), "{out}");
    assert!(out.contains("confirmed: the data center acknowledged a batch"), "{out}");
    assert!(
        tiny.wait_established(&w.dc_addr.ip().to_string(), Duration::from_secs(10)),
        "through tinyproxy:\n{}",
        tiny.log()
    );
    assert!(tiny.saw_connect(&dc), "CONNECT {dc}:\n{}", tiny.log());
    let st = rapd.status();
    let shown = st.uplink["proxy"].as_str().unwrap().to_owned();
    assert!(shown.contains("***@") && !shown.contains("pr0xy-pass"), "{shown}");
    assert!(config_file(&spec).contains(&format!("proxy = \"{}\"", tiny.url())));
    let sent_via_tiny = st.uplink["batches_sent"].as_u64().unwrap();
    let (code, out, _) = rapctl(&spec, &["config", "show"]);
    assert_eq!(code, 0);
    assert!(out.contains("proxy = \"http://***@127.0.0.1:") && !out.contains("pr0xy-pass"), "{out}");

    // Through dante: the keys form over the socket; confirmed by the data center.
    let r = apply(&spec, keys(json!({"uplink.proxy": dante.url()})));
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}");
    assert_eq!(r.changed_keys, ["uplink.proxy"]);
    assert!(r.plan.uplink && r.plan.ports_started.is_empty() && !r.restart);
    let id = r.id.clone().unwrap();
    wait_for("confirmation", Duration::from_secs(30), || show(&spec).trial.is_none().then_some(()));
    assert!(dante.wait_connect(w.dc_addr, Duration::from_secs(10)), "through dante:\n{}", dante.log());
    rapd.wait_status("batches through dante", Duration::from_secs(30), |s| {
        s.uplink["batches_sent"].as_u64().unwrap() > sent_via_tiny + 2
    });

    // Direct again.
    let (code, out, err) = rapctl(&spec, &["config", "apply", "--unset", "uplink.proxy"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("confirmation", Duration::from_secs(30), || show(&spec).trial.is_none().then_some(()));
    assert!(rapd.status().uplink["proxy"].is_null());
    assert!(!config_file(&spec).contains("proxy ="));

    let acked = finish(runs);
    wait_drained(&rapd);
    assert_exactly_once(&w, &acked);
    for (serial, ids, st) in &acked {
        assert!(ids.len() > 200, "{serial} kept streaming: {st:?}");
        assert_eq!(st.reconnects, 0, "{serial}: its port was not touched by the uplink's changes: {st:?}");
    }
    let recs = config_records(&spec);
    assert_eq!(
        actions(&recs),
        [
            "config.applied",
            "config.confirmed",
            "config.applied",
            "config.confirmed",
            "config.applied",
            "config.confirmed"
        ],
        "{recs:#?}"
    );
    assert_eq!(recs[2]["detail"]["id"], id.as_str());
    assert_eq!(recs[2]["detail"]["how"], "live");
    assert!(!recs[0].to_string().contains("pr0xy-pass"), "credentials never reach the audit trail: {}", recs[0]);
    assert!(spec.dir.join("rapd.toml.previous").exists(), "the previous configuration is kept");
}

/// A configuration that breaks the uplink (a proxy nobody answers on, then a data center
/// URL nobody listens on together with a restart section) is rolled back within
/// `reconfig.rollback_after_s`; the uplink delivers again; so is one rapd cannot start
/// with. Everything is audited.
#[test]
fn configurations_that_break_the_uplink_are_rolled_back_in_time() {
    let mut w = World::new("reconfig_rollback");
    w.start_nginx();
    let mut spec = w.rapd_spec();
    spec.instruments = vec![("INST-A".into(), instrument_addr())];
    spec.extra =
        format!("[reconfig]\nrollback_after_s = 6\n\n[audit]\npath = {:?}\n", spec.dir.join("audit/audit.log"));
    let mut rapd = Rapd::start(&spec);
    let pid = rapd.pid();
    rapd.wait_status("a first upload", Duration::from_secs(30), |s| s.uplink["last_success_ms"].is_u64());
    let original = config_file(&spec);
    let runs = stream(&spec.instruments);

    // 1. Live: a proxy where nothing listens.
    let dead = rapbox_testkit::ports::unique_addr().unwrap();
    let t0 = Instant::now();
    let r = apply(&spec, keys(json!({"uplink.proxy": format!("http://{dead}")})));
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}");
    assert_eq!(r.trial.as_ref().unwrap().rollback_after_s, 6);
    assert!(show(&spec).trial.is_some());
    assert!(spec.dir.join("rapd.toml.pending").exists());
    wait_for("the rollback", Duration::from_secs(6 + 15), || show(&spec).trial.is_none().then_some(()));
    let took = t0.elapsed();
    println!("broken proxy rolled back {:.2} s after the apply (rollback_after_s = 6)", took.as_secs_f64());
    assert!(took >= Duration::from_secs(6), "not rolled back before its time: {took:?}");
    assert_eq!(config_file(&spec), original, "the previous configuration is back in the file");
    assert!(!spec.dir.join("rapd.toml.pending").exists());
    let st = rapd.status();
    assert!(st.uplink["proxy"].is_null(), "{:?}", st.uplink);
    let sent = st.uplink["batches_sent"].as_u64().unwrap();
    rapd.wait_status("the uplink delivering again", Duration::from_secs(30), |s| {
        s.uplink["batches_sent"].as_u64().unwrap() > sent
    });
    let h = show(&spec).history;
    let last = h.last().unwrap();
    assert_eq!((last.event.as_str(), last.id.as_deref()), ("rolled_back", r.id.as_deref()));
    assert_eq!(last.message, "rolled back: the data center acknowledged no batch within 6 s");

    // 2. Through restarts: a URL nobody answers and a queue setting (a restart section).
    let t0 = Instant::now();
    let bad_url = format!("https://{}/api/v1/batches", rapbox_testkit::ports::unique_443().unwrap().ip());
    let (code, out, err) =
        rapctl(&spec, &["config", "apply", "--wait", &format!("uplink.url={bad_url}"), "queue.quota_bytes=134217728"]);
    println!("broken URL + restart rolled back {:.2} s after the apply", t0.elapsed().as_secs_f64());
    assert_eq!(code, 4, "rolled back: {out}{err}\n{}", rapd.log_text());
    assert!(out.starts_with("applied; rapd restarts to apply queue; rolled back unless"), "{out}");
    assert!(out.contains("rolled back: the data center acknowledged no batch within 6 s"), "{out}");
    rapd.wait_ready(Duration::from_secs(20));
    assert_eq!(rapd.pid(), pid, "rapd executed itself again: same process");
    assert_eq!(config_file(&spec), original);
    let st = rapd
        .wait_status("the uplink delivering again", Duration::from_secs(30), |s| s.uplink["last_success_ms"].is_u64());
    assert_eq!(st.uplink["url"], w.url().as_str());
    assert_eq!(st.queue["quota_bytes"], 256u64 << 20);

    // 3. A configuration rapd cannot start with (a queue it cannot open): rolled back at once.
    let r = apply(&spec, keys(json!({"queue.path": "/proc/rapd-no-such-dir/queue.db"})));
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}");
    assert!(r.restart);
    wait_for("rapd back", Duration::from_secs(30), || {
        control::request(&spec.socket(), &Request::ConfigShow)
            .ok()
            .and_then(|r| r.config_show)
            .filter(|s| s.history.iter().any(|h| h.event == "rolled_back" && h.id == r.id))
    });
    rapd.wait_ready(Duration::from_secs(20));
    assert_eq!(config_file(&spec), original);
    assert!(rapd
        .log_text()
        .contains("rolled back: rapd could not start with it: the queue database cannot be opened (exit code 4)"));

    let acked = finish(runs);
    wait_drained(&rapd);
    assert_exactly_once(&w, &acked);

    let recs = config_records(&spec);
    assert_eq!(
        actions(&recs),
        [
            "config.applied",
            "config.rolled_back",
            "config.applied",
            "config.trial_resumed",
            "config.rolled_back",
            "config.applied",
            "config.rolled_back"
        ],
        "{recs:#?}"
    );
    assert_eq!(recs[1]["detail"]["how"], "live");
    assert_eq!(recs[1]["actor"], "rapd");
    assert_eq!(recs[2]["detail"]["how"], "restart");
    assert_eq!(recs[3]["detail"]["id"], recs[2]["detail"]["id"]);
    assert_eq!(recs[4]["detail"]["how"], "restart");
    assert!(recs[6]["detail"]["reason"].as_str().unwrap().contains("rapd could not start with it"), "{}", recs[6]);
    // rapd's own records of the restarts.
    let all = control::request(&spec.socket(), &Request::AuditTail { n: 10_000 }).unwrap().audit_records.unwrap();
    let restarts = all
        .iter()
        .filter(|r| {
            r["action"] == "rapd.stop" && r["detail"]["reason"].as_str().is_some_and(|s| s.starts_with("restart: "))
        })
        .count();
    assert!(restarts >= 3, "{all:#?}");
    let (code, out, _) = rapctl(&spec, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    rapd.stop();
}

/// `kill -9` at many moments of an apply (links are not managed here; the apply changes the
/// uplink, adds an instrument and removes one): after each restart the file in force is
/// the old or the new one, the running parts are the file's, a new one is on trial (and
/// gets confirmed), an old one carries the interrupted apply in the audit trail, and at the
/// end every acknowledged message is in the data center exactly once.
#[test]
fn kill_9_during_an_apply_leaves_a_consistent_state() {
    use rapbox_testkit::peers::{Tinyproxy, TinyproxyConfig};
    let mut w = World::new("reconfig_kill9");
    w.start_nginx();
    let tiny = Tinyproxy::start(&w.dir.subdir("tinyproxy").unwrap(), &TinyproxyConfig::default()).expect("tinyproxy");
    let (a, b, c) = (instrument_addr(), instrument_addr(), instrument_addr());
    let mut spec = w.rapd_spec();
    spec.instruments = vec![("INST-A".into(), a), ("INST-B".into(), b)];
    let mut rapd = Rapd::start(&spec);
    rapd.wait_status("a first upload", Duration::from_secs(30), |s| s.uplink["last_success_ms"].is_u64());
    let old = config_file(&spec);
    let change = json!({
        "uplink.proxy": tiny.url(),
        "instrument[1]": null,
        "instrument[2]": {"serial": "INST-C", "model": "test", "listen": c.to_string()},
    });
    // One apply without a kill, to learn how long it takes; then back.
    let t0 = Instant::now();
    let r = apply(&spec, keys(change.clone()));
    let took = t0.elapsed();
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}");
    let new = config_file(&spec);
    wait_for("confirmation", Duration::from_secs(30), || show(&spec).trial.is_none().then_some(()));
    let r = apply(&spec, ApplyArgs { document: Some(old.clone()), rollback: false, ..ApplyArgs::default() });
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}");
    println!("an apply takes {:.0} ms here", took.as_secs_f64() * 1000.0);

    let all = vec![("INST-A".to_string(), a), ("INST-B".to_string(), b), ("INST-C".to_string(), c)];
    let runs = stream(&all);
    // A sweep from "before rapd reads the request" to "after it answered" (as long as an
    // apply took without load); while the agents stream an apply can take longer, so when
    // the sweep ended before any apply completed, kills follow at doubling delays until one
    // lands after the answer.
    let kills = 16;
    let extra = 8;
    let mut outcomes: Vec<String> = Vec::new();
    for k in 0..kills + extra {
        if k >= kills && outcomes.iter().any(|o| o.contains("-> applied")) {
            break;
        }
        let delay = if k < kills {
            took.mul_f64(1.1 * k as f64 / (kills - 1) as f64)
        } else {
            took.mul_f64(1.1 * f64::from(1u32 << (k - kills + 1)))
        };
        let sock = spec.socket();
        let args = if config_file(&spec) == old {
            keys(change.clone())
        } else {
            ApplyArgs { document: Some(old.clone()), ..ApplyArgs::default() }
        };
        let from_old = args.keys.is_some();
        let req = std::thread::spawn(move || {
            control::request_with_timeout(&sock, &Request::ConfigApply(args), Duration::from_secs(30))
        });
        std::thread::sleep(delay);
        rapd.kill9();
        let _ = req.join();
        let log = rapd.log_text();
        // What the kill left on disk, before rapd looks at it.
        let file = config_file(&spec);
        assert!(file == old || file == new, "the file in force is the old or the new one:\n{file}");
        let pending: Option<Value> =
            std::fs::read(spec.dir.join("rapd.toml.pending")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        rapd.respawn();
        rapd.wait_ready(Duration::from_secs(30));

        assert_eq!(config_file(&spec), file, "the start keeps the file it found");
        let sh = show(&spec);
        let st = rapd.status();
        let serials: Vec<String> =
            st.ports.as_array().unwrap().iter().map(|p| p["serial"].as_str().unwrap().to_owned()).collect();
        let in_force = if file == new {
            assert_eq!(serials, ["INST-A", "INST-C"], "the new configuration's ports");
            assert!(st.uplink["proxy"].is_string(), "the new configuration's uplink");
            "new"
        } else {
            assert_eq!(serials, ["INST-A", "INST-B"], "the old configuration's ports");
            assert!(st.uplink["proxy"].is_null(), "the old configuration's uplink");
            "old"
        };
        // A pending record names what the start made of it.
        if let Some(p) = &pending {
            let id = p["id"].as_str().unwrap();
            let event = if p["new_document"].as_str() == Some(file.as_str()) { "trial_resumed" } else { "interrupted" };
            assert!(
                sh.history.iter().any(|h| h.event == event && h.id.as_deref() == Some(id)),
                "{event} {id}: {:#?}",
                sh.history
            );
        }
        let outcome = if (in_force == "new") == from_old { "applied" } else { "not applied" };
        let phase = log
            .lines()
            .rev()
            .find_map(|l| l.split("reconfig: apply ").nth(1).map(|s| s.split_once(": ").map_or(s, |x| x.1)))
            .unwrap_or("(none)")
            .to_owned();
        let left = match &pending {
            None => "no pending record".to_string(),
            Some(p) if p["new_document"].as_str() == Some(file.as_str()) => "on trial".into(),
            Some(_) => "interrupted".into(),
        };
        outcomes.push(format!(
            "kill after {:>4} ms, last step {phase:<16} -> {outcome:<11} ({in_force} in force, {left})",
            delay.as_millis()
        ));
        // A new configuration on trial is confirmed by the data center after the restart.
        wait_for("no trial", Duration::from_secs(30), || show(&spec).trial.is_none().then_some(()));
    }
    println!("{}", outcomes.join("\n"));
    assert!(
        outcomes.iter().any(|o| o.contains("-> applied")) && outcomes.iter().any(|o| o.contains("-> not applied")),
        "{outcomes:#?}"
    );

    // All three instruments configured, so that every agent can finish.
    let third = if config_file(&spec) == old {
        json!({"instrument[2]": {"serial": "INST-C", "model": "test", "listen": c.to_string()}})
    } else {
        json!({"instrument[2]": {"serial": "INST-B", "model": "test", "listen": b.to_string()}})
    };
    let r = apply(&spec, ApplyArgs { rollback: false, ..keys(third) });
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}");
    let acked = finish(runs);
    wait_drained(&rapd);
    let redelivered = assert_stored_once(&w, &acked);
    println!("{redelivered} messages redelivered after a kill and recognised by the data center");
    let (code, out, _) = rapctl(&spec, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    let recs = config_records(&spec);
    let interrupted = recs.iter().filter(|r| r["action"] == "config.interrupted").count();
    println!("audit: {} config records, {interrupted} interrupted applies", recs.len());
    assert!(recs.iter().all(|r| r["action"] != "config.apply_failed"), "{recs:#?}");
    let _ = rapd.stop();
}

/// The data center's `configure` command: a bad configuration is refused with the key named;
/// a good one is accepted, then succeeds once the data center is heard again; one that breaks
/// the uplink is accepted, then fails `rolled_back` (reported once the uplink is back), also
/// when it takes two restarts; every apply is audited with the command as its actor.
#[test]
fn configure_commands_from_the_data_center() {
    use rapdc::commands::{CommandState, QueueCommand};
    let mut w = World::new("reconfig_command");
    w.start_nginx();
    let mut spec = w.rapd_spec();
    spec.instruments = vec![("INST-A".into(), instrument_addr())];
    spec.extra = "[commands]\npoll_interval_s = 1\n\n[reconfig]\nrollback_after_s = 6\n".into();
    let mut rapd = Rapd::start(&spec);
    let pid = rapd.pid();
    rapd.wait_status("a first upload", Duration::from_secs(30), |s| s.uplink["last_success_ms"].is_u64());
    let original = config_file(&spec);
    let configure = |id: &str, args: Value| {
        w.client
            .queue_command(&QueueCommand { id: Some(id.into()), args, ..QueueCommand::new(BOX_ID, "configure") })
            .expect("queue");
    };
    let wait = |id: &str, secs: u64| {
        w.client.wait_command(id, Duration::from_secs(secs), |c| c.state.is_final()).expect("command result")
    };

    configure("c-cfg-bad", json!({"keys": {"uplink.proxy": "ftp://10.0.0.9:21"}}));
    let c = wait("c-cfg-bad", 30);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Refused, "invalid_configuration"), "{c:?}");
    assert!(c.reason.contains("key `uplink.proxy`: scheme `ftp` is not supported"), "{}", c.reason);
    assert_eq!(config_file(&spec), original);

    configure("c-cfg-bad-args", json!({"keys": {"uplink.proxy": null}, "document": "x"}));
    let c = wait("c-cfg-bad-args", 30);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Refused, "malformed"), "{c:?}");

    configure("c-cfg-good", json!({"keys": {"uplink.io_timeout_ms": 6000}}));
    let c = wait("c-cfg-good", 30);
    assert_eq!(c.state, CommandState::Succeeded, "{c:?}");
    assert_eq!(c.detail["confirmed"], true, "{}", c.detail);
    assert!(c.results.iter().any(|r| r.outcome == rapwire::command::Outcome::Accepted), "{c:?}");
    assert!(config_file(&spec).contains("io_timeout_ms = 6000"));
    let good = config_file(&spec);

    let dead = format!("https://{}/api/v1/batches", rapbox_testkit::ports::unique_443().unwrap().ip());
    configure("c-cfg-broken", json!({"keys": {"uplink.url": dead}}));
    let c = wait("c-cfg-broken", 60);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Failed, "rolled_back"), "{c:?}");
    assert!(c.reason.contains("rolled back: the data center acknowledged no batch within 6 s"), "{}", c.reason);
    assert_eq!(config_file(&spec), good);

    configure("c-cfg-broken-restart", json!({"keys": {"uplink.url": dead, "queue.quota_bytes": 134217728}}));
    let c = wait("c-cfg-broken-restart", 90);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Failed, "rolled_back"), "{c:?}\n{}", rapd.log_text());
    rapd.wait_ready(Duration::from_secs(30));
    assert_eq!(rapd.pid(), pid);
    assert_eq!(config_file(&spec), good);

    let recs = config_records(&spec);
    let by: Vec<(String, String)> = recs
        .iter()
        .map(|r| (r["action"].as_str().unwrap().to_owned(), r["actor"].as_str().unwrap().to_owned()))
        .collect();
    let d = |id: &str| format!("datacenter:{id}");
    assert_eq!(
        by,
        [
            ("config.refused".to_string(), d("c-cfg-bad")),
            ("config.applied".into(), d("c-cfg-good")),
            ("config.confirmed".into(), "rapd".into()),
            ("config.applied".into(), d("c-cfg-broken")),
            ("config.rolled_back".into(), "rapd".into()),
            ("config.applied".into(), d("c-cfg-broken-restart")),
            ("config.trial_resumed".into(), "rapd".into()),
            ("config.rolled_back".into(), "rapd".into()),
        ],
        "{recs:#?}"
    );
    assert_eq!(recs[4]["detail"]["applied_by"], d("c-cfg-broken"));
    rapd.stop();
}
