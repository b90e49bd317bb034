#!/usr/bin/env bash
# ctest mpi.merge (HYDRAOPT_MPI=ON builds): `mpiexec -np 2 hydraopt merge`
# writes the same bytes and the same report as one process, and a failure
# on any rank gives one error line, a non-zero exit and no output file.
# Usage: mpi_merge_test.sh HYDRAOPT MPIEXEC
set -euo pipefail
hydraopt=$1
mpiexec=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # CI runs as root
flags=()
if [[ "$("$mpiexec" --version 2>&1)" =~ Open\ MPI|OpenRTE ]]; then
  flags=(--oversubscribe --mca btl self,vader)  # one machine, maybe fewer cores than ranks
fi
mpi() { "$mpiexec" "${flags[@]}" "$@"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$hydraopt" synth "$tmp/in" --preset tiny --tasks 6 --statistics "$tmp/stats" 2>/dev/null
adapters=("$tmp"/in/task*)

# The summary line without its timing and output path.
summary() { sed -E 's/, [0-9.]+ s -> .*$//' "$1"; }

same_as_one_process() {
  local name=$1 ranks=$2
  shift 2
  mkdir "$tmp/$name"
  local one=$tmp/$name/one two=$tmp/$name/two
  "$hydraopt" merge "${adapters[@]}" "$@" --threads 2 -o "$one.safetensors" --report "$one.json" >"$one.out"
  mpi -np "$ranks" "$hydraopt" merge "${adapters[@]}" "$@" --threads 1 -o "$two.safetensors" --report "$two.json" >"$two.out"
  cmp "$one.safetensors" "$two.safetensors" || fail "$name: bundles differ"
  diff <(grep -v '"seconds"' "$one.json") <(grep -v '"seconds"' "$two.json") || fail "$name: reports differ"
  diff <(summary "$one.out") <(summary "$two.out") || fail "$name: stdout differs"
  [ "$(wc -l <"$two.out")" -eq 1 ] || fail "$name: stdout is not one line"
  echo "ok: $name, $ranks ranks ($*)"
}

same_as_one_process planner 2 --budget 0.4
same_as_one_process hydra 2 --method hydra
same_as_one_process ties 2 --method ties
same_as_one_process planner-bf16 3 --budget 0.25 --dtype bf16
same_as_one_process planner-bytes 2 --budget-bf16 0.2  # integer formats in the table
same_as_one_process planner-module 2 --budget 0.4 --weights module  # per-module weights on every rank
# Calibrated: each rank's modules' norms in the mean metric, summed over the ranks.
same_as_one_process calibrated-hydra 2 --method hydra --calibration "$tmp/stats"
same_as_one_process calibrated-planner 3 --budget 0.4 --calibration "$tmp/stats"

# Fails with one error line, exit != 0 on every rank and nothing left in
# the output directory $out (new_out NAME makes it, and o=(-o ... --report ...)).
new_out() {
  out=$tmp/fail-$1
  mkdir "$out"
  o=(-o "$out/b.safetensors" --report "$out/r.json")
}
fails_cleanly() {
  local name=$1 expect=$2
  shift 2
  if "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; then fail "$name: succeeded"; fi
  [ "$(grep -c 'hydraopt: ' "$tmp/$name.err")" -eq 1 ] || { cat "$tmp/$name.err" >&2; fail "$name: not one error line"; }
  grep -q "hydraopt: error: .*$expect" "$tmp/$name.err" || { cat "$tmp/$name.err" >&2; fail "$name: wrong error"; }
  [ -z "$(ls -A "$out")" ] || fail "$name: left $(ls -A "$out")"
  echo "ok: $name fails cleanly"
}

new_out budget
fails_cleanly budget "below the smallest achievable storage" \
  mpi -np 2 "$hydraopt" merge "${adapters[@]}" --budget 0.0001 "${o[@]}"
# A failure on rank 1 only (MPMD: its own arguments): reading a file ...
echo '{"task00": 1, "task01": 1, "task02": 1, "task03": 1, "task04": 1, "task05": 2}' >"$tmp/w.json"
new_out rank1-weights
fails_cleanly rank1-weights "nonexistent.json: cannot open weights file" \
  mpi -np 1 "$hydraopt" merge "${adapters[@]}" --weights "$tmp/w.json" "${o[@]}" : \
      -np 1 "$hydraopt" merge "${adapters[@]}" --weights "$tmp/nonexistent.json" "${o[@]}"
# ... opening the adapters ...
new_out rank1-open
fails_cleanly rank1-open "missing" \
  mpi -np 1 "$hydraopt" merge "${adapters[@]}" "${o[@]}" : \
      -np 1 "$hydraopt" merge "${adapters[@]::5}" "$tmp/missing" "${o[@]}"
# ... or parsing the arguments.
new_out rank1-usage
if mpi -np 1 "$hydraopt" merge "${adapters[@]}" "${o[@]}" : -np 1 "$hydraopt" merge "${adapters[@]}" \
  >/dev/null 2>"$tmp/usage.err"; then fail "rank1-usage: succeeded"; fi
grep -q -- "--output is required" "$tmp/usage.err" || { cat "$tmp/usage.err" >&2; fail "rank1-usage: wrong error"; }
[ -z "$(ls -A "$out")" ] || fail "rank1-usage: left $(ls -A "$out")"
echo "ok: rank1-usage fails cleanly"
# ... or fitting a module on rank 2: an adapter at rank 2 on q_proj
# (rank_pattern) where the others have 4, which hydra-avg cannot merge. The
# error is the one a single process gives (the lowest module's).
cp -r "$tmp/in/task05" "$tmp/odd"
/usr/bin/python3 - "$tmp/odd" <<'PY'
import json, struct, sys
d = sys.argv[1]
raw = open(d + "/adapter_model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
header.pop("__metadata__", None)
tensors = {}
for name, t in header.items():
    assert t["dtype"] == "F32"
    b, (rows, cols) = data[t["data_offsets"][0]:t["data_offsets"][1]], t["shape"]
    if "q_proj" in name and "lora_A" in name:
        b, rows = b[:2 * cols * 4], 2
    elif "q_proj" in name:
        b, cols = b"".join(b[i * cols * 4:i * cols * 4 + 8] for i in range(rows)), 2
    tensors[name] = (b, [rows, cols])
out, at, blobs = {}, 0, []
for name in sorted(tensors):
    b, shape = tensors[name]
    out[name] = {"dtype": "F32", "shape": shape, "data_offsets": [at, at + len(b)]}
    at += len(b)
    blobs.append(b)
h = json.dumps(out).encode()
h += b" " * (-len(h) % 8)
open(d + "/adapter_model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
c = json.load(open(d + "/adapter_config.json"))
c["rank_pattern"] = {"q_proj": 2}
json.dump(c, open(d + "/adapter_config.json", "w"))
PY
odd=("${adapters[@]::5}" "$tmp/odd")
if "$hydraopt" merge "${odd[@]}" --method hydra-avg -o "$tmp/x.safetensors" 2>"$tmp/one.err"; then fail "hydra-avg merged mixed ranks"; fi
new_out module
fails_cleanly module "$(sed 's/^hydraopt: error: //' "$tmp/one.err")" \
  mpi -np 3 "$hydraopt" merge "${odd[@]}" --method hydra-avg "${o[@]}"
# Only merge is distributed.
if mpi -np 2 "$hydraopt" sweep "${adapters[@]}" --out "$tmp/sweep" 2>"$tmp/sweep.err"; then fail "sweep ran on 2 ranks"; fi
[ "$(grep -c 'only merge runs on several MPI ranks' "$tmp/sweep.err")" -eq 1 ] || fail "sweep: not one error line"
echo "ok: sweep refused"
