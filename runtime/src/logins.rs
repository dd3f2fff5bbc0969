//! Logins into the audit trail: rapd listens to the kernel audit stream (the netlink
//! multicast group that any process with `CAP_AUDIT_READ` may join, alongside auditd)
//! and turns the login events that libpam and login(1) send there into audit records:
//!
//! | kernel audit record | audit trail |
//! |---|---|
//! | `USER_AUTH` `res=failed` (wrong password, unknown user, locked account) | `console.login` / `ssh.login`, outcome `denied` |
//! | `USER_START` `op=PAM:session_open` `res=success` | `console.login` / `ssh.login`, outcome `success` |
//! | `USER_END` `op=PAM:session_close` | `console.logout` / `ssh.logout` |
//! | `ANOM_LOGIN_FAILURES`, `RESP_ACCT_LOCK` (pam_faillock locked the account) | `console.account_locked`, outcome `denied` |
//!
//! Only the programs people log in with count (login on the console, sshd); the user's
//! own later actions on the control socket are recorded by rapd with the peer's uid.
//!
//! The system's own audit events go the same way, as `system.audit` records (so they are
//! hash-chained and shipped up the uplink with high priority, besides auditd's log that
//! rsyslog sends to the log host): a syscall that one of hardening's audit rules matched
//! (the `SYSCALL` record carrying the rule's key; auditd's log keeps its PATH/CWD records),
//! a change of the audit configuration, account and password changes, commands run with
//! privileges, boot and shutdown, and a crashing program or a promiscuous interface
//! ([`system_event`]). At most [`SYSTEM_BURST`] of them at once and [`SYSTEM_PER_SEC`] a
//! second after that: what a runaway rule would add beyond is counted and reported in a
//! `system.audit_suppressed` record, so the queue cannot be flooded by the kernel. The
//! kernel's multicast does not wait for slow readers: a burst beyond the socket buffer
//! would be lost (the kernel audit log itself, written by auditd and forwarded by rsyslog,
//! keeps everything). Logins are rare; the buffer holds thousands.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::audit::{self, Event, Outcome};

const NETLINK_AUDIT: libc::c_int = 9;
/// AUDIT_NLGRP_READLOG: the read-only multicast group of the audit stream.
const NLGRP_READLOG: u32 = 1;

const AUDIT_USER_AUTH: u16 = 1100;
const AUDIT_USER_START: u16 = 1105;
const AUDIT_USER_END: u16 = 1106;
const AUDIT_ANOM_LOGIN_FAILURES: u16 = 2100;
const AUDIT_RESP_ACCT_LOCK: u16 = 2107;
const AUDIT_SYSCALL: u16 = 1300;

/// Record types forwarded as `system.audit` besides keyed syscalls (linux/audit.h).
const SYSTEM_TYPES: &[(u16, &str)] = &[
    (1102, "USER_MGMT"),
    (1108, "USER_CHAUTHTOK"),
    (1114, "ADD_USER"),
    (1115, "DEL_USER"),
    (1116, "ADD_GROUP"),
    (1117, "DEL_GROUP"),
    (1123, "USER_CMD"),
    (1125, "CHUSER_ID"),
    (1127, "SYSTEM_BOOT"),
    (1128, "SYSTEM_SHUTDOWN"),
    (1305, "CONFIG_CHANGE"),
    (1700, "ANOM_PROMISCUOUS"),
    (1701, "ANOM_ABEND"),
];

/// `system.audit` records allowed at once ...
pub const SYSTEM_BURST: u32 = 200;
/// ... and per second after that.
pub const SYSTEM_PER_SEC: u32 = 20;

/// A token bucket for `system.audit` records; counts what it refuses.
#[derive(Debug)]
pub struct Limiter {
    tokens: f64,
    last: std::time::Instant,
    /// Refused since the last report.
    pub suppressed: u64,
}

impl Limiter {
    pub fn new(now: std::time::Instant) -> Limiter {
        Limiter { tokens: f64::from(SYSTEM_BURST), last: now, suppressed: 0 }
    }

    fn take(&mut self, now: std::time::Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * f64::from(SYSTEM_PER_SEC)).min(f64::from(SYSTEM_BURST));
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }

    /// Whether one more record may be written at `now` (if not, it is counted).
    pub fn allow(&mut self, now: std::time::Instant) -> bool {
        let ok = self.take(now);
        if !ok {
            self.suppressed += 1;
        }
        ok
    }

    /// The `system.audit_suppressed` record for what was refused, once a record may be
    /// written again (the report itself takes a token).
    pub fn report(&mut self, now: std::time::Instant) -> Option<Event> {
        if self.suppressed == 0 || !self.take(now) {
            return None;
        }
        let n = std::mem::take(&mut self.suppressed);
        Some(Event::new("system.audit_suppressed").target("kernel audit").outcome(Outcome::Failure).detail(
            serde_json::json!({
                "suppressed": n,
                "reason": format!(
                    "more than {SYSTEM_BURST} system audit events at once or {SYSTEM_PER_SEC} a second: \
                     these are only in auditd's log (/var/log/audit/audit.log, also sent to the log host)"
                ),
            }),
        ))
    }
}

/// Why the audit stream cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LoginsError {
    #[error("kernel audit stream: {what}: {source} (rapd needs CAP_AUDIT_READ)")]
    Socket { what: &'static str, source: std::io::Error },
}

/// Opens the multicast socket (fails without CAP_AUDIT_READ or without kernel audit).
pub fn open() -> Result<OwnedFd, LoginsError> {
    // SAFETY: plain socket(2)/bind(2)/setsockopt(2) calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_AUDIT);
        if fd < 0 {
            return Err(LoginsError::Socket { what: "socket", source: std::io::Error::last_os_error() });
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = 1 << (NLGRP_READLOG - 1);
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            return Err(LoginsError::Socket {
                what: "joining the read-log group",
                source: std::io::Error::last_os_error(),
            });
        }
        let size: libc::c_int = 1 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok(fd)
    }
}

/// Records login events from the audit stream until `stop` is set.
pub fn spawn(fd: OwnedFd, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("logins".into()).stack_size(256 * 1024).spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let mut limiter = Limiter::new(std::time::Instant::now());
        while !stop.load(Ordering::SeqCst) {
            if let Some(ev) = limiter.report(std::time::Instant::now()) {
                audit::record(ev);
            }
            // SAFETY: recv into a buffer we own, of its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        log::warn!("logins: the kernel audit stream overran rapd's buffer: events were lost");
                        continue;
                    }
                    _ => {
                        log::error!(
                            "logins: reading the kernel audit stream: {e}; login events are no longer recorded"
                        );
                        audit::record(
                            Event::new("logins.watch")
                                .target("kernel audit")
                                .outcome(Outcome::Failure)
                                .detail(serde_json::json!({ "error": e.to_string() })),
                        );
                        std::thread::sleep(Duration::from_secs(1));
                        return;
                    }
                }
            }
            for (ty, text) in messages(&buf[..n as usize]) {
                if let Some(ev) = event(ty, &text) {
                    audit::record(ev);
                } else if let Some(ev) = system_event(ty, &text) {
                    if limiter.allow(std::time::Instant::now()) {
                        audit::record(ev);
                    }
                }
            }
        }
    })
}

/// The (type, text) of each netlink message in one datagram.
fn messages(mut b: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if len < 16 || len > b.len() {
            // The kernel's audit multicast sets nlmsg_len to the payload without the header
            // on some versions: take the rest of the datagram.
            let text = String::from_utf8_lossy(&b[16..]).trim_end_matches('\0').to_string();
            out.push((ty, text));
            break;
        }
        let text = String::from_utf8_lossy(&b[16..len]).trim_end_matches('\0').to_string();
        out.push((ty, text));
        let next = (len + 3) & !3;
        b = &b[next.min(b.len())..];
    }
    out
}

/// `key=value` fields of an audit record's text, including those inside `msg='…'`.
/// Quoted values are unquoted; unquoted hex (how audit encodes values with spaces or
/// quotes) is decoded for `acct`.
pub fn fields(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut s = text;
    // Skip the "audit(…): " prefix.
    if let Some(i) = s.find("): ") {
        if s[..i].contains("audit(") {
            s = &s[i + 3..];
        }
    }
    let mut flat = String::new();
    // Flatten msg='…' into the field list.
    let mut rest = s;
    while let Some(i) = rest.find("msg='") {
        flat.push_str(&rest[..i]);
        flat.push(' ');
        let after = &rest[i + 5..];
        let end = after.find('\'').unwrap_or(after.len());
        flat.push_str(&after[..end]);
        flat.push(' ');
        rest = after.get(end + 1..).unwrap_or("");
    }
    flat.push_str(rest);
    let b = flat.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b' ' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        let key = flat[start..i].to_owned();
        i += 1;
        let value = if i < b.len() && b[i] == b'"' {
            let vs = i + 1;
            let ve = flat[vs..].find('"').map(|e| vs + e).unwrap_or(b.len());
            i = ve + 1;
            flat[vs..ve].to_owned()
        } else {
            let vs = i;
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
            let v = &flat[vs..i];
            if key == "acct" && v.len() % 2 == 0 && !v.is_empty() && v.bytes().all(|c| c.is_ascii_hexdigit()) {
                hex_decode(v).unwrap_or_else(|| v.to_owned())
            } else {
                v.to_owned()
            }
        };
        out.push((key, value));
    }
    out
}

fn hex_decode(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Which login program a record comes from: `console` (login) or `ssh` (sshd).
fn area(exe: &str) -> Option<&'static str> {
    match exe.rsplit('/').next().unwrap_or("") {
        "login" => Some("console"),
        "sshd" => Some("ssh"),
        _ => None,
    }
}

/// The audit event for one kernel audit record, if it is a login event.
pub fn event(ty: u16, text: &str) -> Option<Event> {
    if !matches!(
        ty,
        AUDIT_USER_AUTH | AUDIT_USER_START | AUDIT_USER_END | AUDIT_ANOM_LOGIN_FAILURES | AUDIT_RESP_ACCT_LOCK
    ) {
        return None;
    }
    let f = fields(text);
    let get = |k: &str| f.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let exe = get("exe").unwrap_or("");
    let op = get("op").unwrap_or("");
    let res = get("res").unwrap_or("");
    // pam_faillock's lock records name the account by uid (`suid=`, or `uid=` in its text).
    let by_uid = || get("suid").or_else(|| get("uid")).and_then(|u| u.parse::<u32>().ok()).map(crate::peer::user_name);
    let acct = match get("acct").filter(|a| !a.is_empty() && *a != "?" && *a != "(unknown)") {
        Some(a) => a.to_owned(),
        None if matches!(ty, AUDIT_ANOM_LOGIN_FAILURES | AUDIT_RESP_ACCT_LOCK) => {
            by_uid().unwrap_or_else(|| "unknown user".into())
        }
        None => "unknown user".into(),
    };
    let terminal = get("terminal").filter(|t| *t != "?").unwrap_or("");
    let addr = get("addr").filter(|a| *a != "?");
    let area = match ty {
        AUDIT_ANOM_LOGIN_FAILURES | AUDIT_RESP_ACCT_LOCK => area(exe).unwrap_or("console"),
        _ => area(exe)?,
    };
    let mut detail = serde_json::json!({ "exe": exe, "kernel_audit": text_id(text) });
    if let Some(a) = addr {
        detail["addr"] = a.into();
    }
    if let Some(g) = get("grantors") {
        detail["grantors"] = g.into();
    }
    let actor = format!("{area}:{acct}");
    let target = if terminal.is_empty() { area.to_owned() } else { terminal.to_owned() };
    let ev = match ty {
        AUDIT_USER_AUTH if res == "failed" => {
            detail["reason"] = "authentication failed (wrong password, unknown user or locked account)".into();
            Event::new(&format!("{area}.login")).outcome(Outcome::Denied)
        }
        AUDIT_USER_START if op == "PAM:session_open" && res == "success" => Event::new(&format!("{area}.login")),
        AUDIT_USER_END if op == "PAM:session_close" => Event::new(&format!("{area}.logout")),
        AUDIT_ANOM_LOGIN_FAILURES | AUDIT_RESP_ACCT_LOCK => {
            detail["reason"] = "too many failed logins: the account is locked (faillock --user NAME --reset)".into();
            Event::new(&format!("{area}.account_locked")).outcome(Outcome::Denied)
        }
        _ => return None,
    };
    Some(ev.actor(&actor).target(&target).detail(detail))
}

/// The `system.audit` record for one kernel audit record, if it is a system audit event:
/// a syscall matched by a keyed audit rule, or one of [`SYSTEM_TYPES`]. Target: the rule's
/// key (or the record type); actor: the login user (`auid`) when there is one, else
/// `kernel`; outcome `failure` for a failed syscall (`success=no`) or `res=failed`.
pub fn system_event(ty: u16, text: &str) -> Option<Event> {
    let type_name = match ty {
        AUDIT_SYSCALL => "SYSCALL",
        _ => SYSTEM_TYPES.iter().find(|(t, _)| *t == ty)?.1,
    };
    let f = fields(text);
    let get = |k: &str| f.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let key = get("key").filter(|k| !k.is_empty() && *k != "(null)");
    if ty == AUDIT_SYSCALL && key.is_none() {
        return None;
    }
    let mut detail = serde_json::json!({ "type": type_name, "kernel_audit": text_id(text) });
    for k in ["syscall", "exit", "success", "op", "res", "exe", "comm", "uid", "auid", "pid", "acct", "dev", "sig"] {
        if let Some(v) = get(k).filter(|v| *v != "?") {
            detail[k] = v.into();
        }
    }
    if let Some(k) = key {
        detail["key"] = k.into();
    }
    let failed = get("success") == Some("no") || get("res").is_some_and(|r| r == "failed" || r == "0");
    let actor = match get("auid").and_then(|a| a.parse::<u32>().ok()).filter(|a| *a != u32::MAX) {
        Some(auid) => format!("login:{}", crate::peer::user_name(auid)),
        None => "kernel".to_owned(),
    };
    Some(
        Event::new("system.audit")
            .actor(&actor)
            .target(key.unwrap_or(type_name))
            .outcome(if failed { Outcome::Failure } else { Outcome::Success })
            .detail(detail),
    )
}

/// The `audit(time:serial)` stamp of a kernel record, which finds it in auditd's log.
fn text_id(text: &str) -> String {
    text.find("audit(")
        .and_then(|i| text[i + 6..].find(')').map(|e| text[i + 6..i + 6 + e].to_owned()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: &str = "audit(1733100000.120:77): pid=412 uid=0 auid=4294967295 ses=4294967295 msg='op=PAM:authentication grantors=? acct=\"tech-alice\" exe=\"/usr/bin/login\" hostname=rapbox addr=? terminal=/dev/ttyS0 res=failed'";
    const START: &str = "audit(1733100003.500:81): pid=412 uid=0 auid=1001 ses=3 msg='op=PAM:session_open grantors=pam_loginuid,pam_keyinit,pam_limits,pam_unix,pam_umask,pam_lastlog acct=\"tech-alice\" exe=\"/usr/bin/login\" hostname=rapbox addr=? terminal=/dev/ttyS0 res=success'";

    #[test]
    fn a_failed_console_login_becomes_a_failure_record() {
        let ev = event(AUDIT_USER_AUTH, FAIL).unwrap();
        assert_eq!(ev.action, "console.login");
        assert_eq!(ev.actor, "console:tech-alice");
        assert_eq!(ev.target, "/dev/ttyS0");
        assert_eq!(ev.outcome, Outcome::Denied);
        assert_eq!(ev.detail["kernel_audit"], "1733100000.120:77");
    }

    #[test]
    fn a_session_open_is_the_login_and_other_programs_are_ignored() {
        let ev = event(AUDIT_USER_START, START).unwrap();
        assert_eq!((ev.action.as_str(), ev.outcome), ("console.login", Outcome::Success));
        assert!(event(AUDIT_USER_START, &START.replace("/usr/bin/login", "/usr/lib/systemd/systemd")).is_none());
        assert!(event(AUDIT_USER_AUTH, &FAIL.replace("res=failed", "res=success")).is_none());
        let end = START.replace("session_open", "session_close");
        assert_eq!(event(AUDIT_USER_END, &end).unwrap().action, "console.logout");
    }

    #[test]
    fn hex_encoded_and_unknown_accounts() {
        // audit hex-encodes values it cannot quote (here "a b").
        let t = FAIL.replace("acct=\"tech-alice\"", "acct=612062");
        assert_eq!(event(AUDIT_USER_AUTH, &t).unwrap().actor, "console:a b");
        let t = FAIL.replace("acct=\"tech-alice\"", "acct=\"?\"");
        assert_eq!(event(AUDIT_USER_AUTH, &t).unwrap().actor, "console:unknown user");
    }

    #[test]
    fn a_lock_names_the_account_by_uid() {
        let t = "audit(1733100009.000:90): pid=412 uid=0 auid=4294967295 ses=4294967295 msg='op=pam_faillock suid=0 exe=\"/usr/bin/login\" hostname=rapbox addr=? terminal=/dev/ttyS0 res=success'";
        let ev = event(AUDIT_RESP_ACCT_LOCK, t).unwrap();
        assert_eq!((ev.action.as_str(), ev.outcome), ("console.account_locked", Outcome::Denied));
        assert_eq!(ev.actor, format!("console:{}", crate::peer::user_name(0)));
    }

    const TIME: &str = "audit(1733100100.250:312): arch=c000003e syscall=227 success=yes exit=0 a0=0 a1=7ffd a2=0 a3=0 items=0 ppid=401 pid=977 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=ttyS0 ses=1 comm=\"date\" exe=\"/usr/bin/date\" key=\"time-change\"";

    #[test]
    fn a_keyed_syscall_is_a_system_audit_record() {
        let ev = system_event(AUDIT_SYSCALL, TIME).unwrap();
        assert_eq!(
            (ev.action.as_str(), ev.target.as_str(), ev.outcome),
            ("system.audit", "time-change", Outcome::Success)
        );
        assert_eq!(ev.actor, format!("login:{}", crate::peer::user_name(0)));
        assert_eq!(ev.detail["kernel_audit"], "1733100100.250:312");
        assert_eq!(ev.detail["exe"], "/usr/bin/date");
        assert_eq!(ev.detail["syscall"], "227");
        // Failed, and without a login user.
        let t = TIME.replace("success=yes exit=0", "success=no exit=-1").replace("auid=0", "auid=4294967295");
        let ev = system_event(AUDIT_SYSCALL, &t).unwrap();
        assert_eq!((ev.actor.as_str(), ev.outcome), ("kernel", Outcome::Failure));
        // A syscall no keyed rule matched, and the helper records of an event, are not.
        assert!(system_event(AUDIT_SYSCALL, &TIME.replace("key=\"time-change\"", "key=(null)")).is_none());
        assert!(system_event(1302, "audit(1733100100.250:312): item=0 name=\"/etc/localtime\"").is_none());
        // Logins stay the login watcher's.
        assert!(system_event(AUDIT_USER_AUTH, FAIL).is_none());
    }

    #[test]
    fn an_audit_configuration_change_is_recorded() {
        let t = "audit(1733100000.010:5): auid=4294967295 ses=4294967295 op=add_rule key=\"identity\" list=4 res=1";
        let ev = system_event(1305, t).unwrap();
        assert_eq!((ev.target.as_str(), ev.outcome), ("identity", Outcome::Success));
        assert_eq!(ev.detail["type"], "CONFIG_CHANGE");
        assert_eq!(ev.detail["op"], "add_rule");
        let t = t.replace("res=1", "res=0");
        assert_eq!(system_event(1305, &t).unwrap().outcome, Outcome::Failure);
    }

    #[test]
    fn a_flood_is_limited_and_reported() {
        let t0 = std::time::Instant::now();
        let mut l = Limiter::new(t0);
        let allowed = (0..1000).filter(|_| l.allow(t0)).count();
        assert_eq!(allowed, SYSTEM_BURST as usize);
        assert_eq!(l.suppressed, 1000 - u64::from(SYSTEM_BURST));
        assert!(l.report(t0).is_none(), "no token for the report yet");
        let later = t0 + Duration::from_secs(1);
        let ev = l.report(later).unwrap();
        assert_eq!(ev.action, "system.audit_suppressed");
        assert_eq!(ev.detail["suppressed"], 1000 - u64::from(SYSTEM_BURST));
        assert_eq!(l.suppressed, 0);
        assert_eq!((0..100).filter(|_| l.allow(later)).count(), SYSTEM_PER_SEC as usize - 1);
    }

    #[test]
    fn netlink_datagrams_are_split() {
        let mut d = Vec::new();
        for (ty, t) in [(AUDIT_USER_AUTH, "abc"), (AUDIT_USER_START, "defgh")] {
            let len = 16 + t.len();
            d.extend_from_slice(&(len as u32).to_ne_bytes());
            d.extend_from_slice(&ty.to_ne_bytes());
            d.extend_from_slice(&[0; 10]);
            d.extend_from_slice(t.as_bytes());
            while d.len() % 4 != 0 {
                d.push(0);
            }
        }
        assert_eq!(messages(&d), vec![(AUDIT_USER_AUTH, "abc".into()), (AUDIT_USER_START, "defgh".into())]);
    }
}
