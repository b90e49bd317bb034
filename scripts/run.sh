#!/usr/bin/env bash
# Sets up (idempotent) and runs the main job on data the project generates:
# 16 synthetic adapters of one base model (hidden 512, 4 layers, q/k/v/o,
# rank 8, BF16), then a sweep of every method over storage budgets. Prints
# the table and writes out/sweep/{sweep.json,sweep.md,sweep.svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -d out/adapters/task15 ] || build/hydraopt synth out/adapters --preset small
build/hydraopt sweep out/adapters/* --budgets 0.05,0.1,0.2,0.3,0.4,0.52,0.75,1 --out out/sweep
