#!/usr/bin/env bash
# Proof in the real runtime (issue 6): hydraopt's GGUF exports, loaded by
# llama.cpp through node-llama-cpp's prebuilt CPU binaries, give the logits
# of hydraopt's own forward pass. Run by .ci/run; needs node >= 20 and npm
# (the npm registry for the pinned node-llama-cpp in package-lock.json).
#
#   tests/llama_cpp/run.sh [BUILD_DIR]      (default: build/)
#
# 1. export the tiny base model (assets/model) to GGUF;
# 2. bundle three tasks exactly (merge --budget 1) and all 40 at the hydra
#    point (merge --method hydra); export tasks of both as GGUF LoRAs;
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

cases=()
for t in "${exact_tasks[@]}"; do cases+=("$t (exact bundle)=$work/exact.safetensors:$t:$work/exact/$t.gguf"); done
for t in "${hydra_tasks[@]}"; do cases+=("$t (hydra point)=$work/hydra.safetensors:$t:$work/hydra-$t.gguf"); done
"$ref_logits" "$assets/model" "$assets/tasks" "$examples" "$work/ref.json" "${cases[@]}"

node "$here/compare.mjs" "$work/model.gguf" "$work/ref.json" "${HYDRAOPT_LLAMA_RESULT:-$work/result.json}"
done_at=$(date +%s)
echo "llama.cpp test: npm install $((installed - start)) s, exports + comparison $((done_at - installed)) s"
