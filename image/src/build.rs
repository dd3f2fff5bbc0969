//! `rapimage build` and `rapimage lock`: the stages in order, with progress output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cache::{Cache, CacheError};
use crate::cmd::{self, CmdError};
use crate::disk::{self, DiskError, Placed};
use crate::kernel::{self, KernelError, ModuleIndex};
use crate::lock::{Lock, LockError, Package, Role};
use crate::manifest::{self, Manifest, ManifestError};
use crate::recipe::{Content, Recipe, RecipeError};
use crate::rootfs::{self, RootfsError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("root file system: {0}")]
    Rootfs(#[from] RootfsError),
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Missing(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.into(), source }
}

/// Inputs of one build besides the recipe.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub cache: PathBuf,
    /// Overrides of the recipe's binary sources, by name.
    pub binaries: BTreeMap<String, PathBuf>,
    /// Ship the FIPS provider (false only for development images).
    pub fips: bool,
    /// Keep the root tree in <out>/work/root (for offline checks such as raphard).
    pub keep_root: bool,
}

struct Progress(Instant);

impl Progress {
    fn step(&self, what: &str) {
        eprintln!("rapimage: [{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// `rapimage lock`: resolves the recipe against the mirrors and writes recipe.lock,
/// filling the cache on the way.
pub fn lock(recipe: &Recipe, cache_dir: &Path) -> Result<Lock, BuildError> {
    let t = Progress(Instant::now());
    let cache = Cache::new(cache_dir.to_path_buf());
    let work = cache_dir.join("work-lock");
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let log = work.join("mmdebstrap.log");
    let _ = std::fs::remove_file(&log);
    t.step(&format!("resolving {} packages with mmdebstrap (log: {})", recipe.debian.packages.len(), log.display()));
    let mut packages = rootfs::resolve(recipe, &work, &cache.debs(), &log)?;
    t.step("fetching boot packages");
    cache.update(&recipe.debian.mirrors)?;
    for name in &recipe.debian.boot_packages {
        let path = cache.download(&recipe.debian.mirrors, name, None)?;
        let (n, version, arch) = crate::cache::deb_identity(&path)?;
        let sha256 = crate::cache::sha256_file(&path).map_err(io(&path))?;
        packages.push(Package { name: n, version, arch, sha256, role: Role::Boot });
    }
    let lock = Lock { recipe_fingerprint: recipe.lock_fingerprint(), packages };
    lock.write(&recipe.lock_path())?;
    t.step(&format!("wrote {} ({} packages)", recipe.lock_path().display(), lock.packages.len()));
    Ok(lock)
}

/// `rapimage build`.
pub fn build(recipe: &Recipe, opts: &BuildOptions) -> Result<PathBuf, BuildError> {
    let t = Progress(Instant::now());
    let epoch = recipe.epoch();
    let lock = Lock::read_for(&recipe.lock_path(), &recipe.lock_fingerprint())?;
    let cache = Cache::new(opts.cache.clone());
    let out = &opts.out;
    let work = out.join("work");
    unmount_below(&work);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let log = work.join("build.log");

    t.step(&format!("checking {} locked packages in {}", lock.packages.len(), cache.debs().display()));
    let all: Vec<&Package> = lock.packages.iter().collect();
    let fetched = cache.ensure(&recipe.debian.mirrors, &all)?;
    if fetched > 0 {
        t.step(&format!("downloaded {fetched} packages"));
    }

    let kpkg =
        lock.kernel().ok_or_else(|| BuildError::Missing("the lock has no linux-image-<abi>-amd64 package".into()))?;
    let idx = ModuleIndex::for_deb(&cache.path_of(kpkg), &kpkg.sha256, &opts.cache)?;
    let modules: Vec<String> = idx.closure(&recipe.kernel.modules)?.into_iter().collect();
    t.step(&format!("kernel {}: keeping {} modules", idx.version, modules.len()));

    let root = work.join("root");
    t.step(&format!("mmdebstrap {} {} (offline, log: {})", recipe.debian.suite, recipe.debian.variant, log.display()));
    rootfs::bootstrap(recipe, &lock, &cache, &modules, &work, &root, &log)?;

    t.step("overlay, binaries, FIPS provider, post-build");
    let files = rootfs::customize(recipe, &root, &opts.binaries, opts.fips, &log)?;

    // Kernel and initramfs leave the root: they are booted from the ESP (or directly).
    let boot = out.join("boot");
    let _ = std::fs::remove_dir_all(&boot);
    std::fs::create_dir_all(&boot).map_err(io(&boot))?;
    let kver = &idx.version;
    let vmlinuz = boot.join("vmlinuz");
    let initrd = boot.join("initrd.img");
    for (from, to) in [(format!("boot/vmlinuz-{kver}"), &vmlinuz), (format!("boot/initrd.img-{kver}"), &initrd)] {
        let src = root.join(&from);
        std::fs::copy(&src, to).map_err(io(&src))?;
        std::fs::remove_file(&src).map_err(io(&src))?;
    }
    for l in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let _ = std::fs::remove_file(root.join(l));
        let _ = std::fs::remove_file(root.join("boot").join(l));
    }
    kernel::extract_vmlinux(&vmlinuz, &boot.join("vmlinux"))?;

    // Layout: partition GUIDs from the recipe.
    let name = &recipe.image.name;
    let ver = &recipe.image.version;
    let mut placed = Vec::new();
    let mut start = 1;
    for p in &recipe.layout.partitions {
        placed.push(Placed {
            name: p.name.clone(),
            type_guid: disk::type_guid(&p.kind).unwrap_or_default().to_string(),
            uuid: disk::derived_uuid(&[name, ver, "partition", &p.name]),
            start_mib: start,
            size_mib: p.size_mib,
            image: work.join(format!("{}.part", p.name)),
        });
        start += p.size_mib;
    }
    let rootfs_parts: Vec<&Placed> = placed
        .iter()
        .zip(&recipe.layout.partitions)
        .filter(|(_, p)| matches!(p.content, Content::Rootfs | Content::Empty) && p.kind.starts_with("root"))
        .map(|(pl, _)| pl)
        .collect();
    let slot_a = rootfs_parts.first().map(|p| p.uuid.clone()).unwrap_or_default();
    let slot_b = rootfs_parts.get(1).map(|p| p.uuid.clone()).unwrap_or_default();
    let cmdline =
        |slot: &str, uuid: &str| format!("root=PARTUUID={uuid} ro {} rapbox.slot={slot}", recipe.kernel.cmdline);
    for (slot, uuid) in [("a", &slot_a), ("b", &slot_b)] {
        let p = boot.join(format!("cmdline-{slot}"));
        std::fs::write(&p, format!("{}\n", cmdline(slot, uuid))).map_err(io(&p))?;
    }

    // ESP: systemd-boot with one entry per slot; editing entries at boot is off.
    t.step("EFI system partition");
    let bootpkgs = work.join("bootpkgs");
    for p in lock.with_role(Role::Boot) {
        cmd::output(cmd::new("dpkg-deb", ["-x"]).arg(cache.path_of(p)).arg(&bootpkgs))?;
    }
    let sdboot = bootpkgs.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if !sdboot.is_file() {
        return Err(BuildError::Missing(format!(
            "{} not found: is systemd-boot-efi in debian.boot_packages?",
            sdboot.display()
        )));
    }
    let esp = work.join("esp");
    for d in ["EFI/BOOT", "EFI/systemd", "loader/entries", "rapbox/a"] {
        std::fs::create_dir_all(esp.join(d)).map_err(io(&esp))?;
    }
    let cp = |from: &Path, to: &str| -> Result<(), BuildError> {
        std::fs::copy(from, esp.join(to)).map(|_| ()).map_err(io(from))
    };
    cp(&sdboot, "EFI/BOOT/BOOTX64.EFI")?;
    cp(&sdboot, "EFI/systemd/systemd-bootx64.efi")?;
    cp(&vmlinuz, "rapbox/a/vmlinuz")?;
    cp(&initrd, "rapbox/a/initrd.img")?;
    let write = |to: &str, text: String| -> Result<(), BuildError> {
        let p = esp.join(to);
        std::fs::write(&p, text).map_err(io(&p))
    };
    write(
        "loader/loader.conf",
        "default rapbox-a.conf\ntimeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n".into(),
    )?;
    for (slot, uuid) in [("a", &slot_a), ("b", &slot_b)] {
        write(
            &format!("loader/entries/rapbox-{slot}.conf"),
            format!(
                "title {name} {ver} (slot {})\nlinux /rapbox/{slot}/vmlinuz\ninitrd /rapbox/{slot}/initrd.img\noptions {}\n",
                slot.to_uppercase(),
                cmdline(slot, uuid)
            ),
        )?;
    }

    // Data partition skeleton.
    let data = work.join("data");
    std::fs::create_dir_all(&data).map_err(io(&data))?;
    for d in &recipe.data.dirs {
        let p = data.join(&d.path);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
        let mode = u32::from_str_radix(&d.mode, 8).unwrap_or(0o755);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io(&p))?;
    }

    for dir in [&root, &esp, &data] {
        rootfs::clamp_mtimes(dir, epoch)?;
    }

    t.step("file systems");
    for (pl, p) in placed.iter().zip(&recipe.layout.partitions) {
        let fs_uuid = disk::derived_uuid(&[name, ver, "filesystem", &p.name]);
        let label = p.fs_label.clone().unwrap_or_else(|| p.name.clone());
        match p.content {
            Content::Rootfs => disk::ext4(&root, &pl.image, &p.name, &label, &fs_uuid, p.size_mib, epoch)?,
            Content::Data => disk::ext4(&data, &pl.image, &p.name, &label, &fs_uuid, p.size_mib, epoch)?,
            Content::Empty => disk::empty(&pl.image, p.size_mib)?,
            Content::Esp => {
                let vol = fs_uuid.replace('-', "")[..8].to_string();
                disk::vfat(&esp, &pl.image, &p.name, &recipe.layout.esp_label, &vol, p.size_mib, epoch)?
            }
        }
    }

    t.step("disk image");
    let image = out.join(format!("{name}.img"));
    let label_id = disk::derived_uuid(&[name, ver, "disk"]);
    disk::assemble(&image, &label_id, &placed)?;

    let manifest = Manifest {
        image: name,
        version: ver,
        source_date_epoch: epoch,
        suite: &recipe.debian.suite,
        kernel_package: format!("{} {}", kpkg.name, kpkg.version),
        kernel_release: idx.version.clone(),
        kernel_cmdline: cmdline("a", &slot_a),
        kernel_modules: modules,
        packages: lock.packages.iter().collect(),
        purged: &recipe.debian.purge,
        files,
        fips_provider: opts.fips,
        disk_label_id: label_id,
        partitions: placed
            .iter()
            .map(|p| Placed { image: PathBuf::from(format!("{}.part", p.name)), ..p.clone() })
            .collect(),
    };
    manifest.write(&out.join("manifest.json"))?;
    let img_name = format!("{name}.img");
    manifest::write_sums(
        out,
        &[&img_name, "boot/vmlinuz", "boot/vmlinux", "boot/initrd.img", "boot/cmdline-a", "manifest.json"],
    )?;
    if !opts.keep_root {
        std::fs::remove_dir_all(work.join("root")).map_err(io(&work))?;
    }
    for pl in &placed {
        let _ = std::fs::remove_file(&pl.image);
    }
    t.step(&format!("done: {}", image.display()));
    Ok(image)
}

/// Unmounts what a failed mmdebstrap run left mounted below `dir` (its file-mirror
/// bind mount), deepest first, so the work tree can be removed safely.
fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    let mut below: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&prefix)).collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in below {
        eprintln!("rapimage: unmounting {m} left by an earlier failed build");
        let _ = std::process::Command::new("umount").arg("--lazy").arg(m).status();
    }
}
