use std::sync::atomic::AtomicU32;

use serde_json::json;

use super::*;

/// Counts its runs; answers with `verdict`.
struct Counting {
    runs: AtomicU32,
    verdict: Verdict,
    resume: Option<Verdict>,
}

impl Counting {
    fn new(verdict: Verdict) -> Arc<Counting> {
        Arc::new(Counting { runs: AtomicU32::new(0), verdict, resume: None })
    }
}

impl Handler for Counting {
    fn run(&self, _cmd: &Command, _done: Completion) -> Verdict {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.verdict.clone()
    }
    fn resume(&self, cmd: &Command, done: Completion) -> Verdict {
        match &self.resume {
            Some(v) => v.clone(),
            None => {
                let _ = (cmd, done);
                Verdict::failed("interrupted", "rapd restarted while the command was running; it is not run again")
            }
        }
    }
}

struct Box_ {
    dir: PathBuf,
}

impl Box_ {
    fn new(name: &str) -> Box_ {
        let dir = std::env::temp_dir().join(format!("rapd-dispatch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Box_ { dir }
    }

    fn open(&self, handlers: &[(&str, Arc<dyn Handler>)]) -> (Dispatcher, Arc<AtomicBool>, DispatcherThread) {
        let d =
            Dispatcher::open(&self.dir.join("commands.db"), &["INST-1".to_string(), "INST-2".to_string()], 2).unwrap();
        for (k, h) in handlers {
            d.register(k, h.clone());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let t = d.start(stop.clone()).unwrap();
        (d, stop, t)
    }
}

impl Drop for Box_ {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cmd(id: &str, kind: &str) -> serde_json::Value {
    let now = now_ms();
    json!({"id": id, "kind": kind, "issued_ms": now, "expires_ms": now + 60_000})
}

/// Waits until the unreported results include one for `id` with a final outcome.
fn result_of(d: &Dispatcher, id: &str) -> CommandResult {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = d.results(100).into_iter().find(|r| r.id == id && r.outcome.is_final()) {
            return r;
        }
        assert!(Instant::now() < end, "no final result for {id}; status {:?}", d.status());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(stop: Arc<AtomicBool>, t: DispatcherThread) {
    stop.store(true, Ordering::SeqCst);
    t.join();
}

#[test]
fn refusals_say_why() {
    let b = Box_::new("refusals");
    let (d, s, t) = b.open(&[("status", Counting::new(Verdict::ok()))]);
    let mut expired = cmd("c-exp", "status");
    expired["expires_ms"] = json!(1000);
    expired["issued_ms"] = json!(10);
    let mut bad_target = cmd("c-tgt", "status");
    bad_target["target"] = json!(["INST-9"]);
    d.deliver(vec![
        expired,
        cmd("c-unk", "make_coffee"),
        bad_target,
        json!({"id": "c-mal", "kind": "status"}),
        json!({"kind": "status"}),
    ]);
    let r = result_of(&d, "c-exp");
    assert_eq!((r.outcome, r.code.as_str()), (Outcome::Refused, code::EXPIRED));
    assert!(r.reason.contains("lifetime ended at 1970-01-01T00:00:01.000Z"), "{}", r.reason);
    let r = result_of(&d, "c-unk");
    assert_eq!(r.code, code::UNKNOWN_KIND);
    assert_eq!(r.reason, "this box does not know command kind `make_coffee` (it knows status)");
    let r = result_of(&d, "c-tgt");
    assert_eq!(r.code, code::BAD_TARGET);
    assert_eq!(r.reason, "instrument `INST-9` is not cabled to this box (its instruments: INST-1, INST-2)");
    let r = result_of(&d, "c-mal");
    assert_eq!(r.code, code::MALFORMED);
    assert!(r.reason.contains("missing field `issued_ms`"), "{}", r.reason);
    let st = d.status();
    assert_eq!((st.received, st.refused, st.executed), (5, 5, 0));
    assert_eq!(d.unreported(), 4, "the command without an id cannot be answered");
    stop(s, t);
}

#[test]
fn a_command_runs_once_and_a_redelivery_reports_again_also_after_a_restart() {
    let b = Box_::new("once");
    let h = Counting::new(Verdict::Succeeded { detail: json!({"answer": 42}) });
    let (d, s, t) = b.open(&[("status", h.clone())]);
    d.deliver(vec![cmd("c-1", "status")]);
    let r = result_of(&d, "c-1");
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(r.detail, json!({"answer": 42}));
    d.recorded(&[Recorded { id: "c-1".into(), outcome: Outcome::Succeeded }]);
    assert_eq!(d.unreported(), 0);

    d.deliver(vec![cmd("c-1", "status")]);
    assert_eq!(result_of(&d, "c-1").detail, json!({"answer": 42}), "the stored result, reported again");
    assert_eq!(h.runs.load(Ordering::SeqCst), 1);
    d.recorded(&[Recorded { id: "c-1".into(), outcome: Outcome::Succeeded }]);
    stop(s, t);
    drop(d);

    let (d, s, t) = b.open(&[("status", h.clone())]);
    assert_eq!(d.unreported(), 0);
    d.deliver(vec![cmd("c-1", "status")]);
    assert_eq!(result_of(&d, "c-1").outcome, Outcome::Succeeded);
    assert_eq!(h.runs.load(Ordering::SeqCst), 1, "not run again after a restart");
    assert_eq!(d.status().redelivered, 1);
    stop(s, t);
}

#[test]
fn results_stay_until_recorded_across_restarts() {
    let b = Box_::new("unreported");
    let (d, s, t) = b.open(&[("status", Counting::new(Verdict::failed("boom", "it broke")))]);
    d.deliver(vec![cmd("c-1", "status")]);
    let r = result_of(&d, "c-1");
    assert_eq!((r.outcome, r.code.as_str(), r.reason.as_str()), (Outcome::Failed, "boom", "it broke"));
    // Recorded with another outcome (stale): still reported.
    d.recorded(&[Recorded { id: "c-1".into(), outcome: Outcome::Accepted }]);
    stop(s, t);
    drop(d);
    let (d, s, t) = b.open(&[]);
    assert_eq!(d.unreported(), 1);
    assert_eq!(d.results(10)[0].reason, "it broke");
    stop(s, t);
}

#[test]
fn running_commands_resume_through_their_handler() {
    let b = Box_::new("resume");
    let long = Arc::new(Counting {
        runs: AtomicU32::new(0),
        verdict: Verdict::Running { detail: json!({"bytes": 0}) },
        resume: Some(Verdict::Succeeded { detail: json!({"resumed": true}) }),
    });
    let short = Counting::new(Verdict::Running { detail: json!({}) });
    let (d, s, t) = b.open(&[("download", long.clone()), ("status", short.clone())]);
    d.deliver(vec![cmd("c-long", "download"), cmd("c-short", "status")]);
    let end = Instant::now() + Duration::from_secs(10);
    while d.results(10).iter().filter(|r| r.outcome == Outcome::Accepted).count() < 2 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.status().running, 2);
    stop(s, t);
    drop(d);
    // After the restart: the downloader continues, the other kind is not run again.
    let (d, s, t) = b.open(&[("download", long.clone()), ("status", short.clone())]);
    assert_eq!(result_of(&d, "c-long").detail, json!({"resumed": true}));
    let r = result_of(&d, "c-short");
    assert_eq!((r.outcome, r.code.as_str()), (Outcome::Failed, "interrupted"));
    assert_eq!((long.runs.load(Ordering::SeqCst), short.runs.load(Ordering::SeqCst)), (1, 1));
    stop(s, t);
}

struct Blocking {
    gate: Mutex<Receiver<()>>,
    started: AtomicU32,
}

impl Handler for Blocking {
    fn run(&self, _cmd: &Command, _done: Completion) -> Verdict {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _ = lock(&self.gate).recv_timeout(Duration::from_secs(10));
        Verdict::ok()
    }
}

#[test]
fn at_most_max_running_run_at_once_and_the_rest_wait_their_turn() {
    let b = Box_::new("slots");
    let (gate_tx, gate_rx) = mpsc::channel();
    let h = Arc::new(Blocking { gate: Mutex::new(gate_rx), started: AtomicU32::new(0) });
    let (d, s, t) = b.open(&[("slow", h.clone())]);
    d.deliver((0..3).map(|i| cmd(&format!("c-{i}"), "slow")).collect());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.started.load(Ordering::SeqCst), 2, "two slots");
    assert_eq!(d.status().pending, 1);
    for _ in 0..3 {
        gate_tx.send(()).unwrap();
    }
    for i in 0..3 {
        assert_eq!(result_of(&d, &format!("c-{i}")).outcome, Outcome::Succeeded);
    }
    assert_eq!(h.started.load(Ordering::SeqCst), 3);
    stop(s, t);
}

struct Finisher;

impl Handler for Finisher {
    fn run(&self, _cmd: &Command, done: Completion) -> Verdict {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            done.finish(Verdict::Succeeded { detail: json!({"later": 1}) });
            done.finish(Verdict::failed("x", "a second end is ignored"));
        });
        Verdict::Running { detail: json!({"started": 1}) }
    }
}

#[test]
fn a_running_command_finishes_through_its_completion_once() {
    let b = Box_::new("completion");
    let (d, s, t) = b.open(&[("later", Arc::new(Finisher))]);
    d.deliver(vec![cmd("c-1", "later")]);
    let r = result_of(&d, "c-1");
    assert_eq!((r.outcome, r.detail.clone()), (Outcome::Succeeded, json!({"later": 1})));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(result_of(&d, "c-1").outcome, Outcome::Succeeded);
    assert_eq!(d.status().executed, 1);
    stop(s, t);
}
