//! Controls 35-38 and 40: kernel parameters, module blacklist, boot loader editing.

use super::Ctx;
use crate::report::Verdict;
use crate::sysctl::{self, REQUIRED};

pub fn check(ctx: &Ctx, id: u8) -> Verdict {
    match id {
        35..=37 => sysctls(ctx, id),
        38 => modules(ctx),
        40 => boot_loader(ctx),
        _ => unreachable!("kernel::check called for control {id}"),
    }
}

fn sysctls(ctx: &Ctx, id: u8) -> Verdict {
    let eff = sysctl::effective(&ctx.root);
    let mut bad = Vec::new();
    let mut found = Vec::new();
    for req in REQUIRED.iter().filter(|r| r.control == id) {
        match eff.get(req.key) {
            Some(v) if req.holds(&v.value) => found.push(format!("{}={}", req.key, v.value)),
            Some(v) => bad.push(format!("{} = {} (from {}), must be {}", req.key, v.value, v.file, req.wanted())),
            None => bad.push(format!("{} not set in any sysctl.d file (must be {})", req.key, req.wanted())),
        }
    }
    Verdict::from_problems(bad, found.join(", "))
}

const MODULES: &[&str] = &["usb-storage", "sctp"];

fn modules(ctx: &Ctx) -> Verdict {
    let norm = |s: &str| s.replace('_', "-");
    let mut install = Vec::new();
    let mut blacklist = Vec::new();
    for dir in
        ["/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d", "/usr/lib/modprobe.d", "/lib/modprobe.d"]
    {
        for n in ctx.root.list(dir) {
            if !n.ends_with(".conf") {
                continue;
            }
            let text = ctx.root.read(&format!("{dir}/{n}")).unwrap_or_default();
            for line in text.lines() {
                let w: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
                match w.as_slice() {
                    ["install", m, cmd, ..]
                        if matches!(*cmd, "/bin/false" | "/usr/bin/false" | "/bin/true" | "/usr/bin/true") =>
                    {
                        install.push(norm(m))
                    }
                    ["blacklist", m] => blacklist.push(norm(m)),
                    _ => {}
                }
            }
        }
    }
    let mut bad = Vec::new();
    for m in MODULES {
        if !install.iter().any(|x| x == m) {
            bad.push(format!("no `install {m} /bin/false` in modprobe.d"));
        }
        if !blacklist.iter().any(|x| x == m) {
            bad.push(format!("no `blacklist {m}` in modprobe.d"));
        }
    }
    Verdict::from_problems(bad, "usb-storage and sctp: install /bin/false and blacklist")
}

fn boot_loader(ctx: &Ctx) -> Verdict {
    let Some(esp) = &ctx.inputs.esp else {
        // A systemd-boot configuration inside the tree counts too.
        if let Some(text) =
            ctx.root.read("/boot/efi/loader/loader.conf").or_else(|| ctx.root.read("/efi/loader/loader.conf"))
        {
            return editor(&text, "loader.conf in the tree");
        }
        return Verdict::not_evaluated(
            "no --esp DIR given and no loader.conf in the tree: the boot loader configuration is on the EFI system partition",
        );
    };
    let p = esp.join("loader/loader.conf");
    match std::fs::read_to_string(&p) {
        Ok(text) => editor(&text, &p.display().to_string()),
        Err(e) => Verdict::fail(format!("{}: {e} (no systemd-boot configuration)", p.display())),
    }
}

fn editor(text: &str, what: &str) -> Verdict {
    let value = text
        .lines()
        .filter_map(|l| l.split('#').next()?.trim().strip_prefix("editor").map(|v| v.trim().to_string()))
        .next_back();
    match value.as_deref() {
        Some("no" | "0" | "false" | "off") => Verdict::pass(format!("{what}: editor no")),
        Some(v) => Verdict::fail(format!("{what}: editor {v} (kernel command line editable at boot)")),
        None => Verdict::fail(format!("{what}: no `editor no` (systemd-boot allows editing by default)")),
    }
}
