#!/usr/bin/env bash
# Runs every libFuzzer target for SECONDS each (default 60: the CI smoke
# run), starting from seeds made by make_seeds.sh with the release CLI and
# from the corpus kept in BUILD/corpus/<target> by earlier runs.
# A crash, a leak, a UB report or a timeout (> 10 s for one input) stops
# that target and fails the script; the input is saved as
# BUILD/artifacts/<target>-crash-... for a regression test.
# Usage: tests/fuzz/run.sh [SECONDS] [FUZZ_BUILD_DIR] [HYDRAOPT_CLI]
# Longer runs: tests/fuzz/run.sh 3600 (an hour per target).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
build=${2:-build-fuzz}
cli=${3:-build/hydraopt}
[ -d "$build/seeds" ] || tests/fuzz/make_seeds.sh "$cli" "$build/seeds"
mkdir -p "$build/artifacts"
status=0
for t in safetensors peft_config pattern bundle llama_config quant calibration plan; do
  mkdir -p "$build/corpus/$t"
  log="$build/$t.log"
  echo "fuzz: $t for ${seconds}s" >&2
  if ! "$build/${t}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
        "$build/corpus/$t" "$build/seeds/$t" >"$log" 2>&1; then
    echo "fuzz: $t FAILED; see $log and $build/artifacts/" >&2
    tail -n 40 "$log" >&2
    status=1
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$log" | sed "s/^/fuzz: $t /" >&2 || true
done
exit $status
