#!/bin/sh
# rapbox hardening, applied to a root file system tree (Buildroot post-build
# convention): hardening/apply.sh TARGET_DIR. Touches only TARGET_DIR, safe to re-run.
# Every decision lives in a data file beside this script:
#   rootfs/           copied verbatim over the target (config files, drop-ins)
#   dod-banner.txt    installed as etc/issue and etc/issue.net (control 33)
#   login.defs.set    keys set in etc/login.defs (controls 7, 8, 11)
#   auditd.conf.set   keys set in etc/audit/auditd.conf (control 43)
#   policy/accounts.allow  accounts kept in etc/passwd and etc/shadow (controls 2-4)
#   policy/suid.allow      files that keep their SUID/SGID bit (control 17)
# Afterwards `raphard check --root TARGET_DIR` must pass.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=${1:?usage: apply.sh TARGET_DIR}
[ -d "$TARGET/etc" ] || { echo "apply.sh: $TARGET is not a root file system" >&2; exit 1; }

# Data file lines without comments and blank lines.
data() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^[[:space:]]*$/d' "$1"; }

# 1. Configuration files (root-owned, 0644; directories 0755).
(cd "$HERE/rootfs" && find . -type d) | while read -r d; do
    mkdir -p "$TARGET/$d"
done
(cd "$HERE/rootfs" && find . -type f) | while read -r f; do
    rm -f "$TARGET/$f"
    cp "$HERE/rootfs/$f" "$TARGET/$f"
    chown 0:0 "$TARGET/$f"
    chmod 0644 "$TARGET/$f"
done
chmod 0640 "$TARGET/etc/audit/rules.d/"*.rules

# 2. The DoD notice-and-consent banner: console (agetty shows /etc/issue) and sshd.
for f in issue issue.net; do
    rm -f "$TARGET/etc/$f"
    cp "$HERE/dod-banner.txt" "$TARGET/etc/$f"
    chown 0:0 "$TARGET/etc/$f"
    chmod 0644 "$TARGET/etc/$f"
done

# 3. KEY VALUE settings in files that have no .d directory.
set_keys() { # file data separator
    file=$1
    [ -f "$file" ] || return 0
    data "$2" | while read -r key value; do
        if grep -Eq "^[[:space:]]*$key([[:space:]]|=)" "$file"; then
            sed -i -E "s@^[[:space:]]*$key([[:space:]]|=).*@$key$3$value@" "$file"
        else
            printf '%s%s%s\n' "$key" "$3" "$value" >> "$file"
        fi
    done
}
set_keys "$TARGET/etc/login.defs" "$HERE/login.defs.set" "	"
set_keys "$TARGET/etc/audit/auditd.conf" "$HERE/auditd.conf.set" " = "

# 4. Accounts: only the allow-listed ones stay (their groups stay, so no file becomes
# ungrouped). Every account but root is locked with a nologin shell.
allowed=$(data "$HERE/policy/accounts.allow" | awk '{print $1}')
for db in passwd shadow; do
    [ -f "$TARGET/etc/$db" ] || continue
    tmp="$TARGET/etc/$db.rapbox-tmp"
    : > "$tmp"
    while IFS= read -r line; do
        name=${line%%:*}
        if printf '%s\n' "$allowed" | grep -qx "$name"; then
            printf '%s\n' "$line" >> "$tmp"
        fi
    done < "$TARGET/etc/$db"
    chown --reference="$TARGET/etc/$db" "$tmp"
    chmod --reference="$TARGET/etc/$db" "$tmp"
    mv "$tmp" "$TARGET/etc/$db"
    rm -f "$TARGET/etc/$db-"
done
awk -F: -v OFS=: '$1 != "root" && $7 !~ /nologin$|\/false$/ { $7 = "/usr/sbin/nologin" } { print }' \
    "$TARGET/etc/passwd" > "$TARGET/etc/passwd.rapbox-tmp"
cat "$TARGET/etc/passwd.rapbox-tmp" > "$TARGET/etc/passwd"
rm -f "$TARGET/etc/passwd.rapbox-tmp"
# Locked: a password field starting with "!" (or "*": no password can match).
awk -F: -v OFS=: '$1 != "root" && $2 !~ /^[!*]/ { $2 = "!" $2 } { print }' \
    "$TARGET/etc/shadow" > "$TARGET/etc/shadow.rapbox-tmp"
cat "$TARGET/etc/shadow.rapbox-tmp" > "$TARGET/etc/shadow"
rm -f "$TARGET/etc/shadow.rapbox-tmp" "$TARGET/etc/gshadow-" "$TARGET/etc/group-"
chown 0:0 "$TARGET/etc/passwd" "$TARGET/etc/group"
chmod 0644 "$TARGET/etc/passwd" "$TARGET/etc/group"
shadow_gid=$(awk -F: '$1 == "shadow" { print $3 }' "$TARGET/etc/group")
for f in shadow gshadow; do
    [ -f "$TARGET/etc/$f" ] || continue
    chown "0:${shadow_gid:-0}" "$TARGET/etc/$f"
    chmod 0640 "$TARGET/etc/$f"
done

# systemd-sysusers must never re-create the removed accounts: Debian's basic.conf
# (all of base-passwd's users) is masked by an empty override of the same name.
mkdir -p "$TARGET/etc/sysusers.d"
ln -sfn /dev/null "$TARGET/etc/sysusers.d/basic.conf"

# 5. SUID/SGID: cleared on every regular file that is not allow-listed with exactly
# that mode, owner and group.
suid_list=$(data "$HERE/policy/suid.allow")
find "$TARGET" -xdev -type f -perm /6000 | while read -r f; do
    rel=/${f#"$TARGET"/}
    want=$(printf '%s\n' "$suid_list" | awk -v p="$rel" '$1 == p { print $2 }')
    if [ -z "$want" ]; then
        chmod ug-s "$f"
    fi
done

# 6. Audit rules: /etc/audit/audit.rules is generated here because the read-only root
# cannot be written at boot (augenrules --load then finds "No change").
if [ -x "$TARGET/usr/sbin/augenrules" ]; then
    chroot "$TARGET" /usr/sbin/augenrules >/dev/null
    chmod 0640 "$TARGET/etc/audit/audit.rules"
    rm -f "$TARGET/etc/audit/audit.rules.prev"
fi
# Audit log directory: root only (the box bind-mounts /data/log over /var/log; its
# audit directory is created 0700 by first boot).
if [ -d "$TARGET/var/log/audit" ]; then
    chown 0:0 "$TARGET/var/log/audit"
    chmod 0700 "$TARGET/var/log/audit"
fi

exit 0
