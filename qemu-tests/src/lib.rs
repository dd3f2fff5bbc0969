//! QEMU harness for the rapbox image: boots the built disk image (direct kernel boot
//! or OVMF + systemd-boot) inside a network namespace the harness creates, drives the
//! serial console with a unique prompt, scales timeouts for TCG and keeps one serial
//! log per test under target/qemu-logs/.
//!
//! Environment: RAPBOX_IMAGE_DIR (default <workspace>/build/image),
//! RAPBOX_QEMU_TIMEOUT_MULT (default 1), RAPBOX_QEMU_KVM=0 to skip the KVM probe
//! (KVM is used only when a probe boot of the kernel works; TCG otherwise).

pub mod bridge;
pub mod browser;
pub mod console;
pub mod datacenter;
pub mod image;
pub mod instruments;
pub mod netns;
pub mod qmp;
pub mod vm;

use std::path::PathBuf;
use std::time::Duration;

/// The workspace root (parent of this crate).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// `secs` scaled by RAPBOX_QEMU_TIMEOUT_MULT.
pub fn timeout(secs: u64) -> Duration {
    let mult: f64 = std::env::var("RAPBOX_QEMU_TIMEOUT_MULT").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    Duration::from_secs_f64(secs as f64 * mult.max(0.1))
}

/// Where serial logs go: target/qemu-logs/.
pub fn log_dir() -> PathBuf {
    let d = workspace().join("target/qemu-logs");
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Errors of the harness itself (not test failures).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{cmd}` failed: {stderr}")]
    Cmd { cmd: String, stderr: String },
    #[error("{0}")]
    Setup(String),
}

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HarnessError::Cmd { cmd: format!("{program} {}", args.join(" ")), stderr: e.to_string() })?;
    if !out.status.success() {
        return Err(HarnessError::Cmd {
            cmd: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
