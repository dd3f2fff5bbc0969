//! Provisioning: writes one box's identity (certificate, key, CA) and its rapd
//! configuration with the data-center URL into the data partition of a built disk
//! image, offline (dd out, debugfs -w, dd back; no mounts).

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
    #[error("log host `{0}`: a host name or IPv4 address (letters, digits, `.`, `-`) is required")]
    LogHost(String),
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
    if !id.url.starts_with("https://") {
        return Err(ProvisionError::Url(id.url.clone()));
    }
    let tmpdir = image.with_extension("provision.d");
    let _ = std::fs::remove_dir_all(&tmpdir);
    std::fs::create_dir_all(&tmpdir).map_err(io(&tmpdir))?;
    let cfg = tmpdir.join("rapd.toml");
    let text = std::fs::read_to_string(template).map_err(io(template))?;
    std::fs::write(&cfg, text.replace("@DATACENTER_URL@", &id.url)).map_err(io(&cfg))?;
    let files: [(&Path, &str, &str); 4] = [
        (&id.ca, "/provision/ca.crt", "0100644"),
        (&id.cert, "/provision/box.crt", "0100644"),
        (&id.key, "/provision/box.key", "0100640"),
        (&cfg, "/config/rapd.toml", "0100644"),
    ];
    write_data_files(image, manifest, &tmpdir, &files)
}

/// Writes the box's remote log host (hardening control 44: rsyslog forwards the system
/// and audit logs to it over TLS, port 6514, and checks that its certificate names it)
/// as `/data/config/loghost.env` (`RAPBOX_LOGHOST=<name>`, read by rsyslog.service).
pub fn provision_loghost(image: &Path, manifest: &Path, name: &str) -> Result<(), ProvisionError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !name.starts_with(['-', '.']);
    if !valid {
        return Err(ProvisionError::LogHost(name.into()));
    }
    let tmpdir = image.with_extension("loghost.d");
    let _ = std::fs::remove_dir_all(&tmpdir);
    std::fs::create_dir_all(&tmpdir).map_err(io(&tmpdir))?;
    let env = tmpdir.join("loghost.env");
    std::fs::write(&env, format!("RAPBOX_LOGHOST={name}\n")).map_err(io(&env))?;
    write_data_files(image, manifest, &tmpdir, &[(&env, "/config/loghost.env", "0100644")])
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
