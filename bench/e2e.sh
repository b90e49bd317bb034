#!/usr/bin/env bash
# End-to-end benchmark: hydraopt against the reading floor and a PyTorch peer.
#
#   bench/e2e.sh [options] [PRESET...]   PRESET: llama-1b, llama-1b-shared, llama-7b (default: llama-1b llama-7b)
#
# Options (each also settable by the environment variable in brackets):
#   --data DIR       adapter sets live in DIR/PRESET; generated there with
#                    `hydraopt synth DIR/PRESET --preset PRESET` when absent
#                    (llama-1b ~522 MB, llama-7b ~3 GB). DIR/llama1b (the
#                    preset name without '-') is accepted too, so
#                    `--data /work/data` reuses /work/data/llama1b.
#                    [BENCH_DATA, default out/bench-data]
#   --out DIR        results: DIR/e2e.md (the presets of this run), and per
#                    preset DIR/PRESET/ with its own e2e.md, the reports, logs
#                    and /usr/bin/time -v files [BENCH_OUT, default out/bench]
#   --timeout S      per-command limit; a command that exceeds it is killed
#                    and reported as "timeout" [BENCH_TIMEOUT, default 600]
#   --threads N      threads for hydraopt and the peer [BENCH_THREADS, default 2]
#   --no-planner     skip the `--budget` runs (5 below); for a quick
#                    hydra-point comparison with the peer [BENCH_NO_PLANNER=1]
#   --budgets "B..." the planner's budgets: fractions, 1/N or hydra (the
#                    hydra point's storage fraction, see 5)
#                    [BENCH_BUDGETS, default "1/N 0.25 hydra 0.75"]
#   --byte-budgets "F..."  byte budgets, fractions of a bf16 copy (merge
#                    --budget-bf16 F: the planner chooses structure x
#                    precision) [BENCH_BYTE_BUDGETS, default "0.125 0.2"]
#   --keep           keep the written bundles (deleted after each command by
#                    default: llama-7b bundles are ~1.5 GB each) [BENCH_KEEP=1]
#   HYDRAOPT=path    the CLI (default build/hydraopt); PYTHON (default /usr/bin/python3)
#
# Per preset, each command runs under `timeout` and `/usr/bin/time -v`
# (wall, user+sys CPU, peak RSS):
#   1. read floor: `cat` of every adapter_model.safetensors to /dev/null. The
#      page cache is warm (the files are read once, untimed, just before, and
#      nothing is dropped: dropping caches needs root and disturbs other jobs),
#      so this is the cost of copying the bytes out of memory, not of the disk;
#      every later command reads warm as well.
#   2. the peer's --read-only run (Python: read + parse every file into memory).
#   3. `hydraopt inspect --json` (reads everything, and computes subspace
#      similarity statistics: more than reading; hydraopt has no read-only mode).
#   4. `hydraopt merge --method hydra` (the hydra point, closed form).
#   5. `hydraopt merge --budget B` (the planner) for each B of --budgets: 1/N
#      is one adapter's storage, hydra the hydra point's storage fraction,
#      computed from the shapes: sum_m (r in + N r out) / sum_m (N r (in + out));
#      then `hydraopt merge --budget-bf16 F` for each F of --byte-budgets.
#   6. the PyTorch peer bench/peers/hydra_torch.py (the same hydra point).
# Merges and the peer write their result (-o / --out), so writing is timed.
# Then a Markdown table (preset, command, wall s, CPU s, peak RSS MiB, input
# MiB, RSS % of input, mean rel. error), the peer/hydraopt ratios at the hydra
# point and the agreement of their per-task errors are printed and written to
# OUT/e2e.md. See bench/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${BENCH_DATA:-$ROOT/out/bench-data}
OUT=${BENCH_OUT:-$ROOT/out/bench}
TIMEOUT=${BENCH_TIMEOUT:-600}
THREADS=${BENCH_THREADS:-2}
KEEP=${BENCH_KEEP:-0}
NO_PLANNER=${BENCH_NO_PLANNER:-0}
PLANNER_BUDGETS=${BENCH_BUDGETS:-"1/N 0.25 hydra 0.75"}
BYTE_BUDGETS=${BENCH_BYTE_BUDGETS:-"0.125 0.2"}
HYDRAOPT=${HYDRAOPT:-$ROOT/build/hydraopt}
PY=${PYTHON:-/usr/bin/python3}
PEER=$ROOT/bench/peers/hydra_torch.py
UTIL=$ROOT/bench/peers/e2e_util.py

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

PRESETS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --no-planner) NO_PLANNER=1; shift ;;
    --budgets) PLANNER_BUDGETS=$2; shift 2 ;;
    --byte-budgets) BYTE_BUDGETS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    llama-1b|llama-1b-shared|llama-7b|small|tiny) PRESETS+=("$1"); shift ;;
    *) echo "e2e.sh: unknown argument '$1'" >&2; usage 2 ;;
  esac
done
[[ ${#PRESETS[@]} -gt 0 ]] || PRESETS=(llama-1b llama-7b)
[[ $TIMEOUT =~ ^[0-9]+$ && $THREADS =~ ^[0-9]+$ ]] || { echo "e2e.sh: --timeout and --threads take integers" >&2; exit 2; }

for tool in "$HYDRAOPT" "$PY" /usr/bin/time timeout; do
  command -v "$tool" > /dev/null || { echo "e2e.sh: $tool not found" >&2; exit 1; }
done
"$HYDRAOPT" methods | grep -q '^hydra ' || { echo "e2e.sh: $HYDRAOPT has no 'hydra' method" >&2; exit 1; }
"$PY" -c 'import torch' 2> /dev/null || { echo "e2e.sh: $PY cannot import torch (apt-get install python3-torch)" >&2; exit 1; }

has_adapters() { compgen -G "$1/*/adapter_model.safetensors" > /dev/null; }

# The data directory of a preset, generating it when absent.
data_dir() {
  local p=$1 d
  for d in "$DATA/$p" "$DATA/${p//-/}"; do
    if has_adapters "$d"; then echo "$d"; return; fi
  done
  d=$DATA/$p
  echo "e2e.sh: generating $d (hydraopt synth --preset $p) ..." >&2
  mkdir -p "$DATA"
  rm -rf "$d.partial"
  "$HYDRAOPT" synth "$d.partial" --preset "$p" >&2
  mv "$d.partial" "$d"
  echo "$d"
}

mkdir -p "$OUT"
ROWS=$OUT/e2e.rows.tsv
: > "$ROWS"
HEADER=$OUT/e2e.header.md
{
  echo "# hydraopt end-to-end benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg);"
  echo "threads $THREADS for hydraopt and the peer; timeout ${TIMEOUT} s per command;"
  echo "$("$HYDRAOPT" --version 2>&1 | head -1); torch $("$PY" -c 'import torch; print(torch.__version__)')."
  echo "Page cache warm (nothing dropped): the read floor is a memory copy, not disk I/O."
  echo
} > "$HEADER"

# run PRESET LABEL JSON_WITH_ERRORS_OR_- STDOUT_FILE CMD...
run() {
  local preset=$1 label=$2 json=$3 so=$4; shift 4
  local tf=$so.time rc
  echo "e2e.sh: [$preset] $label ..." >&2
  rm -f "$tf"
  [[ $json == - ]] || rm -f "$json"  # no stale report from an earlier run
  set +e
  timeout --kill-after=10 "$TIMEOUT" /usr/bin/time -v -o "$tf" "$@" > "$so" 2> "$so.err"
  rc=$?
  set -e
  case $rc in
    0) ;;
    124|137) echo "e2e.sh: [$preset] $label: timeout after ${TIMEOUT} s" >&2 ;;
    *) echo "e2e.sh: [$preset] $label: exit $rc (see $so.err)" >&2 ;;
  esac
  local shown=${SHOWN:-"$*"}  # the command as shown in e2e.md, with the adapter lists abbreviated
  shown=${shown//"${files[*]}"/"$dir/*/adapter_model.safetensors"}
  shown=${shown//"${adapters[*]}"/"$dir/*"}
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$preset" "$label" "$rc" "$tf" "$json" "$INPUT_BYTES" "$shown" \
    | tee -a "$OUT/$preset/rows.tsv" >> "$ROWS"
}

drop() { [[ $KEEP == 1 ]] || rm -f "$@"; }

for p in "${PRESETS[@]}"; do
  dir=$(data_dir "$p")
  adapters=("$dir"/*/)
  adapters=("${adapters[@]%/}")
  files=("${adapters[@]/%//adapter_model.safetensors}")
  shape_vars=$("$PY" "$UTIL" shapes "${adapters[@]}")
  eval "$shape_vars"  # TASKS MODULES INPUT_BYTES ONE_OVER_N HYDRA_FRACTION
  echo "e2e.sh: [$p] $dir: $TASKS adapters, $MODULES modules, $((INPUT_BYTES >> 20)) MiB;" \
       "1/N = $ONE_OVER_N, hydra fraction = $HYDRA_FRACTION" >&2
  echo "- $p: $dir, $TASKS adapters, $MODULES modules; 1/N = $ONE_OVER_N; hydra fraction = $HYDRA_FRACTION" >> "$HEADER"
  o=$OUT/$p
  mkdir -p "$o"
  : > "$o/rows.tsv"
  cat "${files[@]}" > /dev/null  # warm the page cache (untimed)

  SHOWN="cat ${files[*]} > /dev/null" run "$p" "read floor: cat > /dev/null (page cache warm)" - "$o/cat.log" \
      sh -c 'exec cat "$@" > /dev/null' cat "${files[@]}"
  run "$p" "peer --read-only (Python read + parse)" "$o/peer-read.json" "$o/peer-read.json" \
      "$PY" "$PEER" --read-only --threads "$THREADS" "${adapters[@]}"
  run "$p" "hydraopt inspect --json" - "$o/inspect.json" "$HYDRAOPT" inspect --json "${adapters[@]}"
  run "$p" "hydraopt merge --method hydra" "$o/hydra.json" "$o/hydra.log" \
      "$HYDRAOPT" merge "${adapters[@]}" --method hydra --threads "$THREADS" -o "$o/hydra.safetensors" --report "$o/hydra.json"
  drop "$o/hydra.safetensors"
  if [[ $NO_PLANNER != 1 ]]; then
    for b in $PLANNER_BUDGETS; do
      case $b in
        1/N) value=$ONE_OVER_N; name=1overN; label="1/N ($ONE_OVER_N)" ;;
        hydra) value=$HYDRA_FRACTION; name=hydra; label="hydra fraction ($HYDRA_FRACTION)" ;;
        *) value=$b; name=$b; label=$b ;;
      esac
      run "$p" "hydraopt merge --budget $label" "$o/budget-$name.json" "$o/budget-$name.log" \
          "$HYDRAOPT" merge "${adapters[@]}" --budget "$value" --threads "$THREADS" -o "$o/budget-$name.safetensors" \
          --report "$o/budget-$name.json"
      drop "$o/budget-$name.safetensors"
    done
    for f in $BYTE_BUDGETS; do
      run "$p" "hydraopt merge --budget-bf16 $f" "$o/bytes-$f.json" "$o/bytes-$f.log" \
          "$HYDRAOPT" merge "${adapters[@]}" --budget-bf16 "$f" --threads "$THREADS" -o "$o/bytes-$f.safetensors" \
          --report "$o/bytes-$f.json"
      drop "$o/bytes-$f.safetensors"
    done
  fi
  run "$p" "peer hydra_torch.py (hydra point)" "$o/peer.json" "$o/peer.json" \
      "$PY" "$PEER" --threads "$THREADS" --out "$o/peer.safetensors" "${adapters[@]}"
  drop "$o/peer.safetensors"
  "$PY" "$UTIL" table "$o/rows.tsv" "$o/e2e.md" "$HEADER" > /dev/null  # this preset alone
done

echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$HEADER"
echo >> "$HEADER"
"$PY" "$UTIL" table "$ROWS" "$OUT/e2e.md" "$HEADER"
echo "e2e.sh: wrote $OUT/e2e.md" >&2
