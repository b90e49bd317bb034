#!/usr/bin/env bash
# Reproduces the shipped benchmark assets from scratch: task data from
# Debian word lists and hyphenation patterns, the pretrained tiny LLaMA,
# and one LoRA adapter per (application, language), then runs the demo on
# them. Builds the lab (libtorch) in build-lab/. See lab/README.md for the
# time it takes.
#
#   lab/reproduce.sh [OUT_DIR [PRETRAIN_STEPS [LORA_STEPS]]]
#
# OUT_DIR defaults to assets (replacing the shipped assets; git shows what
# changed); the demo's results go to OUT_DIR/demo/<set>/. The shipped model had a
# 20-minute budget, in which it ran 779 steps; a fixed step count makes the
# work the same whatever else the machine is doing.
#
# Two adapter sets of the same 40 tasks from the same A
# initialisation (--seed-a 1234, written to OUT_DIR/lora-init):
#   fast   (OUT_DIR/adapters)        lr 2e-3, LORA_STEPS (200) steps
#   usual  (OUT_DIR/adapters-usual)  lr 5e-4, 1000 steps: the usual LoRA
#          recipe's learning rate (1e-4 to 5e-4) with more steps
# and a worst case for sharing:
#   seeds  (OUT_DIR/adapters-seeds)  the fast recipe, but each task's A from
#          its own seed (adapters trained apart), stored in bf16
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-assets}
pretrain_steps=${2:-779}
steps=${3:-200}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
lab_packages=(libtorch-dev)
missing=()
for p in "${lab_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
scripts/setup.sh  # the word lists and hyphenation patterns, and build/hydraopt
cmake -S lab -B build-lab -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-lab -j"$(nproc)"
lab=build-lab/hydraopt-lab

start=$SECONDS
stamp() { echo "reproduce: $1 after $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s" >&2; }
mkdir -p "$out"
/usr/bin/python3 lab/data/make_tasks.py "$out/tasks"
stamp "task data"
$lab pretrain --data "$out/tasks" --out "$out/model" --steps "$pretrain_steps"
stamp "pretraining"
# The adapters' shared initialisation: a LoRA trained for 0 steps (B = 0).
first=$(cd "$out/tasks" && ls -d */ | tr -d / | head -1)
$lab lora --model "$out/model" --task "$out/tasks/$first" --out "$out/lora-init" --steps 0 >/dev/null
# One single-threaded training per core: deterministic, and faster than one
# two-threaded training at a time on these small matrices.
# With SEEDS=per-task, the j-th task (in name order, from 0) starts from its
# own A (--seed-a 1235 + j) instead of the shared one (1234); EXTRA: more
# lora flags (e.g. --bf16).
train_set() {  # DIR LR STEPS [SEEDS [EXTRA]]
  (cd "$out/tasks" && ls -d */ | tr -d /) |
    awk -v per="${4:-shared}" '{ print $0, (per == "per-task" ? 1235 + NR - 1 : 1234) }' |
    xargs -P "$(nproc)" -L 1 sh -c '"$0" --threads 1 lora --model "$1" --task "$2/$6" --out "$3/$6" \
      --lr "$4" --steps "$5" --seed-a "$7" '"${5:-}" "$lab" "$out/model" "$out/tasks" "$out/$1" "$2" "$3" \
      >"$out/$1.log"
}
train_set adapters 2e-3 "$steps"
stamp "40 LoRA adapters, set fast"
train_set adapters-usual 5e-4 1000
stamp "40 LoRA adapters, set usual"
train_set adapters-seeds 2e-3 "$steps" per-task --bf16
stamp "40 LoRA adapters, set seeds"
build/hydraopt demo --assets "$out" --set all --out "$out/demo"
stamp "demo"
