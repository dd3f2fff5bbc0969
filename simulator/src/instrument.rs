//! The simulated instrument agent: pipelined reports, acks read on a second thread,
//! every message kept until acknowledged.
//!
//! One [`Instrument`] is one agent talking to one box port. The calling thread writes
//! frames; a reader thread per connection decodes the box's replies. Both meet in one
//! mutex-protected table of outstanding messages (at most `window` of them):
//!
//! * `Ack` removes the message and records its id in [`Stats`].
//! * `QueueFull`, `StorageFailure`, `ShuttingDown` put it back for a retry after an
//!   exponential backoff (reset by the next ack).
//! * `Malformed`, `WrongInstrument`, `TooLarge`, `UnsupportedVersion`,
//!   `UnknownFrameType` are permanent: the message is recorded as rejected, not retried.
//! * `Timeout` and `TooManyConnections` are about the connection, which the box closes.
//!
//! When the connection drops, the agent reconnects with backoff and resends every
//! unacknowledged message in id order before anything new.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rapwire::agent::{self, ErrorCode, Frame, Reply, Report};
use rapwire::Kind;

use crate::payload::StatusText;
use crate::stats::{Stats, StatsSnapshot};
use crate::SimError;

/// Priority of routine status reports (alarms are always 0).
pub const STATUS_PRIORITY: u8 = 2;
/// Default payload size, in bytes.
pub const DEFAULT_PAYLOAD: usize = 200;
/// Default number of unacknowledged messages in flight.
pub const DEFAULT_WINDOW: usize = 256;
/// Bytes of frames gathered before one write (and the socket buffer sizes used).
const WRITE_CHUNK: usize = 64 * 1024;
/// Longest sleep between checks of the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// Configuration of one simulated instrument. Build with [`Instrument::new`] and
/// adjust fields (`Instrument { rate: 100, ..Instrument::new(addr, "DXI-0001") }`).
#[derive(Debug, Clone)]
pub struct Instrument {
    /// The box port this instrument is cabled to.
    pub addr: SocketAddr,
    /// The instrument's serial, used in messages unless `claimed_serial` is set.
    pub serial: String,
    /// Claim a different serial in messages (wrong-instrument tests).
    pub claimed_serial: Option<String>,
    /// New messages per second; 0 sends as fast as the window allows.
    pub rate: u32,
    /// Messages to generate; `None` runs until `stop` is set.
    pub count: Option<u64>,
    /// Set to stop generating; outstanding messages then get `drain_timeout` to be acked.
    pub stop: Arc<AtomicBool>,
    /// Payload bytes per message (realistic status text, padded or cut to size).
    pub payload_size: usize,
    /// Every N-th message is an alarm (kind Alarm, priority 0); 0 = never.
    pub alarm_every: u64,
    /// Most unacknowledged messages outstanding at once (pipelining depth).
    pub window: usize,
    /// Id of the first message; ids then increase by one.
    pub first_id: u64,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// A write blocked this long counts as a dead connection (it is then re-made).
    pub io_timeout: Duration,
    /// First retry/reconnect delay; doubled on each failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry/reconnect delay.
    pub backoff_max: Duration,
    /// After `stop`, how long to keep trying to get outstanding messages acked.
    pub drain_timeout: Duration,
    /// Give up (with [`SimError::Stalled`]) when nothing was acked or rejected for this
    /// long while messages are outstanding or the box is unreachable. `None`: never.
    pub stall_timeout: Option<Duration>,
    /// Live counters, shared with whoever holds a clone of the `Arc`.
    pub stats: Arc<Stats>,
    /// Readings held at a value in every report (`("reagent_A", "8%")`), for scripted
    /// streams; keys are [`crate::READINGS`].
    pub holds: Vec<(String, String)>,
    /// Every alarm is this one of [`crate::ALARMS`] (`None`: a random one each time).
    pub alarm_name: Option<String>,
    /// Status payloads to send in turn instead of rendering each report (`None`: render).
    /// For benchmarks, whose load generator should cost less than the box it loads:
    /// rendering a report's readings costs more CPU than the box spends storing it.
    pub payloads: Option<Arc<[Vec<u8>]>>,
}

impl Instrument {
    /// An instrument with the defaults: unlimited rate, runs until stopped, 200-byte
    /// payloads, no alarms, window 256, ids from 1.
    pub fn new(addr: SocketAddr, serial: impl Into<String>) -> Instrument {
        Instrument {
            addr,
            serial: serial.into(),
            claimed_serial: None,
            rate: 0,
            count: None,
            stop: Arc::new(AtomicBool::new(false)),
            payload_size: DEFAULT_PAYLOAD,
            alarm_every: 0,
            window: DEFAULT_WINDOW,
            first_id: 1,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            stall_timeout: Some(Duration::from_secs(120)),
            stats: Arc::new(Stats::default()),
            holds: Vec::new(),
            alarm_name: None,
            payloads: None,
        }
    }

    /// The serial written into messages.
    pub fn wire_serial(&self) -> &str {
        self.claimed_serial.as_deref().unwrap_or(&self.serial)
    }

    /// A handle to the live counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// A handle to the stop flag.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Whether message number `index` (0-based) is an alarm.
    pub fn is_alarm(&self, index: u64) -> bool {
        self.alarm_every > 0 && (index + 1) % self.alarm_every == 0
    }

    fn validate(&self) -> Result<(), SimError> {
        let bad = |what: String| Err(SimError::Config { serial: self.serial.clone(), what });
        let s = self.wire_serial();
        if s.is_empty() || s.len() > agent::MAX_SERIAL || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(format!("serial {s:?} must be 1 to {} printable ASCII characters", agent::MAX_SERIAL));
        }
        if self.window == 0 {
            return bad("window must be at least 1".into());
        }
        let max = Report::max_payload(s.len());
        if self.payload_size > max {
            return bad(format!("payload_size {} exceeds the protocol maximum of {max} bytes", self.payload_size));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff_min must be > 0 and <= backoff_max".into());
        }
        if let Some((k, _)) = self.holds.iter().find(|(k, _)| !crate::READINGS.contains(&k.as_str())) {
            return bad(format!("holds: {k:?} is not a reading ({})", crate::READINGS.join(", ")));
        }
        if let Some(a) = self.alarm_name.as_deref().filter(|a| !crate::ALARMS.iter().any(|(n, _)| n == a)) {
            let names: Vec<&str> = crate::ALARMS.iter().map(|(n, _)| *n).collect();
            return bad(format!("alarm_name {a:?} is not one of {}", names.join(", ")));
        }
        Ok(())
    }

    fn status_text(&self) -> StatusText {
        let mut text = StatusText::new(&self.serial);
        for (k, v) in &self.holds {
            text.hold(k, v);
        }
        text.fix_alarm(self.alarm_name.as_deref());
        text
    }

    /// Runs the agent on this thread until `count` messages are acked or rejected, or
    /// `stop` is set and the outstanding ones drained (or `drain_timeout` passed).
    pub fn run(&self) -> Result<Summary, SimError> {
        self.validate()?;
        Engine::new(self).run()
    }

    /// Runs the agent on a new thread.
    pub fn spawn(self) -> Result<RunningInstrument, SimError> {
        self.validate()?;
        let stats = self.stats();
        let stop = self.stop_flag();
        let serial = self.serial.clone();
        let handle = thread::Builder::new()
            .name(format!("rapsim-{serial}"))
            .spawn(move || self.run())
            .map_err(|source| SimError::Spawn { serial: serial.clone(), source })?;
        Ok(RunningInstrument { serial, stats, stop, handle })
    }
}

/// An instrument running on its own thread.
#[derive(Debug)]
pub struct RunningInstrument {
    serial: String,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Summary, SimError>>,
}

impl RunningInstrument {
    /// The instrument's serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }
    /// Its live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
    /// Asks it to stop generating (it then drains).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    /// Whether its thread has returned.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
    /// Waits for it to finish.
    pub fn join(self) -> Result<Summary, SimError> {
        self.handle.join().unwrap_or(Err(SimError::Panicked { serial: self.serial }))
    }
}

/// What a finished run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub serial: String,
    pub addr: SocketAddr,
    /// Messages generated (each id once).
    pub generated: u64,
    /// Id of the first and last generated message, if any.
    pub first_id: u64,
    pub last_id: Option<u64>,
    /// Ids still unacknowledged when the run ended (stopped before they drained).
    pub unacked: Vec<u64>,
    pub elapsed_ms: u64,
    pub stats: StatsSnapshot,
}

#[derive(Debug)]
struct Pending {
    frame: Vec<u8>,
    in_flight: bool,
    ready_at: Instant,
    sent_before: bool,
}

#[derive(Debug)]
struct State {
    pending: BTreeMap<u64, Pending>,
    /// Entries of `pending` not in flight (waiting for a retry or a resend).
    waiting: usize,
    broken: bool,
    replied: bool,
    last_progress: Instant,
    retry_backoff: Duration,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    stats: Arc<Stats>,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum ConnEnd {
    Done,
    Broken,
    Stalled,
}

struct Engine<'a> {
    cfg: &'a Instrument,
    shared: Arc<Shared>,
    text: StatusText,
    generated: u64,
    started: Instant,
    stop_seen: Option<Instant>,
}

impl<'a> Engine<'a> {
    fn new(cfg: &'a Instrument) -> Engine<'a> {
        let now = Instant::now();
        Engine {
            cfg,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    pending: BTreeMap::new(),
                    waiting: 0,
                    broken: false,
                    replied: false,
                    last_progress: now,
                    retry_backoff: cfg.backoff_min,
                }),
                cv: Condvar::new(),
                stats: cfg.stats(),
                backoff_min: cfg.backoff_min,
                backoff_max: cfg.backoff_max,
            }),
            text: cfg.status_text(),
            generated: 0,
            started: now,
            stop_seen: None,
        }
    }

    fn stopping(&mut self) -> bool {
        if self.stop_seen.is_none() && self.cfg.stop.load(Ordering::SeqCst) {
            self.stop_seen = Some(Instant::now());
        }
        self.stop_seen.is_some()
    }

    fn exhausted(&self) -> bool {
        self.cfg.count.is_some_and(|c| self.generated >= c)
    }

    /// Whether the run is over: nothing left to do, or the drain time after stop is up.
    fn finished(&mut self, st: &State) -> bool {
        let stopping = self.stopping();
        if st.pending.is_empty() && (stopping || self.exhausted()) {
            return true;
        }
        self.stop_seen.is_some_and(|t| t.elapsed() >= self.cfg.drain_timeout)
    }

    fn stalled(&self, st: &State, connected: bool) -> bool {
        let Some(limit) = self.cfg.stall_timeout else {
            return false;
        };
        (!st.pending.is_empty() || !connected) && st.last_progress.elapsed() > limit
    }

    fn run(mut self) -> Result<Summary, SimError> {
        let mut conn_backoff = self.cfg.backoff_min;
        loop {
            let Some(stream) = self.connect(&mut conn_backoff)? else {
                break;
            };
            match self.serve(stream)? {
                ConnEnd::Done => break,
                ConnEnd::Stalled => return Err(self.stalled_error()),
                ConnEnd::Broken => {
                    let mut st = self.shared.lock();
                    let now = Instant::now();
                    for p in st.pending.values_mut() {
                        p.in_flight = false;
                        p.ready_at = now;
                    }
                    st.waiting = st.pending.len();
                    st.broken = false;
                    if st.replied {
                        conn_backoff = self.cfg.backoff_min;
                    }
                    drop(st);
                    self.sleep(conn_backoff);
                    conn_backoff = (conn_backoff * 2).min(self.cfg.backoff_max);
                }
            }
        }
        let st = self.shared.lock();
        let first_id = self.cfg.first_id;
        Ok(Summary {
            serial: self.cfg.serial.clone(),
            addr: self.cfg.addr,
            generated: self.generated,
            first_id,
            last_id: self.generated.checked_sub(1).map(|n| first_id.wrapping_add(n)),
            unacked: st.pending.keys().copied().collect(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            stats: self.shared.stats.snapshot(),
        })
    }

    fn stalled_error(&self) -> SimError {
        let st = self.shared.lock();
        SimError::Stalled {
            serial: self.cfg.serial.clone(),
            addr: self.cfg.addr,
            outstanding: st.pending.len(),
            secs: st.last_progress.elapsed().as_secs(),
        }
    }

    /// Sleeps `d`, cut short when the drain time after a stop runs out.
    fn sleep(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= end {
                return;
            }
            if self.stopping() && self.stop_seen.is_some_and(|t| t.elapsed() >= self.cfg.drain_timeout) {
                return;
            }
            thread::sleep((end - now).min(TICK));
        }
    }

    /// Connects, retrying with backoff. `None` when the run is over meanwhile.
    fn connect(&mut self, backoff: &mut Duration) -> Result<Option<TcpStream>, SimError> {
        loop {
            {
                let shared = Arc::clone(&self.shared);
                let st = shared.lock();
                if self.finished(&st) {
                    return Ok(None);
                }
                if self.stalled(&st, false) {
                    drop(st);
                    return Err(self.stalled_error());
                }
            }
            match TcpStream::connect_timeout(&self.cfg.addr, self.cfg.connect_timeout) {
                Ok(s) => {
                    self.shared.stats.add_connect();
                    return Ok(Some(s));
                }
                Err(_) => {
                    self.shared.stats.add_connect_failure();
                    let d = *backoff;
                    self.sleep(d);
                    *backoff = (*backoff * 2).min(self.cfg.backoff_max);
                }
            }
        }
    }

    /// Drives one connection until it breaks or the run is over.
    fn serve(&mut self, stream: TcpStream) -> Result<ConnEnd, SimError> {
        let io = |source| SimError::Io { addr: self.cfg.addr, op: "setting up the connection", source };
        stream.set_nodelay(true).map_err(io)?;
        stream.set_write_timeout(Some(self.cfg.io_timeout)).map_err(io)?;
        let rd = stream.try_clone().map_err(io)?;
        {
            let mut st = self.shared.lock();
            st.broken = false;
            st.replied = false;
        }
        let shared = Arc::clone(&self.shared);
        let reader = thread::Builder::new()
            .name(format!("rapsim-rd-{}", self.cfg.serial))
            .spawn(move || read_replies(rd, &shared))
            .map_err(|source| SimError::Spawn { serial: self.cfg.serial.clone(), source })?;
        let end = self.write_loop(&stream);
        let _ = stream.shutdown(Shutdown::Both);
        let _ = reader.join();
        Ok(end)
    }

    fn write_loop(&mut self, stream: &TcpStream) -> ConnEnd {
        let mut w = BufWriter::with_capacity(WRITE_CHUNK, stream);
        let mut out = Vec::with_capacity(WRITE_CHUNK + 1024);
        let shared = Arc::clone(&self.shared);
        loop {
            out.clear();
            {
                let mut st = shared.lock();
                if st.broken {
                    return ConnEnd::Broken;
                }
                if self.finished(&st) {
                    drop(st);
                    let _ = w.flush();
                    return ConnEnd::Done;
                }
                if self.stalled(&st, true) {
                    return ConnEnd::Stalled;
                }
                if st.pending.is_empty() {
                    st.last_progress = Instant::now();
                }
                let (next_retry, next_new) = self.fill(&mut st, &mut out);
                if out.is_empty() && w.buffer().is_empty() {
                    let mut wait = TICK;
                    for t in [next_retry, next_new].into_iter().flatten() {
                        wait = wait.min(t.saturating_duration_since(Instant::now()));
                    }
                    if !wait.is_zero() {
                        let _ = shared.cv.wait_timeout(st, wait);
                    }
                    continue;
                }
            }
            let res = if out.is_empty() { w.flush() } else { w.write_all(&out) };
            if res.is_err() {
                shared.lock().broken = true;
                return ConnEnd::Broken;
            }
        }
    }

    /// Appends to `out` the frames to send now: due retries and resends in id order,
    /// then new messages while the window and the rate allow. Returns when the next
    /// retry and the next new message are due, if they are waited for.
    fn fill(&mut self, st: &mut State, out: &mut Vec<u8>) -> (Option<Instant>, Option<Instant>) {
        let now = Instant::now();
        let stats = Arc::clone(&self.shared.stats);
        let mut next_retry: Option<Instant> = None;
        if st.waiting > 0 {
            let mut released = 0;
            for p in st.pending.values_mut() {
                if p.in_flight {
                    continue;
                }
                if p.ready_at <= now {
                    if out.len() >= WRITE_CHUNK {
                        next_retry = Some(now);
                        break;
                    }
                    out.extend_from_slice(&p.frame);
                    p.in_flight = true;
                    stats.add_sent(!p.sent_before);
                    p.sent_before = true;
                    released += 1;
                } else {
                    next_retry = Some(next_retry.map_or(p.ready_at, |t| t.min(p.ready_at)));
                }
            }
            st.waiting -= released;
        }
        if st.waiting > 0 && next_retry.is_some_and(|t| t <= now) {
            // Resends not all written yet: nothing new may overtake them.
            return (next_retry, None);
        }
        let mut next_new = None;
        while out.len() < WRITE_CHUNK && st.pending.len() < self.cfg.window && !self.exhausted() && !self.stopping() {
            if self.cfg.rate > 0 {
                let due = self.started + Duration::from_secs_f64(self.generated as f64 / f64::from(self.cfg.rate));
                if due > now {
                    next_new = Some(due);
                    break;
                }
            }
            let (id, frame) = self.next_frame();
            out.extend_from_slice(&frame);
            st.pending.insert(id, Pending { frame, in_flight: true, ready_at: now, sent_before: true });
            stats.add_sent(true);
        }
        (next_retry, next_new)
    }

    fn next_frame(&mut self) -> (u64, Vec<u8>) {
        let index = self.generated;
        let alarm = self.cfg.is_alarm(index);
        let msg_id = self.cfg.first_id.wrapping_add(index);
        self.generated += 1;
        let report = Report {
            msg_id,
            timestamp_ms: now_ms(),
            kind: if alarm { Kind::Alarm } else { Kind::Status },
            priority: if alarm { rapwire::PRIORITY_URGENT } else { STATUS_PRIORITY },
            serial: self.cfg.wire_serial().to_string(),
            payload: match &self.cfg.payloads {
                Some(pool) if !alarm && !pool.is_empty() => pool[(index % pool.len() as u64) as usize].clone(),
                _ => self.text.next(alarm, self.cfg.payload_size),
            },
        };
        let mut frame = Vec::with_capacity(self.cfg.payload_size + 96);
        report.encode_into(&mut frame);
        (msg_id, frame)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;

enum Class {
    Retry,
    Permanent,
    Connection,
}

fn classify(code: ErrorCode) -> Class {
    match code {
        ErrorCode::QueueFull | ErrorCode::StorageFailure | ErrorCode::ShuttingDown => Class::Retry,
        ErrorCode::Malformed
        | ErrorCode::WrongInstrument
        | ErrorCode::TooLarge
        | ErrorCode::UnsupportedVersion
        | ErrorCode::UnknownFrameType => Class::Permanent,
        ErrorCode::Timeout | ErrorCode::TooManyConnections => Class::Connection,
        // Version-2 codes answer requests, never reports.
        ErrorCode::NotNegotiated
        | ErrorCode::QuotaExceeded
        | ErrorCode::UnknownTransfer
        | ErrorCode::BadOffset
        | ErrorCode::HashMismatch
        | ErrorCode::Declined
        | ErrorCode::UnknownSession
        | ErrorCode::Expired => Class::Permanent,
    }
}

/// The reader thread: applies replies until the connection ends.
fn read_replies(stream: TcpStream, shared: &Shared) {
    let mut rd = BufReader::with_capacity(WRITE_CHUNK, stream);
    let mut body = Vec::with_capacity(256);
    loop {
        if agent::read_body(&mut rd, &mut body).is_err() {
            shared.lock().broken = true;
            shared.cv.notify_all();
            return;
        }
        match agent::decode(&body) {
            Ok(Frame::Reply(reply)) => apply(shared, reply),
            _ => shared.stats.add_stray(),
        }
    }
}

fn apply(shared: &Shared, reply: Reply) {
    let stats = &shared.stats;
    let mut st = shared.lock();
    st.replied = true;
    match reply {
        Reply::Ack { msg_id, duplicate } => match st.pending.remove(&msg_id) {
            Some(p) => {
                if !p.in_flight {
                    st.waiting -= 1;
                }
                stats.add_ack(msg_id, duplicate);
                st.last_progress = Instant::now();
                st.retry_backoff = shared.backoff_min;
            }
            None => stats.add_stray(),
        },
        Reply::Error { msg_id, code, reason } => {
            stats.add_error(code);
            match classify(code) {
                Class::Retry => {
                    let delay = st.retry_backoff;
                    match st.pending.get_mut(&msg_id) {
                        Some(p) if p.in_flight => {
                            p.in_flight = false;
                            p.ready_at = Instant::now() + delay;
                            st.waiting += 1;
                            st.retry_backoff = (delay * 2).min(shared.backoff_max);
                        }
                        Some(_) => {}
                        None => stats.add_stray(),
                    }
                }
                Class::Permanent => match st.pending.remove(&msg_id) {
                    Some(p) => {
                        if !p.in_flight {
                            st.waiting -= 1;
                        }
                        stats.add_rejection(msg_id, code, &reason);
                        st.last_progress = Instant::now();
                    }
                    None if msg_id == 0 => {}
                    None => stats.add_stray(),
                },
                Class::Connection => {}
            }
        }
    }
    drop(st);
    shared.cv.notify_all();
}
