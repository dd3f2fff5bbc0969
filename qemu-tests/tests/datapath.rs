//! The data path end to end through the booted image: simulated instruments in the
//! VM's network namespace (on the tap devices cabled to the guest's instrument ports)
//! → rapd in the guest (FIPS gate, links brought up and addressed by rapd itself) →
//! uplink through the guest-forward 10.0.2.100:443 → nginx mTLS front door and rapdc
//! backend on the host loopback. Each test skips only when the image is missing.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qemu_tests::datacenter::DataCenter;
use qemu_tests::image::{self, PortSpec, TEST_PASSWORD};
use qemu_tests::instruments::SimRun;
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig};
use rapsim::Instrument;
use serde_json::Value;

fn ports() -> Vec<PortSpec> {
    image::harness_ports("QINST")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Data center, and a provisioned private copy of the test image (box identity from
/// the data center's PKI, rapd.toml with the two instrument ports).
fn provisioned(test: &str) -> Option<(image::Built, DataCenter, PathBuf)> {
    let built = image::built_or_skip(test)?;
    let dc = DataCenter::start(test).expect("data center");
    let raw = image::private_copy(&built, test).expect("copy");
    let template = image::template_with_ports(&dc.dir.join("rapd.toml.in"), &ports()).expect("template");
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
    .expect("rapimage provision");
    Some((built, dc, raw))
}

/// Boots an overlay of `disk` with the uplink forwarded to the data center and gives the
/// instruments their addresses on the tap devices.
fn boot(name: &str, built: &image::Built, disk: PathBuf, dc: &DataCenter) -> Vm {
    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: Some(dc.port), memory_mib: 1024 };
    let vm = Vm::start(name, built, &cfg).expect("qemu");
    for (tap, p) in vm.netns().taps.iter().zip(ports()) {
        vm.netns().exec(&["ip", "addr", "add", &format!("{}/24", p.address), "dev", tap]).expect("instrument address");
    }
    vm
}

fn login(vm: &mut Vm) {
    vm.console.login("root", TEST_PASSWORD, timeout(120));
}

/// `rapctl status --json` on the console, parsed.
fn status(vm: &mut Vm) -> Value {
    let out = vm.console.run_ok("rapctl status --json", timeout(30));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("rapctl status --json: {e}: {out}"))
}

/// Waits (in the guest, one console round trip) until rapd answers on its control socket.
fn wait_rapd(vm: &mut Vm, secs: u64) -> Value {
    let (out, rc) = vm.console.run(
        &format!(
            "for i in $(seq {}); do rapctl status --json >/tmp/st 2>/dev/null && break; sleep 0.5; done",
            secs * 2
        ),
        timeout(secs + 30),
    );
    assert_eq!(rc, 0, "{out}");
    let (out, rc) = vm.console.run("rapctl status --json", timeout(30));
    if rc != 0 {
        let j = vm.console.run("journalctl -u rapd.service --no-pager -n 40 | cat", timeout(30)).0;
        panic!("rapd does not answer after {secs} s: {out}\njournal:\n{j}");
    }
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("rapctl status --json: {e}: {out}"))
}

/// Waits (in the guest, one console round trip) until rapd has an acknowledged upload.
fn wait_uplink(vm: &mut Vm, secs: u64) -> Value {
    vm.console.run(
        &format!(
            "for i in $(seq {}); do rapctl status --json >/tmp/st 2>/dev/null && grep -Eq '\"last_success_ms\": [0-9]' /tmp/st && break; sleep 0.5; done",
            secs * 2
        ),
        timeout(secs + 30),
    );
    let st = status(vm);
    if st["uplink"]["last_success_ms"].as_u64().is_none() {
        let j = vm.console.run("journalctl -u rapd.service --no-pager -n 40 | cat", timeout(30)).0;
        panic!("no acknowledged upload after {secs} s; status {st:#}\njournal:\n{j}");
    }
    st
}

/// Polls the data center until it holds every id in `expected` (per serial).
fn wait_dc(dc: &DataCenter, expected: &HashMap<String, BTreeSet<u64>>, secs: u64) -> Vec<rapdc::api::Report> {
    let end = Instant::now() + timeout(secs);
    loop {
        let reports = dc.instrument_reports().expect("dc reports");
        let complete = expected.iter().all(|(serial, ids)| {
            let have: BTreeSet<u64> = reports.iter().filter(|r| &r.instrument == serial).map(|r| r.msg_id).collect();
            ids.is_subset(&have)
        });
        if complete {
            return reports;
        }
        assert!(
            Instant::now() < end,
            "data center incomplete after {secs} s: {} reports, expected {:?}",
            reports.len(),
            expected.iter().map(|(s, i)| (s, i.len())).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every report stored once, from a known instrument; every acknowledged id present.
fn assert_exactly_once(reports: &[rapdc::api::Report], acked: &HashMap<String, BTreeSet<u64>>) {
    let mut seen = BTreeSet::new();
    for r in reports {
        assert!(acked.contains_key(&r.instrument), "report from unknown instrument `{}`", r.instrument);
        assert!(seen.insert((r.instrument.clone(), r.msg_id)), "stored twice: {} {}", r.instrument, r.msg_id);
    }
    for (serial, ids) in acked {
        let at_dc: BTreeSet<u64> = reports.iter().filter(|r| &r.instrument == serial).map(|r| r.msg_id).collect();
        let missing: Vec<_> = ids.difference(&at_dc).take(10).collect();
        assert!(missing.is_empty(), "{serial}: acknowledged but not in the data center: {missing:?}");
    }
}

fn instrument(p: &PortSpec, count: Option<u64>, first_id: u64) -> Instrument {
    Instrument {
        count,
        alarm_every: 10,
        first_id,
        connect_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(2),
        stall_timeout: Some(timeout(120)),
        ..Instrument::new(
            format!("{}:{}", p.box_address.split('/').next().unwrap_or(""), p.agent_port).parse().unwrap(),
            p.serial.clone(),
        )
    }
}

/// Boot, rapd (FIPS gate, links up on both instrument ports), two instruments, every
/// acknowledged report in the data center exactly once with its instrument's serial,
/// and `rapctl status` showing the instruments and the last upload.
#[test]
fn instruments_reach_data_center_exactly_once() {
    let test = "dp_e2e";
    let Some((built, dc, raw)) = provisioned(test) else { return };
    let disk = image::overlay_of(&raw, test).expect("overlay");
    let started_ms = now_ms();
    let mut vm = boot(test, &built, disk, &dc);
    login(&mut vm);
    let st = wait_rapd(&mut vm, 90);
    assert_eq!(st["fips"]["passed"], Value::Bool(true), "FIPS gate: {st:#}");
    assert_eq!(st["uplink"]["url"], Value::String(dc.url()), "{st:#}");
    for p in ports() {
        let link = st["links"].as_array().into_iter().flatten().find(|l| l["interface"] == p.interface.as_str());
        let link = link.unwrap_or_else(|| panic!("{}: no link in status {st:#}", p.interface));
        assert_eq!(link["serial"], p.serial.as_str(), "{link}");
        assert_eq!(link["link"], "up", "{link}");
    }

    let per = 300;
    let runs: Vec<SimRun> =
        ports().iter().map(|p| SimRun::spawn(&vm.netns().name, instrument(p, Some(per), 1))).collect();
    let t0 = Instant::now();
    let mut acked = HashMap::new();
    for r in runs {
        let stats = r.stats.clone();
        let serial = r.serial.clone();
        let sum = r.join().unwrap_or_else(|e| panic!("{serial}: {e}"));
        assert_eq!(sum.stats.acked, per, "{serial}: {:?}", sum.stats);
        assert_eq!(sum.stats.rejected, 0, "{serial}: {:?}", sum.stats);
        acked.insert(serial, stats.acked_ids().iter().collect::<BTreeSet<u64>>());
    }
    let reports = wait_dc(&dc, &acked, 60);
    println!(
        "{} reports from 2 instruments acknowledged and in the data center after {:.1} s",
        2 * per,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(reports.len() as u64, 2 * per);
    assert_exactly_once(&reports, &acked);
    for r in &reports {
        assert_eq!(r.deliveries, 1, "{} {} delivered {} times", r.instrument, r.msg_id, r.deliveries);
    }

    let st = wait_uplink(&mut vm, 30);
    // Uplink ready: the data center's receive time of the box's first batch (rapd's own
    // start-up audit records when it has them, else the first instrument batch), from
    // QEMU's start.
    let all = dc.client.all_reports(Some(qemu_tests::datacenter::BOX_ID), None).expect("reports");
    let first_ms = all.iter().map(|r| r.received_ms).min().unwrap_or(0);
    println!(
        "first batch acknowledged by the data center {:.1} s after QEMU start",
        (first_ms as f64 - started_ms as f64) / 1000.0
    );
    for p in ports() {
        let port = st["ports"].as_array().into_iter().flatten().find(|x| x["serial"] == p.serial.as_str());
        let port = port.unwrap_or_else(|| panic!("{}: not in status {st:#}", p.serial));
        assert_eq!(port["listen"], p.agent_addr().to_string(), "{port}");
        assert!(port["received"].as_u64().unwrap_or(0) >= per, "{port}");
        assert!(port["last_report_ms"].as_u64().is_some(), "{port}");
    }
    assert!(st["uplink"]["records_sent"].as_u64().unwrap_or(0) >= 2 * per, "{st:#}");
    assert!(st["uplink"]["last_success_ms"].as_u64().unwrap_or(0) >= started_ms, "{st:#}");
}

/// Hard power cuts (kill -9 of QEMU) during ingest, repeated; then one more boot: rapd
/// starts (it runs `PRAGMA integrity_check` on the queue at start), the queue drains,
/// and every message an instrument saw acknowledged is in the data center exactly once.
/// Cycles: RAPBOX_POWERCUT_CYCLES (default 10).
#[test]
fn power_cuts_during_ingest_lose_nothing_acknowledged() {
    let test = "dp_cut";
    let Some((built, dc, raw)) = provisioned(test) else { return };
    let cycles: u64 = std::env::var("RAPBOX_POWERCUT_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    // One overlay for all boots: the disk persists across the power cuts.
    let disk = image::overlay_of(&raw, test).expect("overlay");
    let mut acked: HashMap<String, BTreeSet<u64>> = ports().into_iter().map(|p| (p.serial, BTreeSet::new())).collect();
    for cycle in 0..cycles {
        let t0 = Instant::now();
        let mut vm = boot(&format!("{test}_{cycle}"), &built, disk.clone(), &dc);
        let runs: Vec<SimRun> = ports()
            .iter()
            .map(|p| SimRun::spawn(&vm.netns().name, instrument(p, None, (cycle + 1) * 1_000_000_000)))
            .collect();
        // Cut power once ingest is under way: some messages acknowledged on this boot,
        // then a cycle-dependent extra delay so the cut lands at different moments.
        let end = Instant::now() + timeout(120);
        while runs.iter().map(|r| r.stats.acked()).sum::<u64>() < 20 {
            assert!(Instant::now() < end, "cycle {cycle}: no ingest within 120 s (log {})", vm.console.log.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(137 * (cycle % 5)));
        vm.kill();
        let mut n = 0;
        for r in runs {
            r.stop();
            let stats = r.stats.clone();
            let serial = r.serial.clone();
            let _ = r.join();
            let ids = stats.acked_ids();
            n += ids.len();
            acked.entry(serial).or_default().extend(ids.iter());
        }
        println!("cycle {cycle}: {n} messages acknowledged, power cut after {:.1} s", t0.elapsed().as_secs_f64());
    }
    let mut vm = boot(&format!("{test}_final"), &built, disk, &dc);
    login(&mut vm);
    let active = vm.console.run_ok("systemctl is-active rapd.service || true", timeout(60));
    assert_eq!(active.trim(), "active", "rapd did not start after the power cuts (queue integrity check)");
    wait_rapd(&mut vm, 90);
    let reports = wait_dc(&dc, &acked, 120);
    assert_exactly_once(&reports, &acked);
    let total: usize = acked.values().map(BTreeSet::len).sum();
    let redelivered = reports.iter().filter(|r| r.deliveries > 1).count();
    println!("{cycles} power cuts: {total} acknowledged messages all in the data center once ({redelivered} redelivered and deduplicated)");
    // The queue drains completely and rapd reports it healthy.
    vm.console.run(
        "for i in $(seq 120); do rapctl status --json >/tmp/st && grep -Eq '\"depth\": 0(,|$)' /tmp/st && break; sleep 0.5; done",
        timeout(90),
    );
    let st = status(&mut vm);
    assert_eq!(st["queue"]["depth"], 0, "{st:#}");
    assert_eq!(st["fips"]["passed"], Value::Bool(true), "{st:#}");
    let restarts = vm.console.run_ok("systemctl show -P NRestarts rapd.service", timeout(20));
    assert_eq!(restarts.trim(), "0", "rapd restarted on the final boot");
}
