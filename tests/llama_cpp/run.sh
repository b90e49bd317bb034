#!/usr/bin/env bash
# Proof in the real runtime (issue 6): hydraopt's GGUF exports, loaded by
# llama.cpp through node-llama-cpp's prebuilt CPU binaries, give the logits
# of hydraopt's own forward pass. Run by .ci/run; needs node >= 20 and npm
# (the npm registry for the pinned node-llama-cpp in package-lock.json).
#
#   tests/llama_cpp/run.sh [BUILD_DIR]      (default: build/)
#
# 1. export the tiny base model (assets/model) to GGUF;
# 2. bundle three tasks exactly (merge --budget 1), all 40 at the hydra
#    point (merge --method hydra), and all 40 in a byte budget whose
#    factors are group-wise integers (merge --budget-bf16); export tasks of
#    each as GGUF LoRAs (the integer bundle's lora_a in llama.cpp's block
#    types, checked to occur);
# 3. hydraopt_ref_logits: our logits on held-out examples, with and without
#    each task;
# 4. compare.mjs: llama.cpp's logits on the same token ids, with each LoRA.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
hydraopt="$build/hydraopt"
ref_logits="$build/hydraopt_ref_logits"
assets="$root/assets"
examples="${HYDRAOPT_LLAMA_EXAMPLES:-8}"

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "tests/llama_cpp/run.sh: needs $tool (node >= 20)" >&2; exit 1; }
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
  { echo "tests/llama_cpp/run.sh: node $(node --version) is older than 20 (node-llama-cpp 3.22.1 needs >= 20)" >&2; exit 1; }
for f in "$hydraopt" "$ref_logits"; do
  [ -x "$f" ] || { echo "tests/llama_cpp/run.sh: $f is missing (build with tests: scripts/setup.sh)" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
# The versions pinned in package-lock.json. Not `npm ci`: npm 11 leaves the
# other platforms' optional binary packages out of the lock and then
# refuses it. --omit=optional skips node-llama-cpp's GPU builds (640 MB);
# its Linux x64 CPU build is a direct dependency. No install scripts: the
# binaries come as ordinary packages, nothing is built or downloaded later.
(cd "$here" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --omit=optional --no-save --no-audit --no-fund \
  --ignore-scripts --loglevel=error)
installed=$(date +%s)

"$hydraopt" export-model "$assets/model" -o "$work/model.gguf"

exact_tasks=(spell-de rev-fr cap-pl)
exact_inputs=()
for t in "${exact_tasks[@]}"; do exact_inputs+=("$assets/adapters/$t"); done
"$hydraopt" merge "${exact_inputs[@]}" --method hydraopt --budget 1 -o "$work/exact.safetensors"
"$hydraopt" export "$work/exact.safetensors" --all --format gguf --base-model "$assets/model" -o "$work/exact"

"$hydraopt" merge "$assets"/adapters/* --method hydra -o "$work/hydra.safetensors"
hydra_tasks=(hyph-it vowel-sv)
for t in "${hydra_tasks[@]}"; do
  "$hydraopt" export "$work/hydra.safetensors" --task "$t" --format gguf --base-model "$assets/model" \
    -o "$work/hydra-$t.gguf"
done

# Integer factors (issue 17): llama.cpp must read its own block types
# (Q8_0, Q4_0, Q4_1) written from our stored codes and give our logits.
# The planner's choice at these byte budgets (fractions of a bf16 copy of
# the 40 adapters) stores bodies in int8, int4 and int3, symmetric and
# asymmetric, so every block type occurs; checked below.
quant_budgets=(${HYDRAOPT_LLAMA_QUANT_BUDGETS:-0.25 0.12})
quant_tasks=(accent-fr spell-de)
quant_cases=()
for budget in "${quant_budgets[@]}"; do
  bundle="$work/quant-$budget.safetensors"
  "$hydraopt" merge "$assets"/adapters/* --budget-bf16 "$budget" -o "$bundle"
  for t in "${quant_tasks[@]}"; do
    # --list-tensors: "  TASK TENSOR TYPE STORED [WHY FLOATS]" per tensor
    "$hydraopt" export "$bundle" --task "$t" --format gguf --base-model "$assets/model" --list-tensors \
      -o "$work/quant-$budget-$t.gguf" >"$work/quant-$budget-$t.types"
    # The same values as F32 tensors: llama.cpp's arithmetic without 8-bit activations.
    "$hydraopt" export "$bundle" --task "$t" --format gguf --base-model "$assets/model" --float-tensors \
      -o "$work/quant-$budget-$t-f32.gguf" >/dev/null
    quant_cases+=("$t (bf16 budget $budget)=$bundle:$t:$work/quant-$budget-$t.gguf"
                  "$t (bf16 budget $budget, F32 tensors)=$bundle:$t:$work/quant-$budget-$t-f32.gguf")
  done
done
echo "ggml types of the integer bundles' LoRA tensors (count, type, stored as):"
cat "$work"/quant-*.types | awk '$3 ~ /^(Q[48]_[01]|F32|F16|BF16)$/ {print $3, $4}' | sort | uniq -c
# (Collected first: under pipefail a `| grep -q` that exits early can SIGPIPE
# the writer and fail the pipeline even on a match.)
stored_types=$(awk '{print $3}' "$work"/quant-*.types)
for type in Q8_0 Q4_0 Q4_1; do
  if ! grep -qx "$type" <<<"$stored_types"; then
    echo "tests/llama_cpp/run.sh: no LoRA tensor went out as $type at bf16 budgets ${quant_budgets[*]};" \
      "choose budgets whose plans store such factors (HYDRAOPT_LLAMA_QUANT_BUDGETS)" >&2
    exit 1
  fi
done

cases=()
for t in "${exact_tasks[@]}"; do cases+=("$t (exact bundle)=$work/exact.safetensors:$t:$work/exact/$t.gguf"); done
for t in "${hydra_tasks[@]}"; do cases+=("$t (hydra point)=$work/hydra.safetensors:$t:$work/hydra-$t.gguf"); done
cases+=("${quant_cases[@]}")
"$ref_logits" "$assets/model" "$assets/tasks" "$examples" "$work/ref.json" "${cases[@]}"

node "$here/compare.mjs" "$work/model.gguf" "$work/ref.json" "${HYDRAOPT_LLAMA_RESULT:-$work/result.json}"
done_at=$(date +%s)
echo "llama.cpp test: npm install $((installed - start)) s, exports + comparison $((done_at - installed)) s"
