#!/usr/bin/env bash
# Build the Debian packages (one command, no tool beyond dpkg-deb):
#   decnet         the master: `decnet` CLI, the master daemon and listener units
#   decnet-worker  the agent and the updater, their units, /etc/default/decnet
#
#   packaging/deb/build-debs.sh [OUT_DIR]     (default target/debian)
#
# Binaries come from `cargo build --release` (or DECNET_BIN_DIR when set,
# e.g. a debug build for tests). Architecture from dpkg. DECNET_DEB_COMPRESS
# picks dpkg-deb's compressor (default xz; the tests use none).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/debian}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
bin_dir=${DECNET_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
    cargo build --release --locked -q -p decnet-master -p decnet-agent -p decnet-updater --bins
    bin_dir=target/release
fi
for b in decnet decnet-agent decnet-updater; do
    [ -x "$bin_dir/$b" ] || { echo "error: $bin_dir/$b is missing" >&2; exit 2; }
done
compress=${DECNET_DEB_COMPRESS:-xz}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
units=packaging/systemd
deb=packaging/deb

stage() { # package-name
    local root="$work/$1"
    mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/share/doc/$1"
    cp README.md "$root/usr/share/doc/$1/"
    echo "$root"
}

control() { # root name depends description...
    local root=$1 name=$2 depends=$3
    shift 3
    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat >"$root/DEBIAN/control" <<CTL
Package: $name
Version: $version
Architecture: $arch
Maintainer: decnet developers <decnet@example.invalid>
Section: admin
Priority: optional
Installed-Size: $size
Depends: $depends
Homepage: https://example.invalid/decnet
Description: $1
$(shift; for l in "$@"; do echo " $l"; done)
CTL
}

# --- decnet (master) ---------------------------------------------------------
root=$(stage decnet)
install -m 0755 "$bin_dir/decnet" "$root/usr/bin/decnet"
install -m 0644 "$units/decnet-master.service" "$root/lib/systemd/system/"
install -m 0644 wiki/Install.md wiki/Master-CLI.md wiki/Troubleshooting.md "$root/usr/share/doc/decnet/"
for s in postinst prerm postrm; do
    install -m 0755 "$deb/decnet.$s" "$root/DEBIAN/$s"
done
control "$root" decnet "adduser, libc6, openssl" \
    "decnet master: CA, fleet database and control API over mTLS" \
    "The master of a decnet fleet: the certificate authority, enrollment," \
    "the control API workers heartbeat to, the RFC 5425 log listener, and" \
    "the \`decnet\` CLI that deploys, updates and rolls back workers."
dpkg-deb -Z"$compress" --root-owner-group --build "$root" "$out/decnet_${version}_${arch}.deb" >/dev/null

# --- decnet-worker -----------------------------------------------------------
root=$(stage decnet-worker)
install -m 0755 "$bin_dir/decnet-agent" "$root/usr/bin/decnet-agent"
install -m 0755 "$bin_dir/decnet-updater" "$root/usr/bin/decnet-updater"
for u in decnet-agent.service decnet-agent.socket decnet-updater.service decnet-updater.socket decnet-forwarder.service decnet-decky-firewall.service; do
    install -m 0644 "$units/$u" "$root/lib/systemd/system/"
done
install -d -m 0755 "$root/etc/default"
install -m 0644 "$units/decnet.default" "$root/etc/default/decnet"
install -m 0644 wiki/Agent.md wiki/Remote-Updates.md "$root/usr/share/doc/decnet-worker/"
echo /etc/default/decnet >"$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
    install -m 0755 "$deb/decnet-worker.$s" "$root/DEBIAN/$s"
done
control "$root" decnet-worker "libc6" \
    "decnet worker: agent and updater daemons over mTLS" \
    "A decnet worker host: the agent (deploys and reports decoy workloads)" \
    "and the updater (release slots, health probe, automatic revert," \
    "rollback, self-update), both driven by the master over mutual TLS."
dpkg-deb -Z"$compress" --root-owner-group --build "$root" "$out/decnet-worker_${version}_${arch}.deb" >/dev/null

ls -1 "$out"/*.deb
