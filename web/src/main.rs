//! `rapweb`: the local configuration pages of the box (docs/pages.md).
//!
//! A small synchronous HTTPS server (a thread per connection, at most [`MAX_CONNECTIONS`]
//! at once), OpenSSL through the FIPS provider only (the same gate as rapd: it refuses to
//! start otherwise, exit 3), listening only on the box addresses `[pages] interfaces`
//! allow (the lab-side instrument ports by default, never the uplink unless named). It
//! is a client of rapd's control socket like rapctl: it reads the status, and changed
//! settings are checked and applied by rapd (`config_apply`). No CGI, no files served but its own style sheet. Every request
//! goes to the access log, every refusal and failure to the error log; logins, failed
//! logins and logouts to the audit trail (through rapd).
//!
//! Exit codes: 0 the pages are disabled in the configuration (nothing to serve), 1
//! runtime failure, 2 bad configuration or arguments, 3 FIPS gate refused, 5 cannot listen,
//! 75 `[pages]` changed in the configuration in force (systemd starts it again).

mod auth;
mod http;
mod pages;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream, SslVersion};
use rapbox::audit::Outcome;
use rapbox::config::Config;
use rapbox::control::{self, Request};
use rapbox::reconfig::{ApplyArgs, ApplyOutcome};
use rapbox::uplink_settings::{self, UplinkSettings};

use crate::auth::{Auth, Login};
use crate::http::{HttpError, Response};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
const COOKIE: &str = "rapweb_session";

#[derive(Parser)]
#[command(version, about = "rapbox local configuration pages (HTTPS, FIPS)")]
struct Args {
    /// rapd's control socket: the configuration comes from rapd (`config_show`); rapweb
    /// cannot read rapd's files (they are rapd's, beside the box's identity).
    #[arg(long, default_value = "/run/rapd/control.sock")]
    socket: PathBuf,
    /// The pages' TLS certificate and key (PEM); made once, self-signed, when missing.
    #[arg(long, default_value = "/data/rapweb/pages.crt")]
    cert: PathBuf,
    #[arg(long, default_value = "/data/rapweb/pages.key")]
    key: PathBuf,
    /// The shadow file technicians' hashes are read from.
    #[arg(long, default_value = "/etc/shadow")]
    shadow: PathBuf,
}

struct Logs {
    access: Mutex<std::fs::File>,
    error: Mutex<std::fs::File>,
}

impl Logs {
    fn open(dir: &Path) -> std::io::Result<Logs> {
        std::fs::create_dir_all(dir)?;
        let open = |n: &str| std::fs::OpenOptions::new().create(true).append(true).open(dir.join(n));
        Ok(Logs { access: Mutex::new(open("access.log")?), error: Mutex::new(open("error.log")?) })
    }
    fn line(f: &Mutex<std::fs::File>, l: String) {
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.write_all(l.as_bytes());
    }
    fn error(&self, client: &SocketAddr, msg: &str) {
        Self::line(&self.error, format!("{} [error] client {client}: {}\n", now(), msg.replace('\n', " ")));
    }
}

struct App {
    cfg: Config,
    auth: Auth,
    logs: Logs,
    shadow: PathBuf,
}

fn now() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    rapbox::audit::chain::format_time(ms)
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    std::process::exit(run(args));
}

/// How long rapweb waits at start for rapd to answer (it starts after rapd is ready; a
/// rapd restarting meanwhile answers within this).
const RAPD_WAIT: Duration = Duration::from_secs(60);

/// The configuration in force, as rapd answers it (`config_show`, proxy credentials
/// hidden: rapweb only shows them).
fn config_from_rapd(socket: &Path) -> Result<Config, (i32, String)> {
    let end = Instant::now() + RAPD_WAIT;
    let show = loop {
        match control::request(socket, &Request::ConfigShow) {
            Ok(control::Response { ok: true, config_show: Some(sh), .. }) => break sh,
            Ok(r) => return Err((1, format!("rapd refused config_show: {}", r.error.unwrap_or_default()))),
            Err(e) if Instant::now() > end => {
                return Err((1, format!("rapd does not answer after {} s: {e}", RAPD_WAIT.as_secs())))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    Config::parse(&show.path, &show.document).map_err(|e| (2, e.to_string()))
}

fn run(args: Args) -> i32 {
    let mut cfg = match config_from_rapd(&args.socket) {
        Ok(c) => c,
        Err((code, e)) => {
            eprintln!("rapweb: {e}");
            return code;
        }
    };
    cfg.control.socket = args.socket.clone();
    if !cfg.pages.enabled {
        eprintln!("rapweb: the configuration pages are disabled ([pages] enabled = false in {})", cfg.path.display());
        return 0;
    }
    let fips = match rapbox::fips::activate(&cfg.fips.openssl_conf)
        .and_then(|()| rapbox::fips::check(&cfg.fips.openssl_conf))
    {
        Ok(st) => st,
        Err(e) => {
            eprintln!("rapweb: FIPS gate refused, not listening: {e}");
            return 3;
        }
    };
    let logs = match Logs::open(&cfg.pages.log_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rapweb: logs in {}: {e}", cfg.pages.log_dir.display());
            return 1;
        }
    };
    let addrs: Vec<SocketAddr> = cfg.pages.listen.iter().map(|(_, a)| SocketAddr::from((*a, cfg.pages.port))).collect();
    if let Err(e) = ensure_certificate(&args.cert, &args.key, &cfg) {
        eprintln!("rapweb: {e}");
        return 1;
    }
    let acceptor = match acceptor(&args.cert, &args.key) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("rapweb: TLS: {e}");
            return 1;
        }
    };
    let mut listeners = Vec::new();
    for a in &addrs {
        match listen(a) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("rapweb: cannot listen on {a}: {e}");
                return 5;
            }
        }
    }
    eprintln!(
        "rapweb: FIPS gate passed (providers {:?}); serving https://{} (access and error logs in {})",
        fips.providers,
        addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", https://"),
        cfg.pages.log_dir.display()
    );
    let app = Arc::new(App { cfg, auth: Auth::default(), logs, shadow: args.shadow });
    {
        let app = app.clone();
        std::thread::spawn(move || watch_config(&app));
    }
    let active = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for l in listeners {
        let (app, acceptor, active) = (app.clone(), acceptor.clone(), active.clone());
        handles.push(std::thread::spawn(move || accept_loop(l, app, acceptor, active)));
    }
    for h in handles {
        let _ = h.join();
    }
    1
}

/// How often rapweb asks rapd whether `[pages]` changed.
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// The exit code of a restart for a changed `[pages]` (systemd starts rapweb again).
const EXIT_RESTART: i32 = 75;

/// Exits [`EXIT_RESTART`] when the configuration in force (a `config_apply` of anyone's)
/// says other things about the pages than the one rapweb started with: another port,
/// other interfaces or box addresses to listen on, other log directory, or disabled.
/// systemd starts rapweb again (`Restart=on-failure`), with the new configuration.
fn watch_config(app: &App) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let Ok(control::Response { ok: true, config_show: Some(sh), .. }) =
            control::request(&app.cfg.control.socket, &Request::ConfigShow)
        else {
            continue;
        };
        let Ok(now) = Config::parse(&sh.path, &sh.document) else { continue };
        if now.pages != app.cfg.pages {
            eprintln!(
                "rapweb: [pages] changed in the configuration in force (now: enabled {}, port {}, {}): starting again",
                now.pages.enabled,
                now.pages.port,
                now.pages.listen.iter().map(|(i, a)| format!("{i} {a}")).collect::<Vec<_>>().join(", ")
            );
            std::process::exit(EXIT_RESTART);
        }
    }
}

/// A listening socket on `a` with `IP_FREEBIND`: the box address is rapd's to assign
/// (at its start, and again when a reconfiguration or a restart of rapd moves the
/// instrument ports), so the socket does not depend on the address being there at this
/// moment; it receives whenever the address is assigned, and only then.
fn listen(a: &SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let err = std::io::Error::last_os_error;
    let family = if a.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a descriptor this function owns (the listener below
    // closes it on every path).
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(err());
        }
        let l = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let opt = |level, name| {
            let p = &one as *const libc::c_int as *const libc::c_void;
            if libc::setsockopt(fd, level, name, p, std::mem::size_of::<libc::c_int>() as libc::socklen_t) < 0 {
                return Err(err());
            }
            Ok(())
        };
        opt(libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
        opt(libc::IPPROTO_IP, libc::IP_FREEBIND)?;
        let rc = match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                    sin_zero: [0; 8],
                };
                libc::bind(
                    fd,
                    &sin as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: v6.scope_id(),
                };
                libc::bind(
                    fd,
                    &sin6 as *const libc::sockaddr_in6 as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        };
        if rc < 0 || libc::listen(fd, 128) < 0 {
            return Err(err());
        }
        Ok(l)
    }
}

fn accept_loop(l: TcpListener, app: Arc<App>, acceptor: Arc<SslAcceptor>, active: Arc<AtomicUsize>) {
    loop {
        let (s, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("rapweb: accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        while active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            std::thread::sleep(Duration::from_millis(20));
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (app, acceptor, active2) = (app.clone(), acceptor.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("page".into()).stack_size(512 * 1024).spawn(move || {
            serve(s, peer, &app, &acceptor);
            active2.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve(s: TcpStream, peer: SocketAddr, app: &App, acceptor: &SslAcceptor) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let started = Instant::now();
    let mut tls: SslStream<TcpStream> = match acceptor.accept(s) {
        Ok(t) => t,
        Err(e) => {
            app.logs.error(&peer, &format!("TLS handshake failed: {e}"));
            return;
        }
    };
    let (req, resp, user) = match http::read_request(&mut tls) {
        Ok(req) => {
            let (resp, user) = route(app, &req, &peer);
            (req, resp, user)
        }
        Err(HttpError::Status(code, why)) => {
            app.logs.error(&peer, &format!("request refused ({code}): {why}"));
            (http::Request::default(), Response::html(code, pages::error_page(code, &why)), None)
        }
        Err(HttpError::Io(e)) => {
            app.logs.error(&peer, &format!("reading the request: {e}"));
            return;
        }
    };
    let written = match http::write_response(&mut tls, &resp) {
        Ok(n) => n,
        Err(e) => {
            app.logs.error(&peer, &format!("writing the response: {e}"));
            0
        }
    };
    let _ = tls.shutdown();
    if resp.status >= 400 && resp.status != 401 {
        app.logs.error(&peer, &format!("{} {} answered {}", req.method, req.path, resp.status));
    }
    Logs::line(
        &app.logs.access,
        format!(
            "{} - {} [{}] \"{} {}{} {}\" {} {} {}ms \"{}\" {}\n",
            peer.ip(),
            user.as_deref().unwrap_or("-"),
            now(),
            req.method,
            req.path,
            if req.query.is_empty() { String::new() } else { format!("?{}", req.query) },
            req.version,
            resp.status,
            written,
            started.elapsed().as_millis(),
            req.header("user-agent").unwrap_or("-").replace('"', "'"),
            tls.ssl().version_str()
        ),
    );
}

/// Sends a request to rapd.
fn ask(app: &App, req: &Request) -> Result<control::Response, String> {
    match control::request_with_timeout(&app.cfg.control.socket, req, Duration::from_secs(60)) {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => Err(r.error.unwrap_or_default()),
        Err(e) => Err(format!("rapd does not answer: {e}")),
    }
}

fn web_event(app: &App, peer: &SocketAddr, action: &str, user: &str, outcome: Outcome, detail: serde_json::Value) {
    let mut detail = detail;
    detail["client"] = peer.ip().to_string().into();
    let r = ask(app, &Request::WebEvent { action: action.into(), user: user.into(), outcome, detail });
    if let Err(e) = r {
        app.logs.error(peer, &format!("audit of {action} for {user} failed: {e}"));
    }
}

fn session_cookie(token: &str, max_age: u64) -> String {
    format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

/// The answer to one request, and the logged-in user (for the access log).
fn route(app: &App, req: &http::Request, peer: &SocketAddr) -> (Response, Option<String>) {
    let cookie = req.cookie(COOKIE);
    let session = app.auth.session(cookie.as_deref());
    let user = session.as_ref().map(|s| s.user.clone());
    let resp = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/style.css") => Response {
            status: 200,
            headers: vec![("Content-Type".into(), "text/css".into())],
            body: pages::CSS.as_bytes().to_vec(),
        },
        ("GET", "/login") => Response::html(200, pages::page("Log in", None, &pages::login_form(None))),
        ("POST", "/login") => login(app, req, peer),
        (_, "/style.css" | "/login") => method_not_allowed(),
        (method, path) => match &session {
            None if method == "GET" && matches!(path, "/" | "/status" | "/ports" | "/uplink") => {
                Response::redirect("/login")
            }
            None if matches!(path, "/" | "/status" | "/ports" | "/uplink" | "/logout") => Response::html(
                401,
                pages::page("Log in", None, &pages::login_form(Some("Your session has ended: log in again."))),
            ),
            None => Response::html(404, pages::error_page(404, "There is no such page.")),
            Some(s) => {
                if method == "POST" && form_value(req, "csrf").as_deref() != Some(s.csrf.as_str()) {
                    app.logs.error(peer, &format!("{method} {path} by {}: missing or wrong CSRF token", s.user));
                    Response::html(403, pages::error_page(403, "The form is stale: reload the page and try again."))
                } else {
                    logged_in(app, req, peer, s, cookie.as_deref().unwrap_or(""))
                }
            }
        },
    };
    (resp, user)
}

fn method_not_allowed() -> Response {
    Response::html(405, pages::error_page(405, "This method is not allowed here.")).with_header("Allow", "GET, POST")
}

fn form_value(req: &http::Request, k: &str) -> Option<String> {
    req.form().into_iter().find(|(n, _)| n == k).map(|(_, v)| v)
}

fn login(app: &App, req: &http::Request, peer: &SocketAddr) -> Response {
    let user = form_value(req, "user").unwrap_or_default();
    let password = form_value(req, "password").unwrap_or_default();
    let shadow = match std::fs::read_to_string(&app.shadow) {
        Ok(s) => s,
        Err(e) => {
            app.logs.error(peer, &format!("cannot read {}: {e}", app.shadow.display()));
            return Response::html(
                503,
                pages::error_page(503, "Logins are not possible right now (see the error log)."),
            );
        }
    };
    match app.auth.login(&user, &password, &shadow) {
        Login::Ok => {
            web_event(app, peer, "web.login", &user, Outcome::Success, serde_json::json!({}));
            let token = app.auth.open(&user);
            Response::redirect("/status").with_header("Set-Cookie", &session_cookie(&token, auth::IDLE.as_secs()))
        }
        Login::Refused => {
            app.logs.error(peer, &format!("login refused for `{}`", user.chars().take(40).collect::<String>()));
            web_event(
                app,
                peer,
                "web.login",
                &user,
                Outcome::Denied,
                serde_json::json!({ "reason": "wrong user name or password" }),
            );
            Response::html(
                401,
                pages::page("Log in", None, &pages::login_form(Some("Login failed: wrong user name or password."))),
            )
        }
        Login::Locked { remaining } => {
            app.logs.error(peer, &format!("login refused for `{}`: locked", user.chars().take(40).collect::<String>()));
            web_event(
                app,
                peer,
                "web.login",
                &user,
                Outcome::Denied,
                serde_json::json!({ "reason": "locked after too many failed logins", "remaining_s": remaining.as_secs() }),
            );
            Response::html(
                429,
                pages::page(
                    "Log in",
                    None,
                    &pages::login_form(Some(&format!(
                        "Too many failed logins: this account cannot log in to the pages for {} more minutes.",
                        remaining.as_secs().div_ceil(60)
                    ))),
                ),
            )
        }
    }
}

fn logged_in(app: &App, req: &http::Request, peer: &SocketAddr, s: &auth::Session, cookie: &str) -> Response {
    let me = Some((s.user.as_str(), s.csrf.as_str()));
    let status =
        || ask(app, &Request::Status).and_then(|r| r.status.ok_or_else(|| "rapd answered without a status".into()));
    let unavailable = |e: String| {
        app.logs.error(peer, &e);
        Response::html(
            502,
            pages::page("rapd is not answering", me, &format!("<p class=\"err\">{}</p>", pages::esc(&e))),
        )
    };
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/") => Response::redirect("/status"),
        ("GET", "/status") => match status() {
            Ok(st) => Response::html(200, pages::page("Status", me, &pages::status(&st))),
            Err(e) => unavailable(e),
        },
        ("GET", "/ports") => match status() {
            Ok(st) => Response::html(200, pages::page("Instrument ports", me, &pages::ports(&st))),
            Err(e) => unavailable(e),
        },
        ("GET", "/uplink") => match in_force(app) {
            Ok((_, form)) => {
                Response::html(200, pages::page("Uplink and proxy", me, &pages::uplink(&form, &s.csrf, None)))
            }
            Err(e) => unavailable(e),
        },
        ("POST", "/uplink") => {
            let f = |k: &str| form_value(req, k).unwrap_or_default();
            let form = pages::UplinkForm {
                addressing: f("addressing"),
                address: f("address"),
                gateway: f("gateway"),
                dns: f("dns"),
                proxy: f("proxy"),
            };
            let dry_run = f("action") != "apply";
            let (doc, now) = match in_force(app) {
                Ok(x) => x,
                Err(e) => return unavailable(e),
            };
            let (status, message) = change_uplink(app, &s.user, &doc, &now, &form, dry_run);
            if status != 200 {
                app.logs.error(peer, &format!("uplink settings of {} refused: {}", s.user, message.1));
            }
            // After an apply the form shows the configuration now in force.
            let shown = match (status, dry_run) {
                (200, false) => in_force(app).map(|x| x.1).unwrap_or(form),
                _ => form,
            };
            Response::html(
                status,
                pages::page("Uplink and proxy", me, &pages::uplink(&shown, &s.csrf, Some((message.0, &message.1)))),
            )
        }
        ("POST", "/logout") => {
            app.auth.close(cookie);
            web_event(app, peer, "web.logout", &s.user, Outcome::Success, serde_json::json!({}));
            Response::redirect("/login").with_header("Set-Cookie", &session_cookie("", 0))
        }
        (_, "/" | "/status" | "/ports" | "/uplink" | "/logout") => method_not_allowed(),
        _ => Response::html(404, pages::page("Not found", me, "<p class=\"err\">There is no such page.</p>")),
    }
}

/// The configuration document in force (from rapd: `config_show`, a proxy's credentials
/// hidden) and its uplink settings as the form shows them.
fn in_force(app: &App) -> Result<(String, pages::UplinkForm), String> {
    let show = ask(app, &Request::ConfigShow)?.config_show.ok_or("rapd answered without its configuration")?;
    let c = uplink_settings::current(&show.document)?;
    let form = pages::UplinkForm {
        addressing: c.addressing.unwrap_or_default(),
        address: c.address.unwrap_or_default(),
        gateway: c.gateway.unwrap_or_default(),
        dns: c.dns.unwrap_or_default().join(", "),
        proxy: c.proxy.unwrap_or_default(),
    };
    Ok((show.document, form))
}

/// Checks (`dry_run`) or applies the form's changes through rapd's `config_apply`, the
/// one apply of the box (the validation of `rapctl network` and `rapctl config`): the
/// HTTP status and (success, message) for the page.
fn change_uplink(
    app: &App,
    user: &str,
    doc: &str,
    now: &pages::UplinkForm,
    form: &pages::UplinkForm,
    dry_run: bool,
) -> (u16, (bool, String)) {
    let settings = |f: &pages::UplinkForm| UplinkSettings {
        addressing: Some(f.addressing.clone()),
        address: Some(f.address.clone()),
        gateway: Some(f.gateway.clone()),
        dns: Some(f.dns.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect()),
        proxy: Some(f.proxy.clone()),
    };
    let mut changes = settings(form).changes_from(&settings(now));
    if now.addressing.is_empty() {
        // rapd does not manage the uplink's addressing here: only the proxy is the box's.
        changes = UplinkSettings { proxy: changes.proxy, ..UplinkSettings::default() };
    }
    let keys = match changes.keys(doc) {
        Ok(k) => k,
        Err(e) => return (502, (false, e)),
    };
    if keys.is_empty() {
        return (200, (true, "Nothing to change: these are the settings in force.".into()));
    }
    let args = ApplyArgs {
        keys: Some(keys),
        dry_run,
        rollback: true,
        on_behalf_of: Some(user.to_owned()),
        ..ApplyArgs::default()
    };
    let rep = match control::request_with_timeout(&app.cfg.control.socket, &Request::ConfigApply(args), APPLY_TIMEOUT) {
        Ok(control::Response { ok: true, config_apply: Some(rep), .. }) => rep,
        Ok(r) => return (502, (false, format!("rapd refused the request: {}", r.error.unwrap_or_default()))),
        Err(e) => return (502, (false, format!("rapd does not answer: {e}"))),
    };
    let errors = || rep.errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; ");
    let changed = rep.changed_keys.join(", ");
    match rep.outcome {
        ApplyOutcome::Valid => (200, (true, format!("Valid (checked by rapd, not applied): {changed}"))),
        ApplyOutcome::Unchanged => (200, (true, "Nothing to change: these are the settings in force.".into())),
        ApplyOutcome::Applied => {
            let trial = rep.trial.as_ref().map(|t| {
                format!(
                    "; on trial: rolled back unless the data center acknowledges a batch within {} s",
                    t.rollback_after_s
                )
            });
            (200, (true, format!("Applied: {changed}{}", trial.unwrap_or_default())))
        }
        ApplyOutcome::Refused => (422, (false, format!("Refused, nothing was changed: {}", errors()))),
        ApplyOutcome::Failed => {
            (500, (false, format!("Failed, the configuration in force was put back: {}", errors())))
        }
    }
}

/// An apply can wait for the uplink's batch in flight (as `rapctl config apply` does).
const APPLY_TIMEOUT: Duration = Duration::from_secs(180);

/// The TLS server: FIPS provider (the process's default properties after the gate),
/// TLS 1.2+, AES-GCM suites, NIST curves: the uplink's settings.
fn acceptor(cert: &Path, key: &Path) -> Result<SslAcceptor, openssl::error::ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_cipher_list(rapbox::tls::TLS12_CIPHERS)?;
    b.set_ciphersuites(rapbox::tls::TLS13_SUITES)?;
    b.set_groups_list(rapbox::tls::GROUPS)?;
    b.set_certificate_chain_file(cert)?;
    b.set_private_key_file(key, SslFiletype::PEM)?;
    b.check_private_key()?;
    Ok(b.build())
}

/// A self-signed ECDSA P-256 certificate for the pages' addresses, made once.
fn ensure_certificate(cert: &Path, key: &Path, cfg: &Config) -> Result<(), String> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
    use openssl::x509::{X509NameBuilder, X509};
    if cert.is_file() && key.is_file() {
        return Ok(());
    }
    let e = |m: &str| {
        let m = m.to_owned();
        move |err: openssl::error::ErrorStack| format!("making the pages' certificate: {m}: {err}")
    };
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(e("curve"))?;
    let pkey = PKey::from_ec_key(EcKey::generate(&group).map_err(e("key"))?).map_err(e("key"))?;
    let mut name = X509NameBuilder::new().map_err(e("name"))?;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "rapbox".into());
    name.append_entry_by_nid(Nid::COMMONNAME, &format!("{} configuration pages", host.trim())).map_err(e("name"))?;
    let name = name.build();
    let mut b = X509::builder().map_err(e("builder"))?;
    b.set_version(2).map_err(e("version"))?;
    let mut serial = BigNum::new().map_err(e("serial"))?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false).map_err(e("serial"))?;
    let serial = serial.to_asn1_integer().map_err(e("serial"))?;
    b.set_serial_number(&serial).map_err(e("serial"))?;
    b.set_subject_name(&name).map_err(e("subject"))?;
    b.set_issuer_name(&name).map_err(e("issuer"))?;
    b.set_pubkey(&pkey).map_err(e("key"))?;
    let (from, until) =
        (Asn1Time::days_from_now(0).map_err(e("validity"))?, Asn1Time::days_from_now(3650).map_err(e("validity"))?);
    b.set_not_before(&from).map_err(e("validity"))?;
    b.set_not_after(&until).map_err(e("validity"))?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(e("ext"))?).map_err(e("ext"))?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build().map_err(e("ext"))?).map_err(e("ext"))?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build().map_err(e("ext"))?).map_err(e("ext"))?;
    let mut san = SubjectAlternativeName::new();
    for (_, a) in &cfg.pages.listen {
        san.ip(&a.to_string());
    }
    let san = san.build(&b.x509v3_context(None, None)).map_err(e("SAN"))?;
    b.append_extension(san).map_err(e("ext"))?;
    b.sign(&pkey, MessageDigest::sha256()).map_err(e("sign"))?;
    let x = b.build();
    if let Some(d) = cert.parent() {
        std::fs::create_dir_all(d).map_err(|err| format!("{}: {err}", d.display()))?;
    }
    let pem_key = pkey.private_key_to_pem_pkcs8().map_err(e("key PEM"))?;
    let tmp = key.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|err| format!("{}: {err}", tmp.display()))?;
        f.write_all(&pem_key).map_err(|err| format!("{}: {err}", tmp.display()))?;
    }
    std::fs::rename(&tmp, key).map_err(|err| format!("{}: {err}", key.display()))?;
    std::fs::write(cert, x.to_pem().map_err(e("PEM"))?).map_err(|err| format!("{}: {err}", cert.display()))?;
    let fp = x.digest(MessageDigest::sha256()).map_err(e("fingerprint"))?;
    let hex: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
    eprintln!("rapweb: made the pages' certificate {} (SHA-256 fingerprint {})", cert.display(), hex.join(":"));
    Ok(())
}
