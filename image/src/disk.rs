//! The disk image from plain files: file systems made with mkfs.ext4 -d and
//! mkfs.vfat -C + mcopy, a GPT written by sfdisk onto a regular file, partitions
//! placed with dd conv=notrunc. No loop devices, no mounts. Every UUID and volume id
//! is derived from the recipe, and mkfs runs with the fixed build time.

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::cmd::{self, CmdError};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("partition `{name}`: content needs {need_mib} MiB but the layout gives {size_mib} MiB")]
    TooSmall { name: String, need_mib: u64, size_mib: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io { path: path.into(), source }
}

pub const MIB: u64 = 1024 * 1024;

/// `program` run under libfaketime with the clock frozen at `epoch` (UTC): mke2fs
/// 1.47.0 stamps inode creation times and mtools directory entries with the current
/// time, which E2FSPROGS_FAKE_TIME and `mcopy -m` alone do not cover.
fn at_epoch<I, S>(program: &str, epoch: u64, args: I) -> std::process::Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let stamp = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d %H:%M:%S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut c = std::process::Command::new("faketime");
    c.arg(stamp)
        .arg(program)
        .args(args)
        .env("TZ", "UTC")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("MTOOLS_SKIP_CHECK", "1")
        // file time stamps are read as they are (libfaketime would shift them)
        .env("NO_FAKE_STAT", "1");
    c
}

/// mke2fs -d copies each source file's atime and ctime (the latter cannot be set on
/// the source) and stamps crtime with the real clock: set all three, and their
/// sub-second parts, to `epoch` for every path so the inode tables are reproducible.
fn fix_inode_times(img: &Path, dir: &Path, epoch: u64) -> Result<(), DiskError> {
    let stamp = cmd::stdout(&mut cmd::new("date", ["-u", "-d", &format!("@{epoch}"), "+%Y%m%d%H%M%S"]))?;
    let stamp = stamp.trim();
    let mut paths = vec!["/".to_string(), "/lost+found".to_string()];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).map_err(io(&d))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().into_owned();
            paths.push(format!("/{rel}"));
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    let mut script = String::new();
    for p in paths {
        let q = format!("\"{}\"", p.replace('"', "\\\""));
        for f in ["atime", "ctime", "crtime"] {
            script.push_str(&format!("sif {q} {f} {stamp}\nsif {q} {f}_extra 0\n"));
        }
    }
    let cmds = img.with_extension("times");
    std::fs::write(&cmds, script).map_err(io(&cmds))?;
    cmd::output(at_epoch("debugfs", epoch, ["-w", "-f"]).arg(&cmds).arg(img))?;
    std::fs::remove_file(&cmds).map_err(io(&cmds))?;
    Ok(())
}

/// GPT partition type GUID for a recipe type name.
pub fn type_guid(kind: &str) -> Option<&'static str> {
    match kind {
        "esp" => Some("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "root-x86-64" => Some("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
        "linux" => Some("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        _ => None,
    }
}

/// A UUID (version 4 layout) derived from `parts`: stable for the same recipe.
pub fn derived_uuid(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let mut b: [u8; 16] = h.finalize()[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

/// Size of a directory tree in bytes (apparent sizes, plus a block per entry).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(md) = e.path().symlink_metadata() {
                    total += md.len().div_ceil(4096) * 4096 + 256;
                    if md.is_dir() {
                        stack.push(e.path());
                    }
                }
            }
        }
    }
    total
}

/// An ext4 image of `size_mib` filled from `dir`.
pub fn ext4(
    dir: &Path,
    out: &Path,
    name: &str,
    label: &str,
    uuid: &str,
    size_mib: u64,
    epoch: u64,
) -> Result<(), DiskError> {
    let need = tree_bytes(dir) * 11 / 10 / MIB + 8;
    if need > size_mib {
        return Err(DiskError::TooSmall { name: name.into(), need_mib: need, size_mib });
    }
    let _ = std::fs::remove_file(out);
    cmd::output(
        at_epoch("mkfs.ext4", epoch, ["-q", "-F", "-m", "0", "-b", "4096", "-L", label, "-U", uuid])
            .args(["-E", &format!("hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,nodiscard")])
            .arg("-d")
            .arg(dir)
            .arg(out)
            .arg(format!("{size_mib}M"))
            .env("MKE2FS_DEVICE_SECTSIZE", "512"),
    )?;
    fix_inode_times(out, dir, epoch)
}

/// An empty (zero-filled, sparse) partition image.
pub fn empty(out: &Path, size_mib: u64) -> Result<(), DiskError> {
    let f = std::fs::File::create(out).map_err(io(out))?;
    f.set_len(size_mib * MIB).map_err(io(out))?;
    Ok(())
}

/// A FAT image of `size_mib` holding `dir` (files copied in sorted order, every time
/// stamp the frozen build time).
pub fn vfat(
    dir: &Path,
    out: &Path,
    name: &str,
    label: &str,
    volume_id: &str,
    size_mib: u64,
    epoch: u64,
) -> Result<(), DiskError> {
    let need = tree_bytes(dir) / MIB + 2;
    if need > size_mib {
        return Err(DiskError::TooSmall { name: name.into(), need_mib: need, size_mib });
    }
    let _ = std::fs::remove_file(out);
    cmd::output(
        at_epoch("mkfs.vfat", epoch, ["-C", "--invariant", "-n", label, "-i", volume_id])
            .arg(out)
            .arg((size_mib * 1024).to_string()),
    )?;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&abs).map_err(io(&abs))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries.iter().rev() {
            let r = rel.join(e.file_name());
            let target = format!("::/{}", r.display());
            if e.path().is_dir() {
                cmd::output(at_epoch("mmd", epoch, ["-i"]).arg(out).arg(&target).env("MTOOLS_SKIP_CHECK", "1"))?;
                stack.push(r);
            } else {
                cmd::output(
                    at_epoch("mcopy", epoch, ["-i"]).arg(out).arg(e.path()).arg(&target).env("MTOOLS_SKIP_CHECK", "1"),
                )?;
            }
        }
    }
    Ok(())
}

/// One partition placed on the disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placed {
    pub name: String,
    pub type_guid: String,
    pub uuid: String,
    pub start_mib: u64,
    pub size_mib: u64,
    pub image: PathBuf,
}

/// Writes the GPT onto `disk` and copies every partition image into place.
pub fn assemble(disk: &Path, label_id: &str, parts: &[Placed]) -> Result<(), DiskError> {
    let end = parts.iter().map(|p| p.start_mib + p.size_mib).max().unwrap_or(1);
    let total = (end + 1) * MIB;
    let _ = std::fs::remove_file(disk);
    let f = std::fs::File::create(disk).map_err(io(disk))?;
    f.set_len(total).map_err(io(disk))?;
    drop(f);
    let mut script = format!("label: gpt\nlabel-id: {label_id}\nunit: sectors\nfirst-lba: 2048\nsector-size: 512\n\n");
    for p in parts {
        script.push_str(&format!(
            "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
            p.start_mib * 2048,
            p.size_mib * 2048,
            p.type_guid,
            p.uuid,
            p.name
        ));
    }
    let sf = disk.with_extension("sfdisk");
    std::fs::write(&sf, &script).map_err(io(&sf))?;
    cmd::output(
        cmd::new("sh", ["-c", "sfdisk --quiet --no-reread --no-tell-kernel --wipe always \"$1\" < \"$2\"", "sh"])
            .arg(disk)
            .arg(&sf),
    )?;
    std::fs::remove_file(&sf).map_err(io(&sf))?;
    for p in parts {
        cmd::output(
            cmd::new("dd", ["bs=1M", "conv=notrunc,sparse", "status=none"])
                .arg(format!("if={}", p.image.display()))
                .arg(format!("of={}", disk.display()))
                .arg(format!("seek={}", p.start_mib)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_distinct() {
        let a = derived_uuid(&["rapbox", "0.1.0", "root-a"]);
        assert_eq!(a, derived_uuid(&["rapbox", "0.1.0", "root-a"]));
        assert_ne!(a, derived_uuid(&["rapbox", "0.1.0", "root-b"]));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
