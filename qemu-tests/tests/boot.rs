//! End-to-end boot tests of the built rapbox image under QEMU. Each test skips (with
//! the reason printed) only when the image has not been built.

use std::time::Instant;

use qemu_tests::image::{self, TEST_PASSWORD};
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig};

/// First line of the DoD notice-and-consent banner in /etc/issue.
const BANNER: &str =
    "You are accessing a U.S. Government (USG) Information System (IS) that is provided for USG-authorized use only.";

/// Whether the image was built with the FIPS provider (manifest.json).
fn fips_in_image(built: &image::Built) -> bool {
    std::fs::read_to_string(built.dir.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|m| m["fips_provider"] == serde_json::Value::Bool(true))
}

fn start(test: &str, boot: Boot) -> Option<(image::Built, Vm)> {
    let built = image::built_or_skip(test)?;
    let disk = image::overlay(&built, test).expect("test disk");
    let cfg = VmConfig { boot, disk, uplink_port: None, memory_mib: 1024 };
    let vm = Vm::start(test, &built, &cfg).expect("start qemu");
    Some((built, vm))
}

/// Waits for the banner and the login prompt; returns seconds since QEMU started.
fn banner_and_login(vm: &mut Vm, secs: u64) -> f64 {
    vm.console.expect(BANNER, timeout(secs));
    vm.console.expect("rapbox login: ", timeout(30));
    let t = vm.started.elapsed().as_secs_f64();
    // hand the prompt back to login() (it waits for it again after the cursor)
    vm.console.send("");
    t
}

#[test]
fn direct_boot_shows_banner_login_and_rapd_unit() {
    let Some((built, mut vm)) = start("direct_boot", Boot::Direct) else {
        return;
    };
    let t = banner_and_login(&mut vm, 90);
    println!("direct boot: banner and login prompt after {t:.1} s");
    vm.console.login("root", TEST_PASSWORD, timeout(30));
    let analyze = vm.console.run("systemd-analyze; systemd-analyze blame --no-pager | head -12", timeout(30)).0;
    println!("{analyze}");

    let show = vm.console.run_ok("systemctl show -p LoadState -p UnitFileState -p Type rapd.service", timeout(20));
    assert!(show.contains("LoadState=loaded"), "{show}");
    assert!(show.contains("UnitFileState=enabled"), "{show}");
    assert!(show.contains("Type=notify"), "{show}");
    // The sandbox the unit promises.
    let sandbox =
        vm.console.run_ok("systemctl show -p ProtectSystem -p NoNewPrivileges -p User rapd.service", timeout(20));
    assert!(sandbox.contains("ProtectSystem=strict"), "{sandbox}");
    assert!(sandbox.contains("NoNewPrivileges=yes"), "{sandbox}");
    assert!(sandbox.contains("User=rapd"), "{sandbox}");

    // Root is read-only; per-box identity was created on this boot, not shipped.
    let (_, rc) = vm.console.run("touch /usr/rapq-should-fail 2>/dev/null", timeout(10));
    assert_ne!(rc, 0, "root file system is writable");
    let mid = vm.console.run_ok("cat /etc/machine-id", timeout(10));
    assert_eq!(mid.trim().len(), 32, "machine-id: {mid}");
    vm.console
        .run_ok("test -s /data/identity/ssh/ssh_host_ecdsa_key && ! ls /etc/ssh/ssh_host_* 2>/dev/null", timeout(10));

    // rapd's own status interface, once the service is active.
    let active = vm.console.run_ok("systemctl is-active rapd.service || true", timeout(60));
    println!("rapd.service: {}", active.trim());
    if active.trim() == "active" {
        let status = vm.console.run_ok("rapctl status --json", timeout(20));
        println!("rapctl status --json:\n{status}");
        let v: serde_json::Value =
            serde_json::from_str(status.trim()).unwrap_or_else(|e| panic!("rapctl status --json: {e}: {status}"));
        assert!(v.is_object(), "{status}");
        if fips_in_image(&built) {
            assert_eq!(v["fips"]["passed"], serde_json::Value::Bool(true), "FIPS gate inside the guest: {status}");
        }
    } else {
        let journal = vm.console.run_ok("journalctl -u rapd.service --no-pager -n 20 | cat", timeout(20));
        println!("rapd.service is {}: {journal}", active.trim());
    }
}

#[test]
fn data_partition_and_identity_survive_reboot() {
    let Some((_built, mut vm)) = start("reboot", Boot::Direct) else {
        return;
    };
    banner_and_login(&mut vm, 90);
    vm.console.login("root", TEST_PASSWORD, timeout(30));
    let mid1 = vm.console.run_ok("cat /etc/machine-id", timeout(10));
    let key1 = vm.console.run_ok("ssh-keygen -lf /data/identity/ssh/ssh_host_ecdsa_key.pub", timeout(10));
    vm.console.run_ok("echo rapq-persist-42 > /data/config/rapq-marker && sync /data/config/rapq-marker", timeout(10));
    vm.console.send("systemctl reboot");
    let t0 = Instant::now();
    banner_and_login(&mut vm, 120);
    println!("reboot to login prompt: {:.1} s", t0.elapsed().as_secs_f64());
    vm.console.login("root", TEST_PASSWORD, timeout(30));
    assert_eq!(vm.console.run_ok("cat /data/config/rapq-marker", timeout(10)).trim(), "rapq-persist-42");
    assert_eq!(vm.console.run_ok("cat /etc/machine-id", timeout(10)), mid1, "machine-id changed across reboot");
    assert_eq!(
        vm.console.run_ok("ssh-keygen -lf /data/identity/ssh/ssh_host_ecdsa_key.pub", timeout(10)),
        key1,
        "SSH host key changed across reboot"
    );
}

#[test]
fn uefi_boot_through_systemd_boot_slot_a() {
    let Some((_built, mut vm)) = start("uefi_boot", Boot::Uefi) else {
        return;
    };
    let t = banner_and_login(&mut vm, 180);
    println!("UEFI boot: banner and login prompt after {t:.1} s");
    vm.console.login("root", TEST_PASSWORD, timeout(30));
    let cmdline = vm.console.run_ok("cat /proc/cmdline", timeout(10));
    assert!(cmdline.contains("rapbox.slot=a"), "{cmdline}");
    let show = vm.console.run_ok("systemctl show -p LoadState rapd.service", timeout(20));
    assert_eq!(show.trim(), "LoadState=loaded");
}
