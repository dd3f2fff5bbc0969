//! The `rapsim` binary against a minimal acking box: summary, live lines, exit codes.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::thread;

use rapwire::agent::{self, Frame, Reply};

/// A box that acks every report (`ack = false`: never answers).
fn fake_box(ack: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut rd = std::io::BufReader::new(s.try_clone().unwrap());
                let mut body = Vec::new();
                while agent::read_body(&mut rd, &mut body).is_ok() {
                    if let (true, Ok(Frame::Report(r))) = (ack, agent::decode(&body)) {
                        let reply = Reply::Ack { msg_id: r.msg_id, duplicate: false };
                        if agent::write_reply(&mut s, &reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn rapsim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rapsim"))
}

#[test]
fn runs_instruments_and_prints_json_summaries() {
    let (a, b) = (fake_box(true), fake_box(true));
    let out = rapsim()
        .args(["-i", &format!("DXI-0001={a}"), "-i", &format!("DXI-0002={b}")])
        .args(["--count", "500", "--alarm-every", "50", "--first-id", "1", "--json", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (v, serial) in lines.iter().zip(["DXI-0001", "DXI-0002"]) {
        assert_eq!(v["serial"], serial);
        assert_eq!(v["generated"], 500);
        assert_eq!(v["last_id"], 500);
        assert_eq!(v["stats"]["acked"], 500);
        assert_eq!(v["unacked"].as_array().map(Vec::len), Some(0));
    }
}

#[test]
fn prints_live_lines_and_stops_after_duration() {
    let a = fake_box(true);
    let out = rapsim().args(["-i", &format!("DXI-0003={a}"), "--rate", "200", "--duration", "1.6"]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let live: Vec<&str> = err.lines().filter(|l| l.contains("DXI-0003 sent=")).collect();
    assert!(!live.is_empty(), "no live line: {err}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.starts_with(&format!("DXI-0003 -> {a}: generated=")), "{summary}");
    assert!(summary.contains("unacked=0"), "{summary}");
}

#[test]
fn exit_codes() {
    let silent = fake_box(false);
    let out = rapsim().args(["-i", &format!("DXI-0004={silent}"), "--count", "5", "--stall", "0.5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no progress"), "{out:?}");
    let out = rapsim().args(["-i", "no-address"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = rapsim().args(["--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
