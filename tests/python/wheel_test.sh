#!/usr/bin/env bash
# ctest python.wheel: the pip route of issue 21, from outside the source tree.
#   1. `pip wheel --no-build-isolation --no-index` of the source tree, with
#      HYDRAOPT_CMAKE_BUILD_DIR at this CMake tree (setup.py builds the two
#      targets there, a no-op after the suite's build, and packs them);
#   2. the wheel's contents: package, extension, stubs + py.typed, the CLI
#      (executable), the console script, the version of project(VERSION);
#   3. a fresh `python3 -m venv --system-site-packages` (numpy from Debian),
#      `pip install --no-index` of the wheel;
#   4. from a directory outside the tree (assets linked in): the README's
#      Python example, `hydraopt --version`, `python -m hydraopt`, a CLI
#      merge, a CLI error's exit status, and mypy reading the stubs.
# Nothing is written into the source tree: setuptools' build directory and
# egg-info go to a scratch directory (DIST_EXTRA_CONFIG).
# usage: wheel_test.sh BUILD_DIR VERSION [PYTHON]
set -euo pipefail
build=$(cd "$1" && pwd) version=$2 python=${3:-/usr/bin/python3}
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH PIP_INDEX_URL PIP_EXTRA_INDEX_URL
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
fail() { echo "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# 1. The wheel.
cat >"$work/setuptools.cfg" <<CFG
[build]
build_base = $work/setuptools-build
[egg_info]
egg_base = $work
CFG
t0=$(now)
(cd "$src" && DIST_EXTRA_CONFIG="$work/setuptools.cfg" HYDRAOPT_CMAKE_BUILD_DIR="$build" HYDRAOPT_BUILD_JOBS=2 \
  "$python" -m pip wheel . --no-build-isolation --no-deps -w "$work/dist" >"$work/wheel.log" 2>&1) ||
  { cat "$work/wheel.log"; fail "pip wheel"; }
t1=$(now)
wheels=("$work"/dist/hydraopt-*.whl)
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || fail "expected one wheel in dist/: $(ls "$work/dist")"
wheel=${wheels[0]}
echo "wheel: $(basename "$wheel"), $(stat -c %s "$wheel") bytes, built in $(secs "$t0" "$t1") s"
# (setuptools' defaults: build-pip/ and python/hydraopt.egg-info; the CMake tree aside)
written=$(find "$src" -mindepth 1 -maxdepth 1 -newer "$work/setuptools.cfg" ! -name .git ! -path "$build";
          find "$src/python" "$src/build-pip" -newer "$work/setuptools.cfg" 2>/dev/null || true)
[ -z "$written" ] || fail "building the wheel wrote into the source tree: $written"

# 2. What it holds.
"$python" - "$wheel" "$version" <<'PY' || fail "wheel contents"
import sys, zipfile
wheel, version = sys.argv[1:]
z = zipfile.ZipFile(wheel)
names = z.namelist()
for info in z.infolist():
    print(f"  {info.file_size:>10}  {info.filename}")
def one(pattern):
    import fnmatch
    hits = [n for n in names if fnmatch.fnmatch(n, pattern)]
    assert len(hits) == 1, f"{pattern}: {hits}"
    return hits[0]
for f in ["hydraopt/__init__.py", "hydraopt/__main__.py", "hydraopt/_cli.py", "hydraopt/_hydraopt.pyi",
          "hydraopt/py.typed", "hydraopt/bin/hydraopt"]:
    one(f)
one("hydraopt/_hydraopt.cpython-*.so")
cli = z.getinfo("hydraopt/bin/hydraopt")
assert (cli.external_attr >> 16) & 0o111, "the CLI is not executable in the wheel"
assert z.read("hydraopt/bin/hydraopt")[:4] == b"\x7fELF"
meta = z.read(one(f"hydraopt-{version}.dist-info/METADATA")).decode()
assert f"\nVersion: {version}\n" in meta, "METADATA version"
assert "Requires-Dist: numpy" in meta
entry = z.read(one(f"hydraopt-{version}.dist-info/entry_points.txt")).decode()
assert "hydraopt = hydraopt._cli:main" in entry, entry
tag = z.read(one(f"hydraopt-{version}.dist-info/WHEEL")).decode()
assert "Root-Is-Purelib: false" in tag, tag
PY

# 3. A fresh venv that sees Debian's numpy, and the wheel installed into it.
t0=$(now)
"$python" -m venv --system-site-packages "$work/venv" || fail "python3 -m venv (python3-venv installed?)"
t1=$(now)
"$work/venv/bin/python" -m pip install "$wheel" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "pip install of the wheel"; }
t2=$(now)
echo "venv: created in $(secs "$t0" "$t1") s, wheel installed in $(secs "$t1" "$t2") s"

# 4. Outside the source tree, with only the venv's PATH.
run=$work/run
mkdir "$run"
ln -s "$src/assets" "$run/assets"
export PATH="$work/venv/bin:$PATH"
cd "$run"
where=$(python -c 'import hydraopt, sys; print(hydraopt.__file__); print(hydraopt.__version__); print(sys.prefix)')
echo "$where"
grep -q "^$work/venv/lib/" <<<"$(head -1 <<<"$where")" || fail "hydraopt was not imported from the venv"
[ "$(sed -n 2p <<<"$where")" = "$version" ] || fail "hydraopt.__version__ is not $version"

# The README's Python example, as written there.
"$python" - "$src/README.md" >"$run/example.py" <<'PY'
import sys
section = open(sys.argv[1]).read().split("## Use it from Python", 1)[1]
print(section.split("```python\n", 1)[1].split("```", 1)[0])
PY
python example.py >"$run/example.out" 2>&1 || { cat "$run/example.out"; fail "the README's Python example"; }
cat "$run/example.out"
promised=$(grep -o 'print(b) *# <.*>' "$run/example.py" | sed 's/^print(b) *# //')
[ -n "$promised" ] && [ "$(head -1 "$run/example.out")" = "$promised" ] || fail "print(b) is not '$promised'"
"$python" -c 'import sys; v = float(open(sys.argv[1]).read().split()[-1]); sys.exit(not v < 1e-6)' \
  "$run/example.out" || fail "the exported adapter does not reproduce the bundle's update"
[ -f "$run/out/py/spell-de/adapter_config.json" ] || fail "the example's export is missing"

# The command, as the console script and as python -m.
[ "$(command -v hydraopt)" = "$work/venv/bin/hydraopt" ] || fail "hydraopt on PATH is $(command -v hydraopt)"
[ "$(hydraopt --version)" = "hydraopt $version" ] || fail "hydraopt --version says '$(hydraopt --version)'"
[ "$(python -m hydraopt --version)" = "hydraopt $version" ] || fail "python -m hydraopt --version"
hydraopt merge assets/adapters/spell-de assets/adapters/spell-fr --budget 0.6 -o "$run/b.safetensors" \
  --report "$run/r.json" >/dev/null || fail "hydraopt merge"
python -c 'import hydraopt, json, sys; b = hydraopt.Bundle(sys.argv[1]); assert b.tasks == ["spell-de", "spell-fr"], b.tasks' \
  "$run/b.safetensors" || fail "the CLI's bundle does not open in Python"
rc=0
hydraopt merge assets/adapters/spell-de no-such-adapter -o "$run/x.safetensors" 2>"$run/err" || rc=$?
[ "$rc" != 0 ] && grep -q "no-such-adapter" "$run/err" || fail "a CLI error: status $rc, stderr $(cat "$run/err")"
# A type checker finds the installed stubs (py.typed): mypy (Debian's python3-mypy) on code
# using the API, with one wrong keyword on purpose, reports that one error and no other.
cat >"$run/typed.py" <<'PY'
import numpy as np
import numpy.typing as npt

import hydraopt

b: hydraopt.Bundle = hydraopt.merge(["assets/adapters/spell-de"], budget=0.5, threads=1)
state, config = b.task_adapter("spell-de")
a: npt.NDArray[np.float64] = state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
r: str = config["peft_type"] + hydraopt.sweep(["x"], methods=["ta"])[0]["method"] + b.tasks[0]
hydraopt.merge(["x"], budgt=0.5)
PY
mypy_out=$(python -m mypy --cache-dir "$work/mypy-cache" "$run/typed.py" 2>&1) && fail "mypy found no error: $mypy_out"
echo "$mypy_out"
grep -q 'typed.py:10: error: Unexpected keyword argument "budgt" for "merge"' <<<"$mypy_out" &&
  grep -q "^Found 1 error in 1 file" <<<"$mypy_out" || fail "mypy does not see hydraopt's stubs as expected"
echo "python.wheel: OK (hydraopt $version)"
