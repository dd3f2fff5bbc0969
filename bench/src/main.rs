//! `rapbench`: the benchmark of the issue's "Benchmark" section, in one invocation on one
//! machine. Measures, in this order:
//!
//! 1. the raw ceiling: rusqlite (bundled) in WAL with `synchronous=FULL`, 200-byte rows,
//!    1000 rows per transaction (and 1 row per transaction for reference), one thread;
//! 2. rapd durable ingest: simulated instruments (rapsim, pipelined) → the release `rapd` in
//!    FIPS mode, uplink pointed at a data center that is not running yet: every message is
//!    acknowledged only after its fsync'ed commit; idle and peak RSS of rapd;
//! 3. rapd drain: nginx (mutual TLS) + rapdc backend started, time until the backlog is
//!    empty; bytes on the wire per message from nginx's `$request_length`;
//! 4. the syslog-ng reference: TCP source → `http()` destination with a reliable disk buffer
//!    into the same kind of front door, same measurements;
//! 5. the collectd reference (`collectd.rs`): unixsock input → `write_http` into the same
//!    front door; it has no disk queue, which the columns say;
//! 6. a kill -9 experiment per peer (`kill9.rs`): what the senders saw acknowledged against
//!    what the data center stored after the peer was killed and started again;
//!
//! then prints a table with the targets of the issue and regenerates `docs/benchmarks.md`.
//! `rapbench load` (`load.rs`) is the load benchmark: 1000 misbehaving connections against
//! one rapd while a well-behaved instrument measures its ack latency.
//! Not a test: nothing here asserts timings.

mod collectd;
mod kill9;
mod load;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rapbox::control::{self, Request, Status};
use rapbox_testkit::pki::{Pki, PkiSpec};
use rapbox_testkit::ports;
use rapdc::frontdoor::Nginx;
use rapdc::{Client, FrontDoor, Server, ServerConfig, Store};
use rapsim::{Instrument, StatusText};

/// rapbox benchmark: rapd vs. syslog-ng vs. collectd vs. raw SQLite, one run, one machine.
#[derive(Parser)]
#[command(about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    args: Args,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// 1000 concurrent misbehaving agent connections against one rapd; a well-behaved
    /// instrument's ack latency and rapd's memory meanwhile.
    Load(load::LoadArgs),
}

#[derive(clap::Args)]
struct Args {
    /// Messages in total (split evenly over the instruments / TCP senders).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Concurrent simulated instruments (and syslog-ng TCP senders).
    #[arg(long, default_value_t = 8)]
    instruments: usize,
    /// Unacknowledged messages in flight per instrument.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Do not run the syslog-ng reference.
    #[arg(long)]
    skip_syslog_ng: bool,
    /// Do not run the collectd reference.
    #[arg(long)]
    skip_collectd: bool,
    /// Do not run the kill -9 experiments.
    #[arg(long)]
    skip_kill9: bool,
    /// Messages per kill -9 experiment (the peer is killed after a third is acknowledged).
    #[arg(long, default_value_t = 300_000)]
    kill9_messages: u64,
    /// Markdown file to (re)generate with the results.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// The rapd binary (release build).
    #[arg(long, default_value = "target/release/rapd")]
    rapd: PathBuf,
    /// The FIPS provider configuration made by scripts/build-fips.sh.
    #[arg(long, default_value = "/var/cache/rapbox/fips/openssl-fips.cnf")]
    fips_conf: PathBuf,
    /// Working directory (emptied first).
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Give up on any phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
}

const BOX_ID: &str = "box-bench-0001";

/// The heading of the section of docs/benchmarks.md that other commands' figures live in;
/// a regeneration keeps it and everything after it.
const KEPT_HEADING: &str = "## Measured by other commands";

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Some(Cmd::Load(l)) => load::run(&l),
        None => run(cli.args),
    };
    if let Err(e) = res {
        eprintln!("rapbench: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    if a.instruments == 0 || a.messages < a.instruments as u64 {
        bail!("need at least one instrument and one message per instrument");
    }
    if !a.rapd.is_file() {
        bail!("{} not found: build it with `cargo build --release -p rapbox`", a.rapd.display());
    }
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = std::fs::canonicalize(&a.dir)?;
    let load_before = loadavg();
    let started = Instant::now();
    say(&format!("load average before: {load_before}"));

    say("raw SQLite ceiling");
    let raw = raw_sqlite(&dir.join("raw"), a.messages.min(1_000_000), a.payload)?;
    say(&format!("  1000 rows/txn: {:.0} rows/s; 1 row/txn: {:.0} rows/s", raw.rows_per_s_1000, raw.rows_per_s_1));

    // The data center: PKI for a fresh loopback address, backend now, nginx later.
    let dc_addr = ports::unique_443().context("choosing a loopback address for the data center")?;
    let pki = Pki::generate(&dir.join("pki"), &PkiSpec::new(&["dc.rapbox.test"], &[dc_addr.ip()], BOX_ID))
        .context("generating the benchmark PKI")?;
    let backend = Server::start(ServerConfig::new("127.0.0.1:0".parse()?), Store::open(&dir.join("dc.db"))?)?;
    let client = Client::for_addr(backend.addr());
    let dc = Dc { addr: dc_addr, pki, backend_port: backend.addr().port() };

    say("rapd");
    let rapd = bench_rapd(&a, &dir, &dc, &client)?;
    let syslog = if a.skip_syslog_ng {
        None
    } else {
        say("syslog-ng");
        Some(bench_syslog_ng(&a, &dir, &dc, &backend)?)
    };
    let collectd = if a.skip_collectd {
        None
    } else {
        say("collectd");
        Some(collectd::bench(&a, &dir, &dc, &backend)?)
    };
    backend.shutdown();
    let kill9 =
        if a.skip_kill9 { [None, None, None] } else { kill9::all(&a, &dir, &dc, !a.skip_syslog_ng, !a.skip_collectd)? };
    let load_after = loadavg();

    let report = Report {
        args: &a,
        raw,
        rapd,
        syslog,
        collectd,
        kill9,
        load_before,
        load_after,
        total_s: started.elapsed().as_secs_f64(),
    };
    let mut md = report.markdown();
    // Figures measured by other commands (kept across regenerations): from this heading on.
    if let Some(kept) =
        std::fs::read_to_string(&a.out).ok().and_then(|t| t.find(KEPT_HEADING).map(|i| t[i..].to_owned()))
    {
        md.push('\n');
        md.push_str(&kept);
    }
    println!("\n{}", report.table());
    println!("{}", report.targets());
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, md).with_context(|| format!("writing {}", a.out.display()))?;
    println!("written to {}", a.out.display());
    Ok(())
}

fn say(s: &str) {
    eprintln!("[rapbench] {s}");
}

// ---------------------------------------------------------------------------------------
// Raw SQLite ceiling

struct Raw {
    rows_1000: u64,
    rows_per_s_1000: f64,
    rows_1: u64,
    rows_per_s_1: f64,
}

/// Distinct realistic payloads cycled by the raw ceiling and the syslog-ng senders.
fn payloads(serial: &str, n: usize, size: usize) -> Vec<Vec<u8>> {
    let mut g = StatusText::new(serial);
    (0..n)
        .map(|_| {
            let mut p = g.next(false, size);
            // One line each for syslog-ng.
            for b in p.iter_mut() {
                if *b == b'\n' || *b == b'\r' {
                    *b = b' ';
                }
            }
            p
        })
        .collect()
}

fn raw_sqlite(dir: &Path, rows: u64, size: usize) -> Result<Raw> {
    std::fs::create_dir_all(dir)?;
    let pool = payloads("RAW-0001", 4096, size);
    let insert = |path: &Path, rows: u64, per_txn: u64| -> Result<f64> {
        let db = rusqlite::Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE r (id INTEGER PRIMARY KEY, instrument TEXT NOT NULL, msg_id INTEGER NOT NULL, \
             ts INTEGER NOT NULL, priority INTEGER NOT NULL, payload BLOB NOT NULL)",
        )?;
        let t = Instant::now();
        let mut i = 0u64;
        while i < rows {
            let tx = db.unchecked_transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO r (instrument, msg_id, ts, priority, payload) VALUES (?1, ?2, ?3, 2, ?4)",
                )?;
                for _ in 0..per_txn.min(rows - i) {
                    st.execute(rusqlite::params![
                        "DXI-0001",
                        i as i64,
                        1_700_000_000_000i64 + i as i64,
                        &pool[i as usize % pool.len()]
                    ])?;
                    i += 1;
                }
            }
            tx.commit()?;
        }
        Ok(rows as f64 / t.elapsed().as_secs_f64())
    };
    let rows_per_s_1000 = insert(&dir.join("raw-1000.db"), rows, 1000)?;
    let rows_1 = 3000.min(rows);
    let rows_per_s_1 = insert(&dir.join("raw-1.db"), rows_1, 1)?;
    Ok(Raw { rows_1000: rows, rows_per_s_1000, rows_1, rows_per_s_1 })
}

// ---------------------------------------------------------------------------------------
// Processes: RSS, per-thread CPU

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// Resets the peak RSS (VmHWM) of a process to its current RSS.
fn reset_hwm(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Samples per-thread CPU by thread id, so that threads which end between two samples
/// are still attributed by name (up to their last sample).
struct ThreadSampler {
    pid: u32,
    first: BTreeMap<u64, f64>,
    last: BTreeMap<u64, (String, f64)>,
    proc0: f64,
}

impl ThreadSampler {
    fn new(pid: u32) -> ThreadSampler {
        let now = tid_cpu(pid);
        ThreadSampler {
            pid,
            first: now.iter().map(|(t, (_, c))| (*t, *c)).collect(),
            last: now,
            proc0: process_cpu(pid),
        }
    }
    fn sample(&mut self) {
        for (t, v) in tid_cpu(self.pid) {
            self.last.insert(t, v);
        }
    }
    /// CPU seconds per thread name since `new`, with the process total first.
    fn finish(mut self) -> Vec<(String, f64)> {
        self.sample();
        let total = process_cpu(self.pid) - self.proc0;
        let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
        for (t, (name, c)) in &self.last {
            *by_name.entry(name.clone()).or_default() += c - self.first.get(t).copied().unwrap_or(0.0);
        }
        let mut v: Vec<(String, f64)> = by_name.into_iter().filter(|(_, c)| *c > 0.0).collect();
        let seen: f64 = v.iter().map(|(_, c)| c).sum();
        if total - seen > 0.05 {
            v.push(("(unsampled: threads that ended)".into(), total - seen));
        }
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.insert(0, ("TOTAL".into(), total));
        v
    }
}

/// (name, CPU seconds) per thread id.
fn tid_cpu(pid: u32) -> BTreeMap<u64, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks: u64 =
            f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        out.insert(tid, (stat[open + 1..close].to_owned(), ticks as f64 / 100.0));
    }
    out
}

/// CPU seconds of the direct children of a process (nginx workers).
fn children_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(process_cpu)
        .sum()
}

/// CPU seconds (user + system) of the whole process, exited threads included.
fn process_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(close) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn fmt_cpu(v: &[(String, f64)], secs: f64) -> String {
    v.iter()
        .take(10)
        .map(|(n, s)| format!("{n} {s:.1} s ({:.0}%)", 100.0 * s / secs.max(1e-9)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The commit, whether runtime/ had uncommitted changes, and when the rapd binary was built.
fn provenance(rapd: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git").args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let dirty = git(&["status", "--porcelain", "--", "runtime", "crates"]).map(|s| !s.is_empty()).unwrap_or(false);
    let built = std::fs::metadata(rapd)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            Command::new("date")
                .arg("-u")
                .arg("-d")
                .arg(format!("@{}", d.as_secs()))
                .arg("+%Y-%m-%d %H:%M:%S UTC")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    format!(
        "commit {head}{}; `{}` built {built}",
        if dirty { " with uncommitted changes in runtime/ or crates/" } else { "" },
        rapd.display()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

fn sigterm_and_wait(child: &mut Child, timeout: Duration) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills the child on drop (error paths).
struct Guard(Option<Child>);

impl Guard {
    /// SIGKILL and reap: a crash at an arbitrary moment.
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
    fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            sigterm_and_wait(&mut c, Duration::from_secs(30));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The data center and nginx's access log

struct Dc {
    addr: SocketAddr,
    pki: Pki,
    backend_port: u16,
}

impl Dc {
    fn start_nginx(&self, prefix: &Path) -> Result<(Nginx, PathBuf)> {
        std::fs::create_dir_all(prefix)?;
        let fd = FrontDoor::new(
            self.addr,
            &self.pki.server.cert,
            &self.pki.server.key,
            &self.pki.ca.cert,
            self.backend_port,
            prefix,
        );
        let log = fd.access_log.clone();
        Ok((Nginx::start(&fd).context("starting nginx")?, log))
    }
}

/// Requests and summed `$request_length` (request line + headers + body) of the access-log
/// lines for `path`, and how many were not answered 200.
struct Wire {
    requests: u64,
    bytes: u64,
    non_200: u64,
}

fn access_log_wire(log: &Path, path: &str) -> Result<Wire> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut w = Wire { requests: 0, bytes: 0, non_200: 0 };
    let needle = format!("\"POST {path} ");
    for line in text.lines().filter(|l| l.contains(&needle)) {
        w.requests += 1;
        let status = line.split('"').nth(2).and_then(|s| s.split_whitespace().next()).unwrap_or("");
        if status != "200" {
            w.non_200 += 1;
        }
        if let Some(v) = line.split_whitespace().find_map(|f| f.strip_prefix("req=")) {
            w.bytes += v.parse::<u64>().unwrap_or(0);
        }
    }
    Ok(w)
}

// ---------------------------------------------------------------------------------------
// rapd

struct RapdResult {
    ingest_s: f64,
    acked: u64,
    idle_rss_kib: u64,
    ingest_hwm_kib: u64,
    drain_s: f64,
    drain_hwm_kib: u64,
    wire: Wire,
    body_bytes: u64,
    records_sent: u64,
    dc_records: u64,
    cpu_ingest: Vec<(String, f64)>,
    cpu_drain: Vec<(String, f64)>,
    sim_cpu_note: String,
    dc_cpu: String,
}

fn rapd_status(socket: &Path) -> Result<Status> {
    let r = control::request(socket, &Request::Status).context("rapd control socket")?;
    r.status.context("no status in the answer")
}

fn depth(s: &Status) -> u64 {
    s.queue["depth"].as_u64().unwrap_or(0)
}

/// Writes a rapd configuration for `instruments` in `bdir` (quota sized for `messages`);
/// returns the file and the control socket.
fn rapd_config(
    a: &Args,
    bdir: &Path,
    dc: &Dc,
    instruments: &[(String, SocketAddr)],
    messages: u64,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(bdir)?;
    let socket = bdir.join("control.sock");
    let quota = (messages * 1024).max(1 << 30);
    let mut cfg = format!(
        "[queue]\npath = {:?}\nquota_bytes = {quota}\n\n[uplink]\nurl = \"https://{}/api/v1/batches\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
         backoff_initial_ms = 100\nbackoff_max_ms = 500\nconnect_timeout_ms = 2000\nio_timeout_ms = 60000\n\n\
         [fips]\nopenssl_conf = {:?}\n\n[control]\nsocket = {:?}\n\n[log]\ntarget = \"stderr\"\n\n",
        bdir.join("data/queue.db"),
        dc.addr.ip(),
        dc.pki.ca.cert,
        dc.pki.client.cert,
        dc.pki.client.key,
        std::fs::canonicalize(&a.fips_conf).with_context(|| format!("{}: run scripts/build-fips.sh", a.fips_conf.display()))?,
        socket
    );
    for (s, addr) in instruments {
        cfg += &format!("[[instrument]]\nserial = \"{s}\"\nmodel = \"bench\"\nlisten = \"{addr}\"\n\n");
    }
    let cfg_path = bdir.join("rapd.toml");
    std::fs::write(&cfg_path, cfg)?;
    Ok((cfg_path, socket))
}

/// Starts the release rapd on `cfg`, logging to `log`, and waits until its control socket answers.
fn spawn_rapd(a: &Args, cfg: &Path, log_path: &Path, socket: &Path) -> Result<Guard> {
    let log = std::fs::File::create(log_path)?;
    let child = Command::new(&a.rapd)
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", a.rapd.display()))?;
    let mut rapd = Guard(Some(child));
    wait_until("rapd's control socket", Duration::from_secs(20), Duration::from_millis(50), || {
        if let Some(st) = rapd.child().try_wait()? {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            bail!("rapd exited with {st}:\n{log}");
        }
        Ok(control::request(socket, &Request::Status).ok().map(|_| ()))
    })?;
    Ok(rapd)
}

fn bench_rapd(a: &Args, dir: &Path, dc: &Dc, client: &Client) -> Result<RapdResult> {
    let bdir = dir.join("rapd");
    let timeout = Duration::from_secs(a.timeout_s);
    let instruments: Vec<(String, SocketAddr)> =
        (0..a.instruments).map(|i| Ok((format!("DXI-{:04}", i + 1), ports::unique_addr()?))).collect::<Result<_>>()?;
    let (cfg_path, socket) = rapd_config(a, &bdir, dc, &instruments, a.messages)?;
    let mut rapd = spawn_rapd(a, &cfg_path, &bdir.join("rapd.log"), &socket)?;
    let pid = rapd.pid();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss_kib = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    say(&format!("  idle RSS {idle_rss_kib} KiB"));

    // Durable ingest: the data center is down, so rapd only stores and acknowledges.
    let per = a.messages / a.instruments as u64;
    let extra = a.messages % a.instruments as u64;
    // The same kind of pre-rendered payloads as the syslog-ng senders cycle, so that
    // neither peer's load generator spends its CPU rendering readings.
    let pools: Vec<Arc<[Vec<u8>]>> = instruments.iter().map(|(s, _)| payloads(s, 4096, a.payload).into()).collect();
    let mut sampler = ThreadSampler::new(pid);
    let self0 = process_cpu(std::process::id());
    let t = Instant::now();
    let runs = instruments
        .iter()
        .zip(pools)
        .enumerate()
        .map(|(i, ((s, addr), pool))| {
            Instrument {
                rate: 0,
                count: Some(per + u64::from((i as u64) < extra)),
                window: a.window,
                payload_size: a.payload,
                payloads: Some(pool),
                drain_timeout: Duration::from_secs(60),
                stall_timeout: Some(Duration::from_secs(120)),
                ..Instrument::new(*addr, s.clone())
            }
            .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut acked = 0;
    let mut last = Instant::now();
    let mut tick = 0u32;
    while runs.iter().any(|r| !r.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        tick += 1;
        if tick % 10 == 0 {
            sampler.sample();
        }
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            let n: u64 = runs.iter().map(|r| r.stats().acked()).sum();
            say(&format!("  ingest: {n} acked after {:.1} s", t.elapsed().as_secs_f64()));
        }
    }
    let ingest_s = t.elapsed().as_secs_f64();
    for r in runs {
        let s = r.join()?;
        acked += s.stats.acked;
    }
    let cpu_ingest = sampler.finish();
    let self_cpu = process_cpu(std::process::id()) - self0;
    let ingest_hwm_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let st = rapd_status(&socket)?;
    say(&format!(
        "  ingest: {acked} acked in {ingest_s:.2} s = {:.0} msg/s; queue depth {}; peak RSS {ingest_hwm_kib} KiB",
        acked as f64 / ingest_s,
        depth(&st)
    ));
    say(&format!("  rapd CPU by thread: {}", fmt_cpu(&cpu_ingest, ingest_s)));
    let sim_cpu_note = format!("{self_cpu:.1} CPU-s in rapbench (simulated instruments) during ingest");
    say(&format!("  {sim_cpu_note}"));
    if acked != a.messages {
        bail!("only {acked} of {} messages acknowledged", a.messages);
    }

    // Drain: the data center comes up.
    reset_hwm(pid);
    let mut sampler = ThreadSampler::new(pid);
    let self1 = process_cpu(std::process::id());
    let nginx_cpu = |n: &Nginx| n.pid().map(|p| process_cpu(p) + children_cpu(p)).unwrap_or(0.0);
    let (nginx, access_log) = dc.start_nginx(&bdir.join("nginx"))?;
    let nginx0 = nginx_cpu(&nginx);
    let t = Instant::now();
    let mut last = Instant::now();
    // rapd answers each status request on a fresh thread and scans the queue (oldest_received_ms):
    // polling every 20 ms cost it ~10 CPU-s per million messages, so poll at 4 Hz.
    wait_until("the backlog to drain", timeout, Duration::from_millis(250), || {
        sampler.sample();
        let st = rapd_status(&socket)?;
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            say(&format!("  drain: depth {} after {:.1} s", depth(&st), t.elapsed().as_secs_f64()));
        }
        Ok((depth(&st) == 0).then_some(()))
    })?;
    let drain_s = t.elapsed().as_secs_f64();
    let cpu_drain = sampler.finish();
    let dc_cpu = format!(
        "{:.1} CPU-s in rapbench (the rapdc backend storing every record in SQLite) and {:.1} CPU-s in nginx during drain",
        process_cpu(std::process::id()) - self1,
        nginx_cpu(&nginx) - nginx0
    );
    say(&format!("  {dc_cpu}"));
    let drain_hwm_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let st = rapd_status(&socket)?;
    let body_bytes = st.uplink["bytes_sent"].as_u64().unwrap_or(0);
    let records_sent = st.uplink["records_sent"].as_u64().unwrap_or(0);
    let dc_records = client.stats()?.for_box(BOX_ID).map(|b| b.records).unwrap_or(0);
    say(&format!(
        "  drain: {} msg/s ({drain_s:.2} s); data center holds {dc_records}; peak RSS {drain_hwm_kib} KiB",
        (a.messages as f64 / drain_s).round()
    ));
    say(&format!("  rapd CPU by thread: {}", fmt_cpu(&cpu_drain, drain_s)));
    rapd.stop();
    nginx.stop();
    let wire = access_log_wire(&access_log, "/api/v1/batches")?;
    say(&format!(
        "  wire: {} requests, {} bytes ({:.1} B/msg), body {:.1} B/msg",
        wire.requests,
        wire.bytes,
        wire.bytes as f64 / a.messages as f64,
        body_bytes as f64 / a.messages as f64
    ));
    Ok(RapdResult {
        ingest_s,
        acked,
        idle_rss_kib,
        ingest_hwm_kib,
        drain_s,
        drain_hwm_kib,
        wire,
        body_bytes,
        records_sent,
        dc_records,
        cpu_ingest,
        cpu_drain,
        sim_cpu_note,
        dc_cpu,
    })
}

// ---------------------------------------------------------------------------------------
// syslog-ng

struct SyslogResult {
    version: String,
    ingest_s: f64,
    senders_done_s: f64,
    drain_s: f64,
    idle_rss_kib: u64,
    ingest_hwm_kib: u64,
    drain_hwm_kib: u64,
    wire: Wire,
    counted: u64,
}

fn syslog_ng_conf(listen: SocketAddr, dc: &Dc, dir: &Path) -> String {
    format!(
        r#"@version: 3.38
# Generated by rapbench: TCP source -> http() into the nginx mTLS front door, reliable disk buffer.
options {{
    stats-level(1);
    time-reopen(1);
    keep-hostname(yes);
    chain-hostnames(no);
    use-dns(no);
    use-fqdn(no);
}};

source s_tcp {{
    network(
        ip("{ip}") port({port}) transport("tcp")
        flags(no-parse)
        max-connections(64)
        log-iw-size(64000)
        log-fetch-limit(1000)
        log-msg-size(65536)
    );
}};

destination d_http {{
    http(
        url("https://{dc}/api/v1/lines")
        method("POST")
        headers("Content-Type: text/plain")
        body("${{MSG}}")
        ca-file("{ca}")
        cert-file("{cert}")
        key-file("{key}")
        peer-verify(yes)
        batch-lines(1000)
        batch-bytes(4194304)
        batch-timeout(200)
        workers(2)
        timeout(60)
        disk-buffer(
            reliable(yes)
            mem-buf-size(4194304)
            disk-buf-size(4294967296)
            dir("{buf}")
        )
    );
}};

log {{ source(s_tcp); destination(d_http); flags(flow-control); }};
"#,
        ip = listen.ip(),
        port = listen.port(),
        dc = dc.addr.ip(),
        ca = dc.pki.ca.cert.display(),
        cert = dc.pki.client.cert.display(),
        key = dc.pki.client.key.display(),
        buf = dir.join("buffer").display(),
    )
}

/// `syslog-ng-ctl stats` as `name;id;instance;state;type` → number.
fn syslog_stats(ctl: &Path) -> Result<BTreeMap<String, u64>> {
    let out =
        Command::new("syslog-ng-ctl").arg("stats").arg("-c").arg(ctl).output().context("running syslog-ng-ctl")?;
    if !out.status.success() {
        bail!("syslog-ng-ctl stats: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut m = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        if let Some((k, v)) = l.rsplit_once(';') {
            if let Ok(n) = v.trim().parse() {
                m.insert(k.to_owned(), n);
            }
        }
    }
    Ok(m)
}

/// Messages the TCP source has accepted (read and put on the log path).
fn syslog_received(ctl: &Path) -> Result<u64> {
    let m = syslog_stats(ctl)?;
    if let Some(n) = m.get("center;;received;a;processed") {
        return Ok(*n);
    }
    Ok(m.iter().filter(|(k, _)| k.starts_with("src.network;s_tcp") && k.ends_with(";processed")).map(|(_, v)| v).sum())
}

/// Starts syslog-ng with the benchmark's configuration in `sdir` (persist file, disk buffer
/// and log there: a second start resumes from them) and waits until it listens.
fn start_syslog_ng(sdir: &Path, listen: SocketAddr, dc: &Dc) -> Result<Guard> {
    std::fs::create_dir_all(sdir.join("buffer"))?;
    let conf = sdir.join("syslog-ng.conf");
    std::fs::write(&conf, syslog_ng_conf(listen, dc, sdir))?;
    let log_path = sdir.join("syslog-ng.log");
    let log = std::fs::File::options().create(true).append(true).open(&log_path)?;
    let child = Command::new("syslog-ng")
        .arg("-F")
        .arg("--no-caps")
        .arg("-f")
        .arg(&conf)
        .arg("-R")
        .arg(sdir.join("syslog-ng.persist"))
        .arg("-p")
        .arg(sdir.join("syslog-ng.pid"))
        .arg("-c")
        .arg(sdir.join("syslog-ng.ctl"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting syslog-ng")?;
    let mut sng = Guard(Some(child));
    wait_until("syslog-ng to listen", Duration::from_secs(20), Duration::from_millis(50), || {
        if let Some(st) = sng.child().try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("syslog-ng exited with {st}:\n{log}");
        }
        Ok(TcpStream::connect(listen).ok().map(|_| ()))
    })?;
    Ok(sng)
}

fn bench_syslog_ng(a: &Args, dir: &Path, dc: &Dc, backend: &Server) -> Result<SyslogResult> {
    let sdir = dir.join("syslog-ng");
    let timeout = Duration::from_secs(a.timeout_s);
    let version = Command::new("syslog-ng")
        .arg("--version")
        .output()
        .context("syslog-ng not installed: apt-get install syslog-ng-core syslog-ng-mod-http")?;
    let version = String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or("?").to_owned();
    let listen = ports::unique_addr()?;
    let mut sng = start_syslog_ng(&sdir, listen, dc)?;
    let ctl = sdir.join("syslog-ng.ctl");
    let pid = sng.pid();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss_kib = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let base = syslog_received(&ctl)?;
    say(&format!("  {version}; idle RSS {idle_rss_kib} KiB"));

    // Ingest: nginx is down; lines go to the disk buffer (flow control holds the senders
    // back only when the buffer is full, which it is sized never to be).
    let per = a.messages / a.instruments as u64;
    let extra = a.messages % a.instruments as u64;
    let t = Instant::now();
    let senders: Vec<_> = (0..a.instruments)
        .map(|i| {
            let n = per + u64::from((i as u64) < extra);
            let pool = payloads(&format!("DXI-{:04}", i + 1), 4096, a.payload);
            std::thread::spawn(move || -> std::io::Result<TcpStream> {
                let s = TcpStream::connect(listen)?;
                let mut w = BufWriter::with_capacity(64 * 1024, s.try_clone()?);
                for k in 0..n {
                    w.write_all(&pool[k as usize % pool.len()])?;
                    w.write_all(b"\n")?;
                }
                w.flush()?;
                Ok(s)
            })
        })
        .collect();
    let mut streams = Vec::new();
    for s in senders {
        streams.push(s.join().map_err(|_| anyhow::anyhow!("sender panicked"))?.context("TCP sender")?);
    }
    let senders_done_s = t.elapsed().as_secs_f64();
    let mut last = Instant::now();
    wait_until("syslog-ng to accept every line", timeout, Duration::from_millis(50), || {
        let n = syslog_received(&ctl)? - base;
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            say(&format!("  ingest: {n} accepted after {:.1} s", t.elapsed().as_secs_f64()));
        }
        Ok((n >= a.messages).then_some(()))
    })?;
    let ingest_s = t.elapsed().as_secs_f64();
    drop(streams);
    let ingest_hwm_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    say(&format!(
        "  ingest: {} lines in {ingest_s:.2} s = {:.0} msg/s (senders done after {senders_done_s:.2} s); peak RSS {ingest_hwm_kib} KiB",
        a.messages,
        a.messages as f64 / ingest_s
    ));

    // Drain.
    reset_hwm(pid);
    let (nginx, access_log) = dc.start_nginx(&sdir.join("nginx"))?;
    let t = Instant::now();
    let mut last = Instant::now();
    let counted = wait_until("the backend to count every line", timeout, Duration::from_millis(20), || {
        let n = backend.line_counts().get(BOX_ID).copied().unwrap_or(0);
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            say(&format!("  drain: {n} lines at the data center after {:.1} s", t.elapsed().as_secs_f64()));
        }
        Ok((n >= a.messages).then_some(n))
    })?;
    let drain_s = t.elapsed().as_secs_f64();
    let drain_hwm_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    // Let in-flight requests finish being logged.
    std::thread::sleep(Duration::from_millis(300));
    sng.stop();
    nginx.stop();
    let wire = access_log_wire(&access_log, "/api/v1/lines")?;
    say(&format!(
        "  drain: {:.0} msg/s ({drain_s:.2} s); {} requests, {:.1} B/msg on the wire; peak RSS {drain_hwm_kib} KiB",
        a.messages as f64 / drain_s,
        wire.requests,
        wire.bytes as f64 / a.messages as f64
    ));
    Ok(SyslogResult {
        version,
        ingest_s,
        senders_done_s,
        drain_s,
        idle_rss_kib,
        ingest_hwm_kib,
        drain_hwm_kib,
        wire,
        counted,
    })
}

// ---------------------------------------------------------------------------------------
// Report

struct Report<'a> {
    args: &'a Args,
    raw: Raw,
    rapd: RapdResult,
    syslog: Option<SyslogResult>,
    collectd: Option<collectd::CollectdResult>,
    /// rapd, syslog-ng, collectd.
    kill9: [Option<kill9::Kill9>; 3],
    load_before: String,
    load_after: String,
    total_s: f64,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn rate(n: u64, s: f64) -> f64 {
    n as f64 / s.max(1e-9)
}

fn k(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.0}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**pass**"
    } else {
        "**MISSED**"
    }
}

impl Report<'_> {
    fn n(&self) -> u64 {
        self.args.messages
    }

    /// The kill -9 column of one peer.
    fn kill9_cell(&self, i: usize, unit: &str, accepted_means: &str) -> String {
        match &self.kill9[i] {
            None => "(not measured: `--skip-kill9`)".into(),
            Some(k) => format!(
                "{}: {} of {} {unit} {accepted_means} lost ({:.1}%){}",
                if k.survived() { "**yes**" } else { "**no**" },
                k.lost,
                k.accepted,
                100.0 * k.lost as f64 / k.accepted.max(1) as f64,
                if k.redelivered > 0 { format!("; {} sent twice", k.redelivered) } else { String::new() }
            ),
        }
    }

    fn table(&self) -> String {
        let n = self.n();
        let r = &self.rapd;
        let mut s = String::new();
        s += "| | durable ingest msg/s | drain msg/s | bytes on the wire / msg | peak RSS | idle RSS | acked data survives kill -9 (measured) |\n";
        s += "|---|---:|---:|---:|---:|---:|---|\n";
        let _ = writeln!(
            s,
            "| rapd | {} (acked after fsync'ed commit) | {} | {:.1} (compressed body alone {:.1}) | {} ingest / {} drain | {} | {} |",
            k(rate(r.acked, r.ingest_s)),
            k(rate(n, r.drain_s)),
            r.wire.bytes as f64 / n as f64,
            r.body_bytes as f64 / n as f64,
            mib(r.ingest_hwm_kib),
            mib(r.drain_hwm_kib),
            mib(r.idle_rss_kib),
            self.kill9_cell(0, "acknowledged messages", "were"),
        );
        match &self.syslog {
            Some(g) => {
                let _ = writeln!(
                    s,
                    "| syslog-ng | {} (no fsync, no application acks) | {} | {:.1} | {} ingest / {} drain | {} | {} |",
                    k(rate(n, g.ingest_s)),
                    k(rate(n, g.drain_s)),
                    g.wire.bytes as f64 / n as f64,
                    mib(g.ingest_hwm_kib),
                    mib(g.drain_hwm_kib),
                    mib(g.idle_rss_kib),
                    self.kill9_cell(1, "lines", "accepted by TCP were"),
                );
            }
            None => s += "| syslog-ng | (skipped) | | | | | |\n",
        }
        match &self.collectd {
            Some(c) => {
                let posted = c.after_outage_delivered + c.live_n;
                let _ = writeln!(
                    s,
                    "| collectd | none: no disk queue ({} values/s acknowledged into memory) | no backlog: {} of {} values acknowledged during the outage arrived; live forwarding {} | {:.1} | {} ingest / {} live | {} | {} |",
                    k(rate(c.ingest_n, c.ingest_s)),
                    c.after_outage_delivered,
                    c.ingest_n,
                    k(rate(c.live_n, c.live_s)),
                    c.wire.bytes as f64 / posted.max(1) as f64,
                    mib(c.ingest_hwm_kib),
                    mib(c.live_hwm_kib),
                    mib(c.idle_rss_kib),
                    self.kill9_cell(2, "acknowledged values", "were"),
                );
            }
            None => s += "| collectd | (skipped) | | | | | |\n",
        }
        let _ = writeln!(
            s,
            "| raw SQLite ceiling | {} at 1000 rows/txn ({} at 1 row/txn) | — | — | — | — | — |",
            k(self.raw.rows_per_s_1000),
            k(self.raw.rows_per_s_1)
        );
        s
    }

    fn targets(&self) -> String {
        let n = self.n();
        let r = &self.rapd;
        let ingest = rate(r.acked, r.ingest_s);
        let drain = rate(n, r.drain_s);
        let bpm = r.wire.bytes as f64 / n as f64;
        let mut s = String::new();
        s += "| target | measured | result |\n|---|---|---|\n";
        match &self.syslog {
            Some(g) => {
                let gi = rate(n, g.ingest_s);
                let gd = rate(n, g.drain_s);
                let gb = g.wire.bytes as f64 / n as f64;
                let _ = writeln!(
                    s,
                    "| durable ingest ≥ 2× syslog-ng's reliable ingest ({}) | {} = {:.2}× | {} |",
                    k(2.0 * gi),
                    k(ingest),
                    ingest / gi,
                    verdict(ingest >= 2.0 * gi)
                );
                let _ = writeln!(
                    s,
                    "| drain ≥ syslog-ng's drain rate ({}) | {} = {:.2}× | {} |",
                    k(gd),
                    k(drain),
                    drain / gd,
                    verdict(drain >= gd)
                );
                let _ = writeln!(
                    s,
                    "| bytes on the wire ≤ 1/4 of syslog-ng's ({:.1} B/msg → ≤ {:.1}) | {bpm:.1} B/msg = {:.3}× | {} |",
                    gb,
                    gb / 4.0,
                    bpm / gb,
                    verdict(bpm <= gb / 4.0)
                );
            }
            None => s += "| comparisons with syslog-ng | skipped (`--skip-syslog-ng`) | — |\n",
        }
        let _ = writeln!(
            s,
            "| durable ingest ≥ 40% of the raw SQLite ceiling ({}) | {} = {:.0}% | {} |",
            k(0.4 * self.raw.rows_per_s_1000),
            k(ingest),
            100.0 * ingest / self.raw.rows_per_s_1000,
            verdict(ingest >= 0.4 * self.raw.rows_per_s_1000)
        );
        let _ = writeln!(s, "| ≤ 40 bytes on the wire per routine message | {bpm:.1} | {} |", verdict(bpm <= 40.0));
        let peak = r.ingest_hwm_kib.max(r.drain_hwm_kib);
        let _ = writeln!(s, "| rapd peak RSS ≤ 16 MiB under load | {} | {} |", mib(peak), verdict(peak <= 16 * 1024));
        let _ = writeln!(
            s,
            "| rapd idle RSS ≤ 8 MiB | {} | {} |",
            mib(r.idle_rss_kib),
            verdict(r.idle_rss_kib <= 8 * 1024)
        );
        s
    }

    fn markdown(&self) -> String {
        let a = self.args;
        let n = self.n();
        let r = &self.rapd;
        let mut s = String::new();
        s += "# Benchmarks\n\n";
        s += "Generated by `rapbench` (bench/); regenerate with `bash scripts/bench.sh` \
              (or `target/release/rapbench` after building). Not run in CI; nothing asserts timings.\n\n";
        let _ = writeln!(
            s,
            "Run: {n} messages of {} bytes, {} instruments/senders, window {}; one machine ({} cores); \
             load average before {} and after {}; whole run {:.0} s.\n",
            a.payload,
            a.instruments,
            a.window,
            std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0),
            self.load_before,
            self.load_after,
            self.total_s
        );
        let _ = writeln!(s, "Binaries: {}.\n", provenance(&a.rapd));
        s += "## Results\n\n";
        s += &self.table();
        s += "\n## Targets (issue 2, \"Benchmark\")\n\n";
        s += &self.targets();
        s += "\n## Details\n\n";
        let _ = writeln!(
            s,
            "- rapd ingest: {} acknowledged in {:.2} s; queue then held {n}. Drain: {:.2} s, {} records sent, \
             {} stored by the data center, {} POSTs ({} not answered 200), {} bytes by `$request_length` \
             (request line + headers + body), {} bytes of compressed batch bodies (rapd status `uplink.bytes_sent`).",
            r.acked,
            r.ingest_s,
            r.drain_s,
            r.records_sent,
            r.dc_records,
            r.wire.requests,
            r.wire.non_200,
            r.wire.bytes,
            r.body_bytes
        );
        let _ = writeln!(
            s,
            "- rapd CPU per thread during ingest ({:.1} s): {}.",
            r.ingest_s,
            fmt_cpu(&r.cpu_ingest, r.ingest_s)
        );
        let _ = writeln!(s, "  {}.", r.sim_cpu_note);
        let _ = writeln!(
            s,
            "- rapd CPU per thread during drain ({:.1} s): {}.",
            r.drain_s,
            fmt_cpu(&r.cpu_drain, r.drain_s)
        );
        let _ = writeln!(s, "  {}.", r.dc_cpu);
        if let Some(g) = &self.syslog {
            let _ = writeln!(
                s,
                "- {}: senders finished writing after {:.2} s, syslog-ng had accepted every line after {:.2} s; \
                 drain {:.2} s; {} lines counted by the data center; {} POSTs ({} not answered 200), {} bytes by `$request_length`.",
                g.version, g.senders_done_s, g.ingest_s, g.drain_s, g.counted, g.wire.requests, g.wire.non_200, g.wire.bytes
            );
        }
        if let Some(c) = &self.collectd {
            let _ = writeln!(
                s,
                "- {}: data center down, {} values acknowledged by the unixsock plugin in {:.2} s; {} of them reached the data \
                 center within 15 s of it coming up. Live, data center up: {} values stored by the data center {:.2} s after the \
                 first was sent; {} POSTs ({} not answered 200), {} bytes by `$request_length`.",
                c.version,
                c.ingest_n,
                c.ingest_s,
                c.after_outage_delivered,
                c.live_n,
                c.live_s,
                c.wire.requests,
                c.wire.non_200,
                c.wire.bytes
            );
        }
        let names = ["rapd", "syslog-ng", "collectd"];
        for (i, k9) in self.kill9.iter().enumerate() {
            if let Some(k9) = k9 {
                let _ = writeln!(
                    s,
                    "- kill -9, {}: killed with {} accepted{}; {} accepted in all (until the senders saw the peer gone), \
                     {} never reached the data center, {} delivered more than once.",
                    names[i],
                    k9.at_kill,
                    k9.peer_had.map(|n| format!(" ({n} of them read by the peer itself)")).unwrap_or_default(),
                    k9.accepted,
                    k9.lost,
                    k9.redelivered
                );
            }
        }
        let _ = writeln!(
            s,
            "- raw SQLite: {} rows at 1000 rows/txn, {} rows at 1 row/txn.",
            self.raw.rows_1000, self.raw.rows_1
        );
        s += "\n## Method\n\n";
        s += "- **Raw ceiling**: rusqlite (bundled SQLite), `journal_mode=WAL`, `synchronous=FULL`, one thread, a table \
              (id, instrument, msg_id, ts, priority, payload BLOB) and the same realistic 200-byte status payloads \
              (`rapsim::StatusText`), 1000 rows per transaction; 1 row per transaction for reference.\n";
        s += "- **rapd durable ingest**: the release `rapd` in FIPS mode (OpenSSL FIPS provider from \
              scripts/build-fips.sh), one port per instrument; `rapsim::Instrument` agents (rate 0 = as fast as the \
              window allows, pipelined window; each cycles 4096 pre-rendered 200-byte status payloads, as the syslog-ng \
              senders do, instead of rendering every report) send the messages; the uplink points at a \
              data center whose nginx is not running yet, so only ingest is measured. A message counts when its ack \
              arrives, and rapd acks only after the fsync'ed commit. The rate is messages / time from the first \
              connection to the last ack. Idle RSS is `VmRSS` 2 s after start; peak RSS is `VmHWM` \
              (reset through `/proc/PID/clear_refs` between phases).\n";
        s += "- **rapd drain**: nginx (rendered by `rapdc::frontdoor`, mutual TLS, FIPS suites) and the rapdc backend \
              (SQLite) come up; the drain time runs from nginx's start until rapd's queue depth is 0 (uplink \
              backoff at most 500 ms), polled at 4 Hz (each status request costs rapd a thread and a \
              `SELECT MIN(received)` over the queue, so faster polling slows the drain measurably). Bytes on the wire per message: the sum of nginx's `$request_length` (request \
              line, headers and body as received, after TLS decryption: TLS record overhead is not included, for either \
              peer) over all batch POSTs, divided by the messages; rapd's own compressed body bytes (`uplink.bytes_sent`) \
              are shown too.\n";
        s += "- **syslog-ng**: Debian's syslog-ng-core + syslog-ng-mod-http; a `network()` TCP source (`flags(no-parse)`, \
              newline-framed lines, `log-iw-size(64000)`) fed by as many concurrent plain-TCP senders as instruments, \
              each writing the same 200-byte payloads; `http()` destination to the same kind of nginx front door at \
              `POST /api/v1/lines` (rapdc stores every line in SQLite in one synchronous=FULL transaction per request, as it does for a box's batch, and counts them) with the client certificate and key and the CA of the \
              same PKI, `disk-buffer(reliable(yes) mem-buf-size(4 MiB) disk-buf-size(4 GiB))`, `batch-lines(1000)`, \
              `workers(2)`, log path `flags(flow-control)`. Ingest: nginx down, time until `syslog-ng-ctl stats` shows \
              every line received. Drain: nginx up, time until the backend has counted every line. syslog-ng's disk \
              buffer never calls fsync and TCP syslog has no application acks, so its \"ingest\" is not durable in \
              rapd's sense.\n";
        s += "- **collectd**: Debian's collectd-core (5.12) with libcurl3-gnutls; `unixsock` plugin as input, one connection \
              per sender, each value one `PUTVAL` of a gauge (the sender's sequence number as value, strictly increasing \
              times), pipelined, every \"0 Success\" answer counted as an acknowledgement; `write_http` with `Format \"Command\"`, \
              `BufferSize 1048576`, client certificate and key, `VerifyPeer`/`VerifyHost`, into the same kind of nginx front door \
              at `POST /api/v1/lines` (one stored line per value). collectd's unit is a numeric value list, not a 200-byte \
              report, so its bytes per message are those of its own text line. It has no disk queue: its \"ingest\" is into \
              memory; with the data center down write_http discards each buffer after the failed POST, so there is no backlog \
              to drain (the drain column counts what arrived after the outage, and gives the live forwarding rate with the data \
              center up instead); a kill -9 loses its write queue and buffer.\n";
        s += "- **kill -9**: per peer, a fresh data-center store; the peer gets messages from as many senders as instruments and \
              is killed with SIGKILL once a third of them were accepted, then started again on the same files (rapd on the \
              same queue, syslog-ng on the same persist file and disk buffer; collectd keeps nothing), the data center comes up \
              and the run waits until nothing more arrives. rapd and syslog-ng are killed with the data center down (everything \
              accepted is only in the peer), collectd with it up (down, it loses every value even without a kill). \"Accepted\" \
              is what the sender can know: rapd's ack (after fsync), syslog-ng's TCP `write` returning (no application \
              acks), collectd's unixsock answer. Lines carry the sender and sequence number, so losses are counted by identity, \
              not by totals.\n";
        s += "- The payloads are `rapsim::StatusText`: consecutive reports of one instrument differ in a few \
              characters (slowly drifting readings), so zstd over a batch of thousands of records shrinks them to about 1–2 bytes \
              each. Real instruments may vary more; syslog-ng's `http()` sends the lines uncompressed.\n";
        s += "- Everything runs on the same machine at the same time as the load shown above; the simulator/senders \
              compete with the daemon for the CPUs.\n";
        s
    }
}
