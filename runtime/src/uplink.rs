//! The uplink: the only part of rapd that talks to the data center.
//!
//! It reads the next batch from the queue (priority order), POSTs it compressed over
//! mutual TLS (directly, through an HTTP CONNECT proxy or through SOCKS5), and deletes
//! the rows only after the data center's acknowledgement names the batch. Failures back
//! off exponentially with jitter up to a cap, and `Retry-After` is honoured. The uplink
//! never holds anything ingest needs: a dead data center only makes the queue grow.
//!
//! The command channel rides on the same connection: commands found in batch
//! acknowledgements go to the dispatcher, and [`exchange`] reports results and polls for
//! commands when the queue is idle (`docs/commands.md`). Large transfers use a second
//! connection of the uplink's own, [`transfer::TransferLink`] (`docs/transfers.md`).

pub mod exchange;
pub mod transfer;

pub mod probe;

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rapwire::batch::{self, BatchAck, Encoder};
use rapwire::command::BatchAnswer;
use serde::Serialize;

use crate::commands::CommandLink;
use crate::config::{ProxyKind, UplinkConfig};
use crate::queue::{Cursor, Queue, SeqRange};
use crate::tls;

/// What the uplink is doing, for the status interface.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UplinkStatus {
    /// `starting`, `idle`, `sending`, `backoff`, `unprovisioned`.
    pub state: String,
    pub url: String,
    pub proxy: Option<String>,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub next_attempt_ms: Option<u64>,
    pub batches_sent: u64,
    pub records_sent: u64,
    pub duplicates_reported: u64,
    pub bytes_sent: u64,
    /// Command exchanges answered by the data center.
    pub exchanges: u64,
    pub last_exchange_ms: Option<u64>,
    pub last_exchange_error: Option<String>,
    /// Commands received (in batch acknowledgements and exchange answers).
    pub commands_received: u64,
}

/// Shared status handle.
pub type SharedStatus = Arc<Mutex<UplinkStatus>>;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Hides credentials in a proxy URL before it is shown anywhere.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// One failed attempt.
struct Failure {
    message: String,
    retry_after: Option<Duration>,
}

/// Builds the HTTP agent: our TLS connector, timeouts, proxy.
pub fn agent(cfg: &UplinkConfig) -> Result<ureq::Agent, tls::TlsSetupError> {
    let conn = tls::connector(&cfg.ca, &cfg.cert, &cfg.key)?;
    let mut b = ureq::AgentBuilder::new()
        .tls_connector(Arc::new(tls::Connector(Arc::new(conn))))
        .timeout_connect(cfg.connect_timeout)
        .timeout_read(cfg.io_timeout)
        .timeout_write(cfg.io_timeout)
        .redirects(0)
        .max_idle_connections(MAX_IN_FLIGHT)
        .max_idle_connections_per_host(MAX_IN_FLIGHT)
        .user_agent(concat!("rapd/", env!("CARGO_PKG_VERSION")));
    if let Some(p) = &cfg.proxy {
        // Validated at configuration time; ureq names socks5 "socks5" and CONNECT "http".
        let proxy = ureq::Proxy::new(&p.url).map_err(|e| tls::TlsSetupError::Bad {
            what: "proxy",
            path: p.url.clone().into(),
            message: e.to_string(),
        })?;
        debug_assert!(matches!(p.kind, ProxyKind::Connect | ProxyKind::Socks5));
        b = b.proxy(proxy);
    }
    Ok(b.build())
}

/// Deletions of acknowledged batches that may still be committing at once.
const MAX_PENDING_DELETES: usize = 4;

/// A batch read and compressed ahead of time by the batcher.
struct Prepared {
    /// The batcher's epoch when it read the batch; a rewind makes older batches stale.
    epoch: u64,
    ranges: Vec<SeqRange>,
    records: u64,
    batch_id: u64,
    body: Vec<u8>,
}

/// How the sender steers the batcher.
#[derive(Default)]
struct Steer {
    epoch: u64,
    /// Where the batcher reads from after a rewind.
    from: Cursor,
}

/// The uplink; returns when `stop` is set.
///
/// The batcher reads the next batch after a per-priority cursor and compresses it while
/// earlier POSTs are in flight; the sender hands batches to two poster threads, so that
/// while the data center commits one batch the next one travels (only while deliveries
/// succeed, and never routine status beside an alarm batch), and takes their answers in
/// the order the batches were read: on each acknowledgement it hands the rows to the queue
/// writer for deletion (committed while the next batch travels). When a POST fails, the
/// sender rewinds the batcher to the last position acknowledged in order, so the next
/// attempt is read afresh — new alarms go first — and a batch with the same rows keeps its
/// id and body; a batch that travelled beside it and was acknowledged is removed all the
/// same (if it is read again before that, the data center recognises the resend).
pub fn run(cfg: UplinkConfig, queue: Queue, status: SharedStatus, stop: Arc<AtomicBool>) {
    run_with_commands(cfg, queue, status, stop, None)
}

/// [`run`], with the command channel: commands go to `commands` (a link and the poll
/// interval), and its results are reported.
pub fn run_with_commands(
    cfg: UplinkConfig,
    queue: Queue,
    status: SharedStatus,
    stop: Arc<AtomicBool>,
    commands: Option<(Arc<dyn CommandLink>, Duration)>,
) {
    {
        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = "starting".into();
        s.url = cfg.url.to_string();
        s.proxy = cfg.proxy.as_ref().map(|p| redact(&p.url));
    }
    let steer = Arc::new(Mutex::new(Steer::default()));
    let (tx, rx) = mpsc::sync_channel::<Prepared>(1);
    let batcher = {
        let (cfg, queue, steer, stop) = (cfg.clone(), queue.clone(), steer.clone(), stop.clone());
        std::thread::Builder::new().name("batcher".into()).spawn(move || batcher(cfg, queue, steer, tx, stop))
    };
    let batcher = match batcher {
        Ok(h) => h,
        Err(e) => {
            log::error!("uplink: cannot start the batcher thread: {e}");
            return;
        }
    };
    let exchanger = commands.map(|(link, poll)| exchange::Exchanger::new(&cfg, link, poll));
    sender(cfg, queue, status, stop, steer, rx, exchanger);
    let _ = batcher.join();
    log::info!("uplink stopped");
}

fn batcher(cfg: UplinkConfig, queue: Queue, steer: Arc<Mutex<Steer>>, tx: SyncSender<Prepared>, stop: Arc<AtomicBool>) {
    let mut epoch = 0;
    let mut cursor = Cursor::default();
    while !stop.load(Ordering::SeqCst) {
        {
            let st = steer.lock().unwrap_or_else(|p| p.into_inner());
            if st.epoch != epoch {
                epoch = st.epoch;
                cursor = st.from;
            }
        }
        let generation = queue.generation();
        let batch_id = random_u64();
        let mut enc = Encoder::new(batch_id, queue.dropped_total());
        let ranges = match queue.read_batch(&cursor, cfg.batch_max_records, cfg.batch_max_bytes, |r| {
            enc.push(r.instrument, r.msg_id, r.timestamp_ms, r.kind, r.priority, r.payload)
        }) {
            Ok(r) => r,
            Err(e) => {
                log::error!("uplink: reading the queue: {e}");
                sleep_unless_stopped(&stop, Duration::from_secs(1));
                continue;
            }
        };
        if ranges.is_empty() {
            crate::memory::relax(RELAX_EVERY);
            queue.wait_for_new(generation, Duration::from_millis(200));
            continue;
        }
        cursor.advance(&ranges);
        let mut p = Prepared { epoch, records: enc.len(), ranges, batch_id, body: enc.finish() };
        // Hand it over; keep checking for shutdown and rewinds while the sender is busy.
        loop {
            match tx.try_send(p) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(back)) => {
                    p = back;
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if steer.lock().unwrap_or_else(|p| p.into_inner()).epoch != epoch {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// POSTs at once while deliveries succeed: the next batch travels, and is decompressed
/// by the data center, while the data center commits the one before. One at a time before
/// the first success and after any failure, so that a failing data center sees one attempt
/// per backoff.
const MAX_IN_FLIGHT: usize = 2;

/// A POST for a poster thread.
struct Job {
    agent: ureq::Agent,
    batch_id: u64,
    body: Vec<u8>,
    done: mpsc::Sender<Posted>,
}

/// A poster's answer; the body comes back for a retry with the same bytes.
struct Posted {
    answer: Result<BatchAnswer, Failure>,
    body: Vec<u8>,
}

/// A batch whose POST has not been answered yet.
struct InFlight {
    epoch: u64,
    ranges: Vec<SeqRange>,
    records: u64,
    batch_id: u64,
    started: Instant,
    done: Receiver<Posted>,
    /// The answer, once it was seen while waiting for the next batch.
    ready: Option<Posted>,
}

impl InFlight {
    /// The poster's answer: the one already seen, or the next to come.
    fn answer(&mut self) -> Result<Posted, mpsc::RecvError> {
        self.ready.take().map(Ok).unwrap_or_else(|| self.done.recv())
    }
}

/// Whether `next` may travel beside the batches in flight: only if none of its rows is
/// less urgent than a row in flight, so that routine status never overtakes an alarm.
fn may_overtake(flight: &VecDeque<InFlight>, next: &Prepared) -> bool {
    let least_urgent = next.ranges.iter().map(|r| r.priority).max().unwrap_or(0);
    flight.iter().all(|f| f.ranges.iter().all(|r| least_urgent <= r.priority))
}

/// Starts the poster threads: each takes a job, posts it and sends the answer back.
fn posters(cfg: &UplinkConfig) -> std::io::Result<(mpsc::Sender<Job>, Vec<std::thread::JoinHandle<()>>)> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::new();
    for i in 0..MAX_IN_FLIGHT {
        let (cfg, rx) = (cfg.clone(), rx.clone());
        handles.push(std::thread::Builder::new().name(format!("uplink-post-{i}")).spawn(move || loop {
            let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(job) = job else { return };
            let answer = post(&job.agent, &cfg, job.batch_id, &job.body);
            let _ = job.done.send(Posted { answer, body: job.body });
        })?);
    }
    Ok((tx, handles))
}

fn sender(
    cfg: UplinkConfig,
    queue: Queue,
    status: SharedStatus,
    stop: Arc<AtomicBool>,
    steer: Arc<Mutex<Steer>>,
    rx: Receiver<Prepared>,
    mut exchanger: Option<exchange::Exchanger>,
) {
    let set = |f: &dyn Fn(&mut UplinkStatus)| f(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
    let rewind = |to: Cursor| {
        let mut st = steer.lock().unwrap_or_else(|p| p.into_inner());
        st.epoch += 1;
        st.from = to;
        st.epoch
    };
    let (jobs, poster_threads) = match posters(&cfg) {
        Ok(p) => p,
        Err(e) => {
            log::error!("uplink: cannot start the poster threads: {e}");
            return;
        }
    };
    let mut agent_opt: Option<ureq::Agent> = None;
    let mut backoff = cfg.backoff_initial;
    let mut failures: u32 = 0;
    let mut epoch = 0;
    // Everything at or below this cursor was acknowledged by the data center.
    let mut confirmed = Cursor::default();
    let mut pending: VecDeque<Receiver<Result<(), String>>> = VecDeque::new();
    // The last batch that failed: the same rows are sent again with the same id and body.
    let mut retry: Option<(Vec<SeqRange>, u64, Vec<u8>)> = None;
    // POSTs not answered yet, oldest first; answers are taken in this order.
    let mut flight: VecDeque<InFlight> = VecDeque::new();
    // A batch taken from the batcher that waits for room in flight.
    let mut next: Option<Prepared> = None;
    // Whether the last answer was a success: only then does more than one batch travel.
    let mut flowing = false;
    let mut settled = false;
    while !stop.load(Ordering::SeqCst) {
        // Settle finished deletions; a failed one means those rows are still queued: read
        // from the start again (the data center recognises the resend).
        while let Some(drx) = pending.front() {
            let ready = if pending.len() >= MAX_PENDING_DELETES {
                Some(queue.wait_completed(drx).map_err(|e| e.to_string()))
            } else {
                match drx.try_recv() {
                    Ok(r) => Some(r),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => Some(Err("queue writer stopped".into())),
                }
            };
            match ready {
                None => break,
                Some(Ok(())) => {
                    pending.pop_front();
                }
                Some(Err(e)) => {
                    log::error!(
                        "uplink: delivered rows could not be removed from the queue: {e}; they will be sent again"
                    );
                    pending.pop_front();
                    confirmed = Cursor::default();
                    epoch = rewind(confirmed);
                }
            }
        }
        let agent = match &agent_opt {
            Some(a) => a.clone(),
            None => match agent(&cfg) {
                Ok(a) => {
                    agent_opt = Some(a.clone());
                    a
                }
                Err(e) => {
                    let msg = e.to_string();
                    log::error!("uplink: {msg}");
                    set(&|s| {
                        s.state = "unprovisioned".into();
                        s.last_error = Some(msg.clone());
                        s.last_error_ms = Some(now_ms());
                    });
                    sleep_unless_stopped(&stop, Duration::from_secs(5));
                    continue;
                }
            },
        };
        let room = if flowing { MAX_IN_FLIGHT } else { 1 };
        if next.is_none() && flight.len() < room {
            let got = if flight.is_empty() {
                rx.recv_timeout(Duration::from_millis(if pending.is_empty() { 500 } else { 20 }))
            } else {
                // Whichever comes first: the next batch, or the oldest POST's answer.
                loop {
                    match rx.recv_timeout(Duration::from_millis(1)) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        got => break got,
                    }
                    let front = flight.front_mut().expect("a batch in flight");
                    match front.done.try_recv() {
                        Ok(posted) => front.ready = Some(posted),
                        Err(mpsc::TryRecvError::Empty) => continue,
                        Err(mpsc::TryRecvError::Disconnected) => {}
                    }
                    break Err(mpsc::RecvTimeoutError::Timeout);
                }
            };
            match got {
                Ok(p) => next = Some(p),
                Err(mpsc::RecvTimeoutError::Timeout) if flight.is_empty() => {
                    set(&|s| {
                        if s.state != "backoff" {
                            s.state = "idle".into();
                        }
                    });
                    if let Some(x) = exchanger.as_mut() {
                        x.maybe(&agent, rapwire::command::MAX_EXCHANGE_BYTES, true, &status);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(p) = next.take() {
            if p.epoch != epoch {
                continue; // read before the last rewind
            }
            if flight.len() < room && may_overtake(&flight, &p) {
                let (batch_id, body) = match retry.take() {
                    Some((r, id, body)) if r == p.ranges => (id, body),
                    _ => (p.batch_id, p.body),
                };
                let (done_tx, done) = mpsc::channel();
                if jobs.send(Job { agent: agent.clone(), batch_id, body, done: done_tx }).is_err() {
                    log::error!("uplink: the poster threads stopped");
                    break;
                }
                flight.push_back(InFlight {
                    epoch,
                    ranges: p.ranges,
                    records: p.records,
                    batch_id,
                    started: Instant::now(),
                    done,
                    ready: None,
                });
                set(&|s| s.state = "sending".into());
                continue; // fill the window before waiting
            }
            next = Some(p);
        }
        // The window is full, or the next batch waits for the ones in flight: take the
        // oldest answer.
        let Some(mut f) = flight.pop_front() else { continue };
        let Posted { answer, body } = f.answer().unwrap_or_else(|_| Posted {
            answer: Err(Failure { message: "the uplink's poster thread stopped".into(), retry_after: None }),
            body: Vec::new(),
        });
        let (batch_id, records) = (f.batch_id, f.records);
        if !settled {
            // The uplink's own start-up (TLS context, first connection) is over: its code
            // and OpenSSL's set-up are not needed again (see `memory`).
            settled = true;
            crate::memory::release_file_pages();
        }
        match answer {
            Ok(BatchAnswer { ack, commands }) => {
                if let Some(x) = exchanger.as_mut() {
                    if !commands.is_empty() {
                        let n = commands.len() as u64;
                        x.link().deliver(commands);
                        set(&|s| s.commands_received += n);
                    }
                    x.maybe(&agent, rapwire::command::MAX_EXCHANGE_BYTES, false, &status);
                }
                // A batch sent before a rewind is delivered all the same, but the cursor
                // only moves over batches acknowledged in order since then.
                if f.epoch == epoch {
                    confirmed.advance(&f.ranges);
                    flowing = true;
                }
                match queue.complete_async(f.ranges) {
                    Ok(drx) => pending.push_back(drx),
                    Err(e) => log::error!("uplink: batch {batch_id:016x} acknowledged but not removed: {e}"),
                }
                if failures > 0 && f.epoch == epoch {
                    log::info!("uplink: data center reachable again after {failures} failed attempts");
                    failures = 0;
                    backoff = cfg.backoff_initial;
                }
                log::debug!(
                    "uplink: batch {batch_id:016x}: {records} records, {} bytes, accepted {} duplicates {} in {:?}",
                    body.len(),
                    ack.accepted,
                    ack.duplicates,
                    f.started.elapsed()
                );
                // A long drain faults code and heap in batch after batch; give back what
                // the next batch does not use again (see `memory`).
                crate::memory::relax(BUSY_RELAX_EVERY);
                let in_flight = !flight.is_empty();
                set(&|s| {
                    s.state = if in_flight { "sending" } else { "idle" }.into();
                    s.last_success_ms = Some(now_ms());
                    s.consecutive_failures = failures;
                    if failures == 0 {
                        s.next_attempt_ms = None;
                    }
                    s.batches_sent += 1;
                    s.records_sent += records;
                    s.duplicates_reported += ack.duplicates;
                    s.bytes_sent += body.len() as u64;
                });
            }
            Err(f_err) if f.epoch != epoch => {
                // It travelled beside a batch that failed first; the rewind already covers
                // its rows.
                log::warn!("uplink: batch {batch_id:016x} ({records} records) not delivered either: {}", f_err.message);
            }
            Err(f_err) => {
                flowing = false;
                failures = failures.saturating_add(1);
                let jittered = jitter(backoff);
                let wait = match f_err.retry_after {
                    Some(ra) => ra.max(jittered).min(Duration::from_secs(3600)),
                    None => jittered,
                };
                log::warn!(
                    "uplink: batch {batch_id:016x} ({records} records) not delivered: {}; retrying in {} ms",
                    f_err.message,
                    wait.as_millis()
                );
                set(&|s| {
                    s.state = "backoff".into();
                    s.last_error = Some(f_err.message.clone());
                    s.last_error_ms = Some(now_ms());
                    s.consecutive_failures = failures;
                    s.next_attempt_ms = Some(now_ms() + wait.as_millis() as u64);
                });
                if !body.is_empty() {
                    retry = Some((f.ranges, batch_id, body));
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
                sleep_unless_stopped(&stop, wait);
                // Read afresh only now: what arrived during the wait (alarms first) is included.
                epoch = rewind(confirmed);
            }
        }
    }
    // Answers still owed: rows the data center acknowledged are removed.
    for mut f in flight {
        if let Ok(Posted { answer: Ok(_), .. }) = f.answer() {
            if let Ok(drx) = queue.complete_async(f.ranges) {
                pending.push_back(drx);
            }
        }
    }
    drop(jobs);
    for h in poster_threads {
        let _ = h.join();
    }
    for drx in pending {
        let _ = queue.wait_completed(&drx);
    }
}

/// How often an idle uplink lets rapd's read-only pages go (see `memory`).
const RELAX_EVERY: Duration = Duration::from_secs(60);
/// How often a draining uplink does (after a delivered batch).
const BUSY_RELAX_EVERY: Duration = Duration::from_millis(250);

fn post(agent: &ureq::Agent, cfg: &UplinkConfig, batch_id: u64, body: &[u8]) -> Result<BatchAnswer, Failure> {
    let resp = agent
        .request_url("POST", &cfg.url)
        .set("Content-Type", batch::CONTENT_TYPE)
        .set(batch::BATCH_ID_HEADER, &format!("{batch_id:016x}"))
        .send_bytes(body);
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let retry_after =
                r.header("Retry-After").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
            let mut text = String::new();
            let _ = r.into_reader().take(512).read_to_string(&mut text);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            return Err(Failure { message: format!("data center answered HTTP {code}: {text}"), retry_after });
        }
        Err(ureq::Error::Transport(t)) => {
            let mut message = t.to_string();
            if let Some(src) = std::error::Error::source(&t) {
                let s = src.to_string();
                if !message.contains(&s) {
                    message = format!("{message}: {s}");
                }
            }
            return Err(Failure { message, retry_after: None });
        }
    };
    // Commands may ride along (each at most 64 KiB, at most 16): room for them.
    let mut text = String::new();
    resp.into_reader()
        .take(rapwire::command::MAX_EXCHANGE_BYTES as u64)
        .read_to_string(&mut text)
        .map_err(|e| Failure { message: format!("reading the acknowledgement: {e}"), retry_after: None })?;
    let answer: BatchAnswer = serde_json::from_str(&text)
        .map_err(|e| Failure { message: format!("acknowledgement is not valid JSON: {e}"), retry_after: None })?;
    let ack: &BatchAck = &answer.ack;
    if ack.batch_id != batch_id {
        return Err(Failure {
            message: format!("data center acknowledged batch {:016x}, expected {batch_id:016x}", ack.batch_id),
            retry_after: None,
        });
    }
    Ok(answer)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if openssl::rand::rand_bytes(&mut b).is_err() {
        // The DRBG failing is a FIPS-state problem the gate would have caught; fall back
        // to the clock so that batches stay distinguishable.
        return now_ms() ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_le_bytes(b)
}

/// A duration between half and all of `d` (full jitter would allow zero waits).
fn jitter(d: Duration) -> Duration {
    let r = random_u64() % 1000;
    d / 2 + d / 2 * r as u32 / 1000
}

/// Sleeps in short slices so that shutdown is prompt.
pub fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j <= Duration::from_millis(1000), "{j:?}");
        }
    }

    #[test]
    fn routine_never_travels_beside_an_alarm_batch() {
        let range = |priority| SeqRange { priority, first: 1, last: 2 };
        let prepared = |ps: &[u8]| Prepared {
            epoch: 0,
            ranges: ps.iter().map(|&p| range(p)).collect(),
            records: 2,
            batch_id: 1,
            body: Vec::new(),
        };
        let in_flight = |priority| InFlight {
            epoch: 0,
            ranges: vec![range(priority)],
            records: 2,
            batch_id: 0,
            started: Instant::now(),
            done: mpsc::channel().1,
            ready: None,
        };
        let mut flight = VecDeque::new();
        assert!(may_overtake(&flight, &prepared(&[2])), "nothing in flight");
        flight.push_back(in_flight(2));
        assert!(may_overtake(&flight, &prepared(&[2])), "routine beside routine");
        assert!(may_overtake(&flight, &prepared(&[0])), "an alarm may pass routine status");
        flight.push_back(in_flight(0));
        assert!(!may_overtake(&flight, &prepared(&[2])), "routine waits for the alarms in flight");
        assert!(!may_overtake(&flight, &prepared(&[0, 2])), "a mixed batch waits too");
        assert!(may_overtake(&flight, &prepared(&[0])), "alarms beside alarms");
    }

    #[test]
    fn proxy_credentials_are_redacted() {
        assert_eq!(redact("http://alice:s3cret@10.0.0.1:3128"), "http://***@10.0.0.1:3128/");
        assert_eq!(redact("socks5://10.0.0.1:1080"), "socks5://10.0.0.1:1080");
    }
}
