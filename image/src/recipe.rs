//! The recipe: image/recipe.toml read into validated types. Paths in it are relative
//! to the workspace root (the parent of the recipe's directory).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A recipe that cannot be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: cannot read recipe: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub name: String,
    pub version: String,
    pub source_date_epoch: u64,
    pub hostname: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    pub suite: String,
    pub variant: String,
    pub mirrors: Vec<String>,
    pub packages: Vec<String>,
    #[serde(default)]
    pub boot_packages: Vec<String>,
    #[serde(default)]
    pub path_exclude: Vec<String>,
    #[serde(default)]
    pub path_include: Vec<String>,
    #[serde(default)]
    pub purge: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub modules: Vec<String>,
    pub initramfs_modules: Vec<String>,
    pub cmdline: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binary {
    pub name: String,
    pub source: PathBuf,
    pub dest: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fips {
    pub module_dir: PathBuf,
    pub module: String,
    pub config_template: PathBuf,
    pub image_module: PathBuf,
    pub image_config: PathBuf,
    pub image_fipsmodule_cnf: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    pub dirs: Vec<PathBuf>,
    pub post_build: Option<PathBuf>,
}

/// What a partition is filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    Esp,
    Rootfs,
    Empty,
    Data,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub size_mib: u64,
    pub content: Content,
    pub fs_label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub esp_label: String,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDir {
    pub path: String,
    pub mode: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub dirs: Vec<DataDir>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    image: Image,
    debian: Debian,
    kernel: Kernel,
    #[serde(default)]
    binaries: Vec<Binary>,
    fips: Fips,
    overlay: Overlay,
    layout: Layout,
    data: Data,
}

/// A validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub path: PathBuf,
    /// Workspace root: relative paths in the recipe are resolved against it.
    pub root: PathBuf,
    pub image: Image,
    pub debian: Debian,
    pub kernel: Kernel,
    pub binaries: Vec<Binary>,
    pub fips: Fips,
    pub overlay: Overlay,
    pub layout: Layout,
    pub data: Data,
}

impl Recipe {
    /// Reads and validates the recipe at `path`.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let path = crate::cmd::absolute(path);
        let text = std::fs::read_to_string(&path).map_err(|source| RecipeError::Read { path: path.clone(), source })?;
        let raw: Raw =
            toml::from_str(&text).map_err(|e| RecipeError::Parse { path: path.clone(), message: e.to_string() })?;
        let root = path.parent().and_then(Path::parent).unwrap_or(Path::new("/")).to_path_buf();
        let bad = |key: &str, message: String| RecipeError::Invalid { path: path.clone(), key: key.into(), message };
        if raw.debian.packages.is_empty() {
            return Err(bad("debian.packages", "must list at least one package".into()));
        }
        for p in raw.debian.packages.iter().chain(&raw.debian.boot_packages) {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
                return Err(bad("debian.packages", format!("`{p}` is not a Debian package name")));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in raw.layout.partitions.iter().enumerate() {
            if !seen.insert(p.name.clone()) {
                return Err(bad(&format!("layout.partitions[{i}].name"), format!("`{}` is used twice", p.name)));
            }
            if crate::disk::type_guid(&p.kind).is_none() {
                return Err(bad(
                    &format!("layout.partitions[{i}].type"),
                    format!("unknown partition type `{}` (esp, root-x86-64, linux)", p.kind),
                ));
            }
            if p.size_mib == 0 {
                return Err(bad(&format!("layout.partitions[{i}].size_mib"), "must be > 0".into()));
            }
        }
        for c in [Content::Esp, Content::Rootfs, Content::Data] {
            if raw.layout.partitions.iter().filter(|p| p.content == c).count() != 1 {
                return Err(bad(
                    "layout.partitions",
                    format!("exactly one partition must have content = \"{c:?}\" (lowercase)"),
                ));
            }
        }
        for (i, d) in raw.data.dirs.iter().enumerate() {
            if u32::from_str_radix(&d.mode, 8).is_err() || d.path.starts_with('/') || d.path.contains("..") {
                return Err(bad(
                    &format!("data.dirs[{i}]"),
                    format!("`{}` mode `{}`: need a relative path and an octal mode", d.path, d.mode),
                ));
            }
        }
        Ok(Recipe {
            path,
            root,
            image: raw.image,
            debian: raw.debian,
            kernel: raw.kernel,
            binaries: raw.binaries,
            fips: raw.fips,
            overlay: raw.overlay,
            layout: raw.layout,
            data: raw.data,
        })
    }

    /// `p` resolved against the workspace root.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// The lock file beside the recipe (recipe.toml -> recipe.lock).
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    /// SOURCE_DATE_EPOCH from the environment, else the recipe's.
    pub fn epoch(&self) -> u64 {
        std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(self.image.source_date_epoch)
    }

    /// What the lock depends on: the mirrors and package lists (hex SHA-256).
    pub fn lock_fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let d = &self.debian;
        for part in [&d.mirrors, &d.packages, &d.boot_packages] {
            for s in part {
                h.update(s.as_bytes());
                h.update([0]);
            }
            h.update([1]);
        }
        h.update(d.suite.as_bytes());
        h.update(d.variant.as_bytes());
        hex::encode(h.finalize())
    }
}
