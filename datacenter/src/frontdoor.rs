//! The nginx front door: renders a complete, standalone `nginx.conf` that terminates mutual
//! TLS and forwards the box API to the backend, and runs nginx with it.
//!
//! The rendered file runs nginx as root in the foreground with every runtime path under
//! the prefix directory:
//!
//! ```text
//! nginx -c PREFIX/nginx.conf -p PREFIX -g 'daemon off;'
//! ```
//!
//! What it does:
//! * TLS with the server certificate; the client certificate is required
//!   (`ssl_verify_client on`) and verified against the client CA, depth 2;
//! * forwards `/api/v1/` to the backend on loopback over kept-alive HTTP/1.1 connections,
//!   with `X-Client-Verify: $ssl_client_verify` and `X-Client-Subject: $ssl_client_s_dn`
//!   (headers of the same names sent by the client are replaced, never passed on);
//! * answers 404 for everything else: `/admin/*`, `/healthz` and the operator query API
//!   (`/api/v1/reports`, `/api/v1/stats`, `/api/v1/alerts`, `/api/v1/triggers`) are never
//!   exposed to boxes;
//! * optionally a second server, the staff listener ([`StaffListener`]): HTTPS with the
//!   same certificate and TLS settings, no client certificate, HTTP Basic authentication
//!   against a password file (`user:{crypt hash}` lines, e.g. from `openssl passwd -6`),
//!   serving only the dashboard (`/dashboard`) with the authenticated user name in
//!   `X-Staff-User`; boxes' listener never forwards that header.
//!
//! The TLS settings are plain fields so that tests can configure a server badly on purpose
//! ([`FrontDoor::tls11_only`], [`FrontDoor::chacha20_only`]); the defaults are FIPS-approved
//! ECDHE AES-GCM suites on TLS 1.2 and 1.3 only.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::{ALERTS_PATH, DASHBOARD_PATH, REPORTS_PATH, STAFF_USER_HEADER, STATS_PATH, TRIGGERS_PATH};

/// Default `ssl_protocols`.
pub const FIPS_TLS_PROTOCOLS: &str = "TLSv1.2 TLSv1.3";
/// Default TLS 1.2 `ssl_ciphers`: ECDHE with AES-GCM only (FIPS 140-3 approved).
pub const FIPS_TLS12_CIPHERS: &str =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256";
/// Default TLS 1.3 suites (set with `ssl_conf_command Ciphersuites`): AES-GCM only, no
/// ChaCha20-Poly1305.
pub const FIPS_TLS13_CIPHERSUITES: &str = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256";
/// Default `ssl_ecdh_curve`: NIST curves only.
pub const FIPS_ECDH_CURVES: &str = "prime256v1:secp384r1";
/// Name of the rendered file inside the prefix directory.
pub const CONFIG_FILE: &str = "nginx.conf";

/// The staff listener: the dashboard over HTTPS for people, authenticated with a user name
/// and password (HTTP Basic, checked by nginx against `passwords`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffListener {
    /// Address nginx listens on for staff.
    pub listen: SocketAddr,
    /// nginx `auth_basic_user_file`: `user:hash` lines, hashes in crypt(3) form
    /// (`openssl passwd -6` gives SHA-512 crypt).
    pub passwords: PathBuf,
}

/// Everything the front door needs. Paths should be absolute: nginx resolves relative ones
/// against the prefix (`-p`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontDoor {
    /// Address nginx listens on for boxes (`listen ... ssl`).
    pub listen_addr: SocketAddr,
    /// Server certificate chain (PEM).
    pub server_cert: PathBuf,
    /// Server private key (PEM).
    pub server_key: PathBuf,
    /// CA that box certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Port of the rapdc backend on 127.0.0.1.
    pub backend_port: u16,
    /// nginx prefix: pid file, lock file, temp directories and the rendered config live here.
    pub prefix_dir: PathBuf,
    /// `ssl_protocols`, space separated (e.g. `TLSv1.2 TLSv1.3`).
    pub tls_protocols: String,
    /// `ssl_ciphers`: the TLS 1.2 and older cipher list, OpenSSL syntax.
    pub tls_ciphers: String,
    /// TLS 1.3 suites (`ssl_conf_command Ciphersuites`); `None` leaves OpenSSL's default,
    /// which includes ChaCha20-Poly1305.
    pub tls13_ciphersuites: Option<String>,
    /// `ssl_ecdh_curve`.
    pub ecdh_curves: String,
    /// `ssl_verify_depth`.
    pub verify_depth: u32,
    /// Idle kept-alive connections to the backend per worker (`keepalive` in the upstream).
    pub upstream_keepalive: u32,
    /// Access log file (format `rapdc`: TLS protocol, cipher, subject, sizes, times).
    pub access_log: PathBuf,
    /// Error log file.
    pub error_log: PathBuf,
    /// Error log level (`info` shows TLS handshake failures).
    pub error_log_level: String,
    /// The staff listener serving the dashboard (`None`: no dashboard through nginx).
    pub staff: Option<StaffListener>,
}

/// Why the front door could not be written or started.
#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    /// A value would not survive nginx's config syntax.
    #[error("front door {field} {value:?}: {why}")]
    BadValue {
        /// The [`FrontDoor`] field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No nginx binary was found.
    #[error("nginx not found in PATH, /usr/sbin or /usr/local/sbin")]
    NoNginx,
    /// nginx could not be spawned.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// nginx exited or never listened.
    #[error("nginx did not start listening on {addr}: {why}\n{log}")]
    NotListening {
        /// The listen address.
        addr: SocketAddr,
        /// What happened.
        why: String,
        /// Its stderr and error log.
        log: String,
    },
}

impl FrontDoor {
    /// A front door with the defaults: FIPS TLS settings, logs in the prefix directory.
    pub fn new(
        listen_addr: SocketAddr,
        server_cert: impl Into<PathBuf>,
        server_key: impl Into<PathBuf>,
        client_ca: impl Into<PathBuf>,
        backend_port: u16,
        prefix_dir: impl Into<PathBuf>,
    ) -> FrontDoor {
        let prefix_dir = prefix_dir.into();
        FrontDoor {
            listen_addr,
            server_cert: server_cert.into(),
            server_key: server_key.into(),
            client_ca: client_ca.into(),
            backend_port,
            access_log: prefix_dir.join("access.log"),
            error_log: prefix_dir.join("error.log"),
            prefix_dir,
            tls_protocols: FIPS_TLS_PROTOCOLS.to_owned(),
            tls_ciphers: FIPS_TLS12_CIPHERS.to_owned(),
            tls13_ciphersuites: Some(FIPS_TLS13_CIPHERSUITES.to_owned()),
            ecdh_curves: FIPS_ECDH_CURVES.to_owned(),
            verify_depth: 2,
            upstream_keepalive: 16,
            error_log_level: "info".to_owned(),
            staff: None,
        }
    }

    /// The example shown in `datacenter/nginx/example.conf`.
    pub fn example() -> FrontDoor {
        let mut fd = FrontDoor::new(
            SocketAddr::from(([0, 0, 0, 0], 443)),
            "/etc/rapdc/tls/server.crt",
            "/etc/rapdc/tls/server.key",
            "/etc/rapdc/tls/box-ca.crt",
            8080,
            "/var/lib/rapdc/nginx",
        );
        fd.access_log = "/var/log/rapdc/access.log".into();
        fd.error_log = "/var/log/rapdc/error.log".into();
        fd.staff = Some(StaffListener {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            passwords: "/etc/rapdc/staff.htpasswd".into(),
        });
        fd
    }

    /// Deliberately bad: a server that offers only TLS 1.1 (SHA-1 CBC suites; OpenSSL 3
    /// needs `@SECLEVEL=0` for them). A correct box must refuse it.
    pub fn tls11_only(mut self) -> FrontDoor {
        self.tls_protocols = "TLSv1.1".to_owned();
        self.tls_ciphers =
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:@SECLEVEL=0"
                .to_owned();
        self.tls13_ciphersuites = None;
        self
    }

    /// Deliberately bad: a server that offers only ChaCha20-Poly1305 (not FIPS approved),
    /// in TLS 1.2 and TLS 1.3. A FIPS box must refuse it.
    pub fn chacha20_only(mut self) -> FrontDoor {
        self.tls_protocols = FIPS_TLS_PROTOCOLS.to_owned();
        self.tls_ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305".to_owned();
        self.tls13_ciphersuites = Some("TLS_CHACHA20_POLY1305_SHA256".to_owned());
        self
    }

    /// Where [`FrontDoor::write_config`] puts the rendered file.
    pub fn config_path(&self) -> PathBuf {
        self.prefix_dir.join(CONFIG_FILE)
    }

    /// Checks that every value can be rendered safely: no control characters, no `$`
    /// (nginx would expand it as a variable), and paths absolute.
    pub fn validate(&self) -> Result<(), FrontDoorError> {
        let paths: [(&'static str, &Path); 6] = [
            ("server_cert", &self.server_cert),
            ("server_key", &self.server_key),
            ("client_ca", &self.client_ca),
            ("prefix_dir", &self.prefix_dir),
            ("access_log", &self.access_log),
            ("error_log", &self.error_log),
        ];
        let staff = self.staff.as_ref().map(|st| ("staff.passwords", st.passwords.as_path()));
        for (field, p) in paths.into_iter().chain(staff) {
            let bad = |why| FrontDoorError::BadValue { field, value: p.display().to_string(), why };
            let s = p.to_str().ok_or_else(|| bad("not UTF-8"))?;
            if !p.is_absolute() {
                return Err(bad("must be an absolute path"));
            }
            check_text(field, s)?;
        }
        let strings: [(&'static str, &str); 4] = [
            ("tls_protocols", &self.tls_protocols),
            ("tls_ciphers", &self.tls_ciphers),
            ("ecdh_curves", &self.ecdh_curves),
            ("error_log_level", &self.error_log_level),
        ];
        for (field, s) in strings {
            check_text(field, s)?;
            if s.trim().is_empty() {
                return Err(FrontDoorError::BadValue { field, value: s.to_owned(), why: "empty" });
            }
        }
        if let Some(s) = &self.tls13_ciphersuites {
            check_text("tls13_ciphersuites", s)?;
        }
        Ok(())
    }

    /// Validates, creates the prefix directory and writes the rendered config into it.
    pub fn write_config(&self) -> Result<PathBuf, FrontDoorError> {
        self.validate()?;
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| FrontDoorError::Write { path, source }
        };
        fs::create_dir_all(&self.prefix_dir).map_err(write_err(&self.prefix_dir))?;
        for log in [&self.access_log, &self.error_log] {
            if let Some(dir) = log.parent() {
                fs::create_dir_all(dir).map_err(write_err(dir))?;
            }
        }
        let path = self.config_path();
        fs::write(&path, render(self)).map_err(write_err(&path))?;
        Ok(path)
    }
}

fn check_text(field: &'static str, s: &str) -> Result<(), FrontDoorError> {
    let bad = |why| FrontDoorError::BadValue { field, value: s.to_owned(), why };
    if s.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    if s.contains('$') {
        return Err(bad("contains '$', which nginx would expand"));
    }
    Ok(())
}

/// An nginx string literal: double-quoted, with `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn qpath(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// Renders the complete `nginx.conf`. Call [`FrontDoor::validate`] first for values that
/// come from outside (`write_config` does).
pub fn render(fd: &FrontDoor) -> String {
    let p = |name: &str| qpath(&fd.prefix_dir.join(name));
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        r#"# nginx front door of the rapbox reference data center.
# Rendered by rapdc::frontdoor::render; run it with
#   nginx -c <this file> -p {prefix} -g 'daemon off;'

user root;
worker_processes 1;
pid {pid};
lock_file {lock};
error_log {error_log} {level};

events {{
    worker_connections 512;
}}

http {{
    client_body_temp_path {body_tmp};
    proxy_temp_path {proxy_tmp};
    fastcgi_temp_path {fastcgi_tmp};
    uwsgi_temp_path {uwsgi_tmp};
    scgi_temp_path {scgi_tmp};

    log_format rapdc '$time_iso8601 $remote_addr "$request" $status '
                     'req=$request_length sent=$bytes_sent tls=$ssl_protocol/$ssl_cipher '
                     'verify=$ssl_client_verify subject="$ssl_client_s_dn" '
                     'batch=$http_x_rapbox_batch rt=$request_time urt=$upstream_response_time';
    access_log {access_log} rapdc;

    server_tokens off;
    default_type application/json;
    keepalive_timeout 75s;
    sendfile off;

    upstream rapdc_backend {{
        server 127.0.0.1:{backend_port};
        keepalive {keepalive};
    }}

    server {{
        listen {listen} ssl;

        ssl_certificate {cert};
        ssl_certificate_key {key};

        ssl_verify_client on;
        ssl_client_certificate {ca};
        ssl_verify_depth {depth};

        ssl_protocols {protocols};
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers on;
"#,
        prefix = fd.prefix_dir.display(),
        pid = p("nginx.pid"),
        lock = p("nginx.lock"),
        error_log = qpath(&fd.error_log),
        level = fd.error_log_level,
        body_tmp = p("client_body_temp"),
        proxy_tmp = p("proxy_temp"),
        fastcgi_tmp = p("fastcgi_temp"),
        uwsgi_tmp = p("uwsgi_temp"),
        scgi_tmp = p("scgi_temp"),
        access_log = qpath(&fd.access_log),
        backend_port = fd.backend_port,
        keepalive = fd.upstream_keepalive,
        listen = fd.listen_addr,
        cert = qpath(&fd.server_cert),
        key = qpath(&fd.server_key),
        ca = qpath(&fd.client_ca),
        depth = fd.verify_depth,
        protocols = fd.tls_protocols.trim(),
        ciphers = quote(fd.tls_ciphers.trim()),
    );
    if let Some(suites) = &fd.tls13_ciphersuites {
        let _ = writeln!(s, "        ssl_conf_command Ciphersuites {};", quote(suites.trim()));
    }
    let _ = write!(
        s,
        r#"        ssl_ecdh_curve {curves};
        ssl_session_tickets off;

        client_body_buffer_size 4m;
        client_max_body_size 64m;

        # The box API. Client-sent X-Client-* headers are replaced, never passed on.
        location /api/v1/ {{
            proxy_pass http://rapdc_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Client-Verify $ssl_client_verify;
            proxy_set_header X-Client-Subject $ssl_client_s_dn;
            proxy_set_header {staff_header} "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_connect_timeout 5s;
            proxy_send_timeout 120s;
            proxy_read_timeout 120s;
        }}

        # The operator query API stays on the backend's loopback listener.
        location = {reports} {{
            return 404 '{{"error":"not found"}}';
        }}
        location = {stats} {{
            return 404 '{{"error":"not found"}}';
        }}
        location = {alerts} {{
            return 404 '{{"error":"not found"}}';
        }}
        location = {triggers} {{
            return 404 '{{"error":"not found"}}';
        }}

        # Everything else, /admin/ and /healthz included.
        location / {{
            return 404 '{{"error":"not found"}}';
        }}
    }}
"#,
        curves = fd.ecdh_curves.trim(),
        reports = REPORTS_PATH,
        stats = STATS_PATH,
        alerts = ALERTS_PATH,
        triggers = TRIGGERS_PATH,
        staff_header = STAFF_USER_HEADER,
    );
    if let Some(staff) = &fd.staff {
        render_staff(&mut s, fd, staff);
    }
    s.push_str("}\n");
    s
}

/// The staff listener's server block.
fn render_staff(s: &mut String, fd: &FrontDoor, staff: &StaffListener) {
    let _ = write!(
        s,
        r#"
    # Staff: the dashboard over HTTPS, HTTP Basic authentication, no client certificate.
    server {{
        listen {listen} ssl;

        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols {protocols};
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers on;
"#,
        listen = staff.listen,
        cert = qpath(&fd.server_cert),
        key = qpath(&fd.server_key),
        protocols = fd.tls_protocols.trim(),
        ciphers = quote(fd.tls_ciphers.trim()),
    );
    if let Some(suites) = &fd.tls13_ciphersuites {
        let _ = writeln!(s, "        ssl_conf_command Ciphersuites {};", quote(suites.trim()));
    }
    let _ = write!(
        s,
        r#"        ssl_ecdh_curve {curves};
        ssl_session_tickets off;

        auth_basic "rapdc staff";
        auth_basic_user_file {passwords};

        location = {dashboard} {{
            proxy_pass http://rapdc_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header {staff_header} $remote_user;
            proxy_set_header Authorization "";
            proxy_set_header X-Client-Verify "";
            proxy_set_header X-Client-Subject "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_connect_timeout 5s;
            proxy_read_timeout 30s;
        }}
        location = / {{
            return 302 {dashboard};
        }}
        location / {{
            return 404 '{{"error":"not found"}}';
        }}
    }}
"#,
        curves = fd.ecdh_curves.trim(),
        passwords = qpath(&staff.passwords),
        dashboard = DASHBOARD_PATH,
        staff_header = STAFF_USER_HEADER,
    );
}

/// The nginx binary: `PATH` first, then the usual sbin directories.
pub fn nginx_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// A running nginx master process in the foreground. Dropping it stops nginx
/// (`nginx -s stop`, then a kill if it lingers).
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    binary: PathBuf,
    config: PathBuf,
    prefix: PathBuf,
    addr: SocketAddr,
    stderr_path: PathBuf,
}

impl Nginx {
    /// Writes the config, starts nginx and waits (up to 10 s) until it accepts connections.
    pub fn start(fd: &FrontDoor) -> Result<Nginx, FrontDoorError> {
        let binary = nginx_binary().ok_or(FrontDoorError::NoNginx)?;
        let config = fd.write_config()?;
        let stderr_path = fd.prefix_dir.join("nginx.stderr");
        let stderr = fs::File::create(&stderr_path)
            .map_err(|source| FrontDoorError::Write { path: stderr_path.clone(), source })?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&fd.prefix_dir)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| FrontDoorError::Spawn { binary: binary.clone(), source })?;
        let mut nginx = Nginx {
            child: Some(child),
            binary,
            config,
            prefix: fd.prefix_dir.clone(),
            addr: fd.listen_addr,
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = nginx.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    nginx.child = None;
                    return Err(nginx.not_listening(format!("nginx exited with {status}"), fd));
                }
            }
            if TcpStream::connect_timeout(&nginx.addr, Duration::from_millis(200)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err(nginx.not_listening("timed out after 10 s".into(), fd));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn not_listening(&self, why: String, fd: &FrontDoor) -> FrontDoorError {
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let error_log = fs::read_to_string(&fd.error_log).unwrap_or_default();
        FrontDoorError::NotListening { addr: self.addr, why, log: format!("{stderr}{error_log}") }
    }

    /// The address nginx listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The nginx master's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops nginx and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .arg("-p")
            .arg(&self.prefix)
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "nginx/example.conf";

    /// The example config in the repository is what `render` produces. Run with
    /// `RAPDC_BLESS=1` to rewrite it after an intended change.
    #[test]
    fn example_conf_is_current() {
        let rendered = render(&FrontDoor::example());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE);
        if std::env::var_os("RAPDC_BLESS").is_some() {
            fs::write(&path, &rendered).unwrap();
        }
        let golden = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            golden == rendered,
            "{} is stale: run `RAPDC_BLESS=1 cargo test -p rapdc example_conf`",
            path.display()
        );
    }

    #[test]
    fn defaults_are_fips() {
        let c = render(&FrontDoor::example());
        assert!(c.contains("ssl_protocols TLSv1.2 TLSv1.3;"));
        assert!(c.contains(&format!("ssl_ciphers \"{FIPS_TLS12_CIPHERS}\";")));
        assert!(c.contains("ssl_conf_command Ciphersuites \"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256\";"));
        assert!(c.contains("ssl_ecdh_curve prime256v1:secp384r1;"));
        assert!(c.contains("ssl_verify_client on;"));
        assert!(c.contains("ssl_verify_depth 2;"));
        assert!(c.contains("proxy_set_header X-Client-Verify $ssl_client_verify;"));
        assert!(c.contains("proxy_set_header X-Client-Subject $ssl_client_s_dn;"));
        assert!(c.contains("server 127.0.0.1:8080;"));
        assert!(c.contains("keepalive 16;"));
        assert!(c.contains("client_body_buffer_size 4m;"));
        assert!(c.contains("client_max_body_size 64m;"));
        assert!(c.contains("user root;") && c.contains("worker_processes 1;"));
        assert!(!c.to_ascii_uppercase().contains("CHACHA"));
        assert!(!c.lines().any(|l| l.contains("location") && l.contains("admin")), "admin must not be routed");
    }

    #[test]
    fn staff_listener_serves_only_the_dashboard_with_basic_auth() {
        let c = render(&FrontDoor::example());
        let (boxes, staff) = c.split_once("# Staff:").expect("staff server block");
        assert!(boxes.contains("proxy_set_header X-Staff-User \"\";"), "boxes cannot pose as staff");
        assert!(boxes.contains("location = /api/v1/alerts {") && boxes.contains("location = /api/v1/triggers {"));
        assert!(!boxes.contains("/dashboard"));
        assert!(staff.contains("listen 0.0.0.0:8443 ssl;"));
        assert!(staff.contains("auth_basic_user_file \"/etc/rapdc/staff.htpasswd\";"));
        assert!(staff.contains("proxy_set_header X-Staff-User $remote_user;"));
        assert!(staff.contains("proxy_set_header X-Client-Verify \"\";"));
        assert!(!staff.contains("ssl_verify_client"));
        assert!(staff.contains(&format!("ssl_ciphers \"{FIPS_TLS12_CIPHERS}\";")));
        let proxied: Vec<&str> = staff.lines().filter(|l| l.contains("location") && !l.contains("return")).collect();
        assert_eq!(proxied, ["        location = /dashboard {", "        location = / {", "        location / {"]);
        let mut fd = FrontDoor::example();
        fd.staff = None;
        assert!(!render(&fd).contains("# Staff:"));
        fd.staff = Some(StaffListener { listen: fd.listen_addr, passwords: "relative.htpasswd".into() });
        assert!(matches!(fd.validate(), Err(FrontDoorError::BadValue { field: "staff.passwords", .. })));
    }

    #[test]
    fn runtime_paths_stay_under_the_prefix() {
        let c = render(&FrontDoor::example());
        for directive in [
            "pid",
            "lock_file",
            "client_body_temp_path",
            "proxy_temp_path",
            "fastcgi_temp_path",
            "uwsgi_temp_path",
            "scgi_temp_path",
        ] {
            let line = c.lines().find(|l| l.trim_start().starts_with(&format!("{directive} "))).unwrap();
            assert!(line.contains("\"/var/lib/rapdc/nginx/"), "{line}");
        }
    }

    #[test]
    fn bad_presets() {
        let fd = FrontDoor::example().tls11_only();
        let c = render(&fd);
        assert!(c.contains("ssl_protocols TLSv1.1;"));
        assert!(c.contains("@SECLEVEL=0"));
        assert!(!c.contains("Ciphersuites"));
        let c = render(&FrontDoor::example().chacha20_only());
        assert!(c.contains("ssl_conf_command Ciphersuites \"TLS_CHACHA20_POLY1305_SHA256\";"));
        assert!(c.contains("ssl_ciphers \"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305\";"));
    }

    #[test]
    fn quoting_and_validation() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        let mut fd = FrontDoor::example();
        fd.server_cert = "/etc/with space/\"q\".crt".into();
        fd.validate().unwrap();
        assert!(render(&fd).contains(r#"ssl_certificate "/etc/with space/\"q\".crt";"#));
        fd.server_cert = "/etc/x;\nuser nobody".into();
        assert!(matches!(fd.validate(), Err(FrontDoorError::BadValue { field: "server_cert", .. })));
        fd = FrontDoor::example();
        fd.access_log = "/var/log/$host.log".into();
        assert!(matches!(fd.validate(), Err(FrontDoorError::BadValue { field: "access_log", .. })));
        fd = FrontDoor::example();
        fd.client_ca = "relative/ca.pem".into();
        assert!(matches!(fd.validate(), Err(FrontDoorError::BadValue { field: "client_ca", .. })));
        fd = FrontDoor::example();
        fd.tls_protocols = " ".into();
        assert!(matches!(fd.validate(), Err(FrontDoorError::BadValue { field: "tls_protocols", .. })));
    }

    #[test]
    fn ipv6_listen() {
        let mut fd = FrontDoor::example();
        fd.listen_addr = "[::1]:8443".parse().unwrap();
        assert!(render(&fd).contains("listen [::1]:8443 ssl;"));
    }
}
