//! The package cache: locked .debs kept in a local folder (by default image/cache,
//! ignored by git) so that a second build needs no network. Missing files are fetched
//! by exact version through a private apt configuration built from the recipe's
//! mirrors (the host's apt sources are not used) and checked against the lock.

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::cmd::{self, CmdError};
use crate::lock::Package;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{name}={version}: the mirrors no longer serve this pinned version ({detail}); restore the .deb into {cache} or run `rapimage lock` to move to the versions served now")]
    NotServed { name: String, version: String, cache: PathBuf, detail: String },
    #[error("{path}: SHA-256 {actual} does not match the lock ({expected}); the file was changed or the mirror serves a different build")]
    Hash { path: PathBuf, expected: String, actual: String },
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

/// The cache folder and its private apt state.
#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.into(), source }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    pub fn debs(&self) -> PathBuf {
        self.dir.join("debs")
    }

    /// The private apt lists (`apt-get update` of the recipe's mirrors).
    pub fn lists(&self) -> PathBuf {
        self.dir.join("apt/state/lists")
    }

    pub fn path_of(&self, p: &Package) -> PathBuf {
        self.debs().join(p.filename())
    }

    /// apt-get with a configuration of our own: the recipe's mirrors only.
    fn apt(&self, mirrors: &[String]) -> Result<std::process::Command, CacheError> {
        let base = self.dir.join("apt");
        for d in ["state/lists/partial", "cache/archives/partial", "etc"] {
            let p = base.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let sources = base.join("etc/sources.list");
        let mut text = String::new();
        for m in mirrors {
            let line = m.replacen("deb ", "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ", 1);
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(&sources, text).map_err(io(&sources))?;
        let status = base.join("state/status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(io(&status))?;
        }
        let mut c = std::process::Command::new("apt-get");
        c.arg("-q")
            .arg(format!("-oDir::Etc::SourceList={}", sources.display()))
            .arg("-oDir::Etc::SourceParts=/dev/null")
            .arg("-oDir::Etc::Preferences=/dev/null")
            .arg("-oDir::Etc::PreferencesParts=/dev/null")
            .arg(format!("-oDir::State={}", base.join("state").display()))
            .arg(format!("-oDir::State::status={}", status.display()))
            .arg(format!("-oDir::Cache={}", base.join("cache").display()))
            .arg("-oAPT::Architecture=amd64")
            .arg("-oAcquire::Languages=none");
        Ok(c)
    }

    /// Refreshes the private package lists.
    pub fn update(&self, mirrors: &[String]) -> Result<(), CacheError> {
        let mut c = self.apt(mirrors)?;
        c.arg("update");
        cmd::output(&mut c)?;
        Ok(())
    }

    /// Downloads `name=version` (or the candidate when `version` is None) into the
    /// cache and returns the file.
    pub fn download(&self, mirrors: &[String], name: &str, version: Option<&str>) -> Result<PathBuf, CacheError> {
        let tmp = self.dir.join("download");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let spec = match version {
            Some(v) => format!("{name}={v}"),
            None => name.to_string(),
        };
        let mut c = self.apt(mirrors)?;
        c.arg("download").arg(&spec).current_dir(&tmp);
        if let Err(e) = cmd::output(&mut c) {
            return Err(match (version, e) {
                (Some(v), CmdError::Failed { stderr, .. }) => CacheError::NotServed {
                    name: name.into(),
                    version: v.into(),
                    cache: self.debs(),
                    detail: stderr.lines().last().unwrap_or("").trim().to_string(),
                },
                (_, e) => CacheError::Cmd(e),
            });
        }
        let mut found = None;
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
            let entry = entry.map_err(io(&tmp))?;
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname.starts_with(&format!("{name}_")) && fname.ends_with(".deb") {
                found = Some(entry.path());
            }
        }
        let src = found.ok_or_else(|| CacheError::NotServed {
            name: name.into(),
            version: version.unwrap_or("candidate").into(),
            cache: self.debs(),
            detail: "apt-get download produced no file".into(),
        })?;
        let debs = self.debs();
        std::fs::create_dir_all(&debs).map_err(io(&debs))?;
        let (n, v, a) = deb_identity(&src)?;
        let dest = debs.join(format!("{n}_{}_{a}.deb", v.replace(':', "%3a")));
        std::fs::rename(&src, &dest).map_err(io(&dest))?;
        Ok(dest)
    }

    /// Downloads `packages` by exact version in one apt-get run and files them under
    /// their cache names.
    fn download_all(&self, mirrors: &[String], packages: &[&&Package]) -> Result<(), CacheError> {
        let tmp = self.dir.join("download");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let mut c = self.apt(mirrors)?;
        c.arg("download").current_dir(&tmp);
        for p in packages {
            c.arg(format!("{}={}", p.name, p.version));
        }
        cmd::output(&mut c)?;
        let debs = self.debs();
        std::fs::create_dir_all(&debs).map_err(io(&debs))?;
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
            let src = entry.map_err(io(&tmp))?.path();
            if src.extension().is_some_and(|x| x == "deb") {
                let (n, v, a) = deb_identity(&src)?;
                let dest = debs.join(format!("{n}_{}_{a}.deb", v.replace(':', "%3a")));
                std::fs::rename(&src, &dest).map_err(io(&dest))?;
            }
        }
        Ok(())
    }

    /// Makes sure every package is in the cache with the locked hash, downloading what
    /// is missing. Returns how many were downloaded.
    pub fn ensure(&self, mirrors: &[String], packages: &[&Package]) -> Result<usize, CacheError> {
        let missing: Vec<&&Package> = packages.iter().filter(|p| !self.path_of(p).exists()).collect();
        if !missing.is_empty() {
            eprintln!("rapimage: fetching {} locked packages into {}", missing.len(), self.debs().display());
            self.update(mirrors)?;
            // One apt-get for all of them; if that fails, one by one to name the
            // package that is no longer served.
            if self.download_all(mirrors, &missing).is_err() {
                for p in &missing {
                    if !self.path_of(p).exists() {
                        self.download(mirrors, &p.name, Some(&p.version))?;
                    }
                }
            }
        }
        for p in packages {
            let path = self.path_of(p);
            if !path.exists() {
                return Err(CacheError::NotServed {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    cache: self.debs(),
                    detail: "downloaded file does not carry the locked name/version".into(),
                });
            }
            let actual = sha256_file(&path).map_err(io(&path))?;
            if actual != p.sha256 {
                return Err(CacheError::Hash { path, expected: p.sha256.clone(), actual });
            }
        }
        Ok(missing.len())
    }
}

/// (Package, Version, Architecture) from a .deb's control file.
pub fn deb_identity(deb: &Path) -> Result<(String, String, String), CacheError> {
    let out =
        cmd::stdout(cmd::new("dpkg-deb", ["--showformat=${Package}\\t${Version}\\t${Architecture}", "-W"]).arg(deb))?;
    let mut it = out.trim().split('\t');
    match (it.next(), it.next(), it.next()) {
        (Some(n), Some(v), Some(a)) => Ok((n.into(), v.into(), a.into())),
        _ => Err(CacheError::Io {
            path: deb.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "dpkg-deb -W printed no identity"),
        }),
    }
}
