#!/usr/bin/env bash
# Installs hydraopt's build dependencies from Debian (idempotent) and builds
# it in Release into ./build. Safe to run again: installs only what is
# missing and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  cmake g++ make pkg-config
  libeigen3-dev libopenblas-dev liblapacke-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev libssl-dev
  python3 python3-numpy
  # the Python module and its tests (tests/python: pytest, the PEFT check with torch)
  python3-dev pybind11-dev python3-pytest python3-torch
  # `pip install .` offline (setuptools + wheel as the build backend) and its
  # ctest python.wheel (a fresh venv; mypy reads the installed type stubs)
  python3-venv python3-pip python3-setuptools python3-wheel python3-mypy
  # the task benchmark's data sources (read by lab/data/make_tasks.py and its test)
  wngerman wfrench wspanish witalian wportuguese wdutch wswedish wpolish
  hyphen-de hyphen-fr hyphen-es hyphen-it hyphen-pt-pt hyphen-nl hyphen-sv hyphen-pl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
