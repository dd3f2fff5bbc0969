//! The manifest (a small SBOM: every package with version and .deb hash, our own
//! files with their hashes, the partition layout) and the SHA256SUMS of the outputs.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::disk::Placed;
use crate::lock::Package;
use crate::rootfs::Installed;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Serialize)]
pub struct Manifest<'a> {
    pub image: &'a str,
    pub version: &'a str,
    pub source_date_epoch: u64,
    pub suite: &'a str,
    pub kernel_package: String,
    pub kernel_release: String,
    pub kernel_cmdline: String,
    pub kernel_modules: Vec<String>,
    pub packages: Vec<&'a Package>,
    pub purged: &'a [String],
    pub files: Vec<Installed>,
    pub fips_provider: bool,
    pub disk_label_id: String,
    pub partitions: Vec<Placed>,
}

impl Manifest<'_> {
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        std::fs::write(path, text).map_err(|source| ManifestError::Io { path: path.into(), source })
    }
}

/// Writes `dir/SHA256SUMS` for `files` (relative to `dir`), in the order given.
pub fn write_sums(dir: &Path, files: &[&str]) -> Result<(), ManifestError> {
    let mut text = String::new();
    for f in files {
        let p = dir.join(f);
        let h = crate::cache::sha256_file(&p).map_err(|source| ManifestError::Io { path: p.clone(), source })?;
        text.push_str(&format!("{h}  {f}\n"));
    }
    let out = dir.join("SHA256SUMS");
    std::fs::write(&out, text).map_err(|source| ManifestError::Io { path: out.clone(), source })
}
