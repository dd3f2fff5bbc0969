//! `rapbench load`: one release rapd (FIPS mode, data center up) with 1000 concurrent
//! agent connections held open (600 slow senders, 400 idle) and 200 more that rapd keeps
//! cutting off (100 slowloris, 100 oversized frames; they reconnect), spread evenly over 20
//! instrument ports (`rapsim::load`), while a well-behaved probe
//! instrument on its own port sends one report at a time and a pipelining instrument
//! reports at a fixed rate. Measures the probe's ack latency alone and under load, the
//! pipelining instrument's acks, what every misbehaviour got, and rapd's memory (RSS
//! before, peak, after) and threads. Prints the figures as a Markdown section
//! (docs/reliability.md keeps the last one). Nothing is asserted about timings; the CI test
//! runtime/tests/load.rs checks the functional part of the same scenario.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rapbox_testkit::pki::{Pki, PkiSpec};
use rapbox_testkit::ports;
use rapdc::{Server, ServerConfig, Store};
use rapsim::load::{Behaviour, LoadSpec, Probe, ProbeReport};
use rapsim::Instrument;

use crate::{loadavg, proc_status_kib, process_cpu, reset_hwm, say, wait_until, Dc, Guard, BOX_ID};

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Load connections in all: per 12, 6 slow senders, 4 idle, 1 slowloris, 1 oversized.
    #[arg(long, default_value_t = 1200)]
    connections: usize,
    /// Instrument ports they are spread over (at most 64 connections each).
    #[arg(long, default_value_t = 20)]
    ports: usize,
    /// Probe: one report at a time, this many milliseconds apart.
    #[arg(long, default_value_t = 50)]
    probe_interval_ms: u64,
    /// Reports per second of the pipelining instrument on its own port.
    #[arg(long, default_value_t = 2000)]
    pipe_rate: u32,
    /// The rapd binary (release build).
    #[arg(long, default_value = "target/release/rapd")]
    rapd: PathBuf,
    /// The FIPS provider configuration made by scripts/build-fips.sh.
    #[arg(long, default_value = "/var/cache/rapbox/fips/openssl-fips.cnf")]
    fips_conf: PathBuf,
    /// Working directory (emptied first).
    #[arg(long, default_value = "target/bench-load")]
    dir: PathBuf,
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn latency_row(name: &str, p: &ProbeReport) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} |",
        p.sent,
        p.acked,
        ms(p.percentile_us(50.0)),
        ms(p.percentile_us(90.0)),
        ms(p.percentile_us(99.0)),
        ms(p.max_us()),
        if p.problems.is_empty() { "none".to_string() } else { format!("{}: {}", p.problems.len(), p.problems[0]) }
    )
}

fn threads(pid: u32) -> u64 {
    proc_status_kib(pid, "Threads:").unwrap_or(0)
}

pub fn run(a: &LoadArgs) -> Result<()> {
    if !a.rapd.is_file() {
        bail!("{} not found: build it with `cargo build --release -p rapbox`", a.rapd.display());
    }
    if a.ports == 0 || a.connections > a.ports * 64 {
        bail!("{} connections do not fit {} ports of at most 64 connections", a.connections, a.ports);
    }
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = std::fs::canonicalize(&a.dir)?;
    let load_before = loadavg();
    say(&format!("load average before: {load_before}"));

    let dc_addr = ports::unique_443().context("choosing a loopback address for the data center")?;
    let pki = Pki::generate(&dir.join("pki"), &PkiSpec::new(&["dc.rapbox.test"], &[dc_addr.ip()], BOX_ID))?;
    let backend = Server::start(ServerConfig::new("127.0.0.1:0".parse()?), Store::open(&dir.join("dc.db"))?)?;
    let dc = Dc { addr: dc_addr, pki, backend_port: backend.addr().port() };
    let (nginx, _) = dc.start_nginx(&dir.join("nginx"))?;

    let probe_port = ("LOAD-PROBE".to_string(), ports::unique_addr()?);
    let pipe_port = ("LOAD-PIPE".to_string(), ports::unique_addr()?);
    let loaded: Vec<(String, SocketAddr)> =
        (1..=a.ports).map(|i| Ok((format!("LOAD-{i:02}"), ports::unique_addr()?))).collect::<Result<_>>()?;
    let all: Vec<(String, SocketAddr)> =
        [probe_port.clone(), pipe_port.clone()].into_iter().chain(loaded.iter().cloned()).collect();
    let args = crate::Args {
        messages: 1,
        instruments: 1,
        window: 1,
        payload: 200,
        skip_syslog_ng: true,
        skip_collectd: true,
        skip_kill9: true,
        kill9_messages: 0,
        out: PathBuf::new(),
        rapd: a.rapd.clone(),
        fips_conf: a.fips_conf.clone(),
        dir: dir.clone(),
        timeout_s: 300,
    };
    let bdir = dir.join("rapd");
    let (cfg, socket) = crate::rapd_config(&args, &bdir, &dc, &all, 1_000_000)?;
    let mut text = std::fs::read_to_string(&cfg)?;
    text = text.replacen(
        "[log]",
        "[ingest]\nmax_connections_per_port = 64\nframe_timeout_ms = 3000\nidle_timeout_ms = 6000\n\n[log]",
        1,
    );
    std::fs::write(&cfg, text)?;
    let mut rapd: Guard = crate::spawn_rapd(&args, &cfg, &bdir.join("rapd.log"), &socket)?;
    let pid = rapd.pid();
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let threads_idle = threads(pid);

    // The probe alone first, for comparison.
    say("probe alone (10 s)");
    let probe = Probe::new(probe_port.1, probe_port.0.clone(), Duration::from_millis(a.probe_interval_ms));
    let alone = probe.clone().spawn()?;
    std::thread::sleep(Duration::from_secs(10));
    let alone = alone.stop();

    // Under load.
    say(&format!("{} connections over {} ports for {} s", a.connections, a.ports, a.seconds));
    reset_hwm(pid);
    let cpu0 = process_cpu(pid);
    let mut spec = LoadSpec::mixed(
        loaded.clone(),
        a.connections,
        &[(Behaviour::SlowSender, 6), (Behaviour::Idle, 4), (Behaviour::Slowloris, 1), (Behaviour::Oversized, 1)],
    );
    spec.slow_chunk = 16;
    spec.slow_pause = Duration::from_millis(20);
    spec.verdict_wait = Duration::from_secs(20);
    let t = Instant::now();
    let running = spec.start()?;
    // The slow senders and idle connections (10 of every 12) stay open; the others come and go.
    let held = (a.connections * 10 / 12) as u64;
    wait_until("the load connections to open", Duration::from_secs(120), Duration::from_millis(100), || {
        Ok((running.counters.open() >= held).then_some(()))
    })?;
    let ramp_s = t.elapsed().as_secs_f64();
    let under = Probe { first_id: 1_000_000, ..probe.clone() }.spawn()?;
    let pipe = Instrument {
        rate: a.pipe_rate,
        first_id: 1,
        stall_timeout: Some(Duration::from_secs(60)),
        ..Instrument::new(pipe_port.1, pipe_port.0.clone())
    }
    .spawn()?;
    let (mut peak_threads, mut peak_open, mut rss_samples) = (0u64, 0u64, Vec::new());
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut last = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        peak_threads = peak_threads.max(threads(pid));
        peak_open = peak_open.max(running.counters.open());
        rss_samples.push(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
        if last.elapsed() > Duration::from_secs(10) {
            last = Instant::now();
            let p = under.report();
            say(&format!(
                "  {:.0} s: {} open, probe {} acked (p99 {}), rapd RSS {} KiB, {} threads",
                t.elapsed().as_secs_f64(),
                running.counters.open(),
                p.acked,
                ms(p.percentile_us(99.0)),
                rss_samples.last().copied().unwrap_or(0),
                threads(pid)
            ));
        }
    }
    let under = under.stop();
    pipe.stop();
    let pipe_sum = pipe.join()?;
    let load_s = t.elapsed().as_secs_f64();
    let counters = running.stop();
    let cpu = process_cpu(pid) - cpu0;
    let rss_peak = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let rss_end = rss_samples.last().copied().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(10));
    let rss_after = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let threads_after = threads(pid);
    rapd.stop();
    nginx.stop();
    backend.shutdown();
    let load_after = loadavg();

    let mut md = String::new();
    md += &format!(
        "`rapbench load --seconds {} --connections {} --ports {}` (release rapd, FIPS mode, data center up): \
         {} connections ({} open at the peak) over {} instrument ports, frame timeout 3 s, idle timeout 6 s; \
         the connections took {ramp_s:.1} s to open. Load average {load_before} before, {load_after} after.\n\n",
        a.seconds, a.connections, a.ports, a.connections, peak_open, a.ports
    );
    md += "Well-behaved probe (one 200-byte report at a time, ";
    md += &format!("every {} ms, on its own port):\n\n", a.probe_interval_ms);
    md += "| | sent | acked | p50 | p90 | p99 | max | problems |\n|---|---:|---:|---:|---:|---:|---:|---|\n";
    md += &latency_row("alone (10 s)", &alone);
    md += "\n";
    md += &latency_row(&format!("under load ({:.0} s)", load_s), &under);
    md += "\n\n";
    md += &format!(
        "Pipelining instrument at {} reports/s on its own port: {} sent, {} acked, {} errors.\n\n",
        a.pipe_rate,
        pipe_sum.stats.sent,
        pipe_sum.stats.acked,
        pipe_sum.stats.errors.values().sum::<u64>()
    );
    md += "| behaviour | connections made | acked | `timeout` | `too_large` | `too_many_connections` | closed by rapd | unexpected |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for b in Behaviour::ALL {
        let c = counters.of(b).snapshot();
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            b.name(),
            c.connects,
            c.acked,
            c.timeouts,
            c.too_large,
            c.too_many_connections,
            c.closed_by_box,
            c.unexpected
        );
    }
    md += &format!(
        "\nrapd: RSS {} idle before the load, peak {} (VmHWM) under load, {} at its end, {} 10 s after it stopped; \
         threads {} idle, {} at the peak, {} after; {:.1} CPU-s over the {:.0} s of load.\n",
        crate::mib(rss_idle),
        crate::mib(rss_peak),
        crate::mib(rss_end),
        crate::mib(rss_after),
        threads_idle,
        peak_threads,
        threads_after,
        cpu,
        load_s
    );
    println!("\n{md}");
    std::fs::write(dir.join("load.md"), &md)?;
    println!("written to {}", dir.join("load.md").display());
    Ok(())
}
