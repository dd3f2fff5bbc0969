//! Control 45: the OpenSSL FIPS configuration as the system default and fips=1 on the
//! kernel command line.

use std::collections::BTreeMap;

use super::Ctx;
use crate::report::Verdict;

/// An OpenSSL configuration: sections of key = value (includes followed).
#[derive(Debug, Clone, Default)]
pub struct OpensslConf {
    pub sections: BTreeMap<String, Vec<(String, String)>>,
    pub files: Vec<String>,
    /// Included files that do not exist in the tree.
    pub missing: Vec<String>,
}

impl OpensslConf {
    pub fn load(ctx: &Ctx, path: &str) -> Option<OpensslConf> {
        let mut c = OpensslConf::default();
        ctx.root.read(path)?;
        let mut section = String::new();
        c.parse(ctx, path, &mut section, 0);
        Some(c)
    }

    fn parse(&mut self, ctx: &Ctx, path: &str, section: &mut String, depth: usize) {
        let Some(text) = ctx.root.read(path) else {
            self.missing.push(path.to_string());
            return;
        };
        self.files.push(path.to_string());
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(inc) = line.strip_prefix(".include") {
                let inc = inc.trim().trim_start_matches('=').trim().trim_matches('"');
                if depth > 8 {
                    continue;
                }
                let host = ctx.root.resolve(inc);
                if host.is_dir() {
                    for n in ctx.root.list(inc) {
                        if n.ends_with(".cnf") || n.ends_with(".conf") {
                            self.parse(ctx, &format!("{}/{n}", inc.trim_end_matches('/')), section, depth + 1);
                        }
                    }
                } else {
                    self.parse(ctx, inc, section, depth + 1);
                }
                continue;
            }
            if line.starts_with('.') {
                continue; // .pragma
            }
            if line.starts_with('[') {
                *section = line.trim_matches(|c| c == '[' || c == ']').trim().to_string();
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                self.sections
                    .entry(section.clone())
                    .or_default()
                    .push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
            }
        }
    }

    /// The last value of `key` in `section`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections.get(section)?.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v.map(|s| s.to_ascii_lowercase()).as_deref(), Some("1" | "yes" | "true" | "on"))
}

/// The system default OpenSSL configuration (Debian: /usr/lib/ssl/openssl.cnf ->
/// /etc/ssl/openssl.cnf) in FIPS-only form.
pub fn openssl_default(ctx: &Ctx) -> Verdict {
    let path = "/usr/lib/ssl/openssl.cnf";
    let path = if ctx.root.exists(path) { path } else { "/etc/ssl/openssl.cnf" };
    let Some(conf) = OpensslConf::load(ctx, path) else {
        return Verdict::fail(
            "etc/ssl/openssl.cnf is missing: the system default is OpenSSL's built-in (default provider)",
        );
    };
    let mut bad = Vec::new();
    let Some(init) = conf.get("", "openssl_conf") else {
        return Verdict::fail(format!(
            "{path}: no openssl_conf: the default provider serves every algorithm (not FIPS)"
        ));
    };
    let providers = conf.get(init, "providers");
    let mut list: Vec<(String, String)> = providers.and_then(|p| conf.sections.get(p)).cloned().unwrap_or_default();
    list.dedup();
    if providers.is_none() || list.is_empty() {
        bad.push(format!("{path}: [{init}] activates no providers: the default provider is used (not FIPS)"));
    }
    let mut fips_ok = false;
    for (name, sect) in &list {
        let active = truthy(conf.get(sect, "activate"));
        match name.as_str() {
            "fips" => {
                let module = conf.get(sect, "module");
                let from_fipsinstall = conf.missing.iter().any(|m| m.ends_with("fipsmodule.cnf"));
                match module {
                    None => bad.push(format!("[{sect}] has no module = path of fips.so")),
                    Some(m) if !ctx.root.exists(m) => bad.push(format!("the FIPS module {m} is not in the image")),
                    Some(_) => {}
                }
                if active || from_fipsinstall {
                    fips_ok = true;
                } else {
                    bad.push(format!("the fips provider [{sect}] is not activated"));
                }
            }
            "default" | "legacy" if active => {
                bad.push(format!("the {name} provider is activated (non-FIPS algorithms)"))
            }
            "base" | "default" | "legacy" => {}
            other if active => bad.push(format!("provider {other} is activated")),
            _ => {}
        }
    }
    if !list.is_empty() && !fips_ok && !list.iter().any(|(n, _)| n == "fips") {
        bad.push("the fips provider is not configured".into());
    }
    let props = conf
        .get(init, "alg_section")
        .and_then(|s| conf.get(s, "default_properties"))
        .map(str::to_string)
        .unwrap_or_default();
    if !props.split(',').any(|p| p.trim() == "fips=yes") {
        bad.push(format!("default_properties is `{props}`, not fips=yes"));
    }
    for m in &conf.missing {
        if !m.ends_with("fipsmodule.cnf") {
            bad.push(format!("{m} is included but missing (OpenSSL refuses the configuration)"));
        }
    }
    let names: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
    let mut found =
        format!("{} ({}): providers {}, default_properties {props}", path, conf.files.join(" -> "), names.join("+"));
    if let Some(m) = conf.missing.iter().find(|m| m.ends_with("fipsmodule.cnf")) {
        found.push_str(&format!("; {m} written by `openssl fipsinstall` on first boot"));
    }
    Verdict::from_problems(bad, found)
}

/// Every kernel command line known for the image: loader entries on the ESP (--esp) and
/// in the tree, and --cmdline files.
pub fn cmdlines(ctx: &Ctx) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut entries = |dir: std::path::PathBuf| {
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files.into_iter().filter(|f| f.extension().is_some_and(|x| x == "conf")) {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let opts: Vec<&str> =
                text.lines().filter_map(|l| l.trim().strip_prefix("options")).map(str::trim).collect();
            out.push((f.display().to_string(), opts.join(" ")));
        }
    };
    if let Some(esp) = &ctx.inputs.esp {
        entries(esp.join("loader/entries"));
    }
    for d in ["/boot/loader/entries", "/boot/efi/loader/entries", "/efi/loader/entries"] {
        entries(ctx.root.resolve(d));
    }
    for f in &ctx.inputs.cmdlines {
        out.push((f.display().to_string(), std::fs::read_to_string(f).unwrap_or_default().trim().to_string()));
    }
    out
}

pub fn check(ctx: &Ctx) -> Verdict {
    let lines = cmdlines(ctx);
    let kernel = if lines.is_empty() {
        Verdict::not_evaluated(
            "fips=1 not evaluated: no loader entries in the tree and no --esp DIR or --cmdline FILE given",
        )
    } else {
        let bad: Vec<String> = lines
            .iter()
            .filter(|(_, l)| !l.split_whitespace().any(|w| w == "fips=1"))
            .map(|(src, _)| format!("{src}: no fips=1 on the kernel command line"))
            .collect();
        Verdict::from_problems(bad, format!("fips=1 on {} kernel command line(s)", lines.len()))
    };
    Verdict::all(vec![openssl_default(ctx), kernel])
}
