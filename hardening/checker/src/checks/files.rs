//! Controls 12-19: modes and ownership on the tree (one walk, like `find -xdev`).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use super::{sample, Ctx};
use crate::report::Verdict;
use crate::root::FileKind;

pub fn check(ctx: &Ctx, id: u8) -> Verdict {
    match id {
        12 => account_files(ctx),
        13 => world_writable_files(ctx),
        14 => sticky_dirs(ctx),
        15 => unowned(ctx),
        16 => ungrouped(ctx),
        17 => suid(ctx),
        18 => system_dirs(ctx),
        19 => root_path(ctx),
        _ => unreachable!("files::check called for control {id}"),
    }
}

fn account_files(ctx: &Ctx) -> Verdict {
    let shadow_gid = ctx.gid_of("shadow");
    let mut bad = Vec::new();
    let mut found = Vec::new();
    for (path, max, secret, required) in [
        ("/etc/passwd", 0o644, false, true),
        ("/etc/group", 0o644, false, true),
        ("/etc/shadow", 0o640, true, true),
        ("/etc/gshadow", 0o640, true, false),
        ("/etc/passwd-", 0o644, false, false),
        ("/etc/group-", 0o644, false, false),
        ("/etc/shadow-", 0o640, true, false),
        ("/etc/gshadow-", 0o640, true, false),
    ] {
        let Ok(m) = std::fs::symlink_metadata(ctx.root.raw(path)) else {
            if required {
                bad.push(format!("{path} is missing"));
            }
            continue;
        };
        let mode = m.mode() & 0o7777;
        let group_ok = m.gid() == 0 || (secret && Some(m.gid()) == shadow_gid);
        if !m.file_type().is_file() {
            bad.push(format!("{path} is not a regular file"));
        }
        if m.uid() != 0 {
            bad.push(format!("{path} is owned by UID {}, not root", m.uid()));
        }
        if !group_ok {
            bad.push(format!(
                "{path} has group GID {}, not {}",
                m.gid(),
                if secret { "root or shadow" } else { "root" }
            ));
        }
        if mode & !max != 0 {
            bad.push(format!("{path} has mode {mode:04o}, more than {max:04o}"));
        }
        found.push(format!("{path} {mode:04o} {}:{}", m.uid(), m.gid()));
    }
    Verdict::from_problems(bad, found.join(", "))
}

/// Directories under which other users may legitimately write (sticky and world-writable).
fn tmp_like(ctx: &Ctx) -> Vec<String> {
    ctx.entries
        .iter()
        .filter(|e| e.kind == FileKind::Dir && e.mode & 0o1002 == 0o1002)
        .map(|e| format!("{}/", e.path.trim_end_matches('/')))
        .collect()
}

fn world_writable_files(ctx: &Ctx) -> Verdict {
    let tmp = tmp_like(ctx);
    let bad: Vec<String> = ctx
        .entries
        .iter()
        .filter(|e| e.kind == FileKind::File && e.mode & 0o002 != 0)
        .filter(|e| !tmp.iter().any(|t| e.path.starts_with(t.as_str())))
        .map(|e| format!("{} ({:04o})", e.path, e.mode))
        .collect();
    if bad.is_empty() {
        Verdict::pass(format!(
            "no world-writable regular file outside {}",
            if tmp.is_empty() { "-".into() } else { tmp.join(" ") }
        ))
    } else {
        Verdict::fail(format!("world-writable files: {}", sample(&bad, 10)))
    }
}

fn sticky_dirs(ctx: &Ctx) -> Verdict {
    let bad: Vec<String> = ctx
        .entries
        .iter()
        .filter(|e| e.kind == FileKind::Dir && e.mode & 0o002 != 0 && e.mode & 0o1000 == 0)
        .map(|e| format!("{} ({:04o})", e.path, e.mode))
        .collect();
    if bad.is_empty() {
        let dirs: Vec<String> = tmp_like(ctx);
        Verdict::pass(format!(
            "world-writable directories, all sticky: {}",
            if dirs.is_empty() { "none".into() } else { dirs.join(" ") }
        ))
    } else {
        Verdict::fail(format!("world-writable directories without the sticky bit: {}", sample(&bad, 10)))
    }
}

fn unowned(ctx: &Ctx) -> Verdict {
    let uids: BTreeSet<u32> = ctx.passwd.iter().map(|p| p.uid).collect();
    let bad: Vec<String> =
        ctx.entries.iter().filter(|e| !uids.contains(&e.uid)).map(|e| format!("{} (UID {})", e.path, e.uid)).collect();
    if bad.is_empty() {
        Verdict::pass(format!("all {} files owned by accounts of etc/passwd", ctx.entries.len()))
    } else {
        Verdict::fail(format!("files owned by no account: {}", sample(&bad, 10)))
    }
}

fn ungrouped(ctx: &Ctx) -> Verdict {
    let gids: BTreeSet<u32> = ctx.group.iter().map(|g| g.gid).collect();
    let bad: Vec<String> =
        ctx.entries.iter().filter(|e| !gids.contains(&e.gid)).map(|e| format!("{} (GID {})", e.path, e.gid)).collect();
    if bad.is_empty() {
        Verdict::pass(format!("all {} files grouped by groups of etc/group", ctx.entries.len()))
    } else {
        Verdict::fail(format!("files of no group: {}", sample(&bad, 10)))
    }
}

fn suid(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    let mut found = Vec::new();
    for e in ctx.entries.iter().filter(|e| e.kind == FileKind::File && e.mode & 0o6000 != 0) {
        let owner = ctx.user_name(e.uid).map(str::to_string).unwrap_or_else(|| e.uid.to_string());
        let group = ctx.group_name(e.gid).map(str::to_string).unwrap_or_else(|| e.gid.to_string());
        let what = format!("{} {:04o} {owner}:{group}", e.path, e.mode);
        match ctx.policy.suid.iter().find(|s| s.path == e.path) {
            None => bad.push(format!("not allow-listed: {what}")),
            Some(s) if s.mode != e.mode || s.owner != owner || s.group != group => {
                bad.push(format!("{what} differs from the allow-list ({:04o} {}:{})", s.mode, s.owner, s.group))
            }
            Some(_) => found.push(what),
        }
    }
    Verdict::from_problems(
        bad,
        format!("SUID/SGID files: {}", if found.is_empty() { "none".into() } else { found.join(", ") }),
    )
}

const BIN_DIRS: &[&str] =
    &["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/usr/libexec"];
const LIB_DIRS: &[&str] = &["/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib"];

/// The walked paths of the binary and library directories (links such as /bin -> usr/bin
/// resolved, each real directory once).
pub fn system_dir_prefixes(ctx: &Ctx, dirs: &[&str]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for d in dirs {
        let host = ctx.root.resolve(d);
        if let Ok(rel) = host.strip_prefix(&ctx.root.dir) {
            if host.is_dir() {
                out.insert(format!("/{}", rel.to_string_lossy()));
            }
        }
    }
    out.into_iter().collect()
}

fn system_dirs(ctx: &Ctx) -> Verdict {
    let mut all: Vec<&str> = BIN_DIRS.to_vec();
    all.extend_from_slice(LIB_DIRS);
    let prefixes = system_dir_prefixes(ctx, &all);
    let mut bad = Vec::new();
    let mut n = 0;
    for e in &ctx.entries {
        if e.kind == FileKind::Symlink || !prefixes.iter().any(|p| e.path == *p || e.path.starts_with(&format!("{p}/")))
        {
            continue;
        }
        n += 1;
        if e.uid != 0 {
            bad.push(format!("{} owned by UID {}", e.path, e.uid));
        } else if e.gid >= 1000 {
            bad.push(format!("{} has non-system group GID {}", e.path, e.gid));
        } else if e.mode & 0o022 != 0 {
            bad.push(format!("{} is group/world-writable ({:04o})", e.path, e.mode));
        }
    }
    if bad.is_empty() {
        Verdict::pass(format!(
            "{n} entries below {}: root-owned, system group, no group/world write",
            prefixes.join(" ")
        ))
    } else {
        Verdict::fail(format!("system binaries/libraries: {}", sample(&bad, 10)))
    }
}

/// systemd's default PATH for services and the PATH login.defs gives root.
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";

fn root_path(ctx: &Ctx) -> Verdict {
    let mut paths: Vec<(String, String)> = vec![("systemd default".into(), SYSTEMD_PATH.into())];
    if let Some(v) = ctx.login_defs.as_ref().and_then(|m| m.get("ENV_SUPATH")) {
        paths.push(("login.defs ENV_SUPATH".into(), v.trim_start_matches("PATH=").to_string()));
    }
    for f in ["/etc/profile", "/etc/environment", "/root/.profile", "/root/.bashrc", "/root/.bash_profile"] {
        let Some(text) = ctx.root.read(f) else { continue };
        for line in text.lines() {
            let l = line.split('#').next().unwrap_or("").trim().trim_start_matches("export ");
            if let Some(v) = l.strip_prefix("PATH=") {
                paths.push((f.to_string(), v.trim_matches('"').trim_matches('\'').to_string()));
            }
        }
    }
    let mut dirs = BTreeSet::new();
    let mut bad = Vec::new();
    for (from, p) in &paths {
        for d in p.split(':') {
            if d.contains('$') {
                continue; // $PATH, ${PATH}: the entries it stands for are listed elsewhere
            }
            if d.is_empty() || !d.starts_with('/') {
                bad.push(format!("{from}: PATH entry `{d}` is relative (the current directory)"));
                continue;
            }
            dirs.insert(d.to_string());
        }
    }
    for d in &dirs {
        // An absent directory is as safe as its nearest existing ancestor.
        let mut cur = d.clone();
        let meta = loop {
            if let Some(m) = ctx.root.stat(&cur) {
                break Some(m);
            }
            match cur.rfind('/') {
                Some(0) | None => break ctx.root.stat("/"),
                Some(i) => cur.truncate(i),
            }
        };
        let Some(m) = meta else { continue };
        let shown = if &cur == d { d.clone() } else { format!("{d} (absent; {cur})") };
        if m.uid() != 0 {
            bad.push(format!("{shown} is owned by UID {}", m.uid()));
        } else if m.mode() & 0o022 != 0 {
            bad.push(format!("{shown} is writable by group/others ({:04o})", m.mode() & 0o7777));
        }
    }
    let list: Vec<String> = dirs.into_iter().collect();
    Verdict::from_problems(bad, format!("root PATH directories root-owned, not writable by others: {}", list.join(":")))
}
