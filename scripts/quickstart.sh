#!/usr/bin/env bash
# The README's main job for now: build decnet, create a throw-away CA and
# database, enroll two workers, and show the fleet. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --bin decnet
decnet=target/debug/decnet
DECNET_HOME=$(mktemp -d)
export DECNET_HOME
trap 'rm -rf "$DECNET_HOME"' EXIT
$decnet ca init
$decnet swarm enroll --host worker-1 --address 127.0.0.1 --updater
$decnet swarm enroll --host worker-2 --address 127.0.0.2 --updater
$decnet swarm list
openssl verify -CAfile "$DECNET_HOME/ca/ca.crt" "$DECNET_HOME/ca/workers/worker-1/worker.crt"
$decnet audit
