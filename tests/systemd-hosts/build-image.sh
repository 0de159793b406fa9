#!/usr/bin/env bash
# Build the test image of the systemd-host end-to-end tests (once; cached by
# its tag): a Debian bookworm root filesystem from Debian's package registry
# (debootstrap) with systemd as PID 1, imported with `docker import` (no
# registry is needed or used).
#
#   tests/systemd-hosts/build-image.sh [TAG]
#
# Safe to run concurrently: the first caller builds, the others wait.
set -euo pipefail
tag=${1:-decnet-e2e-bookworm-systemd:1}
mirror=${DECNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
    exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
exec 9>/tmp/decnet-e2e-bookworm-image.lock
flock 9
if docker image inspect "$tag" >/dev/null 2>&1; then
    exit 0
fi
root=$(mktemp -d /var/tmp/decnet-bookworm.XXXXXX)
trap 'rm -rf "$root"' EXIT
# systemd (PID 1), dbus (systemctl), adduser (the master package's user),
# openssl (the master package's dependency), iproute2 and procps (checks).
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,iproute2,procps,adduser,openssl \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Each container gets its own machine id at boot; no getty on a container.
# (Run it with --stop-signal SIGRTMIN+3: the signal systemd halts on.)
: >"$root/etc/machine-id"
rm -f "$root/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
tar -C "$root" -c . | docker import -c 'CMD ["/sbin/init"]' - "$tag" >/dev/null
echo "built $tag"
