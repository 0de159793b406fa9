#!/usr/bin/env bash
# Run every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each (default
# 20), starting from the corpus committed in fuzz/corpus/<target>. New inputs
# go to a scratch copy; a crash fails the script and leaves its reproducer in
# fuzz/artifacts/<target>/. Needs the nightly toolchain and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-20}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$target"
    cp -r "corpus/$target/." "$scratch/$target/" 2>/dev/null || true
    echo "== fuzzing $target for ${secs}s"
    cargo +nightly fuzz run --sanitizer none "$target" "$scratch/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12
done
