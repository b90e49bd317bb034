#!/usr/bin/env bash
# Reproduces the shipped benchmark assets from scratch: task data from
# Debian word lists and hyphenation patterns, the pretrained tiny LLaMA,
# and one LoRA adapter per (application, language). Needs the lab build
# (libtorch). See lab/README.md for the time it takes.
#
#   lab/reproduce.sh [PRETRAIN_MINUTES] [LORA_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-20}
steps=${2:-200}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
data_packages=(wngerman wfrench wspanish witalian wportuguese wdutch wswedish wpolish
               hyphen-de hyphen-fr hyphen-es hyphen-it hyphen-pt-pt hyphen-nl hyphen-sv hyphen-pl
               libtorch-dev python3)
missing=()
for p in "${data_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
scripts/setup.sh -DHYDRAOPT_BUILD_LAB=ON
lab=build/lab/hydraopt-lab

/usr/bin/python3 lab/data/make_tasks.py assets/tasks
$lab pretrain --data assets/tasks --out assets/model --minutes "$minutes"
for task in $(cd assets/tasks && ls -d */ | tr -d /); do
  $lab --threads 1 lora --model assets/model --task "assets/tasks/$task" --out "assets/adapters/$task" --steps "$steps"
done
build/hydraopt demo
