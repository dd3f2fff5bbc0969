//! The configuration files on the data partition and how they change without ever being
//! half-written.
//!
//! Beside the configuration in force (`rapd.toml`, the target of `/etc/rapbox/rapd.toml`
//! on the box) live two more files:
//!
//! * `rapd.toml.previous` — the configuration in force before the last apply (the one a
//!   rollback returns to);
//! * `rapd.toml.pending` — present only while an applied configuration awaits the data
//!   center's acknowledgement, or while a decided rollback is being completed: the
//!   apply's id, who asked, both documents (and their SHA-256) and the rollback deadline.
//!   [`recover`] runs before the FIPS gate, when no digest may be computed yet: it
//!   recognises the documents by their bytes.
//!
//! Every write is a new file beside the old one (`*.tmp`), fsynced, renamed over it and the
//! directory fsynced, so a power cut leaves either the old or the new file. An apply
//! writes the previous file, then the pending record, then the configuration (the point
//! after which a start uses the new one); [`recover`] reads what a crash left and decides.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a pending-apply record: {message}")]
    Bad { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io { path: path.into(), source }
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content: a temporary
/// file beside it, fsynced, renamed over it, the directory fsynced. The file keeps the
/// mode of the one it replaces (0600 for a new one).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path)
}

/// Removes `path` (if present) durably.
pub fn remove_durably(path: &Path) -> Result<(), FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

fn sync_dir(path: &Path) -> Result<(), FileError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// SHA-256 of a document, hex (through the FIPS provider, like every digest of rapd).
pub fn sha256(text: &str) -> String {
    crate::audit::chain::sha256_hex(text.as_bytes()).unwrap_or_else(|e| format!("(no SHA-256: {e})"))
}

/// Milliseconds of CLOCK_BOOTTIME: monotonic, counts suspend, and goes on across restarts of
/// rapd (not across a reboot).
pub fn boot_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Where the three files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFiles {
    /// The configuration in force (symbolic links resolved: the rename happens where the
    /// file really is).
    pub current: PathBuf,
    pub previous: PathBuf,
    pub pending: PathBuf,
}

impl ConfigFiles {
    /// The files beside the configuration `path` (resolved through symbolic links).
    pub fn beside(path: &Path) -> ConfigFiles {
        let current = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let with = |ext: &str| {
            let mut s = current.as_os_str().to_owned();
            s.push(ext);
            PathBuf::from(s)
        };
        ConfigFiles { previous: with(".previous"), pending: with(".pending"), current }
    }

    pub fn read_current(&self) -> Result<String, FileError> {
        std::fs::read_to_string(&self.current).map_err(io(&self.current))
    }

    pub fn read_previous(&self) -> Result<Option<String>, FileError> {
        match std::fs::read_to_string(&self.previous) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&self.previous)(e)),
        }
    }

    pub fn read_pending(&self) -> Result<Option<Pending>, FileError> {
        match std::fs::read(&self.pending) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| FileError::Bad { path: self.pending.clone(), message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&self.pending)(e)),
        }
    }

    pub fn write_pending(&self, p: &Pending) -> Result<(), FileError> {
        let mut b = serde_json::to_vec_pretty(p).unwrap_or_default();
        b.push(b'\n');
        write_atomic(&self.pending, &b)
    }

    pub fn clear_pending(&self) -> Result<(), FileError> {
        remove_durably(&self.pending)
    }
}

/// What the pending record says is going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingState {
    /// The new configuration is written (or about to be) and awaits the data center.
    Unconfirmed,
    /// A rollback was decided: the previous configuration is (or is about to be) written
    /// back; the next start finishes it.
    RollingBack,
}

/// The pending-apply record (`rapd.toml.pending`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The apply's id (also in its audit records).
    pub id: String,
    pub state: PendingState,
    /// Who asked (`local:<user>`, `datacenter:<command id>`).
    pub actor: String,
    /// When it was applied (ms since the epoch, for people).
    pub applied_ms: u64,
    /// The boot during which the deadline below counts.
    pub boot_id: String,
    /// The rollback deadline on CLOCK_BOOTTIME (ms) of that boot.
    pub deadline_boot_ms: u64,
    /// The trial time granted (from the configuration in force before the apply).
    pub rollback_after_s: u64,
    pub previous_sha256: String,
    pub new_sha256: String,
    /// The configuration a rollback returns to (the last confirmed one).
    pub previous_document: String,
    /// The configuration on trial.
    pub new_document: String,
    /// Whether it took a restart of rapd.
    pub restart: bool,
    /// Why the rollback was decided (state `rolling_back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rollback is already in the audit trail (state `rolling_back`).
    #[serde(default)]
    pub recorded: bool,
}

impl Pending {
    /// The time left before the rollback, as seen now: the remainder of the deadline during
    /// the same boot; after a reboot the full trial again (the box was off meanwhile, the
    /// uplink never had its chance).
    pub fn remaining(&self) -> Duration {
        if self.boot_id == boot_id() {
            Duration::from_millis(self.deadline_boot_ms.saturating_sub(boot_ms()))
        } else {
            Duration::from_secs(self.rollback_after_s)
        }
    }
}

/// What [`recover`] found and did, to be audited once the audit log is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// No apply was under way.
    Nothing,
    /// The configuration in force is unconfirmed: the trial goes on (deadline re-armed).
    Unconfirmed(Pending),
    /// An apply was cut short before its configuration took effect: the previous one is in force.
    Interrupted(Pending),
    /// A decided rollback was completed (now, or before the restart).
    RolledBack(Pending),
    /// The file in force is neither the applied nor the previous document (edited by hand):
    /// it stays, the pending record is dropped.
    Superseded(Pending),
    /// The pending record could not be used; it was set aside.
    Unreadable(String),
}

/// Looks at the files a previous run left and finishes what it can before the
/// configuration is loaded: a rollback that was decided but not yet written is written.
pub fn recover(files: &ConfigFiles) -> Recovered {
    let pending = match files.read_pending() {
        Ok(None) => return Recovered::Nothing,
        Ok(Some(p)) => p,
        Err(e) => {
            let msg = e.to_string();
            log::error!("reconfig: {msg}; set aside");
            let mut aside = files.pending.as_os_str().to_owned();
            aside.push(".bad");
            let _ = std::fs::rename(&files.pending, PathBuf::from(aside));
            return Recovered::Unreadable(msg);
        }
    };
    let current = match files.read_current() {
        Ok(t) => t,
        Err(e) => {
            // rapd will refuse to start with an unreadable configuration; keep the record.
            log::error!("reconfig: {e}");
            return Recovered::Nothing;
        }
    };
    let clear = |what: &str| {
        if let Err(e) = files.clear_pending() {
            log::error!("reconfig: {what}, but {e}");
        }
    };
    match pending.state {
        PendingState::Unconfirmed if current == pending.new_document => Recovered::Unconfirmed(pending),
        PendingState::Unconfirmed if current == pending.previous_document => {
            clear("an interrupted apply is over");
            Recovered::Interrupted(pending)
        }
        PendingState::RollingBack if current == pending.previous_document => {
            clear("the rollback is complete");
            Recovered::RolledBack(pending)
        }
        PendingState::RollingBack if current == pending.new_document => {
            if let Err(e) = write_atomic(&files.current, pending.previous_document.as_bytes()) {
                log::error!("reconfig: the rollback cannot be written: {e}");
                return Recovered::Nothing;
            }
            clear("the rollback is complete");
            Recovered::RolledBack(pending)
        }
        _ => {
            clear("the configuration was changed by hand");
            Recovered::Superseded(pending)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rapd-reconfig-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pending(state: PendingState, prev: &str, new: &str) -> Pending {
        Pending {
            id: "0011223344556677".into(),
            state,
            actor: "console:root".into(),
            applied_ms: 1,
            boot_id: boot_id(),
            deadline_boot_ms: boot_ms() + 60_000,
            rollback_after_s: 60,
            previous_sha256: String::new(),
            new_sha256: String::new(),
            previous_document: prev.into(),
            new_document: new.into(),
            restart: false,
            reason: None,
            recorded: false,
        }
    }

    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temporary() {
        let d = dir("atomic");
        let p = d.join("rapd.toml");
        write_atomic(&p, b"a = 1\n").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"a = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 2\n");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(!d.join("rapd.toml.tmp").exists());
        remove_durably(&p).unwrap();
        remove_durably(&p).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn files_resolve_symlinks() {
        let d = dir("links");
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::write(d.join("data/rapd.toml"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("data/rapd.toml"), d.join("etc-rapd.toml")).unwrap();
        let f = ConfigFiles::beside(&d.join("etc-rapd.toml"));
        assert_eq!(f.current, std::fs::canonicalize(d.join("data/rapd.toml")).unwrap());
        assert_eq!(f.pending.file_name().unwrap(), "rapd.toml.pending");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn recovery_decides_from_what_is_on_disk() {
        let d = dir("recover");
        let (old, new) = ("a = 1\n", "a = 2\n");
        std::fs::write(d.join("rapd.toml"), old).unwrap();
        let f = ConfigFiles::beside(&d.join("rapd.toml"));
        assert_eq!(recover(&f), Recovered::Nothing);

        // Crash after the pending record, before the new configuration: the old one is in force.
        std::fs::write(&f.previous, old).unwrap();
        f.write_pending(&pending(PendingState::Unconfirmed, old, new)).unwrap();
        assert!(matches!(recover(&f), Recovered::Interrupted(_)));
        assert!(!f.pending.exists());

        // Crash after the new configuration: it stays on trial.
        std::fs::write(&f.current, new).unwrap();
        let p = pending(PendingState::Unconfirmed, old, new);
        f.write_pending(&p).unwrap();
        assert_eq!(recover(&f), Recovered::Unconfirmed(p.clone()));
        assert!(f.pending.exists(), "the trial goes on");
        assert!(p.remaining() <= Duration::from_secs(60) && p.remaining() > Duration::from_secs(50));
        let other_boot = Pending { boot_id: "another".into(), deadline_boot_ms: 0, ..p.clone() };
        assert_eq!(other_boot.remaining(), Duration::from_secs(60), "after a reboot the full trial again");

        // A rollback decided but not written: written now.
        f.write_pending(&pending(PendingState::RollingBack, old, new)).unwrap();
        assert!(matches!(recover(&f), Recovered::RolledBack(_)));
        assert_eq!(std::fs::read_to_string(&f.current).unwrap(), old);
        assert!(!f.pending.exists());

        // A rollback written before the restart: only the record goes.
        f.write_pending(&pending(PendingState::RollingBack, old, new)).unwrap();
        assert!(matches!(recover(&f), Recovered::RolledBack(_)));

        // Edited by hand meanwhile: the hand edit stays.
        std::fs::write(&f.current, "a = 3\n").unwrap();
        f.write_pending(&pending(PendingState::Unconfirmed, old, new)).unwrap();
        assert!(matches!(recover(&f), Recovered::Superseded(_)));
        assert_eq!(std::fs::read_to_string(&f.current).unwrap(), "a = 3\n");

        // The record carries the documents: a damaged previous file does not matter.
        std::fs::write(&f.current, new).unwrap();
        std::fs::write(&f.previous, "a = 9\n").unwrap();
        f.write_pending(&pending(PendingState::RollingBack, old, new)).unwrap();
        assert!(matches!(recover(&f), Recovered::RolledBack(_)));
        assert_eq!(std::fs::read_to_string(&f.current).unwrap(), old);

        // Garbage in the record: set aside.
        std::fs::write(&f.pending, "{").unwrap();
        assert!(matches!(recover(&f), Recovered::Unreadable(_)));
        assert!(d.join("rapd.toml.pending.bad").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
