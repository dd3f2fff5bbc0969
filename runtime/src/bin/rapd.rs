//! `rapd`: the rapbox gateway daemon. See `rapbox::daemon` and `docs/operations.md`.

use std::path::PathBuf;

use clap::Parser;

/// rapbox gateway daemon: instrument reports in, durable queue, FIPS mutual-TLS uplink out.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = rapbox::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Validate the configuration and exit (0 when valid, 2 otherwise).
    #[arg(long)]
    check_config: bool,
}

fn main() {
    // Few threads allocate much: two malloc arenas keep the resident set small (glibc would
    // otherwise create up to eight per core, one per busy thread).
    // SAFETY: called before any other thread exists; mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // A fixed threshold: batch-sized buffers are always mapped and returned when freed
        // (glibc would otherwise raise the threshold and keep them in the heap).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { rapbox::exit::CONFIG } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if args.check_config {
        match rapbox::config::Config::load(&args.config) {
            Ok(c) => {
                println!("{}: valid ({} instruments)", c.path.display(), c.instruments.len());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("rapd: {e}");
                std::process::exit(rapbox::exit::CONFIG);
            }
        }
    }
    std::process::exit(rapbox::daemon::run(&args.config));
}
