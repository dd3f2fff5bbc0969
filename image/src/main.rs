//! rapimage: command line of the firmware image builder.
//!
//! Exit codes: 0 success, 1 any error (printed on standard error).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use rapimage::build::{self, BuildOptions};
use rapimage::provision::{self, Extras, Identity, Technician};
use rapimage::recipe::Recipe;

#[derive(Parser)]
#[command(name = "rapimage", about = "Build the rapbox firmware disk image from image/recipe.toml")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the disk image, kernel, initramfs, manifest and SHA256SUMS.
    Build {
        #[arg(long, default_value = "image/recipe.toml")]
        recipe: PathBuf,
        #[arg(long, default_value = "build/image")]
        out: PathBuf,
        /// Package cache (a second build with a full cache needs no network).
        #[arg(long, env = "RAPBOX_DEB_CACHE", default_value = "image/cache")]
        cache: PathBuf,
        /// Use PATH for the recipe's binary NAME (repeatable), e.g. rapd=target/release/rapd.
        #[arg(long = "binary", value_name = "NAME=PATH")]
        binaries: Vec<String>,
        /// Development image without the FIPS provider (rapd will refuse to start).
        #[arg(long)]
        without_fips: bool,
        /// Keep the root file system tree in <out>/work/root for offline checks.
        #[arg(long)]
        keep_root: bool,
    },
    /// Resolve the recipe against the mirrors and rewrite recipe.lock.
    Lock {
        #[arg(long, default_value = "image/recipe.toml")]
        recipe: PathBuf,
        #[arg(long, env = "RAPBOX_DEB_CACHE", default_value = "image/cache")]
        cache: PathBuf,
    },
    /// Refresh the apt lists of the recipe's mirrors in the cache (what the suite and its
    /// security suite offer now: hardening control 25 compares the image with them) and
    /// print the lists directory.
    Lists {
        #[arg(long, default_value = "image/recipe.toml")]
        recipe: PathBuf,
        #[arg(long, env = "RAPBOX_DEB_CACHE", default_value = "image/cache")]
        cache: PathBuf,
    },
    /// Write a box's certificate, key, CA and data-center URL into an image's data partition.
    Provision {
        #[arg(long, default_value = "build/image/rapbox.img")]
        image: PathBuf,
        #[arg(long, default_value = "build/image/manifest.json")]
        manifest: PathBuf,
        /// rapd configuration template with @DATACENTER_URL@.
        #[arg(long, default_value = "buildroot-overlay/rootfs/usr/share/rapbox/rapd.toml.in")]
        template: PathBuf,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Data-center batch endpoint, https://...
        #[arg(long)]
        url: String,
        /// A technician account, NAME:HASH (repeatable): NAME is tech-<lower-case letters,
        /// digits, dashes>, HASH a SHA-512 crypt hash (`mkpasswd -m sha-512 -R 65536`).
        #[arg(long = "technician", value_name = "NAME:HASH")]
        technicians: Vec<Technician>,
        /// The name in the remote syslog collector's TLS certificate (its address is
        /// `[network.uplink] syslog` in rapd.toml).
        #[arg(long, value_name = "NAME")]
        syslog_name: Option<String>,
        /// The vendor's manifest-signing public key (PEM), trusted for downloads.
        #[arg(long)]
        vendor_key: Option<PathBuf>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("rapimage: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Build { recipe, out, cache, binaries, without_fips, keep_root } => {
            let recipe = Recipe::load(&recipe)?;
            let mut map = BTreeMap::new();
            for b in binaries {
                let Some((name, path)) = b.split_once('=') else { bail!("--binary `{b}`: expected NAME=PATH") };
                if !recipe.binaries.iter().any(|rb| rb.name == name) {
                    bail!("--binary `{b}`: the recipe has no binary named `{name}`");
                }
                map.insert(name.to_string(), rapimage::cmd::absolute(&PathBuf::from(path)));
            }
            let opts = BuildOptions {
                out: rapimage::cmd::absolute(&out),
                cache: rapimage::cmd::absolute(&cache),
                binaries: map,
                fips: !without_fips,
                keep_root,
            };
            let image = build::build(&recipe, &opts).context("build failed")?;
            println!("{}", image.display());
        }
        Cmd::Lock { recipe, cache } => {
            let recipe = Recipe::load(&recipe)?;
            build::lock(&recipe, &rapimage::cmd::absolute(&cache)).context("lock failed")?;
        }
        Cmd::Lists { recipe, cache } => {
            let recipe = Recipe::load(&recipe)?;
            let cache = rapimage::cache::Cache::new(rapimage::cmd::absolute(&cache));
            cache.update(&recipe.debian.mirrors).context("refreshing the apt lists")?;
            println!("{}", cache.lists().display());
        }
        Cmd::Provision { image, manifest, template, ca, cert, key, url, technicians, syslog_name, vendor_key } => {
            let extras = Extras { technicians, syslog_name };
            provision::provision_with(&image, &manifest, &template, &Identity { ca, cert, key, url }, &extras)?;
            if let Some(k) = vendor_key {
                provision::add_files(&image, &manifest, &[(&k, provision::VENDOR_KEY_DEST, "0100644")])?;
            }
            println!("provisioned {}", image.display());
        }
    }
    Ok(())
}
