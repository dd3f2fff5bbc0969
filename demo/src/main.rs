//! `rapdemo`: the README's main job on the host. Generates a PKI, starts the local data
//! center (rapdc backend + nginx mTLS front door on 127.x.y.z:443), starts `rapd` in FIPS
//! mode with one port per simulated instrument, runs the instruments, and prints once a
//! second what each instrument sent, what rapd acknowledged and what arrived in the data
//! center. Ctrl-C stops everything cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use rapbox::control::{self, Request};
use rapbox_testkit::pki::{Pki, PkiSpec};
use rapbox_testkit::ports;
use rapdc::frontdoor::Nginx;
use rapdc::{Client, FrontDoor, Server, ServerConfig, Store};
use rapsim::Instrument;

/// rapbox demo: simulated instruments → rapd → local data center.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// The rapd binary.
    #[arg(long, default_value = "target/release/rapd")]
    rapd: PathBuf,
    /// The FIPS provider configuration made by scripts/build-fips.sh.
    #[arg(long, default_value = "/var/cache/rapbox/fips/openssl-fips.cnf")]
    fips_conf: PathBuf,
    /// Working directory (PKI, queue, data center database, logs).
    #[arg(long, default_value = "target/demo")]
    dir: PathBuf,
    /// Number of simulated instruments.
    #[arg(long, default_value_t = 2)]
    instruments: usize,
    /// Reports per second per instrument.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Every N-th report is an alarm.
    #[arg(long, default_value_t = 25)]
    alarm_every: u64,
    /// Stop after this many seconds (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
}

const BOX_ID: &str = "box-demo-0001";

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("rapdemo: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().context("blocking signals")?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = sigs.wait();
            stop.store(true, Ordering::SeqCst);
        });
    }

    if !a.rapd.is_file() {
        bail!("{} not found: build it with `cargo build --release -p rapbox`", a.rapd.display());
    }
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = std::fs::canonicalize(&a.dir)?;

    // The data center: backend on loopback, nginx front door with mutual TLS on :443.
    let dc_addr = ports::unique_443().context("choosing a loopback address for the data center")?;
    let pki = Pki::generate(&dir.join("pki"), &PkiSpec::new(&["dc.rapbox.test"], &[dc_addr.ip()], BOX_ID))
        .context("generating the demo PKI")?;
    let backend = Server::start(ServerConfig::new("127.0.0.1:0".parse()?), Store::open(&dir.join("datacenter.db"))?)?;
    let client = Client::for_addr(backend.addr());
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix)?;
    let fd = FrontDoor::new(dc_addr, &pki.server.cert, &pki.server.key, &pki.ca.cert, backend.addr().port(), &prefix);
    let nginx = Nginx::start(&fd).context("starting nginx")?;
    println!("data center   https://{}/api/v1/batches (nginx mTLS → rapdc on {})", dc_addr.ip(), backend.addr());

    // rapd with one port per instrument.
    let instruments: Vec<(String, SocketAddr)> =
        (0..a.instruments).map(|i| Ok((format!("DXI-{:04}", i + 1), ports::unique_addr()?))).collect::<Result<_>>()?;
    let socket = dir.join("rapd.sock");
    let mut cfg = format!(
        "[queue]\npath = {:?}\n\n[uplink]\nurl = \"https://{}/api/v1/batches\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n\
         [fips]\nopenssl_conf = {:?}\n\n[control]\nsocket = {:?}\n\n[log]\ntarget = \"stderr\"\n\n",
        dir.join("queue/queue.db"),
        dc_addr.ip(),
        pki.ca.cert,
        pki.client.cert,
        pki.client.key,
        a.fips_conf,
        socket
    );
    for (s, addr) in &instruments {
        cfg += &format!("[[instrument]]\nserial = \"{s}\"\nmodel = \"simulated\"\nlisten = \"{addr}\"\n\n");
    }
    let cfg_path = dir.join("rapd.toml");
    std::fs::write(&cfg_path, cfg)?;
    let log = std::fs::File::create(dir.join("rapd.log"))?;
    let mut rapd = Command::new(&a.rapd)
        .arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", a.rapd.display()))?;
    wait_control(&socket, &mut rapd, &dir)?;
    let st = control::request(&socket, &Request::Status)?.status.context("no status")?;
    println!("rapd          FIPS gate passed: {}, providers {}", st.fips["passed"], st.fips["providers"]);

    let runs: Vec<_> = instruments
        .iter()
        .map(|(s, addr)| {
            println!("instrument    {s} → {addr}");
            Instrument { rate: a.rate, alarm_every: a.alarm_every, ..Instrument::new(*addr, s.clone()) }.spawn()
        })
        .collect::<Result<_, _>>()?;
    println!("\nreports arriving (Ctrl-C to stop):");
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
        let dc = client.stats().ok();
        let st = control::request(&socket, &Request::Status).ok().and_then(|r| r.status);
        let mut line = format!("{:>4}s ", started.elapsed().as_secs());
        for r in &runs {
            let at_dc = dc.as_ref().and_then(|d| d.for_instrument(BOX_ID, r.serial())).map(|i| i.count).unwrap_or(0);
            line += &format!(
                " | {} sent {} acked {} at data center {}",
                r.serial(),
                r.stats().sent(),
                r.stats().acked(),
                at_dc
            );
        }
        if let Some(st) = st {
            line += &format!(" | queue {} uplink {}", st.queue["depth"], st.uplink["state"].as_str().unwrap_or("?"));
        }
        println!("{line}");
        if a.seconds > 0 && started.elapsed() >= Duration::from_secs(a.seconds) {
            break;
        }
    }
    println!("\nstopping");
    for r in &runs {
        r.stop();
    }
    for r in runs {
        let s = r.join()?;
        println!("instrument    {}: {} generated, {} acknowledged", s.serial, s.generated, s.stats.acked);
    }
    // Give the uplink a moment to send what is left, then stop rapd cleanly.
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match control::request(&socket, &Request::Status).ok().and_then(|r| r.status) {
            Some(st) if st.queue["depth"] == 0 => break,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(rapd.id() as i32), Signal::SIGTERM);
    let status = rapd.wait()?;
    if let Ok(dc) = client.stats() {
        for i in &dc.instruments {
            println!("data center   {}: {} reports {:?}", i.instrument, i.count, i.kinds);
        }
    }
    nginx.stop();
    backend.shutdown();
    println!("rapd exited with {status}; logs in {}", dir.display());
    Ok(())
}

fn wait_control(socket: &std::path::Path, rapd: &mut Child, dir: &std::path::Path) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if control::request(socket, &Request::Status).is_ok() {
            return Ok(());
        }
        if let Some(st) = rapd.try_wait()? {
            let log = std::fs::read_to_string(dir.join("rapd.log")).unwrap_or_default();
            bail!("rapd exited with {st}:\n{log}");
        }
        if Instant::now() > end {
            bail!("rapd did not answer on {} within 20 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
