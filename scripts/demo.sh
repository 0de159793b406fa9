#!/usr/bin/env bash
# The README's main job: build every binary, then run the local fleet demo
# (CA, listener, 3 workers each with agent + updater + forwarder on loopback;
# deploy, update, canary revert, logs — every step verified). Extra arguments
# go to `decnet demo` (e.g. --workers 5, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --bins
exec target/debug/decnet demo "$@"
