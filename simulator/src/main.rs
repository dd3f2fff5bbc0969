//! `rapsim`: run one or more simulated instruments against a box.
//!
//! Prints one live line per instrument per second on stderr and a summary per
//! instrument on stdout (JSON lines with `--json`).
//!
//! Exit codes: 0 every instrument finished; 1 an instrument failed (stalled, invalid
//! configuration); 2 bad command line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use rapsim::{Instrument, RunningInstrument, Summary};

/// Simulated clinical-lab instruments speaking the rapbox agent protocol.
#[derive(Debug, Parser)]
#[command(name = "rapsim", version, after_help = "Exit codes: 0 ok, 1 an instrument failed, 2 usage error.")]
struct Args {
    /// An instrument as SERIAL=HOST:PORT (the box port it is cabled to); repeatable.
    #[arg(short, long = "instrument", value_name = "SERIAL=ADDR", required = true)]
    instruments: Vec<String>,
    /// New messages per second per instrument; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Messages per instrument; without it, run until Ctrl-C or --duration.
    #[arg(long)]
    count: Option<u64>,
    /// Stop generating after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Payload bytes per message.
    #[arg(long, default_value_t = rapsim::DEFAULT_PAYLOAD)]
    payload_size: usize,
    /// Every N-th message is an alarm (priority 0); 0 = no alarms.
    #[arg(long, default_value_t = 0, value_name = "N")]
    alarm_every: u64,
    /// Unacknowledged messages in flight per instrument.
    #[arg(long, default_value_t = rapsim::DEFAULT_WINDOW)]
    window: usize,
    /// Id of each instrument's first message [default: microseconds since the epoch,
    /// so that a rerun never reuses ids the box already stored].
    #[arg(long)]
    first_id: Option<u64>,
    /// Claim this serial in messages instead of the real one (wrong-instrument tests).
    #[arg(long)]
    claim_serial: Option<String>,
    /// After stopping, seconds to wait for outstanding messages to be acked.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    drain: f64,
    /// Give up when nothing is acked for this many seconds (0 = never).
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    stall: f64,
    /// Print summaries as JSON lines.
    #[arg(long)]
    json: bool,
    /// No live lines.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_instrument(s: &str) -> anyhow::Result<(String, SocketAddr)> {
    let Some((serial, addr)) = s.split_once('=') else {
        bail!("--instrument {s:?}: expected SERIAL=HOST:PORT");
    };
    let addr = addr.parse().with_context(|| format!("--instrument {s:?}: bad address {addr:?}"))?;
    Ok((serial.to_string(), addr))
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("{flag} {v}: not a valid number of seconds"))
}

fn run(args: Args) -> anyhow::Result<bool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    let first_id = args
        .first_id
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64));
    let drain = secs(args.drain, "--drain")?;
    let stall = secs(args.stall, "--stall")?;
    let mut running: Vec<RunningInstrument> = Vec::new();
    for spec in &args.instruments {
        let (serial, addr) = parse_instrument(spec)?;
        let inst = Instrument {
            rate: args.rate,
            count: args.count,
            stop: Arc::clone(&stop),
            payload_size: args.payload_size,
            alarm_every: args.alarm_every,
            window: args.window,
            first_id,
            claimed_serial: args.claim_serial.clone(),
            drain_timeout: drain,
            stall_timeout: (!stall.is_zero()).then_some(stall),
            ..Instrument::new(addr, serial)
        };
        running.push(inst.spawn()?);
    }
    let start = Instant::now();
    let deadline = args.duration.map(|d| secs(d, "--duration")).transpose()?.map(|d| start + d);
    let mut last: Vec<u64> = vec![0; running.len()];
    let mut next_tick = start + Duration::from_secs(1);
    while !running.iter().all(RunningInstrument::is_finished) {
        thread::sleep(Duration::from_millis(50));
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stop.store(true, Ordering::SeqCst);
        }
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            if !args.quiet {
                for (r, prev) in running.iter().zip(last.iter_mut()) {
                    let s = r.stats();
                    let acked = s.acked();
                    eprintln!(
                        "{:>6.1}s {} sent={} acked={} ({}/s) dup={} resent={} errors={} rejected={} reconnects={}",
                        start.elapsed().as_secs_f64(),
                        r.serial(),
                        s.sent(),
                        acked,
                        acked - *prev,
                        s.duplicate_acked(),
                        s.resent(),
                        s.total_errors(),
                        s.rejected(),
                        s.reconnects(),
                    );
                    *prev = acked;
                }
            }
        }
    }
    let mut ok = true;
    for r in running {
        match r.join() {
            Ok(summary) => print_summary(&summary, args.json)?,
            Err(e) => {
                eprintln!("rapsim: {e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s).context("encoding the summary")?);
        return Ok(());
    }
    let secs = s.elapsed_ms as f64 / 1000.0;
    let rate = if secs > 0.0 { s.stats.acked as f64 / secs } else { 0.0 };
    println!(
        "{} -> {}: generated={} acked={} ({rate:.0} msg/s over {secs:.1} s) duplicate_acked={} resent={} \
         rejected={} unacked={} reconnects={} errors={:?}",
        s.serial,
        s.addr,
        s.generated,
        s.stats.acked,
        s.stats.duplicate_acked,
        s.stats.resent,
        s.stats.rejected,
        s.unacked.len(),
        s.stats.reconnects,
        s.stats.errors,
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("rapsim: {e:#}");
            std::process::exit(1);
        }
    }
}
