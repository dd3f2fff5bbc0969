//! The kernel: which module files of the locked kernel package the image keeps (the
//! recipe's list closed over modules.dep and soft dependencies), and the uncompressed
//! vmlinux extracted from the bzImage for direct (PVH) boot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::cmd::{self, CmdError};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{deb}: no /lib/modules/<version> directory in the kernel package")]
    NoModules { deb: PathBuf },
    #[error("kernel {version}: module `{module}` from the recipe is neither a module nor built in")]
    UnknownModule { version: String, module: String },
    #[error("{path}: no compressed payload that decompresses to an ELF vmlinux")]
    NoVmlinux { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io { path: path.into(), source }
}

/// Module metadata of one kernel, as depmod computes it.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    pub version: String,
    /// module name -> path relative to /lib/modules/<version>
    pub paths: BTreeMap<String, String>,
    /// module path -> dependency paths
    pub deps: BTreeMap<String, Vec<String>>,
    /// module name -> soft dependencies (pre: and post:)
    pub softdeps: BTreeMap<String, Vec<String>>,
    pub builtin: BTreeSet<String>,
}

fn modname(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

impl ModuleIndex {
    /// Indexes the modules of the kernel package `deb`, caching depmod's output in
    /// `cache_dir` (keyed by the package hash) so the 400 MB tree is unpacked once.
    pub fn for_deb(deb: &Path, sha256: &str, cache_dir: &Path) -> Result<ModuleIndex, KernelError> {
        let dir = cache_dir.join(format!("kernel-{}", &sha256[..16]));
        let done = dir.join("index-complete");
        if !done.exists() {
            let tree = dir.join("tree");
            let _ = std::fs::remove_dir_all(&tree);
            std::fs::create_dir_all(&tree).map_err(io(&tree))?;
            eprintln!("rapimage: indexing kernel modules of {}", deb.display());
            let script = "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './lib/modules/*' './usr/lib/modules/*' 2>/dev/null || dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './lib/modules/*'";
            cmd::output(cmd::new("sh", ["-c", script, "sh"]).arg(deb).arg(&tree))?;
            let mods = tree.join("lib/modules");
            let version = std::fs::read_dir(&mods)
                .map_err(io(&mods))?
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .next()
                .ok_or_else(|| KernelError::NoModules { deb: deb.into() })?;
            cmd::output(cmd::new("depmod", ["-b"]).arg(&tree).arg(&version))?;
            for f in ["modules.dep", "modules.softdep", "modules.builtin"] {
                let src = mods.join(&version).join(f);
                std::fs::copy(&src, dir.join(f)).map_err(io(&src))?;
            }
            std::fs::write(dir.join("version"), &version).map_err(io(&dir))?;
            std::fs::remove_dir_all(&tree).map_err(io(&tree))?;
            std::fs::write(&done, "").map_err(io(&done))?;
        }
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(io(&p))
        };
        let version = read("version")?.trim().to_string();
        let mut idx = ModuleIndex {
            version,
            paths: BTreeMap::new(),
            deps: BTreeMap::new(),
            softdeps: BTreeMap::new(),
            builtin: BTreeSet::new(),
        };
        for line in read("modules.dep")?.lines() {
            if let Some((m, deps)) = line.split_once(':') {
                idx.paths.insert(modname(m), m.to_string());
                idx.deps.insert(m.to_string(), deps.split_whitespace().map(str::to_string).collect());
            }
        }
        for line in read("modules.softdep")?.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(m) = words.next() else { continue };
            let soft = words.filter(|w| !w.ends_with(':')).map(|w| w.replace('-', "_")).collect();
            idx.softdeps.insert(m.replace('-', "_"), soft);
        }
        for line in read("modules.builtin")?.lines() {
            idx.builtin.insert(modname(line));
        }
        Ok(idx)
    }

    /// Paths (relative to /lib/modules/<version>) of `wanted` and everything they need.
    pub fn closure(&self, wanted: &[String]) -> Result<BTreeSet<String>, KernelError> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = Vec::new();
        for w in wanted {
            let name = w.replace('-', "_");
            match self.paths.get(&name) {
                Some(p) => todo.push(p.clone()),
                None if self.builtin.contains(&name) => {}
                None => return Err(KernelError::UnknownModule { version: self.version.clone(), module: w.clone() }),
            }
        }
        while let Some(p) = todo.pop() {
            if !out.insert(p.clone()) {
                continue;
            }
            todo.extend(self.deps.get(&p).cloned().unwrap_or_default());
            for s in self.softdeps.get(&modname(&p)).cloned().unwrap_or_default() {
                if let Some(sp) = self.paths.get(&s) {
                    todo.push(sp.clone());
                }
            }
        }
        Ok(out)
    }
}

/// Extracts the uncompressed ELF vmlinux from a bzImage by trying each compressed
/// payload signature it contains (what the kernel's scripts/extract-vmlinux does).
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), KernelError> {
    let data = std::fs::read(bzimage).map_err(io(bzimage))?;
    let candidates: [(&[u8], &[&str]); 3] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], &["zstd", "-dcq"]),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], &["xz", "-dcq", "--single-stream"]),
        (&[0x1f, 0x8b, 0x08], &["gzip", "-dcq"]),
    ];
    for (magic, tool) in candidates {
        let mut start = 0;
        while let Some(pos) = data[start..].windows(magic.len()).position(|w| w == magic) {
            let off = start + pos;
            start = off + 1;
            let tmp = out.with_extension("payload");
            std::fs::write(&tmp, &data[off..]).map_err(io(&tmp))?;
            let res = std::process::Command::new(tool[0])
                .args(&tool[1..])
                .stdin(std::fs::File::open(&tmp).map_err(io(&tmp))?)
                .stderr(std::process::Stdio::null())
                .output();
            let _ = std::fs::remove_file(&tmp);
            if let Ok(o) = res {
                if o.stdout.starts_with(b"\x7fELF") {
                    std::fs::write(out, &o.stdout).map_err(io(out))?;
                    return Ok(());
                }
            }
        }
    }
    Err(KernelError::NoVmlinux { path: bzimage.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_follows_hard_and_soft_deps() {
        let mut idx = ModuleIndex {
            version: "6.1".into(),
            paths: BTreeMap::new(),
            deps: BTreeMap::new(),
            softdeps: BTreeMap::new(),
            builtin: BTreeSet::new(),
        };
        for (n, p) in [
            ("ext4", "kernel/fs/ext4/ext4.ko"),
            ("jbd2", "kernel/fs/jbd2/jbd2.ko"),
            ("crc32c_generic", "kernel/crypto/crc32c_generic.ko"),
        ] {
            idx.paths.insert(n.into(), p.into());
        }
        idx.deps.insert("kernel/fs/ext4/ext4.ko".into(), vec!["kernel/fs/jbd2/jbd2.ko".into()]);
        idx.softdeps.insert("ext4".into(), vec!["crc32c".into(), "crc32c_generic".into()]);
        idx.builtin.insert("unix".into());
        let c = idx.closure(&["ext4".into(), "unix".into()]).unwrap();
        assert_eq!(c.len(), 3);
        assert!(matches!(idx.closure(&["nope".into()]), Err(KernelError::UnknownModule { .. })));
    }
}
