//! `rapdc`: runs the reference data center's backend, or renders its nginx front door.
//!
//! ```text
//! rapdc serve --listen 127.0.0.1:8080 --db /var/lib/rapdc/dc.sqlite [--rules /etc/rapdc/rules]
//! rapdc check-rules /etc/rapdc/rules
//! rapdc nginx-conf --listen 0.0.0.0:443 --server-cert C --server-key K --client-ca CA \
//!                  --backend-port 8080 --prefix /var/lib/rapdc/nginx \
//!                  [--staff-listen 0.0.0.0:8443 --staff-passwords /etc/rapdc/staff.htpasswd]
//! rapdc sign-manifest --file reagent.dat --key vendor.key --category reagent --target DXI-0001 \
//!                  --out reagent.dat.download.json
//! ```
//!
//! Exit codes: 0 success, 1 runtime error (printed on stderr), 2 bad command line.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rapdc::frontdoor::StaffListener;
use rapdc::frontdoor::{self, FrontDoor};
use rapdc::http::{Server, ServerConfig, DEFAULT_MAX_BODY_BYTES, DEFAULT_WORKERS};
use rapdc::rules::{self, RuleSet};
use rapdc::store::Store;

#[derive(Debug, Parser)]
#[command(name = "rapdc", version, about = "The rapbox reference data center")]
struct Cli {
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs the backend (plain HTTP on loopback, behind the nginx front door).
    Serve {
        /// Loopback address to listen on; port 0 picks one (printed on stdout).
        #[arg(long)]
        listen: SocketAddr,
        /// SQLite database file (created if missing).
        #[arg(long)]
        db: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = DEFAULT_WORKERS)]
        workers: usize,
        /// Largest compressed batch body accepted (larger: 413).
        #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
        max_body_bytes: usize,
        /// Trigger rules: a TOML file or a directory of them; repeatable.
        #[arg(long, value_name = "PATH")]
        rules: Vec<PathBuf>,
        /// Seconds between the trigger engine's clock ticks (absence checks).
        #[arg(long, default_value_t = 5.0, value_name = "SECS")]
        tick: f64,
    },
    /// Loads and validates trigger rules, prints them and exits (1 with the first error).
    CheckRules {
        /// A TOML file or a directory of them; repeatable.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Writes the nginx front door config to PREFIX/nginx.conf and prints how to run it.
    NginxConf {
        /// Address nginx listens on for boxes.
        #[arg(long)]
        listen: SocketAddr,
        /// Server certificate chain (PEM).
        #[arg(long)]
        server_cert: PathBuf,
        /// Server private key (PEM).
        #[arg(long)]
        server_key: PathBuf,
        /// CA of the box certificates (PEM).
        #[arg(long)]
        client_ca: PathBuf,
        /// Port of the backend on 127.0.0.1.
        #[arg(long)]
        backend_port: u16,
        /// nginx prefix directory (pid, temp files, the config).
        #[arg(long)]
        prefix: PathBuf,
        /// Access log (default PREFIX/access.log).
        #[arg(long)]
        access_log: Option<PathBuf>,
        /// Error log (default PREFIX/error.log).
        #[arg(long)]
        error_log: Option<PathBuf>,
        /// Print the config on stdout instead of writing it.
        #[arg(long)]
        print: bool,
        /// Address of the staff listener (HTTPS, Basic authentication) serving the dashboard.
        #[arg(long, requires = "staff_passwords")]
        staff_listen: Option<SocketAddr>,
        /// Password file of the staff listener (`user:{SHA-512 crypt}` lines, `openssl passwd -6`).
        #[arg(long, requires = "staff_listen")]
        staff_passwords: Option<PathBuf>,
    },
    /// Writes a download manifest for FILE, signed with the vendor key: the `download`
    /// command's arguments ({"manifest": ..., "signature": ...}) as JSON, plus the manifest's
    /// exact bytes and the raw signature beside it (`.manifest.json`, `.manifest.sig`).
    SignManifest {
        /// The file to describe.
        #[arg(long)]
        file: PathBuf,
        /// The vendor's private signing key (PEM; ECDSA P-256 or RSA-3072).
        #[arg(long)]
        key: PathBuf,
        /// software, database, help, reagent, settings or document.
        #[arg(long)]
        category: String,
        /// A target instrument serial; repeatable.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// The file's name on the instrument [default: FILE's name].
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Where the command arguments go (the manifest and signature files beside it).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_level);
    if let Err(e) = run(cli.command) {
        eprintln!("rapdc: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve { listen, db, workers, max_body_bytes, rules, tick } => {
            let rules = RuleSet::load(&rules)?;
            let tick_interval = std::time::Duration::try_from_secs_f64(tick)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--tick {tick}: not a positive number of seconds"))?;
            log::info!("{} trigger rules loaded: {:?}", rules.len(), rules::count_by_kind(&rules));
            let store = Store::open(&db).with_context(|| format!("opening store {}", db.display()))?;
            let config = ServerConfig { workers, max_body_bytes, rules, tick_interval, ..ServerConfig::new(listen) };
            let server = Server::start(config, store)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "rapdc listening on {}", server.url())?;
            out.flush()?;
            drop(out);
            server.wait();
            Ok(())
        }
        Cmd::CheckRules { paths } => {
            let set = RuleSet::load(&paths)?;
            for r in set.rules() {
                println!("{} ({}, {}): {}", r.name, r.condition.kind_name(), r.severity.name(), r.condition.describe());
            }
            println!("{} rules OK", set.len());
            Ok(())
        }
        Cmd::NginxConf {
            listen,
            server_cert,
            server_key,
            client_ca,
            backend_port,
            prefix,
            access_log,
            error_log,
            print,
            staff_listen,
            staff_passwords,
        } => {
            let abs = |p: PathBuf| std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()));
            let mut fd = FrontDoor::new(
                listen,
                abs(server_cert)?,
                abs(server_key)?,
                abs(client_ca)?,
                backend_port,
                abs(prefix)?,
            );
            if let Some(p) = access_log {
                fd.access_log = abs(p)?;
            }
            if let Some(p) = error_log {
                fd.error_log = abs(p)?;
            }
            if let (Some(listen), Some(passwords)) = (staff_listen, staff_passwords) {
                fd.staff = Some(StaffListener { listen, passwords: abs(passwords)? });
            }
            if print {
                fd.validate()?;
                print!("{}", frontdoor::render(&fd));
                return Ok(());
            }
            let path = fd.write_config()?;
            println!("wrote {}", path.display());
            println!("run: nginx -c {} -p {} -g 'daemon off;'", path.display(), fd.prefix_dir.display());
            Ok(())
        }
        Cmd::SignManifest { file, key, category, targets, name, description, out } => {
            let content = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let category = rapwire::transfer::Category::parse(&category).with_context(|| {
                format!("category {category:?} is not one of software, database, help, reagent, settings, document")
            })?;
            let name = match name {
                Some(n) => n,
                None => file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            };
            let key = rapdc::signing::load_key(&key)?;
            let m = rapdc::signing::manifest_for(&content, &name, category, &targets, &description);
            let args = rapdc::signing::download_args(&key, &m)?;
            let sig = rapwire::transfer::base64::decode(&args.signature).map_err(anyhow::Error::msg)?;
            let with = |ext: &str| {
                let mut p = out.as_os_str().to_owned();
                p.push(ext);
                PathBuf::from(p)
            };
            std::fs::write(with(".manifest.json"), args.manifest.as_bytes())?;
            std::fs::write(with(".manifest.sig"), &sig)?;
            std::fs::write(&out, serde_json::to_vec_pretty(&args)?)?;
            println!(
                "{} ({} bytes, SHA-256 {}) for {}: {}",
                m.name,
                m.size,
                m.sha256,
                targets.join(", "),
                out.display()
            );
            Ok(())
        }
    }
}

/// Log records on stderr: `<unix time> <LEVEL> <target>: <message>`.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let _ = writeln!(
                std::io::stderr().lock(),
                "{}.{:03} {} {}: {}",
                t.as_secs(),
                t.subsec_millis(),
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

fn init_logging(level: log::LevelFilter) {
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
