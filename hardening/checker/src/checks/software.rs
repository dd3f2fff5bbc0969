//! Controls 20-25: forbidden servers, compilers and debuggers (packages, programs,
//! busybox applets) and package currency against the build's apt lists.

use std::cmp::Ordering;

use super::files::system_dir_prefixes;
use super::{sample, Ctx};
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
    let Some(pkgs) = installed(ctx) else {
        return Verdict::fail("var/lib/dpkg/status is missing");
    };
    let mut bad = Vec::new();
    for p in &pkgs {
        match offered.newest.get(&p.name) {
            Some(v) if dpkg::compare(&p.version, v) == Ordering::Less => {
                bad.push(format!("{} {} installed, {} offered", p.name, p.version, v))
            }
            Some(_) => {}
            None => bad.push(format!("{} {} is not in the apt lists (currency unknown)", p.name, p.version)),
        }
    }
    let lists = format!("{} lists ({})", offered.lists.len(), offered.dates.join("; "));
    if bad.is_empty() {
        Verdict::pass(format!("{} packages at the newest version of {lists}", pkgs.len()))
    } else {
        Verdict::fail(format!("not the newest version: {} [{lists}]", sample(&bad, 20)))
    }
}
