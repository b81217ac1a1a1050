#!/usr/bin/env bash
# Fuzzing smoke run for CI: builds the fuzz targets and runs each one briefly from the seed
# corpus in fuzz/corpus/<target>/. Any crash, panic or failed assertion fails the script and
# leaves the input under fuzz/artifacts/<target>/.
#
#   fuzz/smoke.sh                     # every target, FUZZ_SMOKE_SECONDS (default 20) each
#   FUZZ_SMOKE_SECONDS=60 fuzz/smoke.sh batch signature
#
# Runs on stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only flags.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SMOKE_SECONDS:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/smoke.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# No sanitizer (safe Rust; it roughly halves the build and doubles the speed), but with debug
# assertions so that arithmetic overflow panics as it does in a debug build.
flags=(--sanitizer none --debug-assertions)

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build "${flags[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    echo "fuzz/smoke.sh: $target for ${seconds}s" >&2
    # New inputs go to the scratch directory (the first one given); the seed corpus is only read.
    mkdir -p "$scratch/$target"
    cargo fuzz run "${flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzz/smoke.sh: ${#targets[@]} targets, no findings" >&2
