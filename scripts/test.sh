#!/usr/bin/env bash
# The test command: installs what the tests need where it can (Debian
# packages, a PostgreSQL cluster, the systemd-host image), starts what they
# need, runs the whole suite (`cargo test --workspace --locked`, extra
# arguments passed on), and ends with a summary of the tests that could not
# run here. With CI set (.ci/run sets it), a test whose dependency is
# missing fails, naming it; without CI it is reported as skipped, never as
# passed.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v rsyslogd >/dev/null || need+=(rsyslog rsyslog-gnutls)
dpkg -s rsyslog-gnutls >/dev/null 2>&1 || need+=(rsyslog-gnutls)
command -v busybox >/dev/null || need+=(busybox-static)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v ip >/dev/null || need+=(iproute2)           # network-namespace multi-host test
command -v tar >/dev/null || need+=(tar)
command -v jq >/dev/null || need+=(jq)                 # packaging/prometheus/decnet-targets
command -v systemd-analyze >/dev/null || need+=(systemd)  # unit syntax check (packaging test)
command -v dpkg-deb >/dev/null || need+=(dpkg)        # packaging/deb/build-debs.sh (the packaging test)
# The compose driver's tests (and LAN deckies) drive a real engine through
# Docker Compose where an engine runs: make sure compose is there too.
if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1 \
    && ! command -v docker-compose >/dev/null; then
    need+=(docker-compose)
fi
# The systemd-host tests boot Debian bookworm containers built from Debian's
# package registry with debootstrap (tests/systemd-hosts/build-image.sh).
if command -v docker >/dev/null; then
    command -v debootstrap >/dev/null || need+=(debootstrap)
fi
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" || \
        echo "WARNING: could not install ${need[*]}; tests needing them will say so" >&2
fi

# A real PostgreSQL for the fleet database suite.
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
    if ! pg_lsclusters 2>/dev/null | grep -q "^$ver "; then
        pg_createcluster "$ver" main >/dev/null 2>&1 || true
    fi
    pg_ctlcluster "$ver" main start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 && break
        sleep 1
    done
    if su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'decnet-ci'\"" >/dev/null 2>&1; then
        export DECNET_TEST_POSTGRES_URL="postgres://postgres:decnet-ci@127.0.0.1:5432/postgres?sslmode=disable"
    else
        echo "WARNING: PostgreSQL did not start; the PostgreSQL database run will say so" >&2
    fi
fi

# The systemd-host test image (cached by its tag; built here, in the setup,
# so the tests themselves fetch nothing).
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    tests/systemd-hosts/build-image.sh || \
        echo "WARNING: the systemd-host test image could not be built; those tests will fail" >&2
fi

# Tests that cannot run here say so in this file (tests/src/skip.rs).
DECNET_TEST_SKIPS="$(mktemp)"
export DECNET_TEST_SKIPS
trap 'rm -f "$DECNET_TEST_SKIPS"' EXIT

status=0
cargo test --workspace --locked "$@" || status=$?

skipped=$(grep -c . "$DECNET_TEST_SKIPS" || true)
echo
if [ "$skipped" -gt 0 ]; then
    echo "== $skipped test(s) SKIPPED here (a dependency is missing; CI runs them all):"
    sort -u "$DECNET_TEST_SKIPS" | sed 's/^/   /'
else
    echo "== no test skipped"
fi
exit "$status"
