//! raphard: command line of the hardening checker.
//!
//! Exit codes: 0 no control fails (waived, not-evaluated and runtime controls do not
//! fail), 1 at least one control fails, 2 the check could not run (bad arguments,
//! unreadable tree, invalid waivers or policy).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use raphard::{Inputs, LiveOptions, Policy, Report, Waivers};

#[derive(Parser)]
#[command(name = "raphard", about = "Check rapbox's hardening controls on a root file system tree or the running box")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Common {
    /// JSON report to write.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// HTML report to write.
    #[arg(long)]
    report_html: Option<PathBuf>,
    /// Reviewed waivers (control id -> reason); every reason must be non-empty.
    #[arg(long)]
    waivers: Option<PathBuf>,
    /// Read the allow/deny lists and banner from this hardening/ directory instead of
    /// the copy compiled into raphard.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Print nothing but errors (the reports are still written).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Evaluate every offline control on a root file system tree (without booting it).
    Check {
        /// The root file system tree (e.g. the image's unpacked root partition).
        #[arg(long)]
        root: PathBuf,
        /// apt lists of the build (Packages files, plain/.lz4/.gz) for control 25;
        /// without it control 25 is not evaluated.
        #[arg(long)]
        apt_lists: Option<PathBuf>,
        /// The EFI system partition tree (loader.conf, loader entries) for controls 40, 45.
        #[arg(long)]
        esp: Option<PathBuf>,
        /// A file holding a kernel command line (repeatable) for control 45.
        #[arg(long)]
        cmdline: Vec<PathBuf>,
        /// The image's manifest.json: control 25 also checks the packages shipped outside
        /// the root's dpkg database (the boot loader).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Evaluate the run-time controls on this running system (inside the guest).
    CheckLive {
        /// An authorised remote-service session is up (net.ipv4.ip_forward may be 1).
        #[arg(long)]
        session_active: bool,
        /// A page of the web configuration interface to crawl (repeatable).
        #[arg(long)]
        web_url: Vec<String>,
        /// The web server's log directory: every request of the crawl must be logged there.
        #[arg(long, default_value = "/var/log/rapweb")]
        web_logs: PathBuf,
        /// The uplink interface (control 39); default: `[network.uplink] interface` of
        /// --rapd-config, else the interface of the IPv4 default route.
        #[arg(long)]
        uplink: Option<String>,
        /// rapd's configuration, read for the uplink interface.
        #[arg(long, default_value = "/etc/rapbox/rapd.toml")]
        rapd_config: PathBuf,
        /// Also run the offline checks on / (slower: walks the root file system).
        #[arg(long)]
        with_offline: bool,
        #[command(flatten)]
        common: Common,
    },
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("raphard: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn load(common: &Common) -> Result<(Policy, Waivers)> {
    let policy = match &common.policy {
        Some(dir) => Policy::load(dir)?,
        None => Policy::embedded(),
    };
    let waivers = match &common.waivers {
        Some(p) => Waivers::load(p)?,
        None => Waivers::none(),
    };
    Ok((policy, waivers))
}

fn emit(report: &Report, common: &Common) -> Result<bool> {
    if let Some(p) = &common.report_json {
        report.write_json(p).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &common.report_html {
        report.write_html(p).with_context(|| format!("writing {}", p.display()))?;
    }
    if !common.quiet {
        print!("{}", report.to_text());
    }
    Ok(report.passed())
}

fn run() -> Result<bool> {
    match Cli::parse().cmd {
        Cmd::Check { root, apt_lists, esp, cmdline, manifest, common } => {
            let (policy, waivers) = load(&common)?;
            let inputs = Inputs { apt_lists, esp, cmdlines: cmdline, manifest };
            let report = raphard::check_offline(&root, &policy, &inputs, &waivers)?;
            emit(&report, &common)
        }
        Cmd::CheckLive { session_active, web_url, web_logs, uplink, rapd_config, with_offline, common } => {
            let (policy, waivers) = load(&common)?;
            let opts = LiveOptions { session_active, web_urls: web_url, web_logs, uplink, rapd_config };
            let report = raphard::check_live(&policy, &opts, &waivers, with_offline);
            emit(&report, &common)
        }
    }
}
