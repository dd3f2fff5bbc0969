//! Ingest: one listener per instrument port, two threads per agent connection.
//!
//! The reader thread decodes frames under two deadlines (a frame, once started, must
//! arrive whole within `frame_timeout`; a silent connection is closed after
//! `idle_timeout`), checks that the message belongs to the instrument cabled to this
//! port, and hands it to the queue — every complete frame already received in one go,
//! so that a pipelining agent costs the queue one hand-over per read, not per message. The
//! queue answers a hand-over with one channel message holding all its outcomes, so the
//! connection's writer thread wakes once per hand-over (woken once per message, it took the
//! queue writer's CPU each time); the writer thread sends the answers back, coalescing
//! replies into one write. A connection over the per-port limit is told so and closed.
//! Nothing a connection does can block another: each has its own threads, and the only
//! shared resource, the queue's channel, is drained by group commits.
//!
//! Version-2 frames (requests: files, and what later versions add) go to the connection's
//! [`agents::Connection`]; both it and the writer thread write whole frames under the
//! connection's writer lock.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rapwire::agent::{self, ErrorCode, Frame, ReadError, Reply};
use serde::Serialize;

use crate::agents::{self, Agents};
use crate::config::{IngestConfig, InstrumentConfig};
use crate::queue::{Incoming, Queue, MAX_SUBMIT};

const THREAD_STACK: usize = 128 * 1024;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-instrument figures for the status interface.
#[derive(Debug, Default)]
pub struct PortStats {
    pub connections: AtomicUsize,
    pub accepted_total: AtomicU64,
    pub refused_connections: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    pub last_report_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// A snapshot of [`PortStats`].
#[derive(Debug, Clone, Serialize)]
pub struct PortStatus {
    pub serial: String,
    pub model: String,
    pub listen: SocketAddr,
    pub connections: usize,
    pub received: u64,
    pub errors: u64,
    pub refused_connections: u64,
    pub last_report_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// A running listener.
pub struct Port {
    pub instrument: InstrumentConfig,
    pub stats: Arc<PortStats>,
    handle: Option<JoinHandle<()>>,
    local: SocketAddr,
}

impl Port {
    /// The status snapshot.
    pub fn status(&self) -> PortStatus {
        let s = &self.stats;
        let last = s.last_report_ms.load(Ordering::Relaxed);
        PortStatus {
            serial: self.instrument.serial.clone(),
            model: self.instrument.model.clone(),
            listen: self.local,
            connections: s.connections.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            refused_connections: s.refused_connections.load(Ordering::Relaxed),
            last_report_ms: (last != 0).then_some(last),
            last_error: s.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Waits for the accept loop to end (after the stop flag is set).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("instrument {serial}: cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub serial: String,
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Starts the listener for one instrument port.
pub fn start(
    inst: InstrumentConfig,
    cfg: IngestConfig,
    queue: Queue,
    stop: Arc<AtomicBool>,
) -> Result<Port, ListenError> {
    start_with_agents(inst, cfg, queue, stop, None)
}

/// [`start`], serving version-2 requests through `agents` (without it they are refused
/// with `not_negotiated`).
pub fn start_with_agents(
    inst: InstrumentConfig,
    cfg: IngestConfig,
    queue: Queue,
    stop: Arc<AtomicBool>,
    agents: Option<Arc<Agents>>,
) -> Result<Port, ListenError> {
    let listener = TcpListener::bind(inst.listen).map_err(|source| ListenError {
        serial: inst.serial.clone(),
        addr: inst.listen,
        source,
    })?;
    let local = listener.local_addr().unwrap_or(inst.listen);
    // Accept with a timeout so that the loop notices the stop flag.
    listener.set_nonblocking(false).map_err(|source| ListenError {
        serial: inst.serial.clone(),
        addr: inst.listen,
        source,
    })?;
    let stats = Arc::new(PortStats::default());
    let ctx =
        Arc::new(PortCtx { serial: Arc::from(inst.serial.as_str()), cfg, queue, stats: stats.clone(), stop, agents });
    let handle = std::thread::Builder::new()
        .name(format!("port-{}", inst.serial))
        .spawn(move || accept_loop(listener, ctx))
        .map_err(|source| ListenError { serial: inst.serial.clone(), addr: inst.listen, source })?;
    Ok(Port { instrument: inst, stats, handle: Some(handle), local })
}

struct PortCtx {
    serial: Arc<str>,
    cfg: IngestConfig,
    queue: Queue,
    stats: Arc<PortStats>,
    stop: Arc<AtomicBool>,
    agents: Option<Arc<Agents>>,
}

fn accept_loop(listener: TcpListener, ctx: Arc<PortCtx>) {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    while !ctx.stop.load(Ordering::SeqCst) {
        // poll() with a timeout, so that shutdown is noticed within 200 ms.
        let mut pfd = [nix::poll::PollFd::new(
            // SAFETY: the listener outlives this borrow.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(200u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("instrument {}: poll on listener failed: {e}", ctx.serial);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                log::warn!("instrument {}: accept failed: {e}", ctx.serial);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let active = ctx.stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
        if active > ctx.cfg.max_connections_per_port {
            ctx.stats.connections.fetch_sub(1, Ordering::SeqCst);
            ctx.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            refuse(stream, ctx.cfg.max_connections_per_port);
            continue;
        }
        ctx.stats.accepted_total.fetch_add(1, Ordering::Relaxed);
        let c = ctx.clone();
        let spawned = std::thread::Builder::new().name(format!("conn-{}", ctx.serial)).stack_size(THREAD_STACK).spawn(
            move || {
                serve(stream, peer, &c);
                c.stats.connections.fetch_sub(1, Ordering::SeqCst);
            },
        );
        if let Err(e) = spawned {
            log::error!("instrument {}: cannot start a connection thread: {e}", ctx.serial);
            ctx.stats.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn refuse(mut stream: TcpStream, max: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = agent::write_reply(
        &mut stream,
        &Reply::Error {
            msg_id: 0,
            code: ErrorCode::TooManyConnections,
            reason: format!("this port allows {max} connections"),
        },
    );
    let _ = stream.shutdown(Shutdown::Both);
}

/// A reader that enforces an absolute deadline across many reads.
struct DeadlineReader {
    stream: TcpStream,
    deadline: Option<Instant>,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn serve(stream: TcpStream, peer: SocketAddr, ctx: &PortCtx) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let wstream = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("instrument {}: {peer}: cannot clone socket: {e}", ctx.serial);
            return;
        }
    };
    let (tx, rx) = mpsc::channel::<Vec<Reply>>();
    let serial = ctx.serial.clone();
    let out: agents::Writer = Arc::new(Mutex::new(wstream));
    let mut requests = ctx.agents.as_ref().map(|a| a.connection(ctx.serial.clone(), out.clone()));
    let wout = out.clone();
    let writer = std::thread::Builder::new()
        .name(format!("ack-{serial}"))
        .stack_size(THREAD_STACK)
        .spawn(move || write_loop(wout, rx, &serial));
    let writer = match writer {
        Ok(h) => h,
        Err(e) => {
            log::error!("instrument {}: cannot start an ack thread: {e}", ctx.serial);
            return;
        }
    };
    log::info!("instrument {}: agent connected from {peer}", ctx.serial);
    let mut rd = BufReader::with_capacity(16 * 1024, DeadlineReader { stream, deadline: None });
    let mut body = Vec::with_capacity(4096);
    // Decoded messages not yet handed to the queue: handed over before anything can block.
    let mut batch: Vec<Incoming> = Vec::new();
    let reason = loop {
        if !batch.is_empty() && (batch.len() >= MAX_SUBMIT || !frame_buffered(rd.buffer())) {
            if let Err(reason) = hand_over(ctx, &mut batch, &tx) {
                break reason;
            }
        }
        if ctx.stop.load(Ordering::SeqCst) {
            let _ = tx.send(vec![Reply::Error {
                msg_id: 0,
                code: ErrorCode::ShuttingDown,
                reason: "the box is shutting down".into(),
            }]);
            break "shutdown".to_string();
        }
        // Between frames: the idle deadline, checked in slices so that shutdown is noticed.
        let idle_until = Instant::now() + ctx.cfg.idle_timeout;
        let got_first = loop {
            if rd.buffer().is_empty() {
                rd.get_mut().deadline = Some((Instant::now() + Duration::from_millis(500)).min(idle_until));
                match rd.fill_buf() {
                    Ok([]) => break Ok(false),
                    Ok(_) => break Ok(true),
                    Err(e) if is_timeout(&e) => {
                        if ctx.stop.load(Ordering::SeqCst) || Instant::now() >= idle_until {
                            break Err(e);
                        }
                    }
                    Err(e) => break Err(e),
                }
            } else {
                break Ok(true);
            }
        };
        match got_first {
            Ok(true) => {}
            Ok(false) => break "closed by the agent".to_string(),
            Err(e) if is_timeout(&e) && ctx.stop.load(Ordering::SeqCst) => continue,
            Err(e) if is_timeout(&e) => break format!("idle for {} s", ctx.cfg.idle_timeout.as_secs()),
            Err(e) => break format!("read error: {e}"),
        }
        rd.get_mut().deadline = Some(Instant::now() + ctx.cfg.frame_timeout);
        match agent::read_body(&mut rd, &mut body) {
            Ok(()) => {}
            Err(ReadError::Closed) => break "closed by the agent".to_string(),
            Err(ReadError::TooLarge(n)) => {
                let reason = format!("declared frame length {n} exceeds the limit of {} bytes", agent::MAX_BODY);
                note_error(ctx, &reason);
                let _ = tx.send(vec![Reply::Error { msg_id: 0, code: ErrorCode::TooLarge, reason: reason.clone() }]);
                break reason;
            }
            Err(ReadError::Io(e)) if is_timeout(&e) => {
                let reason = format!("frame not complete within {} ms", ctx.cfg.frame_timeout.as_millis());
                note_error(ctx, &reason);
                let _ = tx.send(vec![Reply::Error { msg_id: 0, code: ErrorCode::Timeout, reason: reason.clone() }]);
                break reason;
            }
            Err(ReadError::Io(e)) => break format!("read error: {e}"),
        }
        let msg_id = agent::peek_msg_id(&body);
        let report = match agent::decode(&body) {
            Ok(Frame::Report(r)) => r,
            Ok(Frame::Request(m)) => {
                match requests.as_mut() {
                    Some(c) => c.on_frame(m),
                    None => {
                        let reason = "this box does not serve version-2 requests".to_string();
                        note_error(ctx, &reason);
                        let r = rapwire::requests::Message::Refused {
                            req: m.req(),
                            code: ErrorCode::NotNegotiated,
                            reason,
                        };
                        let _ = agents::write_frame(&out, &r.to_frame());
                    }
                }
                continue;
            }
            Err(e) if body.first() == Some(&rapwire::requests::VERSION) => {
                // A version-2 body is answered in version 2, by request id.
                let reason = e.to_string();
                note_error(ctx, &reason);
                let req = rapwire::requests::peek_req(&body);
                let r = rapwire::requests::Message::Refused { req, code: e.code(), reason };
                let _ = agents::write_frame(&out, &r.to_frame());
                continue;
            }
            Ok(Frame::Reply(_)) => {
                let reason = "an agent may only send REPORT frames".to_string();
                note_error(ctx, &reason);
                let _ = tx.send(vec![Reply::Error { msg_id, code: ErrorCode::UnknownFrameType, reason }]);
                continue;
            }
            Err(e) => {
                let code = e.code();
                let reason = e.to_string();
                note_error(ctx, &reason);
                let _ = tx.send(vec![Reply::Error { msg_id, code, reason: reason.clone() }]);
                if code.closes_connection() {
                    break reason;
                }
                continue;
            }
        };
        if *report.serial != *ctx.serial {
            let reason = format!("this port belongs to instrument {}, not {}", ctx.serial, report.serial);
            note_error(ctx, &reason);
            let _ = tx.send(vec![Reply::Error { msg_id, code: ErrorCode::WrongInstrument, reason }]);
            continue;
        }
        ctx.stats.received.fetch_add(1, Ordering::Relaxed);
        ctx.stats.last_report_ms.store(now_ms(), Ordering::Relaxed);
        let incoming = Incoming {
            instrument: ctx.serial.clone(),
            msg_id: report.msg_id,
            timestamp_ms: report.timestamp_ms,
            kind: report.kind,
            priority: report.priority,
            payload: report.payload,
        };
        batch.push(incoming);
    };
    // What was read before the end is still stored (the agent learns of it when it resends).
    let _ = hand_over(ctx, &mut batch, &tx);
    log::info!("instrument {}: connection from {peer} ended: {reason}", ctx.serial);
    drop(requests);
    drop(tx);
    // The writer ends when every reply (including those still in the queue) is sent.
    let _ = writer.join();
    let _ = rd.get_ref().stream.shutdown(Shutdown::Both);
}

/// Whether `buf` starts with a whole frame (so that reading it cannot block).
fn frame_buffered(buf: &[u8]) -> bool {
    match buf.get(..4) {
        Some(len) => {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            len <= agent::MAX_BODY && buf.len() >= 4 + len
        }
        None => false,
    }
}

/// Hands the decoded messages to the queue; on a stopped queue each is answered
/// `shutting_down` and the connection ends.
fn hand_over(ctx: &PortCtx, batch: &mut Vec<Incoming>, tx: &mpsc::Sender<Vec<Reply>>) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    let msgs = std::mem::take(batch);
    let ids: Vec<u64> = msgs.iter().map(|m| m.msg_id).collect();
    if ctx.queue.submit_many(msgs, tx.clone()).is_err() {
        let replies = ids
            .into_iter()
            .map(|msg_id| Reply::Error {
                msg_id,
                code: ErrorCode::ShuttingDown,
                reason: "the box is shutting down".into(),
            })
            .collect();
        let _ = tx.send(replies);
        return Err("queue stopped".to_string());
    }
    Ok(())
}

fn note_error(ctx: &PortCtx, reason: &str) {
    ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
    log::warn!("instrument {}: {reason}", ctx.serial);
    *ctx.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
}

fn write_loop(stream: agents::Writer, rx: Receiver<Vec<Reply>>, serial: &str) {
    let mut out = Vec::with_capacity(16 * 1024);
    while let Ok(first) = rx.recv() {
        out.clear();
        let mut close = false;
        let mut encode = |replies: Vec<Reply>, out: &mut Vec<u8>| {
            for r in replies {
                close |= reply_closes(&r);
                r.encode_into(out);
            }
        };
        encode(first, &mut out);
        while out.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(replies) => encode(replies, &mut out),
                Err(_) => break,
            }
        }
        if let Err(e) = agents::write_frame(&stream, &out) {
            log::warn!("instrument {serial}: cannot send replies: {e}; closing");
            let _ = stream.lock().unwrap_or_else(|p| p.into_inner()).shutdown(Shutdown::Both);
            // Keep draining so that senders never block; replies are lost with the connection
            // and the agent resends what it did not see acknowledged.
            while rx.recv().is_ok() {}
            return;
        }
        if close {
            let _ = stream.lock().unwrap_or_else(|p| p.into_inner()).shutdown(Shutdown::Write);
        }
    }
}

fn reply_closes(r: &Reply) -> bool {
    matches!(r, Reply::Error { code, .. } if code.closes_connection())
}
