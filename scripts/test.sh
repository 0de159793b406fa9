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
command -v python3 >/dev/null || need+=(python3)       # free ports, the UDP sink of the compose firewall test
command -v runuser >/dev/null || need+=(util-linux)    # the throw-away PostgreSQL runs as postgres
command -v jq >/dev/null || need+=(jq)                 # packaging/prometheus/decnet-targets
command -v systemd-analyze >/dev/null || need+=(systemd)  # unit syntax check (packaging test)
command -v dpkg-deb >/dev/null || need+=(dpkg)        # packaging/deb/build-debs.sh (the packaging test)
# The console's browser test: headless Chromium driven over WebDriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
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
    # The compose deckies' firewall: the engine's own tools.
    command -v iptables-save >/dev/null || need+=(iptables)
fi
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" || \
        echo "WARNING: could not install ${need[*]}; tests needing them will say so" >&2
fi

# A throw-away PostgreSQL for the fleet database suite: its own data
# directory, port and password, stopped and removed at exit; nothing of the
# host's own clusters is touched. Skipped when DECNET_TEST_POSTGRES_URL
# already names one.
pg_dir="" pg_bin="" pg_as=""
cleanup() {
    if [ -n "$pg_dir" ]; then
        $pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
    fi
    rm -f "${DECNET_TEST_SKIPS:-}"
}
trap cleanup EXIT
if [ -z "${DECNET_TEST_POSTGRES_URL:-}" ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    pg_dir=$(mktemp -d)
    pg_pass=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s\n' "$pg_pass" >"$pg_dir/pw"
    chmod 600 "$pg_dir/pw"
    if [ "$(id -u)" = 0 ]; then
        # initdb refuses to run as root.
        chown -R postgres "$pg_dir"
        pg_as="runuser -u postgres --"
    fi
    pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 20000)))
    if $pg_as "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --pwfile="$pg_dir/pw" \
            -A scram-sha-256 >"$pg_dir/initdb.log" 2>&1 &&
        $pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -w -t 60 -l "$pg_dir/server.log" \
            -o "-p $pg_port -k $pg_dir -h 127.0.0.1" start >/dev/null 2>&1; then
        export DECNET_TEST_POSTGRES_URL="postgres://postgres:$pg_pass@127.0.0.1:$pg_port/postgres?sslmode=disable"
    else
        echo "WARNING: a throw-away PostgreSQL did not start ($(tail -n 3 "$pg_dir"/*.log 2>/dev/null | tr '\n' ' ')); the PostgreSQL runs will say so" >&2
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

# The whole workspace, unless the arguments name packages (-p NAME).
scope=(--workspace)
for a in "$@"; do
    case "$a" in -p | -p* | --package | --package=*) scope=() ;; esac
done
status=0
# The rule the client crates exist for (DESIGN.md §2): neither the CLI's
# crate nor the API client can open the fleet's database.
for crate in decnet-cli decnet-api-client; do
    if cargo tree -p "$crate" -e normal --locked --prefix none |
        grep -E '^(decnet-fleet|decnet-server|sqlx)' >&2; then
        echo "FAILED: $crate depends on the fleet database or the server (above)" >&2
        status=1
    fi
done
cargo test "${scope[@]}" --locked "$@" || status=$?
# The end-to-end tests that drive the swarm CLI once more, every operator
# command through a context (an admin logged in to a `master serve` of the
# same home): same assertions, the CLI as the fleet API's client. Part of
# the whole run; alone: DECNET_E2E_VIA=context scripts/test.sh -p decnet-e2e --test NAME
# (two_masters_e2e is left out: it counts join attempts per source address,
# and the harness's own operator login is one of them).
if [ $# -eq 0 ]; then
    via=()
    for t in agent_compose agent_e2e agent_lan containment_e2e hostile_edge_e2e \
        identity_e2e log_relay_e2e master_e2e metrics_e2e netns_e2e updater_e2e; do
        via+=(--test "$t")
    done
    DECNET_E2E_VIA=context cargo test -p decnet-e2e --locked "${via[@]}" || status=$?
fi

skipped=$(grep -c . "$DECNET_TEST_SKIPS" || true)
echo
if [ "$skipped" -gt 0 ]; then
    echo "== $skipped test(s) SKIPPED here (a dependency is missing; CI runs them all):"
    sort -u "$DECNET_TEST_SKIPS" | sed 's/^/   /'
else
    echo "== no test skipped"
fi
exit "$status"
