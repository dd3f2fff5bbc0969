//! Logging through the `log` facade: to syslog on the box, to stderr in tests.

use std::io::Write;

use crate::config::{LogConfig, LogTarget};

struct Stderr {
    level: log::LevelFilter,
}

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let _ = writeln!(std::io::stderr().lock(), "rapd[{}]: {}", r.level().as_str().to_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Installs the logger chosen by the configuration; falls back to stderr if syslog is
/// unreachable (and says so).
pub fn init(cfg: &LogConfig) {
    log::set_max_level(cfg.level);
    if cfg.target == LogTarget::Syslog {
        let fmt = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "rapd".into(),
            pid: std::process::id(),
        };
        match syslog::unix(fmt) {
            Ok(l) => {
                if log::set_boxed_logger(Box::new(syslog::BasicLogger::new(l))).is_ok() {
                    return;
                }
            }
            Err(e) => eprintln!("rapd: syslog unavailable ({e}); logging to stderr"),
        }
    }
    let _ = log::set_boxed_logger(Box::new(Stderr { level: cfg.level }));
}

/// A stderr logger for early start-up, before the configuration is read.
pub fn init_early() {
    log::set_max_level(log::LevelFilter::Info);
}
