//! Run-time reconfiguration in the booted image, on the serial console with `rapctl
//! config` (the data center's command channel will send the same requests): a bad
//! configuration is refused with the key named; a good one is applied live and confirmed
//! by the data center; one that breaks the uplink is rolled back automatically — live, and
//! through two restarts of rapd by systemd when it also changes a restart section; all of it
//! is in the audit trail, which reaches the data center. One boot. Skips only when the
//! image is missing.

use std::time::{Duration, Instant};

use qemu_tests::datacenter::{DataCenter, BOX_ID};
use qemu_tests::image::{self, TEST_PASSWORD};
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig};
use serde_json::Value;

fn status(vm: &mut Vm) -> Value {
    let out = vm.console.run_ok("rapctl status --json", timeout(30));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("rapctl status --json: {e}: {out}"))
}

/// Waits (one console round trip) until rapd has an acknowledged upload.
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
        let j = vm.console.run("journalctl -u rapd.service --no-pager -n 60 | cat", timeout(30)).0;
        panic!("no acknowledged upload after {secs} s; status {st:#}\njournal:\n{j}");
    }
    st
}

fn journal(vm: &mut Vm) -> String {
    vm.console.run("journalctl -u rapd.service --no-pager -n 80 | cat", timeout(30)).0
}

#[test]
fn bad_configuration_refused_and_one_that_breaks_the_uplink_rolled_back() {
    let test = "reconfig";
    let Some(built) = image::built_or_skip(test) else { return };
    let dc = DataCenter::start(test).expect("data center");
    let raw = image::private_copy(&built, test).expect("copy");
    let template =
        image::template_with_ports(&dc.dir.join("rapd.toml.in"), &image::harness_ports("QRECONF")).expect("template");
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
    let disk = image::overlay_of(&raw, test).expect("overlay");
    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: Some(dc.port), memory_mib: 1024 };
    let t_boot = Instant::now();
    let mut vm = Vm::start(test, &built, &cfg).expect("qemu");
    vm.console.login("root", TEST_PASSWORD, timeout(120));
    wait_uplink(&mut vm, 90);
    println!("booted, rapd delivering after {:.1} s", t_boot.elapsed().as_secs_f64());
    let original = vm.console.run_ok("cat /data/config/rapd.toml", timeout(20));
    let ls = vm.console.run_ok("stat -c '%U:%G %a %n' /data/config /data/config/rapd.toml", timeout(20));
    assert_eq!(ls.trim(), "root:rapd 1770 /data/config\nrapd:rapd 600 /data/config/rapd.toml", "{ls}");

    // 1. Refused, with the key named; nothing changes.
    let (out, rc) = vm.console.run("rapctl config apply uplink.url=http://10.0.2.100/api/v1/batches", timeout(60));
    assert_eq!(rc, 1, "{out}");
    assert_eq!(
        out.trim(),
        "rapctl: refused, nothing was changed:\n  /etc/rapbox/rapd.toml: key `uplink.url`: scheme must be https, not `http`",
    );
    let (out, rc) = vm.console.run("rapctl config apply uplink.cert=/data/provision/other.crt", timeout(60));
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains(
            "key `uplink.cert`: box certificate /data/provision/other.crt is missing: the box is not provisioned"
        ),
        "{out}"
    );
    let now = vm.console.run_ok("cat /data/config/rapd.toml", timeout(20));
    assert_eq!(now, original, "a refusal changes nothing");
    let out = vm.console.run_ok("rapctl config show", timeout(30));
    assert!(out.starts_with("configuration /etc/rapbox/rapd.toml (/data/config/rapd.toml)\n"), "{out}");
    assert!(out.contains("  trial    none (the configuration in force is confirmed)\n"), "{out}");

    // 2. A good change, live, confirmed by the data center: a shorter trial for what follows.
    let (out, rc) = vm
        .console
        .run("rapctl config apply --wait reconfig.rollback_after_s=15 uplink.connect_timeout_ms=3000", timeout(120));
    assert_eq!(rc, 0, "{out}\n{}", journal(&mut vm));
    assert!(
        out.starts_with(
            "applied live (uplink); rolled back unless the data center acknowledges a batch within 300 s\n"
        ),
        "{out}"
    );
    assert!(out.contains("confirmed: the data center acknowledged a batch"), "{out}");

    // 3. A data center nobody answers at, live: rolled back after 15 s.
    let t0 = Instant::now();
    let (out, rc) =
        vm.console.run("rapctl config apply --wait uplink.url=https://10.0.2.99/api/v1/batches", timeout(120));
    let took = t0.elapsed();
    println!("broken URL rolled back after {:.1} s (trial 15 s)", took.as_secs_f64());
    assert_eq!(rc, 4, "{out}\n{}", journal(&mut vm));
    assert!(out.contains("\nrolled back: the data center acknowledged no batch within 15 s"), "{out}");
    assert!(took >= Duration::from_secs(15), "{took:?}");
    let st = wait_uplink(&mut vm, 60);
    assert_eq!(st["uplink"]["url"], Value::String(dc.url()), "{st:#}");
    let good = vm.console.run_ok("cat /data/config/rapd.toml", timeout(20));
    assert!(good.contains("rollback_after_s = 15") && good.contains(&format!("url = \"{}\"", dc.url())), "{good}");

    // 4. The same, with a queue setting: rapd restarts through systemd to apply it, the trial
    //    goes on across the restart, and the rollback restarts it again.
    let t0 = Instant::now();
    let (out, rc) = vm.console.run(
        "rapctl config apply --wait uplink.url=https://10.0.2.99/api/v1/batches queue.quota_bytes=134217728",
        timeout(180),
    );
    println!("broken URL + restart section rolled back after {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(rc, 4, "{out}\n{}", journal(&mut vm));
    assert!(out.starts_with("applied; rapd restarts to apply queue; rolled back unless"), "{out}");
    assert!(out.contains("\nrolled back: the data center acknowledged no batch within 15 s"), "{out}");
    let st = wait_uplink(&mut vm, 60);
    assert_eq!(st["queue"]["quota_bytes"], Value::from(256u64 << 20), "{st:#}");
    let restarts = vm.console.run_ok("systemctl show -P NRestarts rapd.service", timeout(20));
    assert_eq!(restarts.trim(), "2", "applied and rolled back by two restarts through systemd");
    let active = vm.console.run_ok("systemctl is-active rapd.service", timeout(20));
    assert_eq!(active.trim(), "active");
    let now = vm.console.run_ok("cat /data/config/rapd.toml", timeout(20));
    assert_eq!(now, good, "the configuration before the apply is back");
    let (out, rc) = vm.console.run("test -e /data/config/rapd.toml.pending", timeout(20));
    assert_eq!(rc, 1, "no trial left: {out}");

    // 5. Audited, chain intact, and the records reached the data center through the uplink.
    let out = vm.console.run_ok("rapctl audit log -n 200 --json", timeout(30));
    let recs: Vec<Value> = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let acts: Vec<&str> = recs
        .iter()
        .filter_map(|r| r["action"].as_str())
        .filter(|a| a.starts_with("config.") && *a != "config.loaded")
        .collect();
    assert_eq!(
        acts,
        [
            "config.refused",
            "config.refused",
            "config.applied",
            "config.confirmed",
            "config.applied",
            "config.rolled_back",
            "config.applied",
            "config.trial_resumed",
            "config.rolled_back"
        ],
        "{out}"
    );
    let refused = recs.iter().find(|r| r["action"] == "config.refused").unwrap();
    assert_eq!(refused["actor"], "console:root", "{refused}");
    assert_eq!(refused["detail"]["errors"][0]["key"], "uplink.url", "{refused}");
    let (out, rc) = vm.console.run("rapctl audit verify", timeout(60));
    assert_eq!(rc, 0, "{out}");
    let end = Instant::now() + timeout(60);
    loop {
        let at_dc: Vec<String> = dc
            .client
            .all_reports(Some(BOX_ID), None)
            .expect("dc reports")
            .into_iter()
            .filter(|r| r.instrument.is_empty())
            .filter_map(|r| serde_json::from_str::<Value>(&r.payload).ok())
            .filter_map(|v| v["action"].as_str().map(str::to_owned))
            .filter(|a| a.starts_with("config.") && a != "config.loaded")
            .collect();
        if at_dc.len() == acts.len() {
            assert_eq!(at_dc, acts, "the data center has the same records");
            break;
        }
        assert!(Instant::now() < end, "audit records at the data center: {at_dc:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("whole test {:.1} s", t_boot.elapsed().as_secs_f64());
}
