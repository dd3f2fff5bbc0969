//! kill -9 experiments, one per peer, each against its own fresh data-center store:
//! stream messages into the peer, `kill -9` it once a third of them were acknowledged,
//! start it again on the same files, let the data center come up, wait until nothing more
//! arrives, then compare what the senders had seen acknowledged with what the data center
//! stored.
//!
//! * rapd: instruments (rapsim) with the data center down, so that everything acknowledged
//!   lives only in the box's queue when it dies. An ack means "fsync'ed".
//! * syslog-ng: plain TCP senders with the data center down (the reliable disk buffer holds
//!   everything). TCP syslog has no application acks: a line counts as accepted when the
//!   sender's `write` of it returned — all the sender can know.
//! * collectd: unixsock senders with the data center up (with it down every value is lost
//!   anyway, kill or not — see `collectd.rs`); an ack is the plugin's "0 Success" answer.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rapbox_testkit::ports;
use rapdc::{Server, ServerConfig, Store};
use rapsim::Instrument;

use crate::{collectd, payloads, rapd_status, say, wait_until, Args, Dc, BOX_ID};

/// What one experiment found.
pub struct Kill9 {
    /// What the sender side counted as accepted.
    pub accepted: u64,
    /// Of those, how many the data center never stored.
    pub lost: u64,
    /// Records the data center received more than once (stored once for rapd; counted as
    /// extra lines for the others).
    pub redelivered: u64,
    /// Accepted before the kill (when it was sent), for the report.
    pub at_kill: u64,
    /// What the peer itself had taken in at the kill, where it says (syslog-ng's source
    /// counter): lines still in socket buffers are not in it.
    pub peer_had: Option<u64>,
}

impl Kill9 {
    pub fn survived(&self) -> bool {
        self.lost == 0
    }
}

/// A fresh data-center backend (own SQLite store) behind the same PKI and address.
fn fresh_dc(dc: &Dc, dir: &Path) -> Result<(Server, Dc)> {
    std::fs::create_dir_all(dir)?;
    let backend = Server::start(ServerConfig::new("127.0.0.1:0".parse()?), Store::open(&dir.join("dc.db"))?)?;
    let d = Dc { addr: dc.addr, pki: dc.pki.clone(), backend_port: backend.addr().port() };
    Ok((backend, d))
}

/// Waits until the data center's count for the box stops changing for `quiet` (or
/// reaches `want`), polling `count`.
fn settle(
    what: &str,
    timeout: Duration,
    quiet: Duration,
    want: u64,
    mut count: impl FnMut() -> Result<u64>,
) -> Result<u64> {
    let mut last = u64::MAX;
    let mut since = Instant::now();
    wait_until(what, timeout, Duration::from_millis(200), || {
        let n = count()?;
        if n != last {
            last = n;
            since = Instant::now();
        }
        Ok((n >= want || since.elapsed() >= quiet).then_some(n))
    })
}

pub fn rapd(a: &Args, dir: &Path, dc: &Dc, n: u64) -> Result<Kill9> {
    let kdir = dir.join("kill9-rapd");
    let (backend, dc) = fresh_dc(dc, &kdir.join("dc"))?;
    let instruments: Vec<(String, SocketAddr)> =
        (0..a.instruments).map(|i| Ok((format!("K9-{:04}", i + 1), ports::unique_addr()?))).collect::<Result<_>>()?;
    let (cfg, socket) = crate::rapd_config(a, &kdir, &dc, &instruments, n)?;
    let mut rapd = crate::spawn_rapd(a, &cfg, &kdir.join("rapd-1.log"), &socket)?;
    let per = n / a.instruments as u64;
    let runs = instruments
        .iter()
        .map(|(s, addr)| {
            Instrument {
                count: Some(per),
                window: a.window,
                payload_size: a.payload,
                alarm_every: 100,
                drain_timeout: Duration::from_secs(1),
                stall_timeout: Some(Duration::from_secs(30)),
                backoff_max: Duration::from_millis(200),
                ..Instrument::new(*addr, s.clone())
            }
            .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let acked = || runs.iter().map(|r| r.stats().acked()).sum::<u64>();
    wait_until("a third acknowledged", Duration::from_secs(a.timeout_s), Duration::from_millis(1), || {
        Ok((acked() >= n / 3).then_some(()))
    })?;
    rapd.kill9();
    let at_kill = acked();
    say(&format!("  rapd killed (-9) with {at_kill} of {n} acknowledged"));
    let mut ids: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for r in runs {
        r.stop();
        let stats = r.stats().clone();
        let serial = r.serial().to_string();
        let _ = r.join();
        ids.insert(serial, stats.acked_ids().iter().collect());
    }
    let accepted: u64 = ids.values().map(|s| s.len() as u64).sum();
    // Start it again on the same queue; bring the data center up; drain.
    let rapd2 = crate::spawn_rapd(a, &cfg, &kdir.join("rapd-2.log"), &socket)?;
    let (nginx, _) = dc.start_nginx(&kdir.join("nginx"))?;
    wait_until(
        "the queue to drain after the restart",
        Duration::from_secs(a.timeout_s),
        Duration::from_millis(250),
        || Ok((crate::depth(&rapd_status(&socket)?) == 0).then_some(())),
    )?;
    drop(rapd2);
    nginx.stop();
    let db = rusqlite::Connection::open(kdir.join("dc/dc.db"))?;
    let mut st = db.prepare("SELECT instrument, msg_id, deliveries FROM reports WHERE box=?1 AND instrument<>''")?;
    let mut stored: HashMap<String, BTreeSet<u64>> = HashMap::new();
    let mut redelivered = 0;
    for row in st.query_map([BOX_ID], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))? {
        let (i, m, d) = row?;
        stored.entry(i).or_default().insert(m as u64);
        redelivered += (d - 1).max(0) as u64;
    }
    let lost =
        ids.iter().map(|(s, set)| set.difference(&stored.get(s).cloned().unwrap_or_default()).count() as u64).sum();
    backend.shutdown();
    say(&format!("  rapd: {accepted} acknowledged, {lost} lost, {redelivered} redelivered (stored once)"));
    Ok(Kill9 { accepted, lost, redelivered, at_kill, peer_had: None })
}

pub fn syslog_ng(a: &Args, dir: &Path, dc: &Dc, n: u64) -> Result<Kill9> {
    let kdir = dir.join("kill9-syslog-ng");
    let (backend, dc) = fresh_dc(dc, &kdir.join("dc"))?;
    let listen = ports::unique_addr()?;
    let mut sng = crate::start_syslog_ng(&kdir, listen, &dc)?;
    let per = n / a.instruments as u64;
    let written = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..a.instruments)
        .map(|k| {
            let written = written.clone();
            let pool = payloads(&format!("K9-{k:04}"), 4096, a.payload.saturating_sub(24).max(16));
            std::thread::spawn(move || -> u64 {
                let Ok(mut s) = TcpStream::connect(listen) else { return 0 };
                let mut mine = 0;
                let mut chunk = Vec::with_capacity(64 * 1024);
                let mut lines = 0;
                for i in 0..per {
                    let _ = write!(chunk, "k9 s{k} {i} ");
                    chunk.extend_from_slice(&pool[i as usize % pool.len()]);
                    chunk.push(b'\n');
                    lines += 1;
                    if chunk.len() >= 60 * 1024 || i + 1 == per {
                        if s.write_all(&chunk).is_err() {
                            return mine;
                        }
                        mine += lines;
                        written.fetch_add(lines, Ordering::Relaxed);
                        chunk.clear();
                        lines = 0;
                    }
                }
                mine
            })
        })
        .collect();
    wait_until("a third written", Duration::from_secs(a.timeout_s), Duration::from_millis(1), || {
        Ok((written.load(Ordering::Relaxed) >= n / 3).then_some(()))
    })?;
    let peer_had = crate::syslog_received(&kdir.join("syslog-ng.ctl")).ok();
    sng.kill9();
    let at_kill = written.load(Ordering::Relaxed);
    let mut accepted = 0;
    for s in senders {
        accepted += s.join().map_err(|_| anyhow::anyhow!("sender panicked"))?;
    }
    say(&format!("  syslog-ng killed (-9) with {at_kill} lines written; {accepted} written in all"));
    // Again on the same persist file and disk buffer; the data center comes up.
    let sng2 = crate::start_syslog_ng(&kdir, listen, &dc)?;
    let (nginx, _) = dc.start_nginx(&kdir.join("nginx"))?;
    let delivered = settle(
        "the data center to stop receiving",
        Duration::from_secs(a.timeout_s),
        Duration::from_secs(10),
        accepted,
        || Ok(backend.line_counts().get(BOX_ID).copied().unwrap_or(0)),
    )?;
    drop(sng2);
    nginx.stop();
    let db = rusqlite::Connection::open(kdir.join("dc/dc.db"))?;
    let mut st = db.prepare("SELECT line FROM lines WHERE box=?1")?;
    let mut seen: HashMap<(u64, u64), u32> = HashMap::new();
    for row in st.query_map([BOX_ID], |r| r.get::<_, Vec<u8>>(0))? {
        let line = row?;
        let text = String::from_utf8_lossy(&line);
        let mut f = text.split(' ');
        if let (Some("k9"), Some(s), Some(i)) = (f.next(), f.next(), f.next()) {
            if let (Some(s), Ok(i)) = (s.strip_prefix('s').and_then(|s| s.parse().ok()), i.parse()) {
                *seen.entry((s, i)).or_default() += 1;
            }
        }
    }
    let redelivered = seen.values().map(|c| u64::from(c - 1)).sum();
    let present = seen.len() as u64;
    let lost = accepted.saturating_sub(present);
    backend.shutdown();
    say(&format!(
        "  syslog-ng: {accepted} written ({} read by syslog-ng at the kill), {delivered} lines at the data center ({present} distinct), {lost} lost, {redelivered} duplicated",
        peer_had.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
    ));
    Ok(Kill9 { accepted, lost, redelivered, at_kill, peer_had })
}

pub fn collectd(a: &Args, dir: &Path, dc: &Dc, n: u64) -> Result<Kill9> {
    let kdir = dir.join("kill9-collectd");
    let (backend, dc) = fresh_dc(dc, &kdir.join("dc"))?;
    let (nginx, _) = dc.start_nginx(&kdir.join("nginx"))?;
    let mut c = collectd::Collectd::start(&kdir.join("collectd"), &dc)?;
    let per = n / a.instruments as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..a.instruments)
        .map(|k| {
            let (socket, acked, stop) = (c.socket.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || collectd::send(&socket, k, 0, per, &acked, &stop))
        })
        .collect();
    wait_until("a third acknowledged", Duration::from_secs(a.timeout_s), Duration::from_millis(1), || {
        Ok((acked.load(Ordering::Relaxed) >= n / 3).then_some(()))
    })?;
    c.guard.kill9();
    let at_kill = acked.load(Ordering::Relaxed);
    let mut per_sender = Vec::new();
    for s in senders {
        per_sender.push(s.join().map_err(|_| anyhow::anyhow!("sender panicked"))?.unwrap_or(0));
    }
    let accepted: u64 = per_sender.iter().sum();
    say(&format!("  collectd killed (-9) with {at_kill} values acknowledged; {accepted} in all"));
    // Nothing to restart into: collectd keeps no state. Wait for stragglers.
    let _ =
        settle("the data center to stop receiving", Duration::from_secs(60), Duration::from_secs(5), u64::MAX, || {
            Ok(backend.line_counts().get(BOX_ID).copied().unwrap_or(0))
        })?;
    nginx.stop();
    let db = rusqlite::Connection::open(kdir.join("dc/dc.db"))?;
    let mut st = db.prepare("SELECT line FROM lines WHERE box=?1")?;
    let mut seen: HashMap<(usize, u64), u32> = HashMap::new();
    for row in st.query_map([BOX_ID], |r| r.get::<_, Vec<u8>>(0))? {
        if let Some(key) = collectd::parse_line(&String::from_utf8_lossy(&row?)) {
            *seen.entry(key).or_default() += 1;
        }
    }
    let lost = per_sender
        .iter()
        .enumerate()
        .map(|(k, &ok)| (0..ok).filter(|i| !seen.contains_key(&(k, *i))).count() as u64)
        .sum();
    let redelivered = seen.values().map(|c| u64::from(c - 1)).sum();
    backend.shutdown();
    if accepted == 0 {
        bail!("collectd acknowledged nothing: see {}", kdir.join("collectd/collectd.log").display());
    }
    say(&format!("  collectd: {accepted} acknowledged, {lost} lost, {redelivered} duplicated"));
    Ok(Kill9 { accepted, lost, redelivered, at_kill, peer_had: None })
}

/// Runs the three experiments, each optional on its peer being measured.
pub fn all(a: &Args, dir: &Path, dc: &Dc, syslog: bool, collectd: bool) -> Result<[Option<Kill9>; 3]> {
    let n = a.kill9_messages;
    say("kill -9: rapd");
    let r = rapd(a, dir, dc, n).context("kill -9 experiment: rapd")?;
    let s = if syslog {
        say("kill -9: syslog-ng");
        Some(syslog_ng(a, dir, dc, n).context("kill -9 experiment: syslog-ng")?)
    } else {
        None
    };
    let c = if collectd {
        say("kill -9: collectd");
        Some(self::collectd(a, dir, dc, n).context("kill -9 experiment: collectd")?)
    } else {
        None
    };
    Ok([Some(r), s, c])
}
