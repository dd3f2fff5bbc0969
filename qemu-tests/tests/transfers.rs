//! Remote download and remote upload through the booted image: the local data center
//! (content, signed manifests, upload store) behind the uplink guest-forward, rapd in the
//! guest, and simulated instruments' file agents (agent protocol version 2) on the tap-backed
//! instrument ports. Two boots of one disk: the second after the uplink was cut mid-transfer
//! and the power was cut. Skips only when the image is missing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use qemu_tests::datacenter::{DataCenter, BOX_ID};
use qemu_tests::image::{self, PortSpec, TEST_PASSWORD};
use qemu_tests::instruments::spawn_file_agent;
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig};
use rapdc::commands::{CommandRecord, CommandState, QueueCommand};
use rapsim::{FileAgent, RunningFileAgent};
use rapwire::transfer::{Category, Manifest};
use serde_json::Value;

fn ports() -> Vec<PortSpec> {
    image::harness_ports("QXFR")
}

/// Deterministic bytes that do not compress.
fn content(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn vendor_key() -> PKey<Private> {
    PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap()
}

/// Data center and a provisioned private copy of the image that trusts `key` for downloads.
fn provisioned(test: &str, key: &PKey<Private>) -> Option<(image::Built, DataCenter, PathBuf)> {
    let built = image::built_or_skip(test)?;
    let dc = DataCenter::start(test).expect("data center");
    let raw = image::private_copy(&built, test).expect("copy");
    let template = image::template_with_ports(&dc.dir.join("rapd.toml.in"), &ports()).expect("template");
    // Poll for commands every 2 s (the default 30 s would dominate the test), faster retries.
    let mut t = std::fs::read_to_string(&template).unwrap();
    t = t.replacen("[transfers]\n", "[transfers]\nretry_initial_ms = 500\nretry_max_ms = 2000\n", 1);
    t.push_str("\n[commands]\npoll_interval_s = 2\n");
    std::fs::write(&template, t).unwrap();
    let manifest = built.dir.join("manifest.json");
    rapimage::provision::provision(
        &raw,
        &manifest,
        &template,
        &rapimage::provision::Identity {
            ca: dc.pki.ca.cert.clone(),
            cert: dc.pki.client.cert.clone(),
            key: dc.pki.client.key.clone(),
            url: dc.url(),
        },
    )
    .expect("rapimage provision");
    let pubpem = dc.dir.join("vendor-signing.pem");
    std::fs::write(&pubpem, key.public_key_to_pem().unwrap()).unwrap();
    rapimage::provision::add_files(&raw, &manifest, &[(&pubpem, rapimage::provision::VENDOR_KEY_DEST, "0100644")])
        .expect("vendor key");
    Some((built, dc, raw))
}

fn boot(name: &str, built: &image::Built, disk: PathBuf, dc: &DataCenter) -> Vm {
    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: Some(dc.port), memory_mib: 1024 };
    let vm = Vm::start(name, built, &cfg).expect("qemu");
    for (tap, p) in vm.netns().taps.iter().zip(ports()) {
        vm.netns().exec(&["ip", "addr", "add", &format!("{}/24", p.address), "dev", tap]).expect("instrument address");
    }
    vm
}

/// `rapctl status --json`, parsed.
fn status(vm: &mut Vm) -> Value {
    let out = vm.console.run_ok("rapctl status --json", timeout(30));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("rapctl status --json: {e}: {out}"))
}

/// Logs in and waits until rapd answers.
fn ready(vm: &mut Vm) -> Value {
    vm.console.login("root", TEST_PASSWORD, timeout(120));
    let (out, rc) = vm.console.run(
        "for i in $(seq 180); do rapctl status --json >/tmp/st 2>/dev/null && break; sleep 0.5; done",
        timeout(120),
    );
    assert_eq!(rc, 0, "{out}");
    let st = status(vm);
    assert_eq!(st["fips"]["passed"], Value::Bool(true), "{st:#}");
    st
}

fn agents(vm: &Vm, store: &std::path::Path) -> Vec<RunningFileAgent> {
    ports()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let a = FileAgent {
                connect_timeout: Duration::from_secs(2),
                io_timeout: timeout(30),
                ..FileAgent::new(p.agent_addr(), p.serial.clone(), store.join(format!("instrument-{i}")))
            };
            spawn_file_agent(&vm.netns().name, a).expect("file agent")
        })
        .collect()
}

fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {secs} s (x mult) waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Dl<'a> {
    client: rapdc::Client,
    key: &'a PKey<Private>,
}

impl Dl<'_> {
    fn queue(&self, id: &str, m: &Manifest, key: &PKey<Private>) {
        let args = rapdc::signing::download_args(key, m).unwrap();
        self.client
            .queue_command(&QueueCommand {
                id: Some(id.into()),
                args: serde_json::to_value(args).unwrap(),
                ..QueueCommand::new(BOX_ID, "download")
            })
            .expect("queue download");
    }

    fn offer(&self, id: &str, data: &[u8], name: &str, category: Category, targets: &[&str]) -> Manifest {
        self.client.put_download(data, None).expect("content");
        let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
        let m = rapdc::signing::manifest_for(data, name, category, &targets, "");
        self.queue(id, &m, self.key);
        m
    }

    fn wait_final(&self, id: &str, secs: u64) -> CommandRecord {
        self.client.wait_command(id, timeout(secs), |c| c.state.is_final()).expect("final result")
    }
}

/// The box's audit records about `target` that reached the data center, as (action, outcome).
fn audit_at_dc(dc: &DataCenter, target: &str) -> Vec<(String, String)> {
    dc.client
        .all_reports(Some(BOX_ID), Some(""))
        .expect("reports")
        .into_iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.payload).ok())
        .filter(|a| a["target"] == target)
        .map(|a| (a["action"].as_str().unwrap_or("").into(), a["outcome"].as_str().unwrap_or("").into()))
        .collect()
}

/// Boot 1: a reagent file (both instruments) and a software package (one) reach the
/// instruments intact; a tampered package and a badly signed one are refused, never offered,
/// and reported (result and audit record at the data center). Then a 12 MB download and a
/// 50 MB log bundle upload start at a throttled rate; mid-file the uplink is cut and the power
/// is cut. Boot 2: both resume (a Range request continues the download; the upload continues
/// from what the data center had) and complete with the right SHA-256.
#[test]
fn files_reach_instruments_and_the_data_center_across_an_uplink_cut_and_a_reboot() {
    let test = "xfer_e2e";
    let key = vendor_key();
    let Some((built, mut dc, raw)) = provisioned(test, &key) else { return };
    let disk = image::overlay_of(&raw, test).expect("overlay");
    let store = dc.dir.join("instruments");
    let t0 = Instant::now();
    let mut vm = boot(&format!("{test}_1"), &built, disk.clone(), &dc);
    let st = ready(&mut vm);
    println!("boot 1: rapd ready {:.1} s after QEMU start", t0.elapsed().as_secs_f64());
    assert!(
        st["transfers"]["vendor_keys"][0].as_str().unwrap_or("").starts_with("ECDSA P-256"),
        "{:#}",
        st["transfers"]
    );
    let agents1 = agents(&vm, &store);
    let (s1, s2) = (ports()[0].serial.clone(), ports()[1].serial.clone());
    let dl = Dl { client: dc.client.clone(), key: &key };

    let reagent = content(200_000, 11);
    let software = content(4_000_000, 12);
    dl.offer("q-reagent", &reagent, "reagent-lot-4711.dat", Category::Reagent, &[&s1, &s2]);
    dl.offer("q-software", &software, "analyzer-sw-2.4.1.pkg", Category::Software, &[&s1]);
    // Tampered: other bytes under the manifest's hash.
    let good = content(500_000, 13);
    let tm =
        rapdc::signing::manifest_for(&good, "analyzer-sw-2.4.2.pkg", Category::Software, std::slice::from_ref(&s1), "");
    let mut bad = good.clone();
    bad[250_000] ^= 1;
    dc.client.put_download(&bad, Some(&tm.sha256)).unwrap();
    dl.queue("q-tampered", &tm, &key);
    // Signed with a key the box does not trust.
    let other = content(100_000, 14);
    dc.client.put_download(&other, None).unwrap();
    let om = rapdc::signing::manifest_for(&other, "settings-v9.cfg", Category::Settings, std::slice::from_ref(&s1), "");
    dl.queue("q-badsig", &om, &vendor_key());

    for id in ["q-reagent", "q-software"] {
        let c = dl.wait_final(id, 120);
        assert_eq!(c.state, CommandState::Succeeded, "{id}: {c:?}");
        println!("{id} delivered {:.1} s after QEMU start", t0.elapsed().as_secs_f64());
    }
    for (a, name, data) in [
        (&agents1[0], "reagent-lot-4711.dat", &reagent),
        (&agents1[1], "reagent-lot-4711.dat", &reagent),
        (&agents1[0], "analyzer-sw-2.4.1.pkg", &software),
    ] {
        let f = a.files().into_iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{}: no {name}", a.serial()));
        assert_eq!(std::fs::read(&f.path).unwrap(), *data, "{}: {name} intact", a.serial());
    }
    let c = dl.wait_final("q-tampered", 60);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Failed, "hash_mismatch"), "{c:?}");
    let c = dl.wait_final("q-badsig", 60);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Refused, "bad_signature"), "{c:?}");
    let offered: Vec<String> = agents1.iter().flat_map(|a| a.offers()).map(|o| o.name).collect();
    assert!(!offered.iter().any(|n| n == "analyzer-sw-2.4.2.pkg" || n == "settings-v9.cfg"), "{offered:?}");
    let audit = wait("the refusals' audit records at the data center", 60, || {
        let t = audit_at_dc(&dc, "q-tampered");
        let b = audit_at_dc(&dc, "q-badsig");
        (t.iter().any(|x| x.0 == "transfer.download_refused") && b.iter().any(|x| x.0 == "transfer.signature_refused"))
            .then_some((t, b))
    });
    assert!(audit.1.contains(&("command.refused".into(), "denied".into())), "{audit:?}");
    println!("boot 1: two downloads delivered, two refused, after {:.1} s", t0.elapsed().as_secs_f64());

    // The interrupted transfers, throttled so that the cuts land mid-file: the bundle first
    // (the instrument hands it to the box, which starts sending it), then the download.
    dc.client.set_transfer_rate(1_500_000).unwrap();
    let bundle = content(50 * 1024 * 1024, 16);
    let bundle_path = dc.dir.join("logs-QXFR-0001.tgz");
    std::fs::write(&bundle_path, &bundle).unwrap();
    let up = agents1[0].upload(&bundle_path, Category::LogBundle).unwrap();
    let t1 = Instant::now();
    wait("the box to store the 50 MB bundle", 300, || agents1[0].uploads()[up].done.then_some(()));
    println!("50 MB log bundle stored on the box in {:.1} s", t1.elapsed().as_secs_f64());
    let big = content(12_000_000, 15);
    let bm = dl.offer("q-resume", &big, "analyzer-sw-3.0.0.pkg", Category::Software, &[&s2]);
    wait("part of the download on the box and part of the bundle at the data center", 120, || {
        let st = status(&mut vm);
        let fetched = st["transfers"]["downloads"].as_array()?.iter().find(|d| d["command"] == "q-resume")?["fetched"]
            .as_u64()?;
        let at_dc = dc.client.uploads(Some(BOX_ID)).ok()?.uploads.first()?.received;
        (fetched >= 2_000_000 && at_dc >= 4_000_000).then_some(())
    });
    dc.stop_front_door();
    let at_cut = dc.client.uploads(Some(BOX_ID)).unwrap().uploads[0].received;
    std::thread::sleep(timeout(3));
    vm.kill();
    // Release the VM (its network namespace and the harness's one-VM lock) before booting again.
    drop(vm);
    for a in agents1 {
        a.join();
    }
    println!("uplink cut with {at_cut} bytes of the bundle at the data center; power cut");

    // Boot 2.
    dc.start_front_door().expect("nginx again");
    dc.client.set_transfer_rate(0).unwrap();
    let t2 = Instant::now();
    let mut vm = boot(&format!("{test}_2"), &built, disk, &dc);
    ready(&mut vm);
    println!("boot 2: rapd ready {:.1} s after QEMU start", t2.elapsed().as_secs_f64());
    let agents2 = agents(&vm, &store);
    let c = dl.wait_final("q-resume", 180);
    assert_eq!(c.state, CommandState::Succeeded, "{c:?}");
    let f =
        agents2[1].files().into_iter().find(|f| f.name == "analyzer-sw-3.0.0.pkg").expect("resumed download stored");
    assert_eq!(std::fs::read(&f.path).unwrap(), big, "resumed download intact");
    let served = dc.client.downloads().unwrap().served;
    let ranges: Vec<u64> = served.iter().filter(|s| s.sha256 == bm.sha256).map(|s| s.from).collect();
    assert!(ranges.iter().any(|&from| from > 0), "a Range request continued the download: {ranges:?}");
    let u = wait("the bundle complete at the data center", 240, || {
        dc.client.uploads(Some(BOX_ID)).ok()?.uploads.into_iter().find(|u| u.complete)
    });
    assert_eq!(u.sha256, rapdc::transfers::sha256_hex(&bundle), "{u:?}");
    assert_eq!(u.size, bundle.len() as u64);
    assert!(u.status_answers.iter().any(|&n| n > 0), "the box continued where the data center was: {u:?}");
    assert_eq!(dc.client.upload_content(BOX_ID, &u.id).unwrap().len(), bundle.len());
    let st = wait("the box to have nothing left in transit", 60, || {
        let st = status(&mut vm);
        (st["transfers"]["used_bytes"] == 0).then_some(st)
    });
    assert_eq!(st["commands"]["unreported"], 0, "{:#}", st["commands"]);
    println!(
        "boot 2: download resumed from {:?}, bundle resumed from {:?}; whole test {:.1} s",
        ranges,
        u.status_answers,
        t0.elapsed().as_secs_f64()
    );
    for a in agents2 {
        a.join();
    }
}
