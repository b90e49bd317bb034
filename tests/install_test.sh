#!/usr/bin/env bash
# ctest install.consumer: `cmake --install` of BUILD_DIR into a temporary
# prefix, then, against that prefix only:
#   - a project outside the tree (tests/consumer) configures with
#     find_package(hydraopt VERSION EXACT), builds, and merges two adapters;
#   - the installed CLI reports the same version;
#   - with the Python module, the package imports from the installed tree,
#     its __version__ is the same and its type stubs are there.
# usage: install_test.sh BUILD_DIR VERSION WITH_PYTHON(0|1)
set -euo pipefail
build=$1 version=$2 with_python=$3
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

cmake --install "$build" --prefix "$prefix" >"$work/install.log"
for f in include/hydraopt/merge.h lib/cmake/hydraopt/hydraoptConfig.cmake \
         lib/cmake/hydraopt/hydraoptConfigVersion.cmake bin/hydraopt; do
  [ -e "$prefix/$f" ] || { echo "FAIL: $f not installed"; cat "$work/install.log"; exit 1; }
done
ls "$prefix"/lib/libhydraopt.* >/dev/null

# Only the installed prefix: the source tree's headers must not be needed.
cmake -S "$src/tests/consumer" -B "$work/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DHYDRAOPT_EXPECTED_VERSION="$version" >"$work/configure.log" 2>&1 ||
  { echo "FAIL: consumer configure"; cat "$work/configure.log"; exit 1; }
cmake --build "$work/consumer" >"$work/build.log" 2>&1 ||
  { echo "FAIL: consumer build"; cat "$work/build.log"; exit 1; }
if grep -q -- "-I$src/include" "$work/build.log" "$work/consumer/CMakeFiles/consumer.dir/flags.make"; then
  echo "FAIL: the consumer compiled against the source tree's headers"; exit 1
fi

rc=0
out=$("$work/consumer/consumer" "$src/assets/adapters/spell-de" "$src/assets/adapters/spell-fr") || rc=$?
[ "$rc" = 0 ] || { echo "$out"; echo "FAIL: the consumer exited with status $rc"; exit 1; }
echo "$out"
grep -qx "version $version" <<<"$out" || { echo "FAIL: consumer sees a version other than $version"; exit 1; }
grep -qx "modules 16" <<<"$out" || { echo "FAIL: expected 16 modules"; exit 1; }
grep -qx "factor 8 x 256" <<<"$out" || { echo "FAIL: expected an 8 x 256 lora_A"; exit 1; }
grep -q "^merged tasks 2 " <<<"$out" || { echo "FAIL: merge"; exit 1; }

cli=$("$prefix/bin/hydraopt" --version)
[ "$cli" = "hydraopt $version" ] || { echo "FAIL: installed CLI says '$cli', expected 'hydraopt $version'"; exit 1; }

if [ "$with_python" = 1 ]; then
  py=$(cd "$work" && PYTHONPATH="$prefix/lib/python3/dist-packages" /usr/bin/python3 -c \
    'import hydraopt; print(hydraopt.__file__); print(hydraopt.__version__)')
  echo "$py"
  grep -q "^$prefix/" <<<"$py" || { echo "FAIL: the module was not imported from the prefix"; exit 1; }
  [ "$(tail -1 <<<"$py")" = "$version" ] || { echo "FAIL: hydraopt.__version__ is not $version"; exit 1; }
  for f in _hydraopt.pyi py.typed; do
    [ -f "$prefix/lib/python3/dist-packages/hydraopt/$f" ] || { echo "FAIL: hydraopt/$f not installed"; exit 1; }
  done
fi
echo "install.consumer: OK (version $version)"
