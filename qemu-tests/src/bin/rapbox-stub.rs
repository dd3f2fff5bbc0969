//! A stand-in for rapd and rapctl (chosen by the name it is run as) so that the
//! image and the harness can be exercised before the real daemon exists: as rapd it
//! sends READY=1 and WATCHDOG=1 to systemd and answers status requests on
//! /run/rapd/control.sock; as rapctl, `status --json` prints that answer.
//!
//! Build the image with `--binary rapd=target/debug/rapbox-stub --binary
//! rapctl=target/debug/rapbox-stub` to use it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::time::Duration;

const SOCKET: &str = "/run/rapd/control.sock";

fn notify(msg: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Ok(s) = UnixDatagram::unbound() {
            let _ = s.send_to(msg.as_bytes(), path);
        }
    }
}

fn rapd() -> std::io::Result<()> {
    let _ = std::fs::remove_file(SOCKET);
    let listener = UnixListener::bind(SOCKET)?;
    notify("READY=1\nSTATUS=stub: no data path");
    std::thread::spawn(|| loop {
        notify("WATCHDOG=1");
        std::thread::sleep(Duration::from_secs(5));
    });
    for conn in listener.incoming() {
        let mut conn = conn?;
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line)?;
        let reply = serde_json::json!({
            "daemon": "rapbox-stub",
            "queue_depth": 0,
            "uplink": "stub",
            "fips": "stub",
            "last_upload": null,
        });
        writeln!(conn, "{reply}")?;
    }
    Ok(())
}

fn rapctl(args: &[String]) -> std::io::Result<()> {
    if args.first().map(String::as_str) != Some("status") {
        eprintln!("usage: rapctl status --json");
        std::process::exit(2);
    }
    let mut s = UnixStream::connect(SOCKET)?;
    s.write_all(b"status\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    print!("{out}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.first().and_then(|a| a.rsplit('/').next()).unwrap_or("").to_string();
    let res = if name == "rapctl" { rapctl(&args[1..]) } else { rapd() };
    if let Err(e) = res {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}
