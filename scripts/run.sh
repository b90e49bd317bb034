#!/usr/bin/env bash
# Sets up (idempotent) and runs the main job on the shipped data: the task
# benchmark. A tiny LLaMA and its 40 LoRA adapters (assets/) are merged by
# hydraopt across storage budgets and by the baselines, and every bundle is
# scored on the 40 tasks' held-out test sets. Prints the table and writes
# out/demo/{demo.json,demo.md,demo.svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build/hydraopt demo --out out/demo "$@"
