#!/usr/bin/env bash
# Installs ringfs on a Linux server: binaries, systemd units, the `ringfs`
# user, /etc/ringfs (example configs and a fresh cluster secret, never
# overwriting existing files) and /var/lib/ringfs.
#
#   deploy/install.sh [--bin-dir DIR] [--root DIR] [--no-systemctl]
#
# --bin-dir  where ringfs-control, ringfs-node and ringfs are (default: build
#            them with `cargo build --release` into target/release)
# --root     install under DIR instead of / (packaging, tests); implies
#            --no-systemctl and skips creating the user
# --no-systemctl  do not run `systemctl daemon-reload`
#
# Then: edit /etc/ringfs/control.toml on the control host, and for each data
# disk /etc/ringfs/node-<name>.toml (copy node.toml.example), copy the same
# /etc/ringfs/secret (mode 0600, owned by ringfs) to every host, and
#   systemctl enable --now ringfs-control
#   systemctl enable --now ringfs-node@<name>
# and on clients, with control = "HOST:PORT" and credential = "PATH" (a
# credential file the administrator issued, mode 0600) in
# /etc/ringfs/client.toml,
#   systemctl enable --now ringfs-mount@$(systemd-escape --path /mnt/ringfs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
bin_dir=""
root=""
systemctl=1

while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift 2 ;;
        --root) root="${2%/}"; systemctl=0; shift 2 ;;
        --no-systemctl) systemctl=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$bin_dir" ]; then
    (cd "$repo" && cargo build --release -p ringfs-control -p ringfs-node -p ringfs-client)
    bin_dir="$repo/target/release"
fi
for b in ringfs-control ringfs-node ringfs; do
    [ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b is missing" >&2; exit 1; }
done

if [ -z "$root" ] && ! id ringfs >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/ringfs --shell /usr/sbin/nologin ringfs
fi
owner() { [ -z "$root" ] && chown "$@" || true; }

install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system"
install -d -m 0750 "$root/etc/ringfs" "$root/var/lib/ringfs"
owner root:ringfs "$root/etc/ringfs"
owner ringfs:ringfs "$root/var/lib/ringfs"
for b in ringfs-control ringfs-node ringfs; do
    install -m 0755 "$bin_dir/$b" "$root/usr/local/bin/$b"
done
install -m 0644 "$here/ringfs-control.service" "$here/ringfs-node@.service" "$here/ringfs-mount@.service" "$root/etc/systemd/system/"
[ -e "$root/etc/ringfs/control.toml" ] || install -m 0640 "$here/control.toml" "$root/etc/ringfs/control.toml"
install -m 0640 "$here/node.toml" "$root/etc/ringfs/node.toml.example"
if [ ! -e "$root/etc/ringfs/secret" ]; then
    (umask 077 && head -c 32 /dev/urandom | base64 > "$root/etc/ringfs/secret")
fi
# The servers refuse a secret that group or others may read: owner-only,
# owned by the user they run as (an older install left it mode 0640).
chmod 0600 "$root/etc/ringfs/secret"
owner root:ringfs "$root/etc/ringfs/control.toml" "$root/etc/ringfs/node.toml.example"
owner ringfs:ringfs "$root/etc/ringfs/secret"

if [ "$systemctl" = 1 ]; then
    systemctl daemon-reload
fi
echo "ringfs installed under ${root:-/}; see docs/operations.md"
