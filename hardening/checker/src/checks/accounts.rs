//! Controls 1-11: accounts, password hashes, PAM lockout, shell timeout and umask.

use super::{sample, Ctx};
use crate::report::Verdict;
use crate::sysfiles::{is_locked, is_nologin};

pub fn check(ctx: &Ctx, id: u8) -> Verdict {
    if ctx.passwd.is_empty() && (1..=6).contains(&id) {
        return Verdict::fail("etc/passwd is missing or holds no account");
    }
    match id {
        1 => uid_zero(ctx),
        2 => allow_list(ctx),
        3 => nologin_shells(ctx),
        4 => locked(ctx),
        5 => empty_passwords(ctx),
        6 => sha512_hashes(ctx),
        7 => rounds(ctx),
        8 => encrypt_method(ctx),
        9 => faillock(ctx),
        10 => tmout(ctx),
        11 => umask(ctx),
        _ => unreachable!("accounts::check called for control {id}"),
    }
}

fn uid_zero(ctx: &Ctx) -> Verdict {
    let others: Vec<String> =
        ctx.passwd.iter().filter(|p| p.uid == 0 && p.name != "root").map(|p| p.name.clone()).collect();
    if !ctx.passwd.iter().any(|p| p.uid == 0 && p.name == "root") {
        return Verdict::fail("no root account with UID 0");
    }
    if others.is_empty() {
        Verdict::pass("only root has UID 0")
    } else {
        Verdict::fail(format!("UID 0 besides root: {}", others.join(", ")))
    }
}

fn allow_list(ctx: &Ctx) -> Verdict {
    let extra: Vec<String> =
        ctx.passwd.iter().filter(|p| !ctx.policy.account_allowed(&p.name)).map(|p| p.name.clone()).collect();
    let names: Vec<String> = ctx.passwd.iter().map(|p| p.name.clone()).collect();
    if extra.is_empty() {
        Verdict::pass(format!("accounts: {}", names.join(", ")))
    } else {
        Verdict::fail(format!("accounts not in the allow-list: {}", extra.join(", ")))
    }
}

fn uid_min(ctx: &Ctx) -> u32 {
    ctx.login_defs.as_ref().and_then(|m| m.get("UID_MIN")).and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn nologin_shells(ctx: &Ctx) -> Verdict {
    let min = uid_min(ctx);
    let bad: Vec<String> = ctx
        .passwd
        .iter()
        .filter(|p| p.name != "root" && p.uid < min && !is_nologin(&p.shell))
        .map(|p| format!("{} has shell {}", p.name, if p.shell.is_empty() { "(empty: /bin/sh)" } else { &p.shell }))
        .collect();
    Verdict::from_problems(bad, format!("every system account but root (UID < {min}) has a nologin shell"))
}

fn locked(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    for p in ctx.passwd.iter().filter(|p| is_nologin(&p.shell) || (p.name != "root" && p.shell.is_empty())) {
        match ctx.shadow.iter().find(|s| s.name == p.name) {
            Some(s) if is_locked(&s.hash) => {}
            Some(_) => bad.push(format!("{} is not locked", p.name)),
            None => bad.push(format!("{} has no etc/shadow entry (not locked)", p.name)),
        }
    }
    Verdict::from_problems(bad, "every non-interactive account is locked")
}

fn empty_passwords(ctx: &Ctx) -> Verdict {
    let mut bad: Vec<String> = ctx
        .shadow
        .iter()
        .filter(|s| s.hash.is_empty())
        .map(|s| format!("{} has an empty password in etc/shadow", s.name))
        .collect();
    bad.extend(
        ctx.passwd
            .iter()
            .filter(|p| p.password.is_empty())
            .map(|p| format!("{} has an empty password in etc/passwd", p.name)),
    );
    for file in ["/etc/pam.d/common-auth", "/etc/pam.d/common-password"] {
        for l in pam_lines(&ctx.root.read(file).unwrap_or_default()) {
            if l.module.ends_with("pam_unix.so") && l.args.iter().any(|a| a == "nullok" || a == "nullok_secure") {
                bad.push(format!("{file}: pam_unix.so {} allows empty passwords (nullok)", l.kind));
            }
        }
    }
    Verdict::from_problems(bad, "no empty password field; pam_unix without nullok")
}

fn sha512_hashes(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    for s in &ctx.shadow {
        if !is_locked(&s.hash) && !s.hash.starts_with("$6$") {
            let scheme = s.hash.split('$').nth(1).map(|x| format!("${x}$")).unwrap_or_else(|| "DES/unknown".into());
            bad.push(format!("{} has a {} hash, not SHA-512 ($6$)", s.name, scheme));
        }
    }
    for p in &ctx.passwd {
        if p.password != "x" && !p.password.is_empty() && !is_locked(&p.password) {
            bad.push(format!("{} keeps its hash in etc/passwd (not shadowed)", p.name));
        }
    }
    Verdict::from_problems(bad, "every password is a SHA-512 hash or locked")
}

fn rounds(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    let mut found = Vec::new();
    match &ctx.login_defs {
        None => bad.push("etc/login.defs is missing".to_string()),
        Some(m) => match m.get("SHA_CRYPT_MIN_ROUNDS").map(|v| v.parse::<u64>()) {
            Some(Ok(n)) if n >= 5000 => found.push(format!("login.defs SHA_CRYPT_MIN_ROUNDS {n}")),
            Some(Ok(n)) => bad.push(format!("login.defs SHA_CRYPT_MIN_ROUNDS {n} is below 5000")),
            Some(Err(_)) => bad.push("login.defs SHA_CRYPT_MIN_ROUNDS is not a number".into()),
            None => bad.push("login.defs does not set SHA_CRYPT_MIN_ROUNDS".into()),
        },
    }
    for l in pam_lines(&ctx.root.read("/etc/pam.d/common-password").unwrap_or_default()) {
        if l.module.ends_with("pam_unix.so") {
            for a in &l.args {
                if let Some(n) = a.strip_prefix("rounds=").and_then(|n| n.parse::<u64>().ok()) {
                    if n < 5000 {
                        bad.push(format!("common-password: pam_unix.so rounds={n} is below 5000"));
                    } else {
                        found.push(format!("pam_unix rounds={n}"));
                    }
                }
            }
        }
    }
    for s in &ctx.shadow {
        if let Some(n) =
            s.hash.strip_prefix("$6$rounds=").and_then(|r| r.split('$').next()).and_then(|n| n.parse::<u64>().ok())
        {
            if n < 5000 {
                bad.push(format!("{}'s hash uses {n} rounds", s.name));
            }
        }
    }
    Verdict::from_problems(bad, found.join(", "))
}

const OTHER_HASHES: &[&str] = &["md5", "bigcrypt", "sha256", "blowfish", "gost_yescrypt", "yescrypt", "descrypt"];

fn encrypt_method(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    let mut found = Vec::new();
    match &ctx.login_defs {
        None => found.push("no etc/login.defs in the image".to_string()),
        Some(m) => match m.get("ENCRYPT_METHOD").map(String::as_str) {
            Some("SHA512") => found.push("login.defs ENCRYPT_METHOD SHA512".into()),
            Some(v) => bad.push(format!("login.defs ENCRYPT_METHOD is {v}, not SHA512")),
            None => bad.push("login.defs does not set ENCRYPT_METHOD".into()),
        },
    }
    for l in pam_lines(&ctx.root.read("/etc/pam.d/common-password").unwrap_or_default()) {
        if l.kind == "password" && l.module.ends_with("pam_unix.so") {
            for a in &l.args {
                if OTHER_HASHES.contains(&a.as_str()) {
                    bad.push(format!("common-password: pam_unix.so hashes new passwords with {a}"));
                }
            }
        }
    }
    Verdict::from_problems(bad, found.join(", "))
}

/// One PAM configuration line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PamLine {
    pub kind: String,
    pub control: String,
    pub module: String,
    pub args: Vec<String>,
}

/// PAM lines of a pam.d file (control fields in brackets may hold spaces).
pub fn pam_lines(text: &str) -> Vec<PamLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('@') {
            continue;
        }
        let kind_end = line.find(char::is_whitespace).unwrap_or(line.len());
        let kind = line[..kind_end].trim_start_matches('-').to_string();
        let rest = line[kind_end..].trim_start();
        let (control, rest) = if rest.starts_with('[') {
            match rest.find(']') {
                Some(e) => (rest[..=e].to_string(), rest[e + 1..].trim_start()),
                None => (rest.to_string(), ""),
            }
        } else {
            let e = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (rest[..e].to_string(), rest[e..].trim_start())
        };
        let mut words = rest.split_whitespace();
        let module = words.next().unwrap_or("").to_string();
        out.push(PamLine { kind, control, module, args: words.map(str::to_string).collect() });
    }
    out
}

fn faillock(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    let auth = pam_lines(&ctx.root.read("/etc/pam.d/common-auth").unwrap_or_default());
    let account = pam_lines(&ctx.root.read("/etc/pam.d/common-account").unwrap_or_default());
    let pos = |args: &str| {
        auth.iter()
            .position(|l| l.kind == "auth" && l.module.ends_with("pam_faillock.so") && l.args.iter().any(|a| a == args))
    };
    let unix = auth.iter().position(|l| l.kind == "auth" && l.module.ends_with("pam_unix.so"));
    match (pos("preauth"), unix, pos("authfail")) {
        (Some(p), Some(u), Some(f)) if p < u && u < f => {}
        (None, _, _) => bad.push("common-auth: no `auth ... pam_faillock.so preauth`".to_string()),
        (_, None, _) => bad.push("common-auth: no pam_unix.so auth line".to_string()),
        (_, _, None) => bad.push("common-auth: no `auth ... pam_faillock.so authfail`".to_string()),
        _ => bad.push("common-auth: pam_faillock preauth must precede pam_unix, authfail follow it".to_string()),
    }
    if !account.iter().any(|l| l.kind == "account" && l.module.ends_with("pam_faillock.so")) {
        bad.push("common-account: no `account required pam_faillock.so`".into());
    }
    let conf =
        ctx.root.read("/etc/security/faillock.conf").map(|t| crate::sysfiles::key_values(&t)).unwrap_or_default();
    // A deny= argument on the module overrides faillock.conf.
    let arg_deny = auth
        .iter()
        .filter(|l| l.module.ends_with("pam_faillock.so"))
        .flat_map(|l| l.args.iter())
        .find_map(|a| a.strip_prefix("deny="))
        .map(str::to_string);
    let deny = arg_deny.or_else(|| conf.get("deny").cloned());
    match deny.as_deref().map(str::parse::<u32>) {
        Some(Ok(n)) if (1..=3).contains(&n) => {}
        Some(Ok(n)) => bad.push(format!("faillock deny = {n} (must be 1 to 3)")),
        Some(Err(_)) => bad.push("faillock deny is not a number".into()),
        None => bad.push("faillock deny not set (pam_faillock's default 3 is not explicit in faillock.conf)".into()),
    }
    let found = format!(
        "pam_faillock wired in common-auth and common-account; deny = {}, fail_interval = {}, unlock_time = {}",
        deny.as_deref().unwrap_or("?"),
        conf.get("fail_interval").map(String::as_str).unwrap_or("900 (default)"),
        conf.get("unlock_time").map(String::as_str).unwrap_or("600 (default)")
    );
    Verdict::from_problems(bad, found)
}

/// The shell start-up files every login shell reads, in order.
fn profile_files(ctx: &Ctx) -> Vec<String> {
    let mut files = vec!["/etc/profile".to_string(), "/etc/bash.bashrc".to_string()];
    for n in ctx.root.list("/etc/profile.d") {
        if n.ends_with(".sh") {
            files.push(format!("/etc/profile.d/{n}"));
        }
    }
    files
}

/// Shell statements of a file: comment-free lines split on `;`.
fn statements(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .flat_map(|l| l.split('#').next().unwrap_or("").split(';').map(str::to_string).collect::<Vec<_>>())
        .map(|s| s.split_whitespace().map(|w| w.trim_matches('"').trim_matches('\'').to_string()).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect()
}

fn tmout(ctx: &Ctx) -> Verdict {
    let mut values = Vec::new();
    let mut readonly = false;
    let mut bad = Vec::new();
    for f in profile_files(ctx) {
        let Some(text) = ctx.root.read(&f) else { continue };
        for words in statements(&text) {
            let ro = matches!(words[0].as_str(), "readonly" | "declare" | "typeset")
                && (words[0] == "readonly" || words.iter().any(|w| w.starts_with('-') && w.contains('r')));
            for w in &words {
                if let Some(v) = w.strip_prefix("TMOUT=") {
                    match v.parse::<u64>() {
                        Ok(n) => values.push((f.clone(), n)),
                        Err(_) => bad.push(format!("{f}: TMOUT={v} is not a number of seconds")),
                    }
                }
                if ro && (w == "TMOUT" || w.starts_with("TMOUT=")) {
                    readonly = true;
                }
            }
        }
    }
    if values.is_empty() {
        return Verdict::fail("TMOUT is not set in etc/profile, etc/bash.bashrc or etc/profile.d/*.sh");
    }
    for (f, n) in &values {
        if *n == 0 || *n > 900 {
            bad.push(format!("{f}: TMOUT={n} (must be 1 to 900)"));
        }
    }
    if !readonly {
        bad.push("TMOUT is not readonly (a user could unset it)".into());
    }
    let found = values.iter().map(|(f, n)| format!("{f}: TMOUT={n}")).collect::<Vec<_>>();
    Verdict::from_problems(bad, format!("{}, readonly", found.join(", ")))
}

fn umask(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    let mut found = Vec::new();
    for f in profile_files(ctx) {
        let Some(text) = ctx.root.read(&f) else { continue };
        for words in statements(&text) {
            if words[0] != "umask" || words.len() < 2 || words[1].starts_with('-') {
                continue;
            }
            match u32::from_str_radix(&words[1], 8) {
                Ok(m) if m & 0o027 == 0o027 => found.push(format!("{f}: umask {}", words[1])),
                Ok(_) => bad.push(format!("{f}: umask {} is weaker than 027", words[1])),
                Err(_) => bad.push(format!("{f}: umask {} is not octal", words[1])),
            }
        }
    }
    if found.is_empty() && bad.is_empty() {
        bad.push("no umask in etc/profile, etc/bash.bashrc or etc/profile.d/*.sh (the default 022 applies)".into());
    }
    if let Some(m) = &ctx.login_defs {
        match m.get("UMASK").map(|v| (v, u32::from_str_radix(v, 8))) {
            Some((v, Ok(u))) if u & 0o027 == 0o027 => found.push(format!("login.defs UMASK {v}")),
            Some((v, _)) => bad.push(format!("login.defs UMASK {v} is weaker than 027")),
            None => bad.push("login.defs does not set UMASK (022 applies)".into()),
        }
    }
    Verdict::from_problems(bad, sample(&found, 6))
}
