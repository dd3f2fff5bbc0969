#!/bin/sh
# rapbox post-build script (Buildroot convention): runs after the overlay was copied
# onto the target root file system given as $1. Touches only $1, safe to re-run.
set -eu

TARGET=${1:?usage: post-build.sh TARGET_DIR}
[ -d "$TARGET/etc" ] || { echo "post-build.sh: $TARGET is not a root file system" >&2; exit 1; }

# Mount points on the read-only root.
mkdir -p "$TARGET/data"
chmod 0755 "$TARGET/data"

# State that must survive reboots lives on the data partition.
mkdir -p "$TARGET/var/lib"
if [ ! -L "$TARGET/var/lib/rapbox" ]; then
    rm -rf "$TARGET/var/lib/rapbox"
    ln -s /data/rapbox "$TARGET/var/lib/rapbox"
fi

# Accounts from sysusers.d (rapd runs unprivileged).
if [ -x "$TARGET/usr/bin/systemd-sysusers" ]; then
    chroot "$TARGET" /usr/bin/systemd-sysusers >/dev/null
fi

# Modes of secrets and configuration.
[ -d "$TARGET/etc/ssh/sshd_config.d" ] && chmod 0644 "$TARGET"/etc/ssh/sshd_config.d/*.conf
chmod 0755 "$TARGET/usr/lib/rapbox/firstboot" "$TARGET/usr/lib/rapbox/sshkeys" "$TARGET/usr/lib/rapbox/technicians"

# Units: enable ours and networkd, mask what a gateway does not need or that slows boot.
enable() { # unit target
    mkdir -p "$TARGET/etc/systemd/system/$2.wants"
    ln -sfn "/etc/systemd/system/$1" "$TARGET/etc/systemd/system/$2.wants/$1"
}
enable_lib() { # unit target
    mkdir -p "$TARGET/etc/systemd/system/$2.wants"
    ln -sfn "/lib/systemd/system/$1" "$TARGET/etc/systemd/system/$2.wants/$1"
}
enable rapbox-firstboot.service sysinit.target
enable rapd.service multi-user.target
enable rapweb.service multi-user.target
enable rapbox-sshkeys.service multi-user.target
enable_lib systemd-networkd.service multi-user.target
mkdir -p "$TARGET/etc/systemd/system/sockets.target.wants"
ln -sfn /lib/systemd/system/systemd-networkd.socket "$TARGET/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
for u in e2scrub_reap.service e2scrub_all.timer getty-static.service getty@tty1.service systemd-pstore.service \
         systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
         systemd-firstboot.service systemd-machine-id-commit.service \
         dev-hugepages.mount dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
         sys-fs-fuse-connections.mount sys-kernel-config.mount; do
    ln -sfn /dev/null "$TARGET/etc/systemd/system/$u"
done

# Hardening last (after sysusers: it prunes accounts to the allow-list): hardening/
# owns the banner, sysctl, modprobe blacklist, PAM, login.defs, sshd policy, audit
# rules and the FIPS-only openssl.cnf.
sh "$(dirname "$0")/../hardening/apply.sh" "$TARGET"
exit 0
