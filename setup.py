"""The wheel's build: setuptools drives the project's CMake build.

`pip wheel .` / `pip install .` (pyproject.toml) end up here. build_ext
configures CMake for the interpreter running pip (a lean tree: library,
runtime, CLI and extension; no tests, benchmarks or install rules), builds
the targets hydraopt_python and hydraopt_cli, and puts the extension
(hydraopt/_hydraopt*.so) and the CLI (hydraopt/bin/hydraopt, run by the
`hydraopt` console script) into the wheel beside python/hydraopt/.

Environment:
  HYDRAOPT_CMAKE_BUILD_DIR  an already configured CMake build tree to build
                            the two targets in and take them from (e.g. the
                            `build/` of scripts/setup.sh), instead of a tree
                            of its own under build-pip/
  HYDRAOPT_CMAKE_ARGS       extra configure arguments for that own tree,
                            e.g. "-DHYDRAOPT_NATIVE=OFF" for a wheel that
                            runs on other x86-64 CPUs than this one
  HYDRAOPT_BUILD_JOBS       parallel build jobs (default: the CPU count)
"""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent


def cmake_project_version() -> str:
    """project(hydraopt VERSION x.y.z) in CMakeLists.txt: the one place the version is written."""
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"^project\(hydraopt\s+VERSION\s+([0-9]+(?:\.[0-9]+)*)\b", text, re.M)
    if not m:
        raise RuntimeError(f"{ROOT / 'CMakeLists.txt'}: no `project(hydraopt VERSION ...)` line")
    return m.group(1)


def run(cmd):
    print("+ " + shlex.join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True)


def cache_value(tree: pathlib.Path, key: str):
    m = re.search(rf"^{re.escape(key)}:[A-Z]+=(.*)$", (tree / "CMakeCache.txt").read_text(), re.M)
    return m.group(1) if m else None


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        given = os.environ.get("HYDRAOPT_CMAKE_BUILD_DIR")
        if given:
            tree = pathlib.Path(given).resolve()
            if not (tree / "CMakeCache.txt").is_file():
                raise RuntimeError(f"HYDRAOPT_CMAKE_BUILD_DIR={given}: not a configured CMake build tree")
            if cache_value(tree, "CMAKE_PROJECT_VERSION") != self.distribution.get_version():
                raise RuntimeError(f"HYDRAOPT_CMAKE_BUILD_DIR={given}: configured for hydraopt "
                                   f"{cache_value(tree, 'CMAKE_PROJECT_VERSION')}, the sources say "
                                   f"{self.distribution.get_version()}: re-run cmake there")
        else:
            tree = pathlib.Path(self.build_temp).resolve() / "cmake"
            run(["cmake", "-S", ROOT, "-B", tree, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython_EXECUTABLE={sys.executable}", "-DHYDRAOPT_BUILD_PYTHON=ON", "-DHYDRAOPT_BUILD_CLI=ON",
                 "-DHYDRAOPT_BUILD_TESTS=OFF", "-DHYDRAOPT_BUILD_BENCH=OFF", "-DHYDRAOPT_INSTALL=OFF",
                 *shlex.split(os.environ.get("HYDRAOPT_CMAKE_ARGS", ""))])
        jobs = os.environ.get("HYDRAOPT_BUILD_JOBS") or str(os.cpu_count() or 1)
        run(["cmake", "--build", tree, "--target", "hydraopt_python", "hydraopt_cli", "-j", jobs])

        # The extension must be the one for this interpreter (ABI tag in the name).
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        built = tree / "python" / "hydraopt" / f"_hydraopt{suffix}"
        if not built.is_file():
            found = sorted(p.name for p in (tree / "python" / "hydraopt").glob("_hydraopt*"))
            raise RuntimeError(f"{built} was not built (found: {', '.join(found) or 'nothing'}): the CMake tree "
                               f"{tree} is for another Python than {sys.executable} "
                               f"(its Python_EXECUTABLE: {cache_value(tree, 'Python_EXECUTABLE')})")
        dest = pathlib.Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, dest)
        cli = dest.parent / "bin" / "hydraopt"
        cli.parent.mkdir(exist_ok=True)
        shutil.copyfile(tree / "hydraopt", cli)
        cli.chmod(0o755)


setup(
    version=cmake_project_version(),
    package_dir={"": "python"},
    packages=["hydraopt"],
    package_data={"hydraopt": ["py.typed", "*.pyi"]},
    zip_safe=False,
    ext_modules=[Extension("hydraopt._hydraopt", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    # Not setuptools' default `build/`: that is the CMake tree of scripts/setup.sh.
    options={"build": {"build_base": "build-pip"}},
)
