//! The audit trail end to end: a real rapd (FIPS mode) writes hash-chained records, ships
//! them through the queue and the real nginx mTLS front door to rapdc after an outage, and
//! `rapctl audit` names the first broken link of a tampered log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::rapd::{depth, Rapd, Spec};
use common::{World, BOX_ID};
use rapbox::audit::chain::sha256_hex;
use rapbox::audit::{state_path, Record, GENESIS};

fn audit_path(spec: &Spec) -> PathBuf {
    spec.queue_path().with_file_name("audit.log")
}

fn rapctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rapctl")).args(args).output().expect("run rapctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect()
}

/// Waits until rapd has every record up to `seq` in its queue.
fn shipped(rapd: &Rapd, seq: u64) -> rapbox::control::Status {
    rapd.wait_status(&format!("audit records up to {seq} queued"), Duration::from_secs(20), |s| {
        s.audit["last_seq"] == seq && s.audit["shipped_seq"] == seq
    })
}

/// Records made while the data center is down reach it once it is up: in order, each
/// chained to the one before, byte for byte the lines of the box's file.
#[test]
fn audit_records_reach_the_data_center_after_an_outage() {
    let mut w = World::new("audit_outage");
    let spec = w.rapd_spec();
    let mut rapd = Rapd::start(&spec);
    // rapd.start, fips.gate, config.loaded: queued at priority 0 while nobody listens.
    let st = shipped(&rapd, 3);
    assert_eq!(depth(&st), 3);
    assert_eq!(st.queue["depth_by_priority"][0], 3);
    assert!(st.audit["last_error"].is_null(), "{:?}", st.audit);
    assert!(rapd.stop().unwrap().success(), "{}", rapd.log_text());
    // rapd.stop went to the queue before it closed; another start adds three more.
    let rapd = Rapd::start(&spec);
    let st = shipped(&rapd, 7);
    assert_eq!(depth(&st), 7, "the stop record was queued before rapd stopped");
    assert_eq!(w.batch_posts(), 0);

    w.start_nginx();
    rapd.wait_status("audit records delivered", Duration::from_secs(60), |s| depth(s) == 0);
    let reports = w.client.all_reports(Some(BOX_ID), Some("")).expect("reports");
    let file = lines(&audit_path(&spec));
    assert_eq!(file.len(), 7);
    assert_eq!(reports.len(), 7, "{reports:?}");
    let mut prev = GENESIS.to_string();
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.kind, rapwire::Kind::Audit);
        assert_eq!((r.msg_id, r.priority, r.deliveries), (i as u64 + 1, 0, 1));
        assert_eq!(r.payload, file[i], "the data center holds the box's line byte for byte");
        let rec: Record = serde_json::from_str(&r.payload).unwrap();
        assert_eq!(rec.seq, i as u64 + 1);
        assert_eq!(rec.prev, prev, "record {} chains to the one before", rec.seq);
        prev = sha256_hex(r.payload.as_bytes()).unwrap();
    }
    let actions: Vec<String> =
        reports.iter().map(|r| serde_json::from_str::<Record>(&r.payload).unwrap().action).collect();
    assert_eq!(
        actions,
        ["rapd.start", "fips.gate", "config.loaded", "rapd.stop", "rapd.start", "fips.gate", "config.loaded"]
    );
    let config: Record = serde_json::from_str(&reports[2].payload).unwrap();
    assert_eq!(config.target, spec.dir.join("rapd.toml").display().to_string());
    let cfg_hash = sha256_hex(&std::fs::read(spec.dir.join("rapd.toml")).unwrap()).unwrap();
    assert_eq!(config.detail["sha256"], cfg_hash.as_str());
    let gate: Record = serde_json::from_str(&reports[1].payload).unwrap();
    assert!(gate.detail["providers"].as_array().unwrap().iter().any(|p| p == "fips"), "{:?}", gate.detail);
    let stop: Record = serde_json::from_str(&reports[3].payload).unwrap();
    assert_eq!(stop.detail["reason"], "SIGTERM");
}

/// Copies the log and its state file into `dir/name/`, lets `tamper` change the copy,
/// and returns what `rapctl audit verify --file` says.
fn verify_copy(log: &Path, dir: &Path, name: &str, tamper: impl FnOnce(&Path)) -> (Option<i32>, String, PathBuf) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let copy = d.join("audit.log");
    std::fs::copy(log, &copy).unwrap();
    std::fs::copy(state_path(log), state_path(&copy)).unwrap();
    tamper(&copy);
    let out = rapctl(&["audit", "verify", "--file", copy.to_str().unwrap()]);
    (out.status.code(), stdout(&out).trim_end().to_owned(), copy)
}

fn edit_lines(p: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut l = lines(p);
    f(&mut l);
    std::fs::write(p, l.join("\n") + "\n").unwrap();
}

#[test]
fn rapctl_audit_verify_names_the_first_broken_link() {
    let w = World::new("audit_rapctl");
    let spec = w.rapd_spec();
    let sock = spec.socket();
    let sock = sock.to_str().unwrap();
    let log = audit_path(&spec);
    let mut rapd = Rapd::start(&spec);
    assert!(rapd.stop().unwrap().success());
    let rapd = Rapd::start(&spec);
    shipped(&rapd, 7);

    // Through rapd.
    let out = rapctl(&["--socket", sock, "audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout(&out).trim_end(),
        format!(
            "audit log {}: intact, 7 records (1 to 7), end checked against {}",
            log.display(),
            state_path(&log).display()
        )
    );
    let out = rapctl(&["--socket", sock, "audit", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["intact"].as_bool(), v["records"].as_u64(), v["last_seq"].as_u64()), (Some(true), Some(7), Some(7)));
    let out = rapctl(&["--socket", sock, "audit", "log", "-n", "3"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    let shown: Vec<&str> = text.lines().collect();
    assert_eq!(shown.len(), 3, "{text}");
    let start = format!("Z  rapd  rapd.start  success  rapd {}  {{\"pid\":", env!("CARGO_PKG_VERSION"));
    assert!(shown[0].starts_with("     5  20") && shown[0].contains(&start), "{text}");
    assert!(shown[1].contains("  rapd  fips.gate  success  "), "{text}");
    assert!(
        shown[2].contains(&format!("  rapd  config.loaded  success  {}  {{", spec.dir.join("rapd.toml").display())),
        "{text}"
    );
    let out = rapctl(&["--socket", sock, "audit", "log", "-n", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [6, 7]);

    // Usage errors and nothing to ask.
    assert_eq!(rapctl(&["audit", "verify", "--bogus"]).status.code(), Some(2));
    assert_eq!(rapctl(&["--socket", sock, "audit", "log", "-n", "0"]).status.code(), Some(2));
    let out = rapctl(&["--socket", "/nonexistent/rapd.sock", "audit", "verify"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach rapd"), "{out:?}");
    let out = rapctl(&["audit", "verify", "--file", "/nonexistent/audit.log"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("rapctl: cannot check /nonexistent/audit.log: "),
        "{out:?}"
    );

    // Offline copies of the log as rapd left it: 8 records with rapd.stop.
    let mut rapd = rapd;
    assert!(rapd.stop().unwrap().success());
    assert_eq!(lines(&log).len(), 8);
    let dir = spec.dir.join("copies");
    let broken = |p: &Path, msg: &str| format!("audit log {}: BROKEN: {msg}", p.display());

    let (code, out, copy) = verify_copy(&log, &dir, "intact", |_| {});
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out,
        format!(
            "audit log {}: intact, 8 records (1 to 8), end checked against {}",
            copy.display(),
            state_path(&copy).display()
        )
    );
    let (code, out, copy) = verify_copy(&log, &dir, "no_state", |p| std::fs::remove_file(state_path(p)).unwrap());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with(&format!("end not checked (no {})", state_path(&copy).display())), "{out}");

    // An edit: one value of record 3 changed.
    let (code, out, copy) = verify_copy(&log, &dir, "edit", |p| {
        edit_lines(p, |l| l[2] = l[2].replace("\"firewall\":false", "\"firewall\":true"))
    });
    assert_eq!((code, out), (Some(1), broken(&copy, "record 3: hash does not match its content")));
    // An edit with the record's own hash made to fit: the next link breaks.
    let (code, out, copy) = verify_copy(&log, &dir, "edit_rehashed", |p| {
        edit_lines(p, |l| {
            let r: Record = serde_json::from_str(&l[2]).unwrap();
            let detail = serde_json::json!({ "forged": true });
            let line = rapbox::audit::chain::build_line(
                r.seq, &r.time, &r.actor, &r.action, &r.target, r.outcome, &detail, &r.prev,
            )
            .unwrap();
            l[2] = String::from_utf8(line).unwrap();
        })
    });
    assert_eq!((code, out), (Some(1), broken(&copy, "record 4: prev hash does not match record 3")));
    // A deletion in the middle.
    let (code, out, copy) = verify_copy(&log, &dir, "delete", |p| {
        edit_lines(p, |l| {
            l.remove(4);
        })
    });
    assert_eq!((code, out), (Some(1), broken(&copy, "sequence gap after record 4")));
    // Two records swapped.
    let (code, out, copy) = verify_copy(&log, &dir, "reorder", |p| edit_lines(p, |l| l.swap(1, 2)));
    assert_eq!(
        (code, out),
        (Some(1), broken(&copy, "records out of order: record 3 follows record 1, record 2 is at line 3"))
    );
    // Garbage appended, with and without a newline.
    let append = |bytes: &'static [u8]| {
        move |p: &Path| {
            use std::io::Write;
            std::fs::OpenOptions::new().append(true).open(p).unwrap().write_all(bytes).unwrap();
        }
    };
    let (code, out, copy) = verify_copy(&log, &dir, "garbage", append(b"garbage\n"));
    assert_eq!(
        (code, out),
        (Some(1), broken(&copy, "line 9, after record 8: not an audit record: expected value at line 1 column 1"))
    );
    let (code, out, copy) = verify_copy(&log, &dir, "partial", append(b"{\"seq\":9,\"time\""));
    assert_eq!((code, out), (Some(1), broken(&copy, "file ends with a partial record")));
    // The end cut off: only the state file knows.
    let (code, out, copy) = verify_copy(&log, &dir, "truncated", |p| {
        edit_lines(p, |l| {
            l.pop();
        })
    });
    assert_eq!(
        (code, out),
        (
            Some(1),
            broken(
                &copy,
                &format!(
                    "file ends after record 7, but the box wrote up to record 8 ({}): the end was cut off",
                    state_path(&copy).display()
                )
            )
        )
    );
    let out = rapctl(&["audit", "verify", "--json", "--file", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["intact"].as_bool(), v["records"].as_u64()), (Some(false), Some(7)));
    assert!(v["error"].as_str().unwrap().starts_with("file ends after record 7"), "{v}");

    // The live log edited while rapd is down: rapd records what it found and goes on; the
    // break stays visible.
    edit_lines(&log, |l| {
        l.remove(1);
    });
    let rapd = Rapd::start(&spec);
    shipped(&rapd, 12);
    let out = rapctl(&["--socket", sock, "audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).trim_end(), broken(&log, "sequence gap after record 1"));
    let out = rapctl(&["--socket", sock, "audit", "log", "-n", "4", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["seq"], 9);
    assert_eq!(v[0]["action"], "audit.verify");
    assert_eq!(v[0]["outcome"], "failure");
    assert_eq!(v[0]["detail"]["error"], "sequence gap after record 1");
    assert_eq!(v[1]["action"], "rapd.start");
    assert!(
        rapd.log_text().contains("sequence gap after record 1 (recorded; rapd goes on appending)"),
        "{}",
        rapd.log_text()
    );
}
