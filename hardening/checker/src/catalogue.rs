//! The 46 controls of shared/hardening-controls.md: id, title, SCAP Security Guide and
//! STIG ids, where each is evaluated (offline on the root file system tree, live in the
//! running guest, or both), what passes, and what the live check verifies.

use serde::Serialize;

/// Where a control is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Fully decided by the root file system tree (`raphard check`).
    Offline,
    /// Configuration checked offline, live state checked by `raphard check-live`.
    Both,
    /// Only a running box can show it (`raphard check-live`).
    Runtime,
}

/// One control of the catalogue.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Control {
    pub id: u8,
    pub title: &'static str,
    pub ssg: &'static [&'static str],
    pub stig: &'static [&'static str],
    pub kind: Kind,
    /// What passes, in words (the report's "expected" column).
    pub expected: &'static str,
    /// What `raphard check-live` verifies in the guest (empty for offline-only controls).
    pub live: &'static str,
}

const fn c(
    id: u8,
    title: &'static str,
    ssg: &'static [&'static str],
    stig: &'static [&'static str],
    kind: Kind,
    expected: &'static str,
    live: &'static str,
) -> Control {
    Control { id, title, ssg, stig, kind, expected, live }
}

use Kind::{Both, Offline, Runtime};

/// Every control, in catalogue order.
pub const CONTROLS: &[Control] = &[
    c(1, "Only root has UID 0", &["accounts_no_uid_except_zero"], &["RHEL-08-040200"], Offline,
      "etc/passwd: root is the only account with UID 0", ""),
    c(2, "Only allow-listed accounts exist", &["accounts_authorized_local_users"], &["RHEL-08-020320"], Offline,
      "every etc/passwd account is in hardening/policy/accounts.allow", ""),
    c(3, "Non-root system accounts have a nologin shell", &["no_shelllogin_for_systemaccounts"], &[], Offline,
      "every account except root with UID < UID_MIN has /usr/sbin/nologin, /sbin/nologin or /bin/false", ""),
    c(4, "Non-interactive accounts are locked", &["no_invalid_shell_accounts_unlocked"], &[], Offline,
      "every account with a nologin/false shell has a locked password (etc/shadow field starts with ! or *)", ""),
    c(5, "No empty password fields", &["no_empty_passwords_etc_shadow"], &[], Offline,
      "no empty password field in etc/shadow or etc/passwd; pam_unix without nullok", ""),
    c(6, "Every password hash is SHA-512 or the account is locked", &["accounts_password_all_shadowed_sha512"], &["RHEL-08-010120"], Offline,
      "every etc/shadow hash starts with $6$, or the field starts with ! or *; etc/passwd holds only x", ""),
    c(7, "SHA-512 rounds >= 5000", &["set_password_hashing_min_rounds_logindefs"], &["RHEL-08-010130"], Offline,
      "login.defs SHA_CRYPT_MIN_ROUNDS >= 5000; pam_unix rounds= (if given) >= 5000; no $6$rounds=N$ hash below 5000", ""),
    c(8, "ENCRYPT_METHOD SHA512 where login.defs ships", &["set_password_hashing_algorithm_logindefs"], &["RHEL-08-010110"], Offline,
      "login.defs ENCRYPT_METHOD SHA512; pam_unix in common-password names no other hash (yescrypt, md5, ...)", ""),
    c(9, "Lockout after repeated failed logins", &["accounts_passwords_pam_faillock_deny"], &["RHEL-08-020010"], Offline,
      "pam_faillock preauth/authfail in common-auth, pam_faillock in common-account, deny between 1 and 3", ""),
    c(10, "Shell idle timeout TMOUT <= 900 s", &["accounts_tmout"], &[], Offline,
      "TMOUT=N with 0 < N <= 900, readonly, in etc/profile, etc/profile.d/*.sh or etc/bash.bashrc; no larger TMOUT", ""),
    c(11, "Default umask 027", &["accounts_umask_etc_profile"], &["RHEL-08-020353"], Offline,
      "a umask of 027 or stricter in the shell profile and no weaker one; login.defs UMASK 027 or stricter", ""),
    c(12, "Ownership and modes of /etc/shadow, /etc/passwd, /etc/group", &["file_permissions_etc_shadow", "file_permissions_etc_passwd", "file_permissions_etc_group"], &["RHEL-08-010190"], Offline,
      "passwd, group: root:root, at most 0644; shadow, gshadow: root:root or root:shadow, at most 0640", ""),
    c(13, "No world-writable files outside /tmp-like directories", &["file_permissions_unauthorized_world_writable"], &[], Offline,
      "no regular file writable by others, except below a sticky world-writable directory (tmp-like)", ""),
    c(14, "Sticky bit on world-writable directories", &["dir_perms_world_writable_sticky_bits"], &["RHEL-08-010190"], Offline,
      "every directory writable by others has the sticky bit", ""),
    c(15, "No unowned files", &["no_files_unowned_by_user"], &["RHEL-08-010780"], Offline,
      "every file's UID is an account of etc/passwd", ""),
    c(16, "No ungrouped files", &["file_permissions_ungroupowned"], &["RHEL-08-010790"], Offline,
      "every file's GID is a group of etc/group", ""),
    c(17, "SUID/SGID files match an allow-list", &["file_permissions_unauthorized_suid", "file_permissions_unauthorized_sgid"], &[], Offline,
      "every regular file with set-user-ID or set-group-ID is in hardening/policy/suid.allow with that exact mode, owner and group", ""),
    c(18, "System binaries and libraries root-owned and not group/world-writable", &["file_ownership_binary_dirs", "file_permissions_library_dirs"], &["RHEL-08-010310", "RHEL-08-010330"], Offline,
      "below /bin /sbin /usr/bin /usr/sbin /usr/local/bin /usr/local/sbin /usr/libexec /lib /lib64 /usr/lib /usr/lib64 /usr/local/lib: owner root, a system group, no group or other write", ""),
    c(19, "Root's PATH directories not writable by others", &["accounts_root_path_dirs_no_write"], &[], Offline,
      "every directory of root's PATH (login.defs ENV_SUPATH, etc/profile, root's dot files, etc/environment, systemd's default) is absolute, root-owned, not group/world-writable", ""),
    c(20, "No telnet server, including busybox's telnetd applet", &["package_telnet-server_removed"], &["RHEL-08-040000"], Offline,
      "no package, program or busybox applet of control 20 in hardening/policy/packages.deny", ""),
    c(21, "No rsh server", &["package_rsh-server_removed"], &["RHEL-08-040010"], Offline,
      "no package or program of control 21 in hardening/policy/packages.deny", ""),
    c(22, "No tftp server", &["package_tftp-server_removed"], &["RHEL-08-040190"], Offline,
      "no package, program or busybox applet of control 22 in hardening/policy/packages.deny", ""),
    c(23, "No ftp server", &["package_vsftpd_removed"], &["RHEL-08-040360"], Offline,
      "no package, program or busybox applet of control 23 in hardening/policy/packages.deny", ""),
    c(24, "No compilers or debuggers in the image", &[], &[], Offline,
      "no compiler, assembler, linker or debugger package or program (control 24 in hardening/policy/packages.deny)", ""),
    c(25, "Shipped packages at the newest bookworm/bookworm-security version", &["security_patches_up_to_date"], &["RHEL-08-010010"], Offline,
      "every shipped package (var/lib/dpkg/status, plus the boot loader packages of --manifest) at the newest version offered by the build's apt lists (--apt-lists, refreshed at build time; the suite and its -security suite must both be there); every package that is not is listed", ""),
    c(26, "SSH ciphers only AES-GCM/AES-CTR", &["sshd_use_approved_ciphers"], &[], Offline,
      "effective Ciphers within aes256-gcm@openssh.com, aes128-gcm@openssh.com, aes256-ctr, aes192-ctr, aes128-ctr", ""),
    c(27, "SSH MACs only hmac-sha2-512/256", &["sshd_use_approved_macs"], &[], Offline,
      "effective MACs within hmac-sha2-512, hmac-sha2-256 and their -etm@openssh.com variants", ""),
    c(28, "SSH key exchange only ECDH over NIST curves or DH group 14+ with SHA-2", &["sshd_use_strong_kex"], &[], Offline,
      "effective KexAlgorithms within ecdh-sha2-nistp256/384/521, diffie-hellman-group14-sha256, group16-sha512, group18-sha512", ""),
    c(29, "No SSH root login", &["sshd_disable_root_login"], &["RHEL-08-010550"], Offline,
      "effective PermitRootLogin no (also in every Match block)", ""),
    c(30, "No empty SSH passwords", &["sshd_disable_empty_passwords"], &["RHEL-08-020330"], Offline,
      "effective PermitEmptyPasswords no (also in every Match block)", ""),
    c(31, "No X11 forwarding", &["sshd_disable_x11_forwarding"], &["RHEL-08-040340"], Offline,
      "effective X11Forwarding no (also in every Match block)", ""),
    c(32, "SSH idle timeout set", &["sshd_set_idle_timeout"], &["RHEL-08-010201"], Offline,
      "effective ClientAliveInterval between 1 and 600 and ClientAliveCountMax >= 1 (0 disables the timeout since OpenSSH 8.2)", ""),
    c(33, "DoD notice-and-consent banner in /etc/issue, on the serial console and in sshd", &["banner_etc_issue", "sshd_enable_warning_banner"], &["RHEL-08-010060", "RHEL-08-010040"], Offline,
      "etc/issue, etc/issue.net and the sshd Banner file contain the text of hardening/dod-banner.txt; no getty runs with --noissue", ""),
    c(34, "The DoD banner on every page served", &[], &[], Runtime,
      "every page the web configuration interface serves carries the DoD notice text",
      "crawls the --web-url pages (same origin, through openssl s_client) and finds the banner text on each"),
    c(35, "IPv4/IPv6 routing hardening sysctls", &["sysctl_net_ipv4_ip_forward", "sysctl_net_ipv4_conf_all_rp_filter", "sysctl_net_ipv4_conf_all_accept_redirects", "sysctl_net_ipv4_conf_all_send_redirects", "sysctl_net_ipv4_conf_all_accept_source_route"], &["RHEL-08-040285", "RHEL-08-040279", "RHEL-08-040220", "RHEL-08-040239"], Both,
      "ip_forward=0, rp_filter=1, accept_redirects=0, send_redirects=0, accept_source_route=0 (all/default, IPv4 and IPv6) in the effective sysctl.d settings",
      "the same values in /proc/sys; ip_forward may be 1 only where the firewall forwards (a live FORWARD rule accepting new connections: an opted-in LIS forward or a session's remote desktop) or while an authorised session is up (--session-active)"),
    c(36, "tcp_syncookies, kptr_restrict, dmesg_restrict", &["sysctl_net_ipv4_tcp_syncookies", "sysctl_kernel_kptr_restrict", "sysctl_kernel_dmesg_restrict"], &["RHEL-08-040283", "RHEL-08-010375"], Both,
      "net.ipv4.tcp_syncookies=1, kernel.kptr_restrict=2, kernel.dmesg_restrict=1 in the effective sysctl.d settings",
      "the same values in /proc/sys"),
    c(37, "ASLR, BPF, ptrace, links, perf hardening sysctls", &["sysctl_kernel_randomize_va_space", "sysctl_kernel_unprivileged_bpf_disabled", "sysctl_kernel_yama_ptrace_scope", "sysctl_fs_protected_hardlinks", "sysctl_fs_protected_symlinks", "sysctl_kernel_perf_event_paranoid", "sysctl_net_core_bpf_jit_harden"], &["RHEL-08-010430", "RHEL-08-040281", "RHEL-08-040282", "RHEL-08-010373", "RHEL-08-010374", "RHEL-08-010376", "RHEL-08-040286"], Both,
      "randomize_va_space=2, unprivileged_bpf_disabled=1, bpf_jit_harden=2, yama.ptrace_scope>=1, protected_hardlinks=1, protected_symlinks=1, perf_event_paranoid>=2",
      "the same values in /proc/sys"),
    c(38, "usb-storage and sctp modules blacklisted", &["kernel_module_usb-storage_disabled", "kernel_module_sctp_disabled"], &["RHEL-08-040080", "RHEL-08-040023"], Both,
      "modprobe.d: `install <module> /bin/false` (or /bin/true) and `blacklist <module>` for usb-storage and sctp",
      "neither module is loaded (/proc/modules)"),
    c(39, "Default-drop INPUT and FORWARD policies; the box answers nothing on the uplink side", &["set_iptables_default_rule", "nftables_ensure_default_deny_policy"], &[], Runtime,
      "INPUT and FORWARD chains (IPv4 and IPv6) have policy DROP once the box is up, and no rule accepts a new connection arriving on the uplink",
      "`iptables -S` and `ip6tables -S` print -P INPUT DROP and -P FORWARD DROP; no ACCEPT reachable from INPUT for packets on the uplink (--uplink, default the IPv4 default route's interface) other than RELATED,ESTABLISHED answers"),
    c(40, "Boot loader protected against editing", &["grub2_password"], &["RHEL-08-010150"], Offline,
      "systemd-boot loader.conf on the EFI system partition (--esp) says `editor no`; on real hardware also a firmware (BIOS) password", ""),
    c(41, "Audit daemon enabled", &["service_auditd_enabled"], &["RHEL-08-030181"], Both,
      "auditd.service enabled (a .wants link under etc/systemd/system), not masked; no audit=0 on the kernel command line",
      "`auditctl -s` reports enabled 1 or 2 and a non-zero auditd pid"),
    c(42, "Audit rules immutable after boot", &["audit_rules_immutable"], &["RHEL-08-030121"], Both,
      "the last -e of etc/audit/rules.d/*.rules and of the generated etc/audit/audit.rules is -e 2",
      "`auditctl -s` reports enabled 2"),
    c(43, "Audit log files not readable by others", &["file_permissions_var_log_audit"], &["RHEL-08-030070"], Both,
      "auditd.conf log_group root; the log_file directory root-owned without other access; log files at most 0600",
      "the same for /var/log/audit and its files on the running box"),
    c(44, "Audit and system logs sent to a remote server over TLS", &["rsyslog_remote_loghost", "rsyslog_encrypt_offload_actionsendstreamdrivermode", "rsyslog_encrypt_offload_defaultnetstreamdriver"], &["RHEL-08-030690", "RHEL-08-030710", "RHEL-08-030720"], Both,
      "an rsyslog omfwd action over TCP with StreamDriver ossl/gtls, StreamDriverMode 1, StreamDriverAuthMode x509/name; the audit log is an rsyslog input (imfile) or auditd's syslog plugin is active",
      "rsyslogd runs and holds an established TCP connection to the configured port"),
    c(45, "FIPS mode: OpenSSL FIPS provider system-wide, kernel fips=1", &["enable_fips_mode"], &["RHEL-08-010020"], Both,
      "etc/ssl/openssl.cnf activates the fips and base providers only (module present in the tree), default_properties fips=yes; fips=1 on every kernel command line (--esp loader entries, --cmdline files, boot/loader/entries)",
      "/proc/sys/crypto/fips_enabled is 1; `openssl list -providers` shows fips active and no default provider; `openssl md5` is refused"),
    c(46, "Web pages: TLS only, no CGI, needed modules only, complete logs", &["httpd_configure_tls", "httpd_cgi_support", "httpd_enable_log_config"], &[], Runtime,
      "the web configuration interface answers only over TLS, runs no CGI, loads only needed modules and logs every access and error",
      "for each --web-url host: plain HTTP on port 80 refused or redirected to https, /cgi-bin/ not served; every request of the crawl in the --web-logs access log and every error answer in its error log; the listening process maps only the shared objects of policy/web-modules.allow"),
];

/// The control with this id.
pub fn control(id: u8) -> Option<&'static Control> {
    CONTROLS.iter().find(|c| c.id == id)
}
