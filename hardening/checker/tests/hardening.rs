//! raphard's tests against fixture root file systems: the good tree (tests/fixtures/good
//! plus hardening/rootfs, as the image build lays them out) passes every offline
//! control, and each negative test breaks exactly one control in a fresh copy and
//! asserts that raphard fails that control with the right message.
//!
//! The trees need real ownership (root:root, root:shadow), so the tests run as root (as
//! CI does); as another user they print SKIP and return.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use raphard::{Inputs, Policy, Report, Status, Waivers};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    esp: PathBuf,
    lists: PathBuf,
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn is_root() -> bool {
    let t = tempfile::tempfile().unwrap();
    std::os::unix::fs::MetadataExt::uid(&t.metadata().unwrap()) == 0
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_all(p: &Path) {
    std::os::unix::fs::lchown(p, Some(0), Some(0)).unwrap();
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_all(&e.unwrap().path());
        }
    }
}

impl Fixture {
    /// The good tree, or None (SKIP) when not running as root.
    fn good(test: &str) -> Option<Fixture> {
        if !is_root() {
            println!("SKIP {test}: the fixture trees need root (real ownership)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let hardening = Path::new(MANIFEST).parent().unwrap();
        copy_tree(&Path::new(MANIFEST).join("tests/fixtures/good"), &root);
        copy_tree(&hardening.join("rootfs"), &root);
        for f in ["etc/issue", "etc/issue.net"] {
            std::fs::copy(hardening.join("dod-banner.txt"), root.join(f)).unwrap();
        }
        // What augenrules generates at build time: rules.d in order, -e last.
        let mut rules = String::from("## generated from /etc/audit/rules.d\n-D\n");
        let mut names: Vec<_> =
            std::fs::read_dir(root.join("etc/audit/rules.d")).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for n in names {
            rules.push_str(&std::fs::read_to_string(n).unwrap());
        }
        std::fs::write(root.join("etc/audit/audit.rules"), rules).unwrap();
        chown_all(&root);
        let layout = std::fs::read_to_string(Path::new(MANIFEST).join("tests/fixtures/good.layout")).unwrap();
        for line in layout.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let w: Vec<&str> = line.split_whitespace().collect();
            let p = root.join(w[1].trim_start_matches('/'));
            match w[0] {
                "d" => {
                    std::fs::create_dir_all(&p).unwrap();
                    set_mode(&p, u32::from_str_radix(w[2], 8).unwrap());
                    chown(&p, Some(w[3].parse().unwrap()), Some(w[4].parse().unwrap())).unwrap();
                }
                "l" => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::os::unix::fs::symlink(w[2], &p).unwrap();
                }
                "m" => {
                    chown(&p, Some(w[3].parse().unwrap()), Some(w[4].parse().unwrap())).unwrap();
                    set_mode(&p, u32::from_str_radix(w[2], 8).unwrap());
                }
                other => panic!("good.layout: unknown entry {other}"),
            }
        }
        let esp = dir.path().join("esp");
        std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
        std::fs::write(esp.join("loader/loader.conf"), "default rapbox-a.conf\ntimeout 0\neditor no\n").unwrap();
        std::fs::write(
            esp.join("loader/entries/rapbox-a.conf"),
            "title rapbox\nlinux /rapbox/a/vmlinuz\noptions root=PARTUUID=x ro console=ttyS0,115200 fips=1\n",
        )
        .unwrap();
        let lists = dir.path().join("lists");
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(
            lists.join("deb.debian.org_debian_dists_bookworm_InRelease"),
            "Origin: Debian\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n",
        )
        .unwrap();
        std::fs::write(
            lists.join("deb.debian.org_debian-security_dists_bookworm-security_InRelease"),
            "Origin: Debian\nDate: Wed, 25 Nov 2026 18:03:11 UTC\n",
        )
        .unwrap();
        let f = Fixture { _dir: dir, root, esp, lists };
        f.offer_security(&[]);
        f.write(
            "usr/lib/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n",
        );
        f.offer(&[
            ("base-files", "12.4+deb12u13"),
            ("gcc-12-base", "12.2.0-14+deb12u1"),
            ("libc6", "2.36-9+deb12u14"),
            ("openssh-server", "1:9.2p1-2+deb12u7"),
        ]);
        Some(f)
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }
    fn write(&self, rel: &str, text: &str) {
        std::fs::create_dir_all(self.p(rel).parent().unwrap()).unwrap();
        std::fs::write(self.p(rel), text).unwrap();
    }
    fn append(&self, rel: &str, text: &str) {
        let old = std::fs::read_to_string(self.p(rel)).unwrap();
        self.write(rel, &format!("{old}{text}"));
    }
    fn replace(&self, rel: &str, from: &str, to: &str) {
        let old = std::fs::read_to_string(self.p(rel)).unwrap();
        assert!(old.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &old.replace(from, to));
    }
    fn chmod(&self, rel: &str, mode: u32) {
        set_mode(&self.p(rel), mode);
    }
    fn chown(&self, rel: &str, uid: u32, gid: u32) {
        chown(self.p(rel), Some(uid), Some(gid)).unwrap();
    }
    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.p(rel)).unwrap();
    }
    fn offer(&self, pkgs: &[(&str, &str)]) {
        let text: String =
            pkgs.iter().map(|(n, v)| format!("Package: {n}\nVersion: {v}\nArchitecture: amd64\n\n")).collect();
        std::fs::write(self.lists.join("deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"), text)
            .unwrap();
    }
    /// The bookworm-security list (`offer` writes bookworm's).
    fn offer_security(&self, pkgs: &[(&str, &str)]) {
        let text: String =
            pkgs.iter().map(|(n, v)| format!("Package: {n}\nVersion: {v}\nArchitecture: amd64\n\n")).collect();
        std::fs::write(
            self.lists.join("deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages"),
            text,
        )
        .unwrap();
    }
    fn inputs(&self) -> Inputs {
        Inputs { apt_lists: Some(self.lists.clone()), esp: Some(self.esp.clone()), ..Inputs::default() }
    }
    fn check(&self) -> Report {
        raphard::check_offline(&self.root, &Policy::embedded(), &self.inputs(), &Waivers::none()).unwrap()
    }
}

#[test]
fn good_tree_passes_every_offline_control() {
    let Some(f) = Fixture::good("good_tree_passes_every_offline_control") else { return };
    let r = f.check();
    for c in &r.controls {
        let want = if matches!(c.id, 34 | 39 | 46) { Status::Runtime } else { Status::Pass };
        assert_eq!(c.status, want, "control {} {}: {}", c.id, c.title, c.found);
    }
    assert!(r.passed());
    assert_eq!(r.summary.pass, 43);
}

#[test]
fn without_apt_lists_control_25_is_not_evaluated_not_passed() {
    let Some(f) = Fixture::good("without_apt_lists") else { return };
    let inputs = Inputs { apt_lists: None, ..f.inputs() };
    let r = raphard::check_offline(&f.root, &Policy::embedded(), &inputs, &Waivers::none()).unwrap();
    let c = r.get(25).unwrap();
    assert_eq!(c.status, Status::NotEvaluated);
    assert!(c.found.contains("no --apt-lists DIR given"), "{}", c.found);
}

#[test]
fn without_esp_controls_40_and_45_are_not_evaluated() {
    let Some(f) = Fixture::good("without_esp") else { return };
    let inputs = Inputs { esp: None, ..f.inputs() };
    let r = raphard::check_offline(&f.root, &Policy::embedded(), &inputs, &Waivers::none()).unwrap();
    assert_eq!(r.get(40).unwrap().status, Status::NotEvaluated);
    assert_eq!(r.get(45).unwrap().status, Status::NotEvaluated);
    assert!(r.get(45).unwrap().found.contains("fips=1 not evaluated"));
}

#[test]
fn a_waived_failure_does_not_fail_the_run() {
    let Some(f) = Fixture::good("a_waived_failure") else { return };
    f.replace("etc/login.defs", "UMASK\t\t027", "UMASK\t\t022");
    let w = Waivers::parse("[waivers]\n\"11\" = \"bench unit: reviewed\"\n", Path::new("w.toml")).unwrap();
    let r = raphard::check_offline(&f.root, &Policy::embedded(), &f.inputs(), &w).unwrap();
    let c = r.get(11).unwrap();
    assert_eq!(c.status, Status::Waived);
    assert_eq!(c.waiver.as_deref(), Some("bench unit: reviewed"));
    assert!(r.passed());
}

fn raphard_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raphard"))
}

#[test]
fn cli_refuses_a_waiver_with_an_empty_reason() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("waivers.toml");
    std::fs::write(&w, "[waivers]\n\"17\" = \"\"\n").unwrap();
    std::fs::create_dir_all(dir.path().join("root/etc")).unwrap();
    let out = raphard_bin()
        .arg("check")
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--waivers")
        .arg(&w)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waiver for control `17`: the reason is empty"), "{err}");
}

#[test]
fn cli_writes_reports_and_exits_1_on_a_failure() {
    let Some(f) = Fixture::good("cli_writes_reports") else { return };
    f.chmod("etc/shadow", 0o644);
    let json = f.root.parent().unwrap().join("r.json");
    let html = f.root.parent().unwrap().join("r.html");
    let out = raphard_bin()
        .args(["check", "--quiet", "--root"])
        .arg(&f.root)
        .arg("--apt-lists")
        .arg(&f.lists)
        .arg("--esp")
        .arg(&f.esp)
        .arg("--report-json")
        .arg(&json)
        .arg("--report-html")
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let c12 = v["controls"].as_array().unwrap().iter().find(|c| c["id"] == 12).unwrap();
    assert_eq!(c12["status"], "fail");
    assert_eq!(c12["ssg"][0], "file_permissions_etc_shadow");
    assert!(c12["found"].as_str().unwrap().contains("/etc/shadow has mode 0644"));
    assert_eq!(v["summary"]["fail"], 1);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<tr class=\"fail\"><td>12</td>"), "{page}");
}

/// One negative test: break the good tree with `$break`, expect control `$id` to fail
/// with `$fragment` in its "found" text.
macro_rules! negative {
    ($name:ident, $id:expr, $fragment:expr, |$f:ident| $break:block) => {
        #[test]
        fn $name() {
            let Some($f) = Fixture::good(stringify!($name)) else { return };
            $break
            let r = $f.check();
            let c = r.get($id).unwrap();
            assert_eq!(c.status, Status::Fail, "control {} should fail, found: {}", $id, c.found);
            assert!(c.found.contains($fragment), "control {}: {:?} not in {:?}", $id, $fragment, c.found);
            assert!(!r.passed());
        }
    };
}

negative!(c01_second_uid_zero, 1, "UID 0 besides root: toor", |f| {
    f.append("etc/passwd", "toor:x:0:0::/root:/usr/sbin/nologin\n");
});
negative!(c02_account_not_allow_listed, 2, "accounts not in the allow-list: games", |f| {
    f.append("etc/passwd", "games:x:5:60:games:/usr/games:/usr/sbin/nologin\n");
    f.append("etc/shadow", "games:*:20089:0:99999:7:::\n");
});
negative!(c03_system_account_with_shell, 3, "daemon has shell /bin/bash", |f| {
    f.replace("etc/passwd", "daemon:/usr/sbin:/usr/sbin/nologin", "daemon:/usr/sbin:/bin/bash");
});
negative!(c04_nologin_account_unlocked, 4, "bin is not locked", |f| {
    f.replace("etc/shadow", "bin:*:", "bin:$6$abc$def:");
});
negative!(c05_empty_shadow_password, 5, "root has an empty password in etc/shadow", |f| {
    f.write("etc/shadow", "root::20089:0:99999:7:::\n");
});
negative!(c05_pam_nullok, 5, "pam_unix.so auth allows empty passwords (nullok)", |f| {
    f.replace("etc/pam.d/common-auth", "pam_unix.so\n", "pam_unix.so nullok\n");
});
negative!(c06_yescrypt_hash, 6, "root has a $y$ hash, not SHA-512", |f| {
    f.replace("etc/shadow", "root:$6$rounds=65536$", "root:$y$j9T$");
});
negative!(c07_too_few_rounds, 7, "SHA_CRYPT_MIN_ROUNDS 1000 is below 5000", |f| {
    f.replace("etc/login.defs", "SHA_CRYPT_MIN_ROUNDS\t65536", "SHA_CRYPT_MIN_ROUNDS\t1000");
});
negative!(c08_encrypt_method_md5, 8, "ENCRYPT_METHOD is MD5, not SHA512", |f| {
    f.replace("etc/login.defs", "ENCRYPT_METHOD\tSHA512", "ENCRYPT_METHOD\tMD5");
});
negative!(c08_pam_yescrypt, 8, "pam_unix.so hashes new passwords with yescrypt", |f| {
    f.replace("etc/pam.d/common-password", "sha512 rounds=65536", "yescrypt");
});
negative!(c09_deny_too_high, 9, "faillock deny = 5 (must be 1 to 3)", |f| {
    f.replace("etc/security/faillock.conf", "deny = 3", "deny = 5");
});
negative!(c09_faillock_not_wired, 9, "common-auth: no `auth ... pam_faillock.so preauth`", |f| {
    f.write("etc/pam.d/common-auth", "auth\t[success=1 default=ignore]\tpam_unix.so\nauth\trequisite\tpam_deny.so\n");
});
negative!(c10_tmout_too_long, 10, "TMOUT=1800 (must be 1 to 900)", |f| {
    f.replace("etc/profile.d/rapbox-hardening.sh", "TMOUT=900", "TMOUT=1800");
});
negative!(c10_tmout_missing, 10, "TMOUT is not set", |f| {
    f.remove("etc/profile.d/rapbox-hardening.sh");
});
negative!(c11_weak_profile_umask, 11, "umask 022 is weaker than 027", |f| {
    f.write("etc/profile.d/zz-local.sh", "umask 022\n");
});
negative!(c11_weak_login_defs_umask, 11, "login.defs UMASK 022 is weaker than 027", |f| {
    f.replace("etc/login.defs", "UMASK\t\t027", "UMASK\t\t022");
});
negative!(c12_shadow_world_readable, 12, "/etc/shadow has mode 0644, more than 0640", |f| {
    f.chmod("etc/shadow", 0o644);
});
negative!(c12_passwd_not_root_owned, 12, "/etc/passwd is owned by UID 997, not root", |f| {
    f.chown("etc/passwd", 997, 0);
});
negative!(c13_world_writable_file, 13, "world-writable files: /etc/rapbox/notes (0666)", |f| {
    f.write("etc/rapbox/notes", "x");
    f.chmod("etc/rapbox/notes", 0o666);
});
negative!(c14_world_writable_dir_without_sticky, 14, "without the sticky bit: /srv/drop (0777)", |f| {
    std::fs::create_dir_all(f.p("srv/drop")).unwrap();
    f.chmod("srv/drop", 0o777);
});
negative!(c15_unowned_file, 15, "files owned by no account: /etc/hostname (UID 4242)", |f| {
    f.chown("etc/hostname", 4242, 0);
});
negative!(c16_ungrouped_file, 16, "files of no group: /etc/hostname (GID 4242)", |f| {
    f.chown("etc/hostname", 0, 4242);
});
negative!(c17_unlisted_suid, 17, "not allow-listed: /usr/bin/ls 4755 root:root", |f| {
    f.chmod("usr/bin/ls", 0o4755);
});
negative!(c17_listed_with_other_mode, 17, "/usr/sbin/unix_chkpwd 6755 root:shadow differs from the allow-list", |f| {
    f.chmod("usr/sbin/unix_chkpwd", 0o6755);
});
negative!(c18_group_writable_library, 18, "/usr/lib/x86_64-linux-gnu/libc.so.6 is group/world-writable (0664)", |f| {
    f.chmod("usr/lib/x86_64-linux-gnu/libc.so.6", 0o664);
});
negative!(c18_binary_not_root_owned, 18, "/usr/sbin/sshd owned by UID 997", |f| {
    f.chown("usr/sbin/sshd", 997, 0);
});
negative!(c19_root_path_dir_group_writable, 19, "/usr/local/sbin is writable by group/others (0775)", |f| {
    f.chmod("usr/local/sbin", 0o775);
});
negative!(c19_relative_path_entry, 19, "PATH entry `.` is relative", |f| {
    f.write("root/.profile", "PATH=.:/usr/bin\n");
});
negative!(c20_telnetd_package, 20, "package telnetd 0.17+2.4-2 installed", |f| {
    f.append("var/lib/dpkg/status", "\nPackage: telnetd\nStatus: install ok installed\nVersion: 0.17+2.4-2\n");
});
negative!(c20_busybox_telnetd_applet, 20, "/usr/bin/busybox includes the telnetd applet", |f| {
    std::fs::write(f.p("usr/bin/busybox"), b"\x7fELF....\0ls\0mount\0telnetd\0tftp\0").unwrap();
    f.chmod("usr/bin/busybox", 0o755);
});
negative!(c21_rsh_server, 21, "package rsh-server 0.17-24 installed", |f| {
    f.append("var/lib/dpkg/status", "\nPackage: rsh-server\nStatus: install ok installed\nVersion: 0.17-24\n");
});
negative!(c22_tftp_server_program, 22, "program /usr/sbin/in.tftpd present", |f| {
    f.write("usr/sbin/in.tftpd", "#!/bin/sh\n");
    f.chmod("usr/sbin/in.tftpd", 0o755);
});
negative!(c23_vsftpd, 23, "package vsftpd 3.0.3-13+b2 installed", |f| {
    f.append("var/lib/dpkg/status", "\nPackage: vsftpd\nStatus: install ok installed\nVersion: 3.0.3-13+b2\n");
});
negative!(c24_compiler_package, 24, "package gcc-12 12.2.0-14+deb12u1 installed (deny-list `gcc-[0-9]*`)", |f| {
    f.append("var/lib/dpkg/status", "\nPackage: gcc-12\nStatus: install ok installed\nVersion: 12.2.0-14+deb12u1\n");
});
negative!(c24_debugger_program, 24, "program /usr/bin/gdb present", |f| {
    f.write("usr/bin/gdb", "#!/bin/sh\n");
    f.chmod("usr/bin/gdb", 0o755);
});
negative!(c25_outdated_package, 25, "openssh-server 1:9.2p1-2+deb12u7 installed, 1:9.2p1-2+deb12u8 offered", |f| {
    f.offer(&[
        ("base-files", "12.4+deb12u13"),
        ("gcc-12-base", "12.2.0-14+deb12u1"),
        ("libc6", "2.36-9+deb12u14"),
        ("openssh-server", "1:9.2p1-2+deb12u8"),
    ]);
});
negative!(
    c25_security_update_not_shipped,
    25,
    "libc6 2.36-9+deb12u14 installed, 2.36-9+deb12u15 offered by bookworm-security",
    |f| {
        f.offer_security(&[("libc6", "2.36-9+deb12u15")]);
    }
);
negative!(c25_no_security_list, 25, "no bookworm-security Packages list", |f| {
    std::fs::remove_file(
        f.lists.join("deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages"),
    )
    .unwrap();
});
negative!(c25_package_not_in_the_lists, 25, "openssh-server 1:9.2p1-2+deb12u7 is not in the apt lists", |f| {
    f.offer(&[("base-files", "12.4+deb12u13"), ("gcc-12-base", "12.2.0-14+deb12u1"), ("libc6", "2.36-9+deb12u14")]);
});
negative!(c25_no_codename, 25, "no VERSION_CODENAME in etc/os-release", |f| {
    f.remove("usr/lib/os-release");
});

/// The boot loader is shipped on the ESP, outside the root's dpkg database: with the
/// manifest, an outdated boot package fails control 25 too.
#[test]
fn c25_outdated_boot_package_from_the_manifest() {
    let Some(f) = Fixture::good("c25_outdated_boot_package") else { return };
    let manifest = f.root.parent().unwrap().join("manifest.json");
    std::fs::write(
        &manifest,
        r#"{"packages": [{"name": "libc6", "version": "2.36-9+deb12u14", "arch": "amd64", "sha256": "x", "role": "rootfs"},
                         {"name": "systemd-boot-efi", "version": "252.38-1~deb12u1", "arch": "amd64", "sha256": "y", "role": "boot"}]}"#,
    )
    .unwrap();
    f.offer_security(&[("systemd-boot-efi", "252.39-1~deb12u1")]);
    let inputs = Inputs { manifest: Some(manifest.clone()), ..f.inputs() };
    let r = raphard::check_offline(&f.root, &Policy::embedded(), &inputs, &Waivers::none()).unwrap();
    let c = r.get(25).unwrap();
    assert_eq!(c.status, Status::Fail, "{}", c.found);
    assert!(
        c.found.contains(
            "systemd-boot-efi (boot package) 252.38-1~deb12u1 installed, 252.39-1~deb12u1 offered by bookworm-security"
        ),
        "{}",
        c.found
    );
    // current boot package: passes, and the count names both sources
    f.offer_security(&[("systemd-boot-efi", "252.38-1~deb12u1")]);
    let r = raphard::check_offline(&f.root, &Policy::embedded(), &inputs, &Waivers::none()).unwrap();
    let c = r.get(25).unwrap();
    assert_eq!(c.status, Status::Pass, "{}", c.found);
    assert!(c.found.contains("5 packages (4 in var/lib/dpkg/status, 1 from the manifest)"), "{}", c.found);
}

/// The report lists every package that is not current, not a sample.
#[test]
fn c25_lists_every_outdated_package() {
    let Some(f) = Fixture::good("c25_lists_every_outdated_package") else { return };
    let mut status = String::new();
    let mut offered = Vec::new();
    for i in 0..30 {
        status.push_str(&format!("\nPackage: rapq-pkg{i}\nStatus: install ok installed\nVersion: 1.{i}-1\n"));
        offered.push((format!("rapq-pkg{i}"), format!("1.{i}-2")));
    }
    f.append("var/lib/dpkg/status", &status);
    let offered: Vec<(&str, &str)> = offered.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    f.offer_security(&offered);
    let r = f.check();
    let c = r.get(25).unwrap();
    assert_eq!(c.status, Status::Fail);
    for i in 0..30 {
        assert!(
            c.found.contains(&format!("rapq-pkg{i} 1.{i}-1 installed, 1.{i}-2 offered by bookworm-security")),
            "{i}: {}",
            c.found
        );
    }
    assert!(c.found.starts_with("30 of 34 packages not current"), "{}", c.found);
}

negative!(c26_chacha20_cipher, 26, "Ciphers allows chacha20-poly1305@openssh.com", |f| {
    f.write("etc/ssh/sshd_config.d/00-aaa.conf", "Ciphers chacha20-poly1305@openssh.com,aes128-ctr\n");
});
negative!(c27_sha1_mac, 27, "MACs allows hmac-sha1", |f| {
    f.write("etc/ssh/sshd_config.d/00-aaa.conf", "MACs hmac-sha2-256,hmac-sha1\n");
});
negative!(c28_curve25519_kex, 28, "KexAlgorithms allows curve25519-sha256", |f| {
    f.write("etc/ssh/sshd_config.d/00-aaa.conf", "KexAlgorithms curve25519-sha256,ecdh-sha2-nistp256\n");
});
negative!(c29_root_login, 29, "PermitRootLogin is yes (from /etc/ssh/sshd_config.d/00-aaa.conf)", |f| {
    f.write("etc/ssh/sshd_config.d/00-aaa.conf", "PermitRootLogin yes\n");
});
negative!(c29_root_login_in_match_block, 29, "Match User service: PermitRootLogin yes", |f| {
    f.append("etc/ssh/sshd_config", "Match User service\n    PermitRootLogin yes\n");
});
negative!(c30_empty_passwords, 30, "PermitEmptyPasswords is yes", |f| {
    f.write("etc/ssh/sshd_config.d/00-aaa.conf", "PermitEmptyPasswords yes\n");
});
negative!(c31_x11_forwarding, 31, "X11Forwarding is yes (from /etc/ssh/sshd_config)", |f| {
    f.replace("etc/ssh/sshd_config.d/00-rapbox-hardening.conf", "X11Forwarding no\n", "");
});
negative!(c32_count_max_zero, 32, "ClientAliveCountMax is 0", |f| {
    f.write("etc/ssh/sshd_config.d/00-aaa.conf", "ClientAliveCountMax 0\n");
});
negative!(c32_no_interval, 32, "ClientAliveInterval is 0 (OpenSSH default)", |f| {
    f.replace("etc/ssh/sshd_config.d/00-rapbox-hardening.conf", "ClientAliveInterval 600\n", "");
});
negative!(
    c33_issue_without_banner,
    33,
    "console banner /etc/issue does not contain the DoD notice-and-consent text",
    |f| {
        f.write("etc/issue", "Debian GNU/Linux 12 \\n \\l\n");
    }
);
negative!(c33_sshd_without_banner, 33, "sshd Banner is not set", |f| {
    f.replace("etc/ssh/sshd_config.d/00-rapbox-hardening.conf", "Banner /etc/issue.net\n", "");
});
negative!(c35_ip_forward_on, 35, "net.ipv4.ip_forward = 1 (from /etc/sysctl.d/99-zz.conf), must be 0", |f| {
    f.write("etc/sysctl.d/99-zz.conf", "net.ipv4.ip_forward = 1\n");
});
negative!(c35_rp_filter_glob, 35, "net.ipv4.conf.all.rp_filter = 2", |f| {
    f.write("etc/sysctl.d/99-zz.conf", "net.ipv4.conf.*.rp_filter = 2\n");
});
negative!(c36_kptr_restrict_off, 36, "kernel.kptr_restrict = 0", |f| {
    f.write("etc/sysctl.d/99-zz.conf", "kernel.kptr_restrict = 0\n");
});
negative!(c37_aslr_off, 37, "kernel.randomize_va_space = 0", |f| {
    f.write("etc/sysctl.d/99-zz.conf", "kernel/randomize_va_space = 0\n");
});
negative!(c37_unset_bpf, 37, "kernel.unprivileged_bpf_disabled not set in any sysctl.d file", |f| {
    f.replace("etc/sysctl.d/90-rapbox-hardening.conf", "kernel.unprivileged_bpf_disabled = 1\n", "");
});
negative!(c38_no_blacklist, 38, "no `install usb-storage /bin/false` in modprobe.d", |f| {
    f.remove("etc/modprobe.d/rapbox-blacklist.conf");
});
negative!(c40_editor_on, 40, "editor yes (kernel command line editable at boot)", |f| {
    std::fs::write(f.esp.join("loader/loader.conf"), "timeout 3\neditor yes\n").unwrap();
});
negative!(c41_auditd_not_enabled, 41, "auditd.service is not enabled", |f| {
    f.remove("etc/systemd/system/multi-user.target.wants/auditd.service");
});
negative!(c42_no_immutable_flag, 42, "etc/audit/rules.d: no -e 2", |f| {
    f.remove("etc/audit/rules.d/99-rapbox-finalize.rules");
});
negative!(c42_stale_audit_rules, 42, "etc/audit/audit.rules (loaded at boot) has no -e 2", |f| {
    f.write("etc/audit/audit.rules", "-D\n-b 8192\n");
});
negative!(c43_log_group_adm, 43, "auditd.conf log_group = adm (must be root)", |f| {
    f.replace("etc/audit/auditd.conf", "log_group = root", "log_group = adm");
});
negative!(c43_log_dir_open, 43, "/var/log/audit has mode 0755: others can access the audit logs", |f| {
    f.chmod("var/log/audit", 0o755);
});
negative!(c43_log_file_mode, 43, "/var/log/audit/audit.log has mode 0640 (at most 0600)", |f| {
    f.write("var/log/audit/audit.log", "type=DAEMON_START\n");
    f.chmod("var/log/audit/audit.log", 0o640);
});
negative!(c44_no_remote_logging, 44, "no rsyslog omfwd action forwards over TLS", |f| {
    f.remove("etc/rsyslog.d/90-rapbox-remote.conf");
});
negative!(c44_plain_tcp, 44, "StreamDriverMode is not 1 (TLS off)", |f| {
    f.replace("etc/rsyslog.d/90-rapbox-remote.conf", "StreamDriverMode=\"1\"", "StreamDriverMode=\"0\"");
});
negative!(c45_openssl_default_provider, 45, "activates no providers: the default provider is used (not FIPS)", |f| {
    f.write("etc/ssl/openssl.cnf", "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n");
});
negative!(c45_fips_module_missing, 45, "the FIPS module /usr/lib/rapbox/fips/fips.so is not in the image", |f| {
    f.remove("usr/lib/rapbox/fips/fips.so");
});
negative!(c45_kernel_without_fips, 45, "rapbox-a.conf: no fips=1 on the kernel command line", |f| {
    std::fs::write(f.esp.join("loader/entries/rapbox-a.conf"), "title rapbox\noptions root=PARTUUID=x ro\n").unwrap();
});
