//! Provisioning: writes one box's identity (certificate, key, CA) and its rapd
//! configuration with the data-center URL into the data partition of a built disk
//! image, offline (dd out, debugfs -w, dd back; no mounts). Optionally also the box's
//! technician accounts (`/data/provision/technicians`: name and SHA-512 crypt hash, made
//! into accounts at every boot by `/usr/lib/rapbox/firstboot`) and the name in the remote
//! syslog collector's certificate (`/data/config/loghost.env`, see docs/audit.md).

use std::path::{Path, PathBuf};

use crate::cmd::{self, CmdError};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{path}: no partition named `{name}` in the manifest")]
    NoPartition { path: PathBuf, name: String },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("data-center URL `{0}` must start with https://")]
    Url(String),
    #[error("technician `{0}`: {1}")]
    Technician(String, String),
    #[error("syslog collector name `{0}`: {1}")]
    SyslogName(String, String),
}

/// A technician account: its name (`tech-…`) and SHA-512 crypt hash (`$6$…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Technician {
    pub name: String,
    pub hash: String,
}

/// Lowest rounds of a SHA-512 crypt hash accepted (hardening control 7; crypt's
/// default without `rounds=` is 5000).
pub const MIN_ROUNDS: u64 = 5000;

impl std::str::FromStr for Technician {
    type Err = ProvisionError;

    /// `NAME:HASH`, e.g. `tech-alice:$6$rounds=65536$salt$…` (from `mkpasswd -m sha-512 -R 65536`
    /// or `openssl passwd -6`).
    fn from_str(s: &str) -> Result<Technician, ProvisionError> {
        let (name, hash) = s
            .split_once(':')
            .ok_or_else(|| ProvisionError::Technician(s.chars().take(40).collect(), "expected NAME:HASH".into()))?;
        let t = Technician { name: name.into(), hash: hash.into() };
        t.validate()?;
        Ok(t)
    }
}

impl Technician {
    /// The rules firstboot relies on: a `tech-` name of lower-case letters, digits and
    /// dashes (at most 32 characters) and a SHA-512 crypt hash of at least 5000 rounds.
    pub fn validate(&self) -> Result<(), ProvisionError> {
        let bad = |m: &str| Err(ProvisionError::Technician(self.name.clone(), m.into()));
        let rest = match self.name.strip_prefix("tech-") {
            Some(r) => r,
            None => return bad("a technician's name starts with `tech-` (hardening/policy/accounts.allow)"),
        };
        if rest.is_empty()
            || self.name.len() > 32
            || !rest.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return bad("after `tech-` only lower-case letters, digits and dashes, 32 characters in all");
        }
        let Some(body) = self.hash.strip_prefix("$6$") else {
            return bad("the hash must be SHA-512 crypt ($6$…), e.g. from `mkpasswd -m sha-512 -R 65536`");
        };
        let parts: Vec<&str> = body.split('$').collect();
        let (rounds, salt, digest) = match parts.as_slice() {
            [r, salt, digest] if r.starts_with("rounds=") => {
                (r["rounds=".len()..].parse::<u64>().map_err(|_| ()).ok(), *salt, *digest)
            }
            [salt, digest] => (Some(5000), *salt, *digest),
            _ => return bad("malformed SHA-512 crypt hash"),
        };
        match rounds {
            Some(r) if r >= MIN_ROUNDS => {}
            Some(r) => return bad(&format!("{r} rounds is below the minimum of {MIN_ROUNDS}")),
            None => return bad("malformed rounds= in the hash"),
        }
        let b64 = |s: &str| s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/');
        if salt.is_empty() || salt.len() > 16 || !b64(salt) || digest.len() != 86 || !b64(digest) {
            return bad("malformed SHA-512 crypt hash (salt of 1-16 and digest of 86 crypt-base64 characters)");
        }
        Ok(())
    }
}

/// What a box may receive besides its identity.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    pub technicians: Vec<Technician>,
    /// The name in the remote syslog collector's certificate (its address is
    /// `[network.uplink] syslog` in rapd.toml).
    pub syslog_name: Option<String>,
}

impl Extras {
    fn validate(&self) -> Result<(), ProvisionError> {
        for (i, t) in self.technicians.iter().enumerate() {
            t.validate()?;
            if self.technicians[..i].iter().any(|o| o.name == t.name) {
                return Err(ProvisionError::Technician(t.name.clone(), "given twice".into()));
            }
        }
        if let Some(n) = &self.syslog_name {
            let ok = !n.is_empty()
                && n.len() <= 253
                && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
                && !n.starts_with(['-', '.']);
            if !ok {
                return Err(ProvisionError::SyslogName(n.clone(), "not a DNS name or IPv4 address".into()));
            }
        }
        Ok(())
    }
}

/// What one box receives.
#[derive(Debug, Clone)]
pub struct Identity {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub url: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io { path: path.into(), source }
}

/// (start MiB, size MiB) of partition `name` from the build's manifest.json.
pub fn partition(manifest: &Path, name: &str) -> Result<(u64, u64), ProvisionError> {
    let text = std::fs::read_to_string(manifest).map_err(io(manifest))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ProvisionError::Manifest { path: manifest.into(), message: e.to_string() })?;
    v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| Some((p["start_mib"].as_u64()?, p["size_mib"].as_u64()?)))
        .ok_or_else(|| ProvisionError::NoPartition { path: manifest.into(), name: name.into() })
}

/// Writes `id` into the data partition of `image`; `template` is the rapd
/// configuration template (with @DATACENTER_URL@) from the overlay.
pub fn provision(image: &Path, manifest: &Path, template: &Path, id: &Identity) -> Result<(), ProvisionError> {
    provision_with(image, manifest, template, id, &Extras::default())
}

/// [`provision`] plus technician accounts and the syslog collector's name.
pub fn provision_with(
    image: &Path,
    manifest: &Path,
    template: &Path,
    id: &Identity,
    extras: &Extras,
) -> Result<(), ProvisionError> {
    if !id.url.starts_with("https://") {
        return Err(ProvisionError::Url(id.url.clone()));
    }
    extras.validate()?;
    let tmpdir = image.with_extension("provision.d");
    let _ = std::fs::remove_dir_all(&tmpdir);
    std::fs::create_dir_all(&tmpdir).map_err(io(&tmpdir))?;
    let cfg = tmpdir.join("rapd.toml");
    let text = std::fs::read_to_string(template).map_err(io(template))?;
    std::fs::write(&cfg, text.replace("@DATACENTER_URL@", &id.url)).map_err(io(&cfg))?;
    let mut files: Vec<(&Path, &str, &str)> = vec![
        (&id.ca, "/provision/ca.crt", "0100644"),
        (&id.cert, "/provision/box.crt", "0100644"),
        (&id.key, "/provision/box.key", "0100640"),
        (&cfg, "/config/rapd.toml", "0100644"),
    ];
    let techs = tmpdir.join("technicians");
    if !extras.technicians.is_empty() {
        let text: String = extras.technicians.iter().map(|t| format!("{}:{}\n", t.name, t.hash)).collect();
        std::fs::write(&techs, text).map_err(io(&techs))?;
        files.push((&techs, "/provision/technicians", "0100600"));
    }
    let loghost = tmpdir.join("loghost.env");
    if let Some(n) = &extras.syslog_name {
        std::fs::write(&loghost, format!("RAPBOX_SYSLOG_NAME={n}\n")).map_err(io(&loghost))?;
        files.push((&loghost, "/config/loghost.env", "0100644"));
    }
    write_data_files(image, manifest, &tmpdir, &files)
}

/// Writes `files` (source, path on the data partition, debugfs mode) into the data
/// partition of `image`, root-owned, with `tmpdir` as scratch space (removed after).
fn write_data_files(
    image: &Path,
    manifest: &Path,
    tmpdir: &Path,
    files: &[(&Path, &str, &str)],
) -> Result<(), ProvisionError> {
    let (start, size) = partition(manifest, "data")?;
    let part = tmpdir.join("data.part");
    cmd::output(
        cmd::new("dd", ["bs=1M", "status=none", "conv=sparse"])
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", part.display()))
            .arg(format!("skip={start}"))
            .arg(format!("count={size}")),
    )?;
    let mut script = String::new();
    for &(src, dest, mode) in files {
        if !src.is_file() {
            return Err(ProvisionError::Io {
                path: src.into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        script.push_str(&format!(
            "rm {dest}\nwrite {} {dest}\nsif {dest} mode {mode}\nsif {dest} uid 0\nsif {dest} gid 0\n",
            src.display()
        ));
    }
    let cmds = tmpdir.join("debugfs.cmds");
    std::fs::write(&cmds, script).map_err(io(&cmds))?;
    cmd::output(cmd::new("debugfs", ["-w", "-f"]).arg(&cmds).arg(&part))?;
    cmd::output(cmd::new("e2fsck", ["-fn"]).arg(&part))?;
    cmd::output(
        cmd::new("dd", ["bs=1M", "status=none", "conv=notrunc"])
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", image.display()))
            .arg(format!("seek={start}")),
    )?;
    std::fs::remove_dir_all(tmpdir).map_err(io(tmpdir))?;
    Ok(())
}

/// Where `rapimage provision --vendor-key` puts the vendor's manifest-signing public key (the
/// image's rapd.toml template trusts it: `[transfers] vendor_keys`).
pub const VENDOR_KEY_DEST: &str = "/provision/vendor-signing.pem";

/// Writes more files into the data partition of `image`: (source, destination in the data
/// partition, mode as debugfs takes it, e.g. `0100644`), owned by root.
pub fn add_files(image: &Path, manifest: &Path, files: &[(&Path, &str, &str)]) -> Result<(), ProvisionError> {
    let tmpdir = image.with_extension("provision-extra.d");
    let _ = std::fs::remove_dir_all(&tmpdir);
    std::fs::create_dir_all(&tmpdir).map_err(io(&tmpdir))?;
    write_data_files(image, manifest, &tmpdir, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str =
        "$6$rapboxtest$WXjCm5CO8I3x4e3/5tklZngsM1h1B9NPxlYLYiJHeOnRGMSsnOpje5q/yR0UZUjXeo3Gp0PW6GaNd3VxB2UIa0";

    #[test]
    fn technicians_are_checked() {
        let t: Technician = format!("tech-alice:{HASH}").parse().unwrap();
        assert_eq!(t.name, "tech-alice");
        let rounds = HASH.replace("$6$", "$6$rounds=65536$");
        assert!(format!("tech-bob:{rounds}").parse::<Technician>().is_ok());
        for (line, why) in [
            (format!("alice:{HASH}"), "starts with `tech-`"),
            (format!("tech-Al:{HASH}"), "lower-case"),
            (format!("tech-:{HASH}"), "lower-case"),
            ("tech-a:$1$abc$def".to_owned(), "SHA-512 crypt"),
            (format!("tech-a:{}", HASH.replace("$6$", "$6$rounds=1000$")), "1000 rounds is below"),
            ("tech-a:$6$salt$short".to_owned(), "malformed"),
            ("tech-a".to_owned(), "NAME:HASH"),
        ] {
            let e = line.parse::<Technician>().unwrap_err().to_string();
            assert!(e.contains(why), "{line}: {e}");
        }
        let twice = Extras { technicians: vec![t.clone(), t], syslog_name: None };
        assert!(twice.validate().unwrap_err().to_string().contains("given twice"));
        let name = Extras { technicians: vec![], syslog_name: Some("log host".into()) };
        assert!(name.validate().unwrap_err().to_string().contains("not a DNS name"));
    }
}
