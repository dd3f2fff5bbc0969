//! Starts the real `rapd` binary with a generated configuration, in FIPS mode.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rapbox::control::{self, Request, Status};

/// The FIPS configuration built by scripts/build-fips.sh.
pub fn fips_conf() -> PathBuf {
    let dir = std::env::var_os("RAPBOX_FIPS_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/cache/rapbox/fips".into());
    let conf = dir.join("openssl-fips.cnf");
    assert!(conf.is_file(), "{} is missing: run scripts/build-fips.sh first (scripts/test.sh does)", conf.display());
    conf
}

/// What a test wants rapd to look like.
#[derive(Clone)]
pub struct Spec {
    pub dir: PathBuf,
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub proxy: Option<String>,
    pub instruments: Vec<(String, SocketAddr)>,
    pub quota_bytes: u64,
    pub fips_conf: PathBuf,
    pub extra_uplink: String,
    pub extra: String,
}

impl Spec {
    pub fn new(dir: &Path, url: &str, ca: &Path, cert: &Path, key: &Path) -> Spec {
        Spec {
            dir: dir.into(),
            url: url.into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            proxy: None,
            instruments: vec![],
            quota_bytes: 256 << 20,
            fips_conf: fips_conf(),
            extra_uplink:
                "backoff_initial_ms = 100\nbackoff_max_ms = 1000\nconnect_timeout_ms = 2000\nio_timeout_ms = 5000\n"
                    .into(),
            extra: String::new(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn queue_path(&self) -> PathBuf {
        self.dir.join("data/queue.db")
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "[queue]\npath = {:?}\nquota_bytes = {}\n\n[uplink]\nurl = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n{}",
            self.queue_path(),
            self.quota_bytes,
            self.url,
            self.ca,
            self.cert,
            self.key,
            self.extra_uplink
        );
        if let Some(p) = &self.proxy {
            s += &format!("proxy = {p:?}\n");
        }
        s += &format!(
            "\n[fips]\nopenssl_conf = {:?}\n\n[control]\nsocket = {:?}\n\n[log]\ntarget = \"stderr\"\nlevel = \"info\"\n\n{}\n",
            self.fips_conf,
            self.socket(),
            self.extra
        );
        for (serial, addr) in &self.instruments {
            s += &format!("[[instrument]]\nserial = {serial:?}\nmodel = \"test\"\nlisten = \"{addr}\"\n\n");
        }
        s
    }
}

/// A running rapd; killed on drop.
pub struct Rapd {
    pub spec: Spec,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Rapd {
    /// Writes the config and starts rapd; does not wait.
    pub fn spawn(spec: &Spec) -> Rapd {
        std::fs::create_dir_all(&spec.dir).unwrap();
        let cfg = spec.dir.join("rapd.toml");
        std::fs::write(&cfg, spec.render()).unwrap();
        let n = std::fs::read_dir(&spec.dir).unwrap().count();
        let log = spec.dir.join(format!("rapd-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rapd"))
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start rapd");
        Rapd { spec: spec.clone(), child: Some(child), log }
    }

    /// Starts rapd again on the configuration file as it is now (after a kill, say).
    pub fn respawn(&mut self) {
        let cfg = self.spec.dir.join("rapd.toml");
        let n = std::fs::read_dir(&self.spec.dir).unwrap().count();
        self.log = self.spec.dir.join(format!("rapd-{n}.log"));
        let out = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rapd"))
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start rapd");
        self.child = Some(child);
    }

    /// Starts rapd and waits until its control socket answers.
    pub fn start(spec: &Spec) -> Rapd {
        let mut r = Rapd::spawn(spec);
        r.wait_ready(Duration::from_secs(20));
        r
    }

    /// Waits until the control socket answers and the audit records of the start are in
    /// the queue (so that tests can count what the box itself adds to it).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(r) = control::request(&self.spec.socket(), &Request::Status) {
                if r.status.is_some_and(|s| s.audit["last_seq"] == s.audit["shipped_seq"]) {
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("rapd exited with {st} before it was ready:\n{}", self.log_text());
            }
            assert!(Instant::now() < end, "rapd not ready after {timeout:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn status(&self) -> Status {
        let r = control::request(&self.spec.socket(), &Request::Status).expect("control socket");
        assert!(r.ok, "{:?}", r.error);
        r.status.expect("status")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: a crash at an arbitrary moment.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > end {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let c = self.child.as_mut().expect("running");
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < end, "rapd still running after {timeout:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls the status until `pred` holds.
    pub fn wait_status(&self, what: &str, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Status {
        let end = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "timed out after {timeout:?} waiting for {what}; status: {}\nlog:\n{}",
                serde_json::to_string_pretty(&s).unwrap(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rapd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The queue depth reported by rapd.
pub fn depth(s: &Status) -> u64 {
    s.queue["depth"].as_u64().unwrap_or(0)
}

/// The box's own audit records that rapd has put into its queue: they travel with the
/// instruments' messages at priority 0, instrument "" (see docs/audit.md).
pub fn audit_queued(s: &Status) -> u64 {
    s.audit["shipped_seq"].as_u64().unwrap_or(0)
}
