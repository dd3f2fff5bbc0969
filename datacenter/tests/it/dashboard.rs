//! The staff dashboard over HTTPS through the front door's staff listener (HTTP Basic
//! authentication against a SHA-512-crypt password file), checked by hand over TLS and
//! rendered by headless Chromium (Debian's `chromium`), which also writes a screenshot to
//! `target/screenshots/dashboard.png`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapdc::api::{self, AlertQuery};
use rapdc::clock::{Clock, ManualClock, SystemClock};
use rapdc::frontdoor::StaffListener;
use rapdc::rules::RuleSet;
use rapwire::batch::Record;
use rapwire::Kind;

use crate::frontdoor::{connect, exchange, free_port, rig_with, Rig};
use crate::{encode, missing, Backend, BOX1, BOX2};

const USER: &str = "staff-alice";
const PASSWORD: &str = "correct horse battery";
/// A box whose certificate CN is markup: the page must show it as text.
const BOX3: &str = r"CN=box-<i>0003</i>,O=rapbox";
const HOSTILE_PAYLOAD: &str = "temp=37.0;note=<script>document.title='pwned'</script><img src=x onerror=alert(1)>";

fn chromium_binary() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(PathBuf::from).find(|p| p.is_file())
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots")
}

/// `user:{SHA-512 crypt}` from `openssl passwd -6`, nginx's `auth_basic_user_file` format.
fn password_file(dir: &Path) -> PathBuf {
    let out = Command::new("openssl").args(["passwd", "-6", "-salt", "rapdcTestSalt", PASSWORD]).output().unwrap();
    assert!(out.status.success(), "openssl passwd: {}", String::from_utf8_lossy(&out.stderr));
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$6$"), "{hash}");
    let path = dir.join("staff.htpasswd");
    std::fs::write(&path, format!("{USER}:{}", hash.trim())).unwrap();
    path
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", openssl::base64::encode_block(format!("{user}:{password}").as_bytes()))
}

/// Two boxes with instruments, alerts of every severity, a command queue with a remote
/// session, and a box and a payload made of markup.
fn seed(b: &Backend, clock: &ManualClock) {
    let t0 = clock.now_ms() - 20 * 60_000;
    let rec = |inst: &str, id: u64, dt: i64, kind: Kind, payload: &str| Record {
        instrument: inst.into(),
        msg_id: id,
        timestamp_ms: t0 + dt,
        kind,
        priority: if kind == Kind::Alarm { 0 } else { 2 },
        payload: payload.as_bytes().to_vec(),
    };
    let now = clock.now_ms();
    clock.set(t0);
    b.client
        .post_batch(
            BOX1,
            &encode(
                1,
                0,
                &[
                    rec("DXI-0001", 1, 0, Kind::Status, "temp=37.1;reagent_A=42%;reagent_B=7%;door=closed;err=0"),
                    rec("DXI-0002", 1, 0, Kind::Status, "temp=38.9;reagent_A=8%;door=closed;err=0"),
                    rec("SILENT-9", 1, 0, Kind::Status, "temp=37.0;reagent_A=50%"),
                ],
            ),
        )
        .unwrap();
    b.client.evaluate().unwrap();
    clock.set(t0 + 6 * 60_000);
    let alarms: Vec<Record> = (0..3)
        .map(|i| {
            rec(
                "AU-0480",
                10 + i,
                6 * 60_000 + i as i64 * 1000,
                Kind::Alarm,
                "alarm=CLOT_DETECTED;code=E412;severity=high;temp=37.0",
            )
        })
        .chain([
            rec("DXI-0001", 2, 6 * 60_000, Kind::Status, "temp=37.1;reagent_A=41%;reagent_B=6%;door=closed;err=0"),
            rec("DXI-0002", 2, 6 * 60_000, Kind::Status, "temp=39.2;reagent_A=80%;door=closed;err=0"),
        ])
        .collect();
    b.client.post_batch(BOX1, &encode(2, 0, &alarms)).unwrap();
    b.client
        .post_batch(BOX2, &encode(1, 3, &[rec("AU-0480", 1, 6 * 60_000, Kind::Status, "temp=36.8;reagent_A=64%")]))
        .unwrap();
    b.client.evaluate().unwrap();
    clock.set(now);
    b.client
        .post_batch(
            BOX1,
            &encode(
                3,
                0,
                &[
                    rec(
                        "DXI-0001",
                        3,
                        20 * 60_000,
                        Kind::Status,
                        "temp=37.2;reagent_A=41%;reagent_B=6%;door=closed;err=0",
                    ),
                    rec("DXI-0002", 3, 20 * 60_000, Kind::Status, "temp=38.6;reagent_A=80%;door=closed;err=0"),
                ],
            ),
        )
        .unwrap();
    b.client
        .post_batch(BOX2, &encode(2, 3, &[rec("AU-0480", 2, 20 * 60_000, Kind::Status, "temp=36.9;reagent_A=63%")]))
        .unwrap();
    b.client.post_batch(BOX3, &encode(1, 0, &[rec("X-1", 1, 20 * 60_000, Kind::Event, HOSTILE_PAYLOAD)])).unwrap();
    b.client.evaluate().unwrap();

    // The command channel's queue (its own tables, created by the backend), seeded directly.
    let conn = rusqlite::Connection::open(b.dir.path().join("dc.sqlite")).unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS command_queue (
             id TEXT PRIMARY KEY, box TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
             issued_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, state TEXT NOT NULL,
             deliveries INTEGER NOT NULL DEFAULT 0, last_delivered_ms INTEGER,
             outcome_code TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
             detail TEXT NOT NULL DEFAULT 'null', result_ms INTEGER, content_sha256 TEXT);",
    )
    .unwrap();
    let day = 86_400_000;
    for (id, bx, kind, state, dt, deliveries, reason) in [
        ("c-download-1", "box-0001", "download", "queued", -60_000, 0, ""),
        ("c-config-7", "box-0002", "configure", "delivered", -300_000, 1, ""),
        ("c-upload-3", "box-0001", "upload", "succeeded", -900_000, 1, ""),
        ("c-bad-9", "box-0002", "download", "refused", -1_000_000, 1, "signature does not verify"),
        ("c-session-2", "box-0001", "session", "accepted", -120_000, 1, ""),
    ] {
        conn.execute(
            "INSERT INTO command_queue (id, box, kind, body, issued_ms, expires_ms, state, deliveries, reason)
             VALUES (?1, ?2, ?3, '{}', ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![id, bx, kind, now + dt, now + dt + day, state, deliveries, reason],
        )
        .unwrap();
    }
}

fn staff_rig(clock: &ManualClock) -> Option<(Rig, SocketAddr)> {
    let staff = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let rules = RuleSet::load(&[Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")]).unwrap();
    let c = clock.clone();
    let rig = rig_with(
        // Only the seed's explicit evaluations tick, between its clock moves.
        move || {
            Backend::start_full(
                |s| s.with_clock(Arc::new(c)),
                |cfg| {
                    cfg.rules = rules;
                    cfg.tick_interval = Duration::from_secs(3600);
                },
            )
        },
        |mut fd, dir| {
            fd.staff = Some(StaffListener { listen: staff, passwords: password_file(dir) });
            fd
        },
    )?;
    Some((rig, staff))
}

fn get(rig: &Rig, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> crate::frontdoor::Answer {
    let s = connect(addr, &rig.ca, None, |_| {}).unwrap();
    exchange(s, "GET", path, headers, b"").unwrap()
}

#[test]
fn staff_listener_authenticates_and_serves_only_the_dashboard() {
    let clock = ManualClock::at(SystemClock.now_ms());
    let Some((rig, staff)) = staff_rig(&clock) else { return };
    seed(&rig.backend, &clock);
    let good = basic(USER, PASSWORD);
    let bad = basic(USER, "wrong");

    assert_eq!(get(&rig, staff, api::DASHBOARD_PATH, &[]).status, 401, "no credentials");
    assert_eq!(get(&rig, staff, api::DASHBOARD_PATH, &[("Authorization", &bad)]).status, 401, "wrong password");
    assert_eq!(get(&rig, staff, api::DASHBOARD_PATH, &[("Authorization", &basic("mallory", PASSWORD))]).status, 401);
    // A user name sent as a header is not an authentication.
    assert_eq!(get(&rig, staff, api::DASHBOARD_PATH, &[(api::STAFF_USER_HEADER, USER)]).status, 401);

    let a = get(&rig, staff, api::DASHBOARD_PATH, &[("Authorization", &good), (api::STAFF_USER_HEADER, "root")]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains(&format!("<b id=\"staff-user\">{USER}</b>")), "the authenticated user, not the header");
    assert!(a.body.contains("box-&lt;i&gt;0003&lt;/i&gt;") && !a.body.contains("<i>0003"), "markup in a CN is text");
    assert!(!a.body.contains("<script>") && !a.body.contains("<img"), "markup in a payload is text");

    // Nothing else is reachable through the staff listener, authenticated or not.
    for path in [api::ALERTS_PATH, api::STATS_PATH, api::RESET_PATH, api::EVALUATE_PATH, api::BATCHES_PATH] {
        assert_eq!(get(&rig, staff, path, &[("Authorization", &good)]).status, 404, "{path}");
    }
    assert_eq!(get(&rig, staff, "/", &[("Authorization", &good)]).status, 302);
    // The backend itself refuses the page without the listener's header.
    let direct = ureq::get(&format!("{}{}", rig.backend.server.url(), api::DASHBOARD_PATH)).call();
    assert!(matches!(direct, Err(ureq::Error::Status(403, _))), "{direct:?}");
    // The box listener does not serve it, even to a box with a user name header.
    let s = connect(rig.nginx.addr(), &rig.ca, Some(&rig.box1), |_| {}).unwrap();
    assert_eq!(exchange(s, "GET", api::DASHBOARD_PATH, &[(api::STAFF_USER_HEADER, USER)], b"").unwrap().status, 404);
}

/// Runs Chromium headless on `url` with `args`, killed after 90 s.
fn chromium(binary: &Path, profile: &Path, spki: &str, args: &[String], url: &str) -> std::process::Output {
    let mut cmd = Command::new(binary);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    // Trust exactly the test server's key, nothing else.
    .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("chromium did not finish within 90 s");
        }
    }
}

#[test]
fn dashboard_renders_in_headless_chromium_with_a_screenshot() {
    let Some(binary) = chromium_binary() else {
        missing("chromium (install Debian's chromium): the dashboard is not rendered");
        return;
    };
    let clock = ManualClock::at(SystemClock.now_ms());
    let Some((rig, staff)) = staff_rig(&clock) else { return };
    seed(&rig.backend, &clock);
    let open = rig.backend.client.open_alerts().unwrap();
    let mut rules: Vec<&str> = open.iter().map(|a| a.rule.as_str()).collect();
    rules.sort();
    assert_eq!(rules, ["instrument-silent", "reagent-low", "same-error-3-in-1h", "temp-out-of-range"], "{open:#?}");
    assert!(!rig.backend.client.alerts(&AlertQuery::default()).unwrap().is_empty());

    let cert = openssl::x509::X509::from_pem(&std::fs::read(rig.dir.path().join("server.crt")).unwrap()).unwrap();
    let spki =
        openssl::base64::encode_block(&openssl::sha::sha256(&cert.public_key().unwrap().public_key_to_der().unwrap()));
    let url =
        format!("https://{USER}:{}@127.0.0.1:{}{}", PASSWORD.replace(' ', "%20"), staff.port(), api::DASHBOARD_PATH);
    let profile = rig.dir.path().join("chromium-profile");

    let started = Instant::now();
    let out = chromium(&binary, &profile, &spki, &["--dump-dom".into()], &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("rapdc service dashboard"),
        "no dashboard in the DOM ({:?}):\n{dom}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for text in [
        "box-0001",
        "box-0002",
        "DXI-0001",
        "DXI-0002",
        "AU-0480",
        "SILENT-9",
        "reagent_B=7% is below 10",
        "code=E412 3 times within 1h",
        "temp outside [36, 38] for 6m",
        "no report for 20m",
        "c-download-1",
        "c-config-7",
        "c-session-2",
        "signature does not verify",
        &format!("id=\"staff-user\">{USER}<"),
    ] {
        assert!(dom.contains(text), "{text:?} not on the page:\n{dom}");
    }
    assert!(dom.contains("box-&lt;i&gt;0003&lt;/i&gt;"), "the CN's markup is text in the DOM");
    assert!(dom.contains("&lt;script&gt;document.title"), "the payload's markup is text in the DOM");
    assert!(!dom.contains("pwned</title>") && dom.contains("<title>rapdc service dashboard</title>"), "no script ran");
    assert!(!dom.contains("<img src=\"x\""), "no element made from a payload");
    let sessions = dom.split("id=\"sessions\"").nth(1).unwrap_or_default();
    assert!(
        sessions.contains("c-session-2")
            && !sessions.split("</section>").next().unwrap_or_default().contains("c-download-1")
    );

    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &binary,
        &profile,
        &spki,
        &[format!("--screenshot={}", shot.display()), "--window-size=1400,1900".into()],
        &url,
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!("no screenshot at {} ({e}): {}", shot.display(), String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) =
        (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((w, h), (1400, 1900));
    assert!(png.len() > 30_000, "a {}-byte screenshot is too small to show the page", png.len());
    eprintln!(
        "dashboard screenshot: {} ({} bytes, chromium runs took {:.1} s)",
        shot.display(),
        png.len(),
        started.elapsed().as_secs_f64()
    );
}
