//! `rapbox-demo`: the README's main job on the firmware image. Starts the local data
//! center (rapdc backend + nginx mTLS front door on the host loopback), provisions a
//! copy of the built image for it with two instrument ports, boots it under QEMU
//! (direct kernel boot) in a network namespace, waits on the serial console until
//! `rapctl status --json` shows rapd up with its FIPS gate passed, runs two simulated
//! instruments on the tap devices cabled to the instrument ports and prints once a
//! second, per instrument, what it sent, what the box acknowledged and what arrived in
//! the data center. Ctrl-C (or SIGTERM) kills QEMU, stops nginx and the backend and
//! removes the namespace.
//!
//! Usage: rapbox-demo [--seconds N] [--rate N]   (run as root; build the image first)

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use qemu_tests::datacenter::{reports_of, DataCenter, BOX_ID};
use qemu_tests::image::{self, PortSpec, TEST_PASSWORD};
use qemu_tests::instruments::SimRun;
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig};
use rapsim::Instrument;
use serde_json::Value;

const NAME: &str = "rapbox_demo";

struct Args {
    seconds: u64,
    rate: u32,
}

fn usage() -> ! {
    eprintln!("usage: rapbox-demo [--seconds N (0: until Ctrl-C, default 0)] [--rate N (reports/s per instrument, default 20)]");
    std::process::exit(2);
}

fn args() -> Args {
    let mut a = Args { seconds: 0, rate: 20 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).unwrap_or_else(|| usage());
        match key.as_str() {
            "--seconds" => a.seconds = value().parse().unwrap_or_else(|_| usage()),
            "--rate" => a.rate = value().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => {
                println!("rapbox-demo: two simulated instruments → rapd in the QEMU-booted image → local data center");
                println!("  --seconds N   stop after N seconds of reports (0: until Ctrl-C; default 0)");
                println!("  --rate N      reports per second per instrument (default 20)");
                std::process::exit(0);
            }
            _ => usage(),
        }
    }
    a
}

fn ports() -> Vec<PortSpec> {
    image::harness_ports("DXI")
}

fn main() {
    let a = args();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("rapbox-demo: run as root (network namespace, tap devices, nginx)");
        std::process::exit(1);
    }
    // Signals: blocked in every thread (and in QEMU and the tools we start, which
    // inherit the mask) and taken by one thread with sigwait: it sets `stop` and kills
    // QEMU, so that a console wait during boot ends at once.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    if let Err(e) = sigs.thread_block() {
        eprintln!("rapbox-demo: blocking signals: {e}");
        std::process::exit(1);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let qemu_pid = Arc::new(AtomicU32::new(0));
    {
        let (stop, qemu_pid) = (stop.clone(), qemu_pid.clone());
        std::thread::spawn(move || loop {
            let sig = sigs.wait();
            stop.store(true, Ordering::SeqCst);
            let pid = qemu_pid.load(Ordering::SeqCst);
            if pid != 0 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            if let Ok(s) = sig {
                eprintln!("\nrapbox-demo: {s}, stopping");
            }
        });
    }
    let code = match run(&a, &stop, &qemu_pid) {
        Ok(()) => 0,
        Err(e) if stop.load(Ordering::SeqCst) => {
            println!("stopped ({e})");
            0
        }
        Err(e) => {
            eprintln!("rapbox-demo: {e}");
            1
        }
    };
    println!("stopped: QEMU killed, nginx and backend stopped, network namespace removed");
    std::process::exit(code);
}

fn run(a: &Args, stop: &AtomicBool, qemu_pid: &AtomicU32) -> Result<(), String> {
    let built = image::built()?;
    let dc = DataCenter::start(NAME).map_err(|e| e.to_string())?;
    println!("data center   {} (nginx mTLS on 127.0.0.1:{} → rapdc on {})", dc.url(), dc.port, dc.backend.addr());
    println!("              guest-forward 10.0.2.100:443 → 127.0.0.1:{}; database {}", dc.port, dc.dir.display());

    // A provisioned private copy of the image: box identity from the data center's
    // PKI, rapd.toml with the two instrument ports.
    let raw = image::private_copy(&built, NAME).map_err(|e| e.to_string())?;
    let template = image::template_with_ports(&dc.dir.join("rapd.toml.in"), &ports()).map_err(|e| e.to_string())?;
    rapimage::provision::provision(
        &raw,
        &built.dir.join("manifest.json"),
        &template,
        &rapimage::provision::Identity {
            ca: dc.pki.ca.cert.clone(),
            cert: dc.pki.client.cert.clone(),
            key: dc.pki.client.key.clone(),
            url: dc.url(),
        },
    )
    .map_err(|e| format!("rapimage provision: {e}"))?;
    let disk = image::overlay_of(&raw, NAME).map_err(|e| e.to_string())?;
    for p in ports() {
        println!(
            "instrument    {} on {} ({}) → rapd at {}, {} reports/s",
            p.serial,
            p.interface,
            p.address,
            p.agent_addr(),
            a.rate
        );
    }
    if stop.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }

    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: Some(dc.port), memory_mib: 1024 };
    let mut vm = Vm::start(NAME, &built, &cfg).map_err(|e| e.to_string())?;
    qemu_pid.store(vm.pid(), Ordering::SeqCst);
    if stop.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    let log = vm.console.log.clone();
    println!("qemu          booting {} (direct kernel boot, serial log {})", built.disk.display(), log.display());
    for (tap, p) in vm.netns().taps.iter().zip(ports()) {
        vm.netns().exec(&["ip", "addr", "add", &format!("{}/24", p.address), "dev", tap]).map_err(|e| e.to_string())?;
    }
    let gone = |what: &str| format!("{what} (serial log {})", log.display());
    vm.console
        .try_login("root", TEST_PASSWORD, timeout(180))
        .map_err(|step| gone(&format!("no `{step}` on the console")))?;
    // rapd's control socket answers (one console round trip), then its status.
    vm.console
        .try_run(
            "for i in $(seq 180); do rapctl status --json >/tmp/st 2>/dev/null && break; sleep 0.5; done",
            timeout(120),
        )
        .ok_or_else(|| gone("console"))?;
    let (out, rc) = vm.console.try_run("rapctl status --json", timeout(30)).ok_or_else(|| gone("console"))?;
    if rc != 0 {
        return Err(gone(&format!("rapd does not answer: {out}")));
    }
    let st: Value = serde_json::from_str(out.trim()).map_err(|e| format!("rapctl status --json: {e}: {out}"))?;
    if st["fips"]["passed"] != Value::Bool(true) {
        return Err(format!("rapd's FIPS gate did not pass: {:#}", st["fips"]));
    }
    println!(
        "rapd ready, FIPS gate passed (providers {}, {:.1} s after QEMU start; from `rapctl status --json` on the console)",
        st["fips"]["providers"],
        vm.started.elapsed().as_secs_f64()
    );

    let runs: Vec<SimRun> = ports()
        .iter()
        .map(|p| {
            let inst = Instrument {
                rate: a.rate,
                alarm_every: 25,
                connect_timeout: Duration::from_secs(1),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_millis(500),
                drain_timeout: Duration::from_secs(5),
                stall_timeout: None,
                ..Instrument::new(p.agent_addr(), p.serial.clone())
            };
            SimRun::spawn(&vm.netns().name, inst)
        })
        .collect();
    println!("\nreports arriving: sent / acked by the box / arrived in the data center (Ctrl-C to stop)");
    let started = Instant::now();
    let line = |runs: &[SimRun], label: String| {
        let at_dc = dc.client.stats().ok();
        let mut l = label;
        for r in runs {
            let n = at_dc.as_ref().and_then(|d| d.for_instrument(BOX_ID, &r.serial)).map(reports_of).unwrap_or(0);
            l += &format!("  | {} {} / {} / {}", r.serial, r.stats.sent(), r.stats.acked(), n);
        }
        println!("{l}");
    };
    let mut next = started + Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next += Duration::from_secs(1);
        line(&runs, format!("{:>5}s", started.elapsed().as_secs()));
        if a.seconds > 0 && started.elapsed() >= Duration::from_secs(a.seconds) {
            break;
        }
        if let Some(r) = runs.iter().find(|r| r.is_finished()) {
            return Err(format!("instrument {} stopped on its own (serial log {})", r.serial, log.display()));
        }
    }

    println!("\nstopping the instruments");
    let interrupted = stop.load(Ordering::SeqCst);
    for r in &runs {
        r.stop();
    }
    // When not interrupted, let the uplink deliver what the box acknowledged.
    if !interrupted {
        let acked: u64 = runs.iter().map(|r| r.stats.acked()).sum();
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end && !stop.load(Ordering::SeqCst) {
            let at_dc: u64 = dc
                .client
                .stats()
                .ok()
                .map(|d| runs.iter().filter_map(|r| d.for_instrument(BOX_ID, &r.serial)).map(reports_of).sum())
                .unwrap_or(0);
            if at_dc >= acked && runs.iter().all(|r| r.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        line(&runs, " final".to_string());
    }
    for r in runs {
        let serial = r.serial.clone();
        match r.join() {
            Ok(s) => {
                println!("instrument    {serial}: {} generated, {} acknowledged by the box", s.generated, s.stats.acked)
            }
            Err(e) => println!("instrument    {serial}: {e}"),
        }
    }
    drop(vm);
    drop(dc);
    Ok(())
}
