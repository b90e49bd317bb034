#!/usr/bin/env bash
# The reconstruction-error sweep on synthetic adapters: 16 adapters of one
# base model (hidden 512, 4 layers, q/k/v/o, rank 8, BF16; docs/synth.md),
# every method over storage budgets. Prints the table and writes
# out/sweep/{sweep.json,sweep.md,sweep.svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -d out/adapters/task15 ] || build/hydraopt synth out/adapters --preset small
build/hydraopt sweep out/adapters/* --budgets 0.05,0.1,0.2,0.3,0.4,0.52,0.75,1 --out out/sweep
