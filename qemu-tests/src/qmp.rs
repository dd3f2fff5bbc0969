//! A minimal QMP client: one connection per command (greeting, `qmp_capabilities`, the
//! command), asynchronous events skipped, the `return` value or the error returned.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::HarnessError;

fn err(sock: &Path, what: impl std::fmt::Display) -> HarnessError {
    HarnessError::Setup(format!("QMP {}: {what}", sock.display()))
}

/// Runs `command` with `arguments` on the QMP socket `sock` (waits up to 10 s for QEMU
/// to create it).
pub fn execute(sock: &Path, command: &str, arguments: serde_json::Value) -> Result<serde_json::Value, HarnessError> {
    let end = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= end => return Err(err(sock, e)),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| err(sock, e))?;
    let mut w = stream.try_clone().map_err(|e| err(sock, e))?;
    let mut r = BufReader::new(stream);
    let mut next = |want_reply: bool| -> Result<serde_json::Value, HarnessError> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(|e| err(sock, e))? == 0 {
                return Err(err(sock, "connection closed"));
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| err(sock, format!("{e}: {line}")))?;
            if !want_reply || v.get("return").is_some() || v.get("error").is_some() {
                return Ok(v);
            }
        }
    };
    let greeting = next(false)?;
    if greeting.get("QMP").is_none() {
        return Err(err(sock, format!("not a QMP greeting: {greeting}")));
    }
    for (cmd, args) in [("qmp_capabilities", serde_json::json!({})), (command, arguments)] {
        let req = serde_json::json!({ "execute": cmd, "arguments": args });
        writeln!(w, "{req}").map_err(|e| err(sock, e))?;
        let reply = next(true)?;
        if let Some(e) = reply.get("error") {
            return Err(err(sock, format!("{cmd}: {e}")));
        }
        if cmd == command {
            return Ok(reply["return"].clone());
        }
    }
    Err(err(sock, "no reply"))
}
