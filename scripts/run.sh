#!/usr/bin/env bash
# Sets up (idempotent) and runs the main job on data the project generates:
# synthetic adapters of one base model, then what structure they share.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build/hydraopt synth out/adapters --preset tiny
build/hydraopt inspect out/adapters/*
