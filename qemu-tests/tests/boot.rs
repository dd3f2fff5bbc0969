//! End-to-end boot tests of the built rapbox image under QEMU. Each test skips (with
//! the reason printed) only when the image has not been built.

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

/// One boot of a provisioned copy, direct kernel boot: banner and login, rapd's unit and
/// sandbox, the read-only root, per-box identity made on the box, the provisioned
/// identity's ownership and URL reaching rapd, its FIPS gate, and the uplink path the
/// data-center tests use (the DHCP uplink reaches a host loopback service only through
/// the guest-forward 10.0.2.100:443; QEMU user networking with restrict=on).
#[test]
fn direct_boot_provisioned_banner_unit_identity_and_uplink_path() {
    let test = "direct_boot";
    let Some(built) = image::built_or_skip(test) else { return };
    let raw = image::private_copy(&built, test).expect("copy");
    let (ca, cert, key) = test_identity(&qemu_tests::workspace().join("target/qemu-tests/provision-id"));
    let url = "https://10.0.2.100/v1/batches";
    rapimage::provision::provision(
        &raw,
        &built.dir.join("manifest.json"),
        &qemu_tests::workspace().join("buildroot-overlay/rootfs/usr/share/rapbox/rapd.toml.in"),
        &rapimage::provision::Identity { ca, cert, key, url: url.into() },
    )
    .expect("rapimage provision");
    // A loopback service behind the guest-forward; it answers every connection (rapd's
    // uplink connects too and gets no TLS server: it only retries).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"rapq-uplink-ok\n");
        }
    });
    let disk = image::overlay_of(&raw, test).expect("overlay");
    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: Some(port), memory_mib: 1024 };
    let mut vm = Vm::start(test, &built, &cfg).expect("qemu");
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

    // The provisioned identity: root-owned, readable by rapd's group only; the URL in force.
    assert_eq!(
        vm.console.run_ok("stat -c '%U:%G %a' /data/provision/box.key /data/provision", timeout(10)).trim(),
        "root:rapd 640\nroot:rapd 750"
    );
    assert_eq!(vm.console.run_ok("grep '^url' /etc/rapbox/rapd.toml", timeout(10)).trim(), format!("url = \"{url}\""));

    // networkd gives the uplink its DHCP address from QEMU's user network
    vm.console.run_ok(
        "for i in $(seq 60); do ip -4 -o addr show | grep -q ' 10\\.0\\.2\\.' && break; sleep 0.5; done; ip -4 -o addr show | grep ' 10\\.0\\.2\\.'",
        timeout(60),
    );
    let got = vm.console.run_ok("timeout 20 bash -c 'exec 3<>/dev/tcp/10.0.2.100/443; head -n1 <&3'", timeout(40));
    assert_eq!(got.trim(), "rapq-uplink-ok");
    // restrict=on: nothing else is reachable
    let (_, rc) = vm.console.run("timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.2/22' 2>/dev/null", timeout(20));
    assert_ne!(rc, 0, "restricted user network let a connection to 10.0.2.2:22 through");

    // rapd's own status interface, once the service is active (a release image: rapd
    // with the FIPS provider; a development image's stub is only shown).
    let active = vm.console.run_ok(
        "for i in $(seq 90); do systemctl -q is-active rapd.service && break; sleep 1; done; systemctl is-active rapd.service || true",
        timeout(120),
    );
    println!("rapd.service: {}", active.trim());
    if !fips_in_image(&built) {
        let journal = vm.console.run_ok("journalctl -u rapd.service --no-pager -n 20 | cat", timeout(20));
        println!("development image (no FIPS provider): rapd.service is {}: {journal}", active.trim());
        return;
    }
    assert_eq!(
        active.trim(),
        "active",
        "{}",
        vm.console.run_ok("journalctl -u rapd.service --no-pager -n 30 | cat", timeout(20))
    );
    let status = vm.console.run_ok("rapctl status --json", timeout(20));
    println!("rapctl status --json:\n{status}");
    let v: serde_json::Value =
        serde_json::from_str(status.trim()).unwrap_or_else(|e| panic!("rapctl status --json: {e}: {status}"));
    assert_eq!(v["uplink"]["url"], serde_json::Value::String(url.into()), "{status}");
    assert_ne!(v["uplink"]["state"], serde_json::Value::String("unprovisioned".into()), "{status}");
    assert_eq!(v["fips"]["passed"], serde_json::Value::Bool(true), "FIPS gate inside the guest: {status}");
}

// The reboot test (configuration, queue, machine-id and SSH host key survive
// `systemctl reboot`) and the OVMF + systemd-boot boot are in datapath.rs, where they
// also carry data: `queue_and_configuration_survive_reboot_and_are_delivered_after`,
// `uefi_boot_through_systemd_boot_delivers_reports`.

/// Boot-time figures for docs/image.md (not part of the regular suite):
/// `RAPBOX_BOOT_RUNS=5 cargo test -p qemu-tests --test boot boot_times -- --ignored --nocapture`.
/// Prints, per boot mode, the median seconds from QEMU start to the console login
/// prompt and to rapd's READY=1 (systemd's ActiveEnterTimestampMonotonic, from kernel
/// start, plus the firmware time before the kernel).
#[test]
#[ignore = "measurement (median boot times for docs/image.md): run with --ignored --nocapture"]
fn boot_times() {
    let runs: usize = std::env::var("RAPBOX_BOOT_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    for (name, boot) in [("direct", Boot::Direct), ("uefi", Boot::Uefi)] {
        let mut login = Vec::new();
        let mut rapd = Vec::new();
        for i in 0..runs {
            let Some((_b, mut vm)) = start(&format!("boot_times_{name}_{i}"), boot) else { return };
            let t = banner_and_login(&mut vm, 180);
            vm.console.login("root", TEST_PASSWORD, timeout(30));
            let us = vm.console.run_ok("systemctl show -P ActiveEnterTimestampMonotonic rapd.service", timeout(30));
            // firmware + boot loader time before the kernel: wall time minus kernel uptime
            let up = vm.console.run_ok("cut -d' ' -f1 /proc/uptime", timeout(10));
            let wall = vm.started.elapsed().as_secs_f64();
            let pre_kernel = wall - up.trim().parse::<f64>().unwrap_or(wall);
            let r = us.trim().parse::<f64>().unwrap_or(0.0) / 1e6 + pre_kernel;
            println!("{name} run {i}: login prompt {t:.1} s, rapd ready {r:.1} s");
            login.push(t);
            rapd.push(r);
        }
        login.sort_by(f64::total_cmp);
        rapd.sort_by(f64::total_cmp);
        println!(
            "{name}: median login prompt {:.1} s, median rapd ready {:.1} s ({runs} runs)",
            login[runs / 2],
            rapd[runs / 2]
        );
    }
}

/// A throw-away CA and box certificate (ECDSA P-256, PKCS#8 key) made with openssl.
fn test_identity(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).expect("identity dir");
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    let (ca_key, ca_crt, box_key, box_csr, box_crt) =
        (p("ca.key"), p("ca.crt"), p("box.key"), p("box.csr"), p("box.crt"));
    ca.extend(["-keyout", &ca_key, "-out", &ca_crt, "-subj", "/CN=rapq test CA", "-days", "2"]);
    qemu_tests::run("openssl", &ca).expect("CA");
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend(["-keyout", &box_key, "-out", &box_csr, "-subj", "/CN=rapbox-test-0001"]);
    qemu_tests::run("openssl", &req).expect("box key");
    qemu_tests::run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &box_csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &box_crt,
            "-days",
            "2",
        ],
    )
    .expect("box certificate");
    (dir.join("ca.crt"), dir.join("box.crt"), dir.join("box.key"))
}

/// Where boot time goes (ignored; for tuning): critical chain to rapd and blame.
#[test]
#[ignore = "diagnostic (systemd-analyze of a boot): run with --ignored --nocapture"]
fn boot_analysis() {
    let Some((_b, mut vm)) = start("boot_analysis", Boot::Direct) else { return };
    banner_and_login(&mut vm, 120);
    vm.console.login("root", TEST_PASSWORD, timeout(30));
    let out = vm.console.run(
        "systemd-analyze; systemd-analyze critical-chain rapd.service --no-pager | cat; systemd-analyze blame --no-pager | head -25",
        timeout(60),
    );
    println!("{}", out.0);
}

/// A hard power cut (kill -9 of QEMU) right after an fsync'ed write on /data: the
/// data is there on the next boot and the data partition's fsck passes.
#[test]
fn data_partition_survives_power_cut() {
    let test = "powercut";
    let Some(built) = image::built_or_skip(test) else { return };
    let disk = image::overlay(&built, test).expect("overlay");
    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: None, memory_mib: 1024 };
    {
        let mut vm = Vm::start(test, &built, &cfg).expect("qemu");
        banner_and_login(&mut vm, 90);
        vm.console.login("root", TEST_PASSWORD, timeout(30));
        vm.console.run_ok("echo rapq-cut-7 > /data/config/rapq-cut && sync /data/config/rapq-cut", timeout(20));
        vm.kill();
    }
    let mut vm = Vm::start(&format!("{test}_after"), &built, &cfg).expect("qemu again");
    banner_and_login(&mut vm, 90);
    vm.console.login("root", TEST_PASSWORD, timeout(30));
    assert_eq!(vm.console.run_ok("cat /data/config/rapq-cut", timeout(10)).trim(), "rapq-cut-7");
    let fsck =
        vm.console.run_ok("systemctl show -P Result 'systemd-fsck@dev-disk-by\\x2dlabel-rapdata.service'", timeout(20));
    assert_eq!(fsck.trim(), "success");
}
