//! Controls 20-25: forbidden servers, compilers and debuggers (packages, programs,
//! busybox applets) and package currency against the build's apt lists.

use std::cmp::Ordering;

use super::files::system_dir_prefixes;
use super::Ctx;
use crate::dpkg;
use crate::policy::{glob, DenyKind};
use crate::report::Verdict;
use crate::root::FileKind;

pub fn check(ctx: &Ctx, id: u8) -> Verdict {
    match id {
        20..=24 => denied(ctx, id),
        25 => current(ctx),
        _ => unreachable!("software::check called for control {id}"),
    }
}

const PROGRAM_DIRS: &[&str] =
    &["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/usr/libexec", "/usr/games"];

fn installed(ctx: &Ctx) -> Option<Vec<dpkg::Installed>> {
    ctx.root.read("/var/lib/dpkg/status").map(|t| dpkg::installed(&t))
}

fn denied(ctx: &Ctx, id: u8) -> Verdict {
    let rules: Vec<_> = ctx.policy.deny.iter().filter(|r| r.control == id).collect();
    let mut bad = Vec::new();
    let Some(pkgs) = installed(ctx) else {
        return Verdict::fail("var/lib/dpkg/status is missing: the installed packages cannot be shown");
    };
    for p in &pkgs {
        let hit = rules.iter().find(|r| r.kind == DenyKind::Package && glob(&r.pattern, &p.name));
        let except = rules.iter().any(|r| r.kind == DenyKind::Except && glob(&r.pattern, &p.name));
        if let (Some(r), false) = (hit, except) {
            bad.push(format!("package {} {} installed (deny-list `{}`)", p.name, p.version, r.pattern));
        }
    }
    let prefixes = system_dir_prefixes(ctx, PROGRAM_DIRS);
    let in_program_dir = |path: &str| prefixes.iter().any(|p| path.rsplit_once('/').is_some_and(|(d, _)| d == p));
    for e in
        ctx.entries.iter().filter(|e| matches!(e.kind, FileKind::File | FileKind::Symlink) && in_program_dir(&e.path))
    {
        let name = e.path.rsplit('/').next().unwrap_or("");
        if let Some(r) = rules.iter().find(|r| r.kind == DenyKind::Program && glob(&r.pattern, name)) {
            if e.kind == FileKind::Symlink || e.mode & 0o111 != 0 {
                bad.push(format!("program {} present (deny-list `{}`)", e.path, r.pattern));
            }
        }
    }
    let applets: Vec<_> = rules.iter().filter(|r| r.kind == DenyKind::Applet).collect();
    if !applets.is_empty() {
        for e in ctx.entries.iter().filter(|e| e.kind == FileKind::File) {
            let name = e.path.rsplit('/').next().unwrap_or("");
            if !(name.starts_with("busybox") || name == "toybox") {
                continue;
            }
            let Ok(bytes) = std::fs::read(ctx.root.raw(&e.path)) else { continue };
            for r in &applets {
                let needle = format!("\0{}\0", r.pattern);
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    bad.push(format!("{} includes the {} applet", e.path, r.pattern));
                }
            }
        }
    }
    let kinds: Vec<&str> = rules
        .iter()
        .filter(|r| r.kind != DenyKind::Except)
        .map(|r| r.pattern.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Verdict::from_problems(bad, format!("none of {} installed or present", kinds.join(", ")))
}

/// The codename of the tree's Debian release (VERSION_CODENAME in etc/os-release or
/// usr/lib/os-release).
fn codename(ctx: &Ctx) -> Option<String> {
    let text = ctx.root.read("/etc/os-release").or_else(|| ctx.root.read("/usr/lib/os-release"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// Packages the image ships outside the root file system's dpkg database: the
/// manifest's packages of another role than `rootfs` (the boot loader on the ESP).
fn shipped_outside_dpkg(path: &std::path::Path) -> Result<Vec<(String, String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let pkgs = v["packages"].as_array().ok_or_else(|| format!("{}: no `packages` list", path.display()))?;
    let mut out = Vec::new();
    for p in pkgs {
        let role = p["role"].as_str().unwrap_or("rootfs");
        if role == "rootfs" {
            continue;
        }
        match (p["name"].as_str(), p["version"].as_str()) {
            (Some(n), Some(v)) => out.push((n.to_string(), v.to_string(), role.to_string())),
            _ => return Err(format!("{}: a package without name or version: {p}", path.display())),
        }
    }
    Ok(out)
}

/// Control 25: every shipped Debian package at the newest version that the suite and
/// its security suite offer in the apt lists of the build (refreshed at build time by
/// scripts/build-image.sh). Every package that is not is listed, none left out.
fn current(ctx: &Ctx) -> Verdict {
    let Some(dir) = &ctx.inputs.apt_lists else {
        return Verdict::not_evaluated(
            "no --apt-lists DIR given: without the build's apt lists the newest bookworm/bookworm-security versions are unknown",
        );
    };
    let offered = match dpkg::offered(dir) {
        Ok(o) => o,
        Err(e) => return Verdict::not_evaluated(format!("apt lists unreadable: {e}")),
    };
    if offered.newest.is_empty() {
        return Verdict::not_evaluated(format!(
            "{}: no *_Packages, *_Packages.lz4 or *_Packages.gz list",
            dir.display()
        ));
    }
    let Some(suite) = codename(ctx) else {
        return Verdict::fail("no VERSION_CODENAME in etc/os-release: the suites to compare against are unknown");
    };
    let mut bad = Vec::new();
    for need in [suite.clone(), format!("{suite}-security")] {
        if !offered.suites.contains(&need) {
            bad.push(format!(
                "no {need} Packages list in {} (lists of: {}): currency against {need} unknown",
                dir.display(),
                offered.suites.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let Some(mut pkgs) = installed(ctx)
        .map(|p| p.into_iter().map(|p| (p.name, p.version, String::new())).collect::<Vec<(String, String, String)>>())
    else {
        return Verdict::fail("var/lib/dpkg/status is missing");
    };
    let from_dpkg = pkgs.len();
    if let Some(m) = &ctx.inputs.manifest {
        match shipped_outside_dpkg(m) {
            Ok(extra) => pkgs.extend(extra.into_iter().map(|(n, v, r)| (n, v, format!(" ({r} package)")))),
            Err(e) => bad.push(format!("manifest unreadable: {e}")),
        }
    }
    for (name, version, note) in &pkgs {
        match offered.newest.get(name) {
            Some(v) if dpkg::compare(version, v) == Ordering::Less => bad.push(format!(
                "{name}{note} {version} installed, {v} offered by {}",
                offered.newest_from.get(name).map(String::as_str).unwrap_or("?")
            )),
            Some(_) => {}
            None => bad.push(format!("{name}{note} {version} is not in the apt lists (currency unknown)")),
        }
    }
    let lists = format!("{} lists ({})", offered.lists.len(), offered.dates.join("; "));
    let counted = match pkgs.len() - from_dpkg {
        0 => format!("{from_dpkg} packages"),
        n => format!("{} packages ({from_dpkg} in var/lib/dpkg/status, {n} from the manifest)", pkgs.len()),
    };
    if bad.is_empty() {
        Verdict::pass(format!("{counted} at the newest version of {lists}"))
    } else {
        // All of them: the report is the list of what must be updated.
        Verdict::fail(format!("{} of {counted} not current: {} [{lists}]", bad.len(), bad.join(", ")))
    }
}
