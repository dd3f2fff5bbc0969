//! The root file system: mmdebstrap (minbase + the recipe's packages) from a local
//! flat repository holding exactly the locked .debs, then the overlay, our binaries,
//! the FIPS provider, the post-build script and the clean-up that keeps per-box
//! identity out of the image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cmd::{self, CmdError};
use crate::lock::{Lock, Package, Role};
use crate::recipe::Recipe;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("installed packages differ from the lock: {0}")]
    Mismatch(String),
    #[error("binary `{name}`: {path} does not exist (build it, or pass --binary {name}=PATH)")]
    MissingBinary { name: String, path: PathBuf },
    #[error("FIPS provider {path} does not exist: run scripts/build-fips.sh (RAPBOX_FIPS_DIR) or pass --without-fips for a development image")]
    MissingFips { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io { path: path.into(), source }
}

/// Options for mmdebstrap common to `lock` and `build`.
fn dpkg_filters(recipe: &Recipe, modules: Option<&[String]>) -> Vec<String> {
    let mut v = Vec::new();
    for p in &recipe.debian.path_exclude {
        v.push(format!("--dpkgopt=path-exclude={p}"));
    }
    for p in &recipe.debian.path_include {
        v.push(format!("--dpkgopt=path-include={p}"));
    }
    v.push("--dpkgopt=path-exclude=/lib/modules/*/kernel/*".into());
    v.push("--dpkgopt=path-exclude=/usr/lib/modules/*/kernel/*".into());
    for m in modules.unwrap_or(&[]) {
        v.push(format!("--dpkgopt=path-include=/lib/modules/*/{m}"));
        v.push(format!("--dpkgopt=path-include=/usr/lib/modules/*/{m}"));
    }
    v
}

/// Files put into the target before any package is unpacked: the initramfs
/// configuration (only the modules needed to mount the root, no busybox).
fn setup_tree(recipe: &Recipe, dir: &Path) -> Result<(), RootfsError> {
    let conf = dir.join("etc/initramfs-tools/conf.d");
    let hooks = dir.join("etc/initramfs-tools/hooks");
    std::fs::create_dir_all(&conf).map_err(io(&conf))?;
    std::fs::create_dir_all(&hooks).map_err(io(&hooks))?;
    let c = conf.join("rapbox.conf");
    std::fs::write(
        &c,
        "# rapbox: only the listed modules, klibc tools, zstd.\nMODULES=list\nBUSYBOX=n\nCOMPRESS=zstd\nRESUME=none\n",
    )
    .map_err(io(&c))?;
    let h = hooks.join("rapbox-modules");
    let mods = recipe.kernel.initramfs_modules.join(" ");
    let text = format!(
        "#!/bin/sh\n# rapbox: modules the initramfs loads to mount the root file system.\nset -e\ncase \"$1\" in prereqs) exit 0 ;; esac\n. /usr/share/initramfs-tools/hook-functions\nfor m in {mods}; do force_load \"$m\"; done\n"
    );
    std::fs::write(&h, text).map_err(io(&h))?;
    set_mode(&h, 0o755)?;
    // No udev in the initramfs: the modules to mount the root are loaded explicitly
    // (above), devtmpfs creates /dev/vdaN as the disk is probed, and initramfs-tools
    // resolves root=PARTUUID= with blkid, polling every 0.1 s until it appears.
    // Starting udevd, triggering and settling every device only to throw that away
    // when systemd's udevd does it again on the root cost seconds under TCG. What
    // udev's init-bottom script also did, moving /dev onto the root, stays.
    let h = hooks.join("rapbox-no-udev");
    std::fs::write(&h, NO_UDEV_HOOK).map_err(io(&h))?;
    set_mode(&h, 0o755)?;
    Ok(())
}

const NO_UDEV_HOOK: &str = r#"#!/bin/sh
# rapbox: the initramfs runs without udev (see image/src/rootfs.rs). Hooks in
# /etc/initramfs-tools run after those of /usr/share (udev's), and the boot scripts
# are copied in before any hook runs, so this edits what udev put in.
set -e
PREREQ=""
case "$1" in prereqs) echo "$PREREQ"; exit 0 ;; esac
rm -f "$DESTDIR/bin/udevadm" "$DESTDIR/usr/bin/udevadm" "$DESTDIR/lib/systemd/systemd-udevd" \
      "$DESTDIR/usr/lib/systemd/systemd-udevd"
rm -rf "$DESTDIR/lib/udev" "$DESTDIR/usr/lib/udev" "$DESTDIR/etc/udev"
if [ -f "$DESTDIR/scripts/init-top/udev" ]; then
    printf '#!/bin/sh\n# rapbox: no udevd in the initramfs\nexit 0\n' > "$DESTDIR/scripts/init-top/udev"
fi
if [ -f "$DESTDIR/scripts/init-bottom/udev" ]; then
    cat > "$DESTDIR/scripts/init-bottom/udev" <<'EOS'
#!/bin/sh
case "$1" in prereqs) exit 0 ;; esac
# rapbox: no udevd to stop; move /dev onto the root as udev's script did.
mount -n -o move /dev "${rootmnt:?}/dev"
nuke /dev
ln -s "${rootmnt}/dev" /dev
EOS
fi
exit 0
"#;

fn set_mode(p: &Path, mode: u32) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))
}

/// Installed packages from a root's dpkg status: name -> (version, arch).
pub fn installed(root: &Path) -> Result<BTreeMap<String, (String, String)>, RootfsError> {
    let out = cmd::stdout(
        cmd::new("dpkg-query", ["--admindir"])
            .arg(root.join("var/lib/dpkg"))
            .args(["-W", "-f=${db:Status-Abbrev}\\t${Package}\\t${Version}\\t${Architecture}\\n"]),
    )?;
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 4 && f[0].starts_with("ii") {
            m.insert(f[1].to_string(), (f[2].to_string(), f[3].to_string()));
        }
    }
    Ok(m)
}

/// Runs mmdebstrap against the real mirrors and returns the packages it installed,
/// with the .debs it downloaded copied into `debs_out` (for `rapimage lock`).
pub fn resolve(recipe: &Recipe, work: &Path, debs_out: &Path, log: &Path) -> Result<Vec<Package>, RootfsError> {
    let target = work.join("lock-root");
    let _ = std::fs::remove_dir_all(&target);
    let setup = work.join("setup");
    setup_tree(recipe, &setup)?;
    let mut c = std::process::Command::new("mmdebstrap");
    c.env("SOURCE_DATE_EPOCH", recipe.epoch().to_string())
        .arg("--mode=root")
        .arg(format!("--variant={}", recipe.debian.variant))
        // merged /usr set up by mmdebstrap itself (usr-is-merged), so apt does not
        // pick usrmerge, which would pull perl into the image
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
        .arg("--skip=download/empty,essential/unlink,cleanup/apt/cache")
        .args(dpkg_filters(recipe, None))
        .arg(format!("--include={}", recipe.debian.packages.join(",")))
        .arg(format!("--setup-hook=cp -a {}/. \"$1\"/", setup.display()))
        .arg(&recipe.debian.suite)
        .arg(&target);
    for m in &recipe.debian.mirrors {
        c.arg(m);
    }
    cmd::logged(&mut c, log)?;
    let inst = installed(&target)?;
    let archives = target.join("var/cache/apt/archives");
    std::fs::create_dir_all(debs_out).map_err(io(debs_out))?;
    let mut by_id = BTreeMap::new();
    for e in std::fs::read_dir(&archives).map_err(io(&archives))? {
        let p = e.map_err(io(&archives))?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            let id = crate::cache::deb_identity(&p).map_err(|e| RootfsError::Mismatch(e.to_string()))?;
            by_id.insert(id, p);
        }
    }
    let mut pkgs = Vec::new();
    for (name, (version, arch)) in inst {
        let src = by_id.get(&(name.clone(), version.clone(), arch.clone())).ok_or_else(|| {
            RootfsError::Mismatch(format!("{name}={version} is installed but its .deb was not kept by mmdebstrap"))
        })?;
        let mut p = Package { name, version, arch, sha256: String::new(), role: Role::Rootfs };
        let dest = debs_out.join(p.filename());
        std::fs::copy(src, &dest).map_err(io(&dest))?;
        p.sha256 = crate::cache::sha256_file(&dest).map_err(io(&dest))?;
        pkgs.push(p);
    }
    std::fs::remove_dir_all(&target).map_err(io(&target))?;
    Ok(pkgs)
}

/// A flat apt repository holding exactly the locked root file system packages.
fn flat_repo(
    lock: &Lock,
    cache: &crate::cache::Cache,
    repo: &Path,
    suite: &str,
    date: &str,
) -> Result<(), RootfsError> {
    let _ = std::fs::remove_dir_all(repo);
    std::fs::create_dir_all(repo).map_err(io(repo))?;
    for p in lock.with_role(Role::Rootfs) {
        let src = cache.path_of(p);
        let dest = repo.join(p.filename());
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(io(&dest))?;
        }
    }
    let packages = cmd::output(cmd::new("apt-ftparchive", ["packages", "."]).current_dir(repo))?;
    let idx = repo.join("Packages");
    std::fs::write(&idx, &packages.stdout).map_err(io(&idx))?;
    // mmdebstrap selects packages by suite and codename: the repository says which.
    let release = cmd::output(
        cmd::new("apt-ftparchive", ["release", "."])
            .arg(format!("-oAPT::FTPArchive::Release::Suite={suite}"))
            .arg(format!("-oAPT::FTPArchive::Release::Codename={suite}"))
            .arg("-oAPT::FTPArchive::Release::Origin=rapbox")
            .arg(format!("-oAPT::FTPArchive::Release::Date={date}"))
            .current_dir(repo),
    )?;
    let rel = repo.join("Release");
    std::fs::write(&rel, &release.stdout).map_err(io(&rel))?;
    Ok(())
}

/// Runs mmdebstrap offline from the locked packages into `target`.
pub fn bootstrap(
    recipe: &Recipe,
    lock: &Lock,
    cache: &crate::cache::Cache,
    module_paths: &[String],
    work: &Path,
    target: &Path,
    log: &Path,
) -> Result<(), RootfsError> {
    let repo = work.join("repo");
    let date = cmd::stdout(cmd::new("date", ["-u", "-R", "-d"]).arg(format!("@{}", recipe.epoch())))?;
    flat_repo(lock, cache, &repo, &recipe.debian.suite, date.trim())?;
    let setup = work.join("setup");
    setup_tree(recipe, &setup)?;
    let _ = std::fs::remove_dir_all(target);
    let mut c = std::process::Command::new("mmdebstrap");
    c.env("SOURCE_DATE_EPOCH", recipe.epoch().to_string())
        .arg("--mode=root")
        .arg(format!("--variant={}", recipe.debian.variant))
        // merged /usr set up by mmdebstrap itself (usr-is-merged), so apt does not
        // pick usrmerge, which would pull perl into the image
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
        .arg("--aptopt=Acquire::Languages \"none\"")
        .args(dpkg_filters(recipe, Some(module_paths)))
        // Every locked package by name: the flat repository carries the packages'
        // own Priority fields, not the archive's, so minbase's priority-based
        // selection alone would not reproduce the locked set.
        .arg(format!(
            "--include={}",
            lock.with_role(Role::Rootfs).map(|p| p.name.as_str()).collect::<Vec<_>>().join(",")
        ))
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount")
        .arg(format!("--setup-hook=cp -a {}/. \"$1\"/", setup.display()));
    if !recipe.debian.purge.is_empty() {
        c.arg(format!("--customize-hook=chroot \"$1\" dpkg --purge {}", recipe.debian.purge.join(" ")));
    }
    c.arg(&recipe.debian.suite).arg(target).arg(format!("deb [trusted=yes] file://{} ./", repo.display()));
    cmd::logged(&mut c, log)?;
    // The file-mirror hook leaves the repository's mount point path behind, and the
    // sources.list names the build directory: neither belongs in the image (apt is
    // not used on the box).
    let mut dir = target.join(repo.strip_prefix("/").unwrap_or(&repo));
    while dir.starts_with(target) && dir != target {
        if std::fs::remove_dir(&dir).is_err() {
            break;
        }
        dir = dir.parent().unwrap_or(target).to_path_buf();
    }
    for f in ["etc/apt/sources.list", "etc/apt/apt.conf.d/99mmdebstrap", "etc/dpkg/dpkg.cfg.d/99mmdebstrap"] {
        let _ = std::fs::remove_file(target.join(f));
    }
    verify_installed(recipe, lock, target)
}

/// Every installed package is the locked version, and every locked one is installed
/// (except those the recipe purges).
fn verify_installed(recipe: &Recipe, lock: &Lock, target: &Path) -> Result<(), RootfsError> {
    let inst = installed(target)?;
    let mut problems = Vec::new();
    for p in lock.with_role(Role::Rootfs) {
        match inst.get(&p.name) {
            Some((v, _)) if *v == p.version => {}
            Some((v, _)) => problems.push(format!("{} {} installed, {} locked", p.name, v, p.version)),
            None if recipe.debian.purge.contains(&p.name) => {}
            None => problems.push(format!("{} {} locked but not installed", p.name, p.version)),
        }
    }
    for (n, (v, _)) in &inst {
        if !lock.with_role(Role::Rootfs).any(|p| &p.name == n) {
            problems.push(format!("{n} {v} installed but not locked"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RootfsError::Mismatch(problems.join("; ")))
    }
}

/// Copies a tree onto the root (Buildroot overlay semantics: verbatim, root-owned).
pub fn copy_tree(src: &Path, dest: &Path) -> Result<(), RootfsError> {
    let mut entries: Vec<_> = std::fs::read_dir(src).map_err(io(src))?.collect::<Result<_, _>>().map_err(io(src))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let from = e.path();
        let to = dest.join(e.file_name());
        let ft = e.file_type().map_err(io(&from))?;
        if ft.is_symlink() {
            let t = std::fs::read_link(&from).map_err(io(&from))?;
            let _ = std::fs::remove_file(&to);
            std::os::unix::fs::symlink(&t, &to).map_err(io(&to))?;
        } else if ft.is_dir() {
            if to.is_symlink() {
                // e.g. /lib -> usr/lib: follow it
            } else if !to.exists() {
                std::fs::create_dir(&to).map_err(io(&to))?;
            }
            copy_tree(&from, &to)?;
        } else {
            if to.is_symlink() {
                std::fs::remove_file(&to).map_err(io(&to))?;
            }
            std::fs::copy(&from, &to).map_err(io(&to))?;
        }
    }
    Ok(())
}

fn install_file(src: &Path, root: &Path, dest: &Path, mode: u32) -> Result<PathBuf, RootfsError> {
    let to = root.join(dest.strip_prefix("/").unwrap_or(dest));
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::copy(src, &to).map_err(io(&to))?;
    set_mode(&to, mode)?;
    Ok(to)
}

/// What was put into the root besides packages (for the manifest).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    pub name: String,
    /// Relative to the workspace root when inside it (the manifest does not depend
    /// on where the tree is checked out).
    pub source: PathBuf,
    pub dest: PathBuf,
    pub sha256: String,
}

/// Overlay, binaries, FIPS provider, post-build script, identity removal.
pub fn customize(
    recipe: &Recipe,
    root: &Path,
    binaries: &BTreeMap<String, PathBuf>,
    fips: bool,
    log: &Path,
) -> Result<Vec<Installed>, RootfsError> {
    let mut done = Vec::new();
    for dir in &recipe.overlay.dirs {
        copy_tree(&recipe.resolve(dir), root)?;
    }
    for b in &recipe.binaries {
        let src = binaries.get(&b.name).cloned().unwrap_or_else(|| recipe.resolve(&b.source));
        if !src.is_file() {
            return Err(RootfsError::MissingBinary { name: b.name.clone(), path: src });
        }
        install_file(&src, root, &b.dest, 0o755)?;
        let sha256 = crate::cache::sha256_file(&src).map_err(io(&src))?;
        let source = src.strip_prefix(&recipe.root).map(Path::to_path_buf).unwrap_or(src);
        done.push(Installed { name: b.name.clone(), source, dest: b.dest.clone(), sha256 });
    }
    let f = &recipe.fips;
    let module_dir = std::env::var_os("RAPBOX_FIPS_DIR").map(PathBuf::from).unwrap_or_else(|| f.module_dir.clone());
    let module = module_dir.join(&f.module);
    if fips {
        if !module.is_file() {
            return Err(RootfsError::MissingFips { path: module });
        }
        // Copied byte for byte: its HMAC is checked by `openssl fipsinstall` on the box.
        install_file(&module, root, &f.image_module, 0o644)?;
        let sha256 = crate::cache::sha256_file(&module).map_err(io(&module))?;
        done.push(Installed { name: "fips.so".into(), source: module, dest: f.image_module.clone(), sha256 });
    }
    let tpl = recipe.resolve(&f.config_template);
    let text = std::fs::read_to_string(&tpl).map_err(io(&tpl))?;
    let text = text
        .replace("@FIPSMODULE_CNF@", &f.image_fipsmodule_cnf.to_string_lossy())
        .replace("@FIPS_MODULE@", &f.image_module.to_string_lossy());
    let cfg = root.join(f.image_config.strip_prefix("/").unwrap_or(&f.image_config));
    std::fs::create_dir_all(cfg.parent().unwrap_or(root)).map_err(io(&cfg))?;
    std::fs::write(&cfg, text).map_err(io(&cfg))?;
    set_mode(&cfg, 0o644)?;

    let hostname = root.join("etc/hostname");
    std::fs::write(&hostname, format!("{}\n", recipe.image.hostname)).map_err(io(&hostname))?;
    let hosts = root.join("etc/hosts");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            recipe.image.hostname
        ),
    )
    .map_err(io(&hosts))?;

    if let Some(script) = &recipe.overlay.post_build {
        let script = recipe.resolve(script);
        cmd::logged(cmd::new("sh", [&script]).arg(root).env("TARGET_DIR", root), log)?;
    }
    remove_identity(root)?;
    Ok(done)
}

/// Per-box identity and build leftovers never ship: machine-id empty, no SSH host
/// keys, no apt lists or caches, no logs, no resolv.conf copied from the build host.
pub fn remove_identity(root: &Path) -> Result<(), RootfsError> {
    let mid = root.join("etc/machine-id");
    std::fs::write(&mid, "").map_err(io(&mid))?;
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    let ssh = root.join("etc/ssh");
    if ssh.is_dir() {
        for e in std::fs::read_dir(&ssh).map_err(io(&ssh))? {
            let p = e.map_err(io(&ssh))?.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ssh_host_")) {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
    }
    for d in ["var/cache/apt", "var/lib/apt", "var/log", "var/cache/debconf", "tmp", "var/tmp"] {
        let p = root.join(d);
        if !p.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&p).map_err(io(&p))? {
            let e = e.map_err(io(&p))?;
            let ep = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if d == "var/cache/debconf" && !name.ends_with("-old") {
                continue;
            }
            if e.file_type().map_err(io(&ep))?.is_dir() && d == "var/log" {
                // keep the directories packages created (e.g. /var/log/audit), empty them
                remove_files_in(&ep)?;
                continue;
            }
            if e.file_type().map_err(io(&ep))?.is_dir() {
                std::fs::remove_dir_all(&ep).map_err(io(&ep))?;
            } else {
                std::fs::remove_file(&ep).map_err(io(&ep))?;
            }
        }
    }
    let resolv = root.join("etc/resolv.conf");
    if resolv.is_file() && !resolv.is_symlink() {
        std::fs::write(&resolv, "").map_err(io(&resolv))?;
    }
    Ok(())
}

fn remove_files_in(dir: &Path) -> Result<(), RootfsError> {
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = e.map_err(io(dir))?.path();
        if p.is_dir() && !p.is_symlink() {
            remove_files_in(&p)?;
        } else {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

/// Sets every time stamp newer than `epoch` to `epoch`.
pub fn clamp_mtimes(dir: &Path, epoch: u64) -> Result<(), RootfsError> {
    let stamp = format!("@{epoch}");
    cmd::output(cmd::new("find", [dir]).args([
        "-newermt",
        &stamp,
        "-exec",
        "touch",
        "--no-dereference",
        "--date",
        &stamp,
        "{}",
        "+",
    ]))?;
    Ok(())
}
